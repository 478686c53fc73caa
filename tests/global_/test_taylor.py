"""Taylor importance: Molchanov et al. (2019)'s estimator and the variants, against a hand computation.

Oracle: the tiny model's layers called eagerly under ``tf.GradientTape``;
``z[n, c] = sum_hw a[n, h, w, c] * dL_n/da[n, h, w, c]`` per sample from the
gradient of the summed per-sample cross-entropies (samples do not interact
at inference), then the estimators written out with NumPy.
"""

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer
from keras_hybrid_interp.global_.importance import TAYLOR_VARIANTS

tf_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the oracle uses tf.GradientTape")
F, K, N = 5, 3, 26


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((7, 7, 2))
    a = layers.Conv2D(F, 3, padding="same", activation="relu", name="block")(inp)
    h = layers.Conv2D(4, 3, activation="tanh", name="after")(a)  # a non-linear tail: no closed form
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    out = layers.Dense(K, activation="softmax", name="head")(h)
    return keras.Model(inp, out, name="tiny")


def _data(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 7, 7, 2)).astype("float32"), rng.integers(0, K, N)


def hand_z(model, x, y=None):
    """Per-sample ``z`` (N, F) and per-sample loss, with tf.GradientTape on the eagerly called layers."""
    import tensorflow as tf

    a = tf.convert_to_tensor(model.get_layer("block")(x))
    with tf.GradientTape() as tape:
        tape.watch(a)
        p = model.get_layer("head")(model.get_layer("gap")(model.get_layer("after")(a)))
        target = tf.argmax(p, axis=1) if y is None else tf.convert_to_tensor(y)
        loss = -tf.math.log(tf.gather(p, target, axis=1, batch_dims=1))
        total = tf.reduce_sum(loss)
    g = tape.gradient(total, a)
    z = np.einsum("nhwc,nhwc->nc", np.asarray(a, np.float64), np.asarray(g, np.float64))
    return z, np.asarray(loss, np.float64)


@tf_only
@pytest.mark.parametrize("batch_size", [4, 32])
def test_molchanov_is_the_mean_of_per_sample_squares(batch_size):
    model = tiny_model()
    x, y = _data()
    z, loss = hand_z(model, x, y)
    ga = GlobalAnalyzer(model, blocks=["block", "after"])
    res = ga.filter_importance(x, y, block="block", method="taylor", taylor="molchanov", batch_size=batch_size)
    assert res.taylor == "molchanov" and res.importances.shape == (F, 1)
    expect = np.mean(z ** 2, axis=0)  # square per sample, then average
    np.testing.assert_allclose(res.importances[:, 0], expect, rtol=1e-4, atol=1e-10)
    # Not the square of the mean (the paper's estimator over one batch of all samples).
    assert not np.allclose(res.importances[:, 0], np.mean(z, axis=0) ** 2, rtol=1e-2)
    np.testing.assert_allclose(res.baseline_score, -loss.mean(), rtol=1e-5)


@tf_only
def test_variants_and_groups_against_the_hand_z():
    model = tiny_model(seed=2)
    x, y = _data(3)
    z, _ = hand_z(model, x, y)
    ga = GlobalAnalyzer(model, blocks=["block", "after"])
    groups = [[0, 3], [1], [2, 4, 0]]
    zg = np.stack([z[:, g].sum(axis=1) for g in groups], axis=1)  # the gate of a group multiplies all its maps
    expect = {"molchanov": np.mean(zg ** 2, 0), "abs_mean": np.abs(np.mean(zg, 0)),
              "abs_per_sample": np.mean(np.abs(zg), 0)}
    for v in TAYLOR_VARIANTS:
        res = ga.filter_importance(x, y, block="block", method="taylor", taylor=v, groups=groups, batch_size=10)
        np.testing.assert_allclose(res.importances[:, 0], expect[v], rtol=1e-4, atol=1e-10)
        df = res.to_frame()
        assert set(df["taylor"]) == {v} and df["filters"].tolist() == ["0,3", "1", "2,4,0"]


@tf_only
def test_without_labels_the_target_is_the_model_prediction():
    model = tiny_model(seed=4)
    x, _ = _data(5)
    z, _ = hand_z(model, x, None)
    ga = GlobalAnalyzer(model, blocks=["block", "after"])
    res = ga.filter_importance(x, block="block", method="taylor", taylor="molchanov")
    assert res.label_source == "model predictions"
    np.testing.assert_allclose(res.importances[:, 0], np.mean(z ** 2, 0), rtol=1e-4, atol=1e-10)
    default = ga.filter_importance(x, block="block", method="taylor")  # the default: mean_n |z_n|
    assert default.taylor == "abs_per_sample"
    np.testing.assert_allclose(default.importances[:, 0], np.mean(np.abs(z), 0), rtol=1e-4, atol=1e-10)


def test_bad_variant_names_the_choices():
    model = tiny_model()
    x, y = _data()
    with pytest.raises(ValueError, match=r"`taylor` must be one of \['molchanov', 'abs_mean', 'abs_per_sample'\]; "
                                         r"received 'square'"):
        GlobalAnalyzer(model, blocks=["block", "after"]).filter_importance(x, y, block="block", method="taylor",
                                                                           taylor="square")
