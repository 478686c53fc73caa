"""Keras layers of the local interpreter: linear probes (pooling lives in :mod:`..core.pooling`).

Both are written with ``keras.ops`` only, so they run on every backend, and
both are registered for ``.keras`` serialization (``safe_mode=True``).
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops

from ..core.graph import variable_numpy
from ..core.output import OutputReader

__all__ = ["LinearProbe", "OutputProbabilities", "input_transform"]

_PACKAGE = "keras_hybrid_interp"

#: Relative spread (std / |mean|) below which a feature is float32 rounding noise: about 8 ulp.
FLOAT32_NOISE = 1e-6


def input_transform(features, rtol: float = 1e-9):
    """``(mean, scale)`` in float64 such that the probe reads ``(f - mean) * scale``.

    Per-feature standardization (scikit-learn's ``StandardScaler``: population
    standard deviation). Features whose variance is below ``rtol`` times the
    largest, or whose standard deviation is below ``FLOAT32_NOISE`` times their
    mean's magnitude (float32 rounding), are constant in the data: they get
    scale 0 instead of a huge, noise-amplifying one. Statistics are accumulated chunk by chunk, never as
    a float64 copy of all N x D features.
    """
    f = np.asarray(features)
    n, dim = f.shape
    chunks = range(0, n, max(1, 2 ** 22 // max(dim, 1)))
    mean = np.zeros(dim)
    for start in chunks:
        mean += f[start:start + chunks.step].sum(axis=0, dtype=np.float64)
    mean /= max(n, 1)
    var = np.zeros(dim)
    for start in chunks:
        c = f[start:start + chunks.step].astype(np.float64) - mean
        var += np.einsum("ij,ij->j", c, c)
    var /= max(n, 1)
    keep = var > rtol * max(var.max(), 0.0) if var.max() > 0 else np.zeros_like(var, bool)
    # A feature whose spread is below float32 rounding of its values (a constant input pooled
    # on a device that sums in another order per sample) is constant, not a signal to amplify.
    keep &= np.sqrt(var) > FLOAT32_NOISE * np.abs(mean)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, var, 1.0)), 0.0)
    return mean, scale


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LinearProbe(keras.layers.Layer):
    """Standardize-then-linear softmax classifier on pooled features.

    ``probe(f) = softmax(((f - mean) * scale) @ kernel + bias)``: scikit-learn's
    ``StandardScaler`` followed by a multinomial ``LogisticRegression``.
    ``mean`` and ``scale`` are fixed from the training features
    (:func:`input_transform`); ``kernel`` and ``bias`` are fitted by the one
    probe trainer (:mod:`keras_hybrid_interp.core.trainer`) to the optimum of the
    L2-regularised cross-entropy. For a binary probe (``units=2``) the first
    column of ``kernel`` and of ``bias`` stays 0, so that
    ``p(class 1) = sigmoid(z @ kernel[:, 1] + bias[1])``: exactly a binary
    logistic regression.

    ``activation`` is how the probe's outputs are read, after its task:
    ``"softmax"`` (classes, above), ``"sigmoid"`` (independent labels: one
    binary logistic regression per column) or ``"linear"`` (ridge regression
    values).
    """

    ACTIVATIONS = ("softmax", "sigmoid", "linear")

    def __init__(self, units, activation="softmax", **kwargs):
        super().__init__(**kwargs)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {list(self.ACTIVATIONS)}; received {activation!r}.")
        self.units = int(units)
        self.activation = activation

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(shape=(dim,), initializer="ones", trainable=False, name="scale")
        self.kernel = self.add_weight(shape=(dim, self.units), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def logits(self, f):
        f = (ops.cast(f, self.compute_dtype) - self.mean) * self.scale
        return ops.matmul(f, self.kernel) + self.bias

    def call(self, f):
        if self.activation == "sigmoid":
            return ops.sigmoid(self.logits(f))
        if self.activation == "linear":
            return self.logits(f)
        return OutputReader("logits", self.units).probabilities(self.logits(f), xp=ops)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def set_state(self, mean, scale, kernel, bias):
        """Assigns a fitted probe (float64 arrays are cast to the layer's dtype)."""
        for var, value in ((self.mean, mean), (self.scale, scale), (self.kernel, kernel), (self.bias, bias)):
            var.assign(np.asarray(value).astype(var.dtype))

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, scale, kernel, bias)`` as float64 arrays."""
        mean, scale, kernel, bias = (np.asarray(variable_numpy(v), np.float64)
                                     for v in (self.mean, self.scale, self.kernel, self.bias))
        return mean, scale, kernel, bias

    def effective_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) in float64 such that logits = f @ W + b on raw features."""
        mean, scale, kernel, bias = self.state()
        w = kernel * scale[:, None]
        return w, bias - mean @ w

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OutputProbabilities(keras.layers.Layer):
    """Turns a classifier's output into class probabilities, shape (batch, K).

    ``kind`` is ``"softmax"`` (already probabilities), ``"sigmoid"`` (a binary
    (batch, 1) output p becomes [1 - p, p]) or ``"logits"`` (softmax of K
    logits, or sigmoid of one binary logit). The arithmetic is the output
    reader's (:class:`~keras_hybrid_interp.core.output.OutputReader`).
    """

    def __init__(self, kind="softmax", **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def call(self, x):
        x = ops.cast(x, "float32")
        units = int(x.shape[-1]) if x.shape[-1] is not None else 1
        return OutputReader(self.kind, units).probabilities(x, xp=ops)

    def compute_output_shape(self, input_shape):
        units = input_shape[-1]
        return (input_shape[0], 2 if units == 1 else units)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}
