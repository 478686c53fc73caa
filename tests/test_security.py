"""Nothing the package reads can execute code.

Files are read only through Keras' safe mode (``.keras``), JSON, CSV,
``np.load(..., allow_pickle=False)``, or (the command line's ``--card``)
PyYAML's ``safe_load``. A source scan checks the package for
every other way in; the tests then show that a ``.keras`` file carrying code
(a Lambda layer, a config.json edited to name ``os.system`` or to hold a
marshalled function, a tampered interpreter) is refused by Keras' safe mode,
by :meth:`HybridInterpreter.load` and by ``keras-hybrid-interp analyze``, and
that the code never runs.
"""

import ast
import inspect
import json
import pathlib
import zipfile

import numpy as np
import pytest
from test_bad_inputs import CliBatch

import keras
from keras import layers

import keras_hybrid_interp
from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.core.saving import UnsafeFileError, load_keras_file

from models import edit_keras_config, small_cnn

PKG = pathlib.Path(keras_hybrid_interp.__file__).parent

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve",
                     "yaml", "importlib", "subprocess", "runpy", "code", "codeop"}
FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__", "execfile"}
FORBIDDEN_ATTRS = {"read_pickle", "func_load", "enable_unsafe_deserialization", "system", "popen", "loads"}
#: The only computed ``safe_mode`` values: the loaders pass their argument on (default
#: True, checked below), the CLI turns it off only for an explicit ``--unsafe``.
SAFE_MODE_PASSTHROUGH = {("saving.py", "safe_mode"), ("interpreter.py", "safe_mode"), ("cli.py", "not args.unsafe")}
#: The one allowed use of importlib: the package's lazy exports (PEP 562) import its own
#: submodules, by relative name, with the package as anchor (checked in _relative_imports_only).
LAZY_IMPORTS = {("__init__.py", "importlib")}
#: The one allowed use of yaml: the command line reads a ``--card`` file with PyYAML's safe loader, which builds
#: only plain data (checked in _yaml_safe_load_only: no other loader, no ``from yaml import``, no alias).
SAFE_YAML = {("cli.py", "yaml")}


def _yaml_safe_load_only(tree):
    """Problems with the uses of ``yaml`` in ``tree``: only ``yaml.safe_load`` and ``yaml.YAMLError`` are allowed."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [f"{node.lineno} import yaml as {a.asname}" for a in node.names
                         if a.name == "yaml" and a.asname is not None]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "yaml":
            problems.append(f"{node.lineno} from {node.module} import ...")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml"
              and node.attr not in ("safe_load", "YAMLError")):
            problems.append(f"{node.lineno} yaml.{node.attr}: only yaml.safe_load")
    return problems


def _relative_imports_only(tree):
    """Problems with the ``import_module`` calls of ``tree``: each must be relative to the package."""
    problems = []
    for node, name, _ in _calls(tree):
        if name != "import_module":
            continue
        where = f"{node.lineno} {ast.unparse(node)[:80]}"
        if len(node.args) != 2 or ast.unparse(node.args[1]) != "__name__":
            problems.append(f"{where}: import_module not anchored at the package (__name__)")
            continue
        first = node.args[0]
        if isinstance(first, ast.JoinedStr):
            lead = first.values[0] if first.values else None
            if not (isinstance(lead, ast.Constant) and str(lead.value).startswith(".")):
                problems.append(f"{where}: import_module of a non-relative name")
        elif not isinstance(first, ast.Name):  # a name from the package's own tables (checked below)
            if not (isinstance(first, ast.Constant) and str(first.value).startswith(".")):
                problems.append(f"{where}: import_module of a non-relative name")
    return problems


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else None
            yield node, name, owner


def _keyword(node, name):
    return next((k.value for k in node.keywords if k.arg == name), None)


def scan(filename, source):
    """Every way ``source`` could load something that runs code."""
    problems = []
    path = pathlib.Path(filename)
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""]
        else:
            continue
        for m in mods:
            if m.split(".")[0] in FORBIDDEN_MODULES:
                if (path.name, m) in LAZY_IMPORTS:
                    problems.extend(f"{path.name}:{p}" for p in _relative_imports_only(tree))
                    continue
                if (path.name, m) in SAFE_YAML and isinstance(node, ast.Import):
                    problems.extend(f"{path.name}:{p}" for p in _yaml_safe_load_only(tree))
                    continue
                problems.append(f"{path.name}:{node.lineno} imports {m}")
    for node, name, owner in _calls(tree):
        where = f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}"
        if owner is None and name in FORBIDDEN_NAMES:
            problems.append(f"{where}: {name}()")
        if owner is not None and name in FORBIDDEN_ATTRS and owner not in ("json",):
            problems.append(f"{where}: .{name}()")
        if name == "load" and owner in ("np", "numpy"):
            ap = _keyword(node, "allow_pickle")
            if not (isinstance(ap, ast.Constant) and ap.value is False):
                problems.append(f"{where}: np.load without allow_pickle=False")
        if owner in ("torch", "pd", "pandas") and name in ("load", "read_pickle"):
            problems.append(f"{where}: pickle-based loader")
        if name == "load_model" or name == "load_keras_file":
            sm = _keyword(node, "safe_mode")
            if isinstance(sm, ast.Constant):
                if sm.value is not True:
                    problems.append(f"{where}: safe_mode={sm.value!r}")
            elif sm is None:
                if name == "load_model":
                    problems.append(f"{where}: load_model without safe_mode")
            elif (path.name, ast.unparse(sm)) not in SAFE_MODE_PASSTHROUGH:
                problems.append(f"{where}: safe_mode={ast.unparse(sm)}")
        sm = _keyword(node, "safe_mode")
        if isinstance(sm, ast.Constant) and sm.value is False:
            problems.append(f"{where}: safe_mode=False")
    return problems


def test_the_scan_finds_each_way_in():
    bad = [
        "import pickle", "from marshal import loads", "import yaml", "eval('1')", "exec(s)", "__import__('os')",
        "np.load(p)", "np.load(p, allow_pickle=True)", "keras.models.load_model(p)",
        "keras.models.load_model(p, safe_mode=False)", "keras.saving.load_model(p, safe_mode=flag)",
        "deserialize_keras_object(c, safe_mode=False)", "pd.read_pickle(p)", "torch.load(p)",
        "keras.config.enable_unsafe_deserialization()", "os.system(c)",
    ]
    for line in bad:
        assert scan("x.py", line), line
    # importlib only for relative imports of the package's own submodules, in __init__.py
    assert scan("x.py", "from importlib import import_module")
    assert scan("__init__.py", "from importlib import import_module\nimport_module('os')")
    assert scan(
        "__init__.py",
        "from importlib import import_module\nimport_module(name, __name__)\nimport_module(f'{m}', __name__)",
    )
    assert not scan("__init__.py", "from importlib import import_module\nimport_module(f'.{n}', __name__)")
    # yaml only in the command line, only through safe_load
    for line in ("import yaml\nyaml.load(s)", "import yaml\nyaml.safe_load(s, Loader=yaml.Loader)",
                 "from yaml import load", "import yaml as y\ny.load(s)", "import yaml\nyaml.unsafe_load(s)"):
        assert scan("cli.py", line), line
    assert scan("report.py", "import yaml\nyaml.safe_load(s)")
    assert not scan("cli.py", "import yaml\ntry:\n    yaml.safe_load(s)\nexcept yaml.YAMLError:\n    pass")
    assert not scan("x.py", "np.load(p, allow_pickle=False)\njson.loads(s)\nkeras.models.load_model(p, safe_mode=True)")


def test_the_package_source_has_no_way_to_run_what_it_reads():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 10
    problems = [p for path in files for p in scan(str(path.relative_to(PKG)), path.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)
    # The lazy exports name only the package's own submodules, relatively.
    assert all(m.startswith(".") for m in keras_hybrid_interp._EXPORTS.values())
    assert all(m.startswith(".") for m in keras_hybrid_interp._SERIALIZABLE)
    # The loaders default to safe mode.
    assert inspect.signature(load_keras_file).parameters["safe_mode"].default is True
    assert inspect.signature(HybridInterpreter.load).parameters["safe_mode"].default is True
    # The CLI asks for unsafe loading only through an explicit --unsafe flag.
    src = (PKG / "cli.py").read_text(encoding="utf-8")
    assert 'safe_mode=not args.unsafe' in src and '"--unsafe", action="store_true"' in src


# ----------------------------------------------------------------------
# Tampered and code-bearing .keras files
# ----------------------------------------------------------------------
_edit_config = edit_keras_config  # shared helper in tests/models.py


def _layer(config, name):
    return next(layer for layer in config["config"]["layers"] if layer["config"].get("name") == name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A Lambda model whose function touches a sentinel file, and files tampered from clean ones."""
    d = tmp_path_factory.mktemp("security")
    sentinel = d / "CODE_RAN"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KHI_TEST_SENTINEL", str(sentinel))  # read by the lambda wherever it runs
        made = _make_files(d, sentinel)
        np.savez(d / "data.npz", x=np.random.default_rng(0).random((30, 16, 16, 1), dtype=np.float32),
                 y=np.arange(30) % 3)
        cli = CliBatch([["analyze", f"{n}.keras", "--data", "data.npz", "--out", n] for n in CLI_FILES], cwd=d)
        yield made + (cli,)
        cli.stop()


def _make_files(d, sentinel):
    inp = keras.Input((16, 16, 1))
    h = layers.Lambda(lambda t: (open(__import__("os").environ["KHI_TEST_SENTINEL"], "a").close(), t * 2.0)[1],
                      name="lam")(inp)
    h = layers.MaxPooling2D()(layers.Conv2D(4, 3, activation="relu")(h))
    out = layers.Dense(3, activation="softmax")(layers.Flatten()(h))
    keras.Model(inp, out, name="with_lambda").save(d / "lambda.keras")
    with zipfile.ZipFile(d / "lambda.keras") as z:
        marshalled = _layer(json.loads(z.read("config.json")), "lam")["config"]["function"]
    assert marshalled["class_name"] == "__lambda__"  # a marshalled Python function

    model = small_cnn(classes=3)
    model.save(d / "model.keras")
    interp = HybridInterpreter(model)
    rng = np.random.default_rng(0)
    x = rng.random((30, 16, 16, 1), dtype=np.float32)
    interp.fit_probes(x, np.arange(30) % 3, verbose=0)
    interp(x[:1])
    interp.save(d / "interp.keras")

    def os_system(config):
        conv = _layer(config, "conv1")
        conv.update(module="os", class_name="system", registered_name=None)
        conv["config"] = {"command": f"touch {sentinel}"}

    def lambda_activation(config):
        _layer(config, "conv1")["config"]["activation"] = marshalled

    def interp_lambda(config):
        lambda_activation(config["config"]["model"])

    def interp_os_system(config):
        os_system(config["config"]["model"])

    _edit_config(d / "model.keras", d / "os_system.keras", os_system)
    _edit_config(d / "model.keras", d / "marshalled.keras", lambda_activation)
    _edit_config(d / "interp.keras", d / "interp_lambda.keras", interp_lambda)
    _edit_config(d / "interp.keras", d / "interp_os_system.keras", interp_os_system)
    if sentinel.exists():
        sentinel.unlink()  # building the Lambda model ran the function once
    return d, sentinel, interp, x


def test_lambda_model_is_refused_by_safe_mode_and_by_our_loader(files):
    d, sentinel, _, _, _ = files
    with pytest.raises(ValueError, match="lambda"):
        keras.models.load_model(d / "lambda.keras", safe_mode=True)
    with pytest.raises(UnsafeFileError, match=r"contains a Python lambda.*safe_mode=False"):
        load_keras_file(d / "lambda.keras")
    with pytest.raises(UnsafeFileError, match="was refused"):
        HybridInterpreter.load(d / "lambda.keras")
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["os_system", "marshalled"])
def test_edited_config_is_refused_by_safe_mode_and_by_our_loader(files, name):
    d, sentinel, _, _, _ = files
    with pytest.raises((TypeError, ValueError)):
        keras.models.load_model(d / f"{name}.keras", safe_mode=True)
    if name == "os_system":
        # Keras imports no module outside Keras, even unsafe; our loader names the reference.
        for safe in (True, False):
            with pytest.raises(ValueError, match=r"names \['os\.system'\].*neither Keras objects nor registered"):
                load_keras_file(d / "os_system.keras", safe_mode=safe)
    else:
        with pytest.raises(UnsafeFileError, match="contains a Python lambda"):
            load_keras_file(d / "marshalled.keras")
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["interp_lambda", "interp_os_system"])
def test_tampered_interpreter_is_refused(files, name):
    d, sentinel, interp, x, _ = files
    # The untampered file loads, with identical outputs.
    back = HybridInterpreter.load(d / "interp.keras")
    for k, v in interp(x[:4]).items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(back(x[:4])[k]), keras.ops.convert_to_numpy(v))
    with pytest.raises((TypeError, ValueError)) as info:
        keras.models.load_model(d / f"{name}.keras", safe_mode=True)
    assert ("lambda" in str(info.value).lower()) == (name == "interp_lambda")
    expected = UnsafeFileError if name == "interp_lambda" else ValueError
    with pytest.raises(expected, match="was refused"):
        HybridInterpreter.load(d / f"{name}.keras")
    assert not sentinel.exists()


def test_the_threat_is_real_unsafe_loading_runs_the_lambda(files, monkeypatch):
    """Control: the sentinel does detect code execution (safe_mode=False runs the function)."""
    d, sentinel, _, _, _ = files
    control = d / "CONTROL_RAN"  # not the sentinel, which the background CLI run watches
    monkeypatch.setenv("KHI_TEST_SENTINEL", str(control))
    keras.models.load_model(d / "lambda.keras", safe_mode=False)(np.zeros((1, 16, 16, 1), "float32"))
    assert control.exists() and not sentinel.exists()


CLI_FILES = ["lambda", "marshalled", "os_system", "interp_lambda", "interp_os_system"]


def test_cli_analyze_refuses_code_bearing_files(files):
    d, sentinel, _, _, cli = files
    for name, res in zip(CLI_FILES, cli.results()):
        assert res["rc"] == 2, (name, res)
        assert "Traceback" not in res["stderr"], res["stderr"]
        if "os_system" in name:
            assert "was refused" in res["stderr"] and "os.system" in res["stderr"], res["stderr"]
        else:
            assert "needs unsafe deserialization" in res["stderr"] and "--unsafe" in res["stderr"], res["stderr"]
    assert not sentinel.exists()
    assert not any((d / n).exists() for n in CLI_FILES)


def test_cli_analyze_reads_an_untampered_interpreter_file(files, monkeypatch, capsys):
    """A saved interpreter is analysed as its wrapped model, with its blocks (report skipped here)."""
    from keras_hybrid_interp import cli

    d, _, _, _, _ = files
    np.savez(d / "data2.npz", x=np.random.default_rng(1).random((30, 16, 16, 1), dtype=np.float32),
             y=np.arange(30) % 3)
    monkeypatch.setattr(cli, "_write_report", lambda *a, **k: None)
    assert cli.main(["analyze", str(d / "interp.keras"), "--data", str(d / "data2.npz"), "--out", str(d / "r")]) == 0
    out = capsys.readouterr().out
    assert "holds a saved HybridInterpreter: analysing its model 'small_cnn'" in out
    assert "pool1" in out and "conv3" in out
