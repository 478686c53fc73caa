"""Linear CKA between blocks (Kornblith et al., 2019), streamed; one model or two.

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

Two estimators (``estimator=`` of ``GlobalAnalyzer.layer_similarity``):

* ``"full"`` (:class:`CKAMoments`): the formula above on all samples, exact;
  memory ``(sum_l C_l)^2`` float64 (1.84 GB for ResNet50's 17 blocks).
* ``"minibatch"`` (:class:`MinibatchCKA`, the default): the minibatch
  estimator of Nguyen, Raghu and Kornblith (2021, "Do wide and deep networks
  learn the same things?", section 3.1)::

      CKA_mb(i, j) = mean_b HSIC_1(K_i^b, K_j^b)
                     / sqrt(mean_b HSIC_1(K_i^b, K_i^b) * mean_b HSIC_1(K_j^b, K_j^b))

  with ``K_l^b = X_l^b X_l^b^T`` the linear-kernel Gram matrix of block ``l``
  on minibatch ``b`` (``n x n``) and ``HSIC_1`` the unbiased estimator of
  Song et al. (2012, equation 5)::

      HSIC_1(K, L) = [tr(K~ L~) + 1^T K~ 1 * 1^T L~ 1 / ((n - 1)(n - 2))
                      - 2 / (n - 2) * 1^T K~ L~ 1] / (n (n - 3))

  (``K~``: ``K`` with its diagonal set to 0). Memory: one ``n x n`` Gram per
  block and ``L x L`` float64 sums, ``O(L n^2)``, whatever the channels.
  ``HSIC_1`` is unbiased at every ``n >= 4``, so the mean over minibatches
  is unbiased for the population HSIC and the ratio is consistent; unlike
  the full (biased-HSIC) estimator it is not pulled towards 1 when the
  channels outnumber the samples. It is invariant to shifting the features,
  so each minibatch is centred first (for float64 conditioning only).

  **Minibatches** are the batches of the stream (``batch_size``). Batches of
  fewer than 4 samples are gathered with the following ones until they hold
  at least 4; a remainder of fewer than 4 samples at the end joins the last
  minibatch. Every sample is used once. The mean over minibatches is
  weighted by minibatch size, which is the plain mean of Nguyen et al. when
  all minibatches have the same size (a short last batch of ``m >= 4``
  samples counts ``m / batch_size`` of a full one; every term is unbiased, so
  the weights change only the variance). The result depends on how the
  samples fall into minibatches, with a spread that shrinks as ``1 /
  sqrt(N)``; with one minibatch holding all the data it is the unbiased-HSIC
  CKA of all samples.

Two models: rows are blocks of one model, columns blocks of another, both
fed the same batches (the second model runs inside the reducer's update,
so the data is still read once, by the one pass).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from ..core import data_pass as _pass
from ..core import health as _health
from ..core.data_pass import Tap
from .correlation import StreamingMoments

__all__ = ["LayerSimilarity", "CKAMoments", "MinibatchCKA", "OtherModel", "ESTIMATORS", "MIN_MINIBATCH",
           "linear_cka", "unbiased_hsic_matrix", "similarity_reducer", "similarity_result"]

#: The CKA estimators of :func:`similarity_reducer` (see the module docstring).
ESTIMATORS = ("minibatch", "full")

#: Fewest samples in one minibatch of the minibatch estimator (``HSIC_1`` divides by ``n (n - 3)``).
MIN_MINIBATCH = 4


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
    """Linear CKA matrix between blocks (of one model, or rows of one and columns of another).

    Attributes
    ----------
    values : ndarray, shape (L, L) or (L, L_other)
        ``values[i, j]`` = linear CKA between the spatially averaged features of
        row block ``i`` and column block ``j``. One model: symmetric, 1 on the
        diagonal (NaN for a block whose features are all constant).
    blocks : tuple of str
        Row blocks (of the analysed model).
    n_samples : int
    representation : str
        ``"spatial mean per sample"``.
    columns : tuple of str, optional
        Column blocks when they are another model's (None: the same as ``blocks``).
    models : (str, str), optional
        Names of the row and column models (two models only).
    estimator : {"minibatch", "full"}
    n_minibatches : int, optional
        Minibatches averaged (minibatch estimator).
    """

    values: np.ndarray
    blocks: tuple
    n_samples: int
    representation: str = "spatial mean per sample"
    columns: tuple | None = None
    models: tuple | None = None
    estimator: str = "full"
    n_minibatches: int | None = None

    def __post_init__(self):
        self.values.setflags(write=False)

    @property
    def column_blocks(self) -> tuple:
        """Column block names: ``columns``, or ``blocks`` for one model."""
        return tuple(self.blocks) if self.columns is None else tuple(self.columns)

    @property
    def matrix(self) -> pd.DataFrame:
        idx = pd.Index(list(self.blocks), name="block")
        return pd.DataFrame(self.values.copy(), index=idx, columns=pd.Index(list(self.column_blocks), name="block_j"))

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per ordered block pair (``block_i``, ``block_j``, ``cka``).

        Two models add ``model_i`` and ``model_j`` (the row and column models' names).
        """
        b, c = list(self.blocks), list(self.column_blocks)
        i, j = np.meshgrid(np.arange(len(b)), np.arange(len(c)), indexing="ij")
        cols: dict[str, Any] = {}
        if self.models is not None:
            cols["model_i"] = [self.models[0]] * i.size
            cols["model_j"] = [self.models[1]] * i.size
        cols.update({
            "block_i": [b[k] for k in i.ravel()],
            "block_j": [c[k] for k in j.ravel()],
            "cka": self.values.ravel(),
        })
        return pd.DataFrame(cols)

    def plot(self, ax=None, **kwargs):
        """Draws this result with :func:`~keras_hybrid_interp.plotting.plot_layer_similarity`; returns the Axes.

        Keyword arguments go to the plot function.
        """
        from ..plotting import plot_layer_similarity

        return plot_layer_similarity(self, ax=ax, **kwargs)

    def __repr__(self):
        if self.columns is None:
            return (
                f"LayerSimilarity(blocks={len(self.blocks)}, n_samples={self.n_samples}, estimator={self.estimator!r})"
            )
        return (f"LayerSimilarity(models={self.models}, blocks={len(self.blocks)}x{len(self.columns)}, "
                f"n_samples={self.n_samples}, estimator={self.estimator!r})")


class OtherModel:
    """The blocks of a second model, computed on each batch of a pass over the first.

    A reducer of the pass over model A calls :meth:`features` with the batch's
    inputs, which runs model B's side model (one forward pass per batch, in
    inference mode) through :func:`core.data_pass.forward_taps`: the data is
    read once, by the one loop of ``data_pass.run``. Model B is not changed.
    """

    def __init__(self, graph, keys):
        self.graph = graph
        self.keys = list(keys)
        self.taps = tuple(Tap(k, "avg") for k in self.keys)
        self.sizes = [int(graph.tensors[k].shape[-1]) for k in self.keys]

    def features(self, x) -> list:
        values = _pass.forward_taps(self.graph, self.taps, x)
        return [values[t.ident] for t in self.taps]


class _Features:
    """Per-batch spatially averaged features of the row blocks, then of the other model's blocks."""

    def _init_features(self, graph, keys, other):
        self.keys = list(keys)
        self.taps = tuple(Tap(k, "avg") for k in self.keys)
        self.other = other
        self.sizes = [int(graph.tensors[k].shape[-1]) for k in self.keys] + ([] if other is None else other.sizes)

    def features(self, batch) -> list:
        feats = [batch.values[t.ident] for t in self.taps]
        if self.other is not None:
            feats += self.other.features(batch.x)
        return feats

    @property
    def rows(self):
        return list(range(len(self.keys)))

    @property
    def cols(self):
        return self.rows if self.other is None else list(range(len(self.keys), len(self.sizes)))


class CKAMoments(_Features):
    """Reducer of the full estimator: co-moments of the spatially averaged features of ``keys``
    (and of ``other``'s blocks); memory ``(sum_l C_l)^2`` float64."""

    estimator = "full"

    def __init__(self, graph, keys, other: OtherModel | None = None):
        self._init_features(graph, keys, other)
        self.acc = StreamingMoments(int(sum(self.sizes)))

    def update(self, batch):
        self.acc.update(np.concatenate(self.features(batch), axis=1))


def unbiased_hsic_matrix(grams) -> np.ndarray:
    """``HSIC_1(G_a, G_b)`` (Song et al. 2012) for every pair of ``n x n`` Gram matrices (float64).

    Parameters
    ----------
    grams : ndarray, shape (M, n, n)
        Symmetric Gram matrices of ``n >= 4`` samples.

    Returns
    -------
    ndarray, shape (M, M)
    """
    g = np.array(grams, dtype=np.float64)
    m, n, _ = g.shape
    if n < MIN_MINIBATCH:
        raise ValueError(f"The unbiased HSIC needs at least {MIN_MINIBATCH} samples; received {n}.")
    idx = np.arange(n)
    g[:, idx, idx] = 0.0
    flat = g.reshape(m, n * n)
    total = flat.sum(axis=1)  # 1^T K~ 1
    rows = g.sum(axis=2)  # K~ 1
    h = flat @ flat.T + np.outer(total, total) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (rows @ rows.T)
    return h / (n * (n - 3))


class MinibatchCKA(_Features):
    """Reducer of the minibatch estimator (Nguyen et al. 2021): size-weighted sums of ``HSIC_1``
    between every pair of blocks, per minibatch (see the module docstring for the minibatch rule).

    Holds one minibatch of pooled features (``n x C_l`` per block) while the
    next one gathers, one ``n x n`` Gram matrix per block during an update,
    and ``M x M`` float64 sums (``M`` blocks, both models together); never a
    ``(sum C)^2`` array.
    """

    estimator = "minibatch"

    def __init__(self, graph, keys, other: OtherModel | None = None):
        self._init_features(graph, keys, other)
        m = len(self.sizes)
        self.hsic_sum = np.zeros((m, m), dtype=np.float64)
        self.weight = 0.0
        self.n = 0
        self.n_minibatches = 0
        self._gathering: list = []  # batches (lists of per-block features) not yet holding MIN_MINIBATCH samples
        self._ready = None  # the last complete minibatch, added once the next one is complete

    def update(self, batch):
        feats = self.features(batch)
        nb = len(feats[0]) if feats else 0
        if nb == 0:
            return
        self.n += nb
        self._gathering.append(feats)
        if sum(len(f[0]) for f in self._gathering) >= MIN_MINIBATCH:
            self._add(self._ready)
            self._ready, self._gathering = self._join(self._gathering), []

    def finish(self):
        """Adds what is still held (a remainder of fewer than 4 samples joins the last minibatch)."""
        if self._gathering:
            parts = ([self._ready] if self._ready is not None else []) + self._gathering
            self._ready, self._gathering = self._join(parts), []
        if self._ready is not None and len(self._ready[0]) >= MIN_MINIBATCH:
            self._add(self._ready)
            self._ready = None

    @staticmethod
    def _join(parts):
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[l] for p in parts], axis=0) for l in range(len(parts[0]))]

    def _add(self, feats):
        if feats is None:
            return
        n = len(feats[0])
        grams = np.empty((len(feats), n, n), dtype=np.float64)
        for l, f in enumerate(feats):
            f = np.asarray(f, dtype=np.float64)
            f = f - f.mean(axis=0)  # HSIC_1 is shift-invariant; centring only conditions the products
            np.matmul(f, f.T, out=grams[l])
        self.hsic_sum += n * unbiased_hsic_matrix(grams)
        self.weight += n
        self.n_minibatches += 1


def similarity_reducer(graph, keys, estimator="minibatch", other: OtherModel | None = None):
    """The reducer of ``estimator`` ("minibatch" or "full") for blocks ``keys`` of ``graph`` (and ``other``'s)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {list(ESTIMATORS)}; received {estimator!r}.")
    return (MinibatchCKA if estimator == "minibatch" else CKAMoments)(graph, keys, other)


def similarity_result(red, names, *, columns=None, models=None) -> LayerSimilarity:
    """The :class:`LayerSimilarity` of a reducer (:func:`similarity_reducer`) that has seen a pass.

    ``names``: the row blocks' names; ``columns``, ``models``: the other
    model's block names and the two models' names (two models only).
    """
    rows, cols = red.rows, red.cols
    if isinstance(red, MinibatchCKA):
        red.finish()
        if red.weight == 0:
            raise ValueError(f"`x` must hold at least {MIN_MINIBATCH} samples for the minibatch CKA estimator; "
                             f"received {red.n}.")
        h = red.hsic_sum / red.weight
        self_h = np.diag(h).copy()
        n = red.n
        extra: dict[str, Any] = {"estimator": "minibatch", "n_minibatches": red.n_minibatches}
    else:
        acc = red.acc
        if acc.n < 2:
            raise ValueError(f"`x` must hold at least 2 samples for CKA; received {acc.n}.")
        bounds = np.concatenate([[0], np.cumsum(red.sizes)]).astype(int)
        s = acc.comoment
        sl = [slice(bounds[i], bounds[i + 1]) for i in range(len(red.sizes))]
        self_h = np.array([np.linalg.norm(s[a, a]) for a in sl])
        n = acc.n
        extra = {"estimator": "full"}
    square = red.other is None
    out = np.full((len(rows), len(cols)), np.nan)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            if square and b < a:
                out[a, b] = out[b, a]
            elif self_h[i] > 0 and self_h[j] > 0:
                den = self_h[i] * self_h[j]
                if isinstance(red, MinibatchCKA):
                    out[a, b] = h[i, j] / np.sqrt(den)
                else:
                    blk = s[sl[i], sl[j]]
                    out[a, b] = np.sum(blk * blk) / den
    labels = list(names) + ([] if columns is None else list(columns))
    if models is not None:
        labels = [f"{models[0]}/{b}" for b in names] + [f"{models[1]}/{b}" for b in columns]
    const = [labels[i] for i in range(len(labels)) if self_h[i] == 0]
    if const:
        _health.warn("constant_blocks", f"Blocks {const} have constant spatially averaged features over the "
                       "analysed samples; their CKA is NaN.")
    negative = [labels[i] for i in range(len(labels)) if self_h[i] < 0 or np.isnan(self_h[i])]
    if negative:
        _health.warn("cka_undefined", f"Blocks {negative} have no positive unbiased HSIC estimate (too few samples "
                       "per minibatch, or features that barely vary); their CKA is NaN. Use a larger `batch_size`.")
    return LayerSimilarity(out, tuple(names), int(n), columns=None if columns is None else tuple(columns),
                           models=None if models is None else tuple(models), **extra)
