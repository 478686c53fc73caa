"""The user's model object is left alone: no node, no reference, no stale weights.

Three promises, each checked on the active Keras backend:

* No node. Keras records every symbolic call of a layer as a ``Node`` in
  the layer's ``_inbound_nodes`` and in the ``_outbound_nodes`` of the
  layers feeding it. The package replays the user's layers and builds side
  models from them, but inside ``ModelGraph.building()``, where those
  records go to the graph's own lists. So every public call leaves the node
  counts of every operation of the user's model (nested models and
  ``keras.ops`` operations included) as they were, and the model's own
  lists are the very objects they were.
* No reference. Once the user drops the model and the interpreter, no
  process-level cache keeps the model, or any of its layers, alive.
* No stale weights. Analyses read the weights at every call: after
  ``kernel.assign(...)``, the same interpreter and analyzer give what ones
  built afresh on the changed model give.
"""

import dataclasses
import gc
import unittest.mock
import weakref

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import (
    GlobalAnalyzer,
    HybridInterpreter,
    ImportanceOptions,
    InterpretationCallback,
    build_report,
)
from keras_hybrid_interp.core import distribute as _distribute
from keras_hybrid_interp.core.blocks import discover_blocks
from keras_hybrid_interp.core.graph import ModelGraph

from models import (
    assert_same_node_lists,
    nested_model,
    node_counts,
    node_lists,
    residual_cnn,
    sequential_cnn,
    user_operations,
)

# Tiny random data: the analyses warn about few samples and dead filters.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def data(shape, classes, n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + tuple(shape), dtype=np.float32), np.arange(n) % classes


def summary_text(model):
    lines = []
    model.summary(print_fn=lambda text, **kwargs: lines.append(text))
    return "\n".join(lines)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


# ----------------------------------------------------------------------
# ModelGraph: side models compute the model, the model stays as it was
# ----------------------------------------------------------------------
# Few architectures, few kernel shapes: on JAX every new weight shape compiles its initializer.
MODELS = {
    "functional": lambda: residual_cnn(input_shape=(12, 12, 3)),
    "operator_add": lambda: residual_cnn(input_shape=(12, 12, 3), operator_add=True),
    "nested": lambda: nested_model(input_shape=(12, 12, 3)),
    "sequential": lambda: sequential_cnn(input_shape=(12, 12, 3)),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_side_models_compute_the_model_and_leave_it_as_it_was(kind, tmp_path):
    model = MODELS[kind]()
    x, _ = data((12, 12, 3), 2, n=6)
    expected = to_numpy(model(x, training=False))
    lists, config, summary = node_lists(model), model.get_config(), summary_text(model)

    graph = ModelGraph(model)
    key = discover_blocks(graph)[0][0]
    full = graph.build(graph.output_keys)
    prefix = graph.build(graph.frontier(key))
    tail = graph.build(graph.output_keys, inputs=graph.frontier(key))
    side = graph.build_side_model(
        lambda symbolic: [layers.GlobalAveragePooling2D()(symbolic(key)), symbolic(graph.output_keys[0])]
    )
    with graph.building():
        flat = layers.Flatten()(graph.symbolic(key))
        by_hand = keras.Model(graph.symbolic_inputs[0], flat)
    assert_same_node_lists(lists, node_lists(model))

    # The side models run after the model's own lists are back, and compute the model.
    # Called eagerly but for the tail: on JAX each predict_on_batch compiles the whole model.
    def run(m, inputs):
        out = m(inputs, training=False)
        return [to_numpy(o) for o in out] if isinstance(out, (list, tuple)) else to_numpy(out)

    np.testing.assert_allclose(run(full, x), expected, rtol=1e-6, atol=1e-7)
    front = run(prefix, x)
    np.testing.assert_allclose(tail.predict_on_batch(front), expected, rtol=1e-6, atol=1e-7)
    act = front[0] if isinstance(front, list) else front
    pooled, out = run(side, x)
    np.testing.assert_allclose(pooled, act.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(run(by_hand, x), act.reshape(len(x), -1), rtol=1e-6, atol=1e-7)
    assert_same_node_lists(lists, node_lists(model))

    # The model works, describes itself, and serializes as before.
    np.testing.assert_array_equal(to_numpy(model(x, training=False)), expected)
    assert model.get_config() == config
    assert summary_text(model) == summary
    sub = keras.Model(model.inputs, model.layers[-2].output)  # its own graph is intact
    assert run(sub, x).shape[0] == len(x)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(run(reloaded, x), expected, rtol=1e-6, atol=1e-7)
    assert [w.shape for w in reloaded.weights] == [w.shape for w in model.weights]


def test_symbolic_tensors_only_inside_building():
    model = residual_cnn(input_shape=(12, 12, 3), operator_add=True)
    x, _ = data((12, 12, 3), 2, n=4)
    lists = node_lists(model)
    graph = ModelGraph(model)
    key = graph.resolve("res_out")
    with pytest.raises(RuntimeError, match="building"):
        graph.symbolic(key)
    with pytest.raises(RuntimeError, match="building"):
        graph.symbolic_inputs

    # An error inside the block still puts the model's own lists back.
    with pytest.raises(ZeroDivisionError):
        with graph.building():
            layers.Flatten()(graph.symbolic(key))
            1 / 0
    assert_same_node_lists(lists, node_lists(model))

    # Contexts nest, also across two graphs of one model; the innermost one's tensors are usable.
    other = ModelGraph(model)
    with graph.building():
        with other.building():
            inner = keras.Model(other.symbolic_inputs[0], other.symbolic(key))
            with pytest.raises(RuntimeError, match="building"):
                graph.symbolic(key)
        with graph.building():
            outer = keras.Model(graph.symbolic_inputs[0], graph.symbolic(key))
    assert_same_node_lists(lists, node_lists(model))
    reference = graph.build([key]).predict_on_batch(x)
    np.testing.assert_array_equal(inner.predict_on_batch(x), reference)
    np.testing.assert_array_equal(outer.predict_on_batch(x), reference)


# ----------------------------------------------------------------------
# No node: every public call
# ----------------------------------------------------------------------
@dataclasses.dataclass
class Fitted:
    model: keras.Model
    interp: HybridInterpreter
    analyzer: GlobalAnalyzer
    x: np.ndarray
    y: np.ndarray
    block: str
    pristine: dict  # node counts of the model as built
    after_setup: dict  # and once the interpreter is built, fitted and explains a sample


@pytest.fixture(scope="module")
def fitted():
    """A transfer-learning model (backbone nested, Add, Dropout) with a fitted interpreter."""
    keras.utils.set_random_seed(0)
    model = nested_model(input_shape=(12, 12, 3), classes=3)
    pristine = node_counts(model)
    x, y = data((12, 12, 3), 3)
    interp = HybridInterpreter(model)
    interp.fit_probes(x, y)
    interp.explain(x[0])
    return Fitted(model, interp, GlobalAnalyzer(interp), x, y, interp.block_names[0], pristine,
                  node_counts(model))


def _report(f):
    # Rendering the figures to PNG/PDF/SVG is most of the report's time and
    # none of the model's business: the figures are drawn, not encoded.
    with unittest.mock.patch("matplotlib.figure.Figure.savefig"):
        build_report(f.interp, f.x, f.y, examples=1, n_repeats=1)


def _fit_with_callback(f):
    cb = InterpretationCallback((f.x, f.y), importance=ImportanceOptions(block=f.block, n_repeats=1))
    f.model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    f.model.fit(f.x, f.y, epochs=1, batch_size=12, callbacks=[cb], verbose=0)


PUBLIC_CALLS = [
    ("HybridInterpreter", lambda f: HybridInterpreter(f.model)),
    ("fit_probes", lambda f: f.interp.fit_probes(f.x, f.y)),
    ("evaluate_layers", lambda f: f.interp.evaluate_layers(f.x, f.y)),
    ("layer_predictions", lambda f: f.interp.layer_predictions(f.x)),
    ("explain", lambda f: f.interp.explain(f.x[0])),
    ("probe_model", lambda f: f.interp.probe_model(block=0).predict_on_batch(f.x)),
    ("report", _report),
    ("global_analyzer", lambda f: GlobalAnalyzer(f.interp)),
    ("GlobalAnalyzer", lambda f: GlobalAnalyzer(f.model)),
    ("filter_correlation", lambda f: f.analyzer.filter_correlation(f.x, block=f.block)),
    ("filter_class_association", lambda f: f.analyzer.filter_class_association(f.x, f.y, block=f.block)),
    ("filter_importance_permutation",
     lambda f: f.analyzer.filter_importance(f.x, f.y, block=f.block, method="permutation", n_repeats=1)),
    ("filter_importance_ablation", lambda f: f.analyzer.filter_importance(f.x, f.y, block=f.block, method="ablation")),
    ("filter_importance_taylor", lambda f: f.analyzer.filter_importance(f.x, f.y, block=f.block, method="taylor")),
    ("layer_similarity", lambda f: f.analyzer.layer_similarity(f.x)),
    ("filter_examples", lambda f: f.analyzer.filter_examples(f.x, block=f.block, top_k=2)),
    ("layer_similarity_full", lambda f: f.analyzer.layer_similarity(f.x, estimator="full")),
    # The model as the *other* model of a comparison (the analysed one is a fresh copy).
    ("layer_similarity_other",
     lambda f: GlobalAnalyzer(nested_model(input_shape=(12, 12, 3), classes=3)).layer_similarity(f.x, other=f.model)),
    # Last: it trains (and compiles) the shared model.
    ("InterpretationCallback_in_fit", _fit_with_callback),
]


@pytest.mark.parametrize("call", [c for _, c in PUBLIC_CALLS], ids=[n for n, _ in PUBLIC_CALLS])
def test_public_call_adds_no_node_to_the_model(fitted, call):
    before = node_lists(fitted.model)
    call(fitted)
    assert_same_node_lists(before, node_lists(fitted.model))


def test_interpreter_keeps_the_counts_of_a_fresh_model(fitted):
    """Building, fitting and using an interpreter leaves the counts of the model as built."""
    assert fitted.after_setup == fitted.pristine


# ----------------------------------------------------------------------
# No reference
# ----------------------------------------------------------------------
def _analyse_everything(model, x, y):
    interp = HybridInterpreter(model)
    interp.fit_probes(x, y)
    interp.evaluate_layers(x, y)
    interp.layer_predictions(x)
    interp.explain(x[0])
    interp.probe_model(block=0).predict_on_batch(x)
    analyzer = GlobalAnalyzer(interp)
    block = interp.block_names[0]
    analyzer.filter_correlation(x, block=block)
    analyzer.filter_class_association(x, y, block=block)
    for method in ("permutation", "ablation", "taylor"):
        seeded = {"n_repeats": 1} if method == "permutation" else {}
        analyzer.filter_importance(x, y, block=block, method=method, **seeded)
    analyzer.layer_similarity(x)
    GlobalAnalyzer(nested_model(input_shape=(12, 12, 3), classes=3)).layer_similarity(x, other=model)
    GlobalAnalyzer(model).filter_importance(x, y, block=block, method="taylor")
    return interp


def test_no_cache_keeps_the_model_alive():
    """One garbage collection frees the model and every layer of it (its weights).

    A side model kept as the value of a module-level ``WeakKeyDictionary``
    keyed by the graph outlives the graph by one collection (a Keras model is
    a reference cycle), holding the user's layers: side models are cached on
    the graph instead (``ModelGraph.build``, ``build_side_model(cache_key=)``).
    """
    model = nested_model(input_shape=(12, 12, 3), classes=3)
    x, y = data((12, 12, 3), 3)
    interp = _analyse_everything(model, x, y)
    model_ref = weakref.ref(model)
    refs = [(path, weakref.ref(op)) for path, op in user_operations(model)[1:]]
    del interp, model
    gc.collect()
    assert model_ref() is None
    assert [path for path, ref in refs if ref() is not None] == []


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_distributed_predictor_cache_does_not_keep_its_model(monkeypatch):
    """The per-model cache of distributed forward functions is weak on the model, values included."""
    import tensorflow as tf

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")  # one replica: the same code path, in process
    monkeypatch.setattr(_distribute, "active_strategy", lambda: strategy)
    model = residual_cnn(input_shape=(12, 12, 3))
    x, _ = data((12, 12, 3), 4, n=6)
    np.testing.assert_allclose(_distribute.predict_on_batch(model, x), model.predict_on_batch(x),
                               rtol=1e-6, atol=1e-7)
    assert model in _distribute._PREDICTORS
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# ----------------------------------------------------------------------
# No stale weights
# ----------------------------------------------------------------------
def test_results_follow_the_weights(tmp_path):
    """After a weight change, the same interpreter and analyzer agree with fresh ones on the changed model.

    Both a convolution before the analysed block (the cached prefix) and one
    after it (the tail that the perturbations and the gradients re-run)
    change.
    """
    model = residual_cnn(input_shape=(12, 12, 3))
    x, y = data((12, 12, 3), 4)
    interp = HybridInterpreter(model)
    interp.fit_probes(x, y)
    analyzer = GlobalAnalyzer(interp)
    block = "res_out"

    def results(interp, analyzer):
        # scoring="loss": on 24 samples, single filters rarely flip a predicted class.
        return {
            "taylor": analyzer.filter_importance(x, y, block=block, method="taylor").importances,
            "permutation": analyzer.filter_importance(
                x, y, block=block, method="permutation", n_repeats=2, scoring="loss", random_state=0
            ).importances,
            "ablation": analyzer.filter_importance(x, y, block=block, method="ablation", scoring="loss").importances,
            "correlation": analyzer.filter_correlation(x, block=block).values,
            "evaluate_layers": interp.evaluate_layers(x, y)
            .to_frame()[["loss", "agreement"]]
            .to_numpy(dtype=np.float64),
        }

    before = results(interp, analyzer)
    rng = np.random.default_rng(1)
    for name in ("stem", "conv_after"):
        kernel = model.get_layer(name).kernel
        value = to_numpy(kernel)
        kernel.assign(-1.5 * value + rng.normal(0, 0.2, value.shape).astype(value.dtype))
    after = results(interp, analyzer)

    path = tmp_path / "interp.keras"
    interp.save(path)  # the changed weights and the same probes
    reloaded = HybridInterpreter.load(path)
    fresh = results(reloaded, GlobalAnalyzer(model, blocks=list(interp.block_names)))
    for name in before:
        assert not np.allclose(after[name], before[name], equal_nan=True), name
        np.testing.assert_allclose(after[name], fresh[name], rtol=1e-5, atol=1e-6, err_msg=name)
