"""Closed-form permutation and ablation through a linear head: rank-k logit updates, no head pass.

Where the analysed block is read only through a global pooling
(:func:`.layers.global_pool_after`) and the pooled features go through one
Dense layer and the output activation, inactive dropout allowed
(:func:`.layers.dense_head_after`), the model's output is

    out = act(x @ W + b)          x: (n, C) pooled features, W: (C, K), b: (K,)

with ``act`` softmax, sigmoid or the identity. A perturbation of the filters
``G`` (their pooled features replaced by ``x'_G``: another sample's, for a
permutation, or a constant, for an ablation) changes the logits by

    z' = z + (x'_G - x_G) @ W_G

so every perturbation costs ``n x |G| x K`` multiply-adds in NumPy, with no
forward pass of the head at all. :class:`LinearHead` computes the baseline
logits ``z`` once per run (float64, from the cached pooled features and the
layer's current weights), the updated logits of a chunk of jobs at once (``J x n
x K`` numbers, ``J`` chosen so that a chunk stays under a memory budget),
applies the output activation (float64), and hands each job's outputs, shape
``(n, K)``, to the same ``score`` callable as the engines that run the head
(:class:`~keras_hybrid_interp.core.engine.LinearHeadEngine` wraps it).

Agreement with running the head
-------------------------------
The head's own float32 matmul sums ``C`` products in an order its kernel
chooses; here the sums and the activation are float64, and the outputs are
then rounded once to the model's output dtype (as the model's own outputs are:
a float64 sigmoid of 1 - 1e-6 read by the loss's ``log(1 - p)`` would
otherwise differ from the model's float32 one by far more than its rounding).
The outputs therefore agree with the pooled-head engine's to float32 rounding
of the logits (about ``1e-7`` of the size of the dot products' terms:
probabilities and losses within ``1e-6``; a loss through a saturated sigmoid
reads ``log(1 - p)`` of a float32 ``p`` and agrees only to that rounding,
amplified by ``1 / (1 - p)``, as the backends' own heads do among themselves),
and a sample's predicted class
agrees except where its two largest outputs are within that rounding of each
other (a near tie). **Tie rule**: such near ties are resolved by the float64
arithmetic rounded once here, by the model's float32 kernels there; an exact
tie of the outputs goes to the lower class, as everywhere
(:meth:`OutputReader.predicted`). A perturbation that leaves the pooled
features unchanged gives exactly the baseline outputs (the update is an exact
zero).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .parallel import ordered_map
from .task import argmax_last, confusion

__all__ = ["LinearHead", "CHUNK_BYTES", "sample_chunk"]


@runtime_checkable
class ChunkedScore(Protocol):
    """A score that adds up chunk of samples by chunk (:class:`~keras_hybrid_interp.core.task.SegmentationScore`):
    ``acc = score.begin()``, ``acc.update(out_chunk, score.targets[s:e])``, ``acc.result()``."""

    targets: Any

    def begin(self) -> Any: ...


#: Bytes of float64 work arrays one chunk of jobs may use (a few arrays of ``J x n x (K + |G|)``):
#: small enough to stay in the CPU's caches, large enough to amortise NumPy's per-call costs.
CHUNK_BYTES = 16 * 2**20


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over axis -2 of class-major logits ``(..., K, n)``, float64, in place.

    Each sample's result depends on its own logits alone, always by the same
    operations in the same order (the maximum and the sum go class by class,
    element-wise over the samples: NumPy's reductions over a short axis were
    several times slower), so a job that leaves the logits unchanged gets the
    baseline's probabilities bit for bit.
    """
    k = z.shape[-2]
    m = z[..., 0, :].copy()
    for i in range(1, k):
        np.maximum(m, z[..., i, :], out=m)
    z -= m[..., None, :]
    np.exp(z, out=z)
    s = z[..., 0, :].copy()
    for i in range(1, k):
        s += z[..., i, :]
    z /= s[..., None, :]
    return z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z, out=z)


_ACTIVATIONS = {"softmax": _softmax, "sigmoid": _sigmoid, "linear": lambda z: z}


class LinearHead:
    """The model's output as ``act(pooled @ kernel + bias)``, and its rank-k updates.

    Parameters
    ----------
    head : DenseHead
        From :func:`.layers.dense_head_after`: the user's Dense layer and the activation.
        The layer's weights are read at every call (:meth:`weights`), so a head that trains
        between analyses (the callback) is read as it is then; they are never changed.
    """

    def __init__(self, head):
        if head.activation not in _ACTIVATIONS:  # pragma: no cover - the graph gives one of them
            raise ValueError(head.activation)
        self.head = head
        self.activation = head.activation
        self.dtype = np.dtype(getattr(head, "dtype", "float32"))
        self.act: Callable[[np.ndarray], np.ndarray] = _ACTIVATIONS[head.activation]

    def activate(self, zt: np.ndarray) -> np.ndarray:
        """The model's outputs ``(..., n, K)`` in its output dtype, from class-major float64 logits ``(..., K, n)``.

        The activation runs in float64 (in place), then the outputs are rounded once to the model's
        output dtype, as the model's own outputs are, and laid out sample-major (C-contiguous).
        """
        zt = self.act(zt)
        out = np.empty(zt.shape[:-2] + (zt.shape[-1], zt.shape[-2]), dtype=self.dtype)
        out[...] = np.swapaxes(zt, -1, -2)
        return out

    def predicted(self, zt: np.ndarray) -> np.ndarray:
        """The predicted class of each position, ``(..., n)`` int64, from class-major float64 logits ``(..., K, n)``.

        The argmax of :meth:`activate`'s outputs (the activation in float64, rounded once to the output
        dtype; ties to the lower class), read class-major: each class's row is contiguous. ``zt`` may be
        overwritten.
        """
        if zt.ndim == 3 and self.activation == "softmax":  # (m, K, n): sample by sample, each (K, n) below
            return np.stack([self.predicted(z) for z in zt]) if len(zt) else np.zeros((0, zt.shape[-1]), np.int64)
        if zt.ndim == 2 and self.activation == "softmax" and len(zt) > 1:
            # A position whose two largest logits are more than 1e-6 (1 + |largest|) apart has its softmax's
            # largest probability at least 1 + 1e-6 times the next: still the largest after rounding to
            # float32 (2^-24), so its class is the logits' argmax, with no exp. The others (near ties, and
            # anything non-finite: every comparison with NaN is False) go through the rounded softmax.
            first, second, pred = _top_two(zt[None], argmax=True)
            first, second, pred = first[0], second[0], pred[0]
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, unsure
                unsure = np.flatnonzero(~((first - second) - 1e-6 * (1.0 + np.abs(first)) > 0))
            if unsure.size:
                pred[unsure] = argmax_last(self.act(zt[:, unsure]).astype(self.dtype).T)
            return pred
        p = self.act(zt).astype(self.dtype)
        return argmax_last(np.swapaxes(p, -1, -2))

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(kernel (C, K), bias (K,))`` of the Dense layer as they are now, float64."""
        from .graph import variable_numpy

        dense = self.head.dense
        w = np.asarray(variable_numpy(dense.kernel), dtype=np.float64)
        w = w.reshape(-1, w.shape[-1])  # a 1x1 convolution's kernel (1, ..., 1, C, K) is a (C, K) matrix
        bias = getattr(dense, "bias", None)
        b = np.zeros(w.shape[-1]) if bias is None else np.asarray(variable_numpy(bias), dtype=np.float64)
        return w, b

    def outputs(self, pooled: np.ndarray) -> np.ndarray:
        """The model's outputs (n, K) on pooled features ``pooled`` (n, C), in the output's dtype."""
        w, b = self.weights()
        z = np.asarray(pooled, dtype=np.float64) @ w + b
        return self.activate(np.ascontiguousarray(z.T))

    def run(self, pooled: np.ndarray, jobs: Sequence, score: Callable[[np.ndarray], float],
            chunk_bytes: int = CHUNK_BYTES, progress=None) -> np.ndarray:
        """Scores every job on the pooled features; returns an array of shape (len(jobs),).

        ``pooled`` (n, C) is the cache of pooled features (its dtype is the model's: a fill is cast
        to it first, as the head engines write it into their float buffers). Each job has
        ``channels`` (k,), ``kind`` ("none", "permute" or "fill"), ``perm`` (an array or a callable
        returning one) and ``fill`` (a scalar or ``(k,)`` pooled values). ``score`` receives one
        job's outputs ``(n, K)`` (activation applied in float64, then cast to the model's output dtype),
        in sample order. Jobs are evaluated
        in chunks of jobs with the same number of channels, ``chunk_bytes`` of work arrays at most
        (at least one job per chunk); ``progress(done)`` is called after each chunk.
        """
        n = int(pooled.shape[0])
        x32 = pooled.reshape(n, -1)
        x = x32.astype(np.float64)
        w, b = self.weights()
        # Class-major layouts, (K, n) and (J, K, n): each class's row of samples is contiguous, so the
        # update, the activation and its per-class maximum and sum run on long contiguous rows.
        z0t = np.ascontiguousarray((x @ w + b).T)
        xt = np.ascontiguousarray(x.T)  # (C, n)
        n_out = z0t.shape[0]
        scores = np.empty(len(jobs), dtype=np.float64)
        rows = np.arange(n)
        i = 0
        while i < len(jobs):
            k = len(jobs[i].channels)
            per_job = 8 * n * (3 * k + 3 * n_out)
            cap = max(1, int(chunk_bytes) // max(per_job, 1))
            j = i + 1
            while j < len(jobs) and j - i < cap and len(jobs[j].channels) == k:
                j += 1
            chunk = jobs[i:j]
            ch = np.stack([np.asarray(job.channels, dtype=np.int64) for job in chunk])  # (J, k)
            # The perturbed pooled features of the chunk's channels, (J, k, n): gathered at once.
            src = np.empty((len(chunk), 1, n), dtype=np.int64)
            fills = []
            for t, job in enumerate(chunk):
                if job.kind == "permute":
                    src[t, 0] = job.perm() if callable(job.perm) else job.perm
                elif job.kind in ("fill", "none"):
                    src[t, 0] = rows
                    if job.kind == "fill":
                        # Cast to the cache's dtype first, as the engines write a fill into their buffers.
                        value = np.broadcast_to(np.asarray(job.fill).astype(x32.dtype), (k,))
                        fills.append((t, value.astype(np.float64)))
                else:  # pragma: no cover - internal
                    raise ValueError(job.kind)
            old = xt[ch]  # (J, k, n)
            new = np.take_along_axis(old, np.broadcast_to(src, old.shape), axis=2)
            for t, value in fills:
                new[t] = value[:, None]
            delta = new - old
            wgt = np.swapaxes(w[ch], 1, 2)  # (J, K, k)
            if k == 1:
                zt = wgt * delta  # (J, K, 1) * (J, 1, n)
            else:
                zt = np.matmul(wgt, delta)
            zt += z0t
            out = self.activate(zt)  # (J, n, K)
            many = getattr(score, "many", None)  # a score of a stack of outputs at once (each job's own value)
            if many is not None:
                scores[i:j] = many(out)
            else:
                for t in range(len(chunk)):
                    scores[i + t] = float(score(out[t]))
            i = j
            if progress is not None:
                progress(i)
        return scores

    # ------------------------------------------------------------------
    # The per-position head: a 1x1 convolution on the block's maps (layers.pointwise_head_after)
    # ------------------------------------------------------------------
    def outputs_maps(self, maps: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
        """The model's outputs ``(n, *spatial, K)`` on the block's maps ``(n, *spatial, C)``, in the output's dtype.

        Computed in chunks of samples (float64 logits of one chunk at a time), as :meth:`run_maps` does.
        """
        n, spatial = int(maps.shape[0]), tuple(maps.shape[1:-1])
        flat = maps.reshape(n, -1, maps.shape[-1])
        w, b = self.weights()
        hw, k_out = flat.shape[1], w.shape[1]
        out = np.empty((n, hw, k_out), dtype=self.dtype)
        step = self.maps_step(hw, k_out, flat.shape[2], chunk_bytes)
        for s in range(0, n, step):
            e = min(n, s + step)
            out[s:e] = self.activate(np.ascontiguousarray(np.swapaxes(flat[s:e].astype(np.float64) @ w + b, 1, 2)))
        return out.reshape((n,) + spatial + (k_out,))

    def run_maps(self, maps: np.ndarray, jobs: Sequence, score: Callable[[np.ndarray], float],
                 chunk_bytes: int = CHUNK_BYTES, progress=None, keep_bytes: int = 512 * 2**20) -> np.ndarray:
        """Scores every job on the block's maps through the per-position head; returns (len(jobs),) scores.

        ``maps`` (n, *spatial, C) is the cache of the block's maps (the model's dtype); the head is
        ``act(maps @ W + b)`` at every position. Perturbing the filters ``G`` of a job (their maps
        replaced by another sample's, or by a fill broadcast to ``(*spatial, k)``, cast to the cache's
        dtype first as the tail engine writes it) changes the logits at every position by
        ``(a'_G - a_G) @ W_G``: a rank-``k`` update of the baseline logits, with no pass of the head.
        The baseline logits ``a @ W + b`` (float64) are computed once and kept when they take at most
        ``keep_bytes`` (``n x positions x K x 8`` bytes), else recomputed chunk by chunk for every job.
        The work goes in chunks of samples (``chunk_bytes`` of float64 work arrays, at least one
        sample, the same chunks for every job and for :meth:`outputs_maps`, so that a job that
        changes nothing gives the baseline bit for bit): the update, then the activation in float64
        rounded once to the model's output dtype (:meth:`activate`). A ``score`` with ``begin()`` (a
        score that adds up over samples, such as :class:`~keras_hybrid_interp.core.task.SegmentationScore`)
        receives the chunks as they come (``acc = score.begin(); acc.update(out_chunk,
        score.targets[s:e]); acc.result()``), so no job's outputs of all ``n`` samples exist at once;
        any other ``score`` receives one job's outputs ``(n, *spatial, K)`` in sample order, as from
        every engine.
        """
        n, spatial, c = int(maps.shape[0]), tuple(maps.shape[1:-1]), int(maps.shape[-1])
        flat = maps.reshape(n, -1, c)
        hw = flat.shape[1]
        w, b = self.weights()
        k_out = w.shape[1]
        wt = np.ascontiguousarray(w.T)  # (K, C)
        step = self.maps_step(hw, k_out, c, chunk_bytes)

        def base_logits(s, e):  # (m, K, hw), class-major
            return np.ascontiguousarray(np.swapaxes(flat[s:e].astype(np.float64) @ w + b, 1, 2))

        z0 = None
        if n * hw * k_out * 8 <= keep_bytes:
            z0 = np.empty((n, k_out, hw), dtype=np.float64)
            for s in range(0, n, step):
                z0[s:s + step] = base_logits(s, min(n, s + step))
        seg = score if isinstance(score, ChunkedScore) else None  # a score that adds up chunk by chunk
        # A score of the argmax alone (mean IoU) is recomputed only where the argmax can move.
        argmax = None
        if seg is not None and getattr(seg, "reads_argmax", False):
            argmax = _ArgmaxBaseline(self, flat, w, b, z0, base_logits, step, seg.targets)
        scores = np.empty(len(jobs), dtype=np.float64)

        def perturbation(job):
            """``(channels, src, fill)``: the permutation (n,) or None, the fill (k, hw) float64 or None."""
            ch = np.asarray(job.channels, dtype=np.int64)
            src = fill = None
            if job.kind == "permute":
                src = job.perm() if callable(job.perm) else job.perm
            elif job.kind not in ("fill", "none"):  # pragma: no cover - internal
                raise ValueError(job.kind)
            if job.kind == "fill" and len(ch):
                # Cast to the cache's dtype first, as the tail engine writes a fill into its buffers.
                value = np.broadcast_to(np.asarray(job.fill).astype(flat.dtype), spatial + (len(ch),))
                fill = np.ascontiguousarray(value.reshape(hw, len(ch)).T, dtype=np.float64)  # (k, hw)
            return ch, src, fill

        done = 0
        rest = list(range(len(jobs)))
        if argmax is not None and argmax.applies:
            assert seg is not None  # argmax is built from it
            # Jobs of one filter at most, by filter: its maps are read from the cache once for all its jobs.
            by_channel: dict[int, list[int]] = {}
            for i in rest:
                job = jobs[i]
                if job.kind == "none" or len(job.channels) == 0:
                    scores[i] = seg.from_confusion(argmax.cm.copy())
                    done += 1
                elif len(job.channels) == 1:
                    by_channel.setdefault(int(np.asarray(job.channels)[0]), []).append(i)
            # Filters are independent: several at once on the CPU cores (NumPy releases the GIL), in order.
            work = ((c, [perturbation(jobs[i])[1:] for i in idx]) for c, idx in by_channel.items())
            for idx, cms in zip(by_channel.values(), ordered_map(lambda cp: argmax.channel_confusions(*cp), work)):
                for i, cm in zip(idx, cms):
                    scores[i] = seg.from_confusion(cm)
                done += len(idx)
                if progress is not None:
                    progress(done)
            rest = [i for i in rest if len(jobs[i].channels) > 1 and jobs[i].kind != "none"]
        for i in rest:
            job = jobs[i]
            ch, src, fill = perturbation(job)
            k = len(ch)
            acc = seg.begin() if seg is not None else None
            whole = None if seg is not None else np.empty((n, hw, k_out), dtype=self.dtype)
            for s in range(0, n, step):
                e = min(n, s + step)
                zt = z0[s:e].copy() if z0 is not None else base_logits(s, e)
                if k and job.kind != "none":
                    # (m, k, hw): advanced indices around a slice put their axes first.
                    old = flat[np.arange(s, e)[:, None], :, ch[None, :]].astype(np.float64)
                    if fill is None:
                        assert src is not None  # a permutation (a fill job has its fill)
                        new = flat[src[s:e][:, None], :, ch[None, :]].astype(np.float64)
                    else:
                        new = fill[None]
                    delta = new - old
                    zt += wt[:, ch] * delta if k == 1 else np.matmul(wt[:, ch], delta)
                out = self.activate(zt)  # (m, hw, K), the model's dtype
                if seg is not None and acc is not None:
                    acc.update(out.reshape((e - s,) + spatial + (k_out,)), seg.targets[s:e])
                elif whole is not None:
                    whole[s:e] = out
            if acc is not None:
                scores[i] = float(acc.result())
            else:
                assert whole is not None  # filled chunk by chunk above
                scores[i] = float(score(whole.reshape((n,) + spatial + (k_out,))))
            done += 1
            if progress is not None:
                progress(done)
        return scores

    @staticmethod
    def maps_step(positions: int, k_out: int, channels: int, chunk_bytes: int = CHUNK_BYTES) -> int:
        """Samples per chunk of :meth:`run_maps` and :meth:`outputs_maps` (the same for every job)."""
        return sample_chunk(positions, 3 * k_out + 4 * channels, chunk_bytes)


class _ArgmaxBaseline:
    """The baseline argmax of every position, and each job's confusion matrix by recomputing only where it can move.

    For a score that reads each position's argmax of a softmax alone (mean IoU,
    :attr:`~keras_hybrid_interp.core.task.SegmentationScore.reads_argmax`), perturbing one filter ``c``
    changes the logits at position ``p`` by ``delta(p) * W_c``, so the gap between the baseline's top class
    ``t`` and any class ``j`` shrinks by ``delta(p) * (W_cj - W_ct)``: by at most ``delta(p) * up[t]`` for
    ``delta > 0`` (``up[t] = max_j W_cj - W_ct``, zero where ``t``'s weight is the largest) and
    ``-delta(p) * down[t]`` for ``delta < 0`` (``down[t] = W_ct - min_j W_cj``). Where that is below the
    baseline's gap between its two largest logits (less a slack of ``1e-6 (1 + |top logit|)``, far above
    float64 rounding and enough that the float32 probabilities keep their order), the position keeps
    its baseline class. Every other position (the *candidates*, near ties included) is recomputed by the
    same float64 arithmetic as :meth:`LinearHead.run_maps`' full path, element by element (the update, the
    activation rounded to the output dtype, the argmax with ties to the lower class), so the job's
    confusion matrix, ``baseline - candidates' old cells + candidates' new cells``, equals the full
    path's bit for bit (counts are exact). The baseline (logits, classes, gaps) is computed once, by the
    same chunks of samples as the full path; a non-finite baseline logit sends every job to the full path
    (:attr:`applies` is False). Jobs are taken filter by filter (:meth:`channel_confusions`).
    """

    def __init__(self, head: LinearHead, flat, w, b, z0, base_logits, step, targets):
        self.head = head
        self.flat = flat
        n, hw = int(flat.shape[0]), int(flat.shape[1])
        self.k_out = int(w.shape[1])
        self.wt = np.ascontiguousarray(w.T)
        # Kept baseline logits are the same whatever the chunks: then larger chunks (fewer NumPy calls per job).
        step = step if z0 is None else max(step, sample_chunk(hw, 4))
        self.z0, self.base_logits, self.step, self.n = z0, base_logits, step, n
        small = np.int16 if self.k_out < 2**15 else np.int64  # classes of every position: kept small
        self.targets = np.asarray(targets).reshape(n, hw).astype(small)
        self.pred = np.empty((n, hw), dtype=small)
        # The candidate test runs in the cache's dtype (float32: half the memory traffic of float64); any
        # other dtype (float16: a difference within 2^-11 only) is tested in float64.
        self.test = np.float32 if flat.dtype == np.float32 else np.float64
        #: Per position, the baseline's room before its class can change: the slack, shrunk by SHRINK and
        #: rounded down to the test's dtype (<= 0 where the two largest logits are too close to tell).
        self.room = np.empty((n, hw), dtype=self.test)
        self.applies = True
        for s in range(0, n, step):
            e = min(n, s + step)
            zt = self._logits(s, e)  # (m, K, hw)
            if not np.all(np.isfinite(zt)):
                self.applies = False
                return
            first, second = _top_two(zt)
            slack = (first - second) - 1e-6 * (1.0 + np.abs(first))
            self.room[s:e] = _round_down(slack * (1.0 - SHRINK), self.test)
            self.pred[s:e] = head.predicted(zt)
        self.cm = confusion(self.targets, self.pred, self.k_out)

    def _logits(self, s, e):
        return self.z0[s:e].copy() if self.z0 is not None else self.base_logits(s, e)

    def channel_confusions(self, c: int, perturbations) -> list[np.ndarray]:
        """The (K, K) confusion matrix of each job that perturbs filter ``c`` alone.

        ``perturbations``: per job ``(src, fill)``, a permutation of the samples ``(n,)`` (and ``fill``
        None) or a fill ``(1, hw)`` float64 (and ``src`` None). Filter ``c``'s maps are copied out of the
        cache once for all its jobs (a strided read of the whole cache: once per filter, not per job),
        and each chunk of samples' old values and baseline logits serve every job.
        """
        cms = [self.cm.copy() for _ in perturbations]
        col = np.ascontiguousarray(self.flat[:, :, c])  # (n, hw), the cache's dtype
        wt_c = self.wt[:, [c]]  # (K, 1)
        k_out = self.k_out
        # A position whose baseline class is t keeps it while delta * (W_cj - W_ct) < slack for every class
        # j: for delta > 0 while delta < slack / up[t], for delta < 0 while -delta < slack / down[t].
        w_c = self.wt[:, c]
        hw = int(col.shape[1])
        class_rows = (np.arange(k_out) * hw)[:, None]
        up, down = w_c.max() - w_c, w_c - w_c.min()  # (K,): 0 where t's weight is the largest (smallest)
        # The limits are room x (1 - SHRINK) / up[t] and -room x (1 - SHRINK) / down[t], every factor rounded
        # toward zero, so a float32 limit is at most 2^-24 above its value: with the shrink, below
        # slack / up[t] (slack / down[t]). A float32 difference is within 2^-24 of the exact one, so every
        # position the test leaves out keeps its class exactly, with room to spare (a position it takes in
        # is recomputed exactly, whatever the test). NaN, an overflow to inf and room <= 0 are candidates
        # (no difference is both below a limit <= 0 and above one >= 0; 0 x inf is NaN).
        test = self.test
        with np.errstate(divide="ignore"):
            inv_up = _round_down((1.0 - SHRINK) / up, test)  # inf where up[t] == 0: delta > 0 never moves t
            neg_inv_down = -_round_down((1.0 - SHRINK) / down, test)
        for s in range(0, self.n, self.step):
            e = min(self.n, s + self.step)
            old = col[s:e]  # (m, hw)
            pred = self.pred[s:e]
            targets = self.targets[s:e]
            base = self.z0[s:e] if self.z0 is not None else None
            room = self.room[s:e]
            with np.errstate(invalid="ignore", over="ignore", under="ignore"):
                hi = room * np.take(inv_up, pred)  # delta below it: no class rises above t
                lo = room * np.take(neg_inv_down, pred)  # delta above it: t falls below no class
            for cm, (src, fill) in zip(cms, perturbations):
                moved = col[src[s:e]] if fill is None else None  # (m, hw): the permuted samples' maps
                with np.errstate(over="ignore", invalid="ignore"):
                    if moved is not None:
                        gap = moved.astype(test, copy=False) - old.astype(test, copy=False)
                    else:
                        gap = fill[0][None].astype(test) - old.astype(test, copy=False)
                keep = gap < hi
                keep &= gap > lo
                cand = np.flatnonzero(np.logical_not(keep, out=keep))
                if not cand.size:
                    continue
                # The candidates' exact update, by the full path's float64 arithmetic; every gather is one
                # np.take of flat indices into a C-contiguous chunk (position p of sample i: i * hw + p).
                new = np.take(moved, cand) if moved is not None else np.take(fill[0], cand % hw)
                delta = new.astype(np.float64) - np.take(old, cand).astype(np.float64)
                if base is None:
                    base = self.base_logits(s, e)
                # Logit k of a candidate in the class-major chunk (m, K, hw): i * K * hw + k * hw + p.
                at = cand + (cand // hw) * ((k_out - 1) * hw)
                zc = np.take(base, at[None, :] + class_rows)  # (K, m_c)
                zc += wt_c * delta[None, :]
                new_pred = self.head.predicted(zc)
                t = np.take(targets, cand).astype(np.int64) * k_out
                cm += np.bincount(t + new_pred, minlength=k_out * k_out).reshape(k_out, k_out)
                cm -= np.bincount(t + np.take(pred, cand), minlength=k_out * k_out).reshape(k_out, k_out)
        return cms


#: The candidate test's limits are shrunk by this fraction: far above the few float32 roundings (2^-24 each)
#: between them and the exact bound, and far below anything that would add candidates in numbers.
SHRINK = 1e-5


def _round_down(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` (float64) in ``dtype``, each value rounded toward zero where the cast rounded it away from zero."""
    y = np.asarray(x, dtype=np.float64).astype(dtype)
    if np.dtype(dtype) != np.float64:
        with np.errstate(invalid="ignore"):
            away = np.abs(y.astype(np.float64)) > np.abs(x)
        if np.any(away):
            y[away] = np.nextafter(y[away], np.zeros((), dtype))
    return y


def _top_two(zt: np.ndarray, argmax: bool = False):
    """The largest and second-largest of finite class-major logits ``(m, K, hw)`` per position, ``(m, hw)`` each.

    Class by class (contiguous rows): the values of ``np.sort(zt, axis=1)[:, -1]`` and ``[:, -2]``
    (K = 1: the second is -inf), without sorting every position's K logits. With ``argmax``, also the
    class of the largest, ``(m, hw)`` int64, ties to the lower class (``np.argmax(zt, axis=1)`` where the
    logits are finite; a NaN makes that position's largest NaN, which every caller treats as unsure).
    """
    first = zt[:, 0].copy()
    second = np.full_like(first, -np.inf)
    pred = np.zeros(first.shape, dtype=np.int64) if argmax else None
    for k in range(1, zt.shape[1]):
        v = zt[:, k]
        if pred is not None:
            pred[v > first] = k
        np.maximum(second, np.minimum(first, v), out=second)
        np.maximum(first, v, out=first)
    return (first, second, pred) if argmax else (first, second)


def sample_chunk(positions: int, arrays: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Samples per chunk when each sample takes ``positions x arrays`` float64 numbers of work arrays (>= 1)."""
    return max(1, int(chunk_bytes) // max(1, 8 * int(positions) * int(arrays)))
