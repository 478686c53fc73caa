"""InterpretationCallback: records, oracles, files, and training left untouched."""

import glob
import os
import random

import numpy as np
import pandas as pd
import pytest

import keras
from keras import layers

from keras_hybrid_interp.callback import ImportanceOptions, InterpretationCallback, ProbeOptions, plot_training_dynamics
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer
from keras_hybrid_interp.local.interpreter import HybridInterpreter

from models import assert_unchanged, snapshot

CLASSES = 3
BLOCKS = ["p1", "c2"]


def make_data(n=96, seed=0):
    """Images whose class brightens one of three regions, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(0.0, 0.5, size=(n, 12, 12, 1)).astype("float32")
    for k in range(CLASSES):
        x[y == k, 4 * k:4 * k + 4, :, 0] += 1.5
    return x, y


def tiny_cnn(dropout=0.3):
    inp = keras.Input((12, 12, 1))
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.MaxPooling2D(name="p1")(h)
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    h = layers.Dropout(dropout, name="drop")(h)
    out = layers.Dense(CLASSES, activation="softmax", name="head")(h)
    return keras.Model(inp, out, name="tiny_cnn")


def compiled(seed=0):
    keras.utils.set_random_seed(seed)
    m = tiny_cnn()
    m.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return m


@pytest.fixture(scope="module")
def data():
    return make_data(96, 0), make_data(60, 1)


def driven(model, val, epochs=2, **kwargs):
    """Keras early_stopping_test style: drive the hooks by hand."""
    cb = InterpretationCallback(val, random_state=0, **kwargs)
    cb.set_model(model)
    cb.on_train_begin()
    for e in range(epochs):
        cb.on_epoch_end(e, {})
    return cb


def last(history, metric):
    h = history[(history.metric == metric) & (history.epoch == history.epoch.max())]
    return h.set_index("block")["value"]


# ----------------------------------------------------------------------
# Training is untouched
# ----------------------------------------------------------------------
def test_training_with_the_callback_is_bit_identical(data, tmp_path):
    (x, y), (xv, yv) = data

    def train(callbacks):
        m = compiled(seed=3)
        m.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks)  # shuffled, with Dropout
        return m.get_weights()

    ref = train([])
    control = train([])
    if not all(np.array_equal(a, b) for a, b in zip(ref, control)):
        pytest.skip("training is not deterministic on this platform even without the callback")
    cb = InterpretationCallback((xv, yv), random_state=0, log_dir=tmp_path / "tb", csv_path=tmp_path / "h.csv",
                                importance=ImportanceOptions(block="c2", n_repeats=2, top_k=3))
    with_cb = train([cb])
    assert all(np.array_equal(a, b) for a, b in zip(ref, with_cb))
    assert sorted(cb.history.epoch.unique()) == [0, 1, 2, 3]


def test_driving_the_hooks_changes_neither_the_model_nor_the_global_random_streams(data):
    (x, y), (xv, yv) = data
    m = compiled()
    m.fit(x, y, epochs=1, verbose=0)
    train_fn = m.train_function
    before = snapshot(m, xv[:8])
    py_state, np_state = random.getstate(), np.random.get_state()
    cb = driven(m, (xv, yv), epochs=2, importance=ImportanceOptions(block="c2", n_repeats=2))
    cb.on_train_end()
    assert random.getstate() == py_state
    np_after = np.random.get_state()
    assert np_after[0] == np_state[0] and np.array_equal(np_after[1], np_state[1]) and np_after[2:] == np_state[2:]
    assert_unchanged(before, snapshot(m, xv[:8]))
    assert m.train_function is train_fn  # not recompiled
    assert sorted(cb.history.epoch.unique()) == [0, 1, 2]


def test_the_user_model_is_traced_as_often_with_and_without_the_callback(data):
    (x, y), (xv, yv) = data

    class Counting(keras.Model):
        traces = 0

        def train_step(self, *args):  # (self, data) on TF/torch, (self, state, data) on JAX
            type(self).traces += 1  # Python side effect: runs once per trace
            return super().train_step(*args)

    def traces(callbacks):
        keras.utils.set_random_seed(0)
        base = tiny_cnn()
        m = Counting(base.inputs, base.outputs)
        m.compile("adam", "sparse_categorical_crossentropy")
        Counting.traces = 0
        m.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=callbacks)
        return Counting.traces

    assert traces([InterpretationCallback((xv, yv), random_state=0)]) == traces([])


# ----------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------
def test_fit_records_a_baseline_then_every_epoch(data):
    (x, y), (xv, yv) = data
    m = compiled()
    cb = InterpretationCallback((xv, yv), random_state=0)
    m.fit(x, y, epochs=3, verbose=0, callbacks=[cb])
    h = cb.history
    assert list(h.columns) == ["epoch", "block", "metric", "value", "filter"]
    assert sorted(h.epoch.unique()) == [0, 1, 2, 3]
    assert cb.interpreter.block_names == BLOCKS
    per_epoch = h[h.epoch == 3]
    expected = {(b, k) for b in BLOCKS for k in ("accuracy", "loss", "agreement", "dead_filters", "redundancy")}
    expected |= {("output", "accuracy"), ("output", "loss")}
    assert set(zip(per_epoch.block, per_epoch.metric)) == expected
    assert len(per_epoch) == len(expected)
    assert h["filter"].isna().all()


def test_every_records_every_k_epochs_and_the_last_one(data):
    (x, y), (xv, yv) = data
    m = compiled()
    cb = InterpretationCallback((xv, yv), every=2, random_state=0)
    m.fit(x, y, epochs=5, verbose=0, callbacks=[cb])
    assert sorted(cb.history.epoch.unique()) == [0, 2, 4, 5]
    # a second fit continues: no duplicate baseline
    m.fit(x, y, epochs=6, initial_epoch=5, verbose=0, callbacks=[cb])
    assert sorted(cb.history.epoch.unique()) == [0, 2, 4, 5, 6]
    assert not cb.history.duplicated(["epoch", "block", "metric", "filter"]).any()


def test_direct_driving_with_every(data):
    _, (xv, yv) = data
    cb = driven(compiled(), (xv, yv), epochs=4, every=3)
    assert sorted(cb.history.epoch.unique()) == [0, 3]
    cb.on_train_end()
    assert sorted(cb.history.epoch.unique()) == [0, 3, 4]


# ----------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------
def test_probe_metrics_equal_evaluate_layers_on_the_evaluation_half(data):
    (x, y), (xv, yv) = data
    m = compiled()
    m.fit(x, y, epochs=15, batch_size=16, verbose=0)
    cb = driven(m, (xv, yv), epochs=2)
    fit, ev = cb.probe_fit_indices, cb.eval_indices
    assert len(fit) == 30 and len(ev) == 30 and not set(fit) & set(ev)
    table = cb.interpreter.evaluate_layers(xv[ev], yv[ev]).to_frame().set_index("block")
    for metric in ("accuracy", "agreement"):
        rec = last(cb.history, metric)
        np.testing.assert_allclose(rec, table.loc[rec.index, metric], rtol=0, atol=1e-12)
    rec = last(cb.history, "loss")
    np.testing.assert_allclose(rec, table.loc[rec.index, "loss"], rtol=1e-4)
    assert table.loc["output", "accuracy"] > 0.5  # the oracle is meaningful: the model learned something


def test_probes_learn_on_separable_features_and_warm_start_keeps_them():
    # a model whose block features identify the class: probes must reach (almost) perfect accuracy
    x, y = make_data(200, 5)
    keras.utils.set_random_seed(0)
    m = tiny_cnn(dropout=0.0)
    m.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=15, batch_size=32, verbose=0)
    cb = driven(m, (x, y), epochs=3)
    acc = cb.history.query("metric == 'accuracy'").pivot(index="epoch", columns="block", values="value")
    assert (acc["c2"] >= 0.95).all()
    assert acc["c2"].iloc[-1] >= acc["c2"].iloc[0] - 0.02


def test_callback_probes_equal_fit_probes_on_the_same_features(data):
    # The callback warm-starts its probes; the objective is strictly convex, so they must equal
    # what fit_probes gives from zero on the same samples (the probe-fit half of the subset),
    # within the solver tolerance.
    (x, y), (xv, yv) = data
    m = compiled()
    m.fit(x, y, epochs=3, batch_size=16, verbose=0)
    cb = driven(m, (xv, yv), epochs=3)
    fit = cb.probe_fit_indices
    ref = HybridInterpreter(m, BLOCKS).fit_probes(xv[fit], yv[fit], verbose=0)
    got = cb.interpreter.layer_predictions(xv).probabilities
    want = ref.layer_predictions(xv).probabilities
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_logits_models_and_the_fitted_interpreter(data):
    _, (xv, yv) = data
    inp = keras.Input((12, 12, 1))
    h = layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    h = layers.GlobalAveragePooling2D()(h)
    m = keras.Model(inp, layers.Dense(CLASSES, name="logits")(h))
    with pytest.raises(ValueError, match="logits"):
        driven(m, (xv, yv), epochs=0)
    with pytest.warns(UserWarning):  # a single block
        cb = driven(m, (xv, yv), epochs=1, output="logits")
    assert cb.interpreter.fitted and cb.interpreter.explain(xv[0]).probabilities.shape == (1, CLASSES)


def test_without_labels_probes_follow_the_model(data):
    (x, y), (xv, _) = data
    m = compiled()
    m.fit(x, y, epochs=2, verbose=0)
    cb = driven(m, xv, epochs=1)
    h = cb.history
    assert "accuracy" not in set(h.metric)
    table = cb.interpreter.evaluate_layers(xv[cb.eval_indices]).to_frame().set_index("block")
    rec = last(h, "agreement")
    np.testing.assert_allclose(rec, table.loc[rec.index, "agreement"], atol=1e-12)
    rec = last(h, "loss")
    np.testing.assert_allclose(rec, table.loc[rec.index, "loss"], rtol=1e-4)


def test_dead_filters_and_redundancy_equal_filter_correlation(data):
    _, (xv, yv) = data
    m = compiled()
    k, b = m.get_layer("c1").get_weights()
    k[..., 1] = 0.0
    b[1] = -1.0  # filter 1 of c1 is dead (ReLU of -1)
    m.get_layer("c1").set_weights([k, b])
    cb = driven(m, (xv, yv), epochs=1, probes=False)
    x_sub = cb.validation_subset[0]
    ga = GlobalAnalyzer(cb.interpreter)
    for block in BLOCKS:
        with pytest.warns(UserWarning) if block == "p1" else _no_op():
            corr = ga.filter_correlation(x_sub, block=block)
        rec = cb.history.query("block == @block and epoch == 1").set_index("metric")["value"]
        assert rec["dead_filters"] == len(corr.dead_filters)
        assert rec["redundancy"] == pytest.approx(corr.redundancy, rel=1e-5)
    assert cb.history.query("block == 'p1' and metric == 'dead_filters'")["value"].tolist() == [1.0, 1.0]
    assert "accuracy" not in set(cb.history.metric)


class _no_op:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_importance_equals_a_full_model_rerun_by_hand(data):
    # Oracle: permutation importance computed by re-running the whole model with the filter's
    # maps permuted by hand (same permutations), accuracy against the labels.
    from keras_hybrid_interp.core.perturbation import job_permutation

    from _models_global import Perturb, full_model_with_perturbation

    _, (xv, yv) = data
    model = compiled()
    model.fit(xv, yv, epochs=3, verbose=0)
    cb = driven(model, (xv, yv), epochs=0, correlation=False, probes=False,
                importance=ImportanceOptions(block="c2", n_repeats=3, top_k=4))
    g = cb.interpreter.graph
    key = g.resolve("c2")
    base = np.mean(model.predict_on_batch(xv).argmax(1) == yv)
    n, c = len(xv), 6
    ref = np.zeros(c)
    for ch in range(c):
        for r in range(3):
            perm = job_permutation(cb.importance_random_state_, ch, r, n)
            out = full_model_with_perturbation(g, key, Perturb([ch], c, perm=perm)).predict_on_batch(xv)
            ref[ch] += (base - np.mean(out.argmax(1) == yv)) / 3
    rec = cb.history.query("epoch == 0 and metric == 'importance'")
    assert (rec.block == "c2").all() and len(rec) == 4
    np.testing.assert_allclose(rec["value"], ref[rec["filter"].to_numpy(int)], atol=1e-12)
    np.testing.assert_allclose(np.sort(rec["value"])[::-1], np.sort(ref)[::-1][:4], atol=1e-12)  # the top 4


def test_max_samples_takes_the_first_samples_and_a_fixed_split(data):
    _, (xv, yv) = data
    a = driven(compiled(), (xv, yv), epochs=0, max_samples=21)
    b = driven(compiled(), (xv, yv), epochs=0, max_samples=21)
    np.testing.assert_array_equal(a.validation_subset[0], xv[:21])
    assert len(a.probe_fit_indices) == 11 and len(a.eval_indices) == 10
    np.testing.assert_array_equal(a.eval_indices, b.eval_indices)
    pd.testing.assert_frame_equal(a.history, b.history)


# ----------------------------------------------------------------------
# Data forms
# ----------------------------------------------------------------------
class _Seq(keras.utils.PyDataset):
    def __init__(self, x, y, bs):
        super().__init__()
        self.x, self.y, self.bs = x, y, bs

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def __getitem__(self, i):
        s = slice(i * self.bs, (i + 1) * self.bs)
        return self.x[s], self.y[s]


def test_arrays_tf_data_and_pydataset_give_the_same_history(data):
    import tensorflow as tf

    _, (xv, yv) = data
    m = compiled()
    ref = driven(m, (xv, yv), epochs=1, max_samples=50).history
    ds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(7)
    for val in (ds, _Seq(xv, yv, 9), (xv, yv, np.ones(len(yv)))):
        pd.testing.assert_frame_equal(driven(m, val, epochs=1, max_samples=50).history, ref)


# ----------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------
def test_csv_is_written_as_training_goes_and_equals_history(data, tmp_path):
    (x, y), (xv, yv) = data
    path = tmp_path / "dyn.csv"
    m = compiled()
    cb = InterpretationCallback((xv, yv), random_state=0, csv_path=path,
                                importance=ImportanceOptions(block="c2", n_repeats=2, top_k=2))
    cb.set_model(m)
    cb.on_train_begin()
    cb.on_epoch_end(0, {})
    on_disk = pd.read_csv(path)  # before on_train_end: a crash now would lose nothing recorded
    assert sorted(on_disk.epoch.unique()) == [0, 1]
    m.fit(x, y, epochs=3, initial_epoch=1, verbose=0, callbacks=[cb])  # appends
    on_disk = pd.read_csv(path, dtype={"filter": "Int64"})
    pd.testing.assert_frame_equal(on_disk, cb.history, check_dtype=False)
    assert on_disk["filter"].notna().sum() == 2 * 4


def test_tensorboard_events_hold_every_scalar_and_the_histograms(data, tmp_path):
    import tensorflow as tf

    _, (xv, yv) = data
    cb = driven(compiled(), (xv, yv), epochs=2, log_dir=tmp_path / "tb",
                importance=ImportanceOptions(block="c2", n_repeats=2, top_k=2))
    files = glob.glob(os.path.join(tmp_path, "tb", "events.out.tfevents.*"))
    assert len(files) == 1  # written (and flushed) before on_train_end
    scalars, hists = {}, {}
    for event in tf.compat.v1.train.summary_iterator(files[0]):
        for v in event.summary.value:
            plugin = v.metadata.plugin_data.plugin_name
            target = scalars if plugin == "scalars" else hists
            target[(event.step, v.tag)] = tf.make_ndarray(v.tensor)
    h = cb.history
    for row in h.itertuples():
        tag = f"{row.block}/{row.metric}" + ("" if pd.isna(row.filter) else f"/filter_{row.filter}")
        assert scalars[(row.epoch, tag)] == pytest.approx(row.value, rel=1e-6, nan_ok=True)
    assert len(scalars) == len(h)
    c2 = cb.interpreter.graph.build([cb.interpreter.graph.resolve("c2")]).predict_on_batch(xv)
    for step in (0, 1, 2):
        assert {t for s, t in hists if s == step} == {f"{b}/filter_mean_activation" for b in BLOCKS}
    hist = hists[(2, "c2/filter_mean_activation")]
    assert hist.shape[1] == 3 and hist[:, 2].sum() == 6  # one count per filter
    means = np.asarray(c2, np.float64).mean(axis=(1, 2)).mean(axis=0)
    assert hist[0, 0] == pytest.approx(means.min(), rel=1e-5) and hist[-1, 1] == pytest.approx(means.max(), rel=1e-5)
    cb.on_train_end()


# ----------------------------------------------------------------------
# Robustness and errors
# ----------------------------------------------------------------------
def test_mixed_precision_model(data):
    _, (xv, yv) = data
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        m = tiny_cnn()
    finally:
        keras.config.set_dtype_policy(policy)
    cb = driven(m, (xv, yv), epochs=1)
    assert np.isfinite(cb.history.value).all()
    assert cb.interpreter.evaluate_layers(xv[:4], yv[:4]).to_frame().shape[0] == 3


def test_non_finite_outputs_warn_and_skip(data):
    _, (xv, yv) = data
    m = compiled()
    k, b = m.get_layer("head").get_weights()
    m.get_layer("head").set_weights([np.full_like(k, np.nan), b])
    with pytest.warns(RuntimeWarning, match="output"):
        cb = driven(m, (xv, yv), epochs=0)
    assert set(cb.history.metric) == {"dead_filters", "redundancy"}


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"every": 0}, ValueError, "every"),
    ({"max_samples": 0}, ValueError, "max_samples"),
    ({"probes": {"C": 3.0}}, TypeError, r"probes=ProbeOptions\(C=3.0\)"),  # the message writes the fix
    ({"probes": "yes"}, TypeError, "probes"),
    ({"importance": {"block": "c2"}}, TypeError, r"ImportanceOptions\(block='c2'\)"),
    ({"importance": "c2"}, TypeError, "ImportanceOptions"),
    ({"correlation": 1}, TypeError, "correlation"),
])
def test_invalid_arguments(data, kwargs, exc, match):
    _, (xv, yv) = data
    with pytest.raises(exc, match=match):
        InterpretationCallback((xv, yv), **kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: ProbeOptions(C=0.0), "C"),
    (lambda: ProbeOptions(max_iter=0), "max_iter"),
    (lambda: ProbeOptions(tol=-1.0), "tol"),
    (lambda: ImportanceOptions(block=None), "block"),
    (lambda: ImportanceOptions(block="c2", n_repeats=0), "n_repeats"),
    (lambda: ImportanceOptions(block="c2", top_k=0), "top_k"),
])
def test_invalid_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_invalid_data_and_blocks(data):
    _, (xv, yv) = data
    with pytest.raises(TypeError, match="validation_data"):
        InterpretationCallback([[1, 2], [3, 4]].__iter__())
    with pytest.raises(ValueError, match="same length"):
        InterpretationCallback((xv, yv[:5]))
    cb = InterpretationCallback((xv[:3], yv[:3]))
    with pytest.raises(ValueError, match="no model"):
        cb.on_train_begin()
    cb.set_model(compiled())
    with pytest.raises(ValueError, match="at least 4"):
        cb.on_train_begin()
    cb = InterpretationCallback((xv, yv), importance=ImportanceOptions(block="nope"))
    cb.set_model(compiled())
    with pytest.raises((ValueError, TypeError), match="nope"):
        cb.on_train_begin()


# ----------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------
def test_plot_training_dynamics(data):
    import matplotlib.figure
    import matplotlib.pyplot as plt

    _, (xv, yv) = data
    cb = driven(compiled(), (xv, yv), epochs=2, importance=ImportanceOptions(block="c2", n_repeats=1, top_k=2))
    fig = plot_training_dynamics(cb.history)
    assert isinstance(fig, matplotlib.figure.Figure)
    line_ax, heat_ax = fig.axes[:2]
    assert [ln.get_label() for ln in line_ax.get_lines()] == BLOCKS + ["output (model)"]
    np.testing.assert_allclose(line_ax.get_lines()[1].get_ydata(),
                               cb.history.query("block == 'c2' and metric == 'accuracy'")["value"])
    assert [t.get_text() for t in heat_ax.get_xticklabels()] == BLOCKS + ["output"]
    _, axes = plt.subplots(1, 2)
    assert plot_training_dynamics(cb, metric="redundancy", ax=axes) is axes[0].figure
    with pytest.raises(ValueError, match="available"):
        plot_training_dynamics(cb.history, metric="nope")
    with pytest.raises(ValueError, match="per filter"):
        plot_training_dynamics(cb.history, metric="importance")
    with pytest.raises(TypeError, match="pair"):
        plot_training_dynamics(cb.history, ax=axes[0])
