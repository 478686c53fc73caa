"""HybridInterpreter: probes, layer tables, local explanations, persistence."""

import numpy as np
import pytest

import keras
from keras import layers, ops

from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.datasets import load_digits

from models import (assert_unchanged, gap_head_cnn, nested_model, residual_cnn, sequential_cnn,
                    small_cnn, snapshot)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained on scikit-learn's bundled handwritten digits."""
    (xtr, ytr), (xte, yte) = digits
    keras.utils.set_random_seed(0)
    m = small_cnn()
    m.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(xtr, ytr, epochs=30, batch_size=32, verbose=0)
    return m


@pytest.fixture(scope="module")
def fitted(trained, digits):
    (xtr, ytr), _ = digits
    interp = HybridInterpreter(trained)
    interp.fit_probes(xtr, ytr, verbose=0, random_state=0)
    return interp


def rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_blocks_are_visible(fitted):
    assert fitted.block_names == ["pool1", "pool2", "conv3"]
    frame = fitted.blocks.to_frame()
    assert list(frame.columns) == ["block", "output_shape", "filters", "depth"]
    assert frame["filters"].tolist() == [8, 16, 16]


def test_real_data_last_probe_beats_first_and_matches_model(fitted, trained, digits):
    _, (xte, yte) = digits
    table = fitted.evaluate_layers(xte, yte)
    acc = table.set_index("block")["accuracy"]
    model_acc = float(np.mean(trained.predict(xte, verbose=0).argmax(1) == yte))
    assert acc["output"] == pytest.approx(model_acc)
    assert acc["conv3"] >= acc["pool1"]
    assert abs(acc["conv3"] - model_acc) <= 0.02
    assert model_acc > 0.9  # the oracle is meaningful only for a trained model


def test_probe_accuracy_matches_logistic_regression(fitted, digits):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xte, yte) = digits
    ftr, _, _ = fitted._extract(fitted._stream(xtr))
    fte, _, _ = fitted._extract(fitted._stream(xte))
    acc = fitted.evaluate_layers(xte, yte).set_index("block")["accuracy"]
    for name, a, b in zip(fitted.block_names, ftr, fte):
        # the oracle's features: spatial means of the block output, computed by NumPy
        sub = keras.Model(fitted.wrapped_model.input, fitted.wrapped_model.get_layer(name).output)
        np.testing.assert_allclose(b, sub.predict(xte, verbose=0).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
        # weakly regularized, like the probe (which has no penalty)
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=20000)).fit(a, ytr)
        assert abs(acc[name] - lr.score(b, yte)) <= 0.02, name
        train_acc = np.mean(fitted.layer_predictions(xtr).probabilities[fitted.block_names.index(name)].argmax(1) == ytr)
        assert abs(train_acc - lr.score(a, ytr)) <= 0.02, name


def test_soft_target_probe_recovers_a_gap_dense_head_exactly():
    # model = block -> GAP -> Dense softmax: a linear probe on the GAP features can match it.
    keras.utils.set_random_seed(3)
    m = gap_head_cnn()
    x = rand((600, 12, 12, 3), seed=5) * 2.0
    interp = HybridInterpreter(m, blocks=["c2"])
    interp.fit_probes(x[:400], None, epochs=150, verbose=0, random_state=0)
    table = interp.evaluate_layers(x[400:])
    assert np.isnan(table["accuracy"]).all()
    assert table.loc[0, "agreement"] >= 0.99


def test_evaluate_layers_equals_numpy_oracle(fitted, digits):
    _, (xte, yte) = digits
    preds = fitted.layer_predictions(xte)
    table = fitted.evaluate_layers(xte, yte, batch_size=17)
    model_cls = preds.model_probabilities.argmax(1)
    for i, name in enumerate(fitted.block_names):
        p = preds.probabilities[i].astype(np.float64)
        row = table.iloc[i]
        assert row["block"] == name
        assert row["accuracy"] == pytest.approx(np.mean(p.argmax(1) == yte), abs=1e-12)
        assert row["agreement"] == pytest.approx(np.mean(p.argmax(1) == model_cls), abs=1e-12)
        ce = -np.mean(np.log(np.clip(p[np.arange(len(yte)), yte], 1e-7, 1)))
        assert row["loss"] == pytest.approx(ce, rel=1e-5)
    assert table["chance"].iloc[0] == pytest.approx(np.bincount(yte).max() / len(yte))
    unlabeled = fitted.evaluate_layers(xte)
    assert unlabeled["chance"].iloc[0] == pytest.approx(np.bincount(model_cls).max() / len(yte))
    np.testing.assert_allclose(unlabeled["agreement"], table["agreement"])


def test_layer_predictions_tidy_frame(fitted, digits):
    _, (xte, _) = digits
    preds = fitted.layer_predictions(xte[:7])
    assert preds.probabilities.shape == (3, 7, 10)
    np.testing.assert_allclose(preds.probabilities.sum(-1), 1.0, rtol=1e-5)
    frame = preds.to_frame()
    assert len(frame) == 3 * 7 * 10
    one = frame[(frame["block"] == "pool2") & (frame["sample"] == 4)]["probability"].to_numpy()
    np.testing.assert_array_equal(one, preds["pool2"][4])


def test_call_and_probe_model_agree_with_layer_predictions(fitted, trained, digits):
    _, (xte, _) = digits
    x = xte[:5]
    preds = fitted.layer_predictions(x)
    out = fitted(x)
    assert list(out) == fitted.block_names + ["output"]
    np.testing.assert_allclose(ops.convert_to_numpy(out["output"]), trained.predict(x, verbose=0), rtol=1e-5, atol=1e-7)
    for i, name in enumerate(fitted.block_names):
        np.testing.assert_allclose(ops.convert_to_numpy(out[name]), preds.probabilities[i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fitted.probe_model(name).predict(x, verbose=0), preds.probabilities[i],
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="blocks"):
        fitted.probe_model("gap")


@pytest.mark.parametrize("pooling", ["avg", 2])
def test_evidence_maps_average_to_probe_logits(digits, trained, pooling):
    (xtr, ytr), (xte, _) = digits
    interp = HybridInterpreter(trained, pooling=pooling)
    interp.fit_probes(xtr[:300], ytr[:300], epochs=3, verbose=0, random_state=0)
    e = interp.explain(xte[3])
    preds = interp.layer_predictions(xte[3:4])
    np.testing.assert_allclose(e.probabilities, preds.probabilities[:, 0, :], rtol=1e-4, atol=1e-6)
    for probs, ev in zip(e.probabilities, e.evidence_maps):
        z = ev.mean(axis=(0, 1))
        softmax = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(softmax, probs, rtol=1e-4, atol=1e-7)
    assert [m.shape[:2] for m in e.evidence_maps] == [(8, 8), (4, 4), (4, 4)]


def test_decision_depth_definition(fitted, digits):
    _, (xte, _) = digits
    for i in range(20):
        e = fitted.explain(xte[i])
        pred, target = e.predicted, e.model_class
        if pred[-1] != target:
            assert e.decision_depth is None
            continue
        d = e.decision_depth
        assert all(pred[d:] == target)
        assert d == 0 or pred[d - 1] != target
    frame = e.to_frame()
    assert frame["is_model_class"].sum() == len(fitted.block_names)


def test_explain_rejects_a_batch(fitted, digits):
    _, (xte, _) = digits
    with pytest.raises(ValueError, match="one input"):
        fitted.explain(xte[:2])


def test_save_and_load_round_trip(fitted, digits, tmp_path):
    import keras_hybrid_interp  # noqa: F401  (registers the classes)

    _, (xte, _) = digits
    path = tmp_path / "interp.keras"
    fitted.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, HybridInterpreter)
    assert loaded.block_names == fitted.block_names and loaded.fitted
    a = fitted.layer_predictions(xte[:20]).probabilities
    b = loaded.layer_predictions(xte[:20]).probabilities
    np.testing.assert_array_equal(a, b)


def test_inputs_as_tf_data_and_pydataset_give_the_same_table(fitted, digits):
    import tensorflow as tf

    _, (xte, yte) = digits
    ref = fitted.evaluate_layers(xte, yte)
    ds = tf.data.Dataset.from_tensor_slices((xte, yte)).batch(50)

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            s = slice(i * 120, (i + 1) * 120)
            return xte[s], yte[s]

    for data in (ds, Seq()):
        np.testing.assert_allclose(fitted.evaluate_layers(data)[["accuracy", "loss", "agreement"]],
                                   ref[["accuracy", "loss", "agreement"]], rtol=1e-6)
    x_only = tf.data.Dataset.from_tensor_slices(xte).batch(64)
    np.testing.assert_allclose(fitted.evaluate_layers(x_only)["agreement"], ref["agreement"], rtol=1e-6)


def test_one_hot_labels_equal_integer_labels(digits):
    (xtr, ytr), (xte, yte) = digits
    m = small_cnn()
    a = HybridInterpreter(m)
    b = HybridInterpreter(m)
    a.fit_probes(xtr[:200], ytr[:200], epochs=2, verbose=0, random_state=1)
    b.fit_probes(xtr[:200], np.eye(10)[ytr[:200]], epochs=2, verbose=0, random_state=1)
    np.testing.assert_array_equal(a.layer_predictions(xte[:30]).probabilities,
                                  b.layer_predictions(xte[:30]).probabilities)


def test_random_state_reproducible_and_seed_sensitive(digits):
    (xtr, ytr), (xte, _) = digits
    m = small_cnn()
    runs = []
    for seed in (7, 7, 8):
        interp = HybridInterpreter(m)
        interp.fit_probes(xtr[:300], ytr[:300], epochs=2, batch_size=32, verbose=0, random_state=seed)
        runs.append(interp.layer_predictions(xte[:10]).probabilities)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_validation_split_and_validation_data(fitted, digits):
    (xtr, ytr), (xte, yte) = digits
    interp = HybridInterpreter(fitted.wrapped_model)
    h = interp.fit_probes(xtr[:200], ytr[:200], validation_split=0.25, epochs=2, verbose=0)
    assert any(k.startswith("val_") for k in h.history)
    h = interp.fit_probes(xtr[:200], ytr[:200], validation_data=(xte[:50], yte[:50]), epochs=2, verbose=0)
    assert len(h.history["val_loss"]) == 2


def test_warm_start_continues_from_current_probes(digits):
    (xtr, ytr), (xte, _) = digits
    m = small_cnn()
    interp = HybridInterpreter(m)
    interp.fit_probes(xtr[:200], ytr[:200], epochs=2, verbose=0, random_state=0)
    before = [np.array(p.kernel) for p in interp._probes]
    interp.fit_probes(xtr[:200], ytr[:200], epochs=1, learning_rate=1e-9, warm_start=True, verbose=0)
    after = [np.array(p.kernel) for p in interp._probes]
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_sigmoid_binary_model():
    inp = keras.Input((10, 10, 1))
    x = layers.Conv2D(4, 3, activation="relu")(inp)
    x = layers.MaxPooling2D()(x)
    out = layers.Dense(1, activation="sigmoid")(layers.Flatten()(x))
    m = keras.Model(inp, out)
    x = rand((64, 10, 10, 1))
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(int)
    interp = HybridInterpreter(m)
    assert interp.num_classes == 2
    interp.fit_probes(x, y, epochs=2, verbose=0)
    p = ops.convert_to_numpy(interp(x[:3])["output"])
    np.testing.assert_allclose(p[:, 1], ops.convert_to_numpy(m(x[:3]))[:, 0], rtol=1e-6)


def test_regression_model_is_refused_and_logits_can_be_declared():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3)(inp)
    m = keras.Model(inp, layers.Dense(3)(layers.Flatten()(x)))
    with pytest.raises(ValueError, match="classifier"):
        HybridInterpreter(m)
    interp = HybridInterpreter(m, output="logits")
    out = ops.convert_to_numpy(interp(rand((2, 8, 8, 1)))["output"])
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)


def test_structures_all_work():
    x = rand((40, 16, 16, 3))
    for m, kw in [(residual_cnn(), {}), (nested_model(), {}),
                  (sequential_cnn(with_input=False), {"input_shape": (12, 12, 1)})]:
        xx = x if m.name != "seq_cnn" else rand((40, 12, 12, 1))
        interp = HybridInterpreter(m, **kw)
        y = np.arange(40) % interp.num_classes
        interp.fit_probes(xx, y, epochs=2, verbose=0)
        assert len(interp.evaluate_layers(xx, y)) == len(interp.blocks) + 1


def test_never_changes_the_wrapped_model(tmp_path):
    m = nested_model()
    m.compile("adam", "sparse_categorical_crossentropy")
    x = rand((30, 16, 16, 3))
    y = np.arange(30) % 3
    before = snapshot(m, x)
    interp = HybridInterpreter(m)
    assert_unchanged(before, snapshot(m, x))
    interp.fit_probes(x, y, epochs=2, verbose=0)
    assert_unchanged(before, snapshot(m, x))
    interp.fit_probes(x, None, epochs=1, validation_split=0.2, verbose=0)
    interp.evaluate_layers(x, y)
    interp.layer_predictions(x)
    interp.explain(x[0])
    interp.probe_model(interp.block_names[0])(x)
    interp(x)
    interp.save(tmp_path / "i.keras")
    assert_unchanged(before, snapshot(m, x))
    # The interpreter trains only its probes.
    probe_vars = {id(v) for p in interp._probes for v in p.trainable_weights}
    assert {id(v) for v in interp.trainable_weights} == probe_vars
    with pytest.raises(TypeError, match="fit_probes"):
        interp.fit(x, y)


def test_backbone_runs_in_inference_mode():
    # Dropout before the block would change the features in training mode.
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same")(inp)
    x = layers.Dropout(0.9)(x)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D(name="pool")(x)
    out = layers.Dense(2, activation="softmax")(layers.Flatten()(x))
    m = keras.Model(inp, out)
    x = rand((16, 8, 8, 1))
    interp = HybridInterpreter(m, blocks=["pool"])
    feats, probs, _ = interp._extract(interp._stream(x))
    ref = keras.Model(inp, m.get_layer("pool").output)(x, training=False)
    np.testing.assert_allclose(feats[0], ops.convert_to_numpy(ref).mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(probs, ops.convert_to_numpy(m(x, training=False)), rtol=1e-6)


def test_probes_need_labels_in_range(fitted, digits):
    (xtr, ytr), _ = digits
    with pytest.raises(ValueError, match="outside 0..9"):
        fitted.evaluate_layers(xtr[:10], ytr[:10] + 5)
    with pytest.raises(ValueError, match="one-hot with 3 columns"):
        fitted.evaluate_layers(xtr[:10], np.eye(3)[ytr[:10] % 3])
    with pytest.raises(ValueError, match="same length"):
        fitted.evaluate_layers(xtr[:10], ytr[:9])
    bad = xtr[:10].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.evaluate_layers(bad, ytr[:10])
    with pytest.raises(ValueError, match="channels"):
        fitted.evaluate_layers(np.transpose(xtr[:10], (0, 3, 1, 2)), ytr[:10])


def test_unfitted_interpreter_says_so(trained, digits):
    _, (xte, yte) = digits
    with pytest.raises(ValueError, match="fit_probes"):
        HybridInterpreter(trained).evaluate_layers(xte, yte)
