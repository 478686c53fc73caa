import numpy as np
import pytest

import keras

from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer

from _models_global import planted_data, planted_model, residual_model


def _xy(n=60, seed=0, classes=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 12, 12, 3)).astype("float32"), rng.integers(0, classes, n)


def _reference(s, y, k):
    out = np.empty((s.shape[1], k))
    for c in range(s.shape[1]):
        for j in range(k):
            out[c, j] = np.corrcoef(s[:, c], (y == j).astype(float))[0, 1]
    return out


@pytest.mark.parametrize("batch_size", [1, 7, 60])
@pytest.mark.parametrize("statistic", ["mean", "max"])
def test_equals_point_biserial_reference(batch_size, statistic):
    ga = GlobalAnalyzer(residual_model())
    x, y = _xy()
    res = ga.filter_class_association(x, y, block="res_out", statistic=statistic, batch_size=batch_size)
    act = ga.graph.build([ga.graph.resolve("res_out")]).predict_on_batch(x)
    s = act.astype(np.float64).mean(axis=(1, 2)) if statistic == "mean" else act.max(axis=(1, 2)).astype(np.float64)
    np.testing.assert_allclose(
        res.values, _reference(s, y, 4), atol=1e-6, rtol=0
    )  # per-sample summaries are float32 on the device; accumulation is float64
    for j in range(4):
        np.testing.assert_allclose(res.class_means[:, j], s[y == j].mean(0), rtol=1e-6)
    assert res.class_counts.tolist() == np.bincount(y, minlength=4).tolist()
    assert res.label_source == "y" and res.table.shape == (6, 4)


def test_planted_filter_is_the_class_filter():
    x, y = planted_data()
    ga = GlobalAnalyzer(planted_model(planted=2), blocks="block")
    res = ga.filter_class_association(x, y, block="block")
    assert res.top_filters(1, 1)[0] == 2
    assert res.values[2, 1] > 0.9 and res.values[2, 0] < -0.9
    assert np.all(np.abs(np.delete(res.values[:, 1], 2)) < 0.3)
    # Two classes: r for class 0 is exactly minus r for class 1.
    np.testing.assert_allclose(res.values[:, 0], -res.values[:, 1], atol=1e-12)


def test_labels_from_dataset_or_model_and_absent_class():
    import tensorflow as tf

    model = residual_model()
    ga = GlobalAnalyzer(model)
    x, y = _xy()
    ref = ga.filter_class_association(x, y, block="res_out")
    ds = ga.filter_class_association(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), None, block="res_out")
    assert ds.label_source == "dataset"
    # batches of 16 against 64: the float32 per-sample summaries may move by an ulp (JAX's XLA:CPU)
    np.testing.assert_allclose(ds.values, ref.values, atol=1e-6)
    own = np.argmax(model.predict_on_batch(x), axis=1)
    with pytest.warns(UserWarning, match="have no sample") if len(np.unique(own)) < 4 else _nullcontext():
        pred = ga.filter_class_association(x, None, block="res_out")
    assert pred.label_source == "model predictions"
    with pytest.warns(UserWarning, match="have no sample") if len(np.unique(own)) < 4 else _nullcontext():
        direct = ga.filter_class_association(x, own, block="res_out")
    np.testing.assert_allclose(pred.values, direct.values, atol=1e-12, equal_nan=True)
    y3 = np.where(y == 3, 0, y)
    with pytest.warns(UserWarning, match=r"Classes \['3'\] have no sample"):
        res = ga.filter_class_association(x, y3, block="res_out")
    assert np.all(np.isnan(res.values[:, 3])) and not np.any(np.isnan(res.values[:, :3]))
    assert np.all(np.isnan(res.class_means[:, 3]))  # no fake number for an absent class


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_dead_filter_nan_and_to_frame():
    model = residual_model()
    conv = model.get_layer("res_conv1")
    k, b = conv.get_weights()
    k[..., 0] = 0
    b[0] = -1.0
    conv.set_weights([k, b])
    ga = GlobalAnalyzer(model)
    x, y = _xy()
    with pytest.warns(UserWarning, match="dead"):
        res = ga.filter_class_association(x, y, block="res_conv1")
    assert res.dead_filters.tolist() == [0] and np.all(np.isnan(res.values[0]))
    df = res.to_frame()
    assert list(df.columns) == ["block", "filter", "class", "class_name", "r", "class_mean"] and len(df) == 24
    assert df["class_name"].tolist() == [str(c) for c in df["class"]]
    np.testing.assert_array_equal(df.r.to_numpy(), res.values.ravel())


def test_errors():
    ga = GlobalAnalyzer(residual_model())
    x, y = _xy(10)
    with pytest.raises(ValueError, match="labels outside"):
        ga.filter_class_association(x, y + 4, block="res_out")
    with pytest.raises(ValueError, match="same length"):
        ga.filter_class_association(x, y[:5], block="res_out")
    with pytest.raises(ValueError, match="one-hot"):
        ga.filter_class_association(x, np.eye(3)[y % 3], block="res_out")
    with pytest.raises(ValueError, match="statistic"):
        ga.filter_class_association(x, y, block="res_out", statistic="std")
    onehot = ga.filter_class_association(x, np.eye(4)[y], block="res_out")
    np.testing.assert_allclose(onehot.values, ga.filter_class_association(x, y, block="res_out").values, equal_nan=True)
    _ = keras  # keep the import for symmetry with the other test modules


def test_top_filters_put_dead_filters_last():
    from keras_hybrid_interp.global_.association import FilterClassAssociation

    values = np.array([[np.nan, np.nan], [0.2, -0.1], [0.9, 0.3], [-0.5, 0.8]])
    res = FilterClassAssociation(values, np.zeros_like(values), np.array([5, 5]), np.array([0]),
                                 "b", "mean", "y", 10)
    assert res.top_filters(0, 4).tolist() == [2, 1, 3, 0]
    assert res.top_filters(1, 2).tolist() == [3, 2]
