"""Pooling a feature map of any rank into one vector per sample: the one definition.

:class:`FeaturePooling` is what the one pass computes for a tap (``"avg"``,
``"max"``, ``"min"``, adaptive ``k``) and what a probe reads, so the
features a probe was fitted on and the features it is evaluated on come from
the same layer. Written with ``keras.ops`` (every backend) and registered for
``.keras`` serialization (``safe_mode=True``) under its historical name
``keras_hybrid_interp>FeaturePooling``.
"""

from __future__ import annotations

import itertools

import numpy as np

import keras
from keras import ops

__all__ = ["FeaturePooling", "adaptive_bins"]

_PACKAGE = "keras_hybrid_interp"


def adaptive_bins(size: int, k: int) -> list[tuple[int, int]]:
    """Bins of adaptive pooling (as in PyTorch): [floor(i*n/k), ceil((i+1)*n/k))."""
    return [((i * size) // k, -((-(i + 1) * size) // k)) for i in range(k)]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeaturePooling(keras.layers.Layer):
    """Pools a feature map (batch, spatial axes..., C) into a probe's input vector.

    The feature map may be 1-D (batch, T, C), 2-D (batch, H, W, C) or 3-D
    (batch, D, H, W, C); pooling runs over all its spatial axes.

    Parameters
    ----------
    mode : {"avg", "max", "min"} or int
        ``"avg"``: global average over the spatial axes (C features).
        ``"max"`` / ``"min"``: global maximum / minimum (C features). An int
        ``k``: adaptive average pooling to a grid of k cells along each
        spatial axis (k for 1-D, k x k for 2-D, k x k x k for 3-D),
        flattened in (cell, channel) order with the cells in C order
        (first spatial axis slowest): ``k**d * C`` features.
    """

    def __init__(self, mode="avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x):
        axes = tuple(range(1, len(x.shape) - 1))
        if self.mode == "avg":
            return ops.mean(x, axis=axes)
        if self.mode == "max":
            return ops.max(x, axis=axes)
        if self.mode == "min":
            return ops.min(x, axis=axes)
        k = int(self.mode)
        cells = []
        for box in itertools.product(*(adaptive_bins(x.shape[a], k) for a in axes)):
            index = (slice(None),) + tuple(slice(lo, hi) for lo, hi in box) + (slice(None),)
            cells.append(ops.mean(x[index], axis=axes))
        return ops.concatenate(cells, axis=-1)

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        if self.mode in ("avg", "max", "min"):
            return (input_shape[0], c)
        return (input_shape[0], int(self.mode) ** (len(input_shape) - 2) * c)

    def position_weights(self, *spatial: int) -> np.ndarray:
        """Linear map from positions to pooled cells, shape (prod(spatial), n_cells).

        ``spatial`` is the map's spatial shape (``T``; ``H, W``; or ``D, H, W``).
        Entry (p, j) is the weight of spatial position p (C order) in pooled
        cell j, so that for average-type pooling
        ``pooled[j*C + c] = sum_p W[p, j] * x[p, c]``.
        """
        spatial = tuple(int(s) for s in spatial)
        size = int(np.prod(spatial))
        if self.mode == "avg":
            return np.full((size, 1), 1.0 / size)
        if self.mode in ("max", "min"):
            raise ValueError(f"{self.mode} pooling is not linear; it has no position weights.")
        k = int(self.mode)
        boxes = list(itertools.product(*(adaptive_bins(s, k) for s in spatial)))
        weights = np.zeros(spatial + (len(boxes),))
        for j, box in enumerate(boxes):
            index = tuple(slice(lo, hi) for lo, hi in box) + (j,)
            weights[index] = 1.0 / np.prod([hi - lo for lo, hi in box])
        return weights.reshape(size, len(boxes))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
