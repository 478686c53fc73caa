"""Generators for multi-label, segmentation and regression tasks: the planted truth is really there.

Each oracle measures the planted signature from the generated data with an independent tool
(scipy.signal peaks, scipy.ndimage.label, a re-drawing of the objects from their drawn
parameters), never with the generator's own code.
"""

import numpy as np
import pytest
from scipy import ndimage
from scipy.signal import find_peaks, peak_widths

from keras_hybrid_interp.datasets import (
    blob_target_names,
    make_blob_regression,
    make_multilabel_signals,
    make_shapes_segmentation,
    multilabel_signal_names,
    segmentation_class_names,
)


# ----------------------------------------------------------------------
# Multi-label signals
# ----------------------------------------------------------------------
def test_multilabel_signals_shapes_dtypes_and_independent_labels():
    x, y = make_multilabel_signals(2000, length=128, random_state=3)
    assert x.shape == (2000, 128, 1) and x.dtype == np.float32
    assert y.shape == (2000, 5) and y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    assert multilabel_signal_names() == ["wide_qrs", "st_elevation", "tachycardia", "inverted_t", "noise_burst"]
    np.testing.assert_allclose(y.mean(0), 0.4, atol=0.04)  # the default prevalence
    corr = np.corrcoef(y.T.astype(float))
    assert np.abs(corr[np.triu_indices(5, 1)]).max() < 0.08  # drawn independently
    y2 = make_multilabel_signals(50, prevalence=[1.0, 0.0, 1.0, 0.0, 0.0])[1]
    np.testing.assert_array_equal(y2, np.tile([1, 0, 1, 0, 0], (50, 1)))


def test_multilabel_signals_are_reproducible_bit_for_bit():
    a = make_multilabel_signals(30, random_state=7)
    b = make_multilabel_signals(30, random_state=7)
    c = make_multilabel_signals(30, random_state=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_findings_are_measurable_from_the_clean_signal(seed):
    x, y, f = make_multilabel_signals(300, noise=0.0, drift=0.0, random_state=seed, return_factors=True)
    x = x[..., 0].astype(np.float64)
    # the beat morphology is measured on signals without a burst, whose noise would add peaks
    xb, yb, fb = make_multilabel_signals(300, noise=0.0, drift=0.0, random_state=seed, return_factors=True,
                                         prevalence=[0.4, 0.4, 0.4, 0.4, 0.0])
    assert not yb[:, 4].any()
    xb = xb[..., 0].astype(np.float64)
    measured = np.zeros((len(x), 5))
    for i, s in enumerate(xb):
        r, _ = find_peaks(s, height=0.75 * s.max(), distance=15)  # R peaks
        measured[i, 2] = np.median(np.diff(r))  # beat period
        r = r[(r > 20) & (r < len(s) - 40)]  # whole beats only
        height = s[r].mean()
        measured[i, 0] = np.median(peak_widths(s, r, rel_height=0.5)[0])  # QRS width at half height
        q, t_off = fb["qrs_width"][i], fb["t_offset"][i]
        # the level halfway between the end of S and the T peak, and at the T peak
        measured[i, 1] = np.median(s[np.round(r + (3.7 * q + t_off) / 2).astype(int)]) / height
        measured[i, 3] = np.median(s[np.round(r + t_off).astype(int)]) / height
    for i, s in enumerate(x):
        # a burst of white noise is rough: the energy of its 4th difference over 16 samples is far
        # above that of the smooth Gaussian waves (about 6 at most for the narrowest QRS)
        measured[i, 4] = np.convolve(np.diff(s, 4) ** 2, np.ones(16), "valid").max()
    thresholds = {0: ("wide", 5.0), 1: ("wide", 0.1), 2: ("narrow", 40), 3: ("narrow", 0.0), 4: ("wide", 10.0)}
    for k, (side, th) in thresholds.items():
        found = measured[:, k] > th if side == "wide" else measured[:, k] < th
        truth = (y if k == 4 else yb)[:, k] == 1
        np.testing.assert_array_equal(found, truth, err_msg=multilabel_signal_names()[k])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_samples": 0}, "n_samples"),
        ({"length": 64}, "length"),
        ({"prevalence": 1.5}, "prevalence"),
        ({"prevalence": [0.5, 0.5]}, "prevalence"),
        ({"prevalence": "half"}, "prevalence"),
        ({"noise": -0.1}, "noise"),
        ({"drift": float("nan")}, "drift"),
    ],
)
def test_multilabel_signals_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_multilabel_signals(**{"n_samples": 5, **kwargs})


# ----------------------------------------------------------------------
# Segmentation of planted shapes
# ----------------------------------------------------------------------
def _redraw(f, i, size):
    """The mask and the clean image, painted pixel by pixel from the drawn parameters."""
    mask = np.zeros((size, size), dtype=int)
    img = np.full((size, size), 0.1)
    for j in range(f["cls"].shape[1]):
        cls = f["cls"][i, j]
        if cls < 0:
            break
        cy, cx, r, inten = f["row"][i, j], f["col"][i, j], f["radius"][i, j], f["intensity"][i, j]
        for u in range(size):
            for v in range(size):
                if f["outline"][i, j] == 0:
                    inside = max(abs(u - cy), abs(v - cx)) <= r
                else:
                    inside = np.hypot(u - cy, v - cx) <= r + 0.5
                if inside:
                    mask[u, v] = cls
                    dark = cls == 3 and (u + v + f["phase"][i, j]) % 2 == 1
                    img[u, v] = 0.3 * inten if dark else inten
    return mask, img


def test_segmentation_shapes_dtypes_and_reproducible():
    x, m = make_shapes_segmentation(40, size=32, random_state=2)
    assert x.shape == (40, 32, 32, 1) and x.dtype == np.float32
    assert m.shape == (40, 32, 32) and m.dtype == np.int64
    assert set(np.unique(m)) == {0, 1, 2, 3}
    assert segmentation_class_names() == ["background", "square", "disc", "textured"]
    x2, m2 = make_shapes_segmentation(40, size=32, random_state=2)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(m, m2)
    assert not np.array_equal(x, make_shapes_segmentation(40, size=32, random_state=3)[0])
    assert make_shapes_segmentation(3, size=64)[0].shape == (3, 64, 64, 1)


def test_segmentation_mask_is_where_the_shapes_were_drawn():
    x, m, f = make_shapes_segmentation(25, size=24, max_shapes=4, noise=0.0, random_state=5, return_factors=True)
    for i in range(len(x)):
        mask, img = _redraw(f, i, 24)
        np.testing.assert_array_equal(m[i], mask)
        np.testing.assert_allclose(x[i, :, :, 0], img, rtol=0, atol=1e-7)
    # noise is added to the image only
    xn, mn = make_shapes_segmentation(25, size=24, max_shapes=4, noise=0.2, random_state=5)
    np.testing.assert_array_equal(mn, m)
    assert 0.15 < np.std(xn - x) < 0.25


def test_segmentation_classes_are_not_told_apart_by_brightness():
    x, m, f = make_shapes_segmentation(300, noise=0.0, max_shapes=1, random_state=0, return_factors=True)
    counts = (f["cls"] >= 0).sum(1)
    np.testing.assert_array_equal(counts, 1)
    inten = f["intensity"][:, 0]
    assert inten.min() >= 0.55 and inten.max() <= 1.0
    sq, disc = inten[f["cls"][:, 0] == 1], inten[f["cls"][:, 0] == 2]
    assert abs(sq.mean() - disc.mean()) < 0.05 and len(sq) > 60 and len(disc) > 60
    # one object per image: its pixel count is its area ((2r+1)^2 for a square)
    r = f["radius"][:, 0]
    squares = f["outline"][:, 0] == 0
    np.testing.assert_array_equal((m[squares] > 0).sum((1, 2)), (2 * r[squares] + 1) ** 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_samples": -1}, "n_samples"), ({"size": 8}, "size"), ({"max_shapes": 0}, "max_shapes"),
     ({"noise": -1.0}, "noise"), ({"size": 32.0}, "size")],
)
def test_segmentation_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes_segmentation(**{"n_samples": 5, **kwargs})


# ----------------------------------------------------------------------
# Regression: count and area of planted blobs
# ----------------------------------------------------------------------
def test_blob_count_and_area_are_the_connected_components_of_the_clean_image():
    full = np.ones((3, 3), dtype=int)  # 8-connectivity: diagonal neighbours join too
    for gradient in (0.0, 0.4):
        x, y, f = make_blob_regression(200, target="both", noise=0.0, gradient=gradient, random_state=4,
                                       return_factors=True)
        assert x.shape == (200, 48, 48, 1) and x.dtype == np.float32
        assert y.shape == (200, 2) and y.dtype == np.float32
        # flat background at 0.1 and contrast >= 0.4: a fixed threshold; under a ramp, subtract it first
        fg = x[..., 0] > 0.3 if gradient == 0 else x[..., 0] - f["background"] > 0.3
        found = np.array([ndimage.label(img, structure=full)[1] for img in fg])
        np.testing.assert_array_equal(found, y[:, 0])
        np.testing.assert_array_equal(fg.sum((1, 2)), y[:, 1])
    assert blob_target_names() == ["count", "area"]
    assert set(np.unique(y[:, 0])) == set(range(11))  # 0..max_blobs
    np.testing.assert_array_equal(np.isfinite(f["radius"]).sum(1), f["count"])
    # the count is neither the bright area (the radii vary) nor the mean brightness (so does the light)
    assert np.corrcoef(y[:, 0], y[:, 1])[0, 1] < 0.95
    xn = make_blob_regression(200, target="count", random_state=4)[0]
    assert np.corrcoef(xn.mean((1, 2, 3)), y[:, 0])[0, 1] ** 2 < 0.3


def test_blob_targets_and_reproducibility():
    xc, yc = make_blob_regression(30, target="count", random_state=1)
    xa, ya = make_blob_regression(30, target="area", random_state=1)
    xb, yb = make_blob_regression(30, target="both", random_state=1)
    assert yc.shape == ya.shape == (30,) and yc.dtype == np.float32
    np.testing.assert_array_equal(xc, xa)  # the target does not change the images
    np.testing.assert_array_equal(np.stack([yc, ya], 1), yb)
    np.testing.assert_array_equal(xb, make_blob_regression(30, target="both", random_state=1)[0])
    assert not np.array_equal(xb, make_blob_regression(30, random_state=2)[0])
    x64, y64 = make_blob_regression(5, size=64, max_blobs=18, random_state=0)
    assert x64.shape == (5, 64, 64, 1)
    assert make_blob_regression(5, size=32, max_blobs=4)[0].shape == (5, 32, 32, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"target": "volume"}, "target"), ({"max_blobs": 11}, "max_blobs"), ({"max_blobs": 0}, "max_blobs"),
     ({"size": 32}, "max_blobs"), ({"size": 10}, "size"), ({"noise": -0.5}, "noise"),
     ({"gradient": "steep"}, "gradient"), ({"n_samples": True}, "n_samples")],
)
def test_blob_regression_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_blob_regression(**{"n_samples": 5, **kwargs})
    with pytest.raises(ValueError, match="target"):
        blob_target_names("volume")
