"""The report's own health findings and the rules that keep its summary from misleading.

The analyses warn about what they find (dead filters, missing classes,
drift, noise: :func:`keras_hybrid_interp.core.health.warn`). The report adds
what only the whole report sees:

- a **collapsed model** (:func:`model_collapse`): one that predicts a single
  class, or scores at or below chance (accuracy at most the frequency of the
  most common label; macro AUROC at most 0.5; R^2 at most 0);
- **constant filters** (:func:`constant_filters`): live filters whose
  per-sample mean is the same on every sample, so their correlation is
  undefined although they are not dead;
- which filters the summary may call **important** (:func:`top_filters`):
  a positive mean importance whose 95% interval excludes 0, and neither dead
  nor constant.

Definitions: ``docs/definitions/report-findings.md``.
"""

from __future__ import annotations

import numpy as np

from ..core import health as _health

__all__ = ["COLLAPSED", "model_collapse", "constant_filters", "top_filters", "redundancy_without_constant",
           "undefined_reason"]

#: The health kind of a collapsed model (the report lists it first).
COLLAPSED = "collapsed_model"
#: Per task, the headline metric and the value at or below which the model is no better than chance.
CHANCE_LEVELS = {"multilabel": ("auroc", "macro AUROC", 0.5, "a macro AUROC of 0.5 is chance"),
                 "regression": ("r2", "R^2", 0.0, "an R^2 of 0 is predicting the mean")}


def model_collapse(interp, layers, scores) -> str | None:
    """Warns ``collapsed_model`` when the model predicts one class or scores at or below chance; the reason, or None.

    ``layers`` is the report's layer table, ``scores`` its reducer after the
    pass (a classifier's holds the count of each class the model predicted).
    Segmentation models are not checked (their chance level is not one number).
    """
    task = interp.reader
    if task.spatial:
        return None
    what = []
    counts = getattr(scores, "model_counts", None)  # classifiers' ProbeScores
    if task.is_classification and counts is not None:
        predicted = np.flatnonzero(np.asarray(counts) > 0)
        if len(predicted) == 1 and len(counts) > 1:
            what.append(f"it predicts class {interp.class_names[int(predicted[0])]!r} for every one of the "
                        f"{int(layers.n)} analysed samples")
        if layers.labelled and float(layers.accuracy[-1]) <= float(layers.chance):
            what.append(f"its accuracy {float(layers.accuracy[-1]):.3g} is at or below chance "
                        f"({float(layers.chance):.3g}, the frequency of the most common label)")
    elif task.name in CHANCE_LEVELS and layers.labelled:
        metric, label, level, words = CHANCE_LEVELS[task.name]
        value = float(np.asarray(layers.metric(metric), np.float64)[-1])
        if np.isfinite(value) and value <= level:
            what.append(f"its {label} {value:.3g} is at or below chance ({words})")
    if not what:
        return None
    reason = " and ".join(what)
    _health.warn(COLLAPSED, f"The model has collapsed: {reason}. Every analysis in this report describes a model "
                 "that does not solve its task: probes may read the labels from a block better than the model "
                 "does, and a permutation importance measured by the model's score is 0 wherever no perturbation "
                 "moves a prediction. Train the model further (check its labels, learning rate and class balance) "
                 "before interpreting it.")
    return reason


def constant_filters(corr) -> np.ndarray:
    """Live filters whose correlation with every other filter is undefined: their per-sample summary is constant.

    Such a filter is not dead (its map varies over positions) but takes the
    same spatial mean on every sample (a filter that reads only a part of
    the input that is the same in every sample, such as a border). Warns
    ``constant_mean_filters`` naming them.
    """
    values = np.asarray(corr.values, np.float64)
    c = values.shape[0]
    live = np.setdiff1d(np.arange(c), np.asarray(corr.dead_filters, dtype=int))
    if len(live) < 2:
        return np.zeros(0, dtype=int)
    sub = values[np.ix_(live, live)]
    off = ~np.eye(len(live), dtype=bool)
    constant = live[np.all(np.isnan(sub) | ~off, axis=1)]
    if len(constant):
        _health.warn("constant_mean_filters", f"Block {corr.block!r}: {len(constant)} filter(s) "
                     f"{_health.listing(constant)} are not dead (their maps vary over positions) but their "
                     f"per-sample {corr.statistic} is the same on every analysed sample: their correlation and "
                     "class association are undefined (NaN), and shuffling them across samples changes nothing "
                     "(permutation importance 0). They respond only to what every sample shares (a border, a "
                     "fixed pattern). The redundancy is given over the other live filters.")
    return constant


def redundancy_without_constant(corr, constant) -> float:
    """Mean ``|r|`` over the pairs of live filters that are not constant (NaN with fewer than 2 of them)."""
    values = np.asarray(corr.values, np.float64)
    keep = np.setdiff1d(np.arange(values.shape[0]),
                        np.union1d(np.asarray(corr.dead_filters, dtype=int), np.asarray(constant, dtype=int)))
    if len(keep) < 2:
        return float("nan")
    sub = np.abs(values[np.ix_(keep, keep)])
    return float(sub[~np.eye(len(keep), dtype=bool)].mean())


def top_filters(imp, dead, constant=(), k: int = 5) -> tuple[list[int], str]:
    """The at most ``k`` filters the summary calls important, by decreasing mean importance, and a note.

    A filter qualifies when its mean importance is positive and its 95%
    interval over the repeats excludes 0 (not
    :attr:`~keras_hybrid_interp.global_.importance.FilterImportance.within_noise`),
    and it is neither dead nor constant. The note says how many were left out
    and why (and, when none qualifies, that none does).
    """
    mean = np.asarray(imp.importances_mean, np.float64)
    noisy = np.asarray(imp.within_noise, bool)
    excluded = set(int(i) for i in dead) | set(int(i) for i in constant)
    good = [int(i) for i in imp.ranking if mean[i] > 0 and not noisy[i] and int(i) not in excluded]
    n = len(mean)
    parts = [f"{int(noisy.sum())} of {n} within noise"]
    if len(dead):
        parts.append(f"{len(dead)} dead")
    if len(constant):
        parts.append(f"{len(constant)} constant")
    if not good:
        return [], ("none: no filter's importance is positive and distinguishable from noise ("
                    + ", ".join(parts) + ")")
    note = f"the {min(k, len(good))} most important of the {len(good)} filters whose importance is positive and " \
           f"distinguishable from noise ({', '.join(parts)})"
    return good[:k], note


#: Why a metric of the summary can be undefined (NaN), by metric name.
UNDEFINED = {
    "auroc": "no label is both present and absent among the analysed samples (see the health section)",
    "average_precision": "no label is both present and absent among the analysed samples (see the health section)",
    "r2": "a target is constant over the analysed samples, and R^2 divides by its variance",
    "mean_iou": "no class is present in the masks or in the predicted masks",
    "dice": "no class is present in the masks or in the predicted masks",
    "selectivity": "no control probe could be scored (controls need labels)",
}


def undefined_reason(metric: str) -> str:
    """Why ``metric`` is NaN on the report's samples (a division by zero of the metric's definition)."""
    return UNDEFINED.get(metric, f"{metric} divides by zero on the analysed samples (see the health section)")
