"""Concepts (TCAV with significance, ``local/concepts.py``) against independent oracles.

- The CAV fit equals scikit-learn's ``StandardScaler`` + ``LogisticRegression`` on the same
  block features (computed here by a prefix model and NumPy pooling, not by the pass), and
  FastCAV the difference of the means.
- Directional derivatives equal central finite differences through the model's tail.
- The TCAV scores and magnitudes equal those recomputed from finite-difference derivatives.
- The t-tests equal scipy's, the corrections a hand-written Holm and scipy's Benjamini-Hochberg.
- Every block's derivatives come from one forward-and-backward pass per batch.
- Bad inputs get a clear error naming the argument.
- On the torch backend, the TCAV score of a CAV equals Captum's TCAV with the same CAV.
- Planted ground truth and the false-positive rate by simulation (slow).

The module lives in ``local/`` (not ``global_/``): its one entry point is a method of
``HybridInterpreter`` (local/), and local/ and global_/ must not import each other.
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

from keras_hybrid_interp import HybridInterpreter  # noqa: E402
from keras_hybrid_interp.core.health import InterpretationWarning  # noqa: E402
from keras_hybrid_interp.local import concepts as cc  # noqa: E402

from oracles import assert_not_all_zero  # noqa: E402

BLOCKS = ["c1", "c2"]


def smooth_cnn(classes=3, size=8):
    """A chain CNN with smooth activations (finite differences are exact to O(eps^2) there)."""
    inp = keras.Input((size, size, 3))
    h = layers.Conv2D(6, 3, padding="same", activation="tanh", name="c1")(inp)
    h = layers.AveragePooling2D(2, name="p1")(h)
    h = layers.Conv2D(5, 3, padding="same", activation="tanh", name="c2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, layers.Dense(classes, activation="softmax", name="head")(h), name="smooth_cnn")


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(0)
    model = smooth_cnn()
    rng = np.random.default_rng(0)
    x = rng.random((45, 8, 8, 3), dtype=np.float32)
    y = np.arange(45) % 3
    pool = rng.random((80, 8, 8, 3), dtype=np.float32)
    bright = np.clip(rng.random((16, 8, 8, 3), dtype=np.float32) * 0.6 + 0.4, 0, 1)
    red = rng.random((14, 8, 8, 3), dtype=np.float32) * 0.5
    red[..., 0] += 0.5
    interp = HybridInterpreter(model, BLOCKS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        res = interp.concepts({"bright": bright, "red": red}, x, y, random=pool, n_random=4, random_state=0,
                              bootstrap=50, controls=2)
    return model, interp, x, y, pool, {"bright": bright, "red": red}, res


def prefix_features(model, x, block):
    """A block's raw maps by a plain Keras model up to the layer (not the pass)."""
    return np.asarray(keras.Model(model.input, model.get_layer(block).output).predict(x, verbose=0), np.float64)


def tail(interp, block):
    key = interp.block_keys[interp.block_names.index(block)]
    return interp.graph.build(interp.graph.output_keys, inputs=[key])


def log_prob(model_out, cls):
    p = np.asarray(model_out, np.float64)
    return np.log(p[np.arange(len(p)), cls])


# ----------------------------------------------------------------------
# CAV fits
# ----------------------------------------------------------------------
def sklearn_cav(pos, neg, C=1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([pos, neg])
    t = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(scaler.transform(x), t)
    v = lr.coef_[0] / scaler.scale_
    b = lr.intercept_[0] - scaler.mean_ @ v
    n = np.linalg.norm(v)
    return v / n, b / n


def test_fit_cav_equals_sklearn_logistic_regression():
    rng = np.random.default_rng(1)
    pos = rng.normal(0.3, 1.0, (30, 7)) * np.arange(1, 8)
    neg = rng.normal(0.0, 1.0, (25, 7)) * np.arange(1, 8)
    cav = cc.fit_cav(pos, neg, C=0.5)
    v, b = sklearn_cav(pos, neg, C=0.5)
    np.testing.assert_allclose(cav.direction, v, atol=1e-6)
    np.testing.assert_allclose(cav.intercept, b, atol=1e-6)
    assert abs(np.linalg.norm(cav.direction) - 1) < 1e-12


def test_fastcav_is_the_difference_of_the_means():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1.0, 1.0, (20, 5)), rng.normal(0.0, 1.0, (30, 5))
    cav = cc.fit_cav(pos, neg, method="fastcav")
    centre = np.concatenate([pos, neg]).mean(axis=0)
    v = pos.mean(axis=0) - centre
    np.testing.assert_allclose(cav.direction, v / np.linalg.norm(v), atol=1e-12)
    assert cav.predict(centre[None] + v)[0] == 1 and cav.predict(centre[None] - v)[0] == 0


def test_every_cav_of_the_result_equals_sklearn_on_the_same_block_features(setup):
    model, interp, x, y, pool, concepts, res = setup
    for i, block in enumerate(BLOCKS):
        pool_f = prefix_features(model, pool, block).mean(axis=(1, 2))
        for c, (name, data) in enumerate(concepts.items()):
            f = prefix_features(model, data, block).mean(axis=(1, 2))
            train = res.concept_train[c]
            for r in range(res.scores.shape[-1]):
                v, b = sklearn_cav(f[train], pool_f[res.random_sets[r][:len(train)]])
                np.testing.assert_allclose(res.directions[i][c, r], v, atol=2e-5, err_msg=f"{name} {block} {r}")
    assert_not_all_zero(res.directions[0])


def test_accuracy_is_the_held_out_accuracy_of_the_cavs(setup):
    model, interp, x, y, pool, concepts, _ = setup
    rng = np.random.default_rng(6)
    concepts = {"faint": np.clip(rng.random((30, 8, 8, 3), dtype=np.float32) + 0.04, 0, 1), "red": concepts["red"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        res = interp.concepts(concepts, x, y, random=pool, n_random=4, random_state=3, bootstrap=50, controls=2)
    for i, block in enumerate(BLOCKS):
        pool_f = prefix_features(model, pool, block).mean(axis=(1, 2))
        for c, data in enumerate(concepts.values()):
            f = prefix_features(model, data, block).mean(axis=(1, 2))
            test = res.concept_test[c]
            xt = np.concatenate([f[test], pool_f[res.random_held_out[:len(test)]]])
            t = np.r_[np.ones(len(test)), np.zeros(len(test))]
            acc = []
            for r in range(res.scores.shape[-1]):
                v, b = sklearn_cav(f[res.concept_train[c]], pool_f[res.random_sets[r][:len(res.concept_train[c])]])
                acc.append(np.mean((xt @ v + b > 0) == t))
            assert res.accuracy[c, i] == pytest.approx(np.mean(acc), abs=1e-12)
            assert res.lower["accuracy"][c, i] <= res.accuracy[c, i] + 1e-12 <= res.upper["accuracy"][c, i] + 2e-12
    assert np.any(res.accuracy[0] < 0.9) and np.all(res.accuracy[1] > 0.9)  # a hard concept and an easy one


# ----------------------------------------------------------------------
# Directional derivatives and TCAV scores
# ----------------------------------------------------------------------
def finite_differences(interp, model, x, cls, block, directions, features, eps=1e-2):
    """Central differences of log p(cls) when ``direction`` is added to the block's map (at every position for
    pooled directions), through the model's tail: (n, M)."""
    a = prefix_features(model, x, block)
    t = tail(interp, block)
    out = np.zeros((len(x), directions.shape[1]))
    for j, v in enumerate(directions.T):
        step = v.reshape(a.shape[1:]) if features == "full" else v
        hi = t.predict((a + eps * step).astype(np.float32), verbose=0)
        lo = t.predict((a - eps * step).astype(np.float32), verbose=0)
        out[:, j] = (log_prob(hi, cls) - log_prob(lo, cls)) / (2 * eps)
    return out


@pytest.mark.parametrize("features", ["pooled", "full"])
def test_directional_derivatives_equal_finite_differences(setup, features):
    model, interp, x, y, *_ = setup
    rng = np.random.default_rng(3)
    dims = [6, 5] if features == "pooled" else [8 * 8 * 6, 4 * 4 * 5]
    dirs = [rng.normal(size=(d, 3)) for d in dims]
    dirs = [d / np.linalg.norm(d, axis=0) for d in dirs]
    samples, member, per_block = cc.directional_derivatives(interp, x[:12], dirs, y[:12], features=features,
                                                            batch_size=5)
    np.testing.assert_array_equal(samples, np.arange(12))
    np.testing.assert_array_equal(member.argmax(axis=1), y[:12])
    for block, d, s in zip(BLOCKS, dirs, per_block):
        fd = finite_differences(interp, model, x[:12], y[:12], block, d, features, eps=1e-2 if features == "pooled"
                                else 1e-1)
        assert_not_all_zero(fd)
        np.testing.assert_allclose(s, fd, rtol=2e-2, atol=2e-4 * np.abs(fd).max())


def test_tcav_scores_and_magnitudes_equal_those_of_finite_differences(setup):
    model, interp, x, y, pool, concepts, res = setup
    K = 3
    for i, block in enumerate(BLOCKS):
        dirs = res.directions[i].reshape(-1, res.directions[i].shape[-1]).T  # (D, C*R)
        fd = finite_differences(interp, model, x, y, block, dirs, "pooled")
        for k in range(K):
            s = fd[y == k]
            score = (s > 0).mean(axis=0).reshape(len(concepts), -1)
            magnitude = s.mean(axis=0).reshape(len(concepts), -1)
            clear = np.all(np.abs(s) > 1e-3 * np.abs(fd).max(), axis=0).reshape(score.shape)  # no sign in doubt
            np.testing.assert_array_equal(res.scores[:, i, k][clear], score[clear])
            np.testing.assert_allclose(res.magnitudes[:, i, k], magnitude, rtol=2e-2, atol=1e-4)
    assert 0 < np.mean(res.scores) < 1


def test_every_block_and_cav_from_one_forward_and_backward_pass_per_batch(setup, monkeypatch):
    model, interp, x, y, pool, concepts, _ = setup
    calls = []
    real = cc.make_input_gradient

    def spy(m, loss_fn):
        f = real(m, loss_fn)

        def counted(arrays, labels):
            calls.append(len(arrays[1]))
            return f(arrays, labels)

        return counted

    monkeypatch.setattr(cc, "make_input_gradient", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        interp.concepts(concepts, x, y, random=pool, n_random=3, random_state=0, batch_size=16, bootstrap=0)
    assert calls == [16, 16, 13]  # 45 inputs: one gradient call per batch for 2 blocks x (2 concepts x 3 + 6) CAVs


# ----------------------------------------------------------------------
# Significance
# ----------------------------------------------------------------------
def test_the_t_tests_equal_scipy():
    rng = np.random.default_rng(4)
    concept = rng.random(20)
    grid = rng.random((20, 20))
    np.fill_diagonal(grid, np.nan)
    p, t = cc.tcav_pvalues(concept, grid, "tcav")
    ref = stats.ttest_ind(concept, grid[0][np.isfinite(grid[0])])
    assert p == pytest.approx(ref.pvalue, rel=1e-12) and t == pytest.approx(ref.statistic, rel=1e-12)
    means = np.nanmean(grid, axis=1)
    p, t = cc.tcav_pvalues(concept, grid, "sets")
    ref = stats.ttest_ind_from_stats(concept.mean(), 0.0, 1, means.mean(), means.std(ddof=1), len(means))
    assert p == pytest.approx(ref.pvalue, rel=1e-12) and t == pytest.approx(ref.statistic, rel=1e-12)
    assert np.isnan(cc.tcav_pvalues(concept, np.ones((5, 5)), "sets")[0])  # no spread: no test


def test_the_result_p_values_equal_scipy_on_its_own_scores(setup):
    *_, res = setup
    C, L, K = res.p_values_sign.shape
    for c in range(C):
        for i in range(L):
            for k in range(K):
                for vals, grid, p in ((res.scores, res.random_scores, res.p_values_sign),
                                      (res.magnitudes, res.random_magnitudes, res.p_values_magnitude)):
                    means = np.nanmean(grid[c, i, k], axis=1)
                    ref = stats.ttest_ind_from_stats(vals[c, i, k].mean(), 0.0, 1, means.mean(), means.std(ddof=1),
                                                     len(means)).pvalue
                    assert p[c, i, k] == pytest.approx(ref, rel=1e-10, nan_ok=True)
    holm = holm_reference(res.p_values_magnitude.ravel()).reshape(res.p_values_magnitude.shape)
    np.testing.assert_allclose(res.p_adjusted_magnitude, holm, rtol=1e-12)
    np.testing.assert_array_equal(res.significant, res.p_adjusted_magnitude < res.alpha)


def holm_reference(p):
    """Holm (1979) step-down adjusted p-values, written out as a loop."""
    p = np.asarray(p, float)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    out = np.full(p.shape, np.nan)
    order = ok[np.argsort(p[ok], kind="mergesort")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def test_the_corrections():
    rng = np.random.default_rng(5)
    p = rng.random(30) ** 3
    p[4] = np.nan
    np.testing.assert_allclose(cc.adjust_pvalues(p, "holm"), holm_reference(p), rtol=1e-12)
    bh = cc.adjust_pvalues(p, "fdr_bh")
    np.testing.assert_allclose(bh[np.isfinite(p)], stats.false_discovery_control(p[np.isfinite(p)]), rtol=1e-12)
    np.testing.assert_allclose(cc.adjust_pvalues(p, "bonferroni")[np.isfinite(p)],
                               np.minimum(1, 29 * p[np.isfinite(p)]), rtol=1e-12)
    assert np.isnan(cc.adjust_pvalues(p, "holm")[4])


def test_reservoir_draws_every_input_with_equal_probability():
    from keras_hybrid_interp.core.data_pass import Batch

    n, size, hits = 40, 8, np.zeros(40)
    for seed in range(400):
        res = cc.Reservoir([], size, np.random.default_rng(seed))
        for start in range(0, n, 7):
            xb = np.arange(start, min(start + 7, n), dtype=np.float32)[:, None]
            res.update(Batch(xb, None, start, {}))
        assert len(set(res.index)) == size
        hits[res.index] += 1
    freq = hits / 400
    assert np.all(np.abs(freq - size / n) < 0.08), freq  # each input is kept with probability size / n


# ----------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------
def test_the_frame_and_the_plots(setup):
    model, interp, x, y, pool, concepts, res = setup
    frame = res.to_frame()
    for col in ("concept", "block", "class", "accuracy", "tcav_score", "p_value", "significant", "tcav_magnitude",
                "p_value_magnitude", "significant_magnitude", "p_value_sign", "significant_sign"):
        assert col in frame
    assert len(frame) == 2 * 2 * 3
    assert set(res.accuracy_frame().columns) >= {"accuracy", "accuracy_low", "control_accuracy", "separable"}
    top = res.top_filters(2)
    assert len(top) == 2 * 2 * 2 and top.groupby(["concept", "block"])["weight"].is_monotonic_decreasing.all()
    for kind in ("tcav", "accuracy"):
        fig, ax = plt.subplots()
        assert res.plot(ax=ax, kind=kind) is ax and (ax.patches or ax.lines)
    ax = res.plot(kind="tcav", statistic="sign")
    faded = [p for p in ax.patches if p.get_hatch()]
    assert len(faded) == int(np.sum(~res.significant_sign[:, :, 0]))  # every insignificant bar is hatched
    maps = cc.concept_maps(interp, res, x[0])
    assert maps.maps[0].shape == (2, 8, 8) and maps.maps[1].shape == (2, 4, 4)
    assert maps.plot().axes
    plt.close("all")
    # The original test's one row of random sets has no spread: its frame's random sd is NaN, silently
    # (no NumPy "Degrees of freedom <= 0" warning leaks), and every other column equals NumPy's nan-statistics.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        one_row = interp.concepts({"bright": concepts["bright"]}, x, y, random=pool, n_random=4, random_state=0,
                                  bootstrap=0, controls=0, test="tcav")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = one_row.to_frame()
    assert frame["random_score_sd"].isna().all() and frame["random_magnitude_sd"].isna().all()
    np.testing.assert_allclose(frame["tcav_score_std"].to_numpy(),
                               np.nanstd(one_row.scores, axis=-1, ddof=1).reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(frame["tcav_magnitude"].to_numpy(),
                               np.nanmean(one_row.magnitudes, axis=-1).reshape(-1), rtol=1e-12)


def test_concept_maps_average_to_the_probe_logit(setup):
    model, interp, x, y, pool, concepts, res = setup
    maps = cc.concept_maps(interp, res, x[3])
    for i, block in enumerate(BLOCKS):
        g = prefix_features(model, x[3:4], block).mean(axis=(1, 2))[0]
        logit = g @ res.mean_directions[i].T + res.mean_intercepts[i]
        np.testing.assert_allclose(maps.maps[i].reshape(2, -1).mean(axis=1), logit, rtol=1e-5, atol=1e-6)


def test_same_seed_same_result_and_relative_tcav(setup):
    model, interp, x, y, pool, concepts, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        a = interp.concepts(concepts, x, y, random=pool, n_random=3, random_state=1, bootstrap=20,
                            relative=[("bright", "red")])
        b = interp.concepts(concepts, x, y, random=pool, n_random=3, random_state=1, bootstrap=20,
                            relative=[("bright", "red")])
    import pandas as pd

    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)
    assert a.concepts[-1] == "bright vs red" and a.relative == (False, False, True)
    assert np.all(np.isfinite(a.p_values_magnitude[2]))


# ----------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------
def test_bad_inputs_are_refused_clearly(setup):
    model, interp, x, y, pool, concepts, _ = setup
    bright = concepts["bright"]
    cases = [
        ({"empty": bright[:0]}, {}, ValueError, r"`concepts\['empty'\]` is empty"),
        ({"wrong": bright[:, :4]}, {}, ValueError, r"concepts\['wrong'\]"),
        ({"few": bright[:9]}, {}, ValueError, r"`concepts\['few'\]` has 9 examples.*at least 10"),
        ([("a", bright), ("a", bright)], {}, ValueError, r"`concepts`.*'a' repeats"),
        ({"in_pool": pool[:12]}, {"random": pool}, ValueError, r"`random` shares 12 input.*'in_pool'"),
        ({}, {}, ValueError, r"`concepts` is empty"),
        ({"a": bright}, {"features": "maps"}, ValueError, r"`features`"),
        ({"a": bright}, {"test": "welch"}, ValueError, r"`test`"),
        ({"a": bright}, {"relative": [("a", "b")]}, ValueError, r"`relative`.*'b'"),
        ({"a": bright}, {"blocks": ["nope"]}, ValueError, r"`blocks`.*'nope'.*c1"),
    ]
    for concepts_arg, kw, exc, pattern in cases:
        kw = {"random": pool, "n_random": 3, **kw}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InterpretationWarning)
            with pytest.raises(exc, match=pattern):
                interp.concepts(concepts_arg, x, y, **kw)
    with pytest.raises(TypeError, match=r"`concepts` must be a dict"):
        interp.concepts(bright, x, y)
    with pytest.warns(InterpretationWarning, match=r"only 12 examples"):
        interp.concepts({"small": bright[:12]}, x, y, random=pool, n_random=3, bootstrap=0)


# ----------------------------------------------------------------------
# Captum (torch backend only)
# ----------------------------------------------------------------------
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="Captum's TCAV runs on torch models")
def test_tcav_scores_equal_captums_with_the_same_cav(setup, tmp_path):
    import torch
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier

    model, interp, x, y, pool, concepts, res = setup
    held = {}

    class Fixed(Classifier):  # hands Captum our CAV: concept id 0 is row 0
        def __init__(self):
            pass

        def train_and_eval(self, dataloader, **kwargs):
            return {"accs": torch.tensor(1.0)}

        def weights(self):
            return torch.tensor(np.stack([held["cav"], -held["cav"]]), dtype=torch.float32)

        def classes(self):
            return [0, 1]

    def net_for(block):
        prefix = keras.Model(model.input, model.get_layer(block).output)
        head = tail(interp, block)

        class Net(torch.nn.Module):
            """log p(class) of the Keras model, with a per-filter shift added at every position of the block's
            map exposed as a module: Captum's layer gradient there is the pooled directional derivative."""

            def __init__(self):
                super().__init__()
                self.shift = torch.nn.Identity()

            def forward(self, inp):
                a = prefix(inp)
                d = self.shift(a.mean(dim=(1, 2)) * 0.0)
                return torch.log(head(a + d[:, None, None, :]))

        return Net()

    ours, theirs = [], []
    for i, block in enumerate(BLOCKS):
        net = net_for(block)
        for c, name in enumerate(concepts):
            for r in range(res.scores.shape[-1]):
                held["cav"] = res.directions[i][c, r]
                tcav = TCAV(net, layers=["shift"], classifier=Fixed(), save_path=str(tmp_path / f"{block}_{c}_{r}"))
                sets = [[Concept(0, name, iter([torch.tensor(concepts[name])])),
                         Concept(1, "random", iter([torch.tensor(pool[:16])]))]]
                for k in range(3):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out = tcav.interpret(torch.tensor(x[y == k]), sets, target=k)["0-1"]["shift"]
                    theirs.append((float(out["sign_count"][0]), float(out["magnitude"][0])))
                    ours.append((res.scores[c, i, k, r], res.magnitudes[c, i, k, r]))
    ours, theirs = np.array(ours), np.array(theirs)
    np.testing.assert_array_equal(ours[:, 0], theirs[:, 0])  # the same fraction of the same inputs
    np.testing.assert_allclose(ours[:, 1], theirs[:, 1], rtol=1e-4, atol=1e-7)
    # This model's gradients of a class point one way (every score is 0 or 1): both occur, and the magnitudes spread.
    assert len(np.unique(ours[:, 0])) >= 2 and np.ptp(ours[:, 1]) > 0


# ----------------------------------------------------------------------
# Planted ground truth and the false-positive rate (slow)
# ----------------------------------------------------------------------
def planted_model(size=16, seed=0):
    """Class A (1) images carry horizontal stripes, class B (0) are solid; a tiny CNN trained on them.

    Returns the model and held-out inputs of both classes."""
    from keras_hybrid_interp.datasets import make_synthetic

    x, y = make_synthetic(3000, factor="texture", image_size=size, random_state=seed)
    keep = np.flatnonzero(y <= 1)[:1000]  # texture 0: solid (B), 1: horizontal stripes (A)
    x, y = x[keep], y[keep]
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = layers.MaxPooling2D(name="pool1")(h)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(name="pool2")(h)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, layers.Dense(2, activation="softmax", name="head")(h), name="planted")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:800], y[:800], epochs=6, batch_size=32, verbose=0)
    assert model.evaluate(x[800:], y[800:], verbose=0)[1] > 0.95
    return model, x[800:900], y[800:900]


@pytest.fixture(scope="module")
def planted():
    return planted_model()


def test_planted_stripes_are_significant_for_their_class_only(planted):
    """Stripes matter for class A from where its probe separates them; a random "concept" nowhere; not for B."""
    from keras_hybrid_interp.datasets import make_synthetic, make_texture_concept

    model, x, y = planted
    interp = HybridInterpreter(model)
    stripes = make_texture_concept(60, texture="hstripes", image_size=16, random_state=3001)
    random_concept, _ = make_synthetic(60, factor="texture", image_size=16, random_state=5001)
    pool, _ = make_synthetic(1000, factor="texture", image_size=16, random_state=101)  # the random sets' world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        res = interp.concepts({"stripes": stripes, "random": random_concept}, x, y, random=pool, random_state=1,
                              bootstrap=200)
    A, B = res.classes.index("1"), res.classes.index("0")
    first = res.first_separable_block("stripes")
    assert first is not None and res.first_separable_block("random") is None
    i = res.blocks.index(first)
    assert res.significant[0, i, A] and res.magnitudes[0, i, A].mean() > 0 and res.tcav_scores[0, i, A] > 0.5
    assert not res.significant[1].any()  # the random "concept" is significant nowhere
    assert np.all((res.tcav_scores[0, :, B] < 0.5) | ~res.significant[0, :, B])
    assert np.all(res.accuracy[0] > res.accuracy[1])  # represented at every block, unlike the random set


@pytest.mark.slow
def test_a_random_concept_is_significant_in_at_most_5_percent_of_seeds(planted):
    """The false-positive rate by simulation: 100 random "concepts" drawn from the random sets' distribution.

    With 100 seeds, at most 1 significant seed keeps the one-sided 95 % upper bound of the rate below 5 %
    (Clopper-Pearson: 4.7 %). The original TCAV test (test="tcav") on the same runs is shown far above it.
    """
    from keras_hybrid_interp.datasets import make_synthetic

    model, x, y = planted
    interp = HybridInterpreter(model)
    sets = tcav = 0
    for seed in range(100):
        random_concept, _ = make_synthetic(60, factor="texture", image_size=16, random_state=20000 + seed)
        pool, _ = make_synthetic(600, factor="texture", image_size=16, random_state=30000 + seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InterpretationWarning)
            res = interp.concepts({"random": random_concept}, x, y, random=pool, random_state=seed, bootstrap=0,
                                  controls=0)
        sets += bool(res.significant.any())
        p = np.array([[cc.tcav_pvalues(res.magnitudes[0, i, k], res.random_magnitudes[0, i, k], "tcav")[0]
                       for k in range(2)] for i in range(len(res.blocks))])
        tcav += bool(np.any(cc.adjust_pvalues(p) < 0.05))
    assert sets <= 1, sets
    assert tcav >= 20, tcav  # the original test: a random set is "significant" in a large share of seeds


@pytest.mark.slow
def test_the_defaults_are_the_more_reliable_choices(planted):
    """Why features="pooled", method="logistic" and statistic="magnitude" are the defaults (definitions/concepts.md).

    On the planted model, over 3 draws of concept examples and random pools: pooled CAVs are more accurate
    on held-out examples than full-map ones and find the planted stripes for their class at least as
    often; and the sign TCAV score saturates (random directions already score near 0 or 1), so its test
    finds the planted stripes nowhere while the magnitude's test does. (How much a concept's CAVs agree
    from one random set to the next is reported, not asserted: pooled ones agree more at two of the three
    blocks, less at the middle one, docs/definitions/concepts.md.)
    """
    from keras_hybrid_interp.datasets import make_synthetic, make_texture_concept

    model, x, y = planted
    interp = HybridInterpreter(model)
    found = {"pooled": 0, "full": 0}
    acc = {"pooled": [], "full": []}
    sign_found = 0
    for seed in range(3):
        stripes = make_texture_concept(60, texture="hstripes", image_size=16, random_state=4000 + seed)
        pool, _ = make_synthetic(1000, factor="texture", image_size=16, random_state=200 + seed)
        for features in ("pooled", "full"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InterpretationWarning)
                res = interp.concepts({"stripes": stripes}, x, y, random=pool, random_state=seed, features=features,
                                      bootstrap=200)
            A = res.classes.index("1")
            found[features] += int(np.any(res.significant[0, :, A] & (res.magnitudes[0, :, A].mean(axis=-1) > 0)))
            acc[features].append(res.accuracy[0])
            if features == "pooled":
                sign_found += int(np.any(res.significant_sign[0]))
    assert np.mean(acc["pooled"]) > np.mean(acc["full"])
    assert found["pooled"] == 3 and found["pooled"] >= found["full"]
    assert sign_found == 0


def _chain(rank):
    conv, pool = {1: (layers.Conv1D, layers.AveragePooling1D), 3: (layers.Conv3D, layers.AveragePooling3D)}[rank]
    shape = {1: (16, 2), 3: (6, 6, 6, 1)}[rank]
    keras.utils.set_random_seed(2)
    inp = keras.Input(shape)
    h = conv(4, 3, padding="same", activation="tanh", name="c1")(inp)
    h = pool(2, name="p1")(h)
    h = conv(5, 3, padding="same", activation="tanh", name="c2")(h)
    h = (layers.GlobalAveragePooling1D if rank == 1 else layers.GlobalAveragePooling3D)(name="gap")(h)
    return keras.Model(inp, layers.Dense(2, activation="softmax", name="head")(h)), shape


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("features", ["pooled", "full"])
def test_signals_and_volumes(rank, features):
    """1-D and 3-D CNNs: directional derivatives equal finite differences, and the analysis runs end to end."""
    model, shape = _chain(rank)
    rng = np.random.default_rng(7)
    x = rng.random((20,) + shape, dtype=np.float32)
    y = np.arange(20) % 2
    interp = HybridInterpreter(model, BLOCKS)
    block = "c2"
    size = 5 if features == "pooled" else int(np.prod(model.get_layer(block).output.shape[1:]))
    d = rng.normal(size=(size, 2))
    d /= np.linalg.norm(d, axis=0)
    _, _, (s,) = cc.directional_derivatives(interp, x, [d], y, blocks=[block], features=features)
    a = prefix_features(model, x, block)
    t = tail(interp, block)
    eps = 1e-2
    for j in range(2):
        step = d[:, j] if features == "pooled" else d[:, j].reshape(a.shape[1:])
        fd = (log_prob(t.predict((a + eps * step).astype(np.float32), verbose=0), y)
              - log_prob(t.predict((a - eps * step).astype(np.float32), verbose=0), y)) / (2 * eps)
        assert_not_all_zero(fd)
        np.testing.assert_allclose(s[:, j], fd, rtol=2e-2, atol=2e-4 * np.abs(fd).max())
    concept = np.clip(rng.random((12,) + shape, dtype=np.float32) + 0.3, 0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        res = interp.concepts({"high": concept}, x, y, n_random=3, random_state=0, features=features, bootstrap=20)
        maps = cc.concept_maps(interp, res, x[0])
    assert np.all(np.isfinite(res.magnitudes))
    assert maps.maps[0].shape[1:] == tuple(model.get_layer("c1").output.shape[1:-1])
    assert maps.plot().axes
    plt.close("all")


def test_a_nested_backbone():
    from models import nested_model

    keras.utils.set_random_seed(3)
    model = nested_model(input_shape=(12, 12, 3))
    rng = np.random.default_rng(8)
    x = rng.random((40, 12, 12, 3), dtype=np.float32)
    y = np.arange(40) % 3
    interp = HybridInterpreter(model)
    assert any("/" in b for b in interp.block_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        res = interp.concepts({"high": np.clip(rng.random((12, 12, 12, 3), dtype=np.float32) + 0.3, 0, 1)}, x, y,
                              n_random=3, random_state=0, bootstrap=20)
    assert res.blocks == tuple(interp.block_names)
    assert np.all(np.isfinite(res.magnitudes)) and np.all(np.isfinite(res.accuracy))
