"""A 1-unit sigmoid mask model (binary segmentation) and a 1-D U-Net, end to end with automatic blocks.

Probes, layer table (controls, bootstrap), explain, NetDissect association and ablation importance scored by mean
IoU, each against scikit-learn on flattened pixels or NumPy re-runs of the model (a copy with the filter zeroed).
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter  # noqa: E402

from segmentation_models import unet_nd  # noqa: E402

N_FIT = 16


def binary_2d():
    model = unet_nd(2, size=16, sigmoid=True, name="binary_unet")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(28, 16, 16, 1)).astype("float32")
    y = (x[..., 0] + np.roll(x[..., 0], 1, axis=1) > 0.3).astype(np.int64)
    return model, x, y, lambda p: (p[..., 0] > 0.5).astype(np.int64)


def signals_1d():
    model = unet_nd(1, size=32, classes=3, name="unet_1d")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(28, 32, 1)).astype("float32")
    y = np.digitize(x[..., 0], [-0.5, 0.5]).astype(np.int64)
    return model, x, y, lambda p: p.argmax(-1)


def at_output(model, name, x):
    a = np.asarray(keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0), np.float64)
    for axis in range(1, a.ndim - 1):
        a = np.repeat(a, x.shape[axis] // a.shape[axis], axis=axis)
    return a


def probe_mask(a, state):
    mean, scale, kernel, bias = state
    logits = ((a.reshape(-1, a.shape[-1]) - mean) * scale) @ kernel + bias
    return logits.argmax(axis=1) if logits.shape[1] > 1 else (logits[:, 0] > 0).astype(np.int64)


@pytest.fixture(scope="module", params=[binary_2d, signals_1d], ids=["binary_sigmoid_2d", "unet_1d"])
def case(request):
    model, x, y, decide = request.param()
    with pytest.warns(UserWarning, match="encoder-decoder"):
        interp = HybridInterpreter(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp.fit_probes(x[:N_FIT], y[:N_FIT], controls=1, random_state=0, positions_per_sample=10_000, verbose=0)
    return model, interp, x, y, decide


def test_blocks_are_encoder_bottleneck_decoder(case):
    model, interp, *_ = case
    assert interp.block_names == ["enc1_out", "enc2_out", "bott_out", "dec2_out", "dec1_out"]
    assert list(interp.blocks.to_frame()["stage"]) == ["encoder"] * 2 + ["bottleneck"] + ["decoder"] * 2


def test_layer_table_equals_sklearn_on_flattened_pixels(case):
    model, interp, x, y, decide = case
    xe, ye = x[N_FIT:], y[N_FIT:]
    table = interp.evaluate_layers(xe, ye, controls=1, bootstrap=8, random_state=0, batch_size=5)
    frame = table.to_frame().set_index("block")
    truth = ye.ravel()
    for l, name in enumerate(interp.block_names):
        pred = probe_mask(at_output(model, name, xe), interp.probes[l].state())
        assert frame.loc[name, "mean_iou"] == pytest.approx(jaccard_score(truth, pred, average="macro"), abs=1e-12)
        assert frame.loc[name, "dice"] == pytest.approx(f1_score(truth, pred, average="macro"), abs=1e-12)
        assert frame.loc[name, "pixel_accuracy"] == pytest.approx(accuracy_score(truth, pred), abs=1e-12)
        k, b = interp.control_states_[l][0]
        mean, scale = interp.probes[l].state()[:2]
        ctl = probe_mask(at_output(model, name, xe), (mean, scale, k, b))
        assert frame.loc[name, "control_mean_iou"] == pytest.approx(
            jaccard_score(truth, ctl, average="macro"), abs=1e-12)
        assert frame.loc[name, "mean_iou_low"] <= frame.loc[name, "mean_iou_high"]
    model_mask = decide(model.predict(xe, verbose=0)).ravel()
    assert frame.loc["output", "mean_iou"] == pytest.approx(jaccard_score(truth, model_mask, average="macro"),
                                                            abs=1e-12)
    assert frame["mean_iou"].min() > 0.1 and len(set(np.round(frame["mean_iou"], 6))) > 3  # not degenerate


def test_explain_draws_each_blocks_mask(case):
    model, interp, x, _, _ = case
    ex = interp.explain(x[N_FIT])
    for l, name in enumerate(interp.block_names):
        pred = probe_mask(at_output(model, name, x[N_FIT:N_FIT + 1]), interp.probes[l].state())
        np.testing.assert_array_equal(np.asarray(ex.masks[l]).ravel(), pred)
    import matplotlib.pyplot as plt

    fig = ex.plot()
    assert fig.axes
    plt.close(fig)


def test_association_and_mean_iou_importance_at_an_encoder_block(case):
    model, interp, x, y, decide = case
    ga = GlobalAnalyzer(interp)
    K = 2 if model.output.shape[-1] == 1 else model.output.shape[-1]
    res = ga.filter_class_association(x, y, block="enc1_out", quantile=0.05, batch_size=7)
    a = at_output(model, "enc1_out", x)
    m = a > res.thresholds
    inter = np.stack([[np.sum(m[..., c] & (y == k)) for k in range(K)] for c in range(a.shape[-1])])
    union = np.stack([[np.sum(m[..., c] | (y == k)) for k in range(K)] for c in range(a.shape[-1])])
    np.testing.assert_array_equal(res.intersection, inter)
    np.testing.assert_array_equal(res.union, union)

    imp = ga.filter_importance(x, y, block="enc1_out", method="ablation", scoring="mean_iou", batch_size=9)

    def score(mdl):
        return jaccard_score(y.ravel(), decide(mdl.predict(x, verbose=0)).ravel(), average="macro")

    base, expected = score(model), []
    for c in range(model.get_layer("enc1_out").output.shape[-1]):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        w, b = copy.get_layer("enc1_out").get_weights()
        w[..., c], b[c] = 0.0, 0.0  # relu(0): the filter's map is zero, in the pool's path and in the skip
        copy.get_layer("enc1_out").set_weights([w, b])
        expected.append(base - score(copy))
    np.testing.assert_allclose(imp.importances_mean, expected, atol=2e-5)
    assert np.any(np.abs(expected) > 1e-3)
