"""Probe layers and the probe trainer against NumPy and scikit-learn oracles."""

import numpy as np
import pytest

from keras import ops

from keras_hybrid_interp.core import trainer as _trainer
from keras_hybrid_interp.core.pooling import FeaturePooling, adaptive_bins
from keras_hybrid_interp.local.probes import LinearProbe, OutputProbabilities, input_transform


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_input_transform_is_standard_scaler_and_drops_constant_features():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    f = (rng.normal(size=(2000, 5)) * [1.0, 10.0, 1e-3, 0.0, 1.0] + 5).astype(np.float32)
    f[:, 4] = 7.0  # constant, but not zero
    mean, scale = input_transform(f)
    ref = StandardScaler().fit(f.astype(np.float64))
    np.testing.assert_allclose(mean, ref.mean_, rtol=1e-10)
    np.testing.assert_allclose(scale[:3], 1 / ref.scale_[:3], rtol=1e-8)
    # constant features are read with weight 0 (not 1 / tiny)
    assert scale[3] == 0.0 and scale[4] == 0.0
    z = (f - mean) * scale
    np.testing.assert_allclose(z[:, :3].std(0), 1.0, rtol=1e-5)
    assert np.all(z[:, 3:] == 0)


def test_input_transform_streams_in_chunks():
    # Wide features: the statistics are accumulated over several row chunks.
    rng = np.random.default_rng(2)
    f = (rng.normal(size=(2100, 2048)) * 3 + rng.normal(size=2048)).astype(np.float32)
    mean, scale = input_transform(f)
    f64 = f.astype(np.float64)
    np.testing.assert_allclose(mean, f64.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scale, 1 / f64.std(0), rtol=1e-10)


def test_state_round_trip_and_effective_weights_reproduce_the_layer():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(50, 5)).astype(np.float32)
    p = LinearProbe(4)
    p.build((None, 5))
    assert sorted(w.name for w in p.weights) == ["bias", "kernel", "mean", "scale"]
    assert [w.name for w in p.trainable_weights] == ["kernel", "bias"]
    mean, scale = rng.normal(size=5), np.abs(rng.normal(size=5))
    scale[2] = 0.0
    kernel, bias = rng.normal(size=(5, 4)), rng.normal(size=4)
    p.set_state(mean, scale, kernel, bias)
    for a, b in zip(p.state(), (mean, scale, kernel, bias)):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-6)  # stored in float32
    ref = softmax(((f.astype(np.float64) - mean) * scale) @ kernel + bias)
    np.testing.assert_allclose(ops.convert_to_numpy(p(f)), ref, rtol=1e-4, atol=1e-6)
    w, b = p.effective_weights()
    assert np.all(w[2] == 0)  # the dropped feature has no weight
    np.testing.assert_allclose(softmax(f.astype(np.float64) @ w + b), ref, rtol=1e-4, atol=1e-6)


def test_pooling_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(FeaturePooling("avg")(x)), x.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(FeaturePooling("max")(x)), x.max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(FeaturePooling("min")(x)), x.min(axis=(1, 2)), rtol=1e-6)
    k = 2
    ref = []
    for r0, r1 in adaptive_bins(5, k):
        for c0, c1 in adaptive_bins(7, k):
            ref.append(x[:, r0:r1, c0:c1].mean(axis=(1, 2)))
    np.testing.assert_allclose(np.asarray(FeaturePooling(k)(x)), np.concatenate(ref, axis=-1), rtol=1e-5)
    assert adaptive_bins(5, 2) == [(0, 3), (2, 5)]  # PyTorch's adaptive bins overlap for odd sizes
    pw = FeaturePooling(k).position_weights(5, 7)
    np.testing.assert_allclose(pw.sum(axis=0), 1.0)


def test_output_probabilities():
    p = np.array([[0.2], [0.9]], np.float32)
    np.testing.assert_allclose(np.asarray(OutputProbabilities("sigmoid")(p)), [[0.8, 0.2], [0.1, 0.9]], rtol=1e-6)
    z = np.array([[0.0, np.log(3.0)]], np.float32)
    np.testing.assert_allclose(np.asarray(OutputProbabilities("logits")(z)), [[0.25, 0.75]], rtol=1e-6)
    # one binary logit: p(1) = sigmoid(z)
    z1 = np.array([[np.log(3.0)], [-2.0]], np.float32)
    s = 1 / (1 + np.exp(-z1[:, 0].astype(np.float64)))
    np.testing.assert_allclose(np.asarray(OutputProbabilities("logits")(z1)), np.stack([1 - s, s], 1), rtol=1e-6)


def _problem(k, soft, n=40, d=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    if soft:
        targets = softmax(rng.normal(size=(n, k)) * 2)
    else:
        targets = rng.integers(0, k, size=n)
    free = 1 if k == 2 else k
    theta = rng.normal(size=d * free + free)
    return z, targets, theta


@pytest.mark.parametrize("k", [3, 2])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("C", [0.5, np.inf])
def test_objective_gradient_matches_finite_differences(k, soft, C):
    z, targets, theta = _problem(k, soft)
    n, d = z.shape
    value, grad, loss = _trainer.objective(theta, z, targets, k, C)
    # the value by hand: mean cross-entropy of the softmax (K=2: column 0 pinned at 0) + penalty
    free = 1 if k == 2 else k
    w, b = theta[: d * free].reshape(d, free), theta[d * free:]
    logits = z @ w + b
    if k == 2:
        logits = np.concatenate([np.zeros((n, 1)), logits], axis=1)
    p = softmax(logits)
    t = targets if soft else np.eye(k)[targets]
    ce = -np.mean(np.sum(t * np.log(p), axis=1))
    assert loss == pytest.approx(ce, rel=1e-12)
    penalty = 0.0 if np.isinf(C) else np.sum(w * w) / (2 * C * n)
    assert value == pytest.approx(ce + penalty, rel=1e-12)
    # the gradient by central differences
    h = 1e-6
    fd = np.empty_like(theta)
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        fd[i] = (_trainer.objective(theta + e, z, targets, k, C)[0]
                 - _trainer.objective(theta - e, z, targets, k, C)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k", [3, 2])
def test_fit_probe_reaches_the_optimum_and_ignores_the_start(k):
    z, targets, _ = _problem(k, soft=False, n=200, d=5, seed=1)
    sol = _trainer.fit_probe(z, targets, k, C=1.0)
    assert sol.converged
    free = 1 if k == 2 else k
    kernel, bias = (sol.kernel[:, 1:], sol.bias[1:]) if k == 2 else (sol.kernel, sol.bias)
    theta = np.concatenate([kernel.ravel(), bias])
    _, grad, loss = _trainer.objective(theta, z, targets, k, 1.0)
    assert np.max(np.abs(grad)) < 1e-5
    assert loss == pytest.approx(sol.loss)
    if k == 2:
        assert np.all(sol.kernel[:, 0] == 0) and sol.bias[0] == 0
    rng = np.random.default_rng(5)
    other = _trainer.fit_probe(z, targets, k, C=1.0,
                               init=(rng.normal(size=(5, k)) * 3, rng.normal(size=k)))
    assert other.objective == pytest.approx(sol.objective, rel=1e-9)
    np.testing.assert_allclose(softmax(z @ other.kernel + other.bias), softmax(z @ sol.kernel + sol.bias), atol=1e-5)
    assert free * 5 + free == len(theta)


def test_C_must_be_positive():
    for bad in (0, -1.0, "1", True, np.nan):
        with pytest.raises(ValueError, match="`C` must be a positive float"):
            _trainer.check_C(bad)
    assert _trainer.check_C(np.inf) == np.inf


def test_fewer_samples_than_features_is_reported():
    import keras
    from keras import layers

    from keras_hybrid_interp import HybridInterpreter
    from keras_hybrid_interp.core.health import InterpretationWarning

    inp = keras.Input((8, 8, 1))
    h = layers.Conv2D(16, 3, padding="same", activation="tanh", name="wide")(inp)
    out = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(h))
    interp = HybridInterpreter(keras.Model(inp, out), blocks=["wide"])
    x = np.random.default_rng(0).random((9, 8, 8, 1), dtype=np.float32)
    with pytest.warns(InterpretationWarning, match=r"16 features but only 9 training samples"):
        interp.fit_probes(x, np.arange(9) % 3, verbose=0)
