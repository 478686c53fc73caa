"""The sections of the global half: correlation, association, importance, atlas, similarity and comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import ReportSection, SectionContent
from .definitions import DEFINITIONS, importance_definition, task_definition
from .findings import constant_filters

__all__ = ["CorrelationSection", "AssociationSection", "ImportanceSection", "AtlasSection", "SimilaritySection",
           "ComparisonSection", "importance_notes", "zero_importance_note"]

#: The filter atlas keeps no crops when those of every filter of the block would take more bytes than this.
ATLAS_CROP_BYTES = 256 * 2 ** 20


class CorrelationSection(ReportSection):
    """Filter correlation in the block; always computed for the block's dead filters (the summary lists them).

    Left out, the pass keeps only each filter's range (the one definition of a dead filter).
    """

    name = "correlation"
    always = True

    def reducers(self):
        from ..core import data_pass as _pass
        from ..global_.correlation import filter_correlation_reducer

        ctx = self.ctx
        self.red = (filter_correlation_reducer(ctx.interp.graph, ctx.key, "mean") if self.shown
                    else _pass.ChannelRange(ctx.key))
        return [self.red]

    def compute(self):
        from ..core import data_pass as _pass
        from ..global_.correlation import correlation_result, warn_dead

        ctx = self.ctx
        if isinstance(self.red, _pass.ChannelRange):  # left out: the dead filters only
            warn_dead(self.red.dead, ctx.block)
            ctx.dead = self.red.dead
            return None
        corr = correlation_result(self.red, ctx.block, "mean")
        ctx.dead = corr.dead_filters
        ctx.constant = constant_filters(corr)
        return corr

    def render(self, corr):
        from .. import plotting

        if corr is None:
            return None
        return SectionContent(
            f"Filter correlation ({self.ctx.block})", DEFINITIONS["correlation"],
            figures=[("Filter correlation, clustered. Bright blocks along the diagonal are groups of filters that "
                      "respond together (redundant); hatched rows are dead filters.",
                      plotting.plot_filter_correlation(corr))],
            tables=[("Dead filters", pd.DataFrame({"filter": np.asarray(corr.dead_filters, dtype=int)}))],
            values={"correlation": corr.values, "filter_mean": corr.mean, "n_samples": corr.n_samples,
                    "statistic": corr.statistic})


class AssociationSection(ReportSection):
    """Filter-class (label, target) association in the block; needs labels. Not in a segmentation report."""

    name = "association"

    def reducers(self):
        from ..core import health as _health
        from ..global_.association import AssociationMoments

        ctx = self.ctx
        self.red = None
        if ctx.spatial:
            _health.warn("association_not_in_report", "The filter-class association of a segmentation model is "
                         "NetDissect's IoU of thresholded filter maps with the class masks, which needs two passes "
                         "over the data (a threshold, then the overlaps); the report makes one. Run "
                         "GlobalAnalyzer(interp).filter_class_association(x, y, block=...) for it.")
            return []
        self.red = AssociationMoments(ctx.interp.graph, ctx.key, "mean", ctx.analyzer.reader, ctx.y_given)
        return [self.red]

    def compute(self):
        from ..global_.association import association_result

        ctx = self.ctx
        if not (ctx.labelled and self.red):
            return None
        return association_result(self.red, ctx.block, list(ctx.interp.class_names))

    def render(self, assoc):
        from .. import plotting

        if assoc is None:
            return None
        ctx = self.ctx
        if ctx.task.is_classification:
            title, text = f"Filter-class association ({ctx.block})", DEFINITIONS["association"]
            caption = ("Filter-class association: a filter with a strong positive value for one class and weak ones "
                       "for the others is specific to that class.")
        else:
            what = "label" if ctx.task.name == "multilabel" else "target"
            title, text = f"Filter-{what} association ({ctx.block})", task_definition("association", ctx.task.name)
            caption = (f"Filter-{what} correlation: a filter with a strong positive value for one {what} and weak "
                       f"ones for the others responds to that {what}.")
        figure = plotting.plot_filter_class_association(assoc, class_names=list(ctx.interp.class_names))
        return SectionContent(title, text, figures=[(caption, figure)],
                              tables=[("Association (long form)", assoc.to_frame())])


class ImportanceSection(ReportSection):
    """Permutation importance of the block's filters: the pass caches the engine's activations, then tail passes."""

    name = "importance"

    def check(self):
        from ..global_.importance import check_request

        ctx = self.ctx
        self.engine = ctx.analyzer._engine(ctx.key)
        self.request = check_request(self.engine, ctx.analyzer.reader, n_repeats=ctx.options.n_repeats,
                                     random_state=ctx.seed)

    def reducers(self):
        from ..global_.importance import importance_reducer

        self.red = importance_reducer(self.engine, self.request, self.ctx.analyzer.reader)
        return [self.red]

    def compute(self):
        from ..global_.importance import importance_result

        ctx = self.ctx
        ctx.log("  permutation importance: tail passes on the cached activations")
        return importance_result(self.engine, self.red, self.request, ctx.analyzer.reader, y_given=ctx.y_given,
                                 block=ctx.block)

    def render(self, imp):
        from .. import plotting

        ctx = self.ctx
        return SectionContent(
            f"Filter importance ({ctx.block})",
            importance_definition(ctx.task.name, imp.scoring) + importance_notes(ctx.interp.graph, ctx.key, imp,
                                                                                 self.engine)
            + zero_importance_note(imp, ctx.collapsed),
            figures=[("Permutation importance of the most important filters, with the spread over repeats: a bar "
                      "whose error bar reaches 0 is not distinguishable from noise.",
                      plotting.plot_filter_importance(imp))],
            tables=[("Importance per filter and repeat", imp.to_frame())])


def zero_importance_note(imp, collapsed=None) -> str:
    """Why every importance is exactly 0, when it is ("" otherwise); ``collapsed`` says how the model collapsed."""
    if np.asarray(imp.importances).size == 0 or np.any(np.asarray(imp.importances) != 0):
        return ""
    if collapsed:
        return (f" Every importance is exactly 0 because the model has collapsed ({collapsed}; see the health "
                "section): no perturbation of one filter moved any of its predictions, so its score never changed. "
                "These zeros say nothing about what the filters encode.")
    return (f" Every importance is exactly 0: no perturbation of one filter changed the score ({imp.scoring}) on any "
            "repeat. A coarse score such as accuracy moves only when a prediction changes; a finer score "
            "(filter_importance(..., scoring='loss')) may separate the filters.")


def importance_notes(graph, key, imp, engine=None) -> str:
    """The importance section's lines on noise, on the engine, and on the channels tied to the block through ``Add``."""
    from ..core.coupling import tied_merges, tied_names, tied_tensors

    noisy = np.asarray(imp.within_noise)
    text = (f" {int(noisy.sum())} of {len(noisy)} filters are within noise: the 95% interval of their mean over "
            "the repeats covers 0 (columns ci_low, ci_high, within_noise of the table).")
    if engine is not None and not engine.caches_maps:
        how = "average" if engine.reduce == "avg" else "max"
        from ..core.engine import LinearHeadEngine

        if isinstance(engine, LinearHeadEngine):
            text += (f" The block is read only through a global {how} pooling and one Dense layer, so each "
                     "perturbation was applied to the pooled features and its outputs computed in closed form "
                     "(the logits change by (x' - x) W for the perturbed filters): no layer was re-run, and the "
                     "result is what re-running the model after the block gives, up to float rounding.")
        else:
            text += (f" The block is read only through a global {how} pooling, so each perturbation was applied "
                     "to the pooled features and only the layers after the pooling were re-run: exactly what "
                     "re-running the model after the block gives, up to float rounding.")
    tied = tied_tensors(graph, key)
    merges = tied_merges(graph, tied)
    if merges:
        others = [n for k, n in zip(tied, tied_names(graph, tied)) if k != key]
        text += (f" Channel i of this block is tied to channel i of {len(others)} other tensors through "
                 f"{', '.join(merges)} ({', '.join(others)}): shuffling it alone is not an intervention the "
                 "network could undergo; filter_importance(..., groups='coupled') perturbs them jointly.")
    return text


class AtlasSection(ReportSection):
    """The top-activating crops of the most important filters (needs the importance section's ranking)."""

    name = "atlas"

    def reducers(self):
        from ..core import health as _health
        from ..global_.atlas import examples_reducer

        ctx, opts = self.ctx, self.ctx.options
        self.red = None
        if int(opts.atlas_filters) <= 0:
            return []
        graph = ctx.interp.graph
        self.red = examples_reducer(graph, ctx.key, ctx.block, k=opts.top_k)
        channels = graph.tensors[graph.input_keys[0]].shape[-1] or 1
        need = self.red.crop_bytes(int(channels))
        if need > ATLAS_CROP_BYTES:
            self.red.keep_crops = False
            _health.warn("atlas_crops", f"Block {ctx.block!r}: the filter atlas keeps no crops; those of all "
                         f"{len(self.red.filters)} filters would take {need / 2 ** 20:.0f} MiB. Its table "
                         "lists the samples and boxes; ga.filter_examples(x, block=..., filters=[...]) "
                         "draws the crops of chosen filters.")
        return [self.red]

    def compute(self):
        from ..global_.atlas import examples_result

        ctx = self.ctx
        if self.red is None or not self.red.n:
            return None
        imp = ctx.results["importance"]  # "atlas" needs "importance" (checked before the pass)
        # A dead or constant filter ties on every sample: its "top-activating samples" show nothing.
        skip = set(int(i) for i in ctx.dead) | set(int(i) for i in ctx.constant)
        keep = [int(i) for i in imp.ranking if int(i) not in skip][: int(ctx.options.atlas_filters)]
        if not keep:
            return None
        return examples_result(self.red, ctx.block, keep=np.asarray(keep), known_dead=ctx.dead)

    def render(self, atlas):
        from .. import plotting

        if atlas is None:
            return None
        figures = ([(f"The {atlas.top_k} samples that activate each of the {len(atlas.filters)} most important filters "
                     "most, cropped to the filter's receptive field at the maximum; the title is the activation.",
                     plotting.plot_filter_examples(atlas))] if atlas.crops is not None else [])
        return SectionContent(f"Filter atlas ({self.ctx.block})", DEFINITIONS["atlas"], figures=figures,
                              tables=[("Top-activating samples of the most important filters", atlas.to_frame())])


class SimilaritySection(ReportSection):
    """Linear CKA between the blocks (minibatch estimator), when there are two blocks or more."""

    name = "similarity"

    def reducers(self):
        from ..global_.similarity import similarity_reducer

        interp = self.ctx.interp
        self.red = (similarity_reducer(interp.graph, interp.block_keys, "minibatch")
                    if len(interp.block_names) > 1 else None)
        return [self.red] if self.red is not None else []

    def compute(self):
        from ..global_.similarity import similarity_result

        return similarity_result(self.red, list(self.ctx.interp.block_names)) if self.red is not None else None

    def render(self, sim):
        from .. import plotting

        if sim is None:
            return None
        return SectionContent(
            "Layer similarity", DEFINITIONS["similarity"],
            figures=[("Linear CKA between blocks: 1 means two blocks represent the data the same way up to rotation "
                      "and scale; a dark band marks where the representation changes.",
                      plotting.plot_layer_similarity(sim))],
            tables=[("CKA", sim.to_frame())])


class ComparisonSection(ReportSection):
    """Linear CKA between this model's blocks and another model's (``compare=``), in the same pass.

    The other model's own sections (its checks, its filter importance) run in
    that pass too (:class:`~.compare.OtherRun`, kept as ``self.other``): the
    report's "what changed" paragraph (:mod:`~.compare`) reads them.
    """

    name = "comparison"

    def reducers(self):
        from ..global_.similarity import similarity_reducer
        from .compare import OtherRun
        from .local_sections import LayersSection

        ctx, interp = self.ctx, self.ctx.interp
        side, self.columns, self.models = ctx.analyzer._other_model(
            ctx.options.compare, ctx.options.compare_blocks, argnames=("compare", "compare_blocks"))
        classes = {"layers": LayersSection, "correlation": CorrelationSection, "importance": ImportanceSection}
        self.other = OtherRun(ctx, ctx.options.compare, side, classes)
        self.red = similarity_reducer(interp.graph, interp.block_keys, "minibatch", self.other.shared(side))
        return [self.other.reducer, self.red]  # the other model runs first on each batch; the CKA reads its values

    def compute(self):
        from ..global_.similarity import similarity_result

        self.other.compute()
        return similarity_result(self.red, list(self.ctx.interp.block_names), columns=self.columns,
                                 models=self.models)

    def render(self, cmp):
        from .. import plotting

        assert cmp.models is not None  # the comparison's result names its two models
        return SectionContent(
            f"Comparison with {cmp.models[1]}",
            DEFINITIONS["similarity"] + " Here the rows are this model's blocks and the columns the other "
            "model's, both fed the same samples.",
            figures=[("Linear CKA between the blocks of the two models: a bright diagonal means the blocks at the "
                      "same depth represent the data alike; where it fades, the models differ (for a fine-tuned "
                      "model: the blocks fine-tuning changed).", plotting.plot_layer_similarity(cmp))],
            tables=[("CKA between the two models", cmp.to_frame())])
