"""Checks: every health finding as a check with a documented threshold and a status (pass, warn, fail).

A check measures one number on the report's data (:data:`CHECKS` says which,
and at which values it warns or fails), so that a CI pipeline can gate a
model release on it (``keras-hybrid-interp analyze ... --fail-on warn``).
Thresholds are the defaults of :data:`CHECKS`; :meth:`keras_hybrid_interp.Report.set_thresholds`
overrides them. Every health finding belongs to one check: a finding whose
check measures nothing on this report (the drift of a few samples, a
multi-label model's missing labels) sets that check's status to its
``finding_status``; findings no other check covers make ``other_findings``
warn. Definitions: ``docs/definitions/report.md``, *Checks*.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

__all__ = ["Check", "CHECKS", "STATUSES", "measure_checks", "evaluate_checks", "check_thresholds", "worst_status"]

#: The statuses, from best to worst.
STATUSES = ("pass", "warn", "fail")


@dataclasses.dataclass(frozen=True)
class Check:
    """One check: what it measures, which way is worse, and its default thresholds.

    ``worse="higher"``: the status is *fail* when the value is above ``fail``,
    else *warn* when it is above ``warn``. ``worse="lower"``: *fail* at or below
    ``fail``, else *warn* at or below ``warn``. A threshold of None never
    triggers. ``kinds`` are the health findings the check covers; when one of
    them is present the status is at least ``finding_status`` (None: the value
    alone decides).
    """

    name: str
    measures: str
    worse: str
    warn: float | None
    fail: float | None
    kinds: frozenset
    finding_status: str | None = "warn"


#: The checks, in the order the report shows them.
CHECKS: tuple[Check, ...] = (
    Check("collapsed_model", "the model's score minus chance: accuracy minus the most common label's frequency "
          "(classifiers), macro AUROC minus 0.5 (multi-label), R^2 (regression), against the labels; a model that "
          "predicts one class fails whatever its score", "lower", 0.05, 0.0, frozenset({"collapsed_model"}), "fail"),
    Check("dead_filters", "the fraction of the analysed block's filters that are dead (constant over every "
          "position of every sample)", "higher", 0.1, 0.5, frozenset({"dead_filters"}), None),
    Check("probe_convergence", "the fraction of the blocks whose probe fit did not converge", "higher", 0.0, 0.5,
          frozenset({"not_converged"})),
    Check("input_drift", "the largest shift of an input channel's mean, in standard deviations of the probes' "
          "training data (30 samples or more; with fewer, the drift finding of the fitted range warns)", "higher",
          3.0, 10.0, frozenset({"input_drift"})),
    Check("importance_noise", "the fraction of the analysed block's filters whose permutation importance is "
          "within noise (its 95% interval covers 0)", "higher", 0.9, None, frozenset({"noisy_importance"}), None),
    Check("missing_classes", "the number of classes (labels) without any sample among the analysed", "higher",
          0.0, None, frozenset({"missing_classes"})),
    Check("rare_classes", "the number of analysed samples of the rarest class present (classifiers)", "lower",
          9.0, None, frozenset({"rare_classes"})),
    Check("other_findings", "the number of the other health findings (constant filters, few samples, ...)",
          "higher", 0.0, None, frozenset()),
)


def check_thresholds(thresholds) -> dict:
    """``{check: (warn, fail)}``: the defaults of :data:`CHECKS` overridden by ``thresholds``.

    ``thresholds`` maps a check's name to ``{"warn": x, "fail": y}`` (either
    key may be left out; None: that level never triggers). Unknown names,
    keys or non-numbers are refused with a ValueError naming them.
    """
    out = {c.name: (c.warn, c.fail) for c in CHECKS}
    if thresholds is None:
        return out
    if not isinstance(thresholds, Mapping):
        raise TypeError(f"`thresholds` must be a dict {{check: {{'warn': x, 'fail': y}}}}; received "
                        f"{type(thresholds).__name__}.")
    for name, levels in thresholds.items():
        if name not in out:
            raise ValueError(f"`thresholds` names an unknown check {name!r}; the checks: {list(out)}.")
        if not isinstance(levels, Mapping) or not set(levels) <= {"warn", "fail"}:
            raise ValueError(f"`thresholds[{name!r}]` must be a dict with 'warn' and/or 'fail'; received {levels!r}.")
        warn, fail = out[name]
        for level, value in levels.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"`thresholds[{name!r}][{level!r}]` must be a finite number or None; received "
                                 f"{value!r}.")
            if level == "warn":
                warn = None if value is None else float(value)
            else:
                fail = None if value is None else float(value)
        out[name] = (warn, fail)
    return out


def _status(check: Check, value, warn, fail) -> str:
    if value is None:
        return "pass"
    higher = check.worse == "higher"
    for level, limit in (("fail", fail), ("warn", warn)):
        if limit is not None and (value > limit if higher else value <= limit):
            return level
    return "pass"


def worst_status(statuses) -> str:
    """The worst of ``statuses`` ("pass" when there are none)."""
    return max(statuses, key=STATUSES.index, default="pass")


def evaluate_checks(measured: dict, kinds, thresholds=None) -> list[dict]:
    """Each check's row: name, status, value, warn and fail thresholds, what it measures, its findings.

    ``measured`` maps a check's name to its value (None: not measured on this
    report); ``kinds`` are the kinds of the report's health findings.
    """
    levels = check_thresholds(thresholds)
    kinds = list(kinds)
    covered = set().union(*(c.kinds for c in CHECKS))
    rows = []
    for check in CHECKS:
        value = measured.get(check.name)
        if check.name == "other_findings":
            value = float(sum(k not in covered for k in kinds))
        warn, fail = levels[check.name]
        status = _status(check, value, warn, fail)
        found = [k for k in kinds if k in check.kinds]
        if found and check.finding_status is not None:
            status = worst_status([status, check.finding_status])
        rows.append({"check": check.name, "status": status, "value": value, "warn": warn, "fail": fail,
                     "worse": check.worse, "findings": len(found) if check.kinds else int(value or 0),
                     "measures": check.measures})
    return rows


def measure_checks(ctx, parts) -> dict:
    """The value of every check that this report measures (the others: None), from its context and sections."""
    from ..core.drift import DRIFT_MIN_SAMPLES

    interp, layers = ctx.interp, ctx.results.get("layers")
    out: dict = {}
    out["collapsed_model"] = _chance_margin(interp, layers)
    channels = interp.graph.tensors[ctx.key].shape[-1]
    out["dead_filters"] = len(ctx.dead) / int(channels) if channels else None
    conv = getattr(interp, "convergence_", None)
    if conv is not None and len(conv):
        out["probe_convergence"] = float(1.0 - np.mean(np.asarray(conv["converged"], bool)))
    layer_part = next((p for p in parts if p.name == "layers"), None)
    moments, ref = getattr(layer_part, "moments", None), interp.input_statistics
    if moments is not None and ref is not None and moments.mean is not None and moments.samples >= DRIFT_MIN_SAMPLES:
        ref_mean, ref_std = np.asarray(ref["mean"], np.float64), np.asarray(ref["std"], np.float64)
        if ref_mean.shape == np.shape(moments.mean):
            tiny = 1e-12 + 1e-6 * np.maximum(np.abs(ref_mean), 1.0)
            out["input_drift"] = float(np.max(np.abs(np.asarray(moments.mean) - ref_mean) / np.maximum(ref_std, tiny)))
    imp = ctx.results.get("importance")
    if imp is not None:
        out["importance_noise"] = float(np.mean(np.asarray(imp.within_noise, bool)))
    counts = getattr(getattr(layer_part, "scores", None), "counts", None)  # a classifier's label counts
    if counts is not None and ctx.labelled and ctx.task.is_classification:
        counts = np.asarray(counts)
        out["missing_classes"] = float(np.sum(counts == 0))
        out["rare_classes"] = float(counts[counts > 0].min()) if np.any(counts > 0) else None
    return out


def _chance_margin(interp, layers):
    """The model's score minus chance against the labels (None without labels or for segmentation)."""
    from .findings import CHANCE_LEVELS

    task = interp.reader
    if layers is None or not layers.labelled or task.spatial:
        return None
    if task.is_classification:
        return float(layers.accuracy[-1]) - float(layers.chance)
    if task.name in CHANCE_LEVELS:
        metric, _, level, _ = CHANCE_LEVELS[task.name]
        value = float(np.asarray(layers.metric(metric), np.float64)[-1])
        return value - level if np.isfinite(value) else None
    return None
