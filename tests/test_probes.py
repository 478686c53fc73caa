"""Probe layers against NumPy oracles."""

import numpy as np
import pytest
from keras import ops

from keras_hybrid_interp.probes import FeaturePooling, LinearProbe, OutputProbabilities, adaptive_bins


def test_whitening_gives_identity_covariance_and_drops_constant_directions():
    rng = np.random.default_rng(0)
    f = (rng.normal(size=(5000, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    f = np.concatenate([f, np.full((5000, 1), 3.0, np.float32)], axis=1)  # a constant feature
    p = LinearProbe(3, whiten=True)
    p.build((None, 7))
    p.set_input_transform(f)
    np.testing.assert_allclose(np.asarray(p.mean), f.astype(np.float64).mean(0), rtol=1e-6)
    t = np.asarray(p.transform, dtype=np.float64)
    z = (f - np.asarray(p.mean)) @ t
    cov = np.cov(z.T)
    kept = np.abs(np.diag(cov)) > 0.5
    assert kept.sum() == 6  # the constant direction gets weight 0
    np.testing.assert_allclose(cov[np.ix_(kept, kept)], np.eye(6), atol=1e-4)
    assert np.all(t[6] == 0)


def test_standardization_without_whitening():
    rng = np.random.default_rng(1)
    f = (rng.normal(size=(2000, 4)) * [1.0, 10.0, 1e-3, 0.0] + 5).astype(np.float32)
    p = LinearProbe(2, whiten=False)
    p.build((None, 4))
    p.set_input_transform(f)
    np.testing.assert_allclose(np.asarray(p.transform)[:3], 1 / f[:, :3].astype(np.float64).std(0), rtol=1e-4)
    assert np.asarray(p.transform)[3] == 0.0


@pytest.mark.parametrize("whiten", [True, False])
def test_effective_weights_reproduce_the_layer(whiten):
    rng = np.random.default_rng(2)
    f = rng.normal(size=(50, 5)).astype(np.float32)
    p = LinearProbe(4, whiten=whiten)
    p.build((None, 5))
    p.set_input_transform(f)
    p.kernel.assign(rng.normal(size=(5, 4)).astype(np.float32))
    p.bias.assign(rng.normal(size=4).astype(np.float32))
    w, b = p.effective_weights()
    logits = f.astype(np.float64) @ w + b
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    np.testing.assert_allclose(ops.convert_to_numpy(p(f)), soft, rtol=1e-4, atol=1e-6)


def test_pooling_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(FeaturePooling("avg")(x)), x.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(FeaturePooling("max")(x)), x.max(axis=(1, 2)), rtol=1e-6)
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


def test_few_samples_per_feature_standardize_instead_of_whitening():
    rng = np.random.default_rng(4)
    f = (rng.normal(size=(50, 8)) * np.arange(1, 9)).astype(np.float32)  # 50 < 10 * 8
    p = LinearProbe(3, whiten=True)
    p.build((None, 8))
    p.set_input_transform(f)
    t = np.asarray(p.transform, dtype=np.float64)
    np.testing.assert_allclose(t, np.diag(1 / f.astype(np.float64).std(0)), rtol=1e-5)
