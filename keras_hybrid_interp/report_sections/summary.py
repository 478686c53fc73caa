"""The summary builder: the key facts at the top of a report, from the sections' results."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..core import health as _health
from .base import ReportContext
from .findings import redundancy_without_constant, top_filters, undefined_reason
from .local_sections import metric_label

__all__ = ["Summary", "build_summary", "task_summary"]


@dataclasses.dataclass
class Summary:
    """The summary of a report: its values (JSON-serializable), a note per value that needs one, and links.

    ``notes[key]`` says why a value is undefined (NaN) or empty, or what a
    list holds; ``links[key]`` is the caption of the table that lists a long
    value in full (the report shows its count and a link instead of the list).
    """

    values: dict
    notes: dict = dataclasses.field(default_factory=dict)
    links: dict = dataclasses.field(default_factory=dict)


def build_summary(ctx: ReportContext, names: tuple) -> Summary:
    """The report's summary, from ``ctx.results`` once every section is computed.

    ``names`` are every section's name in report order (for the sections left out).
    Every NaN value gets a note saying why, every filter named as important
    has an importance distinguishable from noise (:func:`~.findings.top_filters`).
    """
    interp, opts = ctx.interp, ctx.options
    layers = ctx.results["layers"]
    if ctx.task.is_classification:
        out = Summary(_classifier_summary(ctx, layers))
    else:
        out = Summary(task_summary(interp, layers, int(ctx.info.n), "layers" in ctx.want))
        for key in [k for k in out.values if k.startswith(("model ", "deepest probe "))]:
            metric = layers.headline if "selectivity" not in key else "selectivity"
            out.notes[key] = "undefined: " + undefined_reason(metric)
        out.links["layer metrics"] = "Layer table"
    out.links["blocks"] = "Blocks analysed"
    out.values["block analysed globally"] = ctx.block
    out.values["dead filters in that block"] = [int(i) for i in ctx.dead]
    out.links["dead filters in that block"] = "Dead filters"
    _filter_lines(ctx, out)
    left_out = [s for s in names if s not in ctx.want and (s != "comparison" or opts.compare is not None)
                and (s != "training" or opts.history is not None) and (s != "concepts" or opts.concepts is not None)]
    if opts.sections is not None and left_out:
        out.values["sections left out (sections=)"] = left_out
    # A note stays only where it is needed: a NaN says why; an empty list says what it means.
    out.notes = {k: v for k, v in out.notes.items() if k in out.values and _needs_note(out.values[k])}
    for key, value in out.values.items():
        if _is_nan(value) and key not in out.notes:
            out.notes[key] = "undefined on the analysed samples (see the health section)"
    return out


def _classifier_summary(ctx, layers) -> dict:
    interp = ctx.interp
    table = layers.to_frame()
    out_row = table[table["block"] == "output"].iloc[0]
    summary: dict[str, Any] = {
        "model": interp.wrapped_model.name,
        "parameters": int(interp.wrapped_model.count_params()),
        "classes": interp.num_classes,
        "blocks": list(interp.block_names),
        "samples evaluated": int(ctx.info.n),
        "model accuracy": float(out_row["accuracy"]) if ctx.labelled else "no labels",
    }
    if "layers" in ctx.want:
        summary["deepest probe accuracy" if ctx.labelled else "deepest probe agreement"] = float(
            table.iloc[-2]["accuracy" if ctx.labelled else "agreement"])
        if layers.selectivity is not None:
            summary["deepest probe selectivity"] = float(layers.selectivity[-2])
    return summary


def _filter_lines(ctx, out: Summary) -> None:
    """The summary's lines on the block's filters: redundancy and the important filters, each with its reason."""
    corr, imp = ctx.results.get("correlation"), ctx.results.get("importance")
    if corr is not None:
        key = "redundancy (mean |r|)"
        out.values[key] = float(corr.redundancy)
        live = corr.n_filters - len(corr.dead_filters)
        if len(ctx.constant):
            other = "redundancy without constant filters (mean |r|)"
            out.values[other] = redundancy_without_constant(corr, ctx.constant)
            out.notes[key] = (f"undefined: filter(s) {_health.listing(ctx.constant)} are constant (the same "
                              f"per-sample mean on every sample, not dead), so their correlation is undefined; see "
                              f"'{other}'")
            out.notes[other] = "undefined: fewer than 2 live filters are not constant"
        elif live < 2:
            out.notes[key] = f"undefined: {live} live filter(s); redundancy needs 2"
    if imp is not None:
        key = "top 5 filters by permutation importance"
        out.values[key], out.notes[key] = top_filters(imp, ctx.dead, ctx.constant, k=5)
        out.values["filters whose importance is within noise"] = (
            f"{int(imp.within_noise.sum())} of {len(imp.within_noise)}"
        )


def _is_nan(value) -> bool:
    return isinstance(value, float) and not np.isfinite(value)


def _needs_note(value) -> bool:
    return _is_nan(value) or (isinstance(value, list) and not value)


def task_summary(interp, layers, n, with_layers) -> dict:
    """The summary of a report on a multi-label, regression or segmentation model: its task and its metrics.

    ``"model <headline>"`` is the model's own headline metric (AUROC, R^2, mean IoU) against the labels;
    ``"best probe"`` says in words which block's probe reads the task best; ``"layer metrics"`` holds every
    metric of the layer table per block (``{metric: {block: value}}``, the output row as ``"output"``).
    """
    task = interp.reader
    what = {"multilabel": "labels", "regression": "targets"}.get(task.name, "classes")
    head = layers.headline
    values = np.asarray(layers.metric(head), np.float64)
    summary = {
        "model": interp.wrapped_model.name,
        "parameters": int(interp.wrapped_model.count_params()),
        "task": task.name,
        what: list(interp.class_names),
        "blocks": list(interp.block_names),
        "samples evaluated": int(n),
        f"model {metric_label(head)}": float(values[-1]) if layers.labelled else "no labels",
    }
    if not with_layers:
        return summary
    against = "" if layers.labelled else " (against the model's own outputs)"
    probes = values[:-1]
    summary[f"deepest probe {metric_label(head)}{against}"] = float(probes[-1])
    if np.isfinite(probes).any():
        higher = task.higher_is_better.get(head, True)
        best = int(np.nanargmax(probes if higher else -probes))
        line = f"the probe reaches {metric_label(head)} {probes[best]:.3g} at block {layers.blocks[best]!r}"
        if layers.labelled and np.isfinite(values[-1]):
            line += f" (the model: {values[-1]:.3g})"
        summary["best probe" + against] = line
    if "selectivity" in layers.metrics:
        summary["deepest probe selectivity"] = float(layers.metrics["selectivity"][-2])
    summary["layer metrics"] = {m: {b: float(v) for b, v in zip(layers.blocks, np.asarray(vals, np.float64))}
                                for m, vals in layers.metrics.items()}
    return summary
