"""``InterpretationCallback``: watch the layers and filters of a CNN while it trains.

A ``keras.callbacks.Callback`` that, before training and at the end of every
``every`` epochs, reads a fixed validation subset through the model once and
records, per block, what a probe on that block predicts, how many filters are
dead and how redundant the filters are (and, optionally, which filters matter
most). Training itself is untouched: see :class:`InterpretationCallback`.

Definitions (all on the fixed validation subset; see also the README)
---------------------------------------------------------------------
subset
    The first ``max_samples`` samples of ``validation_data`` (deterministic),
    cached once at ``on_train_begin``. It is split once, by a permutation drawn
    from ``random_state``, into a *probe-fit* half (``n - n // 2`` samples,
    ``probe_fit_indices``) and an *evaluation* half (``n // 2`` samples,
    ``eval_indices``). Probes are trained on the first and scored on the
    second, never on their own training samples.
features
    The global average of each block output over space (one value per
    filter and sample), from one inference pass (``training=False``) of the
    whole subset through :attr:`HybridInterpreter._features`, which also gives
    the model's class probabilities.
accuracy, loss, agreement (per block, evaluation half)
    As in :meth:`HybridInterpreter.evaluate_layers` for the block's probe:
    fraction of samples whose probe top class equals the label; mean
    cross-entropy of the probe probabilities (clipped to [1e-7, 1]) against the
    label, or against the model's own distribution when the data has no
    labels; fraction whose probe top class equals the model's top class.
    ``accuracy`` is only recorded when the data has labels. Block ``"output"``
    is the model itself (``accuracy`` and ``loss``).
dead_filters (per block, whole subset)
    Number of filters whose spatially averaged activation is exactly the same
    for every sample of the subset (``FilterCorrelation.dead_filters``).
redundancy (per block, whole subset)
    Mean ``|r|`` of the Pearson correlation between the spatially averaged
    activations of every pair of live filters (``FilterCorrelation.redundancy``;
    NaN with fewer than two live filters).
importance (one block, whole subset, optional)
    Permutation importance (``GlobalAnalyzer.filter_importance``, accuracy
    scoring, mean over ``n_repeats``) of the ``top_k`` most important filters
    at that epoch; the ``filter`` column says which. The permutations are the
    same at every epoch (common random numbers), so the curves move only
    because the model does.

Probes
------
The same linear softmax probes as :class:`HybridInterpreter` (pooled
features, whitened as in :meth:`LinearProbe.set_input_transform`, then a
linear layer), trained with Adam on the cross-entropy. The first fit starts
from zero and runs ``initial_epochs`` (100) passes at ``initial_learning_rate``
(0.05), as :meth:`HybridInterpreter.fit_probes`. Later records *warm-start*:
the input transform is refitted on the new features (they drift as the model
learns), the probe starts from the least-squares fit, in the new features, of
the previous probe's logits on the same probe-fit samples, and ``epochs`` (5)
passes at ``learning_rate`` (0.01) follow. On the demo CNN this warm start is
closer to a converged L2 logistic regression than a fresh 100-epoch fit at
every record, with 20 times fewer Adam passes (a whole record costs about a
third as much; BENCHMARKS.md, B4).

The probes are trained in NumPy (float64, one BLAS thread): they are small and
convex, so a refit costs about a millisecond, compiles nothing and touches no
Keras variable. They are copied into the probe layers of
:attr:`InterpretationCallback.interpreter` when it is read and at the end of
training.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import pandas as pd

import keras

from ._data import as_stream, to_class_indices
from ._distribute import predict_on_batch
from ._engine import resolve_entropy
from .correlation import FilterCorrelation, StreamingMoments
from .probes import input_transform as _input_transform

__all__ = ["InterpretationCallback", "plot_training_dynamics"]

_EPS = 1e-7  # as HybridInterpreter.evaluate_layers
_COLUMNS = ["epoch", "block", "metric", "value", "filter"]
_PROBE_DEFAULTS = {"epochs": 5, "learning_rate": 0.01, "initial_epochs": 100, "initial_learning_rate": 0.05,
                   "batch_size": 256}
_IMPORTANCE_DEFAULTS = {"block": None, "n_repeats": 5, "top_k": 10}
# Adam constants, as keras.optimizers.Adam's defaults.
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-7


def _positive_int(value, name, allow_none=False):
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be a positive int{extra}; received {value!r}.")
    return int(value)


def _options(value, defaults, name, required=()):
    """``True``/``False``/``None``/dict -> dict of options (or None when off)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"`{name}` must be a bool, None or a dict of options {sorted(defaults)}; "
                        f"received {type(value).__name__}.")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise ValueError(f"`{name}` has unknown option(s) {unknown}; available: {sorted(defaults)}.")
    out = {**defaults, **value}
    for key in required:
        if out[key] is None:
            raise ValueError(f"`{name}` needs the option {key!r}; received {value!r}.")
    return out


def _blas_controller():
    """A ``threadpoolctl`` controller (installed with scikit-learn), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return None
    return ThreadpoolController()


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _adam(z, targets, kernel, bias, *, epochs, batch_size, learning_rate, rng):
    """Adam on the mean cross-entropy of ``softmax(z @ kernel + bias)`` against ``targets``.

    Float64, fresh moments (``keras.optimizers.Adam`` defaults otherwise);
    mini-batch order from ``rng``. Returns the new ``(kernel, bias)``.
    """
    n = len(z)
    params = [kernel.copy(), bias.copy()]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    t = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = np.sort(order[start:start + batch_size])
            zb = z[idx]
            g = (_softmax(zb @ params[0] + params[1]) - targets[idx]) / len(idx)
            grads = [zb.T @ g, g.sum(axis=0)]
            t += 1
            alpha = learning_rate * np.sqrt(1 - _BETA2 ** t) / (1 - _BETA1 ** t)
            for p, gr, mi, vi in zip(params, grads, m, v):
                mi *= _BETA1
                mi += (1 - _BETA1) * gr
                vi *= _BETA2
                vi += (1 - _BETA2) * gr * gr
                p -= alpha * mi / (np.sqrt(vi) + _ADAM_EPS)
    return params[0], params[1]


class _ProbeFit:
    """One probe as fitted by the callback (float64): transform, kernel, bias, fit-half logits."""

    __slots__ = ("mean", "transform", "kernel", "bias", "fit_logits")

    def __init__(self, mean, transform, kernel, bias, fit_logits):
        self.mean, self.transform, self.kernel, self.bias = mean, transform, kernel, bias
        self.fit_logits = fit_logits

    def inputs(self, f):
        c = f.astype(np.float64) - self.mean
        return c @ self.transform if self.transform.ndim == 2 else c * self.transform


class InterpretationCallback(keras.callbacks.Callback):
    """Records layer-wise probes and filter statistics while a model trains.

    Before training starts (``on_train_begin``) and at the end of every
    ``every`` epochs, the callback runs one inference pass of a fixed
    validation subset through the model, refits one linear probe per block on
    the pooled features (warm-started from the previous record), and records
    per block: probe ``accuracy``, ``loss`` and ``agreement`` with the model,
    the number of ``dead_filters`` and the filter ``redundancy`` (mean |r|);
    optionally the permutation ``importance`` of the top filters of one block.
    The module docstring (and the README) define every metric.

    Training is untouched: the callback never compiles, traces or changes the
    user's model (it reads it through a side model,
    :class:`~keras_hybrid_interp.HybridInterpreter`, in inference mode), never
    writes to ``logs``, and draws no random numbers from the global streams
    (Python ``random``, NumPy's global generator, TensorFlow's global seed):
    its probe mini-batches, data split and permutations come from private
    generators seeded by ``random_state``. With the same seeds, training with
    and without the callback gives bit-identical weights (tested).

    Parameters
    ----------
    validation_data : tuple (x, y), array x, tf.data.Dataset or keras.utils.PyDataset
        Data the callback reads (never trained on by the model). ``x`` has
        shape (N, H, W, C); ``y`` holds integer labels (N,) or one-hot rows
        (N, K); a third tuple element (sample weights) is ignored. Datasets
        yield batches of ``x`` or ``(x, y)``. Without labels, probes learn the
        model's own predicted distribution and ``accuracy`` is not recorded.
    blocks : "auto", str, int, Layer or list of them
        Block ends, as for :class:`HybridInterpreter`.
    every : int
        Record at the end of every ``every`` epochs (epochs ``every``,
        ``2 * every``, ...), and at the end of training if the last epoch was
        not recorded.
    max_samples : int or None
        Size of the validation subset: the first ``max_samples`` samples
        (None: all). It is held in memory (``max_samples x H x W x C``
        numbers) and split into a probe-fit and an evaluation half.
    probes : bool or dict
        Record ``accuracy``/``loss``/``agreement``. A dict sets the probe
        training: ``epochs`` (Adam passes per warm-started refit, default 5),
        ``learning_rate`` (0.01), ``initial_epochs`` (first fit, from zero,
        100), ``initial_learning_rate`` (0.05), ``batch_size`` (256).
    correlation : bool
        Record ``dead_filters`` and ``redundancy``.
    importance : dict, optional
        ``{"block": name, "n_repeats": 5, "top_k": 10}``: record the
        permutation importance of the ``top_k`` most important filters of
        ``block`` (any 4-D layer). Off by default: it costs
        ``filters x n_repeats`` passes of the model tail per record.
    log_dir : str or path-like, optional
        Write TensorBoard summaries there as training goes: a scalar
        ``"{block}/{metric}"`` for every recorded value (importance:
        ``"{block}/importance/filter_{i}"``), and a histogram
        ``"{block}/filter_mean_activation"`` of the per-filter mean activation
        over the subset; step = epoch. Written with TensorFlow's ``tf.summary``
        (the ``tensorboard`` package is needed only to view them).
    csv_path : str or path-like, optional
        Append the rows of :attr:`history` to this CSV file as they are
        recorded (the header is written when the file is new or empty).
    random_state : None, int, numpy Generator or SeedSequence
        Seeds the split, the probes' mini-batch order and the importance
        permutations. None draws fresh OS entropy (kept in ``random_state_``).
    batch_size : int
        Batch size of the inference pass.
    output : "auto", "softmax", "sigmoid" or "logits"
        What the model outputs, as for :class:`HybridInterpreter`.

    Attributes
    ----------
    history : pandas.DataFrame
        Tidy record: ``epoch`` (number of completed epochs; the baseline is
        epoch 0), ``block`` (a block name, or ``"output"`` for the model),
        ``metric``, ``value`` and ``filter`` (the filter index for
        ``importance``, ``<NA>`` otherwise).
    interpreter : HybridInterpreter
        The side model, built at ``on_train_begin``; its probes hold the last
        refit, so ``callback.interpreter.explain(x)`` works after training.
    validation_subset : tuple (x, y)
        The cached subset (``y``: integer labels or None).
    probe_fit_indices, eval_indices : ndarray of int
        The two halves of the subset (indices into it).
    random_state_ : int
        Entropy of every private generator of the callback.
    importance_random_state_ : int
        ``random_state`` passed to ``GlobalAnalyzer.filter_importance`` at
        every record.

    Notes
    -----
    **Detail against speed.** One record costs one inference pass over the
    ``max_samples`` samples (the bulk of it on the demo CNN), plus the probe
    refits and correlations, ``O(max_samples x sum_l C_l^2 + sum_l C_l^3)`` in
    NumPy for blocks of ``C_l`` filters (a few milliseconds for a few
    hundred filters), plus, with ``importance``, ``C x n_repeats`` passes of
    the model tail. The cost per training epoch is that divided by ``every``:
    ``every=5`` records a fifth as often for a fifth of the cost, and the
    curves have a point every 5 epochs. ``max_samples`` sets the cost of the
    pass and the precision of every number: probe accuracy is measured on
    ``max_samples // 2`` samples, so its standard error is
    ``sqrt(p (1 - p) / (max_samples / 2))`` (1.3 points at p = 0.9 with the
    default 1000; 3 points with 200), and the correlations (hence
    ``redundancy``) get noisier below a few hundred samples. On the demo CNN
    (2 CPU cores, 450 validation images) a record takes about 15 ms, 7% of a
    training epoch, with ``every=1`` (BENCHMARKS.md, B4). The one-off
    ``on_train_begin`` (side model, tracing, baseline) takes about 0.2 s.

    Examples
    --------
    >>> cb = InterpretationCallback((x_val, y_val), log_dir="logs/interp", random_state=0)
    >>> model.fit(x_train, y_train, epochs=20, callbacks=[cb])
    >>> cb.history.query("metric == 'accuracy'").pivot(index="epoch", columns="block", values="value")
    >>> fig = plot_training_dynamics(cb.history)
    """

    def __init__(
        self,
        validation_data,
        *,
        blocks="auto",
        every=1,
        max_samples=1000,
        probes=True,
        correlation=True,
        importance=None,
        log_dir=None,
        csv_path=None,
        random_state=None,
        batch_size=256,
        output="auto",
    ):
        super().__init__()
        self.every = _positive_int(every, "every")
        self.max_samples = _positive_int(max_samples, "max_samples", allow_none=True)
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.probe_options = _options(probes, _PROBE_DEFAULTS, "probes")
        if self.probe_options is not None:
            for key in ("epochs", "initial_epochs", "batch_size"):
                _positive_int(self.probe_options[key], f"probes[{key!r}]")
            for key in ("learning_rate", "initial_learning_rate"):
                lr = self.probe_options[key]
                if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not lr > 0:
                    raise ValueError(f"`probes[{key!r}]` must be a positive float; received {lr!r}.")
        if not isinstance(correlation, bool):
            raise TypeError(f"`correlation` must be a bool; received {correlation!r}.")
        self.correlation = correlation
        self.importance_options = _options(importance, _IMPORTANCE_DEFAULTS, "importance", required=("block",))
        if self.importance_options is not None:
            _positive_int(self.importance_options["n_repeats"], "importance['n_repeats']")
            _positive_int(self.importance_options["top_k"], "importance['top_k']")
        self.blocks_arg = blocks
        self.output = output
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.random_state_ = resolve_entropy(random_state)
        self.importance_random_state_ = None
        self._x_arg, self._y_arg = self._unpack(validation_data)
        as_stream(self._x_arg, self._y_arg, argname="validation_data")  # kind and label length, early

        self._rows: list[tuple] = []
        self._interp = None
        self._analyzer = None
        self._x = self._y = None
        self._fit_idx = self._eval_idx = None
        self._probe_fits = None
        self._probes_synced = True
        self._probe_rng = None
        self._epochs_done = 0
        self._last_recorded = None
        self._writer = None
        self._blas = None

    # ------------------------------------------------------------------
    @staticmethod
    def _unpack(validation_data):
        if isinstance(validation_data, tuple):
            if not 1 <= len(validation_data) <= 3:
                raise ValueError(
                    "`validation_data` as a tuple must be (x,), (x, y) or (x, y, sample_weight); "
                    f"received a tuple of length {len(validation_data)}."
                )
            x = validation_data[0]
            y = validation_data[1] if len(validation_data) > 1 else None
            return x, y
        return validation_data, None

    @property
    def interpreter(self):
        """The :class:`HybridInterpreter` built on the model at ``on_train_begin`` (None before).

        Its probes hold the callback's last refit (copied into the probe layers
        when this attribute is read, and at the end of training).
        """
        if self._interp is not None:
            self._sync_probes()
        return self._interp

    @property
    def probe_fit_indices(self) -> np.ndarray | None:
        """Indices (into the subset) of the samples the probes are trained on."""
        return self._fit_idx

    @property
    def eval_indices(self) -> np.ndarray | None:
        """Indices (into the subset) of the samples the probes are scored on."""
        return self._eval_idx

    @property
    def validation_subset(self):
        """The cached subset ``(x, y)`` (``y`` integer labels or None); None before training."""
        return None if self._x is None else (self._x, self._y)

    @property
    def history(self) -> pd.DataFrame:
        """Tidy record of every value: columns ``epoch, block, metric, value, filter``."""
        return self._frame(self._rows)

    @staticmethod
    def _frame(rows) -> pd.DataFrame:
        cols = list(zip(*rows)) if rows else [[]] * len(_COLUMNS)
        return pd.DataFrame({
            "epoch": np.asarray(cols[0], dtype=np.int64),
            "block": pd.Series(cols[1], dtype=object),
            "metric": pd.Series(cols[2], dtype=object),
            "value": np.asarray(cols[3], dtype=np.float64),
            "filter": pd.array(list(cols[4]), dtype="Int64"),
        })

    def __repr__(self):
        return (f"InterpretationCallback(every={self.every}, max_samples={self.max_samples}, "
                f"probes={self.probe_options is not None}, correlation={self.correlation}, "
                f"importance={self.importance_options}, records={len(self._rows)})")

    # ------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------
    def _setup(self):
        from .interpreter import HybridInterpreter

        model = self.model
        if model is None:
            raise ValueError("InterpretationCallback has no model: pass it to model.fit(callbacks=[...]) "
                             "or call callback.set_model(model) first.")
        if self._interp is not None and self._interp.wrapped_model is model:
            return
        interp = HybridInterpreter(model, self.blocks_arg, output=self.output)
        stream = interp._stream(self._x_arg, self._y_arg, batch_size=self.batch_size,
                                max_samples=self.max_samples, argname="validation_data")
        xs, ys, has_y = [], [], None
        for xb, yb in stream:
            if has_y is None:
                has_y = yb is not None
            elif has_y != (yb is not None):
                raise ValueError("`validation_data` yields labels for some batches but not others.")
            xs.append(np.asarray(xb))
            if yb is not None:
                ys.append(to_class_indices(yb, interp.num_classes, argname="validation_data labels"))
        x = np.concatenate(xs)  # a copy: the subset stays fixed even if the caller edits its array
        y = np.concatenate(ys) if has_y else None
        n = len(x)
        if self.probe_options is not None and n < 4:
            raise ValueError(f"`validation_data` must hold at least 4 samples (2 to fit the probes, 2 to "
                             f"score them); received {n}.")
        if self.correlation and n < 2:
            raise ValueError(f"`validation_data` must hold at least 2 samples to correlate filters; received {n}.")
        root = np.random.SeedSequence(self.random_state_)
        split_seq, probe_seq, imp_seq = root.spawn(3)
        perm = np.random.default_rng(split_seq).permutation(n)
        n_eval = n // 2
        self._fit_idx = np.sort(perm[: n - n_eval])
        self._eval_idx = np.sort(perm[n - n_eval:])
        self._probe_rng = np.random.default_rng(probe_seq)
        self.importance_random_state_ = int(imp_seq.generate_state(1)[0])
        self._x, self._y = x, y
        self._interp = interp
        if self._blas is None:
            self._blas = _blas_controller() or False
        self._probe_fits = None
        self._probes_synced = True
        self._analyzer = None
        if self.importance_options is not None:
            from .analyzer import GlobalAnalyzer

            self._analyzer = GlobalAnalyzer(interp, batch_size=self.batch_size)
            self._analyzer._key(self.importance_options["block"], "importance['block']")  # validate now

    # ------------------------------------------------------------------
    # Keras hooks
    # ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._setup()
        if self._last_recorded != self._epochs_done:
            self._record(self._epochs_done)

    def on_epoch_end(self, epoch, logs=None):
        if self._interp is None or self._interp.wrapped_model is not self.model:
            self._setup()
        self._epochs_done = int(epoch) + 1
        if self._epochs_done % self.every == 0:
            self._record(self._epochs_done)

    def on_train_end(self, logs=None):
        if self._interp is not None and self._last_recorded != self._epochs_done:
            self._record(self._epochs_done)
        if self._interp is not None:
            self._sync_probes()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------
    # One record
    # ------------------------------------------------------------------
    def _forward(self):
        interp = self._interp
        feats = [[] for _ in interp.block_names]
        probs = []
        for start in range(0, len(self._x), self.batch_size):
            outs = predict_on_batch(interp._features, self._x[start:start + self.batch_size])
            for i, f in enumerate(outs[:-1]):
                feats[i].append(np.asarray(f, dtype=np.float32))
            probs.append(np.asarray(outs[-1], dtype=np.float32))
        return [np.concatenate(f) for f in feats], np.concatenate(probs)

    def _single_thread_blas(self):
        """Small NumPy linear algebra in one BLAS thread.

        Right after a TensorFlow pass, a multi-threaded BLAS fights TensorFlow's
        spinning thread pool for the cores: a 48 x 48 ``eigh`` took 20-30 ms
        instead of 0.2 ms on 2 cores.
        """
        if not self._blas:
            return contextlib.nullcontext()
        return self._blas.limit(limits=1, user_api="blas")

    def _record(self, epoch):
        feats, probs = self._forward()
        with self._single_thread_blas():
            rows, means = self._statistics(epoch, feats, probs)
        if self.importance_options is not None:
            rows += self._importance_rows(epoch)
        self._rows.extend(rows)
        self._last_recorded = epoch
        self._write(epoch, rows, means)

    def _statistics(self, epoch, feats, probs):
        interp = self._interp
        rows = []
        finite = [bool(np.all(np.isfinite(f))) for f in feats]
        probs_ok = bool(np.all(np.isfinite(probs)))
        bad = [n for n, ok in zip(interp.block_names, finite) if not ok] + ([] if probs_ok else ["output"])
        if bad:
            warnings.warn(f"Epoch {epoch}: {bad} produced NaN or infinite values on the validation subset; "
                          "nothing is recorded for them at this epoch.", RuntimeWarning, stacklevel=3)
        if self.probe_options is not None and probs_ok:
            rows += self._probe_rows(epoch, feats, probs, finite)
        means = {}
        if self.correlation:
            for name, f, ok in zip(interp.block_names, feats, finite):
                if not ok:
                    continue
                acc = StreamingMoments(f.shape[1])
                acc.update(f)
                corr = FilterCorrelation(acc.correlation(), np.flatnonzero(acc.constant), name, "mean",
                                         acc.n, acc.mean.copy())
                rows.append((epoch, name, "dead_filters", float(len(corr.dead_filters)), None))
                rows.append((epoch, name, "redundancy", corr.redundancy, None))
                means[name] = corr.mean
        else:
            means = {name: f.mean(axis=0, dtype=np.float64)
                     for name, f, ok in zip(interp.block_names, feats, finite) if ok}
        return rows, means

    def _probe_rows(self, epoch, feats, probs, finite):
        interp = self._interp
        opts = self.probe_options
        fit, ev = self._fit_idx, self._eval_idx
        k = interp.num_classes
        targets = (np.eye(k)[self._y] if self._y is not None else probs.astype(np.float64))[fit]
        model_p = probs[ev].astype(np.float64)
        model_cls = model_p.argmax(axis=1)
        if self._probe_fits is None:
            self._probe_fits = [None] * len(feats)
        rows = []
        for i, (name, probe, f, ok) in enumerate(zip(interp.block_names, interp._probes, feats, finite)):
            if not ok:
                continue
            f_fit = f[fit].astype(np.float64)
            # The input transform is refreshed at every record: the features drift as the model learns.
            mean, t = _input_transform(f_fit, getattr(probe, "whiten", True))
            new = _ProbeFit(mean, t, None, None, None)
            z = new.inputs(f_fit)
            previous = self._probe_fits[i]
            if previous is None:  # first fit: from zero, as fit_probes
                kernel0, bias0 = np.zeros((f.shape[1], k)), np.zeros(k)
                epochs, lr = opts["initial_epochs"], opts["initial_learning_rate"]
            else:
                # Warm start: the previous probe's logits on the same samples, refitted (least squares)
                # on the new features. Mapping the previous weights instead would carry huge weights
                # along directions that hardly varied before and vary now.
                bias0 = previous.fit_logits.mean(axis=0)
                kernel0 = np.linalg.lstsq(z, previous.fit_logits - bias0, rcond=None)[0]
                epochs, lr = opts["epochs"], opts["learning_rate"]
            new.kernel, new.bias = _adam(z, targets, kernel0, bias0, epochs=epochs, batch_size=opts["batch_size"],
                                         learning_rate=float(lr), rng=self._probe_rng)
            new.fit_logits = z @ new.kernel + new.bias
            self._probe_fits[i] = new
            p = _softmax(new.inputs(f[ev]) @ new.kernel + new.bias)
            rows += self._scores(epoch, name, p, model_p, model_cls, agreement=True)
        self._probes_synced = False
        rows += self._scores(epoch, "output", model_p, model_p, model_cls, agreement=False)
        return rows

    def _sync_probes(self):
        """Copies the callback's probes into the interpreter's probe layers (float32)."""
        if self._probes_synced or self._probe_fits is None:
            return
        for probe, fitted in zip(self._interp._probes, self._probe_fits):
            if fitted is None:
                continue
            for var, value in ((probe.mean, fitted.mean), (probe.transform, fitted.transform),
                               (probe.kernel, fitted.kernel), (probe.bias, fitted.bias)):
                var.assign(value.astype(var.dtype))
        self._interp.fitted = True
        self._probes_synced = True

    def _scores(self, epoch, name, p, model_p, model_cls, agreement):
        cls = p.argmax(axis=1)
        logp = np.log(np.clip(p, _EPS, 1.0))
        rows = []
        if self._y is not None:
            y = self._y[self._eval_idx]
            rows.append((epoch, name, "accuracy", float(np.mean(cls == y)), None))
            loss = -np.mean(logp[np.arange(len(y)), y])
        else:
            loss = -np.mean(np.sum(model_p * logp, axis=1))
        rows.append((epoch, name, "loss", float(loss), None))
        if agreement:
            rows.append((epoch, name, "agreement", float(np.mean(cls == model_cls)), None))
        return rows

    def _importance_rows(self, epoch):
        opts = self.importance_options
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*\(dead\)")
            imp = self._analyzer.filter_importance(
                self._x, self._y, opts["block"], n_repeats=opts["n_repeats"],
                random_state=self.importance_random_state_, batch_size=self.batch_size)
        top = imp.ranking[: opts["top_k"]]
        mean = imp.importances_mean
        return [(epoch, imp.block, "importance", float(mean[i]), int(i)) for i in top]

    # ------------------------------------------------------------------
    # Files, written as training goes
    # ------------------------------------------------------------------
    def _write(self, epoch, rows, means):
        if self.csv_path is not None and rows:
            new = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
            self._frame(rows).to_csv(self.csv_path, mode="a", header=new, index=False)
        if self.log_dir is not None:
            self._write_tensorboard(epoch, rows, means)

    def _write_tensorboard(self, epoch, rows, means):
        # TensorBoard event files are a TensorFlow facility: TensorFlow is imported here only.
        # tf.summary.write (core TensorFlow) with the plugin metadata of the "scalars" and
        # "histograms" dashboards writes exactly what tf.summary.scalar / .histogram write,
        # without needing the `tensorboard` package (TensorFlow 2.21 no longer installs it).
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        def metadata(plugin):
            return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        scalars, histograms = metadata("scalars"), metadata("histograms")
        with self._writer.as_default(step=int(epoch)):
            for _, block, metric, value, flt in rows:
                tag = f"{block}/{metric}" if flt is None else f"{block}/{metric}/filter_{flt}"
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=scalars)
            for block, m in means.items():
                tf.summary.write(f"{block}/filter_mean_activation", tf.constant(_histogram(m)), metadata=histograms)
        self._writer.flush()


def _histogram(values, bins=30) -> np.ndarray:
    """TensorBoard's histogram tensor: rows (left edge, right edge, count), float64."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


# ----------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------
def plot_training_dynamics(history, *, metric=None, ax=None, annot=None, cmap="viridis"):
    """Per-block ``metric`` against epoch (lines) and as an epochs x blocks heatmap.

    Parameters
    ----------
    history : pandas.DataFrame or InterpretationCallback
        ``InterpretationCallback.history`` (columns ``epoch, block, metric, value``).
    metric : str, optional
        Which metric to draw; default ``"accuracy"`` when recorded, else
        ``"agreement"``. Must be one value per (epoch, block) (not ``importance``).
    ax : pair of matplotlib Axes, optional
        Axes for the line plot and the heatmap; by default a new figure with
        two side-by-side panels.
    annot : bool, optional
        Write the values in the heatmap cells (default: when there are at most
        20 epochs and 12 blocks).
    cmap : str
        Heatmap colormap.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the two panels (never shown or saved here).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, InterpretationCallback):
        history = history.history
    if not isinstance(history, pd.DataFrame) or not {"epoch", "block", "metric", "value"} <= set(history.columns):
        raise TypeError("`history` must be InterpretationCallback.history (a DataFrame with columns epoch, "
                        f"block, metric, value) or the callback; received {type(history).__name__}.")
    available = list(dict.fromkeys(history["metric"]))
    if metric is None:
        metric = "accuracy" if "accuracy" in available else "agreement"
    if metric not in available:
        raise ValueError(f"`metric`={metric!r} was not recorded; available: {available}.")
    data = history[history["metric"] == metric]
    if data.duplicated(["epoch", "block"]).any():
        raise ValueError(f"`metric`={metric!r} has several values per epoch and block (per filter); "
                         "plot it from the history directly, e.g. with seaborn.lineplot(hue='filter').")
    blocks = list(dict.fromkeys(data["block"]))
    if "output" in blocks:  # the model last, after the deepest block
        blocks = [b for b in blocks if b != "output"] + ["output"]
    table = data.pivot(index="epoch", columns="block", values="value")[blocks].sort_index()

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    else:
        if not isinstance(ax, (list, tuple, np.ndarray)) or len(ax) != 2:
            raise TypeError("`ax` must be a pair of matplotlib Axes (lines, heatmap); "
                            f"received {type(ax).__name__}.")
        axes = list(ax)
        fig = axes[0].figure

    line_ax, heat_ax = axes
    palette = sns.color_palette("viridis", n_colors=max(len(blocks) - ("output" in blocks), 1))
    i = 0
    for b in blocks:
        if b == "output":
            line_ax.plot(table.index, table[b], color="black", linestyle="--", marker="o", ms=3, label="output (model)")
        else:
            line_ax.plot(table.index, table[b], color=palette[i], marker="o", ms=3, label=b)
            i += 1
    line_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    line_ax.set_xlabel("epoch")
    line_ax.set_ylabel(metric)
    line_ax.set_title(f"{metric} per block (epoch 0 = before training)")
    line_ax.legend(fontsize="small", loc="best", ncol=1 if len(blocks) <= 8 else 2)

    if annot is None:
        annot = table.shape[0] <= 20 and table.shape[1] <= 12
    sns.heatmap(table, ax=heat_ax, annot=annot, fmt=".2f", cmap=cmap, cbar_kws={"label": metric})
    heat_ax.set_xlabel("block (shallow to deep)")
    heat_ax.set_ylabel("epoch")
    heat_ax.tick_params(axis="y", labelrotation=0)  # epoch numbers read horizontally, never overlap
    heat_ax.set_title(f"{metric}: epochs x blocks")
    if ax is None:
        fig.tight_layout()
    return fig
