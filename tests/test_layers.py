"""The package's imports point down, and no module reads another module's private members.

Every ``import`` of every module is parsed, function-level ones included, and
checked against the layer diagram of CONTRIBUTING.md:

    integration   callback, cli, __main__
    presentation  report, report_sections/ (the sections' table)
    the method    local/ (probes, interpreter, results)  |  global_/ (analyses, analyzer)
    drawing       plotting/ (takes result objects, computes nothing)
    machinery     core/ (data, graph, blocks, pass, engine, trainer, output, health, ...), datasets

A module may import its own layer (without a cycle) and the layers below, never
a layer above. The two halves of the method do not import each other.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__import__("keras_hybrid_interp").__file__).parent
NAME = "keras_hybrid_interp"

#: Layer of each top-level part of the package (higher = may import lower).
LAYERS = {
    "core": 0,
    "datasets": 0,
    "plotting": 1,
    "local": 2,
    "global_": 2,
    "report": 3,
    "report_sections": 3,
    "callback": 4,
    "cli": 4,
    "__main__": 4,
}
#: Parts of one layer that must not import each other.
SEPARATE = {frozenset({"local", "global_"})}

#: Private attributes of *other* objects a module may read, with the reason.
ALLOWED_PRIVATE = {
    ("core/health.py", "sys._getframe"): "the standard way to find the user's stack level",
}

#: The plumbing of the two analysis classes (issue 20): private to users (a leading underscore, in no
#: documentation, outside the public API that tests/test_public_api.py pins), shared by the package's own
#: modules: the callback, the report, the command line and the segmentation and concept modules stream data,
#: read probes and build engines through them. Any other private read stays an error.
PACKAGE_PRIVATE = {
    "HybridInterpreter": {"_stream", "_feature_taps", "_output_tap", "_probe_states", "_probe_scores",
                          "_layer_table", "_check_drift", "_explanation_taps", "_explanations", "_require_fitted",
                          "_probe_task", "_probe_values", "_output_values"},
    "GlobalAnalyzer": {"_stream", "_run", "_key", "_engine", "_require_classifier", "_similarity_blocks",
                       "_other_model"},
}


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        dotted = ".".join((NAME,) + rel.with_suffix("").parts)
        if dotted.endswith(".__init__"):
            dotted = dotted[: -len(".__init__")]
        yield path, rel, dotted


def part(dotted: str) -> str | None:
    """The top-level part (``core``, ``local``, ``report``...) a dotted module belongs to."""
    parts = dotted.split(".")
    if parts[0] != NAME or len(parts) < 2:
        return None
    return parts[1]


def imported(path: pathlib.Path, dotted: str, is_package: bool):
    """(line, dotted target) for every import of the package's own modules in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = dotted.split(".") if is_package else dotted.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == NAME:
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == NAME:
                yield node.lineno, target, [a.name for a in node.names]


def edges():
    out = []
    all_modules = {d for _, _, d in modules()}
    for path, rel, dotted in modules():
        is_package = path.name == "__init__.py"
        for line, target, names in imported(path, dotted, is_package):
            # `from .core import graph` imports the module core.graph.
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in all_modules] or [target]
            for t in targets:
                out.append((rel.as_posix(), line, dotted, t, names))
    return out


def test_the_layer_table_covers_every_module():
    parts = {part(d) for _, _, d in modules()} - {None}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to LAYERS (and to CONTRIBUTING.md)"


def test_no_upward_or_sideways_import():
    problems = []
    for rel, line, src, dst, _ in edges():
        a, b = part(src), part(dst)
        if a is None or b is None or a == b:
            continue
        if LAYERS[b] > LAYERS[a]:
            problems.append(f"{rel}:{line} imports {dst} (layer {b}={LAYERS[b]} above {a}={LAYERS[a]})")
        elif frozenset({a, b}) in SEPARATE:
            problems.append(f"{rel}:{line} imports {dst}: {a} and {b} are separate halves")
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for _, _, src, dst, _ in edges():
        if src != dst and not dst == NAME:
            graph.setdefault(src, set()).add(dst)
    # A package's __init__ importing its own submodules (re-exports) is not a cycle with them.
    for src in list(graph):
        graph[src] = {d for d in graph[src] if not (d.startswith(src + ".") and src.count(".") < d.count("."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_name_is_imported_from_another_module():
    problems = [
        f"{rel}:{line} imports {n} from {dst}"
        for rel, line, src, dst, names in edges()
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not problems, "\n".join(problems)


def private_reads(path: pathlib.Path):
    """``obj._name`` reads where ``obj`` is not ``self``/``cls``/``super()``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (node.attr.startswith("_repr_") and node.attr.endswith("_"))):  # IPython's display protocol
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            yield node.lineno, ast.unparse(node)


@pytest.mark.parametrize("rel", [r.as_posix() for _, r, _ in modules()])
def test_no_module_reads_private_members_of_others(rel):
    if rel == "core/graph.py":
        pytest.skip("core/graph.py is the one module that handles Keras internals")
    problems = [
        f"{rel}:{line} reads {expr}"
        for line, expr in private_reads(PKG / rel)
        if (rel, expr) not in ALLOWED_PRIVATE
        and not any(expr.rsplit(".", 1)[-1] in names for names in PACKAGE_PRIVATE.values())
    ]
    assert not problems, "\n".join(problems)


def test_the_package_private_plumbing_is_methods_of_the_two_classes():
    from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter

    for cls in (HybridInterpreter, GlobalAnalyzer):
        names = PACKAGE_PRIVATE[cls.__name__]
        assert names and all(callable(vars(cls).get(n)) for n in names), sorted(n for n in names if n not in vars(cls))


def test_the_checks_catch_what_they_look_for(tmp_path):
    # The parsers see a function-level relative import and a private read.
    src = tmp_path / "m.py"
    src.write_text("def f(interp):\n    from ..report import build_report\n    return interp._probes\n")
    found = list(imported(src, f"{NAME}.local.m", False))
    assert found == [(2, f"{NAME}.report", ["build_report"])]
    assert list(private_reads(src)) == [(3, "interp._probes")]
