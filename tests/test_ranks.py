"""1-D (Conv1D, rank-3 maps) and 3-D (Conv3D, rank-5 maps) CNNs through every part of the package.

Table-driven over the two ranks with tiny models. Oracles: NumPy means over
the spatial axes, np.corrcoef, scikit-learn's logistic regression, a
hand-built tail (global average pooling + Dense in NumPy) for permutation,
ablation and Taylor importance, NumPy linear CKA, the probe logits for the
evidence maps, and the model's node lists and weights for "untouched".
"""

import os
import subprocess
import sys
import unittest.mock
import warnings

import matplotlib
import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import (
    FeaturePooling,
    GlobalAnalyzer,
    HybridInterpreter,
    ImportanceOptions,
    InterpretationCallback,
    build_report,
    plotting,
)
from keras_hybrid_interp.core.perturbation import job_permutation
from keras_hybrid_interp.datasets import make_signals, make_volumes, signal_class_names, volume_class_names

from models import assert_same_node_lists, node_lists

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 3


def cnn1d(name="cnn1d"):
    """Conv1D stem and pool, one residual block, a last conv, GAP1D, softmax."""
    inp = keras.Input((24, 2))
    x = layers.Conv1D(4, 3, padding="same", activation="relu", name="c1")(inp)
    x = layers.MaxPooling1D(name="p1")(x)
    y = layers.Conv1D(4, 3, padding="same", activation="relu", name="r1")(x)
    y = layers.Conv1D(4, 3, padding="same", name="r2")(y)
    x = layers.Activation("relu", name="res_out")(layers.Add(name="add")([x, y]))
    x = layers.Conv1D(5, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inp, layers.Dense(K, activation="softmax", name="head")(x), name=name)


def cnn3d(name="cnn3d"):
    """Conv3D, MaxPooling3D, Conv3D, GAP3D, softmax."""
    inp = keras.Input((6, 6, 6, 1))
    x = layers.Conv3D(3, 3, padding="same", activation="relu", name="c1")(inp)
    x = layers.MaxPooling3D(name="p1")(x)
    x = layers.Conv3D(5, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.GlobalAveragePooling3D(name="gap")(x)
    return keras.Model(inp, layers.Dense(K, activation="softmax", name="head")(x), name=name)


RANKS = {
    1: dict(build=cnn1d, shape=(24, 2), blocks=["p1", "res_out", "c2"]),
    3: dict(build=cnn3d, shape=(6, 6, 6, 1), blocks=["p1", "c2"]),
}


def data(rank, n=36, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + RANKS[rank]["shape"]).astype(np.float32)
    return x, np.arange(n) % K


def spatial_mean(a):
    return a.astype(np.float64).mean(axis=tuple(range(1, a.ndim - 1)))


class Env:
    def __init__(self, rank):
        keras.utils.set_random_seed(rank)
        self.rank = rank
        self.model = RANKS[rank]["build"]()
        self.x, self.y = data(rank)
        self.interp = HybridInterpreter(self.model)
        self.interp.fit_probes(self.x, self.y)
        self.ga = GlobalAnalyzer(self.interp)
        names = self.interp.block_names
        # Reference maps from a plain Keras model on the user's tensors (builds no node).
        ref = keras.Model(self.model.inputs, [self.model.get_layer(n).output for n in names])
        self.maps = {n: np.asarray(m) for n, m in zip(names, ref.predict_on_batch(self.x))}
        self.W, self.b = (np.asarray(v, np.float64) for v in self.model.get_layer("head").get_weights())


@pytest.fixture(scope="module", params=sorted(RANKS), ids=lambda r: f"{r}d")
def env(request):
    return Env(request.param)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def tail(a, W, b):
    """The model after block 'c2' in NumPy: global average pooling, Dense, softmax."""
    return softmax(spatial_mean(a) @ W + b)


def neg_loss(p, y):
    return float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


# ----------------------------------------------------------------------
# Blocks and pooling
# ----------------------------------------------------------------------
def test_blocks_are_the_feature_maps_of_the_rank(env):
    assert env.interp.block_names == RANKS[env.rank]["blocks"]
    for b in env.interp.blocks:
        assert len(b.output_shape) == env.rank + 2


@pytest.mark.parametrize("rank", sorted(RANKS))
@pytest.mark.parametrize("mode", ["avg", "max", "min", 2])
def test_feature_pooling_is_the_numpy_reduction_over_every_spatial_axis(rank, mode):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3,) + ((7,) if rank == 1 else (5, 4, 3)) + (2,)).astype(np.float32)
    got = np.asarray(keras.ops.convert_to_numpy(FeaturePooling(mode)(a)))
    axes = tuple(range(1, a.ndim - 1))
    if mode == "avg":
        want = a.mean(axis=axes)
    elif mode == "max":
        want = a.max(axis=axes)
    elif mode == "min":
        want = a.min(axis=axes)
    else:  # adaptive bins [floor(i n / k), ceil((i + 1) n / k)) along every axis, cells in C order
        import itertools

        def bins(n):
            return [(i * n // 2, -(-(i + 1) * n // 2)) for i in range(2)]

        cells = []
        for box in itertools.product(*(bins(a.shape[ax]) for ax in axes)):
            idx = (slice(None),) + tuple(slice(lo, hi) for lo, hi in box) + (slice(None),)
            cells.append(a[idx].mean(axis=axes))
        want = np.concatenate(cells, axis=-1)
        # position_weights is the same linear map
        pw = FeaturePooling(mode).position_weights(*a.shape[1:-1])
        flat = a.reshape(3, -1, 2).astype(np.float64)
        np.testing.assert_allclose(np.einsum("pj,npc->njc", pw, flat).reshape(3, -1), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_probes_are_scikit_learns_logistic_regression_on_the_spatial_means(env):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    pred = env.interp.layer_predictions(env.x)
    for i, name in enumerate(env.interp.block_names):
        f = spatial_mean(env.maps[name])
        z = StandardScaler().fit_transform(f)
        ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, env.y).predict_proba(z)
        np.testing.assert_allclose(pred.probabilities[i], ref, atol=2e-3)


def test_layer_table_rows_and_model_row(env):
    table = env.interp.evaluate_layers(env.x, env.y)
    frame = table if hasattr(table, "columns") else table.to_frame()
    assert list(frame["block"]) == env.interp.block_names + ["output"]
    model_acc = np.mean(env.model.predict_on_batch(env.x).argmax(1) == env.y)
    assert float(frame["accuracy"].iloc[-1]) == pytest.approx(model_acc)


# ----------------------------------------------------------------------
# Explanations
# ----------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["avg", 2])
def test_evidence_map_mean_equals_the_probe_logits_at_every_rank(env, pooling):
    interp = env.interp
    if pooling != "avg":
        interp = HybridInterpreter(env.model, pooling=pooling)
        with warnings.catch_warnings():  # 3-D: more features than samples, which is beside the point here
            warnings.simplefilter("ignore")
            interp.fit_probes(env.x, env.y)
    e = interp.explain(env.x[0])
    for i, name in enumerate(interp.block_names):
        ev = e.evidence_maps[i]
        assert ev.shape == env.maps[name].shape[1:-1] + (K,)
        # softmax of the mean over positions = the probe's own probabilities (Keras path)
        mean_logits = ev.reshape(-1, K).mean(axis=0)
        probe = interp.probe_model(block=i).predict_on_batch(env.x[:1])[0]
        np.testing.assert_allclose(softmax(mean_logits[None])[0], probe, atol=1e-5)


def test_explanation_plot_has_the_shape_of_the_input(env):
    e = env.interp.explain(env.x[1])
    fig = plotting.plot_local_explanation(e)
    assert isinstance(fig, matplotlib.figure.Figure)
    labels = [ax.get_label() for ax in fig.axes]
    assert "image" in labels and "probabilities" in labels
    names = env.interp.block_names
    if env.rank == 1:
        for n in names:
            ax = next(a for a in fig.axes if a.get_label() == f"evidence:{n}")
            gids = [line.get_gid() for line in ax.get_lines()]
            assert "evidence" in gids and "signal" in gids  # the curve, with the signal underneath
            curve = next(line for line in ax.get_lines() if line.get_gid() == "evidence")
            assert len(curve.get_xdata()) == env.x.shape[1]
        with pytest.raises(ValueError, match="slice_at"):
            plotting.plot_local_explanation(e, slice_at=(0, 0, 0))
    else:
        for n in names:
            slices = [a for a in fig.axes if a.get_label().startswith(f"evidence:{n}:axis")]
            assert len(slices) == 3
            # default: through the point of peak evidence (centre of that cell in the input)
            ev = e.evidence_maps[names.index(n)][..., e.model_class]
            peak = np.unravel_index(np.argmax(ev), ev.shape)
            want = tuple(min(int((p + 0.5) * s / m), s - 1) for p, s, m in zip(peak, env.x.shape[1:4], ev.shape))
            assert {a.get_gid() for a in slices} == {"slice:" + ",".join(map(str, want))}
        fig2 = plotting.plot_local_explanation(e, slice_at=(1, 2, 3))
        assert {a.get_gid() for a in fig2.axes if a.get_label().startswith("evidence:")} == {"slice:1,2,3"}
        with pytest.raises(ValueError, match=r"`slice_at` must be a voxel"):
            plotting.plot_local_explanation(e, slice_at=(9, 0, 0))


# ----------------------------------------------------------------------
# Global analyses
# ----------------------------------------------------------------------
def test_correlation_and_association_use_the_spatial_means(env):
    s = spatial_mean(env.maps["c2"])
    corr = env.ga.filter_correlation(env.x, block="c2")
    live = s.std(axis=0) > 0
    ref = np.corrcoef(s[:, live].T)
    np.testing.assert_allclose(corr.values[np.ix_(live, live)], ref, atol=1e-6)
    assoc = env.ga.filter_class_association(env.x, env.y, block="c2")
    for c in np.flatnonzero(live):
        for k in range(K):
            r = np.corrcoef(s[:, c], (env.y == k).astype(float))[0, 1]
            assert assoc.values[c, k] == pytest.approx(r, abs=1e-6)


def test_permutation_and_ablation_equal_a_hand_built_tail(env):
    a = env.maps["c2"].astype(np.float64)
    base = tail(a, env.W, env.b)
    res = env.ga.filter_importance(env.x, env.y, block="c2", n_repeats=2, random_state=3, scoring="loss")
    assert res.baseline_score == pytest.approx(neg_loss(base, env.y), abs=1e-5)
    for c in range(a.shape[-1]):
        for r in range(2):
            perm = job_permutation(res.random_state, c, r, len(env.x))
            b = a.copy()
            b[..., c] = a[perm][..., c]  # the filter's whole map, every position, moves together
            want = neg_loss(base, env.y) - neg_loss(tail(b, env.W, env.b), env.y)
            assert res.importances[c, r] == pytest.approx(want, abs=1e-5)
    abl = env.ga.filter_importance(env.x, env.y, block="c2", method="ablation", scoring="loss")
    for c in range(a.shape[-1]):
        b = a.copy()
        b[..., c] = 0.0
        want = neg_loss(base, env.y) - neg_loss(tail(b, env.W, env.b), env.y)
        assert abl.importances[c, 0] == pytest.approx(want, abs=1e-5)


def test_taylor_importance_is_the_closed_form_of_the_tail(env):
    a = env.maps["c2"].astype(np.float64)
    p = tail(a, env.W, env.b)
    t = np.eye(K)[env.y]
    # dL_n/da[n, pos, c] = (p_n - t_n) . W[c] / P, so sum_pos a * dL/da = mean_pos(a) (p_n - t_n) . W[c]
    want = np.abs(np.mean(spatial_mean(a) * ((p - t) @ env.W.T), axis=0))
    res = env.ga.filter_importance(env.x, env.y, block="c2", method="taylor", taylor="abs_mean")  # |mean_n z_n|
    np.testing.assert_allclose(res.importances[:, 0], want, rtol=1e-4, atol=1e-7)


def test_layer_similarity_is_numpy_linear_cka(env):
    def cka(x, y):
        x = x - x.mean(0)
        y = y - y.mean(0)
        return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))

    sim = env.ga.layer_similarity(env.x, estimator="full")  # the exact estimator, against NumPy
    names = env.interp.block_names
    feats = [spatial_mean(env.maps[n]) for n in names]
    for i in range(len(names)):
        for j in range(len(names)):
            assert sim.values[i, j] == pytest.approx(cka(feats[i], feats[j]), abs=1e-6)


# ----------------------------------------------------------------------
# Data of every rank: arrays, tf.data, PyDataset; the channel-axis hint
# ----------------------------------------------------------------------
class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch=10):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return -(-len(self.x) // self.batch)

    def __getitem__(self, i):
        s = slice(i * self.batch, (i + 1) * self.batch)
        return self.x[s], self.y[s]


def test_tf_data_and_pydataset_give_the_array_results(env):
    import tensorflow as tf

    ref = env.ga.filter_correlation(env.x, block="c2").values
    ds = tf.data.Dataset.from_tensor_slices((env.x, env.y)).batch(7)
    np.testing.assert_allclose(env.ga.filter_correlation(ds, block="c2").values, ref, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(env.ga.filter_correlation(Batches(env.x, env.y), block="c2").values, ref,
                               atol=1e-6, equal_nan=True)


def test_missing_channel_axis_hint_fires_only_without_the_channel_axis():
    keras.utils.set_random_seed(0)
    inp = keras.Input((20, 1))
    h = layers.Conv1D(3, 3, activation="relu", name="c")(inp)
    m = keras.Model(inp, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling1D()(h)), name="ecg")
    interp = HybridInterpreter(m)
    x = np.random.default_rng(0).normal(size=(12, 20)).astype(np.float32)
    with pytest.raises(ValueError, match=r"must have shape \(batch, 20, 1\) \(rank 3\).*lacks the channel axis"):
        interp.fit_probes(x, np.arange(12) % 2)
    interp.fit_probes(x[..., None], np.arange(12) % 2)  # (N, T, 1): no error, no hint
    with pytest.raises(ValueError) as err:
        interp.evaluate_layers(np.zeros((12, 20, 1, 1), np.float32), np.arange(12) % 2)
    assert "(batch, 20, 1)" in str(err.value) and "channel axis" not in str(err.value)


def test_rank_mismatch_names_the_expected_shape():
    interp = HybridInterpreter(cnn3d())
    with pytest.raises(ValueError, match=r"must have shape \(batch, 6, 6, 6, 1\) \(rank 5\).*received shape "
                                         r"\(4, 6, 6, 6\).*x\[\.\.\., None\]"):
        interp.fit_probes(np.zeros((4, 6, 6, 6), np.float32), np.arange(4) % K)


# ----------------------------------------------------------------------
# Callback, report, CLI, and the model left alone
# ----------------------------------------------------------------------
@pytest.mark.parametrize("rank", sorted(RANKS))
def test_every_public_call_leaves_the_model_untouched(rank, tmp_path):
    keras.utils.set_random_seed(0)
    model = RANKS[rank]["build"]()
    x, y = data(rank, n=24)
    weights = [w.copy() for w in model.get_weights()]
    before = node_lists(model)
    interp = HybridInterpreter(model)
    interp.fit_probes(x, y)
    interp.evaluate_layers(x, y)
    interp.explain(x[0])
    ga = GlobalAnalyzer(interp)
    for method in ("permutation", "ablation", "taylor"):
        ga.filter_importance(x, y, block="c2", method=method, **({"n_repeats": 1} if method == "permutation" else {}))
    ga.filter_correlation(x, block="c2")
    ga.filter_class_association(x, y, block="c2")
    ga.layer_similarity(x)
    with unittest.mock.patch("matplotlib.figure.Figure.savefig"):
        build_report(interp, x, y, examples=1, n_repeats=1)
    assert_same_node_lists(before, node_lists(model))
    for w, w0 in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, w0)
    assert not model.compiled


def test_callback_in_fit_records_every_block(env):
    keras.utils.set_random_seed(1)
    model = RANKS[env.rank]["build"](name=f"fit{env.rank}d")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    cb = InterpretationCallback((env.x, env.y), importance=ImportanceOptions(block="c2", n_repeats=1))
    model.fit(env.x, env.y, epochs=2, batch_size=12, callbacks=[cb], verbose=0)
    frame = cb.history
    assert set(RANKS[env.rank]["blocks"]) <= set(frame["block"].dropna().astype(str))
    assert frame["epoch"].nunique() >= 2
    imp = frame[(frame["block"] == "c2") & frame["metric"].astype(str).str.contains("importance")]
    assert len(imp) and np.isfinite(imp["value"]).all()


def test_report_has_every_section(env, tmp_path):
    with unittest.mock.patch("matplotlib.figure.Figure.savefig"):
        rep = build_report(env.interp, env.x, env.y, examples=1, n_repeats=1)
    titles = [s.title for s in rep.sections]
    for t in ("Blocks", "Local explanations"):
        assert t in titles


def _cli(*args, cwd):
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "keras_hybrid_interp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a subprocess per rank (about 18 s each); CI runs it in the slow group
@pytest.mark.parametrize("rank", sorted(RANKS))
def test_cli_analyzes_a_saved_model_of_the_rank(rank, tmp_path):
    keras.utils.set_random_seed(0)
    RANKS[rank]["build"]().save(tmp_path / "model.keras")
    x, y = data(rank, n=40)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    res = _cli("analyze", "model.keras", "--data", "data.npz", "--out", "out", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000
    for name in RANKS[rank]["blocks"]:
        assert name in res.stdout


# ----------------------------------------------------------------------
# Generated data with a planted factor
# ----------------------------------------------------------------------
def test_signal_and_volume_generators_are_reproducible_and_plant_the_class():
    x, y, f = make_signals(40, factor="width", random_state=2, return_factors=True)
    assert x.shape == (40, 128, 1) and x.dtype == np.float32 and set(y) == {0, 1}
    assert np.all(f["qrs_width"][y == 1] > f["qrs_width"][y == 0].max())
    np.testing.assert_array_equal(make_signals(40, factor="width", random_state=2)[0], x)
    assert not np.array_equal(make_signals(40, factor="width", random_state=3)[0], x)
    _, ye, fe = make_signals(30, factor="extra_beat", return_factors=True)
    np.testing.assert_array_equal(fe["extra_at"] >= 0, ye == 1)
    v, yv, fv = make_volumes(20, factor="shape", size=12, return_factors=True, random_state=1)
    assert v.shape == (20, 12, 12, 12, 1) and set(yv) == {0, 1}
    np.testing.assert_array_equal(fv["axis"] >= 0, yv == 1)  # rods have an axis, balls none
    _, yp, fp = make_volumes(20, factor="position", size=12, return_factors=True)
    np.testing.assert_array_equal(fp["centre"][:, 0] >= 12 / 2 - 0.5, yp == 1)
    np.testing.assert_array_equal(make_volumes(5, random_state=4)[0], make_volumes(5, random_state=4)[0])
    assert signal_class_names("width") == ["narrow_qrs", "wide_qrs"]
    assert volume_class_names("shape") == ["ball", "rod"]
    with pytest.raises(ValueError, match="factor"):
        make_signals(5, factor="colour")
    with pytest.raises(ValueError, match="factor"):
        make_volumes(5, factor="colour")


def _trained(rank):
    keras.utils.set_random_seed(0)
    if rank == 1:
        x, y = make_signals(400, factor="width", length=96, random_state=0)
        inp = keras.Input(x.shape[1:])
        h = layers.Conv1D(8, 5, padding="same", activation="relu", name="c1")(inp)
        h = layers.MaxPooling1D(name="p1")(h)
        h = layers.Conv1D(12, 5, padding="same", activation="relu", name="c2")(h)
        pool = layers.GlobalAveragePooling1D()
    else:
        x, y = make_volumes(300, factor="shape", size=12, random_state=0)
        inp = keras.Input(x.shape[1:])
        h = layers.Conv3D(6, 3, padding="same", activation="relu", name="c1")(inp)
        h = layers.MaxPooling3D(name="p1")(h)
        h = layers.Conv3D(10, 3, padding="same", activation="relu", name="c2")(h)
        pool = layers.GlobalAveragePooling3D()
    model = keras.Model(inp, layers.Dense(2, activation="softmax")(pool(h)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    n = int(0.75 * len(x))
    model.fit(x[:n], y[:n], epochs=15, batch_size=32, verbose=0)
    return model, x[:n], y[:n], x[n:], y[n:]


@pytest.mark.slow
@pytest.mark.parametrize("rank", sorted(RANKS))
def test_planted_class_is_read_at_the_last_block_and_association_finds_the_filters(rank):
    model, xtr, ytr, xte, yte = _trained(rank)
    interp = HybridInterpreter(model)
    interp.fit_probes(xtr, ytr)
    table = interp.evaluate_layers(xte, yte)
    frame = table if hasattr(table, "columns") else table.to_frame()
    assert float(frame.loc[frame["block"] == "c2", "accuracy"].iloc[0]) >= 0.9
    ga = GlobalAnalyzer(interp)
    assoc = ga.filter_class_association(xtr, ytr, block="c2")
    strength = np.nan_to_num(np.abs(assoc.values[:, 1]))
    k = 3
    picked = list(np.argsort(-strength)[:k])
    hurt = ga.filter_importance(xte, yte, block="c2", method="ablation", groups=[picked]).importances[0, 0]
    rng = np.random.default_rng(0)
    c = strength.size
    others = [ga.filter_importance(xte, yte, block="c2", method="ablation",
                                   groups=[sorted(rng.choice(c, k, replace=False))]).importances[0, 0]
              for _ in range(5)]
    assert hurt > np.mean(others)
