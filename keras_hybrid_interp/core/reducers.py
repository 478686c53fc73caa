"""The reducers that fill a tail engine's cache in the one data pass (:func:`~keras_hybrid_interp.core.data_pass.run`).

* :class:`FrontierCache` keeps, for every sample, the tensors an engine's tail
  reads (:attr:`TailEngine.cache_keys <keras_hybrid_interp.core.engine.TailEngine.cache_keys>`),
  and gives a :class:`Cache`;
* :class:`MapSummary` summarises the block's maps where the engine caches
  only their pooled features (:class:`~keras_hybrid_interp.core.engine.PooledHeadEngine`):
  the per-channel range (dead filters) and the float64 mean map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from . import health as _health
from .data_pass import ChannelRange, Tap

__all__ = ["Cache", "FrontierCache", "MapSummary", "frontier_bytes_per_sample", "CACHE_WARN_BYTES"]

#: Cache size above which a warning suggests ``max_samples``.
CACHE_WARN_BYTES = 2**30


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


def frontier_bytes_per_sample(graph, keys: Sequence[int]) -> int:
    """Bytes one sample of the tensors ``keys`` of ``graph`` takes in a cache (4 a number; a free dimension as 1)."""
    total = 0
    for k in keys:
        dims = graph.tensors[k].shape[1:]
        total += int(np.prod([d or 1 for d in dims], dtype=np.int64)) * 4
    return total


class CachedEngine(Protocol):
    """What :class:`FrontierCache` reads of an engine (:class:`~keras_hybrid_interp.core.engine.TailEngine`)."""

    graph: Any
    key: int
    caches_maps: bool

    @property
    def cache_keys(self) -> list[int]: ...


class FrontierCache:
    """Reducer that keeps the frontier tensors of an engine for every sample of a pass (the tail's cache).

    Memory: ``n x (H*W*C of the layer + the tensors crossing the cut)`` numbers
    in the model dtype; a warning suggests ``max_samples`` above 1 GiB. When the
    pass knows its number of samples (:meth:`expect`: arrays), each tensor is
    written into one array allocated at the first batch, so the cache never
    exists twice (batches, then their concatenation); otherwise the batches are
    joined once by :meth:`result`, which then keeps the joined array only.
    """

    def __init__(self, engine: CachedEngine):
        self.engine = engine
        self.cached = tuple(Tap(k, "raw") for k in engine.cache_keys)
        # An engine that caches the pooled features only summarises the block's maps on the way.
        self.summary = MapSummary(engine.key) if not engine.caches_maps else None
        self.taps = self.cached + (self.summary.taps if self.summary is not None else ())
        self._parts: list[list] = [[] for _ in self.cached]
        self._labels: list = []
        self._per = frontier_bytes_per_sample(engine.graph, engine.cache_keys)
        self.n = 0
        self._warned = False
        self._expected: int | None = None
        # Per cached tensor: one array allocated at the first batch when the size is announced (expect()),
        # else None (the batches are kept in _parts); its shape, for the batches that follow.
        self._buffers: list[np.ndarray | None] = [None] * len(self.cached)
        self._shapes: list[tuple] = [()] * len(self.cached)

    def expect(self, num_samples: int | None) -> None:
        """The pass holds ``num_samples`` samples (None: unknown); before the first batch."""
        self._expected = None if num_samples is None else int(num_samples)

    def _store(self, i: int, a: np.ndarray) -> None:
        """Appends batch values ``a`` of cached tensor ``i`` at sample ``self.n``."""
        buf = self._buffers[i]
        if buf is None and self.n == 0 and self._expected is not None:
            buf = self._buffers[i] = np.empty((self._expected,) + a.shape[1:], dtype=a.dtype)
        if buf is not None:
            if self.n + len(a) <= len(buf) and buf.dtype == a.dtype:
                buf[self.n:self.n + len(a)] = a
                return
            # More samples, or another dtype, than announced: back to a list of batches.
            self._parts[i] = [buf[:self.n]]
            self._buffers[i] = None
        self._parts[i].append(a)

    def update(self, batch):
        for i, t in enumerate(self.cached):
            a = batch.values[t.ident]
            if self.n and tuple(a.shape[1:]) != self._shapes[i]:
                raise ValueError(
                    f"`x`: filter importance caches {self.engine.graph.tensors[t.key].name!r} for every sample, so "
                    f"the batches must give it one shape; a batch gives {tuple(a.shape[1:])} after batches of "
                    f"{self._shapes[i]}. Pass inputs of one spatial size (resize them), or analyse a block "
                    "read only through a global pooling, whose cache has no spatial axes.")
            self._shapes[i] = tuple(a.shape[1:])
            self._store(i, a)
        if batch.y is not None:
            self._labels.append(np.asarray(batch.y))
        if self.summary is not None:
            self.summary.update(batch)
        self.n += len(batch.values[self.cached[0].ident])
        if not self._warned and self.n * self._per > CACHE_WARN_BYTES:
            self._warned = True
            _health.warn(
                "large_cache",
                f"Permutation/ablation caches the activations at {self.engine.graph.tensors[self.engine.key].name!r} "
                f"(and the tensors crossing the cut) for every analysed sample; that exceeds "
                f"{CACHE_WARN_BYTES / 2**30:.0f} GiB at {self.n} samples. Pass `max_samples=` to limit it.",
            )

    def result(self) -> Cache:
        arrays = []
        for i, (p, buf) in enumerate(zip(self._parts, self._buffers)):
            if buf is not None:
                arrays.append(buf if self.n == len(buf) else buf[:self.n])
            else:
                joined = p[0] if len(p) == 1 else np.concatenate(p, axis=0)
                self._parts[i] = [joined]  # the batches are dropped: the cache exists once
                arrays.append(joined)
        labels = None
        if self._labels:
            labels = self._labels[0] if len(self._labels) == 1 else np.concatenate(self._labels, axis=0)
            self._labels = [labels]  # the batches' labels are dropped too: a segmentation's masks exist once
        return Cache(arrays, labels, self.n, self.summary)


class MapSummary:
    """Reducer: per-channel range (the dead-filter definition) and float64 mean map of tensor ``key``.

    What permutation and ablation need of the block's maps when the engine
    caches only the pooled features (:class:`PooledHeadEngine`): the dead
    filters, and the mean map that ``ablation_value="mean"`` fills in.
    Memory: one map (spatial x C) in float64, whatever the number of samples.
    """

    def __init__(self, key: int):
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
