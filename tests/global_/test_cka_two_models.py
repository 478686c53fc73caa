"""Minibatch unbiased-HSIC CKA (Nguyen, Raghu and Kornblith 2021) and CKA between two models.

Oracles:

* a NumPy reference of the unbiased HSIC of Song et al. (2012, equation 5),
  itself checked against the U-statistic it is (sums over distinct index
  tuples, by brute force);
* with one minibatch holding all the data, the package's minibatch estimator
  equals the reference's unbiased-HSIC CKA of all samples;
* with several minibatches, it equals the reference averaged over the same
  minibatches (the documented gathering rule for short batches included);
* a model against itself: 1 on the diagonal, the square matrix of one model;
* a planted orthogonal rotation of one block's channels (a second model whose
  outputs equal the first's) leaves every CKA unchanged;
* the full estimator between two models equals ``linear_cka`` of their features;
* memory: the minibatch reducer holds no array of ``(sum C)^2`` numbers, the
  full one does.
"""

import itertools
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
from test_model_untouched import assert_same_node_lists, node_lists

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer
from keras_hybrid_interp.core import data_pass as _pass
from keras_hybrid_interp.core.graph import ModelGraph
from keras_hybrid_interp.global_.similarity import CKAMoments, MinibatchCKA, OtherModel, linear_cka

BLOCKS = ["c1", "c2", "c3"]

# The other model's automatic blocks, where a test leaves them to the package: one block.
pytestmark = pytest.mark.filterwarnings("ignore:Only one block")


# ----------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------
def hsic1(k, l_):
    """Unbiased HSIC, Song et al. (2012) eq. 5: K~, L~ are K, L with zero diagonals."""
    n = len(k)
    k, l_ = k.astype(np.float64).copy(), l_.astype(np.float64).copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    one = np.ones(n)
    return (np.trace(k @ l_) + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ l_ @ one)) / (n * (n - 3))


def hsic_u_statistic(k, l_):
    """The same quantity from its definition: E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq], each
    expectation an average over tuples of distinct indices."""
    n = len(k)
    t1 = np.mean([k[i, j] * l_[i, j] for i, j in itertools.permutations(range(n), 2)])
    t2 = np.mean([k[i, j] * l_[q, r] for i, j, q, r in itertools.permutations(range(n), 4)])
    t3 = np.mean([k[i, j] * l_[i, q] for i, j, q in itertools.permutations(range(n), 3)])
    return t1 + t2 - 2 * t3


def minibatch_cka_ref(fx, fy, batches):
    """Nguyen et al. 2021: size-weighted means over ``batches`` (lists of sample indices) of HSIC_1."""
    num = dx = dy = w = 0.0
    for idx in batches:
        x, y = fx[idx], fy[idx]
        k, l_ = x @ x.T, y @ y.T
        num += len(idx) * hsic1(k, l_)
        dx += len(idx) * hsic1(k, k)
        dy += len(idx) * hsic1(l_, l_)
        w += len(idx)
    return (num / w) / np.sqrt((dx / w) * (dy / w))


def test_reference_is_the_u_statistic_and_is_shift_invariant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3))
    y = x @ rng.normal(size=(3, 2)) + rng.normal(size=(7, 2))
    k, l_ = x @ x.T, y @ y.T
    assert hsic1(k, l_) == pytest.approx(hsic_u_statistic(k, l_), rel=1e-10)
    # For a linear kernel HSIC is ||Cov(x, y)||_F^2 in the population; the estimator does not see shifts.
    xs, ys = x + rng.normal(size=3) * 5, y - 2.0
    assert hsic1(xs @ xs.T, ys @ ys.T) == pytest.approx(hsic1(k, l_), rel=1e-9)


# ----------------------------------------------------------------------
# Tiny models
# ----------------------------------------------------------------------
def make_model(seed=0, name="model_a"):
    """c1 (ReLU conv), c2 (linear conv: its channels can be rotated), c3 (ReLU conv), GAP, softmax."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.Conv2D(5, 3, padding="same", name="c2")(h)
    h = layers.Conv2D(7, 3, padding="same", activation="relu", name="c3")(h)
    out = layers.Dense(3, activation="softmax", name="head")(layers.GlobalAveragePooling2D(name="gap")(h))
    return keras.Model(inp, out, name=name)


def rotated_copy(model, q):
    """``model`` with c2's output channels rotated by the orthogonal ``q`` and c3 undoing it: same outputs."""
    other = make_model(seed=1, name="model_b")
    other.set_weights(model.get_weights())
    w2, b2 = model.get_layer("c2").get_weights()
    other.get_layer("c2").set_weights([(w2 @ q).astype("float32"), (b2 @ q).astype("float32")])
    w3, b3 = model.get_layer("c3").get_weights()
    other.get_layer("c3").set_weights([np.einsum("ji,hwjo->hwio", q, w3).astype("float32"), b3])
    return other


def data(n=40, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype("float32")


def pooled(model, name, x):
    """Per-sample spatial means of layer ``name``, from a plain Keras model and NumPy."""
    sub = keras.Model(model.inputs, model.get_layer(name).output)
    return np.asarray(sub.predict_on_batch(x), dtype=np.float64).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def model_a():
    return make_model()


# ----------------------------------------------------------------------
# The minibatch estimator against the reference
# ----------------------------------------------------------------------
def test_one_minibatch_of_all_the_data_is_the_unbiased_cka(model_a):
    x = data(40)
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    res = ga.layer_similarity(x, batch_size=len(x))
    assert res.estimator == "minibatch" and res.n_minibatches == 1 and res.n_samples == 40
    feats = [pooled(model_a, b, x) for b in BLOCKS]
    everything = [np.arange(len(x))]
    for i in range(3):
        for j in range(3):
            assert res.values[i, j] == pytest.approx(minibatch_cka_ref(feats[i], feats[j], everything), abs=1e-6)
    np.testing.assert_allclose(np.diag(res.values), 1.0, atol=1e-12)
    np.testing.assert_array_equal(res.values, res.values.T)
    # It is not the full (biased-HSIC) estimator: the minibatch one corrects its bias.
    full = ga.layer_similarity(x, estimator="full")
    assert np.abs(full.values - res.values).max() > 1e-3
    assert full.values[0, 2] == pytest.approx(linear_cka(feats[0], feats[2]), abs=1e-6)


def test_minibatches_equal_the_reference_averaged_over_the_same_batches(model_a):
    x = data(43, seed=1)
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    res = ga.layer_similarity(x, batch_size=8)
    # Batches 8, 8, 8, 8, 8, 3: the 3 left over join the last minibatch.
    batches = [np.arange(s, s + 8) for s in range(0, 32, 8)] + [np.arange(32, 43)]
    assert res.n_minibatches == 5 and res.n_samples == 43
    feats = [pooled(model_a, b, x) for b in BLOCKS]
    for i in range(3):
        for j in range(3):
            assert res.values[i, j] == pytest.approx(minibatch_cka_ref(feats[i], feats[j], batches), abs=1e-6)
    # A different batching is a different (equally unbiased) estimate.
    assert np.abs(ga.layer_similarity(x, batch_size=len(x)).values - res.values).max() > 1e-4


class Uneven(keras.utils.PyDataset):
    """Batches of the given sizes, in order."""

    def __init__(self, x, sizes):
        super().__init__()
        self.x, self.starts = x, np.concatenate([[0], np.cumsum(sizes)])

    def __len__(self):
        return len(self.starts) - 1

    def __getitem__(self, i):
        return self.x[self.starts[i]:self.starts[i + 1]]


def test_batches_under_four_samples_are_gathered_and_a_short_tail_joins_the_last_minibatch(model_a):
    x = data(30, seed=2)
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    # 2 + 2 -> one minibatch of 4; 5; 6; 12, and the 1 + 2 at the end join it (15).
    res = ga.layer_similarity(Uneven(x, [2, 2, 5, 6, 12, 1, 2]))
    batches = [np.arange(0, 4), np.arange(4, 9), np.arange(9, 15), np.arange(15, 30)]
    assert res.n_minibatches == 4 and res.n_samples == 30
    feats = [pooled(model_a, b, x) for b in BLOCKS]
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert res.values[i, j] == pytest.approx(minibatch_cka_ref(feats[i], feats[j], batches), abs=1e-6)


def test_fewer_than_four_samples_is_refused(model_a):
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    with pytest.raises(ValueError, match="at least 4 samples"):
        ga.layer_similarity(data(3))
    assert ga.layer_similarity(data(3), estimator="full").values.shape == (3, 3)


# ----------------------------------------------------------------------
# Two models
# ----------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_a_model_against_itself_is_its_own_square_matrix(model_a, estimator):
    x = data(40)
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    own = ga.layer_similarity(x, batch_size=10, estimator=estimator)
    clone = keras.models.clone_model(model_a)
    clone.set_weights(model_a.get_weights())
    for other in (model_a, clone, GlobalAnalyzer(clone, blocks=BLOCKS)):
        two = ga.layer_similarity(x, batch_size=10, estimator=estimator, other=other, other_blocks=BLOCKS)
        assert two.blocks == two.columns == tuple(BLOCKS)
        np.testing.assert_allclose(np.diag(two.values), 1.0, atol=1e-9)
        np.testing.assert_allclose(two.values, own.values, atol=1e-9)
    assert two.models == ("model_a (this)", "model_a (other)")


def test_an_orthogonal_rotation_of_a_block_leaves_cka_unchanged(model_a):
    x = data(48, seed=3)
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(5, 5)))
    model_b = rotated_copy(model_a, q)
    np.testing.assert_allclose(model_b.predict_on_batch(x), model_a.predict_on_batch(x), atol=1e-5)
    fa, fb = pooled(model_a, "c2", x), pooled(model_b, "c2", x)
    np.testing.assert_allclose(fb, fa @ q, atol=1e-5)  # the planted rotation, and not the identity
    assert np.abs(fb - fa).max() > 0.1

    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    own = ga.layer_similarity(x, batch_size=12)
    two = ga.layer_similarity(x, batch_size=12, other=model_b, other_blocks=["c1", "c2", "c3"])
    assert two.models == ("model_a", "model_b")
    np.testing.assert_allclose(two.values, own.values, atol=1e-5)
    assert two.values[1, 1] == pytest.approx(1.0, abs=1e-5)
    batches = [np.arange(s, s + 12) for s in range(0, 48, 12)]
    fa0 = pooled(model_a, "c1", x)
    assert two.values[0, 1] == pytest.approx(minibatch_cka_ref(fa0, fb, batches), abs=1e-6)


def test_two_different_models_rectangular_against_references():
    x = data(36, seed=5)
    model_a, model_b = make_model(0), make_model(7, name="seed7")
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    mb = ga.layer_similarity(x, batch_size=36, other=model_b, other_blocks=["c2", "c3"])
    full = ga.layer_similarity(x, other=model_b, other_blocks=["c2", "c3"], estimator="full")
    assert mb.values.shape == full.values.shape == (3, 2)
    fa = [pooled(model_a, b, x) for b in BLOCKS]
    fb = [pooled(model_b, b, x) for b in ["c2", "c3"]]
    everything = [np.arange(36)]
    for i in range(3):
        for j in range(2):
            assert mb.values[i, j] == pytest.approx(minibatch_cka_ref(fa[i], fb[j], everything), abs=1e-6)
            assert full.values[i, j] == pytest.approx(linear_cka(fa[i], fb[j]), abs=1e-6)
    assert not np.allclose(mb.values[:, 0], mb.values[:, 1])

    df = mb.to_frame()
    assert list(df.columns) == ["model_i", "model_j", "block_i", "block_j", "cka"] and len(df) == 6
    assert set(df.model_i) == {"model_a"} and set(df.model_j) == {"seed7"}
    row = df[(df.block_i == "c3") & (df.block_j == "c2")]
    assert row.cka.item() == mb.values[2, 0] == mb.matrix.loc["c3", "c2"]
    assert list(mb.matrix.columns) == ["c2", "c3"]


def test_the_other_model_is_never_changed(model_a):
    x = data(24)
    other = make_model(3, name="other")
    other.get_layer("c1").trainable = False
    weights, lists = [w.copy() for w in other.get_weights()], node_lists(other)
    trainable = [(layer.name, layer.trainable) for layer in other.layers]
    GlobalAnalyzer(model_a, blocks=BLOCKS).layer_similarity(x, other=other)
    assert_same_node_lists(lists, node_lists(other))
    assert [(layer.name, layer.trainable) for layer in other.layers] == trainable
    for a, b in zip(weights, other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not other.compiled


def test_one_pass_over_the_data_for_both_models(model_a, monkeypatch):
    x = data(40)
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    calls = []
    real_run, real_forward = _pass.run, _pass.forward_taps
    monkeypatch.setattr(_pass, "run", lambda *a, **k: calls.append("run") or real_run(*a, **k))
    monkeypatch.setattr(_pass, "forward_taps", lambda *a, **k: calls.append("other") or real_forward(*a, **k))
    ga.layer_similarity(x, batch_size=10, other=make_model(2, name="b"))
    assert calls == ["run"] + ["other"] * 4  # one loop over the data; the other model once per batch


def test_bad_arguments_are_named(model_a):
    ga = GlobalAnalyzer(model_a, blocks=BLOCKS)
    x = data(8)
    with pytest.raises(ValueError, match="`estimator` must be one of"):
        ga.layer_similarity(x, estimator="exact")
    with pytest.raises(TypeError, match="`other` must be a keras.Model.*received str"):
        ga.layer_similarity(x, other="model_b")
    with pytest.raises(TypeError, match="pass `other=`"):
        ga.layer_similarity(x, other_blocks=["c1"])
    inp = keras.Input((10, 10, 3))
    wrong = keras.Model(inp, layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, name="k")(inp)), name="wrong")
    with pytest.raises(ValueError, match=r"same inputs.*\(8, 8, 3\).*'wrong' takes \(10, 10, 3\)"):
        ga.layer_similarity(x, other=wrong)
    with pytest.raises(ValueError, match="other_blocks"):
        ga.layer_similarity(x, other=make_model(1), other_blocks=["nope"])
    with pytest.raises(TypeError, match="`names` must be a pair"):
        ga.layer_similarity(x, other=make_model(1), names="ab")


# ----------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------
def arrays_of(obj):
    """Every NumPy array an object holds, through lists, tuples, dicts and the package's own objects
    (but not the model graph)."""
    out, stack, seen = [], [vars(obj)], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, np.ndarray):
            out.append(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif type(v).__module__.startswith("keras_hybrid_interp") and not isinstance(v, ModelGraph):
            stack.append(vars(v))
    return out


def wide_model():
    inp = keras.Input((6, 6, 3))
    h = layers.Conv2D(160, 3, padding="same", activation="relu", name="w1")(inp)
    h = layers.Conv2D(192, 1, activation="relu", name="w2")(h)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out, name="wide")


def test_the_minibatch_reducer_holds_no_sum_c_squared_array():
    model = wide_model()
    x = np.random.default_rng(0).random((50, 6, 6, 3), dtype=np.float32)
    ga = GlobalAnalyzer(model, blocks=["w1", "w2"])
    keys, _ = ga._similarity_blocks(["w1", "w2"])
    side = OtherModel(ga.graph, keys)  # two models: 4 blocks, sum C = 704
    sum_c = 2 * (160 + 192)
    batch = 16
    stream = ga._stream(x, batch_size=batch)
    mini, full = MinibatchCKA(ga.graph, keys, side), CKAMoments(ga.graph, keys, side)
    ga._run(stream, [mini])
    held = arrays_of(mini)
    assert held and max(a.size for a in held) <= (batch + 3) * 192  # one minibatch of one block's features
    assert mini.hsic_sum.shape == (4, 4)
    ga._run(ga._stream(x, batch_size=batch), [full])
    assert max(a.size for a in arrays_of(full)) == sum_c ** 2  # the check can fail: the full one holds it

    # Nor does an update allocate one on the way (NumPy allocations are traced); the full one does.
    def update_peak(reducer, b):
        reducer.update(b)
        tracemalloc.start()
        try:
            reducer.update(b)
            reducer.update(b)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    probe = MinibatchCKA(ga.graph, keys)
    b = _pass.Batch(x[:batch], None, 0, _pass.forward_taps(ga.graph, probe.taps, x[:batch]))
    one_model = (160 + 192) ** 2 * 8  # bytes of (sum C)^2 float64 for these two blocks: 0.99 MB
    assert update_peak(probe, b) < 0.2 * one_model  # O(n C + L n^2): about 80 kB
    assert update_peak(CKAMoments(ga.graph, keys), b) > one_model


def test_result_plots_rectangular_with_model_names(model_a):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import QuadMesh

    x = data(24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = GlobalAnalyzer(model_a, blocks=BLOCKS).layer_similarity(x, other=make_model(5, name="tuned"),
                                                                       other_blocks=["c2", "c3"])
    ax = res.plot()
    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)][0]
    heat = np.ma.filled(mesh.get_array().astype(float), np.nan).reshape(3, 2)
    np.testing.assert_allclose(heat, res.values)
    assert [t.get_text() for t in ax.get_yticklabels()] == BLOCKS
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c2", "c3"]
    assert "model_a" in ax.get_ylabel() and "tuned" in ax.get_xlabel()
    assert "model_a" in ax.get_title() and "tuned" in ax.get_title()
    # A rectangular DataFrame plots too.
    from keras_hybrid_interp.plotting import plot_layer_similarity

    ax2 = plot_layer_similarity(pd.DataFrame(res.values, index=BLOCKS, columns=["c2", "c3"]))
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["c2", "c3"]
    plt.close("all")
