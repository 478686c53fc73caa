"""``keras-hybrid-interp analyze --task ... --output ...`` on multi-label and regression models, end to end.

Runs ``cli.main`` in-process (the subprocess start-up is tested in test_cli.py). The oracle of
summary.json: the split redone with scikit-learn's ``train_test_split`` (shuffled, not stratified),
the block features from the model's own layers, scikit-learn's probes and metrics.
"""

import json
import math
import os

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import keras
from keras import layers

from keras_hybrid_interp.cli import main
from keras_hybrid_interp.core.trainer import RIDGE_ALPHAS

N = 80


def _model(head, two_outputs=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 2))
    h = layers.Conv2D(6, 3, name="c1")(inp)
    h = layers.Conv2D(5, 3, activation="tanh", name="c2")(h)
    g = layers.GlobalAveragePooling2D()(h)
    if two_outputs:
        return keras.Model(inp, [head(g), layers.Dense(3, activation="softmax", name="kind")(g)])
    return keras.Model(inp, head(g))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 10, 10, 2)).astype("float32")
    x[:, :4, :4, 0] += rng.normal(size=(N, 1, 1)) * 2
    return x, rng, x[:, :4, :4, 0].mean(axis=(1, 2))


def _features(model, x, name):
    return keras.Model(model.input, model.get_layer(name).output).predict(x, verbose=0).astype(np.float64).mean(
        axis=(1, 2))


def _write(tmp_path, model, x, y, name):
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    data = str(tmp_path / f"{name}.npz")
    np.savez(data, x=x, y=y)
    return path, data


def _split():
    return train_test_split(np.arange(N), test_size=math.ceil(0.3 * N), random_state=0, shuffle=True)


def _summary(out):
    with open(os.path.join(out, "figures", "summary.json"), encoding="utf-8") as fh:
        return json.load(fh)["summary"]


def test_analyze_regression_npz_matches_sklearn(tmp_path, capsys):
    model = _model(lambda g: layers.Dense(2, name="values")(g))
    x, rng, signal = _data(1)
    y = np.stack([3 * signal + rng.normal(size=N) * 0.3, rng.normal(size=N)], axis=1)
    path, data = _write(tmp_path, model, x, y, "reg")
    out = str(tmp_path / "out")
    assert main(["analyze", path, "--data", data, "--out", out, "--task", "regression", "--blocks", "c1", "c2",
                 "--quiet"]) == 0
    summary = _summary(out)
    assert summary["task"] == "regression"
    train, test = _split()
    for name in ("c1", "c2"):
        ftr, fte = _features(model, x[train], name), _features(model, x[test], name)
        sc = StandardScaler().fit(ftr)
        pred = RidgeCV(alphas=RIDGE_ALPHAS).fit(sc.transform(ftr), y[train]).predict(sc.transform(fte))
        assert summary["layer metrics"]["r2"][name] == pytest.approx(r2_score(y[test], pred), abs=1e-4)
    out_pred = model.predict(x[test], verbose=0).astype(np.float64)
    assert summary["model R\u00b2"] == pytest.approx(r2_score(y[test], out_pred), abs=1e-6)
    assert "r2" in capsys.readouterr().out  # the printed layer table has the task's columns


def test_analyze_multilabel_npz_on_one_output_of_two_matches_sklearn(tmp_path):
    model = _model(lambda g: layers.Dense(3, activation="sigmoid", name="findings")(g), two_outputs=True)
    x, rng, signal = _data(2)
    y = np.stack([signal > 0, signal + rng.normal(size=N) > 0.5, rng.random(N) < 0.3], axis=1).astype(np.int64)
    path, data = _write(tmp_path, model, x, y, "ml")
    out = str(tmp_path / "out")
    assert main(["analyze", path, "--data", data, "--out", out, "--task", "multilabel", "--output", "findings",
                 "--blocks", "c1", "c2", "--quiet"]) == 0
    summary = _summary(out)
    assert summary["task"] == "multilabel" and len(summary["labels"]) == 3
    train, test = _split()
    for name in ("c1", "c2"):
        ftr, fte = _features(model, x[train], name), _features(model, x[test], name)
        sc = StandardScaler().fit(ftr)
        p = np.stack([LogisticRegression(tol=1e-10, max_iter=10000).fit(sc.transform(ftr), y[train, k])
                      .predict_proba(sc.transform(fte))[:, 1] for k in range(3)], axis=1)
        assert summary["layer metrics"]["auroc"][name] == pytest.approx(
            roc_auc_score(y[test], p, average="macro"), abs=2e-3)
    q = model.predict(x[test], verbose=0)[0].astype(np.float64)
    assert summary["model AUROC"] == pytest.approx(roc_auc_score(y[test], q, average="macro"), abs=1e-6)
    # --output by index reads the same output
    out2 = str(tmp_path / "out2")
    assert main(["analyze", path, "--data", data, "--out", out2, "--output", "0", "--blocks", "c1", "c2",
                 "--quiet"]) == 0
    assert _summary(out2)["layer metrics"]["auroc"] == summary["layer metrics"]["auroc"]


@pytest.mark.parametrize("args, y_kind, parts", [
    (["--task", "segmentatio"], "ml", ["--task must be 'auto' or one of", "'segmentatio'"]),
    (["--task", "regression"], "ml", ["--task 'regression' was declared", "probabilities"]),
    (["--output", "nope"], "ml2", ["--output must be", "'nope'", "'findings'", "'kind'"]),
    ([], "ml2", ["has 2 outputs", "--output"]),
    (["--output", "findings"], "indices", ["--y-key array 'y'", "multi-label indicators of shape (n, 3)"]),
    (["--task", "regression"], "nan", ["--y-key array 'y' holds 1 NaN"]),
])
def test_bad_task_output_and_targets_exit_2(tmp_path, capsys, args, y_kind, parts):
    two = y_kind != "ml"
    if y_kind == "nan":
        model = _model(lambda g: layers.Dense(2, name="values")(g))
    else:
        model = _model(lambda g: layers.Dense(3, activation="sigmoid", name="findings")(g), two_outputs=two)
    x, rng, _ = _data(3)
    y = (rng.random((N, 3 if y_kind != "nan" else 2)) < 0.5).astype(np.int64)
    if y_kind == "indices":
        y = rng.integers(0, 3, N)
    if y_kind == "nan":
        y = y.astype(np.float64)
        y[5, 1] = np.nan
    path, data = _write(tmp_path, model, x, y, "bad")
    status = main(["analyze", path, "--data", data, "--out", str(tmp_path / "o"), "--quiet"] + args)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("keras-hybrid-interp analyze: error: ")
    for part in parts:
        assert part in err, (part, err)
