"""Streaming filter correlation.

Each filter (channel) of a feature-map layer output (1-D, 2-D or 3-D CNN) is summarised per sample by its
spatial mean (or max), giving an ``N x C`` matrix that is never materialised:
its mean vector and centred co-moment matrix are accumulated batch by batch in
float64 (Chan et al.'s pairwise update, numerically as stable as a two-pass
computation). Memory is ``O(C^2)``; no ``N x H x W x C`` tensor is held.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core import health as _health
from ..core.clustering import average_linkage, flat_clusters
from ..core.data_pass import ChannelRange, Tap
from ..core.validation import check_real

__all__ = ["FilterCorrelation", "FilterMoments", "StreamingMoments", "correlation_result", "filter_correlation_reducer"]

_STATISTICS = ("mean", "max")


class StreamingMoments:
    """Mean and centred co-moment matrix of row vectors, in float64, by batches.

    After feeding rows ``X`` (``n x d``) in any batching, ``mean`` equals
    ``X.mean(0)`` and ``comoment`` equals ``(X - mean).T @ (X - mean)``.
    """

    def __init__(self, d: int):
        self.n = 0
        self.mean = np.zeros(d, dtype=np.float64)
        self.comoment = np.zeros((d, d), dtype=np.float64)
        self.min = np.full(d, np.inf)
        self.max = np.full(d, -np.inf)

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        nb = rows.shape[0]
        if nb == 0:
            return
        mb = rows.mean(axis=0)
        centred = rows - mb
        cb = centred.T @ centred
        n = self.n
        tot = n + nb
        delta = mb - self.mean
        self.comoment += cb + np.outer(delta, delta) * (n * nb / tot)
        self.mean += delta * (nb / tot)
        self.n = tot
        np.minimum(self.min, rows.min(axis=0), out=self.min)
        np.maximum(self.max, rows.max(axis=0), out=self.max)

    @property
    def constant(self) -> np.ndarray:
        """Boolean mask of columns that never varied (exactly constant)."""
        return self.max == self.min

    def correlation(self) -> np.ndarray:
        """Pearson correlation; NaN rows/columns for constant columns."""
        dead = self.constant
        diag = np.diag(self.comoment).copy()
        diag[dead] = np.nan
        sd = np.sqrt(diag)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.comoment / np.outer(sd, sd)
        np.clip(r, -1.0, 1.0, out=r)
        live = ~dead
        idx = np.flatnonzero(live)
        r[idx, idx] = 1.0
        return r


#: The pass mode computing each per-sample spatial summary.
PASS_MODES = {"mean": "avg", "max": "max"}


def check_statistic(statistic) -> str:
    if not isinstance(statistic, str) or statistic not in _STATISTICS:
        raise ValueError(
            f"`statistic` must be one of {list(_STATISTICS)} (per-sample spatial summary of each "
            f"filter); received {statistic!r}."
        )
    return statistic


#: Up to this many dead filters are listed in the warning; more are counted, with where to find them.
DEAD_LISTED = 10


def _dead_listing(dead) -> str:
    if len(dead) <= DEAD_LISTED:
        return _health.listing(dead)
    return "(every index in the result's `dead_filters` and in the report's table 'Dead filters')"


def warn_dead(dead: np.ndarray, block: str) -> None:
    """The one dead-filter warning (see :class:`~keras_hybrid_interp.core.data_pass.ChannelRange`)."""
    if len(dead):
        _health.warn(
            "dead_filters",
            f"Block {block!r}: {len(dead)} dead filter(s) {_dead_listing(dead)} take one constant value at every "
            "position of every analysed sample. Their correlation and class association are undefined (NaN) "
            "and their permutation importance is exactly 0; ablation and Taylor importance measure replacing "
            "that constant by 0, which is not 0 when the constant is not. Check for dying ReLUs, or analyse "
            "more varied data.",
        )


class FilterMoments:
    """Reducer of :func:`filter_correlation`: streaming moments of the per-sample filter summaries."""

    def __init__(self, key: int, statistic: str, c: int):
        self.tap = Tap(key, PASS_MODES[statistic])
        self.range = ChannelRange(key)
        self.taps = (self.tap,) + self.range.taps
        self.moments = StreamingMoments(c)

    def update(self, batch):
        self.moments.update(batch.values[self.tap.ident])
        self.range.update(batch)


@dataclasses.dataclass(frozen=True, eq=False)
class FilterCorrelation:
    """Pearson correlation between the filters of one block.

    Attributes
    ----------
    values : ndarray, shape (C, C)
        Pearson correlation of the per-sample filter summaries (float64).
        Rows and columns of dead filters are NaN; the diagonal of live filters is 1.
    dead_filters : ndarray of int, shape (n_dead,)
        Filters whose summary was exactly constant over the analysed samples.
    block : str
        Name of the analysed layer.
    statistic : {"mean", "max"}
        Spatial summary used per sample and filter.
    n_samples : int
        Number of samples streamed.
    mean : ndarray, shape (C,)
        Mean of each filter's per-sample summary.
    """

    values: np.ndarray
    dead_filters: np.ndarray
    block: str
    statistic: str
    n_samples: int
    mean: np.ndarray

    def __post_init__(self):
        for a in (self.values, self.dead_filters, self.mean):
            a.setflags(write=False)

    @property
    def n_filters(self) -> int:
        return self.values.shape[0]

    @property
    def matrix(self) -> pd.DataFrame:
        """The ``C x C`` correlation as a DataFrame labelled by filter index."""
        idx = pd.RangeIndex(self.n_filters, name="filter")
        return pd.DataFrame(self.values.copy(), index=idx, columns=pd.RangeIndex(self.n_filters, name="filter_j"))

    @property
    def redundancy(self) -> float:
        """Mean ``|r|`` over the off-diagonal pairs of live filters (NaN if fewer than 2)."""
        live = np.setdiff1d(np.arange(self.n_filters), self.dead_filters)
        if len(live) < 2:
            return float("nan")
        sub = np.abs(self.values[np.ix_(live, live)])
        off = sub[~np.eye(len(live), dtype=bool)]
        return float(off.mean())

    def clusters(self, threshold: float = 0.5) -> list[np.ndarray]:
        """Groups of mutually correlated filters.

        Average-linkage hierarchical clustering of the live filters on the
        distance ``1 - |r|``, cut at ``threshold`` (filters whose average
        ``|r|`` with a cluster is at least ``1 - threshold`` join it). Dead
        filters are not clustered (see ``dead_filters``).

        Parameters
        ----------
        threshold : float in [0, 1]

        Returns
        -------
        list of ndarray of int
            Filter indices per cluster, largest cluster first (ties by first
            filter). Usable as ``groups=`` of ``filter_importance``.
        """
        check_real(threshold, "threshold", low=0, high=1, what=" (a distance 1 - |r|)")
        live = np.setdiff1d(np.arange(self.n_filters), self.dead_filters)
        if len(live) == 0:
            return []
        if len(live) == 1:
            return [live.copy()]
        labels = flat_clusters(average_linkage(self.values[np.ix_(live, live)]), threshold)
        groups = [live[labels == lab] for lab in np.unique(labels)]
        groups.sort(key=lambda g: (-len(g), g[0]))
        return groups

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per ordered filter pair (``filter_i``, ``filter_j``, ``r``)."""
        c = self.n_filters
        i, j = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
        return pd.DataFrame({
            "block": self.block,
            "filter_i": i.ravel(),
            "filter_j": j.ravel(),
            "r": self.values.ravel(),
        })

    def plot(self, ax=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_filter_correlation`; returns the Axes.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_filter_correlation

        return plot_filter_correlation(self, ax=ax, **kwargs)

    def __repr__(self):
        return (
            f"FilterCorrelation(block={self.block!r}, filters={self.n_filters}, statistic={self.statistic!r}, "
            f"n_samples={self.n_samples}, dead={len(self.dead_filters)}, redundancy={self.redundancy:.3f})"
        )


def filter_correlation_reducer(graph, key, statistic="mean") -> FilterMoments:
    statistic = check_statistic(statistic)
    return FilterMoments(key, statistic, int(graph.tensors[key].shape[-1]))


def correlation_result(acc: FilterMoments, block: str, statistic: str) -> FilterCorrelation:
    """The :class:`FilterCorrelation` of a reducer that has seen a pass."""
    m = acc.moments
    if m.n < 2:
        raise ValueError(f"`x` must hold at least 2 samples to correlate filters; received {m.n}.")
    dead = acc.range.dead
    warn_dead(dead, block)
    c = m.mean.shape[0]
    if m.n <= c:
        _health.warn(
            "few_samples",
            f"Block {block!r}: the correlation of its {c} filters rests on only {m.n} samples, so the matrix is "
            "rank-deficient and many correlations are spuriously strong. Use more samples than filters.",
        )
    return FilterCorrelation(m.correlation(), dead, block, statistic, m.n, m.mean.copy())
