import numpy as np
import pytest

from keras_hybrid_interp.datasets import class_names, load_digits, make_synthetic


def test_load_digits_shapes_split_and_upsampling():
    (xtr, ytr), (xte, yte) = load_digits()
    assert xtr.shape[1:] == (8, 8, 1) and xtr.dtype == np.float32
    assert len(xtr) + len(xte) == 1797 and 0.0 <= xtr.min() and xtr.max() <= 1.0
    (xtr16, ytr16), _ = load_digits(16)
    np.testing.assert_array_equal(ytr16, ytr)
    np.testing.assert_array_equal(xtr16[:, ::2, ::2], xtr)  # pixel repetition
    assert load_digits(12)[0][0].shape[1:] == (12, 12, 1)
    with pytest.raises(ValueError, match="image_size"):
        load_digits(4)


@pytest.mark.parametrize("factor", ["shape", "colour", "texture"])
def test_synthetic_labels_are_the_planted_factor(factor):
    x, y, f = make_synthetic(200, factor=factor, return_factors=True, random_state=3)
    assert x.shape == (200, 24, 24, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(y, f[factor])
    assert set(np.unique(y)) == {0, 1, 2, 3}
    # nuisance factors are independent draws, not copies of the label
    for other in {"shape", "colour", "texture"} - {factor}:
        assert np.mean(f[other] == y) < 0.5
    assert len(class_names(factor)) == 4


def test_synthetic_colour_is_recoverable_from_mean_colour():
    from sklearn.linear_model import LogisticRegression

    x, y = make_synthetic(400, factor="color", random_state=0, noise=0.0)
    # the object's pixels are the bright ones; their mean RGB identifies the colour class
    feats = np.array([img[img.max(-1) > 0.2].mean(0) for img in x])
    clf = LogisticRegression(max_iter=2000).fit(feats[:300], y[:300])
    assert clf.score(feats[300:], y[300:]) > 0.95


def test_synthetic_is_reproducible():
    a = make_synthetic(20, random_state=5)
    b = make_synthetic(20, random_state=5)
    c = make_synthetic(20, random_state=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="factor"):
        make_synthetic(10, factor="size")
