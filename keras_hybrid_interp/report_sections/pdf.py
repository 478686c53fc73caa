"""The report's PDF: pages of one size (A4 or Letter) onto which text, tables and figures flow.

:func:`write_pdf` lays out a list of blocks (:class:`Heading`, :class:`Paragraph`,
:class:`Table`, :class:`Figure`, :class:`Preformatted`) top to bottom on pages of one size:

- paragraphs and tables are packed onto a page until it is full, and split between lines or
  rows, never leaving fewer than two lines of a paragraph (three lines of preformatted text,
  three rows of a table) on either side of a page break; a split table repeats its caption
  and header;
- a heading stays on the page of what follows it;
- a figure stays on one page with its caption, below it; it keeps its aspect ratio and is
  scaled down (never up, never cropped) to the page's text width and height; several
  small figures share a page;
- the contents list the page of each anchored heading, and every page has a footer.

Everything is drawn with matplotlib's PDF backend: text stays text (searchable, and what
a test reads back with pypdf) and figures stay vector. A report figure is drawn into its
page under a PDF transformation (scale and shift) and clipped to its tight bounding box.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
from typing import Any

__all__ = ["PAGE_SIZES", "Figure", "Heading", "Paragraph", "Preformatted", "Table", "check_page_size",
           "compress_box_table", "write_pdf"]

#: The page sizes a PDF can have, in points (1/72 inch): ISO A4 (210 x 297 mm) and US Letter (8.5 x 11 in).
PAGE_SIZES = {"a4": (595.276, 841.89), "letter": (612.0, 792.0)}

_MARGIN = 50.0  # left, right, top and bottom margin of the text area, in points
_FOOTER = 26.0  # the footer's baseline, from the page's bottom edge
_SANS = "DejaVu Sans"  # matplotlib's own fonts: always there, the same metrics everywhere
_MONO = "DejaVu Sans Mono"
_LEADING = 1.3  # line height, in font sizes
_PAD = 3.0  # a table cell's padding on each side, and the margin around a figure's tight box
_TEXT = "#222222"
_GREY = "#555555"
_HEADINGS = {0: (16.0, 0.0), 1: (12.5, 14.0), 2: (10.5, 9.0)}  # level: (font size, space above)


def check_page_size(page_size) -> str:
    """``page_size`` as a key of :data:`PAGE_SIZES` ("a4" or "letter", any case); a ValueError names anything else."""
    key = page_size.lower() if isinstance(page_size, str) else None
    if key not in PAGE_SIZES:
        raise ValueError(f"`page_size` must be one of {', '.join(repr(k) for k in PAGE_SIZES)}; "
                         f"received {page_size!r}.")
    return key


@dataclasses.dataclass
class Heading:
    """A heading: level 0 (the title), 1 (a section) or 2; ``anchor`` makes its page known to the contents."""

    text: str
    level: int = 1
    anchor: str | None = None


@dataclasses.dataclass
class Paragraph:
    """Text wrapped to the text width; a newline starts a new line."""

    text: str
    size: float = 8.5
    bold: bool = False
    color: str = _TEXT
    space: float = 4.0  # space above, in points (none at the top of a page)


@dataclasses.dataclass
class Preformatted:
    """Lines in a monospace font, never wrapped: the font shrinks (to ``min_size`` at least) until the widest fits."""

    lines: list[str]
    size: float = 7.0
    min_size: float = 3.0


@dataclasses.dataclass
class Table:
    """Rows of text cells under an optional header and caption.

    Numeric columns are right-aligned. A table wider than the page is set in a
    smaller font (down to 5 pt), then its longest cells are shortened
    (``...``); ``wrap`` names a column whose cells wrap onto several lines
    instead and which takes the width the others leave.
    """

    caption: str | None
    header: list[str] | None
    rows: list[list[str]]
    wrap: int | None = None
    size: float = 7.0


@dataclasses.dataclass
class Figure:
    """A matplotlib figure and its caption (below it)."""

    caption: str
    figure: Any


# ---------------------------------------------------------------- measuring text
@functools.cache
def _font(family: str, bold: bool):
    """A FreeType font of its own (matplotlib's are shared with its renderers) at 1000 points and 72 dpi."""
    from matplotlib import ft2font
    from matplotlib.font_manager import FontProperties, findfont

    font = ft2font.FT2Font(findfont(FontProperties(family=family, weight="bold" if bold else "normal")))
    font.set_size(1000, 72)
    return font


@functools.lru_cache(maxsize=1 << 14)
def _advance(char: str, family: str, bold: bool) -> float:
    """The advance of ``char`` in points per point of font size (unhinted, as the PDF's glyph widths)."""
    from matplotlib import ft2font

    flags = getattr(ft2font, "LoadFlags", None)
    no_hinting = flags.NO_HINTING if flags is not None else vars(ft2font)["LOAD_NO_HINTING"]  # before 3.10
    glyph = _font(family, bold).load_char(ord(char), no_hinting)
    return glyph.linearHoriAdvance / 65536 / 1000


def _width(text: str, size: float, bold: bool = False, family: str = _SANS) -> float:
    """The width of ``text`` in points: its characters' advances, with a little to spare.

    matplotlib's kerning and ligatures change a line's width by a little
    (mostly making it shorter); the 1% and a tenth of the size to spare
    absorb that.
    """
    if not text:
        return 0.0
    return size * (1.01 * sum(_advance(c, family, bold) for c in text) + 0.1)


def _wrap(text: str, width: float, size: float, bold: bool = False, family: str = _SANS) -> list[str]:
    """``text`` in lines no wider than ``width``: at spaces, and inside a word longer than a line."""
    lines: list[str] = []
    for raw in str(text).split("\n"):
        words = raw.split()
        if not words:
            lines.append("")
            continue
        line = ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if _width(candidate, size, bold, family) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while _width(word, size, bold, family) > width:  # a word longer than a line: cut it
                cut = max(1, max(i for i in range(1, len(word) + 1)
                                 if i == 1 or _width(word[:i], size, bold, family) <= width))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _shorten(text: str, width: float, size: float, bold: bool = False) -> str:
    """``text`` cut to ``width`` and ended with "...", or whole where it fits."""
    if _width(text, size, bold) <= width + 1e-6:
        return text
    while len(text) > 1 and _width(text + "...", size, bold) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text in ("—", "-", "nan", "inf", "-inf")
    return True


_BOX = set("┏┳┓┃┡╇┩│├┼┤└┴┘┠┨╂┯┷┌┬┐╞╪╡╘╧╛╒╤╕║╟╫╢╚╩╝╔╦╗╠╬╣")
_FILL = set("━─═ ")


def compress_box_table(lines: list[str]) -> list[str]:
    """A table drawn with box characters (``model.summary()``), each column narrowed to its widest cell.

    Keras pads the summary's columns to a fixed line length; here every
    column loses the padding all its lines share (trailing blanks of a
    left-aligned column, leading ones of a right-aligned one; the same
    number of border characters), so the alignment holds. Lines that are
    not part of the table are kept, and so is a table whose columns do not
    line up.
    """
    lines = [line.rstrip() for line in lines]
    table = [i for i, line in enumerate(lines) if line[:1] in _BOX]
    if not table:
        return lines
    first = lines[table[0]]
    cuts = [j for j, ch in enumerate(first) if ch in _BOX]
    if len(cuts) < 2 or any(len(lines[i]) != cuts[-1] + 1 or any(lines[i][j] not in _BOX for j in cuts)
                            for i in table):
        return lines
    rows = [lines[i] for i in table]
    out = [row[cuts[0]] for row in rows]
    for a, b in zip(cuts[:-1], cuts[1:]):
        cells = [row[a + 1:b] for row in rows]
        text = [c for c in cells if set(c) - _FILL]  # the lines with a cell here (the others are borders)
        spare = 0
        if text and not any(set(c) & (_FILL - {" "}) for c in text):
            spare = max(0, min(len(c) - len(c.lstrip(" ")) + len(c) - len(c.rstrip(" ")) - 2 for c in text))
        for k, cell in enumerate(cells):
            if not spare:
                out[k] += cell
            elif set(cell) - _FILL:  # a cell: the spare blanks go from its right, then from its left
                right = min(spare, len(cell) - len(cell.rstrip(" ")) - 1)
                out[k] += cell[spare - right:len(cell) - right]
            else:  # a border: as many fill characters fewer
                out[k] += cell[:len(cell) - spare]
            out[k] += rows[k][b]
    for i, row in zip(table, out):
        lines[i] = row
    return lines


# ---------------------------------------------------------------- units: the pieces a page is filled with
@dataclasses.dataclass
class _Unit:
    """A piece of a block that a page break cannot split: its height, what it draws, and how it may break."""

    height: float
    ops: list = dataclasses.field(default_factory=list)  # drawing operations, y relative to the unit's top
    keep: bool = False  # stays on the page of the unit after it
    space: float = 0.0  # space above it, dropped at the top of a page
    repeat: list | None = None  # units to repeat at the top of a page that this unit starts (a table's header)
    figure: Any = None  # (figure, tight box, natural scale, caption units) for a figure
    anchor: str | None = None


def _text_op(x, dy, text, size, bold=False, family=_SANS, color=_TEXT, ha="left"):
    return ("text", x, dy, text, size, bold, family, color, ha)


def _line_units(lines, x, size, *, bold=False, family=_SANS, color=_TEXT, keep_first=2, keep_last=2, space=0.0):
    """One unit per line; a break is allowed only after ``keep_first`` lines and before the last ``keep_last``."""
    step = _LEADING * size
    n = len(lines)
    units = []
    for k, line in enumerate(lines):
        breakable = k + 1 >= keep_first and n - (k + 1) >= keep_last
        units.append(_Unit(step, [_text_op(x, size, line, size, bold, family, color)], keep=not breakable and k < n - 1,
                           space=space if k == 0 else 0.0))
    return units


class _Layout:
    def __init__(self, page_size: tuple[float, float]):
        self.width, self.height = page_size
        self.left = _MARGIN
        self.text_width = self.width - 2 * _MARGIN
        self.text_height = self.height - 2 * _MARGIN
        self._boxes: dict = {}  # id(figure) -> its tight box, computed once

    # ------------------------------------------------------------ blocks to units
    def units(self, block) -> list[_Unit]:
        if isinstance(block, Heading):
            size, space = _HEADINGS.get(block.level, _HEADINGS[2])
            lines = _wrap(block.text, self.text_width, size, True)
            units = _line_units(lines, self.left, size, bold=True, keep_first=len(lines), keep_last=0, space=space)
            for u in units:
                u.keep = True  # with what follows
            units[0].anchor = block.anchor
            units[-1].height += 2.0
            return units
        if isinstance(block, Paragraph):
            lines = _wrap(block.text, self.text_width, block.size, block.bold)
            return _line_units(lines, self.left, block.size, bold=block.bold, color=block.color, space=block.space)
        if isinstance(block, Preformatted):
            widest = max(block.lines, key=lambda s: _width(s, 10.0, False, _MONO), default="")
            natural = _width(widest, 10.0, False, _MONO) / 10.0  # points per point of font size
            size = block.size if natural * block.size <= self.text_width else max(
                block.min_size, self.text_width / natural * 0.98)
            lines = [_shorten_mono(s, self.text_width, size) for s in block.lines]
            return _line_units(lines, self.left, size, family=_MONO, keep_first=3, keep_last=3, space=4.0)
        if isinstance(block, Table):
            return self._table_units(block)
        if isinstance(block, Figure):
            return self._figure_units(block)
        raise TypeError(f"cannot lay out a {type(block).__name__}")

    def _table_units(self, table: Table) -> list[_Unit]:
        header = [str(h) for h in table.header] if table.header is not None else None
        rows = [[str(c) for c in row] for row in table.rows]
        n_col = max(([len(header)] if header else []) + [len(r) for r in rows] + [1])
        rows = [r + [""] * (n_col - len(r)) for r in rows]
        numeric = [bool(rows) and all(_is_number(r[j]) for r in rows if r[j] != "") and any(r[j] for r in rows)
                   for j in range(n_col)]
        size, widths = self._column_widths(header, rows, table.wrap, table.size)
        cells = [[_shorten(c, widths[j] - 2 * _PAD, size) if j != table.wrap else c for j, c in enumerate(r)]
                 for r in rows]
        head = [_shorten(h, widths[j] - 2 * _PAD, size, True) for j, h in enumerate(header)] if header else None
        lefts = [self.left + sum(widths[:j]) for j in range(n_col)]
        right = self.left + sum(widths)
        step = _LEADING * size

        def row_ops(values, bold):
            ops, height = [], step
            for j, value in enumerate(values):
                if j == table.wrap:
                    parts = _wrap(value, widths[j] - 2 * _PAD, size, bold)
                    height = max(height, step * len(parts))
                else:
                    parts = [value]
                for k, part in enumerate(parts):
                    if numeric[j] and j != table.wrap:
                        ops.append(_text_op(lefts[j] + widths[j] - _PAD, size + k * step, part, size, bold, ha="right"))
                    else:
                        ops.append(_text_op(lefts[j] + _PAD, size + k * step, part, size, bold))
            return ops, height

        def caption_units(text):
            lines = _wrap(text, self.text_width, 8.0, True)
            units = _line_units(lines, self.left, 8.0, bold=True, keep_first=len(lines), keep_last=0, space=6.0)
            for u in units:
                u.keep = True
            return units

        repeat: list[_Unit] = []
        if table.caption:
            repeat += caption_units(f"{table.caption} (continued)")
        if head is not None:
            ops, height = row_ops(head, True)
            ops += [("rule", self.left, right, 0.5, 0.6), ("rule", self.left, right, height + 1.0, 0.4)]
            repeat.append(_Unit(height + 2.0, ops, keep=True))
        units = caption_units(table.caption) if table.caption else []
        units += [dataclasses.replace(u, ops=list(u.ops)) for u in repeat[-1:]] if head is not None else []
        n = len(cells)
        for r, values in enumerate(cells):
            ops, height = row_ops(values, False)
            breakable = r + 1 >= 3 and n - (r + 1) >= 3
            if r == n - 1 and head is not None:
                ops.append(("rule", self.left, right, height + 1.0, 0.6))
            units.append(_Unit(height + (2.0 if r == n - 1 else 0.0), ops, keep=not breakable and r < n - 1,
                               repeat=repeat if r > 0 else None))
        if units and not cells:
            units[-1].keep = False
        if units:
            units[0].space = 6.0
        return units

    def _column_widths(self, header, rows, wrap, size):
        """The font size and the column widths that fit the text width (see :class:`Table`)."""
        def natural(size):
            widths = []
            for j in range(len(header) if header else len(rows[0]) if rows else 0):
                texts = [r[j] for r in rows]
                w = max([_width(t, size) for t in texts] + ([_width(header[j], size, True)] if header else [0.0]))
                widths.append(w + 2 * _PAD)
            return widths

        widths = natural(size)
        if not widths:
            return size, [self.text_width]
        min_wrap = min(widths[wrap], 0.35 * self.text_width) if wrap is not None else 0.0

        def total(ws):
            return sum(w for j, w in enumerate(ws) if j != wrap) + min_wrap

        while total(widths) > self.text_width and size > 5.0:
            size = max(5.0, size * min(0.95, self.text_width / total(widths)))
            widths = natural(size)
            min_wrap = min(widths[wrap], 0.35 * self.text_width) if wrap is not None else 0.0
        floor = 6 * _width("0", size) + 2 * _PAD
        while total(widths) > self.text_width:  # shorten the widest column, down to a few characters
            j = max((k for k in range(len(widths)) if k != wrap), key=lambda k: widths[k])
            if widths[j] <= floor:
                break
            widths[j] = max(floor, widths[j] - (total(widths) - self.text_width))
        if wrap is not None:
            widths[wrap] = max(min_wrap, min(widths[wrap], self.text_width - total(widths) + min_wrap))
        scale = min(1.0, self.text_width / sum(widths))  # what even the shortened columns cannot hold
        return size, [w * scale for w in widths]

    def _figure_units(self, block: Figure) -> list[_Unit]:
        fig = block.figure
        box = self._boxes.get(id(fig))
        if box is None:
            with _in_points(fig):
                box = self._boxes[id(fig)] = _tight_box(fig)
        caption = _line_units(_wrap(block.caption, self.text_width, 8.0), self.left, 8.0, color=_GREY)
        cap_height = sum(u.height for u in caption) + 4.0
        scale = min(1.0, self.text_width / box[2], (self.text_height - cap_height - 20.0) / box[3])
        unit = _Unit(box[3] * scale + cap_height, [], space=8.0, figure=(fig, box, scale, caption))
        return [unit]

    # ------------------------------------------------------------ units to pages
    def paginate(self, blocks) -> tuple[list[list], dict]:
        """The pages' drawing operations, and the page number of each anchor.

        Units chained by ``keep`` go onto one page: on this one if they fit
        (a figure may shrink to 80% of its scale for it), else on the next;
        a chain taller than a whole page is broken where it must be.
        """
        units = [u for block in blocks for u in self.units(block)]
        pages: list[list] = []
        anchors: dict = {}
        page: list = []
        y = 0.0  # the height used on the current page
        fresh = True  # nothing but a repeated table header on the current page yet

        def place(unit, scale=None):
            nonlocal y, fresh
            if page:
                y += unit.space
            if unit.anchor:
                anchors[unit.anchor] = len(pages) + 1
            if unit.figure is not None:
                fig, box, natural, caption = unit.figure
                s = natural if scale is None else scale
                w, h = box[2] * s, box[3] * s
                page.append(("figure", fig, box, s, self.left + (self.text_width - w) / 2, _MARGIN + y))
                y += h + 4.0
                for u in caption:
                    page.extend(_shift(u.ops, _MARGIN + y))
                    y += u.height
            else:
                page.extend(_shift(unit.ops, _MARGIN + y))
                y += unit.height
            fresh = False

        def new_page(next_unit):
            nonlocal page, y, fresh
            pages.append(page)
            page, y = [], 0.0
            for u in next_unit.repeat or []:  # a table goes on: its caption and header again
                place(u)
            fresh = True

        i = 0
        while i < len(units):
            j = i
            while units[j].keep and j + 1 < len(units):
                j += 1
            group = units[i:j + 1]
            need = sum(u.height + (u.space if (page or k) else 0.0) for k, u in enumerate(group))
            room = self.text_height - y
            if need <= room + 1e-6:
                for u in group:
                    place(u)
                i = j + 1
                continue
            if group[-1].figure is not None:  # a figure may shrink a little to end this page
                _, box, natural, _ = group[-1].figure
                shrunk = natural - (need - room) / box[3]
                if shrunk >= 0.8 * natural or (fresh and shrunk > 0):
                    for u in group[:-1]:
                        place(u)
                    place(group[-1], shrunk)
                    i = j + 1
                    continue
            if not fresh:
                new_page(units[i])
                continue
            # taller than a page: as much of it as fits (one unit at least), the rest on the next pages
            k = i
            while k <= j and (k == i or y + units[k].space + units[k].height <= self.text_height + 1e-6):
                place(units[k])
                k += 1
            i = k
            if i < len(units):
                new_page(units[i])
        if page or not pages:
            pages.append(page)
        return pages, anchors


def _shorten_mono(text, width, size):
    while text and _width(text, size, False, _MONO) > width:
        text = text[:-1]
    return text


def _shift(ops, dy):
    out = []
    for op in ops:
        if op[0] == "text":
            out.append(op[:2] + (op[2] + dy,) + op[3:])
        else:  # rule
            out.append(op[:3] + (op[3] + dy,) + op[4:])
    return out


def _tight_box(fig, renderer=None) -> tuple[float, float, float, float]:
    """``fig``'s tight bounding box in points (x0, y0, width, height), with a margin, as it draws in a PDF.

    Call at 72 dpi (:func:`_in_points`). The figure's layout engine runs
    first (at 72 dpi, as when the figure is drawn into a PDF); the box is
    measured with the PDF backend's own text metrics (``renderer``, or a PDF
    renderer writing nowhere).
    """
    from matplotlib.backends.backend_mixed import MixedModeRenderer
    from matplotlib.backends.backend_pdf import PdfFile, RendererPdf

    fig.draw_without_rendering()  # runs its layout engine
    scratch = None
    if renderer is None:
        width, height = fig.get_size_inches()
        scratch = PdfFile(io.BytesIO())
        renderer = MixedModeRenderer(fig, width, height, 72, RendererPdf(scratch, 72, height, width))
    try:
        bbox = fig.get_tightbbox(renderer)
    finally:
        if scratch is not None:
            scratch.close()
    return (bbox.x0 * 72 - _PAD, bbox.y0 * 72 - _PAD, bbox.width * 72 + 2 * _PAD, bbox.height * 72 + 2 * _PAD)


@contextlib.contextmanager
def _in_points(fig, keep_layout=False):
    """``fig`` at 72 dpi (a PDF's units), its dpi restored after; ``keep_layout``: its layout engine does not run.

    A layout engine (constrained layout) runs at every draw and may move
    things a little from one run to the next: the figure is drawn with the
    layout its box was measured on.
    """
    old = fig.get_dpi()
    engine = fig.get_layout_engine() if keep_layout else None
    try:
        fig.set_dpi(72)
        if engine is not None:
            engine.execute = lambda figure: None  # this instance only, until the draw is done
        yield fig
    finally:
        if engine is not None:
            del engine.execute
        fig.set_dpi(old)


def _embedded(fig, box, scale, x, y_top, page_height):
    """An artist that draws ``fig`` (its tight ``box``) at ``scale`` with its top-left corner at ``(x, y_top)``.

    The figure is drawn into the page's PDF under a transformation (scale,
    then shift) and clipped to its box. Its box is measured again with the
    page's renderer, on the layout it is drawn with; should it have grown,
    the figure is scaled down further to stay inside the space the layout
    gave it (centred there).
    """
    from matplotlib.artist import Artist

    class Embedded(Artist):
        def draw(self, renderer):
            from matplotlib.backends.backend_mixed import MixedModeRenderer
            from matplotlib.backends.backend_pdf import Op, RendererPdf

            pdf_file = getattr(renderer, "file", None)
            if pdf_file is None:
                raise TypeError("a report figure is embedded only in the report's PDF")
            with _in_points(fig):
                width, height = fig.get_size_inches()
                inner = RendererPdf(pdf_file, renderer.dpi, height, width)
                mixed = MixedModeRenderer(fig, width, height, renderer.dpi, inner)
                x0, y0, w, h = _tight_box(fig, mixed)
            s = min(scale, box[2] * scale / w, box[3] * scale / h)
            left = x + (box[2] * scale - w * s) / 2
            bottom = page_height - y_top - (box[3] * scale + h * s) / 2
            outer = renderer.gc
            pdf_file.output(*outer.finalize())  # close the page's clipping states before saving the state
            pdf_file.output(Op.gsave, s, 0, 0, s, left - s * x0, bottom - s * y0, Op.concat_matrix,
                            x0, y0, w, h, Op.rectangle, Op.clip, Op.endpath)
            inner.gc.copy_properties(outer)  # the graphics state the PDF is in
            with _in_points(fig, keep_layout=True):
                fig.draw(mixed)
            inner.finalize()
            pdf_file.output(Op.grestore)

    return Embedded()


def write_pdf(path, blocks, *, page_size="a4", title="", contents=None, dpi=150) -> int:
    """Lays ``blocks`` out on pages of ``page_size`` and writes them to ``path``; returns the number of pages.

    ``contents``, if given, is a :class:`Table` whose rows end with an
    anchor's name: the cell is replaced by the page of the heading with that
    anchor. Images inside figures are embedded at ``dpi``.
    """
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.lines import Line2D

    layout = _Layout(PAGE_SIZES[check_page_size(page_size)])
    pages, anchors = layout.paginate(blocks)
    if contents is not None:  # the contents' page numbers are known now; the layout does not change
        for row in contents.rows:
            row[-1] = str(anchors.get(row[-1], ""))
        pages, anchors = layout.paginate(blocks)
    width, height = layout.width, layout.height
    with PdfPages(os.fspath(path)) as pdf:
        for number, ops in enumerate(pages, start=1):
            fig = MplFigure(figsize=(width / 72, height / 72), dpi=dpi)
            for op in ops:
                if op[0] == "text":
                    _, x, y, text, size, bold, family, color, ha = op
                    fig.text(x / width, 1 - y / height, text, fontsize=size, fontweight="bold" if bold else "normal",
                             family=family, color=color, ha=ha, va="baseline", parse_math=False)
                elif op[0] == "rule":
                    _, x0, x1, y, lw = op
                    fig.add_artist(Line2D([x0 / width, x1 / width], [1 - y / height] * 2, lw=lw, color="#888888",
                                          transform=fig.transFigure))
                else:
                    _, mpl_fig, box, scale, x, y_top = op
                    fig.add_artist(_embedded(mpl_fig, box, scale, x, y_top, height))
            footer = f"page {number} of {len(pages)}"
            if title:
                footer = _shorten(title, layout.text_width - _width(footer + "   ·   ", 7.0), 7.0) + "   ·   " + footer
            fig.text(0.5, _FOOTER / height, footer, fontsize=7, color=_GREY, ha="center", va="baseline",
                     family=_SANS, parse_math=False)
            pdf.savefig(fig)
        info = pdf.infodict()
        info["Title"] = title
        info["Creator"] = "keras-hybrid-interp"
    return len(pages)
