"""The closed-form per-position linear head: a block read only by a 1x1 convolution and the output activation.

Oracles:

* a full re-run of the model with the filters perturbed inside it
  (``tests/_models_global.py``: ``full_model_with_perturbation`` + ``Perturb``),
  scored with scikit-learn's ``jaccard_score`` on the flattened pixels (mean
  IoU, macro over the classes present) and a NumPy pixel cross-entropy written
  here: the importances of :meth:`GlobalAnalyzer.filter_importance` must equal
  them (mean IoU exactly: no near tie in these data, checked; the loss within 1e-6);
* the plain tail engine (``shortcut=False``), which runs the head: the same scores;
* both sides of the rule (:func:`keras_hybrid_interp.core.layers.pointwise_head_after`).
"""

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer
from keras_hybrid_interp.core import perturbation as _perturbation
from keras_hybrid_interp.core import plan as _plan
from keras_hybrid_interp.core.engine import PointwiseHeadEngine, TailEngine, tail_engine
from keras_hybrid_interp.core.graph import ModelGraph
from keras_hybrid_interp.core.layers import pointwise_head_after
from keras_hybrid_interp.core.perturbation import Job, job_permutation
from keras_hybrid_interp.core.reducers import FrontierCache
from keras_hybrid_interp.core.task import SegmentationScore

from _models_global import Perturb, full_model_with_perturbation
from oracles import assert_not_all_zero

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N, S, C, K = 12, 12, 6, 3


def _backbone(inp):
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    return layers.Conv2D(C, 3, padding="same", activation="relu", name="blk")(h)


def conv_softmax():
    inp = keras.Input((S, S, 2))
    head = layers.Conv2D(K, 1, activation="softmax", name="head")
    return keras.Model(inp, head(_backbone(inp))), head, "softmax"


def conv_sigmoid_one_unit():
    inp = keras.Input((S, S, 2))
    head = layers.Conv2D(1, 1, activation="sigmoid", name="head")
    return keras.Model(inp, head(_backbone(inp))), head, "sigmoid"


def dense_then_softmax_layer():
    inp = keras.Input((S, S, 2))
    head = layers.Dense(K, name="head")
    return keras.Model(inp, layers.Softmax()(head(layers.Dropout(0.3)(_backbone(inp))))), head, "softmax"


def conv1d_activation_softmax():
    inp = keras.Input((S * 2, 2))
    h = layers.Conv1D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.Conv1D(C, 3, padding="same", activation="relu", name="blk")(h)
    head = layers.Conv1D(K, 1, name="head")
    return keras.Model(inp, layers.Activation("softmax")(head(h))), head, "softmax"


APPLIES = [conv_softmax, conv_sigmoid_one_unit, dense_then_softmax_layer, conv1d_activation_softmax]


def _spread(model, head, x):
    """Sets the head's weights so that the predicted classes vary over the positions (a random head predicts one)."""
    f = np.asarray(keras.Model(model.input, head.input).predict(x, verbose=0), dtype=np.float64)
    f = f.reshape(-1, f.shape[-1])
    rng = np.random.default_rng(1)
    units = head.kernel.shape[-1]
    # One sigmoid unit: a smaller scale keeps it from saturating, where a loss reads log(1 - p) of a float32 p
    # and the backends' own sigmoids agree only to that rounding amplified by 1 / (1 - p) (core/linear_head.py).
    scale = 0.5 if units == 1 else 2.0
    w = scale * rng.normal(size=(f.shape[1], units)) / (f.std(axis=0)[:, None] + 1e-6)
    b = -(f.mean(axis=0) @ w)
    head.set_weights([w.reshape(tuple(head.kernel.shape)).astype("float32"), b.astype("float32")])


def _built(build):
    keras.utils.set_random_seed(0)
    model, head, act = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N,) + tuple(model.input.shape[1:])).astype("float32")
    _spread(model, head, x)
    out = model.predict(x, verbose=0)
    pred = (out[..., 0] > 0.5).astype(np.int64) if out.shape[-1] == 1 else out.argmax(-1)
    # Targets: the model's own masks with a quarter of the positions changed (the scores are then informative).
    y = np.where(rng.random(pred.shape) < 0.25, rng.integers(0, max(2, out.shape[-1]), size=pred.shape), pred)
    return model, head, act, x, y


# ----------------------------------------------------------------------
# The rule, both sides
# ----------------------------------------------------------------------
@pytest.mark.parametrize("build", APPLIES, ids=lambda f: f.__name__)
def test_the_closed_form_applies(build):
    keras.utils.set_random_seed(0)
    model, head, act = build()
    graph = ModelGraph(model)
    key = graph.resolve("blk")
    engine = tail_engine(graph, key)
    assert type(engine) is PointwiseHeadEngine
    assert engine.linear.head.dense is head and engine.linear.activation == act
    assert type(tail_engine(graph, key, shortcut=False)) is TailEngine


def _head(*make, rank=2):
    def build():
        inp = keras.Input((S, S, 2) if rank == 2 else (S * 2, 2))
        h = _backbone(inp)
        for m in make:
            h = m()(h)
        return keras.Model(inp, h)

    return build


def _read_elsewhere_too():
    inp = keras.Input((S, S, 2))
    h = _backbone(inp)
    out = layers.Conv2D(K, 1, activation="softmax")(layers.Concatenate()([h, layers.Conv2D(2, 3, padding="same")(h)]))
    return keras.Model(inp, out)


def _two_outputs_of_block():
    inp = keras.Input((S, S, 2))
    h = _backbone(inp)
    return keras.Model(inp, layers.Activation("softmax")(layers.Add()([layers.Conv2D(K, 1)(h),
                                                                       layers.Conv2D(K, 1)(h)])))


NOT_APPLIES = {
    "conv3x3_head": _head(lambda: layers.Conv2D(K, 3, padding="same", activation="softmax")),
    "two_1x1_convs": _head(lambda: layers.Conv2D(4, 1), lambda: layers.Conv2D(K, 1, activation="softmax")),
    "batchnorm_between": _head(layers.BatchNormalization, lambda: layers.Conv2D(K, 1, activation="softmax")),
    "batchnorm_after": _head(lambda: layers.Conv2D(K, 1), layers.BatchNormalization,
                             lambda: layers.Activation("softmax")),
    "stride_2": _head(lambda: layers.Conv2D(K, 1, strides=2, activation="softmax")),
    "relu_head": _head(lambda: layers.Conv2D(K, 1, activation="relu")),
    "softmax_over_rows": _head(lambda: layers.Conv2D(K, 1), lambda: layers.Softmax(axis=1)),
    "block_read_elsewhere_too": _read_elsewhere_too,
    "block_read_twice": _two_outputs_of_block,
}


@pytest.mark.parametrize("case", list(NOT_APPLIES))
def test_the_closed_form_does_not_apply(case):
    keras.utils.set_random_seed(0)
    graph = ModelGraph(NOT_APPLIES[case]())
    key = graph.resolve("blk")
    assert type(tail_engine(graph, key)) is TailEngine
    assert pointwise_head_after(graph, key) is None


# ----------------------------------------------------------------------
# Against a full re-run of the model with the filters perturbed inside it
# ----------------------------------------------------------------------
def _reference_score(model, graph, key, x, y, perturb, scoring, sigmoid):
    full = full_model_with_perturbation(graph, key, perturb) if perturb is not None else model
    out = np.asarray(full.predict(x, verbose=0), dtype=np.float64)
    if sigmoid:
        p1 = out[..., 0]
        pred = (p1 > 0.5).astype(np.int64)
        proba = np.stack([1 - p1, p1], axis=-1)
    else:
        pred, proba = out.argmax(-1), out
    if scoring == "mean_iou":
        return jaccard_score(y.ravel(), pred.ravel(), average="macro"), proba
    p = np.take_along_axis(proba.reshape(-1, proba.shape[-1]), y.reshape(-1, 1), axis=1)[:, 0]
    return -float(np.mean(-np.log(np.clip(p, 1e-7, 1.0)))), proba


@pytest.mark.parametrize("scoring", ["mean_iou", "loss"])
@pytest.mark.parametrize("build", [conv_softmax, conv_sigmoid_one_unit, dense_then_softmax_layer],
                         ids=lambda f: f.__name__)
def test_importance_equals_a_full_model_rerun(build, scoring, monkeypatch):
    model, head, _, x, y = _built(build)
    sigmoid = model.output.shape[-1] == 1
    ga = GlobalAnalyzer(model, blocks=["blk"])
    assert ga.task == "segmentation"
    key = ga.block_keys[0]
    assert type(ga._engine(key)) is PointwiseHeadEngine
    monkeypatch.setattr(_perturbation, "predict_on_batch", _no_head_pass)  # no pass of a run
    monkeypatch.setattr(_plan, "predict_on_batch", _no_head_pass)  # nor of a calibration
    perm_imp = ga.filter_importance(x, y, block="blk", method="permutation", n_repeats=2, random_state=3,
                                    scoring=scoring)
    abl_imp = ga.filter_importance(x, y, block="blk", method="ablation", scoring=scoring)
    monkeypatch.undo()
    base, proba = _reference_score(model, ga.graph, key, x, y, None, scoring, sigmoid)
    # Exactness of mean IoU rests on there being no near tie between the two largest outputs here.
    top2 = np.sort(proba, axis=-1)[..., -2:]
    assert np.min(top2[..., 1] - top2[..., 0]) > 1e-5
    tol = dict(rtol=0, atol=1e-12) if scoring == "mean_iou" else dict(rtol=0, atol=1e-6)
    np.testing.assert_allclose(perm_imp.baseline_score, base, **tol)
    want_perm = np.empty((C, 2))
    want_abl = np.empty(C)
    for c in range(C):
        for r in range(2):
            perm = job_permutation(perm_imp.random_state, c, r, N)
            s, _ = _reference_score(model, ga.graph, key, x, y, Perturb([c], C, perm=perm), scoring, sigmoid)
            want_perm[c, r] = base - s
        s, _ = _reference_score(model, ga.graph, key, x, y, Perturb([c], C, fill=0.0), scoring, sigmoid)
        want_abl[c] = base - s
    assert_not_all_zero(want_perm)
    assert_not_all_zero(want_abl)
    np.testing.assert_allclose(perm_imp.importances, want_perm, **tol)
    np.testing.assert_allclose(abl_imp.importances, want_abl[:, None], **tol)


def _no_head_pass(*args, **kwargs):
    raise AssertionError("the closed form ran a head pass")


def _cache(engine, ga, x, y):
    red = FrontierCache(engine)
    ga._run(ga._stream(x, y), [red])
    return red.result()


@pytest.mark.parametrize("build", APPLIES, ids=lambda f: f.__name__)
def test_outputs_equal_the_tail_engine_and_chunks_change_nothing(build):
    """Each job's outputs: the plain tail's within 1e-6; in chunks of one sample, bit for bit the same scores."""
    model, head, _, x, y = _built(build)
    ga = GlobalAnalyzer(model, blocks=["blk"], task="segmentation")
    key = ga.block_keys[0]
    fast, slow = ga._engine(key), TailEngine(ga.graph, key)
    cache = _cache(fast, ga, x, y)
    ref_cache = _cache(slow, ga, x, y)
    maps = cache.arrays[0]
    np.testing.assert_array_equal(maps, ref_cache.arrays[0])
    jobs = [Job(np.array([c]), "permute", perm=job_permutation(7, c, 0, N)) for c in range(C)]
    jobs += [Job(np.array([1, 4, 5]), "permute", perm=job_permutation(7, 99, 0, N)),
             Job(np.array([0, 2]), "fill", fill=np.float32(0.0)),
             Job(np.array([3, 5]), "fill", fill=np.mean(maps[..., [3, 5]], axis=0).astype(maps.dtype)),
             Job(np.array([], dtype=np.int64))]
    got = fast.outputs(cache, jobs)
    want = slow.outputs(ref_cache, jobs)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(got[:-1] - got[-1]).max() > 1e-3  # the jobs changed the outputs
    # The baseline is the no-op job's outputs bit for bit.
    np.testing.assert_array_equal(fast.baseline_outputs(cache, len(jobs)), got[-1])
    # Chunks of one sample, the baseline logits recomputed per chunk: the same scores bit for bit,
    # fed chunk by chunk to the segmentation score (which never sees more than one sample then).
    score = SegmentationScore(ga.reader, "loss", y)
    seen = []
    begin = score.begin

    class Spy:
        targets = y

        def begin(self):
            acc = begin()
            update = acc.update
            acc.update = lambda out, t: (seen.append(len(out)), update(out, t))
            return acc

    one = fast.linear.run_maps(maps, jobs, score)
    small = fast.linear.run_maps(maps, jobs, Spy(), chunk_bytes=1, keep_bytes=0)
    np.testing.assert_allclose(one, small, rtol=1e-14, atol=0)  # the loss's sums in another order
    iou = SegmentationScore(ga.reader, "mean_iou", y)  # counts: exact in any order
    np.testing.assert_array_equal(fast.linear.run_maps(maps, jobs, iou),
                                  fast.linear.run_maps(maps, jobs, iou, chunk_bytes=1, keep_bytes=0))
    assert set(seen) == {1} and len(seen) == N * len(jobs)
    np.testing.assert_allclose(one, [score(o) for o in want], rtol=0, atol=1e-6)


def test_segmentation_score_in_chunks_equals_all_at_once():
    """The score's chunked sums against scikit-learn and NumPy on all outputs at once (a tail engine's stacking)."""
    model, _, _, x, y = _built(conv_softmax)
    ga = GlobalAnalyzer(model, blocks=["blk"])
    out = model.predict(x, verbose=0)
    iou = SegmentationScore(ga.reader, "mean_iou", y)
    assert iou(out) == pytest.approx(jaccard_score(y.ravel(), out.argmax(-1).ravel(), average="macro"), abs=1e-12)
    acc = iou.begin()
    for s in range(0, N, 5):
        acc.update(out[s:s + 5], y[s:s + 5])
    assert acc.result() == iou(out)
    loss = SegmentationScore(ga.reader, "loss", y)
    p = np.take_along_axis(out.reshape(-1, K).astype(np.float64), y.reshape(-1, 1), axis=1)
    assert loss(out) == pytest.approx(float(np.mean(np.log(np.clip(p, 1e-7, 1)))), abs=1e-9)
    # The plain tail engine feeds the score chunk by chunk too (small chunks: a tiny memory budget).
    key = ga.block_keys[0]
    slow = TailEngine(ga.graph, key)
    cache = _cache(slow, ga, x, y)
    jobs = [Job(np.array([c]), "permute", perm=job_permutation(2, c, 0, N)) for c in range(C)]
    chunked = slow.run(cache, jobs, iou, perturbations_per_eval=2, memory_budget=slow.per_sample_bytes() * 5)
    whole = slow.run(cache, jobs, lambda o: iou(o))
    np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize("build", [conv_softmax, dense_then_softmax_layer, conv1d_activation_softmax],
                         ids=lambda f: f.__name__)
def test_mean_iou_recomputes_only_where_the_argmax_can_move(build, monkeypatch):
    """Mean IoU of a softmax recomputes only the positions whose argmax can move: bit for bit the full path's.

    The full path is the same score without ``reads_argmax`` (every position's outputs, chunk by chunk);
    a spy on the activation checks that the short path saw fewer positions, and a head with its margins
    shrunk to near ties (every position a candidate) agrees too.
    """
    from keras_hybrid_interp.core.linear_head import LinearHead, _ArgmaxBaseline

    model, head, _, x, y = _built(build)
    ga = GlobalAnalyzer(model, blocks=["blk"], task="segmentation")
    fast = ga._engine(ga.block_keys[0])
    maps = _cache(fast, ga, x, y).arrays[0]
    iou = SegmentationScore(ga.reader, "mean_iou", y)
    assert iou.reads_argmax

    class Full:  # the same sums, without the argmax shortcut
        targets = y
        begin = iou.begin

    jobs = [Job(np.array([c]), "permute", perm=job_permutation(5, c, r, N)) for c in range(C) for r in range(2)]
    jobs += [Job(np.array([c]), "fill", fill=np.float32(0.0)) for c in range(C)]
    jobs += [Job(np.array([c]), "fill", fill=np.mean(maps[..., [c]], axis=0).astype(maps.dtype)) for c in range(C)]
    jobs += [Job(np.array([0, 3]), "permute", perm=job_permutation(5, 50, 0, N)), Job(np.array([], dtype=np.int64))]
    seen, in_job = [], []
    predicted, channel_confusions = LinearHead.predicted, _ArgmaxBaseline.channel_confusions

    def spy_predicted(self, zt):
        if in_job:  # the candidates' calls, not the baseline's
            seen.append(zt.shape[-1])
        return predicted(self, zt)

    def spy_job(self, *args):
        in_job.append(True)
        try:
            return channel_confusions(self, *args)
        finally:
            in_job.pop()

    monkeypatch.setattr(LinearHead, "predicted", spy_predicted)
    monkeypatch.setattr(_ArgmaxBaseline, "channel_confusions", spy_job)
    got = fast.linear.run_maps(maps, jobs, iou)
    positions = int(np.prod(maps.shape[1:-1]))
    # Some positions were recomputed, fewer than the full path's (every position of every job): about
    # 30% on these tiny random heads, whose margins are small; trained heads leave far fewer.
    assert seen and 0 < sum(seen) < N * positions * len(jobs) / 2
    monkeypatch.undo()
    want = fast.linear.run_maps(maps, jobs, Full())
    assert_not_all_zero(want[:-1] - want[-1])  # the jobs move the argmax somewhere
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fast.linear.run_maps(maps, jobs, iou, chunk_bytes=1, keep_bytes=0), want)
    # Filters on one thread or on several (core/parallel.py): the same scores, bit for bit.
    from keras_hybrid_interp.core import parallel

    for n_threads in (1, 3):
        monkeypatch.setattr(parallel, "threads", lambda n_threads=n_threads: n_threads)
        np.testing.assert_array_equal(fast.linear.run_maps(maps, jobs, iou), want)
    monkeypatch.undo()
    # Margins near ties everywhere (a head scaled down 1e7 times): every position is a candidate.
    k, b = head.get_weights()
    head.set_weights([k * 1e-7, b * 1e-7])
    np.testing.assert_array_equal(fast.linear.run_maps(maps, jobs, iou), fast.linear.run_maps(maps, jobs, Full()))


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_top_two_logits_equal_numpy_sort(k):
    """The baseline's gap between its two largest logits: class by class, the values np.sort gives (ties too)."""
    from keras_hybrid_interp.core.linear_head import _top_two

    z = np.random.default_rng(k).standard_normal((3, k, 40))
    z[0, :, :6] = 1.5  # every class tied
    z[1, : min(k, 2), 6:12] = 9.0  # the two largest tied
    first, second = _top_two(z)
    ordered = np.sort(z, axis=1)
    np.testing.assert_array_equal(first, ordered[:, -1])
    np.testing.assert_array_equal(second, ordered[:, -2] if k > 1 else np.full_like(first, -np.inf))
    # With the class of the largest: np.argmax's, ties to the lower class; the values unchanged.
    first2, second2, pred = _top_two(z, argmax=True)
    np.testing.assert_array_equal(pred, np.argmax(z, axis=1))
    np.testing.assert_array_equal(first2, first)
    np.testing.assert_array_equal(second2, second)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_predicted_classes_equal_the_argmax_of_the_rounded_softmax(k):
    """LinearHead.predicted skips the softmax only where the logits' gap decides: everywhere the class of the
    float32-rounded softmax (NumPy), near ties that round to equal probabilities (ties to the lower class)
    and non-finite logits included."""
    from keras_hybrid_interp.core.linear_head import LinearHead

    class Head:  # what LinearHead reads of a dense head
        activation, dtype = "softmax", "float32"

    rng = np.random.default_rng(k)
    z = rng.standard_normal((k, 400)) * 3
    z[:, :50] = z[0, :50]  # exact ties of every class
    z[1, 50:150] = z[0, 50:150] + rng.choice([1e-9, -1e-9, 1e-7, 3e-7, 2e-6], 100)  # near ties both ways
    z[:, 150:160] += 1e4  # large logits: the margin grows with them
    z[0, 160], z[1, 161], z[-1, 162] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="ignore"):
        ref_p = (np.exp(z - z.max(axis=0)) / np.exp(z - z.max(axis=0)).sum(axis=0)).astype(np.float32)
    ref = np.zeros(z.shape[1], dtype=np.int64)  # argmax, ties (and NaN) to the lower class, as argmax_last
    best = ref_p[0].copy()
    for c in range(1, k):
        win = ref_p[c] > best
        best[win], ref[win] = ref_p[c][win], c
    with np.errstate(invalid="ignore"):  # the softmax of inf logits (the rounded route, as before)
        got = LinearHead(Head()).predicted(z.copy())
    np.testing.assert_array_equal(got, ref)
    # Not vacuous: the near ties' rounded probabilities tie where the logits do not.
    assert np.any(ref[50:150] != np.argmax(z[:, 50:150], axis=0))


def test_limits_round_toward_zero():
    """The candidate test's float32 limits never exceed their float64 values in magnitude (the bound stays
    conservative), and are the nearest float32 that does not; inf, 0 and NaN keep their meaning."""
    from keras_hybrid_interp.core.linear_head import _round_down

    x = np.concatenate([np.random.default_rng(0).standard_normal(10000) * 10.0 ** np.arange(-20, 20, 0.004),
                        [np.inf, -np.inf, 0.0, 1e-45, -1e-45]])
    y = _round_down(x, np.float32)
    assert y.dtype == np.float32
    assert np.all(np.abs(y.astype(np.float64)) <= np.abs(x))
    # The nearest from below: one float32 step further from zero is beyond x.
    up = np.nextafter(y, np.copysign(np.float32(np.inf), y)).astype(np.float64)
    finite = np.isfinite(x) & (x != 0)
    assert np.all(np.abs(up[finite]) > np.abs(x[finite]))
    assert np.isinf(y[-5]) and np.isinf(y[-4]) and y[-3] == 0
    assert np.isnan(_round_down(np.array([np.nan]), np.float32)[0])
    assert np.array_equal(_round_down(x, np.float64), x)
