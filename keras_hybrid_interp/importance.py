"""Filter importance: permutation, ablation and first-order Taylor.

Definitions (sign as scikit-learn: positive = important)
--------------------------------------------------------
score
    ``"accuracy"``: fraction of samples whose predicted class (argmax of the
    output; ``p > 0.5`` for a single sigmoid unit) equals the label.
    ``"loss"``: the *negative* mean cross-entropy ``-mean_n(-log p_n[y_n])``
    (probabilities clipped to ``[1e-15, 1]``; outputs without a softmax or
    sigmoid are treated as logits), so that higher is better.
    A callable ``scoring(y_true, y_pred) -> float`` (higher is better)
    receives the integer labels ``(n,)`` and the class-probability table
    ``(n, K)`` (``[1 - p, p]`` for a single sigmoid unit).
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

Permutation and ablation run on a cache of the activations at the layer (and
of every tensor crossing the cut, e.g. a residual skip) for the first
``max_samples`` samples: ``max_samples x (H*W*C + skip tensors)`` numbers in
the model dtype. Only the tail after the layer is re-run (see ``_engine``).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from keras import ops

from ._data import to_class_indices
from ._engine import Job, TailEngine, job_permutation, resolve_entropy
from ._distribute import predict_on_batch

__all__ = ["FilterImportance", "filter_importance", "METHODS"]

METHODS = ("permutation", "ablation", "taylor")
_EPS = 1e-15


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

    def __repr__(self):
        what = "filters" if self.groups is None else "groups"
        return (f"FilterImportance(block={self.block!r}, method={self.method!r}, scoring={self.scoring!r}, "
                f"{what}={self.importances.shape[0]}, n_repeats={self.importances.shape[1]}, "
                f"baseline_score={self.baseline_score:.4g}, n_samples={self.n_samples}, "
                f"labels from {self.label_source})")


# ----------------------------------------------------------------------
# Outputs, labels and scores
# ----------------------------------------------------------------------
class OutputSpec:
    """How to read the model output as class probabilities."""

    def __init__(self, graph, out_kind):
        shape = graph.tensors[graph.output_keys[0]].shape
        self.kind = out_kind
        self.units = int(np.prod([d for d in shape[1:]])) if len(shape) > 1 else 1
        self.binary = self.units == 1
        if self.binary and out_kind != "sigmoid":
            self.num_classes = None  # regression-like output
        else:
            self.num_classes = 2 if self.binary else self.units

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
        if self.binary:
            return np.concatenate([1 - out, out], axis=1)
        if self.kind in ("softmax", "sigmoid"):
            return out
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predicted(self, out: np.ndarray) -> np.ndarray:
        return np.argmax(self.probabilities(out), axis=1).astype(np.int64)


def _score_fn(scoring, spec: OutputSpec, labels: np.ndarray):
    if callable(scoring):
        def f(out):
            return float(scoring(labels, spec.probabilities(out)))
        return f
    if scoring == "accuracy":
        def f(out):
            return float(np.mean(spec.predicted(out) == labels))
        return f

    def f(out):
        p = spec.probabilities(out)[np.arange(len(labels)), labels]
        return float(-np.mean(-np.log(np.clip(p, _EPS, 1.0))))
    return f


def _check_scoring(scoring, spec: OutputSpec):
    if callable(scoring):
        return getattr(scoring, "__name__", type(scoring).__name__)
    if not isinstance(scoring, str) or scoring not in ("accuracy", "loss"):
        raise ValueError(
            f"`scoring` must be 'accuracy', 'loss' or a callable scoring(y_true, y_pred) -> float "
            f"(higher is better); received {scoring!r}."
        )
    if spec.num_classes is None:
        raise ValueError(
            f"`scoring={scoring!r}` needs a classifier output (softmax, sigmoid, or K > 1 logits); the "
            "model has a single output unit without sigmoid. Pass a callable `scoring`."
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
def filter_importance(engine: TailEngine, stream, spec: OutputSpec, *, y_given: bool, block: str,
                      method="permutation", n_repeats=5, scoring="accuracy", random_state=None,
                      groups=None, ablation_value="zero", perturbations_per_eval="auto",
                      memory_budget=None, progress=None) -> FilterImportance:
    """Computes filter importance; see :meth:`GlobalAnalyzer.filter_importance`."""
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
        if spec.num_classes is None:
            raise ValueError("method='taylor' needs a classifier output (softmax, sigmoid or K > 1 logits).")
        return _taylor(engine, stream, spec, chan_sets, groups_t, block, y_given)
    score_name = _check_scoring(scoring, spec)
    if isinstance(perturbations_per_eval, str) and perturbations_per_eval != "auto":
        raise ValueError(f"`perturbations_per_eval` must be 'auto' or a positive int; received {perturbations_per_eval!r}.")
    if not isinstance(perturbations_per_eval, str):
        _positive_int(perturbations_per_eval, "perturbations_per_eval")
    entropy = resolve_entropy(random_state) if method == "permutation" else None
    n_known = stream.num_samples
    if method == "permutation" and n_known is not None and n_known < 2:
        raise ValueError(f"Permutation importance shuffles across samples and needs at least 2 samples; `x` has {n_known}.")

    cache = engine.cache(stream)
    n = cache.n
    if method == "permutation" and n < 2:
        raise ValueError(f"Permutation importance shuffles across samples and needs at least 2 samples; `x` has {n}.")
    if method == "permutation" and n < 30:
        warnings.warn(f"Permutation importance on only {n} samples is noisy; use more samples.", UserWarning, stacklevel=3)
    kw = {} if memory_budget is None else {"memory_budget": memory_budget}

    key = cache.arrays[0]
    dead = np.flatnonzero(np.all(key == key[:1], axis=tuple(range(key.ndim - 1))))
    if len(dead):
        warnings.warn(
            f"Block {block!r}: filters {dead[:20].tolist()} have the same feature map in every analysed "
            f"sample (dead); permuting them changes nothing (importance 0).", UserWarning, stacklevel=3)

    # Baseline outputs (also the labels when none are given).
    base = engine.outputs(cache, [Job(np.array([], dtype=np.int64))], **kw)[0]
    if cache.labels is not None:
        labels = (to_class_indices(cache.labels, spec.num_classes, argname=getattr(stream, "label_argname", "y"))
                  if spec.num_classes else cache.labels)
    else:
        labels = spec.predicted(base) if spec.num_classes else np.asarray(base, dtype=np.float64)
    score = _score_fn(scoring, spec, labels)
    baseline = score(base)

    jobs = []
    if method == "permutation":
        for g, ch in enumerate(chan_sets):
            for r in range(n_repeats):
                jobs.append(Job(ch, "permute", perm=(lambda g=g, r=r: job_permutation(entropy, g, r, n))))
        reps = n_repeats
    else:
        for ch in chan_sets:
            if ablation_value == "zero":
                fill = np.zeros((), dtype=key.dtype)
            else:
                fill = np.mean(key[..., ch], axis=0, dtype=np.float64).astype(key.dtype)
            jobs.append(Job(ch, "fill", fill=fill))
        reps = 1
    scores = engine.run(cache, jobs, score, perturbations_per_eval, progress=progress, **kw)
    imp = (baseline - scores).reshape(len(chan_sets), reps)
    source = "y" if y_given else ("dataset" if cache.labels is not None else "model predictions")
    return FilterImportance(imp, baseline, method, score_name, block, groups_t, dead, n, entropy, source)


def _per_sample_loss(spec: OutputSpec):
    eps = 1e-7

    def loss(out, labels):
        out = ops.reshape(out, (ops.shape(out)[0], -1))
        out = ops.cast(out, "float32")
        if spec.binary:
            p = ops.clip(out[:, 0], eps, 1 - eps)
            t = ops.cast(p > 0.5, "float32") if labels is None else ops.cast(labels, "float32")
            return -(t * ops.log(p) + (1 - t) * ops.log(1 - p))
        if spec.kind in ("softmax", "sigmoid"):
            logp = ops.log(ops.clip(out, eps, 1.0))
        else:
            logp = ops.log_softmax(out, axis=1)
        t = ops.argmax(out, axis=1) if labels is None else ops.cast(labels, "int32")
        t = ops.cast(t, "int32")
        return -ops.take_along_axis(logp, ops.expand_dims(t, 1), axis=1)[:, 0]

    return loss


def _taylor(engine: TailEngine, stream, spec, chan_sets, groups_t, block, y_given):
    c = engine.channels
    total = np.zeros(c, dtype=np.float64)
    loss_sum = 0.0
    n = 0
    first = None
    varies = np.zeros(c, dtype=bool)
    loss_fn = _per_sample_loss(spec)
    has_y = None
    for xb, yb in stream:
        if has_y is None:
            has_y = yb is not None
        elif has_y != (yb is not None):
            raise ValueError("`x` yields labels for some batches and not for others; label every batch or none.")
        out = predict_on_batch(engine.prefix, xb)
        arrays = [np.asarray(a) for a in (list(out) if isinstance(out, (list, tuple)) else [out])]
        labels = None if yb is None else to_class_indices(
            yb, spec.num_classes, argname=getattr(stream, "label_argname", "y")).astype(np.int32)
        grad, out = engine.input_gradient(arrays, loss_fn, labels)
        a = arrays[0]
        total += np.einsum("nhwc,nhwc->c", a.astype(np.float64), grad.astype(np.float64))
        lab_np = labels if labels is not None else spec.predicted(out)
        p = spec.probabilities(out)[np.arange(len(lab_np)), lab_np]
        loss_sum += float(np.sum(-np.log(np.clip(p, _EPS, 1.0))))
        if first is None:
            first = a[:1].copy()
        varies |= np.any(a != first, axis=tuple(range(a.ndim - 1)))
        n += len(xb)
    dead = np.flatnonzero(~varies)
    if len(dead):
        warnings.warn(
            f"Block {block!r}: filters {dead[:20].tolist()} have the same feature map in every analysed "
            f"sample (dead).", UserWarning, stacklevel=3)
    imp = np.array([abs(total[ch].sum()) / n for ch in chan_sets])[:, None]
    source = "y" if y_given else ("dataset" if has_y else "model predictions")
    return FilterImportance(imp, -loss_sum / n, "taylor", "loss", block, groups_t, dead, n, None, source)
