"""``GlobalAnalyzer``: global interpretability of the filters of a CNN.

Four analyses, each streaming the data in batches (NumPy arrays, batched
``tf.data.Dataset`` of ``x`` or ``(x, y)``, ``keras.utils.PyDataset``) with
every forward pass at ``training=False``, and none changing the model:

* :meth:`GlobalAnalyzer.filter_correlation` - Pearson correlation between the
  filters of a block (:mod:`.correlation`);
* :meth:`GlobalAnalyzer.filter_class_association` - point-biserial
  correlation of each filter with each class (:mod:`.association`);
* :meth:`GlobalAnalyzer.filter_importance` - permutation, ablation or Taylor
  importance of each filter, at any 4-D layer, residual blocks included
  (:mod:`.importance`, engine in :mod:`._engine`);
* :meth:`GlobalAnalyzer.layer_similarity` - linear CKA between blocks
  (:mod:`.similarity`).
"""

from __future__ import annotations

import numpy as np

from . import _graph
from ._data import as_stream
from ._engine import TailEngine
from .association import FilterClassAssociation, filter_class_association as _association
from .correlation import FilterCorrelation, filter_correlation as _correlation
from .importance import FilterImportance, OutputSpec, filter_importance as _importance
from .similarity import LayerSimilarity, layer_similarity as _similarity

__all__ = ["GlobalAnalyzer"]

_OUTPUTS = ("auto", "softmax", "sigmoid", "logits")


class GlobalAnalyzer:
    """Global (dataset-level) analysis of the filters of a Keras CNN.

    Parameters
    ----------
    model_or_interpreter : keras.Model or HybridInterpreter
        A Functional or Sequential model (nested models allowed), or an object
        with ``.graph`` (a ``ModelGraph``) and ``.block_keys`` such as a
        :class:`HybridInterpreter`, whose graph and blocks are then reused.
    blocks : "auto", str, int, layer or list of them
        Blocks analysed by default (:meth:`layer_similarity`); ignored when an
        interpreter is given (its blocks are used). Every method taking
        ``block`` also accepts the name of any layer with a 4-D output.
    batch_size : int
        Batch size used to stream NumPy inputs.
    input_shape : tuple, optional
        Only for a Sequential model that was never built.
    output : {"auto", "softmax", "sigmoid", "logits"}
        How to read the model output; "auto" looks at the last activation.
        A model without a softmax or sigmoid there is not taken for a
        classifier: the class-based analyses (association, importance with
        "accuracy" or "loss", Taylor) then ask for ``output="logits"``.

    Examples
    --------
    >>> ga = GlobalAnalyzer(model)
    >>> corr = ga.filter_correlation(x, "conv3")
    >>> imp = ga.filter_importance(x, y, "conv3", n_repeats=5, random_state=0)
    >>> imp.to_frame().groupby("filter").importance.mean()
    """

    def __init__(self, model_or_interpreter, blocks="auto", *, batch_size=64, input_shape=None, output="auto"):
        obj = model_or_interpreter
        if hasattr(obj, "graph") and hasattr(obj, "block_keys") and isinstance(getattr(obj, "graph"), _graph.ModelGraph):
            self.graph = obj.graph
            self.block_keys = list(obj.block_keys)
            self.model = getattr(obj, "wrapped_model", None) or self.graph.model
            if output == "auto":
                output = getattr(obj, "output_kind", "auto") or "auto"
        else:
            self.graph = _graph.ModelGraph(obj, input_shape=input_shape)
            self.block_keys, _, _ = _graph.select_blocks(self.graph, blocks)
            self.model = obj
        g = self.graph
        if len(g.input_keys) != 1:
            raise ValueError(f"GlobalAnalyzer needs a single-input model; model {g.model.name!r} has {len(g.input_keys)} inputs.")
        if len(g.output_keys) != 1:
            raise ValueError(
                f"GlobalAnalyzer needs a single-output model; model {g.model.name!r} has {len(g.output_keys)} "
                "outputs. Wrap the one you want: keras.Model(model.inputs, model.outputs[i])."
            )
        if output not in _OUTPUTS:
            raise ValueError(f"`output` must be one of {list(_OUTPUTS)}; received {output!r}.")
        kind = _graph.classifier_activation(g) if output == "auto" else output
        self.output_kind = None if kind == "logits" else kind
        #: False when output="auto" found no softmax or sigmoid: the class-based
        #: analyses then refuse to guess that the output holds logits.
        self._classifier = kind is not None
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
        self.batch_size = int(batch_size)
        self.block_names = [g.tensors[k].name for k in self.block_keys]
        self._spec = OutputSpec(g, self.output_kind)
        self._engines: dict[int, TailEngine] = {}

    # ------------------------------------------------------------------
    @property
    def blocks(self):
        """The default blocks (:class:`Block` list)."""
        return [self.graph.block_info(k) for k in self.block_keys]

    def __repr__(self):
        return f"GlobalAnalyzer(model={self.graph.model.name!r}, blocks={self.block_names})"

    def _stream(self, x, y=None, batch_size=None, max_samples=None):
        shape = self.graph.tensors[self.graph.input_keys[0]].shape[1:]
        return as_stream(x, y, batch_size=self.batch_size if batch_size is None else batch_size,
                         input_shape=shape, max_samples=max_samples, argname="x")

    def _require_classifier(self, what):
        if self._classifier:
            return
        shape = self.graph.tensors[self.graph.output_keys[0]].shape
        raise ValueError(
            f"{what} reads the model output as class probabilities, but model {self.graph.model.name!r} "
            f"(output shape {shape}) does not end in a softmax or sigmoid, so it does not look like a "
            "classifier. If it outputs class logits, pass output='logits' to GlobalAnalyzer; for a regression "
            "model, filter_importance takes a callable `scoring(y_true, y_pred)`, and filter_correlation "
            "and layer_similarity need no classes."
        )

    def _key(self, block, argname="block"):
        if block is None:
            raise TypeError(f"`{argname}` is required: a layer name with a 4-D output; default blocks: {self.block_names}.")
        keys, names, _ = _graph.select_blocks(self.graph, [block] if not isinstance(block, list) else block, argname)
        if len(keys) != 1:
            raise TypeError(f"`{argname}` must name one layer; received {block!r}.")
        return keys[0], names[0]

    def _engine(self, key) -> TailEngine:
        if key not in self._engines:
            self._engines[key] = TailEngine(self.graph, key)
        return self._engines[key]

    # ------------------------------------------------------------------
    def filter_correlation(self, x, block, statistic="mean", *, batch_size=None, max_samples=None) -> FilterCorrelation:
        """Pearson correlation between the filters of ``block``.

        Each filter is summarised per sample by the spatial mean (or max) of
        its map, giving an ``N x C`` matrix ``S``; the result is the Pearson
        correlation of the columns of ``S``, accumulated in one streaming pass
        in float64 (memory ``O(C^2)``, never ``N x H x W x C``).

        Parameters
        ----------
        x : array (N, H, W, ch), tf.data.Dataset or PyDataset
        block : str, int or layer
            Any layer with a 4-D output (batch, H, W, C).
        statistic : {"mean", "max"}
        batch_size, max_samples : int, optional

        Returns
        -------
        FilterCorrelation
            ``.matrix`` (C x C DataFrame), ``.dead_filters``, ``.clusters(threshold)``,
            ``.redundancy``. Dead (constant) filters get NaN rows and columns and a warning.
        """
        key, name = self._key(block)
        return _correlation(self.graph, key, self._stream(x, None, batch_size, max_samples), statistic, name)

    def filter_class_association(self, x, y=None, block=None, *, statistic="mean", batch_size=None,
                                 max_samples=None) -> FilterClassAssociation:
        """Point-biserial correlation between each filter of ``block`` and each class.

        ``r_ck = corr_n(s_nc, 1[y_n = k])`` with ``s_nc`` the spatial mean (or
        max) of filter ``c`` on sample ``n``; equivalently
        ``(mean(s_c | y=k) - mean(s_c)) / sd(s_c) * sqrt(p_k / (1 - p_k))``.
        In [-1, 1]; positive when the filter fires more on class ``k`` than on
        the others. NaN for dead filters and for classes absent from the data.
        Labels come from ``y``, else from the dataset, else the model's
        predicted class.

        Returns
        -------
        FilterClassAssociation
            ``.values`` / ``.table``: shape (C, K).
        """
        key, name = self._key(block)
        self._require_classifier("filter_class_association")
        stream = self._stream(x, y, batch_size, max_samples)
        k = self._spec.num_classes
        if k is None:
            raise ValueError("filter_class_association needs a classifier output (softmax, sigmoid or logits).")
        return _association(self.graph, key, stream, k, y is not None, self.output_kind, statistic, name)

    def filter_importance(self, x, y=None, block=None, *, method="permutation", n_repeats=5, scoring="accuracy",
                          random_state=None, groups=None, max_samples=None, perturbations_per_eval="auto",
                          ablation_value="zero", batch_size=None) -> FilterImportance:
        """Importance of each filter (or group of filters) of ``block``.

        Importance = baseline score - score after perturbing the filter
        (positive = important, as scikit-learn). Only the part of the model
        after ``block`` is re-run, with several perturbations stacked per
        forward pass; ``block`` may be any 4-D layer, also inside a residual
        block (the skip tensors crossing the cut are cached too).

        Parameters
        ----------
        x : array (N, H, W, ch), tf.data.Dataset or PyDataset
        y : array (N,) or (N, K), optional
            Labels. None: labels from the dataset, else agreement with the
            model's own predictions.
        block : str, int or layer
            Any layer with a 4-D output.
        method : {"permutation", "ablation", "taylor"}
            "permutation" shuffles the whole feature map of a filter across
            samples; "ablation" replaces it (``ablation_value`` "zero" or "mean":
            the filter's mean map); "taylor": ``|mean_n sum_hw a * dL/da|``
            from one forward/backward pass (no cache, ``scoring`` unused).
        n_repeats : int
            Permutations per filter (ablation and taylor are deterministic: 1).
        scoring : "accuracy", "loss" or callable(y_true, proba) -> float
            "loss" scores with the negative mean cross-entropy so that the
            sign convention holds.
        random_state : None, int, Generator or SeedSequence
        groups : list of lists of int, optional
            Filters perturbed jointly, one row per group (e.g.
            ``FilterCorrelation.clusters(t)``).
        max_samples : int, optional
            Analyse the first ``max_samples`` samples. Permutation and ablation
            cache the activations at ``block`` (and the skip tensors) for these
            samples: ``max_samples x H x W x C`` numbers. None: all samples (a
            warning is emitted above 1 GiB).
        perturbations_per_eval : "auto" or int
            Perturbed copies per forward pass ("auto": as many as a 512 MiB
            activation budget allows). Does not change the result.

        Returns
        -------
        FilterImportance
            ``importances`` (G, n_repeats), ``importances_mean``,
            ``importances_std``, ``baseline_score``, ``.to_frame()``.
        """
        key, name = self._key(block)
        if method == "taylor" or (method in ("permutation", "ablation") and scoring in ("accuracy", "loss")):
            self._require_classifier(f"filter_importance(method={method!r}, scoring={scoring!r})")
        stream = self._stream(x, y, batch_size, max_samples)
        return _importance(
            self._engine(key), stream, self._spec, y_given=y is not None, block=name, method=method,
            n_repeats=n_repeats, scoring=scoring, random_state=random_state, groups=groups,
            ablation_value=ablation_value, perturbations_per_eval=perturbations_per_eval,
        )

    def layer_similarity(self, x, blocks=None, *, batch_size=None, max_samples=None) -> LayerSimilarity:
        """Linear CKA (Kornblith et al. 2019) between blocks, on spatially averaged features.

        Each block ``l`` is represented by ``X_l`` (N x C_l), the per-sample
        spatial mean of each channel; ``CKA(X, Y) = ||X^T Y||_F^2 /
        (||X^T X||_F ||Y^T Y||_F)`` on column-centred features, with the
        cross-products accumulated in float64 while streaming.

        Parameters
        ----------
        x : array, tf.data.Dataset or PyDataset
        blocks : list of layer names, optional
            Default: the analyser's blocks.

        Returns
        -------
        LayerSimilarity
            ``.matrix`` (L x L DataFrame), ``.to_frame()``.
        """
        if blocks is None:
            keys = list(self.block_keys)
            names = list(self.block_names)
        else:
            keys, names, _ = _graph.select_blocks(self.graph, blocks, "blocks")
        return _similarity(self.graph, keys, names, self._stream(x, None, batch_size, max_samples))
