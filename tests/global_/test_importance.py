import numpy as np
import pytest
from scipy.stats import spearmanr

import keras

from keras_hybrid_interp.core import data_pass as _pass
from keras_hybrid_interp.core.data import DataStream
from keras_hybrid_interp.core.engine import TailEngine
from keras_hybrid_interp.core.perturbation import Job, job_permutation
from keras_hybrid_interp.core.reducers import FrontierCache
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer

from _models_global import (
    Perturb,
    assert_state_equal,
    full_model_with_perturbation,
    gap_head_model,
    ignored_filter_model,
    model_state,
    planted_data,
    planted_model,
    residual_model,
)
from oracles import assert_not_all_zero

METHODS = ["permutation", "ablation", "taylor"]


def _data(n=48, shape=(12, 12, 3), seed=0, classes=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, classes, n)


def _cache(eng, stream):
    """The tail engine's cache, filled by the one data pass."""
    red = FrontierCache(eng)
    _pass.run(eng.graph, stream, [red])
    return red.result()


# ----------------------------------------------------------------------
# The tail engine equals a full-model re-run (inside a residual block)
# ----------------------------------------------------------------------
@pytest.mark.parametrize("ppe,chunk", [(1, None), (3, None), ("auto", None), (2, 6), ("auto", 9)])
def test_tail_equals_full_rerun_inside_residual_block(ppe, chunk):
    model = residual_model()
    x, _ = _data(n=20)
    ga = GlobalAnalyzer(model)
    key = ga.graph.resolve("res_conv1")
    eng = TailEngine(ga.graph, key)
    # The cut inside the block is crossed by the skip connection.
    assert ga.graph.resolve("stem_pool") in eng.frontier
    cache = _cache(eng, DataStream(x, batch_size=7))
    c = eng.channels
    perms = {ch: job_permutation(123, ch, 0, len(x)) for ch in range(c)}
    jobs = [Job(np.array([ch]), "fill", fill=np.float32(0)) for ch in range(c)]
    jobs += [Job(np.array([ch]), "permute", perm=perms[ch]) for ch in range(c)]
    jobs.append(Job(np.array([1, 4]), "permute", perm=perms[0]))
    # ``chunk`` shrinks the memory budget so that the samples are split into padded chunks.
    budget = {} if chunk is None else {"memory_budget": eng.per_sample_bytes() * chunk}
    if chunk is not None:
        p, b = eng.plan(len(x), len(jobs), ppe, **budget)
        assert b < len(x)
    got = eng.outputs(cache, jobs, perturbations_per_eval=ppe, **budget)

    refs = []
    for ch in range(c):
        refs.append(full_model_with_perturbation(ga.graph, key, Perturb([ch], c)))
    for ch in range(c):
        refs.append(full_model_with_perturbation(ga.graph, key, Perturb([ch], c, perm=perms[ch])))
    refs.append(full_model_with_perturbation(ga.graph, key, Perturb([1, 4], c, perm=perms[0])))
    # Bit-identical on TensorFlow and torch, whose CPU kernels give a sample the same
    # result whatever the batch size. On JAX, XLA:CPU hands a reduction such as the
    # global average pooling to YNNPACK only from a batch size on (15 here), so padded
    # chunks of a few samples (``chunk``) and the 20-sample re-run sum in different
    # orders: 3 ulp seen, and bit-identical with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
    # (see README, Backends). Unchunked passes (20 or more samples) stay bit-identical on JAX.
    # On some CPUs (an AMD EPYC here) TensorFlow's kernels are not batch-size invariant
    # either: stacking perturbations (a batch of ppe x 20) moves a few outputs by 1 ulp.
    # One perturbation per pass over all samples is the full re-run's own batch.
    bit_exact = ppe == 1 and chunk is None
    for j, ref in enumerate(refs):
        expected = ref.predict_on_batch(x)  # one batch: the permutation spans all samples
        if bit_exact:
            np.testing.assert_array_equal(got[j], expected)
        else:
            np.testing.assert_array_max_ulp(got[j], expected, maxulp=4)
    # And the perturbation mattered (the check is not vacuous).
    assert not np.array_equal(got[0], model.predict_on_batch(x))


def test_importance_equals_full_rerun_scores():
    model = residual_model()
    x, y = _data(n=32)
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance(x, y, block="res_conv1", n_repeats=2, random_state=7, scoring="loss")
    g = ga.graph
    key = g.resolve("res_conv1")
    base = model.predict_on_batch(x)

    def neg_loss(p):
        return np.mean(np.log(np.clip(p[np.arange(len(y)), y].astype(np.float64), 1e-7, 1)))

    # the baseline runs in stacked passes shaped like the perturbations' (see TailEngine.baseline_outputs)
    assert res.baseline_score == pytest.approx(neg_loss(base), abs=1e-6)
    for ch in range(6):
        for r in range(2):
            perm = job_permutation(res.random_state, ch, r, len(x))
            ref = full_model_with_perturbation(g, key, Perturb([ch], 6, perm=perm)).predict_on_batch(x)
            # Stacked tail passes may differ from the full re-run by an ulp (see above).
            assert res.importances[ch, r] == pytest.approx(neg_loss(base) - neg_loss(ref), abs=1e-6)
    abl = ga.filter_importance(x, y, block="res_conv1", method="ablation", scoring="loss")
    for ch in range(6):
        ref = full_model_with_perturbation(g, key, Perturb([ch], 6)).predict_on_batch(x)
        assert abl.importances[ch, 0] == pytest.approx(neg_loss(base) - neg_loss(ref), abs=1e-6)


def test_mean_ablation_uses_dataset_mean_map():
    model = residual_model()
    x, y = _data(n=24)
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance(x, y, block="res_out", method="ablation", ablation_value="mean", scoring="loss")
    g = ga.graph
    key = g.resolve("res_out")
    act = g.build([key]).predict_on_batch(x)
    base = model.predict_on_batch(x)

    def neg_loss(p):
        return np.mean(np.log(np.clip(p[np.arange(len(y)), y].astype(np.float64), 1e-7, 1)))

    for ch in [0, 3]:
        fill = np.zeros(act.shape[1:], dtype="float32")
        fill[..., ch] = act[..., ch].mean(axis=0, dtype=np.float64).astype("float32")
        ref = full_model_with_perturbation(g, key, Perturb([ch], 6, fill=fill)).predict_on_batch(x)
        np.testing.assert_allclose(res.importances[ch, 0], neg_loss(base) - neg_loss(ref), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------
# Oracles: an ignored filter is exactly 0, a planted filter ranks first
# ----------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_ignored_filter_has_exactly_zero_importance(method):
    model = ignored_filter_model(ignored=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 10, 10, 2)).astype("float32")
    y = rng.integers(0, 3, 40)
    ga = GlobalAnalyzer(model, blocks="block")
    seeded = {"n_repeats": 4, "random_state": 0} if method == "permutation" else {}
    for scoring in ["accuracy", "loss"] if method != "taylor" else ["loss"]:  # taylor scores its loss only
        res = ga.filter_importance(x, y, block="block", method=method, scoring=scoring, **seeded)
        assert np.all(res.importances[2] == 0.0)
        if scoring == "loss":
            others = np.delete(res.importances_mean, 2)
            assert np.all(np.abs(others) > 0)  # the others do matter


@pytest.mark.parametrize("method", METHODS)
def test_planted_filter_ranks_first(method):
    x, y = planted_data()
    ga = GlobalAnalyzer(planted_model(planted=2), blocks="block")
    seeded = {"n_repeats": 5, "random_state": 0} if method == "permutation" else {}
    res = ga.filter_importance(x, y, block="block", method=method, scoring="loss", **seeded)
    assert res.ranking[0] == 2
    if method != "taylor":  # taylor always uses the loss
        acc = ga.filter_importance(x, y, block="block", method=method, **seeded)
        assert acc.baseline_score > 0.9
        assert acc.ranking[0] == 2


def test_taylor_matches_hand_gradient_of_gap_dense_head():
    model = gap_head_model(filters=6, classes=3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 30)
    ga = GlobalAnalyzer(model, blocks="block")
    res = ga.filter_importance(x, y, block="block", method="taylor", taylor="abs_mean", batch_size=8)
    f = ga.graph.build([ga.graph.resolve("gap")]).predict_on_batch(x).astype(np.float64)
    w, b = [a.astype(np.float64) for a in model.get_layer("head").get_weights()]
    logits = f @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dldf = (p - np.eye(3)[y]) @ w.T  # dL/df, f = GAP(a); sum_hw a * dL/da = f * dL/df
    expected = np.abs(np.mean(f * dldf, axis=0))
    np.testing.assert_allclose(res.importances[:, 0], expected, rtol=2e-4, atol=1e-7)
    assert res.importances.shape == (6, 1)
    # Molchanov et al. (2019): the per-sample first-order change, squared, averaged; the default: its size.
    mol = ga.filter_importance(x, y, block="block", method="taylor", taylor="molchanov", batch_size=8)
    np.testing.assert_allclose(mol.importances[:, 0], np.mean((f * dldf) ** 2, axis=0), rtol=4e-4, atol=1e-9)
    default = ga.filter_importance(x, y, block="block", method="taylor", batch_size=8)
    assert default.taylor == "abs_per_sample"
    np.testing.assert_allclose(default.importances[:, 0], np.mean(np.abs(f * dldf), axis=0), rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(res.baseline_score, np.mean(np.log(p[np.arange(30), y])), rtol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's grad modes exist only on the torch backend")
def test_taylor_inside_torch_no_grad_and_inference_mode():
    import torch

    model = gap_head_model(filters=6, classes=3)
    x = np.random.default_rng(3).normal(size=(30, 8, 8, 3)).astype("float32")
    y = np.arange(30) % 3
    ga = GlobalAnalyzer(model, blocks="block")
    ref = ga.filter_importance(x, y, block="block", method="taylor")
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            got = ga.filter_importance(x, y, block="block", method="taylor")
        np.testing.assert_array_equal(got.importances, ref.importances)
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------
# Agreement with scikit-learn
# ----------------------------------------------------------------------
class _HeadEstimator:
    """sklearn-style classifier wrapping the Dense head on GAP features."""

    _estimator_type = "classifier"

    def __init__(self, w, b):
        self.w, self.b = w, b
        self.classes_ = np.arange(w.shape[1])

    def fit(self, X, y):  # pragma: no cover - already "fitted"
        return self

    def __sklearn_is_fitted__(self):
        return True

    def predict_proba(self, X):
        z = np.asarray(X, dtype=np.float32) @ self.w + self.b
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X):
        return np.argmax(self.predict_proba(X), axis=1)

    def score(self, X, y):
        return float(np.mean(self.predict(X) == y))

    def get_params(self, deep=True):
        return {}

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags
        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())


def test_agrees_with_sklearn_permutation_importance():
    from sklearn.inspection import permutation_importance

    model = gap_head_model(filters=8, classes=3, seed=1)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8, 8, 3)).astype("float32")
    y = np.argmax(model.predict_on_batch(x), axis=1)
    flip = rng.random(300) < 0.15
    y[flip] = rng.integers(0, 3, flip.sum())
    ga = GlobalAnalyzer(model, blocks="block")
    ours = ga.filter_importance(x, y, block="block", n_repeats=20, random_state=0, scoring="loss")
    feats = ga.graph.build([ga.graph.resolve("gap")]).predict_on_batch(x)
    w, b = model.get_layer("head").get_weights()
    ref = permutation_importance(_HeadEstimator(w, b), feats, y, scoring="neg_log_loss", n_repeats=20,
                                 random_state=0)
    rho = spearmanr(ours.importances_mean, ref.importances_mean).statistic
    assert rho >= 0.9, (rho, ours.importances_mean, ref.importances_mean)
    np.testing.assert_allclose(ours.baseline_score, -__import__("sklearn.metrics").metrics.log_loss(
        y, _HeadEstimator(w, b).predict_proba(feats), labels=[0, 1, 2]), rtol=1e-5)


# ----------------------------------------------------------------------
# Reproducibility and batching
# ----------------------------------------------------------------------
def test_random_state_and_perturbations_per_eval():
    model = residual_model()
    x, y = _data(n=40)
    ga = GlobalAnalyzer(model)
    a = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=11, scoring="loss")
    b = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=11, scoring="loss",
                             perturbations_per_eval=1)
    c = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=11, scoring="loss",
                             perturbations_per_eval=4, batch_size=9)
    d = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=12, scoring="loss")
    # The same permutations whatever the stacking; the stacking changes the tail's batch shape,
    # which moves float32 outputs by an ulp on kernels that are not batch-size invariant.
    np.testing.assert_allclose(a.importances, b.importances, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.importances, c.importances, rtol=0, atol=1e-6)
    assert np.abs(a.importances - d.importances).max() > 1e-4
    gen = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=np.random.default_rng(3))
    gen2 = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(gen.importances, gen2.importances)
    # Reproducible irrespective of the global RNGs.
    np.random.seed(0)
    keras.utils.set_random_seed(99)
    e = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=11, scoring="loss")
    np.testing.assert_array_equal(a.importances, e.importances)


def _documented_permutation(random_state, group, repeat, n):
    """The module docstring's permutation of (group, repeat): ``SeedSequence(random_state, spawn_key=(g, r))``."""
    return np.random.default_rng(np.random.SeedSequence(random_state, spawn_key=(group, repeat))).permutation(n)


def test_groups_and_to_frame():
    # A random residual model scored by its loss: every importance is a real non-zero number (with
    # accuracy the untrained model's predictions never move and every value would be exactly 0).
    model = residual_model()
    x, y = _data(n=30)
    ga = GlobalAnalyzer(model)
    single = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=1, scoring="loss")
    as_groups = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=1, scoring="loss",
                                     groups=[[i] for i in range(6)])
    assert_not_all_zero(single.importances, as_groups.importances)
    np.testing.assert_array_equal(single.importances, as_groups.importances)
    groups = [[0, 1, 2], [3, 4, 5], [5]]
    grouped = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=1, groups=groups,
                                   scoring="loss")
    assert grouped.importances.shape == (3, 2)

    # Independent oracle: the full model with the group's maps moved jointly by the documented
    # permutation of (group, repeat), inserted by a test-only layer; the loss by hand.
    g = ga.graph
    key = g.resolve("res_out")
    c = g.tensors[key].shape[-1]

    def neg_loss(p):
        return np.mean(np.log(np.clip(p[np.arange(len(y)), y].astype(np.float64), 1e-7, 1)))

    base = neg_loss(model.predict_on_batch(x))
    expected = np.zeros((len(groups), 2))
    for gi, ch in enumerate(groups):
        for r in range(2):
            perm = _documented_permutation(1, gi, r, len(x))
            ref = full_model_with_perturbation(g, key, Perturb(ch, c, perm=perm)).predict_on_batch(x)
            expected[gi, r] = base - neg_loss(ref)
    assert_not_all_zero(expected, grouped.importances)
    np.testing.assert_allclose(grouped.importances, expected, rtol=0, atol=1e-6)
    # The singleton group [5] is filter 5 shuffled by group 2's permutations, not filter 5's own.
    assert np.abs(grouped.importances[2] - single.importances[5]).max() > 1e-6
    # importances_mean / importances_std: over the repeats, ddof=0 (scikit-learn's permutation_importance).
    np.testing.assert_allclose(grouped.importances_mean, expected.mean(axis=1), rtol=0, atol=1e-6)
    std = np.array([np.std(expected[i], ddof=0) for i in range(len(groups))])
    assert_not_all_zero(std)
    np.testing.assert_allclose(grouped.importances_std, std, rtol=1e-4, atol=1e-7)

    df = grouped.to_frame()
    assert list(df.columns) == ["block", "method", "group", "filters", "repeat", "importance", "ci_low", "ci_high",
                                "within_noise"]
    assert len(df) == 6 and df.filters.tolist() == ["0,1,2"] * 2 + ["3,4,5"] * 2 + ["5"] * 2
    np.testing.assert_allclose(df.importance.to_numpy(), expected.ravel(), rtol=0, atol=1e-6)
    # The interval per group: mean +- t(0.975, R-1) * sd / sqrt(R), repeated on each of its rows.
    from scipy import stats

    half = stats.t.ppf(0.975, 1) * np.array([np.std(e, ddof=1) for e in expected]) / np.sqrt(2)
    np.testing.assert_allclose(df.ci_low.to_numpy(), np.repeat(expected.mean(1) - half, 2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(df.ci_high.to_numpy(), np.repeat(expected.mean(1) + half, 2), rtol=1e-4, atol=1e-6)
    assert df.within_noise.tolist() == np.repeat((expected.mean(1) - half <= 0) & (expected.mean(1) + half >= 0),
                                                 2).tolist()
    f = single.to_frame()
    assert len(f) == 12 and set(f["filter"]) == set(range(6))


def test_importances_std_uses_ddof_0_over_repeats():
    # Five repeats on a model whose filters matter: the spread is real, and ddof=0 and ddof=1 differ by
    # a factor sqrt(5/4); the reference is NumPy on permutation importances computed by hand.
    model = gap_head_model(filters=4, classes=3, seed=2)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 40)
    ga = GlobalAnalyzer(model, blocks="block")
    res = ga.filter_importance(x, y, block="block", n_repeats=5, random_state=4, scoring="loss")
    feats = ga.graph.build([ga.graph.resolve("gap")]).predict_on_batch(x).astype(np.float64)
    w, b = [a.astype(np.float64) for a in model.get_layer("head").get_weights()]

    def neg_loss(f):
        z = f @ w + b
        z = z - z.max(1, keepdims=True)
        return np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))

    expected = np.zeros((4, 5))
    for ch in range(4):
        for r in range(5):
            f = feats.copy()
            f[:, ch] = feats[_documented_permutation(4, ch, r, len(x)), ch]  # GAP commutes with the shuffle
            expected[ch, r] = neg_loss(feats) - neg_loss(f)
    assert_not_all_zero(expected, res.importances)
    np.testing.assert_allclose(res.importances, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.importances_std, np.std(expected, axis=1, ddof=0), rtol=1e-3, atol=1e-7)
    assert np.abs(np.std(expected, axis=1, ddof=1) - res.importances_std).max() > 1e-4


def test_no_labels_scores_agreement_with_model():
    model = residual_model()
    x, _ = _data(n=30)
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance(x, None, block="res_out", n_repeats=2, random_state=0)
    assert res.baseline_score == 1.0
    own = np.argmax(model.predict_on_batch(x), axis=1)
    with_own = ga.filter_importance(x, own, block="res_out", n_repeats=2, random_state=0)
    np.testing.assert_array_equal(res.importances, with_own.importances)


def test_datasets_give_the_same_result():
    import tensorflow as tf

    model = residual_model()
    x, y = _data(n=30)
    ga = GlobalAnalyzer(model)
    ref = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=0, scoring="loss")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    got = ga.filter_importance(ds, None, block="res_out", n_repeats=2, random_state=0, scoring="loss")
    np.testing.assert_array_equal(ref.importances, got.importances)

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i * 10:(i + 1) * 10], y[i * 10:(i + 1) * 10]

    got2 = ga.filter_importance(Seq(), None, block="res_out", n_repeats=2, random_state=0, scoring="loss")
    np.testing.assert_array_equal(ref.importances, got2.importances)
    capped = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=0, max_samples=10)
    assert capped.n_samples == 10


def test_callable_scoring_and_dead_filter_warning():
    model = ignored_filter_model()
    # Kill filter 0 of the block: constant zero after the ReLU.
    conv = model.get_layer("block")
    k, b = conv.get_weights()
    k[..., 0] = 0
    b[0] = -1.0
    conv.set_weights([k, b])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 10, 10, 2)).astype("float32")
    y = rng.integers(0, 3, 40)
    ga = GlobalAnalyzer(model, blocks="block")
    calls = []

    def my_score(y_true, proba):
        calls.append(proba.shape)
        return float(np.mean(np.argmax(proba, 1) == y_true))

    with pytest.warns(UserWarning, match="dead"):
        res = ga.filter_importance(x, y, block="block", scoring=my_score, n_repeats=2, random_state=0)
    ref = ga.filter_importance(x, y, block="block", scoring="accuracy", n_repeats=2, random_state=0)
    np.testing.assert_array_equal(res.importances, ref.importances)
    assert calls[0] == (40, 3)
    assert res.dead_filters.tolist() == [0]
    assert np.all(res.importances[0] == 0)


def test_sigmoid_output():
    inp = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="block")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(30, 8, 8, 2)).astype("float32")
    p = model.predict_on_batch(x)[:, 0]
    y = (p > np.median(p)).astype(int)
    ga = GlobalAnalyzer(model, blocks="block")
    res = ga.filter_importance(x, y, block="block", scoring="loss", method="ablation")
    expect = np.mean(np.log(np.where(y == 1, p, 1 - p).astype(np.float64)))
    np.testing.assert_allclose(res.baseline_score, expect, rtol=1e-6)
    t = ga.filter_importance(x, y, block="block", method="taylor")
    assert np.all(np.isfinite(t.importances))


# ----------------------------------------------------------------------
# Errors and the model stays untouched
# ----------------------------------------------------------------------
def test_errors():
    model = residual_model()
    x, y = _data(n=10)
    ga = GlobalAnalyzer(model)
    with pytest.raises(ValueError, match="at least 2 samples"):
        ga.filter_importance(x[:1], y[:1], block="res_out")
    with pytest.raises(ValueError, match="method"):
        ga.filter_importance(x, y, block="res_out", method="shap")
    with pytest.raises(ValueError, match="scoring"):
        ga.filter_importance(x, y, block="res_out", scoring="f1")
    with pytest.raises(ValueError, match="groups\\[1\\]"):
        ga.filter_importance(x, y, block="res_out", groups=[[0], [9]])
    with pytest.raises(TypeError, match="groups"):
        ga.filter_importance(x, y, block="res_out", groups=np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="n_repeats"):
        ga.filter_importance(x, y, block="res_out", n_repeats=0)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        ga.filter_importance(x, y, block="res_out", perturbations_per_eval=0)
    with pytest.raises(TypeError, match="random_state"):
        ga.filter_importance(x, y, block="res_out", random_state="seed")
    with pytest.raises(ValueError, match="no layer named 'nope'.*feature-map output"):
        ga.filter_importance(x, y, block="nope")
    with pytest.raises(ValueError, match="not a feature map"):
        ga.filter_importance(x, y, block="gap")
    with pytest.raises(ValueError, match="labels outside"):
        ga.filter_importance(x, y + 10, block="res_out")
    with pytest.raises(ValueError, match="callable"):
        ga.filter_importance(x, y, block="res_out", method="taylor", scoring=lambda a, b: 0.0)
    with pytest.raises(ValueError, match="sample shape"):
        ga.filter_importance(x[:, :8], y, block="res_out")


def test_model_unchanged_by_every_method():
    model = residual_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.get_layer("stem").trainable = False
    x, y = _data(n=24)
    pred = model.predict_on_batch(x)
    before = model_state(model)
    ga = GlobalAnalyzer(model)
    for method in METHODS:
        seeded = {"n_repeats": 2, "random_state": 0} if method == "permutation" else {}
        ga.filter_importance(x, y, block="res_conv1", method=method, **seeded)
    ga.filter_correlation(x, block="res_out")
    ga.filter_class_association(x, y, block="res_out")
    ga.layer_similarity(x)
    assert_state_equal(model, before, x)
    np.testing.assert_array_equal(pred, model.predict_on_batch(x))


def test_a_constant_non_zero_filter_has_zero_permutation_and_mean_ablation_importance():
    # Filter 0 of "block" is dead: ReLU(0 * x + 1) = 1 everywhere. Permuting identical maps, or
    # replacing the map by its mean, changes nothing; replacing it by 0 does (the head reads it).
    inp = keras.Input((10, 10, 2))
    block = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block")
    h = block(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    m = keras.Model(inp, out)
    k, b = block.get_weights()
    k[..., 0], b[0] = 0.0, 1.0
    block.set_weights([k, b])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 10, 10, 2)).astype("float32"), rng.integers(0, 3, 40)
    ga = GlobalAnalyzer(m, blocks="block")
    with pytest.warns(UserWarning, match="dead filter"):
        perm = ga.filter_importance(x, y, block="block", n_repeats=3, random_state=0, scoring="loss")
    assert perm.dead_filters.tolist() == [0] and np.all(perm.importances[0] == 0.0)
    with pytest.warns(UserWarning, match="dead filter"):
        mean = ga.filter_importance(x, y, block="block", method="ablation", ablation_value="mean", scoring="loss")
    assert mean.importances[0, 0] == 0.0
    with pytest.warns(UserWarning, match="dead filter"):
        zero = ga.filter_importance(x, y, block="block", method="ablation", scoring="loss")
    assert zero.importances[0, 0] != 0.0  # the documented case: a constant 1 replaced by 0
