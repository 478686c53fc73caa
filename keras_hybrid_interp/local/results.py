"""Result objects of the local interpreter: small, NumPy-backed, tidy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core.task import MultiLabelTask, r2

__all__ = ["LayerPredictions", "LocalExplanation", "LayerTable"]


def _decide(values, task):
    """Decisions from probabilities (last axis K): top class, 0/1 labels at 0.5, or the values themselves."""
    values = np.asarray(values)
    if task == "multilabel":
        return MultiLabelTask.decide(values)
    if task == "regression":
        return values
    return np.argmax(values, axis=-1)


@dataclasses.dataclass(frozen=True)
class LayerPredictions:
    """Per-block probe predictions for a set of inputs.

    Attributes
    ----------
    blocks : list of str
        Block names, shallow to deep.
    depths : ndarray of int, shape (L,)
        Graph depth of each block.
    probabilities : ndarray, shape (L, N, K)
        Probe class probabilities per block and sample (per-label
        probabilities for a multi-label model, predicted values for a
        regression model).
    model_probabilities : ndarray, shape (N, K)
        The model's own class probabilities (label probabilities, values).
    class_names : list of str
    task : str
        The model's task.
    """

    blocks: list
    depths: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray
    class_names: list
    task: str = "multiclass"

    def __repr__(self):
        L, N, K = np.shape(self.probabilities)
        return f"LayerPredictions(blocks={L}, samples={N}, classes={K})"

    @property
    def predicted(self) -> np.ndarray:
        """Probe top class per block and sample, shape (L, N); multi-label: 0/1 decisions (L, N, K) at
        probability 0.5; regression: the values (L, N, K)."""
        return _decide(self.probabilities, self.task)

    @property
    def model_predicted(self) -> np.ndarray:
        """Model top class per sample, shape (N,) (decisions (N, K), values (N, K), as :attr:`predicted`)."""
        return _decide(self.model_probabilities, self.task)

    @property
    def agreement(self) -> np.ndarray:
        """Per block, shape (L,): the fraction of samples whose probe's top class is the model's; multi-label:
        of label decisions equal to the model's; regression: R^2 of the probe's values against the model's."""
        if self.task == "regression":
            return np.array([r2(self.model_probabilities, v) for v in self.probabilities])
        same = self.predicted == self.model_predicted[None]
        return same.reshape(len(same), -1).mean(axis=1)

    def __getitem__(self, block: str) -> np.ndarray:
        try:
            return self.probabilities[self.blocks.index(block)]
        except ValueError:
            raise KeyError(f"No block {block!r}; available blocks: {self.blocks}.") from None

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (sample, block, class) with the probability."""
        L, N, K = self.probabilities.shape
        return pd.DataFrame({
            "sample": np.tile(np.repeat(np.arange(N), K), L),
            "block": np.repeat(np.array(self.blocks, dtype=object), N * K),
            "depth": np.repeat(self.depths, N * K),
            "class": np.tile(np.array(self.class_names, dtype=object), L * N),
            "value" if self.task == "regression" else "probability": self.probabilities.reshape(-1),
        })

    def plot(self, ax=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_layer_predictions`; returns the Axes.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_layer_predictions

        return plot_layer_predictions(self, ax=ax, **kwargs)


@dataclasses.dataclass(frozen=True)
class LocalExplanation:
    """Layer-by-layer explanation of one input.

    Attributes
    ----------
    image : ndarray, shape (T, C), (H, W, C) or (D, H, W, C)
        The input (a signal, an image or a volume).
    blocks : list of str
    depths : ndarray of int, shape (L,)
    probabilities : ndarray, shape (L, K)
        Probe probabilities at each block.
    model_probabilities : ndarray, shape (K,)
    decision_index : int or None
        Index (into ``blocks``) of the first block from which the probe's top
        class equals the model's class and stays equal in every deeper
        block; None if the last block disagrees with the model.
    evidence_maps : list of ndarray, each (spatial_l..., K)
        Class-evidence map per block: the probe's logits applied at every
        spatial position: a curve (T_l, K) along time for a 1-D CNN, a map
        (H_l, W_l, K) for 2-D, a volume (D_l, H_l, W_l, K) for 3-D. For
        average pooling (and adaptive average pooling, where each position's
        contribution is rescaled by the number of positions) the mean of a
        map over positions equals the probe's logits exactly.
    class_names : list of str
    pooling : str or int
    target : ndarray or None
        The true label when one was given (``explain(x, y)``, the report with
        ``y``): the class index (classification), the 0/1 label vector
        (multi-label) or the target values (regression); None otherwise.
    images : dict or None
        A model with several inputs: ``{input name: this sample's input}`` for
        its image inputs (tabular inputs are never drawn); None otherwise.
    block_images : tuple or None
        A model with several inputs: per block, the name of the image input
        it depends on (:attr:`Block.image_input`), over which its evidence map
        is drawn; ``image`` is the first block's. None otherwise.
    """

    image: np.ndarray
    blocks: list
    depths: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray
    decision_index: int | None
    evidence_maps: list
    class_names: list
    pooling: object = "avg"
    images: dict | None = None
    block_images: tuple | None = None
    task: str = "multiclass"
    target: np.ndarray | None = None

    def __repr__(self):
        decided = "never" if self.decision_block is None else repr(self.decision_block)
        if self.task == "multilabel":
            on = [n for n, d in zip(self.class_names, self.model_prediction) if d]
            what = f"model_labels={on!r}"
        elif self.task == "regression":
            what = "model_values=[" + ", ".join(f"{v:.4g}" for v in np.ravel(self.model_probabilities)) + "]"
        else:
            what = f"model_class={self.class_names[self.model_class]!r}"
        if self.target is not None:
            what += f", true={self.target_text()}"
        return f"LocalExplanation({what}, blocks={len(self.blocks)}, decision_block={decided})"

    def target_text(self) -> str | None:
        """The true label as the figure and the report print it (class names), or None without one."""
        if self.target is None:
            return None
        t = np.asarray(self.target)
        if self.task == "regression":
            return "[" + ", ".join(f"{v:.4g}" for v in t.ravel()) + "]"
        if self.task == "multilabel":
            return repr([str(n) for n, on in zip(self.class_names, t.ravel()) if on])
        return repr(str(self.class_names[int(t)]))

    @property
    def predicted(self) -> np.ndarray:
        """Probe top class per block, shape (L,); multi-label: 0/1 decisions (L, K); regression: values (L, K)."""
        return _decide(self.probabilities, self.task)

    @property
    def model_class(self) -> int:
        """The model's top class (classification and segmentation); multi-label: its most probable label;
        regression: the index of its largest output."""
        return int(np.argmax(self.model_probabilities))

    @property
    def model_prediction(self) -> np.ndarray:
        """The model's decision: its top class, its 0/1 label decisions, or its values."""
        return _decide(np.asarray(self.model_probabilities)[None], self.task)[0]

    @property
    def decision_block(self) -> str | None:
        return None if self.decision_index is None else self.blocks[self.decision_index]

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (block, class) with probability and flags; with a :attr:`target`, also
        ``is_true_class`` (classification), ``is_true_label`` (multi-label) or ``true_value`` (regression)."""
        L, K = self.probabilities.shape
        pred = self.predicted
        frame = pd.DataFrame({
            "block": np.repeat(np.array(self.blocks, dtype=object), K),
            "depth": np.repeat(self.depths, K),
            "class": np.tile(np.array(self.class_names, dtype=object), L),
        })
        t = None if self.target is None else np.asarray(self.target)
        if self.task == "regression":  # one predicted value per block and target
            frame["value"] = self.probabilities.reshape(-1)
            frame["model_value"] = np.tile(np.ravel(self.model_probabilities), L)
            if t is not None:
                frame["true_value"] = np.tile(t.ravel().astype(np.float64), L)
        elif self.task == "multilabel":  # one probability and decision per block and label
            frame["probability"] = self.probabilities.reshape(-1)
            frame["is_predicted"] = pred.reshape(-1).astype(bool)
            frame["is_model_label"] = np.tile(self.model_prediction.astype(bool), L)
            if t is not None:
                frame["is_true_label"] = np.tile(t.ravel().astype(bool), L)
        else:
            frame["probability"] = self.probabilities.reshape(-1)
            frame["is_top_class"] = (pred[:, None] == np.arange(K)[None, :]).reshape(-1)
            frame["is_model_class"] = np.tile(np.arange(K) == self.model_class, L)
            if t is not None:
                frame["is_true_class"] = np.tile(np.arange(K) == int(t), L)
        return frame

    def plot(self, fig=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_local_explanation`; returns the Figure.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_local_explanation

        return plot_local_explanation(self, fig=fig, **kwargs)

#: The metrics of the layer table that may carry a bootstrap interval, in column order.
INTERVAL_METRICS = ("accuracy", "loss", "agreement", "control_accuracy", "selectivity")


@dataclasses.dataclass(frozen=True, eq=False)
class LayerTable:
    """The layer table of :meth:`HybridInterpreter.evaluate_layers`: per block, how well its probe reads the class.

    One row per block, shallow to deep, then a last row ``"output"`` for the
    model itself. Every array has that length, L + 1.

    Attributes
    ----------
    blocks : tuple of str
        Block names, then ``"output"``.
    depths : ndarray of int
        Graph depth of each block (the producing layer's position for the output row).
    filters : tuple of int or None
        Channels of each block (None for the output row).
    accuracy : ndarray of float
        Fraction of samples whose probe top class equals the label (NaN without labels).
    loss : ndarray of float
        Mean cross-entropy against the labels, or against the model's own
        distribution without labels.
    agreement : ndarray of float
        Fraction of samples whose probe top class equals the model's.
    chance : float
        Frequency of the most common label (of the most common model prediction without labels).
    n : int
        Number of evaluated samples.
    labelled : bool
    control_accuracies : ndarray (n_controls, L + 1) or None
        Accuracy of each control probe (trained on permuted labels, see
        :meth:`HybridInterpreter.fit_probes`), against the true labels of the
        evaluation data; NaN in the output row. None when no controls were asked for.
    selectivity : ndarray or None
        ``accuracy - control_accuracy`` (Hewitt and Liang, 2019).
    lower, upper : dict of str to ndarray
        Bootstrap percentile interval of each metric in
        :data:`INTERVAL_METRICS` that was computed (empty without ``bootstrap``).
    confidence : float or None
        The intervals' confidence level.
    n_resamples : int
        Bootstrap resamples (0: no intervals).
    task : str
        The model's task (``"multiclass"``, ``"binary"``, ``"multilabel"``,
        ``"regression"``, ``"segmentation"``).
    metrics : dict of str to ndarray
        The task's metrics per row (empty for classification, whose metrics
        are ``accuracy``, ``loss`` and ``agreement``): multi-label
        ``auroc``, ``average_precision``, ``f1``, ``hamming``; regression
        ``r2``, ``mae``, ``rmse``; segmentation ``mean_iou``, ``dice``,
        ``pixel_accuracy``. Against the labels, or against the model's own
        outputs without labels. ``loss`` and ``agreement`` are the task's too.
    headline : str
        The metric plots and summaries lead with (``"accuracy"`` for classification).
    """

    blocks: tuple
    depths: np.ndarray
    filters: tuple
    accuracy: np.ndarray
    loss: np.ndarray
    agreement: np.ndarray
    chance: float
    n: int
    labelled: bool
    control_accuracies: np.ndarray | None = None
    selectivity: np.ndarray | None = None
    lower: dict = dataclasses.field(default_factory=dict)
    upper: dict = dataclasses.field(default_factory=dict)
    confidence: float | None = None
    n_resamples: int = 0
    task: str = "multiclass"
    metrics: dict = dataclasses.field(default_factory=dict)
    headline: str = "accuracy"

    def metric(self, name: str) -> np.ndarray:
        """The values of metric ``name`` per row (``accuracy``, ``loss``, ``agreement`` or a task metric)."""
        if name in self.metrics:
            return self.metrics[name]
        if name in ("accuracy", "loss", "agreement"):
            return getattr(self, name)
        raise KeyError(f"No metric {name!r}; this table has {['accuracy', 'loss', 'agreement'] + list(self.metrics)}.")

    def __repr__(self):
        extra = ""
        if self.n_controls:
            extra += f", controls={self.n_controls}"
        if self.n_resamples and self.confidence is not None:
            extra += f", {100 * self.confidence:g}% intervals from {self.n_resamples} resamples"
        return f"LayerTable(blocks={len(self.blocks) - 1}, samples={self.n}{extra})"

    def __len__(self):
        return len(self.blocks)

    def _repr_html_(self):  # a notebook shows the table
        return self.to_frame()._repr_html_()  # type: ignore[operator]  # pandas has it; pandas-stubs do not

    @property
    def n_controls(self) -> int:
        return 0 if self.control_accuracies is None else int(self.control_accuracies.shape[0])

    @property
    def control_accuracy(self) -> np.ndarray | None:
        """Mean accuracy of the control probes per block (None without controls)."""
        if self.control_accuracies is None:
            return None
        return self.control_accuracies.mean(axis=0)

    def interval(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` bootstrap interval of ``metric`` per row."""
        if metric not in self.lower:
            raise KeyError(
                f"No interval for {metric!r}; this table has intervals for {sorted(self.lower)} "
                "(evaluate_layers(..., bootstrap=1000) computes them)."
            )
        return self.lower[metric], self.upper[metric]

    def to_frame(self) -> pd.DataFrame:
        """One row per block, then ``output``: ``block``, ``depth``, ``filters``, ``accuracy``, ``loss``,
        ``agreement``, ``chance``; with controls ``control_accuracy`` and ``selectivity``; with a bootstrap
        ``<metric>_low`` and ``<metric>_high`` for each metric with an interval."""
        L1 = len(self.blocks)
        frame = pd.DataFrame({
            "block": list(self.blocks),
            "depth": np.asarray(self.depths),
            "filters": pd.array(list(self.filters), dtype="Int64"),
            "accuracy": self.accuracy,
            "loss": self.loss,
            "agreement": self.agreement,
            "chance": np.full(L1, self.chance),
        })
        for name, values in self.metrics.items():
            if name not in frame:
                frame[name] = values
        if self.control_accuracies is not None:
            frame["control_accuracy"] = self.control_accuracy
            frame["selectivity"] = self.selectivity
        for m in list(INTERVAL_METRICS) + [m for m in self.lower if m not in INTERVAL_METRICS]:
            if m in self.lower:
                frame[f"{m}_low"] = self.lower[m]
                frame[f"{m}_high"] = self.upper[m]
        return frame

    def plot(self, ax=None, **kwargs):
        """:func:`keras_hybrid_interp.plotting.plot_layer_accuracy` of this table; a table with task metrics
        (multi-label, regression, segmentation) draws :func:`~keras_hybrid_interp.plotting.plot_layer_metrics`."""
        from ..plotting import plot_layer_accuracy, plot_layer_metrics

        if self.metrics:
            return plot_layer_metrics(self, ax=ax, **kwargs)
        return plot_layer_accuracy(self, ax=ax, **kwargs)
