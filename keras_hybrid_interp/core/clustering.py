"""Average-linkage clustering of filters on the distance ``1 - |r|``.

One implementation for :meth:`FilterCorrelation.clusters` (the groups it
returns) and for the filter-correlation heatmap (its display order and the
outlined clusters), so that the picture shows exactly the groups the result
reports.
"""

from __future__ import annotations

import numpy as np

__all__ = ["average_linkage", "flat_clusters", "leaf_order"]


def average_linkage(r: np.ndarray):
    """SciPy linkage matrix of average linkage on ``1 - |r|`` for a square matrix ``r``.

    NaN entries count as ``r = 0`` (no evidence of correlation); the distance
    is symmetrised and clipped at 0 so that rounding cannot make it negative.
    Needs at least 2 rows.
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    d = 1.0 - np.abs(np.nan_to_num(np.asarray(r, dtype=float), nan=0.0))
    d = np.clip((d + d.T) / 2, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return linkage(squareform(d, checks=False), method="average")


def leaf_order(z) -> np.ndarray:
    """Positions in dendrogram order (similar filters next to each other)."""
    from scipy.cluster.hierarchy import leaves_list

    return leaves_list(z)


def flat_clusters(z, threshold: float) -> np.ndarray:
    """Cluster label per position, the dendrogram cut at distance ``threshold``."""
    from scipy.cluster.hierarchy import fcluster

    return fcluster(z, t=float(threshold), criterion="distance")
