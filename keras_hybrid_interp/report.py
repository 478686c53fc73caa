"""Reports for reviewers: one self-contained HTML file, or a folder of figures and tables.

A :class:`Report` is a list of sections, each with a title, an explanatory
text (the definitions of what it shows), figures and tables. Figures are
rendered to PNG, SVG and PDF when they are added, then closed, so a report
holds bytes and DataFrames only. :func:`build_report` runs the full hybrid
analysis (local and global) and assembles the standard report;
``HybridInterpreter.report(x, y)`` calls it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import io
import json
import os
import re

import numpy as np
import pandas as pd

__all__ = ["Report", "Section", "build_report", "DEFINITIONS"]

_FORMATS = ("png", "pdf", "svg")

#: The definitions printed in reports (the README states the same).
DEFINITIONS = {
    "blocks": (
        "A block end is a 4-D feature map (height x width x channels). Automatic discovery keeps "
        "the cut points of the graph (tensors every input-to-output path passes through) that "
        "follow a convolution and are pooling outputs, close a multi-path region (Add, Concatenate, "
        "Multiply, or an operator such as x + y), or are the last feature map; each extends to the "
        "deepest cut point before the next convolution. Depth is the layer's position in the "
        "flattened graph."
    ),
    "layer_table": (
        "One linear softmax probe per block reads the block's globally pooled output. accuracy: "
        "fraction of samples whose probe top class equals the label. loss: mean cross-entropy "
        "against the labels (or the model's own distribution without labels). agreement: fraction "
        "whose probe top class equals the model's. chance: frequency of the most common label. "
        "The last row is the model itself."
    ),
    "local": (
        "For one input: the probabilities each block's probe assigns to each class; the decision "
        "depth, the first block from which the probe's top class equals the model's class and "
        "stays equal; and class-evidence maps, the probe applied at every spatial position "
        "(for average pooling the mean of a map over positions is exactly the probe's logit)."
    ),
    "correlation": (
        "Each filter is summarized per sample by the spatial mean of its feature map; the matrix "
        "is the Pearson correlation of these summaries across samples, accumulated in one "
        "streaming pass in float64. Dead filters (constant over the data) have no correlation "
        "(NaN, hatched) and are listed. Redundancy is the mean |r| over pairs of live filters."
    ),
    "association": (
        "Point-biserial correlation between each filter's per-sample spatial mean and the "
        "indicator of each class: positive when the filter responds more strongly on that class "
        "than on the others. NaN for dead filters and for classes absent from the data."
    ),
    "importance": (
        "Permutation importance: the score (accuracy against the labels, or agreement with the "
        "model's own predictions without labels) on the unperturbed data minus the score after "
        "shuffling one filter's whole feature map across samples, leaving the other filters "
        "intact; repeated with different permutations (mean and standard deviation shown). "
        "Positive means the model relies on the filter."
    ),
    "similarity": (
        "Linear CKA (Kornblith et al., 2019) between the blocks' per-sample spatially averaged "
        "features: 1 means the two representations are the same up to rotation and scale, "
        "0 means unrelated."
    ),
}


@dataclasses.dataclass
class Section:
    """One report section: title, explanatory text, figures (rendered bytes) and tables."""

    title: str
    text: str = ""
    figures: list = dataclasses.field(default_factory=list)  # (name, caption, {fmt: bytes})
    tables: list = dataclasses.field(default_factory=list)  # (name, caption, DataFrame)


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s or "item"


def _render(fig, dpi=150) -> dict:
    import matplotlib.pyplot as plt

    out = {}
    for fmt in _FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out


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
    """

    def __init__(self, title="keras-hybrid-interp report", *, summary=None, model_summary=None):
        self.title = str(title)
        self.summary = dict(summary or {})
        self.model_summary = model_summary
        self.sections: list[Section] = []
        self.created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def add_section(self, title, *, text="", figures=(), tables=()) -> Section:
        """Adds a section.

        ``figures`` is a sequence of ``(caption, matplotlib Figure or Axes)``
        (rendered now and closed); ``tables`` a sequence of
        ``(caption, DataFrame)``.
        """
        section = Section(str(title), str(text))
        for caption, fig in figures:
            fig = getattr(fig, "figure", fig)  # an Axes gives its Figure
            if not hasattr(fig, "savefig"):
                raise TypeError(f"figures must be matplotlib Figures or Axes; received {type(fig).__name__}.")
            section.figures.append((_slug(f"{title}_{caption}"), str(caption), _render(fig)))
        for caption, table in tables:
            if not isinstance(table, pd.DataFrame):
                raise TypeError(f"tables must be pandas DataFrames; received {type(table).__name__}.")
            section.tables.append((_slug(f"{title}_{caption}"), str(caption), table.copy()))
        self.sections.append(section)
        return section

    # ------------------------------------------------------------------
    def to_html(self) -> str:
        """The whole report as one self-contained HTML document (images embedded)."""
        esc = html.escape
        parts = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
            "max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
            "h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}"
            "table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0 1.5em}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
            "figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}img{max-width:100%}"
            ".def{background:#f7f7fb;border-left:4px solid #7a7ab8;padding:0.5em 1em}"
            "pre{background:#f5f5f5;padding:1em;overflow-x:auto;font-size:0.8em}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            f"<p>Created {esc(self.created)} with keras-hybrid-interp.</p>",
        ]
        if self.summary:
            parts.append("<h2>Summary</h2><table>")
            for k, v in self.summary.items():
                parts.append(f"<tr><th style='text-align:left'>{esc(str(k))}</th><td style='text-align:left'>{esc(_fmt(v))}</td></tr>")
            parts.append("</table>")
        parts.append("<h2>Contents</h2><ol>")
        for i, s in enumerate(self.sections):
            parts.append(f"<li><a href='#s{i}'>{esc(s.title)}</a></li>")
        if self.model_summary:
            parts.append("<li><a href='#model'>Model summary</a></li>")
        parts.append("</ol>")
        for i, s in enumerate(self.sections):
            parts.append(f"<h2 id='s{i}'>{esc(s.title)}</h2>")
            if s.text:
                parts.append(f"<p class='def'>{esc(s.text)}</p>")
            for _, caption, data in s.figures:
                b64 = base64.b64encode(data["png"]).decode("ascii")
                parts.append(
                    f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{b64}'>"
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
            for _, caption, table in s.tables:
                parts.append(f"<p><b>{esc(caption)}</b></p>")
                parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0))
        if self.model_summary:
            parts.append(f"<h2 id='model'>Model summary</h2><pre>{esc(self.model_summary)}</pre>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def save(self, path) -> str:
        """Writes one self-contained HTML file (opens offline). Returns the path."""
        path = os.fspath(path)
        if not path.lower().endswith((".html", ".htm")):
            raise ValueError(f"`path` must end in .html; received {path!r}. Use save_dir() for a folder.")
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_html())
        return path

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
        index = {"title": self.title, "created": self.created, "summary": self.summary, "sections": []}
        for s in self.sections:
            entry = {"title": s.title, "text": s.text, "figures": [], "tables": []}
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


def model_summary_text(model) -> str:
    lines = []
    try:
        model.summary(print_fn=lambda line, *a, **k: lines.append(line), line_length=110)
    except (TypeError, ValueError):  # pragma: no cover - very old / exotic models
        return f"{model.name}: {model.count_params()} parameters"
    return "\n".join(lines)


def build_report(
    interp,
    x,
    y=None,
    *,
    block=None,
    examples=2,
    importance_repeats=3,
    max_samples=512,
    random_state=0,
    title=None,
    verbose=0,
) -> Report:
    """Runs the full hybrid analysis and assembles the standard report.

    Parameters
    ----------
    interp : HybridInterpreter
        With fitted probes.
    x, y : evaluation data (arrays, tf.data or PyDataset) and optional labels.
    block : str, optional
        Block for the filter-level analyses; default: the deepest block.
    examples : int
        Number of inputs (the first ones) given a local explanation.
    importance_repeats : int
        Permutation repeats of the filter importance.
    max_samples : int
        Samples used by the global analyses (the first ones).
    random_state : int
        Seeds the permutations.
    """
    from . import plotting
    from .analyzer import GlobalAnalyzer

    interp._require_fitted()
    model = interp.wrapped_model
    block = interp.block_names[-1] if block is None else block
    log = print if verbose else (lambda *a, **k: None)

    log("  local: layer table")
    table = interp.evaluate_layers(x, y)
    labelled = bool(np.isfinite(table["accuracy"]).all())
    log("  global: correlation, association, importance, similarity")
    ga = GlobalAnalyzer(interp)
    corr = ga.filter_correlation(x, block, max_samples=max_samples)
    assoc = ga.filter_class_association(x, y, block, max_samples=max_samples) if labelled else None
    imp = ga.filter_importance(x, y, block, method="permutation", n_repeats=importance_repeats,
                               random_state=random_state, max_samples=max_samples)
    sim = ga.layer_similarity(x, max_samples=max_samples) if len(interp.block_names) > 1 else None

    out_row = table[table["block"] == "output"].iloc[0]
    summary = {
        "model": model.name,
        "parameters": int(model.count_params()),
        "classes": interp.num_classes,
        "blocks": list(interp.block_names),
        "samples evaluated": int(_count(x)) if _count(x) is not None else "streamed",
        "model accuracy": float(out_row["accuracy"]) if labelled else "no labels",
        "deepest probe accuracy" if labelled else "deepest probe agreement":
            float(table.iloc[-2]["accuracy" if labelled else "agreement"]),
        "block analysed globally": block,
        "dead filters in that block": [int(i) for i in corr.dead_filters],
        "redundancy (mean |r|)": float(corr.redundancy),
        "top 5 filters by permutation importance": [int(i) for i in imp.ranking[:5]],
    }
    report = Report(title or f"Hybrid interpretation of {model.name}", summary=summary,
                    model_summary=model_summary_text(model))
    report.add_section("Blocks", text=DEFINITIONS["blocks"], tables=[("Blocks analysed", interp.blocks.to_frame())])
    report.add_section(
        "Layer-by-layer predictions",
        text=DEFINITIONS["layer_table"],
        figures=[("Probe accuracy and agreement per block", plotting.plot_layer_accuracy(table))],
        tables=[("Layer table", table)],
    )
    xs = _first(x, examples)
    if xs is not None and len(xs):
        figs = []
        for i, xi in enumerate(xs):
            figs.append((f"Local explanation of input {i}", plotting.plot_local_explanation(interp.explain(xi))))
        report.add_section("Local explanations", text=DEFINITIONS["local"], figures=figs)
    report.add_section(
        f"Filter correlation ({block})",
        text=DEFINITIONS["correlation"],
        figures=[("Filter correlation", plotting.plot_filter_correlation(corr))],
        tables=[("Dead filters", pd.DataFrame({"filter": np.asarray(corr.dead_filters, dtype=int)}))],
    )
    if assoc is not None:
        report.add_section(
            f"Filter-class association ({block})",
            text=DEFINITIONS["association"],
            figures=[("Filter-class association", plotting.plot_filter_class_association(assoc))],
            tables=[("Association (long form)", assoc.to_frame())],
        )
    report.add_section(
        f"Filter importance ({block})",
        text=DEFINITIONS["importance"],
        figures=[("Permutation importance", plotting.plot_filter_importance(imp))],
        tables=[("Importance per filter and repeat", imp.to_frame())],
    )
    if sim is not None:
        report.add_section(
            "Layer similarity",
            text=DEFINITIONS["similarity"],
            figures=[("Linear CKA between blocks", plotting.plot_layer_similarity(sim))],
            tables=[("CKA", sim.to_frame())],
        )
    return report


def _count(x):
    return len(x) if isinstance(x, np.ndarray) else None


def _first(x, n):
    """The first ``n`` inputs of arrays or datasets (None if unavailable)."""
    if n <= 0:
        return None
    if isinstance(x, np.ndarray):
        return x[:n]
    from ._data import as_stream

    got = []
    for xb, _ in as_stream(x, max_samples=n):
        got.append(xb)
    return np.concatenate(got)[:n] if got else None
