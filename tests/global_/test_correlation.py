import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer
from keras_hybrid_interp.global_.correlation import StreamingMoments

from _models_global import residual_model


def _x(n=57, shape=(12, 12, 3), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def _summary(ga, x, name, statistic="mean"):
    act = ga.graph.build([ga.graph.resolve(name)]).predict_on_batch(x)
    if statistic == "mean":
        return act.astype(np.float64).mean(axis=(1, 2))
    return act.max(axis=(1, 2)).astype(np.float64)


@pytest.mark.parametrize("batch_size", [1, 5, 16, 57, 100])
@pytest.mark.parametrize("statistic", ["mean", "max"])
def test_streaming_equals_corrcoef(batch_size, statistic):
    ga = GlobalAnalyzer(residual_model())
    x = _x()
    res = ga.filter_correlation(x, block="res_conv2", statistic=statistic, batch_size=batch_size)
    summary = _summary(ga, x, "res_conv2", statistic)
    expected = np.corrcoef(summary, rowvar=False)
    # The per-sample spatial summary is computed on the device in float32 (the model's
    # precision); only the accumulation across samples is float64.
    np.testing.assert_allclose(res.values, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.mean, summary.mean(0), rtol=1e-6)
    assert res.n_samples == 57 and res.statistic == statistic
    assert res.matrix.shape == (6, 6)


def test_moments_are_stable_with_a_large_offset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 4)) * [1, 2, 3, 1e-3] + 1e6
    acc = StreamingMoments(4)
    for i in range(0, 1000, 33):
        acc.update(x[i:i + 33])
    np.testing.assert_allclose(acc.correlation(), np.corrcoef(x, rowvar=False), atol=1e-8)
    np.testing.assert_allclose(acc.mean, x.mean(0), rtol=1e-14)


def _copy_model(mix, conv_weights=None):
    """conv (4 filters, linear) -> 1x1 conv whose kernel is ``mix`` (4 x C)."""
    inp = keras.Input((10, 10, 2))
    first = layers.Conv2D(4, 3, padding="same", name="conv")
    h = first(inp)
    if conv_weights is not None:
        first.set_weights(conv_weights)
    conv = layers.Conv2D(mix.shape[1], 1, use_bias=False, name="block")
    out = conv(h)
    conv.set_weights([mix[None, None].astype("float32")])
    out = layers.GlobalAveragePooling2D()(out)
    out = layers.Dense(2, activation="softmax")(out)
    return keras.Model(inp, out)


def test_duplicated_filter_is_one_negated_is_minus_one():
    mix = np.zeros((4, 6))
    mix[np.arange(4), np.arange(4)] = 1  # copies of filters 0..3
    mix[0, 4] = 1  # duplicate of filter 0
    mix[1, 5] = -1  # negation of filter 1
    x = _x(40, (10, 10, 2))
    ga = GlobalAnalyzer(_copy_model(mix), blocks="block")
    res = ga.filter_correlation(x, block="block")
    assert res.values[0, 4] == pytest.approx(1.0, abs=1e-12)
    assert res.values[1, 5] == pytest.approx(-1.0, abs=1e-12)
    # Clustering on 1 - |r| joins both pairs at a tiny threshold.
    groups = res.clusters(threshold=1e-6)
    as_sets = [set(g.tolist()) for g in groups]
    assert {0, 4} in as_sets and {1, 5} in as_sets and len(groups) == 4
    assert [len(g) for g in groups] == sorted([len(g) for g in groups], reverse=True)
    assert res.clusters(1.0) and len(res.clusters(1.0)) == 1


def test_reordering_channels_permutes_the_matrix():
    x = _x(40, (10, 10, 2))
    perm = np.array([2, 0, 3, 1])
    eye = np.eye(4)
    ma = _copy_model(eye)
    a = GlobalAnalyzer(ma, blocks="block").filter_correlation(x, block="block")
    mb = _copy_model(eye[:, perm], ma.get_layer("conv").get_weights())
    b = GlobalAnalyzer(mb, blocks="block").filter_correlation(x, block="block")
    np.testing.assert_allclose(b.values, a.values[np.ix_(perm, perm)], atol=1e-12)


def test_dead_filters_are_nan_listed_and_warned():
    model = residual_model()
    conv = model.get_layer("res_conv1")
    k, b = conv.get_weights()
    k[..., [1, 4]] = 0
    b[[1, 4]] = -1.0  # relu(-1) = 0 everywhere: dead
    conv.set_weights([k, b])
    ga = GlobalAnalyzer(model)
    with pytest.warns(UserWarning, match=r"2 dead filter\(s\) \[1, 4\]"):
        res = ga.filter_correlation(_x(), block="res_conv1")
    assert res.dead_filters.tolist() == [1, 4]
    assert np.all(np.isnan(res.values[[1, 4], :])) and np.all(np.isnan(res.values[:, [1, 4]]))
    live = [0, 2, 3, 5]
    assert not np.any(np.isnan(res.values[np.ix_(live, live)]))
    sub = np.abs(res.values[np.ix_(live, live)])
    assert res.redundancy == pytest.approx(sub[~np.eye(4, dtype=bool)].mean())
    assert all(not set(g.tolist()) & {1, 4} for g in res.clusters(0.5))


def test_inputs_as_dataset_and_pydataset():
    import tensorflow as tf

    ga = GlobalAnalyzer(residual_model())
    x = _x(30)
    ref = ga.filter_correlation(x, block="res_out")
    ds = ga.filter_correlation(tf.data.Dataset.from_tensor_slices(x).batch(7), block="res_out")
    # other batch sizes: the float32 per-sample summaries may move by an ulp (JAX's XLA:CPU)
    np.testing.assert_allclose(ds.values, ref.values, atol=1e-6)

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i * 10:(i + 1) * 10]

    py = ga.filter_correlation(Seq(), block="res_out")
    np.testing.assert_allclose(py.values, ref.values, atol=1e-6)


def test_to_frame_and_readonly():
    ga = GlobalAnalyzer(residual_model())
    res = ga.filter_correlation(_x(20), block="res_out")
    df = res.to_frame()
    assert list(df.columns) == ["block", "filter_i", "filter_j", "r"] and len(df) == 36
    np.testing.assert_array_equal(df.r.to_numpy(), res.values.ravel())
    with pytest.raises(ValueError):
        res.values[0, 0] = 3.0
    assert "FilterCorrelation" in repr(res)


def test_errors():
    ga = GlobalAnalyzer(residual_model())
    with pytest.raises(ValueError, match="statistic"):
        ga.filter_correlation(_x(10), block="res_out", statistic="median")
    with pytest.raises(ValueError, match="at least 2 samples"):
        ga.filter_correlation(_x(1), block="res_out")
    with pytest.raises(ValueError, match="NaN"):
        bad = _x(10)
        bad[3, 0, 0, 0] = np.nan
        ga.filter_correlation(bad, block="res_out")
    with pytest.raises(ValueError, match="threshold"):
        ga.filter_correlation(_x(10), block="res_out").clusters(2.0)
    with pytest.raises(TypeError, match="block"):
        ga.filter_correlation(_x(10), block=None)


def test_reuses_the_graph_of_an_interpreter_like_object():
    from types import SimpleNamespace

    from keras_hybrid_interp.core.blocks import select_blocks
    from keras_hybrid_interp.core.graph import ModelGraph

    model = residual_model()
    graph = ModelGraph(model)
    keys, _, _ = select_blocks(graph, ["stem_pool", "res_out"])
    fake = SimpleNamespace(graph=graph, block_keys=keys, wrapped_model=model, output_kind="softmax")
    ga = GlobalAnalyzer(fake)
    assert ga.graph is graph and ga.block_names == ["stem_pool", "res_out"]
    x = _x(20)
    np.testing.assert_allclose(
        ga.filter_correlation(x, block="res_out").values,
        GlobalAnalyzer(model).filter_correlation(x, block="res_out").values, atol=1e-12)


def test_hybrid_interpreter_global_analyzer():
    from keras_hybrid_interp.local.interpreter import HybridInterpreter

    model = residual_model()
    interp = HybridInterpreter(model, blocks=["stem_pool", "res_out"])
    ga = GlobalAnalyzer(interp)
    assert isinstance(ga, GlobalAnalyzer) and ga.graph is interp.graph
    assert ga.block_names == ["stem_pool", "res_out"]
    assert ga.layer_similarity(_x(20)).values.shape == (2, 2)
