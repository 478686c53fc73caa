"""Side models: built once per graph and set of taps, traced once (any batch size), re-used across calls.

fit_probes, evaluate_layers and build_report run their passes through side models the graph caches
(``core/graph.py``'s ``build_side_model(cache_key=...)``, ``core/data_pass.py``'s ``_side_model``). Here
every build is counted (``ModelGraph.build_side_model`` without a cache key: the real constructions)
and, on TensorFlow, every trace of each side model's predict function, while the calls are repeated
on data whose last batch is shorter than the others. The numbers a relaxed trace computes are compared
bit for bit with a fresh Keras model's ``predict_on_batch`` traced at each batch's own shape.
"""

import os
import sys
import warnings

import numpy as np
import pytest

import keras

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from keras_hybrid_interp import HybridInterpreter  # noqa: E402
from keras_hybrid_interp.core import data_pass as _pass  # noqa: E402
from keras_hybrid_interp.core import graph as _graph  # noqa: E402
from keras_hybrid_interp.report import build_report  # noqa: E402

from models import small_cnn  # noqa: E402

TF = keras.backend.backend() == "tensorflow"


@pytest.fixture
def builds(monkeypatch):
    """The names of the side models constructed while the test runs (cache hits are not constructions)."""
    built = []
    original = _graph.ModelGraph.build_side_model

    def counting(self, outputs_fn, name=None, *, cache_key=None):
        if cache_key is None:
            built.append(name)
        return original(self, outputs_fn, name, cache_key=cache_key)

    monkeypatch.setattr(_graph.ModelGraph, "build_side_model", counting)
    return built


def _data(n=100):
    rng = np.random.default_rng(0)
    x = rng.random((n, 16, 16, 1), dtype=np.float32)
    return x, rng.integers(0, 10, size=n)


def _traces(graph):
    """{cache key: tracing count of its predict function} of the graph's cached side models (TensorFlow)."""
    return {k: m.predict_function.experimental_get_tracing_count() for k, m in graph._side_models.items()
            if m.predict_function is not None}


def test_side_models_are_built_once_across_fit_probes_evaluate_report_and_again(builds):
    x, y = _data()  # batches of 64: 64 and 36 samples
    interp = HybridInterpreter(small_cnn())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp.fit_probes(x, y, verbose=0)
        assert builds == ["khi_pass"]  # the probes' pass: one side model (pooled blocks and the output)
        interp.evaluate_layers(x, y)
        assert builds == ["khi_pass"]  # the same taps: the same model
        build_report(interp, x, y, random_state=0, n_repeats=1, bootstrap=0)
        after_report = list(builds)
        # the report's pass: the lean model (every sample) and the explained inputs' raw maps (a few samples);
        # the full model (both) is needed only while a whole batch is explained, so it is never built here
        assert after_report == ["khi_pass"] * 3, after_report
        build_report(interp, x, y, random_state=0, n_repeats=1, bootstrap=0)
        interp.evaluate_layers(x, y)
        interp.fit_probes(x, y, verbose=0)
    assert builds == after_report  # nothing built again
    if TF:
        counts = _traces(interp.graph)
        # the explained inputs' raw maps run eagerly (a few samples once per pass: distribute.predict_few), so
        # only the probes' model and the report's lean model are traced
        assert len(counts) == 2, counts
        assert all(c == 1 for c in counts.values()), counts  # 64 and 36 samples: one trace each
        untraced = [k for k, m in interp.graph._side_models.items() if m.predict_function is None]
        assert len(untraced) == 1 and all(mode == "raw" for _, mode in untraced[0][1]), untraced


def test_a_few_samples_run_eagerly_with_the_traced_models_numbers():
    # predict_few (the explained inputs): on TensorFlow the model called in inference mode, nothing traced; its
    # numbers are those of predict_on_batch up to float rounding (a traced graph may fuse operations)
    from keras_hybrid_interp.core.distribute import EAGER_MAX_SAMPLES, predict_few, predict_on_batch

    x, _ = _data(EAGER_MAX_SAMPLES + 1)
    model = small_cnn()
    inp = keras.Input(x.shape[1:])
    side = keras.Model(inp, [model.layers[1](inp), model(inp)])  # two outputs
    few = predict_few(side, x[:3])
    if TF:
        assert side.predict_function is None  # nothing traced
    want = keras.Model(inp, side(inp)).predict_on_batch(x[:3])
    assert isinstance(few, list) and len(few) == 2
    for a, b in zip(few, want):
        assert a.shape == b.shape and isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.any(few[1] != 0)
    predict_few(side, x)  # more than EAGER_MAX_SAMPLES: the traced predict function, as predict_on_batch
    if TF:
        assert side.predict_function is not None
    np.testing.assert_allclose(predict_few(side, x)[1], predict_on_batch(side, x)[1], rtol=0, atol=0)


@pytest.mark.skipif(not TF, reason="tf.function tracing is TensorFlow's")
def test_one_trace_for_every_batch_size_gives_the_numbers_of_a_trace_per_size():
    x, y = _data(100)
    interp = HybridInterpreter(small_cnn())
    taps = interp._feature_taps() + [interp._output_tap()]
    collects = [_pass.Collect(t) for t in taps]
    _pass.run(interp.graph, interp._stream(x, y, batch_size=64), collects)
    side = _pass._side_model(interp.graph, [t.ident for t in taps])
    assert side.predict_function.experimental_get_tracing_count() == 1
    # the reference: the same side model, built anew, run by Keras alone (a trace per batch shape)
    with interp.graph.building():
        ins = interp.graph.symbolic_inputs[0]
        ref = keras.Model(ins, side(ins))
    want = [ref.predict_on_batch(x[:64]), ref.predict_on_batch(x[64:])]
    assert ref.predict_function.experimental_get_tracing_count() == 2
    for c, a, b in zip(collects, want[0], want[1]):
        got = c.result()
        assert got.shape[0] == 100
        np.testing.assert_array_equal(got, np.concatenate([a, b]))  # bit for bit
    assert np.any(collects[0].result() != 0)
    # and a third batch size runs the same trace
    _pass.run(interp.graph, interp._stream(x[:10], batch_size=4), collects[:1])
    assert side.predict_function.experimental_get_tracing_count() == 1


@pytest.mark.skipif(not TF, reason="tf.function tracing is TensorFlow's")
def test_free_batch_trace_takes_the_inputs_dtype_and_keeps_keras_tracing_otherwise():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(3)(inp))
    x = np.random.default_rng(1).random((7, 4))  # float64: traced as float64, as Keras would
    from keras_hybrid_interp.core.distribute import predict_on_batch

    out = predict_on_batch(model, x)
    predict_on_batch(model, x[:3])
    assert model.predict_function.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(out, keras.Model(inp, model.outputs).predict_on_batch(x))
    predict_on_batch(model, x.astype(np.float32)[:2])  # another dtype: Keras traces it, as before
    assert model.predict_function.experimental_get_tracing_count() == 2


def test_outputs_are_read_without_a_copy_and_equal_predict_on_batch():
    """``graph.predict_batch``: the predict function's outputs, bit for bit those of ``predict_on_batch``
    (one output and several); on TensorFlow read-only views of the backend's buffers, so a consumer that
    writes into them fails loudly instead of corrupting the backend's tensor."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    single = keras.Model(inp, h)
    multi = keras.Model(inp, [h, keras.layers.GlobalAveragePooling2D()(h)])
    x = np.random.default_rng(0).random((5, 8, 8, 3), dtype=np.float32)
    got = _graph.predict_batch(single, x)
    np.testing.assert_array_equal(got, np.asarray(single.predict_on_batch(x)))
    outs = _graph.predict_batch(multi, x)
    ref = multi.predict_on_batch(x)
    assert isinstance(outs, list) and len(outs) == 2
    for a, b in zip(outs, ref):
        np.testing.assert_array_equal(a, np.asarray(b))
        assert a.dtype == np.float32
    if TF:
        assert not got.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            got[0] = 0.0


def test_kept_samples_do_not_hold_their_batch_outputs():
    """What a reducer keeps of a batch (the explained inputs' raw maps: its first samples) is its own memory:
    a view would keep the whole batch's output buffer (on TensorFlow the backend's tensor) alive after the
    pass. Checked through the pass itself, against the side model's outputs for the same samples."""
    x, _ = _data(20)
    interp = HybridInterpreter(small_cnn())
    tap = interp._feature_taps()[0]
    raw = _pass.Tap(tap.key, "raw", limit=3)
    head, every = _pass.Collect(raw), _pass.Collect(_pass.Tap(tap.key, "raw"))
    seen = []
    original = _pass._batch_values

    def spy(*args, **kwargs):
        values = original(*args, **kwargs)
        seen.append(values[raw.ident])
        return values

    import unittest.mock

    with unittest.mock.patch.object(_pass, "_batch_values", spy):
        _pass.run(interp.graph, interp._stream(x, batch_size=8), [head, every])
    kept = head.result()
    np.testing.assert_array_equal(kept, np.asarray(seen[0])[:3])
    assert kept.shape[0] == 3 and np.any(kept != 0)
    for part in head._parts:  # the first 3 samples of a batch of 8: a copy, never a view of the batch
        assert part.base is None
        assert all(not np.shares_memory(part, np.asarray(v)) for v in seen)
    for part in every._parts:  # whole batches: the batch's values themselves where they own their memory
        assert part.base is None  # (JAX, torch); a copy where they are views of the backend's tensor (TF)
    # A consumer that is the values' last user (the report's explanations) takes them and lets them go.
    np.testing.assert_array_equal(head.result(release=True), kept)
    assert head.result() is None and every.result() is not None
