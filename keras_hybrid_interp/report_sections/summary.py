"""The summary builder: the key facts at the top of a report, from the sections' results."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import ReportContext
from .local_sections import metric_label

__all__ = ["build_summary", "task_summary"]


def build_summary(ctx: ReportContext, names: tuple) -> dict:
    """The report's summary (JSON-serializable), from ``ctx.results`` once every section is computed.

    ``names`` are every section's name in report order (for the sections left out).
    """
    interp, task, opts = ctx.interp, ctx.task, ctx.options
    layers = ctx.results["layers"]
    with_layers = "layers" in ctx.want
    if task.is_classification:
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
        if with_layers:
            summary["deepest probe accuracy" if ctx.labelled else "deepest probe agreement"] = float(
                table.iloc[-2]["accuracy" if ctx.labelled else "agreement"])
            if layers.selectivity is not None:
                summary["deepest probe selectivity"] = float(layers.selectivity[-2])
    else:
        summary = task_summary(interp, layers, int(ctx.info.n), with_layers)
    summary["block analysed globally"] = ctx.block
    summary["dead filters in that block"] = [int(i) for i in ctx.dead]
    corr, imp = ctx.results.get("correlation"), ctx.results.get("importance")
    if corr is not None:
        summary["redundancy (mean |r|)"] = float(corr.redundancy)
    if imp is not None:
        summary["top 5 filters by permutation importance"] = [int(i) for i in imp.ranking[:5]]
        summary["filters whose importance is within noise"] = (
            f"{int(imp.within_noise.sum())} of {len(imp.within_noise)}"
        )
    left_out = [s for s in names if s not in ctx.want and (s != "comparison" or opts.compare is not None)]
    if opts.sections is not None and left_out:
        summary["sections left out (sections=)"] = left_out
    return summary


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
