"""The task layer: the one place that knows what the model's output means.

Every part of the package that reads the model's output asks the model's
:class:`Task` for targets, losses, predictions, scores and metrics: the
probes, the layer table, the explanations, association, importance scoring,
the Taylor loss, the callback, the report and the CLI. A task is one of

``"multiclass"``
    (batch, K) softmax probabilities or K class logits, K >= 2; targets are
    class indices (or one-hot rows).
``"binary"``
    (batch, 1): the probability (sigmoid) or logit of class 1; targets are
    0/1 (read as two classes).
``"multilabel"``
    (batch, K) independent sigmoid probabilities, or K logits, K >= 2;
    targets are (N, K) 0/1 indicators. The loss is the binary
    cross-entropy averaged over the K labels.
``"regression"``
    (batch,) or (batch, K) real values from linear units; targets are (N,)
    or (N, K) finite floats. The loss is the squared error averaged over the
    K targets.
``"segmentation"``
    a map of per-position class scores: (batch, T, K), (batch, H, W, K) or
    (batch, D, H, W, K), softmax probabilities, one sigmoid unit (binary
    masks) or logits; targets are integer masks (N, T), (N, H, W), (N, D, H, W)
    or one-hot masks with a last axis K. The loss is the per-pixel
    cross-entropy averaged over the positions of a sample.

The two classification tasks are :class:`ClassificationTask`, which *is* the
package's :class:`~keras_hybrid_interp.core.output.OutputReader` (every
single-label behaviour stays as it was); the others are their own classes
with the same interface (``predicted``, ``loss``, ``targets``,
``model_targets``, ``score_fn``, ``metrics``).

Inference (``task="auto"``, :func:`infer_task`) reads the output's shape and
final activation: softmax over K: multi-class; one sigmoid unit: binary;
K > 1 sigmoid units: multi-label; a spatial output map: segmentation. Linear
units are ambiguous (class logits, label logits or regression values): they
need ``task=``. A declared task that contradicts the output is refused.

All arithmetic is float64 NumPy on the outputs, except :meth:`Task.loss`
with ``xp=keras.ops``, which runs on backend tensors for the Taylor
gradient (the formulas exist once).
"""

from __future__ import annotations

import numpy as np

from .output import EPS, KINDS, OutputReader, check_kind

__all__ = [
    "TASKS",
    "Task",
    "ClassificationTask",
    "MultiLabelTask",
    "RegressionTask",
    "SegmentationTask",
    "SegmentationScore",
    "infer_task",
    "AmbiguousOutputError",
    "check_task",
    "binary_metrics",
]

#: The task names ``task=`` accepts (and "auto").
TASKS = ("multiclass", "binary", "multilabel", "regression", "segmentation")


class AmbiguousOutputError(ValueError):
    """``task="auto"`` cannot tell what an output means (linear units, or an operation it cannot read)."""


def check_task(task, argname="task") -> str:
    if not isinstance(task, str) or task not in ("auto",) + TASKS:
        raise ValueError(f"`{argname}` must be 'auto' or one of {list(TASKS)}; received {task!r}.")
    return task


def _np(out):
    return np.asarray(out, dtype=np.float64)


def _log_sigmoid(z, xp=np):
    """``(log sigmoid(z), log(1 - sigmoid(z)))``, stable."""
    soft = xp.log1p(xp.exp(-xp.abs(z)))
    return -(xp.maximum(-z, 0.0) + soft), -(xp.maximum(z, 0.0) + soft)


def _sigmoid_logs(out, kind, xp=np):
    """Per-unit ``(log p, log(1 - p))`` of sigmoid probabilities or logits."""
    if kind == "logits":
        return _log_sigmoid(out, xp)
    p = xp.clip(out, EPS, 1.0 - EPS)
    return xp.log(p), xp.log(1.0 - p)


class Task:
    """Interface of every task (see the module docstring).

    Attributes
    ----------
    name : str
        One of :data:`TASKS`.
    kind : str
        How the output is read: ``"softmax"``, ``"sigmoid"``, ``"logits"``
        or ``"linear"`` (regression).
    units : int
        Size of the output's last axis.
    num_outputs : int
        Classes (2 for a binary output), labels or regression targets.
    default_scoring : str
        The importance score of :meth:`score_fn` used when ``scoring="auto"``.
    scorings : tuple of str
        The named importance scores.
    metric_names : tuple of str
        The probe metrics of :meth:`metrics`, first the headline one.
    """

    name = ""
    kind = ""
    units = 1
    num_outputs = 1
    default_scoring = "loss"
    scorings: tuple = ("loss",)
    metric_names: tuple = ()
    #: Whether a higher value of each metric is better (for plots and rankings).
    higher_is_better: dict = {}

    @property
    def is_classification(self) -> bool:
        return self.name in ("multiclass", "binary")

    @property
    def spatial(self) -> bool:
        return self.name == "segmentation"

    def default_names(self) -> list[str]:
        prefix = {"multilabel": "label_", "regression": "target_"}.get(self.name, "")
        return [f"{prefix}{i}" for i in range(self.num_outputs)]

    def check_scoring(self, scoring, argname="scoring") -> str:
        """The scoring's name: ``"auto"`` becomes :attr:`default_scoring`; a callable keeps its name."""
        if callable(scoring):
            return getattr(scoring, "__name__", type(scoring).__name__)
        if isinstance(scoring, str) and scoring == "auto":
            return self.default_scoring
        if not isinstance(scoring, str) or scoring not in self.scorings:
            raise ValueError(
                f"`{argname}` must be 'auto', one of {list(self.scorings)} (the scores of a {self.name} model) "
                f"or a callable scoring(y_true, y_pred) -> float (higher is better); received {scoring!r}."
            )
        return scoring

    def loss(self, out, targets, xp=np):  # pragma: no cover - interface
        raise NotImplementedError

    def predicted(self, out):  # pragma: no cover - interface
        raise NotImplementedError

    def targets(self, y, argname="y"):  # pragma: no cover - interface
        """``y`` checked and converted to the task's targets (a clear error naming ``argname``)."""
        raise NotImplementedError


# ----------------------------------------------------------------------
# Classification (multi-class and binary): the output reader itself
# ----------------------------------------------------------------------
class ClassificationTask(OutputReader, Task):
    """Multi-class (softmax or K logits) or binary (one sigmoid unit or logit) classification."""

    default_scoring = "accuracy"
    scorings = ("accuracy", "loss")
    metric_names = ("accuracy", "loss", "agreement")
    higher_is_better = {"accuracy": True, "loss": False, "agreement": True}

    def __init__(self, kind: str, units: int):
        OutputReader.__init__(self, kind, units)
        self.name = "binary" if self.binary else "multiclass"
        self.num_outputs = self.num_classes

    def __repr__(self):
        return f"ClassificationTask(name={self.name!r}, kind={self.kind!r}, units={self.units})"

    def loss(self, out, targets, xp=np):
        """(n,) cross-entropy against class indices or distributions."""
        return self.cross_entropy(out, targets, xp)

    def targets(self, y, argname="y"):
        from .data import to_class_indices

        return to_class_indices(y, self.num_classes, argname=argname)

    def model_targets(self, out):
        """Label-free probe targets: the model's class distribution (soft targets)."""
        return self.probabilities(out)

    def hard_targets(self, out):
        """Label-free scoring targets: the model's predicted class."""
        return self.predicted(out)

    def score_fn(self, scoring, targets):
        if callable(scoring):
            return lambda out: float(scoring(targets, self.probabilities(out)))
        if scoring == "accuracy":
            return lambda out: float(np.mean(self.predicted(out) == targets))
        return lambda out: float(-np.mean(self.cross_entropy(out, targets)))


# ----------------------------------------------------------------------
# Multi-label
# ----------------------------------------------------------------------
def _check_binary_matrix(y, k, argname, what="labels"):
    y = np.asarray(y)
    if y.ndim == 1 and k > 1:
        kind = "integer class indices" if np.issubdtype(y.dtype, np.integer) else "one value per sample"
        raise ValueError(
            f"`{argname}` must be multi-label indicators of shape (n, {k}), one 0/1 column per label; received "
            f"shape {y.shape} ({kind}). A sample may carry several labels at once: build the indicator matrix, "
            "e.g. sklearn.preprocessing.MultiLabelBinarizer().fit_transform(label_sets)."
        )
    if y.ndim != 2 or y.shape[1] != k:
        raise ValueError(
            f"`{argname}` must be multi-label indicators of shape (n, {k}) for a model with {k} {what}; received "
            f"shape {y.shape}."
        )
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"`{argname}` must hold 0/1 numbers or booleans; received dtype {y.dtype}.")
    yf = y.astype(np.float64)
    if not np.all((yf == 0) | (yf == 1)):
        bad = np.unique(yf[(yf != 0) & (yf != 1)])[:5]
        raise ValueError(
            f"`{argname}` must hold only 0 and 1 (label absent or present); received other values, e.g. "
            f"{bad.tolist()}."
        )
    return yf


class MultiLabelTask(Task):
    """K independent binary labels: K sigmoid units, or K logits."""

    name = "multilabel"
    default_scoring = "average_precision"
    scorings = ("average_precision", "loss")
    metric_names = ("auroc", "average_precision", "f1", "hamming", "loss", "agreement")
    higher_is_better = {"auroc": True, "average_precision": True, "f1": True, "hamming": False, "loss": False,
                        "agreement": True}

    def __init__(self, kind: str, units: int):
        if kind not in ("sigmoid", "logits"):
            raise ValueError(f"A multi-label output is read as 'sigmoid' or 'logits'; received {kind!r}.")
        self.kind = kind
        self.units = self.num_outputs = int(units)

    def __repr__(self):
        return f"MultiLabelTask(kind={self.kind!r}, labels={self.units})"

    def _flat(self, out, xp=np):
        if xp is np:
            out = _np(out)
        return xp.reshape(out, (-1, self.units))

    def logits(self, out):
        """(n, K) float64 logits (outputs read as logits only)."""
        return self._flat(out)

    def probabilities(self, out, xp=np):
        """(n, K) per-label probabilities."""
        out = self._flat(out, xp)
        if self.kind == "logits":
            return xp.exp(_log_sigmoid(out, xp)[0])
        return out

    @staticmethod
    def decide(probabilities, xp=np):
        """0/1 label decisions from probabilities: present where p > 0.5 (scikit-learn's ``predict``, Keras'
        binary accuracy, and a binary classifier's argmax of ``[1 - p, p]``, which ties to absent)."""
        if xp is np:
            return (np.asarray(probabilities) > 0.5).astype(np.int64)
        return xp.cast(probabilities > 0.5, "float32")

    def predicted(self, out):
        """(n, K) 0/1: a label is predicted where its probability exceeds 0.5 (:meth:`decide`)."""
        return self.decide(self.probabilities(out))

    def loss(self, out, targets, xp=np):
        """(n,) binary cross-entropy averaged over the K labels (targets 0/1 or probabilities)."""
        out = self._flat(out, xp)
        log_p, log_q = _sigmoid_logs(out, self.kind, xp)
        t = _np(targets) if xp is np else xp.cast(targets, out.dtype)
        return -xp.mean(t * log_p + (1.0 - t) * log_q, axis=1)

    def targets(self, y, argname="y"):
        return _check_binary_matrix(y, self.units, argname)

    def model_targets(self, out):
        return self.probabilities(out)

    def hard_targets(self, out):
        return self.predicted(out).astype(np.float64)

    def score_fn(self, scoring, targets):
        if callable(scoring):
            return lambda out: float(scoring(targets, self.probabilities(out)))
        if scoring == "average_precision":
            return MacroAveragePrecision(self, targets)
        return lambda out: float(-np.mean(self.loss(out, targets)))


class MacroAveragePrecision:
    """The importance score ``"average_precision"`` of a multi-label output: one output, or many at once.

    ``score(out)`` is the macro average precision of ``out`` (n, K) against the fixed ``targets``;
    :meth:`many` scores a stack of outputs ``(J, n, K)`` (the closed-form linear head's chunk of jobs,
    :meth:`.linear_head.LinearHead.run`) in one sort of ``n x (J K)`` columns: each column's average
    precision is computed on its own, so every job's score equals ``score(out[j])`` bit for bit, without
    thousands of small NumPy calls.
    """

    def __init__(self, task: MultiLabelTask, targets):
        self.task = task
        self.targets = targets

    def __call__(self, out) -> float:
        return float(macro_average_precision(self.targets, self.task.probabilities(out)))

    def many(self, outs) -> np.ndarray:
        """(J,) scores of the outputs ``outs`` (J, n, K)."""
        outs = np.asarray(outs)
        j, n = outs.shape[:2]
        p = np.stack([self.task.probabilities(o) for o in outs], axis=1)  # (n, J, K)
        k = p.shape[-1]
        y = np.broadcast_to(np.asarray(self.targets, np.float64).reshape(n, 1, k), (n, j, k))
        aps = average_precisions(y.reshape(n, j * k), p.reshape(n, j * k)).reshape(j, k)
        return np.array([float(np.nanmean(a)) if not np.all(np.isnan(a)) else float("nan") for a in aps])


# ----------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------
class RegressionTask(Task):
    """K real targets from linear units (``(batch,)`` or ``(batch, K)`` outputs)."""

    name = "regression"
    kind = "linear"
    default_scoring = "r2"
    scorings = ("r2", "neg_mse", "loss")
    metric_names = ("r2", "mae", "rmse", "loss")
    higher_is_better = {"r2": True, "mae": False, "rmse": False, "loss": False}

    def __init__(self, units: int):
        self.units = self.num_outputs = int(units)

    def __repr__(self):
        return f"RegressionTask(targets={self.units})"

    def values(self, out, xp=np):
        if xp is np:
            out = _np(out)
        return xp.reshape(out, (-1, self.units))

    def predicted(self, out):
        return self.values(out)

    def loss(self, out, targets, xp=np):
        """(n,) squared error averaged over the K targets."""
        out = self.values(out, xp)
        t = self.values(targets) if xp is np else xp.reshape(xp.cast(targets, out.dtype), (-1, self.units))
        return xp.mean(xp.square(out - t), axis=1)

    def targets(self, y, argname="y"):
        y = np.asarray(y)
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise TypeError(f"`{argname}` must hold numbers (regression targets); received dtype {y.dtype}.")
        k = self.units
        if y.ndim == 1 and k == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != k:
            want = "(n,) or (n, 1)" if k == 1 else f"(n, {k})"
            raise ValueError(
                f"`{argname}` must be regression targets of shape {want}, one column per output unit of the "
                f"model ({k}); received shape {y.shape}."
            )
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            bad = int(np.sum(~np.isfinite(y)))
            raise ValueError(
                f"`{argname}` holds {bad} NaN or infinite regression targets; drop or impute those samples "
                "first (a score on them would be NaN)."
            )
        return y

    def model_targets(self, out):
        return self.values(out)

    hard_targets = model_targets

    def score_fn(self, scoring, targets):
        t = self.values(targets)
        if callable(scoring):
            return lambda out: float(scoring(t, self.values(out)))
        if scoring == "r2":
            return lambda out: float(r2(t, self.values(out)))
        return lambda out: float(-np.mean(self.loss(out, t)))


# ----------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------
class SegmentationTask(Task):
    """Per-position classification: an output map (batch, *spatial, K).

    ``kind`` is how each position's K scores are read, as for a classifier
    (``"softmax"``, ``"sigmoid"`` with one unit for binary masks,
    ``"logits"``). Targets are integer masks (batch, *spatial) or one-hot
    masks (batch, *spatial, K).
    """

    name = "segmentation"
    default_scoring = "mean_iou"
    scorings = ("mean_iou", "loss")
    metric_names = ("mean_iou", "dice", "pixel_accuracy", "loss", "agreement")
    higher_is_better = {"mean_iou": True, "dice": True, "pixel_accuracy": True, "loss": False, "agreement": True}

    def __init__(self, kind: str, units: int, spatial_shape):
        self.reader = ClassificationTask(kind, units)
        self.kind = kind
        self.units = int(units)
        self.num_outputs = self.num_classes = self.reader.num_classes
        self.spatial_shape = tuple(spatial_shape)

    def __repr__(self):
        return f"SegmentationTask(kind={self.kind!r}, classes={self.num_classes}, map={self.spatial_shape})"

    def _pixels(self, out, xp=np):
        if xp is np:
            out = _np(out)
        return xp.reshape(out, (-1, self.units))

    def probabilities(self, out):
        """(n, *spatial, K) per-position class probabilities."""
        out = _np(out)
        p = self.reader.probabilities(self._pixels(out))
        return p.reshape(out.shape[:-1] + (self.num_classes,))

    def predicted(self, out):
        """(n, *spatial) predicted class per position (argmax; ties to the lower class)."""
        out = _np(out)
        return self.reader.predicted(self._pixels(out)).reshape(out.shape[:-1])

    def loss(self, out, targets, xp=np):
        """(n,) per-position cross-entropy averaged over the positions of each sample."""
        if xp is np:
            out = _np(out)
            n = out.shape[0]
            t = np.asarray(targets)
            t = t.reshape((-1,) + ((self.num_classes,) if t.ndim == out.ndim else ()))
            return self.reader.cross_entropy(self._pixels(out), t).reshape(n, -1).mean(axis=1)
        n = out.shape[0]
        flat = xp.reshape(out, (-1, self.units))
        t = targets
        t = xp.reshape(t, (-1, self.num_classes)) if len(t.shape) == len(out.shape) else xp.reshape(t, (-1,))
        return xp.mean(xp.reshape(self.reader.cross_entropy(flat, t, xp), (n, -1)), axis=1)

    def targets(self, y, argname="y"):
        y = np.asarray(y)
        spatial = self.spatial_shape
        k = self.num_classes
        if y.ndim == len(spatial) + 2 and y.shape[-1] == 1 and k > 1:
            y = y[..., 0]
        if y.ndim == len(spatial) + 2:  # one-hot masks
            if y.shape[-1] != k:
                raise ValueError(
                    f"`{argname}`: one-hot masks must have {k} channels (the model's classes); received shape "
                    f"{y.shape}."
                )
            if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=-1) == 1):
                raise ValueError(f"`{argname}`: one-hot masks must hold one 1 per position; received other values.")
            y = y.argmax(axis=-1)
        if y.ndim != len(spatial) + 1 or any(e is not None and g != e for g, e in zip(y.shape[1:], spatial)):
            want = ", ".join(str(d) for d in spatial)
            raise ValueError(
                f"`{argname}` must be masks of shape (n, {want}) of class indices, or (n, {want}, {k}) one-hot, "
                f"at the model's output resolution; received shape {y.shape}."
            )
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool
                or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
            raise TypeError(f"`{argname}` masks must hold integer class indices; received dtype {y.dtype}.")
        y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= k):
            bad = np.unique(y[(y < 0) | (y >= k)])[:5]
            raise ValueError(
                f"`{argname}` masks hold classes outside 0..{k - 1} (the model outputs {k} classes per position): "
                f"{bad.tolist()}."
            )
        return y

    def model_targets(self, out):
        return self.probabilities(out)

    def hard_targets(self, out):
        return self.predicted(out)

    def score_fn(self, scoring, targets):
        if callable(scoring):
            return lambda out: float(scoring(targets, self.probabilities(out)))
        return SegmentationScore(self, scoring, targets)


class SegmentationScore:
    """A segmentation importance score that adds up over samples: mean IoU or negative pixel cross-entropy.

    Mean IoU is read off the confusion matrix of all positions, a sum over
    samples; the pixel cross-entropy is the mean over samples of each sample's
    mean over its positions (every sample has as many positions), a sum too.
    So a job's outputs can be scored chunk of samples by chunk of samples:
    ``acc = score.begin()``, then ``acc.update(out_chunk, score.targets[s:e])``
    for consecutive chunks, then ``acc.result()`` (the engines do that,
    :func:`~keras_hybrid_interp.core.perturbation.score_jobs` and
    :meth:`~keras_hybrid_interp.core.linear_head.LinearHead.run_maps`), and the
    float64 probabilities and masks exist for one chunk at a time.
    ``score(out)`` scores all outputs at once, by the same chunks of
    ``chunk_samples`` samples. Higher is better.
    """

    #: Samples per chunk of ``score(out)``: float64 work of a chunk stays near 16 MiB at 256 x 256 x 4.
    chunk_samples = 4

    def __init__(self, task: SegmentationTask, scoring: str, targets):
        if scoring not in task.scorings:  # pragma: no cover - checked by Task.check_scoring
            raise ValueError(scoring)
        self.task = task
        self.scoring = scoring
        self.targets = targets

    def begin(self) -> SegmentationScoreSums:
        return SegmentationScoreSums(self.task, self.scoring)

    @property
    def reads_argmax(self) -> bool:
        """True when the score reads each position's argmax of a softmax alone (mean IoU of K > 1 classes).

        Such a score is a function of the confusion matrix (:meth:`from_confusion`), so a perturbation that
        moves no position's argmax leaves it as it is: the per-position head engine
        (:meth:`~keras_hybrid_interp.core.linear_head.LinearHead.run_maps`) then recomputes only the positions
        whose argmax can move, exactly.
        """
        return self.scoring == "mean_iou" and self.task.kind == "softmax" and self.task.units > 1

    def from_confusion(self, cm) -> float:
        """The mean IoU of a (K, K) confusion matrix (rows: targets), as :meth:`SegmentationScoreSums.result`."""
        return float(np.nanmean(confusion_scores(cm)["iou"]))

    def __call__(self, out) -> float:
        acc = self.begin()
        step = self.chunk_samples
        for s in range(0, len(out), step):
            acc.update(out[s:s + step], self.targets[s:s + step])
        return acc.result()


class SegmentationScoreSums:
    """The running sums of one job's :class:`SegmentationScore`: a confusion matrix, or a sum of losses."""

    def __init__(self, task: SegmentationTask, scoring: str):
        self.task = task
        self.scoring = scoring
        k = task.num_classes
        self.cm = np.zeros((k, k), dtype=np.float64)
        self.loss_sum = 0.0
        self.n = 0

    def update(self, out, targets) -> None:
        """Adds the outputs ``out`` (m, *spatial, units) of ``m`` consecutive samples and their ``targets``."""
        if self.scoring == "mean_iou":
            if self.task.kind == "softmax" and self.task.units > 1:
                pred = argmax_last(out)
            else:
                pred = self.task.predicted(out)
            self.cm += confusion(targets, pred, self.task.num_classes)
        else:
            self.loss_sum += float(np.sum(self.task.loss(out, targets)))
        self.n += len(out)

    def result(self) -> float:
        if self.scoring == "mean_iou":
            return float(np.nanmean(confusion_scores(self.cm)["iou"]))
        return float(-(self.loss_sum / self.n))


# ----------------------------------------------------------------------
# Metrics (float64, NumPy): the layer table's and the importance scores'
# ----------------------------------------------------------------------
def argmax_last(out) -> np.ndarray:
    """The argmax over the last axis of ``out`` (int64), ties to the lower class, as :meth:`OutputReader.predicted`.

    Read on the outputs' own dtype (a float64 copy changes no comparison), class by class: NumPy's argmax
    over a short last axis is several times slower.
    """
    out = np.asarray(out)
    best = out[..., 0].copy()
    pred = np.zeros(best.shape, dtype=np.int64)
    for k in range(1, out.shape[-1]):
        col = out[..., k]
        win = col > best
        np.copyto(best, col, where=win)
        pred[win] = k
    return pred


def r2(y, pred) -> float:
    """Coefficient of determination averaged uniformly over targets (scikit-learn's ``r2_score``).

    A constant target column scores 1 when predicted exactly and 0 otherwise, as scikit-learn does.
    """
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    sse = np.sum(np.square(y - pred), axis=0)
    sst = np.sum(np.square(y - y.mean(axis=0)), axis=0)
    return float(np.mean(r2_from_sums(sse, sst)))


def r2_from_sums(sse, sst):
    sse, sst = np.asarray(sse, np.float64), np.asarray(sst, np.float64)
    out = np.where(sse == 0, 1.0, 0.0)
    ok = sst > 0
    out[ok] = 1.0 - sse[ok] / sst[ok]
    return out


def _binary_ranking(y, score):
    """Sorted by decreasing score: cumulative true and false positives at each distinct threshold."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[distinct]
    fps = (distinct + 1) - tps
    return tps, fps


def binary_metrics(y, score) -> tuple[float, float]:
    """``(AUROC, average precision)`` of one label: scikit-learn's ``roc_auc_score`` and
    ``average_precision_score`` (ties handled as they are). NaN for a label with one class only."""
    y = np.asarray(y, np.float64)
    score = np.asarray(score, np.float64)
    pos = y.sum()
    if pos == 0 or pos == len(y):
        return float("nan"), float("nan")
    tps, fps = _binary_ranking(y, score)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / (len(y) - pos)]
    # NumPy < 2 has only trapz; the stubs checked are NumPy 2's, where it is gone (hence the one ignore).
    auroc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))  # type: ignore[attr-defined]
    precision = tps / (tps + fps)
    recall = tps / pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return auroc, ap


def average_precisions(y, scores) -> np.ndarray:
    """(K,) average precision of every label at once (scikit-learn's ``average_precision_score``, ties included).

    Each run of tied scores is one threshold: ``AP = sum over runs of (positives in the run / positives) x
    (precision at the run's end)``, i.e. each positive weighted by the precision at the end of its run. NaN for a
    label with one class only. All labels in one sort (the importance of a multi-label model scores thousands of
    perturbations: one Python loop per label was most of its time).
    """
    y = np.asarray(y, np.float64)
    scores = np.asarray(scores, np.float64)
    n = len(y)
    order = np.argsort(-scores, axis=0, kind="mergesort")
    s_sorted = np.take_along_axis(scores, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    tps = np.cumsum(y_sorted, axis=0)
    last = np.ones(s_sorted.shape, dtype=bool)  # the last row of each run of tied scores
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    rows = np.arange(n)[:, None]
    run_end = np.minimum.accumulate(np.where(last, rows, n)[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(tps / (rows + 1.0), run_end, axis=0)
    pos = y_sorted.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (y_sorted * precision_at_end).sum(axis=0) / pos
    ap[(pos == 0) | (pos == n)] = np.nan
    return ap


def macro_average_precision(y, scores) -> float:
    """Mean over labels of the average precision (labels with one class only are left out)."""
    aps = average_precisions(y, scores)
    return float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan")


def confusion(targets, predicted, k) -> np.ndarray:
    """(K, K) confusion counts (rows: true class, columns: predicted), float64."""
    code = np.asarray(targets).ravel().astype(np.intp)  # one work array, updated in place (a U-Net: 4M pixels)
    code *= k
    code += np.asarray(predicted).ravel().astype(np.intp, copy=False)
    return np.bincount(code, minlength=k * k).reshape(k, k).astype(np.float64)


def confusion_scores(cm) -> dict:
    """Per-class IoU and Dice, and the pixel accuracy, of a confusion matrix.

    A class absent from both the targets and the predictions has no IoU (NaN),
    as in scikit-learn's ``jaccard_score(average="macro")`` over the present labels.
    """
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        dice = np.where(union > 0, 2 * tp / np.where(union > 0, 2 * tp + fp + fn, 1), np.nan)
    total = cm.sum()
    return {"iou": iou, "dice": dice, "pixel_accuracy": float(tp.sum() / total) if total else float("nan")}


# ----------------------------------------------------------------------
# Inference from the model's output
# ----------------------------------------------------------------------
def infer_task(task, activation, shape, model_name="model", kind="auto", argname="task", kind_argname="output"):
    """The :class:`Task` of an output of ``shape`` (batch first) whose last operation applies ``activation``.

    Parameters
    ----------
    task : "auto" or one of :data:`TASKS`
    activation : "softmax", "sigmoid", "linear" or None (unknown)
    shape : tuple
        The output's shape, batch axis first.
    kind : "auto" or one of "softmax", "sigmoid", "logits"
        The classifier output declaration of earlier versions (``output=``):
        "logits" declares linear units to be class logits.
    """
    task = check_task(task, argname)
    shape = tuple(shape)
    rank = len(shape)
    units = shape[-1] if rank >= 2 else 1
    units_i = 1 if units is None else int(units)
    spatial = rank >= 3
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"`{kind_argname}` must be 'auto', 'softmax', 'sigmoid' or 'logits'; received {kind!r}.")
    what = ("no activation (linear units)" if activation == "linear"
            else f"a {activation}" if activation else "an operation whose activation cannot be read")
    desc = f"model {model_name!r} outputs shape {shape} and ends in {what}"

    if task == "auto":
        if spatial:
            task = "segmentation"
        elif kind == "logits":
            task = "binary" if units_i == 1 else "multiclass"
        elif activation == "softmax" or kind == "softmax":
            task = "multiclass"
        elif activation == "sigmoid" or kind == "sigmoid":
            task = "binary" if units_i == 1 else "multilabel"
        else:
            raise AmbiguousOutputError(
                f"`{argname}`='auto' cannot tell what this output means: {desc}. Linear units may be class logits, "
                "label logits or regression values: pass task='multiclass' (or 'binary' for one unit) for class "
                "logits, task='multilabel' for independent label logits, or task='regression' for real values."
            )

    if task == "regression":
        if spatial:
            raise ValueError(
                f"`{argname}`='regression' needs an output of shape (batch,) or (batch, targets); {desc}. "
                "A spatial output map is a segmentation (task='segmentation')."
            )
        if activation in ("softmax", "sigmoid"):
            raise ValueError(
                f"`{argname}`='regression' was declared, but {desc}: its values are probabilities, not regression "
                "targets. Pass task='auto' (or the classification task it is)."
            )
        if kind != "auto":
            raise ValueError(f"`{kind_argname}`={kind!r} declares a classifier output; task='regression' takes none.")
        return RegressionTask(units_i)

    if task == "segmentation":
        if not spatial:
            raise ValueError(
                f"`{argname}`='segmentation' needs a spatial output map (batch, T, K), (batch, H, W, K) or "
                f"(batch, D, H, W, K); {desc}."
            )
        if activation == "sigmoid" and units_i > 1:
            raise ValueError(
                f"`{argname}`='segmentation' reads one class per position: a softmax over K classes, one sigmoid "
                f"unit (binary masks) or K logits; {desc}, i.e. K independent per-position labels (multi-label "
                "masks), which are not supported yet. Interpret one label at a time: a model whose output is that "
                "label's one-unit sigmoid map."
            )
        seg_kind = _classifier_kind(kind, activation, units_i, desc, argname, "segmentation")
        return SegmentationTask(seg_kind, units_i, shape[1:-1])

    if spatial:
        raise ValueError(
            f"`{argname}`={task!r} needs an output of shape (batch, units); {desc}. A spatial output map is a "
            "segmentation (task='segmentation' or 'auto')."
        )
    if rank < 2:
        raise ValueError(f"`{argname}`={task!r} needs an output of shape (batch, units); {desc}.")
    if task == "multilabel":
        if units_i < 2:
            raise ValueError(
                f"`{argname}`='multilabel' needs at least 2 output units (one per label); {desc}. One sigmoid "
                "unit is a binary classifier (task='binary')."
            )
        if activation == "softmax":
            raise ValueError(
                f"`{argname}`='multilabel' was declared, but {desc}: a softmax makes the labels exclusive (one "
                "class per sample). Multi-label models end in K sigmoid units (or K logits)."
            )
        ml_kind = "sigmoid" if activation == "sigmoid" else "logits"
        if kind == "sigmoid" and activation not in ("sigmoid", None):
            raise ValueError(f"`{kind_argname}`='sigmoid' was declared, but {desc}.")
        if kind in ("sigmoid", "logits"):
            ml_kind = kind if activation is None else ml_kind
        return MultiLabelTask(ml_kind, units_i)

    # multiclass / binary
    if task == "binary" and units_i != 1:
        if activation == "softmax" and units_i == 2:
            raise ValueError(
                f"`{argname}`='binary' means one output unit (the probability or logit of class 1); {desc}. A "
                "two-unit softmax is task='multiclass' (with 2 classes)."
            )
        raise ValueError(
            f"`{argname}`='binary' means one output unit (the probability or logit of class 1); {desc}. "
            + ("K sigmoid units are independent labels: task='multilabel'." if activation == "sigmoid" else "")
        )
    if task == "multiclass" and units_i < 2:
        raise ValueError(
            f"`{argname}`='multiclass' needs at least 2 output units; {desc}. One unit is task='binary'."
        )
    if task == "multiclass" and activation == "sigmoid":
        raise ValueError(
            f"`{argname}`='multiclass' was declared, but {desc}: K sigmoid units are independent labels "
            "(task='multilabel'), not exclusive classes."
        )
    cls_kind = _classifier_kind(kind, activation, units_i, desc, argname, task)
    return ClassificationTask(cls_kind, units_i)


def _classifier_kind(kind, activation, units, desc, argname, task):
    """How a classifier-like output is read: the declared ``kind``, or the activation (linear: logits)."""
    if kind == "auto":
        if activation in ("softmax", "sigmoid"):
            return activation
        return "logits"  # a declared classification task on linear units (or an unreadable last op)
    # An explicit kind (``output=``) is checked against the activation by the classifier rule.
    return check_kind(kind, activation, units if task != "segmentation" else None, argname="output")


# ----------------------------------------------------------------------
# The model's output: which one, and its task
# ----------------------------------------------------------------------
def output_names(graph) -> list[str]:
    """The names of the graph's outputs, in ``graph.output_keys`` order (the producing layers' names)."""
    return [graph.tensors[k].name for k in graph.output_keys]


def resolve_output(graph, output=None, model_name="model", argname="output"):
    """``(key, kind)``: the graph tensor of the analysed output, and the classifier kind declared by ``output``.

    ``output`` is None or ``"auto"`` (the model's only output), an output's
    name or index (a model with several outputs), or, as in earlier versions,
    an output kind ``"softmax"``, ``"sigmoid"`` or ``"logits"`` for a
    single-output model.
    """
    names = output_names(graph)
    keys = list(graph.output_keys)
    listing = ", ".join(f"{i}: {n!r} {tuple(graph.tensors[k].shape)}" for i, (n, k) in enumerate(zip(names, keys)))
    if output is None or (isinstance(output, str) and output == "auto"):
        if len(keys) != 1:
            raise ValueError(
                f"Model {model_name!r} has {len(keys)} outputs ({listing}); pass `{argname}=` with the name or "
                "index of the one to interpret."
            )
        return keys[0], "auto"
    if isinstance(output, str) and output in names and not (output in KINDS and len(keys) == 1):
        # (a single output layer named "logits" still reads output="logits" as the kind, as before)
        return keys[names.index(output)], "auto"
    if isinstance(output, str) and output in KINDS:
        if len(keys) != 1:
            raise ValueError(
                f"`{argname}`={output!r} declares how a single output is read, but model {model_name!r} has "
                f"{len(keys)} outputs ({listing}). Pass `{argname}=` with the name or index of one, and `task=` to "
                "say what it holds (e.g. task='multiclass' for class logits)."
            )
        return keys[0], output
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        if not -len(keys) <= output < len(keys):
            raise ValueError(
                f"`{argname}`={output} is not an output index of model {model_name!r}; its outputs are {listing}."
            )
        return keys[int(output)], "auto"
    raise ValueError(
        f"`{argname}` must be 'auto', the name or index of one of the model's outputs, or an output kind "
        f"('softmax', 'sigmoid', 'logits'); received {output!r}. Model {model_name!r} has outputs {listing}."
    )


def task_for(graph, task="auto", output=None, model_name="model", argnames=("task", "output")):
    """``(key, Task)`` of the analysed output of ``graph`` (see :func:`resolve_output` and :func:`infer_task`)."""
    from .output import output_activation

    key, kind = resolve_output(graph, output, model_name, argnames[1])
    shape = tuple(graph.tensors[key].shape)
    if len(shape) == 1:
        shape = shape + (1,)
    label = model_name if len(graph.output_keys) == 1 else f"{model_name}' output '{graph.tensors[key].name}"
    return key, infer_task(task, output_activation(graph, key), shape, label, kind, argnames[0], argnames[1])
