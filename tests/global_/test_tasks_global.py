"""Association, importance and Taylor for multi-label and regression models, against independent references.

References: filter summaries from the model's own layers and NumPy (``np.corrcoef``); importance
from the full model re-run with the filter perturbed at the block (``full_model_with_perturbation``)
and scored with scikit-learn; Taylor from a closed-form gradient of a GAP + Dense head.
"""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, mean_squared_error, r2_score

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer
from keras_hybrid_interp.core.perturbation import job_permutation

from _models_global import Perturb, full_model_with_perturbation

N, F = 64, 5


def _model(head, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((9, 9, 2))
    h = layers.Conv2D(F, 3, activation="relu", name="block")(inp)
    h = layers.Conv2D(4, 3, activation="tanh", name="after")(h)  # a tail with a hidden layer: the engine runs it
    return keras.Model(inp, head(layers.GlobalAveragePooling2D(name="gap")(h)))


def _data(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 9, 9, 2)).astype("float32"), rng


def _summaries(model, x):
    a = keras.Model(model.input, model.get_layer("block").output).predict(x, verbose=0).astype(np.float64)
    return a.mean(axis=(1, 2))


@pytest.fixture(scope="module")
def multilabel():
    model = _model(lambda g: layers.Dense(3, activation="sigmoid", name="labels")(g))
    x, rng = _data()
    s = _summaries(model, x)
    y = np.stack([s[:, 0] > np.median(s[:, 0]), s[:, 1] + rng.normal(size=N) * s[:, 1].std() > s[:, 1].mean(),
                  rng.random(N) < 0.4], axis=1).astype(int)
    return model, x, y


@pytest.fixture(scope="module")
def regression():
    model = _model(lambda g: layers.Dense(2, name="values")(g))
    x, rng = _data(2)
    out = model.predict(x, verbose=0).astype(np.float64)
    y = out + rng.normal(size=out.shape) * out.std(axis=0) * 0.5
    return model, x, y


def test_association_is_the_pearson_correlation_with_labels_and_targets(multilabel, regression):
    for (model, x, y), task in ((multilabel, "auto"), (regression, "regression")):
        ga = GlobalAnalyzer(model, task=task)
        res = ga.filter_class_association(x, y, block="block", batch_size=9)
        s = _summaries(model, x)
        for c in range(F):
            for k in range(y.shape[1]):
                if np.ptp(s[:, c]) == 0:
                    assert np.isnan(res.values[c, k])
                    continue
                assert res.values[c, k] == pytest.approx(np.corrcoef(s[:, c], y[:, k])[0, 1], abs=1e-6)
        assert np.isfinite(res.values).sum() >= 2 * y.shape[1]  # not all NaN: the check compared numbers
        if task == "auto":  # multi-label: mean summary over the samples that carry each label, and their count
            np.testing.assert_array_equal(res.class_counts, y.sum(axis=0))
            for k in range(3):
                np.testing.assert_allclose(res.class_means[:, k], s[y[:, k] == 1].mean(axis=0), rtol=1e-5, atol=1e-7)
        else:
            assert np.isnan(res.class_means).all()


def test_association_without_labels_uses_the_models_decisions(multilabel):
    model, x, _ = multilabel
    res = GlobalAnalyzer(model).filter_class_association(x, block="block")
    decisions = (model.predict(x, verbose=0) > 0.5).astype(float)
    s = _summaries(model, x)
    assert res.label_source == "model predictions"
    for k in range(3):
        if decisions[:, k].min() == decisions[:, k].max():
            assert np.isnan(res.values[:, k]).all()
        else:
            for c in range(F):
                if np.ptp(s[:, c]) > 0:
                    assert res.values[c, k] == pytest.approx(np.corrcoef(s[:, c], decisions[:, k])[0, 1], abs=1e-6)


def _scores(task, y, p):
    if task == "multilabel":
        return (average_precision_score(y, p, average="macro"),
                -np.mean(-(y * np.log(np.clip(p, 1e-7, 1 - 1e-7)) + (1 - y) * np.log(np.clip(1 - p, 1e-7, 1 - 1e-7)))))
    return r2_score(y, p), -mean_squared_error(y, p)


@pytest.mark.parametrize("which", ["multilabel", "regression"])
def test_permutation_and_ablation_equal_a_full_rerun_scored_by_sklearn(which, multilabel, regression):
    model, x, y = multilabel if which == "multilabel" else regression
    ga = GlobalAnalyzer(model, task="auto" if which == "multilabel" else "regression")
    g = ga.graph
    key = g.resolve("block")
    base = model.predict(x, verbose=0).astype(np.float64)
    names = ("average_precision", "loss") if which == "multilabel" else ("r2", "neg_mse")
    for j, scoring in enumerate(names):
        perm = ga.filter_importance(x, y, block="block", n_repeats=2, random_state=3, scoring=scoring)
        abl = ga.filter_importance(x, y, block="block", method="ablation", scoring=scoring)
        assert perm.scoring == scoring
        assert perm.baseline_score == pytest.approx(_scores(which, y, base)[j], abs=1e-5)
        for c in range(F):
            for r in range(2):
                p = job_permutation(perm.random_state, c, r, N)
                ref = full_model_with_perturbation(g, key, Perturb([c], F, perm=p)).predict_on_batch(x)
                ref = ref.astype(np.float64)
                assert perm.importances[c, r] == pytest.approx(_scores(which, y, base)[j] - _scores(which, y, ref)[j],
                                                               abs=1e-5)
            ref = full_model_with_perturbation(g, key, Perturb([c], F)).predict_on_batch(x).astype(np.float64)
            assert abl.importances[c, 0] == pytest.approx(_scores(which, y, base)[j] - _scores(which, y, ref)[j],
                                                          abs=1e-5)
        assert np.abs(abl.importances).max() > 1e-3  # the perturbations changed the scores: not zeros vs zeros
    auto = ga.filter_importance(x, y, block="block", method="ablation")
    assert auto.scoring == names[0]  # "auto" is the task's default score


def test_taylor_uses_the_tasks_loss():
    # A GAP + Dense head on the block: dL/da has a closed form, so z = sum_pos a * dL/da is exact.
    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 2))
    a_layer = layers.Conv2D(F, 3, activation="relu", name="block")
    gap = layers.GlobalAveragePooling2D(name="gap")
    x, rng = _data(5)
    x = x[:, :6, :6]
    for head, task in ((layers.Dense(3, activation="sigmoid", name="head"), "auto"),
                       (layers.Dense(2, name="head"), "regression")):
        model = keras.Model(inp, head(gap(a_layer(inp))))
        a = keras.Model(inp, a_layer.output).predict(x, verbose=0).astype(np.float64)
        W, b = (w.astype(np.float64) for w in head.get_weights())
        out = a.mean(axis=(1, 2)) @ W + b
        pos = a.shape[1] * a.shape[2]
        if task == "auto":
            y = (rng.random((len(x), 3)) < 0.5).astype(float)
            dz = (1 / (1 + np.exp(-out)) - y) / 3  # d mean BCE / d logit
        else:
            y = rng.normal(size=(len(x), 2))
            dz = 2 * (out - y) / 2  # d mean squared error / d output
        grad = np.einsum("nk,ck->nc", dz, W) / pos  # dL/da at every position (a GAP spreads it evenly)
        z = np.einsum("nhwc,nc->nc", a, grad)
        res = GlobalAnalyzer(model, task=task).filter_importance(x, y, block="block", method="taylor",
                                                                 taylor="abs_per_sample")
        np.testing.assert_allclose(res.importances[:, 0], np.abs(z).mean(axis=0), rtol=2e-4, atol=1e-8)
        assert np.abs(z).max() > 1e-4


@pytest.mark.parametrize("which", ["multilabel", "regression"])
def test_the_last_blocks_closed_form_head_scores_the_task_as_a_full_rerun(which, multilabel, regression):
    # GAP -> Dense after the block: the closed-form linear head (or the pooled head) replaces the tail.
    model, x, y = multilabel if which == "multilabel" else regression
    head = model.layers[-1]
    inp = model.input
    last = keras.Model(inp, head.__class__.from_config(head.get_config())(
        layers.GlobalAveragePooling2D()(model.get_layer("after").output)))
    last.layers[-1].set_weights(head.get_weights())
    ga = GlobalAnalyzer(last, task="auto" if which == "multilabel" else "regression")
    key = ga.graph.resolve("after")
    assert type(ga._engine(key)).__name__ != "TailEngine"  # a shortcut is taken
    base = last.predict_on_batch(x).astype(np.float64)
    scoring = "average_precision" if which == "multilabel" else "r2"
    perm = ga.filter_importance(x, y, block="after", n_repeats=2, random_state=1, scoring=scoring)
    abl = ga.filter_importance(x, y, block="after", method="ablation", ablation_value="mean", scoring="loss")
    for c in range(4):
        for r in range(2):
            p = job_permutation(perm.random_state, c, r, N)
            ref = full_model_with_perturbation(ga.graph, key, Perturb([c], 4, perm=p)).predict_on_batch(x)
            assert perm.importances[c, r] == pytest.approx(
                _scores(which, y, base)[0] - _scores(which, y, ref.astype(np.float64))[0], abs=1e-5)
        a = keras.Model(inp, model.get_layer("after").output).predict_on_batch(x)
        fill = np.zeros(a.shape[1:], np.float32)
        fill[..., c] = a[..., c].mean(axis=0, dtype=np.float64)  # the filter's mean map
        ref = full_model_with_perturbation(ga.graph, key, Perturb([c], 4, fill=fill)).predict_on_batch(x)
        assert abl.importances[c, 0] == pytest.approx(
            _scores(which, y, base)[1] - _scores(which, y, ref.astype(np.float64))[1], abs=1e-5)
    assert np.abs(abl.importances).max() > 1e-4


def test_correlation_cka_and_atlas_work_on_a_unets_decoder_and_on_task_models(regression):
    # They do not depend on the task; they must simply work on these models (decoder blocks included).
    from segmentation_models import unet

    model = unet(size=16)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 16, 16, 1)).astype("float32")
    ga = GlobalAnalyzer(model, blocks=["enc1_conv2", "bott_conv2", "dec1_conv2"])
    assert ga.task == "segmentation"
    maps = {b: keras.Model(model.input, model.get_layer(b).output).predict_on_batch(x).astype(np.float64)
            for b in ("enc1_conv2", "bott_conv2", "dec1_conv2")}
    corr = ga.filter_correlation(x, block="dec1_conv2", batch_size=7)
    s = maps["dec1_conv2"].mean(axis=(1, 2))
    live = np.ptp(s, axis=0) > 0
    np.testing.assert_allclose(corr.matrix.to_numpy()[np.ix_(live, live)], np.corrcoef(s[:, live].T), atol=1e-6)
    sim = ga.layer_similarity(x, estimator="full", batch_size=7)
    a, b = (maps[k].mean(axis=(1, 2)) for k in ("enc1_conv2", "dec1_conv2"))
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    ref = np.sum((b.T @ a) ** 2) / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))  # linear CKA, by hand
    assert 0 < ref < 1 and sim.matrix.loc["enc1_conv2", "dec1_conv2"] == pytest.approx(ref, abs=1e-6)
    atlas = ga.filter_examples(x, block="dec1_conv2", top_k=3, batch_size=7)
    peak = maps["dec1_conv2"].max(axis=(1, 2))  # (N, C): each filter's top samples by their maximum
    for c in np.flatnonzero(np.ptp(peak, axis=0) > 0)[:4]:
        np.testing.assert_array_equal(np.sort(atlas.to_frame().query("filter == @c")["sample"].to_numpy()),
                                      np.sort(np.argsort(-peak[:, c], kind="stable")[:3]))
    # a regression model's correlation and atlas need no task
    model, x, _ = regression
    assert GlobalAnalyzer(model).filter_correlation(x, block="block").n_filters == F
