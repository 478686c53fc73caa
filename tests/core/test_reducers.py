"""The tail's cache (FrontierCache): one array per cached tensor, allocated once when the pass knows its size.

Oracle: the block's maps computed by a Keras sub-model on all samples at once (``model.predict``), which
uses no code of the package; the cache of a ``tf.data`` stream (size unknown: batches joined at the end)
and of an array stream (size known: written into one array) must both equal it bit for bit.
"""

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer
from keras_hybrid_interp.core.reducers import FrontierCache


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    h = layers.Conv2D(3, 3, padding="same", activation="relu", name="blk")(inp)
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(h)
    out = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


def _cache(ga, x, **kw):
    red = FrontierCache(ga._engine(ga.block_keys[0]))
    ga._run(ga._stream(x, **kw), [red])
    return red, red.result()


def test_array_stream_fills_one_preallocated_array_equal_to_the_model():
    model = _model()
    x = np.random.default_rng(0).normal(size=(11, 8, 8, 2)).astype("float32")
    ga = GlobalAnalyzer(model, blocks=["blk"])
    want = keras.Model(model.input, model.get_layer("blk").output).predict(x, verbose=0)
    red, cache = _cache(ga, x, batch_size=4)
    assert cache.n == 11
    # Written into one array allocated at the first batch: no list of batches, no second copy.
    assert red._buffers[0] is not None
    assert red._parts == [[] for _ in red.cached]
    assert np.shares_memory(cache.arrays[0], red._buffers[0])
    got = cache.arrays[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # A dataset (size unknown): the batches are joined once, and only the joined array is kept.
    tf = pytest.importorskip("tensorflow")
    red_ds, cache_ds = _cache(ga, tf.data.Dataset.from_tensor_slices(x).batch(4))
    assert red_ds._buffers == [None] and len(red_ds._parts[0]) == 1
    np.testing.assert_array_equal(cache_ds.arrays[0], got)
    assert red_ds.result().arrays[0] is cache_ds.arrays[0]


@pytest.mark.parametrize("announced", [3, 20])
def test_more_or_fewer_samples_than_announced(announced):
    """More samples than announced fall back to batches; fewer give the filled rows only."""
    model = _model()
    ga = GlobalAnalyzer(model, blocks=["blk"])
    red = FrontierCache(ga._engine(ga.block_keys[0]))
    red.expect(announced)
    rng = np.random.default_rng(1)
    parts = []

    class Batch:
        y = None

        def __init__(self, a):
            self.values = {red.cached[0].ident: a}

    for m in (2, 4, 3):
        a = rng.normal(size=(m, 8, 8, 3)).astype("float32")
        parts.append(a)
        red.update(Batch(a))
    cache = red.result()
    np.testing.assert_array_equal(cache.arrays[0], np.concatenate(parts))
    assert cache.n == 9
