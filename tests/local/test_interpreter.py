"""HybridInterpreter: probes, layer tables, local explanations, persistence."""

import numpy as np
import pytest

import keras
from keras import layers, ops

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter
from keras_hybrid_interp.core.health import InterpretationWarning
from keras_hybrid_interp.datasets import load_digits

from models import assert_unchanged, gap_head_cnn, nested_model, residual_cnn, sequential_cnn, small_cnn, snapshot
from oracles import assert_not_all_zero


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
    interp.fit_probes(xtr, ytr, verbose=0)
    return interp


def rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def block_features(model, name, x):
    """The oracle's probe inputs: spatial means of a block output, from a plain Keras sub-model."""
    sub = keras.Model(model.input, model.get_layer(name).output)
    return sub.predict(x, verbose=0).astype(np.float64).mean(axis=(1, 2))


def interpretation_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, InterpretationWarning)]


def test_blocks_are_visible(fitted):
    assert fitted.block_names == ["pool1", "pool2", "conv3"]
    frame = fitted.blocks.to_frame()
    assert list(frame.columns) == ["block", "output_shape", "filters", "depth"]
    assert frame["filters"].tolist() == [8, 16, 16]


def test_real_data_last_probe_beats_first_and_matches_model(fitted, trained, digits):
    _, (xte, yte) = digits
    table = fitted.evaluate_layers(xte, yte).to_frame()
    acc = table.set_index("block")["accuracy"]
    model_acc = float(np.mean(trained.predict(xte, verbose=0).argmax(1) == yte))
    assert acc["output"] == pytest.approx(model_acc)
    assert acc["conv3"] >= acc["pool1"]
    # The deepest block feeds GAP + Dense, which a probe on its pooled output can represent, so the
    # probe is at least as accurate as the model (within noise). It may be more accurate: it is the
    # optimum of a convex problem, the head is 30 epochs of Adam (0.976 against 0.947 seen on torch).
    assert acc["conv3"] >= model_acc - 0.02
    assert model_acc > 0.9  # the oracle is meaningful only for a trained model


def test_probe_accuracy_matches_logistic_regression(fitted, digits):
    # The probe is StandardScaler + LogisticRegression(C=1.0) solved to its optimum:
    # scikit-learn on the same features must agree on held-out data too.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xte, yte) = digits
    acc = fitted.evaluate_layers(xte, yte).to_frame().set_index("block")["accuracy"]
    train_probs = fitted.layer_predictions(xtr).probabilities
    for i, name in enumerate(fitted.block_names):
        a = block_features(fitted.wrapped_model, name, xtr)
        b = block_features(fitted.wrapped_model, name, xte)
        # the package's probe inputs are the same spatial means
        raw = fitted.graph.build([fitted.block_keys[i]]).predict_on_batch(xte)
        np.testing.assert_allclose(np.asarray(raw, np.float64).mean(axis=(1, 2)), b, rtol=1e-5, atol=1e-6)
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=20000)).fit(a, ytr)
        assert abs(acc[name] - lr.score(b, yte)) <= 0.01, name
        train_acc = np.mean(train_probs[i].argmax(1) == ytr)
        assert abs(train_acc - lr.score(a, ytr)) <= 0.005, name


def _fit_against_scikit_learn(interp, x, y, C):
    """Fits the probes with ``C``; per block (probe mean CE, probe accuracy, sklearn mean CE, sklearn accuracy).

    The oracle is scikit-learn's ``LogisticRegression(C=C)`` on ``StandardScaler``-standardized
    copies of the same cached features (global spatial means of the raw block outputs).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    interp.fit_probes(x, y, C=C, verbose=0)
    assert interp.convergence_["converged"].all()
    probs = interp.layer_predictions(x).probabilities
    out = []
    for i, k in enumerate(interp.block_keys):
        f = np.asarray(interp.graph.build([k]).predict_on_batch(x), np.float64).mean(axis=(1, 2))
        z = StandardScaler().fit_transform(f)
        lr = LogisticRegression(C=C, tol=1e-10, max_iter=50000).fit(z, y)
        p = probs[i].astype(np.float64)
        ce = log_loss(y, p, labels=np.arange(interp.num_classes))
        out.append((ce, np.mean(p.argmax(1) == y), log_loss(y, lr.predict_proba(z)), lr.score(z, y)))
        # the training loss the fit reports is that mean cross-entropy
        assert interp.convergence_["loss"].iloc[i] == pytest.approx(ce, rel=1e-4)
    return out


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_probe_optimum_equals_scikit_learn_multiclass(trained, digits, C):
    (xtr, ytr), _ = digits
    interp = HybridInterpreter(trained)
    for ce, acc, ce_ref, acc_ref in _fit_against_scikit_learn(interp, xtr[:600], ytr[:600], C):
        assert ce == pytest.approx(ce_ref, rel=1e-3)
        assert abs(acc - acc_ref) <= 0.005


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_probe_optimum_equals_scikit_learn_binary_sigmoid(digits, C):
    (xtr, ytr), _ = digits
    keras.utils.set_random_seed(4)
    inp = keras.Input((16, 16, 1))
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.MaxPooling2D(name="p1")(h)
    h = layers.Conv2D(8, 3, padding="same", activation="tanh", name="c2")(h)
    out = layers.Dense(1, activation="sigmoid", name="head")(layers.GlobalAveragePooling2D()(h))
    m = keras.Model(inp, out)
    interp = HybridInterpreter(m, blocks=["p1", "c2"])
    assert interp.num_classes == 2 and interp.output_kind == "sigmoid"
    y = (ytr[:500] >= 5).astype(int)
    for ce, acc, ce_ref, acc_ref in _fit_against_scikit_learn(interp, xtr[:500], y, C):
        assert ce == pytest.approx(ce_ref, rel=1e-3)
        assert abs(acc - acc_ref) <= 0.005
    # a true binary logistic regression: class 0's column is pinned at 0
    for probe in interp.probes:
        _, _, kernel, bias = probe.state()
        assert np.all(kernel[:, 0] == 0) and bias[0] == 0


def test_soft_target_probe_recovers_a_gap_dense_head_exactly():
    # model = block -> GAP -> Dense softmax: a linear probe on the GAP features can match it.
    keras.utils.set_random_seed(3)
    m = gap_head_cnn()
    x = rand((600, 12, 12, 3), seed=5) * 2.0
    # A head on centred, scaled GAP features, so that the model predicts every class.
    g = keras.Model(m.input, m.get_layer("gap").output).predict(x, verbose=0).astype(np.float64)
    w, _ = m.get_layer("head").get_weights()
    w = 0.5 * w / np.maximum(g.std(0), 1e-2)[:, None]
    m.get_layer("head").set_weights([w.astype("float32"), (-g.mean(0) @ w).astype("float32")])
    assert np.bincount(m.predict(x, verbose=0).argmax(1), minlength=4).min() >= 50
    interp = HybridInterpreter(m, blocks=["c2"])
    # Soft targets without a penalty: the optimum is the head itself, p_probe = p_model.
    interp.fit_probes(x[:400], None, C=np.inf, verbose=0)
    table = interp.evaluate_layers(x[400:]).to_frame()
    assert np.isnan(table["accuracy"]).all()
    assert table.loc[0, "agreement"] >= 0.99
    preds = interp.layer_predictions(x[400:])
    np.testing.assert_allclose(preds.probabilities[0], preds.model_probabilities, atol=1e-4)


def test_evaluate_layers_equals_sklearn_on_independent_features(fitted, trained, digits):
    # The oracle never calls the package: probe inputs from a plain keras.Model on each block's
    # output, averaged over positions; StandardScaler + LogisticRegression(C=1) fitted on the
    # training features, as the probes were; the model's classes from model.predict.
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xte, yte) = digits
    table = fitted.evaluate_layers(xte, yte, batch_size=17).to_frame()
    model_cls = trained.predict(xte, verbose=0).argmax(1)
    losses = []
    for i, name in enumerate(fitted.block_names):
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=20000))
        lr.fit(block_features(trained, name, xtr), ytr)
        p = lr.predict_proba(block_features(trained, name, xte))
        row = table.iloc[i]
        assert row["block"] == name
        assert abs(row["accuracy"] - np.mean(p.argmax(1) == yte)) <= 0.01, name
        assert abs(row["agreement"] - np.mean(p.argmax(1) == model_cls)) <= 0.01, name
        ce = log_loss(yte, p, labels=np.arange(10))
        losses.append((row["loss"], ce))
        assert row["loss"] == pytest.approx(ce, rel=0.02), name
    assert_not_all_zero(np.array(losses))
    assert table["chance"].iloc[0] == pytest.approx(np.bincount(yte).max() / len(yte))
    unlabeled = fitted.evaluate_layers(xte).to_frame()
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
        np.testing.assert_allclose(fitted.probe_model(block=name).predict(x, verbose=0), preds.probabilities[i],
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="blocks"):
        fitted.probe_model(block="gap")


@pytest.mark.parametrize("pooling", ["avg", 2])
def test_evidence_maps_average_to_probe_logits(digits, trained, pooling):
    (xtr, ytr), (xte, _) = digits
    interp = HybridInterpreter(trained, pooling=pooling)
    interp.fit_probes(xtr[:300], ytr[:300], verbose=0)
    e = interp.explain(xte[3])
    preds = interp.layer_predictions(xte[3:4])
    np.testing.assert_allclose(e.probabilities, preds.probabilities[:, 0, :], rtol=1e-4, atol=1e-6)
    for probs, ev in zip(e.probabilities, e.evidence_maps):
        z = ev.mean(axis=(0, 1))
        softmax = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(softmax, probs, rtol=1e-4, atol=1e-7)
    assert [m.shape[:2] for m in e.evidence_maps] == [(8, 8), (4, 4), (4, 4)]


def test_decision_index_definition(fitted, trained, digits):
    _, (xte, _) = digits
    preds = fitted.layer_predictions(xte[:20])
    model_cls = trained.predict(xte[:20], verbose=0).argmax(1)
    for i in range(20):
        e = fitted.explain(xte[i])
        pred, target = e.predicted, e.model_class
        if pred[-1] != target:
            assert e.decision_index is None
            continue
        d = e.decision_index
        assert all(pred[d:] == target)
        assert d == 0 or pred[d - 1] != target
    # The tidy frame, recomputed by hand from the probabilities and the model's own output.
    K = len(fitted.class_names)
    for i in range(20):
        e = fitted.explain(xte[i])
        assert e.model_class == model_cls[i]
        np.testing.assert_allclose(e.probabilities, preds.probabilities[:, i], rtol=1e-4, atol=1e-6)
        frame = e.to_frame()
        for j, name in enumerate(fitted.block_names):
            rows = frame[frame["block"] == name]
            assert rows["class"].tolist() == fitted.class_names
            p = rows["probability"].to_numpy()
            np.testing.assert_array_equal(p, e.probabilities[j])
            np.testing.assert_array_equal(rows["is_top_class"].to_numpy(), np.arange(K) == p.argmax())
            np.testing.assert_array_equal(rows["is_model_class"].to_numpy(), np.arange(K) == model_cls[i])
            # the block agrees with the model exactly when its top-class row is the model-class row
            agrees = bool((rows["is_top_class"] & rows["is_model_class"]).any())
            assert agrees == (preds.probabilities[j, i].argmax() == model_cls[i])


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
    ref = fitted.evaluate_layers(xte, yte).to_frame()
    ds = tf.data.Dataset.from_tensor_slices((xte, yte)).batch(50)

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            s = slice(i * 120, (i + 1) * 120)
            return xte[s], yte[s]

    for data in (ds, Seq()):
        np.testing.assert_allclose(fitted.evaluate_layers(data).to_frame()[["accuracy", "loss", "agreement"]],
                                   ref[["accuracy", "loss", "agreement"]], rtol=1e-6)
    x_only = tf.data.Dataset.from_tensor_slices(xte).batch(64)
    np.testing.assert_allclose(fitted.evaluate_layers(x_only).to_frame()["agreement"], ref["agreement"], rtol=1e-6)


def test_one_hot_labels_equal_integer_labels(digits):
    (xtr, ytr), (xte, yte) = digits
    m = small_cnn()
    a = HybridInterpreter(m)
    b = HybridInterpreter(m)
    a.fit_probes(xtr[:200], ytr[:200], verbose=0)
    b.fit_probes(xtr[:200], np.eye(10)[ytr[:200]], verbose=0)
    np.testing.assert_array_equal(a.layer_predictions(xte[:30]).probabilities,
                                  b.layer_predictions(xte[:30]).probabilities)


def test_fit_is_deterministic_and_does_not_depend_on_batching_or_order(digits):
    # A convex problem solved to its optimum: no seed, and the same probes
    # whatever the batch size of the backbone pass or the order of the samples.
    (xtr, ytr), (xte, _) = digits
    m = small_cnn()
    x, y = xtr[:300], ytr[:300]
    runs = []
    for bs, order in ((64, slice(None)), (64, slice(None)), (17, slice(None)),
                      (64, np.random.default_rng(0).permutation(300))):
        interp = HybridInterpreter(m)
        assert interp.fit_probes(x[order], y[order], batch_size=bs, verbose=0) is interp
        runs.append(interp.layer_predictions(xte[:50]).probabilities)
    np.testing.assert_array_equal(runs[0], runs[1])
    for other in runs[2:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-4)


def test_convergence_table_and_iteration_cap(digits):
    (xtr, ytr), _ = digits
    m = small_cnn()
    x, y = xtr[:300], ytr[:300]
    interp = HybridInterpreter(m)
    interp.fit_probes(x, y, verbose=0)
    conv = interp.convergence_
    assert list(conv.columns) == ["block", "n_iter", "converged", "loss"]
    assert conv["block"].tolist() == interp.block_names
    assert conv["converged"].all() and (conv["n_iter"] >= 1).all()
    probs = interp.layer_predictions(x).probabilities.astype(np.float64)
    for i in range(len(interp.block_names)):
        ce = -np.mean(np.log(probs[i][np.arange(len(y)), y]))
        assert conv["loss"].iloc[i] == pytest.approx(ce, rel=1e-4)
    with pytest.warns(InterpretationWarning, match="did not converge within max_iter=1 "):
        interp.fit_probes(x, y, max_iter=1, verbose=0)
    assert not interp.convergence_["converged"].any()
    assert (interp.convergence_["loss"].to_numpy() > conv["loss"].to_numpy()).all()


def test_warm_start_reaches_the_same_optimum_in_fewer_iterations(digits):
    (xtr, ytr), (xte, _) = digits
    m = small_cnn()
    interp = HybridInterpreter(m)
    interp.fit_probes(xtr[:200], ytr[:200], verbose=0)
    before = interp.layer_predictions(xte[:50]).probabilities
    cold_iters = interp.convergence_["n_iter"].to_numpy()
    # Same data: the warm start is the optimum already.
    interp.fit_probes(xtr[:200], ytr[:200], warm_start=True, verbose=0)
    np.testing.assert_allclose(interp.layer_predictions(xte[:50]).probabilities, before, atol=1e-5)
    assert (interp.convergence_["n_iter"].to_numpy() <= np.minimum(cold_iters, 3)).all()
    # Other data (another standardization): the previous probe is carried over to the
    # new coordinates, and the optimum is the cold fit's.
    cold = HybridInterpreter(m).fit_probes(xtr[200:500], ytr[200:500], verbose=0)
    interp.fit_probes(xtr[200:500], ytr[200:500], warm_start=True, verbose=0)
    assert interp.convergence_["converged"].all()
    np.testing.assert_allclose(interp.layer_predictions(xte[:50]).probabilities,
                               cold.layer_predictions(xte[:50]).probabilities, atol=1e-4)


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
    interp.fit_probes(x, y, verbose=0)
    p = ops.convert_to_numpy(interp(x[:3])["output"])
    np.testing.assert_allclose(p[:, 1], ops.convert_to_numpy(m(x[:3]))[:, 0], rtol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)


def test_linear_output_needs_a_task_and_logits_can_be_declared():
    # Linear units are ambiguous (class logits, label logits, regression values): "auto" asks for task=.
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3)(inp)
    m = keras.Model(inp, layers.Dense(3)(layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"task='regression' for real values"):
        HybridInterpreter(m)
    assert HybridInterpreter(m, task="regression").task == "regression"
    assert HybridInterpreter(m, task="multiclass").output_kind == "logits"
    interp = HybridInterpreter(m, output="logits")
    x = rand((2, 8, 8, 1))
    out = ops.convert_to_numpy(interp(x)["output"])
    z = ops.convert_to_numpy(m(x)).astype(np.float64)
    np.testing.assert_allclose(out, np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-5)


def test_binary_logit_model():
    # A binary model whose output is one linear unit: a logit.
    keras.utils.set_random_seed(2)
    inp = keras.Input((10, 10, 1))
    h = layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = layers.MaxPooling2D(name="pool")(h)
    h = layers.Conv2D(6, 3, activation="relu", name="conv2")(h)
    out = layers.Dense(1, name="logit")(layers.GlobalAveragePooling2D()(h))
    m = keras.Model(inp, out)
    x = rand((80, 10, 10, 1), seed=3)
    y = (x[:, :5].mean(axis=(1, 2, 3)) > x[:, 5:].mean(axis=(1, 2, 3))).astype(int)
    with pytest.raises(ValueError, match="logits"):
        HybridInterpreter(m, output="sigmoid")
    interp = HybridInterpreter(m, output="logits")
    assert interp.num_classes == 2 and interp.output_kind == "logits"
    logit = ops.convert_to_numpy(m(x)).astype(np.float64)[:, 0]
    p1 = 1.0 / (1.0 + np.exp(-logit))
    np.testing.assert_allclose(ops.convert_to_numpy(interp(x)["output"]), np.stack([1 - p1, p1], 1),
                               rtol=1e-5, atol=1e-7)
    interp.fit_probes(x, y, verbose=0)
    assert interp.convergence_["converged"].all()
    preds = interp.layer_predictions(x)
    np.testing.assert_allclose(preds.model_probabilities[:, 1], p1, rtol=1e-6)
    table = interp.evaluate_layers(x, y).to_frame().set_index("block")
    assert table.loc["output", "accuracy"] == pytest.approx(np.mean((logit > 0) == y))
    ce = -np.mean(np.log(np.where(y == 1, p1, 1 - p1)))
    assert table.loc["output", "loss"] == pytest.approx(ce, rel=1e-5)
    for i, name in enumerate(interp.block_names):
        p = preds.probabilities[i].astype(np.float64)
        assert table.loc[name, "accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    imp = GlobalAnalyzer(interp).filter_importance(x, y, block="conv2", n_repeats=2, random_state=0, scoring="loss")
    assert imp.importances.shape[0] == 6
    assert imp.baseline_score == pytest.approx(-ce, rel=1e-5)
    assert np.isfinite(imp.importances[~np.isin(np.arange(6), imp.dead_filters)]).all()


def test_structures_all_work():
    x = rand((40, 16, 16, 3))
    for m, kw in [(residual_cnn(), {}), (nested_model(), {}),
                  (sequential_cnn(with_input=False), {"input_shape": (12, 12, 1)})]:
        xx = x if m.name != "seq_cnn" else rand((40, 12, 12, 1))
        interp = HybridInterpreter(m, **kw)
        y = np.arange(40) % interp.num_classes
        interp.fit_probes(xx, y, verbose=0)
        assert len(interp.evaluate_layers(xx, y).to_frame()) == len(interp.blocks) + 1


def test_never_changes_the_wrapped_model(tmp_path):
    m = nested_model()
    m.compile("adam", "sparse_categorical_crossentropy")
    x = rand((30, 16, 16, 3))
    y = np.arange(30) % 3
    before = snapshot(m, x)
    interp = HybridInterpreter(m)
    assert_unchanged(before, snapshot(m, x))
    interp.fit_probes(x, y, verbose=0)
    assert_unchanged(before, snapshot(m, x))
    interp.fit_probes(x, None, warm_start=True, verbose=0)
    interp.evaluate_layers(x, y)
    interp.layer_predictions(x)
    interp.explain(x[0])
    interp.probe_model(block=interp.block_names[0])(x)
    interp(x)
    interp.save(tmp_path / "i.keras")
    assert_unchanged(before, snapshot(m, x))
    # The interpreter trains only its probes.
    probe_vars = {id(v) for p in interp.probes for v in p.trainable_weights}
    assert {id(v) for v in interp.trainable_weights} == probe_vars
    # fit() is the Keras verb for fit_probes(): same probes, bit for bit, and the model untouched.
    by_fit, by_fit_probes = HybridInterpreter(m), HybridInterpreter(m)
    assert by_fit.fit(x, y, verbose=0) is by_fit
    by_fit_probes.fit_probes(x, y, verbose=0)
    for a, b in zip(by_fit.probes, by_fit_probes.probes):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    assert_unchanged(before, snapshot(m, x))
    with pytest.raises(TypeError, match="compile"):
        interp.compile("adam", "mse")
    with pytest.raises(TypeError, match="fit"):
        interp.train_on_batch(x, y)


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
    y = np.arange(16) % 2
    interp = HybridInterpreter(m, blocks=["pool"])
    interp.fit_probes(x, y, verbose=0)
    ref = ops.convert_to_numpy(keras.Model(inp, m.get_layer("pool").output)(x, training=False))
    ref = ref.astype(np.float64).mean(axis=(1, 2))
    # The probe's standardization comes from the inference-mode features ...
    mean, scale, kernel, bias = interp.probes[0].state()
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scale, 1.0 / ref.std(0), rtol=1e-4)
    # ... and later passes read the same features and model output.
    preds = interp.layer_predictions(x)
    logits = ((ref - mean) * scale) @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(preds.probabilities[0], p / p.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(preds.model_probabilities, ops.convert_to_numpy(m(x, training=False)), rtol=1e-6)


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


def test_repeating_dataset_needs_steps_and_steps_limits_the_pass(fitted, digits):
    import signal

    import tensorflow as tf

    _, (xte, yte) = digits
    ds = tf.data.Dataset.from_tensor_slices((xte, yte)).batch(8).repeat()

    def too_long(signum, frame):
        raise TimeoutError("an infinite dataset was iterated instead of being refused at once")

    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        with pytest.raises(ValueError, match="steps"):
            fitted.evaluate_layers(ds)
        with pytest.raises(ValueError, match="steps"):
            HybridInterpreter(fitted.wrapped_model).fit_probes(ds, verbose=0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    cols = ["accuracy", "loss", "agreement", "chance"]
    ref = fitted.evaluate_layers(xte[:24], yte[:24]).to_frame()[cols].to_numpy(float)
    table = fitted.evaluate_layers(ds, steps=3).to_frame()
    np.testing.assert_allclose(table[cols].to_numpy(float), ref, rtol=1e-6)
    frac = table["agreement"].to_numpy() * 24  # rates over 24 samples
    np.testing.assert_allclose(frac, np.round(frac), atol=1e-9)
    np.testing.assert_allclose(
        fitted.evaluate_layers(ds, max_samples=24).to_frame()[cols].to_numpy(float), ref, rtol=1e-6
    )


def test_class_sorted_data_cut_by_max_samples_warns_once(trained, digits):
    import warnings

    (xtr, ytr), _ = digits
    order = np.argsort(ytr, kind="stable")
    xs, ys = xtr[order], ytr[order]
    missing = sorted(set(range(10)) - set(ys[:200].tolist()))
    assert missing  # the cut really drops classes
    interp = HybridInterpreter(trained)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        interp.fit_probes(xs, ys, max_samples=200, verbose=0)
    msgs = interpretation_warnings(record)
    about_classes = [m for m in msgs if "have no sample" in m]
    assert len(about_classes) == 1, msgs
    assert f"Classes {[str(c) for c in missing]} have no sample among the 200 analysed" in about_classes[0]


def test_input_drift_is_reported(fitted, digits):
    import warnings

    _, (xte, yte) = digits
    assert 0.0 <= xte.min() and xte.max() <= 1.0
    with pytest.warns(InterpretationWarning, match="Input drift"):
        fitted.evaluate_layers(xte * 255.0, yte)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fitted.evaluate_layers(xte, yte)
        fitted.layer_predictions(xte[:50])
    assert not [m for m in interpretation_warnings(record) if "Input drift" in m]
