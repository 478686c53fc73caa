"""Linear CKA between blocks (Kornblith et al., 2019), streamed.

Representation: each block is represented by its **per-sample spatially
averaged features** ``X_l`` (``N x C_l``: the spatial mean of every channel).
Linear CKA between blocks ``i`` and ``j`` on the column-centred features is::

    CKA(X_i, X_j) = ||X_i^T X_j||_F^2 / (||X_i^T X_i||_F * ||X_j^T X_j||_F)

(equation 5 of Kornblith et al. 2019 in its feature-space form). The
centred cross-product matrices ``X_i^T X_j`` are accumulated batch by batch
in float64 with Chan's update, so no ``N x N`` Gram matrix and no activation
tensor is held. Memory: ``(sum_l C_l)^2`` float64 numbers.

CKA is invariant to orthogonal transforms and isotropic scaling of either
representation, and equals 1 on the diagonal. It is NaN when a block's
features are all constant.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core import health as _health
from ..core.data_pass import Tap
from .correlation import StreamingMoments

__all__ = ["LayerSimilarity", "CKAMoments", "linear_cka", "similarity_result"]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same samples (reference formula).

    Parameters
    ----------
    x : ndarray, shape (N, p)
    y : ndarray, shape (N, q)

    Returns
    -------
    float
        ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred
        ``Xc``, ``Yc``; NaN if either is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"`x` and `y` must be 2-D with the same number of rows; received {x.shape} and {y.shape}.")
    x = x - x.mean(0)
    y = y - y.mean(0)
    return _cka_from_blocks(x.T @ y, x.T @ x, y.T @ y)


def _cka_from_blocks(sxy, sxx, syy) -> float:
    den = np.linalg.norm(sxx) * np.linalg.norm(syy)
    if den == 0:
        return float("nan")
    return float(np.sum(sxy * sxy) / den)


@dataclasses.dataclass(frozen=True, eq=False)
class LayerSimilarity:
    """Linear CKA matrix between blocks.

    Attributes
    ----------
    values : ndarray, shape (L, L)
        ``values[i, j]`` = linear CKA between the spatially averaged features of
        blocks ``i`` and ``j``; symmetric, 1 on the diagonal (NaN for a block whose
        features are all constant).
    blocks : tuple of str
    n_samples : int
    representation : str
        ``"spatial mean per sample"``.
    """

    values: np.ndarray
    blocks: tuple
    n_samples: int
    representation: str = "spatial mean per sample"

    def __post_init__(self):
        self.values.setflags(write=False)

    @property
    def matrix(self) -> pd.DataFrame:
        idx = pd.Index(list(self.blocks), name="block")
        return pd.DataFrame(self.values.copy(), index=idx, columns=pd.Index(list(self.blocks), name="block_j"))

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per ordered block pair (``block_i``, ``block_j``, ``cka``)."""
        b = list(self.blocks)
        i, j = np.meshgrid(np.arange(len(b)), np.arange(len(b)), indexing="ij")
        return pd.DataFrame({
            "block_i": [b[k] for k in i.ravel()],
            "block_j": [b[k] for k in j.ravel()],
            "cka": self.values.ravel(),
        })

    def plot(self, ax=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_layer_similarity`; returns the Axes.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_layer_similarity

        return plot_layer_similarity(self, ax=ax, **kwargs)

    def __repr__(self):
        return f"LayerSimilarity(blocks={len(self.blocks)}, n_samples={self.n_samples})"


class CKAMoments:
    """Reducer of :func:`similarity_result`: co-moments of the spatially averaged features of ``keys``."""

    def __init__(self, graph, keys):
        self.keys = list(keys)
        self.taps = tuple(Tap(k, "avg") for k in self.keys)
        self.sizes = [int(graph.tensors[k].shape[-1]) for k in self.keys]
        self.acc = StreamingMoments(int(sum(self.sizes)))

    def update(self, batch):
        self.acc.update(np.concatenate([batch.values[t.ident] for t in self.taps], axis=1))


def similarity_result(red: CKAMoments, names) -> LayerSimilarity:
    """The :class:`LayerSimilarity` of a reducer that has seen a pass."""
    acc = red.acc
    if acc.n < 2:
        raise ValueError(f"`x` must hold at least 2 samples for CKA; received {acc.n}.")
    bounds = np.concatenate([[0], np.cumsum(red.sizes)]).astype(int)
    s = acc.comoment
    L = len(red.keys)
    sl = [slice(bounds[i], bounds[i + 1]) for i in range(L)]
    norms = [np.linalg.norm(s[a, a]) for a in sl]
    out = np.full((L, L), np.nan)
    for i in range(L):
        for j in range(i, L):
            den = norms[i] * norms[j]
            if den > 0:
                blk = s[sl[i], sl[j]]
                out[i, j] = out[j, i] = np.sum(blk * blk) / den
    const = [names[i] for i in range(L) if norms[i] == 0]
    if const:
        _health.warn("constant_blocks", f"Blocks {const} have constant spatially averaged features over the "
                       "analysed samples; their CKA is NaN.")
    return LayerSimilarity(out, tuple(names), acc.n)
