"""Filter importance: permutation, ablation and first-order Taylor.

Definitions (sign as scikit-learn: positive = important)
--------------------------------------------------------
score
    ``"accuracy"``: fraction of samples whose predicted class (argmax of the
    class probabilities) equals the label. ``"loss"``: the *negative* mean
    cross-entropy, so that higher is better. Both read the output with the
    package's one output reader (:mod:`._output`: log-softmax of logits,
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
    First-order Taylor estimate of the loss change when the maps of ``g`` are
    set to zero, from one forward and one backward pass per batch:
    ``importances[g, 0] = | mean_n sum_{c in g} sum_{h,w} a[n,h,w,c] * dL_n/da[n,h,w,c] |``
    with ``L_n`` the cross-entropy of sample ``n`` (against its label, or the
    model's predicted class without labels). In loss units; ``scoring`` is not
    used (``baseline_score`` is the negative mean loss). Streams: no cache.
dead filters
    A filter whose map takes one constant value at every position of every
    analysed sample (:class:`~keras_hybrid_interp.core.data_pass.ChannelRange`) has a
    permutation importance of exactly 0. Its ablation importance measures
    replacing that constant by zero (``"zero"``; 0 when the constant is 0) or
    by itself (``"mean"``: exactly 0), and its Taylor estimate is
    ``|constant * mean_n sum dL_n/da|``: both are in general not 0.

Permutation and ablation run on a cache of the activations at the layer (and
of every tensor crossing the cut, e.g. a residual skip) for the first
``max_samples`` samples: ``max_samples x (H*W*C + skip tensors)`` numbers in
the model dtype. Only the tail after the layer is re-run (see ``_engine``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from keras import ops

from ..core import health as _health
from ..core.data_pass import dead_filters_of
from ..core.engine import (
    FrontierCache,
    Job,
    TailEngine,
    job_permutation,
    resolve_entropy,
)
from .correlation import warn_dead

__all__ = ["FilterImportance", "ImportanceRequest", "check_request", "importance_reducer", "importance_result",
           "noise_mask", "METHODS"]

METHODS = ("permutation", "ablation", "taylor")


@dataclasses.dataclass(frozen=True, eq=False)
class FilterImportance:
    """Importance of each filter (or group of filters) of one block.

    Attributes
    ----------
    importances : ndarray, shape (G, n_repeats)
        ``G`` is the number of filters, or of groups when ``groups`` was given.
        ``n_repeats`` is 1 for the deterministic methods (ablation, taylor).
    importances_mean, importances_std : ndarray, shape (G,)
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

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (filter or group, repeat) with ``importance``."""
        g, r = self.importances.shape
        rows, reps = np.meshgrid(np.arange(g), np.arange(r), indexing="ij")
        df = {"block": self.block, "method": self.method}
        if self.groups is None:
            df["filter"] = rows.ravel()
        else:
            df["group"] = rows.ravel()
            df["filters"] = [",".join(map(str, self.groups[i])) for i in rows.ravel()]
        df["repeat"] = reps.ravel()
        df["importance"] = self.importances.ravel()
        return pd.DataFrame(df)

    def plot(self, ax=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_filter_importance`; returns the Axes.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_filter_importance

        return plot_filter_importance(self, ax=ax, **kwargs)

    def __repr__(self):
        what = "filters" if self.groups is None else "groups"
        return (f"FilterImportance(block={self.block!r}, method={self.method!r}, scoring={self.scoring!r}, "
                f"{what}={self.importances.shape[0]}, n_repeats={self.importances.shape[1]}, "
                f"baseline_score={self.baseline_score:.4g}, n_samples={self.n_samples}, "
                f"labels from {self.label_source})")


# ----------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------
def _score_fn(scoring, reader, labels: np.ndarray):
    """``score(raw outputs) -> float`` (higher is better), read with the output ``reader``."""
    if callable(scoring):
        if reader is None:  # not a classifier: the callable gets the raw outputs
            return lambda out: float(scoring(labels, np.asarray(out, dtype=np.float64)))
        return lambda out: float(scoring(labels, reader.probabilities(out)))
    if scoring == "accuracy":
        return lambda out: float(np.mean(reader.predicted(out) == labels))
    return lambda out: float(-np.mean(reader.cross_entropy(out, labels)))


def _check_scoring(scoring, reader):
    if callable(scoring):
        return getattr(scoring, "__name__", type(scoring).__name__)
    if not isinstance(scoring, str) or scoring not in ("accuracy", "loss"):
        raise ValueError(
            f"`scoring` must be 'accuracy', 'loss' or a callable scoring(y_true, y_pred) -> float "
            f"(higher is better); received {scoring!r}."
        )
    if reader is None:
        raise ValueError(
            f"`scoring={scoring!r}` needs a classifier output (softmax, sigmoid or logits, declared with "
            "`output=`); pass a callable `scoring` for other models."
        )
    return scoring


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


def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"`{name}` must be a positive int; received {v!r}.")
    return int(v)


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


def check_request(engine: TailEngine, reader, *, method="permutation", n_repeats=5, scoring="accuracy",
                  random_state=None, groups=None, ablation_value="zero",
                  perturbations_per_eval="auto") -> ImportanceRequest:
    """Validates the arguments before any data is read (see :meth:`GlobalAnalyzer.filter_importance`)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}; received {method!r}.")
    n_repeats = _positive_int(n_repeats, "n_repeats")
    c = engine.channels
    groups_t = _check_groups(groups, c)
    chan_sets = [np.array([i]) for i in range(c)] if groups_t is None else list(groups_t)
    if ablation_value not in ("zero", "mean"):
        raise ValueError(f"`ablation_value` must be 'zero' or 'mean'; received {ablation_value!r}.")
    if method == "taylor":
        if callable(scoring):
            raise ValueError("`scoring` cannot be a callable for method='taylor': Taylor importance is "
                             "the first-order change of the cross-entropy loss. Use 'loss' (or leave it).")
        if reader is None:
            raise ValueError("method='taylor' needs a classifier output (softmax, sigmoid or logits).")
        return ImportanceRequest(method, 1, "loss", "loss", chan_sets, groups_t, ablation_value, "auto", None)
    score_name = _check_scoring(scoring, reader)
    if isinstance(perturbations_per_eval, str) and perturbations_per_eval != "auto":
        raise ValueError(f"`perturbations_per_eval` must be 'auto' or a positive int; received {perturbations_per_eval!r}.")
    if not isinstance(perturbations_per_eval, str):
        _positive_int(perturbations_per_eval, "perturbations_per_eval")
    entropy = resolve_entropy(random_state) if method == "permutation" else None
    reps = n_repeats if method == "permutation" else 1
    return ImportanceRequest(method, reps, scoring, score_name, chan_sets, groups_t, ablation_value,
                             perturbations_per_eval, entropy)


def importance_reducer(engine: TailEngine, request: ImportanceRequest, reader):
    """The pass reducer an importance request needs: the tail's cache, or Taylor's sums."""
    if request.method == "taylor":
        return TaylorSums(engine, reader)
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
    key = cache.arrays[0]
    dead = dead_filters_of(key)
    warn_dead(dead, block)

    n_jobs = len(request.chan_sets) * request.n_repeats
    # Baseline outputs (also the labels when none are given), in passes shaped like the jobs'.
    base = engine.baseline_outputs(cache, n_jobs, request.perturbations_per_eval, **kw)
    if cache.labels is not None:
        labels = cache.labels
    else:
        labels = reader.predicted(base) if reader is not None else np.asarray(base, dtype=np.float64)
    score = _score_fn(request.scoring, reader, labels)
    baseline = score(base)

    jobs = []
    if request.method == "permutation":
        entropy = request.entropy
        for g, ch in enumerate(request.chan_sets):
            for r in range(request.n_repeats):
                jobs.append(Job(ch, "permute", perm=(lambda g=g, r=r: job_permutation(entropy, g, r, n))))
    else:
        for ch in request.chan_sets:
            if request.ablation_value == "zero":
                fill = np.zeros((), dtype=key.dtype)
            else:
                fill = np.mean(key[..., ch], axis=0, dtype=np.float64).astype(key.dtype)
            jobs.append(Job(ch, "fill", fill=fill))
    scores = engine.run(cache, jobs, score, request.perturbations_per_eval, progress=progress, **kw)
    imp = (baseline - scores).reshape(len(request.chan_sets), request.n_repeats)
    if request.method == "permutation":
        warn_noise(imp, block)
    source = "y" if y_given else ("dataset" if cache.labels is not None else "model predictions")
    return FilterImportance(imp, baseline, request.method, request.score_name, block, request.groups, dead, n,
                            request.entropy, source)


def noise_mask(importances: np.ndarray) -> np.ndarray:
    """Rows whose importance cannot be told apart from 0: the 95% interval over the repeats covers 0.

    The interval is ``mean +- t * sd / sqrt(R)`` with Student's t quantile for
    ``R - 1`` degrees of freedom (R >= 2 repeats). With one repeat there is no
    spread to judge by: every row is flagged.
    """
    from scipy.stats import t as student_t

    imp = np.asarray(importances, dtype=np.float64)
    r = imp.shape[1]
    if r < 2:
        return np.ones(imp.shape[0], dtype=bool)
    half = student_t.ppf(0.975, r - 1) * imp.std(axis=1, ddof=1) / np.sqrt(r)
    mean = imp.mean(axis=1)
    return (mean - half <= 0) & (mean + half >= 0)


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


class TaylorSums:
    """Reducer of Taylor importance: per batch one forward and one backward pass of the tail.

    Accumulates ``sum_n sum_pos a * dL_n/da`` per channel in float64, with
    ``L_n`` the cross-entropy of the output reader (against the label, or the
    model's own predicted class without labels).
    """

    def __init__(self, engine: TailEngine, reader):
        from ..core.data_pass import ChannelRange, Tap

        self.engine = engine
        self.reader = reader
        self.range = ChannelRange(engine.key)  # the one definition of a dead filter
        self.taps = tuple(Tap(k, "raw") for k in engine.frontier) + self.range.taps
        self.total = np.zeros(engine.channels, dtype=np.float64)
        self.loss_sum = 0.0
        self.n = 0
        self.has_y = False

        def loss_fn(out, labels):
            if labels is None:
                labels = ops.argmax(reader.log_probabilities(out, xp=ops), axis=1)
            return reader.cross_entropy(out, labels, xp=ops)

        self.loss_fn = loss_fn

    def update(self, batch):
        arrays = [batch.values[(k, "raw")] for k in self.engine.frontier]
        labels = None if batch.y is None else np.asarray(batch.y, dtype=np.int32)
        self.has_y = labels is not None
        grad, out = self.engine.input_gradient(arrays, self.loss_fn, labels)
        a = arrays[0]
        axes = tuple(range(a.ndim - 1))
        self.total += np.sum(a.astype(np.float64) * grad.astype(np.float64), axis=axes)
        lab = labels if labels is not None else self.reader.predicted(out)
        self.loss_sum += float(np.sum(self.reader.cross_entropy(out, lab)))
        self.range.update(batch)
        self.n += len(a)

    def result(self, request: ImportanceRequest, block: str, y_given: bool) -> FilterImportance:
        dead = self.range.dead
        warn_dead(dead, block)
        n = self.n
        imp = np.array([abs(self.total[ch].sum()) / n for ch in request.chan_sets])[:, None]
        source = "y" if y_given else ("dataset" if self.has_y else "model predictions")
        return FilterImportance(imp, -self.loss_sum / n, "taylor", "loss", block, request.groups, dead, n, None, source)
