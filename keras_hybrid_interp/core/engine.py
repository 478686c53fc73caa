"""The tail-only, batched perturbation engine behind filter importance.

Perturbing one filter of a layer changes nothing upstream of that layer, so
the *prefix* of the model (input -> layer) is run once and its output is
cached, together with every earlier tensor that crosses the cut (the skip
connections of a residual block: :meth:`ModelGraph.frontier`). Each
perturbation then re-runs only the *tail* (cut -> model output), a
``keras.Model`` built once from fresh inputs. Several perturbed copies of a
chunk of samples are stacked along the batch axis, so one forward pass
evaluates ``perturbations_per_eval`` perturbations. Every forward pass of the
tail gets the same input shape (short groups and the last chunk are padded
and the padding discarded), so the tail is traced once. With
``perturbations_per_eval="auto"`` a big run first times a few candidate
stackings (:func:`calibrate_stacking`, once per engine, sample count and
memory budget) and takes the fastest: a pass of more stacked samples is not
always cheaper per sample (it can be several times dearer on CPUs, whose
caches favour small batches). Those calibration passes are the only other
shapes the tail sees.

The tail computes exactly what the full model computes after the cut (same
layer objects, same operations, ``training=False``), so an ablation gives
bit-identical outputs to a full-model re-run with the ablation inserted at
the layer, and a permutation gives bit-identical outputs given the same
permutation (up to the CPU/GPU kernels being batch-size invariant, which the
tests check: TensorFlow's and torch's CPU kernels are; JAX's XLA:CPU is not
for some reductions, a few ulp; README, Backends).

Memory: the cache holds the frontier tensors for the analysed samples, i.e.
``n_samples x (H*W*C of the layer + the skip tensors)`` in the model dtype;
each tail pass holds ``perturbations_per_eval x chunk`` samples of the tail's
activations, bounded by ``memory_budget``.

This module is the only one that needs backend-specific code: the gradient
of :func:`make_input_gradient` (Taylor importance) switches between
``tf.GradientTape``, ``jax.grad`` and ``torch.autograd``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

import keras

from .distribute import predict_on_batch
from .layers import dense_head_after, global_pool_after, pointwise_head_after

__all__ = [
    "TailEngine",
    "TiedTailEngine",
    "PooledHeadEngine",
    "LinearHeadEngine",
    "PointwiseHeadEngine",
    "MapSummary",
    "tail_engine",
    "Job",
    "FrontierCache",
    "resolve_entropy",
    "job_permutation",
    "DEFAULT_MEMORY_BUDGET",
    "Calibration",
    "calibrate_stacking",
]

#: Bytes of activations one stacked tail pass may use (estimate).
DEFAULT_MEMORY_BUDGET = 512 * 2**20
#: Cache size above which a warning suggests ``max_samples``.
CACHE_WARN_BYTES = 2**30
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


def check_single_output(graph) -> None:
    """The engines perturb towards one output: a clear error for a multi-output model."""
    if len(graph.output_keys) != 1:
        raise ValueError(
            f"Filter importance needs a single-output model; model {graph.model.name!r} has "
            f"{len(graph.output_keys)} outputs."
        )


def resolve_entropy(random_state, argname="random_state") -> int:
    """Integer entropy for :class:`numpy.random.SeedSequence` from ``random_state``.

    ``None`` draws fresh OS entropy (not reproducible, as in scikit-learn);
    an int is used as is; a ``numpy.random.Generator`` or ``SeedSequence``
    contributes one draw. Global RNGs are never used.
    """
    if random_state is None:
        fresh = np.random.SeedSequence().entropy  # drawn from the OS: an int
        assert isinstance(fresh, int)
        return fresh
    if isinstance(random_state, bool):
        raise TypeError(
            f"`{argname}` must be None, an int, a numpy Generator or SeedSequence; received {random_state!r}."
        )
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"`{argname}` must be a non-negative int; received {random_state}.")
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    if isinstance(random_state, np.random.SeedSequence):
        return int(random_state.generate_state(2, dtype=np.uint64)[0])
    raise TypeError(
        f"`{argname}` must be None, an int, a numpy.random.Generator or a numpy.random.SeedSequence; "
        f"received {type(random_state).__name__}: {random_state!r}."
    )


def job_permutation(entropy: int, group: int, repeat: int, n: int) -> np.ndarray:
    """The permutation of ``n`` samples used for (``group``, ``repeat``).

    Each (group, repeat) pair gets its own child stream of
    ``SeedSequence(entropy)``, so results do not depend on how jobs are
    batched (``perturbations_per_eval``) and no permutation is stored.
    """
    ss = np.random.SeedSequence(entropy, spawn_key=(int(group), int(repeat)))
    return np.random.default_rng(ss).permutation(n)


@dataclasses.dataclass
class Job:
    """One perturbation of the cut tensor.

    Attributes
    ----------
    channels : ndarray of int, shape (k,)
        Filters (channels of the cut tensor) that are perturbed.
    kind : {"none", "permute", "fill"}
        ``"permute"``: sample ``i`` receives the maps of sample ``perm[i]`` for
        these channels (the other channels are left intact). ``"fill"``: the
        maps are replaced by ``fill`` (broadcast to ``(spatial..., k)``).
    perm : ndarray of shape (n,) or callable returning one, optional
    fill : float or ndarray broadcastable to (spatial..., k), optional
    """

    channels: np.ndarray
    kind: str = "none"
    perm: np.ndarray | Callable[[], np.ndarray] | None = None
    fill: float | np.ndarray | dict[int, np.ndarray] | None = None  # a dict: per tied tensor


@dataclasses.dataclass
class Cache:
    """Frontier tensors of the analysed samples (one array per frontier key)."""

    arrays: list
    labels: np.ndarray | None
    n: int
    #: For an engine that does not cache the block's maps (:class:`PooledHeadEngine`): their
    #: per-channel range and float64 mean map over the samples (:class:`MapSummary`); None otherwise.
    summary: MapSummary | None = None

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))


def score_jobs(tail, jobs: Sequence[Job], n: int, p: int, b: int, fill, score, progress=None) -> np.ndarray:
    """The one loop over stacked perturbations, shared by every tail engine.

    Jobs go in groups of ``p`` (one slot each), samples in chunks of ``b``;
    ``fill(g0, group, perms, s, e)`` writes the chunk's perturbed inputs into
    the engine's ``(p, b, ...)`` buffers and returns the tail's feed; each
    (group, chunk) is one tail pass. ``score`` receives one job's outputs of
    all ``n`` samples, in sample order; a score with ``begin()`` (one that adds
    up over samples: :class:`~keras_hybrid_interp.core.task.SegmentationScore`)
    is fed each pass's chunk instead (``acc.update(out_chunk, score.targets[s:e])``),
    so that no job's outputs of all samples are held.
    """
    scores = np.empty(len(jobs), dtype=np.float64)
    n_chunks = math.ceil(n / b)
    chunked = hasattr(score, "begin")
    for g0 in range(0, len(jobs), p):
        group = list(jobs[g0:g0 + p])
        perms = [(j.perm() if callable(j.perm) else j.perm) if j.kind == "permute" else None for j in group]
        outs = [score.begin() if chunked else [] for _ in group]
        for ci in range(n_chunks):
            s, e = ci * b, min((ci + 1) * b, n)
            feed = fill(g0, group, perms, s, e)
            out = np.asarray(predict_on_batch(tail, feed if len(feed) > 1 else feed[0]))
            out = out.reshape((p, b) + out.shape[1:])
            for slot in range(len(group)):
                if chunked:
                    outs[slot].update(out[slot, :e - s], score.targets[s:e])
                else:
                    outs[slot].append(out[slot, :e - s])
        for slot in range(len(group)):
            scores[g0 + slot] = float(outs[slot].result() if chunked else score(np.concatenate(outs[slot], axis=0)))
        if progress is not None:
            progress(min(g0 + p, len(jobs)))
    return scores


def chunk_fill_in_place(key_arr: np.ndarray, others: Sequence[np.ndarray], b: int):
    """``(fill, undo)`` for :func:`score_jobs` with one job per pass on chunks of ``b`` samples, copy-free.

    Each pass perturbs the cache's own rows of its chunk (``key_arr[s:e]``, the
    job's channels only, their values saved first) and feeds views of the
    cache; the next ``fill`` (and ``undo``, which the caller runs at the end,
    also on error) puts the saved values back, so between passes the cache is
    unchanged. Only a short last chunk is copied, into a zero-padded buffer.
    A permutation reads rows of other chunks, which are unperturbed then.
    """
    grid = [np.arange(d) for d in key_arr.shape[1:-1]]
    pad_key = np.zeros((b,) + key_arr.shape[1:], dtype=key_arr.dtype)
    pad_others = [np.zeros((b,) + a.shape[1:], dtype=a.dtype) for a in others]
    saved: list[tuple] = []  # (start, end, channels, original rows) of each chunk perturbed in place

    def undo():
        while saved:
            s, e, ch, orig = saved.pop()
            key_arr[s:e, ..., ch] = orig

    def fill(g0, group, perms, s, e):
        undo()
        (job,), (perm,) = group, perms
        ch = job.channels
        if job.kind in ("permute", "fill"):
            rows = key_arr[s:e]
            orig = rows[..., ch]  # advanced indexing: a copy
            rows[..., ch] = key_arr[np.ix_(perm[s:e], *grid, ch)] if job.kind == "permute" else job.fill
            saved.append((s, e, ch, orig))
        elif job.kind != "none":  # pragma: no cover - internal
            raise ValueError(job.kind)
        m = e - s
        if m == b:
            return [key_arr[s:e]] + [a[s:e] for a in others]
        pad_key[:m] = key_arr[s:e]
        for pb, a in zip(pad_others, others):
            pb[:m] = a[s:e]
        return [pad_key] + pad_others

    return fill, undo


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
    start = calibration_clock()
    seconds, pass_seconds = {}, {}
    overhead = [0.0]  # warm-up minus steady pass time of the last candidate: the compile cost of a shape

    def passes(plan):
        p, b = plan
        return math.ceil(n_jobs / p) * math.ceil(n / b)

    def time_plan(plan):
        p, b = plan
        feed = calibration_feed(tail, arrays, p * b)
        x = feed if len(feed) > 1 else feed[0]
        t0 = calibration_clock()
        predict_on_batch(tail, x)
        first = calibration_clock() - t0
        best, total, calls = math.inf, 0.0, 0
        while calls < 2 or (total < 0.1 and calls < 5):
            t0 = calibration_clock()
            predict_on_batch(tail, x)
            dt = calibration_clock() - t0
            best, total, calls = min(best, dt), total + dt, calls + 1
        overhead[0] = max(0.0, first - best)
        pass_seconds[plan] = best
        seconds[plan] = best * passes(plan)
        return seconds[plan]

    def affordable(plan):
        if not seconds:
            return True
        best_run = min(seconds.values())
        per_sample = min(pass_seconds[q] / (q[0] * q[1]) for q in pass_seconds)
        cost = overhead[0] + 3 * per_sample * plan[0] * plan[1]
        return (calibration_clock() - start) + cost <= max_fraction * best_run

    def walk(path):
        improved_any, misses = False, 0
        for plan in path:
            if plan in seconds:
                continue
            if not affordable(plan):
                break
            best_before = min(seconds.values())
            if time_plan(plan) < best_before:
                improved_any, misses = True, 0
            else:
                misses += 1
                if misses > 1:  # one step that does not improve is tolerated: timings are noisy
                    break
        return improved_any

    time_plan(down[0])
    if not walk(down[1:]):
        walk(up[1:])
    best = min(seconds, key=lambda c: seconds[c])
    return Calibration(best, seconds, pass_seconds, calibration_clock() - start, int(n_jobs))


class TailEngine:
    """Prefix/tail split of a model at tensor ``key`` of a :class:`ModelGraph`.

    Parameters
    ----------
    graph : ModelGraph
    key : int
        Tensor key of the perturbed layer output (a feature map of rank 3, 4 or 5, channels last).

    Attributes
    ----------
    calibrations : dict
        ``{(n, memory_budget): Calibration}``: the stackings ``perturbations_per_eval="auto"``
        measured and chose (:meth:`plan`); empty until a run is big enough to calibrate.
    """

    #: Whether the cache holds the block's own maps (else only what the shortcut needs: see
    #: :class:`PooledHeadEngine`).
    caches_maps = True

    def __init__(self, graph, key: int):
        self.graph = graph
        self.key = key
        self.cut = key  # where the tail starts
        check_single_output(graph)
        self.frontier = graph.frontier(key)
        self.tail = graph.build(graph.output_keys, inputs=self.frontier, name="khi_tail")
        self.shape = tuple(graph.tensors[key].shape[1:])
        self.channels = int(self.shape[-1])
        out_shape = graph.tensors[graph.output_keys[0]].shape
        self.output_shape = tuple(out_shape[1:])
        self._grad_fn: Callable | None = None

    @property
    def cache_keys(self) -> list[int]:
        """Tensors the cache of this engine holds per sample (:class:`FrontierCache`): the frontier."""
        return list(self.frontier)

    # ------------------------------------------------------------------
    def per_sample_bytes(self, free_dim: int | None = None) -> int:
        """Estimated activation bytes of one sample through the tail.

        A free dimension (``None`` in the graph) counts as ``free_dim``: the
        largest spatial length of the cached data (:meth:`plan` passes it), an
        upper bound where the tail only keeps or shrinks its maps; a tensor
        with a free dimension is left out when ``free_dim`` is None.
        """
        total = 0
        for t in self.graph.tensors:
            if t.key >= self.cut or t.key in self.frontier:
                dims = [free_dim if d is None else d for d in t.shape[1:]]
                known = [d for d in dims if d is not None]
                if len(known) != len(dims):
                    continue
                total += int(np.prod(known, dtype=np.int64)) * 4
        return max(total, 1)

    def frontier_bytes_per_sample(self) -> int:
        total = 0
        for k in self.frontier:
            dims = self.graph.tensors[k].shape[1:]
            total += int(np.prod([d or 1 for d in dims], dtype=np.int64)) * 4
        return total

    # ------------------------------------------------------------------
    def plan(self, n: int, n_jobs: int, perturbations_per_eval="auto", memory_budget=DEFAULT_MEMORY_BUDGET, *,
             cache: Cache | None = None):
        """Returns (jobs per pass P, samples per chunk b).

        Every pass holds at most ``memory_budget / per_sample_bytes()`` samples
        (and at most ``MAX_SAMPLES_PER_PASS``). An int ``perturbations_per_eval``
        stacks that many jobs on chunks of as many samples as then fit.

        ``"auto"`` chooses by measured throughput when the run is big enough to
        pay for measuring: if ``n_jobs * n >= CALIBRATE_MIN_WORK`` and there is
        more than one candidate, :func:`calibrate_stacking` times one tail pass
        of candidate plans (1, 2, 4, ... perturbations stacked on all samples,
        up to the memory cap; or one perturbation on smaller chunks, down to
        ``CALIBRATE_MIN_CHUNK`` samples), spending at most
        ``CALIBRATE_MAX_FRACTION`` of the estimated run time, and keeps the
        fastest. The choice is cached on the engine (:attr:`calibrations`) under
        ``(n, memory_budget)``: later calls with the same ``n`` and budget reuse
        it (with ``P`` capped at their ``n_jobs``), so that the baseline and the
        perturbations of one run (:meth:`baseline_outputs`, :meth:`run`) get
        passes of one shape. Smaller runs take the memory plan: all samples in
        one chunk (if they fit) and as many perturbations stacked as fit.
        Stacked chunks are padded to a multiple of ``STACK_ALIGN`` samples
        where the budget allows (:func:`stacked_chunk`).
        Stacking never changes which outputs a job gets, only the batch shape.
        ``cache`` supplies real activations for the timing (else zeros).
        """
        per = self.per_sample_bytes(free_dim_of(cache))
        samples_per_pass = int(max(1, min(MAX_SAMPLES_PER_PASS, memory_budget // per)))
        if isinstance(perturbations_per_eval, str):
            if perturbations_per_eval != "auto":
                raise ValueError(
                    f"`perturbations_per_eval` must be 'auto' or a positive int; received {perturbations_per_eval!r}."
                )
            calibrations: dict[tuple[int, int], Calibration] | None = getattr(self, "calibrations", None)
            if calibrations is None:
                calibrations = {}
                self.calibrations = calibrations
            known = calibrations.get((int(n), int(memory_budget)))
            if known is not None:
                p, b = known.plan
                return max(1, min(p, int(n_jobs))), b
            arrays = () if cache is None else cache.arrays[:len(self.frontier)]
            if n_jobs * n >= CALIBRATE_MIN_WORK and can_calibrate(self.tail, arrays):
                up, down = stacking_candidates(n, n_jobs, samples_per_pass)
                if len(set(up + down)) > 1:
                    cal = calibrate_stacking(self.tail, n, n_jobs, samples_per_pass, arrays)
                    calibrations[(int(n), int(memory_budget))] = cal
                    return cal.plan
            b = balanced_chunk(n, min(n, samples_per_pass))
            p = max(1, min(n_jobs, samples_per_pass // b))
            if p > 1:
                a = stacked_chunk(b, 2, samples_per_pass)
                if min(p, samples_per_pass // a) > 1:
                    p, b = min(p, samples_per_pass // a), a
            return p, b
        else:
            if (
                isinstance(perturbations_per_eval, bool)
                or not isinstance(perturbations_per_eval, (int, np.integer))
                or perturbations_per_eval < 1
            ):
                raise ValueError(
                    f"`perturbations_per_eval` must be 'auto' or a positive int; received {perturbations_per_eval!r}."
                )
            p = int(min(perturbations_per_eval, max(n_jobs, 1)))
            # Balanced chunks, so that padding the last one wastes little; aligned slots.
            b = balanced_chunk(n, min(n, max(1, samples_per_pass // p)))
            return p, stacked_chunk(b, p, samples_per_pass)

    def run(
        self,
        cache: Cache,
        jobs: Sequence[Job],
        score: Callable[[np.ndarray], float],
        perturbations_per_eval="auto",
        memory_budget=DEFAULT_MEMORY_BUDGET,
        progress=None,
    ) -> np.ndarray:
        """Scores every job; returns an array of shape (len(jobs),).

        ``score`` receives the tail outputs of all cached samples for one
        job, shape ``(n, *output_shape)``, in sample order.
        """
        n = cache.n
        p, b = self.plan(n, len(jobs), perturbations_per_eval, memory_budget, cache=cache)
        key_arr = cache.arrays[0]
        others = cache.arrays[1:]
        single_chunk = math.ceil(n / b) == 1
        if p == 1 and not single_chunk and all(a.flags.writeable for a in cache.arrays):
            # One perturbation per pass on chunks: perturb the cache's rows in place and feed views
            # (a copy of every chunk into a buffer cost 3 % of a run on the B1 model, TensorFlow).
            fill_rows, undo = chunk_fill_in_place(key_arr, others, b)
            try:
                return score_jobs(self.tail, jobs, n, p, b, fill_rows, score, progress)
            finally:
                undo()
        # Fixed-shape buffers: (p, b, ...) for every frontier tensor.
        buf_key = np.empty((p, b) + key_arr.shape[1:], dtype=key_arr.dtype)
        buf_others = [np.empty((p, b) + a.shape[1:], dtype=a.dtype) for a in others]
        grid = [np.arange(d) for d in key_arr.shape[1:-1]]
        dirty = [None] * p

        def fill(g0, group, perms, s, e):
            nonlocal dirty
            m = e - s
            base = key_arr[s:e]
            if single_chunk and g0 > 0:
                # Single chunk: the buffer already holds the samples; undo
                # only the channels the previous group perturbed.
                for slot, ch in enumerate(dirty):
                    if ch is not None:
                        buf_key[slot, :m][..., ch] = base[..., ch]
            else:
                buf_key[:, :m] = base[None]
                if m < b:
                    buf_key[:, m:] = 0
                for bo, a in zip(buf_others, others):
                    bo[:, :m] = a[s:e][None]
                    if m < b:
                        bo[:, m:] = 0
            dirty = [None] * p
            for slot, (job, perm) in enumerate(zip(group, perms)):
                ch = job.channels
                if job.kind == "permute":
                    idx = perm[s:e]
                    buf_key[slot, :m][..., ch] = key_arr[np.ix_(idx, *grid, ch)]
                    dirty[slot] = ch
                elif job.kind == "fill":
                    buf_key[slot, :m][..., ch] = job.fill
                    dirty[slot] = ch
                elif job.kind != "none":  # pragma: no cover - internal
                    raise ValueError(job.kind)
            return [buf_key.reshape((p * b,) + buf_key.shape[2:])] + [
                bo.reshape((p * b,) + bo.shape[2:]) for bo in buf_others
            ]

        return score_jobs(self.tail, jobs, n, p, b, fill, score, progress)

    def baseline_outputs(self, cache: Cache, n_jobs: int, perturbations_per_eval="auto",
                         memory_budget=DEFAULT_MEMORY_BUDGET) -> np.ndarray:
        """Unperturbed tail outputs (n, *output_shape), from passes of the same shape as the jobs'.

        The baseline runs as ``P`` unperturbed copies stacked like the ``n_jobs``
        perturbations will be, so that every tail pass of an importance run has
        one batch shape: a perturbation that changes nothing (a filter the tail
        ignores, a dead filter permuted) then gives exactly the baseline, even on
        kernels that are not batch-size invariant.
        """
        p, _ = self.plan(cache.n, max(int(n_jobs), 1), perturbations_per_eval, memory_budget, cache=cache)
        none = Job(np.array([], dtype=np.int64))
        # "auto" stays "auto": the plan it chose is cached under (n, budget), chunk size included.
        ppe = perturbations_per_eval if isinstance(perturbations_per_eval, str) else p
        return self.outputs(cache, [none] * p, perturbations_per_eval=ppe, memory_budget=memory_budget)[0]

    def outputs(
        self, cache: Cache, jobs: Sequence[Job], perturbations_per_eval="auto", memory_budget=DEFAULT_MEMORY_BUDGET
    ):
        """Tail outputs for every job, shape (len(jobs), n, *output_shape). For tests and small runs."""
        collected = []

        def keep(out):
            collected.append(out.copy())
            return 0.0

        self.run(cache, jobs, keep, perturbations_per_eval, memory_budget)
        return np.stack(collected)

    # ------------------------------------------------------------------
    def input_gradient(self, arrays: Sequence[np.ndarray], loss_fn, labels=None):
        """Gradient of ``sum(loss_fn(tail(arrays), labels))`` w.r.t. ``arrays[0]``, and the tail output.

        ``loss_fn(out, labels)`` maps the tail output (a backend tensor) and
        the labels (an int32 tensor, or None) to per-sample losses written
        with ``keras.ops``. One forward and one backward pass,
        ``training=False``; the model's weights are constants here.

        Returns
        -------
        (ndarray like ``arrays[0]``, ndarray of shape (n, *output_shape))
        """
        if self._grad_fn is None:
            self._grad_fn = make_input_gradient(self.tail, loss_fn)
        return self._grad_fn(list(arrays), labels)


class TiedTailEngine(TailEngine):
    """A tail that perturbs channel ``i`` of several tensors at once (``groups="coupled"``).

    Parameters
    ----------
    graph : ModelGraph
    key : int
        The analysed tensor; its channels are the rows of the result.
    tied : list of int
        Tensors tied to ``key`` channel by channel (:func:`.coupling.tied_tensors`),
        ``key`` included, all with ``key``'s channel count.

    The tail starts at the earliest tied tensor (so that perturbing an
    upstream one, such as a residual stage's input, reaches every branch
    that reads it) and is built with :meth:`ModelGraph.build_edited`: every
    tied tensor ``T`` the output needs is replaced, where the tail computes
    it, by ``where(mask_T, replacement_T, T)``, with a boolean per-sample
    channel mask and a replacement of ``T``'s shape fed as extra inputs. A
    job on channels ``ch`` sets the mask on ``ch`` of every tied tensor and
    feeds as replacement the cached *unperturbed* value of that tensor:
    ``T[perm[n], ..., ch]`` for a permutation (the same permutation for
    every tied tensor), or the job's fill. With the mask off the tail
    computes exactly what the plain tail computes (``where`` selects).

    The cache holds the frontier of the cut and every tied tensor for the
    analysed samples.
    """

    def __init__(self, graph, key: int, tied):
        self.graph = graph
        self.key = key
        check_single_output(graph)
        self.tied = sorted(int(k) for k in tied)
        if key not in self.tied:
            raise ValueError("`tied` must contain `key`.")  # internal
        self.cut = self.tied[0]
        self.frontier = graph.frontier(self.cut)
        self.shape = tuple(graph.tensors[key].shape[1:])
        self.channels = int(self.shape[-1])
        out_shape = graph.tensors[graph.output_keys[0]].shape
        self.output_shape = tuple(out_shape[1:])
        self._grad_fn = None
        channels = self.channels

        def edit_for(k):
            t = graph.tensors[k]
            rank = len(t.shape)

            def edit(tensor):
                mask = keras.Input(shape=(1,) * (rank - 2) + (channels,), dtype="bool", name=f"khi_mask_{k}")
                repl = keras.Input(shape=tuple(tensor.shape[1:]), dtype=tensor.dtype, name=f"khi_repl_{k}")
                return keras.ops.where(mask, repl, tensor), [mask, repl]

            return edit

        self.tail, self.edited = graph.build_edited(graph.output_keys, self.frontier,
                                                    {k: edit_for(k) for k in self.tied}, name="khi_tied_tail")

    @property
    def cache_keys(self) -> list[int]:
        """The frontier of the cut, then the tied tensors that are not in it."""
        return list(self.frontier) + [k for k in self.tied if k not in self.frontier]

    def per_sample_bytes(self, free_dim: int | None = None) -> int:
        # The tail's activations plus a replacement buffer per edited tensor.
        extra = sum(int(np.prod([d or free_dim or 1 for d in self.graph.tensors[k].shape[1:]], dtype=np.int64)) * 4
                    for k in self.edited)
        return TailEngine.per_sample_bytes(self, free_dim) + extra

    def frontier_bytes_per_sample(self) -> int:
        total = 0
        for k in self.cache_keys:
            dims = self.graph.tensors[k].shape[1:]
            total += int(np.prod([d or 1 for d in dims], dtype=np.int64)) * 4
        return total

    def run(self, cache: Cache, jobs: Sequence[Job], score: Callable[[np.ndarray], float],
            perturbations_per_eval="auto", memory_budget=DEFAULT_MEMORY_BUDGET, progress=None) -> np.ndarray:
        """Scores every job (as :meth:`TailEngine.run`); a job perturbs its channels in every tied tensor.

        ``Job.fill`` may be one value for every tied tensor or a dict
        ``{tensor key: fill}``.
        """
        n = cache.n
        p, b = self.plan(n, len(jobs), perturbations_per_eval, memory_budget, cache=cache)
        arrays = dict(zip(self.cache_keys, cache.arrays))
        front = [arrays[k] for k in self.frontier]
        members = [arrays[k] for k in self.edited]
        c = self.channels
        buf_front = [np.zeros((p, b) + a.shape[1:], dtype=a.dtype) for a in front]
        buf_mask = [np.zeros((p, b) + (1,) * (a.ndim - 2) + (c,), dtype=bool) for a in members]
        buf_repl = [np.zeros((p, b) + a.shape[1:], dtype=a.dtype) for a in members]

        def fill(g0, group, perms, s, e):
            m = e - s
            for bf, a in zip(buf_front, front):
                bf[:, :m] = a[s:e][None]
                bf[:, m:] = 0
            for bm in buf_mask:
                bm[...] = False
            for slot, (job, perm) in enumerate(zip(group, perms)):
                if job.kind == "none":
                    continue
                if job.kind not in ("permute", "fill"):  # pragma: no cover - internal
                    raise ValueError(job.kind)
                ch = job.channels
                for k, bm, br, a in zip(self.edited, buf_mask, buf_repl, members):
                    bm[slot, :m][..., ch] = True
                    if job.kind == "permute":
                        br[slot, :m][..., ch] = a[perm[s:e]][..., ch]
                    else:
                        br[slot, :m][..., ch] = job.fill[k] if isinstance(job.fill, dict) else job.fill
            feed = [bf.reshape((p * b,) + bf.shape[2:]) for bf in buf_front]
            for bm, br in zip(buf_mask, buf_repl):
                feed += [bm.reshape((p * b,) + bm.shape[2:]), br.reshape((p * b,) + br.shape[2:])]
            return feed

        return score_jobs(self.tail, jobs, n, p, b, fill, score, progress)

    def input_gradient(self, arrays, loss_fn, labels=None):  # pragma: no cover - guarded by check_request
        raise ValueError("The tied engine perturbs; Taylor importance uses the block's own engine.")


class FrontierCache:
    """Reducer that keeps the frontier tensors of an engine for every sample of a pass (the tail's cache).

    Memory: ``n x (H*W*C of the layer + the tensors crossing the cut)`` numbers
    in the model dtype; a warning suggests ``max_samples`` above 1 GiB.
    """

    def __init__(self, engine: TailEngine):
        from .data_pass import Tap

        self.engine = engine
        self.cached = tuple(Tap(k, "raw") for k in engine.cache_keys)
        # An engine that caches the pooled features only summarises the block's maps on the way.
        self.summary = MapSummary(engine.key) if not engine.caches_maps else None
        self.taps = self.cached + (self.summary.taps if self.summary is not None else ())
        self._parts: list[list] = [[] for _ in self.cached]
        self._labels: list = []
        self._per = engine.frontier_bytes_per_sample()
        self.n = 0
        self._warned = False

    def update(self, batch):
        for p, t in zip(self._parts, self.cached):
            a = batch.values[t.ident]
            if p and tuple(a.shape[1:]) != tuple(p[0].shape[1:]):
                raise ValueError(
                    f"`x`: filter importance caches {self.engine.graph.tensors[t.key].name!r} for every sample, so "
                    f"the batches must give it one shape; a batch gives {tuple(a.shape[1:])} after batches of "
                    f"{tuple(p[0].shape[1:])}. Pass inputs of one spatial size (resize them), or analyse a block "
                    "read only through a global pooling, whose cache has no spatial axes.")
            p.append(a)
        if batch.y is not None:
            self._labels.append(np.asarray(batch.y))
        if self.summary is not None:
            self.summary.update(batch)
        self.n += len(batch.values[self.cached[0].ident])
        if not self._warned and self.n * self._per > CACHE_WARN_BYTES:
            self._warned = True
            from . import health as _health

            _health.warn(
                "large_cache",
                f"Permutation/ablation caches the activations at {self.engine.graph.tensors[self.engine.key].name!r} "
                f"(and the tensors crossing the cut) for every analysed sample; that exceeds "
                f"{CACHE_WARN_BYTES / 2**30:.0f} GiB at {self.n} samples. Pass `max_samples=` to limit it.",
            )

    def result(self) -> Cache:
        arrays = [np.concatenate(p, axis=0) for p in self._parts]
        labels = np.concatenate(self._labels, axis=0) if self._labels else None
        return Cache(arrays, labels, self.n, self.summary)


def make_input_gradient(model, loss_fn):
    """Backend switch for the gradient of a summed loss w.r.t. the first input.

    Returns ``f(arrays, labels) -> (gradient, output)`` as NumPy arrays,
    computed with the model's weights as they are at each call of ``f``
    (also after ``variable.assign``):

    * ``tensorflow``: ``tf.GradientTape`` inside one ``tf.function`` (traced
      once per input shape), which reads the variables by reference;
    * ``jax``: ``jax.value_and_grad`` of ``model.stateless_call`` under
      ``jax.jit``, with the current variable values passed in as arguments
      at every call (a jitted closure over the model would bake the values
      of its first trace in as constants);
    * ``torch``: ``torch.autograd.grad``, eager.
    """
    backend = keras.backend.backend()

    def forward(xs):
        return model(xs if len(xs) > 1 else xs[0], training=False)

    if backend == "tensorflow":
        import tensorflow as tf  # the core needs TF only here: gradients

        @tf.function(reduce_retracing=True)
        def step(xs, labels):
            with tf.GradientTape() as tape:
                tape.watch(xs[0])
                out = forward(xs)
                loss = tf.reduce_sum(loss_fn(out, labels))
            return tape.gradient(loss, xs[0]), out

        def f(arrays, labels):
            xs = [tf.convert_to_tensor(a) for a in arrays]
            lab = None if labels is None else tf.convert_to_tensor(labels)
            g, out = step(xs, lab)
            return np.asarray(g), np.asarray(out)

        return f
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss_of(a0, rest, labels, trainable, non_trainable):
            xs = [a0] + list(rest)
            out, _ = model.stateless_call(trainable, non_trainable, xs if len(xs) > 1 else xs[0], training=False)
            return jnp.sum(loss_fn(out, labels)), out

        # Differentiates w.r.t. the first argument only.
        step = jax.jit(jax.value_and_grad(loss_of, has_aux=True))

        def f(arrays, labels):
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            (_, out), g = step(jnp.asarray(arrays[0]), [jnp.asarray(a) for a in arrays[1:]],
                               None if labels is None else jnp.asarray(labels), trainable, non_trainable)
            return np.asarray(g), np.asarray(out)

        return f
    if backend == "torch":
        import torch

        def f(arrays, labels):
            # Gradients even when the caller is inside ``torch.no_grad()`` or
            # ``torch.inference_mode()``, as torch inference code often is.
            with torch.inference_mode(False), torch.enable_grad():
                xs = [keras.ops.convert_to_tensor(a) for a in arrays]
                xs[0] = xs[0].detach().requires_grad_(True)
                lab = None if labels is None else keras.ops.convert_to_tensor(labels)
                out = forward(xs)
                loss = torch.sum(loss_fn(out, lab))
                (g,) = torch.autograd.grad(loss, xs[0])
            return g.detach().cpu().numpy(), out.detach().cpu().numpy()

        return f
    raise ValueError(
        f"Taylor importance needs gradients; the Keras backend {backend!r} is not supported "
        "(supported: 'tensorflow', 'jax', 'torch')."
    )


class MapSummary:
    """Reducer: per-channel range (the dead-filter definition) and float64 mean map of tensor ``key``.

    What permutation and ablation need of the block's maps when the engine
    caches only the pooled features (:class:`PooledHeadEngine`): the dead
    filters, and the mean map that ``ablation_value="mean"`` fills in.
    Memory: one map (spatial x C) in float64, whatever the number of samples.
    """

    def __init__(self, key: int):
        from .data_pass import ChannelRange, Tap

        self.key = key
        self.range = ChannelRange(key)
        self.taps = self.range.taps + (Tap(key, "raw"),)
        self._sum: np.ndarray | None = None
        self.varied = False
        self.n = 0

    def update(self, batch):
        self.range.update(batch)
        maps = batch.values[(self.key, "raw")]
        s = np.asarray(np.sum(maps, axis=0, dtype=np.float64))  # (spatial..., C)
        if self._sum is not None and self._sum.shape != s.shape:
            self.varied = True  # maps of another spatial shape: no mean map (see :attr:`mean_map`)
        elif not self.varied:
            self._sum = s if self._sum is None else self._sum + s
        self.n += len(maps)

    @property
    def dead(self) -> np.ndarray:
        return self.range.dead

    @property
    def mean_map(self) -> np.ndarray:
        """The mean map over the samples (spatial..., C), float64."""
        if self.varied:
            raise ValueError("`x`: mean ablation through a global max pooling needs the mean map, and the batches "
                             "gave maps of different spatial shapes; pass inputs of one size, or use "
                             "ablation_value='zero' or permutation.")
        assert self._sum is not None  # the pass saw samples
        return self._sum / self.n


class PooledHeadEngine(TailEngine):
    """The exact shortcut for a block read only through a global pooling: block -> GAP/GMP -> head.

    When the only thing the model does with the block's maps is pool each
    channel over all positions (:func:`.layers.global_pool_after`: the
    ``block -> GlobalAveragePooling -> Dropout -> Dense`` end of every
    ``keras.applications`` model), channel ``c`` of the pooled vector is a
    function of channel ``c`` of the maps alone. So

    * permuting the maps of channels ``ch`` across samples permutes the pooled
      features of ``ch`` the same way: sample ``i`` receives
      ``pooled[perm[i], ch]``;
    * filling the maps of ``ch`` with a map ``f`` sets the pooled features of
      ``ch`` to ``pool(f)`` (the spatial mean of ``f``, or its maximum).

    The engine therefore caches only the pooled features (``n x C`` numbers
    instead of ``n x H x W x C``) and runs only the *head* (everything after
    the pooling: dropout in inference, flatten, Dense layers, whatever it
    holds) on the perturbed pooled features, stacked like any tail. The head
    is the same layers the model runs, so the result equals
    :class:`TailEngine`'s within float rounding (the spatial mean of a filled
    map is computed here in float64, the model pools in its own dtype).

    Used for permutation and ablation whenever it applies
    (:meth:`GlobalAnalyzer.engine`); Taylor importance needs the gradient at
    the maps and uses the plain engine.
    """

    caches_maps = False

    def __init__(self, graph, key: int, pooled: int, reduce: str):
        self.graph = graph
        self.key = key
        check_single_output(graph)
        if reduce not in ("avg", "max"):  # pragma: no cover - internal
            raise ValueError(reduce)
        self.pooled = pooled
        self.reduce = reduce
        self.cut = pooled
        self.frontier = [pooled]
        self.tail = graph.build(graph.output_keys, inputs=self.frontier, name="khi_head")
        self.shape = tuple(graph.tensors[key].shape[1:])
        self.channels = int(self.shape[-1])
        self.output_shape = tuple(graph.tensors[graph.output_keys[0]].shape[1:])
        self._grad_fn = None

    def pooled_job(self, job: Job) -> Job:
        """``job`` on the maps, as the same perturbation of the pooled features.

        A fill of scalar or per-channel shape (``()`` or ``(k,)``) is a constant map, whose
        average and maximum are that constant; a fill map (``spatial... x k``, of any spatial
        shape: the block's may be free) pools to its mean or maximum over the positions.
        """
        if job.kind != "fill":
            return job
        k = len(job.channels)
        fill = np.asarray(job.fill, dtype=np.float64)
        if fill.ndim <= 1:
            value = np.broadcast_to(fill, (k,))
        else:
            flat = fill.reshape(-1, k)
            value = flat.mean(axis=0) if self.reduce == "avg" else flat.max(axis=0)
        return Job(job.channels, "fill", fill=value)  # cast to the cache dtype where it is written

    def mean_fill(self, cache: Cache, channels) -> np.ndarray:
        """The fill of mean ablation of ``channels``: the mean map, as this engine perturbs it.

        Under an average pooling the mean map pools to the mean over samples of the pooled
        features, taken here from the cache (float64, cast to its dtype): a channel whose pooled
        value is the same on every sample (a dead filter) is then filled with exactly that value,
        and its importance is exactly 0, as with :class:`TailEngine`. Under a maximum the mean
        map's maximum is not the mean of the maxima: the float64 mean map of the pass.
        """
        if self.reduce == "avg":
            pooled = cache.arrays[0].reshape(cache.n, -1)[:, channels]
            return np.mean(pooled, axis=0, dtype=np.float64).astype(cache.arrays[0].dtype)
        assert cache.summary is not None  # this engine caches pooled features: its cache summarises the maps
        return cache.summary.mean_map[..., channels]

    def run(self, cache: Cache, jobs: Sequence[Job], score: Callable[[np.ndarray], float],
            perturbations_per_eval="auto", memory_budget=DEFAULT_MEMORY_BUDGET, progress=None) -> np.ndarray:
        """Scores every job (as :meth:`TailEngine.run`), each applied to the pooled features."""
        return TailEngine.run(self, cache, [self.pooled_job(j) for j in jobs], score, perturbations_per_eval,
                              memory_budget, progress)

    def input_gradient(self, arrays, loss_fn, labels=None):  # pragma: no cover - guarded by the analyzer
        raise ValueError("The pooled-head engine perturbs pooled features; Taylor importance uses the plain engine.")


class LinearHeadEngine(PooledHeadEngine):
    """The closed form where the pooled features go through one Dense layer: no head pass at all.

    Applies where :class:`PooledHeadEngine` does and the head after the pooling
    is one ``Dense`` layer and the output activation (softmax, sigmoid or none),
    inactive dropout allowed (:func:`.layers.dense_head_after`): the
    ``GAP -> Dense(softmax)`` end of every ``keras.applications`` classifier.
    It caches the same pooled features and perturbs them the same way
    (:meth:`PooledHeadEngine.pooled_job`, :meth:`PooledHeadEngine.mean_fill`),
    then computes each job's logits by a rank-``k`` update of the baseline
    logits in NumPy (:class:`~keras_hybrid_interp.core.linear_head.LinearHead`),
    applies the activation and calls ``score`` with the model's outputs, as
    every engine does. Equal to :class:`PooledHeadEngine` to float32 rounding of
    the logits; the tie rule for predicted classes is in :mod:`.linear_head`.
    ``perturbations_per_eval`` has nothing to stack here and is ignored; the
    jobs go in chunks of at most ``min(memory_budget, linear_head.CHUNK_BYTES)``
    bytes of work arrays.
    """

    def __init__(self, graph, key: int, pooled: int, reduce: str, head):
        from .linear_head import LinearHead

        self.graph = graph
        self.key = key
        check_single_output(graph)
        if reduce not in ("avg", "max"):  # pragma: no cover - internal
            raise ValueError(reduce)
        self.pooled = pooled
        self.reduce = reduce
        self.cut = pooled
        self.frontier = [pooled]
        self.shape = tuple(graph.tensors[key].shape[1:])
        self.channels = int(self.shape[-1])
        self.output_shape = tuple(graph.tensors[graph.output_keys[0]].shape[1:])
        self.linear = LinearHead(head)
        self.calibrations = {}
        self._grad_fn = None

    @property
    def tail(self):
        """The head as a Keras model (built on first use only: the closed form never runs it)."""
        return self.graph.build(self.graph.output_keys, inputs=self.frontier, name="khi_head")

    def run(self, cache: Cache, jobs: Sequence[Job], score: Callable[[np.ndarray], float],
            perturbations_per_eval="auto", memory_budget=DEFAULT_MEMORY_BUDGET, progress=None) -> np.ndarray:
        """Scores every job (as :meth:`TailEngine.run`) by rank-k logit updates of the pooled features."""
        from .linear_head import CHUNK_BYTES

        pooled = cache.arrays[0].reshape(cache.n, -1)
        return self.linear.run(pooled, [self.pooled_job(j) for j in jobs], score,
                               min(int(memory_budget), CHUNK_BYTES), progress)

    def baseline_outputs(self, cache: Cache, n_jobs: int, perturbations_per_eval="auto",
                         memory_budget=DEFAULT_MEMORY_BUDGET) -> np.ndarray:
        """The model's outputs (n, K) on the cached pooled features, float64 (the jobs' arithmetic)."""
        return self.linear.outputs(cache.arrays[0].reshape(cache.n, -1))


class PointwiseHeadEngine(TailEngine):
    """The closed form where a block's maps go only through a 1x1 convolution and the output activation.

    The spatial twin of :class:`LinearHeadEngine`: where the block is read only
    by a per-position linear layer (a ``Conv1D/2D/3D`` of kernel size 1 and
    stride 1, or a ``Dense`` on the last axis) followed by softmax, sigmoid or
    nothing (:func:`.layers.pointwise_head_after`: the ``Conv2D(K, 1,
    softmax)`` end of a U-Net), the model's output at every position is
    ``act(a @ W + b)``, and perturbing the filters ``G`` changes the logits at
    every position by ``(a'_G - a_G) @ W_G``. The engine caches the block's maps,
    as :class:`TailEngine` does (its frontier is the block alone), perturbs them
    the same way (a permutation gives sample ``i`` the maps of ``perm[i]``, a fill
    is broadcast to ``(*spatial, k)``), and computes each job's outputs in NumPy,
    chunk of samples by chunk of samples, with no pass of the head
    (:meth:`~keras_hybrid_interp.core.linear_head.LinearHead.run_maps`). A score
    that adds up over samples (``begin()``: the segmentation scores) is fed chunk
    by chunk. Equal to :class:`TailEngine` to float32 rounding of the logits; the
    tie rule for predicted classes is :mod:`.linear_head`'s. ``perturbations_per_eval``
    has nothing to stack here and is ignored; the chunks take at most
    ``min(memory_budget, linear_head.CHUNK_BYTES)`` bytes of work arrays, and the
    float64 baseline logits (``n x positions x K``) are kept while they fit in
    ``memory_budget``.
    """

    def __init__(self, graph, key: int, head):
        from .linear_head import LinearHead

        self.graph = graph
        self.key = key
        check_single_output(graph)
        self.cut = key
        self.frontier = [key]
        self.shape = tuple(graph.tensors[key].shape[1:])
        self.channels = int(self.shape[-1])
        self.output_shape = tuple(graph.tensors[graph.output_keys[0]].shape[1:])
        self.linear = LinearHead(head)
        self.calibrations = {}
        self._grad_fn = None
        self._tail = None

    @property
    def tail(self):
        """The head as a Keras model (built on first use only: the closed form never runs it)."""
        if self._tail is None:
            self._tail = self.graph.build(self.graph.output_keys, inputs=self.frontier, name="khi_tail")
        return self._tail

    def run(self, cache: Cache, jobs: Sequence[Job], score: Callable[[np.ndarray], float],
            perturbations_per_eval="auto", memory_budget=DEFAULT_MEMORY_BUDGET, progress=None) -> np.ndarray:
        """Scores every job (as :meth:`TailEngine.run`) by rank-k logit updates at every position."""
        from .linear_head import CHUNK_BYTES

        return self.linear.run_maps(cache.arrays[0], jobs, score, min(int(memory_budget), CHUNK_BYTES), progress,
                                    keep_bytes=int(memory_budget))

    def baseline_outputs(self, cache: Cache, n_jobs: int, perturbations_per_eval="auto",
                         memory_budget=DEFAULT_MEMORY_BUDGET) -> np.ndarray:
        """The model's outputs (n, *spatial, K) on the cached maps, in the output's dtype (the jobs' arithmetic)."""
        from .linear_head import CHUNK_BYTES

        return self.linear.outputs_maps(cache.arrays[0], min(int(memory_budget), CHUNK_BYTES))


def tail_engine(graph, key: int, *, shortcut: bool = True) -> TailEngine:
    """The engine for perturbing tensor ``key``: :class:`LinearHeadEngine`, :class:`PooledHeadEngine` or
    :class:`PointwiseHeadEngine` where they apply (in that order), else :class:`TailEngine`.

    ``shortcut=False`` always gives the plain tail (Taylor importance, and
    the tests that check the shortcuts against it).
    """
    if shortcut:
        pooled = global_pool_after(graph, key)
        if pooled is not None:
            head = dense_head_after(graph, pooled[0])
            if head is not None:
                return LinearHeadEngine(graph, key, pooled[0], pooled[1], head)
            return PooledHeadEngine(graph, key, *pooled)
        head = pointwise_head_after(graph, key)
        if head is not None and graph.frontier(key) == [key]:
            return PointwiseHeadEngine(graph, key, head)
    return TailEngine(graph, key)
