"""``GlobalAnalyzer``: global interpretability of the filters of a CNN.

Four analyses, each streaming the data in batches (NumPy arrays, batched
``tf.data.Dataset`` of ``x`` or ``(x, y)``, ``keras.utils.PyDataset``) with
every forward pass at ``training=False``, and none changing the model:

* :meth:`GlobalAnalyzer.filter_correlation` - Pearson correlation between the
  filters of a block (:mod:`.correlation`);
* :meth:`GlobalAnalyzer.filter_class_association` - point-biserial
  correlation of each filter with each class (:mod:`.association`);
* :meth:`GlobalAnalyzer.filter_importance` - permutation, ablation or Taylor
  importance of each filter, at any feature-map layer (1-D, 2-D or 3-D CNN), residual blocks included
  (:mod:`.importance`, engine in :mod:`~keras_hybrid_interp.core.engine`);
* :meth:`GlobalAnalyzer.layer_similarity` - linear CKA between blocks, of
  this model or against another model's (:mod:`.similarity`);
* :meth:`GlobalAnalyzer.filter_examples` - the top-k activating samples of
  each filter and their crops at the filter's receptive field (:mod:`.atlas`).
"""

from __future__ import annotations

import keras

from ..core import blocks as _blocks
from ..core import data_pass as _pass
from ..core import graph as _graph
from ..core import health as _health
from ..core.coupling import tied_tensors
from ..core.data import model_stream
from ..core.deprecation import renamed
from ..core.drift import check_drift
from ..core.engine import TailEngine, TiedTailEngine, tail_engine
from ..core.task import AmbiguousOutputError, resolve_output, task_for
from ..core.validation import check_int
from .association import (
    AssociationMoments,
    FilterClassAssociation,
    association_result,
)
from .atlas import FilterExamples, examples_reducer, examples_result
from .correlation import (
    FilterCorrelation,
    correlation_result,
    filter_correlation_reducer,
)
from .dissection import QUANTILE, SegmentationAssociation, segmentation_association
from .importance import (
    TAYLOR_DEFAULT,
    FilterImportance,
    check_request,
    importance_reducer,
    importance_result,
)
from .similarity import ESTIMATORS, LayerSimilarity, OtherModel, similarity_reducer, similarity_result

__all__ = ["GlobalAnalyzer"]


class GlobalAnalyzer:
    """Global (dataset-level) analysis of the filters of a Keras CNN.

    Parameters
    ----------
    model_or_interpreter : keras.Model or HybridInterpreter
        A Functional or Sequential model (nested models allowed), or an object
        with ``.graph`` (a ``ModelGraph``) and ``.block_keys`` such as a
        :class:`HybridInterpreter`, whose graph and blocks are then reused.
        Built from a fitted interpreter, every analysis checks its data for
        input drift against the data the probes were fitted on
        (:mod:`~keras_hybrid_interp.core.drift`; a ``input_drift`` warning).
    blocks : "auto", str, int, layer or list of them
        Blocks analysed by default (:meth:`layer_similarity`); ignored when an
        interpreter is given (its blocks are used). Every method taking
        ``block`` also accepts the name of any layer with a feature-map output
        (rank 3, 4 or 5: a 1-D, 2-D or 3-D CNN).
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
    >>> corr = ga.filter_correlation(x, block="conv3")
    >>> imp = ga.filter_importance(x, y, block="conv3", n_repeats=5, random_state=0)
    >>> imp.to_frame().groupby("filter").importance.mean()
    """

    def __init__(self, model_or_interpreter, blocks="auto", *, batch_size=64, input_shape=None, output="auto",
                 class_names=None, task="auto"):
        obj = model_or_interpreter
        #: The model's task (:class:`~keras_hybrid_interp.core.task.Task`); None when task="auto" could not
        #: tell what a linear output means (the target-based analyses then ask for `task=`).
        self.reader = None
        self._statistics_source = None  # the interpreter whose fitted input statistics the drift check reads
        if hasattr(obj, "graph") and hasattr(obj, "block_keys") and isinstance(obj.graph, _graph.ModelGraph):
            self._statistics_source = obj
            self.graph = obj.graph  # already reads the interpreter's one output
            self.block_keys = list(obj.block_keys)
            self.model = getattr(obj, "wrapped_model", None) or self.graph.model
            if task == "auto" and output == "auto":
                self.reader = getattr(obj, "reader", None)
            if class_names is None:
                class_names = getattr(obj, "class_names", None)
        else:
            self.graph = _graph.ModelGraph(obj, input_shape=input_shape)
            self.block_keys, _, _ = _blocks.select_blocks(self.graph, blocks)
            self.model = obj
        g = self.graph
        if self.reader is None:
            key, kind = resolve_output(g, output, g.model.name)
            if len(g.output_keys) > 1:
                g.select_output(key)
            try:
                _, self.reader = task_for(g, task, kind, g.model.name)
            except AmbiguousOutputError:
                # task="auto" on linear units (logits or regression values) or an unreadable last
                # operation: no task. Correlation, CKA and the atlas need none; the target-based
                # analyses ask for `task=` (require_classifier). Every other refusal stands.
                pass
        self.output_kind = None if self.reader is None else self.reader.kind
        #: The task's name, or None.
        self.task = None if self.reader is None else self.reader.name
        self.batch_size = check_int(batch_size, "batch_size")
        self.block_names = [g.tensors[k].name for k in self.block_keys]
        self.class_names = None if self.reader is None else (
            [str(c) for c in class_names] if class_names is not None else self.reader.default_names())
        self._engines: dict[tuple[str, int], TailEngine] = {}  # by (kind, tensor key)

    # ------------------------------------------------------------------
    @property
    def blocks(self):
        """The default blocks (:class:`Block` list)."""
        return _blocks.block_infos(self.graph, self.block_keys)

    def __repr__(self):
        return f"GlobalAnalyzer(model={self.graph.model.name!r}, blocks={self.block_names})"

    def _stream(self, x, y=None, *, batch_size=None, max_samples=None, steps=None):
        """``x`` (and ``y``) as a checked stream of batches for this model."""
        return model_stream(self.graph, x, y, batch_size=self.batch_size if batch_size is None else batch_size,
                            max_samples=max_samples, steps=steps)

    @property
    def input_statistics(self):
        """The input statistics the interpreter's probes were fitted on (the drift check's reference), or None.

        None for an analyzer built from a model, or from an interpreter whose
        probes are not fitted.
        """
        return getattr(self._statistics_source, "input_statistics", None)

    def _run(self, stream, reducers):
        """One pass of ``stream`` through the model, feeding ``reducers``.

        See :mod:`~keras_hybrid_interp.core.data_pass`. When
        :attr:`input_statistics` exist, the inputs are checked for drift
        against them (:func:`keras_hybrid_interp.core.drift.check_drift`),
        from an :class:`~keras_hybrid_interp.core.data_pass.InputMoments` among
        ``reducers`` or one added to the pass.
        """
        reference = self.input_statistics
        moments = None
        if reference is not None:
            moments = next((r for r in reducers if isinstance(r, _pass.InputMoments)), None)
            if moments is None:
                moments = _pass.InputMoments()
                reducers = [*reducers, moments]
        info = _pass.run(self.graph, stream, reducers, task=self.reader)
        if moments is not None:
            check_drift(reference, moments)
        return info

    def _require_classifier(self, what):
        if self.reader is not None:
            return
        shape = self.graph.tensors[self.graph.output_keys[0]].shape
        raise ValueError(
            f"{what} reads the model output through its task, but model {self.graph.model.name!r} "
            f"(output shape {shape}) ends in linear units (or an operation whose activation cannot be read), "
            "which may be class logits, label logits or regression values. Pass task= to GlobalAnalyzer: "
            "task='regression', 'multiclass' or 'binary' (class logits, as output='logits' did) or 'multilabel'. "
            "Without a task, filter_importance takes a callable `scoring(y_true, y_pred)` of the raw outputs, "
            "and filter_correlation and layer_similarity need none."
        )

    def _key(self, block, argname="block"):
        """``(tensor key, name)`` of a layer with a feature-map output (rank 3, 4 or 5)."""
        if block is None:
            raise TypeError(
                f"`{argname}` is required: a layer name with a feature-map output (rank 3-5); "
                f"default blocks: {self.block_names}."
            )
        keys, names, _ = _blocks.select_blocks(self.graph, [block] if not isinstance(block, list) else block, argname)
        if len(keys) != 1:
            raise TypeError(f"`{argname}` must name one layer; received {block!r}.")
        return keys[0], names[0]

    def _engine(self, key, *, coupled=False, shortcut=True) -> TailEngine:
        """The perturbation engine cut at tensor ``key`` (built once per analyzer).

        ``coupled=True``: the engine that perturbs channel ``i`` of every
        tensor tied to ``key`` (:func:`~keras_hybrid_interp.core.coupling.tied_tensors`).
        Otherwise, where ``key`` is read only through a global pooling (the
        last block of a ``keras.applications`` model), the exact pooled-head
        shortcut (:class:`~keras_hybrid_interp.core.engine.PooledHeadEngine`);
        ``shortcut=False`` gives the plain tail (Taylor importance needs it).
        """
        if coupled:
            ident = ("coupled", key)
        else:
            ident = ("shortcut" if shortcut else "tail", key)
        if ident not in self._engines:
            if coupled:
                self._engines[ident] = TiedTailEngine(self.graph, key, tied_tensors(self.graph, key))
            else:
                self._engines[ident] = tail_engine(self.graph, key, shortcut=shortcut)
        return self._engines[ident]

    # ------------------------------------------------------------------
    @_health.collecting
    def filter_correlation(self, x, *, block, statistic="mean", batch_size=None, max_samples=None,
                           steps=None) -> FilterCorrelation:
        """Pearson correlation between the filters of ``block``.

        Each filter is summarised per sample by the spatial mean (or max) of
        its map, giving an ``N x C`` matrix ``S``; the result is the Pearson
        correlation of the columns of ``S``, accumulated in one streaming pass
        in float64 (memory ``O(C^2)``, never ``N x H x W x C``).

        Parameters
        ----------
        x : array (N, spatial..., ch), tf.data.Dataset or PyDataset
        block : str, int or layer
            Any layer with a feature-map output: (batch, T, C), (batch, H, W, C)
            or (batch, D, H, W, C).
        statistic : {"mean", "max"}
        batch_size, max_samples, steps : int, optional

        Returns
        -------
        FilterCorrelation
            ``.matrix`` (C x C DataFrame), ``.dead_filters``, ``.clusters(threshold)``,
            ``.redundancy``. Dead (constant) filters get NaN rows and columns and a warning.
        """
        key, name = self._key(block)
        red = filter_correlation_reducer(self.graph, key, statistic)
        self._run(self._stream(x, batch_size=batch_size, max_samples=max_samples, steps=steps), [red])
        return correlation_result(red, name, statistic)

    @_health.collecting
    def filter_class_association(self, x, y=None, *, block, statistic="mean", batch_size=None,
                                 max_samples=None, steps=None,
                                 quantile=QUANTILE) -> FilterClassAssociation | SegmentationAssociation:
        """Point-biserial correlation between each filter of ``block`` and each class.

        ``r_ck = corr_n(s_nc, 1[y_n = k])`` with ``s_nc`` the spatial mean (or
        max) of filter ``c`` on sample ``n``; equivalently
        ``(mean(s_c | y=k) - mean(s_c)) / sd(s_c) * sqrt(p_k / (1 - p_k))``.
        In [-1, 1]; positive when the filter fires more on class ``k`` than on
        the others. NaN for dead filters and for classes absent from the data
        (with a warning naming them). Labels come from ``y``, else from the
        dataset, else the model's predicted class.

        A segmentation model (a spatial output map) gets NetDissect's IoU of
        each filter's top-``quantile`` mask with each class mask instead, in
        two passes (:mod:`~keras_hybrid_interp.global_.dissection`;
        ``statistic`` is not used): a :class:`SegmentationAssociation`.

        Returns
        -------
        FilterClassAssociation
            ``.values`` / ``.table``: shape (C, K).
        """
        key, name = self._key(block)
        seg = self.reader if self.reader is not None and self.reader.spatial else None  # its own task
        if seg is not None:  # filter-class IoU (global_/dissection.py)
            moments = _pass.InputMoments()  # the drift check, fed by the first of its two passes
            result = segmentation_association(
                self.graph, key, name, seg,
                lambda: self._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps),
                quantile=quantile, class_names=self.class_names, extra_reducers=[moments])
            check_drift(self.input_statistics, moments)
            return result
        self._require_classifier("filter_class_association")
        red = AssociationMoments(self.graph, key, statistic, self.reader, y is not None)
        self._run(self._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps), [red])
        return association_result(red, name, self.class_names)

    @_health.collecting
    def filter_importance(self, x, y=None, *, block, method="permutation", n_repeats=5, scoring="auto",
                          random_state=None, groups=None, max_samples=None, steps=None,
                          perturbations_per_eval="auto", ablation_value="zero", batch_size=None,
                          taylor=TAYLOR_DEFAULT) -> FilterImportance:
        """Importance of each filter (or group of filters) of ``block``.

        Importance = baseline score - score after perturbing the filter
        (positive = important, as scikit-learn). Only the part of the model
        after ``block`` is re-run, with several perturbations stacked per
        forward pass; ``block`` may be any feature-map layer, also inside a residual
        block (the skip tensors crossing the cut are cached too).

        Parameters
        ----------
        x : array (N, spatial..., ch), tf.data.Dataset or PyDataset
        y : array (N,) or (N, K), optional
            Labels. None: labels from the dataset, else agreement with the
            model's own predictions.
        block : str, int or layer
            Any layer with a feature-map output (rank 3-5); a filter's whole map
            (all its positions) is permuted or ablated, whatever its rank.
        method : {"permutation", "ablation", "taylor"}
            "permutation" shuffles the whole feature map of a filter across
            samples; "ablation" replaces it (``ablation_value`` "zero" or "mean":
            the filter's mean map); "taylor": a first-order Taylor estimate
            from one forward/backward pass (no cache, ``scoring`` unused),
            chosen by ``taylor``.
        n_repeats : int
            Permutations per filter; ``method="permutation"`` only (ablation and
            taylor are deterministic: one score per filter).
        scoring : "auto", a named score, or callable(y_true, y_pred) -> float
            The task's scores (:mod:`~keras_hybrid_interp.core.task`), higher is
            better: classification "accuracy" (the default of "auto") or "loss";
            multi-label "average_precision" (macro; the default) or "loss"
            (binary cross-entropy); regression "r2" (the default), "neg_mse" or
            "loss"; segmentation "mean_iou" (the default) or "loss" (pixel
            cross-entropy). "loss" scores with the negative mean loss so that the
            sign convention holds. A callable gets the targets and the task's
            probabilities (values for regression).
        random_state : None, int, Generator or SeedSequence
            The seed of the permutations; ``method="permutation"`` only.
        groups : list of lists of int, "coupled" or None
            A list: filters perturbed jointly, one row per group (e.g.
            ``FilterCorrelation.clusters(t)``). ``"coupled"`` (permutation and
            ablation): row ``i`` perturbs channel ``i`` of ``block`` *and of
            every tensor tied to it* across the graph (through ``Add`` and the
            operations that keep channels; :mod:`keras_hybrid_interp.core.coupling`),
            with one permutation for all of them; ``.coupled`` names those
            tensors. Caches every tied tensor too.
        max_samples, steps : int, optional
            Analyse the first samples (or batches). Permutation and ablation
            cache the activations at ``block`` (and the skip tensors) for these
            samples: ``max_samples x H x W x C`` numbers. None: all samples (a
            warning is emitted above 1 GiB).
        perturbations_per_eval : "auto" or int
            Perturbed copies per forward pass of the tail. "auto": for a run of
            at least ``CALIBRATE_MIN_WORK`` (65,536) perturbation x sample
            evaluations, chosen by measured throughput: one pass of each of a
            few candidates is timed (1, 2, 4, ... copies of all samples up to a
            512 MiB activation budget, or one copy on smaller chunks of samples),
            for at most 5 % of the estimated run time, and the fastest kept for
            the baseline and every perturbation (cached per analyzer, block and
            sample count; :meth:`TailEngine.plan <keras_hybrid_interp.core.engine.TailEngine.plan>`).
            Smaller runs stack as many copies as the budget allows. Does not
            change which perturbations are made, only the batch shape.
        taylor : {"molchanov", "abs_mean", "abs_per_sample"}
            The estimator of ``method="taylor"``, with ``z_n = sum_hw a *
            dL_n/da`` per sample: "abs_per_sample" (default) ``mean_n |z_n|``;
            "molchanov" (Molchanov et al., 2019, CVPR: the squared
            first-order loss change, per sample, averaged) ``mean_n z_n**2``;
            "abs_mean" ``|mean_n z_n|``. The default agreed best with
            ablation in BENCHMARKS.md (B2).

        Returns
        -------
        FilterImportance
            ``importances`` (G, n_repeats), ``importances_mean``,
            ``importances_std``, ``baseline_score``, ``.to_frame()``.

        Raises
        ------
        ValueError
            For an argument that does not apply to ``method``, set to another
            value than its default, naming it: ``n_repeats`` and
            ``random_state`` (permutation only), ``ablation_value`` (ablation
            only), ``perturbations_per_eval`` (permutation and ablation),
            ``taylor`` (taylor only), and a ``scoring`` other than "auto" or
            "loss" with taylor. As for every bad value, before any data is read.
        """
        key, name = self._key(block)
        if method == "taylor" or (method in ("permutation", "ablation") and not callable(scoring)):
            self._require_classifier(f"filter_importance(method={method!r}, scoring={scoring!r})")
        coupled = isinstance(groups, str) and groups == "coupled" and method in ("permutation", "ablation")
        engine = self._engine(key, coupled=coupled, shortcut=method != "taylor")
        request = check_request(engine, self.reader, method=method, n_repeats=n_repeats, scoring=scoring,
                                random_state=random_state, groups=groups, ablation_value=ablation_value,
                                perturbations_per_eval=perturbations_per_eval, taylor=taylor)
        stream = self._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps)
        if method == "taylor" and self.task == "regression" and stream.has_labels is False:
            raise ValueError(
                "method='taylor' on a regression model needs targets `y`: without them the loss is the model's "
                "squared error against its own outputs, 0 with a zero gradient everywhere. Pass y, or use "
                "method='permutation' or 'ablation'."
            )  # refused before the pass; a dataset without labels is refused by the pass's first batch
        if method == "permutation" and stream.num_samples is not None and 0 < stream.num_samples < 2:
            raise ValueError("Permutation importance shuffles across samples and needs at least 2 samples; "
                             f"`x` has {stream.num_samples}.")
        red = importance_reducer(engine, request, self.reader)
        self._run(stream, [red])
        return importance_result(engine, red, request, self.reader, y_given=y is not None, block=name)

    @_health.collecting
    def layer_similarity(self, x, *, blocks=None, other=None, other_blocks=None, estimator="minibatch", names=None,
                         batch_size=None, max_samples=None, steps=None) -> LayerSimilarity:
        """Linear CKA (Kornblith et al. 2019) between blocks, on spatially averaged features.

        Each block ``l`` is represented by ``X_l`` (N x C_l), the per-sample
        spatial mean of each channel. With ``other``, rows are this model's
        blocks and columns ``other``'s (before and after fine-tuning, two
        seeds, ...), both fed the same batches in one pass over the data.

        Parameters
        ----------
        x : array, tf.data.Dataset or PyDataset
        blocks : list of layer names, optional
            Row blocks. Default: the analyser's blocks.
        other : keras.Model, GlobalAnalyzer or HybridInterpreter, optional
            A second model taking the same inputs; it is run in inference
            mode and never changed.
        other_blocks : "auto" or list of layer names of ``other``, optional
            Column blocks. Default: ``other``'s blocks when it is an analyzer
            or interpreter, else its automatic blocks (``"auto"``).
        estimator : {"minibatch", "full"}
            "minibatch" (default): mean over minibatches of ``batch_size``
            samples of the unbiased HSIC (Nguyen, Raghu and Kornblith 2021),
            in ``O(L x batch_size^2)`` memory whatever the channels; batches of
            fewer than 4 samples are gathered with the next ones, and a short
            remainder joins the last minibatch (README, Definitions).
            "full": ``||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on all samples
            (column-centred, biased HSIC), exact, but it holds ``(sum C)^2``
            float64 numbers (1.8 GB for ResNet50's blocks; the sum runs over
            both models' blocks with ``other``).
        names : (str, str), optional
            Labels of the row and column models (``other`` only). Default:
            the two models' names, suffixed " (this)" and " (other)" when equal.
        batch_size, max_samples, steps : int, optional
            ``batch_size`` is also the minibatch size of the minibatch estimator.

        Returns
        -------
        LayerSimilarity
            ``.matrix`` (rows x columns DataFrame), ``.to_frame()``, ``.plot()``.
        """
        if estimator not in ESTIMATORS:
            raise ValueError(f"`estimator` must be one of {list(ESTIMATORS)}; received {estimator!r}.")
        keys, row_names = self._similarity_blocks(blocks)
        side, columns, models = None, None, None
        if other is not None:
            side, columns, models = self._other_model(other, other_blocks, names)
        elif other_blocks is not None or names is not None:
            raise TypeError("`other_blocks` and `names` are for comparing with another model: pass `other=` too.")
        red = similarity_reducer(self.graph, keys, estimator, side)
        self._run(self._stream(x, batch_size=batch_size, max_samples=max_samples, steps=steps), [red])
        return similarity_result(red, row_names, columns=columns, models=models)

    def _other_model(self, other, other_blocks=None, names=None, *, argnames=("other", "other_blocks")):
        """(:class:`OtherModel`, its block names, (row, column) model names) for ``layer_similarity(other=)``.

        ``argnames`` are the caller's names of ``other`` and ``other_blocks``, used in error messages
        (:func:`~keras_hybrid_interp.build_report` passes ``("compare", "compare_blocks")``).
        """
        arg, blocks_arg = argnames
        default: list[int] | str  # the other's block keys, or "auto"
        if hasattr(other, "graph") and hasattr(other, "block_keys") and isinstance(other.graph, _graph.ModelGraph):
            graph, default = other.graph, list(other.block_keys)
        elif isinstance(other, keras.Model):
            graph = self.graph if other is self.graph.model else _graph.ModelGraph(other, argname=arg)
            default = "auto"
        else:
            raise TypeError(f"`{arg}` must be a keras.Model, a GlobalAnalyzer or a HybridInterpreter; "
                            f"received {type(other).__name__}.")
        if len(graph.input_keys) != 1:
            raise ValueError(f"`{arg}` must be a single-input model; model {graph.model.name!r} has "
                             f"{len(graph.input_keys)} inputs.")
        mine = tuple(self.graph.tensors[self.graph.input_keys[0]].shape[1:])
        theirs = tuple(graph.tensors[graph.input_keys[0]].shape[1:])
        if len(mine) != len(theirs) or any(a is not None and b is not None and a != b for a, b in zip(mine, theirs)):
            raise ValueError(f"`{arg}` must take the same inputs as model {self.graph.model.name!r} (one sample: "
                             f"{mine}); model {graph.model.name!r} takes {theirs}.")
        if other_blocks is None and isinstance(default, list):  # not "auto"
            keys = default
            col_names = [graph.tensors[k].name for k in keys]
        else:
            keys, col_names, _ = _blocks.select_blocks(graph, "auto" if other_blocks is None else other_blocks,
                                                       blocks_arg)
        if names is None:
            a, b = self.graph.model.name, graph.model.name
            names = (f"{a} (this)", f"{b} (other)") if a == b else (a, b)
        elif (not isinstance(names, (tuple, list)) or len(names) != 2
              or not all(isinstance(n, str) for n in names)):
            raise TypeError(f"`names` must be a pair of strings (row model, column model); received {names!r}.")
        return OtherModel(graph, keys), list(col_names), tuple(names)

    @renamed(k="top_k")
    @_health.collecting
    def filter_examples(self, x, y=None, *, block, filters=None, top_k=9, batch_size=None, max_samples=None,
                        steps=None) -> FilterExamples:
        """The ``top_k`` samples each filter of ``block`` responds to most, with the input crops it sees (an atlas).

        The activation of a sample for a filter is the maximum of the
        filter's map over spatial positions; the ``top_k`` largest are kept while
        the data streams once through the model (memory ``O(F x top_k)``: a running
        top-k merged batch by batch), ties broken by sample order. For each,
        the location of the maximum and the input crop at the filter's
        receptive field there (computed from the graph's strides, kernel
        sizes, dilations, padding and pooling; clipped at the border).

        Parameters
        ----------
        x : array (N, H, W, ch), tf.data.Dataset or PyDataset
        y : ignored labels, accepted so that a labelled dataset or ``(x, y)`` call works unchanged.
        block : str, int or layer
        filters : None, int or sequence of int
            The filters to keep examples for (None: all).
        top_k : int
            Examples per filter (at most the number of samples). Formerly ``k``
            (deprecated, removed in 0.2).
        batch_size, max_samples, steps : int, optional

        Returns
        -------
        FilterExamples
            ``indices``, ``values``, ``locations``, ``boxes``, ``crops`` (F, top_k, ...),
            ``receptive_field``, ``.to_frame()``, ``.plot()``.
        """
        key, name = self._key(block)
        red = examples_reducer(self.graph, key, name, filters=filters, k=top_k)
        self._run(self._stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps), [red])
        return examples_result(red, name)

    def _similarity_blocks(self, blocks=None):
        if blocks is None:
            return list(self.block_keys), list(self.block_names)
        keys, names, _ = _blocks.select_blocks(self.graph, blocks, "blocks")
        return keys, names
