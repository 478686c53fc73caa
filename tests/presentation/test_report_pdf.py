"""The report as a PDF (issue 22, section 5): one page size, figures scaled to it, text that flows, no overlap.

The pages are read back with pypdf: every text-showing operation of a page
(``Tj``/``TJ``, through pypdf's ``visitor_operand_before``) gives a box, from
the current transformation and text matrices, the font size and the glyph
widths the PDF's own font dictionaries declare. Nothing here uses the layout
code's measurements.
"""

import math
import os
import re

import numpy as np
import pandas as pd
import pytest

import keras

from keras_hybrid_interp.report import Report

pypdf = pytest.importorskip("pypdf")

SIZES = {"a4": (595.276, 841.89), "letter": (612.0, 792.0)}  # ISO 216 and US Letter, in points
MARGIN = 50.0  # the layout's margin: body text stays inside it, the footer below the text area


@pytest.fixture(scope="module")
def saved(report, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pdf")
    path = report.save(folder / "report.pdf")
    return path, read_pages(path)


# ---------------------------------------------------------------- reading a PDF's text boxes
def _font_metrics(font):
    """(bytes per code, {code: advance per unit of font size}, advance of a code without a width)."""
    font = font.get_object()
    if font.get("/Subtype") == "/Type0":
        desc = font["/DescendantFonts"][0].get_object()
        widths, w, i = {}, list(desc.get("/W", [])), 0
        while i < len(w):
            if isinstance(w[i + 1], list):
                widths.update({int(w[i]) + k: float(v) / 1000 for k, v in enumerate(w[i + 1])})
                i += 2
            else:
                widths.update({c: float(w[i + 2]) / 1000 for c in range(int(w[i]), int(w[i + 1]) + 1)})
                i += 3
        return 2, widths, float(desc.get("/DW", 1000)) / 1000
    scale = float(font["/FontMatrix"][0]) if font.get("/Subtype") == "/Type3" else 0.001
    first = int(font.get("/FirstChar", 0))
    widths = {first + k: float(v) * scale for k, v in enumerate(font.get("/Widths", []))}
    missing = float(font.get("/FontDescriptor", {}).get("/MissingWidth", 0)) * scale
    return 1, widths, missing


def _apply(m, x, y):
    return m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5]


def _times(a, b):
    """The matrix product a x b of two PDF matrices [a b c d e f] (a applied first)."""
    return [a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2],
            a[2] * b[1] + a[3] * b[3], a[4] * b[0] + a[5] * b[2] + b[4], a[4] * b[1] + a[5] * b[3] + b[5]]


def page_items(page):
    """Every text-showing operation of ``page``: dict(text, quad (4 corners, points), box (x0, y0, x1, y1), size).

    The box spans the string's advance (glyph widths and TJ adjustments) and
    from 0.2 below its baseline to 0.75 of its font size above (descender to
    cap height), in page coordinates; ``size`` is the font size as drawn.
    """
    fonts = page["/Resources"]["/Font"]
    state = {"metrics": (1, {}, 0.5), "size": 0.0, "latin": True}
    items = []

    def before(op, args, cm, tm):
        if op == b"Tf":
            font = fonts[args[0]].get_object()
            state["metrics"], state["size"] = _font_metrics(font), float(args[1])
            state["latin"] = int(font.get("/FirstChar", 0)) >= 32
        elif op in (b"Tj", b"TJ"):
            nbytes, widths, missing = state["metrics"]
            size = state["size"]
            parts = list(args[0]) if op == b"TJ" else [args[0]]
            advance, text = 0.0, ""
            for part in parts:
                if isinstance(part, (int, float)) or type(part).__name__ in ("NumberObject", "FloatObject"):
                    advance -= float(part) / 1000 * size
                    continue
                raw = part.get_original_bytes() if hasattr(part, "get_original_bytes") else bytes(part)
                codes = [int.from_bytes(raw[i:i + nbytes], "big") for i in range(0, len(raw), nbytes)]
                advance += sum(widths.get(c, missing) for c in codes) * size
                text += raw.decode("latin-1") if state["latin"] and nbytes == 1 else "?" * len(codes)
            m = _times(list(map(float, tm)), list(map(float, cm)))
            quad = [_apply(m, x, y) for x, y in ((0, -0.2 * size), (advance, -0.2 * size), (advance, 0.75 * size),
                                                  (0, 0.75 * size))]
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            items.append({"text": text, "quad": quad, "box": (min(xs), min(ys), max(xs), max(ys)),
                          "size": size * math.hypot(m[0], m[1]), "origin": _apply(m, 0, 0)})

    page.extract_text(visitor_operand_before=before)
    return items


def read_pages(path):
    reader = pypdf.PdfReader(path)
    return [{"mediabox": tuple(float(v) for v in page.mediabox), "items": page_items(page)} for page in reader.pages]


def _overlap(p, q, tol=0.4):
    """Whether two convex quadrilaterals overlap by more than ``tol`` points (separating axis test)."""
    for quad in (p, q):
        for k in range(4):
            (x0, y0), (x1, y1) = quad[k], quad[(k + 1) % 4]
            nx, ny = y0 - y1, x1 - x0
            norm = math.hypot(nx, ny)
            if norm == 0:
                continue
            a = [(x * nx + y * ny) / norm for x, y in p]
            b = [(x * nx + y * ny) / norm for x, y in q]
            if min(max(a), max(b)) - max(min(a), min(b)) <= tol:
                return False
    return True


def overlaps(items):
    """The pairs of text items of one page whose boxes overlap."""
    boxes = np.array([it["box"] for it in items]).reshape(-1, 4)
    found = []
    for i in range(len(items)):
        near = np.nonzero((boxes[i + 1:, 0] < boxes[i, 2]) & (boxes[i + 1:, 2] > boxes[i, 0])
                          & (boxes[i + 1:, 1] < boxes[i, 3]) & (boxes[i + 1:, 3] > boxes[i, 1]))[0] + i + 1
        found += [(items[i]["text"], items[j]["text"]) for j in near if _overlap(items[i]["quad"], items[j]["quad"])]
    return found


def body(page):
    """The page's items above its footer (the footer sits in the bottom margin)."""
    return [it for it in page["items"] if it["box"][1] > MARGIN - 10]


def check_pages(pages, page_size):
    """What every page of the report's PDF must hold, whatever is in it."""
    width, height = SIZES[page_size]
    assert pages
    for number, page in enumerate(pages, start=1):
        x0, y0, x1, y1 = page["mediabox"]
        assert (x0, y0) == (0, 0) and abs(x1 - width) < 0.5 and abs(y1 - height) < 0.5, (number, page["mediabox"])
        found = overlaps(page["items"])
        assert not found, (number, found[:5])
        for it in page["items"]:  # inside the text area, left to right; between the footer and the top margin
            bx0, by0, bx1, by1 = it["box"]
            assert MARGIN - 1 <= bx0 and bx1 <= width - MARGIN + 1, (number, it["text"], it["box"])
            assert 15 <= by0 and by1 <= height - MARGIN + 1, (number, it["text"], it["box"])
        items = body(page)
        assert items, f"page {number} is empty"
        assert not (len(items) == 1 and len(items[0]["text"]) < 200), (number, items[0]["text"])


def runs(page):
    """The page's text as drawn lines: horizontal items on one baseline, of one size, that touch, joined.

    matplotlib shows a line in several operations where it uses glyphs of
    several fonts (a ligature, a dash): this is the line as one reads it.
    """
    flat = sorted((it for it in page["items"] if abs(it["quad"][1][1] - it["quad"][0][1]) < 1e-6),
                  key=lambda it: (round(it["origin"][1], 1), it["origin"][0]))
    out: list = []
    for it in flat:
        last = out[-1] if out else None
        if (last is not None and abs(last["origin"][1] - it["origin"][1]) < 0.3
                and abs(last["size"] - it["size"]) < 0.05 and abs(it["box"][0] - last["box"][2]) < 0.6):
            last["text"] += it["text"]
            last["box"] = (last["box"][0], min(last["box"][1], it["box"][1]), it["box"][2],
                           max(last["box"][3], it["box"][3]))
        else:
            out.append(dict(it))
    return out


def find(pages, needle, exact=False):
    """(page index, line) of the first drawn line (:func:`runs`) holding ``needle`` (or equal to it)."""
    for i, page in enumerate(pages):
        for it in runs(page):
            if (it["text"] == needle) if exact else (needle in it["text"]):
                return i, it
    raise AssertionError(f"{needle!r} is nowhere in the PDF")


# ---------------------------------------------------------------- the standard report
def test_pdf_has_the_sections_vector_figures_and_csvs_beside(report, saved, tmp_path):
    path, pages = saved
    reader = pypdf.PdfReader(path)
    text = "\n".join(page.extract_text() for page in reader.pages)
    for title in ["Checks", "Health", "Contents", "Summary", "Provenance", "Blocks", "Layer-by-layer predictions",
                  "Filter importance", "Model summary"]:
        assert title in text, title
    n_fig = sum(len(s.figures) for s in report.sections)
    n_tab = sum(len(s.tables) for s in report.sections)
    assert f"Figure {n_fig}." in text and f"Table {n_tab}." in text
    # figures are vector: the layer-accuracy plot's axis labels are text on its page, not pixels
    fig_page = next(p for p in reader.pages if "Figure 1." in p.extract_text())
    assert "fraction of samples" in fig_page.extract_text().lower() and "pool1" in fig_page.extract_text()
    folder = os.path.dirname(path)
    for s in report.sections:
        for name, _, table in s.tables:
            back = pd.read_csv(os.path.join(folder, f"report.{name}.csv"))
            assert len(back) == len(table) and list(back.columns) == [str(c) for c in table.columns]


def test_the_pdf_has_one_page_size_packed_pages_and_no_overlapping_text(report, saved):
    path, pages = saved
    check_pages(pages, "a4")
    width, height = SIZES["a4"]
    # Text flows: a page ends only when what comes next does not fit; every page but the last is at least half
    # full (the old PDF gave each section's paragraph a page of its own, and each figure a page of its size).
    for number, page in enumerate(pages[:-1], start=1):
        lowest = min(it["box"][1] for it in body(page))
        assert height - MARGIN - lowest > 0.5 * (height - 2 * MARGIN), (number, lowest)
    n_sections = len(report.sections)
    assert len(pages) < n_sections + 4, len(pages)  # the old PDF: 27 pages for this report
    # The contents give each section's page.
    for i, sec in enumerate(report.sections):
        at = next(p for p, page in enumerate(pages) for it in runs(page) if it["text"] == sec.title
                  and it["size"] > 12)
        where, entry = find(pages, f"{i + 1}. {sec.title}", exact=True)
        number = min((it for it in runs(pages[where]) if re.fullmatch(r"\d+", it["text"])
                      and abs(it["origin"][1] - entry["origin"][1]) < 0.5 and it["origin"][0] > entry["origin"][0]),
                     key=lambda it: it["origin"][0])
        assert int(number["text"]) == at + 1, (sec.title, number["text"], at + 1)


def test_each_caption_is_below_its_figure_on_the_same_page(report, saved):
    _, pages = saved
    n_fig = 0
    for sec in report.sections:
        for _, caption, _ in sec.figures:
            n_fig += 1
            at, cap = find(pages, f"Figure {n_fig}. {caption.split()[0]}")
            # the figure's own text (its tick labels, titles) is on the caption's page, all of it above the caption
            above = [it for it in body(pages[at]) if it["box"][3] > cap["box"][3] + 1]
            assert above, n_fig
    # Figure 2 (the local explanation): its "Input" panel title and the caption no longer overlap (issue 22)
    at, cap = find(pages, "Figure 2. ")
    where, label = find(pages, "Input")
    assert where == at and label["box"][1] > cap["box"][3]


# ---------------------------------------------------------------- hand-made reports: sizes, scaling, flow
def _figure(width, height, name):
    """A figure of ``width`` x ``height`` inches with labels at 5% and 95% of its width and height."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.2, 0.2, 0.6, 0.6))
    ax.plot([0, 1], [0, 1])
    ax.axis("off")  # its labels alone are text
    fig.text(0.05, 0.05, f"{name}-low", fontsize=10, ha="left", va="baseline")
    fig.text(0.95, 0.95, f"{name}-high", fontsize=10, ha="left", va="baseline")
    return fig


@pytest.mark.parametrize("page_size", ["a4", "letter"])
def test_figures_are_scaled_to_the_page_keeping_their_aspect_and_small_ones_share_a_page(tmp_path, page_size):
    shapes = {f"small{i}": (2.5, 1.2) for i in range(4)}
    shapes.update({"wide": (16.0, 3.0), "tall": (3.0, 24.0), "natural": (5.0, 3.5)})
    rep = Report("Figures")
    rep.add_section("Small ones", text="Four small figures.",
                    figures=[(f"The small{i} one", _figure(*shapes[f"small{i}"], f"small{i}")) for i in range(4)])
    for name in ("wide", "tall", "natural"):
        rep.add_section(f"Section {name}", text=f"The {name} figure.",
                        figures=[(f"The {name} one", _figure(*shapes[name], name))])
    pages = read_pages(rep.save(tmp_path / "figures.pdf", page_size=page_size))
    check_pages(pages, page_size)
    width, height = SIZES[page_size]
    for name, (w, h) in shapes.items():
        (p_lo, lo), (p_hi, hi) = find(pages, f"{name}-low"), find(pages, f"{name}-high")
        assert p_lo == p_hi == find(pages, f"The {name} one")[0], name  # one page, with its caption
        dx, dy = hi["origin"][0] - lo["origin"][0], hi["origin"][1] - lo["origin"][1]
        scale = dx / (0.9 * w * 72)
        assert dy / (0.9 * h * 72) == pytest.approx(scale, rel=1e-3), name  # the aspect is kept
        assert lo["size"] == pytest.approx(10 * scale, rel=1e-3), name  # the text too scales, not only positions
        assert scale <= 1 + 1e-6, name  # scaled down, never up
        # what the figure draws (here: from its low label to the end of its high one) spans...
        span_x, span_y = hi["box"][2] - lo["box"][0], hi["box"][3] - lo["box"][1]
        if name == "wide":  # ... the width of the text area
            assert width - 2 * MARGIN - 10 < span_x <= width - 2 * MARGIN and scale < 0.5
        if name == "tall":  # ... the height of the text area, less the caption's lines
            assert height - 2 * MARGIN - 60 < span_y <= height - 2 * MARGIN and scale < 0.5
        if name == "natural":  # fits: drawn at its size, or a little smaller to end a page
            assert scale >= 0.8 - 1e-6
    assert len({find(pages, f"small{i}-low")[0] for i in range(4)}) == 1  # the four small ones share a page


def test_text_flows_tables_split_with_their_header_and_wide_tables_fit(tmp_path):
    rep = Report("Flow")
    for i in range(12):
        rep.add_section(f"Short {i}", text=f"Section {i} says one thing.",
                        tables=[(f"rows of {i}", pd.DataFrame({"a": [i, i + 1, i + 2], "b": ["x", "y", "z"]}))])
    long_text = " ".join(f"word{k}" for k in range(2500))
    wide = pd.DataFrame({f"a column with a long name {j}": [f"value {'x' * 30} {j}"] * 3 for j in range(25)})
    long_table = pd.DataFrame({"n": np.arange(200), "square": np.arange(200) ** 2})
    rep.add_section("Long", text=long_text, tables=[("wide", wide), ("long", long_table)])
    path = rep.save(tmp_path / "flow.pdf", page_size="letter")
    pages = read_pages(path)
    check_pages(pages, "letter")
    # twelve short sections share a page or two (one page each before)
    assert find(pages, "Short 11")[0] <= 1
    # the long paragraph runs over pages, every word once and in order
    words = [w for page in pages for it in page["items"] for w in it["text"].split() if w.startswith("word")]
    assert words == [f"word{k}" for k in range(2500)]
    assert len({p for p, page in enumerate(pages) for it in page["items"] if "word" in it["text"]}) >= 2
    # the long table shows its first 25 rows (all of them are in its CSV), its header on every page it spans
    texts = [{it["text"] for it in page["items"]} for page in pages]
    squares = {p for p, t in enumerate(texts) for k in range(25) if str(k * k) in t and k * k > 100}
    assert squares and all("square" in texts[p] for p in squares)
    assert not any("625" in t for t in texts)  # row 25 is cut
    assert len(pd.read_csv(str(path)[:-4] + f".{rep.sections[-1].tables[1][0]}.csv")) == 200
    # the wide table is in the page (check_pages: inside the margins), shortened, never overlapping


def test_a_page_break_leaves_no_line_of_a_paragraph_alone(tmp_path):
    from keras_hybrid_interp.report_sections.pdf import Paragraph, write_pdf

    def lines_per_page(blocks):
        path = tmp_path / "p.pdf"
        write_pdf(path, blocks, page_size="a4")
        return [[it["text"] for it in body(page)] for page in read_pages(path)]

    full = len(lines_per_page([Paragraph("\n".join(f"a{k}" for k in range(200)))])[0])  # lines a page holds
    assert 50 < full < 80
    # one line more than a page holds: two go over, not one
    pages = lines_per_page([Paragraph("\n".join(f"a{k}" for k in range(full + 1)))])
    assert [len(p) for p in pages] == [full - 1, 2]
    # a paragraph that would start on a page's last line starts on the next page instead
    pages = lines_per_page([Paragraph("\n".join(f"a{k}" for k in range(full - 2))),
                            Paragraph("\n".join(f"b{k}" for k in range(5)))])
    assert [sum(t.startswith("b") for t in p) for p in pages] == [0, 5]


def test_page_size_is_a4_or_letter(tmp_path):
    rep = Report("t")
    for bad in ["a5", "", 4]:
        with pytest.raises(ValueError, match=r"`page_size` must be one of 'a4', 'letter'; received " + re.escape(
                repr(bad))):
            rep.save(tmp_path / "never_written.pdf", page_size=bad)
    for other in ("r.html", "r.json"):  # a page size for a file without pages is refused, not ignored
        with pytest.raises(ValueError, match=r"`page_size` applies to a PDF; received page_size='letter'"):
            rep.save(tmp_path / other, page_size="letter")
    assert not os.listdir(tmp_path)


def test_page_size_is_case_blind(tmp_path):
    pages = read_pages(Report("t").save(tmp_path / "r.pdf", page_size="Letter"))
    assert len(pages) == 1 and abs(pages[0]["mediabox"][2] - 612) < 0.5


def test_the_model_summary_is_narrowed_without_losing_a_cell():
    from keras_hybrid_interp.report import model_summary_text
    from keras_hybrid_interp.report_sections.pdf import compress_box_table

    inp = keras.Input((8, 8, 2))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a_convolution_with_a_rather_long_name")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same")(inp)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b])))
    lines = model_summary_text(keras.Model(inp, out)).splitlines()
    narrow = compress_box_table(lines)
    box = re.compile("[┏┳┓┃┡╇┩│├┼┤└┴┘]")
    table = [i for i, line in enumerate(lines) if box.match(line)]
    assert len(narrow) == len(lines) and len({len(narrow[i]) for i in table}) == 1  # one width, every line kept
    assert len(narrow[table[0]]) < 0.6 * len(lines[table[0]].rstrip())
    for i, (old, new) in enumerate(zip(lines, narrow)):
        cells = [c.strip(" ━─") for c in box.split(old)]
        assert [c.strip(" ━─") for c in box.split(new)] == cells, (i, old, new)  # every cell's text, in place
        # the separators of the narrowed line sit where the narrowed header's do
        if i in table:
            assert [m.start() for m in box.finditer(new)] == [m.start() for m in box.finditer(narrow[table[0]])]
    right = [line for line in narrow if "Param #" in line][0]  # a right-aligned column stays right-aligned
    assert right.index("Param #") + len("Param #") + 1 == right.index("┃", right.index("Param #"))


def test_every_csv_beside_the_pdf_is_documented_in_the_readme(report, saved):
    path, _ = saved
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
    written = sorted(f for f in os.listdir(os.path.dirname(path)) if f.endswith(".csv"))
    assert len(written) == sum(len(s.tables) for s in report.sections) == 7
    for name in written:
        generic = re.sub(r"_[0-9a-f]{8}\.csv$", "_<hash>.csv",
                         name.replace("report.", "<name>.", 1).replace("_conv3_", "_<block>_"))
        assert generic in readme, generic
