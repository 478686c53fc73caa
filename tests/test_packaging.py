"""Packaging: every third-party import is declared, and TensorFlow is optional where it is an extra."""

import ast
import builtins
import configparser
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "keras_hybrid_interp")

#: import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn", "yaml": "pyyaml"}
#: backends: imported only on their own backend (or for tf.data / TensorBoard), declared as extras
OPTIONAL = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _requirements(text):
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
            for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}


def _third_party_imports():
    found = set()
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        found.update(a.name.split(".")[0] for a in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "keras_hybrid_interp"}


def test_every_third_party_import_is_declared():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    required = _requirements(cfg["options"]["install_requires"])
    extras = {k: _requirements(v) for k, v in cfg["options.extras_require"].items()}
    imports = _third_party_imports()
    assert {"keras", "numpy", "scipy", "sklearn", "tensorflow"} <= imports  # the scan sees the package
    for module in sorted(imports):
        if module in OPTIONAL:
            assert OPTIONAL[module] in extras[module], module
            assert OPTIONAL[module] not in required, f"{module} is an extra, not a requirement"
        else:
            assert DIST.get(module, module) in required, f"{module} is imported but not in install_requires"
    assert "tensorflow" in extras["test"]  # the tests feed tf.data datasets on every backend


def test_the_command_line_names_a_missing_backend(monkeypatch, capsys):
    from keras_hybrid_interp import cli

    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name == "keras":
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    assert cli.main(["demo", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "'tensorflow'" in err and "keras-hybrid-interp[tensorflow]" in err and "KERAS_BACKEND" in err


def test_tensorboard_logging_without_tensorflow_is_refused_at_construction(monkeypatch):
    import numpy as np

    from keras_hybrid_interp import InterpretationCallback

    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name == "tensorflow":
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    x, y = np.zeros((4, 8, 8, 1), "float32"), np.array([0, 1, 0, 1])
    with pytest.raises(ImportError, match="`log_dir`.*TensorFlow"):
        InterpretationCallback((x, y), log_dir="logs")
    InterpretationCallback((x, y), csv_path=os.devnull)  # everything else needs no TensorFlow
