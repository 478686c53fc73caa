"""NetDissect filter-class IoU: a slow NumPy reference holding every map, the streaming threshold, a planted filter."""

import sys
from pathlib import Path

import numpy as np
import pytest

import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_hybrid_interp import GlobalAnalyzer  # noqa: E402
from keras_hybrid_interp.core.data_pass import Batch, Tap  # noqa: E402
from keras_hybrid_interp.global_.dissection import StreamingQuantile  # noqa: E402

from segmentation_models import planted_data, planted_unet  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    model = planted_unet()
    x, y = planted_data(40, seed=2)
    return model, GlobalAnalyzer(model, blocks=["enc1"]), x, y


def reference_iou(a, masks, thresholds, K):
    """All maps in memory: threshold, np.repeat to the output size, count."""
    f = masks.shape[1] // a.shape[1]
    m = np.repeat(np.repeat(a > thresholds, f, axis=1), f, axis=2)  # (n, 16, 16, C)
    inter = np.stack([[np.sum(m[..., c] & (masks == k)) for k in range(K)] for c in range(a.shape[-1])])
    union = np.stack([[np.sum(m[..., c] | (masks == k)) for k in range(K)] for c in range(a.shape[-1])])
    return inter, union


@pytest.mark.parametrize("block, quantile", [("enc1", 0.005), ("bottleneck", 0.1)])
def test_iou_equals_numpy_reference(setup, block, quantile):
    model, ga, x, y = setup
    res = ga.filter_class_association(x, y, block=block, batch_size=7, quantile=quantile)
    a = np.asarray(keras.Model(model.inputs, model.get_layer(block).output).predict(x, verbose=0), np.float64)
    inter, union = reference_iou(a, y, res.thresholds, 3)
    np.testing.assert_array_equal(res.intersection, inter)
    np.testing.assert_array_equal(res.union, union)
    np.testing.assert_allclose(res.iou, inter / union)
    # The streamed threshold lies between the order statistics that bracket the top `quantile`, give or take one
    # histogram bin (at most 2 x range / bins wide).
    values = -np.sort(-a.reshape(-1, a.shape[-1]), axis=0)  # descending
    k = quantile * len(values)
    width = 2 * (values[0] - values[-1]) / 2048 + 1e-8 * np.abs(values).max(0)  # a constant filter: a tiny bin
    assert np.all(values[int(np.ceil(k))] - width <= res.thresholds)
    assert np.all(res.thresholds <= values[max(int(np.floor(k)) - 1, 0)] + width)
    assert np.any(res.iou > 0)
    frame = res.to_frame()
    assert len(frame) == a.shape[-1] * 3 and set(frame["rank"]) == set(range(1, a.shape[-1] + 1))


def test_without_labels_uses_the_models_mask(setup):
    model, ga, x, _ = setup
    res = ga.filter_class_association(x, block="enc1", batch_size=16, quantile=0.05)
    a = np.asarray(keras.Model(model.inputs, model.get_layer("enc1").output).predict(x, verbose=0), np.float64)
    inter, union = reference_iou(a, model.predict(x, verbose=0).argmax(-1), res.thresholds, 3)
    np.testing.assert_array_equal(res.intersection, inter)
    assert not res.labelled


def test_planted_filter_ranks_first_for_its_class(setup):
    _, ga, x, y = setup
    res = ga.filter_class_association(x, y, block="enc1", batch_size=9, quantile=0.05)
    assert res.top_filters(1, 1)[0] == 0  # relu(x - 0.5) fires exactly on class 1's squares
    assert res.iou[0, 1] > 0.5 and res.iou[0, 2] == 0
    assert res.mask_area[3] == 0 and np.all(res.iou[3] == 0)  # a constant filter has an empty mask
    assert res.iou[1, 2] > 0.5  # relu(-x - 0.5) fires on class 2's squares (as filter 2, also decreasing in x)
    ax = res.plot()
    assert ax.get_images()
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_streaming_histogram_grows_exactly():
    """Batches that widen the range: the counts stay those of one histogram over the final range."""
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, s, (50, 3)) + o for s, o in ((0.01, 0), (1, 0), (5, 20), (0.1, -30))]
    h = StreamingQuantile(Tap(0, "raw"), bins=64)
    for p in parts:
        h.update(Batch(None, None, 0, {(0, "raw"): p[:, None, :]}))
    values = np.concatenate(parts)
    assert h.counts.sum() == values.size
    for c in range(3):
        edges = h.lo[c] + h.width[c] * np.arange(65)
        ref, _ = np.histogram(values[:, c], edges)
        assert np.abs(ref - h.counts[c]).sum() <= 2  # values on an edge may fall either side by rounding
        assert abs(h.thresholds(0.1)[c] - np.quantile(values[:, c], 0.9)) <= h.width[c]


def test_bad_quantile(setup):
    _, ga, x, y = setup
    with pytest.raises(ValueError, match="`quantile` must be a float in"):
        ga.filter_class_association(x, y, block="enc1", quantile=1.5)
    with pytest.raises(ValueError, match=r"`y` must be masks of shape \(n, 16, 16\)"):
        ga.filter_class_association(x, y[:, :8], block="enc1")


@pytest.mark.parametrize("scoring", ["mean_iou", "loss"])
def test_ablation_importance_with_the_tasks_scores_equals_a_zeroed_copy(setup, scoring):
    """Through the tail engine, scored by SegmentationTask: equal to a copy of the model with the filter zeroed."""
    from sklearn.metrics import jaccard_score

    model, ga, x, y = setup
    res = ga.filter_importance(x, y, block="enc1", method="ablation", scoring=scoring, batch_size=7)

    def score(m):
        p = m.predict(x, verbose=0).astype(np.float64)
        if scoring == "mean_iou":
            return jaccard_score(y.ravel(), p.argmax(-1).ravel(), average="macro")
        logp = np.log(np.clip(p, 1e-7, 1.0))  # the package's EPS for probabilities
        return np.take_along_axis(logp, y[..., None], axis=-1).mean()

    base = score(model)
    expected = []
    for c in range(4):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        w, b = copy.get_layer("enc1").get_weights()
        w[..., c], b[c] = 0.0, 0.0  # relu(0) = 0: the filter's map is zero
        copy.get_layer("enc1").set_weights([w, b])
        expected.append(base - score(copy))
    np.testing.assert_allclose(res.importances_mean, expected, atol=2e-5)
    assert res.importances_mean[0] > 0.1 and res.importances_mean[2] == pytest.approx(0, abs=1e-6)
