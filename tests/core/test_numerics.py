"""Numerical robustness: dead filters, constant inputs, extreme scales, mixed precision, seeds.

Every check compares with a NumPy float64 oracle or with the same analysis of
an equivalent model, never with shapes alone. Models are tiny and hand-set:
a 1x1 convolution ``block`` (kernel ``K * scale``) read by global average
pooling and a softmax head (kernel ``W / scale``), so the model's output does
not depend on ``scale`` while the block's activations are multiplied by it.
"""

import contextlib
import warnings

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter
from keras_hybrid_interp.core.health import InterpretationWarning

N, HW, C_IN, C, K = 90, 5, 5, 4, 3  # C_IN > C: the block's features are not rank-deficient


def _on_accelerator():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


#: NumPy float64 oracles hold to float32 rounding on CPU. GPUs run float32 convolutions and
#: matmuls in TF32 by default (10-bit mantissa), about 1e-4 relative (README, Numerical notes).
ATOL, RTOL = (1e-3, 1e-2) if _on_accelerator() else (1e-5, 1e-3)


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = rng.normal(size=(n, HW, HW, C_IN)).astype("float32")
    x[..., 0] += (y - 1)[:, None, None] * 0.8  # channel 0 carries the class
    return x, y


_RNG = np.random.default_rng(42)
KERNEL = _RNG.normal(size=(C_IN, C)).astype("float32")
HEAD_W = _RNG.normal(size=(C, K)).astype("float32")
HEAD_B = np.array([0.1, -0.2, 0.05], dtype="float32")


def block_model(scale=1.0, bias=None):
    """x -> 1x1 conv 'block' (K*scale [+ bias*scale], ReLU if bias) -> GAP -> softmax(W/scale)."""
    inp = keras.Input((HW, HW, C_IN))
    conv = layers.Conv2D(C, 1, use_bias=bias is not None, activation="relu" if bias is not None else None,
                         name="block")
    dense = layers.Dense(K, activation="softmax", name="head")
    out = dense(layers.GlobalAveragePooling2D(name="gap")(conv(inp)))
    model = keras.Model(inp, out, name="block_model")
    k = (KERNEL * scale)[None, None].astype("float32")
    conv.set_weights([k] if bias is None else [k, (np.asarray(bias) * scale).astype("float32")])
    dense.set_weights([(HEAD_W / scale).astype("float32"), HEAD_B])
    return model


def oracle_activations(x, scale=1.0, bias=None):
    a = np.einsum("nhwi,ic->nhwc", x.astype(np.float64), KERNEL.astype(np.float64) * scale)
    if bias is not None:
        a = np.maximum(a + np.asarray(bias, np.float64) * scale, 0.0)
    return a


def oracle_probs(s, scale=1.0):
    logits = s @ (HEAD_W.astype(np.float64) / scale) + HEAD_B
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def oracle_association(s, y):
    r = np.full((s.shape[1], K), np.nan)
    for c in range(s.shape[1]):
        if np.ptp(s[:, c]) == 0:
            continue
        for k in range(K):
            r[c, k] = np.corrcoef(s[:, c], (y == k).astype(float))[0, 1]
    return r


def oracle_neg_loss(s, y, scale=1.0):
    p = oracle_probs(s, scale)[np.arange(len(y)), y]
    return float(np.mean(np.log(np.clip(p, 1e-7, 1.0))))


# ----------------------------------------------------------------------
# Extreme activation scales
# ----------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_huge_and_tiny_activations_match_numpy_and_the_unit_scale(scale):
    x, y = _data()
    m1, ms = block_model(1.0), block_model(scale)
    s = oracle_activations(x, scale).mean(axis=(1, 2))
    ga1 = GlobalAnalyzer(m1, blocks="block")
    ga = GlobalAnalyzer(ms, blocks="block")

    corr = ga.filter_correlation(x, block="block")
    np.testing.assert_allclose(corr.values, np.corrcoef(s, rowvar=False), atol=ATOL)
    assert corr.values.dtype == np.float64 and len(corr.dead_filters) == 0
    np.testing.assert_allclose(corr.mean, s.mean(0), rtol=ATOL, atol=ATOL * np.abs(s).max())

    assoc = ga.filter_class_association(x, y, block="block")
    np.testing.assert_allclose(assoc.values, oracle_association(s, y), atol=ATOL)

    # Ablation against the oracle: zeroing filter c changes the loss by exactly this.
    imp = ga.filter_importance(x, y, block="block", method="ablation", scoring="loss")
    base = oracle_neg_loss(s, y, scale)
    expect = [base - oracle_neg_loss(np.where(np.arange(C) == c, 0.0, s), y, scale) for c in range(C)]
    assert np.isclose(imp.baseline_score, base, atol=ATOL)
    np.testing.assert_allclose(imp.importances[:, 0], expect, atol=ATOL)

    # Taylor (a * dL/da) and permutation are scale-free: equal to the unit-scale model.
    t1 = ga1.filter_importance(x, y, block="block", method="taylor").importances
    ts = ga.filter_importance(x, y, block="block", method="taylor").importances
    assert np.all(np.isfinite(ts))
    np.testing.assert_allclose(ts, t1, rtol=RTOL, atol=1e-7)
    p1 = ga1.filter_importance(x, y, block="block", n_repeats=2, random_state=0, scoring="loss").importances
    ps = ga.filter_importance(x, y, block="block", n_repeats=2, random_state=0, scoring="loss").importances
    np.testing.assert_allclose(ps, p1, atol=ATOL)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_probes_are_scale_free(scale):
    """The probe standardizes its input, so a block 1e6 times larger (or smaller) gives the same probe."""
    x, y = _data()
    runs = []
    for sc in (1.0, scale):
        interp = HybridInterpreter(block_model(sc), blocks=["block"])
        interp.fit_probes(x, y, batch_size=32, verbose=0)
        assert interp.convergence_["converged"].all()
        pred = interp.layer_predictions(x).probabilities
        table = interp.evaluate_layers(x, y).to_frame()
        assert np.all(np.isfinite(pred)) and np.all(np.isfinite(table[["accuracy", "loss"]].to_numpy(float)))
        mean, pscale, _, _ = interp.probes[0].state()
        s = oracle_activations(x, sc).mean(axis=(1, 2))
        np.testing.assert_allclose(mean, s.mean(0), rtol=1e-4, atol=1e-5 * np.abs(s).max())
        np.testing.assert_allclose(pscale, 1 / s.std(0), rtol=1e-3)
        runs.append((pred, table))
    # the same optimum: only float32 rounding of the features differs
    np.testing.assert_allclose(runs[1][0], runs[0][0], atol=1e-4)
    np.testing.assert_allclose(runs[1][1]["loss"], runs[0][1]["loss"], rtol=1e-4)


# ----------------------------------------------------------------------
# Dead ReLU filters and constant inputs
# ----------------------------------------------------------------------
DEAD = 1
BIAS = np.array([0.0, -1e3, 0.5, 0.0], dtype="float32")  # filter 1 never fires


def test_dead_relu_filter_is_reported_as_nan_and_the_rest_matches_numpy():
    x, y = _data()
    m = block_model(1.0, bias=BIAS)
    a = oracle_activations(x, 1.0, BIAS)
    s = a.mean(axis=(1, 2))
    assert np.all(s[:, DEAD] == 0)
    ga = GlobalAnalyzer(m, blocks="block")

    with pytest.warns(InterpretationWarning, match=r"Block 'block': 1 dead filter\(s\) \[1\] take one constant value"):
        corr = ga.filter_correlation(x, block="block")
    assert corr.dead_filters.tolist() == [DEAD]
    assert np.all(np.isnan(corr.values[DEAD])) and np.all(np.isnan(corr.values[:, DEAD]))
    live = [c for c in range(C) if c != DEAD]
    np.testing.assert_allclose(corr.values[np.ix_(live, live)], np.corrcoef(s[:, live], rowvar=False), atol=ATOL)
    assert np.isfinite(corr.redundancy)

    with pytest.warns(InterpretationWarning, match="dead"):
        assoc = ga.filter_class_association(x, y, block="block")
    np.testing.assert_allclose(assoc.values, oracle_association(s, y), atol=ATOL)  # NaN row included

    with pytest.warns(InterpretationWarning, match="dead"):
        perm = ga.filter_importance(x, y, block="block", n_repeats=3, random_state=0, scoring="loss")
    assert perm.dead_filters.tolist() == [DEAD]
    assert np.all(perm.importances[DEAD] == 0.0) and np.all(np.isfinite(perm.importances))
    with pytest.warns(InterpretationWarning, match="dead"):
        taylor = ga.filter_importance(x, y, block="block", method="taylor")
    assert taylor.importances[DEAD, 0] == 0.0 and np.all(np.isfinite(taylor.importances))

    interp = HybridInterpreter(m, blocks=["block"])
    interp.fit_probes(x, y, verbose=0)
    _, scale, _, _ = interp.probes[0].state()
    w, b = interp.probes[0].effective_weights()
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(b))
    assert scale[DEAD] == 0.0 and np.all(w[DEAD] == 0.0)  # a constant feature gets weight 0
    np.testing.assert_allclose(scale[live], 1 / s[:, live].std(0), rtol=1e-4)
    assert np.all(
        np.isfinite(interp.evaluate_layers(x, y).to_frame()[["accuracy", "loss", "agreement"]].to_numpy(float))
    )


def test_constant_inputs_give_nan_statistics_and_a_prior_probe():
    _, y = _data()
    x = np.full((N, HW, HW, C_IN), 0.3, dtype="float32")
    m = block_model(1.0)
    # One batch: a GPU may pick different kernels for different batch shapes, whose results
    # differ in the last bits (README, Numerical notes); within one batch they are identical.
    ga = GlobalAnalyzer(m, blocks="block", batch_size=128)
    with pytest.warns(InterpretationWarning, match="dead"):
        corr = ga.filter_correlation(x, block="block")
    assert corr.dead_filters.tolist() == list(range(C)) and np.all(np.isnan(corr.values))
    assert np.isnan(corr.redundancy) and corr.clusters() == []
    with pytest.warns(InterpretationWarning, match="dead"):
        imp = ga.filter_importance(x, y, block="block", n_repeats=2, random_state=0, scoring="loss")
    assert np.all(imp.importances == 0.0)
    with pytest.warns(InterpretationWarning, match="constant"):
        sim = ga.layer_similarity(x)
    assert np.isnan(sim.values).all()

    # Nothing to learn from: the probe predicts the label frequencies, for every input.
    yy = np.where(np.arange(N) < 60, 0, np.arange(N) % 2 + 1)  # frequencies 2/3, 1/6, 1/6
    interp = HybridInterpreter(m, blocks=["block"])
    interp.fit_probes(x, yy, verbose=0)
    mean, scale, _, _ = interp.probes[0].state()
    assert np.all(scale == 0.0)  # every feature is constant
    p = interp.layer_predictions(x).probabilities[0]
    assert np.all(p == p[:1])
    # the optimum of an unpenalised intercept alone: the label frequencies
    np.testing.assert_allclose(p[0], np.bincount(yy) / N, atol=1e-5)


# ----------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------
@contextlib.contextmanager
def policy(name):
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def cnn():
    inp = keras.Input((12, 12, 1))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = layers.MaxPooling2D(name="pool1")(h)
    h = layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, layers.Dense(K, activation="softmax", name="head")(h), name="mp_cnn")


def _pass_dtypes(interp, x):
    """dtypes of what the one pass hands to the probes (pooled features) and of the probe outputs."""
    from keras_hybrid_interp.core import data_pass as _pass

    collects = [_pass.Collect(t) for t in interp._feature_taps()]
    _pass.run(interp.graph, interp._stream(x[:8]), collects)
    out = interp(x[:2])
    return [str(c.result().dtype) for c in collects] + [keras.backend.standardize_dtype(out[n].dtype)
                                                       for n in interp.block_names]


def _analyse(model, x, y):
    interp = HybridInterpreter(model, blocks=["pool1", "conv2"])
    interp.fit_probes(x, y, verbose=0)
    ga = GlobalAnalyzer(interp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random init: some ReLU filters may be dead
        return {
            "dtypes": ([p.compute_dtype for p in interp.probes], _pass_dtypes(interp, x)),
            "probs": interp.layer_predictions(x).probabilities,
            "table": interp.evaluate_layers(x, y).to_frame(),
            "corr": ga.filter_correlation(x, block="conv2"),
            "assoc": ga.filter_class_association(x, y, block="conv2").values,
            "sim": ga.layer_similarity(x).values,
            "ablation": ga.filter_importance(x, y, block="conv2", method="ablation", scoring="loss").importances,
            "perm": ga.filter_importance(x, y, block="conv2", n_repeats=2, random_state=0, scoring="loss").importances,
            "taylor": ga.filter_importance(x, y, block="conv2", method="taylor").importances,
        }


def test_mixed_float16_statistics_run_in_float32_and_match_float32():
    """Tolerances documented in README, "Numerical notes"."""
    rng = np.random.default_rng(0)
    x = rng.random((96, 12, 12, 1), dtype=np.float32)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype(int) + (np.arange(96) % 2)
    m32 = cnn()
    r32 = _analyse(m32, x, y)
    with policy("mixed_float16"):
        m16 = cnn()
        m16.set_weights(m32.get_weights())
        assert m16.get_layer("conv1").compute_dtype == "float16"
        r16 = _analyse(m16, x, y)
    assert keras.mixed_precision.global_policy().name == "float32"

    assert r16["dtypes"] == (["float32"] * 2, ["float32"] * 4)  # probes; pooled features, probe outputs
    dead = r32["corr"].dead_filters
    assert r16["corr"].dead_filters.tolist() == dead.tolist()
    for key in ("probs", "assoc", "sim", "ablation", "perm", "taylor"):
        a, b = r16[key], r32[key]
        assert np.array_equal(np.isnan(a), np.isnan(b)), key  # NaN only where float32 has NaN (dead filters)
    assert r16["corr"].values.dtype == np.float64
    np.testing.assert_allclose(r16["probs"], r32["probs"], atol=0.02)
    np.testing.assert_allclose(r16["table"]["loss"], r32["table"]["loss"], atol=0.01)
    np.testing.assert_allclose(r16["corr"].values, r32["corr"].values, atol=0.01)
    np.testing.assert_allclose(r16["assoc"], r32["assoc"], atol=0.01)
    np.testing.assert_allclose(r16["sim"], r32["sim"], atol=0.01)
    np.testing.assert_allclose(r16["ablation"], r32["ablation"], atol=2e-3)
    np.testing.assert_allclose(r16["perm"], r32["perm"], atol=2e-3)
    np.testing.assert_allclose(r16["taylor"], r32["taylor"], rtol=0.02, atol=1e-4)


# ----------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------
def test_same_seed_same_results_other_seed_differs():
    x, y = _data()
    m = block_model(1.0)
    interp = HybridInterpreter(m, blocks=["block"])
    probes = []
    # The probes need no seed: the fit is deterministic, and its optimum does not depend on batching.
    for bs in (16, 16, 32):
        interp.fit_probes(x, y, batch_size=bs, verbose=0)
        probes.append(interp.layer_predictions(x).probabilities)
    np.testing.assert_array_equal(probes[0], probes[1])
    np.testing.assert_allclose(probes[2], probes[0], atol=1e-5)

    ga = GlobalAnalyzer(m, blocks="block")
    imps = [ga.filter_importance(x, y, block="block", n_repeats=3, random_state=s, scoring="loss").importances
            for s in (5, 5, 6)]
    np.testing.assert_array_equal(imps[0], imps[1])
    assert not np.array_equal(imps[0], imps[2])
    # A SeedSequence or Generator seeds as well as an int does.
    a = ga.filter_importance(x, y, block="block", n_repeats=2, random_state=np.random.SeedSequence(9), scoring="loss")
    b = ga.filter_importance(x, y, block="block", n_repeats=2, random_state=np.random.SeedSequence(9), scoring="loss")
    np.testing.assert_array_equal(a.importances, b.importances)


@pytest.mark.parametrize("shape", [(3, 100, 32), (7, 5, 3, 32), (1000, 7), (64, 9, 1), (5, 2, 2, 2, 4000), (1, 1)])
def test_channel_extremes_equal_numpy_min_and_max(shape):
    """data_pass.channel_extreme (long rows of g x C values, then the rest): NumPy's min and max over every
    axis but the channels', NaN propagating, whatever the number of rows left over."""
    from keras_hybrid_interp.core.data_pass import channel_extreme, dead_filters_of

    rng = np.random.default_rng(len(shape))
    maps = rng.standard_normal(shape).astype(np.float32)
    maps[..., 0] = 0.5  # a dead (constant) channel
    if shape[-1] > 2:
        maps.reshape(-1, shape[-1])[-1, 2] = np.nan  # in the last row: the rows left over after the long ones
    axes = tuple(range(maps.ndim - 1))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(channel_extreme(np.minimum, maps), np.min(maps, axis=axes))
        np.testing.assert_array_equal(channel_extreme(np.maximum, maps), np.max(maps, axis=axes))
    assert 0 in dead_filters_of(maps)
    # Every row is read: a spike planted in any one row is the channel's maximum (and a dip its minimum).
    flat = maps.reshape(-1, shape[-1])
    for r in range(len(flat)):
        up, down = flat.copy(), flat.copy()
        up[r, -1], down[r, 0] = 1e6, -1e6
        assert channel_extreme(np.maximum, up)[-1] == 1e6 and channel_extreme(np.minimum, down)[0] == -1e6
