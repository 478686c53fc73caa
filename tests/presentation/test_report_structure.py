"""The report's code is a table of sections: each with its reducers, computation and rendering; short functions."""

import ast
import pathlib

import keras_hybrid_interp
from keras_hybrid_interp import REPORT_SECTIONS
from keras_hybrid_interp.report_sections import SECTIONS, ReportSection

PKG = pathlib.Path(keras_hybrid_interp.__file__).parent
#: Lines of code (the docstring aside) a function of the report may have.
MAX_CODE_LINES = 80


def _functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = 0
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                doc = first.end_lineno - first.lineno + 1
            yield node.name, node.end_lineno - node.lineno + 1 - doc


def test_no_report_function_is_longer_than_80_lines_of_code():
    paths = [PKG / "report.py"] + sorted((PKG / "report_sections").glob("*.py"))
    long = [(p.name, name, n) for p in paths for name, n in _functions(p) if n > MAX_CODE_LINES]
    assert not long, long
    # the measure sees a long function (a check that cannot fail tests nothing)
    assert max(n for p in paths for _, n in _functions(p)) > 30


def test_the_sections_table_names_every_section_in_report_order():
    assert tuple(s.name for s in SECTIONS) == REPORT_SECTIONS
    assert len(set(REPORT_SECTIONS)) == len(REPORT_SECTIONS)
    for cls in SECTIONS:
        assert issubclass(cls, ReportSection) and cls.name, cls
        # every section renders itself and computes its result (the base class shows nothing)
        assert cls.render is not ReportSection.render, cls.name
        assert cls.compute is not ReportSection.compute, cls.name
    # the summary reads the layer table and the dead filters: those two are computed when left out
    assert {c.name for c in SECTIONS if c.always} == {"layers", "correlation"}
