"""Multi-label and regression probes, layer tables and explanations against scikit-learn.

The oracles never use the package: the block features are computed by calling the model's
own layers (``keras.Model(model.input, layer.output)``) and averaging over positions with
NumPy; the probes are scikit-learn's ``StandardScaler`` + ``LogisticRegression`` per label, or
``RidgeCV``; the metrics are scikit-learn's.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    hamming_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.preprocessing import StandardScaler

import keras
from keras import layers

from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.core.trainer import RIDGE_ALPHAS

N = 90
BLOCKS = ["c1", "c2"]


def _model(head, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 10, 2))
    h = layers.Conv2D(6, 3, name="c1")(inp)  # linear convs: no constant (dead) features
    h = layers.Conv2D(5, 3, activation="tanh", name="c2")(h)
    return keras.Model(inp, head(layers.GlobalAveragePooling2D()(h)))


def _data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 10, 10, 2)).astype("float32")
    x[:, :4, :4, 0] += rng.normal(size=(N, 1, 1)) * 2  # a signal the labels follow
    return x, rng


def _features(model, x, name):
    f = keras.Model(model.input, model.get_layer(name).output).predict(x, verbose=0)
    return f.astype(np.float64).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def multilabel():
    model = _model(lambda g: layers.Dense(3, activation="sigmoid", name="labels")(g))
    x, rng = _data()
    signal = x[:, :4, :4, 0].mean(axis=(1, 2))
    y = np.stack([signal > 0, signal + rng.normal(size=N) > 0.5, rng.random(N) < 0.3], axis=1).astype(int)
    return model, x, y


@pytest.fixture(scope="module")
def regression():
    model = _model(lambda g: layers.Dense(2, name="values")(g))
    x, rng = _data(2)
    signal = x[:, :4, :4, 0].mean(axis=(1, 2))
    y = np.stack([3 * signal + rng.normal(size=N) * 0.3, rng.normal(size=N)], axis=1)
    return model, x, y


def test_multilabel_probes_are_logistic_regressions_per_label(multilabel):
    model, x, y = multilabel
    interp = HybridInterpreter(model, BLOCKS)
    assert interp.task == "multilabel" and interp.num_classes == 3
    interp.fit_probes(x, y, C=0.5, tol=1e-10, max_iter=5000, batch_size=16, verbose=0)
    for i, name in enumerate(BLOCKS):
        f = _features(model, x, name)
        z = StandardScaler().fit_transform(f)
        mean, scale, kernel, bias = interp.probes[i].state()
        np.testing.assert_allclose(mean, f.mean(axis=0), rtol=1e-5, atol=1e-6)
        for k in range(3):
            lr = LogisticRegression(C=0.5, tol=1e-12, max_iter=10000).fit(z, y[:, k])
            np.testing.assert_allclose(kernel[:, k], lr.coef_[0], atol=2e-4)
            np.testing.assert_allclose(bias[k], lr.intercept_[0], atol=2e-4)


def test_multilabel_layer_table_equals_sklearn_metrics(multilabel):
    model, x, y = multilabel
    interp = HybridInterpreter(model, BLOCKS)
    interp.fit_probes(x[:60], y[:60], verbose=0)
    table = interp.evaluate_layers(x[60:], y[60:], batch_size=7)  # 7 does not divide 30
    assert table.task == "multilabel" and table.headline == "auroc"
    xe, ye = x[60:], y[60:]
    for i, name in enumerate(BLOCKS):
        ftr, fte = _features(model, x[:60], name), _features(model, xe, name)
        sc = StandardScaler().fit(ftr)
        p = np.stack([LogisticRegression(tol=1e-10, max_iter=10000).fit(sc.transform(ftr), y[:60, k])
                      .predict_proba(sc.transform(fte))[:, 1] for k in range(3)], axis=1)
        assert table.metrics["auroc"][i] == pytest.approx(roc_auc_score(ye, p, average="macro"), abs=2e-3)
        assert table.metrics["average_precision"][i] == pytest.approx(
            average_precision_score(ye, p, average="macro"), abs=2e-3)
        dec = p > 0.5
        assert table.metrics["f1"][i] == pytest.approx(f1_score(ye, dec, average="micro"), abs=0.02)
        assert table.metrics["hamming"][i] == pytest.approx(hamming_loss(ye, dec), abs=0.02)
        bce = -np.mean(ye * np.log(p) + (1 - ye) * np.log(1 - p))
        assert table.loss[i] == pytest.approx(bce, abs=2e-3)
        model_dec = model.predict(xe, verbose=0) > 0.5
        assert table.agreement[i] == pytest.approx(np.mean(dec == model_dec), abs=0.02)
    q = model.predict(xe, verbose=0).astype(np.float64)
    assert table.metrics["auroc"][-1] == pytest.approx(roc_auc_score(ye, q, average="macro"), abs=1e-6)
    assert table.metrics["hamming"][-1] == pytest.approx(hamming_loss(ye, q > 0.5), abs=1e-9)
    frame = table.to_frame()
    assert {"auroc", "average_precision", "f1", "hamming", "loss", "agreement"} <= set(frame.columns)
    assert frame["auroc"].notna().all()


def test_multilabel_without_labels_scores_against_the_model(multilabel):
    model, x, y = multilabel
    interp = HybridInterpreter(model, BLOCKS)
    interp.fit_probes(x, verbose=0)  # soft targets: the model's label probabilities
    table = interp.evaluate_layers(x)
    assert not table.labelled
    decisions = (model.predict(x, verbose=0) > 0.5).astype(int)
    pred = interp.layer_predictions(x)
    for i in range(len(BLOCKS)):
        assert table.metrics["hamming"][i] == pytest.approx(hamming_loss(decisions, pred.probabilities[i] > 0.5))
    assert table.metrics["hamming"][-1] == 0.0 and table.agreement[-1] == 1.0


def test_regression_probes_are_ridge_cv(regression):
    model, x, y = regression
    interp = HybridInterpreter(model, BLOCKS, task="regression")
    assert interp.task == "regression" and interp.output_kind == "linear"
    interp.fit_probes(x, y, verbose=0)
    for i, name in enumerate(BLOCKS):
        z = StandardScaler().fit_transform(_features(model, x, name))
        ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(z, y)
        _, _, kernel, bias = interp.probes[i].state()
        assert interp.convergence_["alpha"][i] == ridge.alpha_
        np.testing.assert_allclose(kernel, ridge.coef_.T, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bias, ridge.intercept_, rtol=1e-5, atol=1e-6)


def test_regression_layer_table_equals_sklearn_and_bootstrap_equals_a_slow_reference(regression):
    model, x, y = regression
    interp = HybridInterpreter(model, BLOCKS, task="regression")
    interp.fit_probes(x[:60], y[:60], verbose=0)
    table = interp.evaluate_layers(x[60:], y[60:], batch_size=8, bootstrap=200, random_state=5, confidence=0.9)
    same = interp.evaluate_layers(x[60:], y[60:], batch_size=30, bootstrap=200, random_state=5, confidence=0.9)
    ye = y[60:]
    preds = []
    for i, name in enumerate(BLOCKS):
        sc = StandardScaler().fit(_features(model, x[:60], name))
        pred = RidgeCV(alphas=RIDGE_ALPHAS).fit(sc.transform(_features(model, x[:60], name)), y[:60]).predict(
            sc.transform(_features(model, x[60:], name)))
        preds.append(pred)
        assert table.metrics["r2"][i] == pytest.approx(r2_score(ye, pred), abs=1e-4)
        assert table.metrics["mae"][i] == pytest.approx(mean_absolute_error(ye, pred), abs=1e-4)
        assert table.metrics["rmse"][i] == pytest.approx(np.sqrt(mean_squared_error(ye, pred)), abs=1e-4)
        assert table.loss[i] == pytest.approx(mean_squared_error(ye, pred), abs=1e-4)
    out = model.predict(x[60:], verbose=0).astype(np.float64)
    assert table.metrics["r2"][-1] == pytest.approx(r2_score(ye, out), abs=1e-6)  # float32 outputs, other batches
    # The Poisson bootstrap: the same weights drawn sample by sample in stream order, whatever the batch size
    # (features of other batch shapes may differ in float32 rounding on JAX: equal to that).
    for m in ("r2", "mae", "rmse", "loss"):
        np.testing.assert_allclose(table.lower[m], same.lower[m], rtol=1e-5, atol=1e-7)
    w = np.random.default_rng(5).poisson(1.0, size=(len(ye), 200)).astype(np.float64)
    ok = w.sum(axis=0) > 0
    w = w[:, ok]
    r2s = []
    for b in range(w.shape[1]):
        wb = w[:, b][:, None]
        mu = (wb * ye).sum(0) / wb.sum()
        sse = (wb * (ye - preds[1]) ** 2).sum(0)
        sst = (wb * (ye - mu) ** 2).sum(0)
        r2s.append(np.mean(1 - sse / sst))
    lo, hi = np.quantile(r2s, [0.05, 0.95])
    assert table.lower["r2"][1] == pytest.approx(lo, abs=1e-3) and table.upper["r2"][1] == pytest.approx(hi, abs=1e-3)
    assert table.lower["r2"][1] < table.metrics["r2"][1] < table.upper["r2"][1]


def test_regression_controls_are_ridge_on_permuted_targets(regression):
    model, x, y = regression
    interp = HybridInterpreter(model, BLOCKS, task="regression")
    interp.fit_probes(x[:60], y[:60], controls=2, random_state=3, verbose=0)
    table = interp.evaluate_layers(x[60:], y[60:], controls=2)
    rng = np.random.default_rng(3)
    perms = [rng.permutation(60) for _ in range(2)]
    for i, name in enumerate(BLOCKS):
        sc = StandardScaler().fit(_features(model, x[:60], name))
        ztr, zte = sc.transform(_features(model, x[:60], name)), sc.transform(_features(model, x[60:], name))
        ctl = [r2_score(y[60:], RidgeCV(alphas=RIDGE_ALPHAS).fit(ztr, y[:60][p]).predict(zte)) for p in perms]
        # float32 features, float64 fits: equal to 1e-7 (the blocks' controls differ by far more)
        assert table.metrics["control_r2"][i] == pytest.approx(np.mean(ctl), abs=1e-7)
        assert table.metrics["selectivity"][i] == pytest.approx(table.metrics["r2"][i] - np.mean(ctl), abs=1e-7)
    assert np.isnan(table.metrics["control_r2"][-1])


def test_explain_and_layer_predictions_in_the_tasks_terms(multilabel, regression):
    model, x, y = regression
    interp = HybridInterpreter(model, BLOCKS, task="regression")
    interp.fit_probes(x, y, verbose=0)
    pred = interp.layer_predictions(x[:5])
    e = interp.explain(x[3])
    for i, name in enumerate(BLOCKS):
        z = StandardScaler().fit(_features(model, x, name))
        ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(z.transform(_features(model, x, name)), y)
        ref = ridge.predict(z.transform(_features(model, x[:5], name)))
        np.testing.assert_allclose(pred.probabilities[i], ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(e.probabilities[i], ref[3], rtol=1e-4, atol=1e-4)
        # average pooling: the evidence map's mean over positions is the probe's value
        np.testing.assert_allclose(e.evidence_maps[i].mean(axis=(0, 1)), ref[3], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e.model_probabilities, model.predict(x[3:4], verbose=0)[0], rtol=1e-5)
    assert e.decision_index is None and "model_values=" in repr(e)
    assert set(pred.to_frame().columns) >= {"value"} and set(e.to_frame().columns) >= {"value", "model_value"}

    model, x, y = multilabel
    interp = HybridInterpreter(model, BLOCKS, class_names=["a", "b", "c"])
    interp.fit_probes(x, y, verbose=0)
    e = interp.explain(x[0])
    p = interp.layer_predictions(x[:1]).probabilities[:, 0]
    np.testing.assert_allclose(e.probabilities, p, rtol=1e-6)
    frame = e.to_frame()
    assert list(frame["class"][:3]) == ["a", "b", "c"] and frame["is_predicted"].dtype == bool
    # the decision block: from there on, every block's label decisions equal the model's
    dec = (e.probabilities > 0.5)
    model_dec = e.model_probabilities > 0.5
    if e.decision_index is not None:
        assert (dec[e.decision_index:] == model_dec).all()
        assert e.decision_index == 0 or not (dec[e.decision_index - 1] == model_dec).all()


def test_save_and_load_keep_the_task(tmp_path, multilabel, regression):
    for (model, x, y), task in ((multilabel, "auto"), (regression, "regression")):
        interp = HybridInterpreter(model, BLOCKS, task=task)
        interp.fit_probes(x, y, verbose=0)
        interp.save(tmp_path / f"{task}.keras")
        back = HybridInterpreter.load(tmp_path / f"{task}.keras")
        assert back.task == interp.task
        np.testing.assert_allclose(back.layer_predictions(x[:4]).probabilities,
                                   interp.layer_predictions(x[:4]).probabilities, rtol=1e-6)


def test_one_output_of_several_equals_the_model_cut_to_it(regression):
    model, x, y = regression
    inp = model.input
    g = model.get_layer("values").input
    two = keras.Model(inp, {"severity": layers.Dense(1, name="severity")(g),
                            "findings": layers.Dense(3, activation="sigmoid", name="findings")(g)})
    single = keras.Model(inp, two.get_layer("severity").output)
    a = HybridInterpreter(two, BLOCKS, output="severity", task="regression")
    b = HybridInterpreter(single, BLOCKS, task="regression")
    c = HybridInterpreter(two, BLOCKS, output=two.output_names.index("severity"), task="regression")
    for interp in (a, b, c):
        interp.fit_probes(x, y[:, 0], verbose=0)
    ta, tb, tc = (i.evaluate_layers(x, y[:, 0]).to_frame() for i in (a, b, c))
    np.testing.assert_allclose(ta["r2"], tb["r2"], rtol=1e-6)
    np.testing.assert_allclose(tc["r2"], tb["r2"], rtol=1e-6)
    assert HybridInterpreter(two, BLOCKS, output="findings").task == "multilabel"


def test_multilabel_ranking_intervals_equal_weighted_sklearn_on_the_same_resamples(multilabel):
    model, x, y = multilabel
    interp = HybridInterpreter(model, BLOCKS)
    interp.fit_probes(x[:60], y[:60], verbose=0)
    table = interp.evaluate_layers(x[60:], y[60:], batch_size=7, bootstrap=60, random_state=11, confidence=0.8)
    ye = y[60:]
    p = interp.layer_predictions(x[60:]).probabilities[1]  # block c2's label probabilities
    w = np.random.default_rng(11).poisson(1.0, size=(len(ye), 60))
    w = w[:, w.sum(axis=0) > 0]
    aurocs, aps, hams = [], [], []
    for b in range(w.shape[1]):
        sw = w[:, b]
        keep = [k for k in range(3) if 0 < (sw * ye[:, k]).sum() < sw.sum()]
        aurocs.append(np.mean([roc_auc_score(ye[:, k], p[:, k], sample_weight=sw) for k in keep]))
        aps.append(np.mean([average_precision_score(ye[:, k], p[:, k], sample_weight=sw) for k in keep]))
        hams.append(np.sum(sw[:, None] * ((p > 0.5) != ye)) / (3 * sw.sum()))
    for name, ref in (("auroc", aurocs), ("average_precision", aps), ("hamming", hams)):
        lo, hi = np.quantile(ref, [0.1, 0.9])
        assert table.lower[name][1] == pytest.approx(lo, abs=1e-5), name
        assert table.upper[name][1] == pytest.approx(hi, abs=1e-5), name
    assert table.lower["auroc"][1] < table.upper["auroc"][1]
    assert {"auroc_low", "auroc_high", "average_precision_low"} <= set(table.to_frame().columns)
