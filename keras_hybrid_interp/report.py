"""Reports for reviewers: one self-contained HTML file, or a folder of figures and tables.

A :class:`Report` is a list of sections, each with a title, an explanatory
text (the definitions of what it shows), figures and tables. Figures are
released from pyplot when they are added (nothing is left open) and rendered
to PNG, SVG or PDF the first time a format is needed (:class:`Rendered`):
the HTML needs PNGs only, so building a report draws nothing and saving it
as HTML never renders a vector format. :func:`build_report` runs the full hybrid
analysis (local and global) and assembles the standard report;
``keras_hybrid_interp.build_report(interp, x, y)`` is the entry point.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import difflib
import html
import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .core.deprecation import renamed
from .report_sections import REPORT_SECTIONS, ReportOptions, build_provenance, build_summary, run_sections
from .report_sections.card import CARD_CSS, card_html, card_rows, check_card
from .report_sections.checks import check_thresholds, evaluate_checks, measure_checks, worst_status
from .report_sections.compare import CHANGES_CSS, changes_of, what_changed
from .report_sections.definitions import DEFINITIONS
from .report_sections.findings import COLLAPSED

__all__ = ["Report", "Section", "build_report", "DEFINITIONS", "REPORT_SECTIONS", "RECORD_SCHEMA", "check_sections",
           "report_schema"]

_FORMATS = ("png", "pdf", "svg")


@dataclasses.dataclass
class Section:
    """One report section: title, explanatory text, figures (rendered bytes) and tables."""

    title: str
    text: str = ""
    figures: list = dataclasses.field(default_factory=list)  # (name, caption, Rendered: {fmt: bytes})
    tables: list = dataclasses.field(default_factory=list)  # (name, caption, DataFrame)
    #: The section's name in ``build_report(sections=...)`` ("" for a section added by hand).
    name: str = ""
    #: Numbers the section shows outside its tables (a correlation matrix, explanations), for the JSON record.
    values: dict = dataclasses.field(default_factory=dict)


def _slug(text: str, max_len: int = 60) -> str:
    """A file-name-safe name; long ones are cut and made unique with a short hash of the text."""
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "item"
    if len(s) > max_len:
        import hashlib

        s = s[:max_len].rstrip("_") + "_" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return s


class Rendered(Mapping):
    """A figure's bytes per format (PNG, PDF, SVG), each rendered the first time it is read.

    Building a report draws nothing: the HTML reads the PNGs when it is
    written, :meth:`Report.save_dir` the formats it writes. Rendering is most
    of a report's fixed cost (about 0.2-2 s per figure and format on a CPU),
    so a report saved as HTML never pays for the SVG and PDF it does not use.
    """

    def __init__(self, fig, dpi=150):
        self._fig = fig
        self._dpi = dpi
        self._bytes: dict = {}

    def __getitem__(self, fmt):
        if fmt not in _FORMATS:
            raise KeyError(fmt)
        if fmt not in self._bytes:
            buf = io.BytesIO()
            # zlib level 3: the same PNG size as the default level 6 on these figures, about 0.3 s less per report
            extra = {"pil_kwargs": {"compress_level": 3}} if fmt == "png" else {}
            self._fig.savefig(buf, format=fmt, dpi=self._dpi, bbox_inches="tight", **extra)
            self._bytes[fmt] = buf.getvalue()
            freeze_layout(self._fig)
        return self._bytes[fmt]

    def __iter__(self):
        return iter(_FORMATS)

    def __len__(self):
        return len(_FORMATS)


def freeze_layout(fig) -> None:
    """Keeps ``fig``'s axes where its layout engine last put them: later renderings skip the layout.

    Constrained layout is a large share of a figure's drawing time (about a
    third of a 22-axes explanation figure's); once a figure has been drawn,
    the PDF, the SVG and the PDF report's embedded copy reuse its positions,
    so every format shows the same layout.
    """
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine("none")


def _render(fig, dpi=150) -> Rendered:
    """``fig``'s bytes per format, rendered when read; the figure is released from pyplot (it stays drawable)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Rendered(fig, dpi)


#: Tables longer than this are collapsed in the HTML report and cut in the PDF.
VISIBLE_ROWS = 25
#: Rows shown above a collapsed table.
PREVIEW_ROWS = 10
#: Tables longer than this are not printed in full in the HTML (a folded copy of every row): the preview and the
#: embedded CSV only. Printing 20,480 rows (ResNet50's filter-class association) took 0.4 s and 3.3 MB of HTML.
FOLDED_ROWS = 2000
#: Lists in the summary longer than this are shown as their length and a link to the table that lists them.
LIST_LIMIT = 10
#: The provenance entries shown without unfolding (the others are one click away).
KEY_PROVENANCE = ("model / name", "model / model_sha256", "data / data_sha256", "samples", "random_state", "seed",
                  "environment / keras_hybrid_interp", "environment / keras", "environment / backend",
                  "environment / backend_version", "environment / numpy", "started", "wall_time_s", "command_line")


def _csv_link(name, table) -> str:
    data = base64.b64encode(table.to_csv(index=False).encode("utf-8")).decode("ascii")
    return (f"<a download='{html.escape(name)}.csv' href='data:text/csv;base64,{data}'>"
            f"Download all {len(table)} rows (CSV)</a>")


def _table_html(number: int, name: str, caption: str, raw: pd.DataFrame) -> list[str]:
    """Table ``number`` of the HTML: its caption, then the table, or a preview, the CSV and a folded full copy.

    A table of more than :data:`VISIBLE_ROWS` rows shows its first
    :data:`PREVIEW_ROWS`, a link to every row as CSV (embedded) and the whole
    table folded under "Show all"; past :data:`FOLDED_ROWS` rows the whole
    table is left to the CSV (and the record).
    """
    parts = [f"<p id='t{number}'><b>Table {number}.</b> {html.escape(caption)}</p>"]
    fmt: Any = {"float_format": lambda v: f"{v:.4g}", "na_rep": "—", "border": 0, "index": False}
    table = _displayed(raw)  # the CSV keeps every column (intervals as two)
    if len(table) <= VISIBLE_ROWS:
        return parts + [table.to_html(**fmt)]
    if len(table) > FOLDED_ROWS:
        return parts + [f"<p>The first {PREVIEW_ROWS} of {len(table)} rows; {_csv_link(name, raw)} (tables over "
                        f"{FOLDED_ROWS:,} rows are not printed in full here; the report's JSON record holds them "
                        "too).</p>", table.head(PREVIEW_ROWS).to_html(**fmt)]
    return parts + [f"<p>The first {PREVIEW_ROWS} of {len(table)} rows; {_csv_link(name, raw)}.</p>",
                    table.head(PREVIEW_ROWS).to_html(**fmt),
                    f"<details><summary>Show all {len(table)} rows</summary>{table.to_html(**fmt)}</details>"]


class Report:
    """A report of the hybrid analysis, savable as one HTML file or a folder.

    Parameters
    ----------
    title : str
    summary : dict, optional
        Key facts (JSON-serializable) shown at the top and saved as
        ``summary.json``.
    model_summary : str, optional
        Text of ``model.summary()``.
    health : list of (kind, message), optional
        Findings that limit the conclusions, shown first.
    check_values : dict, optional
        The value each check measured on this report (see
        :data:`~keras_hybrid_interp.report_sections.checks.CHECKS`); the
        checks' table (:meth:`check_frame`) is shown first. None: no checks.
    provenance : dict, optional
        Where the report comes from (versions, fingerprints of the model and
        the data, arguments, seed, wall time; see
        :func:`~keras_hybrid_interp.report_sections.provenance.build_provenance`),
        shown after the summary and saved in every record. A caller may add
        to it before saving (the command line adds ``command_line``).
    summary_notes : dict, optional
        Per summary key, a note shown with its value: why it is undefined
        (a NaN value is shown as "undefined" and its note), or what an empty
        list means.
    summary_links : dict, optional
        Per summary key, the caption of the table that lists its value in
        full: a list longer than :data:`LIST_LIMIT` is shown as its count and
        a link to that table (or, without the table, folded away).
    card : dict, optional
        The model card: user-given fields (intended use, limitations,
        owners, data, and any other), shown under the title and saved in the
        record (checked by :func:`~keras_hybrid_interp.report_sections.card.check_card`).
    changes : Changes, optional
        With ``compare=``: what the comparison's "what changed" paragraph is
        made of (:func:`~keras_hybrid_interp.report_sections.compare.changes_of`);
        :meth:`what_changed` writes it.
    """

    def __init__(self, title="keras-hybrid-interp report", *, summary=None, model_summary=None, health=None,
                 summary_notes=None, summary_links=None, provenance=None, check_values=None, card=None,
                 changes=None):
        self.title = str(title)
        #: The model card (field -> text, or list of owners), in the order shown.
        self.card = check_card(card)
        self.changes = changes
        self.provenance = dict(provenance or {})
        self.check_values = None if check_values is None else dict(check_values)
        self.thresholds: dict | None = None
        self.summary = dict(summary or {})
        self.summary_notes = {str(k): str(v) for k, v in (summary_notes or {}).items()}
        self.summary_links = {str(k): str(v) for k, v in (summary_links or {}).items()}
        self.model_summary = model_summary
        #: Findings that limit the conclusions: a list of (kind, message), shown first.
        self.health = [(str(k), str(m)) for k, m in (health or [])]
        self.sections: list[Section] = []
        self._figures: dict = {}  # figure name -> matplotlib Figure, for the vector PDF
        self.created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def add_section(self, title, *, text="", figures=(), tables=(), name="", values=None) -> Section:
        """Adds a section.

        ``figures`` is a sequence of ``(caption, matplotlib Figure or Axes)``;
        each figure is released from pyplot and kept, and rendered (PNG, PDF,
        SVG) when a format is first read (:class:`Rendered`): the report shows
        the figure as it is then, so do not draw on it after adding it (add a
        new figure instead). ``tables`` is a sequence of ``(caption, DataFrame)``
        (copied now). ``name`` names the section in the JSON record;
        ``values`` holds the numbers its figures show that no table holds
        (JSON-serializable: numbers, NumPy arrays, lists, dicts), for the record.
        """
        section = Section(str(title), str(text), name=str(name), values=dict(values or {}))
        for caption, fig in figures:
            fig = getattr(fig, "figure", fig)  # an Axes gives its Figure
            if not hasattr(fig, "savefig"):
                raise TypeError(f"figures must be matplotlib Figures or Axes; received {type(fig).__name__}.")
            name = _slug(f"{title}_{caption}")
            section.figures.append((name, str(caption), _render(fig)))
            self._figures[name] = fig
        for caption, table in tables:
            if not isinstance(table, pd.DataFrame):
                raise TypeError(f"tables must be pandas DataFrames; received {type(table).__name__}.")
            section.tables.append((_slug(f"{title}_{caption}"), str(caption), table.copy()))
        self.sections.append(section)
        return section

    # ------------------------------------------------------------------
    def health_frame(self) -> pd.DataFrame:
        """The health findings as a table (``finding``, ``what it means and what to do``)."""
        return pd.DataFrame({"finding": [k for k, _ in self.health],
                             "what it means and what to do": [m for _, m in self.health]})

    @property
    def checks(self) -> list[dict]:
        """Every check's row (check, status, value, warn, fail, worse, findings, measures), worst first in the HTML.

        Statuses follow the thresholds of :meth:`set_thresholds` (default:
        :data:`~keras_hybrid_interp.report_sections.checks.CHECKS`). Empty for a
        report without checks (built by hand).
        """
        if self.check_values is None:
            return []
        return evaluate_checks(self.check_values, [k for k, _ in self.health], self.thresholds)

    def set_thresholds(self, thresholds) -> pd.DataFrame:
        """Overrides the checks' thresholds: ``{check: {"warn": x, "fail": y}}`` (either may be left out).

        Returns the checks' table with the new statuses; the HTML, PDF and JSON
        written afterwards show them. Unknown checks or non-numbers raise a ValueError.
        """
        check_thresholds(thresholds)  # refuses bad ones before storing
        self.thresholds = dict(thresholds or {})
        return self.check_frame()

    def check_frame(self) -> pd.DataFrame:
        """The checks as a table, one row per check."""
        return pd.DataFrame(self.checks, columns=["check", "status", "value", "warn", "fail", "worse", "findings",
                                                  "measures"])

    def worst_status(self) -> str:
        """The worst status of the checks: "pass", "warn" or "fail"."""
        return worst_status(c["status"] for c in self.checks)

    def what_changed(self) -> dict | None:
        """With ``compare=``: the comparison's "what changed" paragraph and its numbers; None without one.

        ``{"text", "models", "blocks", "filters", "filters_skipped", "checks",
        "checks_skipped"}``: every block's CKA to the other model (lowest
        first; the text names the lowest three), the filters whose importance
        changed most, and the checks whose status differs between the two
        models under the current thresholds (:meth:`set_thresholds` applies to
        both); see :mod:`keras_hybrid_interp.report_sections.compare`.
        """
        if self.changes is None:
            return None
        return what_changed(self.changes, self.checks, self.thresholds)

    def _changes_html(self, section) -> str:
        """The "what changed" paragraph that opens the comparison section ("" for the other sections)."""
        changed = self.what_changed() if section.name == "comparison" else None
        return "" if changed is None else f"<p class='changes' id='what-changed'>{html.escape(changed['text'])}</p>"

    def _checks_html(self) -> list[str]:
        if not self.checks:
            return []
        esc = html.escape
        parts = [f"<h2 id='checks'>Checks</h2><p>Each health finding as a check with a threshold: worst status "
                 f"<b class='{self.worst_status()}'>{self.worst_status()}</b>. A check warns or fails when its value "
                 "is above its threshold (or, where lower is worse, at or below it); set_thresholds() and the "
                 "command line's --thresholds override them.</p><table class='checks'><tr><th>check</th><th>status"
                 "</th><th>value</th><th>warn</th><th>fail</th><th style='text-align:left'>what it measures</th></tr>"]
        for c in self.checks:
            cells = [esc(c["check"]), f"<b class='{c['status']}'>{c['status']}</b>"] + [
                "—" if c[k] is None else esc(_fmt(c[k])) for k in ("value", "warn", "fail")]
            side = "at or below" if c["worse"] == "lower" else "above"
            parts.append("<tr>" + "".join(f"<td>{v}</td>" for v in cells)
                         + f"<td style='text-align:left'>{esc(c['measures'])} (fails or warns {side} its threshold)"
                         "</td></tr>")
        return parts + ["</table>"]

    def table_numbers(self) -> dict:
        """``{caption: number}`` of every table, numbered through the report as shown (first of equal captions)."""
        numbers: dict = {}
        for n, caption in enumerate((c for sec in self.sections for _, c, _ in sec.tables), start=1):
            numbers.setdefault(caption, n)
        return numbers

    def summary_rows(self) -> list[tuple[str, str, int | None, str | None]]:
        """The summary as shown: ``(key, text, table number or None, folded list or None)`` per value.

        A NaN value reads "undefined" and its note; an empty list its note; a
        list longer than :data:`LIST_LIMIT` its length, with the number of the
        table that lists it (``summary_links``) or, when no table does, the
        list itself to fold away.
        """
        tables = self.table_numbers()
        rows = []
        for key, value in self.summary.items():
            note = self.summary_notes.get(key)
            number, folded = None, None
            if isinstance(value, float) and not np.isfinite(value):
                text = note or "undefined (NaN)"
            elif isinstance(value, (list, tuple)) and not value:
                text = note or "none"
            elif isinstance(value, (list, tuple, dict)) and len(value) > LIST_LIMIT or isinstance(value, dict):
                number = tables.get(self.summary_links.get(key, ""))
                text = f"{len(value)}" if isinstance(value, (list, tuple)) else "per block"
                folded = None if number is not None else _fmt(value)
            else:
                text = _fmt(value) + (f" ({note})" if note else "")
            rows.append((str(key), text, number, folded))
        return rows

    def _summary_html(self) -> list[str]:
        if not self.summary:
            return []
        esc = html.escape
        parts = ["<h2 id='summary'>Summary</h2><table>"]
        for k, text, number, folded in self.summary_rows():
            cell = esc(text)
            if number is not None:
                cell += f": listed in <a href='#t{number}'>Table {number}</a>"
            elif folded is not None:
                cell = f"<details><summary>{cell}</summary>{esc(folded)}</details>"
            parts.append(f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'>{cell}</td></tr>")
        return parts + ["</table>"]

    def provenance_rows(self) -> list[tuple[str, str]]:
        """The provenance as shown: ``(key, text)``, nested keys joined by " / " (``environment / keras``)."""
        rows = []

        def walk(prefix, value):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix} / {k}" if prefix else str(k), v)
            else:
                rows.append((prefix, "—" if value is None else _fmt(value)))

        walk("", self.provenance)
        return rows

    def _provenance_html(self) -> list[str]:
        if not self.provenance:
            return []
        esc = html.escape
        rows = self.provenance_rows()

        def table(chosen):
            return ("<table class='provenance'>" + "".join(
                f"<tr><th style='text-align:left'>{esc(k)}</th>"
                f"<td style='text-align:left;word-break:break-all'>{esc(text)}</td></tr>" for k, text in chosen)
                + "</table>")

        key = [(k, text) for k, text in rows if k in KEY_PROVENANCE]
        return ["<h2 id='provenance'>Provenance</h2><p>What this report describes and how to re-run it: the versions, "
                "SHA-256 fingerprints of the model (architecture and weights) and of the analysed data (samples in "
                "stream order, and labels), every argument and the seed.</p>", table(key),
                f"<details class='provenance'><summary>All {len(rows)} entries (every argument, the interpreter, "
                f"each fingerprint)</summary>{table(rows)}</details>"]

    def to_html(self) -> str:
        """The whole report as one self-contained HTML document (images and CSVs embedded)."""
        esc = html.escape
        parts = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
            "max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
            "h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}"
            "table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0 1.5em;max-width:100%}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;overflow-wrap:anywhere}"
            "th{background:#f2f2f2}"
            "figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}img{max-width:100%}"
            ".def{background:#f7f7fb;border-left:4px solid #7a7ab8;padding:0.5em 1em}"
            ".health li{margin:0.4em 0}.ok{color:#2d6a2d}.warn{border-left:4px solid #c0392b;padding-left:0.8em}"
            "details{margin:0.3em 0 1.5em}summary{cursor:pointer;color:#1f4e9c}"
            "pre{background:#f5f5f5;padding:1em;overflow-x:auto;font-size:0.8em}" + CARD_CSS + CHANGES_CSS
            + "</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            f"<p>Created {esc(self.created)} with keras-hybrid-interp.</p>",
            card_html(self.card),  # the model card, under the title (no h2: the check table is the first section)
        ]
        parts += self._checks_html()
        parts.append("<h2 id='health'>Health</h2>")
        if self.health:
            parts.append(f"<div class='warn'><p>{len(self.health)} finding(s) limit the conclusions of this "
                         "report. Each says what to do about it.</p><ul class='health'>")
            tables = self.table_numbers()
            for kind, msg in self.health:
                text = esc(msg)
                for caption, number in tables.items():  # a finding that names a table links to it
                    named = esc(f"table '{caption}'")
                    text = text.replace(named, f"<a href='#t{number}'>{named} (Table {number})</a>")
                parts.append(f"<li><b>{esc(kind.replace('_', ' '))}</b>: {text}</li>")
            parts.append("</ul></div>")
        else:
            parts.append("<p class='ok'>The analyses found nothing that limits their conclusions.</p>")
        parts.append("<h2 id='contents'>Contents</h2><ol>" + ("<li><a href='#checks'>Checks</a></li>" if self.checks
                                                                 else "") + "<li><a href='#health'>Health</a></li>")
        if self.summary:
            parts.append("<li><a href='#summary'>Summary</a></li>")
        if self.provenance:
            parts.append("<li><a href='#provenance'>Provenance</a></li>")
        for i, sec in enumerate(self.sections):
            parts.append(f"<li><a href='#s{i}'>{esc(sec.title)}</a></li>")
        if self.model_summary:
            parts.append("<li><a href='#model'>Model summary</a></li>")
        parts.append("</ol>")
        parts += self._summary_html() + self._provenance_html()
        n_fig = n_tab = 0
        for i, sec in enumerate(self.sections):
            parts.append(f"<h2 id='s{i}'>{esc(sec.title)}</h2>" + self._changes_html(sec))
            if sec.text:
                parts.append(f"<p class='def'>{esc(sec.text)}</p>")
            for _, caption, data in sec.figures:
                n_fig += 1
                b64 = base64.b64encode(data["png"]).decode("ascii")
                parts.append(
                    f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{b64}'>"
                    f"<figcaption><b>Figure {n_fig}.</b> {esc(caption)}</figcaption></figure>"
                )
            for name, caption, table in sec.tables:
                n_tab += 1
                parts += _table_html(n_tab, name, caption, table)
        if self.model_summary:
            parts.append(f"<h2 id='model'>Model summary</h2><pre>{esc(self.model_summary)}</pre>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def to_record(self) -> dict:
        """Every number of every section, the health findings, the summary and the provenance, as JSON data.

        The record follows the JSON Schema :func:`report_schema` (``schema``:
        ``"keras-hybrid-interp/report/1"``): each table in full (``columns``
        and ``rows``), each section's other numbers (``values``), undefined
        numbers as null. :meth:`save` writes it to a ``.json`` file.
        """
        sections = [{"name": s.name, "title": s.title, "text": s.text,
                     "figures": [{"name": n, "caption": c} for n, c, _ in s.figures],
                     "tables": [_table_record(n, c, t) for n, c, t in s.tables], "values": s.values}
                    for s in self.sections]
        changed = self.what_changed()
        return _jsonable({"schema": RECORD_SCHEMA, "title": self.title, "created": self.created,
                          "card": self.card, "provenance": self.provenance, "checks": self.checks,
                          "health": [{"finding": k, "message": m} for k, m in self.health],
                          "summary": {"values": self.summary, "notes": self.summary_notes},
                          **({} if changed is None else {"what_changed": changed}),
                          "sections": sections, "model_summary": self.model_summary})

    def save(self, path, *, page_size=None) -> str:
        """Writes the report: one self-contained HTML file (``.html``), a PDF (``.pdf``) or its record (``.json``).

        Returns the path. The PDF holds the same sections on pages of one
        size, ``page_size`` ("a4", the default, or "letter"; a PDF's only):
        text and tables flow from page to page, each figure stays vector and
        on one page with its caption, scaled down (keeping its aspect) to fit
        the page. Tables longer than 25 rows show their first rows, and every
        table is written in full as a CSV beside the file
        (``<name>.<table>.csv``, the README lists them). The JSON file is
        :meth:`to_record`: every number, the health findings and the
        provenance, following the schema :func:`report_schema`.
        """
        from .report_sections.pdf import check_page_size

        path = os.fspath(path)
        if not path.lower().endswith((".html", ".htm", ".pdf", ".json")):
            raise ValueError(f"`path` must end in .html, .pdf or .json; received {path!r}. Use save_dir() for a "
                             "folder.")
        if page_size is not None and not path.lower().endswith(".pdf"):
            raise ValueError(f"`page_size` applies to a PDF; received page_size={page_size!r} for {path!r}, which "
                             "has no pages. Leave it out, or save to a .pdf.")
        page_size = check_page_size("a4" if page_size is None else page_size)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if path.lower().endswith(".pdf"):
            self._save_pdf(path, page_size)
            return path
        if path.lower().endswith(".json"):
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(self.to_record(), fh, indent=1, allow_nan=False)
            return path
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_html())
        return path

    def _save_pdf(self, path, page_size):
        from .report_sections import pdf

        def table(caption, frame: pd.DataFrame, csv_name):
            shown = _displayed(frame).head(VISIBLE_ROWS)
            note = (f" (the first {VISIBLE_ROWS} of {len(frame)} rows; all in {os.path.basename(csv_name)})"
                    if len(frame) > VISIBLE_ROWS else f" (also in {os.path.basename(csv_name)})")
            return pdf.Table(caption + note, [str(c) for c in shown.columns],
                             [["—" if _cell(v) is None else _fmt(v) for v in row]
                              for row in shown.itertuples(index=False, name=None)])

        stem = os.path.splitext(path)[0]
        blocks: list = [pdf.Heading(self.title, level=0),
                        pdf.Paragraph(f"Created {self.created} with keras-hybrid-interp.")]
        if self.card:
            blocks += [pdf.Heading("Model card", level=2),
                       pdf.Table(None, None, [list(row) for row in card_rows(self.card)], wrap=1, size=8.0)]
        if self.checks:
            blocks += [pdf.Heading("Checks", anchor="checks"),
                       pdf.Paragraph(f"Each health finding as a check with a threshold: worst status "
                                     f"{self.worst_status()}. A check warns or fails when its value is above its "
                                     "threshold (or, where lower is worse, at or below it); set_thresholds() and the "
                                     "command line's --thresholds override them."),
                       pdf.Table(None, ["check", "status", "value", "warn", "fail", "what it measures"],
                                 [[c["check"], c["status"]] + [_fmt_none(c[k]) for k in ("value", "warn", "fail")]
                                  + [f"{c['measures']} (fails or warns "
                                     f"{'at or below' if c['worse'] == 'lower' else 'above'} its threshold)"]
                                  for c in self.checks], wrap=5)]
        blocks.append(pdf.Heading("Health", anchor="health"))
        blocks += ([pdf.Paragraph(f"{len(self.health)} finding(s) limit the conclusions of this report. Each says "
                                  "what to do about it.")]
                   + [pdf.Paragraph(f"• {k.replace('_', ' ')}: {m}") for k, m in self.health] if self.health
                   else [pdf.Paragraph("The analyses found nothing that limits their conclusions.")])
        contents = pdf.Table(None, None, [], size=8.5)
        blocks += [pdf.Heading("Contents"), contents]
        if self.summary:
            blocks += [pdf.Heading("Summary", anchor="summary"),
                       pdf.Table(None, None, [[k, text + (f": listed in Table {number}" if number is not None else "")
                                               + (f": {folded}" if folded is not None else "")]
                                              for k, text, number, folded in self.summary_rows()], wrap=1, size=8.0)]
        if self.provenance:
            blocks += [pdf.Heading("Provenance", anchor="provenance"),
                       pdf.Paragraph("What this report describes and how to re-run it: the versions, SHA-256 "
                                     "fingerprints of the model (architecture and weights) and of the analysed data "
                                     "(samples in stream order, and labels), every argument and the seed."),
                       pdf.Table(None, None, [list(row) for row in self.provenance_rows()], wrap=1)]
        n_fig = n_tab = 0
        changed = self.what_changed()
        for i, sec in enumerate(self.sections):
            blocks.append(pdf.Heading(sec.title, anchor=f"s{i}"))
            if changed is not None and sec.name == "comparison":
                blocks.append(pdf.Paragraph(changed["text"]))
            if sec.text:
                blocks.append(pdf.Paragraph(sec.text, color="#333366"))
            for name, caption, _ in sec.figures:
                n_fig += 1
                fig = self._figures.get(name)
                if fig is not None:
                    blocks.append(pdf.Figure(f"Figure {n_fig}. {caption}", fig))
            for name, caption, frame in sec.tables:
                n_tab += 1
                csv_name = f"{stem}.{name}.csv"
                frame.to_csv(csv_name, index=False)
                blocks.append(table(f"Table {n_tab}. {caption}", frame, csv_name))
        if self.model_summary:
            blocks += [pdf.Heading("Model summary", anchor="model"),
                       pdf.Preformatted(pdf.compress_box_table(self.model_summary.splitlines()))]
        contents.rows = [[label, anchor] for label, anchor in
                         ([("Checks", "checks")] if self.checks else []) + [("Health", "health")]
                         + ([("Summary", "summary")] if self.summary else [])
                         + ([("Provenance", "provenance")] if self.provenance else [])
                         + [(f"{i + 1}. {sec.title}", f"s{i}") for i, sec in enumerate(self.sections)]
                         + ([("Model summary", "model")] if self.model_summary else [])]
        pdf.write_pdf(path, blocks, page_size=page_size, title=self.title, contents=contents)

    def save_dir(self, directory, formats=_FORMATS) -> list[str]:
        """Writes each figure in each format, each table as CSV, and ``summary.json``.

        Returns the written paths.
        """
        formats = (formats,) if isinstance(formats, str) else tuple(formats)
        bad = [f for f in formats if f not in _FORMATS]
        if bad or not formats:
            raise ValueError(f"`formats` must be a subset of {_FORMATS}; received {formats!r}.")
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        written = []
        index: dict[str, Any] = {"title": self.title, "created": self.created, "card": self.card,
                                 "what_changed": self.what_changed(), "summary": self.summary,
                                 "summary_notes": self.summary_notes, "provenance": self.provenance,
                                 "checks": self.checks,
                                 "health": [{"finding": k, "message": m} for k, m in self.health], "sections": []}
        for s in self.sections:
            entry: dict[str, Any] = {"title": s.title, "text": s.text, "figures": [], "tables": []}
            for name, caption, data in s.figures:
                for fmt in formats:
                    p = os.path.join(directory, f"{name}.{fmt}")
                    with open(p, "wb") as fh:
                        fh.write(data[fmt])
                    written.append(p)
                entry["figures"].append({"name": name, "caption": caption})
            for name, caption, table in s.tables:
                p = os.path.join(directory, f"{name}.csv")
                table.to_csv(p, index=False)
                written.append(p)
                entry["tables"].append({"name": name, "caption": caption, "file": f"{name}.csv"})
            index["sections"].append(entry)
        p = os.path.join(directory, "summary.json")
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(_jsonable(index), fh, indent=2)
        written.append(p)
        if self.model_summary:
            p = os.path.join(directory, "model_summary.txt")
            with open(p, "w", encoding="utf-8") as fh:
                fh.write(self.model_summary)
            written.append(p)
        return written

    def __repr__(self):
        return f"Report({self.title!r}, sections={[s.title for s in self.sections]})"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


#: The name and version of the JSON Schema that :meth:`Report.to_record` follows.
RECORD_SCHEMA = "keras-hybrid-interp/report/1"


def report_schema() -> dict:
    """The JSON Schema of the report record (:meth:`Report.to_record`), shipped in the package."""
    import pathlib

    path = pathlib.Path(__file__).resolve().parent / "schemas" / "report.schema.json"
    return json.loads(path.read_text("utf-8"))


def _cell(v):
    """One table value as JSON: None where undefined, Python scalars, text for anything else."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, (bool, int, str)):
        return v
    return str(v)


def _displayed(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as the HTML prints it.

    Nullable columns (``Int64``) become objects, so their missing values read
    "—". Each interval is one column: a value column ``m`` with ``m_low`` and
    ``m_high`` reads ``"0.99 [0.98, 1.00]"`` under the header ``"m [interval]"``,
    and a lone ``m_low``/``m_high`` pair (``ci_low``, ``ci_high``) reads
    ``"[0.98, 1.00]"`` under ``"m"`` (:func:`format_interval`). The record and the
    CSV files keep the three columns.
    """
    columns = [str(c) for c in table.columns]
    pairs = [c[:-4] for c in columns if c.endswith("_low") and f"{c[:-4]}_high" in columns]
    nullable = [c for c in table.columns if pd.api.types.is_extension_array_dtype(table[c].dtype)
                and table[c].isna().any()]
    if not nullable and not pairs:
        return table
    table = table.copy()
    for c in nullable:
        table[c] = table[c].astype(object).where(table[c].notna(), np.nan)
    for m in pairs:
        low, high = table[f"{m}_low"].to_numpy(dtype=float), table[f"{m}_high"].to_numpy(dtype=float)
        if m in columns:
            values = table[m].to_numpy(dtype=float)
            table[m] = [format_interval(v, lo, hi) for v, lo, hi in zip(values, low, high)]
            table = table.rename(columns={m: f"{m} [interval]"})
        else:
            where = columns.index(f"{m}_low")
            table.insert(where, m, [format_interval(None, lo, hi) for lo, hi in zip(low, high)])
        table = table.drop(columns=[f"{m}_low", f"{m}_high"])
    return table


def format_interval(value, low, high) -> str:
    """``"0.99 [0.98, 1.00]"``: a value and its interval, to the decimals the interval's width calls for.

    The decimals show the width's first significant digit, at least 2 and at
    most 6 (``0.991 [0.987, 0.995]`` for a width of 0.008). Without a
    finite positive width (one repeat, a degenerate interval) every number
    reads with 4 significant digits; a missing bound leaves the value alone,
    a missing value reads "—". ``value=None``: the interval alone.
    """
    def undefined(v):
        return v is None or not np.isfinite(v)

    width = high - low if not (undefined(low) or undefined(high)) else np.nan
    if np.isfinite(width) and width > 0:
        decimals = int(min(6, max(2, np.ceil(-np.log10(width)))))

        def fmt(v):
            return "—" if undefined(v) else f"{v:.{decimals}f}"
    else:
        def fmt(v):
            return "—" if undefined(v) else f"{v:.4g}"
    bounds = "" if undefined(low) or undefined(high) else f"[{fmt(low)}, {fmt(high)}]"
    if value is None:
        return bounds or "—"
    return f"{fmt(value)} {bounds}".rstrip()


def _table_record(name, caption, table) -> dict:
    return {"name": name, "caption": caption, "columns": [str(c) for c in table.columns],
            "rows": [[_cell(v) for v in row] for row in table.itertuples(index=False, name=None)]}


def _fmt_none(v) -> str:
    return "—" if v is None else _fmt(v)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def model_summary_text(model, width=250) -> str:
    """``model.summary()`` as text, complete: no column is cut at the terminal's width.

    Keras draws the summary with rich, which wraps at the console width
    (``COLUMNS``, else 80 when not printing to a terminal); it is set to
    ``width`` while the summary is drawn.
    """
    lines = []
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        model.summary(print_fn=lambda line, *a, **k: lines.append(line), line_length=width)
    except (TypeError, ValueError):  # pragma: no cover - very old / exotic models
        return f"{model.name}: {model.count_params()} parameters"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(lines)


@renamed(importance_repeats="n_repeats", atlas_k="top_k")
def build_report(
    interp,
    x,
    y=None,
    *,
    block=None,
    examples=2,
    n_repeats=3,
    max_samples=512,
    steps=None,
    batch_size=64,
    random_state=None,
    controls=None,
    bootstrap=1000,
    confidence=0.95,
    title=None,
    verbose=0,
    atlas_filters=4,
    top_k=6,
    compare=None,
    compare_blocks=None,
    sections=None,
    history=None,
    card=None,
    concepts=None,
    concept_random=None,
    concept_controls=None,
    concept_options=None,
) -> Report:
    """Runs the full hybrid analysis and assembles the standard report.

    Every section is computed from **one pass** of the data through the
    model (:mod:`keras_hybrid_interp.core.data_pass`): the layer table, the local
    explanations, filter correlation, filter-class association, layer
    similarity and the cache of the filter-importance engine all read the
    same samples once. Permutation importance then re-runs only the model's
    tail on that cache.

    Parameters
    ----------
    interp : HybridInterpreter
        With fitted probes.
    x, y : evaluation data (arrays, tf.data or PyDataset) and optional labels.
    block : str, optional
        Block for the filter-level analyses; default: the deepest block.
    examples : int
        Number of inputs (the first ones) given a local explanation.
    n_repeats : int
        Permutation repeats of the filter importance. Formerly
        ``importance_repeats`` (deprecated, removed in 0.2).
    max_samples, steps : int, optional
        The report analyses the first ``max_samples`` samples (or ``steps``
        batches) of ``x``; None: all.
    random_state : None, int, Generator or SeedSequence
        Seeds the permutations and the bootstrap, as in the analyses (None:
        fresh entropy; pass an int for a report that is the same at every run).
    atlas_filters, top_k : int
        The filter atlas shows the ``top_k`` top-activating crops of the
        ``atlas_filters`` most important filters (0: no atlas). The pass keeps
        the ``top_k`` of every filter of the block (the ranking is known
        only after it); crops are skipped, with a health note, when they
        would take more than 256 MiB.
    controls : int, optional
        Control probes per block in the layer table (see
        :meth:`HybridInterpreter.evaluate_layers`); None: all that
        ``fit_probes(..., controls=n)`` fitted (none if it fitted none).
        Needs labels; without them no controls are shown.
    bootstrap, confidence : int, float
        Bootstrap resamples and level of the layer table's intervals (0: none).
    compare : keras.Model, GlobalAnalyzer or HybridInterpreter, optional
        Another model to compare with (the same model before fine-tuning,
        another seed): the report gains a section with the CKA between this
        model's blocks and ``compare``'s (``compare_blocks``, default its
        automatic blocks), computed in the same pass (see
        :meth:`GlobalAnalyzer.layer_similarity` with ``other=``). ``compare``
        is read in inference mode and never changed.
    sections : list of str, optional
        The sections to compute and show, from :data:`REPORT_SECTIONS`
        (``"blocks"``, ``"layers"``, ``"explanations"``, ``"correlation"``,
        ``"association"``, ``"importance"``, ``"atlas"``, ``"similarity"``,
        ``"comparison"``); None: all that apply. A section left out adds no
        work of its own (no CKA accumulator, no importance cache, no tail
        passes; the probes' scores, which give the summary's accuracy, and the
        block's dead filters are computed in the one pass anyway), so this is
        also how to make a report cheaper: e.g.
        ``sections=[s for s in REPORT_SECTIONS if s != "similarity"]``.
        ``"atlas"`` shows the most important filters and needs
        ``"importance"``; ``"comparison"`` needs ``compare``, and a ``compare``
        with ``sections`` that leave it out is refused. The summary
        and the health section are always there.
    history : pandas.DataFrame, optional
        :attr:`InterpretationCallback.history <keras_hybrid_interp.InterpretationCallback.history>`
        (or :meth:`~keras_hybrid_interp.InterpretationCallback.load_history` of its ``log_path``):
        adds the ``"training"`` section, the probe metric by block, the dead
        filters and the importance over the epochs, with health findings for a
        block whose probe fell late in training and for filters that died
        during training (:mod:`keras_hybrid_interp.report_sections.training`).
    concepts : dict of str -> examples, optional
        Named sets of examples of human concepts (arrays, ``tf.data`` or
        PyDataset of inputs, at least 10 each), as in
        :meth:`HybridInterpreter.concepts`: adds the ``"concepts"`` section,
        TCAV with significance on the report's ``x`` and ``y`` (its samples,
        seed, ``bootstrap`` and ``confidence``): the concept accuracy by depth,
        the TCAV scores with significance marks, each concept beside a negative
        control, and health findings for too few examples, a concept separable
        at no block, a concept significant nowhere and a control that is
        significant (:mod:`keras_hybrid_interp.report_sections.concepts`).
    concept_random : array, tf.data or PyDataset, optional
        The pool the random sets are drawn from (``HybridInterpreter.concepts``'
        ``random``); None: the analysed ``x``.
    concept_controls : str or list of str, optional
        The negative controls among ``concepts`` (concepts that should not
        matter), shown beside each concept; None: a random control concept is
        drawn from the random pool (which must then be an array).
    concept_options : dict, optional
        Other keyword arguments of :meth:`HybridInterpreter.concepts`
        (``n_random``, ``blocks``, ``classes``, ``statistic``, ``features``,
        ``method``, ``test``, ``correction``, ``alpha``, ``relative``, ...);
        those the report sets itself (``random_state``, ``batch_size``,
        ``max_samples``, ``steps``, ``bootstrap``, ``confidence``) are refused.
    card : dict of str -> str, optional
        The model card: user-given fields shown under the report's title and
        stored in its record (``card``) and provenance (``arguments``). The
        known fields ``intended_use``, ``limitations``, ``owners`` (a str or a
        list of str) and ``data`` (a description of the data) come first, in
        that order; any other field follows, in the order given, under its own
        name. Values are kept exactly as given (and escaped in the HTML).
        Anything but a mapping of non-empty str keys to str values is refused
        (:func:`~keras_hybrid_interp.report_sections.card.check_card`).

    Notes
    -----
    With ``compare=``, the comparison section opens with a "what changed"
    paragraph (:meth:`Report.what_changed`, the record's ``what_changed``):
    the blocks least alike between the two models, the filters whose
    importance changed most and the checks that changed status
    (:mod:`keras_hybrid_interp.report_sections.compare`).

    The first section, "Health", lists every caveat the analyses found
    (dead filters, missing classes, input drift, ...), each once.
    """
    import time

    from .core import health as _health

    started, started_utc = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    check_interpreter(interp)
    card = check_card(card)
    want = check_sections(sections, compare is not None, history is not None, concepts is not None)
    if concepts is None:
        extra = [n for n, v in (("concept_random", concept_random), ("concept_controls", concept_controls),
                                ("concept_options", concept_options)) if v is not None]
        if extra:
            raise ValueError(f"`{extra[0]}` is given but `concepts` is None: pass the concepts' examples as "
                             f"`concepts={{name: examples}}`, or drop `{extra[0]}`.")
    if compare is None and compare_blocks is not None:
        raise ValueError("`compare_blocks` is given but `compare` is None: pass the other model as `compare=` "
                         "(its blocks are then `compare_blocks`), or drop `compare_blocks`.")
    options = ReportOptions(block=block, examples=examples, n_repeats=n_repeats,
                            max_samples=max_samples, steps=steps, batch_size=batch_size, random_state=random_state,
                            controls=controls, bootstrap=bootstrap, confidence=confidence, title=title,
                            verbose=verbose, atlas_filters=atlas_filters, top_k=top_k, compare=compare,
                            compare_blocks=compare_blocks, sections=sections, history=history,
                            concepts=concepts, concept_random=concept_random, concept_controls=concept_controls,
                            concept_options=concept_options, card=card)
    with _health.collect() as caveats:
        ctx, parts = run_sections(interp, x, y, options, want)
    provenance = build_provenance(ctx, x, y, started, started_utc)
    model = interp.wrapped_model
    summary = build_summary(ctx, REPORT_SECTIONS)
    health = sorted(caveats, key=lambda c: c.kind != COLLAPSED)  # a collapsed model first: it voids the rest
    report = Report(title or f"Hybrid interpretation of {model.name}", summary=summary.values,
                    summary_notes=summary.notes, summary_links=summary.links,
                    model_summary=model_summary_text(model), health=[(c.kind, c.message) for c in health],
                    provenance=provenance, check_values=measure_checks(ctx, parts), card=card,
                    changes=changes_of(ctx, parts))
    for part in parts:
        content = part.render(ctx.results[part.name]) if part.shown else None
        if content is not None:
            report.add_section(content.title, text=content.text, figures=content.figures, tables=content.tables,
                               name=part.name, values=content.values)
    return report


def check_interpreter(interp) -> None:
    """A clear error unless ``interp`` is a :class:`HybridInterpreter` with fitted probes."""
    import keras

    from .local.interpreter import HybridInterpreter

    if not isinstance(interp, HybridInterpreter):
        what = (f"{type(interp).__name__} (a Keras model)" if isinstance(interp, keras.Model)
                else type(interp).__name__)
        raise TypeError(f"`interp` must be a HybridInterpreter with fitted probes; received {what}. Wrap the model "
                        "and fit its probes first: interp = HybridInterpreter(model).fit_probes(x_train, y_train); "
                        "then build_report(interp, x, y).")
    interp._require_fitted()


def check_sections(sections, has_compare: bool, has_history: bool = False, has_concepts: bool = False) -> set:
    """The set of sections ``build_report(sections=...)`` computes; a clear error for a bad request."""
    if sections is None:
        return set(REPORT_SECTIONS) - (set() if has_compare else {"comparison"}) - (
            set() if has_history else {"training"}) - (set() if has_concepts else {"concepts"})
    if isinstance(sections, str) or not isinstance(sections, (list, tuple, set, frozenset)):
        raise TypeError(f"`sections` must be None or a list of section names from {list(REPORT_SECTIONS)}; "
                        f"received {type(sections).__name__}: {sections!r}.")
    want = set()
    for name in sections:
        if not isinstance(name, str) or name not in REPORT_SECTIONS:
            close = difflib.get_close_matches(str(name), REPORT_SECTIONS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"`sections` has an unknown section {name!r}; available: {list(REPORT_SECTIONS)}.{hint}")
        want.add(name)
    if not want:
        raise ValueError(f"`sections` is empty; pass None for every section or some of {list(REPORT_SECTIONS)}.")
    if "atlas" in want and "importance" not in want:
        raise ValueError("`sections` has 'atlas' without 'importance': the atlas shows the most important filters, "
                         "so it needs the importance section. Add 'importance', or draw chosen filters with "
                         "GlobalAnalyzer(interp).filter_examples(x, block=..., filters=[...]).")
    if "comparison" in want and not has_compare:
        raise ValueError("`sections` has 'comparison' but `compare` is None: pass the other model as `compare=`.")
    if has_compare and "comparison" not in want:
        raise ValueError("`compare` is given but `sections` leaves out 'comparison', so the other model would be "
                         "ignored: add 'comparison' to `sections`, or drop `compare`.")
    if "training" in want and not has_history:
        raise ValueError("`sections` has 'training' but `history` is None: pass the callback's history as "
                         "`history=cb.history` (or InterpretationCallback.load_history(path)).")
    if has_history and "training" not in want:
        raise ValueError("`history` is given but `sections` leaves out 'training', so it would be ignored: add "
                         "'training' to `sections`, or drop `history`.")
    if "concepts" in want and not has_concepts:
        raise ValueError("`sections` has 'concepts' but `concepts` is None: pass the concepts' examples as "
                         "`concepts={name: examples}`.")
    if has_concepts and "concepts" not in want:
        raise ValueError("`concepts` is given but `sections` leaves out 'concepts', so they would be ignored: add "
                         "'concepts' to `sections`, or drop `concepts`.")
    return want
