"""perturbations_per_eval="auto": the stacking is chosen by measured throughput.

Oracles: importances with one perturbation per pass (``perturbations_per_eval=1``),
which stacking must not change (exact equality with accuracy scoring, whose
argmax absorbs the last-ulp differences of a larger batch); a fake clock whose
cost model makes a known plan the fastest, so the choice is known in advance;
the shapes of the tail's passes, recorded, against the closed-form pass count;
a filter the model multiplies by zero, whose importance is exactly 0 only if
the baseline and the perturbations ran in passes of one shape.
"""

import math

import numpy as np
import pytest

import keras

from keras_hybrid_interp.core import engine as _engine
from keras_hybrid_interp.core import perturbation as _perturbation
from keras_hybrid_interp.core import plan as _plan
from keras_hybrid_interp.core.plan import stacking_candidates
from keras_hybrid_interp.core.reducers import Cache
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer

from _models_global import ignored_filter_model, residual_model

N = 40


def _data(n=N, shape=(12, 12, 3), seed=0, classes=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, classes, n)


def _varied(model, x):
    """``model`` with a head that standardises its logits, so that predictions vary over ``x``
    (the random heads predict one class for every sample, and accuracy would never move)."""
    f = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("gap").output)(x))
    head = model.get_layer("head")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(f.shape[1], head.units)) * 3 / (f.std(axis=0)[:, None] + 1e-6)
    head.set_weights([w.astype("float32"), (-(f.mean(axis=0) @ w)).astype("float32")])
    return model


@pytest.fixture
def calibrate_always(monkeypatch):
    """Calibration on the tiny test models: no work threshold, no time budget."""
    monkeypatch.setattr(_plan, "CALIBRATE_MIN_WORK", 0)
    monkeypatch.setattr(_plan, "CALIBRATE_MAX_FRACTION", math.inf)


@pytest.fixture
def fake_clock(monkeypatch):
    """Tail passes advance a fake clock by ``cost(samples)``; records every pass's batch size.

    The cost per sample is lowest at ``best`` samples per pass (1 + |log2(S / best)|),
    and every pass takes at least 0.1 fake seconds, so calibration times each
    candidate with one warm-up and two timed calls.
    """
    state = {"t": 0.0, "sizes": [], "best": 192}
    real = _plan.predict_on_batch

    def cost(s):
        return 0.1 * s * (1 + abs(math.log2(s / state["best"])))

    def predict(model, x):
        s = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
        state["sizes"].append(s)
        state["t"] += cost(s)
        return real(model, x)

    monkeypatch.setattr(_plan, "predict_on_batch", predict)  # the calibration's timed passes
    monkeypatch.setattr(_perturbation, "predict_on_batch", predict)  # the run's passes
    monkeypatch.setattr(_plan, "calibration_clock", lambda: state["t"])
    return state


def test_candidates_closed_form():
    # 40 samples fit in one chunk; the memory cap allows 4096 // 40 = 102 stacked copies; 18 jobs cap it at 18.
    # Stacked chunks are padded to a multiple of STACK_ALIGN = 16: 48.
    assert _plan.STACK_ALIGN == 16
    up, down = stacking_candidates(40, 18, 4096, min_chunk=8)
    assert up == [(1, 40), (2, 48), (4, 48), (8, 48), (16, 48), (18, 48)]
    assert down == [(1, 40), (1, 20), (1, 10)]
    # More samples than a pass holds: balanced chunks (1000 in 2 x 500, 4 x 250, ...); no stacking.
    up, down = stacking_candidates(1000, 50, 600, min_chunk=100)
    assert up == [(1, 500)]
    assert down == [(1, 500), (1, 250), (1, 125)]


@pytest.mark.parametrize("b, p, spp, want", [
    (40, 4, 4096, 48),    # rounded up: 4 x 48 fit
    (300, 2, 607, 160),   # 2 x 300 fit, 2 x 304 do not: 300 in two equal parts of 150, each rounded up
    (300, 2, 1000, 304),  # rounded up, it fits
    (300, 2, 599, 300),   # not even 2 x 300 fit: unchanged (the caller stacks less)
    (10, 2, 24, 10),      # no aligned chunk fits at all
    (37, 1, 100, 37),     # one slot: nothing to align
])
def test_stacked_slots_start_aligned_where_they_fit(b, p, spp, want):
    got = _plan.stacked_chunk(b, p, spp)
    assert got == want
    if got != b or p > 1 and got % 16 == 0:
        assert got % _plan.STACK_ALIGN == 0 and p * got <= spp


def test_an_int_stacking_with_no_room_to_round_up_keeps_aligned_slots():
    eng = _engine.TailEngine.__new__(_engine.TailEngine)
    eng.per_sample_bytes = lambda free_dim=None: 1
    p, b = eng.plan(300, 10, perturbations_per_eval=2, memory_budget=607)
    assert (p, b) == (2, 160)


def test_auto_picks_the_fastest_plan_and_reuses_it_for_baseline_and_run(calibrate_always, fake_clock):
    x, y = _data()
    ga = GlobalAnalyzer(_varied(residual_model(), x))
    n_jobs = 6 * 2  # res_out has 6 filters, 2 repeats
    auto = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=3, scoring="accuracy")
    eng = ga._engine(ga.graph.resolve("res_out"))
    (key, cal), = eng.calibrations.items()
    assert key == (N, _plan.DEFAULT_MEMORY_BUDGET)
    # Down from (1, 40): (1, 20) and (1, 10) are dearer; up: 2 and 4 copies of 48 (40 padded)
    # improve, 8 and 12 (the job count) do not.
    assert cal.plan == (4, 48)
    assert list(cal.pass_seconds) == [(1, 40), (1, 20), (1, 10), (2, 48), (4, 48), (8, 48), (12, 48)]
    assert cal.n_jobs == n_jobs
    sizes = fake_clock["sizes"]
    calib = 3 * len(cal.pass_seconds)  # one warm-up and two timed calls per candidate
    assert sizes[:calib] == [s for s in [40, 20, 10, 96, 192, 384, 576] for _ in range(3)]
    # Then the baseline (4 unperturbed copies: one pass) and the 12 jobs in groups of 4: one shape.
    assert sizes[calib:] == [192] * (1 + math.ceil(n_jobs / 4))
    assert eng.plan(N, n_jobs) == (4, 48)
    assert eng.plan(N, 3) == (3, 48)  # the cached choice, capped at the job count

    # A second run reuses the choice: no new calibration passes.
    before = len(sizes)
    again = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=3, scoring="accuracy")
    assert sizes[before:] == [192] * (1 + math.ceil(n_jobs / 4))
    np.testing.assert_array_equal(again.importances, auto.importances)

    one = ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=3, scoring="accuracy",
                               perturbations_per_eval=1)
    np.testing.assert_array_equal(auto.importances, one.importances)
    assert auto.baseline_score == one.baseline_score
    assert np.abs(auto.importances).max() > 0  # the comparison is not vacuous


def test_auto_chunked_plan_equals_one_per_pass(calibrate_always, fake_clock):
    # The fastest pass is 10 samples: one perturbation per pass on 4 chunks of 10.
    fake_clock["best"] = 10
    x, y = _data()
    ga = GlobalAnalyzer(_varied(residual_model(), x))
    auto = ga.filter_importance(x, y, block="res_conv1", n_repeats=2, random_state=5, scoring="accuracy")
    eng = ga._engine(ga.graph.resolve("res_conv1"))
    (cal,) = eng.calibrations.values()
    assert cal.plan == (1, 10)
    calib = 3 * len(cal.pass_seconds)
    assert set(fake_clock["sizes"][calib:]) == {10}
    assert len(fake_clock["sizes"][calib:]) == 4 * (1 + 6 * 2)  # 4 chunks for the baseline and each job
    one = ga.filter_importance(x, y, block="res_conv1", n_repeats=2, random_state=5, scoring="accuracy",
                               perturbations_per_eval=1)
    np.testing.assert_array_equal(auto.importances, one.importances)
    assert np.abs(auto.importances).max() > 0
    loss_auto = ga.filter_importance(x, y, block="res_conv1", n_repeats=2, random_state=5, scoring="loss")
    loss_one = ga.filter_importance(x, y, block="res_conv1", n_repeats=2, random_state=5, scoring="loss",
                                    perturbations_per_eval=1)
    # Loss sees the last ulps of a different batch size on kernels that are not batch-size invariant:
    # JAX's XLA:CPU on chunks of 10 against batches of 40 moved these by up to 2e-6 (the head is sharp).
    np.testing.assert_allclose(loss_auto.importances, loss_one.importances, rtol=0, atol=1e-5)


def test_auto_with_the_real_clock_equals_one_per_pass(calibrate_always):
    x, y = _data()
    ga = GlobalAnalyzer(_varied(residual_model(), x))
    auto = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=11, scoring="accuracy")
    (cal,) = ga._engine(ga.graph.resolve("res_out")).calibrations.values()
    assert cal.plan in cal.seconds and cal.seconds[cal.plan] == min(cal.seconds.values())
    one = ga.filter_importance(x, y, block="res_out", n_repeats=3, random_state=11, scoring="accuracy",
                               perturbations_per_eval=1)
    np.testing.assert_array_equal(auto.importances, one.importances)
    assert np.abs(auto.importances).max() > 0


def test_ignored_filter_is_exactly_zero_under_calibrated_stacking(calibrate_always, fake_clock):
    # Baseline and perturbations in passes of one shape: permuting a filter the model
    # multiplies by 0 gives the baseline's outputs bit for bit, on every backend.
    fake_clock["best"] = 60
    model = ignored_filter_model(ignored=2)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 10, 10, 2)).astype("float32"), rng.integers(0, 3, 30)
    ga = GlobalAnalyzer(model)
    res = ga.filter_importance(x, y, block="block", n_repeats=3, random_state=0, scoring="loss")
    (cal,) = ga._engine(ga.graph.resolve("block")).calibrations.values()
    assert cal.plan == (2, 32)  # 30 samples padded to 32
    np.testing.assert_array_equal(res.importances[2], 0.0)
    assert np.abs(res.importances).max() > 0
    # Explicit stacking is padded too: 2 x 30 unpadded moved this importance by 5e-9 on TensorFlow (AVX2).
    two = ga.filter_importance(x, y, block="block", n_repeats=3, random_state=0, scoring="loss",
                               perturbations_per_eval=2)
    np.testing.assert_array_equal(two.importances[2], 0.0)


def test_coupled_auto_equals_one_per_pass(calibrate_always, fake_clock):
    from _models_coupled import resnet_stage_model

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 24)
    model = _varied(resnet_stage_model(), x)
    fake_clock["best"] = 48
    ga = GlobalAnalyzer(model)
    auto = ga.filter_importance(x, y, block="b1_out", groups="coupled", n_repeats=2, random_state=7,
                                scoring="accuracy")
    (cal,) = ga._engine(ga.graph.resolve("b1_out"), coupled=True).calibrations.values()
    assert cal.plan == (2, 32)
    one = ga.filter_importance(x, y, block="b1_out", groups="coupled", n_repeats=2, random_state=7,
                               scoring="accuracy", perturbations_per_eval=1)
    np.testing.assert_array_equal(auto.importances, one.importances)
    assert np.abs(auto.importances).max() > 0


def test_small_runs_are_not_calibrated():
    model = residual_model()
    x, y = _data()
    ga = GlobalAnalyzer(model)
    ga.filter_importance(x, y, block="res_out", n_repeats=2, random_state=0)
    eng = ga._engine(ga.graph.resolve("res_out"))
    assert 12 * N < _plan.CALIBRATE_MIN_WORK
    assert eng.calibrations == {}
    # The memory plan: all 40 samples in one chunk (padded to 48), all 12 jobs stacked (4096 // 48 = 85 fit).
    assert eng.plan(N, 12) == (12, 48)
    assert eng.plan(N, 1) == (1, 40)


def test_chunked_passes_in_place_equal_the_buffered_passes_and_leave_the_cache_unchanged():
    # One perturbation per pass on chunks perturbs the cache's own rows and restores them.
    # Oracle: the buffered path with the same chunks (taken when the cache is read-only).
    from keras_hybrid_interp.core import data_pass as _pass
    from keras_hybrid_interp.core.data import DataStream
    from keras_hybrid_interp.core.engine import TailEngine
    from keras_hybrid_interp.core.perturbation import Job, job_permutation
    from keras_hybrid_interp.core.reducers import FrontierCache

    x, _ = _data(n=20)
    ga = GlobalAnalyzer(residual_model())
    eng = TailEngine(ga.graph, ga.graph.resolve("res_conv1"))  # crossed by the skip from stem_pool
    red = FrontierCache(eng)
    _pass.run(eng.graph, DataStream(x, batch_size=8), [red])
    cache = red.result()
    assert len(cache.arrays) == 2
    before = [a.copy() for a in cache.arrays]
    jobs = [Job(np.array([ch]), "permute", perm=job_permutation(5, ch, 0, 20)) for ch in range(6)]
    jobs += [Job(np.array([1, 3]), "fill", fill=np.float32(0)), Job(np.array([], dtype=np.int64))]
    budget = {"memory_budget": eng.per_sample_bytes() * 9}
    assert eng.plan(20, len(jobs), 1, **budget) == (1, 7)  # chunks of 7, 7 and 6 (padded)
    got = eng.outputs(cache, jobs, perturbations_per_eval=1, **budget)
    for a, a0 in zip(cache.arrays, before):
        np.testing.assert_array_equal(a, a0)
    for a in cache.arrays:
        a.flags.writeable = False
    ref = eng.outputs(cache, jobs, perturbations_per_eval=1, **budget)
    np.testing.assert_array_equal(got, ref)
    assert not np.array_equal(got[0], got[-1])  # the permutation changed the outputs

    # A score that raises mid-run leaves the cache as it was too.
    for a in cache.arrays:
        a.flags.writeable = True

    def boom(out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        eng.run(cache, jobs, boom, perturbations_per_eval=1, **budget)
    for a, a0 in zip(cache.arrays, before):
        np.testing.assert_array_equal(a, a0)


def test_free_spatial_dimensions_count_in_the_memory_budget():
    """A tail of free spatial size counts them at the cached maps' size, so the budget still bounds a pass."""
    from keras import layers

    def build(shape):
        keras.utils.set_random_seed(0)
        inp = keras.Input(shape)
        h = layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
        h = layers.Conv2D(8, 3, activation="relu", name="c2")(h)
        return keras.Model(inp, layers.Dense(3)(layers.GlobalAveragePooling2D()(h)))

    free = GlobalAnalyzer(build((None, None, 3)), blocks=["c1"])
    fixed = GlobalAnalyzer(build((12, 12, 3)), blocks=["c1"])
    eng_free = _engine.TailEngine(free.graph, free.block_keys[0])
    eng_fixed = _engine.TailEngine(fixed.graph, fixed.block_keys[0])
    cache = Cache([np.zeros((40, 10, 10, 6), np.float32)], None, 40)  # c1's maps of 12 x 12 inputs
    exact = eng_fixed.per_sample_bytes()
    assert eng_free.per_sample_bytes() < exact  # without the cache, free dims would count as nothing
    assert eng_free.per_sample_bytes(_plan.free_dim_of(cache)) >= exact  # with it, an upper bound
    budget = 10 * exact
    p, b = eng_free.plan(40, 30, perturbations_per_eval="auto", memory_budget=budget, cache=cache)
    assert p * b * exact <= budget
