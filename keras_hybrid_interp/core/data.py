"""Streaming input handling shared by every analysis.

Accepts NumPy arrays, batched ``tf.data.Dataset`` objects yielding ``x``,
``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``, and ``keras.utils.PyDataset``.
Yields NumPy batches, checked as they stream: rank, spatial and channel
shape, finiteness, and label shape and range.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator

import numpy as np

import keras

from .validation import check_int

__all__ = ["DataStream", "as_stream", "model_stream", "to_class_indices", "x_rows", "x_take"]


def x_rows(x) -> int:
    """Number of samples of a batch ``x``: one array, or a list of arrays (one per model input)."""
    return len(x[0]) if isinstance(x, list) else len(x)


def x_take(x, index):
    """``x[index]`` for one array, or for each array of a list (one per model input)."""
    return [a[index] for a in x] if isinstance(x, list) else x[index]


class _FreshModelTracingFilter(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls ... triggered retracing" notice.

    TensorFlow counts the traces of every Keras model's predict function
    together (they share one code object), so an analysis that runs a few
    side models once each (block features, a tail model, ...) trips a warning
    meant for functions re-created in a loop. Each of our side models is
    built once per graph and traced once per input shape, so the notice is
    noise here. The filter is installed only while our own batches stream.
    """

    def filter(self, record):
        msg = record.getMessage()
        return not ("triggered tf.function retracing" in msg
                    and ("make_predict_function" in msg or "_DistributedPredictor" in msg))


@contextlib.contextmanager
def quiet_fresh_model_tracing():
    logger = logging.getLogger("tensorflow")
    filt = _FreshModelTracingFilter()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)


def _is_tf_dataset(obj) -> bool:
    mod = type(obj).__module__
    return mod.startswith("tensorflow") and hasattr(obj, "as_numpy_iterator")


def _to_numpy(a):
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return a
    return keras.ops.convert_to_numpy(a)


class DataStream:
    """Re-iterable stream of ``(x_batch, y_batch_or_None)`` NumPy batches.

    Parameters
    ----------
    x : array-like, tf.data.Dataset or keras.utils.PyDataset
    y : array-like, optional
        Labels, only with array ``x``.
    batch_size : int
        Batch size for array inputs (datasets keep their own batching).
    input_shape : tuple, optional
        Expected shape of one sample (without batch), ``None`` for free dims.
    max_samples : int, optional
        Stop after this many samples (the first ones, deterministically).
    steps : int, optional
        Stop after this many batches (as ``steps`` of ``Model.predict``).
    argname : str
        Name of the argument, for error messages.

    The data contract: a dataset of infinite cardinality (``tf.data`` with
    ``.repeat()``, or a ``PyDataset`` whose ``num_batches`` is None) needs
    ``steps`` or ``max_samples``; without either a ``ValueError`` is raised
    at once. A dataset of unknown length streams until it is exhausted.
    """

    def __init__(self, x, y=None, *, batch_size=32, input_shape=None, max_samples=None, steps=None,
                 argname="x", inputs=None):
        self.argname = argname
        #: Several model inputs: ``[(name, sample shape), ...]`` in the model's input order, else None.
        self.inputs = None if inputs is None or len(inputs) < 2 else [(str(n), tuple(s)) for n, s in inputs]
        #: How error messages name the labels: the `y` argument, or those a dataset yields.
        self.label_argname = "y" if y is not None else f"y (the labels yielded by {argname})"
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.batch_size = check_int(batch_size, "batch_size")
        self.max_samples = check_int(max_samples, "max_samples", allow_none=True)
        self.steps = check_int(steps, "steps", allow_none=True)

        multi_arrays = self.inputs is not None and not (_is_tf_dataset(x) or isinstance(x, keras.utils.PyDataset))
        if multi_arrays:
            self._init_multi_arrays(x, y)
        elif isinstance(x, (list, tuple)) and len(x) and not isinstance(x[0], (int, float)):
            try:
                x = np.asarray(x)
            except ValueError:
                shapes = [tuple(np.shape(a)) for a in x[:4]]
                raise TypeError(
                    f"`{argname}` must be a NumPy array, a batched tf.data.Dataset or a keras.utils.PyDataset; "
                    f"received a {type(x).__name__} of {len(x)} items of different shapes {shapes} that do not "
                    "stack into one array. Pass the images and the labels as separate arguments: f(x, y)."
                ) from None
        if multi_arrays:
            pass
        elif isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "dtype") and not _is_tf_dataset(x)):
            self.kind = "array"
            self._x = _to_numpy(x)
            if self._x.dtype == object:
                raise TypeError(f"`{argname}` must be a numeric array; received dtype object.")
            self._y = None if y is None else _to_numpy(np.asarray(y) if isinstance(y, (list, tuple)) else y)
            if self._y is not None and len(self._y) != len(self._x):
                raise ValueError(
                    f"`y` has {len(self._y)} labels but `{argname}` has {len(self._x)} samples; "
                    "they must have the same length."
                )
            self._check_x(self._x, batch_index=None)
        elif _is_tf_dataset(x):
            self.kind = "tf.data"
            self._x = x
            if y is not None:
                raise ValueError(
                    f"`y` must be None when `{argname}` is a tf.data.Dataset: the dataset yields "
                    "(x, y) pairs itself."
                )
            self._y = None
        elif isinstance(x, keras.utils.PyDataset):
            self.kind = "PyDataset"
            self._x = x
            if y is not None:
                raise ValueError(
                    f"`y` must be None when `{argname}` is a keras.utils.PyDataset: it yields "
                    "(x, y) pairs itself."
                )
            self._y = None
        else:
            raise TypeError(
                f"`{argname}` must be a NumPy array, a batched tf.data.Dataset or a "
                f"keras.utils.PyDataset; received {type(x).__module__}.{type(x).__name__}. "
                "Wrap a generator with tf.data.Dataset.from_generator(...).batch(n)."
            )

        if self.infinite and self.steps is None and self.max_samples is None:
            raise ValueError(
                f"`{argname}` is a {self.kind} of infinite cardinality (it repeats forever), so an analysis "
                "over it would never end. Pass `steps=` (number of batches) or `max_samples=` (number of "
                "samples), or leave out .repeat()."
            )

    # ------------------------------------------------------------------
    @property
    def infinite(self) -> bool:
        """Whether the data source repeats forever (tf.data ``.repeat()``, a PyDataset without a length)."""
        if self.kind == "tf.data":
            import tensorflow as tf

            return int(self._x.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
        if self.kind == "PyDataset":
            return self._pydataset_batches() is None
        return False

    def _pydataset_batches(self):
        try:
            n = self._x.num_batches
        except NotImplementedError:
            return None
        return None if n is None else int(n)

    @property
    def num_batches(self) -> int | None:
        """Number of batches the stream yields, if known without iterating (progress bars)."""
        n: int | None
        if self.kind == "array":
            samples = self.num_samples
            assert samples is not None  # an array's length is known
            n = math.ceil(samples / self.batch_size)
        elif self.kind == "tf.data":
            card = int(self._x.cardinality())
            n = card if card >= 0 else None
        else:
            n = self._pydataset_batches()
        if self.steps is not None:
            n = self.steps if n is None else min(n, self.steps)
        if n is not None and self.max_samples is not None and self.kind != "array":
            return None  # where max_samples cuts a dataset is known only while iterating
        return n

    @property
    def num_samples(self) -> int | None:
        """Number of samples if known without iterating, else None."""
        if self.kind == "array":
            n = x_rows(self._x)
        else:
            return None
        if self.steps is not None:
            n = min(n, self.steps * self.batch_size)
        return n if self.max_samples is None else min(n, self.max_samples)

    @property
    def has_labels(self) -> bool | None:
        """True/False for arrays; None (unknown until iterated) for datasets."""
        if self.kind == "array":
            return self._y is not None
        return None

    def _split(self, element):
        if isinstance(element, dict):
            raise TypeError(
                f"`{self.argname}` yields dicts; keras-hybrid-interp needs elements x or (x, y). "
                "Map the dataset to tuples first, e.g. ds.map(lambda d: (d['image'], d['label']))."
            )
        if isinstance(element, (tuple, list)):
            if len(element) == 0 or len(element) > 3:
                raise ValueError(
                    f"`{self.argname}` must yield x, (x,), (x, y) or (x, y, sample_weight); "
                    f"received a tuple of length {len(element)}."
                )
            xb = element[0]
            yb = element[1] if len(element) > 1 else None
            return _to_numpy(xb), _to_numpy(yb)
        return _to_numpy(element), None

    def _check_x(self, xb, batch_index, argname=None, input_shape=None):
        where = "" if batch_index is None else f" (batch {batch_index})"
        argname = self.argname if argname is None else argname
        input_shape = self.input_shape if input_shape is None else input_shape
        if not np.issubdtype(xb.dtype, np.number) and xb.dtype != bool:
            raise TypeError(f"`{argname}`{where} must hold numbers; received dtype {xb.dtype}.")
        if input_shape is not None:
            want = len(input_shape) + 1
            if xb.ndim != want:
                hint = ""
                shape = input_shape
                if (xb.ndim == want - 1 and shape[-1] == 1
                        and all(e is None or g == e for g, e in zip(xb.shape[1:], shape[:-1]))):
                    hint = " The data lacks the channel axis: use x[..., None]."
                elif xb.ndim == want - 1 and self.kind == "tf.data":
                    hint = " The dataset looks unbatched: call .batch(32) on it."
                elif xb.ndim == want - 1:
                    hint = " For a single input (one image, signal or volume), add the batch axis: x[None]."
                raise ValueError(
                    f"`{argname}`{where} must have shape (batch, {', '.join(str(d) for d in input_shape)}) "
                    f"(rank {want}) as the model input; received shape {tuple(xb.shape)} (rank {xb.ndim}).{hint}"
                )
            if any(exp is not None and got != exp for got, exp in zip(xb.shape[1:], input_shape)):
                extra = ""
                if xb.ndim in (3, 4, 5) and xb.shape[1] == input_shape[-1]:
                    perm = (0,) + tuple(range(2, xb.ndim)) + (1,)
                    extra = (" The data looks channels_first; keras-hybrid-interp expects "
                             f"channels_last: use np.transpose(x, {perm}).")
                raise ValueError(
                    f"`{argname}`{where} has sample shape {tuple(xb.shape[1:])}, but the model "
                    f"expects {input_shape} (None = any).{extra}"
                )
        if np.issubdtype(xb.dtype, np.floating) and not np.all(np.isfinite(xb)):
            bad = int(np.sum(~np.isfinite(xb)))
            raise ValueError(
                f"`{argname}`{where} contains {bad} NaN or infinite values; clean or impute them "
                "first (an analysis on them would be silently wrong)."
            )

    # ------------------------------------------------------------------
    # Several model inputs: x is a list or a dict of arrays, as model.predict takes it; the stream
    # yields a list of arrays in the model's input order (the order of ModelGraph.input_keys).
    def _init_multi_arrays(self, x, y):
        self.kind = "array"
        self._x = self._to_input_list(x, None)
        self._y = None if y is None else _to_numpy(np.asarray(y) if isinstance(y, (list, tuple)) else y)
        if self._y is not None and len(self._y) != x_rows(self._x):
            raise ValueError(
                f"`y` has {len(self._y)} labels but `{self.argname}` has {x_rows(self._x)} samples; "
                "they must have the same length."
            )

    def _to_input_list(self, x, batch_index):
        """``x`` (a list, tuple or dict of arrays) as a checked list of NumPy arrays in model input order."""
        assert self.inputs is not None  # called for a model with several inputs only
        where = "" if batch_index is None else f" (batch {batch_index})"
        names = [n for n, _ in self.inputs]
        k = len(names)
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(
                    f"`{self.argname}`{where} is a dict without the model input(s) {missing}: the model takes "
                    f"{k} inputs {names}; received the keys {list(x)}."
                )
            extra = [key for key in x if key not in names]
            if extra:
                raise ValueError(
                    f"`{self.argname}`{where} has the key(s) {extra}, which name no model input; the model "
                    f"takes {k} inputs {names}."
                )
            arrays, labels = [x[n] for n in names], [f"{self.argname}[{n!r}]" for n in names]
        elif isinstance(x, (list, tuple)):
            if len(x) != k:
                raise ValueError(
                    f"`{self.argname}`{where} must hold {k} arrays, one per model input {names} (or be a dict "
                    f"keyed by those names); received a {type(x).__name__} of {len(x)}."
                )
            arrays = list(x)
            labels = [f"{self.argname}[{i}] (input {n!r})" for i, n in enumerate(names)]
        else:
            got = (f"one array of shape {tuple(np.shape(x))}" if hasattr(x, "shape")
                   else f"{type(x).__module__}.{type(x).__name__}")
            raise TypeError(
                f"`{self.argname}`{where}: the model has {k} inputs {names}, so it must be a list of {k} "
                f"arrays in that order or a dict keyed by input name, as model.predict takes it; received {got}."
            )
        out = []
        for a, label, (_, shape) in zip(arrays, labels, self.inputs):
            if isinstance(a, (list, tuple)):
                a = np.asarray(a)
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise TypeError(f"`{label}`{where} must be an array; received {type(a).__name__}.")
            a = _to_numpy(a)
            if a.dtype == object:
                raise TypeError(f"`{label}`{where} must be a numeric array; received dtype object.")
            self._check_x(a, batch_index, argname=label, input_shape=shape)
            out.append(a)
        counts = [len(a) for a in out]
        if len(set(counts)) > 1:
            listing = ", ".join(f"`{label}` {n}" for label, n in zip(labels, counts))
            raise ValueError(
                f"`{self.argname}`{where}: every input must hold the same number of samples; received {listing}."
            )
        return out

    def _split_multi(self, element):
        """``(x structure, y)`` from a dataset element of a model with several inputs."""
        assert self.inputs is not None  # called for a model with several inputs only
        names = [n for n, _ in self.inputs]
        if isinstance(element, dict):
            return element, None
        if isinstance(element, (tuple, list)):
            if len(element) == 0 or len(element) > 3:
                raise ValueError(
                    f"`{self.argname}` must yield x, (x,), (x, y) or (x, y, sample_weight); "
                    f"received a tuple of length {len(element)}."
                )
            if not isinstance(element[0], (tuple, list, dict)):
                raise ValueError(
                    f"`{self.argname}`: the model has {len(names)} inputs {names}, so the dataset must yield "
                    "((x1, x2, ...), y) or ({name: x, ...}, y), as Keras' fit and predict take it; its elements' "
                    f"first item is one array of shape {tuple(np.shape(element[0]))}."
                )
            return element[0], _to_numpy(element[1]) if len(element) > 1 else None
        raise TypeError(
            f"`{self.argname}`: the model has {len(names)} inputs {names}, so the dataset must yield "
            f"((x1, x2, ...), y) or ({{name: x, ...}}, y); it yields {type(element).__name__}."
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        with quiet_fresh_model_tracing():
            yield from self._batches()

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        seen = 0
        limit = self.max_samples
        if self.kind == "array":
            n = x_rows(self._x)
            if n == 0:
                raise ValueError(f"`{self.argname}` is empty: received 0 samples.")
            stop = n if limit is None else min(n, limit)
            if self.steps is not None:
                stop = min(stop, self.steps * self.batch_size)
            for start in range(0, stop, self.batch_size):
                end = min(start + self.batch_size, stop)
                yield x_take(self._x, slice(start, end)), None if self._y is None else self._y[start:end]
            return
        if self.kind == "tf.data":
            iterator = self._x.as_numpy_iterator()
        else:
            nb = self._pydataset_batches()
            iterator = (self._x[i] for i in (range(nb) if nb is not None else itertools.count()))
        for b, element in enumerate(iterator):
            if self.steps is not None and b >= self.steps:
                break
            if self.inputs is not None:
                xpart, yb = self._split_multi(element)
                xb = self._to_input_list(xpart, b)
            else:
                xb, yb = self._split(element)
                self._check_x(xb, b)
            if yb is not None and len(yb) != x_rows(xb):
                raise ValueError(
                    f"`{self.argname}` batch {b} has {x_rows(xb)} inputs but {len(yb)} labels."
                )
            if limit is not None and seen + x_rows(xb) > limit:
                k = limit - seen
                xb, yb = x_take(xb, slice(None, k)), None if yb is None else yb[:k]
            if x_rows(xb):
                yield xb, yb
            seen += x_rows(xb)
            if limit is not None and seen >= limit:
                break
        if seen == 0:
            raise ValueError(f"`{self.argname}` is empty: the {self.kind} yielded no samples.")


def as_stream(x, y=None, **kwargs) -> DataStream:
    """Returns ``x`` as a :class:`DataStream` (a stream is returned unchanged)."""
    if isinstance(x, DataStream):
        return x
    return DataStream(x, y, **kwargs)


def model_stream(graph, x, y=None, *, batch_size=64, max_samples=None, steps=None, argname="x") -> DataStream:
    """A :class:`DataStream` over ``x`` checked against the input shape(s) of ``graph``'s model.

    For a model with several inputs, ``x`` is a list (model input order) or a dict (keyed by input
    name) of arrays, or a dataset yielding such ``x``; the stream yields lists in model input order.
    """
    shape = graph.tensors[graph.input_keys[0]].shape[1:]
    inputs = None
    if len(graph.input_keys) > 1:
        inputs = [(name, graph.tensors[k].shape[1:]) for name, k in zip(graph.input_names, graph.input_keys)]
    return as_stream(x, y, batch_size=batch_size, input_shape=shape, max_samples=max_samples, steps=steps,
                     argname=argname, inputs=inputs)


def to_class_indices(y, num_classes: int, argname: str = "y") -> np.ndarray:
    """Integer class indices from integer labels or one-hot / probability rows.

    Raises a ValueError naming the problem for out-of-range labels, one-hot
    rows of the wrong width, non-integer labels and NaN.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1 and num_classes > 1:
        y = y[:, 0]
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(
                f"`{argname}` is one-hot with {y.shape[1]} columns, but the model has "
                f"{num_classes} classes; expected shape (n, {num_classes}) or integer labels of shape (n,)."
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"`{argname}` contains NaN or infinite values.")
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(
            f"`{argname}` must be integer labels of shape (n,) or one-hot of shape (n, {num_classes}); "
            f"received shape {y.shape}."
        )
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)):
            raise ValueError(f"`{argname}` contains NaN or infinite values.")
        if not np.all(y == np.round(y)):
            raise ValueError(
                f"`{argname}` holds non-integer values (e.g. {y[y != np.round(y)][:3]}); class labels "
                "must be integers 0..K-1 or one-hot rows."
            )
    elif not np.issubdtype(y.dtype, np.integer) and y.dtype != bool:
        raise TypeError(f"`{argname}` must hold integer class labels; received dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        raise ValueError(
            f"`{argname}` has labels outside 0..{num_classes - 1} (the model has {num_classes} "
            f"classes): found {np.unique(bad)[:10].tolist()}."
        )
    return y
