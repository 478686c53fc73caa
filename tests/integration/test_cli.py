"""The command line end to end, its train/test split, and the lazy package import it relies on."""

import ast
import io
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import keras

import keras_hybrid_interp
from keras_hybrid_interp.cli import CLIError, demo_model, split_train_test
from keras_hybrid_interp.datasets import load_digits

from models import small_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(**overrides):
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", PYTHONPATH=path)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _python(*args, cwd=ROOT, timeout=600, **env):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _cli(*args, cwd):
    return _python("-m", "keras_hybrid_interp", *args, cwd=cwd)


def _sorted_digits(per_class=None):
    """The bundled digits (16x16), sorted by label as a careless export would be."""
    (x_tr, y_tr), (x_te, y_te) = load_digits(image_size=16)
    x, y = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
        x, y = x[keep], y[keep]
    return x, y


# ----------------------------------------------------------------------------- start-up and lazy import

def test_help_imports_neither_tensorflow_nor_keras():
    code = (
        "import sys\n"
        "from keras_hybrid_interp import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "print('STATUS', status, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    res = _python("-c", code, TF_CPP_MIN_LOG_LEVEL=None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "STATUS 0 False False"


def test_python_m_help_lists_the_subcommands():
    res = _cli("--help", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "{demo,analyze}" in res.stdout and "analyze" in res.stdout and "demo" in res.stdout
    assert res.stderr == ""  # nothing from TensorFlow: it is not imported
    res = _cli("analyze", "--help", cwd=ROOT)
    assert res.returncode == 0 and "--seed" in res.stdout and "stratified" in res.stdout


def test_package_root_is_lazy_and_exports_every_name():
    code = (
        "import sys\n"
        "import keras_hybrid_interp as k\n"
        "print('EAGER', 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
        "print('DIR', all(n in dir(k) for n in k.__all__), k.__version__)\n"
        "print('CLASS', k.HybridInterpreter.__name__, k.HybridInterpreter.__module__)\n"
        "from keras_hybrid_interp import *\n"
        "print('STAR', all(n in globals() for n in k.__all__))\n"
        "print('SUBMODULE', k.plotting.__name__)\n"
    )
    res = _python("-c", code)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert "EAGER False False" in lines
    assert f"DIR True {keras_hybrid_interp.__version__}" in lines
    assert "CLASS HybridInterpreter keras_hybrid_interp.local.interpreter" in lines
    assert "STAR True" in lines and "SUBMODULE keras_hybrid_interp.plotting" in lines


def test_every_public_name_resolves_and_unknown_names_raise():
    assert keras_hybrid_interp.__all__ == list(keras_hybrid_interp._EXPORTS)
    import importlib

    for name, module in keras_hybrid_interp._EXPORTS.items():
        obj = getattr(keras_hybrid_interp, name)
        home = importlib.import_module(f"keras_hybrid_interp{module}")
        assert getattr(home, name) is obj, name  # the root hands out the object of the module the map names
        if isinstance(obj, type) or callable(obj):  # classes and functions are defined there, too
            assert obj.__module__ == f"keras_hybrid_interp{module}", name
    from keras_hybrid_interp import HybridInterpreter, Report, linear_cka  # noqa: F401

    with pytest.raises(AttributeError, match="no attribute 'NotAName'"):
        keras_hybrid_interp.NotAName
    with pytest.raises(ImportError):
        from keras_hybrid_interp import NotAName  # noqa: F401


def test_type_checking_imports_match_the_lazy_exports():
    """Type checkers read the TYPE_CHECKING imports; they must list exactly the lazy names."""
    tree = ast.parse(open(keras_hybrid_interp.__file__, encoding="utf-8").read())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    static = {alias.name: "." * imp.level + imp.module for imp in block.body for alias in imp.names}
    assert static == keras_hybrid_interp._EXPORTS


def test_importing_the_package_after_keras_registers_the_saveable_classes():
    code = (
        "import keras\n"
        "import keras_hybrid_interp\n"
        "print('REGISTERED', keras.saving.get_registered_object('keras_hybrid_interp>HybridInterpreter') is not None)\n"
    )
    res = _python("-c", code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "REGISTERED True" in res.stdout


# ----------------------------------------------------------------------------- train/test split

def test_split_of_class_sorted_digits_holds_every_class_on_both_sides():
    _, y = _sorted_digits()
    train, test = split_train_test(y, len(y), 0.3, 0)
    assert len(test) == int(np.ceil(0.3 * len(y))) and len(train) + len(test) == len(y)
    assert len(np.intersect1d(train, test)) == 0
    assert set(y[train]) == set(y[test]) == set(range(10))
    # Stratified: each class keeps its share in the test part (up to rounding).
    share = np.bincount(y[test], minlength=10) / np.bincount(y, minlength=10)
    np.testing.assert_allclose(share, 0.3, atol=0.02)
    # Shuffled and seeded: not the tail of the file, repeatable, and another seed differs.
    assert not np.array_equal(np.sort(test), np.arange(len(y) - len(test), len(y)))
    again = split_train_test(y, len(y), 0.3, 0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    assert not np.array_equal(split_train_test(y, len(y), 0.3, 1)[1], test)


def test_split_without_labels_only_shuffles():
    train, test = split_train_test(None, 100, 0.25, 0)
    assert len(test) == 25 and sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert not np.array_equal(np.sort(test), np.arange(75, 100))


@pytest.mark.parametrize("labels, fraction, message", [
    (np.full(40, 3), 0.3, "all 40 samples have the same label (3)"),
    (np.r_[np.zeros(20, int), np.ones(20, int), [2]], 0.3, "class 2 has 1 sample"),
    (np.arange(20) % 10, 0.3, "holds out 6 of 20 samples, fewer than the 10 classes"),
    (np.arange(20) % 10, 0.8, "leaves 4 of 20 samples to fit the probes, fewer than the 10 classes"),
    (np.arange(1), 0.3, "1 samples are too few"),
])
def test_split_refuses_what_it_cannot_stratify(labels, fraction, message):
    with pytest.raises(CLIError, match="^[^\n]*$") as info:
        split_train_test(labels, len(labels), fraction, 0, label_flag="--y-key array 'y'")
    assert message in str(info.value)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    m = small_cnn(classes=3)
    m.save(d / "model.keras")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", images=rng.random((60, 16, 16, 1), dtype=np.float32), labels=np.arange(60) % 3)
    return d


def test_cli_demo_end_to_end(tmp_path):
    """The demo, with warnings as errors (issue 22 §1): no framework warning (a NumPy DeprecationWarning,
    a RuntimeWarning, TensorFlow's) is raised on its way; the package's own findings are its notes.

    Not on torch: Keras' torch backend converts every tensor through an ``__array__`` that NumPy 2 warns
    about, in Keras' own code.
    """
    strict = ["-W", "error"] if keras.config.backend() != "torch" else []
    res = _python(*strict, "-m", "keras_hybrid_interp", "demo", "--epochs", "1", "--out", str(tmp_path / "demo"),
                  "--quiet", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Layer-by-layer predictions" in res.stdout and "Report:" in res.stdout
    assert "Warning" not in res.stdout and "Traceback" not in res.stderr
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "demo" / "figures" / "summary.json").exists()


def test_cli_analyze_a_saved_model(saved):
    res = _cli("analyze", str(saved / "model.keras"), "--data", str(saved / "data.npz"), "--x-key", "images",
               "--y-key", "labels", "--out", str(saved / "out"), "--quiet", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (saved / "out" / "report.html").exists()
    assert "pool1" in res.stdout


def test_cli_summary_json_numbers_equal_an_independent_computation(saved):
    # The numbers the command writes, against Keras and NumPy on the same test part: the model's
    # accuracy from model.predict, its parameter count, and the dead filters of the analysed block
    # (a filter whose per-sample maps are constant) from a plain keras.Model on that block.
    import json

    out = saved / "out_numbers"
    res = _cli("analyze", str(saved / "model.keras"), "--data", str(saved / "data.npz"), "--x-key", "images",
               "--y-key", "labels", "--out", str(out), "--quiet", "--seed", "3", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "figures" / "summary.json").read_text())["summary"]
    data = np.load(saved / "data.npz")
    x, y = data["images"], data["labels"]
    _, test = split_train_test(y, len(y), 0.3, 3, label_flag="--y-key")
    model = keras.models.load_model(saved / "model.keras")
    assert summary["samples evaluated"] == len(test) > 0
    assert summary["parameters"] == model.count_params()
    assert summary["blocks"] == ["pool1", "pool2", "conv3"]
    acc = float(np.mean(model.predict(x[test], verbose=0).argmax(1) == y[test]))
    assert summary["model accuracy"] == pytest.approx(acc, abs=1e-12)
    block = summary["block analysed globally"]
    maps = keras.Model(model.input, model.get_layer(block).output).predict(x[test], verbose=0)
    flat = maps.reshape(-1, maps.shape[-1])
    dead = np.flatnonzero(flat.max(axis=0) == flat.min(axis=0)).tolist()
    assert summary["dead filters in that block"] == dead
    # The deepest probe: StandardScaler + LogisticRegression(C=1) on the block's spatial means (the
    # probe is that optimum; one test sample of 18 may flip near a tie).
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = np.setdiff1d(np.arange(len(y)), test)
    deep = keras.Model(model.input, model.get_layer("conv3").output)
    feats = deep.predict(x, verbose=0).astype(np.float64).mean(axis=(1, 2))
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=20000))
    ref = lr.fit(feats[train], y[train]).score(feats[test], y[test])
    assert abs(summary["deepest probe accuracy"] - ref) <= 1.01 / len(test)


def _layer_table(stdout):
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Layer-by-layer predictions")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].split()[:1] == ["output"]) + 1  # last row
    return pd.read_csv(io.StringIO("\n".join(lines[start:end])), sep=r"\s+")


# Runs the CLI like the console script, recording TF_CPP_MIN_LOG_LEVEL when Keras or TensorFlow
# is first imported: the CLI must have set it by then.
_SPY = r"""
import os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name in ("keras", "tensorflow") and not seen:
            seen["level"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
        return None
sys.meta_path.insert(0, Spy())
from keras_hybrid_interp.cli import main
status = main(sys.argv[1:])
print("LOG LEVEL AT FIRST KERAS/TF IMPORT:", seen.get("level"))
sys.exit(status)
"""


def test_cli_analyze_class_sorted_data_scores_well_above_chance(tmp_path):
    x, y = _sorted_digits(per_class=80)
    keras.utils.set_random_seed(0)
    model = demo_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "sorted.npz", x=x, y=y)

    res = _python("-c", _SPY, "analyze", "model.keras", "--data", "sorted.npz", "--out", "out", cwd=tmp_path,
                  TF_CPP_MIN_LOG_LEVEL=None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stratified by label" in res.stdout
    assert "LOG LEVEL AT FIRST KERAS/TF IMPORT: 2" in res.stdout
    table = _layer_table(res.stdout)
    assert table["block"].iloc[-1] == "output"
    deepest = table.iloc[-2]
    # Chance is 0.1 (balanced classes); the old split (the file's last 30%: classes 7-9 only, unseen
    # by the probes) scored 0.000 here.
    assert deepest["chance"] == pytest.approx(0.1, abs=0.01)
    assert deepest["accuracy"] > 0.6, table
    assert (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize("args, message", [
    (["analyze", "missing.keras", "--data", "data.npz", "--out", "o"], "no such file: missing.keras"),
    (["analyze", "model.keras", "--data", "nope.npz", "--out", "o"], "no such file: nope.npz"),
    (["analyze", "model.keras", "--data", "data.npz", "--out", "o"], "has no array 'x'; it has ['images', 'labels']"),
    (["analyze", "model.keras", "--data", "data.npz", "--x-key", "images", "--y-key", "nope", "--out", "o"],
     "has no array 'nope'"),
    (["analyze", "model.keras", "--data", "bad.npz", "--x-key", "images", "--y-key", "labels", "--out", "o"],
     "sample shape"),
    (["analyze", "model.keras", "--data", "data.npz", "--x-key", "images", "--y-key", "labels",
      "--blocks", "nonexistent", "--out", "o"], "no layer named 'nonexistent'"),
    (["analyze", "model.keras", "--data", "single.npz", "--out", "o"],
     "--y-key array 'y': all 30 samples have the same label (1)"),
    (["analyze", "model.keras", "--data", "rare.npz", "--out", "o"],
     "too few samples to stratify the train/test split: class 2 has 1 sample"),
    (["demo", "--epochs", "0"], "--epochs must be at least 1"),
])
def test_cli_bad_input_is_one_line_and_nonzero(saved, args, message):
    rng = np.random.default_rng(0)
    np.savez(saved / "bad.npz", images=rng.random((20, 8, 8, 1), dtype=np.float32), labels=np.arange(20) % 3)
    np.savez(saved / "single.npz", x=rng.random((30, 16, 16, 1), dtype=np.float32), y=np.ones(30, int))
    np.savez(saved / "rare.npz", x=rng.random((31, 16, 16, 1), dtype=np.float32), y=np.r_[np.arange(30) % 2, 2])
    res = _cli(*args, cwd=saved)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert message in err[-1]
    assert "Traceback" not in res.stderr


def test_cli_refuses_lambda_models_unless_unsafe(saved):
    inp = keras.Input((16, 16, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.MaxPooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    keras.Model(inp, out).save(saved / "lambda.keras")
    res = _cli("analyze", "lambda.keras", "--data", "data.npz", "--x-key", "images", "--y-key", "labels",
               "--out", "lam", cwd=saved)
    assert res.returncode == 2 and "--unsafe" in res.stderr and "Traceback" not in res.stderr
