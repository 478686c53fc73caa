"""The sections of the local half: the blocks, the layer table and the local explanations."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import ReportSection, SectionContent
from .definitions import DEFINITIONS, task_definition
from .findings import model_collapse

__all__ = ["BlocksSection", "LayersSection", "ExplanationsSection", "metric_label", "explanation_values"]


def metric_label(name) -> str:
    """A metric's name as the plots and the summary print it (``mean_iou`` -> ``mean IoU``)."""
    from ..plotting.local import metric_label as label

    return label(name)


class BlocksSection(ReportSection):
    """The blocks analysed: where each ends, its depth and its channels (no pass)."""

    name = "blocks"

    def compute(self):
        return self.ctx.interp.blocks

    def render(self, result):
        return SectionContent("Blocks", DEFINITIONS["blocks"], tables=[("Blocks analysed", result.to_frame())])


class LayersSection(ReportSection):
    """The layer table: every block's probe scored on the data (and the input-drift check of the probes).

    Always computed: the summary's model accuracy comes from its scores. Left
    out, it asks for no controls and no bootstrap.
    """

    name = "layers"
    always = True

    def reducers(self):
        from ..core import data_pass as _pass
        from ..local import segmentation as _segmentation

        ctx, interp, opts = self.ctx, self.ctx.interp, self.ctx.options
        self.scores: Any
        if ctx.spatial:  # the segmentation table's reducer (no controls nor intervals for it yet)
            self.scores = _segmentation.SegmentationScores([_pass.Tap(k, "raw") for k in interp.block_keys],
                                                           interp._probe_states(), interp._output_tap(), ctx.task)
        else:
            controls = opts.controls
            if controls is None:
                fitted_controls = getattr(interp, "control_states_", None)
                controls = len(fitted_controls[0]) if fitted_controls else 0
            self.scores = interp._probe_scores(controls=controls if ctx.y_given and self.shown else 0,
                                              bootstrap=opts.bootstrap if self.shown else 0,
                                              random_state=ctx.seed)
        self.moments = _pass.InputMoments()  # the probes' input-drift check
        return [self.scores, self.moments]

    def compute(self):
        from ..local import segmentation as _segmentation

        ctx, interp = self.ctx, self.ctx.interp
        interp._check_drift(self.moments)
        if ctx.spatial:
            layers = _segmentation.segmentation_table(interp, self.scores, ctx.options.confidence)
        else:
            layers = interp._layer_table(self.scores, confidence=ctx.options.confidence)
        ctx.collapsed = model_collapse(interp, layers, self.scores)
        return layers

    def render(self, layers):
        from .. import plotting

        table = layers.to_frame()
        if not self.ctx.task.is_classification:
            return SectionContent("Layer-by-layer predictions", task_definition("layer_table", self.ctx.task.name),
                                  figures=[(_layer_caption(layers), plotting.plot_layer_metrics(layers))],
                                  tables=[("Layer table", table)])
        caption = ("Probe accuracy and agreement per block, shallow to deep. Where the probe curve meets the model's "
                   "accuracy, the class is linearly readable from that block on.")
        if layers.selectivity is not None:
            caption += (" Selectivity is the accuracy minus that of control probes trained on permuted labels: near 0, "
                        "the probe memorises rather than reads the block.")
        if layers.n_resamples:
            caption += f" Error bars: {self.ctx.options.confidence:.0%} bootstrap intervals over the evaluated samples."
        return SectionContent("Layer-by-layer predictions", DEFINITIONS["layer_table"],
                              figures=[(caption, plotting.plot_layer_accuracy(layers))],
                              tables=[("Layer table", table)])


def _layer_caption(layers) -> str:
    head = metric_label(layers.headline)
    text = (f"Probe {head} per block, shallow to deep; the dashed line is the model's own {head}. Where the probe "
            "curve meets the model's line, the task is linearly readable from that block on.")
    if layers.headline in layers.lower:
        text += f" Error bars: {layers.confidence:.0%} bootstrap intervals over the evaluated samples."
    elif layers.n_resamples:
        text += f" {head} gets no bootstrap interval (a ranking metric); the table has those of the other metrics."
    return text


class ExplanationsSection(ReportSection):
    """Local explanations of the first ``examples`` inputs, from their raw block maps kept by the pass."""

    name = "explanations"

    def reducers(self):
        from ..core import data_pass as _pass

        n = max(int(self.ctx.options.examples), 0)
        self.maps = [_pass.Collect(t) for t in self.ctx.interp._explanation_taps(n)] if n else []
        self.inputs = _pass.Collect.first("x", n) if n else None
        # the true labels, shown beside the model's class (not for segmentation: its figures compare masks)
        self.labels = _pass.Collect.first("y", n) if n and self.ctx.y_given and not self.ctx.spatial else None
        return self.maps + [c for c in (self.inputs, self.labels) if c is not None]

    def compute(self):
        from ..local import segmentation as _segmentation

        interp = self.ctx.interp
        x = self.inputs.result() if self.inputs is not None else None
        if x is None:
            return []
        # The raw maps of every block serve this result only (the section is computed once per pass): the
        # Collects let them go here, before the importance and the atlas (a U-Net's: 60 MB for 2 inputs).
        maps = [c.result(release=True) for c in self.maps]
        if self.ctx.spatial:
            return [_segmentation.explanation_from_maps(interp, x[j], [m[j:j + 1] for m in maps])
                    for j in range(len(x))]
        y = self.labels.result() if self.labels is not None else None
        targets = None if y is None else np.asarray(self.ctx.task.targets(y))
        return interp._explanations(x, maps, targets=targets)

    def render(self, explanations):
        from .. import plotting

        if not explanations:
            return None
        task = self.ctx.task.name
        values = {"inputs": [explanation_values(e) for e in explanations]}
        if not self.ctx.task.is_classification:
            return SectionContent("Local explanations", task_definition("local", task),
                                  **_task_explanations(explanations, task, plotting), values=values)
        figures = [(f"Local explanation of input {i}{_true_label(e)}: what each block's probe predicts, and where in "
                    "the image the evidence for the model's class lies (one colour scale across blocks).",
                    plotting.plot_local_explanation(e)) for i, e in enumerate(explanations)]
        return SectionContent("Local explanations", DEFINITIONS["local"], figures=figures, values=values)


def _true_label(e) -> str:
    """`` (true class 'two', model 'seven')``: the explanation's true label beside the model's, when it has one."""
    true = e.target_text() if getattr(e, "target", None) is not None else None
    if true is None:
        return ""
    if e.task == "regression":
        return f" (true values {true})"
    if e.task == "multilabel":
        return f" (true labels {true})"
    return f" (true class {true}, model {str(e.class_names[e.model_class])!r})"


def explanation_values(e) -> dict:
    """The numbers a local explanation's figure shows, for the report's record.

    A segmentation explanation: every block's mask (class indices at the output
    resolution). Otherwise: each block's probe output and the model's, the
    decision block, and each block's evidence map of the class the figure draws
    (the model's class).
    """
    masks = getattr(e, "masks", None)
    if masks is not None:
        return {"blocks": list(e.blocks), "masks": [np.asarray(m) for m in masks]}
    k = int(e.model_class)
    target = getattr(e, "target", None)
    return {"blocks": list(e.blocks), "probabilities": np.asarray(e.probabilities),
            "model_probabilities": np.asarray(e.model_probabilities), "decision_block": e.decision_block,
            "drawn_class": k, "evidence_maps": [np.asarray(m)[..., k] for m in e.evidence_maps],
            "target": None if target is None else np.asarray(target)}


def _task_explanations(explanations, task, plotting) -> dict:
    """The figures and tables of the local explanations of a multi-label, regression or segmentation model."""
    figures, tables = [], []
    for i, e in enumerate(explanations):
        if task == "segmentation":
            figures.append((f"Input {i}: the mask of every block's probe over the input, shallow to deep, then the "
                            "model's; each title gives the mean IoU with the model's mask.", e.plot()))
            tables.append((f"Input {i}: each block's mask against the model's (IoU, agreement, class fractions)",
                           e.to_frame()))
            continue
        what = ("the probability each block's probe gives every label (a label is predicted at 0.5)"
                if task == "multilabel" else "the value each block's probe predicts for every target")
        figures.append((f"Local explanation of input {i}{_true_label(e)}: {what}, and where in the input the "
                        "evidence for the model's first output lies (one colour scale across blocks).",
                        plotting.plot_local_explanation(e)))
        tables.append((f"Input {i}: {what}, and the model's", e.to_frame()))
    return {"figures": figures, "tables": tables}
