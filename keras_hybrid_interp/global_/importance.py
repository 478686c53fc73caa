"""Filter importance: permutation, ablation and first-order Taylor.

Definitions (sign as scikit-learn: positive = important)
--------------------------------------------------------
score
    ``"accuracy"``: fraction of samples whose predicted class (argmax of the
    class probabilities) equals the label. ``"loss"``: the *negative* mean
    cross-entropy, so that higher is better. Both read the output with the
    package's one output reader (:mod:`~keras_hybrid_interp.core.output`: log-softmax of logits,
    log-sigmoid of a binary logit, ``log(clip(p, 1e-7, 1))`` of probabilities).
    A callable ``scoring(y_true, y_pred) -> float`` (higher is better)
    receives the integer labels ``(n,)`` and the class-probability table
    ``(n, K)`` (``[1 - p, p]`` for one unit); for a model that is not a
    classifier it receives the raw outputs.
    With no labels (``y=None`` and a dataset without labels) ``y_true`` is the
    model's own predicted class on the unperturbed input: the score is
    agreement with the model (``baseline_score`` is 1 for accuracy).
permutation
    ``importances[g, r] = baseline_score - score(filters of g shuffled)``:
    the feature maps of the filters in group ``g`` are moved across samples
    (sample ``i`` receives the maps of sample ``perm_r[i]``; one permutation
    for the whole group, so a group moves jointly); every other filter keeps
    its own map. ``perm_r`` is drawn from
    ``SeedSequence(random_state, spawn_key=(g, r))``.
ablation
    ``importances[g, 0] = baseline_score - score(maps of g replaced)`` by zeros
    (``ablation_value="zero"``) or by the filter's mean map over the analysed
    samples (``"mean"``, an ``H x W`` map per filter). Deterministic: one repeat.
taylor
    First-order Taylor estimates of the loss change when the maps of ``g`` are
    removed, from one forward and one backward pass per batch. With ``L_n``
    the cross-entropy of sample ``n`` (against its label, or the model's
    predicted class without labels) and, per sample,
    ``z[n, g] = sum_{c in g} sum_{h,w} a[n,h,w,c] * dL_n/da[n,h,w,c]``
    (the derivative of ``L_n`` with respect to a gate ``m_g = 1`` multiplying
    the maps of ``g``), the keyword ``taylor`` chooses:

    * ``"molchanov"``: ``importances[g, 0] = mean_n z[n, g]**2``.
      Molchanov, Mallya, Tyree, Frosio and Kautz (2019), "Importance
      Estimation for Neural Network Pruning" (CVPR), score a group ``S`` of
      parameters (or a gate after a channel) by the squared first-order
      change of the loss, ``I_S = (sum_{s in S} g_s w_s)**2`` with
      ``g_s = dE/dw_s``; for a channel gate this is ``(dE/dm)**2 =
      (sum_{h,w} a * dE/da)**2``. The paper squares the gradient of a
      minibatch's mean loss and averages the squares over minibatches; here
      the square is taken **per sample** (minibatches of one) and averaged
      over the samples, so the number does not depend on ``batch_size``.
      (Over random minibatches of size ``B`` the paper's estimator has the
      expectation ``(1 - 1/B) * mean_n(z)**2 + mean_n(z**2) / B``: between
      ``"abs_mean"`` squared and this.) In squared loss units.
    * ``"abs_mean"``: ``| mean_n z[n, g] |``, the paper's form over one
      batch holding all the samples (square root taken: same ranking). In
      loss units. The package's only Taylor importance until the variants came.
    * ``"abs_per_sample"`` (default): ``mean_n | z[n, g] |``, the size of the
      per-sample first-order loss change. In loss units. Of the three it
      agreed best with zero and mean ablation and with permutation on the
      two trained models of BENCHMARKS.md (B2), closely followed by
      ``"molchanov"``; ``"abs_mean"`` was last.

    ``scoring`` is not used (``baseline_score`` is the negative mean loss).
    Streams: no cache.
dead filters
    A filter whose map takes one constant value at every position of every
    analysed sample (:class:`~keras_hybrid_interp.core.data_pass.ChannelRange`) has a
    permutation importance of exactly 0. Its ablation importance measures
    replacing that constant by zero (``"zero"``; 0 when the constant is 0) or
    by itself (``"mean"``: exactly 0), and its Taylor estimate rests on
    ``z[n] = constant * sum dL_n/da``: both are in general not 0 (0 when the
    constant is 0). A group made only of dead filters is not run for
    permutation or mean ablation (the maps would be unchanged bit for bit).

Permutation and ablation run on a cache of the activations at the layer (and
of every tensor crossing the cut, e.g. a residual skip) for the first
``max_samples`` samples: ``max_samples x (H*W*C + skip tensors)`` numbers in
the model dtype. Only the tail after the layer is re-run (see :mod:`~keras_hybrid_interp.core.engine`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import pandas as pd

from keras import ops

from ..core import health as _health
from ..core.coupling import tied_names
from ..core.data_pass import dead_filters_of
from ..core.engine import PooledHeadEngine, TailEngine, TiedTailEngine
from ..core.perturbation import Job, job_permutation, resolve_entropy
from ..core.reducers import FrontierCache
from ..core.task import ClassificationTask, MultiLabelTask, RegressionTask, SegmentationTask
from ..core.validation import check_int, is_int
from .correlation import warn_dead

__all__ = ["FilterImportance", "ImportanceRequest", "check_request", "check_method_arguments", "importance_reducer",
           "importance_result", "noise_mask", "noise_interval", "METHODS", "METHOD_ARGUMENTS", "TAYLOR_VARIANTS",
           "TAYLOR_DEFAULT", "TaylorSums"]

METHODS = ("permutation", "ablation", "taylor")
#: Estimators of ``method="taylor"`` (see the module docstring).
TAYLOR_VARIANTS = ("molchanov", "abs_mean", "abs_per_sample")
#: The default: the estimator that agreed best with ablation in BENCHMARKS.md (B2).
TAYLOR_DEFAULT = "abs_per_sample"
#: The arguments of ``filter_importance`` that apply to some methods only: the methods, and the default
#: (what leaving the argument out gives). Another value with another method is refused, naming it.
METHOD_ARGUMENTS = {
    "n_repeats": (("permutation",), 5),
    "random_state": (("permutation",), None),
    "perturbations_per_eval": (("permutation", "ablation"), "auto"),
    "ablation_value": (("ablation",), "zero"),
    "taylor": (("taylor",), TAYLOR_DEFAULT),
}


@dataclasses.dataclass(frozen=True, eq=False)
class FilterImportance:
    """Importance of each filter (or group of filters) of one block.

    Attributes
    ----------
    importances : ndarray, shape (G, n_repeats)
        ``G`` is the number of filters, or of groups when ``groups`` was given.
        ``n_repeats`` is 1 for the deterministic methods (ablation, taylor).
    importances_mean, importances_std : ndarray, shape (G,)
        Mean and standard deviation over the repeats; the standard deviation with
        ``ddof=0``, as scikit-learn's ``permutation_importance`` (the 95% interval,
        :attr:`interval`, uses the sample standard deviation, ``ddof=1``).
    baseline_score : float
        Score of the unperturbed model on the analysed samples.
    method : str
    scoring : str
    block : str
    groups : tuple of ndarray or None
        Filter indices of each group (None: one filter per row).
    dead_filters : ndarray of int
        Filters whose feature map is identical for every analysed sample
        (permuting them changes nothing; their importance is reported as computed).
    n_samples : int
    random_state : int or None
        Entropy of the permutations (permutation only), to reproduce them.
    label_source : str
        Where the labels came from: ``"y"``, ``"dataset"`` (the ``(x, y)``
        batches), or ``"model predictions"`` when there were none (the score
        is then agreement with the model's own unperturbed predictions).
    taylor : str or None
        The Taylor estimator (one of :data:`TAYLOR_VARIANTS`) for
        ``method="taylor"``; None otherwise.
    coupled : tuple of str or None
        With ``groups="coupled"``: the names of the tensors tied to the block
        channel by channel (:mod:`keras_hybrid_interp.core.coupling`); row
        ``i`` perturbed channel ``i`` of every one of them jointly. None
        otherwise.
    """

    importances: np.ndarray
    baseline_score: float
    method: str
    scoring: str
    block: str
    groups: tuple | None
    dead_filters: np.ndarray
    n_samples: int
    random_state: int | None = None
    label_source: str = "y"
    taylor: str | None = None
    coupled: tuple | None = None

    def __post_init__(self):
        self.importances.setflags(write=False)
        self.dead_filters.setflags(write=False)

    @property
    def importances_mean(self) -> np.ndarray:
        return self.importances.mean(axis=1)

    @property
    def importances_std(self) -> np.ndarray:
        return self.importances.std(axis=1)

    @property
    def within_noise(self) -> np.ndarray:
        """Boolean per row: the importance cannot be told apart from 0 (95% interval over the repeats covers 0).

        All True with a single repeat (ablation, Taylor, or ``n_repeats=1``):
        there is no spread to judge by. See :func:`noise_mask`.
        """
        return noise_mask(self.importances)

    @property
    def ranking(self) -> np.ndarray:
        """Row indices (filters or groups) by decreasing mean importance."""
        return np.argsort(-self.importances_mean, kind="stable")

    @property
    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` per row: the 95% interval of the mean over the repeats (NaN with one repeat).

        See :func:`noise_interval`.
        """
        return noise_interval(self.importances)

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (filter or group, repeat) with ``importance``.

        Per filter (repeated on each of its rows): ``ci_low`` and ``ci_high``,
        the 95% interval of the mean over the repeats (NaN with one repeat),
        and ``within_noise`` (:attr:`within_noise`). With
        ``groups="coupled"``, ``tied_tensors`` names the tensors whose channel
        ``filter`` was perturbed jointly; for Taylor, ``taylor`` names the
        estimator.
        """
        g, r = self.importances.shape
        rows, reps = np.meshgrid(np.arange(g), np.arange(r), indexing="ij")
        df: dict[str, Any] = {"block": self.block, "method": self.method}
        if self.taylor is not None:
            df["taylor"] = self.taylor
        if self.groups is None:
            df["filter"] = rows.ravel()
        else:
            df["group"] = rows.ravel()
            df["filters"] = [",".join(map(str, self.groups[i])) for i in rows.ravel()]
        if self.coupled is not None:
            df["tied_tensors"] = ",".join(self.coupled)
        df["repeat"] = reps.ravel()
        df["importance"] = self.importances.ravel()
        low, high = self.interval
        df["ci_low"] = low[rows.ravel()]
        df["ci_high"] = high[rows.ravel()]
        df["within_noise"] = self.within_noise[rows.ravel()]
        return pd.DataFrame(df)

    def plot(self, ax=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_filter_importance`; returns the Axes.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_filter_importance

        return plot_filter_importance(self, ax=ax, **kwargs)

    def __repr__(self):
        what = "filters" if self.groups is None else "groups"
        how = f"method={self.method!r}" + (f", taylor={self.taylor!r}" if self.taylor else "") + (
            f", coupled across {len(self.coupled)} tensors" if self.coupled is not None else "")
        return (f"FilterImportance(block={self.block!r}, {how}, scoring={self.scoring!r}, "
                f"{what}={self.importances.shape[0]}, n_repeats={self.importances.shape[1]}, "
                f"baseline_score={self.baseline_score:.4g}, n_samples={self.n_samples}, "
                f"labels from {self.label_source})")


# ----------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------
def _score_fn(scoring, reader, labels: np.ndarray):
    """``score(raw outputs) -> float`` (higher is better): the task's (``reader``, a Task) score."""
    if callable(scoring) and reader is None:  # no task: the callable gets the raw outputs
        return lambda out: float(scoring(labels, np.asarray(out, dtype=np.float64)))
    return reader.score_fn(scoring, labels)


#: The named scores, whatever the task (each task accepts its own: ``Task.scorings``).
SCORINGS = ("auto",) + tuple(dict.fromkeys(
    name for cls in (ClassificationTask, MultiLabelTask, RegressionTask, SegmentationTask) for name in cls.scorings))


def _check_scoring(scoring, reader):
    if callable(scoring):
        return getattr(scoring, "__name__", type(scoring).__name__)
    if not isinstance(scoring, str) or scoring not in SCORINGS:
        raise ValueError(
            f"`scoring` must be 'auto' (the task's default), a named score ({', '.join(SCORINGS[1:])}) or a "
            f"callable scoring(y_true, y_pred) -> float (higher is better); received {scoring!r}."
        )
    if reader is None:
        raise ValueError(
            f"`scoring={scoring!r}` needs the model's task (declared with `task=`, e.g. task='regression', or "
            "task='multiclass' for class logits); pass a callable `scoring` for other models."
        )
    return reader.check_scoring(scoring)


def _check_groups(groups, c: int):
    if groups is None:
        return None
    if isinstance(groups, np.ndarray) and groups.ndim == 1 and groups.dtype.kind in "iu" and len(groups) == c:
        raise TypeError(
            "`groups` looks like a label per filter; pass a list of filter-index lists instead, "
            "e.g. [np.flatnonzero(labels == k) for k in np.unique(labels)] or FilterCorrelation.clusters()."
        )
    if not isinstance(groups, (list, tuple)) or len(groups) == 0:
        raise TypeError(
            f"`groups` must be None or a non-empty list of lists of filter indices (0..{c - 1}); "
            f"received {type(groups).__name__}."
        )
    out = []
    for i, g in enumerate(groups):
        a = np.asarray(g)
        if a.ndim == 0:
            a = a[None]
        if a.ndim != 1 or len(a) == 0 or a.dtype.kind not in "iu":
            raise ValueError(f"`groups[{i}]` must be a non-empty list of integer filter indices; received {g!r}.")
        if a.min() < 0 or a.max() >= c:
            raise ValueError(
                f"`groups[{i}]` has filter indices outside 0..{c - 1} (the block has {c} filters): "
                f"{a[(a < 0) | (a >= c)].tolist()}."
            )
        if len(np.unique(a)) != len(a):
            raise ValueError(f"`groups[{i}]` lists a filter twice: {a.tolist()}.")
        out.append(a.astype(np.int64))
    return tuple(out)


# ----------------------------------------------------------------------
@dataclasses.dataclass
class ImportanceRequest:
    """Validated arguments of one filter-importance computation."""

    method: str
    n_repeats: int
    scoring: object
    score_name: str
    chan_sets: list
    groups: tuple | None
    ablation_value: str
    perturbations_per_eval: object
    entropy: int | None
    taylor: str | None = None
    coupled: bool = False


def _given(value, default) -> bool:
    """Whether ``value`` differs from ``default`` (the argument was set to something else than leaving it out)."""
    if value is default:
        return False
    if isinstance(default, str):
        return not (isinstance(value, str) and value == default)
    if is_int(default):
        return not (is_int(value) and int(value) == default)
    return True


def check_method_arguments(method: str, **arguments) -> None:
    """ValueError naming the first of ``arguments`` that does not apply to ``method`` and is not its default.

    ``arguments`` are among :data:`METHOD_ARGUMENTS`; ``scoring`` applies to permutation and ablation,
    and method ``"taylor"`` takes only ``"auto"`` or ``"loss"`` (the loss is what it differentiates).
    """
    for name, value in arguments.items():
        if name == "scoring":
            if method == "taylor" and (callable(value) or not (isinstance(value, str) and value in ("auto", "loss"))):
                raise ValueError(
                    "`scoring` applies to method='permutation' or 'ablation': method='taylor' is the first-order "
                    "change of the task's loss, so it takes no callable and no other score. Leave `scoring` out "
                    f"(or pass 'loss'); received scoring={value!r}.")
            continue
        methods, default = METHOD_ARGUMENTS[name]
        if method not in methods and _given(value, default):
            which = " or ".join(repr(m) for m in methods)
            raise ValueError(
                f"`{name}` applies to method={which} only; received {name}={value!r} with method={method!r}. "
                f"Leave `{name}` out (its default is {default!r}), or choose method={methods[0]!r}.")


def check_request(engine: TailEngine, reader, *, method="permutation", n_repeats=5, scoring="auto",
                  random_state=None, groups=None, ablation_value="zero",
                  perturbations_per_eval="auto", taylor=TAYLOR_DEFAULT) -> ImportanceRequest:
    """Validates the arguments before any data is read (see :meth:`GlobalAnalyzer.filter_importance`).

    An argument that does not apply to ``method`` (:data:`METHOD_ARGUMENTS`) and is not its
    default is refused, naming it (:func:`check_method_arguments`).
    ``groups="coupled"`` needs ``engine`` to be the block's tied engine
    (:class:`~keras_hybrid_interp.core.engine.TiedTailEngine`).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}; received {method!r}.")
    check_method_arguments(method, n_repeats=n_repeats, random_state=random_state,
                           perturbations_per_eval=perturbations_per_eval, ablation_value=ablation_value,
                           taylor=taylor, scoring=scoring)
    if not isinstance(taylor, str) or taylor not in TAYLOR_VARIANTS:
        raise ValueError(f"`taylor` must be one of {list(TAYLOR_VARIANTS)}; received {taylor!r}.")
    n_repeats = check_int(n_repeats, "n_repeats")
    c = engine.channels
    coupled = isinstance(groups, str) and groups == "coupled"
    if isinstance(groups, str) and not coupled:
        raise ValueError(f"`groups` must be None, 'coupled' or a list of lists of filter indices; received {groups!r}.")
    if coupled and method == "taylor":
        raise ValueError("`groups='coupled'` is for method='permutation' or 'ablation' (it perturbs channel i of "
                         "every tied tensor jointly); method='taylor' scores the block's own channels only.")
    if coupled and not isinstance(engine, TiedTailEngine):
        raise ValueError("`groups='coupled'` needs the block's tied engine (GlobalAnalyzer.filter_importance "
                         "builds it).")  # internal misuse
    groups_t = None if coupled else _check_groups(groups, c)
    chan_sets = [np.array([i]) for i in range(c)] if groups_t is None else list(groups_t)
    if ablation_value not in ("zero", "mean"):
        raise ValueError(f"`ablation_value` must be 'zero' or 'mean'; received {ablation_value!r}.")
    if method == "taylor":
        if reader is None:
            raise ValueError("method='taylor' needs the model's task (its loss): pass task= (e.g. "
                             "task='regression', or task='multiclass' for class logits).")
        return ImportanceRequest(method, 1, "loss", "loss", chan_sets, groups_t, ablation_value, "auto", None,
                                 taylor)
    score_name = _check_scoring(scoring, reader)
    if isinstance(scoring, str):
        scoring = score_name  # "auto" resolved to the task's default
    if not (isinstance(perturbations_per_eval, str) and perturbations_per_eval == "auto"):
        check_int(perturbations_per_eval, "perturbations_per_eval", expected="'auto' or a positive int")
    entropy = resolve_entropy(random_state) if method == "permutation" else None
    reps = n_repeats if method == "permutation" else 1
    return ImportanceRequest(method, reps, scoring, score_name, chan_sets, groups_t, ablation_value,
                             perturbations_per_eval, entropy, None, coupled)


def importance_reducer(engine: TailEngine, request: ImportanceRequest, reader):
    """The pass reducer an importance request needs: the tail's cache, or Taylor's sums."""
    if request.method == "taylor":
        return TaylorSums(engine, reader, request.chan_sets)
    return FrontierCache(engine)


def importance_result(engine: TailEngine, reducer, request: ImportanceRequest, reader, *, y_given: bool,
                      block: str, memory_budget=None, progress=None) -> FilterImportance:
    """Filter importance from a reducer that has seen a pass (permutation and ablation run the tail now)."""
    if request.method == "taylor":
        return reducer.result(request, block, y_given)
    cache = reducer.result()
    n = cache.n
    if request.method == "permutation" and n < 2:
        raise ValueError(f"Permutation importance shuffles across samples and needs at least 2 samples; `x` has {n}.")
    if request.method == "permutation" and n < 30:
        _health.warn("few_samples", f"Permutation importance on only {n} samples is noisy; use more samples.")
    kw = {} if memory_budget is None else {"memory_budget": memory_budget}
    arrays = dict(zip(engine.cache_keys, cache.arrays))
    key = arrays.get(engine.key)  # None when the engine caches pooled features only (cache.summary)
    tied = engine.tied if isinstance(engine, TiedTailEngine) else []  # groups='coupled' has it (check_request)
    if cache.summary is not None:
        dead = cache.summary.dead
    elif request.coupled:
        # Dead across the tie: constant in every tied tensor (permuting it then changes nothing).
        dead = dead_filters_of(key)
        for k in tied:
            dead = np.intersect1d(dead, dead_filters_of(arrays[k]))
    else:
        dead = dead_filters_of(key)
    warn_dead(dead, block)

    # Groups whose perturbation leaves the maps bit for bit as they are: permuting dead filters
    # (constant across samples and positions), or filling them with their mean map (the float64
    # mean of a constant, cast back, is that constant). Their importance is exactly 0 without a
    # tail pass (a pooled cache could differ from the constant in its last bits, batch by batch).
    keeps_dead = request.method == "permutation" or (request.method == "ablation"
                                                     and request.ablation_value == "mean")
    is_dead = np.zeros(engine.channels, dtype=bool)  # a mask: np.isin per group took 0.15 s at 2,048 filters
    is_dead[np.asarray(dead, dtype=np.int64)] = True
    unchanged = np.array([keeps_dead and bool(is_dead[ch].all()) for ch in request.chan_sets], dtype=bool)
    n_jobs = max(1, int((~unchanged).sum()) * request.n_repeats)  # the passes' shape: the baseline's too
    # Baseline outputs (also the labels when none are given), in passes shaped like the jobs'.
    base = engine.baseline_outputs(cache, n_jobs, request.perturbations_per_eval, **kw)
    if cache.labels is not None:
        labels = cache.labels
    else:
        labels = reader.hard_targets(base) if reader is not None else np.asarray(base, dtype=np.float64)
    score = _score_fn(request.scoring, reader, labels)
    baseline = score(base)
    del base  # the baseline's outputs of every sample (a U-Net's: n x H x W x K) are not needed by the jobs

    jobs = []
    if request.method == "permutation":
        entropy = request.entropy
        assert entropy is not None  # drawn for method='permutation' (check_request)
        for g, ch in enumerate(request.chan_sets):
            if unchanged[g]:
                continue
            for r in range(request.n_repeats):
                jobs.append(Job(ch, "permute", perm=functools.partial(job_permutation, entropy, g, r, n)))
    else:
        def fill_of(a, ch):
            if request.ablation_value == "zero":
                return np.zeros((), dtype=np.float32 if a is None else a.dtype)
            if a is None:  # the engine caches pooled features: the mean map, as it perturbs them
                assert isinstance(engine, PooledHeadEngine)  # the one engine that caches no maps
                return engine.mean_fill(cache, ch)
            return np.mean(a[..., ch], axis=0, dtype=np.float64).astype(a.dtype)

        for g, ch in enumerate(request.chan_sets):
            if unchanged[g]:
                continue
            if request.coupled:  # each tied tensor gets its own fill (its own mean map)
                jobs.append(Job(ch, "fill", fill={k: fill_of(arrays[k], ch) for k in tied}))
            else:
                jobs.append(Job(ch, "fill", fill=fill_of(key, ch)))
    scores = np.full((len(request.chan_sets), request.n_repeats), baseline, dtype=np.float64)
    if jobs:
        run = engine.run(cache, jobs, score, request.perturbations_per_eval, progress=progress, **kw)
        scores[~unchanged] = np.asarray(run, dtype=np.float64).reshape(-1, request.n_repeats)
    imp = baseline - scores
    if request.method == "permutation":
        warn_noise(imp, block)
    source = "y" if y_given else ("dataset" if cache.labels is not None else "model predictions")
    coupled = tied_names(engine.graph, tied) if request.coupled else None
    return FilterImportance(imp, baseline, request.method, request.score_name, block, request.groups, dead, n,
                            request.entropy, source, coupled=coupled)


def noise_interval(importances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` per row: the 95% interval of the mean importance over the repeats.

    ``mean +- t * sd / sqrt(R)`` with Student's t quantile for ``R - 1``
    degrees of freedom and ``sd`` the sample standard deviation (``ddof=1``)
    over the ``R >= 2`` repeats. With one repeat both are NaN.
    """
    from scipy.stats import t as student_t

    imp = np.asarray(importances, dtype=np.float64)
    r = imp.shape[1]
    mean = imp.mean(axis=1)
    if r < 2:
        nan = np.full(imp.shape[0], np.nan)
        return nan, nan.copy()
    half = student_t.ppf(0.975, r - 1) * imp.std(axis=1, ddof=1) / np.sqrt(r)
    return mean - half, mean + half


def noise_mask(importances: np.ndarray) -> np.ndarray:
    """Rows whose importance cannot be told apart from 0: the 95% interval over the repeats covers 0.

    The interval is :func:`noise_interval`'s. With one repeat there is no
    spread to judge by: every row is flagged.
    """
    imp = np.asarray(importances, dtype=np.float64)
    if imp.shape[1] < 2:
        return np.ones(imp.shape[0], dtype=bool)
    low, high = noise_interval(imp)
    return (low <= 0) & (high >= 0)


def warn_noise(importances, block) -> None:
    """The health note on permutation importances that are within noise."""
    noisy = noise_mask(importances)
    g, r = np.shape(importances)
    negative = int(np.sum(np.asarray(importances).mean(axis=1) < 0))
    if r < 2:
        _health.warn(
            "noisy_importance",
            f"Block {block!r}: permutation importance from a single repeat has no spread to tell signal from "
            f"noise ({negative} of {g} means are negative). Use n_repeats >= 3.",
        )
    elif noisy.any():
        _health.warn(
            "noisy_importance",
            f"Block {block!r}: {int(noisy.sum())} of {g} permutation importances cannot be told apart from 0 (their "
            f"95% interval over the {r} repeats covers 0; {negative} means are negative, which is noise, not harm). "
            "Rank only the others; for more resolution use more samples or repeats.",
        )


def _decisions(task, out):
    """The model's own decisions from backend outputs ``out`` (traceable): class, 0/1 labels, or mask."""
    if task.name == "multilabel":
        return task.decide(task.probabilities(out, xp=ops), xp=ops)
    if task.name == "segmentation":  # per position, as its classifier reads it (one sigmoid unit: 2 classes)
        flat = ops.reshape(out, (-1, task.units))
        return ops.reshape(ops.argmax(task.reader.log_probabilities(flat, xp=ops), axis=1), ops.shape(out)[:-1])
    return ops.argmax(task.log_probabilities(out, xp=ops), axis=1)


class TaylorSums:
    """Reducer of Taylor importance: per batch one forward and one backward pass of the tail.

    Per row ``g`` of ``chan_sets`` (one filter, or a group) and sample ``n``,
    ``z[n, g] = sum_{c in g} sum_pos a * dL_n/da``, with ``L_n`` the
    cross-entropy of the output reader (against the label, or the model's own
    predicted class without labels). Accumulates ``sum_n z``, ``sum_n z**2``
    and ``sum_n |z|`` per row in float64, from which every estimator of
    :data:`TAYLOR_VARIANTS` follows (module docstring).
    """

    def __init__(self, engine: TailEngine, reader, chan_sets=None):
        from ..core.data_pass import ChannelRange, Tap

        self.engine = engine
        self.reader = reader
        self.range = ChannelRange(engine.key)  # the one definition of a dead filter
        self.taps = tuple(Tap(k, "raw") for k in engine.frontier) + self.range.taps
        c = engine.channels
        chan_sets = [np.array([i]) for i in range(c)] if chan_sets is None else list(chan_sets)
        # Channel -> row indicator: z (n, C) @ member (C, G) sums the channels of each row.
        self.member = np.zeros((c, len(chan_sets)), dtype=np.float64)
        for g, ch in enumerate(chan_sets):
            self.member[np.asarray(ch), g] = 1.0
        g = len(chan_sets)
        self.sum_z = np.zeros(g, dtype=np.float64)
        self.sum_z2 = np.zeros(g, dtype=np.float64)
        self.sum_abs = np.zeros(g, dtype=np.float64)
        self.loss_sum = 0.0
        self.n = 0
        self.has_y = False

        def loss_fn(out, labels):
            if labels is None:  # the model's own decisions, held constant
                labels = ops.stop_gradient(_decisions(reader, out))
            return reader.loss(out, labels, xp=ops)

        self.loss_fn = loss_fn

    def update(self, batch):
        arrays = [batch.values[(k, "raw")] for k in self.engine.frontier]
        if batch.y is None:
            if self.reader.name == "regression":
                raise ValueError(
                    "method='taylor' on a regression model needs targets `y`: without them the loss is the "
                    "model's squared error against its own outputs, 0 with a zero gradient everywhere. Pass y, "
                    "or use method='permutation' or 'ablation'."
                )
            labels = None
        elif self.reader.is_classification:
            labels = np.asarray(batch.y, dtype=np.int32)
        else:
            labels = np.asarray(batch.y, dtype=np.int32 if self.reader.name == "segmentation" else np.float32)
        self.has_y = labels is not None
        grad, out = self.engine.input_gradient(arrays, self.loss_fn, labels)
        a = arrays[0]
        axes = tuple(range(1, a.ndim - 1))  # the positions of one sample
        z = np.sum(a.astype(np.float64) * grad.astype(np.float64), axis=axes) @ self.member  # (n, G)
        self.sum_z += z.sum(axis=0)
        self.sum_z2 += np.square(z).sum(axis=0)
        self.sum_abs += np.abs(z).sum(axis=0)
        # The reported loss in float64 against the targets as given (the backend got float32 copies).
        lab = batch.y if batch.y is not None else self.reader.hard_targets(out)
        self.loss_sum += float(np.sum(self.reader.loss(out, lab)))
        self.range.update(batch)
        self.n += len(a)

    def estimate(self, variant: str) -> np.ndarray:
        """Per row, the Taylor estimator ``variant`` (one of :data:`TAYLOR_VARIANTS`)."""
        n = self.n
        if variant == "molchanov":
            return self.sum_z2 / n
        if variant == "abs_mean":
            return np.abs(self.sum_z) / n
        if variant == "abs_per_sample":
            return self.sum_abs / n
        raise ValueError(f"`taylor` must be one of {list(TAYLOR_VARIANTS)}; received {variant!r}.")

    def result(self, request: ImportanceRequest, block: str, y_given: bool) -> FilterImportance:
        dead = self.range.dead
        warn_dead(dead, block)
        n = self.n
        assert request.taylor is not None  # set for method='taylor' (check_request)
        imp = self.estimate(request.taylor)[:, None]
        source = "y" if y_given else ("dataset" if self.has_y else "model predictions")
        return FilterImportance(imp, -self.loss_sum / n, "taylor", "loss", block, request.groups, dead, n, None, source,
                                taylor=request.taylor)
