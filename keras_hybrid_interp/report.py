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

__all__ = ["Report", "Section", "build_report", "DEFINITIONS", "REPORT_SECTIONS", "check_sections"]

#: The sections of :func:`build_report`, in report order (``sections=`` picks among them).
REPORT_SECTIONS = ("blocks", "layers", "explanations", "correlation", "association", "importance", "atlas",
                   "similarity", "comparison")

_FORMATS = ("png", "pdf", "svg")

#: The definitions printed in reports (the README states the same).
DEFINITIONS = {
    "blocks": (
        "A block end is a feature map: (steps x channels) for a 1-D CNN, (height x width x channels) "
        "for 2-D, (depth x height x width x channels) for 3-D. Automatic discovery keeps "
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
        "The last row is the model itself. control_accuracy (when the probes were fitted with controls): "
        "mean accuracy of the same probe trained on the same samples with permuted labels (a control task, "
        "Hewitt and Liang 2019); selectivity: accuracy minus control accuracy, what the probe reads from "
        "the block beyond what it can memorise. <metric>_low and <metric>_high: percentile bootstrap "
        "interval over the evaluated samples (Poisson bootstrap), with the probes held fixed."
    ),
    "local": (
        "For one input: the probabilities each block's probe assigns to each class; the decision "
        "depth, the first block from which the probe's top class equals the model's class and "
        "stays equal; and class-evidence maps, the probe applied at every spatial position: a "
        "curve along time for a 1-D CNN, a map for 2-D, a volume for 3-D (for average pooling "
        "the mean of a map over positions is exactly the probe's logit)."
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
    "atlas": (
        "Filter atlas: the activation of a sample for a filter is the maximum of the filter's feature map "
        "over spatial positions. Each row shows, for one of the most important filters, the samples with the "
        "largest activations (strongest first, ties by sample order), each cropped to the filter's receptive "
        "field at the position of the maximum: the input positions that can influence it, derived from the "
        "kernel sizes, strides, dilations, padding and pooling on the way to the block, clipped at the border."
    ),
    "similarity": (
        "Linear CKA (Kornblith et al., 2019) between the blocks' per-sample spatially averaged "
        "features: 1 means the two representations are the same up to rotation and scale, "
        "0 means unrelated. Estimated as in Nguyen, Raghu and Kornblith (2021): the unbiased HSIC "
        "(Song et al., 2012) averaged over minibatches of the report's batch size, in memory that "
        "does not grow with the number of channels."
    ),
}


#: The definitions of the sections that change with the task (multi-label, regression, segmentation);
#: a classifier's report prints :data:`DEFINITIONS`.
TASK_DEFINITIONS = {
    "layer_table": {
        "multilabel": (
            "One L2 logistic probe per label per block reads the block's globally pooled output (the model's "
            "labels are independent). auroc and average_precision: macro averages over the labels that are both "
            "present and absent in the data (scikit-learn's roc_auc_score and average_precision_score); f1: micro "
            "F1 of the label decisions at probability 0.5; hamming: fraction of wrong label decisions; loss: binary "
            "cross-entropy averaged over the labels; agreement: fraction of label decisions equal to the model's. "
            "Against the labels, or against the model's own label decisions without labels. The last row is the "
            "model itself. control_auroc and selectivity (with control probes): the AUROC of the same probe "
            "trained on permuted labels, and the AUROC minus it. <metric>_low and <metric>_high: percentile "
            "bootstrap interval over the evaluated samples (Poisson bootstrap), with the probes held fixed; the "
            "ranking metrics (AUROC, average precision) get none."
        ),
        "regression": (
            "One ridge probe per block reads the block's globally pooled output, standardized, all targets at "
            "once; its penalty is chosen by efficient leave-one-out (scikit-learn's RidgeCV). r2: coefficient of "
            "determination averaged uniformly over the targets (scikit-learn's r2_score); mae: mean absolute error; "
            "rmse: root mean squared error; loss: mean squared error (over samples and targets). Against the "
            "targets, or against the model's own predicted values without targets. The last row is the model "
            "itself. control_r2 and selectivity (with control probes): the R^2 of the same probe fitted on "
            "permuted targets, and the R^2 minus it. <metric>_low and <metric>_high: percentile bootstrap interval "
            "over the evaluated samples (Poisson bootstrap), with the probes held fixed."
        ),
        "segmentation": (
            "One per-position linear probe (a 1x1 convolution) per block predicts each position's class from the "
            "block's map; its mask is read at the model's output resolution by nearest neighbour (output position "
            "i reads block position floor(i * s / S)). mean_iou and dice: per-class IoU and Dice averaged over the "
            "classes present in the targets or the predictions (scikit-learn's jaccard_score and f1_score with "
            "average='macro' on the flattened pixels); pixel_accuracy: fraction of pixels of the right class; loss: "
            "mean pixel cross-entropy; agreement: fraction of pixels where the block's mask equals the model's. "
            "Against the masks, or against the model's own mask without masks. The last row is the model itself."
        ),
    },
    "local": {
        "multilabel": (
            "For one input: the probability each block's probe gives every label, then the model's (a label is "
            "predicted at probability 0.5, and several may be); the decision depth, the first block from which "
            "every label decision equals the model's and stays equal; and label-evidence maps, the probe applied "
            "at every spatial position (for average pooling the mean of a map over positions is exactly the "
            "probe's logit)."
        ),
        "regression": (
            "For one input: the value each block's probe predicts for every target, then the model's value "
            "(regression has no decision depth); and evidence maps, the probe applied at every spatial position "
            "(for average pooling the mean of a map over positions is exactly the probe's prediction)."
        ),
        "segmentation": (
            "For one input: the mask each block's per-position probe predicts at the model's output resolution, "
            "shallow to deep, then the model's mask, each with its mean IoU against the model's mask: the depth at "
            "which the model's mask forms."
        ),
    },
    "association": {
        "multilabel": (
            "Point-biserial correlation between each filter's per-sample spatial mean and each label's 0/1 "
            "indicator (a sample may carry several labels, so a filter may associate with several): positive when "
            "the filter responds more strongly on samples carrying the label. NaN for dead filters and for labels "
            "present in every sample or in none."
        ),
        "regression": (
            "Pearson correlation between each filter's per-sample spatial mean and each regression target across "
            "samples: positive when the filter responds more strongly on samples with larger values. NaN for dead "
            "filters and constant targets."
        ),
    },
}

#: The importance scores, in words (the importance section names the one it used).
SCORE_WORDS = {
    "accuracy": "accuracy against the labels, or agreement with the model's own predictions without labels",
    "loss": "the negative mean loss of the task against the labels, or against the model's own unperturbed "
            "outputs without labels",
    "average_precision": "the macro average precision of the model's label probabilities against the labels, or "
                         "against its own unperturbed label decisions without labels",
    "r2": "the R^2 of the model's predictions against the targets, or against its own unperturbed predictions "
          "without targets",
    "neg_mse": "the negative mean squared error of the model's predictions against the targets, or against its own "
               "unperturbed predictions without targets",
    "mean_iou": "the mean IoU of the model's mask against the masks, or against its own unperturbed mask without "
                "masks",
}


def task_definition(section: str, task: str) -> str:
    """The definition printed in ``section`` of a report on a ``task`` model (:data:`DEFINITIONS` for classifiers)."""
    base = {"layer_table": "layer_table", "local": "local", "association": "association"}[section]
    return TASK_DEFINITIONS[section].get(task, DEFINITIONS[base])


def importance_definition(task: str, score_name: str) -> str:
    """The importance section's definition, naming the score it used (the classifier's text for classifiers)."""
    if task in ("multiclass", "binary"):
        return DEFINITIONS["importance"]
    words = SCORE_WORDS.get(score_name, f"the callable score {score_name!r}")
    return (f"Permutation importance with the {task} model's score '{score_name}': {words}, on the unperturbed "
            "data minus the same score after shuffling one filter's whole feature map across samples, leaving the "
            "other filters intact; repeated with different permutations (mean and standard deviation shown). "
            "Positive means the model relies on the filter.")


@dataclasses.dataclass
class Section:
    """One report section: title, explanatory text, figures (rendered bytes) and tables."""

    title: str
    text: str = ""
    figures: list = dataclasses.field(default_factory=list)  # (name, caption, Rendered: {fmt: bytes})
    tables: list = dataclasses.field(default_factory=list)  # (name, caption, DataFrame)


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
            self._fig.savefig(buf, format=fmt, dpi=self._dpi, bbox_inches="tight")
            self._bytes[fmt] = buf.getvalue()
        return self._bytes[fmt]

    def __iter__(self):
        return iter(_FORMATS)

    def __len__(self):
        return len(_FORMATS)


def _render(fig, dpi=150) -> Rendered:
    """``fig``'s bytes per format, rendered when read; the figure is released from pyplot (it stays drawable)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Rendered(fig, dpi)


#: Tables longer than this are collapsed in the HTML report and cut in the PDF.
VISIBLE_ROWS = 25
#: Rows shown above a collapsed table.
PREVIEW_ROWS = 10


def _csv_link(name, table) -> str:
    data = base64.b64encode(table.to_csv(index=False).encode("utf-8")).decode("ascii")
    return (f"<a download='{html.escape(name)}.csv' href='data:text/csv;base64,{data}'>"
            f"Download all {len(table)} rows (CSV)</a>")


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

    def __init__(self, title="keras-hybrid-interp report", *, summary=None, model_summary=None, health=None):
        self.title = str(title)
        self.summary = dict(summary or {})
        self.model_summary = model_summary
        #: Findings that limit the conclusions: a list of (kind, message), shown first.
        self.health = [(str(k), str(m)) for k, m in (health or [])]
        self.sections: list[Section] = []
        self._figures: dict = {}  # figure name -> matplotlib Figure, for the vector PDF
        self.created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def add_section(self, title, *, text="", figures=(), tables=()) -> Section:
        """Adds a section.

        ``figures`` is a sequence of ``(caption, matplotlib Figure or Axes)``;
        each figure is released from pyplot and kept, and rendered (PNG, PDF,
        SVG) when a format is first read (:class:`Rendered`): the report shows
        the figure as it is then, so do not draw on it after adding it (add a
        new figure instead). ``tables`` is a sequence of ``(caption, DataFrame)``
        (copied now).
        """
        section = Section(str(title), str(text))
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

    def to_html(self) -> str:
        """The whole report as one self-contained HTML document (images and CSVs embedded)."""
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
            ".health li{margin:0.4em 0}.ok{color:#2d6a2d}.warn{border-left:4px solid #c0392b;padding-left:0.8em}"
            "details{margin:0.3em 0 1.5em}summary{cursor:pointer;color:#1f4e9c}"
            "pre{background:#f5f5f5;padding:1em;overflow-x:auto;font-size:0.8em}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            f"<p>Created {esc(self.created)} with keras-hybrid-interp.</p>",
            "<h2 id='health'>Health</h2>",
        ]
        if self.health:
            parts.append(f"<div class='warn'><p>{len(self.health)} finding(s) limit the conclusions of this "
                         "report. Each says what to do about it.</p><ul class='health'>")
            for kind, msg in self.health:
                parts.append(f"<li><b>{esc(kind.replace('_', ' '))}</b>: {esc(msg)}</li>")
            parts.append("</ul></div>")
        else:
            parts.append("<p class='ok'>The analyses found nothing that limits their conclusions.</p>")
        parts.append("<h2 id='contents'>Contents</h2><ol><li><a href='#health'>Health</a></li>")
        if self.summary:
            parts.append("<li><a href='#summary'>Summary</a></li>")
        for i, sec in enumerate(self.sections):
            parts.append(f"<li><a href='#s{i}'>{esc(sec.title)}</a></li>")
        if self.model_summary:
            parts.append("<li><a href='#model'>Model summary</a></li>")
        parts.append("</ol>")
        if self.summary:
            parts.append("<h2 id='summary'>Summary</h2><table>")
            for k, v in self.summary.items():
                parts.append(
                    f"<tr><th style='text-align:left'>{esc(str(k))}</th>"
                    f"<td style='text-align:left'>{esc(_fmt(v))}</td></tr>"
                )
            parts.append("</table>")
        n_fig = n_tab = 0
        for i, sec in enumerate(self.sections):
            parts.append(f"<h2 id='s{i}'>{esc(sec.title)}</h2>")
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
                parts.append(f"<p><b>Table {n_tab}.</b> {esc(caption)}</p>")
                fmt = {"float_format": lambda v: f"{v:.4g}", "na_rep": "—", "border": 0, "index": False}
                if len(table) > VISIBLE_ROWS:
                    parts.append(f"<p>The first {PREVIEW_ROWS} of {len(table)} rows; {_csv_link(name, table)}.</p>")
                    parts.append(table.head(PREVIEW_ROWS).to_html(**fmt))
                    parts.append(
                        f"<details><summary>Show all {len(table)} rows</summary>{table.to_html(**fmt)}</details>"
                    )
                else:
                    parts.append(table.to_html(**fmt))
        if self.model_summary:
            parts.append(f"<h2 id='model'>Model summary</h2><pre>{esc(self.model_summary)}</pre>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def save(self, path) -> str:
        """Writes the report: one self-contained HTML file (``.html``) or a PDF (``.pdf``). Returns the path.

        The PDF holds the same sections with vector figures; tables longer
        than 25 rows show their first rows, and every table is written in full
        as a CSV beside the file (``<name>.<table>.csv``).
        """
        path = os.fspath(path)
        if not path.lower().endswith((".html", ".htm", ".pdf")):
            raise ValueError(f"`path` must end in .html or .pdf; received {path!r}. Use save_dir() for a folder.")
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if path.lower().endswith(".pdf"):
            self._save_pdf(path)
            return path
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_html())
        return path

    def _save_pdf(self, path):
        import textwrap

        import matplotlib.pyplot as plt
        from matplotlib.backends.backend_pdf import PdfPages

        stem = os.path.splitext(path)[0]
        a4 = (8.27, 11.69)

        def text_page(pdf, title, paragraphs):
            """Pages of wrapped text (as many as the paragraphs need)."""
            lines = []
            for para in paragraphs:
                lines += textwrap.wrap(para, 95) or [""]
                lines.append("")
            per_page = 60
            for start in range(0, max(len(lines), 1), per_page):
                fig = plt.figure(figsize=a4)
                fig.text(0.07, 0.95, title if start == 0 else f"{title} (continued)", fontsize=14, weight="bold",
                         va="top")
                fig.text(0.07, 0.91, "\n".join(lines[start:start + per_page]), fontsize=8.5, va="top",
                         family="DejaVu Sans")
                pdf.savefig(fig)
                plt.close(fig)

        def table_page(pdf, caption, table, csv_name):
            shown = table.head(VISIBLE_ROWS)
            fig = plt.figure(figsize=a4)
            note = (f" (first {VISIBLE_ROWS} of {len(table)} rows; all rows in {os.path.basename(csv_name)})"
                    if len(table) > VISIBLE_ROWS else f" (also in {os.path.basename(csv_name)})")
            fig.text(0.07, 0.95, "\n".join(textwrap.wrap(caption + note, 95)), fontsize=10, weight="bold", va="top")
            ax = fig.add_axes((0.05, 0.05, 0.9, 0.85))
            ax.axis("off")
            cells = [[_fmt(v) if not (isinstance(v, float) and np.isnan(v)) else "—" for v in row]
                     for row in shown.itertuples(index=False)]
            if cells:
                tab = ax.table(cellText=[[textwrap.shorten(c, 60) for c in row] for row in cells],
                               colLabels=[str(c) for c in shown.columns], loc="upper center", cellLoc="right")
                tab.auto_set_font_size(False)
                tab.set_fontsize(6.5)
                tab.auto_set_column_width(list(range(len(shown.columns))))
            pdf.savefig(fig)
            plt.close(fig)

        with PdfPages(path) as pdf:
            first = [f"Created {self.created} with keras-hybrid-interp.", "HEALTH"]
            first += ([f"- {k.replace('_', ' ')}: {m}" for k, m in self.health] if self.health
                      else ["The analyses found nothing that limits their conclusions."])
            first += ["SUMMARY"] + [f"{k}: {_fmt(v)}" for k, v in self.summary.items()]
            first += ["CONTENTS"] + [f"{i + 1}. {sec.title}" for i, sec in enumerate(self.sections)]
            text_page(pdf, self.title, first)
            n_fig = n_tab = 0
            for sec in self.sections:
                text_page(pdf, sec.title, [sec.text] if sec.text else [])
                for name, caption, _ in sec.figures:
                    n_fig += 1
                    fig = self._figures.get(name)
                    if fig is None:
                        continue
                    title = fig.text(0.01, 0.995, f"Figure {n_fig}. {caption}", fontsize=8, va="top")
                    pdf.savefig(fig, bbox_inches="tight")
                    title.remove()
                for name, caption, table in sec.tables:
                    n_tab += 1
                    csv_name = f"{stem}.{name}.csv"
                    table.to_csv(csv_name, index=False)
                    table_page(pdf, f"Table {n_tab}. {caption}", table, csv_name)
            if self.model_summary:
                lines = self.model_summary.splitlines()
                width = max((len(line) for line in lines), default=80)
                size = min(7.0, 0.9 * 11.0 * 72 / max(width, 1) / 0.6)  # monospace: ~0.6 em per character
                per_page = int(7.5 * 72 / (size * 1.25))
                for start in range(0, len(lines), per_page):
                    fig = plt.figure(figsize=(11.69, 8.27))
                    fig.text(0.03, 0.97, "Model summary", fontsize=12, weight="bold", va="top")
                    fig.text(0.03, 0.93, "\n".join(lines[start:start + per_page]), fontsize=size, va="top",
                             family="DejaVu Sans Mono")
                    pdf.savefig(fig)
                    plt.close(fig)
            info = pdf.infodict()
            info["Title"] = self.title
            info["Creator"] = "keras-hybrid-interp"

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
        index: dict[str, Any] = {"title": self.title, "created": self.created, "summary": self.summary,
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


def importance_notes(graph, key, imp, engine=None) -> str:
    """The importance section's lines on noise, on the engine, and on the channels tied to the block through ``Add``."""
    from .core.coupling import tied_merges, tied_names, tied_tensors

    noisy = np.asarray(imp.within_noise)
    text = (f" {int(noisy.sum())} of {len(noisy)} filters are within noise: the 95% interval of their mean over "
            "the repeats covers 0 (columns ci_low, ci_high, within_noise of the table).")
    if engine is not None and not engine.caches_maps:
        how = "average" if engine.reduce == "avg" else "max"
        from .core.engine import LinearHeadEngine

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


def build_report(
    interp,
    x,
    y=None,
    *,
    block=None,
    examples=2,
    importance_repeats=3,
    max_samples=512,
    steps=None,
    batch_size=64,
    random_state=0,
    controls=None,
    bootstrap=1000,
    confidence=0.95,
    title=None,
    verbose=0,
    atlas_filters=4,
    atlas_k=6,
    compare=None,
    compare_blocks=None,
    sections=None,
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
    importance_repeats : int
        Permutation repeats of the filter importance.
    max_samples, steps : int, optional
        The report analyses the first ``max_samples`` samples (or ``steps``
        batches) of ``x``; None: all.
    random_state : int
        Seeds the permutations and the bootstrap.
    atlas_filters, atlas_k : int
        The filter atlas shows the ``atlas_k`` top-activating crops of the
        ``atlas_filters`` most important filters (0: no atlas). The pass keeps
        the top ``atlas_k`` of every filter of the block (the ranking is known
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

    Notes
    -----
    The first section, "Health", lists every caveat the analyses found
    (dead filters, missing classes, input drift, ...), each once.
    """
    from . import plotting
    from .core import data_pass as _pass
    from .core import health as _health
    from .global_.analyzer import GlobalAnalyzer
    from .global_.association import AssociationMoments, association_result
    from .global_.atlas import examples_reducer, examples_result
    from .global_.correlation import FilterMoments, correlation_result, filter_correlation_reducer, warn_dead
    from .global_.importance import check_request, importance_reducer, importance_result
    from .global_.similarity import similarity_reducer, similarity_result
    from .local import segmentation as _segmentation

    interp.require_fitted()
    model = interp.wrapped_model
    want = check_sections(sections, compare is not None)
    task = interp.reader
    spatial = task.spatial  # segmentation: per-position probes, masks (local/segmentation.py)
    if compare is None and compare_blocks is not None:
        raise ValueError("`compare_blocks` is given but `compare` is None: pass the other model as `compare=` "
                         "(its blocks are then `compare_blocks`), or drop `compare_blocks`.")
    block = interp.block_names[-1] if block is None else block
    log = print if verbose else (lambda *a, **k: None)
    with _health.collect() as caveats:
        for c in getattr(interp, "fit_health_", []):
            _health.warn(c.kind, f"When the probes were fitted: {c.message}")
        ga = GlobalAnalyzer(interp, batch_size=batch_size)
        key, block = ga.key(block)
        engine = request = None
        if "importance" in want:
            engine = ga.engine(key)
            request = check_request(engine, ga.reader, n_repeats=importance_repeats, random_state=random_state)
        stream = interp.stream(x, y, batch_size=batch_size, max_samples=max_samples, steps=steps)

        if controls is None:
            fitted_controls = getattr(interp, "control_states_", None)
            controls = len(fitted_controls[0]) if fitted_controls else 0
        # The layer table's scores also give the summary's model accuracy: always kept (probe heads only).
        if spatial:  # the segmentation table's reducer (no controls nor intervals for it yet)
            scores = _segmentation.SegmentationScores([_pass.Tap(k, "raw") for k in interp.block_keys],
                                                      interp.probe_states(), interp.output_tap(), task)
        else:
            scores = interp.probe_scores(controls=controls if y is not None and "layers" in want else 0,
                                         bootstrap=bootstrap if "layers" in want else 0, random_state=random_state)
        moments = _pass.InputMoments()
        reducers = [scores, moments]
        assoc_red = imp_red = sim_red = cmp_red = cmp_columns = cmp_models = atlas_red = None
        corr_red: FilterMoments | _pass.ChannelRange
        if "correlation" in want:
            corr_red = filter_correlation_reducer(interp.graph, key, "mean")
        else:  # the summary's dead filters, by the one definition
            corr_red = _pass.ChannelRange(key)
        reducers.append(corr_red)
        if "association" in want and spatial:
            _health.warn("association_not_in_report", "The filter-class association of a segmentation model is "
                         "NetDissect's IoU of thresholded filter maps with the class masks, which needs two passes "
                         "over the data (a threshold, then the overlaps); the report makes one. Run "
                         "GlobalAnalyzer(interp).filter_class_association(x, y, block=...) for it.")
        elif "association" in want:
            assoc_red = AssociationMoments(interp.graph, key, "mean", ga.reader, y is not None)
            reducers.append(assoc_red)
        if "importance" in want:
            assert engine is not None and request is not None  # set above for "importance"
            imp_red = importance_reducer(engine, request, ga.reader)
            reducers.append(imp_red)
        if "similarity" in want and len(interp.block_names) > 1:
            sim_red = similarity_reducer(interp.graph, interp.block_keys, "minibatch")
            reducers.append(sim_red)
        if "comparison" in want:
            side, cmp_columns, cmp_models = ga.other_model(compare, compare_blocks,
                                                              argnames=("compare", "compare_blocks"))
            cmp_red = similarity_reducer(interp.graph, interp.block_keys, "minibatch", side)
            reducers.append(cmp_red)
        n_ex = max(int(examples), 0) if "explanations" in want else 0
        ex_maps = [_pass.Collect(t) for t in interp.explanation_taps(n_ex)] if n_ex else []
        ex_x = _pass.Collect.first("x", n_ex) if n_ex else None
        reducers += ex_maps + ([ex_x] if ex_x is not None else [])
        if int(atlas_filters) > 0 and "atlas" in want:
            atlas_red = examples_reducer(interp.graph, key, block, k=atlas_k)
            channels = interp.graph.tensors[interp.graph.input_keys[0]].shape[-1] or 1
            need = atlas_red.crop_bytes(int(channels))
            if need > 256 * 2 ** 20:
                atlas_red.keep_crops = False
                _health.warn("atlas_crops", f"Block {block!r}: the filter atlas keeps no crops; those of all "
                             f"{len(atlas_red.filters)} filters would take {need / 2 ** 20:.0f} MiB. Its table "
                             "lists the samples and boxes; ga.filter_examples(x, block=..., filters=[...]) "
                             "draws the crops of chosen filters.")
            reducers.append(atlas_red)
        log(f"  one pass over the data for: {', '.join(s for s in REPORT_SECTIONS if s in want)}")
        info = ga.run(stream, reducers)
        interp.check_drift(moments)
        layers = (_segmentation.segmentation_table(interp, scores, confidence) if spatial
                  else interp.layer_table(scores, confidence=confidence))
        table = layers.to_frame()
        labelled = info.has_labels
        if isinstance(corr_red, _pass.ChannelRange):  # "correlation" not in want
            corr = None
            warn_dead(corr_red.dead, block)
            dead = corr_red.dead
        else:
            corr = correlation_result(corr_red, block, "mean")
            dead = corr.dead_filters
        assoc = association_result(assoc_red, block, list(interp.class_names)) if labelled and assoc_red else None
        imp = None
        if imp_red is not None:
            log("  permutation importance: tail passes on the cached activations")
            assert engine is not None and request is not None  # set with imp_red
            imp = importance_result(engine, imp_red, request, ga.reader, y_given=y is not None, block=block)
        sim = similarity_result(sim_red, list(interp.block_names)) if sim_red is not None else None
        cmp = (similarity_result(cmp_red, list(interp.block_names), columns=cmp_columns, models=cmp_models)
               if cmp_red is not None else None)
        atlas = None
        if atlas_red is not None and atlas_red.n:
            assert imp is not None  # "atlas" needs "importance" (checked before the pass)
            atlas = examples_result(atlas_red, block, keep=imp.ranking[: int(atlas_filters)], known_dead=dead)
        explanations = []
        if ex_x is not None and ex_x.result() is not None and spatial:
            explanations = [_segmentation.explanation_from_maps(interp, ex_x.result()[j],
                                                                [c.result()[j:j + 1] for c in ex_maps])
                            for j in range(len(ex_x.result()))]
        elif ex_x is not None and ex_x.result() is not None:
            explanations = interp.explanations(ex_x.result(), [c.result() for c in ex_maps])

    out_row = table[table["block"] == "output"].iloc[0]
    if task.is_classification:
        summary = {
            "model": model.name,
            "parameters": int(model.count_params()),
            "classes": interp.num_classes,
            "blocks": list(interp.block_names),
            "samples evaluated": int(info.n),
            "model accuracy": float(out_row["accuracy"]) if labelled else "no labels",
        }
    else:
        summary = task_summary(interp, layers, int(info.n), "layers" in want)
    if "layers" in want and task.is_classification:
        summary["deepest probe accuracy" if labelled else "deepest probe agreement"] = float(
            table.iloc[-2]["accuracy" if labelled else "agreement"])
        if layers.selectivity is not None:
            summary["deepest probe selectivity"] = float(layers.selectivity[-2])
    summary["block analysed globally"] = block
    summary["dead filters in that block"] = [int(i) for i in dead]
    if corr is not None:
        summary["redundancy (mean |r|)"] = float(corr.redundancy)
    if imp is not None:
        summary["top 5 filters by permutation importance"] = [int(i) for i in imp.ranking[:5]]
        summary["filters whose importance is within noise"] = (
            f"{int(imp.within_noise.sum())} of {len(imp.within_noise)}"
        )
    left_out = [s for s in REPORT_SECTIONS if s not in want and (s != "comparison" or compare is not None)]
    if sections is not None and left_out:
        summary["sections left out (sections=)"] = left_out
    report = Report(title or f"Hybrid interpretation of {model.name}", summary=summary,
                    model_summary=model_summary_text(model), health=[(c.kind, c.message) for c in caveats])
    if "blocks" in want:
        report.add_section("Blocks", text=DEFINITIONS["blocks"],
                           tables=[("Blocks analysed", interp.blocks.to_frame())])
    if "layers" in want and not task.is_classification:
        report.add_section("Layer-by-layer predictions", text=task_definition("layer_table", task.name),
                           figures=[(_layer_caption(layers), plotting.plot_layer_metrics(layers))],
                           tables=[("Layer table", table)])
    elif "layers" in want:
        report.add_section(
            "Layer-by-layer predictions",
            text=DEFINITIONS["layer_table"],
            figures=[("Probe accuracy and agreement per block, shallow to deep. Where the probe curve meets the "
                      "model's accuracy, the class is linearly readable from that block on."
                      + (" Selectivity is the accuracy minus that of control probes trained on permuted labels: "
                         "near 0, the probe memorises rather than reads the block." if layers.selectivity is not None
                         else "")
                      + (f" Error bars: {confidence:.0%} bootstrap intervals over the evaluated samples."
                         if layers.n_resamples else ""), plotting.plot_layer_accuracy(layers))],
            tables=[("Layer table", table)],
        )
    if explanations and not task.is_classification:
        report.add_section("Local explanations", text=task_definition("local", task.name),
                           **_task_explanations(explanations, task.name, plotting))
    elif explanations:
        figs = [(f"Local explanation of input {i}: what each block's probe predicts, and where in the image the "
                 "evidence for the model's class lies (one colour scale across blocks).",
                 plotting.plot_local_explanation(e)) for i, e in enumerate(explanations)]
        report.add_section("Local explanations", text=DEFINITIONS["local"], figures=figs)
    if corr is not None:
        report.add_section(
            f"Filter correlation ({block})",
            text=DEFINITIONS["correlation"],
            figures=[("Filter correlation, clustered. Bright blocks along the diagonal are groups of filters that "
                      "respond together (redundant); hatched rows are dead filters.",
                      plotting.plot_filter_correlation(corr))],
            tables=[("Dead filters", pd.DataFrame({"filter": np.asarray(corr.dead_filters, dtype=int)}))],
        )
    if assoc is not None and not task.is_classification:
        what = "label" if task.name == "multilabel" else "target"
        report.add_section(
            f"Filter-{what} association ({block})",
            text=task_definition("association", task.name),
            figures=[(f"Filter-{what} correlation: a filter with a strong positive value for one {what} and weak "
                      f"ones for the others responds to that {what}.",
                      plotting.plot_filter_class_association(assoc, class_names=list(interp.class_names)))],
            tables=[("Association (long form)", assoc.to_frame())],
        )
    elif assoc is not None:
        report.add_section(
            f"Filter-class association ({block})",
            text=DEFINITIONS["association"],
            figures=[("Filter-class association: a filter with a strong positive value for one class and weak ones "
                      "for the others is specific to that class.",
                      plotting.plot_filter_class_association(assoc, class_names=list(interp.class_names)))],
            tables=[("Association (long form)", assoc.to_frame())],
        )
    if imp is not None:
        report.add_section(
            f"Filter importance ({block})",
            text=importance_definition(task.name, imp.scoring) + importance_notes(interp.graph, key, imp, engine),
            figures=[("Permutation importance of the most important filters, with the spread over repeats: a bar "
                      "whose error bar reaches 0 is not distinguishable from noise.",
                      plotting.plot_filter_importance(imp))],
            tables=[("Importance per filter and repeat", imp.to_frame())],
        )
    if atlas is not None:
        report.add_section(
            f"Filter atlas ({block})",
            text=DEFINITIONS["atlas"],
            figures=[(f"The {atlas.k} samples that activate each of the {len(atlas.filters)} most important filters "
                      "most, cropped to the filter's receptive field at the maximum; the title is the activation.",
                      plotting.plot_filter_examples(atlas))] if atlas.crops is not None else [],
            tables=[("Top-activating samples of the most important filters", atlas.to_frame())],
        )
    if sim is not None:
        report.add_section(
            "Layer similarity",
            text=DEFINITIONS["similarity"],
            figures=[("Linear CKA between blocks: 1 means two blocks represent the data the same way up to rotation "
                      "and scale; a dark band marks where the representation changes.",
                      plotting.plot_layer_similarity(sim))],
            tables=[("CKA", sim.to_frame())],
        )
    if cmp is not None:
        assert cmp.models is not None  # the comparison's result names its two models
        report.add_section(
            f"Comparison with {cmp.models[1]}",
            text=DEFINITIONS["similarity"] + " Here the rows are this model's blocks and the columns the other "
                 "model's, both fed the same samples.",
            figures=[("Linear CKA between the blocks of the two models: a bright diagonal means the blocks at the "
                      "same depth represent the data alike; where it fades, the models differ (for a fine-tuned "
                      "model: the blocks fine-tuning changed).", plotting.plot_layer_similarity(cmp))],
            tables=[("CKA between the two models", cmp.to_frame())],
        )
    return report


def _label(name) -> str:
    from .plotting.local import metric_label

    return metric_label(name)


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
        f"model {_label(head)}": float(values[-1]) if layers.labelled else "no labels",
    }
    if not with_layers:
        return summary
    against = "" if layers.labelled else " (against the model's own outputs)"
    probes = values[:-1]
    summary[f"deepest probe {_label(head)}{against}"] = float(probes[-1])
    if np.isfinite(probes).any():
        higher = task.higher_is_better.get(head, True)
        best = int(np.nanargmax(probes if higher else -probes))
        line = f"the probe reaches {_label(head)} {probes[best]:.3g} at block {layers.blocks[best]!r}"
        if layers.labelled and np.isfinite(values[-1]):
            line += f" (the model: {values[-1]:.3g})"
        summary["best probe" + against] = line
    if "selectivity" in layers.metrics:
        summary["deepest probe selectivity"] = float(layers.metrics["selectivity"][-2])
    summary["layer metrics"] = {m: {b: float(v) for b, v in zip(layers.blocks, np.asarray(vals, np.float64))}
                                for m, vals in layers.metrics.items()}
    return summary


def _layer_caption(layers) -> str:
    head = _label(layers.headline)
    text = (f"Probe {head} per block, shallow to deep; the dashed line is the model's own {head}. Where the probe "
            "curve meets the model's line, the task is linearly readable from that block on.")
    if layers.headline in layers.lower:
        text += f" Error bars: {layers.confidence:.0%} bootstrap intervals over the evaluated samples."
    elif layers.n_resamples:
        text += f" {head} gets no bootstrap interval (a ranking metric); the table has those of the other metrics."
    return text


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
        figures.append((f"Local explanation of input {i}: {what}, and where in the input the evidence for the "
                        "model's first output lies (one colour scale across blocks).",
                        plotting.plot_local_explanation(e)))
        tables.append((f"Input {i}: {what}, and the model's", e.to_frame()))
    return {"figures": figures, "tables": tables}


def check_sections(sections, has_compare: bool) -> set:
    """The set of sections ``build_report(sections=...)`` computes; a clear error for a bad request."""
    if sections is None:
        return set(REPORT_SECTIONS) - (set() if has_compare else {"comparison"})
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
    return want
