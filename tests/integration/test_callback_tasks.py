"""InterpretationCallback on multi-label, regression and several-input models: per-epoch task metrics.

Oracle: at each recorded epoch, the block features of the validation subset from the model's own
layers (as they are at that epoch), scikit-learn probes fitted on the callback's
``probe_fit_indices`` and scored with scikit-learn on its ``eval_indices``.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    average_precision_score,
    hamming_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.preprocessing import StandardScaler

import keras
from keras import layers

from keras_hybrid_interp import InterpretationCallback
from keras_hybrid_interp.core.trainer import RIDGE_ALPHAS

N = 80
BLOCKS = ["c1", "c2"]


def _model(units, activation, loss):
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 2))
    h = layers.Conv2D(6, 3, name="c1")(inp)
    h = layers.Conv2D(5, 3, activation="tanh", name="c2")(h)
    m = keras.Model(inp, layers.Dense(units, activation=activation)(layers.GlobalAveragePooling2D()(h)))
    m.compile(keras.optimizers.Adam(1e-2), loss)
    return m


def _data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 10, 10, 2)).astype("float32")
    x[:, :4, :4, 0] += rng.normal(size=(N, 1, 1)) * 2
    return x, rng, x[:, :4, :4, 0].mean(axis=(1, 2))


class Snapshots(keras.callbacks.Callback):
    """Block features of the validation subset at every epoch end (after the interpretation callback)."""

    def __init__(self, x):
        super().__init__()
        self.x, self.feats = x, {}

    def _take(self, epoch):
        self.feats[epoch] = {b: keras.Model(self.model.input, self.model.get_layer(b).output).predict(
            self.x, verbose=0).astype(np.float64).mean(axis=(1, 2)) for b in BLOCKS}
        self.feats[epoch]["output"] = self.model.predict(self.x, verbose=0).astype(np.float64)

    def on_train_begin(self, logs=None):
        self._take(0)

    def on_epoch_end(self, epoch, logs=None):
        self._take(epoch + 1)


def _at(history, epoch, block, metric):
    h = history[(history.epoch == epoch) & (history.block == block) & (history.metric == metric)]
    assert len(h) == 1, (epoch, block, metric)
    return float(h["value"].iloc[0])


def test_multilabel_callback_records_auroc_per_epoch_equal_to_sklearn():
    model = _model(3, "sigmoid", "binary_crossentropy")
    x, rng, signal = _data(0)
    y = np.stack([signal > 0, signal + rng.normal(size=N) > 0.5, rng.random(N) < 0.3], axis=1).astype(int)
    cb = InterpretationCallback((x, y), blocks=BLOCKS, random_state=0, correlation=False)
    snaps = Snapshots(x)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, snaps])
    h = cb.history
    assert {"auroc", "average_precision", "f1", "hamming", "loss", "agreement"} <= set(h.metric)
    assert "accuracy" not in set(h.metric)
    fit, ev = cb.probe_fit_indices, cb.eval_indices
    for epoch in (0, 1, 2):
        for b in BLOCKS:
            f = snaps.feats[epoch][b]
            sc = StandardScaler().fit(f[fit])
            p = np.stack([LogisticRegression(tol=1e-10, max_iter=10000).fit(sc.transform(f[fit]), y[fit, k])
                          .predict_proba(sc.transform(f[ev]))[:, 1] for k in range(3)], axis=1)
            assert _at(h, epoch, b, "auroc") == pytest.approx(roc_auc_score(y[ev], p, average="macro"), abs=2e-3)
            assert _at(h, epoch, b, "average_precision") == pytest.approx(
                average_precision_score(y[ev], p, average="macro"), abs=2e-3)
            assert _at(h, epoch, b, "hamming") == pytest.approx(hamming_loss(y[ev], p > 0.5), abs=0.03)
        q = snaps.feats[epoch]["output"][ev]
        assert _at(h, epoch, "output", "auroc") == pytest.approx(roc_auc_score(y[ev], q, average="macro"), abs=1e-5)
    assert len(h[(h.block == "output") & (h.metric == "agreement")]) == 0


def test_regression_callback_records_r2_mae_rmse_per_epoch_equal_to_sklearn():
    model = _model(2, None, "mse")
    x, rng, signal = _data(1)
    y = np.stack([3 * signal + rng.normal(size=N) * 0.3, rng.normal(size=N)], axis=1)
    cb = InterpretationCallback((x, y), blocks=BLOCKS, task="regression", random_state=1, correlation=False)
    snaps = Snapshots(x)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, snaps])
    h = cb.history
    assert set(h.metric) == {"r2", "mae", "rmse", "loss"}
    fit, ev = cb.probe_fit_indices, cb.eval_indices
    moved = []
    for epoch in (0, 1, 2):
        for b in BLOCKS:
            f = snaps.feats[epoch][b]
            sc = StandardScaler().fit(f[fit])
            pred = RidgeCV(alphas=RIDGE_ALPHAS).fit(sc.transform(f[fit]), y[fit]).predict(sc.transform(f[ev]))
            assert _at(h, epoch, b, "r2") == pytest.approx(r2_score(y[ev], pred), abs=1e-4)
            assert _at(h, epoch, b, "mae") == pytest.approx(mean_absolute_error(y[ev], pred), abs=1e-4)
            assert _at(h, epoch, b, "rmse") == pytest.approx(np.sqrt(mean_squared_error(y[ev], pred)), abs=1e-4)
            moved.append(_at(h, epoch, b, "r2"))
        out = snaps.feats[epoch]["output"][ev]
        assert _at(h, epoch, "output", "r2") == pytest.approx(r2_score(y[ev], out), abs=1e-5)
    assert np.ptp(moved) > 0.01  # the numbers change as the model trains: the test compares non-trivial values


def test_regression_without_targets_scores_against_the_model_and_linear_units_need_task():
    model = _model(2, None, "mse")
    x, _, _ = _data(2)
    with pytest.raises(ValueError, match="task='regression'"):
        cb = InterpretationCallback(x, blocks=BLOCKS, random_state=0)
        cb.set_model(model)
        cb.on_train_begin()
    cb = InterpretationCallback(x, blocks=BLOCKS, task="regression", random_state=0, correlation=False)
    cb.set_model(model)
    cb.on_train_begin()
    h = cb.history
    out = model.predict(x, verbose=0).astype(np.float64)
    assert _at(h, 0, "output", "r2") == 1.0 and _at(h, 0, "output", "mae") == 0.0
    fit, ev = cb.probe_fit_indices, cb.eval_indices
    f = keras.Model(model.input, model.get_layer("c2").output).predict(x, verbose=0).astype(np.float64).mean(
        axis=(1, 2))
    sc = StandardScaler().fit(f[fit])
    pred = RidgeCV(alphas=RIDGE_ALPHAS).fit(sc.transform(f[fit]), out[fit]).predict(sc.transform(f[ev]))
    assert _at(h, 0, "c2", "r2") == pytest.approx(r2_score(out[ev], pred), abs=1e-4)


def test_callback_on_a_model_with_several_inputs():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((10, 10, 1), name="img"), keras.Input((3,), name="tab")
    h = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="tanh", name="conv")(a))
    model = keras.Model([a, b], layers.Dense(3, activation="softmax")(layers.Concatenate()([h, layers.Dense(2)(b)])))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(60, 10, 10, 1)).astype("float32"), rng.normal(size=(60, 3)).astype("float32")]
    y = (x[0][:, :5].mean(axis=(1, 2, 3)) > 0).astype(int) + (x[1][:, 0] > 0)
    cb = InterpretationCallback((x, y), blocks=["conv"], random_state=0)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])
    fit, ev = cb.probe_fit_indices, cb.eval_indices
    assert len(fit) + len(ev) == 60
    f = keras.Model(model.inputs, model.get_layer("conv").output).predict(x, verbose=0).astype(np.float64).mean(
        axis=(1, 2))
    sc = StandardScaler().fit(f[fit])
    lr = LogisticRegression(tol=1e-10, max_iter=10000).fit(sc.transform(f[fit]), y[fit])
    acc = np.mean(lr.predict(sc.transform(f[ev])) == y[ev])
    assert _at(cb.history, 1, "conv", "accuracy") == pytest.approx(acc, abs=1 / len(ev) + 1e-9)
