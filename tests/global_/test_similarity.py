import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer
from keras_hybrid_interp.global_.similarity import linear_cka

from _models_global import residual_model


def _hsic_cka(x, y):
    """Kornblith et al. 2019 via centred Gram matrices (the definition)."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_reference_formula_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    y = x @ rng.normal(size=(6, 4)) + 0.5 * rng.normal(size=(50, 4))
    v = linear_cka(x, y)
    assert v == pytest.approx(_hsic_cka(x, y), abs=1e-12)
    assert 0 < v < 1
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x @ q, y) == pytest.approx(v, abs=1e-12)
    assert linear_cka(3.7 * x, y) == pytest.approx(v, abs=1e-12)
    assert linear_cka(x + 5.0, y) == pytest.approx(v, abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(linear_cka(np.ones((5, 2)), x[:5]))
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(x, y[:10])


def _pooled(ga, x, name):
    return ga.graph.build([ga.graph.resolve(name)]).predict_on_batch(x).astype(np.float64).mean(axis=(1, 2))


@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_streaming_equals_reference(batch_size):
    """The full estimator, in any batching, is the linear CKA of all samples (the minibatch one:
    tests/test_cka_two_models.py)."""
    ga = GlobalAnalyzer(residual_model())
    x = np.random.default_rng(1).normal(size=(40, 12, 12, 3)).astype("float32")
    res = ga.layer_similarity(x, batch_size=batch_size, estimator="full")
    assert res.estimator == "full"
    names = ga.block_names
    assert list(res.blocks) == names
    feats = [_pooled(ga, x, n) for n in names]
    for i in range(len(names)):
        for j in range(len(names)):
            assert res.values[i, j] == pytest.approx(
                linear_cka(feats[i], feats[j]), abs=1e-6
            )  # per-sample summaries are float32 on the device; accumulation is float64
    np.testing.assert_allclose(np.diag(res.values), 1.0, atol=1e-12)
    np.testing.assert_array_equal(res.values, res.values.T)
    df = res.to_frame()
    assert len(df) == len(names) ** 2 and list(df.columns) == ["block_i", "block_j", "cka"]
    assert res.matrix.loc[names[0], names[1]] == res.values[0, 1]


@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_orthogonal_and_scaled_copies_have_cka_one(estimator):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    inp = keras.Input((10, 10, 2))
    a = layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(inp)
    rot = layers.Conv2D(6, 1, use_bias=False, name="rotated")
    b = rot(a)
    scale = layers.Conv2D(6, 1, use_bias=False, name="scaled")
    c = scale(b)
    other = layers.Conv2D(6, 3, padding="same", activation="relu", name="other")(c)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(other))
    model = keras.Model(inp, out)
    rot.set_weights([q[None, None].astype("float32")])
    scale.set_weights([(4.0 * np.eye(6))[None, None].astype("float32")])
    x = rng.normal(size=(64, 10, 10, 2)).astype("float32")
    ga = GlobalAnalyzer(model, blocks=["a", "rotated", "scaled", "other"])
    res = ga.layer_similarity(x, estimator=estimator)
    assert res.values[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert res.values[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert res.values[0, 3] < 0.999
    sub = ga.layer_similarity(x, blocks=["a", "other"], estimator=estimator)
    assert sub.values[0, 1] == pytest.approx(res.values[0, 3], abs=1e-10)


@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_constant_block_is_nan_with_warning(estimator):
    inp = keras.Input((8, 8, 2))
    a = layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inp)
    dead = layers.Conv2D(3, 1, activation="relu", name="dead")
    b = dead(a)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(b))
    model = keras.Model(inp, out)
    dead.set_weights([np.zeros((1, 1, 4, 3), "float32"), -np.ones(3, "float32")])
    x = np.random.default_rng(0).normal(size=(20, 8, 8, 2)).astype("float32")
    ga = GlobalAnalyzer(model, blocks=["a", "dead"])
    with pytest.warns(UserWarning, match="constant"):
        res = ga.layer_similarity(x, estimator=estimator)
    assert np.isnan(res.values[1, 0]) and np.isnan(res.values[1, 1]) and res.values[0, 0] == pytest.approx(1.0)
