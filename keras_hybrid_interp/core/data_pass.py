"""The one pass over the data.

Every analysis of the package reads the model through :func:`run`: it takes
a model graph, a stream of batches (:class:`~keras_hybrid_interp.core.data.DataStream`)
and a list of *reducers*. Each reducer names the *taps* it needs: a tensor of
the graph (a block output, any layer, the model output) and what to compute
from it per sample on the device (``"raw"``: the tensor itself; ``"avg"``,
``"max"``, ``"min"``: its global spatial mean, maximum or minimum per
channel; an int ``k``: adaptive average pooling to a k x k grid). The pass
builds one side model with every tap as an output, runs it once per batch
(in inference mode, through ``tf.distribute`` replicas when a strategy is
active), and hands each batch to every reducer. So ``build_report()`` sends its
samples through the backbone once for the layer table, correlation,
association, similarity, explanations and the importance cache.

A tap may be *limited* to the first ``limit`` samples (the raw maps of a few
explained inputs): batches that hold none of those samples run a leaner
side model without it, and a batch that holds some of them runs the lean
model on all its samples and the limited taps on those samples only (its
values then have fewer rows), so a pass never holds a whole batch of raw
maps of every block.

Labels are converted to class indices here, once, and their consistency
(every batch labelled, or none) is checked here. Statistics are the
reducers' business; they accumulate in float64.

Side models are built once per graph and set of taps and re-used (their
compiled predict function reads the model's current weights at every call).
"""

from __future__ import annotations

import dataclasses

import numpy as np

import keras

from .data import to_class_indices, x_rows, x_take
from .distribute import predict_few, predict_on_batch
from .pooling import FeaturePooling

__all__ = ["Tap", "Batch", "PassResult", "run", "forward_taps", "InputMoments", "Collect"]


@dataclasses.dataclass(frozen=True)
class Tap:
    """One quantity computed per sample: ``mode`` of graph tensor ``key``.

    ``limit``: only the first ``limit`` samples of the stream are needed
    (None: all).
    """

    key: int
    mode: object = "raw"
    limit: int | None = None

    @property
    def ident(self):
        return (self.key, self.mode)


@dataclasses.dataclass
class Batch:
    """One batch as the reducers see it.

    ``values[(key, mode)]`` holds each tap's NumPy array (absent for a
    limited tap once its samples are past; holding only the batch's first
    samples that the tap's limit covers while they last). ``y`` holds class indices (or
    the raw labels when the pass was given no number of classes), or None.
    ``start`` is the index of the batch's first sample in the stream.
    ``x`` is one array, or for a model with several inputs a list of arrays
    in the model's input order (``graph.input_keys``); :func:`~.data.x_rows`
    counts its samples; None where a reducer is fed cached tap values
    without the inputs (the callback's probe scores).
    """

    x: np.ndarray | list | None
    y: np.ndarray | None
    start: int
    values: dict


@dataclasses.dataclass
class PassResult:
    """What the pass itself learnt: sample count, labels, non-finite taps."""

    n: int
    has_labels: bool
    nonfinite: set


def _side_model(graph, idents):
    """The side model computing ``idents`` [(key, mode), ...] from the graph's input (built once per graph)."""

    idents = tuple(idents)

    def outputs(symbolic):
        outs = []
        for key, mode in idents:
            t = symbolic(key)
            if mode != "raw":
                t = FeaturePooling(mode, dtype="float32", name=f"khi_{mode}_{key}")(t)
            outs.append(t)
        return outs

    return graph.build_side_model(outputs, name="khi_pass", cache_key=("khi_pass", idents))


def _forward(model, xb, few=False):
    """The side model's outputs on ``xb`` as a list; ``few``: a handful of samples run once (:func:`.predict_few`)."""
    out = predict_few(model, xb) if few else predict_on_batch(model, xb)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _batch_values(graph, runs, lean, nonfinite: set) -> dict:
    """``{tap ident: array}`` of one batch: each ``(idents, samples)`` of ``runs`` through its side model.

    Tensors with a non-finite value are added to ``nonfinite``. The limited taps (raw maps of the
    explained inputs) run on a few samples once per pass: eagerly rather than traced
    (:func:`.predict_few`), since a trace costs more than a few samples' forward.
    """
    values = {}
    for idents, xs in runs:
        if not idents:
            continue
        for ident, v in zip(idents, _forward(_side_model(graph, idents), xs, few=idents is not lean)):
            v = np.asarray(v)
            if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
                nonfinite.add(ident[0])
            values[ident] = v
    return values


def run(graph, stream, reducers, *, num_classes=None, task=None, verbose=0) -> PassResult:
    """Streams ``stream`` once through ``graph``'s model and feeds every reducer.

    Parameters
    ----------
    graph : ModelGraph
    stream : DataStream
    reducers : sequence of objects with ``taps`` (list of :class:`Tap`) and
        ``update(batch)``; one with ``expect(num_samples)`` is told before the
        first batch how many samples the stream holds (None when unknown
        without iterating), so it can allocate its storage once.
    num_classes : int, optional
        Labels are converted to class indices ``0..num_classes-1`` (checked).
    task : Task, optional
        Labels are converted to the task's targets (checked, naming the
        labels' argument): :meth:`~keras_hybrid_interp.core.task.Task.targets`.
    verbose : int
        A Keras progress bar (batches; its total is known when the data has a length).
    """
    taps: dict = {}
    for r in reducers:
        for t in r.taps:
            old = taps.get(t.ident)
            if old is None:
                taps[t.ident] = t
            elif old.limit is not None and (t.limit is None or t.limit > old.limit):
                taps[t.ident] = t
    full = list(taps)
    lean = [i for i in full if taps[i].limit is None]
    limited = [i for i in full if taps[i].limit is not None]
    horizon = max([taps[i].limit for i in limited], default=0)

    bar = keras.utils.Progbar(stream.num_batches, verbose=verbose, unit_name="batch") if verbose else None
    for r in reducers:
        if hasattr(r, "expect"):
            r.expect(stream.num_samples)
    n = 0
    has_y = None
    nonfinite: set = set()
    for b, (xb, yb) in enumerate(stream):
        if has_y is None:
            has_y = yb is not None
        elif has_y != (yb is not None):
            raise ValueError(
                f"`{stream.argname}` yields labels for some batches but not for others; label every batch or none."
            )
        if yb is not None and task is not None:
            yb = task.targets(yb, argname=stream.label_argname)
        elif yb is not None and num_classes is not None:
            yb = to_class_indices(yb, num_classes, argname=stream.label_argname)
        # (taps, the samples of the batch they run on); each side model is built (and traced) at the first
        # batch that runs it: the full one runs only while a whole batch needs the limited taps, often never
        runs = []
        if not horizon or n >= horizon:
            runs.append((lean, xb))
        elif x_rows(xb) <= horizon - n:  # every sample of the batch needs the limited taps
            runs.append((full, xb))
        else:
            # Only the head of the batch needs the limited taps (raw maps of a few inputs): run them
            # on those samples alone, so the pass never holds a whole batch of every raw map.
            runs += [(lean, xb), (limited, x_take(xb, slice(None, horizon - n)))]
        values = _batch_values(graph, runs, lean, nonfinite)
        batch = Batch([np.asarray(a) for a in xb] if isinstance(xb, list) else np.asarray(xb), yb, n, values)
        for r in reducers:
            r.update(batch)
        # The outputs may be views of the backend's buffers (:func:`.graph.predict_batch`): let go of them
        # before the next batch's forward, so the backend reuses their memory rather than allocating more.
        del batch, values
        n += x_rows(xb)
        if bar is not None:
            bar.update(b + 1)
    if bar is not None and stream.num_batches is None:
        bar.update(b + 1, finalize=True)
    return PassResult(n, bool(has_y), nonfinite)


def forward_taps(graph, taps, x) -> dict:
    """``{tap.ident: array}``: the taps of a *second* graph on one batch ``x`` of a pass.

    For a reducer of :func:`run` over one graph that needs another graph's
    values on the same samples (comparing two models): it calls this in its
    ``update`` with ``batch.x``, so the data is still read by the one loop of
    :func:`run`, and the second graph runs once per batch through the same
    cached side model and forward call (inference mode, ``tf.distribute``
    replicas) as the pass. Limits of the taps are ignored (every sample).
    """
    idents = list(dict.fromkeys(t.ident for t in taps))
    if not idents:
        return {}
    return {i: np.asarray(v) for i, v in zip(idents, _forward(_side_model(graph, idents), x))}


class InputMoments:
    """Per-channel mean and standard deviation of the input, over samples and positions (float64).

    For the input-drift check: the statistics recorded when the probes are
    fitted are compared with those of later data.

    A model with several inputs (``batch.x`` a list): the statistics are kept
    per input (an image's channels over samples and positions, a tabular
    input's features over samples) and :attr:`mean` and :attr:`std`
    concatenate them in model input order, so every input is checked for drift.
    :attr:`min` and :attr:`max` are each channel's extremes (the range the
    drift check of a few samples compares with; :mod:`~keras_hybrid_interp.core.drift`).
    """

    taps: tuple = ()

    def __init__(self):
        self.count = 0
        self.samples = 0
        self._mean = None
        self.m2 = None
        self._min = self._max = None
        self._parts = None  # one InputMoments per input, for several inputs

    @property
    def mean(self):
        if self._parts is not None:
            if any(p.mean is None for p in self._parts):
                return None
            return np.concatenate([p.mean for p in self._parts])
        return self._mean

    @mean.setter
    def mean(self, value):
        self._mean = value

    @property
    def min(self):
        """Per-channel minimum (float64), None before any numeric sample."""
        if self._parts is not None:
            return None if any(p.min is None for p in self._parts) else np.concatenate([p.min for p in self._parts])
        return self._min

    @property
    def max(self):
        """Per-channel maximum (float64), None before any numeric sample."""
        if self._parts is not None:
            return None if any(p.max is None for p in self._parts) else np.concatenate([p.max for p in self._parts])
        return self._max

    def statistics(self):
        """``{"mean", "std", "min", "max"}`` per channel (what a fit records for the drift check), or None."""
        if self.mean is None:
            return None
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}

    def update(self, batch):
        if isinstance(batch.x, list):
            if self._parts is None:
                self._parts = [InputMoments() for _ in batch.x]
            for part, xi in zip(self._parts, batch.x):
                part.update(Batch(xi, None, batch.start, {}))
            self.samples = self._parts[0].samples
            return
        x = np.asarray(batch.x)
        if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
            return
        self.samples += len(x)
        rows = x.reshape(-1, x.shape[-1])
        step = max(1, self.CHUNK_VALUES // max(rows.shape[1], 1))
        for start in range(0, len(rows), step):  # bounded float64 copies, whatever the batch's size
            self._add(rows[start:start + step])

    #: Values per float64 copy in :meth:`update` (8 MB): a whole batch's copy (64 images of 224 x 224 x 3:
    #: 77 MB, twice) cost more in fresh pages than in arithmetic.
    CHUNK_VALUES = 1 << 20

    def _add(self, rows):
        """Adds rows (positions x channels) to the moments: Chan et al.'s pairwise update, in float64."""
        # One row per channel, contiguous: reducing along the rows of an (N*H*W, C) array with few channels
        # is strided and about 15x slower (0.24 s against 0.016 s for 64 images of 160 x 160 x 3).
        cols = np.ascontiguousarray(rows.T, dtype=np.float64)
        nb = cols.shape[1]
        mb = cols.mean(axis=1)
        dev = cols - mb[:, None]
        m2b = np.einsum("ij,ij->i", dev, dev)
        lo, hi = cols.min(axis=1), cols.max(axis=1)
        self._min = lo if self._min is None else np.minimum(self._min, lo)
        self._max = hi if self._max is None else np.maximum(self._max, hi)
        if self.mean is None:
            self.count, self.mean, self.m2 = nb, mb, m2b
            return
        tot = self.count + nb
        delta = mb - self.mean
        self.m2 = self.m2 + m2b + delta ** 2 * (self.count * nb / tot)
        self.mean = self.mean + delta * (nb / tot)
        self.count = tot

    @property
    def std(self):
        """None before any numeric sample, as :attr:`mean` (it raised a TypeError)."""
        if self._parts is not None:
            if any(p.mean is None for p in self._parts):
                return None
            return np.concatenate([p.std for p in self._parts])
        if self.m2 is None:
            return None
        return np.sqrt(self.m2 / max(self.count, 1))


class Collect:
    """Keeps the values of one tap (or the inputs, or the labels) for the first ``limit`` samples (all: None).

    ``Collect(tap)`` keeps a tap's arrays; ``Collect(None, what="x")`` the
    inputs; ``Collect(None, what="y")`` the labels. ``result()`` concatenates
    them (None when nothing was kept).
    """

    def __init__(self, tap: Tap | None, what="tap", dtype=None):
        self.tap = tap
        self.what = what
        self.dtype = dtype
        self.taps = (tap,) if tap is not None else ()
        self.limit = None if tap is None else tap.limit
        self._parts: list = []  # arrays, or per batch a list of arrays (several inputs)

    @classmethod
    def first(cls, what, limit):
        c = cls(None, what)
        c.limit = limit
        return c

    def update(self, batch):
        if self.limit is not None and batch.start >= self.limit:
            return
        if self.what == "x":
            v = batch.x
        elif self.what == "y":
            v = batch.y
        else:
            assert self.tap is not None  # Collect(None, ...) is built by first(), with what 'x' or 'y'
            v = batch.values.get(self.tap.ident)
        if v is None:
            return
        if self.limit is not None:
            v = x_take(v, slice(None, self.limit - batch.start))
        if isinstance(v, list):  # the inputs of a model with several inputs
            self._parts.append([_owned(a, self.dtype) for a in v])
            return
        self._parts.append(_owned(v, self.dtype))

    def result(self, release: bool = False):
        """The kept values, joined; ``release``: forget them here (the caller's result is then the only copy)."""
        if not self._parts:
            return None
        out: list | np.ndarray
        if isinstance(self._parts[0], list):
            out = [np.concatenate(p, axis=0) for p in zip(*self._parts)]
        else:
            out = np.concatenate(self._parts, axis=0)
        if release:
            self._parts = []
        return out


def _owned(v, dtype=None) -> np.ndarray:
    """``v`` as an array that holds its own memory: a view (of a batch, or of a backend's output buffer) is copied.

    A kept view would keep its whole base alive: the first samples of a batch would hold the batch's
    buffer, and a view of a side model's output (:func:`.graph.predict_batch`) the backend's tensor, for
    as long as the view lives (on B13's U-Net, two explained inputs' raw maps held 0.5 GB of batch outputs).
    """
    v = np.asarray(v, dtype=dtype)
    return v.copy() if v.base is not None else v


class ChannelRange:
    """Per-channel minimum and maximum of tensor ``key`` over every sample and position.

    This is the one definition of a **dead filter**: a channel whose
    activation takes one single value at every position of every analysed
    sample (``min == max``), e.g. a ReLU that never fires. Correlation,
    association, importance, the callback and the report all use it.
    """

    def __init__(self, key: int):
        self.key = key
        self.taps = (Tap(key, "min"), Tap(key, "max"))
        self.min = None
        self.max = None

    def update(self, batch):
        lo = np.min(batch.values[(self.key, "min")], axis=0).astype(np.float64)
        hi = np.max(batch.values[(self.key, "max")], axis=0).astype(np.float64)
        self.min = lo if self.min is None else np.minimum(self.min, lo)
        self.max = hi if self.max is None else np.maximum(self.max, hi)

    @property
    def dead(self) -> np.ndarray:
        """Indices of the dead (constant) filters."""
        return dead_filters(self.min, self.max)


def dead_filters(channel_min, channel_max) -> np.ndarray:
    """Indices of channels whose minimum equals their maximum (see :class:`ChannelRange`)."""
    return np.flatnonzero(np.asarray(channel_min) == np.asarray(channel_max))


def dead_filters_of(maps) -> np.ndarray:
    """Dead channels of an array of maps (n, ..., C), by the same definition."""
    return dead_filters(channel_extreme(np.minimum, maps), channel_extreme(np.maximum, maps))


def channel_extreme(ufunc, maps) -> np.ndarray:
    """``ufunc.reduce`` (``np.minimum`` or ``np.maximum``) of ``maps`` (..., C) over every axis but the last.

    The same values as ``np.min``/``np.max`` over those axes (NaN propagates), computed over rows of
    ``g x C`` values: NumPy reduces a few channels per row slowly (a U-Net's cached maps, 537 MB of
    32 channels: 0.26 s per reduction), but long rows element-wise, several times faster (0.05 s).
    """
    maps = np.asarray(maps)
    c = maps.shape[-1] if maps.ndim else 1
    flat = maps.reshape(-1, c)
    rows = len(flat)
    if not rows:
        return ufunc.reduce(flat, axis=0)  # NumPy's own answer (an error for an empty minimum)
    g = max(1, min(rows, 4096 // max(c, 1)))
    head = rows - rows % g
    parts = []
    if head:
        parts.append(ufunc.reduce(ufunc.reduce(flat[:head].reshape(-1, g * c), axis=0).reshape(g, c), axis=0))
    if head < rows:
        parts.append(ufunc.reduce(flat[head:], axis=0))
    return parts[0] if len(parts) == 1 else ufunc(parts[0], parts[1])
