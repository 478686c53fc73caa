"""The closed-form linear head: permutation and ablation by rank-k logit updates, no head pass.

Oracles:

* the pooled-head engine (:class:`PooledHeadEngine`), which runs the model's own
  Keras head on the perturbed pooled features (itself checked against the plain
  tail engine in ``tests/global_/test_pooled_head.py``): the same importances,
  exactly for accuracy (no near tie in these data, checked) and within 1e-6 for
  the loss, the probabilities and a callable score;
* a NumPy re-computation written here from the model's weights (softmax /
  sigmoid of ``pooled' @ W + b``), independent of ``core/linear_head.py``;
* both sides of the rule: the closed form is chosen exactly where the head is
  one Dense layer and the output activation.
"""

import numpy as np
import pytest

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer
from keras_hybrid_interp.core import linear_head as _linear_head
from keras_hybrid_interp.core import perturbation as _perturbation
from keras_hybrid_interp.core import plan as _plan
from keras_hybrid_interp.core.engine import LinearHeadEngine, PooledHeadEngine, TailEngine, tail_engine
from keras_hybrid_interp.core.graph import ModelGraph
from keras_hybrid_interp.core.layers import dense_head_after, global_pool_after
from keras_hybrid_interp.core.perturbation import Job, job_permutation
from keras_hybrid_interp.core.reducers import Cache, FrontierCache

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N, C, K = 64, 8, 3


def _backbone(inp):
    h = layers.Conv2D(5, 3, activation="relu", name="c1")(inp)
    return layers.Conv2D(C, 3, activation="relu", name="blk")(h)


def _spread(model, dense, x, scale=1.0):
    """Sets ``dense``'s weights so that the predictions vary over ``x`` (a random head predicts one class)."""
    f = np.asarray(keras.Model(model.input, dense.input).predict(x, verbose=0), dtype=np.float64)
    rng = np.random.default_rng(1)
    w = scale * rng.normal(size=(f.shape[1], dense.units)) / (f.std(axis=0)[:, None] + 1e-6)
    dense.set_weights([w.astype("float32"), (-(f.mean(axis=0) @ w)).astype("float32")])


def gap_dense_softmax():
    inp = keras.Input((8, 8, 3))
    dense = layers.Dense(K, activation="softmax", name="head")
    return keras.Model(inp, dense(layers.GlobalAveragePooling2D()(_backbone(inp)))), dense, "softmax"


def gap_dropout_dense_sigmoid():
    inp = keras.Input((8, 8, 3))
    h = layers.Dropout(0.5)(layers.GlobalAveragePooling2D()(_backbone(inp)))
    dense = layers.Dense(1, name="head")
    return keras.Model(inp, layers.Activation("sigmoid")(dense(h))), dense, "sigmoid"


def gmp_dense_logits():
    inp = keras.Input((8, 8, 3))
    dense = layers.Dense(K, name="head")
    return keras.Model(inp, dense(layers.GlobalMaxPooling2D()(_backbone(inp)))), dense, "logits"


def gap_dense_softmax_layer():
    inp = keras.Input((8, 8, 3))
    dense = layers.Dense(K, name="head")
    return keras.Model(inp, layers.Softmax()(dense(layers.GlobalAveragePooling2D()(_backbone(inp))))), dense, \
        "softmax"


APPLIES = {gap_dense_softmax: "softmax", gap_dropout_dense_sigmoid: "sigmoid", gmp_dense_logits: "linear",
           gap_dense_softmax_layer: "softmax"}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 8, 8, 3)).astype("float32"), rng.integers(0, K, N)


def _built(build, scale=None):
    keras.utils.set_random_seed(0)
    model, dense, output = build()
    x, y = _data()
    # A sigmoid head that does not saturate under ablation: see test_a_saturated_sigmoid_... for one that does.
    _spread(model, dense, x, scale if scale is not None else (0.3 if output == "sigmoid" else 1.0))
    if output == "sigmoid":
        y = y % 2
    return model, dense, output, x, y


# ----------------------------------------------------------------------
# The rule, both sides
# ----------------------------------------------------------------------
@pytest.mark.parametrize("build", list(APPLIES), ids=lambda f: f.__name__)
def test_the_closed_form_applies(build):
    keras.utils.set_random_seed(0)
    model, dense, _ = build()
    graph = ModelGraph(model)
    key = graph.resolve("blk")
    engine = tail_engine(graph, key)
    assert type(engine) is LinearHeadEngine
    assert engine.linear.head.dense is dense and engine.linear.activation == APPLIES[build]
    assert type(tail_engine(graph, key, shortcut=False)) is TailEngine


class _MyDense(layers.Dense):
    """A Dense subclass: it may compute otherwise, so it is not trusted."""


def _head_after_pool(*head):
    def build():
        inp = keras.Input((8, 8, 3))
        h = layers.GlobalAveragePooling2D()(_backbone(inp))
        for make in head:
            h = make()(h)
        return keras.Model(inp, h)

    return build


def _read_elsewhere_too():
    inp = keras.Input((8, 8, 3))
    h = _backbone(inp)
    side = layers.Flatten()(layers.Conv2D(1, 1)(h))
    pooled = layers.Concatenate()([layers.GlobalAveragePooling2D()(h), side])
    return keras.Model(inp, layers.Dense(K, activation="softmax")(pooled))


def _pooled_read_twice():
    inp = keras.Input((8, 8, 3))
    pooled = layers.GlobalAveragePooling2D()(_backbone(inp))
    return keras.Model(inp, layers.Dense(K, activation="softmax")(layers.Add()([pooled, pooled])))


NOT_APPLIES = {
    "two_dense": (_head_after_pool(lambda: layers.Dense(4), lambda: layers.Dense(K, activation="softmax")),
                  PooledHeadEngine),
    "batchnorm_after_pool": (_head_after_pool(layers.BatchNormalization,
                                              lambda: layers.Dense(K, activation="softmax")), PooledHeadEngine),
    "dense_tanh": (_head_after_pool(lambda: layers.Dense(K, activation="tanh")), PooledHeadEngine),
    "dense_relu_then_softmax": (_head_after_pool(lambda: layers.Dense(K, activation="relu"), layers.Softmax),
                                PooledHeadEngine),
    "sigmoid_then_softmax": (_head_after_pool(lambda: layers.Dense(K, activation="sigmoid"), layers.Softmax),
                             PooledHeadEngine),
    "dense_subclass": (_head_after_pool(lambda: _MyDense(K, activation="softmax")), PooledHeadEngine),
    "log_softmax": (_head_after_pool(lambda: layers.Dense(K), lambda: layers.Activation("log_softmax")),
                    PooledHeadEngine),
    "pooled_read_twice": (_pooled_read_twice, PooledHeadEngine),
    "block_read_elsewhere_too": (_read_elsewhere_too, TailEngine),
}


@pytest.mark.parametrize("case", list(NOT_APPLIES))
def test_the_closed_form_does_not_apply(case):
    build, expected = NOT_APPLIES[case]
    keras.utils.set_random_seed(0)
    graph = ModelGraph(build())
    key = graph.resolve("blk")
    assert type(tail_engine(graph, key)) is expected
    pooled = global_pool_after(graph, key)
    assert pooled is None or dense_head_after(graph, pooled[0]) is None


# ----------------------------------------------------------------------
# Equality with the engine that runs the head
# ----------------------------------------------------------------------
def _pair(build, scale=None):
    model, dense, output, x, y = _built(build, scale)
    fast = GlobalAnalyzer(model, blocks=["blk"], output=output)
    slow = GlobalAnalyzer(model, blocks=["blk"], output=output)
    key = fast.block_keys[0]
    assert type(fast._engine(key)) is LinearHeadEngine
    slow._engines[("shortcut", key)] = PooledHeadEngine(slow.graph, key, *global_pool_after(slow.graph, key))
    return model, dense, fast, slow, x, y


def _brier(y_true, proba):
    """A callable score (higher is better): the negative Brier score of the class probabilities."""
    onehot = np.eye(proba.shape[1])[y_true]
    return -float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


REQUESTS = [
    dict(method="permutation", n_repeats=3, random_state=0),
    dict(method="permutation", n_repeats=3, random_state=1, scoring="loss"),
    dict(method="permutation", n_repeats=2, random_state=2, scoring=_brier, groups=[[0, 1], [2, 5, 7], [3], [4, 6]]),
    dict(method="ablation", scoring="loss"),
    dict(method="ablation", ablation_value="mean", scoring="loss"),
    dict(method="ablation", ablation_value="mean"),
    dict(method="ablation", scoring=_brier, groups=[[0, 1, 2, 3], [4], [5, 6, 7]]),
]


@pytest.mark.parametrize("build", [gap_dense_softmax, gap_dropout_dense_sigmoid, gmp_dense_logits],
                         ids=lambda f: f.__name__)
def test_equals_the_pooled_head_engine(build, monkeypatch):
    model, _, fast, slow, x, y = _pair(build)
    measured = {"accuracy": 0.0, "loss": 0.0, "_brier": 0.0}
    for kw in REQUESTS:
        b = slow.filter_importance(x, y, block="blk", **kw)
        # No head pass at all: the closed form never calls the engines' predict_on_batch (runs, calibration).
        monkeypatch.setattr(_perturbation, "predict_on_batch", _no_head_pass)
        monkeypatch.setattr(_plan, "predict_on_batch", _no_head_pass)
        a = fast.filter_importance(x, y, block="blk", **kw)
        monkeypatch.undo()
        if a.scoring == "accuracy":
            np.testing.assert_array_equal(a.importances, b.importances, err_msg=str(kw))
            assert a.baseline_score == b.baseline_score
        else:
            np.testing.assert_allclose(a.importances, b.importances, rtol=0, atol=1e-6, err_msg=str(kw))
            assert a.baseline_score == pytest.approx(b.baseline_score, rel=0, abs=1e-6)
        assert a.importances.shape == b.importances.shape
        np.testing.assert_array_equal(a.dead_filters, b.dead_filters)
        measured[a.scoring] = max(measured[a.scoring], float(np.abs(b.importances).max()))
    # Something was measured under every scoring: perturbations changed the score.
    assert min(measured.values()) > 1e-3, measured
    # Unlabelled: agreement with the model's own predictions (the labels come from the baseline outputs).
    kw = dict(method="permutation", n_repeats=2, random_state=4)
    a, b = fast.filter_importance(x, block="blk", **kw), slow.filter_importance(x, block="blk", **kw)
    assert a.label_source == b.label_source == "model predictions"
    np.testing.assert_array_equal(a.importances, b.importances)


def _no_head_pass(*args, **kwargs):
    raise AssertionError("the closed form ran a head pass")


def _cache(ga, x, y=None):
    engine = ga._engine(ga.block_keys[0])
    red = FrontierCache(engine)
    ga._run(ga._stream(x, y), [red])
    return engine, red.result()


@pytest.mark.parametrize("build", [gap_dense_softmax, gap_dropout_dense_sigmoid, gmp_dense_logits],
                         ids=lambda f: f.__name__)
def test_outputs_equal_a_numpy_reference_and_the_head(build):
    """Each job's outputs: the pooled-head engine's within 1e-6, a NumPy re-computation within one float32 ulp."""
    model, dense, fast, slow, x, y = _pair(build)
    engine, cache = _cache(fast, x, y)
    ref_engine, ref_cache = _cache(slow, x, y)
    pooled = cache.arrays[0]
    np.testing.assert_array_equal(pooled, ref_cache.arrays[0])
    jobs = [Job(np.array([c]), "permute", perm=job_permutation(7, c, 0, N)) for c in range(C)]
    jobs += [Job(np.array([1, 4, 6]), "permute", perm=job_permutation(7, 99, 0, N)),
             Job(np.array([0, 2]), "fill", fill=np.float32(0.0)),
             Job(np.array([3, 5]), "fill", fill=engine.mean_fill(cache, np.array([3, 5]))),
             Job(np.array([], dtype=np.int64))]
    got = engine.outputs(cache, jobs)
    want = ref_engine.outputs(ref_cache, jobs)
    reader = fast.reader
    np.testing.assert_allclose(reader.probabilities(got.reshape(-1, got.shape[-1])),
                               reader.probabilities(want.reshape(-1, want.shape[-1])), rtol=0, atol=1e-6)
    # NumPy reference from the model's weights, written out here.
    w, b = [a.astype(np.float64) for a in dense.get_weights()]
    act = engine.linear.activation
    for job, out, head in zip(jobs, got, want):
        xp = pooled.astype(np.float64).copy()
        if job.kind == "permute":
            xp[:, job.channels] = xp[job.perm][:, job.channels]
        elif job.kind == "fill":
            fill = np.asarray(job.fill, dtype=np.float64)
            if fill.ndim > 1:  # a map (GMP's mean ablation): what the pooling makes of it
                flat = fill.reshape(-1, len(job.channels))
                fill = flat.max(axis=0) if engine.reduce == "max" else flat.mean(axis=0)
            xp[:, job.channels] = fill.astype(np.float32)
        z = xp @ w + b
        if act == "softmax":
            ref = np.exp(z - z.max(1, keepdims=True))
            ref /= ref.sum(1, keepdims=True)
        elif act == "sigmoid":
            ref = 1 / (1 + np.exp(-z))
        else:
            ref = z
            # Raw logits: the head's float32 dot products err by up to C float32 ulps of their terms' size.
            bound = C * 2.0 ** -24 * (np.abs(xp) @ np.abs(w) + np.abs(b))
            assert np.all(np.abs(head - z) <= bound)
        # The outputs are the model's dtype: the float64 value, rounded once (within one float32 ulp of it).
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=2 ** -23, atol=1e-30)
    # The baseline is the no-op job's outputs bit for bit; a column constant over the samples, permuted, too.
    base = engine.baseline_outputs(cache, len(jobs))
    np.testing.assert_array_equal(got[-1], base)
    const = cache.arrays[0].copy()
    const[:, 2] = const[0, 2]
    flat = Cache([const], cache.labels, cache.n, cache.summary)
    outs = engine.outputs(flat, [Job(np.array([2]), "permute", perm=job_permutation(1, 2, 0, N)),
                                 Job(np.array([], dtype=np.int64))])
    np.testing.assert_array_equal(outs[0], outs[1])
    # Accuracy's exactness rests on there being no near tie here (the tie rule of core/linear_head.py).
    top2 = np.sort(np.asarray(want, dtype=np.float64), axis=-1)[..., -2:] if want.shape[-1] > 1 else None
    if top2 is not None:
        assert np.min(top2[..., 1] - top2[..., 0]) > 1e-5


def test_chunks_bound_memory_and_change_nothing(monkeypatch):
    """Jobs in chunks of a few (a tiny budget) give the scores of one chunk, bit for bit; groups of mixed sizes."""
    _, _, fast, _, x, y = _pair(gap_dense_softmax)
    engine, cache = _cache(fast, x, y)
    jobs = [Job(np.array(ch), "permute", perm=job_permutation(3, g, 0, N))
            for g, ch in enumerate([[0], [1], [2, 3], [4, 5], [6], [7, 0, 1], [2]])]
    seen = []
    score = lambda out: (seen.append(out.shape), float(np.sum(out[:, 0] * np.arange(N))))[1]  # noqa: E731
    done = []
    one = engine.run(cache, jobs, score, progress=done.append)
    assert done == [2, 4, 5, 6, 7]  # one chunk per run of equal group sizes
    few = []
    monkeypatch.setattr(_linear_head, "CHUNK_BYTES", 8 * N * (3 * 2 + 3 * K))  # one job of two channels
    small = engine.run(cache, jobs, score, progress=few.append)
    assert few == [1, 2, 3, 4, 5, 6, 7]
    np.testing.assert_array_equal(one, small)
    assert set(seen) == {(N, K)}


def test_reads_the_weights_as_they_are_at_each_run():
    """A head trained between two analyses (the callback) is read as it is then."""
    _, dense, fast, slow, x, y = _pair(gap_dense_softmax)
    kw = dict(method="permutation", n_repeats=2, random_state=0, scoring="loss")
    before = fast.filter_importance(x, y, block="blk", **kw)
    w, b = dense.get_weights()
    dense.set_weights([w[:, ::-1].copy(), b])
    after = fast.filter_importance(x, y, block="blk", **kw)
    ref = slow.filter_importance(x, y, block="blk", **kw)
    np.testing.assert_allclose(after.importances, ref.importances, rtol=0, atol=1e-6)
    assert np.abs(after.importances - before.importances).max() > 1e-3


def test_a_saturated_sigmoid_loss_agrees_to_the_rounding_of_the_float32_probability():
    """Where a sigmoid saturates, the loss reads ``log(1 - p)`` of the model's float32 ``p``, which amplifies
    its rounding by ``1 / (1 - p)``: the two engines then agree to that rounding, not to 1e-6 (torch's and
    TensorFlow's own heads differ from the float64 value by 1e-5 there). Oracle: the bound, per job, from the
    float64 probabilities (4 float32 ulps of ``p`` through the log, plus the head's float32 dot products)."""
    model, dense, fast, slow, x, y = _pair(gap_dropout_dense_sigmoid, scale=1.0)
    engine, cache = _cache(fast, x, y)
    ref_engine, ref_cache = _cache(slow, x, y)
    jobs = [Job(np.array([c]), "fill", fill=np.float32(0.0)) for c in range(C)]
    jobs += [Job(np.array([c]), "permute", perm=job_permutation(5, c, 0, N)) for c in range(C)]
    got, want = engine.outputs(cache, jobs), ref_engine.outputs(ref_cache, jobs)
    w, b = [a.astype(np.float64) for a in dense.get_weights()]
    reader = fast.reader
    saturated = 0.0
    for job, ours, head in zip(jobs, got, want):
        xp = cache.arrays[0].astype(np.float64).copy()
        if job.kind == "permute":
            xp[:, job.channels] = xp[job.perm][:, job.channels]
        else:
            xp[:, job.channels] = 0.0
        z = (xp @ w + b)[:, 0]
        p = 1 / (1 + np.exp(-z))
        q = np.maximum(np.where(y == 0, 1 - p, p), 1e-7)  # the probability the loss takes the log of
        dz = C * 2.0 ** -24 * (np.abs(xp) @ np.abs(w[:, 0]) + abs(b[0]))
        bound = np.mean(4 * 2.0 ** -24 / q + dz)
        diff = abs(np.mean(reader.cross_entropy(ours, y)) - np.mean(reader.cross_entropy(head, y)))
        assert diff <= 1e-6 + bound, (job.kind, job.channels, diff, bound)
        saturated = max(saturated, bound)
    assert saturated > 1e-5  # the case is one where 1e-6 could not hold


def test_softmax_of_large_logits_is_stable():
    """Logits of size 1e3 (exp overflows beyond 709): the probabilities equal SciPy's softmax, finite."""
    from scipy.special import softmax

    from keras_hybrid_interp.core.layers import DenseHead
    from keras_hybrid_interp.core.linear_head import LinearHead

    rng = np.random.default_rng(0)
    dense = layers.Dense(K, activation="softmax")
    dense.build((None, C))
    w = (rng.normal(size=(C, K)) * 300).astype("float32")
    dense.set_weights([w, np.zeros(K, "float32")])
    head = LinearHead(DenseHead(dense, "softmax", 0, "float32"))
    pooled = rng.normal(size=(N, C)).astype("float32")
    jobs = [Job(np.array([c]), "permute", perm=job_permutation(0, c, 0, N)) for c in range(C)]
    outs = []
    head.run(pooled, jobs, lambda out: outs.append(out.copy()) or 0.0)
    for job, out in zip(jobs, outs):
        xp = pooled.astype(np.float64)
        xp[:, job.channels] = xp[job.perm][:, job.channels]
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, softmax(xp @ w.astype(np.float64), axis=1), rtol=2 ** -23, atol=1e-30)
