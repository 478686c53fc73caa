"""Reports (HTML and folder) and the command line, end to end."""

import base64
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import keras

from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.report import DEFINITIONS, Report

from models import small_cnn


@pytest.fixture(scope="module")
def report():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((120, 16, 16, 1), dtype=np.float32)
    y = (x[:, :8].mean(axis=(1, 2, 3)) > x[:, 8:].mean(axis=(1, 2, 3))).astype(int) + 2 * (np.arange(120) % 2)
    m = small_cnn(classes=4)
    interp = HybridInterpreter(m)
    interp.fit_probes(x[:80], y[:80], epochs=5, verbose=0)
    return interp.report(x[80:], y[80:], examples=1, importance_repeats=2)


def test_html_report_has_every_section_and_embedded_images(report, tmp_path):
    path = report.save(tmp_path / "report.html")
    text = open(path, encoding="utf-8").read()
    for title in ["Blocks", "Layer-by-layer predictions", "Local explanations", "Filter correlation",
                  "Filter-class association", "Filter importance", "Layer similarity", "Model summary"]:
        assert f">{title}" in text, title
    for definition in DEFINITIONS.values():
        assert definition[:60].replace("'", "&#x27;") in text
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    n_figures = sum(len(s.figures) for s in report.sections)
    assert len(images) == n_figures >= 6
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "http://" not in text and "https://" not in text  # opens offline: nothing to fetch
    assert "<table" in text and "conv3" in text


def test_save_dir_writes_every_figure_format_tables_and_json(report, tmp_path):
    written = report.save_dir(tmp_path / "out")
    names = {os.path.basename(p) for p in written}
    figs = [name for s in report.sections for name, _, _ in s.figures]
    for name in figs:
        for fmt in ("png", "pdf", "svg"):
            assert f"{name}.{fmt}" in names
    assert open(tmp_path / "out" / f"{figs[0]}.pdf", "rb").read(4) == b"%PDF"
    tables = [(name, t) for s in report.sections for name, _, t in s.tables]
    for name, table in tables:
        back = pd.read_csv(tmp_path / "out" / f"{name}.csv")
        assert list(back.columns) == [str(c) for c in table.columns] and len(back) == len(table)
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["summary"]["model"] == "small_cnn"
    assert [s["title"] for s in summary["sections"]] == [s.title for s in report.sections]
    report.save_dir(tmp_path / "png_only", formats=["png"])
    assert not list((tmp_path / "png_only").glob("*.svg"))


def test_report_builder_validates():
    import matplotlib.pyplot as plt

    r = Report("t")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 2])
    r.add_section("A", figures=[("line", ax)], tables=[("t", pd.DataFrame({"a": [1]}))])
    assert not plt.get_fignums()  # rendered and closed
    with pytest.raises(TypeError, match="DataFrame"):
        r.add_section("B", tables=[("t", [1, 2])])
    with pytest.raises(ValueError, match=".html"):
        r.save("report.txt")
    with pytest.raises(ValueError, match="formats"):
        r.save_dir("x", formats=("jpg",))


def _cli(*args, cwd):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "keras_hybrid_interp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = _cli("demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--quiet", cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Layer-by-layer predictions" in res.stdout and "Report:" in res.stdout
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "demo" / "figures" / "summary.json").exists()


def test_cli_analyze_a_saved_model(saved):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = _cli("analyze", str(saved / "model.keras"), "--data", str(saved / "data.npz"), "--x-key", "images",
               "--y-key", "labels", "--out", str(saved / "out"), "--quiet", cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (saved / "out" / "report.html").exists()
    assert "pool1" in res.stdout


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
    (["demo", "--epochs", "0"], "--epochs must be at least 1"),
])
def test_cli_bad_input_is_one_line_and_nonzero(saved, args, message):
    rng = np.random.default_rng(0)
    np.savez(saved / "bad.npz", images=rng.random((20, 8, 8, 1), dtype=np.float32), labels=np.arange(20) % 3)
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
