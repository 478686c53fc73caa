"""What changed between two models (``build_report(..., compare=other)``), in one paragraph.

The comparison section opens with a paragraph naming

- **the blocks least alike**: the :data:`TOP` blocks of this model whose linear
  CKA to the other model is lowest, each with its value. A block's CKA to the
  other model is its CKA with the other's block of the same name, or, where the
  other has none (``compare_blocks``), its highest CKA with any of the other's
  blocks (its best match);
- **the filters whose importance changed most**: the :data:`TOP` filters of the
  analysed block with the largest ``|this model's mean importance - the
  other's|``, each with both means and whether the change is within noise (the
  95% t-interval of the paired differences over the repeats covers 0). Both
  importances come from the same samples and the same seed (the same
  permutations); this needs the other model to have a layer of the same name
  with the same number of filters, and is skipped, with the reason, otherwise;
- **the checks that changed status**: every check (but ``other_findings``)
  whose status differs between the two models under the report's thresholds
  (:meth:`~keras_hybrid_interp.Report.set_thresholds` applies to both). The
  other model's checks are measured by the report's own sections and checks
  (:func:`~.checks.measure_checks`), which need its probes: ``compare`` must be
  a :class:`~keras_hybrid_interp.HybridInterpreter` with fitted probes, else
  this part is skipped with the reason.

Everything about the other model is computed in the report's **one pass**: the
other model runs once per batch (:class:`OtherPass`), for the CKA and for its
own sections' reducers together, and its permutation importance then re-runs
its tail on its cache, as this model's does. Its health findings are kept apart
(:func:`keras_hybrid_interp.core.health.apart`): they decide its checks'
statuses and are not findings of this report.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any

import numpy as np

from ..global_.similarity import OtherModel

__all__ = ["TOP", "CHANGES_CSS", "OtherPass", "SharedOtherModel", "OtherRun", "Changes", "what_changed", "changes_of"]

#: How many blocks and filters the paragraph names.
TOP = 3
#: The HTML report's style of the paragraph.
CHANGES_CSS = ".changes{background:#fbf8ef;border-left:4px solid #b8a27a;padding:0.5em 1em}"
#: The checks the paragraph does not compare: ``other_findings`` counts the findings of every section, and the
#: other model runs only those its checks measure.
NOT_COMPARED = ("other_findings",)


class OtherPass:
    """Reducer of the one pass: runs the other model once per batch and feeds its reducers (and the CKA) its taps.

    ``reducers`` are reducers of the other model's graph (its sections'); the
    other model's side model computes their taps and ``extra_taps`` (the
    CKA's) together, on the batch's inputs (:func:`~keras_hybrid_interp.core.data_pass.forward_taps`),
    and each of them gets a :class:`~keras_hybrid_interp.core.data_pass.Batch`
    with the same inputs, labels and start. Listed before the CKA's reducer,
    whose :class:`SharedOtherModel` reads the values computed here.
    """

    taps: tuple = ()

    def __init__(self, graph, reducers, extra_taps=()):
        self.graph = graph
        self.reducers = list(reducers)
        self.other_taps = tuple(extra_taps) + tuple(t for r in self.reducers for t in r.taps)
        self._x: Any = None
        self._values: dict = {}

    def expect(self, num_samples):
        for r in self.reducers:
            if hasattr(r, "expect"):
                r.expect(num_samples)

    def values_for(self, x) -> dict:
        """The other model's tap values on batch ``x`` (computed once per batch)."""
        from ..core import data_pass as _pass

        if self._x is not x:
            self._values = _pass.forward_taps(self.graph, self.other_taps, x)
            self._x = x
        return self._values

    def update(self, batch):
        from ..core import data_pass as _pass

        if not self.reducers:
            return
        other = _pass.Batch(batch.x, batch.y, batch.start, self.values_for(batch.x))
        for r in self.reducers:
            r.update(other)


class SharedOtherModel(OtherModel):
    """The other model's blocks for the CKA, read from what :class:`OtherPass` computed on the same batch."""

    def __init__(self, other: OtherModel, run: OtherPass):
        super().__init__(other.graph, other.keys)
        self.run = run

    def features(self, x) -> list:
        values = self.run.values_for(x)
        return [values[t.ident] for t in self.taps]


class OtherRun:
    """The other model's sections in the report's pass: its checks (with probes) and its filter importance.

    Parameters
    ----------
    ctx : ReportContext
        This model's.
    compare : HybridInterpreter, GlobalAnalyzer or keras.Model
        ``build_report``'s ``compare``.
    side : OtherModel
        The other model's graph and blocks, as the comparison section reads them.
    classes : dict
        The report's section classes the other model runs: ``"layers"``,
        ``"correlation"`` (its checks) and ``"importance"``.
    """

    def __init__(self, ctx, compare, side: OtherModel, classes: dict):
        from ..global_.analyzer import GlobalAnalyzer
        from .base import ReportContext

        self.ctx = ctx
        self.check_values: dict | None = None
        self.kinds: list[str] = []
        self.importance = None
        probes = bool(getattr(compare, "fitted", False)) and hasattr(compare, "wrapped_model")
        source = compare if hasattr(compare, "graph") else types.SimpleNamespace(graph=side.graph,
                                                                                  block_keys=side.keys)
        analyzer = GlobalAnalyzer(source, batch_size=ctx.options.batch_size)
        self.checks_skipped, self.filters_skipped = self._reasons(ctx, analyzer.reader, side.graph.model.name,
                                                                  probes)
        key, self.block = self._block(ctx, analyzer, side, compare if probes else None)
        want = {"importance"} if "importance" in ctx.want and key is not None else set()
        self.octx = ReportContext(compare if probes else analyzer, ctx.options, frozenset(want), ctx.y_given,
                                  analyzer, key, self.block or "", ctx.log)
        self.octx.seed = ctx.seed  # the same permutations as this model's
        self.octx.x, self.octx.y = ctx.x, ctx.y
        names = ([] if self.checks_skipped else ["layers", "correlation"]) + (
            ["importance"] if want and not (self.checks_skipped and self.filters_skipped) else [])
        self.sections = [classes[n](self.octx, n in want) for n in names]
        for s in self.sections:
            s.check()
        self.reducer = OtherPass(side.graph, [r for s in self.sections for r in s.reducers()], side.taps)

    @staticmethod
    def _reasons(ctx, reader, name, probes) -> tuple[str | None, str | None]:
        """Why the checks and why the filters cannot be compared (None: they can), before the block is known."""
        checks = filters = None
        if not probes:
            checks = (f"the checks of {name!r} need its probes: pass compare=HybridInterpreter(other)"
                      ".fit_probes(x_train, y_train) to compare them")
        mine = ctx.task
        if reader is None:
            filters = (f"the output of {name!r} cannot be read as a task (linear units): pass a GlobalAnalyzer(other, "
                       "task=...) or a HybridInterpreter as `compare`")
            checks = checks or filters
        elif (mine.name, mine.num_outputs) != (reader.name, reader.num_outputs):
            filters = checks = (f"{name!r} is a {reader.name} model with {reader.num_outputs} outputs, this one a "
                                f"{mine.name} model with {mine.num_outputs}: the same labels cannot score both")
        if filters is None and "importance" not in ctx.want:
            filters = "the importance section is left out (sections=)"
        return checks, filters

    def _block(self, ctx, analyzer, side, interp):
        """``(key, name)`` of the other model's analysed block: this one's name, else (for its checks) its deepest."""
        name = side.graph.model.name
        if self.checks_skipped and self.filters_skipped:
            return None, None
        try:
            key, block = analyzer._key(ctx.block)
        except (TypeError, ValueError):
            self.filters_skipped = self.filters_skipped or f"{name!r} has no layer named {ctx.block!r}"
            if interp is None or self.checks_skipped:
                return None, None
            return analyzer._key(interp.block_names[-1])  # its checks read the block its own report would
        here, there = int(ctx.interp.graph.tensors[ctx.key].shape[-1]), int(side.graph.tensors[key].shape[-1])
        if self.filters_skipped is None and here != there:
            self.filters_skipped = (f"block {ctx.block!r} has {here} filters here and {there} in {name!r}: filters "
                                    "cannot be paired")
        return key, block

    def shared(self, side: OtherModel) -> SharedOtherModel:
        """The CKA's view of the other model: its blocks read from this run's values of each batch."""
        return SharedOtherModel(side, self.reducer)

    def compute(self) -> None:
        """The other model's results, checks and findings, once the pass is over (its findings kept apart)."""
        from ..core import health as _health
        from .checks import measure_checks

        if not self.sections:
            return
        octx = self.octx
        octx.info = self.ctx.info
        with _health.apart() as caveats:
            if not self.checks_skipped:
                for c in getattr(octx.interp, "fit_health_", []):
                    _health.warn(c.kind, f"When the probes were fitted: {c.message}")
            for s in self.sections:
                octx.results[s.name] = s.compute()
            if not self.checks_skipped:
                self.check_values = measure_checks(octx, self.sections)
        self.kinds = [c.kind for c in caveats]
        self.importance = octx.results.get("importance")


@dataclasses.dataclass
class Changes:
    """What the "what changed" paragraph is made of (:func:`changes_of`); :func:`what_changed` writes it.

    ``blocks``: per block of this model, ``(block, other block, CKA, how the
    other block was matched)``, lowest CKA first (undefined last).
    ``importance``, ``other_importance``: the block's
    :class:`~keras_hybrid_interp.global_.importance.FilterImportance` in each
    model, or None with ``filters_skipped`` saying why. ``other_check_values``,
    ``other_kinds``: the other model's measured checks and the kinds of its
    findings, or None with ``checks_skipped`` saying why.
    """

    models: tuple
    blocks: list
    block: str
    importance: Any = None
    other_importance: Any = None
    filters_skipped: str | None = None
    other_check_values: dict | None = None
    other_kinds: list = dataclasses.field(default_factory=list)
    checks_skipped: str | None = None


def block_matches(cka) -> list[tuple[str, str | None, float, str]]:
    """Per row block of a two-model :class:`LayerSimilarity`: its CKA to the other model, lowest first.

    ``(block, other block, CKA, "same name" or "best match")``; a block whose
    CKA is undefined (NaN) everywhere comes last, with other block None.
    """
    values = np.asarray(cka.values, dtype=np.float64)
    columns = list(cka.column_blocks)
    rows = []
    for i, name in enumerate(cka.blocks):
        if name in columns:
            j, how = columns.index(name), "same name"
        elif np.isfinite(values[i]).any():
            j, how = int(np.nanargmax(values[i])), "best match"
        else:
            rows.append((name, None, math.nan, "best match"))
            continue
        rows.append((name, columns[j], float(values[i, j]), how))
    order = sorted(range(len(rows)), key=lambda k: (not math.isfinite(rows[k][2]),
                                                    rows[k][2] if math.isfinite(rows[k][2]) else 0.0, k))
    return [rows[k] for k in order]


def changes_of(ctx, parts) -> Changes | None:
    """The :class:`Changes` of a report with a comparison section (None without one)."""
    part = next((p for p in parts if p.name == "comparison"), None)
    if part is None:
        return None
    cka = ctx.results["comparison"]
    other: OtherRun = part.other
    filters_skipped = other.filters_skipped
    if filters_skipped is None and (ctx.results.get("importance") is None or other.importance is None):
        filters_skipped = "the importance of one of the models was not computed"
    return Changes(tuple(cka.models), block_matches(cka), ctx.block,
                   importance=None if filters_skipped else ctx.results["importance"],
                   other_importance=None if filters_skipped else other.importance, filters_skipped=filters_skipped,
                   other_check_values=other.check_values, other_kinds=list(other.kinds),
                   checks_skipped=other.checks_skipped)


def _f(v) -> str:
    return "undefined" if v is None or not math.isfinite(v) else f"{v:.4g}"


def what_changed(changes: Changes, checks: list[dict], thresholds=None) -> dict:
    """The paragraph and its numbers: ``{"text", "blocks", "filters", "filters_skipped", "checks", "checks_skipped"}``.

    ``checks`` are this model's check rows (:attr:`Report.checks <keras_hybrid_interp.Report.checks>`), and
    ``thresholds`` the report's overrides, which the other model's checks follow too.
    """
    from ..global_.importance import noise_mask
    from .checks import evaluate_checks

    this, other = changes.models
    blocks = [{"block": b, "other_block": o, "cka": c, "matched": how} for b, o, c, how in changes.blocks]
    lowest = [b for b in blocks if math.isfinite(b["cka"])][:TOP]
    undefined = [b["block"] for b in blocks if not math.isfinite(b["cka"])]
    parts = []
    if lowest:
        named = ", ".join(f"{b['block']} ({_f(b['cka'])}" + ("" if b["matched"] == "same name" else
                                                             f", its best match {b['other_block']}") + ")"
                          for b in lowest)
        parts.append(f"The blocks least alike (lowest linear CKA with {other}'s block of the same name, or its best "
                     f"match): {named}.")
    if undefined:
        parts.append(f"CKA is undefined for {', '.join(undefined)} (constant features).")
    filters: list[dict] = []
    if changes.filters_skipped is None:
        a = np.asarray(changes.importance.importances, np.float64)
        b = np.asarray(changes.other_importance.importances, np.float64)
        change = a.mean(axis=1) - b.mean(axis=1)
        noisy = noise_mask(a - b) if a.shape == b.shape else np.ones(len(change), bool)
        order = np.argsort(-np.abs(change), kind="stable")[:TOP]
        filters = [{"filter": int(i), "importance": float(a[i].mean()), "other_importance": float(b[i].mean()),
                    "change": float(change[i]), "within_noise": bool(noisy[i])} for i in order]
        named = ", ".join(f"{f['filter']} ({_f(f['importance'])} here, {_f(f['other_importance'])} in {other}"
                          + ("; within noise" if f["within_noise"] else "") + ")" for f in filters)
        parts.append(f"The filters of {changes.block} whose importance changed most: {named}.")
    else:
        parts.append(f"Filter importance is not compared: {changes.filters_skipped}.")
    changed: list[dict] = []
    if changes.checks_skipped is None and changes.other_check_values is not None:
        theirs = {c["check"]: c for c in evaluate_checks(changes.other_check_values, changes.other_kinds,
                                                         thresholds)}
        for c in checks:
            o = theirs.get(c["check"])
            if o is None or c["check"] in NOT_COMPARED or o["status"] == c["status"]:
                continue
            changed.append({"check": c["check"], "status": c["status"], "other_status": o["status"],
                            "value": c["value"], "other_value": o["value"]})
        if changed:
            named = ", ".join(f"{c['check']} ({c['status']} here, value {_f(c['value'])}; {c['other_status']} in "
                              f"{other}, value {_f(c['other_value'])})" for c in changed)
            parts.append(f"Checks that changed status: {named}.")
        else:
            parts.append(f"No check changed status ({', '.join(NOT_COMPARED)} is not compared).")
    else:
        parts.append(f"Checks are not compared: {changes.checks_skipped}.")
    text = f"What changed between {this} (this model) and {other}: " + " ".join(parts)
    return {"text": text, "models": [this, other], "blocks": blocks, "filters": filters,
            "filters_skipped": changes.filters_skipped, "checks": changed, "checks_skipped": changes.checks_skipped}
