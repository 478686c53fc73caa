"""Provenance of a report: versions, platform, fingerprints of the model and of the data, arguments, seed, time.

A reviewer can tell from it which model and which data a report describes,
and re-run it. Fingerprints are SHA-256 digests (``docs/definitions/report.md``,
*Provenance*):

- **model**: over its architecture (``model.get_config()`` as canonical JSON:
  sorted keys, no spaces) and over its weights (every array of
  ``model.weights``, in that order: its dtype and shape, then its bytes in C
  order, little-endian). The same saved model gives the same digest on every
  run and backend; a changed weight changes it.
- **data**: over the analysed samples in stream order (per input: its dtype
  and per-sample shape, then every sample's bytes, little-endian) and over
  their labels as the analysis read them (class indices, label matrices or
  targets). It is computed in the report's one pass by :class:`DataFingerprint`,
  a reducer that holds one hash state per input, whatever the number of
  samples, and is independent of the batch size.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from typing import Any

import numpy as np

__all__ = ["DataFingerprint", "model_fingerprint", "environment", "describe_argument", "array_header",
           "build_provenance"]


def array_header(dtype, sample_shape) -> bytes:
    """The bytes that open an array's digest: its little-endian dtype and the shape of one sample (or weight)."""
    return f"{np.dtype(dtype).newbyteorder('<').str} {tuple(int(d) for d in sample_shape)}\n".encode()


def _le_bytes(a: np.ndarray) -> bytes:
    """``a``'s values in C order, little-endian (the same bytes on every machine)."""
    a = np.asarray(a)
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()


def model_fingerprint(model) -> dict:
    """``{"architecture_sha256", "weights_sha256", "model_sha256", "parameters"}`` of a Keras model (read only)."""
    from ..core.graph import variable_numpy

    config = json.dumps(model.get_config(), sort_keys=True, separators=(",", ":"), default=str)
    arch = hashlib.sha256(config.encode("utf-8")).hexdigest()
    weights = hashlib.sha256()
    for w in model.weights:
        value = variable_numpy(w)
        weights.update(array_header(value.dtype, value.shape))
        weights.update(_le_bytes(value))
    w_hex = weights.hexdigest()
    return {"model_sha256": hashlib.sha256(f"{arch}\n{w_hex}".encode()).hexdigest(), "architecture_sha256": arch,
            "weights_sha256": w_hex, "parameters": int(model.count_params())}


class DataFingerprint:
    """Reducer of the one pass: SHA-256 of the analysed samples (per input) and of their labels, in stream order.

    Needs no tap (it reads the batch's inputs and labels); memory is one hash
    state per input. A batch whose dtype or sample shape differs from the
    first batch's adds its own header (so such a change changes the digest).
    """

    taps: tuple = ()

    def __init__(self):
        self.inputs: list | None = None
        self.labels: Any = None
        self._headers: list = []
        self._label_header: bytes | None = None
        self.n = 0

    def update(self, batch):
        if batch.x is None:  # a pass fed cached values has no inputs to hash
            return
        xs = batch.x if isinstance(batch.x, list) else [batch.x]
        if self.inputs is None:
            self.inputs = [hashlib.sha256() for _ in xs]
            self._headers = [b""] * len(xs)
        for i, a in enumerate(xs):
            a = np.asarray(a)
            head = array_header(a.dtype, a.shape[1:])
            if head != self._headers[i]:
                self.inputs[i].update(head)
                self._headers[i] = head
            self.inputs[i].update(_le_bytes(a))
        self.n += len(np.asarray(xs[0]))
        if batch.y is not None:
            y = np.asarray(batch.y)
            if self.labels is None:
                self.labels = hashlib.sha256()
            head = array_header(y.dtype, y.shape[1:])
            if head != self._label_header:
                self.labels.update(head)
                self._label_header = head
            self.labels.update(_le_bytes(y))

    def result(self) -> dict:
        """``{"data_sha256", "inputs_sha256": [...], "labels_sha256" or None, "samples"}``."""
        inputs = [h.hexdigest() for h in (self.inputs or [])]
        labels = None if self.labels is None else self.labels.hexdigest()
        data = hashlib.sha256("\n".join(inputs + [labels or "no labels"]).encode()).hexdigest()
        return {"data_sha256": data, "inputs_sha256": inputs, "labels_sha256": labels, "samples": int(self.n)}


def environment() -> dict:
    """The versions of the package, Keras, the backend and NumPy, Python's, and the platform."""
    import keras

    from .. import __version__

    backend = keras.config.backend()
    # Keras has imported its backend's module; its __version__ is the distribution's (the package reads no
    # metadata through importlib: tests/test_security.py).
    module = sys.modules.get({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend))
    backend_version = str(getattr(module, "__version__", "unknown"))
    return {"keras_hybrid_interp": __version__, "keras": keras.__version__, "backend": backend,
            "backend_version": backend_version, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "implementation": sys.implementation.name}


def describe_argument(value) -> Any:
    """An argument of ``build_report`` as JSON: itself when it is plain data, else what it is (a model by name)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    if isinstance(value, dict):  # concepts={name: examples}, concept_options={...}: each entry described
        return {str(k): describe_argument(v) for k, v in value.items()}
    name = getattr(value, "name", None)
    shape = getattr(value, "shape", None)
    what = type(value).__name__
    if name is not None and hasattr(value, "count_params"):
        return f"{what} {name!r}"
    if shape is not None:
        dtype = getattr(value, "dtype", None)
        return f"{what} {dtype} of shape {tuple(shape)}" if dtype is not None else f"{what} of shape {tuple(shape)}"
    return what


def build_provenance(ctx, x, y, started: float, started_utc: str) -> dict:
    """The provenance record of a report (JSON): environment, fingerprints, arguments, seed and wall time.

    ``random_state`` is the argument as given, ``seed`` the integer every
    analysis of the report used (``ctx.seed``, drawn once when ``random_state``
    is None): ``build_report(..., random_state=seed)`` re-runs the report.
    ``started`` is the ``time.perf_counter()`` of the call, ``started_utc`` its date.
    """
    import dataclasses
    import time

    import keras

    interp, opts = ctx.interp, ctx.options
    arguments = {f.name: describe_argument(getattr(opts, f.name)) for f in dataclasses.fields(opts)}
    arguments["x"], arguments["y"] = describe_argument(x), describe_argument(y)
    out = {
        "environment": environment(),
        "model": {"name": interp.wrapped_model.name, **model_fingerprint(interp.wrapped_model)},
        "data": ctx.fingerprint.result(),
        "samples": int(ctx.info.n),
        "arguments": arguments,
        "random_state": describe_argument(opts.random_state),
        "seed": int(ctx.seed),
        "interpreter": {"task": ctx.task.name, "blocks": list(interp.block_names),
                        "classes": [str(c) for c in interp.class_names], "pooling": describe_argument(interp.pooling),
                        "block analysed globally": ctx.block},
        "started": started_utc,
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    other = opts.compare
    for attr in ("wrapped_model", "model"):  # a HybridInterpreter, a GlobalAnalyzer: their model
        if isinstance(getattr(other, attr, None), keras.Model):
            other = getattr(other, attr)
            break
    if isinstance(other, keras.Model):
        out["compare_model"] = {"name": other.name, **model_fingerprint(other)}
    return out
