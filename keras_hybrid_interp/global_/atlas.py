"""A filter atlas: the samples (and the input crops) each filter responds to most.

The **activation of a sample for a filter** is the maximum of the filter's
feature map over its spatial positions; its **location** is the position of
that maximum (the first one in row-major order when several positions tie).
The **top-k examples** of a filter are the ``k`` samples with the largest
activations, largest first; ties are broken by sample order (the earlier
sample first). They are kept while the data streams through the one pass
(:mod:`..core.data_pass`): per batch, the batch's activations are merged with
the ``k`` kept so far, so memory is ``O(C x k)`` (plus one batch), never
``N x C``.

For each kept sample the atlas stores the input **crop** at the filter's
receptive field at the location of the maximum (:mod:`..core.receptive_field`):
the input positions the filter can see there, clipped at the input's border
(the clipped ``box`` is recorded). Crops are copied out of the batch while it
passes, for the kept samples only.

A filter whose activation (the maximum of its map) is the same for every
streamed sample has no ranking: all samples tie, and its "top" examples are
just the first ``k`` samples. That happens to a dead filter (0 everywhere
after a ReLU) and to a capped one that reaches its cap somewhere in every
sample (ReLU6's 6, a sigmoid's 1). Such filters are listed in
``FilterExamples.constant_filters``, flagged in ``to_frame()``, marked in the
plot and reported with an :class:`InterpretationWarning`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core import health as _health
from ..core.data_pass import Tap
from ..core.deprecation import renamed_attribute
from ..core.receptive_field import (
    ReceptiveField,
    UnsupportedReceptiveField,
    receptive_field,
    window_origin,
    window_shape,
)
from ..core.validation import check_int, is_int

__all__ = ["FilterExamples", "TopKExamples", "check_filters", "check_k", "examples_reducer", "examples_result"]


def check_k(k) -> int:
    """``top_k`` of ``filter_examples`` (``k`` of the reducer) as an int."""
    return check_int(k, "top_k", what=" (examples kept per filter)")


def check_filters(filters, c: int, block: str) -> np.ndarray:
    """``filters`` (None: all, an int, or a sequence of distinct ints in ``0..c-1``) as an int array."""
    if filters is None:
        return np.arange(c)
    if is_int(filters):
        filters = [filters]
    try:
        arr = np.asarray(list(filters))
    except TypeError:
        raise ValueError(f"`filters` must be None, an int or a sequence of ints; received {filters!r}.") from None
    if arr.size == 0 or arr.ndim != 1 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`filters` must be None, an int or a non-empty sequence of ints; received {filters!r}.")
    bad = arr[(arr < 0) | (arr >= c)]
    if bad.size:
        raise ValueError(f"`filters` {bad.tolist()} out of range: block {block!r} has {c} filters (0..{c - 1}).")
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"`filters` must not repeat a filter; received {arr.tolist()}.")
    return arr.astype(np.int64)


#: Bytes of a block's maps :meth:`TopKExamples.update` reads at a time to find each filter's maximum.
MAXIMA_CHUNK_BYTES = 8 * 2**20


class TopKExamples:
    """Reducer: the running top-k samples per filter of tensor ``key``, with their crops.

    Memory: ``F x k`` values, indices and locations, and ``F x k`` crops of
    the receptive field's window (``min(size, input length)`` per axis).
    ``crops=False`` keeps no crops (the boxes are still recorded).
    """

    def __init__(self, key: int, filters: np.ndarray, k: int, rf: ReceptiveField, *, crops: bool = True,
                 input_index: int | None = None, input_name: str | None = None):
        self.key = key
        #: Several inputs: which of ``batch.x`` the crops come from (its position, its name).
        self.input_index = input_index
        self.input_name = input_name
        self.tap = Tap(key, "raw")
        self.taps = (self.tap,)
        self.filters = np.asarray(filters, dtype=np.int64)
        self.k = int(k)
        self.rf = rf
        self.keep_crops = bool(crops)
        f = len(self.filters)
        self.values = np.empty((0, f), dtype=np.float64)  # (kept, F), largest first
        self.indices = np.empty((0, f), dtype=np.int64)
        self.locations = np.empty((0, f, rf.ndim), dtype=np.int64)
        self.boxes = np.empty((0, f, rf.ndim, 2), dtype=np.int64)
        self.crops: np.ndarray | None = None  # (kept, F, *window, channels)
        self.lowest = np.full(f, np.inf)  # the smallest activation seen per filter (NaN ignored)
        self.n = 0
        self.input_shape: tuple[int, ...] | None = None  # the inputs' spatial shape, from the first batch

    def crop_bytes(self, channels: int, input_shape=None) -> int:
        """Bytes the crops will take (float32)."""
        return int(len(self.filters) * self.k * np.prod(window_shape(self.rf, input_shape)) * channels * 4)

    def _maxima(self, a):
        """Per sample and filter, the first position of the map's maximum (row-major) and that value (float64).

        Both ``(B, F)``. The maps are read a few samples at a time (:data:`MAXIMA_CHUNK_BYTES`):
        selecting the filters and NumPy's argmax over a non-last axis each copy what they read, and
        a whole batch of a large map (a U-Net's last block, 16 samples at 256 px) took 134 MB per copy.
        """
        b, f = len(a), len(self.filters)
        every = f == a.shape[-1] and np.array_equal(self.filters, np.arange(f))
        per_sample = max(1, int(np.prod(a.shape[1:-1])) * f * a.itemsize)
        step = max(1, MAXIMA_CHUNK_BYTES // per_sample)
        pos = np.empty((b, f), dtype=np.intp)
        vals = np.empty((b, f), dtype=np.float64)
        for s in range(0, b, step):
            e = min(b, s + step)
            part = a[s:e] if every else a[s:e][..., self.filters]
            flat = part.reshape(e - s, -1, f)  # (m, P, F)
            pos[s:e] = np.argmax(flat, axis=1)
            vals[s:e] = np.take_along_axis(flat, pos[s:e, None, :], axis=1)[:, 0, :]
        return pos, vals

    def update(self, batch):
        a = np.asarray(batch.values[self.tap.ident])
        b = len(a)
        if b == 0:
            return
        x = np.asarray(batch.x if self.input_index is None else batch.x[self.input_index])
        spatial = a.shape[1:-1]
        pos, vals = self._maxima(a)
        self.lowest = np.fmin(self.lowest, np.fmin.reduce(vals, axis=0))
        locs = (
            np.stack(np.unravel_index(pos, spatial), axis=-1) if spatial else np.zeros((b, len(self.filters), 0), int)
        )
        if self.input_shape is None:
            self.input_shape = tuple(int(n) for n in x.shape[1:-1])
        elif tuple(x.shape[1:-1]) != self.input_shape:
            raise ValueError(f"`x`: the filter atlas needs inputs of one spatial shape; a batch of shape "
                             f"{tuple(x.shape[1:-1])} follows batches of shape {self.input_shape}.")
        start = self.n
        self.n += b
        cand_vals = np.concatenate([self.values, vals], axis=0)
        # Stable sort of -value: kept rows come first and are earlier samples, so ties go to the earlier sample.
        # NaN sorts last.
        order = np.argsort(-cand_vals, axis=0, kind="stable")[: self.k]  # (k', F)
        kept = len(self.values)
        cols = np.arange(len(self.filters))[None, :]
        new_idx = np.concatenate([self.indices, start + np.broadcast_to(np.arange(b)[:, None], vals.shape)], axis=0)
        new_loc = np.concatenate([self.locations, locs.astype(np.int64)], axis=0)
        self.values = cand_vals[order, cols]
        self.indices = new_idx[order, cols]
        self.locations = new_loc[order, cols]
        k_now, f = order.shape
        from_old = order < kept
        win = window_shape(self.rf, self.input_shape)
        if kept:
            rows = np.where(from_old, order, 0)
            boxes = self.boxes[rows, cols]
            old, crops = self.crops, None  # kept when keep_crops; reordered in place, filter by filter
            if old is not None:
                if k_now > len(old):  # fewer than k samples before this batch: every filter's crops move
                    new = np.empty((k_now,) + old.shape[1:], dtype=old.dtype)
                    moved = np.arange(f)
                else:  # only the filters whose ranks changed (a whole-image window: 0.26 MB a crop at 256 px)
                    new = old
                    moved = np.flatnonzero(np.any(order != np.arange(k_now)[:, None], axis=0))
                for c in moved:
                    new[:, c] = old[rows[:, c], c]  # the right side is a copy: safe in place
                crops = new
        else:
            boxes = np.empty((k_now, f, self.rf.ndim, 2), dtype=np.int64)
            # Every crop is new, and written below (NaN outside the input, then the box).
            crops = np.empty((k_now, f, *win, x.shape[-1]), dtype=np.float32) if self.keep_crops else None
        for r, c in zip(*np.nonzero(~from_old)):
            loc = self.locations[r, c]
            box = self.rf.box(loc, self.input_shape)
            boxes[r, c] = box
            if crops is not None:
                origin = window_origin(self.rf, loc, self.input_shape)
                crops[r, c] = np.nan
                src_sl = tuple(slice(lo, hi) for lo, hi in box)
                dst_sl = tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(box, origin))
                crops[(r, c) + dst_sl] = x[(order[r, c] - kept,) + src_sl]
        self.boxes = boxes
        self.crops = crops


@dataclasses.dataclass(frozen=True, eq=False)
class FilterExamples:
    """The top-k activating samples of each analysed filter of one block (a filter atlas).

    Attributes
    ----------
    filters : ndarray of int, shape (F,)
        The filters, in the order asked for.
    indices : ndarray of int, shape (F, k)
        Index in the stream of each kept sample (0 = first sample), by rank (largest activation first).
    values : ndarray of float64, shape (F, k)
        The activation: the maximum of the filter's map over spatial positions.
    locations : ndarray of int, shape (F, k, n_axes)
        Position of that maximum in the block's feature map (first in row-major order on ties).
    boxes : ndarray of int, shape (F, k, n_axes, 2)
        ``[start, stop)`` per spatial axis of the receptive field at the location, in input positions,
        clipped to the input.
    crops : ndarray of float32, shape (F, k, *window, channels), or None
        The input inside each box, placed in a window of ``min(field size, input length)`` per axis;
        positions outside the input are NaN. :meth:`crop` returns the box's content alone.
    receptive_field : ReceptiveField
        Size, jump and start of the block's receptive field per spatial axis.
    block : str
    n_samples : int
        Samples streamed. ``k`` is at most this.
    constant_filters : ndarray of int
        The analysed filters whose activation (the maximum of the map) is the same for every
        streamed sample (dead filters, or capped ones that reach their cap in every sample): all
        samples tie, so their examples are the first ``k`` samples in stream order, not a ranking.
    input_name : str or None
        A model with several inputs: the input the crops come from (the block's image input,
        :attr:`Block.image_input`); None for a single-input model.
    """

    filters: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    locations: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray | None
    receptive_field: ReceptiveField
    block: str
    n_samples: int
    constant_filters: np.ndarray
    input_name: str | None = None

    def __post_init__(self):
        for a in (self.filters, self.indices, self.values, self.locations, self.boxes, self.crops,
                  self.constant_filters):
            if a is not None:
                a.setflags(write=False)

    @property
    def top_k(self) -> int:
        """Examples kept per filter."""
        return self.indices.shape[1]

    @property
    def k(self) -> int:
        """Deprecated name of :attr:`top_k` (removed in 0.2)."""
        return renamed_attribute(self, "k", "top_k")

    def _row(self, filter):
        hits = np.flatnonzero(self.filters == filter)
        if not is_int(filter) or not hits.size:
            raise ValueError(f"`filter` must be one of the analysed filters {self.filters.tolist()}; "
                             f"received {filter!r}.")
        return int(hits[0])

    def crop(self, filter: int, rank: int = 0) -> np.ndarray:
        """The input inside the box of ``filter``'s example of rank ``rank`` (0 = strongest), unpadded."""
        if self.crops is None:
            raise ValueError("These examples were computed without crops (crops=False).")
        row = self._row(filter)
        check_int(rank, "rank", min_value=0, max_value=self.top_k - 1)
        box = self.boxes[row, rank]
        origin = window_origin(self.receptive_field, self.locations[row, rank])
        sl = tuple(slice(int(lo) - o, int(hi) - o) for (lo, hi), o in zip(box, origin))
        return np.asarray(self.crops[row, rank][sl])

    def select(self, filters) -> FilterExamples:
        """The examples of ``filters`` only (a sequence of analysed filters), in that order."""
        if is_int(filters):
            filters = [filters]
        rows = [self._row(f) for f in filters]
        if not rows:
            raise ValueError("`filters` must name at least one filter.")
        return dataclasses.replace(
            self, filters=self.filters[rows].copy(), indices=self.indices[rows].copy(),
            values=self.values[rows].copy(), locations=self.locations[rows].copy(), boxes=self.boxes[rows].copy(),
            crops=None if self.crops is None else self.crops[rows].copy(),
            constant_filters=self.constant_filters[np.isin(self.constant_filters, self.filters[rows])].copy())

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per filter and rank (``filter``, ``rank``, ``sample``, ``value``, ``location``, ``box``,
        ``constant``: the filter's activation is the same for every sample, so its rows are no ranking)."""
        f, k = self.indices.shape
        return pd.DataFrame({
            "block": self.block,
            "filter": np.repeat(self.filters, k),
            "rank": np.tile(np.arange(k), f),
            "sample": self.indices.ravel(),
            "value": self.values.ravel(),
            "location": [tuple(int(v) for v in loc) for loc in self.locations.reshape(f * k, -1)],
            "box": [tuple((int(lo), int(hi)) for lo, hi in b) for b in self.boxes.reshape(f * k, -1, 2)],
            "constant": np.repeat(np.isin(self.filters, self.constant_filters), k),
        })

    def plot(self, **kwargs):
        """:func:`keras_hybrid_interp.plotting.plot_filter_examples` of this result; returns the Figure."""
        from ..plotting.atlas import plot_filter_examples

        return plot_filter_examples(self, **kwargs)

    def __repr__(self):
        rf = self.receptive_field
        return (f"FilterExamples(block={self.block!r}, filters={len(self.filters)}, top_k={self.top_k}, "
                f"n_samples={self.n_samples}, receptive_field={'whole input' if rf.whole else rf.size})")


def block_input(graph, key, block) -> int:
    """The input key the atlas crops ``key``'s examples from: the model input, or the block's image input.

    A model with several inputs: the first input the block depends on that is an image (signal,
    volume), never a tabular one; a block after the merge of several image inputs warns that its
    crops come from the first of them only.
    """
    if len(graph.input_keys) == 1:
        return graph.input_keys[0]
    image = graph.image_input_of(key)
    if image is None:
        names = [graph.input_names[graph.input_keys.index(k)] for k in graph.inputs_of(key)]
        raise ValueError(
            f"`block`: block {block!r} depends on no image input (only on {names}), "
            "so it has no input positions to crop; choose a block on a convolutional branch."
        )
    images = [k for k in graph.inputs_of(key) if graph.image_input_of(k) == k]
    if len(images) > 1:
        names = [graph.input_names[graph.input_keys.index(k)] for k in images]
        _health.warn("receptive_field",
                     f"Block {block!r} depends on several image inputs {names}; the filter atlas crops the examples "
                     f"from {names[0]!r} only, the others' share of a filter is not shown. Analyse a block of each "
                     "branch (before the merge) to see every input.")
    return image


def block_receptive_field(graph, key, block, input_key=None) -> ReceptiveField:
    """The receptive field of ``key``; the whole input, with a warning, when it cannot be derived."""
    in_key = graph.input_keys[0] if input_key is None else input_key
    try:
        return receptive_field(graph, key, input_key=input_key)
    except UnsupportedReceptiveField as exc:
        in_sp = tuple(graph.tensors[in_key].shape[1:-1])
        _health.warn("receptive_field", f"Block {block!r}: {exc} The filter atlas crops the whole input instead.")
        nd = len(in_sp)
        return ReceptiveField(tuple(int(n or 0) for n in in_sp), (0,) * nd, (0,) * nd,
                              tuple(None if n is None else int(n) for n in in_sp), whole=True)


def examples_reducer(graph, key, block, *, filters=None, k=9, crops=True) -> TopKExamples:
    """The :class:`TopKExamples` reducer of ``filter_examples`` (arguments checked)."""
    shape = graph.tensors[key].shape
    c = int(shape[-1])
    filters = check_filters(filters, c, block)
    k = check_k(k)
    in_key = block_input(graph, key, block)
    rf = block_receptive_field(graph, key, block, input_key=in_key)
    if len(graph.input_keys) == 1:
        return TopKExamples(key, filters, k, rf, crops=crops)
    i = graph.input_keys.index(in_key)
    return TopKExamples(key, filters, k, rf, crops=crops, input_index=i, input_name=graph.input_names[i])


def examples_result(red: TopKExamples, block: str, *, keep=None, known_dead=()) -> FilterExamples:
    """The :class:`FilterExamples` of a reducer that has seen a pass (of the filters ``keep`` only, if given).

    The constant filters among them are listed in the result and warned about, except those
    in ``known_dead`` (dead filters that the caller reports already, as the report does).
    """
    if red.n == 0:
        raise ValueError("`x` holds no sample; the filter atlas needs at least one.")
    rf = red.rf
    # The static shape was not known: the data's (set by the first batch, and red.n > 0 here).
    if red.input_shape is not None and any(n is None for n in rf.input_shape):
        rf = dataclasses.replace(rf, input_shape=red.input_shape)
        if rf.whole:
            rf = dataclasses.replace(rf, size=red.input_shape)
    constant = red.filters[red.lowest == red.values[0]].astype(np.int64)  # values[0]: the largest per filter
    result = FilterExamples(red.filters.copy(), red.indices.T.copy(), red.values.T.copy(),
                            red.locations.transpose(1, 0, 2).copy(), red.boxes.transpose(1, 0, 2, 3).copy(),
                            None if red.crops is None else np.moveaxis(red.crops, 0, 1).copy(), rf, block, red.n,
                            constant, getattr(red, "input_name", None))
    if keep is not None:
        result = result.select(keep)
    unreported = np.setdiff1d(result.constant_filters, np.asarray(known_dead, dtype=np.int64))
    if len(unreported):
        _health.warn(
            "constant_filters",
            f"Block {block!r}: filter(s) {_health.listing(unreported)} reach the same maximum activation on every "
            f"one of the {red.n} samples (a dead filter, 0 everywhere; or a capped activation such as ReLU6 that "
            "reaches its cap somewhere in every sample), so all samples tie and their atlas examples are the first "
            "samples in stream order, not the samples they respond to most. They are marked in the atlas. A dead "
            "filter suggests a dying ReLU; a capped one is better read through its mean activation "
            "(ga.filter_class_association(x, y, block=..., statistic='mean')).",
        )
    return result
