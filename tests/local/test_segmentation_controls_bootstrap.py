"""Segmentation controls and bootstrap intervals, positions_per_sample through the interpreter.

Oracles: scikit-learn's LogisticRegression on the permuted masks (controls), jaccard_score / f1_score /
accuracy_score on flattened pixels, and a slow reference that regenerates the Poisson weights sample by sample
(same seed) and scores each resample's pixels with scikit-learn.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_hybrid_interp import HybridInterpreter  # noqa: E402

from segmentation_models import planted_data, planted_unet  # noqa: E402

BLOCKS = ["enc1", "bottleneck"]
ALL = 16 * 16  # every position of the 16x16 masks


@pytest.fixture(scope="module")
def fitted():
    model = planted_unet()
    x, y = planted_data(36, seed=3)
    interp = HybridInterpreter(model, blocks=BLOCKS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp.fit_probes(x[:20], y[:20], controls=2, random_state=5, positions_per_sample=ALL, verbose=0)
    return model, interp, x, y


def maps_at_output(model, name, x):
    a = np.asarray(keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0), np.float64)
    f = 16 // a.shape[1]
    return np.repeat(np.repeat(a, f, axis=1), f, axis=2)  # nearest neighbour to 16x16


def predict(a, mean, scale, kernel, bias):
    return (((a.reshape(-1, a.shape[-1]) - mean) * scale) @ kernel + bias).argmax(axis=1)


def test_control_probes_equal_sklearn_on_masks_permuted_across_samples(fitted):
    model, interp, x, y = fitted
    perms = [np.random.default_rng(5).permutation(20) for _ in range(1)]
    rng = np.random.default_rng(5)
    perms = [rng.permutation(20) for _ in range(2)]
    for l, name in enumerate(BLOCKS):
        a = maps_at_output(model, name, x[:20]).reshape(-1, model.get_layer(name).output.shape[-1])
        mean, scale, _, _ = interp.probes[l].state()
        z = (a - mean) * scale
        for j, perm in enumerate(perms):
            ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(z, y[:20][perm].ravel())
            kernel, bias = interp.control_states_[l][j]
            logits = z @ kernel + bias
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            np.testing.assert_allclose(p, ref.predict_proba(z), atol=2e-3)
    # Not the probe itself: the control on shuffled masks reads the planted squares far worse.
    assert not np.allclose(interp.control_states_[0][0][0], interp.probes[0].state()[2])


@pytest.mark.parametrize("chunk_rows", [None, 37])
def test_control_mean_iou_and_selectivity_equal_jaccard_on_every_pixel(fitted, chunk_rows, monkeypatch):
    """``chunk_rows``: the block maps converted to float64 37 positions at a time (a count that divides
    no batch's positions), as the default chunk does for large maps."""
    from keras_hybrid_interp.local import segmentation as seg

    if chunk_rows is not None:
        monkeypatch.setattr(seg, "LOGITS_CHUNK_BYTES", 8 * chunk_rows * 8)  # 8 filters per block here
    model, interp, x, y = fitted
    table = interp.evaluate_layers(x[20:], y[20:], controls=2, batch_size=5)
    frame = table.to_frame().set_index("block")
    for l, name in enumerate(BLOCKS):
        a = maps_at_output(model, name, x[20:])
        mean, scale, kernel, bias = interp.probes[l].state()
        iou = jaccard_score(y[20:].ravel(), predict(a, mean, scale, kernel, bias), average="macro")
        ctl = np.mean([jaccard_score(y[20:].ravel(), predict(a, mean, scale, k, b), average="macro")
                       for k, b in interp.control_states_[l]])
        assert frame.loc[name, "mean_iou"] == pytest.approx(iou, abs=1e-12)
        assert frame.loc[name, "control_mean_iou"] == pytest.approx(ctl, abs=1e-12)
        assert frame.loc[name, "selectivity"] == pytest.approx(iou - ctl, abs=1e-12)
    assert np.isnan(frame.loc["output", "control_mean_iou"])
    assert frame.loc["enc1", "selectivity"] > 0.3  # the planted filters read the squares; shuffled masks do not
    one = interp.evaluate_layers(x[20:], y[20:], controls=1).to_frame().set_index("block")
    assert one.loc["enc1", "control_mean_iou"] == pytest.approx(
        jaccard_score(y[20:].ravel(), predict(maps_at_output(model, "enc1", x[20:]), *interp.probes[0].state()[:2],
                                              *interp.control_states_[0][0]), average="macro"), abs=1e-12)


def reference_intervals(model, interp, x, y, B, seed, confidence, controls):
    """Slow: the Poisson weights regenerated sample by sample, each resample scored by scikit-learn."""
    rng = np.random.default_rng(seed)
    w = np.concatenate([rng.poisson(1.0, size=(1, B)) for _ in range(len(x))]).astype(np.float64)  # (n, B)
    preds = {}
    for l, name in enumerate(BLOCKS):
        a = maps_at_output(model, name, x)
        mean, scale, kernel, bias = interp.probes[l].state()
        preds[name] = predict(a, mean, scale, kernel, bias)
        preds[name, "controls"] = [predict(a, mean, scale, k, b) for k, b in interp.control_states_[l][:controls]]
    preds["output"] = model.predict(x, verbose=0).argmax(-1).ravel()
    truth = y.ravel()
    per_pixel = np.repeat(w, ALL, axis=0)  # (n * 256, B)
    values = {m: {name: [] for name in BLOCKS + ["output"]} for m in ("mean_iou", "dice", "pixel_accuracy",
                                                                        "selectivity")}
    for b in range(B):
        keep = per_pixel[:, b] > 0
        sw = per_pixel[keep, b]
        for name in BLOCKS + ["output"]:
            p = preds[name][keep]
            iou = jaccard_score(truth[keep], p, average="macro", sample_weight=sw)
            values["mean_iou"][name].append(iou)
            values["dice"][name].append(f1_score(truth[keep], p, average="macro", sample_weight=sw))
            values["pixel_accuracy"][name].append(accuracy_score(truth[keep], p, sample_weight=sw))
            if name != "output":
                ctl = np.mean([jaccard_score(truth[keep], c[keep], average="macro", sample_weight=sw)
                               for c in preds[name, "controls"]])
                values["selectivity"][name].append(iou - ctl)
    alpha = 1 - confidence
    return {m: {name: np.quantile(v, [alpha / 2, 1 - alpha / 2]) for name, v in d.items() if v}
            for m, d in values.items()}


def test_bootstrap_intervals_equal_a_slow_sklearn_reference_whatever_the_batch(fitted):
    model, interp, x, y = fitted
    xe, ye = x[20:], y[20:]
    B, seed = 25, 11
    ref = reference_intervals(model, interp, xe, ye, B, seed, 0.9, controls=2)
    tables = [interp.evaluate_layers(xe, ye, controls=2, bootstrap=B, confidence=0.9, random_state=seed,
                                     batch_size=bs) for bs in (16, 3)]
    for table in tables:
        assert table.n_resamples == B and table.confidence == 0.9
        for m, d in ref.items():
            for name, (lo, hi) in d.items():
                i = table.blocks.index(name)
                assert table.lower[m][i] == pytest.approx(lo, abs=1e-10), (m, name)
                assert table.upper[m][i] == pytest.approx(hi, abs=1e-10), (m, name)
    frame = tables[0].to_frame().set_index("block")
    assert frame.loc["bottleneck", "mean_iou_low"] < frame.loc["bottleneck", "mean_iou_high"]  # a real spread
    assert frame.loc["bottleneck", "mean_iou_low"] <= frame.loc["bottleneck", "mean_iou"] <= \
        frame.loc["bottleneck", "mean_iou_high"]


def test_bootstrap_without_masks_and_bad_controls(fitted):
    model, interp, x, y = fitted
    table = interp.evaluate_layers(x[20:], bootstrap=10, random_state=0)
    assert not table.labelled and set(table.lower) >= {"mean_iou", "dice", "agreement"}
    with pytest.raises(ValueError, match=r"`controls` needs masks"):
        interp.evaluate_layers(x[20:], controls=1)
    with pytest.raises(ValueError, match=r"`controls`=3 asks for 3 control probes per block, but the probes "
                                         r"were fitted with 2"):
        interp.evaluate_layers(x[20:], y[20:], controls=3)
    with pytest.raises(ValueError, match=r"`controls` must be a non-negative int.*received -1"):
        interp.fit_probes(x[:20], y[:20], controls=-1)
    with pytest.raises(ValueError, match=r"`bootstrap` must be 0 .* received 1"):
        interp.evaluate_layers(x[20:], y[20:], bootstrap=1)


def test_positions_per_sample_through_the_interpreter(fitted):
    model, interp, x, y = fitted
    # Every position drawn: the probe equals scikit-learn's fit on every pixel of the standardized map.
    a = maps_at_output(model, "enc1", x[:20]).reshape(-1, 4)
    mean, scale, kernel, bias = interp.probes[0].state()
    np.testing.assert_allclose(mean, a.mean(0), atol=1e-6)
    z = (a - mean) * scale
    ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(z, y[:20].ravel())
    logits = z @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), ref.predict_proba(z), atol=2e-3)
    # Fewer positions: the standardization is that of a subsample, so it moves.
    other = HybridInterpreter(model, blocks=["enc1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.fit_probes(x[:20], y[:20], positions_per_sample=5, random_state=0, verbose=0)
    assert not np.allclose(other.probes[0].state()[0], mean)
    with pytest.raises(ValueError, match=r"`positions_per_sample` must be a positive int.*received 0"):
        other.fit_probes(x[:20], y[:20], positions_per_sample=0)
    cls = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="c"),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"`positions_per_sample` applies to segmentation models only.*received 8"):
        HybridInterpreter(cls, blocks=["c"]).fit_probes(rng.normal(size=(6, 8, 8, 1)), np.arange(6) % 2,
                                                       positions_per_sample=8)
