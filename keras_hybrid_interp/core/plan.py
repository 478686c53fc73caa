"""How the tail engines stack perturbations: the plan of a run and its calibration by timing.

A run of ``n_jobs`` perturbations on ``n`` cached samples goes in tail passes
of ``p`` perturbations (stacked along the batch axis) on chunks of ``b``
samples. Every pass holds at most ``memory_budget / per-sample bytes``
samples (:func:`samples_per_pass`, at most ``MAX_SAMPLES_PER_PASS``). The rule
that chooses ``(p, b)`` from ``perturbations_per_eval``
(:meth:`TailEngine.plan <keras_hybrid_interp.core.engine.TailEngine.plan>` dispatches):

* a positive int: :func:`fixed_stacking`, that many perturbations a pass on
  chunks of as many samples as then fit;
* ``"auto"``: :func:`auto_stacking`, a plan measured by timing candidate
  passes (:func:`calibrate_stacking`) when the run is big enough to pay for
  it (a plan already measured for the same ``n`` and budget is reused), else
  :func:`memory_stacking`, all samples in one chunk where they fit and as
  many perturbations stacked as fit.

Stacked chunks are padded to a multiple of ``STACK_ALIGN`` samples where the
budget allows (:func:`stacked_chunk`). Stacking never changes which outputs a
job gets, only the batch shape.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

import keras

from .distribute import predict_on_batch
from .validation import check_int

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Calibration",
    "calibrate_stacking",
    "stacking_candidates",
    "samples_per_pass",
    "check_stacking",
    "fixed_stacking",
    "memory_stacking",
    "auto_stacking",
]

#: Bytes of activations one stacked tail pass may use (estimate).
DEFAULT_MEMORY_BUDGET = 512 * 2**20
#: Upper bound on samples per tail forward pass.
MAX_SAMPLES_PER_PASS = 4096
#: ``perturbations_per_eval="auto"`` times candidate stackings only for runs of at
#: least this many (perturbation x sample) tail evaluations (smaller runs take the
#: memory plan: timing would cost more than it saves, and JAX compiles once per shape).
CALIBRATE_MIN_WORK = 2**16
#: Calibration stops trying candidates once it would exceed this fraction of the
#: estimated run time (estimated from the fastest candidate timed so far).
CALIBRATE_MAX_FRACTION = 0.05
#: Smallest chunk of samples calibration tries.
CALIBRATE_MIN_CHUNK = 8
#: With several perturbations stacked, chunks are padded to a multiple of this many
#: samples (where the memory budget allows), so that every slot of a pass starts at the
#: same offset modulo the CPU's vector width: TensorFlow's CPU kernels on an AVX2 machine
#: gave a sample a last-ulp different output in slot 1 of a 2 x 30 pass than in slot 0
#: (never at multiples of 8), which broke the exact baseline of an unused filter.
STACK_ALIGN = 16

#: The timer of :func:`calibrate_stacking` (a module attribute so that tests can replace it).
calibration_clock = time.perf_counter


@dataclasses.dataclass
class Calibration:
    """What ``perturbations_per_eval="auto"`` measured for one (n, memory budget) of an engine.

    Attributes
    ----------
    plan : (int, int)
        The chosen (perturbations per pass ``p``, samples per chunk ``b``).
    seconds : dict
        ``{(p, b): estimated seconds of the whole run}`` for every candidate timed:
        the fastest pass of the candidate times its passes per run,
        ``ceil(n_jobs / p) * ceil(n / b)``.
    pass_seconds : dict
        ``{(p, b): seconds of one tail pass}`` (the fastest timed call after a warm-up call).
    wall : float
        Seconds spent calibrating (warm-ups included).
    n_jobs : int
        The job count of the run that calibrated.
    """

    plan: tuple
    seconds: dict
    pass_seconds: dict
    wall: float
    n_jobs: int


# ----------------------------------------------------------------------
# Chunk sizes and candidates
# ----------------------------------------------------------------------
def balanced_chunk(n: int, b: int) -> int:
    """Samples per chunk when ``n`` samples go in chunks of at most ``b``, balanced so that padding wastes little."""
    n_chunks = math.ceil(n / b)
    return math.ceil(n / n_chunks)


def stacked_chunk(b: int, p: int, samples_per_pass: int) -> int:
    """The chunk of ``p > 1`` stacked slots: ``b`` rounded up to a multiple of ``STACK_ALIGN``.

    When ``p`` copies of ``b`` fit in a pass but ``p`` rounded-up copies do not,
    ``b`` split into the fewest equal parts that do fit, each rounded up (every
    slot must start aligned: an unaligned offset changed the sums of some CPU
    kernels; equal parts keep the padding of the extra chunk small).
    ``b`` itself when ``p`` is 1, or when not even ``p`` copies of ``b`` fit.
    """
    if p <= 1:
        return b
    a = math.ceil(b / STACK_ALIGN) * STACK_ALIGN
    if p * a <= samples_per_pass:
        return a
    cap = (samples_per_pass // p) // STACK_ALIGN * STACK_ALIGN
    if p * b > samples_per_pass or cap < STACK_ALIGN:
        return b
    # b split into the fewest equal parts that fit under cap, each rounded up (still <= cap): little padding.
    parts = math.ceil(b / cap)
    return math.ceil(math.ceil(b / parts) / STACK_ALIGN) * STACK_ALIGN


def stacking_candidates(n: int, n_jobs: int, samples_per_pass: int, min_chunk: int | None = None):
    """The (p, b) plans calibration may try, as two lists that start from ``(1, min(n, samples_per_pass))``.

    ``up``: ``p`` = 1, 2, 4, ... perturbations stacked on chunks of
    ``b = min(n, samples_per_pass)`` samples (padded by :func:`stacked_chunk`
    when ``p > 1``), up to the memory cap ``min(n_jobs, samples_per_pass // b)``
    (the cap itself included).
    ``down``: one perturbation per pass on chunks of ``b/2, b/4, ...``
    samples (balanced by :func:`balanced_chunk`), down to ``min_chunk``
    (default ``CALIBRATE_MIN_CHUNK``).
    """
    min_chunk = CALIBRATE_MIN_CHUNK if min_chunk is None else min_chunk
    b_max = balanced_chunk(n, max(1, min(n, samples_per_pass)))
    b_stack = stacked_chunk(b_max, 2, samples_per_pass)
    p_cap = max(1, min(n_jobs, samples_per_pass // b_stack))
    up, p = [(1, b_max)], 2
    while p < p_cap:
        up.append((p, b_stack))
        p *= 2
    if p_cap > 1:
        up.append((p_cap, b_stack))
    down, s = [], b_max // 2
    while s >= max(1, min_chunk):
        cand = (1, balanced_chunk(n, s))
        if cand not in down and cand[1] < b_max:
            down.append(cand)
        s //= 2
    return up, [up[0]] + down


# ----------------------------------------------------------------------
# Feeding a tail for timing
# ----------------------------------------------------------------------
def free_dim_of(cache) -> int | None:
    """The largest spatial length among a cache's arrays (what a free dimension of the tail is taken as), or None."""
    if cache is None:
        return None
    lengths = [int(n) for a in cache.arrays for n in a.shape[1:-1]]
    return max(lengths) if lengths else None


def _fits(t, a) -> bool:
    """Whether array ``a`` (non-empty) can feed tail input ``t`` (free dimensions match anything)."""
    return len(a) > 0 and len(a.shape) == len(t.shape) and all(
        d is None or int(d) == m for d, m in zip(t.shape[1:], a.shape[1:]))


def can_calibrate(tail, arrays) -> bool:
    """Whether :func:`calibration_feed` can feed ``tail``: each input has a cached array or a static shape."""
    return all((i < len(arrays) and _fits(t, arrays[i])) or None not in tuple(t.shape[1:])
               for i, t in enumerate(tail.inputs))


def calibration_feed(tail, arrays, samples: int) -> list:
    """A feed of ``samples`` rows for every input of ``tail`` (see :func:`can_calibrate`).

    Input ``i < len(arrays)`` repeats the rows of ``arrays[i]`` (the cached
    activations, so the timing sees real values); the other inputs, and all of
    them when ``arrays`` is empty, are zeros of the input's shape and dtype
    (for a tied tail: masks off).
    """
    feed = []
    for i, t in enumerate(tail.inputs):
        if i < len(arrays) and _fits(t, arrays[i]):
            a = arrays[i]
            reps = math.ceil(samples / len(a))
            feed.append(np.concatenate([a] * reps, axis=0)[:samples] if reps > 1 else np.ascontiguousarray(a[:samples]))
        else:
            shape = (samples,) + tuple(int(d) for d in t.shape[1:])
            feed.append(np.zeros(shape, dtype=keras.backend.standardize_dtype(t.dtype)))
    return feed


# ----------------------------------------------------------------------
# Calibration: timing candidate plans
# ----------------------------------------------------------------------
class PlanTimer:
    """The timings of one calibration (:func:`calibrate_stacking`): candidates timed so far, and its budget.

    Attributes
    ----------
    seconds, pass_seconds : dict
        As :class:`Calibration`'s, for the candidates timed so far.
    overhead : float
        Warm-up minus steady pass time of the last candidate: the compile cost of a shape.
    """

    def __init__(self, tail, arrays, n: int, n_jobs: int, max_fraction: float):
        self.tail, self.arrays, self.n, self.n_jobs = tail, arrays, n, n_jobs
        self.max_fraction = max_fraction
        self.start = calibration_clock()
        self.seconds: dict = {}
        self.pass_seconds: dict = {}
        self.overhead = 0.0

    def passes(self, plan) -> int:
        """Tail passes of the whole run under ``plan``."""
        p, b = plan
        return math.ceil(self.n_jobs / p) * math.ceil(self.n / b)

    def time_plan(self, plan) -> float:
        """Times one pass of ``plan`` (a warm-up call, then the fastest of 2 to 5); the run's estimate."""
        p, b = plan
        feed = calibration_feed(self.tail, self.arrays, p * b)
        x = feed if len(feed) > 1 else feed[0]
        t0 = calibration_clock()
        predict_on_batch(self.tail, x)
        first = calibration_clock() - t0
        best, total, calls = math.inf, 0.0, 0
        while calls < 2 or (total < 0.1 and calls < 5):
            t0 = calibration_clock()
            predict_on_batch(self.tail, x)
            dt = calibration_clock() - t0
            best, total, calls = min(best, dt), total + dt, calls + 1
        self.overhead = max(0.0, first - best)
        self.pass_seconds[plan] = best
        self.seconds[plan] = best * self.passes(plan)
        return self.seconds[plan]

    def affordable(self, plan) -> bool:
        """Whether timing ``plan`` keeps the calibration within ``max_fraction`` of the best run estimate."""
        if not self.seconds:
            return True
        best_run = min(self.seconds.values())
        per_sample = min(self.pass_seconds[q] / (q[0] * q[1]) for q in self.pass_seconds)
        cost = self.overhead + 3 * per_sample * plan[0] * plan[1]
        return (calibration_clock() - self.start) + cost <= self.max_fraction * best_run

    def walk(self, path) -> bool:
        """Times the candidates of ``path`` in order while they improve; whether any improved."""
        improved_any, misses = False, 0
        for plan in path:
            if plan in self.seconds:
                continue
            if not self.affordable(plan):
                break
            best_before = min(self.seconds.values())
            if self.time_plan(plan) < best_before:
                improved_any, misses = True, 0
            else:
                misses += 1
                if misses > 1:  # one step that does not improve is tolerated: timings are noisy
                    break
        return improved_any


def calibrate_stacking(tail, n: int, n_jobs: int, samples_per_pass: int, arrays=(),
                       max_fraction: float | None = None, min_chunk: int | None = None) -> Calibration:
    """Chooses the stacking of a run by measured throughput (``perturbations_per_eval="auto"``).

    Times one tail pass of each candidate of :func:`stacking_candidates`
    (a warm-up call, which also traces or compiles the shape, then the
    fastest of 2 to 5 timed calls, at least 0.1 s of them where that takes
    no more than 5) and estimates the whole run as pass time x
    ``ceil(n_jobs / p) * ceil(n / b)`` passes. It starts at one perturbation
    per pass on all samples (``(1, min(n, cap))``), walks down (smaller
    chunks) while the estimate improves, tolerating one step that does not
    (timings on a loaded machine are noisy), and, if no step down improved
    it, up (more stacked perturbations) the same way: the time per sample is
    assumed to be roughly unimodal in the pass size. It stops
    trying candidates when the next one would take the calibration past
    ``max_fraction`` of the best run estimate so far. Returns the fastest
    candidate timed. ``max_fraction`` and ``min_chunk`` default to
    ``CALIBRATE_MAX_FRACTION`` and ``CALIBRATE_MIN_CHUNK``.
    """
    max_fraction = CALIBRATE_MAX_FRACTION if max_fraction is None else max_fraction
    up, down = stacking_candidates(n, n_jobs, samples_per_pass, min_chunk)
    timer = PlanTimer(tail, arrays, n, n_jobs, max_fraction)
    timer.time_plan(down[0])
    if not timer.walk(down[1:]):
        timer.walk(up[1:])
    seconds = timer.seconds
    best = min(seconds, key=lambda c: seconds[c])
    return Calibration(best, seconds, timer.pass_seconds, calibration_clock() - timer.start, int(n_jobs))


# ----------------------------------------------------------------------
# The plan of a run
# ----------------------------------------------------------------------
def samples_per_pass(per_sample_bytes: int, memory_budget) -> int:
    """Samples one tail pass may hold: ``memory_budget / per_sample_bytes``, between 1 and ``MAX_SAMPLES_PER_PASS``."""
    return int(max(1, min(MAX_SAMPLES_PER_PASS, memory_budget // per_sample_bytes)))


def check_stacking(perturbations_per_eval) -> str | int:
    """``perturbations_per_eval`` checked: ``"auto"`` or a positive int; a ValueError otherwise."""
    if isinstance(perturbations_per_eval, str) and perturbations_per_eval == "auto":
        return "auto"
    return check_int(perturbations_per_eval, "perturbations_per_eval", expected="'auto' or a positive int")


def fixed_stacking(n: int, n_jobs: int, perturbations_per_eval: int, samples_per_pass: int) -> tuple[int, int]:
    """``(p, b)`` for an int ``perturbations_per_eval``: that many jobs a pass (at most ``n_jobs``).

    Chunks of as many samples as then fit, balanced so that padding the last
    one wastes little, and padded to aligned slots (:func:`stacked_chunk`).
    """
    p = int(min(perturbations_per_eval, max(n_jobs, 1)))
    b = balanced_chunk(n, min(n, max(1, samples_per_pass // p)))
    return p, stacked_chunk(b, p, samples_per_pass)


def memory_stacking(n: int, n_jobs: int, samples_per_pass: int) -> tuple[int, int]:
    """``(p, b)`` of ``"auto"`` without timing: all samples in one chunk (if they fit), as many jobs stacked as fit."""
    b = balanced_chunk(n, min(n, samples_per_pass))
    p = max(1, min(n_jobs, samples_per_pass // b))
    if p > 1:
        a = stacked_chunk(b, 2, samples_per_pass)
        if min(p, samples_per_pass // a) > 1:
            p, b = min(p, samples_per_pass // a), a
    return p, b


def auto_stacking(n: int, n_jobs: int, samples_per_pass: int, memory_budget: int,
                  calibrations: dict, calibrate: Callable[[], Calibration | None]) -> tuple[int, int]:
    """``(p, b)`` for ``perturbations_per_eval="auto"``: measured where the run pays for measuring.

    A plan already measured for ``(n, memory_budget)`` (in ``calibrations``) is
    reused, with ``p`` capped at ``n_jobs``, so that the baseline and the
    perturbations of one run get passes of one shape. Else, if ``n_jobs * n >=
    CALIBRATE_MIN_WORK`` and there is more than one candidate,
    ``calibrate()`` (:func:`calibrate_stacking` on the engine's tail; None
    where the tail cannot be fed for timing) measures one, which is stored in
    ``calibrations``. Otherwise :func:`memory_stacking`.
    """
    known = calibrations.get((int(n), int(memory_budget)))
    if known is not None:
        p, b = known.plan
        return max(1, min(p, int(n_jobs))), b
    if n_jobs * n >= CALIBRATE_MIN_WORK:
        up, down = stacking_candidates(n, n_jobs, samples_per_pass)
        if len(set(up + down)) > 1:
            cal = calibrate()
            if cal is not None:
                calibrations[(int(n), int(memory_budget))] = cal
                return cal.plan
    return memory_stacking(n, n_jobs, samples_per_pass)
