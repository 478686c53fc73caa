"""What a report section is, and what every section reads: the report's options and its context.

A section of :func:`~keras_hybrid_interp.build_report` is a subclass of
:class:`ReportSection` listed in :data:`~keras_hybrid_interp.report_sections.SECTIONS`.
It says, in four methods, everything the report does for it:

- :meth:`~ReportSection.check`: validate its options before any data is read;
- :meth:`~ReportSection.reducers`: what it needs from the **one pass** over the data
  (reducers fed by :func:`keras_hybrid_interp.core.data_pass.run`);
- :meth:`~ReportSection.compute`: its result, once the pass is over;
- :meth:`~ReportSection.render`: its title, definition, figures and tables
  (:class:`SectionContent`), which :class:`~keras_hybrid_interp.Report` writes as
  HTML, PDF, CSV and JSON.

One instance is made per report, so a section keeps its reducers on itself
between the pass and :meth:`~ReportSection.compute`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

__all__ = ["ReportOptions", "ReportContext", "ReportSection", "SectionContent"]


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """Every argument of :func:`~keras_hybrid_interp.build_report` but the interpreter and the data.

    The names and meanings are ``build_report``'s (see its docstring).
    """

    block: Any
    examples: int
    n_repeats: int
    max_samples: int | None
    steps: int | None
    batch_size: int
    random_state: Any
    controls: int | None
    bootstrap: int
    confidence: float
    title: str | None
    verbose: int
    atlas_filters: int
    top_k: int
    compare: Any
    compare_blocks: Any
    sections: Any
    history: Any = None
    concepts: Any = None
    concept_random: Any = None
    concept_controls: Any = None
    concept_options: Any = None
    card: Any = None


@dataclasses.dataclass
class ReportContext:
    """What the sections of one report share: the interpreter, the options, the block, the pass and the results.

    Attributes
    ----------
    interp : HybridInterpreter
        Fitted.
    options : ReportOptions
    want : frozenset of str
        The sections shown (``build_report(sections=...)``, checked).
    y_given : bool
        Whether labels were passed.
    analyzer : GlobalAnalyzer
        Over ``interp``, at the report's batch size.
    key, block : int, str
        Graph tensor and name of the block analysed globally.
    log : callable
        ``print`` when ``verbose``, else a no-op.
    info : PassResult
        What the pass learnt (sample count, labels); set when the pass is over.
    dead : ndarray of int
        The block's dead filters (set by the correlation section, shown or not).
    constant : ndarray of int
        The block's constant filters: live, but the same per-sample mean on every
        sample (set by the correlation section when shown; see
        :func:`~keras_hybrid_interp.report_sections.findings.constant_filters`).
    collapsed : str or None
        How the model has collapsed (set by the layer table; see
        :func:`~keras_hybrid_interp.report_sections.findings.model_collapse`), or None.
    seed : int
        The seed every analysis of the report uses: ``options.random_state``
        resolved once (fresh entropy when it is None), recorded in the provenance.
    fingerprint : DataFingerprint
        The pass's reducer of the data fingerprint (see
        :mod:`~keras_hybrid_interp.report_sections.provenance`).
    results : dict
        Each computed section's result by name (``None`` for a section with nothing to show).
    x, y : the report's data, as given
        For a section that cannot join the one pass (the concepts' directional
        derivatives are taken along CAVs fitted after a pass of their own).
    """

    interp: Any
    options: ReportOptions
    want: frozenset
    y_given: bool
    analyzer: Any
    key: Any
    block: str
    log: Callable[..., None]
    info: Any = None
    dead: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=int))
    constant: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=int))
    collapsed: str | None = None
    seed: int = 0
    fingerprint: Any = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    x: Any = None
    y: Any = None

    @property
    def task(self):
        """The model's task (:class:`~keras_hybrid_interp.core.task.Task`)."""
        return self.interp.reader

    @property
    def spatial(self) -> bool:
        """Whether the model is read per position (segmentation: per-position probes and masks)."""
        return bool(self.task.spatial)

    @property
    def labelled(self) -> bool:
        """Whether the pass saw labels."""
        return bool(self.info is not None and self.info.has_labels)


@dataclasses.dataclass
class SectionContent:
    """What a section shows: title, definition, ``(caption, Figure or Axes)`` and ``(caption, DataFrame)`` pairs.

    ``values`` holds the numbers its figures show that no table holds (for the JSON record).
    """

    title: str
    text: str = ""
    figures: list = dataclasses.field(default_factory=list)
    tables: list = dataclasses.field(default_factory=list)
    values: dict = dataclasses.field(default_factory=dict)


class ReportSection:
    """One section of the standard report: its checks, reducers, computation and rendering.

    Parameters
    ----------
    ctx : ReportContext
    shown : bool
        Whether the report shows the section. A section with ``always = True``
        is computed even when it is left out, because the summary reads it
        (the layer table's scores give the model's accuracy; the block's dead
        filters); it then asks the pass only for what the summary needs.
    """

    #: The section's name in ``build_report(sections=...)``.
    name: ClassVar[str] = ""
    #: Computed even when left out of the report (the summary reads its result).
    always: ClassVar[bool] = False

    def __init__(self, ctx: ReportContext, shown: bool):
        self.ctx = ctx
        self.shown = shown

    def check(self) -> None:
        """Validates the section's options before any data is read (raises or warns)."""

    def reducers(self) -> list:
        """The reducers the section needs from the one pass (kept on the section for :meth:`compute`)."""
        return []

    def compute(self) -> Any:
        """The section's result once the pass is over (``None``: nothing to show)."""
        return None

    def render(self, result) -> SectionContent | None:
        """The section's content for ``result`` (``None``: the section is not shown)."""
        return None
