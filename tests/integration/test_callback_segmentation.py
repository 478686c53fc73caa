"""InterpretationCallback on a segmentation U-Net: per-epoch mean IoU, Dice, pixel accuracy, loss, agreement.

Oracle: at each recorded epoch, the block maps of the validation subset from the model's own layers (as they
are at that epoch), upsampled to the mask by np.repeat; a scikit-learn ``LogisticRegression`` (after
``StandardScaler``) fitted on the positions that the callback drew for its ``probe_fit_indices`` (regenerated
here from ``numpy.random.default_rng([positions_random_state_, i])``), and its masks on every pixel of
``eval_indices`` scored by ``jaccard_score``, ``f1_score`` and ``accuracy_score`` on flattened pixels.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, jaccard_score
from sklearn.preprocessing import StandardScaler

import keras

from keras_hybrid_interp import InterpretationCallback
from keras_hybrid_interp.callback import ImportanceOptions

from models import assert_unchanged, snapshot
from segmentation_models import planted_data, planted_unet

BLOCKS = ["enc1", "bottleneck", "dec1"]
METRICS = {"mean_iou", "dice", "pixel_accuracy", "loss", "agreement"}
P = 20  # positions per sample (of 256)


def trainable_unet():
    model = planted_unet()
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    return model


class Maps(keras.callbacks.Callback):
    """Raw block maps and the model's output on the subset at every epoch end (after the interpretation callback)."""

    def __init__(self, x):
        super().__init__()
        self.x, self.maps = x, {}

    def _take(self, epoch):
        side = keras.Model(self.model.inputs, [self.model.get_layer(b).output for b in BLOCKS] + [self.model.output])
        self.maps[epoch] = [np.asarray(a, np.float64) for a in side.predict(self.x, verbose=0)]

    def on_train_begin(self, logs=None):
        self._take(0)

    def on_epoch_end(self, epoch, logs=None):
        self._take(epoch + 1)


def _at(history, epoch, block, metric):
    h = history[(history.epoch == epoch) & (history.block == block) & (history.metric == metric)]
    assert len(h) == 1, (epoch, block, metric)
    return float(h["value"].iloc[0])


def _up(a):
    f = 16 // a.shape[1]
    return np.repeat(np.repeat(a, f, axis=1), f, axis=2).reshape(len(a), 256, -1)


def _softmax(logits):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def oracle(cb, maps, y):
    """Per block: (masks, probabilities) on every eval pixel of sklearn probes fitted on the drawn fit positions.

    With masks ``y`` the targets are the mask's classes there; without, the model's distribution (sklearn on K
    weighted copies of each position, as tests/local/test_segmentation.py's label-free oracle).
    """
    fit, ev = cb.probe_fit_indices, cb.eval_indices
    pos = np.stack([np.random.default_rng([cb.positions_random_state_, i]).choice(256, P, replace=False)
                    for i in range(len(fit))])
    rows = np.arange(len(fit))[:, None]
    model_p = maps[-1].reshape(len(maps[-1]), 256, 3)
    out = []
    for a in maps[:-1]:
        up = _up(a)
        feats = up[fit][rows, pos].reshape(-1, a.shape[-1])
        sc = StandardScaler().fit(feats)
        z = sc.transform(feats)
        lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000)
        if y is not None:
            lr.fit(z, y.reshape(len(y), 256)[fit][rows, pos].ravel())
        else:
            soft = model_p[fit][rows, pos].reshape(-1, 3)
            lr.fit(np.repeat(z, 3, axis=0), np.tile(np.arange(3), len(z)), sample_weight=soft.ravel())
        full = sc.transform(up[ev].reshape(-1, a.shape[-1]))
        probs = _softmax(full @ lr.coef_.T + lr.intercept_)
        out.append((probs.argmax(1), probs))
    return out


def check_epoch(h, epoch, cb, maps, y):
    ev = cb.eval_indices
    model_p = maps[-1].reshape(len(maps[-1]), 256, 3)[ev].reshape(-1, 3)
    model_mask = model_p.argmax(1)
    target = y[ev].ravel() if y is not None else model_mask
    for b, (mask, probs) in zip(BLOCKS, oracle(cb, maps, y)):
        # A pixel near a tie between two classes may flip between two optima 1e-5 apart: a few of 4,096.
        assert _at(h, epoch, b, "mean_iou") == pytest.approx(jaccard_score(target, mask, average="macro"), abs=2e-3)
        assert _at(h, epoch, b, "dice") == pytest.approx(f1_score(target, mask, average="macro"), abs=2e-3)
        assert _at(h, epoch, b, "pixel_accuracy") == pytest.approx(accuracy_score(target, mask), abs=2e-3)
        assert _at(h, epoch, b, "agreement") == pytest.approx(np.mean(mask == model_mask), abs=2e-3)
        if y is not None:
            ce = -np.mean(np.log(np.clip(probs[np.arange(len(target)), target], 1e-300, None)))
        else:
            ce = -np.mean(np.sum(model_p * np.log(np.clip(probs, 1e-300, None)), axis=1))
        assert _at(h, epoch, b, "loss") == pytest.approx(ce, rel=2e-3, abs=2e-4)
    assert _at(h, epoch, "output", "mean_iou") == pytest.approx(
        jaccard_score(target, model_mask, average="macro"), abs=1e-12)
    assert _at(h, epoch, "output", "pixel_accuracy") == pytest.approx(accuracy_score(target, model_mask), abs=1e-12)
    return [_at(h, epoch, b, "mean_iou") for b in BLOCKS]


@pytest.fixture(scope="module")
def data():
    x, y = planted_data(96, seed=2)
    xv, yv = planted_data(24, seed=1)
    xv[:, :, :, 0] *= np.linspace(0.3, 1.0, 16)[None, :, None]  # harder: the contrast fades to the left
    return (x, y), (xv, yv)


def by_hand(model, cb, maps, epochs=2):
    """Drives the callbacks as fit does, the weights moved by seeded noise between epochs (no training)."""
    rng = np.random.default_rng(0)
    for c in (cb, maps):
        c.set_model(model)
        c.on_train_begin()
    for epoch in range(epochs):
        model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
        for c in (cb, maps):
            c.on_epoch_end(epoch)
    cb.on_train_end()


@pytest.mark.parametrize("driver", [
    pytest.param("fit", marks=pytest.mark.skipif(
        keras.backend.backend() == "torch",
        reason="torch 2.13 CPU: training this U-Net fails in max pooling's backward ('grad_input must be "
               "contiguous'), without the callback too")),
    "by_hand"])
@pytest.mark.parametrize("labelled", [True, False], ids=["masks", "label_free"])
def test_per_epoch_segmentation_metrics_equal_sklearn_on_flattened_pixels(data, labelled, driver):
    (x, y), (xv, yv) = data
    keras.utils.set_random_seed(0)
    model = trainable_unet()
    cb = InterpretationCallback((xv, yv) if labelled else xv, blocks=BLOCKS, random_state=4, correlation=False,
                                positions_per_sample=P, batch_size=10)
    maps = Maps(xv)
    if driver == "fit":
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, maps])
    else:
        by_hand(model, cb, maps)
    h = cb.history
    assert list(h.columns) == ["epoch", "block", "metric", "value", "filter"]
    assert set(h.metric) == METRICS and h["filter"].isna().all()
    assert sorted(set(h.epoch)) == [0, 1, 2] and set(h.block) == set(BLOCKS) | {"output"}
    assert len(h) == 3 * (len(BLOCKS) * 5 + 4)  # the model: every metric but agreement
    assert len(cb.probe_fit_indices) == 12 and len(cb.eval_indices) == 12
    moved = [check_epoch(h, epoch, cb, maps.maps[epoch], yv if labelled else None) for epoch in (0, 1, 2)]
    assert np.ptp(np.asarray(moved), axis=0).max() > 0.01  # training moves the curves: non-trivial values
    assert 0.05 < np.min(moved) and np.min(moved) < 0.95  # neither empty nor all perfect
    # (label-free, dec1, read by the 1x1 head, may give the model's mask exactly)
    # The interpreter's probes hold the last refit: its explanation is the last record's.
    e = cb.interpreter.explain(xv[cb.eval_indices[0]])
    assert e.masks.shape == (3, 16, 16)


def test_model_untouched_same_seed_same_history_and_positions_matter(data):
    _, (xv, yv) = data
    model = trainable_unet()
    before = snapshot(model, xv)
    histories = []
    for seed, per in ((7, 16), (7, 16), (8, 16), (7, 17)):
        cb = InterpretationCallback((xv, yv), blocks=BLOCKS, random_state=seed, positions_per_sample=per,
                                    batch_size=7)
        cb.set_model(model)
        cb.on_train_begin()
        cb.on_epoch_end(0)
        histories.append(cb.history)
    assert_unchanged(before, snapshot(model, xv))
    assert {"dead_filters", "redundancy"} | METRICS <= set(histories[0].metric)
    assert histories[0].equals(histories[1])  # bit for bit
    for other in histories[2:]:  # another split or other positions: other probes
        seg = other.metric.isin(["mean_iou", "loss"]) & (other.block != "output")
        assert not np.array_equal(other[seg].value.to_numpy(), histories[0][seg].value.to_numpy())


def test_segmentation_importance_by_mean_iou_equals_a_full_model_rerun_by_hand(data):
    from keras_hybrid_interp.core.perturbation import job_permutation

    from _models_global import Perturb, full_model_with_perturbation

    _, (xv, yv) = data
    model = trainable_unet()
    cb = InterpretationCallback((xv, yv), blocks=BLOCKS, random_state=0, correlation=False, probes=False,
                                importance=ImportanceOptions(block="enc1", n_repeats=2, top_k=3))
    cb.set_model(model)
    cb.on_train_begin()
    g = cb.interpreter.graph
    key = g.resolve("enc1")
    t = yv.ravel()
    base = jaccard_score(t, model.predict_on_batch(xv).argmax(-1).ravel(), average="macro")
    n, c = len(xv), 4  # filters 0 and 1 carry the planted classes
    ref = np.zeros(c)
    for ch in range(c):
        for r in range(2):
            perm = job_permutation(cb.importance_random_state_, ch, r, n)
            out = full_model_with_perturbation(g, key, Perturb([ch], c, perm=perm)).predict_on_batch(xv)
            ref[ch] += (base - jaccard_score(t, np.asarray(out).argmax(-1).ravel(), average="macro")) / 2
    rec = cb.history.query("metric == 'importance'")
    assert (rec.block == "enc1").all() and len(rec) == 3
    np.testing.assert_allclose(rec["value"], ref[rec["filter"].to_numpy(int)], atol=1e-9)
    np.testing.assert_allclose(np.sort(rec["value"])[::-1], np.sort(ref)[::-1][:3], atol=1e-9)
    assert set(rec["filter"].to_numpy(int)[:2]) == {0, 1} and ref[[0, 1]].min() > 0.1


def test_positions_per_sample_is_refused_for_other_tasks_and_checked():
    with pytest.raises(ValueError, match="positions_per_sample"):
        InterpretationCallback(np.zeros((8, 16, 16, 1), "float32"), positions_per_sample=0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3, name="c")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h)))
    cb = InterpretationCallback(np.zeros((8, 8, 8, 1), "float32"), blocks=["c"], positions_per_sample=10)
    cb.set_model(model)
    with pytest.raises(ValueError, match="segmentation models only"):
        cb.on_train_begin()
