"""``InterpretationCallback``: watch the layers and filters of a CNN while it trains.

A ``keras.callbacks.Callback`` that, before training and at the end of every
``every`` epochs, reads a fixed validation subset through the model once and
records, per block, what a probe on that block predicts, how many filters are
dead and how redundant the filters are (and, optionally, which filters matter
most). Training itself is untouched: see :class:`InterpretationCallback`.

Definitions (all on the fixed validation subset; see also the README)
---------------------------------------------------------------------
subset
    The first ``max_samples`` samples of ``validation_data`` (deterministic),
    cached once at ``on_train_begin``. It is split once, by a permutation drawn
    from ``random_state``, into a *probe-fit* half (``n - n // 2`` samples,
    ``probe_fit_indices``) and an *evaluation* half (``n // 2`` samples,
    ``eval_indices``). Probes are trained on the first and scored on the
    second, never on their own training samples.
features
    The global average of each block output over space (one value per
    filter and sample), from one inference pass (``training=False``) of the
    whole subset through :attr:`HybridInterpreter._features`, which also gives
    the model's class probabilities.
accuracy, loss, agreement (per block, evaluation half)
    As in :meth:`HybridInterpreter.evaluate_layers` for the block's probe:
    fraction of samples whose probe top class equals the label; mean
    cross-entropy of the probe probabilities (clipped to [1e-7, 1]) against the
    label, or against the model's own distribution when the data has no
    labels; fraction whose probe top class equals the model's top class.
    ``accuracy`` is only recorded when the data has labels. Block ``"output"``
    is the model itself (``accuracy`` and ``loss``).
task metrics (per block, evaluation half; multi-label and regression models)
    A model whose task (``task=``, or inferred from its output) is multi-label
    or regression records its task's metrics instead, exactly as
    :meth:`HybridInterpreter.evaluate_layers` defines them: multi-label
    ``auroc``, ``average_precision``, ``f1``, ``hamming``, ``loss`` and
    ``agreement`` (one logistic probe per label); regression ``r2``, ``mae``,
    ``rmse`` and ``loss`` (a ridge probe, its penalty by leave-one-out).
    Against the labels, or against the model's own outputs without labels.
    Block ``"output"`` is the model itself (every metric but ``agreement``).
    The probes and the numbers come from the interpreter's one path: the
    trainer's ``fit_task_probe`` and the layer table's reducer
    (``ProbeScores``, ``TaskProbeScores``) fed the evaluation half.
segmentation metrics (per block, every pixel of the evaluation half)
    A segmentation model (a spatial output map) records ``mean_iou``,
    ``dice``, ``pixel_accuracy``, ``loss`` and ``agreement`` exactly as
    :func:`~keras_hybrid_interp.local.segmentation.evaluate_layers` defines
    them, for per-position probes (a 1x1 convolution on the block's map, its
    logits upsampled to the mask by nearest neighbour) fitted by
    :func:`~keras_hybrid_interp.local.segmentation.fit_probes` on
    ``positions_per_sample`` output positions per sample of the probe-fit
    half, drawn from ``positions_random_state_`` (the same positions at every
    record). Against the masks, or without masks against the model's own
    per-pixel distribution (``loss``) and mask (the others). Block
    ``"output"`` is the model itself (every metric but ``agreement``).
dead_filters (per block, whole subset)
    Number of filters whose spatially averaged activation is exactly the same
    for every sample of the subset (``FilterCorrelation.dead_filters``).
redundancy (per block, whole subset)
    Mean ``|r|`` of the Pearson correlation between the spatially averaged
    activations of every pair of live filters (``FilterCorrelation.redundancy``;
    NaN with fewer than two live filters).
importance (one block, whole subset, optional)
    Permutation importance (``GlobalAnalyzer.filter_importance`` with the
    task's default score: accuracy, macro average precision, R^2, mean IoU;
    mean over ``n_repeats``) of the ``top_k`` most important filters at that
    epoch; the ``filter`` column says which. The permutations are the same at
    every epoch (common random numbers), so the curves move only because the
    model does.
concept accuracy (per block and concept, optional)
    With ``concepts={name: examples}``: the held-out accuracy of the concept
    probes (CAVs) of each block, exactly as
    :meth:`HybridInterpreter.concepts` defines its ``accuracy``: the
    concept's examples are split once into a training and a held-out part
    (``test_fraction``), ``n_random`` random sets and a held-out random set
    are drawn once from ``concept_random`` (default: the subset), and at each
    record one CAV per random set is fitted on the block's pooled features
    (:func:`~keras_hybrid_interp.local.concepts.fit_concept_cavs`, the
    concepts module's own fit); the value is their mean accuracy on the
    held-out examples against as many held-out random inputs (balanced:
    chance is 0.5). Metric ``"concept_accuracy/<name>"``, one row per block
    and concept: the epoch where it rises is where the concept forms. The
    draws are the same at every record (:attr:`InterpretationCallback.concept_sets`),
    so the curves move only because the model does.

Probes
------
The same probes as :class:`HybridInterpreter`, fitted by the same trainer
(:mod:`~keras_hybrid_interp.core.trainer`): standardized pooled features, then
L2-regularised multinomial logistic regression (``C``, as scikit-learn)
solved to its optimum by L-BFGS. Each record refits them on the probe-fit
half, warm-started from the previous record's probe (mapped into the new
standardized coordinates): the objective is strictly convex, so the warm
start changes the number of iterations, not the optimum; the probes equal
what ``fit_probes`` gives on the same features up to the solver's tolerance
(``tol``, on the gradient; about 1e-5 on the probabilities). They are copied
into the probe layers of :attr:`InterpretationCallback.interpreter` when it is
read and at the end of training.

One record is one pass of the subset through the model (pooled features,
per-filter ranges, the model's output and, with ``importance``, the tail
engine's cache), through the package's one data pass.

Segmentation probes are refitted through the segmentation module's own
functions, which read the raw block maps that this pass does not keep (they
would hold ``max_samples x sum_l s_l x C_l`` numbers): a segmentation record
costs two extra passes, one over the probe-fit half (the fit, warm-started
from the previous record's probes) and one over the evaluation half (the
confusion on every pixel), together one more pass over the subset.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import warnings

import numpy as np
import pandas as pd

import keras

from .core import data_pass as _pass
from .core import health as _health
from .core.data import as_stream, x_rows, x_take
from .core.perturbation import resolve_entropy
from .core.reducers import FrontierCache
from .core.trainer import (
    MAX_ITER,
    TOL,
    check_C,
    check_solver,
    fit_task_probe,
    restandardize,
    single_thread_blas,
)
from .core.validation import check_int
from .global_.correlation import FilterCorrelation, StreamingMoments
from .global_.importance import check_request, importance_result
from .local import concepts as _concepts
from .local import segmentation as _segmentation
from .local.interpreter import ProbeScores, TaskProbeScores
from .local.probes import input_transform
from .plotting import (
    plot_training_dynamics,  # re-exported: drawn by the presentation layer
)
from .plotting.concepts import CONCEPT_METRIC

__all__ = ["ImportanceOptions", "InterpretationCallback", "ProbeOptions", "plot_training_dynamics", "LOG_FORMAT",
           "LOG_VERSION"]

_COLUMNS = ["epoch", "block", "metric", "value", "filter"]
#: The options of ``concept_options`` (those of ``HybridInterpreter.concepts`` that the concept accuracy uses).
_CONCEPT_OPTIONS = ("n_random", "test_fraction", "method", "C", "max_iter", "tol")

#: The ``format`` field of every record of a ``log_path`` file (JSON lines).
LOG_FORMAT = "keras-hybrid-interp/training-history"
#: The ``version`` field: it changes when a field of the record changes meaning.
LOG_VERSION = 1
#: What ``report_path`` may end in: :meth:`Report.save <keras_hybrid_interp.Report.save>`'s formats (a test keeps
#: the two in step).
_REPORT_SUFFIXES = (".html", ".htm", ".pdf", ".json")


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """How :class:`InterpretationCallback` refits its probes (as :meth:`HybridInterpreter.fit_probes`).

    Parameters
    ----------
    C : float
        Inverse L2 penalty, as scikit-learn's ``LogisticRegression(C=...)``.
    max_iter : int
        L-BFGS iterations per probe.
    tol : float
        Gradient tolerance of L-BFGS.
    """

    C: float = 1.0
    max_iter: int = MAX_ITER
    tol: float = TOL

    def __post_init__(self):
        check_C(self.C, "ProbeOptions(C=...)")
        check_solver(self.max_iter, self.tol, argnames=("ProbeOptions(max_iter=...)", "ProbeOptions(tol=...)"))


@dataclasses.dataclass(frozen=True)
class ImportanceOptions:
    """Which filter importance :class:`InterpretationCallback` records at every record.

    Parameters
    ----------
    block : str, int or Layer
        The block whose filters are ranked (any convolutional layer).
    n_repeats : int
        Permutations per filter.
    top_k : int
        Number of most important filters recorded (by the first record's ranking
        of all filters, then the same filters every epoch).
    """

    block: object
    n_repeats: int = 5
    top_k: int = 10

    def __post_init__(self):
        if self.block is None:
            raise ValueError("ImportanceOptions(block=...) is required: the block whose filters are ranked.")
        check_int(self.n_repeats, "ImportanceOptions(n_repeats=...)")
        check_int(self.top_k, "ImportanceOptions(top_k=...)")


def _options(value, cls, name):
    """``True``/``False``/``None``/option object -> option object (or None when off)."""
    if value is None or value is False:
        return None
    if value is True and cls is ProbeOptions:
        return ProbeOptions()
    if isinstance(value, dict):
        args = ", ".join(f"{k}={v!r}" for k, v in value.items())
        raise TypeError(f"`{name}` takes a {cls.__name__}, not a dict: write {name}={cls.__name__}({args}).")
    if not isinstance(value, cls):
        allowed = "a bool or a ProbeOptions" if cls is ProbeOptions else "None or an ImportanceOptions"
        raise TypeError(f"`{name}` must be {allowed}; received {type(value).__name__}.")
    return value


class InterpretationCallback(keras.callbacks.Callback):
    """Records layer-wise probes and filter statistics while a model trains.

    Before training starts (``on_train_begin``) and at the end of every
    ``every`` epochs, the callback runs one inference pass of a fixed
    validation subset through the model, refits one linear probe per block on
    the pooled features (warm-started from the previous record), and records
    per block: probe ``accuracy``, ``loss`` and ``agreement`` with the model,
    the number of ``dead_filters`` and the filter ``redundancy`` (mean |r|);
    optionally the permutation ``importance`` of the top filters of one block.
    Multi-label, regression and segmentation models record their task's
    metrics instead (segmentation: per-position probes scored on every pixel,
    ``mean_iou``, ``dice``, ``pixel_accuracy``, ``loss``, ``agreement``).
    The module docstring (and the README) define every metric.

    Training is untouched: the callback never compiles, traces or changes the
    user's model (it reads it through a side model,
    :class:`~keras_hybrid_interp.HybridInterpreter`, in inference mode), never
    writes to ``logs``, and draws no random numbers from the global streams
    (Python ``random``, NumPy's global generator, TensorFlow's global seed):
    its probe mini-batches, data split and permutations come from private
    generators seeded by ``random_state``. With the same seeds, training with
    and without the callback gives bit-identical weights (tested).

    Parameters
    ----------
    validation_data : tuple (x, y), array x, tf.data.Dataset or keras.utils.PyDataset
        Data the callback reads (never trained on by the model). ``x`` has
        shape (N, spatial..., C) (a 1-D, 2-D or 3-D CNN input); ``y`` holds integer labels (N,) or one-hot rows
        (N, K); a third tuple element (sample weights) is ignored. Datasets
        yield batches of ``x`` or ``(x, y)``. Without labels, probes learn the
        model's own predicted distribution and ``accuracy`` is not recorded.
    blocks : "auto", str, int, Layer or list of them
        Block ends, as for :class:`HybridInterpreter`.
    every : int
        Record at the end of every ``every`` epochs (epochs ``every``,
        ``2 * every``, ...), and at the end of training if the last epoch was
        not recorded.
    max_samples : int or None
        Size of the validation subset: the first ``max_samples`` samples
        (None: all). It is held in memory (``max_samples x H x W x C``
        numbers) and split into a probe-fit and an evaluation half.
    probes : bool or ProbeOptions
        Record ``accuracy``/``loss``/``agreement``. ``True`` fits the probes
        with the defaults of :class:`ProbeOptions` (``C=1.0``,
        ``max_iter=1000``, ``tol=1e-6``), as :meth:`HybridInterpreter.fit_probes`;
        a ``ProbeOptions(C=..., max_iter=..., tol=...)`` sets them.
    correlation : bool
        Record ``dead_filters`` and ``redundancy``.
    importance : ImportanceOptions, optional
        ``ImportanceOptions(block=name, n_repeats=5, top_k=10)``: record the
        permutation importance of the ``top_k`` most important filters of
        ``block`` (any feature-map layer). Off by default: it costs
        ``filters x n_repeats`` passes of the model tail per record.
    log_dir : str or path-like, optional
        Write TensorBoard summaries there as training goes: a scalar
        ``"{block}/{metric}"`` for every recorded value (importance:
        ``"{block}/importance/filter_{i}"``), and a histogram
        ``"{block}/filter_mean_activation"`` of the per-filter mean activation
        over the subset; step = epoch. Written with TensorFlow's ``tf.summary``
        (the ``tensorboard`` package is needed only to view them).
    csv_path : str or path-like, optional
        Append the rows of :attr:`history` to this CSV file as they are
        recorded (the header is written when the file is new or empty).
    log_path : str or path-like, optional
        Append one JSON line per record to this file (JSON lines; created
        with its folder if missing, continued if it exists), flushed and
        ``fsync``-ed before training goes on: a run killed mid-way keeps
        every record it finished. Each line is a self-describing object:
        ``format`` (:data:`LOG_FORMAT`), ``version`` (:data:`LOG_VERSION`),
        ``epoch``, ``time`` (UTC, ISO 8601), ``model``, ``task``, ``blocks``,
        ``eval_samples`` (the size of the evaluation half) and ``rows``, the record's rows of :attr:`history` as objects
        ``{"block", "metric", "value", "filter"}`` (``value`` NaN as
        ``null``; ``filter`` ``null`` but for ``importance``).
        :meth:`load_history` reads it back into :attr:`history`'s frame.
    report_path : str or path-like, optional
        At the end of training, write the full report there
        (:func:`~keras_hybrid_interp.build_report` then
        :meth:`Report.save <keras_hybrid_interp.Report.save>`: ``.html``,
        ``.pdf`` or ``.json``), with :attr:`history` as its Training section
        (unless ``report_options``' ``sections`` leave ``"training"`` out).
        The report reads the evaluation half of the subset (the probes'
        held-out samples) through :attr:`interpreter`; needs ``probes``.
    report_options : dict, optional
        Keyword arguments of :func:`~keras_hybrid_interp.build_report` for
        ``report_path`` (``block``, ``sections``, ``title``, ...);
        ``random_state`` defaults to :attr:`random_state_`.
    random_state : None, int, numpy Generator or SeedSequence
        Seeds the split, the probes' mini-batch order and the importance
        permutations. None draws fresh OS entropy (kept in ``random_state_``).
    batch_size : int
        Batch size of the inference pass (64, as everywhere in the package).
    output : "auto", an output's name or index, "softmax", "sigmoid" or "logits"
        Which output, or what it holds, as for :class:`HybridInterpreter`.
    task : "auto", "multiclass", "binary", "multilabel", "regression" or "segmentation"
        What the output means, as for :class:`HybridInterpreter` (linear
        units need it). ``validation_data``'s ``y`` has the task's shape:
        (N,) class indices or (N, K) one-hot; (N, K) 0/1 labels; (N,) or
        (N, K) floats; masks (N, *S) of class indices or (N, *S, K) one-hot
        at the output's resolution.
    positions_per_sample : int, optional
        Segmentation models only: output positions per sample of the
        probe-fit half that the per-position probes are fitted on (None:
        :data:`~keras_hybrid_interp.local.segmentation.POSITIONS_PER_SAMPLE`,
        64), as for :meth:`HybridInterpreter.fit_probes`.
    concepts : dict of str -> examples, optional
        Named sets of examples of human concepts (arrays, ``tf.data`` or
        PyDataset of inputs, at least 10 each), as for
        :meth:`HybridInterpreter.concepts`: record the concept accuracy of
        every block at every record (metric ``"concept_accuracy/<name>"``;
        see the module). Their inputs are read once, at ``on_train_begin``,
        and held in memory; each record adds one pass over them (and over the
        random inputs drawn from ``concept_random``) and
        ``concepts x blocks x n_random`` CAV fits.
        :func:`~keras_hybrid_interp.plotting.plot_concept_training` draws them.
    concept_random : array, tf.data or PyDataset, optional
        The pool the random sets are drawn from (its first ``max_samples``
        inputs); None: the validation subset. It must not hold a concept's
        examples.
    concept_options : dict, optional
        Options of the concept probes, as :meth:`HybridInterpreter.concepts`
        takes them: ``n_random`` (random sets, hence CAVs per concept and
        block: 20; fewer make a record cheaper), ``test_fraction`` (0.33),
        ``method`` ("logistic" or "fastcav"), ``C``, ``max_iter``, ``tol``.

    Attributes
    ----------
    history : pandas.DataFrame
        Tidy record: ``epoch`` (number of completed epochs; the baseline is
        epoch 0), ``block`` (a block name, or ``"output"`` for the model),
        ``metric``, ``value`` and ``filter`` (the filter index for
        ``importance``, ``<NA>`` otherwise).
    interpreter : HybridInterpreter
        The side model, built at ``on_train_begin``; its probes hold the last
        refit, so ``callback.interpreter.explain(x)`` works after training.
    validation_subset : tuple (x, y)
        The cached subset (``y``: integer labels or None).
    probe_fit_indices, eval_indices : ndarray of int
        The two halves of the subset (indices into it).
    random_state_ : int
        Entropy of every private generator of the callback.
    importance_random_state_ : int
        ``random_state`` passed to ``GlobalAnalyzer.filter_importance`` at
        every record.
    positions_random_state_ : int or None
        Segmentation models: ``random_state`` of the segmentation probes'
        fit at every record; sample ``i`` of the probe-fit half (in index
        order) is fitted on the positions
        ``numpy.random.default_rng([positions_random_state_, i])`` draws.
        None for other tasks.
    concept_sets : dict or None
        With ``concepts``: the concepts' splits and random sets, drawn once
        at ``on_train_begin`` (see the property).

    Notes
    -----
    **Detail against speed.** One record costs one inference pass over the
    ``max_samples`` samples (the bulk of it on the demo CNN), plus the probe
    refits and correlations, ``O(max_samples x sum_l C_l^2 + sum_l C_l^3)`` in
    NumPy for blocks of ``C_l`` filters (a few milliseconds for a few
    hundred filters), plus, with ``importance``, ``C x n_repeats`` passes of
    the model tail. The cost per training epoch is that divided by ``every``:
    ``every=5`` records a fifth as often for a fifth of the cost, and the
    curves have a point every 5 epochs. ``max_samples`` sets the cost of the
    pass and the precision of every number: probe accuracy is measured on
    ``max_samples // 2`` samples, so its standard error is
    ``sqrt(p (1 - p) / (max_samples / 2))`` (1.3 points at p = 0.9 with the
    default 1000; 3 points with 200), and the correlations (hence
    ``redundancy``) get noisier below a few hundred samples. The cost of a
    record on the demo CNN for each setting (defaults, ``every``,
    ``max_samples``, importance on) is measured in BENCHMARKS.md, B4; the
    probe refits (L-BFGS, one per block) dominate it when importance is off,
    and the tail passes of importance when it is on.

    Examples
    --------
    >>> cb = InterpretationCallback((x_val, y_val), log_dir="logs/interp", random_state=0)
    >>> model.fit(x_train, y_train, epochs=20, callbacks=[cb])
    >>> cb.history.query("metric == 'accuracy'").pivot(index="epoch", columns="block", values="value")
    >>> fig = plot_training_dynamics(cb.history)
    """

    def __init__(
        self,
        validation_data,
        *,
        blocks="auto",
        every=1,
        max_samples=1000,
        probes=True,
        correlation=True,
        importance=None,
        log_dir=None,
        csv_path=None,
        log_path=None,
        report_path=None,
        report_options=None,
        random_state=None,
        batch_size=64,
        output="auto",
        task="auto",
        positions_per_sample=None,
        concepts=None,
        concept_random=None,
        concept_options=None,
    ):
        super().__init__()
        self.every = check_int(every, "every")
        self.max_samples = check_int(max_samples, "max_samples", allow_none=True)
        self.batch_size = check_int(batch_size, "batch_size")
        self.probe_options = _options(probes, ProbeOptions, "probes")
        if not isinstance(correlation, bool):
            raise TypeError(f"`correlation` must be a bool; received {correlation!r}.")
        self.correlation = correlation
        self.importance_options = _options(importance, ImportanceOptions, "importance")
        self.blocks_arg = blocks
        self.output = output
        self.task = task
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        if self.log_dir is not None:
            try:
                import tensorflow  # noqa: F401  (written to at every epoch end; fail now, not after one)
            except ModuleNotFoundError:
                raise ImportError(
                    "`log_dir` writes TensorBoard event files, which needs TensorFlow; it is not installed. "
                    "Install it (pip install 'keras-hybrid-interp[tensorflow]'), or pass csv_path= instead."
                ) from None
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.log_path = _file_path(log_path, "log_path")
        self.report_path = _file_path(report_path, "report_path")
        if self.report_path is not None:
            if not self.report_path.lower().endswith(_REPORT_SUFFIXES):
                raise ValueError(f"`report_path` must end in {', '.join(_REPORT_SUFFIXES)}; "
                                 f"received {self.report_path!r}.")
            if self.probe_options is None:
                raise ValueError("`report_path` writes a report of the callback's probes, but `probes` is False. "
                                 "Pass probes=True (or a ProbeOptions), or leave report_path None.")
        self.report_options = _check_report_options(report_options, self.report_path)
        self.random_state_ = resolve_entropy(random_state)
        self.importance_random_state_ = None
        self.positions_per_sample = check_int(positions_per_sample, "positions_per_sample", allow_none=True)
        self.positions_random_state_ = None
        self._x_arg, self._y_arg = self._unpack(validation_data)
        if not isinstance(self._x_arg, (list, dict)):  # several inputs are checked against the model's inputs later
            as_stream(self._x_arg, self._y_arg, argname="validation_data")  # kind and label length, early
        self._concept_items = None if concepts is None else _concepts.check_concepts(concepts)
        if concepts is None and (concept_random is not None or concept_options is not None):
            given = "concept_random" if concept_random is not None else "concept_options"
            raise ValueError(f"`{given}` is given but `concepts` is None: pass the concepts' examples as "
                             f"`concepts={{name: examples}}`, or drop `{given}`.")
        self._concept_random_arg = concept_random
        self.concept_options = _check_concept_options(concept_options)
        self._concept_state: dict | None = None

        self._rows: list[tuple] = []
        self._interp = None
        self._analyzer = None
        self._x = self._y = None
        self._fit_idx = self._eval_idx = None
        # per block, (mean, scale, kernel, bias) of the last refit
        self._probe_fits: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None] | None = None
        self._probes_synced = True
        self._epochs_done = 0
        self._last_recorded = None
        self._writer = None

    # ------------------------------------------------------------------
    @staticmethod
    def _unpack(validation_data):
        if isinstance(validation_data, tuple):
            if not 1 <= len(validation_data) <= 3:
                raise ValueError(
                    "`validation_data` as a tuple must be (x,), (x, y) or (x, y, sample_weight); "
                    f"received a tuple of length {len(validation_data)}."
                )
            x = validation_data[0]
            y = validation_data[1] if len(validation_data) > 1 else None
            return x, y
        return validation_data, None

    @property
    def interpreter(self):
        """The :class:`HybridInterpreter` built on the model at ``on_train_begin`` (None before).

        Its probes hold the callback's last refit (copied into the probe layers
        when this attribute is read, and at the end of training).
        """
        if self._interp is not None:
            self._sync_probes()
        return self._interp

    @property
    def probe_fit_indices(self) -> np.ndarray | None:
        """Indices (into the subset) of the samples the probes are trained on."""
        return self._fit_idx

    @property
    def eval_indices(self) -> np.ndarray | None:
        """Indices (into the subset) of the samples the probes are scored on."""
        return self._eval_idx

    @property
    def validation_subset(self):
        """The cached subset ``(x, y)`` (``y`` integer labels or None); None before training."""
        return None if self._x is None else (self._x, self._y)

    @property
    def history(self) -> pd.DataFrame:
        """Tidy record of every value: columns ``epoch, block, metric, value, filter``.

        ``history.attrs["eval_samples"]`` is the size of the evaluation half
        (what the probe metrics are measured on; the report's Training section
        reads it), once training started.
        """
        frame = self._frame(self._rows)
        if self._eval_idx is not None:
            frame.attrs["eval_samples"] = int(len(self._eval_idx))
        return frame

    @classmethod
    def load_history(cls, path) -> pd.DataFrame:
        """Reads a ``log_path`` file back into the frame :attr:`history` is (same columns, dtypes and rows).

        Every record of the file, in file order (a run continued in the same
        file appends to it). A last line cut short (a run killed while writing
        it) is left out with a warning (``truncated_log``); any other line
        that is not a record of this format raises a ValueError naming it.

        Parameters
        ----------
        path : str or path-like
            The file written by ``InterpretationCallback(..., log_path=path)``.

        Returns
        -------
        pandas.DataFrame
            Columns ``epoch, block, metric, value, filter``, as :attr:`history`.
        """
        path = _file_path(path, "path")
        if path is None:
            raise TypeError("`path` must be a str or path-like (a file written through log_path=); received None.")
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        rows: list[tuple] = []
        eval_samples = None
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # the last line has no newline: cut short while being written
                    _health.warn("truncated_log", f"The last line of {path} (line {i + 1}) is cut short, as when a "
                                 "run is killed while writing it; it is left out, every earlier record is read.")
                    break
                raise ValueError(f"`path`: line {i + 1} of {path} is not JSON; this is not a log_path file.") from None
            if not isinstance(record, dict) or record.get("format") != LOG_FORMAT:
                raise ValueError(f"`path`: line {i + 1} of {path} is not a record of {LOG_FORMAT!r} (written by "
                                 "InterpretationCallback(log_path=...)).")
            if record.get("version") != LOG_VERSION:
                raise ValueError(f"`path`: line {i + 1} of {path} has version {record.get('version')!r}; this "
                                 f"package reads version {LOG_VERSION}.")
            epoch = int(record["epoch"])
            eval_samples = record.get("eval_samples", eval_samples)
            rows += [(epoch, r["block"], r["metric"], math.nan if r["value"] is None else float(r["value"]),
                      None if r["filter"] is None else int(r["filter"])) for r in record["rows"]]
        frame = cls._frame(rows)
        if eval_samples is not None:
            frame.attrs["eval_samples"] = int(eval_samples)
        return frame

    @staticmethod
    def _frame(rows) -> pd.DataFrame:
        cols = list(zip(*rows)) if rows else [()] * len(_COLUMNS)
        return pd.DataFrame({
            "epoch": np.asarray(cols[0], dtype=np.int64),
            "block": pd.Series(cols[1], dtype=object),
            "metric": pd.Series(cols[2], dtype=object),
            "value": np.asarray(cols[3], dtype=np.float64),
            "filter": pd.array(list(cols[4]), dtype="Int64"),
        })

    def __repr__(self):
        return (f"InterpretationCallback(every={self.every}, max_samples={self.max_samples}, "
                f"probes={self.probe_options is not None}, correlation={self.correlation}, "
                f"importance={self.importance_options}, records={len(self._rows)})")

    # ------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------
    def _setup(self):
        from .global_.analyzer import GlobalAnalyzer
        from .local.interpreter import HybridInterpreter

        model = self.model
        if model is None:
            raise ValueError("InterpretationCallback has no model: pass it to model.fit(callbacks=[...]) "
                             "or call callback.set_model(model) first.")
        if self._interp is not None and self._interp.wrapped_model is model:
            return
        interp = HybridInterpreter(model, self.blocks_arg, output=self.output, task=self.task)
        if self.positions_per_sample is not None and not interp.reader.spatial:
            raise ValueError(
                "`positions_per_sample` applies to segmentation models only (per-position probes on a spatial "
                f"output map); model {model.name!r} has task {interp.reader.name!r}. Leave it None; received "
                f"{self.positions_per_sample!r}."
            )
        stream = interp._stream(self._x_arg, self._y_arg, batch_size=self.batch_size,
                               max_samples=self.max_samples, argname="validation_data")
        # The subset is copied once (it stays fixed even if the caller edits its array); no model pass.
        xs, ys = _pass.Collect.first("x", None), _pass.Collect.first("y", None)
        info = _pass.run(interp.graph, stream, [xs, ys], task=interp.reader)
        x, y = xs.result(), (ys.result() if info.has_labels else None)
        n = x_rows(x)
        if self.probe_options is not None and n < 4:
            raise ValueError(f"`validation_data` must hold at least 4 samples (2 to fit the probes, 2 to "
                             f"score them); received {n}.")
        if self.correlation and n < 2:
            raise ValueError(f"`validation_data` must hold at least 2 samples to correlate filters; received {n}.")
        root = np.random.SeedSequence(self.random_state_)
        split_seq, pos_seq, imp_seq, concept_seq = root.spawn(4)  # the first three as before concepts came
        perm = np.random.default_rng(split_seq).permutation(n)
        n_eval = n // 2
        self._fit_idx = np.sort(perm[: n - n_eval])
        self._eval_idx = np.sort(perm[n - n_eval:])
        self.importance_random_state_ = int(imp_seq.generate_state(1)[0])
        self.positions_random_state_ = (int(pos_seq.generate_state(1)[0]) if interp.reader.spatial else None)
        self._x, self._y = x, y
        self._interp = interp
        self._probe_fits = None
        self._probes_synced = True
        self._analyzer = None
        if self.importance_options is not None:
            self._analyzer = GlobalAnalyzer(interp, batch_size=self.batch_size)
            key, _ = self._analyzer._key(self.importance_options.block, "ImportanceOptions(block=...)")  # validate now
            self._importance_key = key
            self._analyzer._require_classifier("importance")
        self._concept_state = None
        if self._concept_items is not None:
            self._concept_state = self._setup_concepts(interp, np.random.default_rng(concept_seq))

    # ------------------------------------------------------------------
    # Keras hooks
    # ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._setup()
        if self._last_recorded != self._epochs_done:
            self._record(self._epochs_done)

    def on_epoch_end(self, epoch, logs=None):
        if self._interp is None or self._interp.wrapped_model is not self.model:
            self._setup()
        self._epochs_done = int(epoch) + 1
        if self._epochs_done % self.every == 0:
            self._record(self._epochs_done)

    def on_train_end(self, logs=None):
        if self._interp is not None and self._last_recorded != self._epochs_done:
            self._record(self._epochs_done)
        if self._interp is not None:
            self._sync_probes()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._interp is not None and self.report_path is not None:
            self._write_report()

    # ------------------------------------------------------------------
    # One record
    # ------------------------------------------------------------------
    def _forward(self):
        """One pass of the subset: pooled features, filter ranges, model outputs (and the importance cache)."""
        interp = self._interp
        assert interp is not None  # set by _setup, which runs before any record
        feats = [_pass.Collect(t, dtype=np.float32) for t in interp._feature_taps()]
        ranges = [_pass.ChannelRange(k) for k in interp.block_keys]
        outputs = _pass.Collect(interp._output_tap())
        reducers: list = feats + ranges + [outputs]
        cache = None
        if self._analyzer is not None:
            engine = self._analyzer._engine(self._importance_key)
            cache = FrontierCache(engine)
            reducers.append(cache)
        stream = interp._stream(self._x, self._y, batch_size=self.batch_size, argname="validation_data")
        _pass.run(interp.graph, stream, reducers, task=interp.reader)
        return [f.result() for f in feats], [r.dead for r in ranges], outputs.result(), cache

    def _record(self, epoch):
        feats, dead, outputs, cache = self._forward()
        with single_thread_blas():  # small NumPy algebra right after a TensorFlow pass
            rows, means = self._statistics(epoch, feats, dead, outputs)
        if self._concept_state is not None:
            rows += self._concept_rows(epoch, feats)
        if self.importance_options is not None:
            rows += self._importance_rows(epoch, cache)
        self._rows.extend(rows)
        self._last_recorded = epoch
        self._write(epoch, rows, means)

    def _statistics(self, epoch, feats, dead, outputs):
        interp = self._interp
        assert interp is not None  # set by _setup, which runs before any record
        rows = []
        finite = [bool(np.all(np.isfinite(f))) for f in feats]
        probs_ok = bool(np.all(np.isfinite(outputs)))
        bad = [n for n, ok in zip(interp.block_names, finite) if not ok] + ([] if probs_ok else ["output"])
        if bad:
            warnings.warn(f"Epoch {epoch}: {bad} produced NaN or infinite values on the validation subset; "
                          "nothing is recorded for them at this epoch.", RuntimeWarning, stacklevel=3)
        if self.probe_options is not None and probs_ok and interp.reader.spatial:
            rows += self._segmentation_rows(epoch, finite)
        elif self.probe_options is not None and probs_ok:
            rows += self._probe_rows(epoch, feats, outputs, finite)
        means = {}
        if self.correlation:
            for name, f, d, ok in zip(interp.block_names, feats, dead, finite):
                if not ok:
                    continue
                acc = StreamingMoments(f.shape[1])
                acc.update(f)
                corr = FilterCorrelation(acc.correlation(), d, name, "mean", acc.n, acc.mean.copy())
                rows.append((epoch, name, "dead_filters", float(len(corr.dead_filters)), None))
                rows.append((epoch, name, "redundancy", corr.redundancy, None))
                means[name] = corr.mean
        else:
            means = {name: f.mean(axis=0, dtype=np.float64)
                     for name, f, ok in zip(interp.block_names, feats, finite) if ok}
        return rows, means

    def _probe_rows(self, epoch, feats, outputs, finite):
        """Refits every block's probe on the probe-fit half (the one trainer, warm-started) and scores it."""
        interp = self._interp
        assert interp is not None and self._fit_idx is not None  # set by _setup, which runs before any record
        opts = self.probe_options
        task = interp.reader
        fit = self._fit_idx
        # Labels, or the model's own outputs as label-free targets (as fit_probes without labels).
        targets = self._y[fit] if self._y is not None else task.model_targets(outputs[fit])
        if self._probe_fits is None:
            self._probe_fits = [None] * len(feats)
        for i, (f, ok) in enumerate(zip(feats, finite)):
            if not ok:
                continue
            f_fit = f[fit]
            # The standardization is refreshed at every record: the features drift as the model learns.
            mean, scale = input_transform(f_fit)
            z = (f_fit.astype(np.float64) - mean) * scale
            previous = self._probe_fits[i]
            init = None if previous is None else restandardize(*previous, mean, scale)
            sol = fit_task_probe(task, z, targets, C=opts.C, max_iter=opts.max_iter, tol=opts.tol, init=init)
            self._probe_fits[i] = (mean, scale, sol.kernel, sol.bias)
        self._probes_synced = False
        return self._score_rows(epoch, self._evaluate(feats, outputs, finite), finite)

    def _segmentation_rows(self, epoch, finite):
        """Refits the per-position probes on the probe-fit half and scores them on every pixel of the evaluation half.

        Through the segmentation module's own functions (:func:`~keras_hybrid_interp.local.segmentation.fit_probes`,
        warm-started from the previous record, and :func:`~keras_hybrid_interp.local.segmentation.evaluate_layers`),
        one pass over each half: they read the raw block maps, which the callback's pass does not keep.
        A record with a non-finite block is skipped whole (the fit refuses non-finite maps).
        """
        if not all(finite):  # warned in _statistics
            return []
        interp = self._interp
        assert interp is not None and self._fit_idx is not None and self._eval_idx is not None  # set by _setup
        opts = self.probe_options
        fit, ev = self._fit_idx, self._eval_idx
        per = _segmentation.POSITIONS_PER_SAMPLE if self.positions_per_sample is None else self.positions_per_sample
        with _health.collect():
            y_fit = self._y[fit] if self._y is not None else None
            _segmentation.fit_probes(interp, x_take(self._x, fit), y_fit, C=opts.C,
                                     max_iter=opts.max_iter, tol=opts.tol, warm_start=True,
                                     batch_size=self.batch_size, random_state=self.positions_random_state_,
                                     verbose=0, positions_per_sample=per)
        with warnings.catch_warnings():
            # Recorded every epoch: a missing class or a drift between the halves would warn at every record.
            warnings.simplefilter("ignore", _health.InterpretationWarning)
            with _health.collect():
                y_ev = self._y[ev] if self._y is not None else None
                table = _segmentation.evaluate_layers(interp, x_take(self._x, ev), y_ev,
                                                      batch_size=self.batch_size)
        return self._score_rows(epoch, table, finite)

    def _evaluate(self, feats, outputs, finite):
        """The layer table of the probes on the evaluation half: the interpreter's own reducer and table.

        The evaluation half is one batch of the layer table's reducer (:class:`ProbeScores` for classifiers,
        :class:`TaskProbeScores` with the task's metrics otherwise), fed the cached features.
        """
        interp = self._interp
        assert interp is not None and self._probe_fits is not None  # set by _setup and _probe_rows
        task = interp.reader
        ev = self._eval_idx
        probes, values = [], {}
        for tap, f, ok, fitted in zip(interp._feature_taps(), feats, finite, self._probe_fits):
            if not ok:  # non-finite features: a zero probe on zeros keeps the table's shape; its rows are dropped
                d, k = f.shape[1], interp.num_classes
                fitted, f = (np.zeros(d), np.ones(d), np.zeros((d, k)), np.zeros(k)), np.zeros_like(f)
            assert fitted is not None  # every block with finite features was refit by _probe_rows
            probes.append((tap,) + tuple(fitted))
            values[tap.ident] = f[ev]
        out_tap = interp._output_tap()
        values[out_tap.ident] = outputs[ev]
        scores: ProbeScores | TaskProbeScores
        if task.is_classification:
            scores = ProbeScores(probes, out_tap, task, interp.num_classes)
        else:
            scores = TaskProbeScores(probes, out_tap, task, interp._probe_task())
        scores.update(_pass.Batch(x=None, y=None if self._y is None else self._y[ev], start=0, values=values))
        with warnings.catch_warnings():
            # Recorded every epoch: a missing class in the evaluation half would warn at every record.
            warnings.simplefilter("ignore", _health.InterpretationWarning)
            with _health.collect():
                return interp._layer_table(scores)

    def _score_rows(self, epoch, table, finite):
        """History rows of a layer table: per block its metrics, then the model's (agreement is for probes only).

        Classifiers: ``accuracy`` (with labels), ``loss``, ``agreement``; other tasks: the task's metrics
        (:attr:`LayerTable.metrics`: multi-label ``auroc``, ``average_precision``, ``f1``, ``hamming``, ...;
        regression ``r2``, ``mae``, ``rmse``, ``loss``).
        """
        if table.metrics:
            names = list(table.metrics)
        else:
            names = (["accuracy"] if self._y is not None else []) + ["loss", "agreement"]
        rows = []
        for i, name in enumerate(table.blocks):
            if name != "output" and not finite[i]:
                continue
            rows += [(epoch, name, m, float(table.metric(m)[i]), None) for m in names
                     if not (name == "output" and m == "agreement")]
        return rows

    def _sync_probes(self):
        """Copies the callback's probes into the interpreter's probe layers (float32)."""
        if self._probes_synced or self._probe_fits is None or self._interp is None:
            return
        for probe, fitted in zip(self._interp.probes, self._probe_fits):
            if fitted is not None:
                probe.set_state(*fitted)
        self._interp.fitted = True
        self._probes_synced = True

    # ------------------------------------------------------------------
    # Concepts
    # ------------------------------------------------------------------
    def _setup_concepts(self, interp, rng):
        """Reads the concepts' examples and the random pool once, and draws the splits and random sets once."""
        assert self._concept_items is not None and self._x is not None  # set by __init__ and _setup
        opts = self.concept_options
        names, examples, digests = [], [], []
        with _health.collect():
            for name, data in self._concept_items:
                xs = _pass.Collect.first("x", None)
                info = _pass.run(interp.graph, interp._stream(data, batch_size=self.batch_size,
                                                              argname=f"concepts[{name!r}]"), [xs])
                _concepts.check_concept_size(name, info.n)
                names.append(name)
                examples.append(xs.result())
                digests.append(set(_concepts.row_digests(examples[-1])))
            if self._concept_random_arg is None:
                pool_x = self._x
                source = "`validation_data` (concept_random=None: the random sets are drawn from the validation subset)"
            else:
                xs = _pass.Collect.first("x", None)
                _pass.run(interp.graph, interp._stream(self._concept_random_arg, batch_size=self.batch_size,
                                                       max_samples=self.max_samples, argname="concept_random"), [xs])
                pool_x = xs.result()
                source = "`concept_random`"
            pool_digests = _concepts.row_digests(pool_x)
            for name, seen in zip(names, digests):
                shared = sum(d in seen for d in pool_digests)
                if shared:
                    raise ValueError(
                        f"{source} shares {shared} input(s) with the examples of concept {name!r}: the random sets "
                        "must not contain the concept's examples (a CAV would have to tell an example from itself). "
                        "Pass a `concept_random` pool without them."
                    )
            splits = [_concepts.split_examples(x_rows(e), opts["test_fraction"], rng) for e in examples]
            m_train = max(len(sp.train) for sp in splits)
            m_test = max(len(sp.test) for sp in splits)
            held_out, sets = _concepts.draw_random_sets(x_rows(pool_x), m_test, m_train, opts["n_random"], rng,
                                                        source=source, pool_arg="concept_random")
        sets = np.stack(sets)
        state = {"names": names, "sizes": [x_rows(e) for e in examples], "splits": splits,
                 "held_out": held_out, "sets": sets, "pool_is_subset": self._concept_random_arg is None}
        parts = list(examples)
        if not state["pool_is_subset"]:  # only the random inputs drawn go through each record's pass
            used = np.unique(np.concatenate([held_out, sets.ravel()]))
            parts.append(x_take(pool_x, used))
            state["local_held_out"] = np.searchsorted(used, held_out)
            state["local_sets"] = np.searchsorted(used, sets)
        else:
            state["local_held_out"], state["local_sets"] = held_out, sets
        state["x"] = _x_concat(parts)
        return state

    @property
    def concept_sets(self) -> dict | None:
        """The concepts' draws, the same at every record (None without ``concepts``, or before training).

        A dict: ``"train"`` and ``"test"`` map each concept's name to the
        indices (into its examples, in the order given) of its training and
        held-out examples; ``"random_sets"`` (n_random, m) and
        ``"random_held_out"`` are positions in the random pool
        (``concept_random``'s first ``max_samples`` inputs, or the validation
        subset). A concept with ``n`` training examples is fitted against the
        first ``n`` inputs of each random set, and its held-out examples are
        scored with as many of the first held-out random inputs.
        """
        st = self._concept_state
        if st is None:
            return None
        return {"train": {n: sp.train.copy() for n, sp in zip(st["names"], st["splits"])},
                "test": {n: sp.test.copy() for n, sp in zip(st["names"], st["splits"])},
                "random_sets": st["sets"].copy(), "random_held_out": st["held_out"].copy()}

    def _concept_rows(self, epoch, feats):
        """The concept accuracy of every block: one pass over the concepts' examples, the concepts module's fit."""
        interp = self._interp
        st = self._concept_state
        assert interp is not None and st is not None  # set by _setup
        collects = [_pass.Collect(t, dtype=np.float32) for t in interp._feature_taps()]
        _pass.run(interp.graph, interp._stream(st["x"], batch_size=self.batch_size, argname="concepts"), collects)
        bounds = np.concatenate([[0], np.cumsum(st["sizes"])]).astype(int)
        opts = self.concept_options
        fit_kw = {k: opts[k] for k in ("method", "C", "max_iter", "tol")}
        held_out, sets = st["local_held_out"], list(st["local_sets"])
        rows: list[tuple] = []
        bad: list[str] = []
        not_converged: set[str] = set()
        with single_thread_blas():
            for i, (block, col) in enumerate(zip(interp.block_names, collects)):
                v = col.result()
                values = v.reshape(len(v), -1)
                pool = feats[i] if st["pool_is_subset"] else values[bounds[-1]:]
                if not (np.all(np.isfinite(values)) and np.all(np.isfinite(pool))):
                    bad.append(block)
                    continue
                for c, (name, split) in enumerate(zip(st["names"], st["splits"])):
                    cavs, correct = _concepts.fit_concept_cavs(values[bounds[c]:bounds[c + 1]], split, pool, held_out,
                                                               sets, **fit_kw)
                    not_converged.update(name for cav in cavs if not cav.converged)
                    rows.append((epoch, block, CONCEPT_METRIC + name, float(correct.mean()), None))
        if bad:
            warnings.warn(f"Epoch {epoch}: {bad} produced NaN or infinite values on the concept or random examples; "
                          "no concept accuracy is recorded for them at this epoch.", RuntimeWarning, stacklevel=3)
        if not_converged:
            _health.warn("not_converged", f"Epoch {epoch}: CAVs of concepts {sorted(not_converged)} did not converge "
                         f"within max_iter={opts['max_iter']} L-BFGS iterations; raise concept_options' `max_iter` or "
                         "lower its `C`.")
        return rows

    def _importance_rows(self, epoch, cache):
        opts = self.importance_options
        assert self._analyzer is not None  # set by _setup when importance_options is given
        engine = self._analyzer._engine(self._importance_key)
        request = check_request(engine, self._analyzer.reader, n_repeats=opts.n_repeats,
                                random_state=self.importance_random_state_)
        with warnings.catch_warnings():
            # Recorded every epoch: the history holds the numbers, a warning per record would be noise.
            warnings.filterwarnings("ignore", message=r".*dead filter")
            warnings.filterwarnings("ignore", message=r".*cannot be told apart from 0")
            warnings.filterwarnings("ignore", message=r".*from a single repeat")
            imp = importance_result(engine, cache, request, self._analyzer.reader, y_given=self._y is not None,
                                    block=engine.graph.tensors[self._importance_key].name)
        top = imp.ranking[: opts.top_k]
        mean = imp.importances_mean
        return [(epoch, imp.block, "importance", float(mean[i]), int(i)) for i in top]

    # ------------------------------------------------------------------
    # Files, written as training goes
    # ------------------------------------------------------------------
    def _write(self, epoch, rows, means):
        if self.csv_path is not None and rows:
            new = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
            self._frame(rows).to_csv(self.csv_path, mode="a", header=new, index=False)
        if self.log_path is not None:
            self._append_log(epoch, rows)
        if self.log_dir is not None:
            self._write_tensorboard(epoch, rows, means)

    def _write_tensorboard(self, epoch, rows, means):
        # TensorBoard event files are a TensorFlow facility: TensorFlow is imported here only.
        # tf.summary.write (core TensorFlow) with the plugin metadata of the "scalars" and
        # "histograms" dashboards writes exactly what tf.summary.scalar / .histogram write,
        # without needing the `tensorboard` package (TensorFlow 2.21 no longer installs it).
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        def metadata(plugin):
            return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        scalars, histograms = metadata("scalars"), metadata("histograms")
        with self._writer.as_default(step=int(epoch)):
            for _, block, metric, value, flt in rows:
                tag = f"{block}/{metric}" if flt is None else f"{block}/{metric}/filter_{flt}"
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=scalars)
            for block, m in means.items():
                tf.summary.write(f"{block}/filter_mean_activation", tf.constant(_histogram(m)), metadata=histograms)
        self._writer.flush()

    def _append_log(self, epoch, rows):
        """One JSON line for this record, appended, flushed and fsync-ed (a killed run keeps it)."""
        interp = self._interp
        assert interp is not None and self.log_path is not None  # set by _setup and __init__
        record = {
            "format": LOG_FORMAT,
            "version": LOG_VERSION,
            "epoch": int(epoch),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": self.model.name,
            "task": interp.reader.name,
            "blocks": list(interp.block_names),
            "eval_samples": None if self._eval_idx is None else int(len(self._eval_idx)),
            "rows": [{"block": block, "metric": metric,
                      "value": float(value) if math.isfinite(value) else None,
                      "filter": None if flt is None else int(flt)}
                     for _, block, metric, value, flt in rows],
        }
        line = json.dumps(record, allow_nan=False) + "\n"
        folder = os.path.dirname(self.log_path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _write_report(self):
        """The full report of the last record, on the evaluation half, with the history (``report_path``)."""
        import inspect

        from .report import build_report

        interp = self.interpreter  # its probes synced
        assert self._x is not None and self._eval_idx is not None and self.report_path is not None  # set by _setup
        ev = self._eval_idx
        x = x_take(self._x, ev)
        y = None if self._y is None else self._y[ev]
        kwargs = {"random_state": self.random_state_, **self.report_options}
        sections = kwargs.get("sections")
        if "history" in inspect.signature(build_report).parameters and (sections is None or "training" in sections):
            kwargs["history"] = self.history  # the Training section, unless report_options' sections leave it out
        build_report(interp, x, y, **kwargs).save(self.report_path)


def _file_path(value, name):
    """A path-like argument as a str (None stays None), refused when it names a folder."""
    if value is None:
        return None
    try:
        path = os.fspath(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a str or path-like; received {type(value).__name__}.") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.isdir(path):
        raise ValueError(f"`{name}` must name a file; received the folder {path!r}.")
    return path


def _check_concept_options(options) -> dict:
    """``concept_options`` checked as the concept probes' options (:func:`.local.concepts.check_cav_options`)."""
    if options is None:
        return _concepts.check_cav_options()
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"`concept_options` must be None or a dict of the concept probes' options "
                        f"{list(_CONCEPT_OPTIONS)}; received {type(options).__name__}.")
    bad = sorted(set(options) - set(_CONCEPT_OPTIONS))
    if bad:
        raise ValueError(f"`concept_options` has keys {bad} that the callback's concept probes do not take; they take "
                         f"{list(_CONCEPT_OPTIONS)} (significance is for HybridInterpreter.concepts after training).")
    return _concepts.check_cav_options(**options)


def _x_concat(parts):
    """Batches ``x`` (arrays, or lists of arrays: several inputs) joined along the samples."""
    if isinstance(parts[0], list):
        return [np.concatenate(p, axis=0) for p in zip(*parts)]
    return np.concatenate(parts, axis=0)


def _check_report_options(options, report_path):
    """``report_options`` as a dict of build_report's keyword arguments (checked before training)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"`report_options` must be a dict of build_report keyword arguments; "
                        f"received {type(options).__name__}.")
    if report_path is None:
        raise ValueError("`report_options` configures the report written to `report_path`; pass report_path too.")
    import inspect

    from .report import build_report

    allowed = [p.name for p in inspect.signature(build_report).parameters.values()
               if p.kind == p.KEYWORD_ONLY and p.name != "history"]
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise TypeError(f"`report_options` has keys {bad} that build_report does not take; it takes {allowed}.")
    return dict(options)


def _histogram(values, bins=30) -> np.ndarray:
    """TensorBoard's histogram tensor: rows (left edge, right edge, count), float64."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
