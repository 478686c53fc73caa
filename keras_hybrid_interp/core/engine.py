"""The tail engines behind filter importance: perturbations of a block re-run only the model after it.

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
stackings (:func:`~keras_hybrid_interp.core.plan.calibrate_stacking`, once per
engine, sample count and memory budget) and takes the fastest: a pass of more stacked samples is not
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

This module holds the engines only. Their parts: the jobs, the one loop over
stacked perturbations and the one interface that fills a pass's buffers
(:mod:`~keras_hybrid_interp.core.perturbation`); the plan of a run and its
calibration (:mod:`~keras_hybrid_interp.core.plan`); the cache and the
reducers that fill it in the one pass (:mod:`~keras_hybrid_interp.core.reducers`);
the backend-specific gradient of Taylor importance
(:mod:`~keras_hybrid_interp.core.gradients`); the closed form of a linear head
(:mod:`~keras_hybrid_interp.core.linear_head`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

import keras

from .gradients import make_input_gradient
from .layers import dense_head_after, global_pool_after, pointwise_head_after
from .perturbation import BufferFill, InPlaceFill, Job, StackedFill, TiedFill, score_jobs
from .plan import (
    DEFAULT_MEMORY_BUDGET,
    Calibration,
    auto_stacking,
    calibrate_stacking,
    can_calibrate,
    check_stacking,
    fixed_stacking,
    free_dim_of,
    samples_per_pass,
)
from .reducers import Cache

__all__ = [
    "TailEngine",
    "TiedTailEngine",
    "PooledHeadEngine",
    "LinearHeadEngine",
    "PointwiseHeadEngine",
    "tail_engine",
    "check_single_output",
]


def check_single_output(graph) -> None:
    """The engines perturb towards one output: a clear error for a multi-output model."""
    if len(graph.output_keys) != 1:
        raise ValueError(
            f"Filter importance needs a single-output model; model {graph.model.name!r} has "
            f"{len(graph.output_keys)} outputs."
        )


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
    #: Name of the tail model.
    tail_name = "khi_tail"
    #: Whether the tail is built on first use only (the closed forms, which never run it) instead of here.
    lazy_tail = False

    def __init__(self, graph, key: int, *, cut: int | None = None, frontier: Sequence[int] | None = None):
        # ``cut`` (default ``key``): where the tail starts; ``frontier`` (default the graph's frontier of
        # the cut): the tensors the tail reads (the subclasses' heads start elsewhere).
        check_single_output(graph)
        self.graph = graph
        self.key = key
        self.cut = key if cut is None else cut
        self.frontier = graph.frontier(self.cut) if frontier is None else list(frontier)
        self.shape = tuple(graph.tensors[key].shape[1:])
        self.channels = int(self.shape[-1])
        self.output_shape = tuple(graph.tensors[graph.output_keys[0]].shape[1:])
        self.calibrations: dict[tuple[int, int], Calibration] = {}
        self._grad_fn: Callable | None = None
        self._tail = None if self.lazy_tail else self.build_tail()

    def build_tail(self):
        """The tail as a Keras model: the graph's layers from the frontier to the output."""
        return self.graph.build(self.graph.output_keys, inputs=self.frontier, name=self.tail_name)

    @property
    def tail(self):
        """The tail model (built with the engine, or on first use where :attr:`lazy_tail`)."""
        if self._tail is None:
            self._tail = self.build_tail()
        return self._tail

    @property
    def cache_keys(self) -> list[int]:
        """Tensors the cache of this engine holds per sample: the frontier.

        (:class:`~keras_hybrid_interp.core.reducers.FrontierCache` keeps them.)
        """
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

    # ------------------------------------------------------------------
    def plan(self, n: int, n_jobs: int, perturbations_per_eval="auto", memory_budget=DEFAULT_MEMORY_BUDGET, *,
             cache: Cache | None = None) -> tuple[int, int]:
        """Returns (jobs per pass P, samples per chunk b): the dispatcher of :mod:`~keras_hybrid_interp.core.plan`.

        Every pass holds at most ``memory_budget / per_sample_bytes()`` samples
        (and at most ``MAX_SAMPLES_PER_PASS``). The rule:

        * a positive int ``perturbations_per_eval``:
          :func:`~keras_hybrid_interp.core.plan.fixed_stacking`, that many jobs
          stacked on chunks of as many samples as then fit;
        * ``"auto"``: :func:`~keras_hybrid_interp.core.plan.auto_stacking`,
          which chooses by measured throughput when the run is big enough to
          pay for measuring (``n_jobs * n >= CALIBRATE_MIN_WORK`` and more than
          one candidate): :meth:`calibrate` times one tail pass of candidate
          plans (1, 2, 4, ... perturbations stacked on all samples, up to the
          memory cap; or one perturbation on smaller chunks, down to
          ``CALIBRATE_MIN_CHUNK`` samples), spending at most
          ``CALIBRATE_MAX_FRACTION`` of the estimated run time, and keeps the
          fastest. The choice is cached on the engine (:attr:`calibrations`)
          under ``(n, memory_budget)``: later calls with the same ``n`` and
          budget reuse it (with ``P`` capped at their ``n_jobs``), so that the
          baseline and the perturbations of one run (:meth:`baseline_outputs`,
          :meth:`run`) get passes of one shape. Smaller runs take the memory
          plan (:func:`~keras_hybrid_interp.core.plan.memory_stacking`): all
          samples in one chunk (if they fit) and as many perturbations stacked
          as fit.

        Stacked chunks are padded to a multiple of ``STACK_ALIGN`` samples
        where the budget allows (:func:`~keras_hybrid_interp.core.plan.stacked_chunk`).
        Stacking never changes which outputs a job gets, only the batch shape.
        ``cache`` supplies real activations for the timing (else zeros), and the
        length a free spatial dimension is counted as (:meth:`per_sample_bytes`).
        """
        stacking = check_stacking(perturbations_per_eval)
        per_pass = samples_per_pass(self.per_sample_bytes(free_dim_of(cache)), memory_budget)
        if stacking == "auto":
            return auto_stacking(n, n_jobs, per_pass, memory_budget, self.calibrations,
                                 functools.partial(self.calibrate, n, n_jobs, per_pass, cache))
        return fixed_stacking(n, n_jobs, int(stacking), per_pass)

    def calibrate(self, n: int, n_jobs: int, per_pass: int, cache: Cache | None = None) -> Calibration | None:
        """Times candidate stackings of a run on this tail (:func:`~keras_hybrid_interp.core.plan.calibrate_stacking`).

        The timed passes repeat the cached frontier activations (zeros without
        ``cache``); None where the tail cannot be fed for timing (a free
        dimension with no cached array to fix it).
        """
        arrays = () if cache is None else cache.arrays[:len(self.frontier)]
        if not can_calibrate(self.tail, arrays):
            return None
        return calibrate_stacking(self.tail, n, n_jobs, per_pass, arrays)

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
        job, shape ``(n, *output_shape)``, in sample order. The passes are
        planned by :meth:`plan`, filled by :meth:`buffer_fill` and run by
        :func:`~keras_hybrid_interp.core.perturbation.score_jobs`.
        """
        n = cache.n
        p, b = self.plan(n, len(jobs), perturbations_per_eval, memory_budget, cache=cache)
        fill = self.buffer_fill(cache, p, b)
        try:
            return score_jobs(self.tail, jobs, n, p, b, fill, score, progress)
        finally:
            fill.restore()

    def buffer_fill(self, cache: Cache, p: int, b: int) -> BufferFill:
        """How the passes of a run of ``p`` jobs a pass on chunks of ``b`` samples are filled.

        One job a pass on several chunks of a writable cache: the cache's own
        rows, perturbed in place and put back (:class:`~keras_hybrid_interp.core.perturbation.InPlaceFill`);
        else fixed-shape ``(p, b, ...)`` buffers for every frontier tensor
        (:class:`~keras_hybrid_interp.core.perturbation.StackedFill`).
        """
        key_arr, others = cache.arrays[0], cache.arrays[1:]
        single_chunk = math.ceil(cache.n / b) == 1
        if p == 1 and not single_chunk and all(a.flags.writeable for a in cache.arrays):
            return InPlaceFill(key_arr, others, b)
        return StackedFill(key_arr, others, p, b, single_chunk)

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


def masked_replacement(tensor, *, key: int, rank: int, channels: int):
    """The edit of tied tensor ``key`` (rank ``rank``) in a tied tail: ``where(mask, replacement, tensor)``.

    ``mask`` (a per-sample boolean channel mask) and ``replacement`` (of the
    tensor's shape) are new inputs of the tail; returns the edited tensor and them.
    """
    mask = keras.Input(shape=(1,) * (rank - 2) + (channels,), dtype="bool", name=f"khi_mask_{key}")
    repl = keras.Input(shape=tuple(tensor.shape[1:]), dtype=tensor.dtype, name=f"khi_repl_{key}")
    return keras.ops.where(mask, repl, tensor), [mask, repl]


class TiedTailEngine(TailEngine):
    """A tail that perturbs channel ``i`` of several tensors at once (``groups="coupled"``).

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

    Parameters
    ----------
    graph : ModelGraph
    key : int
        The analysed tensor; its channels are the rows of the result.
    tied : list of int
        Tensors tied to ``key`` channel by channel (:func:`.coupling.tied_tensors`),
        ``key`` included, all with ``key``'s channel count.
    """

    tail_name = "khi_tied_tail"

    def __init__(self, graph, key: int, tied):
        self.tied = sorted(int(k) for k in tied)
        if key not in self.tied:
            raise ValueError("`tied` must contain `key`.")  # internal
        self.edited: list[int] = []  # the tied tensors the tail computes, edited: set by build_tail
        super().__init__(graph, key, cut=self.tied[0])

    def build_tail(self):
        """The tail from the earliest tied tensor, each tied tensor it computes masked (:func:`masked_replacement`).

        Sets :attr:`edited`, the tied tensors the tail computes (the others are in its frontier).
        """
        edits = {k: functools.partial(masked_replacement, key=k, rank=len(self.graph.tensors[k].shape),
                                      channels=self.channels) for k in self.tied}
        tail, self.edited = self.graph.build_edited(self.graph.output_keys, self.frontier, edits,
                                                    name=self.tail_name)
        return tail

    @property
    def cache_keys(self) -> list[int]:
        """The frontier of the cut, then the tied tensors that are not in it."""
        return list(self.frontier) + [k for k in self.tied if k not in self.frontier]

    def per_sample_bytes(self, free_dim: int | None = None) -> int:
        # The tail's activations plus a replacement buffer per edited tensor.
        extra = sum(int(np.prod([d or free_dim or 1 for d in self.graph.tensors[k].shape[1:]], dtype=np.int64)) * 4
                    for k in self.edited)
        return super().per_sample_bytes(free_dim) + extra

    def buffer_fill(self, cache: Cache, p: int, b: int) -> BufferFill:
        """The tied tail's feed (:class:`~keras_hybrid_interp.core.perturbation.TiedFill`): a job perturbs its
        channels in every tied tensor.

        ``Job.fill`` may be one value for every tied tensor or a dict
        ``{tensor key: fill}``.
        """
        arrays = dict(zip(self.cache_keys, cache.arrays))
        return TiedFill([arrays[k] for k in self.frontier], [arrays[k] for k in self.edited], self.edited,
                        self.channels, p, b)

    def input_gradient(self, arrays, loss_fn, labels=None):  # pragma: no cover - guarded by check_request
        raise ValueError("The tied engine perturbs; Taylor importance uses the block's own engine.")


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
    (:meth:`GlobalAnalyzer._engine`); Taylor importance needs the gradient at
    the maps and uses the plain engine.
    """

    caches_maps = False
    tail_name = "khi_head"

    def __init__(self, graph, key: int, pooled: int, reduce: str):
        if reduce not in ("avg", "max"):  # pragma: no cover - internal
            raise ValueError(reduce)
        self.pooled = pooled
        self.reduce = reduce
        super().__init__(graph, key, cut=pooled, frontier=[pooled])

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
        return super().run(cache, [self.pooled_job(j) for j in jobs], score, perturbations_per_eval,
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

    lazy_tail = True  # the head as a Keras model, built on first use only: the closed form never runs it

    def __init__(self, graph, key: int, pooled: int, reduce: str, head):
        from .linear_head import LinearHead

        super().__init__(graph, key, pooled, reduce)
        self.linear = LinearHead(head)

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

    lazy_tail = True  # the head as a Keras model, built on first use only: the closed form never runs it

    def __init__(self, graph, key: int, head):
        from .linear_head import LinearHead

        super().__init__(graph, key, frontier=[key])
        self.linear = LinearHead(head)

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
