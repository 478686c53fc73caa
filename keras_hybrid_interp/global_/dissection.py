"""Filter-class association of a segmentation model: the IoU of each filter's top activations with each class mask.

As in Network Dissection (Bau et al., 2017), filter ``c`` of a block is
thresholded at ``T_c``, its top-``quantile`` activation level over the data
(by default the top 0.5%: 99.5% of the filter's values, over every sample and
every position of the block's map, lie at or below ``T_c``). Its binary map
``M_c = [a_c > T_c]`` is read at the model's output resolution by the
package's one nearest-neighbour rule (:mod:`~keras_hybrid_interp.core.resolution`:
output position ``i`` reads block position ``floor(i * s / S)``), and compared with
each class's mask ``Y_k`` (the labels' masks, or the model's own predicted
mask without labels), summed over the whole data::

    IoU_ck = sum_n |M_c ∩ Y_k| / sum_n |M_c ∪ Y_k|

(NaN where the union is empty). This answers "which filters detect the
lesion", which no pooled statistic can.

Two passes of the one data pass, memory independent of N x H x W:

1. the threshold: a streaming histogram per filter (:class:`StreamingQuantile`,
   ``bins`` bins whose range grows by merging neighbours, so no value is
   held); ``T_c`` is interpolated linearly inside the bin where the top
   ``quantile`` begins, so it is within one final bin width (at most about
   ``2 x (max - min) / bins``) of the exact quantile;
2. the IoU: intersections, filter-mask areas and class areas accumulated in
   float64 (:class:`DissectionCounts`), counted at block resolution with the
   number of output pixels of each class that every block cell covers (equal
   to upsampling the mask, without building it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core import data_pass as _pass
from ..core.resolution import block_positions, spatial_shape
from ..core.validation import check_int, check_real

__all__ = ["QUANTILE", "BINS", "StreamingQuantile", "DissectionCounts", "SegmentationAssociation",
           "segmentation_association", "check_quantile"]

#: Default top fraction of each filter's activations that forms its mask (NetDissect's 0.5%).
QUANTILE = 0.005
#: Default number of histogram bins of the streaming threshold.
BINS = 2048


def check_quantile(quantile, argname="quantile") -> float:
    return check_real(quantile, argname, low=0, high=1, low_open=True, high_open=True,
                      what=", the top fraction of each filter's activations that forms its mask (NetDissect: 0.005)")


class StreamingQuantile:
    """Reducer: a per-filter histogram of every activation of one block, for its top-``quantile`` level.

    Per filter, ``bins`` equal bins starting at ``lo`` of width ``width``. A
    value outside the range widens it: the width doubles (neighbouring bins
    merge, exactly, since new edges are old edges) as often as needed and the
    start moves down by whole old bins. Memory: ``C x bins`` counts.
    """

    def __init__(self, tap, bins=BINS):
        self.tap = tap
        self.taps = (tap,)
        self.bins = int(bins)
        # Set at the first update with values (total > 0): C filters, known from the data.
        self.counts = np.zeros((0, self.bins), np.int64)
        self.lo = np.zeros(0)
        self.width = np.zeros(0)
        self.total = 0

    def update(self, batch):
        a = np.asarray(batch.values[self.tap.ident])
        v = a.reshape(-1, a.shape[-1]).astype(np.float64)
        if not len(v):
            return
        vmin, vmax = v.min(axis=0), v.max(axis=0)
        B = self.bins
        if self.total == 0:
            C = v.shape[1]
            self.lo = vmin.copy()
            tiny = 1e-9 * np.maximum(np.maximum(np.abs(vmin), np.abs(vmax)), 1e-30)
            self.width = np.maximum((vmax - vmin) / (B - 1), tiny)
            self.counts = np.zeros((C, B), np.int64)
        self._grow(vmin, vmax)
        idx = np.clip(np.floor((v - self.lo) / self.width).astype(np.int64), 0, B - 1)
        C = v.shape[1]
        self.counts += np.bincount((idx + np.arange(C) * B).ravel(), minlength=C * B).reshape(C, B)
        self.total += len(v)

    def _grow(self, vmin, vmax):
        B = self.bins
        hi = self.lo + B * self.width
        for c in np.flatnonzero((vmin < self.lo) | (vmax >= hi)):
            w, lo = self.width[c], self.lo[c]
            a = int(np.ceil((lo - vmin[c]) / w)) if vmin[c] < lo else 0
            span = a + max(B, int(np.floor((vmax[c] - lo) / w)) + 1)  # the old bins and the new values
            k = max(0, int(np.ceil(np.log2(span / B)))) if span > B else 0
            while span > B * 2 ** k:  # rounding guard
                k += 1
            f = 2 ** k
            new = np.zeros(B, np.int64)
            np.add.at(new, (np.arange(B) + a) // f, self.counts[c])
            self.counts[c] = new
            self.lo[c] = lo - a * w
            self.width[c] = w * f

    def thresholds(self, quantile) -> np.ndarray:
        """(C,) per filter: the level above which the top ``quantile`` of its values lies (interpolated in the bin)."""
        target = quantile * self.total
        above = np.cumsum(self.counts[:, ::-1], axis=1)[:, ::-1]  # above[c, j]: values in bins >= j
        C, B = self.counts.shape
        out = np.empty(C)
        for c in range(C):
            j = int(np.flatnonzero(above[c] >= target)[-1])  # the highest bin where the top fraction is reached
            in_bin = self.counts[c, j]
            over = above[c, j] - in_bin  # values in bins above j
            frac = (target - over) / in_bin if in_bin else 0.0
            out[c] = self.lo[c] + (j + 1 - frac) * self.width[c]
        return out


class DissectionCounts:
    """Reducer: per filter and class, the summed intersection of the filter's mask with the class mask (float64).

    ``thresholds`` (C,) make the filter masks ``a > T``; targets are the
    labels' masks (``batch.y``, class indices at the output resolution) or
    the model's predicted mask (``task.predicted`` of ``output_tap``).
    """

    def __init__(self, tap, output_tap, task, thresholds):
        self.tap, self.output_tap, self.task = tap, output_tap, task
        self.taps = (tap, output_tap)
        self.thresholds = np.asarray(thresholds, np.float64)
        K, C = task.num_classes, len(self.thresholds)
        self.intersection = np.zeros((C, K))
        self.mask_area = np.zeros(C)
        self.class_area = np.zeros(K)
        self.n = 0
        self.labelled = None

    def update(self, batch):
        a = np.asarray(batch.values[self.tap.ident])
        out = batch.values[self.output_tap.ident]
        n, K = len(a), self.task.num_classes
        s, S = spatial_shape(a.shape), spatial_shape(out.shape)
        self.labelled = batch.y is not None
        t = (np.asarray(batch.y) if self.labelled else self.task.predicted(out)).reshape(n, -1).astype(np.int64)
        cells = int(np.prod(s))
        cell = block_positions(np.arange(t.shape[1]), S, s)  # the block cell each output pixel reads
        idx = ((np.arange(n)[:, None] * cells + cell[None]) * K + t).ravel()
        cover = np.bincount(idx, minlength=n * cells * K).reshape(n * cells, K).astype(np.float64)
        mask = (a.reshape(n * cells, -1).astype(np.float64) > self.thresholds).astype(np.float64)
        self.intersection += mask.T @ cover
        self.mask_area += mask.T @ cover.sum(axis=1)
        self.class_area += cover.sum(axis=0)
        self.n += n


@dataclasses.dataclass(frozen=True)
class SegmentationAssociation:
    """Filter-class IoU of a segmentation model's block (see the module docstring).

    Attributes
    ----------
    block : str
    class_names : list of str
    iou : ndarray (C, K)
        ``intersection / union`` (NaN where the union is 0).
    intersection, union : ndarray (C, K)
        Pixel counts summed over the data (float64), at the model's output resolution.
    mask_area : ndarray (C,)
        Pixels in each filter's mask, summed over the data.
    class_area : ndarray (K,)
        Pixels of each class (labels, or the model's mask), summed over the data.
    thresholds : ndarray (C,)
        Each filter's activation threshold ``T_c``.
    quantile : float
        The top fraction of activations above the threshold.
    labelled : bool
        Whether the class masks are the labels (else the model's predicted mask).
    n : int
    """

    block: str
    class_names: list
    iou: np.ndarray
    intersection: np.ndarray
    union: np.ndarray
    mask_area: np.ndarray
    class_area: np.ndarray
    thresholds: np.ndarray
    quantile: float
    labelled: bool
    n: int

    def top_filters(self, cls, k: int = 5) -> np.ndarray:
        """Indices of the ``k`` filters with the highest IoU with class ``cls`` (index or name; NaN last)."""
        j = self.class_names.index(cls) if isinstance(cls, str) else int(cls)
        col = self.iou[:, j]
        return np.argsort(-np.where(np.isnan(col), -np.inf, col), kind="stable")[:k]

    def to_frame(self) -> pd.DataFrame:
        """One row per filter and class: ``filter``, ``class``, ``iou``, ``intersection``, ``union``,
        ``threshold``, ``rank`` (1 = the filter with the highest IoU for that class)."""
        C, K = self.iou.shape
        ranks = np.empty((C, K), np.int64)
        for j in range(K):
            ranks[self.top_filters(j, C), j] = np.arange(1, C + 1)
        return pd.DataFrame({
            "filter": np.repeat(np.arange(C), K),
            "class": np.tile(np.asarray(self.class_names, dtype=object), C),
            "iou": self.iou.ravel(),
            "intersection": self.intersection.ravel(),
            "union": self.union.ravel(),
            "threshold": np.repeat(self.thresholds, K),
            "rank": ranks.ravel(),
        })

    def plot(self, ax=None, **kwargs):
        from ..plotting.segmentation import plot_segmentation_association

        return plot_segmentation_association(self, ax=ax, **kwargs)

    def __repr__(self):
        best = ", ".join(f"{name}: filter {int(self.top_filters(j, 1)[0])} ({np.nanmax(self.iou[:, j]):.2f})"
                         for j, name in enumerate(self.class_names) if not np.all(np.isnan(self.iou[:, j])))
        return f"SegmentationAssociation(block={self.block!r}, best IoU per class: {best})"


def segmentation_association(graph, key, name, task, make_stream, *, quantile=QUANTILE, bins=BINS,
                             class_names=None, extra_reducers=()) -> SegmentationAssociation:
    """The :class:`SegmentationAssociation` of block ``key`` in two passes of ``make_stream()`` (fresh streams).

    ``extra_reducers`` are fed by the first pass too (the analyzer's input-drift check).
    """
    quantile = check_quantile(quantile)
    check_int(bins, "bins", min_value=16)
    tap = _pass.Tap(key, "raw")
    out_tap = _pass.Tap(graph.output_keys[0], "raw")
    hist = StreamingQuantile(tap, bins)
    info = _pass.run(graph, make_stream(), [hist, *extra_reducers])
    if info.n == 0:
        raise ValueError("`x` holds no samples.")
    thresholds = hist.thresholds(quantile)
    counts = DissectionCounts(tap, out_tap, task, thresholds)
    _pass.run(graph, make_stream(), [counts], task=task)
    union = counts.mask_area[:, None] + counts.class_area[None] - counts.intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, counts.intersection / np.where(union > 0, union, 1.0), np.nan)
    K = task.num_classes
    names = [str(c) for c in class_names] if class_names is not None else [str(k) for k in range(K)]
    return SegmentationAssociation(
        block=name, class_names=names, iou=iou, intersection=counts.intersection, union=union,
        mask_area=counts.mask_area, class_area=counts.class_area, thresholds=thresholds, quantile=quantile,
        labelled=bool(counts.labelled), n=int(counts.n),
    )

