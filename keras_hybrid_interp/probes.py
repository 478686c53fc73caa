"""Keras layers of the local interpreter: feature pooling and linear probes.

Both are written with ``keras.ops`` only, so they run on every backend, and
both are registered for ``.keras`` serialization (``safe_mode=True``).
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops

__all__ = ["FeaturePooling", "LinearProbe", "OutputProbabilities", "adaptive_bins", "input_transform"]

_PACKAGE = "keras_hybrid_interp"

#: A probe whitens its input only with at least this many training samples per
#: feature; with fewer it standardizes each feature (see set_input_transform).
WHITEN_MIN_SAMPLES_PER_FEATURE = 10


def adaptive_bins(size: int, k: int) -> list[tuple[int, int]]:
    """Bins of adaptive pooling (as in PyTorch): [floor(i*n/k), ceil((i+1)*n/k))."""
    return [((i * size) // k, -((-(i + 1) * size) // k)) for i in range(k)]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeaturePooling(keras.layers.Layer):
    """Pools a (batch, H, W, C) feature map into a probe's input vector.

    Parameters
    ----------
    mode : {"avg", "max"} or int
        ``"avg"``: global average over H and W (C features). ``"max"``:
        global maximum (C features). An int ``k``: adaptive average pooling
        to a k x k grid, flattened in (row, column, channel) order
        (k * k * C features).
    """

    def __init__(self, mode="avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x):
        if self.mode == "avg":
            return ops.mean(x, axis=(1, 2))
        if self.mode == "max":
            return ops.max(x, axis=(1, 2))
        k = int(self.mode)
        h, w = x.shape[1], x.shape[2]
        cells = []
        for r0, r1 in adaptive_bins(h, k):
            for c0, c1 in adaptive_bins(w, k):
                cells.append(ops.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
        return ops.concatenate(cells, axis=-1)

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        if self.mode in ("avg", "max"):
            return (input_shape[0], c)
        return (input_shape[0], int(self.mode) ** 2 * c)

    def position_weights(self, h: int, w: int) -> np.ndarray:
        """Linear map from positions to pooled cells, shape (H*W, n_cells).

        Entry (p, j) is the weight of spatial position p in pooled cell j, so
        that for average-type pooling ``pooled[j*C + c] = sum_p W[p, j] * x[p, c]``.
        """
        if self.mode == "avg":
            return np.full((h * w, 1), 1.0 / (h * w))
        if self.mode == "max":
            raise ValueError("max pooling is not linear; it has no position weights.")
        k = int(self.mode)
        weights = np.zeros((h, w, k * k))
        for i, (r0, r1) in enumerate(adaptive_bins(h, k)):
            for j, (c0, c1) in enumerate(adaptive_bins(w, k)):
                weights[r0:r1, c0:c1, i * k + j] = 1.0 / ((r1 - r0) * (c1 - c0))
        return weights.reshape(h * w, k * k)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def input_transform(features, whiten: bool, rtol: float = 1e-9):
    """``(mean, T)`` in float64 for probe inputs ``(f - mean) @ T`` (whiten) or ``(f - mean) * T``.

    PCA whitening (``T`` is D x D) when ``whiten`` and there are at least
    ``WHITEN_MIN_SAMPLES_PER_FEATURE`` samples per feature, else a diagonal
    standardization (D x D diagonal when ``whiten``, a (D,) vector otherwise).
    Directions or features whose variance is below ``rtol`` times the largest
    get 0. Statistics are accumulated chunk by chunk, never as a float64 copy
    of all N x D features. See :meth:`LinearProbe.set_input_transform`.
    """
    f = np.asarray(features)
    n, dim = f.shape
    # Float64 statistics computed chunk by chunk: never a float64 copy of all N x D features.
    chunks = range(0, n, max(1, 2 ** 22 // max(dim, 1)))
    mean = np.zeros(dim)
    for start in chunks:
        mean += f[start:start + chunks.step].sum(axis=0, dtype=np.float64)
    mean /= max(n, 1)
    if whiten and n >= WHITEN_MIN_SAMPLES_PER_FEATURE * dim:
        cov = np.zeros((dim, dim))
        for start in chunks:
            c = f[start:start + chunks.step].astype(np.float64) - mean
            cov += c.T @ c
        cov /= max(n - 1, 1)
        lam, vec = np.linalg.eigh(cov)
        keep = lam > rtol * max(lam.max(), 0.0) if lam.max() > 0 else np.zeros_like(lam, bool)
        t = np.zeros_like(cov)
        t[:, keep] = vec[:, keep] / np.sqrt(lam[keep])
        return mean, t
    # Per-feature standardization; with whiten=True but too few samples to
    # estimate a D x D covariance (whitening would blow up noise directions
    # and the probe would overfit), as a diagonal matrix.
    var = np.zeros(dim)
    for start in chunks:
        c = f[start:start + chunks.step].astype(np.float64) - mean
        var += np.einsum("ij,ij->j", c, c)
    var /= max(n, 1)
    keep = var > rtol * max(var.max(), 0.0) if var.max() > 0 else np.zeros_like(var, bool)
    t = np.where(keep, 1.0 / np.sqrt(np.where(keep, var, 1.0)), 0.0)
    return mean, (np.diag(t) if whiten else t)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LinearProbe(keras.layers.Layer):
    """Whiten-then-linear softmax classifier on pooled features.

    ``probe(f) = softmax(((f - mean) @ T) @ kernel + bias)``. ``mean`` and the
    input transform ``T`` are fixed from the training features before the
    probe is fitted (:meth:`set_input_transform`); ``kernel`` and ``bias``
    are trained. ``T`` is a PCA whitening matrix when ``whiten=True``
    (features of a block are strongly correlated, and whitening makes the
    convex problem well conditioned, so a few epochs of Adam reach the
    optimum), or a diagonal 1 / standard deviation otherwise (for very wide
    inputs, where a D x D matrix would be too large). The kernel starts at
    zero, so fitting draws no random numbers for initialization.
    """

    def __init__(self, units, whiten=True, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.whiten = bool(whiten)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False, name="mean")
        shape = (dim, dim) if self.whiten else (dim,)
        init = "identity" if self.whiten else "ones"
        self.transform = self.add_weight(shape=shape, initializer=init, trainable=False, name="transform")
        self.kernel = self.add_weight(shape=(dim, self.units), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def logits(self, f):
        f = ops.cast(f, self.compute_dtype) - self.mean
        f = ops.matmul(f, self.transform) if self.whiten else f * self.transform
        return ops.matmul(f, self.kernel) + self.bias

    def call(self, f):
        return ops.softmax(self.logits(f), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def set_input_transform(self, features: np.ndarray, rtol: float = 1e-9):
        """Fixes ``mean`` and ``T`` from training features (N, D), in float64.

        Directions (or, without whitening, features) whose variance is below
        ``rtol`` times the largest are constant in the training data: they
        get weight 0 instead of a huge, noise-amplifying scale. With fewer
        than ``WHITEN_MIN_SAMPLES_PER_FEATURE`` samples per feature the
        covariance is too poorly estimated to whiten with, and the transform
        is a diagonal standardization instead.
        """
        mean, t = input_transform(features, self.whiten, rtol)
        self.mean.assign(mean.astype(self.mean.dtype))
        self.transform.assign(t.astype(self.transform.dtype))

    def reset(self):
        """Sets kernel and bias to zero (a fresh, untrained probe)."""
        self.kernel.assign(np.zeros(self.kernel.shape, dtype=self.kernel.dtype))
        self.bias.assign(np.zeros(self.bias.shape, dtype=self.bias.dtype))

    def effective_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) in float64 such that logits = f @ W + b on raw features."""
        mean = np.asarray(keras.ops.convert_to_numpy(self.mean), np.float64)
        t = np.asarray(keras.ops.convert_to_numpy(self.transform), np.float64)
        kernel = np.asarray(keras.ops.convert_to_numpy(self.kernel), np.float64)
        bias = np.asarray(keras.ops.convert_to_numpy(self.bias), np.float64)
        w = t @ kernel if self.whiten else kernel * t[:, None]
        return w, bias - mean @ w

    def get_config(self):
        return {**super().get_config(), "units": self.units, "whiten": self.whiten}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OutputProbabilities(keras.layers.Layer):
    """Turns a classifier's output into class probabilities, shape (batch, K).

    ``kind`` is ``"softmax"`` (already probabilities), ``"sigmoid"`` (a binary
    (batch, 1) output p becomes [1 - p, p]) or ``"logits"`` (softmax applied).
    """

    def __init__(self, kind="softmax", **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def call(self, x):
        x = ops.cast(x, "float32")
        if self.kind == "sigmoid":
            x = ops.reshape(x, (-1, 1))
            return ops.concatenate([1.0 - x, x], axis=-1)
        if self.kind == "logits":
            return ops.softmax(x, axis=-1)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 if self.kind == "sigmoid" else input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}
