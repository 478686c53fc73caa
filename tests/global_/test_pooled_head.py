"""The pooled-head shortcut: a block read only through a global pooling is perturbed on its pooled features.

Oracle: the plain tail engine (:class:`TailEngine`, itself checked bit for bit
against full-model re-runs in ``test_engine``) on the same model, samples and
permutations. The shortcut must give the same importances, baseline and dead
filters within float rounding, for permutation and both ablations, for every
kind of head after the pooling.
"""

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer
from keras_hybrid_interp.core.engine import LinearHeadEngine, PooledHeadEngine, TailEngine
from keras_hybrid_interp.core.layers import global_pool_after
from keras_hybrid_interp.core.reducers import FrontierCache

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N, K = 96, 4


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N,) + shape).astype("float32"), rng.integers(0, K, N)


def _with_dead(conv, channel):
    """Makes ``channel`` of a ReLU conv dead: zero kernel, negative bias (its map is 0 everywhere)."""
    w, b = conv.get_weights()
    w[..., channel] = 0.0
    b[channel] = -1.0
    conv.set_weights([w, b])


def _backbone(inp, conv=layers.Conv2D):
    h = conv(6, 3, activation="relu", name="c1")(inp)
    c2 = conv(10, 3, activation="relu", name="blk")
    return c2(h), c2


def gap_dropout_dense():
    inp = keras.Input((10, 10, 3))
    h, c = _backbone(inp)
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dropout(0.5)(h)
    return keras.Model(inp, layers.Dense(K, activation="softmax")(h)), c, "softmax"


def gmp_logits():
    inp = keras.Input((10, 10, 3))
    h, c = _backbone(inp)
    h = layers.GlobalMaxPooling2D()(h)
    return keras.Model(inp, layers.Dense(K)(h)), c, "logits"


def gap_keepdims_flatten_mlp():
    inp = keras.Input((10, 10, 3))
    h, c = _backbone(inp)
    h = layers.GlobalAveragePooling2D(keepdims=True)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(7, activation="relu")(h)
    h = layers.BatchNormalization()(h)
    return keras.Model(inp, layers.Dense(K, activation="softmax")(h)), c, "softmax"


def ops_mean_head():
    inp = keras.Input((10, 10, 3))
    h, c = _backbone(inp)
    h = keras.ops.mean(h, axis=(1, 2))
    return keras.Model(inp, layers.Dense(K, activation="softmax")(h)), c, "softmax"


def nested_backbone():
    inner_in = keras.Input((10, 10, 3))
    h, c = _backbone(inner_in)
    backbone = keras.Model(inner_in, h, name="backbone")
    inp = keras.Input((10, 10, 3))
    h = layers.GlobalAveragePooling2D()(backbone(inp))
    return keras.Model(inp, layers.Dense(K, activation="softmax")(h)), c, "softmax"


def conv1d_gap():
    inp = keras.Input((20, 2))
    h, c = _backbone(inp, layers.Conv1D)
    h = layers.GlobalAveragePooling1D()(h)
    return keras.Model(inp, layers.Dense(K, activation="softmax")(h)), c, "softmax"


# Two head shapes in the default suite; the other four in the slow group (the default suite's 10 minutes).
MODELS = [gap_dropout_dense, gmp_logits] + [pytest.param(f, marks=pytest.mark.slow) for f in (
    gap_keepdims_flatten_mlp, ops_mean_head, nested_backbone, conv1d_gap)]
REQUESTS = [
    dict(method="permutation", n_repeats=3, random_state=0),
    dict(method="permutation", n_repeats=2, random_state=1, scoring="loss"),
    dict(method="ablation", scoring="loss"),
    dict(method="ablation", ablation_value="mean", scoring="loss"),
]


def _pooled_head(ga, key):
    """Installs :class:`PooledHeadEngine` as ``ga``'s shortcut at ``key`` and returns it.

    Where the head is one Dense layer, ``tail_engine`` now picks the closed form
    (:class:`LinearHeadEngine`, tested in ``tests/core/test_linear_head.py``); this file
    tests the engine that runs the head, so it puts that one in place.
    """
    engine = PooledHeadEngine(ga.graph, key, *global_pool_after(ga.graph, key))
    ga._engines[("shortcut", key)] = engine
    return engine


def _pair(build):
    keras.utils.set_random_seed(0)
    model, conv, output = build()
    _with_dead(conv, 3)
    fast = GlobalAnalyzer(model, blocks=["blk"] if build is not nested_backbone else ["backbone/blk"],
                          output=output)
    slow = GlobalAnalyzer(model, blocks=fast.block_names, output=output)
    key = fast.block_keys[0]
    _pooled_head(fast, key)
    # The plain engine where the shortcut would go: the reference path.
    slow._engines[("shortcut", key)] = slow._engine(key, shortcut=False)
    return model, fast, slow


@pytest.mark.parametrize("build", MODELS, ids=lambda f: getattr(f, "__name__", None))
def test_shortcut_equals_the_tail_engine(build):
    model, fast, slow = _pair(build)
    key = fast.block_keys[0]
    assert type(fast._engine(key)) is PooledHeadEngine
    assert type(slow._engine(key)) is TailEngine
    x, y = _data(tuple(model.input_shape[1:]))
    block = fast.block_names[0]
    for kw in REQUESTS:
        a = fast.filter_importance(x, y, block=block, **kw)
        b = slow.filter_importance(x, y, block=block, **kw)
        np.testing.assert_allclose(a.importances, b.importances, rtol=1e-5, atol=1e-6, err_msg=str(kw))
        assert a.baseline_score == pytest.approx(b.baseline_score, rel=1e-6, abs=1e-7)
        np.testing.assert_array_equal(a.dead_filters, b.dead_filters)
        assert list(a.dead_filters) == [3]
        if kw.get("scoring") == "loss":  # something was measured: a perturbation changed the loss
            assert np.abs(b.importances).max() > 1e-4


def test_shortcut_caches_pooled_features_only():
    model, fast, _ = _pair(gap_dropout_dense)
    engine = fast._engine(fast.block_keys[0])
    x, _ = _data((10, 10, 3))
    red = FrontierCache(engine)
    fast._run(fast._stream(x), [red])
    cache = red.result()
    assert [a.shape for a in cache.arrays] == [(N, 10)]
    # The summary's mean map is the float64 mean of the block's maps (NumPy oracle).
    maps = keras.Model(model.input, model.get_layer("blk").output).predict(x, verbose=0)
    np.testing.assert_allclose(cache.summary.mean_map, maps.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)


def test_groups_and_unlabelled_agree():
    model, fast, slow = _pair(gmp_logits)
    x, _ = _data((10, 10, 3))
    groups = [[0, 1], [2, 5, 9], [3]]
    # Scored by loss: unlabelled accuracy can sit at exactly 1 under every perturbation, which compares nothing.
    for kw in (dict(method="permutation", n_repeats=2, random_state=3, scoring="loss"),
               dict(method="ablation", scoring="loss")):
        a = fast.filter_importance(x, block="blk", groups=groups, **kw)
        b = slow.filter_importance(x, block="blk", groups=groups, **kw)
        np.testing.assert_allclose(a.importances, b.importances, rtol=1e-5, atol=1e-6)
        assert a.label_source == b.label_source == "model predictions"
        assert np.abs(b.importances).max() > 1e-4  # the comparison compares something


def _skip_past_pool():
    inp = keras.Input((10, 10, 3))
    h, _ = _backbone(inp)
    pooled = layers.GlobalAveragePooling2D()(h)
    side = layers.Flatten()(layers.Conv2D(2, 1)(h))  # the block is read a second time
    return keras.Model(inp, layers.Dense(K, activation="softmax")(layers.Concatenate()([pooled, side])))


def _mid_block():
    inp = keras.Input((10, 10, 3))
    h, _ = _backbone(inp)
    h = layers.Conv2D(4, 3, activation="relu")(h)
    return keras.Model(inp, layers.Dense(K, activation="softmax")(layers.GlobalAveragePooling2D()(h)))


def _pool_then_skip():
    inp = keras.Input((10, 10, 3))
    h, _ = _backbone(inp)
    early = layers.GlobalAveragePooling2D()(layers.Conv2D(3, 1, name="early")(inp))
    pooled = layers.GlobalAveragePooling2D()(h)  # an earlier tensor crosses the cut after the pooling
    return keras.Model(inp, layers.Dense(K, activation="softmax")(layers.Concatenate()([pooled, early])))


@pytest.mark.parametrize("build", [_skip_past_pool, _mid_block, _pool_then_skip], ids=lambda f: f.__name__)
def test_no_shortcut_where_it_would_be_wrong(build):
    keras.utils.set_random_seed(0)
    ga = GlobalAnalyzer(build(), blocks=["blk"])
    assert type(ga._engine(ga.block_keys[0])) is TailEngine


def test_taylor_uses_the_plain_engine():
    _, fast, _ = _pair(gap_dropout_dense)
    x, y = _data((10, 10, 3))
    imp = fast.filter_importance(x, y, block="blk", method="taylor")
    assert imp.importances.shape == (10, 1) and np.isfinite(imp.importances).all()
    assert type(fast._engine(fast.block_keys[0], shortcut=False)) is TailEngine


class _SumPooling(layers.GlobalAveragePooling2D):
    """A subclass that pools otherwise (a sum): not trusted to reduce like its parent."""

    def call(self, inputs):
        return keras.ops.sum(inputs, axis=(1, 2))


def _subclassed_pool():
    inp = keras.Input((10, 10, 3))
    h, _ = _backbone(inp)
    return keras.Model(inp, layers.Dense(K, activation="softmax")(_SumPooling()(h)))


def _mean_over_the_batch_too():
    inp = keras.Input((10, 10, 3))
    h, _ = _backbone(inp)
    pooled = keras.ops.mean(h, axis=(0, 1, 2), keepdims=True)  # the block's only reader; mixes samples
    return keras.Model(inp, layers.Dense(K, activation="softmax")(layers.Flatten()(pooled)))


def _max_with_an_initial_value():
    inp = keras.Input((10, 10, 3))
    h, _ = _backbone(inp)
    pooled = keras.ops.max(h, axis=(1, 2), initial=0.5)  # max(0.5, the maximum): not a plain pooling
    return keras.Model(inp, layers.Dense(K, activation="softmax")(pooled))


@pytest.mark.parametrize("build", [_subclassed_pool, _mean_over_the_batch_too, _max_with_an_initial_value],
                         ids=lambda f: f.__name__)
def test_no_shortcut_through_other_reductions(build):
    from keras_hybrid_interp.core.graph import ModelGraph

    keras.utils.set_random_seed(0)
    graph = ModelGraph(build())
    key = graph.resolve("blk")
    assert len([o for o in graph.ops if key in o.inputs]) == 1  # one reader: only the reduction's kind decides
    assert global_pool_after(graph, key) is None


def test_no_shortcut_where_a_mask_rides_on_the_block():
    inp = keras.Input((12,), dtype="int32")
    h = layers.Embedding(20, 6, mask_zero=True, name="emb")(inp)
    model = keras.Model(inp, layers.Dense(K, activation="softmax")(layers.GlobalAveragePooling1D()(h)))
    ga = GlobalAnalyzer(model, blocks=["emb"])
    assert global_pool_after(ga.graph, ga.block_keys[0]) is None


def test_free_spatial_dimensions():
    """A model on ``Input((None, None, 3))``: the shortcut's fills and the stacking calibration need no static shape."""
    from keras_hybrid_interp.core import plan as _plan

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    h, conv = _backbone(inp)
    model = keras.Model(inp, layers.Dense(K, activation="softmax")(layers.GlobalAveragePooling2D()(h)))
    _with_dead(conv, 3)
    fast = GlobalAnalyzer(model, blocks=["c1", "blk"])
    slow = GlobalAnalyzer(model, blocks=["c1", "blk"])
    key = fast.block_keys[1]
    slow._engines[("shortcut", key)] = slow._engine(key, shortcut=False)
    assert type(fast._engine(key)) is LinearHeadEngine  # GAP -> Dense: the closed form, by default
    assert type(_pooled_head(fast, key)) is PooledHeadEngine
    x, y = _data((10, 10, 3))
    for kw in REQUESTS:
        a = fast.filter_importance(x, y, block="blk", **kw)
        b = slow.filter_importance(x, y, block="blk", **kw)
        np.testing.assert_allclose(a.importances, b.importances, rtol=1e-5, atol=1e-6, err_msg=str(kw))
    # "auto" times candidate stackings on the cached maps (whose shape the graph does not know).
    saved = _plan.CALIBRATE_MIN_WORK
    _plan.CALIBRATE_MIN_WORK = 0
    try:
        auto = fast.filter_importance(x, y, block="c1", n_repeats=2, random_state=0, scoring="loss")
    finally:
        _plan.CALIBRATE_MIN_WORK = saved
    assert fast._engine(fast.block_keys[0]).calibrations  # it calibrated
    one = fast.filter_importance(x, y, block="c1", n_repeats=2, random_state=0, scoring="loss",
                                 perturbations_per_eval=1)
    np.testing.assert_allclose(auto.importances, one.importances, rtol=1e-5, atol=1e-6)
    assert np.abs(one.importances).max() > 1e-4


@pytest.mark.parametrize("engine", [PooledHeadEngine, LinearHeadEngine], ids=lambda e: e.__name__)
def test_dead_filters_with_a_non_round_constant_score_exactly_zero(engine):
    """A dead filter whose map is 0.1 everywhere (not exact in float32 sums): permutation and mean ablation 0."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((7, 7, 3))
    h, conv = _backbone(inp)
    model = keras.Model(inp, layers.Dense(K, activation="softmax")(layers.GlobalAveragePooling2D()(h)))
    w, b = conv.get_weights()
    w[..., 3], b[3] = 0.0, 0.1
    conv.set_weights([w, b])
    ga = GlobalAnalyzer(model, blocks=["blk"])
    if engine is PooledHeadEngine:
        _pooled_head(ga, ga.block_keys[0])
    assert type(ga._engine(ga.block_keys[0])) is engine
    x, y = _data((7, 7, 3))
    for kw in (dict(method="permutation", n_repeats=2, random_state=0, scoring="loss"),
               dict(method="ablation", ablation_value="mean", scoring="loss")):
        imp = ga.filter_importance(x, y, block="blk", batch_size=40, **kw)  # a short last batch
        assert list(imp.dead_filters) == [3]
        np.testing.assert_array_equal(imp.importances[3], 0.0)
        assert np.abs(imp.importances).max() > 1e-4  # the others were measured


def test_batches_of_different_spatial_sizes():
    """The pooled cache does not care about spatial sizes; only GMP's mean ablation needs one, and says so."""
    tf = pytest.importorskip("tensorflow")

    def model_with(pool):
        keras.utils.set_random_seed(0)
        inp = keras.Input((None, None, 3))
        h, _ = _backbone(inp)
        return keras.Model(inp, layers.Dense(K, activation="softmax")(pool()(h)))

    rng = np.random.default_rng(0)
    small = rng.normal(size=(48, 10, 10, 3)).astype("float32")
    large = rng.normal(size=(48, 12, 12, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(small).batch(16).concatenate(
        tf.data.Dataset.from_tensor_slices(large).batch(16))
    for pool, engine in [(p, e) for p in (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D)
                         for e in (PooledHeadEngine, LinearHeadEngine)]:
        ga = GlobalAnalyzer(model_with(pool), blocks=["c1", "blk"])
        if engine is PooledHeadEngine:
            _pooled_head(ga, ga.block_keys[1])
        assert type(ga._engine(ga.block_keys[1])) is engine
        perm = ga.filter_importance(ds, block="blk", n_repeats=2, random_state=0, scoring="loss")
        assert perm.n_samples == 96 and np.isfinite(perm.importances).all()
        zero = ga.filter_importance(ds, block="blk", method="ablation", scoring="loss")
        assert np.isfinite(zero.importances).all()
        if pool is layers.GlobalMaxPooling2D:
            with pytest.raises(ValueError, match="`x`: mean ablation through a global max pooling"):
                ga.filter_importance(ds, block="blk", method="ablation", ablation_value="mean")
        else:
            mean = ga.filter_importance(ds, block="blk", method="ablation", ablation_value="mean", scoring="loss")
            assert np.isfinite(mean.importances).all()
    # The plain tail caches the maps themselves: one spatial size, or a clear error.
    with pytest.raises(ValueError,
                       match=r"`x`: filter importance caches 'c1' for every sample.*after batches of \(8, 8, 6\)"):
        ga.filter_importance(ds, block="c1", n_repeats=1, random_state=0)
