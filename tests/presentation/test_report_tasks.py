"""The report on multi-label, regression, segmentation and several-input models: every number against scikit-learn.

Oracles never use the package: block features come from the model's own layers
(``keras.Model(model.input, layer.output)``) averaged over positions with NumPy; the probes are
scikit-learn's ``StandardScaler`` + ``LogisticRegression`` per label, or ``RidgeCV``; metrics are
scikit-learn's; importance re-runs the model's head (GAP + Dense) in NumPy on permuted pooled features,
with the permutations the importance definition states (``SeedSequence(random_state, spawn_key=(g, r))``).
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    hamming_loss,
    jaccard_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.preprocessing import StandardScaler

import keras
from keras import layers

from keras_hybrid_interp import HybridInterpreter, build_report
from keras_hybrid_interp.core import data_pass as _pass
from keras_hybrid_interp.core.trainer import RIDGE_ALPHAS

N, FIT = 90, 60
BLOCKS = ["c1", "c2"]


def _model(head, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 10, 2))
    h = layers.Conv2D(6, 3, name="c1")(inp)  # linear: no dead filters
    h = layers.Conv2D(5, 3, activation="tanh", name="c2")(h)
    return keras.Model(inp, head(layers.GlobalAveragePooling2D(name="gap")(h)))


def _x(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 10, 10, 2)).astype("float32")
    x[:, :4, :4, 0] += rng.normal(size=(N, 1, 1)) * 2
    return x, rng, x[:, :4, :4, 0].mean(axis=(1, 2))


def _features(model, x, name):
    return keras.Model(model.input, model.get_layer(name).output).predict(x, verbose=0).astype(np.float64).mean(
        axis=(1, 2))


def _section(report, start):
    return next(s for s in report.sections if s.title.startswith(start))


def _table(section, start):
    return next(t for _, c, t in section.tables if c.startswith(start))


def _head(model, pooled):
    """The model's head (Dense after the GAP) on pooled c2 features, in NumPy float64."""
    w, b = (np.asarray(v, np.float64) for v in model.layers[-1].get_weights())
    z = pooled @ w + b
    return 1 / (1 + np.exp(-z)) if model.layers[-1].activation.__name__ == "sigmoid" else z


def _importance_oracle(model, x, score, repeats, seed=0):
    """importances[c, r] = score(head(pooled)) - score(head(pooled with filter c permuted by (c, r)))."""
    pooled = _features(model, x, "c2")
    base = score(_head(model, pooled))
    out = np.zeros((pooled.shape[1], repeats))
    for c in range(pooled.shape[1]):
        for r in range(repeats):
            perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(c, r))).permutation(len(x))
            p = pooled.copy()
            p[:, c] = pooled[perm, c]
            out[c, r] = base - score(_head(model, p))
    return out


@pytest.fixture(scope="module")
def multilabel():
    model = _model(lambda g: layers.Dense(3, activation="sigmoid", name="labels")(g))
    x, rng, signal = _x(1)
    y = np.stack([signal > 0, signal + rng.normal(size=N) > 0.5, rng.random(N) < 0.3], axis=1).astype(int)
    interp = HybridInterpreter(model, BLOCKS)
    interp.fit_probes(x[:FIT], y[:FIT], verbose=0)
    calls = []
    real = _pass.run
    _pass.run = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        report = build_report(interp, x[FIT:], y[FIT:], examples=1, n_repeats=2, random_state=0)
    finally:
        _pass.run = real
    return model, x, y, report, calls


@pytest.fixture(scope="module")
def regression():
    model = _model(lambda g: layers.Dense(2, name="values")(g))
    x, rng, signal = _x(2)
    y = np.stack([3 * signal + rng.normal(size=N) * 0.3, rng.normal(size=N)], axis=1)
    interp = HybridInterpreter(model, BLOCKS, task="regression")
    interp.fit_probes(x[:FIT], y[:FIT], verbose=0)
    report = build_report(interp, x[FIT:], y[FIT:], examples=1, n_repeats=2, random_state=0)
    return model, x, y, report


def test_multilabel_report_numbers_equal_sklearn(multilabel):
    model, x, y, report, calls = multilabel
    assert len(calls) == 1  # every section from one pass over the data
    xe, ye = x[FIT:], y[FIT:]
    table = _table(_section(report, "Layer-by-layer"), "Layer table").set_index("block")
    aurocs = {}
    for name in BLOCKS:
        ftr, fte = _features(model, x[:FIT], name), _features(model, xe, name)
        sc = StandardScaler().fit(ftr)
        p = np.stack([LogisticRegression(tol=1e-10, max_iter=10000).fit(sc.transform(ftr), y[:FIT, k])
                      .predict_proba(sc.transform(fte))[:, 1] for k in range(3)], axis=1)
        aurocs[name] = roc_auc_score(ye, p, average="macro")
        assert table.loc[name, "auroc"] == pytest.approx(aurocs[name], abs=2e-3)
        assert table.loc[name, "average_precision"] == pytest.approx(
            average_precision_score(ye, p, average="macro"), abs=2e-3)
        assert table.loc[name, "f1"] == pytest.approx(f1_score(ye, p > 0.5, average="micro"), abs=0.02)
        assert table.loc[name, "hamming"] == pytest.approx(hamming_loss(ye, p > 0.5), abs=0.02)
        assert table.loc[name, "loss"] == pytest.approx(-np.mean(ye * np.log(p) + (1 - ye) * np.log(1 - p)),
                                                        abs=2e-3)
        if name == "c2":  # the explanation of input 0: each label's probe probability
            ex = _table(_section(report, "Local explanations"), "Input 0")
            got = ex[ex.block == "c2"]["probability"].to_numpy()
            np.testing.assert_allclose(got, p[0], atol=2e-3)
    q = model.predict(xe, verbose=0).astype(np.float64)
    model_auroc = roc_auc_score(ye, q, average="macro")
    assert table.loc["output", "auroc"] == pytest.approx(model_auroc, abs=1e-6)
    assert report.summary["task"] == "multilabel"
    assert report.summary["model AUROC"] == pytest.approx(model_auroc, abs=1e-6)
    assert report.summary["deepest probe AUROC"] == pytest.approx(aurocs["c2"], abs=2e-3)
    best = max(aurocs, key=aurocs.get)
    assert report.summary["best probe"].startswith(f"the probe reaches AUROC {aurocs[best]:.2f}"[:-1])
    assert f"at block {best!r}" in report.summary["best probe"]
    assert report.summary["layer metrics"]["auroc"]["output"] == pytest.approx(model_auroc, abs=1e-6)
    # The chart draws the headline per block.
    fig = report._figures[_section(report, "Layer-by-layer").figures[0][0]]
    line = next(ln for ln in fig.axes[0].lines if ln.get_gid() == "auroc")
    np.testing.assert_allclose(line.get_ydata(), [aurocs[b] for b in BLOCKS], atol=2e-3)


def test_multilabel_association_and_importance_equal_numpy(multilabel):
    model, x, y, report, _ = multilabel
    xe, ye = x[FIT:], y[FIT:]
    sec = _section(report, "Filter-label association")
    assert "each label's 0/1" in sec.text
    assoc = _table(sec, "Association")
    s = _features(model, xe, "c2")
    for k in range(3):
        want = [np.corrcoef(s[:, c], ye[:, k])[0, 1] for c in range(5)]
        got = assoc[assoc["class"] == k].sort_values("filter")["r"].to_numpy()
        np.testing.assert_allclose(got, want, atol=1e-6)
    sec = _section(report, "Filter importance")
    assert "'average_precision'" in sec.text and "macro average precision" in sec.text
    assert "outputs computed in closed form" in sec.text  # GAP + Dense after c2: the linear head, said so
    imp = _table(sec, "Importance").sort_values(["filter", "repeat"])
    want = _importance_oracle(model, xe, lambda q: average_precision_score(ye, q, average="macro"), 2)
    np.testing.assert_allclose(imp["importance"].to_numpy(), want.ravel(), atol=1e-4)
    assert np.abs(want).max() > 1e-3  # a test of something: the filters do move the score


def test_regression_report_numbers_equal_sklearn(regression):
    model, x, y, report = regression
    xe, ye = x[FIT:], y[FIT:]
    table = _table(_section(report, "Layer-by-layer"), "Layer table").set_index("block")
    r2s = {}
    for name in BLOCKS:
        sc = StandardScaler().fit(_features(model, x[:FIT], name))
        pred = RidgeCV(alphas=RIDGE_ALPHAS).fit(sc.transform(_features(model, x[:FIT], name)), y[:FIT]).predict(
            sc.transform(_features(model, xe, name)))
        r2s[name] = r2_score(ye, pred)
        assert table.loc[name, "r2"] == pytest.approx(r2s[name], abs=1e-4)
        assert table.loc[name, "mae"] == pytest.approx(mean_absolute_error(ye, pred), abs=1e-4)
        assert table.loc[name, "rmse"] == pytest.approx(np.sqrt(mean_squared_error(ye, pred)), abs=1e-4)
        assert table.loc[name, "r2_low"] < table.loc[name, "r2"] < table.loc[name, "r2_high"]
        if name == "c2":
            ex = _table(_section(report, "Local explanations"), "Input 0")
            np.testing.assert_allclose(ex[ex.block == "c2"]["value"].to_numpy(), pred[0], rtol=1e-4, atol=1e-4)
    out = model.predict(xe, verbose=0).astype(np.float64)
    assert report.summary["task"] == "regression" and report.summary["targets"] == ["target_0", "target_1"]
    assert report.summary["model R\u00b2"] == pytest.approx(r2_score(ye, out), abs=1e-6)
    best = max(r2s, key=r2s.get)
    assert f"reaches R\u00b2 {r2s[best]:.3g}"[:-1] in report.summary["best probe"]
    assert f"at block {best!r}" in report.summary["best probe"]
    # The chart: the headline (R^2) per block, with its bootstrap interval as error bars.
    fig = report._figures[_section(report, "Layer-by-layer").figures[0][0]]
    ax = fig.axes[0]
    np.testing.assert_allclose(next(ln for ln in ax.lines if ln.get_gid() == "r2").get_ydata(),
                               [r2s[b] for b in BLOCKS], atol=1e-4)
    assert any(c.get_gid() == "r2_ci" for c in ax.collections)
    # Association: filter-target correlation; importance with R^2.
    assoc = _table(_section(report, "Filter-target association"), "Association")
    s = _features(model, xe, "c2")
    want = [np.corrcoef(s[:, c], ye[:, 0])[0, 1] for c in range(5)]
    np.testing.assert_allclose(assoc[assoc["class"] == 0].sort_values("filter")["r"], want, atol=1e-6)
    sec = _section(report, "Filter importance")
    assert "'r2'" in sec.text
    imp = _table(sec, "Importance").sort_values(["filter", "repeat"])
    oracle = _importance_oracle(model, xe, lambda q: r2_score(ye, q), 2)
    np.testing.assert_allclose(imp["importance"].to_numpy(), oracle.ravel(), atol=1e-4)


def test_health_lines_of_tasks(multilabel, regression):
    model, x, y, _, _ = multilabel
    interp = HybridInterpreter(model, BLOCKS)
    interp.fit_probes(x[:FIT], y[:FIT], verbose=0)
    y_absent = y.copy()
    y_absent[FIT:, 2] = 0  # label 2 never present in the report's data
    with pytest.warns(UserWarning):
        report = build_report(interp, x[FIT:], y_absent[FIT:], examples=0, sections=["layers"])
    text = " ".join(m for _, m in report.health)
    assert "label_2" in text and "missing_classes" in [k for k, _ in report.health]
    model, x, y, _ = regression
    interp = HybridInterpreter(model, BLOCKS, task="regression")
    interp.fit_probes(x[:FIT], y[:FIT], verbose=0)
    y_nan = y.copy()
    y_nan[FIT + 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"`y` holds 1 NaN"):
        build_report(interp, x[FIT:], y_nan[FIT:], sections=["layers"])


def test_segmentation_report_shows_masks_and_mean_iou_in_one_pass():
    from segmentation_models import planted_data, planted_unet

    model = planted_unet()
    x, y = planted_data(24)
    interp = HybridInterpreter(model)
    interp.fit_probes(x[:12], y[:12], verbose=0)
    calls = []
    real = _pass.run
    _pass.run = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with pytest.warns(UserWarning):
            report = build_report(interp, x[12:], y[12:], examples=1, sections=["blocks", "layers", "explanations",
                                                                               "association"])
    finally:
        _pass.run = real
    assert len(calls) == 1
    table = _table(_section(report, "Layer-by-layer"), "Layer table").set_index("block")
    pred = model.predict(x[12:], verbose=0).argmax(-1)
    assert table.loc["output", "mean_iou"] == pytest.approx(
        jaccard_score(y[12:].ravel(), pred.ravel(), average="macro"), abs=1e-9)
    assert report.summary["model mean IoU"] == pytest.approx(table.loc["output", "mean_iou"])
    ex = _table(_section(report, "Local explanations"), "Input 0")
    masks = interp.explain(x[12]).masks  # the one-sample path (its own pass) gives the same masks
    ex = ex.set_index("block")
    for i, name in enumerate(interp.block_names):
        for k, cls in enumerate(interp.class_names):
            assert ex.loc[name, f"fraction_{cls}"] == pytest.approx(np.mean(masks[i] == k))
    assert "association_not_in_report" in [k for k, _ in report.health]


def test_report_on_a_model_with_several_inputs_reads_x_as_a_list():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((10, 10, 1), name="img"), keras.Input((3,), name="tab")
    h = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="tanh", name="conv")(a))
    out = layers.Dense(2, activation="sigmoid")(layers.Concatenate()([h, layers.Dense(2)(b)]))
    model = keras.Model([a, b], out)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(60, 10, 10, 1)).astype("float32"), rng.normal(size=(60, 3)).astype("float32")]
    y = np.stack([x[0][:, :5].mean(axis=(1, 2, 3)) > 0, x[1][:, 0] > 0], axis=1).astype(int)
    interp = HybridInterpreter(model, ["conv"])
    interp.fit_probes([x[0][:40], x[1][:40]], y[:40], verbose=0)
    xe = [x[0][40:], x[1][40:]]
    report = build_report(interp, xe, y[40:], examples=1, n_repeats=2)
    table = _table(_section(report, "Layer-by-layer"), "Layer table").set_index("block")
    q = model.predict(xe, verbose=0).astype(np.float64)
    assert table.loc["output", "auroc"] == pytest.approx(roc_auc_score(y[40:], q, average="macro"), abs=1e-6)
    f = keras.Model(model.inputs, model.get_layer("conv").output).predict(xe, verbose=0).mean(axis=(1, 2))
    ftr = keras.Model(model.inputs, model.get_layer("conv").output).predict(
        [x[0][:40], x[1][:40]], verbose=0).astype(np.float64).mean(axis=(1, 2))
    sc = StandardScaler().fit(ftr)
    p = np.stack([LogisticRegression(tol=1e-10, max_iter=10000).fit(sc.transform(ftr), y[:40, k])
                  .predict_proba(sc.transform(f))[:, 1] for k in range(2)], axis=1)
    assert table.loc["conv", "auroc"] == pytest.approx(roc_auc_score(y[40:], p, average="macro"), abs=2e-3)
