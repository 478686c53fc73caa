"""The Concepts section: TCAV with significance (:meth:`HybridInterpreter.concepts`) in the report.

``build_report(interp, x, y, concepts={"stripes": examples, ...})`` adds a
section that runs :func:`keras_hybrid_interp.local.concepts.concepts` on the
report's own data (``x`` and ``y``, its ``max_samples``, ``steps``,
``batch_size``, ``bootstrap``, ``confidence`` and seed) and shows:

- the **concept accuracy by depth** (figure; table): where the network starts
  to represent each concept;
- the **TCAV scores with their significance** (figure, one panel per tested
  class; the full frame of :meth:`ConceptResult.to_frame
  <keras_hybrid_interp.local.concepts.ConceptResult.to_frame>` as a table);
- **each concept beside a negative control** (table): TCAV flags any
  *consistent* direction, not only a meaningful one, so a concept is read
  beside a concept that should not matter. The control is the user's
  (``concept_controls=``: names among ``concepts``), or, by default, a
  **random control** named :data:`RANDOM_CONTROL`: a set of inputs drawn from
  the random pool (``concept_random``, or the analysed ``x`` when it is None),
  the same distribution as the random sets, which is significant nowhere but
  by chance (at most ``alpha`` of reports; see docs/definitions/concepts.md);
- the filters aligned with each CAV, and the concept maps of the first input.

The random control
------------------
Its examples are ``size`` rows of the pool, ``np.sort(np.random.default_rng([seed,
21]).choice(n_pool, size, replace=False))`` with ``seed`` the report's seed,
``n_pool`` the pool's rows (the analysed ones of ``x``: its first
``max_samples``, or ``steps`` batches) and ``size`` the largest number of
examples of a concept given as an array (:data:`RANDOM_CONTROL_SIZE` when
none is); the random sets are drawn from the other rows, so that the control
shares no input with them. The pool must then be an array (or a list of
arrays, one per model input).

Health lines
------------
From :func:`~keras_hybrid_interp.local.concepts.concepts`: too few examples of
a concept (``few_samples``: fewer than 20), a concept separable at no block
(``concept_not_separable``), a concept significant for no (block, class)
(``not_significant``), and the others it finds. For a control, being
separable nowhere and significant nowhere is what it should do, so those two
lines are left out for the controls; a control that is significant somewhere
is a finding of its own (``control_significant``).

Unlike the other sections, this one cannot join the report's one pass: a
directional derivative is taken along a CAV, known only once the CAVs are
fitted on the concepts' features. It makes the passes of
:func:`~keras_hybrid_interp.local.concepts.concepts`: one per concept set,
one over the random pool, and one forward and backward pass over ``x`` for
every block, concept and CAV at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

import numpy as np
import pandas as pd

from .base import ReportSection, SectionContent

__all__ = ["RANDOM_CONTROL", "RANDOM_CONTROL_SIZE", "CONTROL_STREAM", "REPORT_SET", "MAX_CLASS_PANELS",
           "DEFINITION", "ConceptsReport", "ConceptsSection", "check_concept_options", "check_concept_controls",
           "random_control", "control_frame", "control_findings", "concept_values", "TABLES"]

#: The name of the random control concept (drawn from the random pool when no control of the user's is named).
RANDOM_CONTROL = "random (control)"
#: The random control's size when no concept is given as an array (else the largest array concept's size).
RANDOM_CONTROL_SIZE = 30
#: The second word of the random control's seed, ``default_rng([seed, CONTROL_STREAM])``: a stream of its own.
CONTROL_STREAM = 21
#: The arguments of ``HybridInterpreter.concepts`` that the report sets itself, with the build_report
#: argument that sets them: ``concept_options`` may not hold them.
REPORT_SET = {"concepts": "concepts", "x": "x", "y": "y", "random": "concept_random", "random_state": "random_state",
              "batch_size": "batch_size", "max_samples": "max_samples", "steps": "steps",
              "bootstrap": "bootstrap", "confidence": "confidence"}
#: The TCAV figure draws one panel per tested class, for at most this many classes (the table holds all).
MAX_CLASS_PANELS = 10
#: The captions of the section's tables, by role.
TABLES = {
    "sets": "Concept sets: role, examples, first separable block and significant results",
    "controls": "Each concept beside its negative control (per block and class)",
    "accuracy": "Concept accuracy by block (held out, with bootstrap intervals and random-label controls)",
    "frame": "TCAV scores and significance per concept, block and class",
    "filters": "Filters aligned with each CAV (largest mean standardized CAV weight)",
}

DEFINITION = (
    "Testing with Concept Activation Vectors (TCAV; Kim et al., 2018), with a significance test whose "
    "false-positive rate is checked by simulation. For each concept (a set of example inputs) and block, a "
    "concept probe (CAV) is fitted by the one probe trainer on the block's features of the concept's examples "
    "against each of n_random random sets. Concept accuracy: the CAVs' accuracy on held-out concept and random "
    "examples (chance 0.5), with a bootstrap interval and random-label controls; a block separates the concept "
    "when the accuracy's lower bound is above the control's upper bound. Directional derivative: the derivative "
    "of the class output (the task's: a class's log-probability, a target's value) along the CAV at the block. "
    "TCAV score: the fraction of the class's inputs with a positive derivative; magnitude: its mean over them. "
    "Significance: the concept's mean statistic over its CAVs against the same statistic of random sets "
    "(random-vs-random CAVs), a two-sided t-test, corrected over concepts x blocks x classes; results that are "
    "not significant are faded, hatched and marked n.s., and are not findings. Known weakness: TCAV flags any "
    "consistent direction, not only a meaningful one. A concept whose examples differ from the random sets in "
    "something the class also differs in (brightness, colour, size) is significant for that class even when the "
    "model never uses what the concept names. So each concept is shown beside a negative control, a concept of "
    "the user's that should not matter or a random one drawn from the random pool: a concept significant where "
    "its control is too may owe it to what they share. Relative TCAV (a CAV of one concept against another) "
    "separates two concepts that share such a confound."
)


def _concepts_parameters() -> dict:
    from ..local.concepts import concepts

    return dict(inspect.signature(concepts).parameters)


def check_concept_options(options) -> dict:
    """``concept_options`` as a dict of keyword arguments of ``HybridInterpreter.concepts``; a clear error otherwise.

    The arguments the report sets itself (:data:`REPORT_SET`) are refused, naming the
    ``build_report`` argument that sets them.
    """
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise TypeError("`concept_options` must be None or a dict of keyword arguments of HybridInterpreter.concepts "
                        f"(e.g. {{'n_random': 20, 'blocks': [...]}}); received {type(options).__name__}.")
    allowed = [p for p in _concepts_parameters() if p not in REPORT_SET and p != "interp"]
    for key in options:
        if key in REPORT_SET:
            raise ValueError(f"`concept_options` sets {key!r}, which the report sets itself: pass "
                             f"build_report(..., {REPORT_SET[key]}=...) instead.")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"`concept_options` has an unknown option {key!r}; HybridInterpreter.concepts takes "
                             f"{allowed}.{hint}")
    return dict(options)


def check_concept_controls(controls, names) -> tuple:
    """``concept_controls`` as a tuple of concept names (empty: None, a random control is drawn)."""
    if controls is None:
        return ()
    chosen = [controls] if isinstance(controls, str) else controls
    if not isinstance(chosen, (list, tuple)) or not all(isinstance(c, str) for c in chosen):
        raise TypeError("`concept_controls` must be None (a random control is drawn), a concept name or a list of "
                        f"them; received {type(controls).__name__}: {controls!r}.")
    if not chosen:
        raise ValueError("`concept_controls` is empty: name the negative controls among `concepts`, or pass None "
                         "for a random control drawn from the random pool.")
    for c in chosen:
        if c not in names:
            raise ValueError(f"`concept_controls` names {c!r}, which is not one of `concepts` {list(names)}.")
    if len(set(chosen)) == len(names):
        raise ValueError(f"`concept_controls` names every concept ({list(chosen)}): a control stands beside a "
                         "concept; leave at least one concept to test.")
    return tuple(dict.fromkeys(chosen))


def _is_array(data) -> bool:
    return isinstance(data, np.ndarray) or (
        isinstance(data, list) and len(data) > 0 and all(isinstance(a, np.ndarray) for a in data))


def random_control(pool, size, seed):
    """``(control, rest, rows)``: ``size`` rows of ``pool`` drawn with ``default_rng([seed, CONTROL_STREAM])``.

    ``rows`` are sorted; ``rest`` is every other row, in order (the pool the
    random sets are drawn from). ``pool`` is an array or a list of arrays (one
    per model input).
    """
    from ..core.data import x_rows, x_take

    n = x_rows(pool)
    rows = np.sort(np.random.default_rng([int(seed), CONTROL_STREAM]).choice(n, size, replace=False))
    rest = np.setdiff1d(np.arange(n), rows)
    return x_take(pool, rows), x_take(pool, rest), rows


@dataclasses.dataclass(frozen=True)
class ConceptsReport:
    """What the Concepts section computed.

    Attributes
    ----------
    result : ConceptResult
        :meth:`HybridInterpreter.concepts` on the report's data.
    controls : tuple of str
        The negative controls among ``result.concepts`` (the user's, or :data:`RANDOM_CONTROL`).
    control_rows : ndarray of int or None
        The random control's rows in the random pool (None for controls of the user's).
    maps : ConceptMaps or None
        The concept maps of the first input (None when ``x`` is not one array, or ``examples=0``).
    """

    result: Any
    controls: tuple
    control_rows: np.ndarray | None = None
    maps: Any = None

    @property
    def tested(self) -> list:
        """The concepts tested beside the controls (neither a control nor a relative pair)."""
        r = self.result
        return [c for c, rel in zip(r.concepts, r.relative) if not rel and c not in self.controls]

    def sets_frame(self) -> pd.DataFrame:
        """One row per concept: ``concept``, ``role``, ``n_examples``, ``first_separable_block``,
        ``significant_results`` (of ``tests``, the (block, class) pairs with a p-value)."""
        r = self.result
        rows = []
        for c, (name, rel) in enumerate(zip(r.concepts, r.relative)):
            role = ("relative pair" if rel else "random control" if name == RANDOM_CONTROL and self.control_rows
                    is not None else "negative control" if name in self.controls else "concept")
            rows.append((name, role, int(r.n_examples[c]), r.first_separable_block(name),
                         int(np.sum(r.significant[c])), int(np.sum(np.isfinite(r.p_values[c])))))
        return pd.DataFrame(rows, columns=["concept", "role", "n_examples", "first_separable_block",
                                           "significant_results", "tests"])


def control_frame(result, controls) -> pd.DataFrame:
    """Each tested concept beside each control, per (block, class), by the result's headline statistic.

    Columns: ``concept``, ``control``, ``block``, ``class``, then the concept's and
    the control's ``tcav_score``, ``tcav_magnitude``, ``p_adjusted`` and
    ``significant`` (the control's prefixed ``control_``), and ``reading``:
    "significant; its control is not", "significant, and so is its control:
    possibly a confound", or "not significant".
    """
    frame = result.to_frame()
    cols = ["tcav_score", "tcav_magnitude", "p_adjusted", "significant"]
    keys = ["block", "class"]
    tested = [c for c, rel in zip(result.concepts, result.relative) if not rel and c not in controls]
    parts = []
    for control in controls:
        ctl = frame[frame["concept"] == control][keys + cols].rename(columns={c: f"control_{c}" for c in cols})
        for concept in tested:
            mine = frame[frame["concept"] == concept][keys + cols]
            both = mine.merge(ctl, on=keys, how="left", sort=False)
            both.insert(0, "control", control)
            both.insert(0, "concept", concept)
            parts.append(both)
    columns = ["concept", "control"] + keys + cols + [f"control_{c}" for c in cols] + ["reading"]
    if not parts:
        return pd.DataFrame({c: [] for c in columns})
    out = pd.concat(parts, ignore_index=True)
    sig, ctl_sig = out["significant"].astype(bool), out["control_significant"].astype(bool)
    out["reading"] = np.where(~sig, "not significant",
                              np.where(ctl_sig, "significant, and so is its control: possibly a confound",
                                       "significant; its control is not"))
    return out[columns]


def control_findings(result, controls, random_control_drawn: bool) -> list[tuple[str, str]]:
    """``("control_significant", message)`` for each control significant for some (block, class)."""
    out = []
    for name in controls:
        c = result.concept_index(name)
        sig = np.argwhere(result.significant[c])
        if not len(sig):
            continue
        where = ", ".join(f"class {result.classes[k]!r} at block {result.blocks[i]!r}" for i, k in sig[:5])
        more = f" (and {len(sig) - 5} more)" if len(sig) > 5 else ""
        if random_control_drawn and name == RANDOM_CONTROL:
            why = (f"a set drawn from the random pool is significant nowhere but by chance (in at most alpha="
                   f"{result.alpha} of reports), so the concepts' significant results at the same block and class "
                   "are less trustworthy: re-run with another random_state, more random inputs or a larger n_random.")
        else:
            why = ("TCAV flags any consistent direction, so the concepts significant at the same block and class may "
                   "owe it to what they share with the control (brightness, colour, size), not to what they name. "
                   "Test them against the control with relative TCAV (concept_options={'relative': [(concept, "
                   f"{name!r})]}}).")
        out.append(("control_significant",
                    f"Negative control {name!r} is significant for {len(sig)} (block, class) pair(s): {where}{more}. "
                    + why))
    return out


def _expected_of_control(caveat, controls) -> bool:
    """Whether ``caveat`` is a control's "separable nowhere" or "significant nowhere": what a control should do."""
    return caveat.kind in ("concept_not_separable", "not_significant") and any(
        caveat.message.startswith(f"Concept {name!r} ") for name in controls)


class ConceptsSection(ReportSection):
    """TCAV with significance on the report's data (``build_report(concepts=...)``); see the module.

    Shown only with ``concepts`` (:func:`~keras_hybrid_interp.report.check_sections` leaves it out
    without them, and refuses ``concepts`` that ``sections=`` would ignore).
    """

    name = "concepts"

    def check(self):
        from ..core.data import x_rows
        from ..local.concepts import check_concepts

        ctx, opts = self.ctx, self.ctx.options
        self.items = check_concepts(opts.concepts)
        names = [n for n, _ in self.items]
        self.kwargs = check_concept_options(opts.concept_options)
        self.controls = check_concept_controls(opts.concept_controls, names)
        self.pool = opts.concept_random
        self.control_rows = None
        if self.controls:
            return
        if RANDOM_CONTROL in names:
            raise ValueError(f"`concepts` has a concept named {RANDOM_CONTROL!r}, the name of the random control the "
                             "report draws: rename it, or name it as the control with "
                             f"concept_controls={RANDOM_CONTROL!r}.")
        pool, source = (ctx.x, "`x`") if self.pool is None else (self.pool, "`concept_random`")
        if not _is_array(pool):
            raise TypeError(
                f"The report draws a random control concept from the random pool, which must then be an array (or a "
                f"list of arrays): {source} is a {type(pool).__name__}. Pass `concept_random` as an array, or name a "
                "negative control of your own among `concepts` with `concept_controls=`."
            )
        if self.pool is None:  # the analysed samples of x: its first max_samples (or steps batches)
            n = x_rows(pool)
            if opts.max_samples is not None:
                n = min(n, int(opts.max_samples))
            if opts.steps is not None:
                n = min(n, int(opts.steps) * int(opts.batch_size))
            pool = [a[:n] for a in pool] if isinstance(pool, list) else pool[:n]
        sizes = [x_rows(d) for _, d in self.items if _is_array(d)]
        size = max(sizes) if sizes else RANDOM_CONTROL_SIZE
        n_pool = x_rows(pool)
        if n_pool < 2 * size:
            raise ValueError(
                f"{source} has {n_pool} inputs: too few to draw a random control concept of {size} and leave random "
                f"sets of that size (at least {2 * size} inputs). Pass more random inputs as `concept_random`, or "
                "name a negative control of your own among `concepts` with `concept_controls=`."
            )
        control, self.pool, self.control_rows = random_control(pool, size, ctx.seed)
        self.items = self.items + [(RANDOM_CONTROL, control)]
        self.controls = (RANDOM_CONTROL,)

    def compute(self):
        from ..core import health as _health

        ctx, opts = self.ctx, self.ctx.options
        ctx.log(f"  concepts: TCAV of {len(self.items)} concept set(s) (their own passes)")
        with _health.collect() as caveats:
            start = len(caveats)
            result = ctx.interp.concepts(
                dict(self.items), ctx.x, ctx.y, random=self.pool, random_state=ctx.seed,
                batch_size=opts.batch_size, max_samples=opts.max_samples, steps=opts.steps,
                bootstrap=opts.bootstrap, confidence=opts.confidence, **self.kwargs)
            caveats[start:] = [c for c in caveats[start:] if not _expected_of_control(c, self.controls)]
            for kind, message in control_findings(result, self.controls, self.control_rows is not None):
                _health.warn(kind, message)
        maps = None
        if opts.examples > 0 and isinstance(ctx.x, np.ndarray) and len(ctx.x):
            from ..local.concepts import concept_maps

            maps = concept_maps(ctx.interp, result, ctx.x[:1])
        return ConceptsReport(result=result, controls=self.controls, control_rows=self.control_rows, maps=maps)

    def render(self, report):
        import matplotlib.pyplot as plt

        from ..plotting.concepts import plot_concept_accuracy, plot_tcav_scores

        if report is None:
            return None
        r = report.result
        C, L, K = len(r.concepts), len(r.blocks), len(r.classes)
        shown = min(K, MAX_CLASS_PANELS)
        fig = plt.figure(figsize=(max(5.0, 0.5 * L * C + 4), 3.6 * shown), layout="constrained")
        axes = np.atleast_1d(fig.subplots(shown, 1))
        for k in range(shown):
            plot_tcav_scores(r, ax=axes[k], class_name=r.classes[k])
        which = "" if shown == K else f" (the first {shown} of {K} classes; every class is in the tables)"
        stat = ("magnitude, in units of the random sets' spread (its mean minus the random mean, over the "
                "standard deviation of random sets' means)" if r.statistic == "magnitude" else "score")
        figures = [
            ("Concept accuracy by depth: held-out accuracy of the concept probes (chance 0.5) with its bootstrap "
             "interval; dotted: the random-label control; a filled marker: the block separates the concept.",
             plot_concept_accuracy(r)),
            (f"TCAV {stat} per block, one panel per class{which}; each concept beside its control "
             f"({', '.join(map(repr, report.controls))}). Solid and starred: significant ({r.correction} "
             f"correction, alpha={r.alpha}); faded, hatched, n.s.: not significant, not a finding. Grey: random "
             "sets, their mean and two standard deviations.", fig),
        ]
        if report.maps is not None:
            figures.append(("Concept maps of the first input: each concept's mean CAV at every position of each "
                            "block (red: the concept's side of its probe's boundary).", report.maps.plot()))
        sets = report.sets_frame()
        lines = [f"Concepts tested: {', '.join(map(repr, report.tested)) or 'none'}; negative control(s): "
                 f"{', '.join(map(repr, report.controls))}"
                 + (f" (a random control of {int(r.n_examples[r.concept_index(RANDOM_CONTROL)])} inputs drawn from "
                    "the random pool)" if report.control_rows is not None else "") + "."]
        n_tests = int(np.isfinite(r.p_values).sum())
        lines.append(f"Settings: {r.features} features, {r.method} CAVs, {r.scores.shape[-1]} random sets, test "
                     f"{r.test!r} on the {r.statistic}, {r.correction} correction over {n_tests} tests, "
                     f"alpha={r.alpha}.")
        separable = r.separable()
        for c, row in enumerate(sets.itertuples(index=False)):
            n_sep, first = int(np.sum(separable[c])), row.first_separable_block
            where = ("separable at no block" if not n_sep else f"separable from block {first!r} on" if first
                     else f"separable at {n_sep} of {L} blocks, not at the deepest")
            lines.append(f"{row.concept!r} ({row.role}): {where}; significant in {row.significant_results} of "
                         f"{row.tests} (block, class) pairs.")
        tables = [(TABLES["sets"], sets), (TABLES["controls"], control_frame(r, report.controls)),
                  (TABLES["accuracy"], r.accuracy_frame()), (TABLES["frame"], r.to_frame()),
                  (TABLES["filters"], r.top_filters(5))]
        return SectionContent("Concepts", DEFINITION + "\n\n" + " ".join(lines), figures=figures, tables=tables,
                              values=concept_values(report))


def concept_values(report: ConceptsReport) -> dict:
    """The numbers the Concepts figures show that no table holds, for the report's record.

    Every CAV's TCAV score and magnitude (``scores``, ``magnitudes``: concept x
    block x class x random set, as :class:`~keras_hybrid_interp.local.concepts.ConceptResult`),
    the random control's rows in the random pool, and the concept maps of the
    first input (per block: concept x positions).
    """
    r = report.result
    values: dict = {"concepts": list(r.concepts), "blocks": list(r.blocks), "classes": [str(c) for c in r.classes],
                    "statistic": r.statistic, "scores": r.scores, "magnitudes": r.magnitudes,
                    "controls": list(report.controls),
                    "random_control_rows": None if report.control_rows is None else report.control_rows}
    if report.maps is not None:
        values["concept_maps"] = {"input": 0, "blocks": list(report.maps.blocks),
                                  "maps": [np.asarray(m) for m in report.maps.maps]}
    return values
