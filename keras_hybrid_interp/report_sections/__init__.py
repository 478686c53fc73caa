"""The standard report's sections, as one table, and the one pass that computes them.

:data:`SECTIONS` lists the section classes in report order; each is a
:class:`~.base.ReportSection` that names its reducers (what it needs from the
one pass over the data), its computation and its rendering. :func:`run_sections`
checks every section, runs the pass with all their reducers, and computes each
result; :func:`~.summary.build_summary` turns the results into the summary;
:func:`keras_hybrid_interp.build_report` puts it all in a
:class:`~keras_hybrid_interp.Report`.

Adding a section: a :class:`~.base.ReportSection` subclass, a row in
:data:`SECTIONS`, its definition in :mod:`.definitions`.
"""

from __future__ import annotations

from .base import ReportContext, ReportOptions, ReportSection, SectionContent
from .concepts import ConceptsSection
from .global_sections import (
    AssociationSection,
    AtlasSection,
    ComparisonSection,
    CorrelationSection,
    ImportanceSection,
    SimilaritySection,
)
from .local_sections import BlocksSection, ExplanationsSection, LayersSection
from .provenance import DataFingerprint, build_provenance
from .summary import build_summary
from .training import TrainingSection

__all__ = ["SECTIONS", "REPORT_SECTIONS", "ReportContext", "ReportOptions", "ReportSection", "SectionContent",
           "build_summary", "build_provenance", "run_sections"]

#: The sections of the standard report, in report order (the pass's reducers and the results follow it too).
SECTIONS: tuple[type[ReportSection], ...] = (
    BlocksSection,
    LayersSection,
    ExplanationsSection,
    CorrelationSection,
    AssociationSection,
    ImportanceSection,
    AtlasSection,
    SimilaritySection,
    ComparisonSection,
    TrainingSection,
    ConceptsSection,
)

#: The sections' names, in report order (``build_report(sections=...)`` picks among them).
REPORT_SECTIONS = tuple(s.name for s in SECTIONS)


def run_sections(interp, x, y, options: ReportOptions, want) -> tuple[ReportContext, list[ReportSection]]:
    """Checks the sections of ``want`` (and those always computed), runs the one pass, computes every result.

    Call inside :func:`keras_hybrid_interp.core.health.collect`: the sections'
    findings are gathered there. Returns the context (its ``results`` hold
    each section's result by name) and the section objects in report order.
    """
    from ..core import health as _health
    from ..core.perturbation import resolve_entropy
    from ..global_.analyzer import GlobalAnalyzer

    for c in getattr(interp, "fit_health_", []):
        _health.warn(c.kind, f"When the probes were fitted: {c.message}")
    analyzer = GlobalAnalyzer(interp, batch_size=options.batch_size)
    key, block = analyzer._key(interp.block_names[-1] if options.block is None else options.block)
    ctx = ReportContext(interp, options, frozenset(want), y is not None, analyzer, key, block,
                        print if options.verbose else (lambda *a, **k: None))
    # One seed for every analysis, drawn once when random_state is None: the provenance records it.
    ctx.seed = resolve_entropy(options.random_state)
    ctx.x, ctx.y = x, y  # for a section with passes of its own (concepts)
    sections = [cls(ctx, cls.name in want) for cls in SECTIONS if cls.name in want or cls.always]
    for s in sections:
        s.check()
    stream = interp._stream(x, y, batch_size=options.batch_size, max_samples=options.max_samples, steps=options.steps)
    ctx.fingerprint = DataFingerprint()  # the provenance's fingerprint of the data, in the same pass
    reducers = [r for s in sections for r in s.reducers()] + [ctx.fingerprint]
    ctx.log(f"  one pass over the data for: {', '.join(s for s in REPORT_SECTIONS if s in want)}")
    ctx.info = analyzer._run(stream, reducers)
    for s in sections:
        ctx.results[s.name] = s.compute()
    return ctx, sections
