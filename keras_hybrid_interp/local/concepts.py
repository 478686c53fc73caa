"""Concepts: at what depth a human concept forms, and whether the model's output is sensitive to it.

Testing with Concept Activation Vectors (TCAV; Kim et al., 2018), with a
significance test whose false-positive rate is checked by simulation.

The user brings named sets of examples of a concept (images of stripes) and
the package answers, per block:

1. **Does the block represent the concept?** A *concept probe* (a CAV) is
   fitted by the one probe trainer (:mod:`~keras_hybrid_interp.core.trainer`:
   scikit-learn's ``StandardScaler`` then L2 logistic regression, solved to
   its optimum) on the block's features of the concept's examples against a
   random set. Its held-out accuracy, with a bootstrap interval and
   random-label controls, is the *concept accuracy* of the block: the first
   block where it beats its control says where the network starts to
   represent the concept.
2. **Is the model's output for a class sensitive to the concept?** The
   *directional derivative* of the class output ``h`` at an input ``x``
   along the CAV ``v`` of block ``l`` is ``S = grad_{a_l} h(x) . v``. The
   *TCAV score* of (concept, block, class) is the fraction of the class's
   inputs with ``S > 0``; its *magnitude* is the mean of ``S`` over them
   (with ``v`` of unit length, as Captum's ``magnitude``).
3. **Is that sensitivity more than chance?** See *Significance* below.

Features and directional derivatives
------------------------------------
``features="pooled"`` (the default) reads a block as the class probes do,
pooled over space (global average; global maximum for an interpreter with
``pooling="max"``): a CAV ``v`` has one weight per filter. Moving the pooled
features along ``v`` means adding ``v`` at *every* position of the map (both
pooling means move by exactly ``v``), so the matching directional derivative
is ``S = sum_p grad_{a_l[p]} h . v``: the derivative of ``h`` when ``v`` is
added at every position. ``features="full"`` is the original TCAV: the CAV
lives in the flattened map (one weight per position and filter) and
``S = grad_{a_l} h . v`` over the whole map. Pooled is the default: in the
planted-ground-truth simulation (docs/definitions/concepts.md) pooled CAVs
are more accurate on held-out examples (0.79-0.82 by block against
0.69-0.79), find the planted concept at the block that first separates it
more often (18 of 20 draws against 16) and cost a third of the time: with
a few dozen examples a full-map CAV has thousands of weights and fits the
examples wherever the concept happens to sit in them.

``method="logistic"`` (the default) is the CAV of the original TCAV: the
normal of the logistic decision boundary, ``w * scale`` in raw feature units
(the gradient of the probe's logit). ``method="fastcav"`` (Schmalwasser et
al., 2025) is the difference of the means, ``mean(concept) - mean(concept
and random)``, with the boundary through the global mean: no fit, for many
cheap repeats, but less power in the simulation (11 of 20 draws with full
maps). Both are normalised to unit length.

The *class output* ``h`` is what the task layer (:mod:`~keras_hybrid_interp.core.task`)
says the output means: a class's log-probability for a multi-class or
binary classifier (the original TCAV differentiates the cross-entropy of the
class, which is its negative), a label's log-probability for a multi-label
model, a target's value for a regression model, and for a segmentation
model the mean over positions of a class's log-probability. A class's inputs
are those labelled with it (or, without labels, those the model assigns to
it: its top class, a label it predicts present, a class present in its
predicted mask); every input of a regression model counts for every target.

Every block's derivative comes from **one forward and one backward pass per
batch**: the side model adds a zero ``delta`` at each block (one weight per
filter for pooled features, a whole map for full ones), and the gradient of
the summed class outputs with respect to ``delta`` is every block's
``sum_p grad h`` (or ``grad h``) at once; every CAV's ``S`` is then one
matrix product per block.

Significance
------------
For each concept, ``n_random`` (default 20) CAVs are fitted against
``n_random`` different random sets ``B_r`` drawn from ``random`` (from ``x``
when ``random=None``); each concept's examples are split once into a
training part (the CAVs) and a held-out part (the accuracy), and a held-out
random set is drawn once. Each random set ``B_j`` also plays the concept
against the others: the *random-vs-random* CAVs ``B_j`` vs ``B_r``
(examples in both are left out of both).

``test="sets"`` (the default) asks whether the concept's mean TCAV score
over its ``n_random`` CAVs is outside the spread of the same statistic for a
random set, the mean score of ``B_j`` over its counterparts ``B_r, r != j``.
It is a two-sided two-sample t-test with pooled variance in which the
concept is a sample of one: ``t = (s_c - mean_j s_j) / (sd_j s_j sqrt(1 +
1 / J))`` on ``J - 1`` degrees of freedom, scipy's
``ttest_ind_from_stats(s_c, 0, 1, mean, sd, J)``. ``test="tcav"`` is the
original TCAV's t-test: the concept's ``n_random`` scores against the scores
of one random set ``B_0`` against the others (``scipy.stats.ttest_ind``).
The original test treats the concept's CAVs as independent draws, but they
share one set of concept examples: whatever that particular set's direction
does to the class output is common to all of them and is not in their
spread. A *random* concept set is then "significant" far more often than
the test's level, because its own direction is as arbitrary as any random
set's: in the simulation (100 seeds, every block and class, Holm's
correction) the original test declared a random set significant in 82-84 %
of the seeds, ``"sets"`` in none (3.7 % of the single tests before
correction). ``"sets"`` compares like with like, one set's mean against
other single sets' means.

Both statistics are tested: the TCAV score (``*_sign``) and the magnitude
(``*_magnitude``); ``statistic="magnitude"`` (the default) names the one
behind ``p_value``, ``p_adjusted`` and ``significant``. The sign score
saturates when a class's gradients point one way (a small CNN's do): random
directions then already score near 0 or 1, random sets' mean scores spread
over 0-1, and its valid test cannot reach significance; the magnitude does
not saturate (in the simulation the sign test found the planted stripes in
no draw, the magnitude's in every one).

P-values are corrected for the number of tests, concepts x blocks x
classes, by Holm's step-down method (``correction="holm"``: controls the
probability of any false positive, and is uniformly more powerful than
Bonferroni); ``"bonferroni"``, ``"fdr_bh"`` (Benjamini-Hochberg, false
discovery rate) or ``"none"`` may be chosen. A result is ``significant``
when its corrected p-value is below ``alpha``; the others are marked as
such in the frame and drawn faded and hatched, never as findings.

TCAV flags any *consistent* direction, not only a meaningful one: a concept
whose examples differ from the random sets in something the class also
differs in (brightness, colour) is "significant" for that class even when
the model never uses what the concept names. Test each concept beside a
negative control of your own (a concept that should not matter), and use
relative TCAV (``relative=[("stripes", "dots")]``: a CAV of one concept
against another) where two concepts share such a confound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pandas as pd

import keras
from keras import ops

from ..core import data_pass as _pass
from ..core import health as _health
from ..core.bootstrap import PoissonBootstrap, check_bootstrap, check_confidence
from ..core.data import model_stream, x_rows, x_take
from ..core.gradients import make_input_gradient
from ..core.output import EPS
from ..core.trainer import MAX_ITER, TOL, check_C, check_solver, fit_binary_probes
from ..core.validation import check_int, check_real
from .probes import input_transform

__all__ = [
    "ConceptResult",
    "ConceptMaps",
    "Cav",
    "concepts",
    "concept_maps",
    "fit_cav",
    "fit_cavs",
    "fit_concept_cavs",
    "ConceptSplit",
    "split_examples",
    "draw_random_sets",
    "held_out_set",
    "check_cav_options",
    "check_concept_size",
    "row_digests",
    "directional_derivatives",
    "class_score",
    "tcav_pvalues",
    "adjust_pvalues",
    "MIN_EXAMPLES",
    "FEW_EXAMPLES",
]

#: A concept with fewer examples than this is refused (its held-out part would be a handful).
MIN_EXAMPLES = 10
#: A concept with fewer examples than this is warned about.
FEW_EXAMPLES = 20
FEATURES = ("pooled", "full")
METHODS = ("logistic", "fastcav")
TESTS = ("sets", "tcav")
STATISTICS = ("magnitude", "sign")
CORRECTIONS = ("holm", "bonferroni", "fdr_bh", "none")


# ----------------------------------------------------------------------
# Checks of the arguments
# ----------------------------------------------------------------------
def _check_choice(value, choices, argname):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{argname}` must be one of {list(choices)}; received {value!r}.")
    return value


def _check_int(value, argname, minimum):
    return check_int(value, argname, min_value=minimum)


def _check_fraction(value, argname):
    return check_real(value, argname, low=0.0, high=1.0, low_open=True, high_open=True)


def check_concepts(concepts, argname="concepts") -> list:
    """``[(name, data), ...]`` from a dict or a list of pairs; a clear error for anything else."""
    if isinstance(concepts, dict):
        items = list(concepts.items())
    elif isinstance(concepts, (list, tuple)) and all(isinstance(i, tuple) and len(i) == 2 for i in concepts):
        items = list(concepts)
    else:
        raise TypeError(
            f"`{argname}` must be a dict mapping concept names to their examples (arrays, tf.data or PyDataset "
            f"of inputs), or a list of (name, examples) pairs; received {type(concepts).__name__}."
        )
    if not items:
        raise ValueError(f"`{argname}` is empty: pass at least one named set of concept examples.")
    seen = set()
    for name, _ in items:
        if not isinstance(name, str) or not name:
            raise TypeError(f"`{argname}`: every concept name must be a non-empty str; received {name!r}.")
        if name in seen:
            raise ValueError(f"`{argname}`: the concept name {name!r} repeats; every concept needs its own name.")
        seen.add(name)
    return items


def _check_relative(relative, names):
    if relative is None:
        return []
    if not isinstance(relative, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in relative):
        raise TypeError(f"`relative` must be a list of (concept, other concept) pairs; received {relative!r}.")
    out = []
    for a, b in relative:
        for c in (a, b):
            if c not in names:
                raise ValueError(f"`relative` names {c!r}, which is not one of the concepts {names}.")
        if a == b:
            raise ValueError(f"`relative`: a concept against itself ({a!r}) has no direction.")
        out.append((a, b))
    return out


# ----------------------------------------------------------------------
# Corrections and tests
# ----------------------------------------------------------------------
def adjust_pvalues(p, method="holm") -> np.ndarray:
    """P-values adjusted for multiple comparisons over every finite entry of ``p`` (NaN stays NaN).

    ``"holm"``: Holm's step-down, ``max_{j <= i} min(1, (m - j + 1) p_(j))``
    for the ``i``-th smallest; ``"bonferroni"``: ``min(1, m p)``;
    ``"fdr_bh"``: Benjamini-Hochberg, ``min_{j >= i} min(1, m p_(j) / j)``;
    ``"none"``: unchanged. ``m`` is the number of finite p-values.
    """
    _check_choice(method, CORRECTIONS, "correction")
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    v = p[ok]
    m = len(v)
    if m == 0 or method == "none":
        out[ok] = v
        return out
    order = np.argsort(v, kind="mergesort")
    s = v[order]
    ranks = np.arange(1, m + 1)
    if method == "bonferroni":
        adj = np.minimum(1.0, m * s)
    elif method == "holm":
        adj = np.minimum(1.0, np.maximum.accumulate((m - ranks + 1) * s))
    else:
        adj = np.minimum(1.0, np.minimum.accumulate((m * s / ranks)[::-1])[::-1])
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def _t_pvalue(t, df):
    from scipy import stats

    return float(2.0 * stats.t.sf(abs(t), df))


def one_against_many(values, null):
    """``(p, t)``: two-sided t-test of the mean of ``values`` as *one* observation against the sample ``null``.

    Pooled-variance two-sample t-test with a sample of one (of standard
    deviation 0): ``t = (mean(values) - mean(null)) / (sd(null) sqrt(1 +
    1 / J))`` on ``J - 1`` degrees of freedom, ``J`` the finite entries of
    ``null`` (scipy's ``ttest_ind_from_stats(m, 0, 1, mean, sd, J)``). NaN
    without values, with fewer than 2 null entries, or with no spread.
    """
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    null = np.asarray(null, np.float64).reshape(-1)
    null = null[np.isfinite(null)]
    if len(v) == 0 or len(null) < 2:
        return float("nan"), float("nan")
    sd = float(np.std(null, ddof=1))
    if sd == 0:
        return float("nan"), float("nan")
    t = (float(v.mean()) - float(null.mean())) / (sd * math.sqrt(1.0 + 1.0 / len(null)))
    return _t_pvalue(t, len(null) - 1), t


def _nan_mean(a) -> np.ndarray:
    """The mean over the last axis of the finite values; NaN (silently) where there is none."""
    a = np.asarray(a, np.float64)
    ok = np.isfinite(a)
    count = ok.sum(axis=-1)
    total = np.where(ok, a, 0.0).sum(axis=-1)
    return np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)


def _nan_std(a) -> np.ndarray:
    """The sample standard deviation (ddof 1) over the last axis of the finite values; NaN (silently) with
    fewer than two (one test="tcav" row of random sets, one repeat)."""
    a = np.asarray(a, np.float64)
    ok = np.isfinite(a)
    count = ok.sum(axis=-1)
    mean = _nan_mean(a)
    dev = np.where(ok, a - mean[..., None], 0.0)
    var = np.divide((dev * dev).sum(axis=-1), count - 1, out=np.full(count.shape, np.nan), where=count > 1)
    return np.sqrt(var)


def random_set_means(grid) -> np.ndarray:
    """Each random set's mean statistic over its counterparts: ``grid`` (..., J, R) -> (..., J) (NaN ignored)."""
    g = np.asarray(grid, np.float64)
    counts = np.sum(np.isfinite(g), axis=-1)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, np.nansum(g, axis=-1) / np.maximum(counts, 1), np.nan)


def tcav_pvalues(concept_scores, random_scores, test="sets"):
    """Two-sided t-test p-value and t statistic of a concept's TCAV scores against random-vs-random ones.

    ``concept_scores`` (R,): the concept's scores, one per random counterpart
    ``B_r``. ``random_scores`` (J, R): row ``j`` holds the scores of random
    set ``B_j`` as the concept against ``B_r`` (NaN where ``r == j`` or the
    pair was not fitted).

    ``test="sets"``: the concept's mean against the rows' means (each random
    set's mean), pooled-variance t-test with the concept a sample of one
    (scipy's ``ttest_ind_from_stats(s, 0, 1, mean, sd, J)``).
    ``test="tcav"``: the concept's scores against row 0's
    (``scipy.stats.ttest_ind``, pooled variance), as the original TCAV.

    Returns ``(p, t)``; NaN when a sample has no spread (every score equal)
    or too few values.
    """
    c = np.asarray(concept_scores, np.float64)
    c = c[np.isfinite(c)]
    grid = np.asarray(random_scores, np.float64)
    if test == "sets":
        return one_against_many(c, random_set_means(grid))
    _check_choice(test, TESTS, "test")
    r0 = grid[0][np.isfinite(grid[0])]
    n1, n2 = len(c), len(r0)
    if n1 < 2 or n2 < 2:
        return float("nan"), float("nan")
    pooled = ((n1 - 1) * np.var(c, ddof=1) + (n2 - 1) * np.var(r0, ddof=1)) / (n1 + n2 - 2)
    if pooled == 0:
        return float("nan"), float("nan")
    t = (c.mean() - r0.mean()) / math.sqrt(pooled * (1.0 / n1 + 1.0 / n2))
    return _t_pvalue(t, n1 + n2 - 2), float(t)


# ----------------------------------------------------------------------
# CAVs
# ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cav:
    """One concept activation vector in a block's raw feature units.

    ``direction`` (D,) has unit length (zero if the two sets have the same
    features); the classifier is ``features @ direction + intercept > 0``
    (concept). ``weights`` (D,) are the weights in standardized units (one
    per feature: how much the probe relies on it, whatever its scale).
    """

    direction: np.ndarray
    intercept: float
    weights: np.ndarray
    converged: bool

    def predict(self, features) -> np.ndarray:
        """0/1: whether each row of ``features`` (n, D) is on the concept's side."""
        return (np.asarray(features, np.float64) @ self.direction + self.intercept > 0).astype(np.int64)


def fit_cav(concept, random, *, method="logistic", C=1.0, max_iter=MAX_ITER, tol=TOL) -> Cav:
    """The CAV of features ``concept`` (n1, D) against ``random`` (n0, D).

    ``"logistic"``: the one probe trainer's binary logistic regression on
    standardized features (scikit-learn's ``StandardScaler`` then
    ``LogisticRegression(C=C)``, :func:`~keras_hybrid_interp.core.trainer.fit_binary_probes`);
    the direction is ``w * scale`` (the gradient of its logit in raw units),
    the intercept ``b - mean @ (w * scale)``. ``"fastcav"``: ``mean(concept)
    - mean(both)``, the boundary through ``mean(both)``. Both are divided by
    the direction's length. :func:`fit_cavs` fits many at once.
    """
    return fit_cavs([(concept, random)], method=method, C=C, max_iter=max_iter, tol=tol)[0]


def fit_cavs(pairs, *, method="logistic", C=1.0, max_iter=MAX_ITER, tol=TOL) -> list[Cav]:
    """:func:`fit_cav` of each ``(concept, random)`` feature pair of ``pairs``; the logistic fits run together
    (:func:`~keras_hybrid_interp.core.trainer.fit_binary_probes`: batched Newton steps in each pair's span)."""
    stats: list[tuple] = []  # fastcav: (v, centre, spread); logistic: (mean, scale)
    problems = []
    for concept, random in pairs:
        pos = np.asarray(concept, np.float64)
        neg = np.asarray(random, np.float64)
        x = np.concatenate([pos, neg])
        if method == "fastcav":
            centre = x.mean(axis=0)
            stats.append((pos.mean(axis=0) - centre, centre, x.std(axis=0)))
            continue
        t = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
        mean, scale = input_transform(x)
        stats.append((mean, scale))
        problems.append(((x - mean) * scale, t))
    sols = fit_binary_probes(problems, C=C, max_iter=max_iter, tol=tol) if problems else []
    out = []
    for j, stat in enumerate(stats):
        if method == "fastcav":
            v, centre, spread = stat
            b, weights, converged = -float(centre @ v), v * spread, True
        else:
            mean, scale = stat
            sol = sols[j]
            weights = sol.kernel[:, 1]
            v = weights * scale
            b, converged = float(sol.bias[1] - mean @ v), sol.converged
        norm = float(np.linalg.norm(v))
        out.append(Cav(np.zeros_like(v), 0.0, weights, converged) if norm == 0
                   else Cav(v / norm, b / norm, weights, converged))
    return out


@dataclasses.dataclass(frozen=True)
class ConceptSplit:
    """Which of a concept's examples (indices, in the order given) train its CAVs and which measure its accuracy."""

    train: np.ndarray
    test: np.ndarray


def split_examples(m, test_fraction, rng) -> ConceptSplit:
    """A concept's ``m`` examples split once: ``round(test_fraction * m)`` held out (at least 1, at most ``m - 2``)."""
    perm = rng.permutation(m)
    n_test = min(max(1, int(round(test_fraction * m))), m - 2)
    return ConceptSplit(np.sort(perm[n_test:]), np.sort(perm[:n_test]))


def draw_random_sets(n_pool, m_test, m_train, n_random, rng, *, source, pool_arg):
    """``(held_out, sets)``: positions in a random pool of ``n_pool`` inputs of the held-out random inputs
    (``m_test``) and of ``n_random`` random sets of ``m_train`` inputs, disjoint when the pool is large enough
    (else drawn with overlaps between sets, with a warning). ``source`` and ``pool_arg`` name the pool in the
    messages."""
    if n_pool < m_test + m_train:
        raise ValueError(
            f"{source} has {n_pool} inputs; the random sets need at least {m_test + m_train} (a held-out set of "
            f"{m_test} and random sets of {m_train}, the size of the largest concept's training part). Pass more "
            f"random inputs (`{pool_arg}`)."
        )
    perm = rng.permutation(n_pool)
    held_out, rest = perm[:m_test], perm[m_test:]
    if len(rest) >= n_random * m_train:
        return held_out, [rest[r * m_train:(r + 1) * m_train] for r in range(n_random)]
    sets = [rng.choice(rest, m_train, replace=False) for _ in range(n_random)]
    _health.warn(
        "few_samples",
        f"The {n_random} random sets of {m_train} inputs share inputs: {source} gave {n_pool} inputs, fewer "
        f"than the {m_test + n_random * m_train} that disjoint sets need. The random-vs-random spread is then "
        "understated; pass more random inputs or lower `n_random`.",
    )
    return held_out, sets


def held_out_set(features, split, pool, held_out):
    """``(x, t)``: the concept's held-out examples (t = 1) and as many held-out random inputs (t = 0), features."""
    n = len(split.test)
    return np.concatenate([features[split.test], pool[held_out[:n]]]), np.concatenate([np.ones(n), np.zeros(n)])


def fit_concept_cavs(features, split, pool, held_out, sets, **fit_kw):
    """One concept's CAVs at one block, one per random set, and their held-out correctness.

    ``features`` (m, D): the concept's examples; ``pool`` (n_pool, D): the
    random pool's, indexed by ``held_out`` and ``sets`` (from
    :func:`draw_random_sets`). The CAV against set ``r`` is :func:`fit_cav`
    of the training examples against the first ``len(split.train)`` inputs
    of ``sets[r]``. Returns ``(cavs, correct)``: ``correct`` (2 n_test,) is
    each held-out input's correctness averaged over the CAVs, so the concept
    accuracy of the block is ``correct.mean()``.
    """
    mt = len(split.train)
    pos = features[split.train]
    test_x, test_t = held_out_set(features, split, pool, held_out)
    cavs, correct = fit_cavs([(pos, pool[sets[r][:mt]]) for r in range(len(sets))], **fit_kw), np.zeros(len(test_t))
    for cav in cavs:
        correct += (cav.predict(test_x) == test_t) / len(sets)
    return cavs, correct


def check_cav_options(n_random=20, test_fraction=0.33, method="logistic", C=1.0, max_iter=MAX_ITER, tol=TOL) -> dict:
    """The options of the concept probes' fit and accuracy (as :func:`concepts` takes them), checked; a dict."""
    check_solver(max_iter, tol)
    return {"n_random": _check_int(n_random, "n_random", 2),
            "test_fraction": _check_fraction(test_fraction, "test_fraction"),
            "method": _check_choice(method, METHODS, "method"), "C": check_C(C), "max_iter": max_iter, "tol": tol}


# ----------------------------------------------------------------------
# Class outputs and directional derivatives
# ----------------------------------------------------------------------
def class_score(task, out, labels):
    """Per-row class output ``h`` (see the module docstring) of model outputs ``out``, with ``keras.ops``.

    ``labels`` (n,) int: the class (label, target) of each row; -1 for a
    classifier means the model's top class.
    """
    name = task.name
    labels = ops.cast(labels, "int32")
    if name in ("multiclass", "binary"):
        h = task.log_probabilities(out, xp=ops)
        top = ops.cast(ops.argmax(h, axis=1), "int32")
        labels = ops.where(labels < 0, top, labels)
    elif name == "multilabel":
        z = ops.reshape(out, (-1, task.units))
        h = -ops.softplus(-z) if task.kind == "logits" else ops.log(ops.clip(z, EPS, 1.0))
    elif name == "regression":
        h = ops.reshape(task.values(out, xp=ops), (-1, task.num_outputs))
    elif name == "segmentation":
        n = ops.shape(out)[0]
        logp = task.reader.log_probabilities(ops.reshape(out, (-1, task.units)), xp=ops)
        h = ops.mean(ops.reshape(logp, (n, -1, task.num_classes)), axis=1)
    else:  # pragma: no cover - every task is listed above
        raise ValueError(f"No class output for the task {name!r}.")
    return ops.take_along_axis(h, ops.expand_dims(labels, 1), axis=1)[:, 0]


def _block_sizes(graph, keys, features):
    """Per block the length of its part of ``delta``: C (pooled) or the map's size (full)."""
    sizes = []
    for k in keys:
        shape = tuple(graph.tensors[k].shape[1:])
        if features == "pooled" or len(shape) == 1:
            sizes.append(int(shape[-1]))
            continue
        if any(d is None for d in shape):
            raise ValueError(
                f"`features`='full' needs blocks of a fixed size; block {graph.tensors[k].name!r} has shape "
                f"{shape}. Use features='pooled'."
            )
        sizes.append(int(np.prod(shape)))
    return sizes


def _derivative_model(graph, keys, features):
    """``(model, sizes)``: ``model([delta, *inputs])`` is the model output with ``delta`` added at every block.

    ``delta`` (n, sum(sizes)) holds per block one value per filter, added at
    every position (pooled), or a whole map (full). Its gradient is every
    block's derivative at once.
    """
    sizes = _block_sizes(graph, keys, features)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    holder: dict = {}

    def edit_for(i, k):
        shape = tuple(graph.tensors[k].shape[1:])

        def edit(t):
            more = []
            if "delta" not in holder:
                holder["delta"] = keras.Input(shape=(int(offsets[-1]),), dtype="float32", name="khi_concept_delta")
                more = [holder["delta"]]
            d = holder["delta"][:, int(offsets[i]):int(offsets[i + 1])]
            if features == "pooled" or len(shape) == 1:
                d = ops.reshape(d, (-1,) + (1,) * (len(shape) - 1) + (shape[-1],))
            else:
                d = ops.reshape(d, (-1,) + shape)
            return t + ops.cast(d, t.dtype), more

        return edit

    with graph.building():  # the edited model's nodes, and the re-ordered one's, go to the graph's own lists
        edited, _ = graph.build_edited(graph.output_keys, graph.input_keys,
                                       {k: edit_for(i, k) for i, k in enumerate(keys)}, name="khi_concept_edited")
        ins = list(edited.inputs)  # the model's inputs, then delta: make delta first (the one differentiated)
        model = keras.Model([ins[-1]] + ins[:-1], edited.outputs[0], name="khi_concept_derivatives")
    return model, sizes


class DirectionalDerivatives:
    """Reducer: the directional derivatives of the class outputs along every CAV of every block.

    One forward and one backward pass per batch (:func:`_derivative_model`).
    ``directions`` holds per block a (D, M) matrix of M unit directions.
    ``classes`` are the tested classes (indices). Accumulates, per block,
    float64 (K_tested, M) sums over each class's inputs: ``positive`` (count
    of ``S > 0``) and ``total`` (``sum S``), and ``counts`` (K_tested,) the
    inputs of each class. ``keep=True`` also keeps every row's ``S`` (tests).
    """

    taps: tuple = ()

    def __init__(self, graph, task, keys, features, directions, classes, *, keep=False):
        self.task = task
        self.classes = np.asarray(classes, np.int64)
        self.model, self.sizes = _derivative_model(graph, keys, features)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.directions = [np.asarray(d, np.float64) for d in directions]
        self.grad = make_input_gradient(self.model, lambda out, labels: class_score(task, out, labels))
        kt = len(self.classes)
        self.positive = [np.zeros((kt, d.shape[1])) for d in self.directions]
        self.total = [np.zeros((kt, d.shape[1])) for d in self.directions]
        self.counts = np.zeros(kt)
        self.keep = keep
        self.kept: list = []  # per batch (sample index, class column, [S per block])
        self.n = 0

    def _rows(self, y, n):
        """``(samples, targets)`` of the rows to differentiate: one per sample, or one per (sample, class)."""
        kt = len(self.classes)
        name = self.task.name
        if name in ("multiclass", "binary"):
            return np.arange(n), (np.full(n, -1) if y is None else np.asarray(y, np.int64))
        samples = np.repeat(np.arange(n), kt)
        targets = np.tile(self.classes, n)
        if y is not None and name in ("multilabel", "segmentation"):
            keep = self._member(y, None, samples, targets)
            samples, targets = samples[keep], targets[keep]
        return samples, targets

    def _member(self, y, out, samples, targets):
        """Whether each (sample, target) row is an input of its class (labels, else the model's decisions)."""
        name = self.task.name
        if name == "regression":
            return np.ones(len(samples), bool)
        if name == "multilabel":
            if y is not None:
                return np.asarray(y)[samples, targets] > 0
            return self.task.predicted(out)[np.arange(len(samples)), targets] > 0
        # segmentation: the class is present in the mask (labels) or in the predicted mask
        if y is not None:
            masks = np.asarray(y).reshape(len(y), -1)
            return np.array([np.any(masks[s] == t) for s, t in zip(samples, targets)], bool)
        pred = self.task.predicted(out).reshape(len(samples), -1)
        return np.array([np.any(pred[i] == t) for i, t in enumerate(targets)], bool)

    def update(self, batch):
        xb = batch.x
        n = x_rows(xb)
        samples, targets = self._rows(batch.y, n)
        if len(samples) == 0:
            self.n += n
            return
        xs = x_take(xb, samples) if self.task.name not in ("multiclass", "binary") else xb
        xs = list(xs) if isinstance(xs, list) else [xs]
        delta = np.zeros((len(samples), int(self.offsets[-1])), np.float32)
        g, out = self.grad([delta] + xs, targets.astype(np.int32))
        kt = len(self.classes)
        column = {int(c): j for j, c in enumerate(self.classes)}
        name = self.task.name
        if name in ("multiclass", "binary"):
            cls = np.asarray(batch.y, np.int64) if batch.y is not None else self.task.predicted(out)
            member = np.zeros((len(samples), kt))
            for i, c in enumerate(cls):
                if int(c) in column:
                    member[i, column[int(c)]] = 1.0
        else:
            ok = (np.ones(len(samples), bool) if batch.y is not None and name != "regression"
                  else self._member(batch.y, out, samples, targets))
            member = np.zeros((len(samples), kt))
            cols = np.array([column[int(t)] for t in targets])
            member[np.flatnonzero(ok), cols[ok]] = 1.0
        self.counts += member.sum(axis=0)
        g = np.asarray(g, np.float64)
        kept = []
        for i, d in enumerate(self.directions):
            s = g[:, self.offsets[i]:self.offsets[i + 1]] @ d  # (rows, M)
            self.positive[i] += member.T @ (s > 0)
            self.total[i] += member.T @ s
            if self.keep:
                kept.append(s)
        if self.keep:
            self.kept.append((batch.start + samples, member, kept))
        self.n += n


def directional_derivatives(interp, x, directions, y=None, *, blocks=None, features="pooled", classes=None,
                            batch_size=64):
    """Every input's directional derivatives of its class output along given directions (for checks).

    ``directions``: per block of ``blocks`` a (D, M) matrix (D the block's
    filters for ``features="pooled"``, its map's size for ``"full"``).
    Returns ``(samples, member, [S per block (rows, M)])``: the sample of
    each row, its class membership (rows, K_tested), and the derivatives.
    """
    keys, _ = _select_blocks(interp, blocks)
    features = _check_choice(features, FEATURES, "features")
    task = interp.reader
    classes = _check_classes(interp, classes)
    reducer = DirectionalDerivatives(interp.graph, task, keys, features, directions, classes, keep=True)
    _pass.run(interp.graph, model_stream(interp.graph, x, y, batch_size=batch_size), [reducer], task=task)
    samples = np.concatenate([k[0] for k in reducer.kept])
    member = np.concatenate([k[1] for k in reducer.kept])
    per_block = [np.concatenate([k[2][i] for k in reducer.kept]) for i in range(len(keys))]
    return samples, member, per_block


# ----------------------------------------------------------------------
# Collecting features
# ----------------------------------------------------------------------
def row_digests(x) -> list:
    """A digest of every row of a batch (one array, or a list of arrays: several inputs)."""
    parts = x if isinstance(x, list) else [x]
    parts = [np.ascontiguousarray(np.asarray(a)) for a in parts]
    out = []
    for i in range(x_rows(x)):
        h = hashlib.blake2b(digest_size=16)
        for a in parts:
            h.update(a[i].tobytes())
        out.append(h.digest())
    return out


class _Digests:
    """Reducer: the digest of every input (to find inputs shared by a concept and the random sets)."""

    taps: tuple = ()

    def __init__(self):
        self.digests: list = []

    def update(self, batch):
        self.digests.extend(row_digests(batch.x))


class Reservoir:
    """Reducer: a uniform random sample of ``size`` inputs of a stream of any length (Algorithm R).

    Keeps the taps' values of the sampled inputs (float32) and their
    positions in the stream; memory is ``size`` rows whatever the length of
    the stream. The draws come from ``rng``, one per input past the first
    ``size``, in stream order. ``watch``: ``{name: set of input digests}``;
    :attr:`shared` counts, per name, the inputs of the stream found in it
    (the concept examples among the random inputs).
    """

    def __init__(self, taps, size, rng, watch=None):
        self.taps = tuple(taps)
        self.size = int(size)
        self.rng = rng
        self.values: list | None = None
        self.watch = dict(watch or {})
        self.shared = {name: 0 for name in self.watch}
        self.index = np.zeros(self.size, np.int64)  # each slot's position in the stream
        self.seen = 0

    def update(self, batch):
        n = x_rows(batch.x)
        vals = [np.asarray(batch.values[t.ident], np.float32).reshape(n, -1) for t in self.taps]
        if self.values is None:
            self.values = [np.zeros((self.size, v.shape[1]), np.float32) for v in vals]
        if self.watch:
            for d in row_digests(batch.x):
                for name, seen in self.watch.items():
                    self.shared[name] += d in seen
        for i in range(n):
            t = self.seen + i
            if t < self.size:
                slot = t
            else:
                slot = int(self.rng.integers(0, t + 1))
                if slot >= self.size:
                    continue
            for store, v in zip(self.values, vals):
                store[slot] = v[i]
            self.index[slot] = t
        self.seen += n

    def result(self) -> list:
        kept = min(self.seen, self.size)
        assert self.values is not None  # the pass fed at least one batch (an empty stream raised)
        return [v[:kept] for v in self.values]


# ----------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConceptResult:
    """Concept probes and TCAV scores with their significance (see :mod:`~keras_hybrid_interp.local.concepts`).

    Shapes: ``C`` concepts (then the relative pairs), ``L`` blocks, ``K``
    tested classes, ``R`` random sets (``n_random``), ``J`` null sets.

    Attributes
    ----------
    concepts : tuple of str
        Concept names; a relative pair ``(a, b)`` is named ``"a vs b"``.
    relative : tuple of bool
        Whether each entry is a relative pair (its counterparts are the other
        concept's examples, resampled, instead of random sets).
    blocks : tuple of str
    depths : ndarray (L,)
    classes : tuple of str
        The tested classes (labels, targets).
    n_inputs : ndarray (K,)
        Inputs of each tested class among ``x``.
    n_examples : ndarray (C,)
        Examples of each concept (training + held out).
    accuracy, control_accuracy, selectivity : ndarray (C, L)
        Held-out accuracy of the concept probes (mean over the R CAVs), of
        the random-label control probes, and their difference.
    lower, upper : dict of str -> ndarray (C, L)
        Bootstrap percentile intervals of those three (empty without bootstrap).
    scores : ndarray (C, L, K, R)
        TCAV score of each CAV: fraction of the class's inputs with a
        positive directional derivative.
    magnitudes : ndarray (C, L, K, R)
        TCAV magnitude of each CAV: the mean directional derivative over the
        class's inputs (the CAV of unit length; Captum's ``magnitude``).
    random_scores, random_magnitudes : ndarray (C, L, K, J, R)
        Random-vs-random scores against which each concept is tested (row
        ``j``: random set ``j`` as the concept; NaN on the diagonal).
    p_values_sign, p_adjusted_sign : ndarray (C, L, K)
        Two-sided t-test of the TCAV scores against the random-vs-random
        ones (``test``), before and after ``correction``.
    significant_sign : ndarray of bool (C, L, K)
    p_values_magnitude, p_adjusted_magnitude, significant_magnitude : the same for the magnitudes.
    statistic : str
        Which of the two the headline :attr:`p_values`, :attr:`p_adjusted`
        and :attr:`significant` are ("magnitude" by default, see the module).
    directions : tuple of ndarray, one per block (C, R, D)
        Every CAV (unit, raw feature units).
    mean_directions, mean_intercepts : tuple of ndarray per block (C, D) and (C,)
        The mean of the R unit CAVs and of their intercepts: the concept's
        map is ``features @ mean_direction + mean_intercept`` (see :func:`concept_maps`).
    filter_weights : tuple of ndarray per block (C, filters)
        Mean standardized CAV weight of each filter (summed over positions
        for full maps): the filters the concept probe relies on.
    concept_train, concept_test : tuple of int ndarray, one per concept
        Which of the concept's examples (in the order given) trained the
        CAVs and which measured the accuracy.
    random_sets : int ndarray (R, m)
        The random sets: positions in the random pool (``random``, or ``x``)
        of their inputs; the concept with ``n`` training examples uses the
        first ``n`` of each.
    random_held_out : int ndarray
        Positions of the held-out random inputs (the first as many as a
        concept's held-out examples are its accuracy's negatives).
    """

    concepts: tuple
    relative: tuple
    blocks: tuple
    depths: np.ndarray
    classes: tuple
    n_inputs: np.ndarray
    n_examples: np.ndarray
    accuracy: np.ndarray
    control_accuracy: np.ndarray
    selectivity: np.ndarray
    lower: dict
    upper: dict
    scores: np.ndarray
    magnitudes: np.ndarray
    random_scores: np.ndarray
    random_magnitudes: np.ndarray
    p_values_sign: np.ndarray
    p_adjusted_sign: np.ndarray
    significant_sign: np.ndarray
    p_values_magnitude: np.ndarray
    p_adjusted_magnitude: np.ndarray
    significant_magnitude: np.ndarray
    directions: tuple
    mean_directions: tuple
    mean_intercepts: tuple
    filter_weights: tuple
    concept_train: tuple = ()
    concept_test: tuple = ()
    random_sets: np.ndarray | None = None
    random_held_out: np.ndarray | None = None
    statistic: str = "magnitude"
    features: str = "pooled"
    method: str = "logistic"
    test: str = "sets"
    correction: str = "holm"
    alpha: float = 0.05
    confidence: float | None = None
    task: str = "multiclass"

    def __repr__(self):
        n_sig = int(np.sum(self.significant))
        return (f"ConceptResult(concepts={list(self.concepts)}, blocks={len(self.blocks)}, "
                f"classes={len(self.classes)}, n_random={self.scores.shape[-1]}, "
                f"significant={n_sig} of {self.significant.size})")

    @property
    def p_values(self) -> np.ndarray:
        """(C, L, K) p-values of the headline test (of :attr:`statistic`), before correction."""
        return self.p_values_magnitude if self.statistic == "magnitude" else self.p_values_sign

    @property
    def p_adjusted(self) -> np.ndarray:
        """(C, L, K) p-values of the headline test after ``correction``."""
        return self.p_adjusted_magnitude if self.statistic == "magnitude" else self.p_adjusted_sign

    @property
    def significant(self) -> np.ndarray:
        """(C, L, K) bool: the headline test's corrected p-value is below ``alpha``."""
        return self.significant_magnitude if self.statistic == "magnitude" else self.significant_sign

    @property
    def tcav_scores(self) -> np.ndarray:
        """(C, L, K) mean TCAV score over the R CAVs."""
        with np.errstate(invalid="ignore"):
            return np.nanmean(self.scores, axis=-1) if self.scores.size else self.scores[..., 0]

    def separable(self) -> np.ndarray:
        """(C, L) bool: the block represents the concept, its probe beating its random-label control.

        With intervals: the accuracy's lower bound is above the control's
        upper bound; without: the accuracy is above the control accuracy
        (above 0.5, chance for the balanced sets, without controls; a
        relative pair, which has neither, by its accuracy above 0.5).
        """
        with np.errstate(invalid="ignore"):
            point = self.accuracy > np.where(np.isfinite(self.control_accuracy), self.control_accuracy, 0.5)
            if "accuracy" not in self.lower:
                return point
            bar = np.where(np.isfinite(self.upper["control_accuracy"]), self.upper["control_accuracy"], 0.5)
            # A relative pair has no interval: its point accuracy against 0.5.
            return np.where(np.isfinite(self.lower["accuracy"]), self.lower["accuracy"] > bar, point)

    def first_separable_block(self, concept) -> str | None:
        """The shallowest block from which the concept is separable at every deeper block, or None."""
        c = self.concept_index(concept)
        sep = self.separable()[c]
        first = None
        for i in range(len(sep) - 1, -1, -1):
            if not sep[i]:
                break
            first = i
        return None if first is None else self.blocks[first]

    def concept_index(self, concept) -> int:
        """The index of ``concept`` in :attr:`concepts` (a ValueError naming the available ones)."""
        if concept not in self.concepts:
            raise ValueError(f"`concept` must be one of {list(self.concepts)}; received {concept!r}.")
        return self.concepts.index(concept)

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (concept, block, class).

        Columns: ``concept``, ``relative``, ``block``, ``depth``, ``class``,
        ``n_inputs``, ``accuracy`` (with ``accuracy_low``/``_high`` when
        bootstrapped), ``control_accuracy``, ``selectivity``, ``separable``,
        ``tcav_score`` (mean over the R CAVs), ``tcav_score_std``,
        ``random_score`` (mean of the random-vs-random scores; 0.5 by
        symmetry with ``test="sets"``, where every pair is fitted both ways)
        and ``random_score_sd`` (the spread of random sets' mean scores, the
        test's yardstick), ``tcav_magnitude``, ``random_magnitude`` and
        ``random_magnitude_sd`` (the same for the magnitudes), then the headline test
        (of :attr:`statistic`) ``p_value``, ``p_adjusted``, ``significant``,
        and both tests: ``p_value_sign``, ``p_adjusted_sign``,
        ``significant_sign``, ``p_value_magnitude``, ``p_adjusted_magnitude``,
        ``significant_magnitude``.
        """
        C, L, K = self.p_values.shape
        idx = np.indices((C, L, K)).reshape(3, -1)
        c, li, k = idx
        sep = self.separable()
        std = _nan_std(self.scores)
        rnd = _nan_mean(self.random_scores.reshape(C, L, K, -1))
        mag = _nan_mean(self.magnitudes)
        rmag = _nan_mean(self.random_magnitudes.reshape(C, L, K, -1))
        rnd_sd = _nan_std(random_set_means(self.random_scores))
        rmag_sd = _nan_std(random_set_means(self.random_magnitudes))
        frame = {
            "concept": np.array(self.concepts, dtype=object)[c],
            "relative": np.array(self.relative, bool)[c],
            "block": np.array(self.blocks, dtype=object)[li],
            "depth": np.asarray(self.depths)[li],
            "class": np.array(self.classes, dtype=object)[k],
            "n_inputs": np.asarray(self.n_inputs, np.int64)[k],
            "accuracy": self.accuracy[c, li],
        }
        if "accuracy" in self.lower:
            frame["accuracy_low"] = self.lower["accuracy"][c, li]
            frame["accuracy_high"] = self.upper["accuracy"][c, li]
        frame.update({
            "control_accuracy": self.control_accuracy[c, li],
            "selectivity": self.selectivity[c, li],
            "separable": sep[c, li],
            "tcav_score": self.tcav_scores[c, li, k],
            "tcav_score_std": std[c, li, k],
            "random_score": rnd[c, li, k],
            "random_score_sd": rnd_sd[c, li, k],
            "tcav_magnitude": mag[c, li, k],
            "random_magnitude": rmag[c, li, k],
            "random_magnitude_sd": rmag_sd[c, li, k],
            "p_value": self.p_values[c, li, k],
            "p_adjusted": self.p_adjusted[c, li, k],
            "significant": self.significant[c, li, k],
            "p_value_sign": self.p_values_sign[c, li, k],
            "p_adjusted_sign": self.p_adjusted_sign[c, li, k],
            "significant_sign": self.significant_sign[c, li, k],
            "p_value_magnitude": self.p_values_magnitude[c, li, k],
            "p_adjusted_magnitude": self.p_adjusted_magnitude[c, li, k],
            "significant_magnitude": self.significant_magnitude[c, li, k],
        })
        return pd.DataFrame(frame)

    def accuracy_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (concept, block) with the concept accuracy, its control and intervals."""
        C, L = self.accuracy.shape
        c, li = np.indices((C, L)).reshape(2, -1)
        frame = {"concept": np.array(self.concepts, dtype=object)[c], "block": np.array(self.blocks, dtype=object)[li],
                 "depth": np.asarray(self.depths)[li], "n_examples": np.asarray(self.n_examples)[c]}
        for m in ("accuracy", "control_accuracy", "selectivity"):
            frame[m] = getattr(self, m)[c, li]
            if m in self.lower:
                frame[f"{m}_low"] = self.lower[m][c, li]
                frame[f"{m}_high"] = self.upper[m][c, li]
        frame["separable"] = self.separable()[c, li]
        return pd.DataFrame(frame)

    def top_filters(self, top_k=5) -> pd.DataFrame:
        """The ``top_k`` filters of each (concept, block) with the largest mean standardized CAV weight.

        One row per (concept, block, rank): ``filter`` (its index in the
        block, as in the filter atlas: ``GlobalAnalyzer.filter_examples(x,
        block=..., filters=[...])`` shows its top images) and ``weight``.
        """
        k = _check_int(top_k, "top_k", 1)
        rows = []
        for li, (block, w) in enumerate(zip(self.blocks, self.filter_weights)):
            for c, concept in enumerate(self.concepts):
                order = np.argsort(-w[c], kind="mergesort")[:k]
                for rank, f in enumerate(order):
                    rows.append((concept, block, int(self.depths[li]), rank + 1, int(f), float(w[c, f])))
        return pd.DataFrame(rows, columns=["concept", "block", "depth", "rank", "filter", "weight"])

    def plot(self, ax=None, *, kind="tcav", **kwargs):
        """Draws the TCAV scores (``kind="tcav"``, with significance marks) or the concept accuracy by depth
        (``kind="accuracy"``); returns the Axes. Keyword arguments go to the plot function."""
        from ..plotting.concepts import plot_concept_accuracy, plot_tcav_scores

        kind = _check_choice(kind, ("tcav", "accuracy"), "kind")
        if kind == "accuracy":
            return plot_concept_accuracy(self, ax=ax, **kwargs)
        return plot_tcav_scores(self, ax=ax, **kwargs)


@dataclasses.dataclass(frozen=True)
class ConceptMaps:
    """Where in one input each concept is found: its mean CAV applied at every position of each block.

    ``maps[i]`` (C, *spatial_i) holds, per concept, ``a[p] @ v + b`` at every
    position ``p`` of block ``i`` for pooled CAVs (its mean over positions is
    the probe's logit for global-average features), and ``a[p] @ v[p] + b / P``
    for full-map CAVs (their sum over positions is the logit). Positive: the
    concept's side of the probe's boundary.
    """

    image: np.ndarray
    concepts: tuple
    blocks: tuple
    maps: tuple
    features: str = "pooled"

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (concept, block, position) with the value."""
        rows = []
        for block, m in zip(self.blocks, self.maps):
            for c, concept in enumerate(self.concepts):
                flat = m[c].reshape(-1)
                rows.append(pd.DataFrame({"concept": concept, "block": block, "position": np.arange(len(flat)),
                                          "value": flat}))
        return pd.concat(rows, ignore_index=True)

    def plot(self, fig=None, **kwargs):
        """Draws the maps over the input (:func:`~keras_hybrid_interp.plotting.concepts.plot_concept_maps`); returns
        the Figure."""
        from ..plotting.concepts import plot_concept_maps

        return plot_concept_maps(self, fig=fig, **kwargs)


# ----------------------------------------------------------------------
# The analysis
# ----------------------------------------------------------------------
def _select_blocks(interp, blocks):
    names = list(interp.block_names)
    if blocks is None:
        return list(interp.block_keys), names
    chosen = [blocks] if isinstance(blocks, (str, int, np.integer)) else list(blocks)
    if not chosen:
        raise ValueError(f"`blocks` is empty; pass block names among {names}, or None for every block.")
    keys, out = [], []
    for b in chosen:
        if isinstance(b, (int, np.integer)) and not isinstance(b, bool) and 0 <= b < len(names):
            i = int(b)
        elif b in names:
            i = names.index(b)
        else:
            raise ValueError(f"`blocks`: {b!r} is not one of the interpreter's blocks {names} (or their indices).")
        keys.append(interp.block_keys[i])
        out.append(names[i])
    if len(set(out)) != len(out):
        raise ValueError(f"`blocks` names a block twice: {out}.")
    return keys, out


def _check_classes(interp, classes):
    k = interp.num_classes
    if classes is None:
        return np.arange(k)
    chosen = [classes] if isinstance(classes, (str, int, np.integer)) else list(classes)
    out = []
    for c in chosen:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < k:
            out.append(int(c))
        elif c in interp.class_names:
            out.append(interp.class_names.index(c))
        else:
            raise ValueError(f"`classes`: {c!r} is not one of the model's classes {interp.class_names} "
                             "(or their indices).")
    if not out or len(set(out)) != len(out):
        raise ValueError(f"`classes` must name distinct classes; received {classes!r}.")
    return np.asarray(out, np.int64)


def _feature_taps(interp, keys, features):
    if features == "full":
        return [_pass.Tap(k, "raw") for k in keys]
    mode = "max" if interp.pooling == "max" else "avg"
    return [_pass.Tap(k, mode) for k in keys]


def _collect_concept(interp, name, data, taps, batch_size):
    argname = f"concepts[{name!r}]"
    stream = model_stream(interp.graph, data, batch_size=batch_size, argname=argname)
    collects = [_pass.Collect(t, dtype=np.float32) for t in taps]
    digests = _Digests()
    info = _pass.run(interp.graph, stream, collects + [digests])
    _check_finite(interp, info)
    check_concept_size(name, info.n)
    feats = [c.result().reshape(info.n, -1) for c in collects]
    return feats, digests.digests


def check_concept_size(name, n) -> None:
    """Refuses a concept of fewer than :data:`MIN_EXAMPLES` examples; warns below :data:`FEW_EXAMPLES`."""
    argname = f"concepts[{name!r}]"
    if n < MIN_EXAMPLES:
        raise ValueError(
            f"`{argname}` has {n} examples; a concept needs at least {MIN_EXAMPLES} (a third of them are held "
            f"out to measure the concept accuracy, and 30 or more give useful intervals)."
        )
    if n < FEW_EXAMPLES:
        _health.warn(
            "few_samples",
            f"Concept {name!r} has only {n} examples: its held-out accuracy rests on a handful of them and its "
            f"CAVs move with every random set. Pass {FEW_EXAMPLES} or more (30-100 is typical).",
        )


def _check_finite(interp, info):
    bad = [interp.graph.tensors[k].name for k in sorted(info.nonfinite)]
    if bad:
        raise ValueError(f"{bad} produced NaN or infinite values on finite inputs; concept probes on them would be "
                         "meaningless.")


def concepts(interp, concepts, x, y=None, *, random=None, n_random=20, random_state=None, blocks=None,
             classes=None, statistic="magnitude", features="pooled", method="logistic", test="sets",
             correction="holm", alpha=0.05,
             relative=None, test_fraction=0.33, controls=5, bootstrap=1000, confidence=0.95, C=1.0,
             max_iter=MAX_ITER, tol=TOL, batch_size=64, max_samples=None, steps=None,
             max_random=None) -> ConceptResult:
    """TCAV with significance: at what block each concept forms, and whether each class's output uses it.

    The entry point is :meth:`HybridInterpreter.concepts
    <keras_hybrid_interp.local.interpreter.HybridInterpreter.concepts>`; the
    definitions are in this module's docstring and docs/definitions/concepts.md.

    Parameters
    ----------
    interp : HybridInterpreter
        The wrapped model is read only (inference mode, nothing changed); the probes need not be fitted.
    concepts : dict of str -> examples, or list of (name, examples)
        Each an array, ``tf.data`` or PyDataset of inputs of the model's shape, at least
        :data:`MIN_EXAMPLES` (10) of them.
    x, y : inputs whose class sensitivity is tested, and their optional labels (without labels a class's
        inputs are those the model assigns to it).
    random : array, tf.data or PyDataset, optional
        The pool the random sets are drawn from (None: ``x``). It must not hold a concept's examples.
    n_random : int
        Random sets, hence CAVs per concept and block (default 20; fewer than 10 is warned about).
    random_state : int, numpy Generator or None
        Seeds the splits, the random sets, the controls and the bootstrap: the same seed, the same result.
    blocks : list of block names or indices, optional
        The interpreter's blocks to analyse (default: all).
    classes : list of class names or indices, optional
        The classes (labels, targets) tested (default: all).
    statistic : {"magnitude", "sign"}
        The statistic behind ``p_value``, ``p_adjusted`` and ``significant`` (both are always tested).
    features : {"pooled", "full"}
        Pooled block features (one value per filter; default) or the full map (original TCAV).
    method : {"logistic", "fastcav"}
        The CAV: the normal of the one probe trainer's logistic boundary (default), or the difference of
        the means (FastCAV).
    test : {"sets", "tcav"}
        The t-test (see the module): the concept's mean against random sets' means (default), or the
        original TCAV's.
    correction : {"holm", "bonferroni", "fdr_bh", "none"}
        Multiple-comparison correction over concepts x blocks x classes.
    alpha : float
        Level of ``significant`` (after correction).
    relative : list of (concept, concept) pairs, optional
        Relative TCAV: CAVs of the first concept against the second (bootstrap resamples of both), named
        ``"a vs b"``.
    test_fraction : float
        Share of each concept's examples held out for its accuracy (0.33, as Captum).
    controls : int
        Random-label control CAVs per concept and block (0: none).
    bootstrap, confidence : int, float
        Bootstrap resamples of the held-out examples for the accuracy intervals (0: none), and their level.
    C, max_iter, tol : the one probe trainer's penalty and solver settings.
    batch_size, max_samples, steps : how ``x`` streams (as in :meth:`HybridInterpreter.fit_probes`).
    max_random : int, optional
        Cap on the random inputs kept (default: enough for disjoint sets).

    Returns
    -------
    ConceptResult
    """
    items = check_concepts(concepts)
    names = [n for n, _ in items]
    relative = _check_relative(relative, names)
    n_random = _check_int(n_random, "n_random", 2)
    statistic = _check_choice(statistic, STATISTICS, "statistic")
    features = _check_choice(features, FEATURES, "features")
    method = _check_choice(method, METHODS, "method")
    test = _check_choice(test, TESTS, "test")
    correction = _check_choice(correction, CORRECTIONS, "correction")
    alpha = _check_fraction(alpha, "alpha")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    controls = _check_int(controls, "controls", 0)
    bootstrap = check_bootstrap(bootstrap)
    confidence = check_confidence(confidence)
    C = check_C(C)
    check_solver(max_iter, tol)
    if max_random is not None:
        max_random = _check_int(max_random, "max_random", 2)
    if test == "sets" and n_random < 3:
        raise ValueError(f"`n_random` must be >= 3 for test='sets' (the random sets' spread); received {n_random}.")
    if n_random < 10:
        _health.warn(
            "few_samples",
            f"n_random={n_random}: fewer than 10 random sets, so the significance test rests on few random-vs-random "
            "CAVs and has little power. Use n_random=20 (the default) or more.",
        )
    keys, block_names = _select_blocks(interp, blocks)
    class_idx = _check_classes(interp, classes)
    task = interp.reader
    graph = interp.graph
    rng = np.random.default_rng(random_state)
    x_stream = model_stream(interp.graph, x, y, batch_size=batch_size, max_samples=max_samples, steps=steps)
    if isinstance(x, np.ndarray) and len(x) == 0:
        raise ValueError("`x` is empty: received 0 samples.")
    taps = _feature_taps(interp, keys, features)

    # 1. Features of every concept's examples (one pass each) and of the random pool (one pass).
    concept_feats, concept_digests = [], []
    for name, data in items:
        f, d = _collect_concept(interp, name, data, taps, batch_size)
        concept_feats.append(f)
        concept_digests.append(d)
    splits = [split_examples(len(f[0]), test_fraction, rng) for f in concept_feats]
    m_train = max(len(s.train) for s in splits)
    m_test = max(len(s.test) for s in splits)
    wanted = m_test + n_random * m_train
    size = wanted if max_random is None else min(max_random, wanted)
    pool_arg = "random" if random is not None else "x"
    pool_stream = (model_stream(interp.graph, random, batch_size=batch_size, argname="random") if random is not None
                   else x_stream)
    reservoir = Reservoir(taps, size, rng, watch={n: set(d) for n, d in zip(names, concept_digests)})
    info = _pass.run(graph, pool_stream, [reservoir])
    _check_finite(interp, info)
    pool = reservoir.result()
    n_pool = len(pool[0])
    source = ("`random`" if random is not None else
              "`x` (random=None: the random sets are drawn from the inputs)")
    for name in names:
        shared = reservoir.shared[name]
        if shared:
            raise ValueError(
                f"{source} shares {shared} input(s) with the examples of concept {name!r}: the random sets must "
                f"not contain the concept's examples (a CAV would have to tell an example from itself). Pass a "
                f"`random` pool without them."
            )
    held_out, sets = draw_random_sets(n_pool, m_test, m_train, n_random, rng, source=source, pool_arg=pool_arg)

    # 2. CAVs: every concept against every random set, at every block; the random-vs-random ones; controls.
    L, Cn, R = len(keys), len(items), n_random
    entries = names + [f"{a} vs {b}" for a, b in relative]
    E = len(entries)
    fit_kw = {"method": method, "C": C, "max_iter": max_iter, "tol": tol}
    not_converged: set = set()
    directions = [np.zeros((E, R, pool[i].shape[1])) for i in range(L)]
    intercepts = np.zeros((E, L, R))
    filter_w = []
    pair_index = [(names.index(a), names.index(b)) for a, b in relative]
    correct = ([np.zeros((L, len(s.test) * 2)) for s in splits]
               + [np.zeros((L, len(splits[a].test) + len(splits[b].test))) for a, b in pair_index])
    control_correct = [np.zeros((L, len(s.test) * 2)) for s in splits]
    for i in range(L):
        pool_i = pool[i]
        fw = np.zeros((E, _filters_of(graph, keys[i])))
        for c, (split, feats) in enumerate(zip(splits, concept_feats)):
            f = feats[i]
            mt = len(split.train)
            pos = f[split.train]
            cavs, correct[c][i] = fit_concept_cavs(f, split, pool_i, held_out, sets, **fit_kw)
            for r, cav in enumerate(cavs):
                directions[i][c, r] = cav.direction
                intercepts[c, i, r] = cav.intercept
                fw[c] += _per_filter(cav.weights, graph, keys[i], features) / R
                if not cav.converged:
                    not_converged.add(names[c])
            if controls:
                test_x, test_t = held_out_set(f, split, pool_i, held_out)
                labels = np.concatenate([np.ones(mt), np.zeros(mt)])
                pairs = []
                for r in range(controls):
                    both = np.concatenate([pos, pool_i[sets[r % R][:mt]]])
                    perm_t = labels[rng.permutation(2 * mt)].astype(bool)
                    pairs.append((both[perm_t], both[~perm_t]))
                for ctl in fit_cavs(pairs, **fit_kw):
                    control_correct[c][i] += (ctl.predict(test_x) == test_t) / controls
        for e, (ca, cb) in enumerate(pair_index):
            fa, fb = concept_feats[ca][i], concept_feats[cb][i]
            tr_a, tr_b = splits[ca].train, splits[cb].train
            test_x = np.concatenate([fa[splits[ca].test], fb[splits[cb].test]])
            test_t = np.concatenate([np.ones(len(splits[ca].test)), np.zeros(len(splits[cb].test))])
            pairs = []
            for _ in range(R):  # bootstrap resamples of both training parts
                ra = rng.choice(tr_a, len(tr_a), replace=True)
                rb = rng.choice(tr_b, len(tr_b), replace=True)
                pairs.append((fa[ra], fb[rb]))
            for r, cav in enumerate(fit_cavs(pairs, **fit_kw)):
                directions[i][Cn + e, r] = cav.direction
                intercepts[Cn + e, i, r] = cav.intercept
                fw[Cn + e] += _per_filter(cav.weights, graph, keys[i], features) / R
                correct[Cn + e][i] += (cav.predict(test_x) == test_t) / R
        filter_w.append(fw)
    # Random-vs-random CAVs, per distinct training size (the concept's counterparts are of its size).
    entry_size = [len(s.train) for s in splits] + [len(splits[a].train) for a, _ in pair_index]
    sizes = sorted(set(entry_size))
    rows = range(R) if test == "sets" else range(1)
    null_dirs = {m: [np.full((R, R, pool[i].shape[1]), np.nan) for i in range(L)] for m in sizes}
    for m in sizes:
        fits, mirrored = [], []  # (j, r, a, b) to fit; (j, r) that are a fit negated
        for j in rows:
            for r in range(R):
                if r == j:
                    continue
                if test == "sets" and r < j:  # B_j vs B_r is B_r vs B_j negated (the same fit, labels swapped)
                    mirrored.append((j, r))
                    continue
                a = np.setdiff1d(sets[j][:m], sets[r][:m])
                b = np.setdiff1d(sets[r][:m], sets[j][:m])
                if len(a) >= 2 and len(b) >= 2:
                    fits.append((j, r, a, b))
        for i in range(L):  # every pair of one block fitted together
            for (j, r, _, _), cav in zip(fits, fit_cavs([(pool[i][a], pool[i][b]) for _, _, a, b in fits], **fit_kw)):
                null_dirs[m][i][j, r] = cav.direction
            for j, r in mirrored:
                null_dirs[m][i][j, r] = -null_dirs[m][i][r, j]
    if not_converged:
        _health.warn(
            "not_converged",
            f"CAVs of concepts {sorted(not_converged)} did not converge within max_iter={max_iter} "
            "iterations; raise `max_iter` or lower `C`.",
        )

    # 3. Accuracy by depth: held-out correctness per example, bootstrapped over the held-out examples.
    accuracy = np.full((E, L), np.nan)
    control_acc = np.full((E, L), np.nan)
    lower: dict = {}
    upper: dict = {}
    if bootstrap:
        for metric in ("accuracy", "control_accuracy", "selectivity"):
            lower[metric], upper[metric] = np.full((E, L), np.nan), np.full((E, L), np.nan)
    for c in range(E):
        accuracy[c] = correct[c].mean(axis=1)
        if c >= Cn:  # a relative pair: no random-label control, no interval
            continue
        if controls:
            control_acc[c] = control_correct[c].mean(axis=1)
        if bootstrap:
            acc_rows = correct[c].T  # (held-out examples, L)
            ctl_rows = control_correct[c].T if controls else np.zeros_like(acc_rows)
            per_row = np.concatenate([acc_rows, ctl_rows, acc_rows - ctl_rows], axis=1)
            boot = PoissonBootstrap(bootstrap, per_row.shape[1], rng)
            boot.update(per_row)
            low, high = boot.interval(confidence)
            lower["accuracy"][c], upper["accuracy"][c] = low[:L], high[:L]
            if controls:
                lower["control_accuracy"][c], upper["control_accuracy"][c] = low[L:2 * L], high[L:2 * L]
                lower["selectivity"][c], upper["selectivity"][c] = low[2 * L:], high[2 * L:]
    selectivity = accuracy - control_acc

    # 4. Directional derivatives of every CAV at every block: one forward and backward pass per batch of x.
    layout = []  # per block: the columns of each (entry, r) and of each null (size, j, r)
    mats = []
    for i in range(L):
        cols = [directions[i].reshape(E * R, -1)]
        null_cols = {}
        start = E * R
        for m in sizes:
            grid = null_dirs[m][i].reshape(R * R, -1)
            ok = np.flatnonzero(np.all(np.isfinite(grid), axis=1))
            null_cols[m] = (start, ok)
            cols.append(grid[ok])
            start += len(ok)
        mats.append(np.concatenate(cols).T)
        layout.append(null_cols)
    reducer = DirectionalDerivatives(graph, task, keys, features, mats, class_idx)
    info = _pass.run(graph, x_stream, [reducer], task=task)
    counts = reducer.counts
    K = len(class_idx)
    shape_cav = (E, L, K, R)
    scores, mags = np.full(shape_cav, np.nan), np.full(shape_cav, np.nan)
    rscores = np.full((E, L, K, R, R), np.nan)
    rmags = np.full((E, L, K, R, R), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(L):
            n = counts[:, None]
            score = reducer.positive[i] / n
            mag = reducer.total[i] / n
            scores[:, i] = score[:, :E * R].reshape(K, E, R).transpose(1, 0, 2)
            mags[:, i] = mag[:, :E * R].reshape(K, E, R).transpose(1, 0, 2)
            for e in range(E):
                start, ok = layout[i][entry_size[e]]
                for grid, src, dst in ((np.full((K, R * R), np.nan), score, rscores),
                                       (np.full((K, R * R), np.nan), mag, rmags)):
                    grid[:, ok] = src[:, start:start + len(ok)]
                    dst[e, i] = grid.reshape(K, R, R)
    empty = counts == 0
    if np.any(empty):
        missing = [interp.class_names[c] for c in class_idx[empty]]
        _health.warn(
            "missing_classes",
            f"Classes {_health.listing(missing)} have no input among the {info.n} of `x` (labels, or the model's "
            "decisions without labels): their TCAV scores are NaN. Pass inputs of every tested class, or `classes=`.",
        )

    # 5. Significance.
    p = np.full((E, L, K), np.nan)
    pm = np.full((E, L, K), np.nan)
    for e in range(E):
        for i in range(L):
            for k in range(K):
                if empty[k]:
                    continue
                if e < Cn:
                    p[e, i, k] = tcav_pvalues(scores[e, i, k], rscores[e, i, k], test)[0]
                    pm[e, i, k] = tcav_pvalues(mags[e, i, k], rmags[e, i, k], test)[0]
                else:  # a relative pair: its mean score as one observation against every random-vs-random score
                    p[e, i, k] = _relative_pvalue(scores[e, i, k], rscores[e, i, k])
                    pm[e, i, k] = _relative_pvalue(mags[e, i, k], rmags[e, i, k])
    p_adj, pm_adj = adjust_pvalues(p, correction), adjust_pvalues(pm, correction)
    with np.errstate(invalid="ignore"):
        significant = np.nan_to_num(p_adj, nan=1.0) < alpha
        significant_m = np.nan_to_num(pm_adj, nan=1.0) < alpha

    mean_dirs = tuple(d.mean(axis=1) for d in directions)
    mean_int = tuple(intercepts[:, i].mean(axis=1) for i in range(L))
    result = ConceptResult(
        concepts=tuple(entries),
        relative=tuple([False] * Cn + [True] * len(relative)),
        blocks=tuple(block_names),
        depths=np.asarray([interp.blocks[interp.block_names.index(b)].depth for b in block_names]),
        classes=tuple(interp.class_names[c] for c in class_idx),
        n_inputs=counts.astype(np.int64),
        n_examples=np.asarray([len(f[0]) for f in concept_feats]
                              + [len(concept_feats[names.index(a)][0]) + len(concept_feats[names.index(b)][0])
                                 for a, b in relative], np.int64),
        accuracy=accuracy,
        control_accuracy=control_acc,
        selectivity=selectivity,
        lower=lower,
        upper=upper,
        scores=scores,
        magnitudes=mags,
        random_scores=rscores,
        random_magnitudes=rmags,
        p_values_sign=p,
        p_adjusted_sign=p_adj,
        significant_sign=significant,
        p_values_magnitude=pm,
        p_adjusted_magnitude=pm_adj,
        significant_magnitude=significant_m,
        directions=tuple(directions),
        mean_directions=mean_dirs,
        mean_intercepts=mean_int,
        filter_weights=tuple(filter_w),
        concept_train=tuple(sp.train for sp in splits),
        concept_test=tuple(sp.test for sp in splits),
        random_sets=np.stack([reservoir.index[st] for st in sets]),
        random_held_out=reservoir.index[held_out],
        features=features,
        method=method,
        test=test,
        correction=correction,
        alpha=alpha,
        confidence=confidence if lower else None,
        task=task.name,
        statistic=statistic,
    )
    _health_lines(result, Cn)
    return result


def _relative_pvalue(scores, grid):
    """A relative CAV's mean score as one observation against every random-vs-random score (one_against_many)."""
    return one_against_many(scores, grid)[0]


def _filters_of(graph, key) -> int:
    return int(graph.tensors[key].shape[-1])


def _per_filter(weights, graph, key, features):
    """A CAV's standardized weights per filter (summed over positions for a full map)."""
    c = _filters_of(graph, key)
    w = np.asarray(weights, np.float64)
    return w if features == "pooled" or w.shape[0] == c else w.reshape(-1, c).sum(axis=0)


def _health_lines(result: ConceptResult, n_concepts: int) -> None:
    sep = result.separable()
    for c in range(n_concepts):
        name = result.concepts[c]
        if not np.any(sep[c]):
            _health.warn(
                "concept_not_separable",
                f"Concept {name!r} is not separable from the random sets at any block (its probe's held-out accuracy "
                "never beats its random-label control): no block represents it, and its TCAV scores measure a "
                "direction of noise. Check its examples, or pass more of them.",
            )
        if not np.any(result.significant[c]):
            _health.warn(
                "not_significant",
                f"Concept {name!r} is significant for no (block, class) at alpha={result.alpha} after "
                f"{result.correction!r} correction over {int(np.isfinite(result.p_values).sum())} tests: its TCAV "
                "scores are within what random sets give, and are not findings.",
            )


def concept_maps(interp, result: ConceptResult, x, *, concepts=None, blocks=None) -> ConceptMaps:
    """Concept maps of one input ``x``: each concept's mean CAV applied at every position of each block.

    ``concepts`` and ``blocks`` select among ``result``'s (default: all).
    The block maps come from one pass over the input.
    """
    names = list(result.concepts) if concepts is None else (
        [concepts] if isinstance(concepts, str) else list(concepts))
    for c in names:
        result.concept_index(c)
    chosen = list(result.blocks) if blocks is None else ([blocks] if isinstance(blocks, str) else list(blocks))
    keys, chosen = _select_blocks(interp, chosen)
    for b in chosen:
        if b not in result.blocks:
            raise ValueError(f"`blocks`: {b!r} is not one of the result's blocks {list(result.blocks)}.")
    shape = interp.graph.tensors[interp.graph.input_keys[0]].shape[1:]
    a = np.asarray(x if isinstance(x, np.ndarray) else keras.ops.convert_to_numpy(x))
    if a.ndim == len(shape):
        a = a[None]
    if a.ndim != len(shape) + 1 or a.shape[0] != 1:
        raise ValueError(f"`x` must be one input of shape {tuple(shape)} or (1, {', '.join(map(str, shape))}); "
                         f"received shape {a.shape}.")
    collects = [_pass.Collect(_pass.Tap(k, "raw")) for k in keys]
    _pass.run(interp.graph, model_stream(interp.graph, a), collects)
    maps = []
    for b, col in zip(chosen, collects):
        i = result.blocks.index(b)
        amap = np.asarray(col.result()[0], np.float64)
        spatial, ch = amap.shape[:-1], amap.shape[-1]
        out = []
        for c in names:
            e = result.concepts.index(c)
            v, b0 = result.mean_directions[i][e], float(result.mean_intercepts[i][e])
            if result.features == "pooled":
                out.append(amap @ v + b0)
            else:
                size = int(np.prod(spatial)) if spatial else 1
                out.append((amap.reshape(-1, ch) * v.reshape(-1, ch)).sum(axis=1).reshape(spatial) + b0 / size)
        maps.append(np.stack(out))
    return ConceptMaps(image=a[0], concepts=tuple(names), blocks=tuple(chosen), maps=tuple(maps),
                       features=result.features)
