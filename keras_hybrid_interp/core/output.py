"""The one reader of a classifier's output: probabilities, log-probabilities, loss, class.

Every part of the package that reads what the model outputs goes through
:class:`OutputReader`: probe targets, the layer table, association labels,
importance scores, the Taylor loss, the callback and the report. It knows
four kinds of output:

``"softmax"``
    (batch, K) probabilities, K >= 2 (a softmax activation or layer).
``"sigmoid"``
    (batch, 1) probability of class 1 of a binary classifier; class
    probabilities are ``[1 - p, p]``.
``"logits"``
    Unnormalised scores: (batch, K) multi-class logits (probabilities are
    their softmax) or (batch, 1) binary logits (probability of class 1 is
    their sigmoid).

Log-probabilities are computed once, here: ``log_softmax`` for logits,
``log_sigmoid`` for a binary logit, and ``log(clip(p, EPS, 1))`` for outputs
that already are probabilities. There is one epsilon, :data:`EPS`.

The same code runs on NumPy arrays (float64 statistics) and, through
``xp=keras.ops``, on backend tensors (the Taylor loss under autodiff): the
functions take the array namespace as an argument, so the formulas exist
once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EPS", "KINDS", "OutputReader", "check_kind", "output_activation", "reader_for"]

#: Probabilities are clipped to [EPS, 1] before a log (as Keras' losses do).
EPS = 1e-7

KINDS = ("softmax", "sigmoid", "logits")


def check_kind(declared, activation, units, model_name="model", argname="output"):
    """The output kind, from the declaration (``"auto"`` or a kind) and the final activation.

    Parameters
    ----------
    declared : {"auto", "softmax", "sigmoid", "logits"}
    activation : {"softmax", "sigmoid", "linear"} or None
        What the graph says the last operation applies (None: unknown, e.g.
        a custom layer).
    units : int or None
        Size of the output's last axis.

    Raises ``ValueError`` when the declaration contradicts the activation
    (a linear unit declared ``"sigmoid"`` would give "probabilities" outside
    [0, 1]), or when it does not fit the number of units.
    """
    if declared not in ("auto",) + KINDS:
        raise ValueError(f"`{argname}` must be 'auto', 'softmax', 'sigmoid' or 'logits'; received {declared!r}.")
    if declared == "auto":
        if activation in ("softmax", "sigmoid"):
            kind = activation
        else:
            raise ValueError(
                f"Model {model_name!r} does not end in a softmax or sigmoid, so it does not look like a "
                "classifier (keras-hybrid-interp supports classification models: softmax multi-class, "
                "sigmoid binary, or class logits). If it outputs class logits (one unit for a binary "
                f"model), pass {argname}='logits'; regression models are not supported."
            )
    else:
        kind = declared
        if activation is not None:
            if kind == "logits" and activation in ("softmax", "sigmoid"):
                raise ValueError(
                    f"`{argname}`='logits' was declared, but model {model_name!r} ends in a {activation}: "
                    f"its output already is a probability. Pass {argname}='auto' (or {activation!r})."
                )
            if kind in ("softmax", "sigmoid") and activation != kind:
                what = "no activation (linear units)" if activation == "linear" else f"a {activation}"
                raise ValueError(
                    f"`{argname}`={kind!r} was declared, but model {model_name!r} ends in {what}, so its "
                    f"output is not a {kind} probability (values outside [0, 1] would be read as "
                    f"probabilities). If the output holds class logits, pass {argname}='logits'; if the "
                    "activation is applied elsewhere, end the model with it."
                )
    if units is not None:
        if kind == "sigmoid" and units != 1:
            raise ValueError(
                f"A sigmoid output must have one unit (binary classification); model {model_name!r} outputs "
                f"{units} units (multi-label outputs are not supported)."
            )
        if kind == "softmax" and units < 2:
            raise ValueError(
                f"A softmax classifier needs at least 2 classes; model {model_name!r} outputs {units} unit. "
                f"For a binary model with one unit pass {argname}='sigmoid' or 'logits'."
            )
    return kind


class OutputReader:
    """Reads a classifier's output of a given kind.

    Parameters
    ----------
    kind : {"softmax", "sigmoid", "logits"}
    units : int
        Size of the output's last axis (1 for a binary sigmoid or logit).

    Attributes
    ----------
    num_classes : int
        K (2 for a one-unit output).
    binary : bool
        Whether the output has one unit.
    """

    def __init__(self, kind: str, units: int):
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {list(KINDS)}; received {kind!r}.")
        self.kind = kind
        self.units = int(units)
        self.binary = self.units == 1
        self.num_classes = 2 if self.binary else self.units

    def __repr__(self):
        return f"OutputReader(kind={self.kind!r}, units={self.units})"

    # ------------------------------------------------------------------
    def log_probabilities(self, out, xp=np):
        """(n, K) log class-probabilities of raw outputs ``out`` (n, units).

        ``xp`` is the array namespace: ``numpy`` (the default; float64) or
        ``keras.ops`` (backend tensors, differentiable).
        """
        if xp is np:
            out = np.asarray(out, dtype=np.float64)
        out = xp.reshape(out, (-1, self.units))
        if self.binary:
            if self.kind == "logits":
                # log sigmoid(z) = -softplus(-z); log(1 - sigmoid(z)) = -softplus(z), stable form.
                z = out
                log_p1 = -(xp.maximum(-z, 0.0) + xp.log1p(xp.exp(-xp.abs(z))))
                log_p0 = -(xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z))))
            else:
                p = xp.clip(out, EPS, 1.0 - EPS)
                log_p1, log_p0 = xp.log(p), xp.log(1.0 - p)
            return xp.concatenate([log_p0, log_p1], axis=1)
        if self.kind == "logits":
            m = xp.max(out, axis=1, keepdims=True)
            z = out - m
            return z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))
        return xp.log(xp.clip(out, EPS, 1.0))

    def probabilities(self, out, xp=np):
        """(n, K) class probabilities (``[1 - p, p]`` for one unit)."""
        if xp is np:
            out = np.asarray(out, dtype=np.float64)
        out = xp.reshape(out, (-1, self.units))
        if self.kind == "logits":
            return xp.exp(self.log_probabilities(out, xp))
        if self.binary:
            return xp.concatenate([1.0 - out, out], axis=1)
        return out

    def predicted(self, out) -> np.ndarray:
        """(n,) predicted class (argmax of the probabilities; ties to the lower class)."""
        return np.argmax(self.probabilities(out), axis=1).astype(np.int64)

    def cross_entropy(self, out, targets, xp=np):
        """(n,) per-sample cross-entropy of outputs ``out`` against ``targets``.

        ``targets`` are integer classes (n,) or a distribution (n, K) (soft
        targets, e.g. the model's own probabilities).
        """
        if xp is np and self.kind == "softmax" and not self.binary and np.ndim(targets) == 1:
            # Each sample's target probability alone is read, cast and logged: the same numbers as
            # taking the log of every class first (element-wise), without (n, K) float64 copies.
            out = np.asarray(out).reshape(-1, self.units)
            p = out[np.arange(len(out)), np.asarray(targets).astype(np.int64)].astype(np.float64)
            return -np.log(np.clip(p, EPS, 1.0))
        logp = self.log_probabilities(out, xp)
        return cross_entropy_from_log_probabilities(logp, targets, xp)


def cross_entropy_from_log_probabilities(logp, targets, xp=np):
    """(n,) ``-log p[target]`` for integer targets, ``-sum_k t_k log p_k`` for (n, K) targets."""
    if xp is np:
        targets = np.asarray(targets)
        if targets.ndim == 1:
            return -logp[np.arange(len(targets)), targets.astype(np.int64)]
        return -np.sum(targets * logp, axis=1)
    if len(targets.shape) == 1:
        t = xp.expand_dims(xp.cast(targets, "int32"), 1)
        return -xp.take_along_axis(logp, t, axis=1)[:, 0]
    return -xp.sum(xp.cast(targets, logp.dtype) * logp, axis=1)


def output_activation(graph, key=None):
    """What the operation producing the graph's output (or tensor ``key``) applies last.

    ``"softmax"``, ``"sigmoid"``, ``"linear"`` (a layer with no activation,
    e.g. ``Dense(k)``), or None when it cannot be told (a custom layer).
    Reads only public Keras attributes (``layer.activation``, layer types).
    """
    import keras

    producer = graph.tensors[graph.output_keys[0] if key is None else key].producer
    if producer is None:
        return None
    op = graph.ops[producer].op
    if isinstance(op, keras.layers.Softmax):
        return "softmax"
    act = getattr(op, "activation", None)
    if act is not None:
        name = getattr(act, "__name__", str(act))
        if name in ("softmax", "sigmoid", "linear"):
            return name
        return None
    name = type(op).__name__.lower()
    if name in ("softmax", "sigmoid"):  # keras.ops.softmax / sigmoid as graph operations
        return name
    if isinstance(op, keras.layers.Dense) or isinstance(op, keras.layers.EinsumDense):
        return "linear"
    return None


def reader_for(graph, output="auto", model_name="model", argname="output") -> OutputReader:
    """The :class:`OutputReader` of a single-output classifier graph (kind checked against the graph)."""
    shape = graph.tensors[graph.output_keys[0]].shape
    if len(shape) != 2:
        raise ValueError(
            f"keras-hybrid-interp needs a classifier with output shape (batch, classes); model "
            f"{model_name!r} outputs shape {shape}."
        )
    units = shape[-1]
    kind = check_kind(output, output_activation(graph), units, model_name, argname)
    return OutputReader(kind, 1 if units is None else int(units))
