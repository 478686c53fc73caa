"""Perturbation jobs, their reproducible permutations, and the one loop that scores them through a tail.

A :class:`Job` perturbs some channels of the cut tensor (a permutation across
samples, or a fill). :func:`score_jobs` is the one loop over stacked
perturbations that every tail engine (:mod:`~keras_hybrid_interp.core.engine`)
runs: jobs go ``p`` to a pass (one *slot* each), samples in chunks of ``b``,
and a :class:`BufferFill` writes each pass's perturbed inputs. There is one
interface for that, :class:`BufferFill` (``fill(g0, group, perms, s, e)``
returns the tail's feed, ``restore()`` undoes whatever it changed outside its
own buffers), and one rule for what a job writes into its channels,
:func:`replacement`; the three fills differ only in where they write:

* :class:`StackedFill`: ``(p, b, ...)`` buffers of every frontier tensor;
* :class:`InPlaceFill`: one job per pass, the cache's own rows, put back after;
* :class:`TiedFill`: a channel mask and a replacement per tied tensor
  (:class:`~keras_hybrid_interp.core.engine.TiedTailEngine`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from .distribute import predict_on_batch
from .validation import check_int, is_int

__all__ = [
    "Job",
    "resolve_entropy",
    "job_permutation",
    "score_jobs",
    "replacement",
    "BufferFill",
    "StackedFill",
    "InPlaceFill",
    "TiedFill",
]


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
    if is_int(random_state):
        return check_int(random_state, argname, min_value=0)
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


def score_jobs(tail, jobs: Sequence[Job], n: int, p: int, b: int, fill, score, progress=None) -> np.ndarray:
    """The one loop over stacked perturbations, shared by every tail engine.

    Jobs go in groups of ``p`` (one slot each), samples in chunks of ``b``;
    ``fill(g0, group, perms, s, e)`` (a :class:`BufferFill`) writes the chunk's
    perturbed inputs into the engine's ``(p, b, ...)`` buffers and returns the
    tail's feed; each (group, chunk) is one tail pass. ``score`` receives one
    job's outputs of all ``n`` samples, in sample order; a score with ``begin()``
    (one that adds up over samples: :class:`~keras_hybrid_interp.core.task.SegmentationScore`)
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


# ----------------------------------------------------------------------
# Filling the perturbed inputs of a pass
# ----------------------------------------------------------------------
def perturbs(job: Job) -> bool:
    """Whether ``job`` writes into its channels (a permutation or a fill); ``"none"`` does not."""
    if job.kind in ("permute", "fill"):
        return True
    if job.kind != "none":  # pragma: no cover - internal
        raise ValueError(job.kind)
    return False


def spatial_grid(a: np.ndarray) -> list[np.ndarray]:
    """Index ranges of the spatial axes of ``a`` (n, spatial..., C), for :func:`replacement`'s gather."""
    return [np.arange(d) for d in a.shape[1:-1]]


def replacement(job: Job, perm, source: np.ndarray, s: int, e: int, grid: Sequence[np.ndarray], key=None):
    """What ``job`` writes into channels ``job.channels`` of rows ``s:e`` of ``source``, the one rule of every fill.

    A permutation: the unperturbed rows ``perm[s:e]`` of ``source`` at those
    channels (``grid`` is :func:`spatial_grid` of ``source``); a fill: the
    job's fill, or its entry ``key`` where it is a dict per tied tensor.
    ``source`` must be unperturbed at ``perm[s:e]``.
    """
    if job.kind == "permute":
        return source[np.ix_(perm[s:e], *grid, job.channels)]
    if isinstance(job.fill, dict):
        return job.fill[key]
    return job.fill


def stacked(buf: np.ndarray) -> np.ndarray:
    """A ``(p, b, ...)`` buffer as one batch of ``p * b`` samples (a view)."""
    return buf.reshape((buf.shape[0] * buf.shape[1],) + buf.shape[2:])


class BufferFill:
    """The one interface for writing the perturbed inputs of a tail pass (:func:`score_jobs`).

    ``fill(g0, group, perms, s, e)`` writes samples ``s:e`` of the jobs of
    ``group`` (starting at job ``g0``; ``perms`` their permutations, None for
    the others), one slot each, and returns the tail's feed (a list of arrays
    of ``p * b`` samples, the frontier's order). :meth:`restore` puts back what
    the fill changed outside its own buffers; the engine calls it after the
    run, also on error.
    """

    def __call__(self, g0: int, group: Sequence[Job], perms: Sequence, s: int, e: int) -> list[np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def restore(self) -> None:
        """Nothing to put back: the fill writes only into its own buffers."""


class StackedFill(BufferFill):
    """Fixed-shape buffers ``(p, b, ...)`` for every frontier tensor; slot ``i`` of a pass is job ``i`` of the group.

    Short chunks are zero-padded. With a single chunk (``single_chunk``) the
    buffers already hold the samples after the first group, and only the
    channels the previous group perturbed are written back.
    """

    def __init__(self, key_arr: np.ndarray, others: Sequence[np.ndarray], p: int, b: int, single_chunk: bool):
        self.key_arr, self.others, self.p, self.b = key_arr, list(others), p, b
        self.single_chunk = single_chunk
        self.buf_key = np.empty((p, b) + key_arr.shape[1:], dtype=key_arr.dtype)
        self.buf_others = [np.empty((p, b) + a.shape[1:], dtype=a.dtype) for a in self.others]
        self.grid = spatial_grid(key_arr)
        self.dirty: list = [None] * p  # the channels each slot's last job perturbed

    def __call__(self, g0, group, perms, s, e):
        m, b, buf_key = e - s, self.b, self.buf_key
        base = self.key_arr[s:e]
        if self.single_chunk and g0 > 0:
            # Single chunk: the buffer already holds the samples; undo only the channels the previous group perturbed.
            for slot, ch in enumerate(self.dirty):
                if ch is not None:
                    buf_key[slot, :m][..., ch] = base[..., ch]
        else:
            buf_key[:, :m] = base[None]
            if m < b:
                buf_key[:, m:] = 0
            for bo, a in zip(self.buf_others, self.others):
                bo[:, :m] = a[s:e][None]
                if m < b:
                    bo[:, m:] = 0
        self.dirty = [None] * self.p
        for slot, (job, perm) in enumerate(zip(group, perms)):
            if perturbs(job):
                ch = job.channels
                buf_key[slot, :m][..., ch] = replacement(job, perm, self.key_arr, s, e, self.grid)
                self.dirty[slot] = ch
        return [stacked(buf_key)] + [stacked(bo) for bo in self.buf_others]


class InPlaceFill(BufferFill):
    """One job per pass on chunks of ``b`` samples, copy-free: the cache's own rows are perturbed and fed.

    Each pass perturbs the cache's own rows of its chunk (``key_arr[s:e]``, the
    job's channels only, their values saved first) and feeds views of the
    cache; the next call (and :meth:`restore`, which the engine runs at the
    end, also on error) puts the saved values back, so between passes the
    cache is unchanged. Only a short last chunk is copied, into a zero-padded
    buffer. A permutation reads rows of other chunks, which are unperturbed then.
    (A copy of every chunk into a buffer cost 3 % of a run on the B1 model, TensorFlow.)
    """

    def __init__(self, key_arr: np.ndarray, others: Sequence[np.ndarray], b: int):
        self.key_arr, self.others, self.b = key_arr, list(others), b
        self.grid = spatial_grid(key_arr)
        self.pad_key = np.zeros((b,) + key_arr.shape[1:], dtype=key_arr.dtype)
        self.pad_others = [np.zeros((b,) + a.shape[1:], dtype=a.dtype) for a in self.others]
        self.saved: list[tuple] = []  # (start, end, channels, original rows) of each chunk perturbed in place

    def restore(self) -> None:
        """Puts back the rows the last pass perturbed."""
        key_arr = self.key_arr
        while self.saved:
            s, e, ch, orig = self.saved.pop()
            key_arr[s:e, ..., ch] = orig

    def __call__(self, g0, group, perms, s, e):
        self.restore()
        (job,), (perm,) = group, perms
        key_arr, others = self.key_arr, self.others
        if perturbs(job):
            ch = job.channels
            rows = key_arr[s:e]
            orig = rows[..., ch]  # advanced indexing: a copy
            rows[..., ch] = replacement(job, perm, key_arr, s, e, self.grid)
            self.saved.append((s, e, ch, orig))
        m = e - s
        if m == self.b:
            return [key_arr[s:e]] + [a[s:e] for a in others]
        self.pad_key[:m] = key_arr[s:e]
        for pb, a in zip(self.pad_others, others):
            pb[:m] = a[s:e]
        return [self.pad_key] + self.pad_others


class TiedFill(BufferFill):
    """The feed of a tied tail (:class:`~keras_hybrid_interp.core.engine.TiedTailEngine`).

    The frontier's rows (zero-padded), then for every edited tensor (``members``,
    keyed by ``member_keys``) a boolean channel mask and a replacement: a job on
    channels ``ch`` sets the mask on ``ch`` of every edited tensor and writes its
    :func:`replacement` (the same permutation for every tied tensor, or the fill:
    one value for all, or a dict ``{tensor key: fill}``).
    """

    def __init__(self, front: Sequence[np.ndarray], members: Sequence[np.ndarray], member_keys: Sequence[int],
                 channels: int, p: int, b: int):
        self.front, self.members, self.member_keys = list(front), list(members), list(member_keys)
        self.buf_front = [np.zeros((p, b) + a.shape[1:], dtype=a.dtype) for a in self.front]
        self.buf_mask = [np.zeros((p, b) + (1,) * (a.ndim - 2) + (channels,), dtype=bool) for a in self.members]
        self.buf_repl = [np.zeros((p, b) + a.shape[1:], dtype=a.dtype) for a in self.members]
        self.grids = [spatial_grid(a) for a in self.members]

    def __call__(self, g0, group, perms, s, e):
        m = e - s
        for bf, a in zip(self.buf_front, self.front):
            bf[:, :m] = a[s:e][None]
            bf[:, m:] = 0
        for bm in self.buf_mask:
            bm[...] = False
        for slot, (job, perm) in enumerate(zip(group, perms)):
            if not perturbs(job):
                continue
            ch = job.channels
            for k, bm, br, a, grid in zip(self.member_keys, self.buf_mask, self.buf_repl, self.members, self.grids):
                bm[slot, :m][..., ch] = True
                br[slot, :m][..., ch] = replacement(job, perm, a, s, e, grid, key=k)
        feed = [stacked(bf) for bf in self.buf_front]
        for bm, br in zip(self.buf_mask, self.buf_repl):
            feed += [stacked(bm), stacked(br)]
        return feed
