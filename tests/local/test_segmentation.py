"""Segmentation layer probes: oracles (scikit-learn on flattened pixels, LogisticRegression on the sampled
positions), reproducibility of the subsample, its memory bound, the explanation and bad masks."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, jaccard_score
from sklearn.preprocessing import StandardScaler

import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_hybrid_interp import HybridInterpreter  # noqa: E402
from keras_hybrid_interp.core import data_pass as _pass  # noqa: E402
from keras_hybrid_interp.local import segmentation as seg  # noqa: E402

from segmentation_models import planted_data, planted_unet  # noqa: E402

BLOCKS = ["enc1", "bottleneck", "dec1"]


@pytest.fixture(scope="module")
def setup():
    model = planted_unet()
    x, y = planted_data(30, seed=1)
    interp = HybridInterpreter(model, blocks=BLOCKS)
    interp.fit_probes(x, y, random_state=0, C=0.5, verbose=0)
    return model, interp, x, y


def block_maps(model, x):
    side = keras.Model(model.inputs, [model.get_layer(b).output for b in BLOCKS])
    return [np.asarray(a, np.float64) for a in side.predict(x, verbose=0)]


def reference_masks(model, interp, x):
    """Each block's mask by NumPy alone: effective 1x1 probe, then np.repeat to 16 x 16."""
    masks = []
    for a, (mean, scale, kernel, bias) in zip(block_maps(model, x), interp._probe_states()):
        logits = ((a - mean) * scale) @ kernel + bias
        f = 16 // a.shape[1]
        masks.append(np.repeat(np.repeat(logits, f, axis=1), f, axis=2).argmax(-1))
    return masks


def test_streamed_metrics_equal_sklearn_on_flattened_pixels(setup):
    model, interp, x, y = setup
    table = interp.evaluate_layers(x, y, batch_size=7)  # 7 does not divide 30
    assert table.task == "segmentation" and table.headline == "mean_iou"
    masks = reference_masks(model, interp, x) + [model.predict(x, verbose=0).argmax(-1)]
    for i, pred in enumerate(masks):
        t, p = y.ravel(), pred.ravel()
        assert table.metrics["mean_iou"][i] == pytest.approx(jaccard_score(t, p, average="macro"), abs=1e-12)
        assert table.metrics["dice"][i] == pytest.approx(f1_score(t, p, average="macro"), abs=1e-12)
        assert table.metrics["pixel_accuracy"][i] == pytest.approx(accuracy_score(t, p), abs=1e-12)
        assert table.metrics["agreement"][i] == pytest.approx(np.mean(p == masks[-1].ravel()), abs=1e-12)
    # Not all perfect: the 8x8 bottleneck's mask is coarser than the 16x16 squares.
    assert table.metrics["mean_iou"][1] < 0.95 < table.metrics["mean_iou"][0]
    # Label-free: against the model's own mask.
    free = interp.evaluate_layers(x, batch_size=11)
    for i, pred in enumerate(masks):
        t = masks[-1].ravel()
        assert free.metrics["mean_iou"][i] == pytest.approx(jaccard_score(t, pred.ravel(), average="macro"))
    assert np.isnan(free.accuracy).all() and not free.labelled


def test_pixel_loss_equals_numpy(setup):
    model, interp, x, y = setup
    table = interp.evaluate_layers(x, y, batch_size=13)
    # Every block: at the output's resolution (enc1, dec1) and below it (the bottleneck, read 2 x 2).
    for i, (a, (mean, scale, kernel, bias)) in enumerate(zip(block_maps(model, x), interp._probe_states())):
        f = 16 // a.shape[1]
        logits = np.repeat(np.repeat(((a - mean) * scale) @ kernel + bias, f, axis=1), f, axis=2)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ce = -np.take_along_axis(logp, y[..., None], axis=-1).mean()
        assert table.metrics["loss"][i] == pytest.approx(ce, rel=1e-9), BLOCKS[i]
    # The model's row: the softmax output's probability of each pixel's class.
    p = np.take_along_axis(model.predict(x, verbose=0).astype(np.float64), y[..., None], axis=-1)
    assert table.metrics["loss"][-1] == pytest.approx(-np.log(np.clip(p, 1e-7, 1.0)).mean(), rel=1e-9)


def sampled_positions(seed, n, size, per_sample):
    return np.stack([np.random.default_rng([seed, i]).choice(size, per_sample, replace=False) for i in range(n)])


def test_probe_equals_sklearn_logistic_regression_on_the_sampled_positions(setup):
    model, _, x, y = setup
    interp = HybridInterpreter(model, blocks=BLOCKS)
    seg.fit_probes(interp, x, y, C=0.5, random_state=3, positions_per_sample=20, batch_size=9, tol=1e-9)
    pos = sampled_positions(3, len(x), 256, 20)
    rows = np.arange(len(x))[:, None]
    t = y.reshape(len(x), -1)[rows, pos].ravel()
    for a, probe in zip(block_maps(model, x), interp.probes):
        f = 16 // a.shape[1]
        up = np.repeat(np.repeat(a, f, axis=1), f, axis=2).reshape(len(x), 256, -1)
        feats = up[rows, pos].reshape(-1, a.shape[-1])
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(StandardScaler().fit_transform(feats), t)
        w, b = probe.effective_weights()
        logits = feats @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(p, ref.predict_proba(StandardScaler().fit_transform(feats)), atol=2e-4)


def test_label_free_probe_equals_weighted_sklearn(setup):
    """Soft targets = the model's distribution: sklearn on K copies of each position weighted by p_k."""
    model, _, x, _ = setup
    interp = HybridInterpreter(model, blocks=["bottleneck"])
    seg.fit_probes(interp, x[:12], C=1.0, random_state=5, positions_per_sample=10, tol=1e-9)
    pos = sampled_positions(5, 12, 256, 10)
    rows = np.arange(12)[:, None]
    probs = model.predict(x[:12], verbose=0).astype(np.float64).reshape(12, 256, 3)[rows, pos].reshape(-1, 3)
    a = block_maps(model, x[:12])[1]
    feats = np.repeat(np.repeat(a, 2, axis=1), 2, axis=2).reshape(12, 256, -1)[rows, pos].reshape(-1, a.shape[-1])
    z = StandardScaler().fit_transform(feats)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=5000).fit(
        np.repeat(z, 3, axis=0), np.tile(np.arange(3), len(z)), sample_weight=probs.ravel())
    w, b = interp.probes[0].effective_weights()
    logits = feats @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), ref.predict_proba(z), atol=2e-4)


def test_subsample_is_reproducible_bit_for_bit_whatever_the_batching(setup):
    model, _, x, y = setup
    states = []
    for bs in (4, 30, 7):
        interp = HybridInterpreter(model, blocks=BLOCKS)
        seg.fit_probes(interp, x, y, random_state=11, positions_per_sample=16, batch_size=bs)
        states.append(interp._probe_states())
    for other in states[1:]:
        for s0, s1 in zip(states[0], other):
            for a0, a1 in zip(s0, s1):
                assert np.array_equal(a0, a1)
    interp = HybridInterpreter(model, blocks=BLOCKS)
    seg.fit_probes(interp, x, y, random_state=12, positions_per_sample=16)
    assert not np.array_equal(interp._probe_states()[1][2], states[0][1][2])


def test_collected_arrays_grow_with_n_times_positions_not_with_the_map(setup):
    model, interp, x, _ = setup
    for n, per in ((10, 8), (30, 8), (30, 300)):
        sample = seg.PositionSample([_pass.Tap(k, "raw") for k in interp.block_keys], interp._output_tap(),
                                    interp.reader, per, 0)
        _pass.run(interp.graph, interp._stream(x[:n], batch_size=7), [sample], task=interp.reader)
        P = min(per, 256)  # a map of 256 positions gives at most 256
        for l, b in enumerate(interp.blocks):
            f = sample.result(l)
            assert f.shape == (n * P, b.filters) and f.dtype == np.float32
        assert sample.targets(False).shape == (n * P, 3)
        pos = np.concatenate(sample.positions)
        assert all(len(set(r)) == P for r in pos)  # without replacement


def test_explain_masks_and_plot(setup):
    model, interp, x, _ = setup
    e = interp.explain(x[2])
    ref = reference_masks(model, interp, x[2:3])
    model_mask = model.predict(x[2:3], verbose=0)[0].argmax(-1)
    for l in range(3):
        assert np.array_equal(e.masks[l], ref[l][0])
        assert e.iou_with_model[l] == pytest.approx(
            jaccard_score(model_mask.ravel(), ref[l][0].ravel(), average="macro"))
    assert np.array_equal(e.model_mask, model_mask)
    np.testing.assert_allclose(e.probabilities.sum(-1), 1.0, atol=1e-9)
    frame = e.to_frame()
    assert list(frame.block) == BLOCKS + ["output"]
    fig = e.plot()
    assert len(fig.axes) == 4
    import matplotlib.pyplot as plt

    plt.close(fig)
    preds = interp.layer_predictions(x[:5], batch_size=2)
    assert preds.masks.shape == (3, 5, 16, 16)
    for l in range(3):
        assert np.array_equal(preds.masks[l], reference_masks(model, interp, x[:5])[l])
    assert len(preds.to_frame()) == 15


@pytest.mark.parametrize("bad, match", [
    (lambda y: y[:, :8, :8], r"`y` must be masks of shape \(n, 16, 16\)"),
    (lambda y: np.where(y == 2, 5, y), r"outside 0\.\.2"),
    (lambda y: np.eye(4)[y], r"one-hot masks must have 3 channels"),
])
def test_bad_masks(setup, bad, match):
    _, interp, x, y = setup
    with pytest.raises(ValueError, match=match):
        interp.evaluate_layers(x, bad(y))
    with pytest.raises(ValueError, match=match):
        seg.fit_probes(HybridInterpreter(interp.wrapped_model, blocks=BLOCKS), x, bad(y))


def test_bad_options(setup):
    _, interp, x, y = setup
    with pytest.raises(ValueError, match="positions_per_sample"):
        seg.fit_probes(interp, x, y, positions_per_sample=0)
    with pytest.raises(ValueError, match="bootstrap"):  # intervals exist (test_segmentation_controls_bootstrap)
        interp.evaluate_layers(x, y, bootstrap=1)
    with pytest.raises(ValueError, match="pooling"):
        HybridInterpreter(interp.wrapped_model, blocks=BLOCKS, pooling=2).fit_probes(x, y)


@pytest.mark.parametrize("k", [2, 4, 9])
@pytest.mark.parametrize("upsampled", [False, True])
def test_target_log_loss_equals_scipy_log_softmax(k, upsampled):
    """The per-pixel loss from class-major block-resolution logits: -log_softmax at each output pixel's target,
    read through the block position it maps to; given each position's maximum or not."""
    from scipy.special import log_softmax

    rng = np.random.default_rng(k)
    logits = rng.standard_normal((50, k)) * 20
    reads = rng.integers(0, 50, 120) if upsampled else None
    hard = rng.integers(0, k, 120 if upsampled else 50)
    want = -log_softmax(logits, axis=1)[reads if upsampled else np.arange(50), hard]
    lt = np.ascontiguousarray(logits.T)
    np.testing.assert_allclose(seg._target_log_loss(lt, reads, hard), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(seg._target_log_loss(lt, reads, hard, lt.max(axis=0)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_class_major_max_and_argmax_equal_numpy(k):
    """The layer table's per-position maximum and class from class-major logits: np.max and np.argmax (ties to
    the lower class, NaN where NumPy puts it)."""
    rng = np.random.default_rng(k)
    lt = rng.standard_normal((k, 60))
    lt[:, :5] = 2.0  # every class tied
    lt[-1, 5:10] = lt[0, 5:10] = 9.0  # the first and last tied above the rest
    lt[k // 2, 10] = np.nan
    m, pred = seg._max_and_argmax(lt)
    np.testing.assert_array_equal(pred, np.argmax(lt, axis=0))
    np.testing.assert_array_equal(m, np.max(lt, axis=0))
