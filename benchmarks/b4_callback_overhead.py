"""B4: cost of ``InterpretationCallback`` on the demo CNN, for each documented setting.

The demo CNN (``keras_hybrid_interp.cli.demo_model``, compiled as in the demo:
Adam 3e-3, batch 32) trains on ``load_digits(16)`` (1347 training images) for
``ROUNDS`` epochs, one ``fit`` call per epoch, with no interpretation callback
inside ``fit``: an epoch is timed from the ``on_epoch_begin`` of a callback
placed first to the ``on_epoch_end`` of a callback placed last. After every
epoch, the ``on_epoch_end`` hook of each of these callbacks (all attached to
the same model with ``set_model``, validation data = the 450 test images,
``random_state=0``) is called and timed directly, in an order that rotates
every epoch, so that a slow spell of the machine hits all of them:

* ``defaults``: ``InterpretationCallback((x_test, y_test))`` (``every=1``,
  ``max_samples=1000``, probes and correlation on, importance off);
* ``every=5``: records at epochs 5, 10, ... only;
* ``max_samples=200``: a 200-image subset;
* ``importance``: ``importance=ImportanceOptions(block=<deepest block>, n_repeats=3,
  top_k=5)`` (the README snippet; the deepest block is ``conv3``, 48 filters,
  so 144 permutations of the cached ``conv3`` maps go through the model tail);
* reference (not a setting): ``defaults`` with the probes fitted from zero at
  every record instead of warm-started, to show what the warm start saves;
* diagnostic (an accepted option, not a documented setting):
  ``probes=ProbeOptions(tol=1e-4)``, a looser L-BFGS gradient tolerance than the
  default 1e-6, with the largest difference of its probe metrics from the
  defaults' at the same epochs (same model, same subset);
* diagnostic (not a setting): ``defaults`` with the whole record run in one
  BLAS thread through one cached ``threadpoolctl`` controller, the fix proposed
  for the NumPy part of a record (the package's L-BFGS trainer builds a new
  ``threadpool_limits`` at every probe fit, about 10 ms each with TensorFlow
  loaded, and the correlations run in a multi-threaded BLAS that fights
  TensorFlow's spinning thread pool right after the pass).

The first epoch (tracing of the training step) and the first record of each
callback after it are discarded. Reported, per setting: the one-off
``on_train_begin`` (side model, tracing, baseline record); the median time of a
record; that as a fraction of the median training epoch of the same run; the
cost per epoch (a record every ``every`` epochs) as a fraction of the epoch;
and where a record's time goes (the model pass; probes, dead filters and
correlations in NumPy; the importance tail passes).

Tracing: the predict functions of every side model the callbacks use (the pass
models and the importance tail) are ``tf.function``\\ s; their tracing counts
after the first timed record and at the end are printed, with every message of
TensorFlow's logger that mentions retracing (captured with a logging handler
from the start; TensorFlow also prints them on stderr). On a backend other than
TensorFlow these lines are skipped.

Run: ``python benchmarks/b4_callback_overhead.py`` (about 1.5 minutes on 2 CPU cores).
"""

import contextlib
import logging
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402

from keras_hybrid_interp import callback as _callback
from keras_hybrid_interp.callback import ImportanceOptions, InterpretationCallback, ProbeOptions  # noqa: E402
from keras_hybrid_interp.cli import demo_model  # noqa: E402
from keras_hybrid_interp.core import trainer as _trainer  # noqa: E402
from keras_hybrid_interp.datasets import load_digits  # noqa: E402
from keras_hybrid_interp.local.interpreter import HybridInterpreter  # noqa: E402

SEED, ROUNDS = 0, 41  # 41 epochs; the first is warm-up
TARGET = 0.10  # the callback's cost per epoch, as a fraction of an epoch, that the defaults aim under


class Timed(InterpretationCallback):
    """The callback, with its hooks and the parts of a record timed (no behaviour change)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.t_begin = []
        self.parts = []  # one dict per record: pass, numpy, importance (seconds)
        self.iterations = []  # per record: list of L-BFGS iterations, one per probe fit

    def on_train_begin(self, logs=None):
        t = time.perf_counter()
        super().on_train_begin(logs)
        self.t_begin.append(time.perf_counter() - t)

    def _record(self, epoch):
        self.parts.append({})
        self.iterations.append([])
        saved = _callback.fit_probe

        def counted(*args, **kwargs):
            sol = saved(*args, **kwargs)
            self.iterations[-1].append(int(sol.n_iter))
            return sol

        _callback.fit_probe = counted
        try:
            super()._record(epoch)
        finally:
            _callback.fit_probe = saved

    def _timed(self, part, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.parts[-1][part] = self.parts[-1].get(part, 0.0) + time.perf_counter() - t
        return out

    def _forward(self):
        return self._timed("pass", super()._forward)

    def _statistics(self, *args):
        return self._timed("numpy", super()._statistics, *args)

    def _importance_rows(self, *args):
        return self._timed("importance", super()._importance_rows, *args)


class ColdStart(Timed):
    """Reference: every record fits the probes from zero (no warm start)."""

    def _record(self, epoch):
        self._probe_fits = None
        super()._record(epoch)


class OneBlasThread(Timed):
    """Diagnostic, not a setting: the defaults with the whole record in one BLAS thread, through one cached
    ``threadpoolctl`` controller (the package's trainer builds a new ``threadpool_limits`` per probe fit, and
    the correlations run in a multi-threaded BLAS right after the TensorFlow pass)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from threadpoolctl import ThreadpoolController

        self._ctl = ThreadpoolController()

    def _record(self, epoch):
        saved = getattr(_trainer, "_blas_single_thread", None)
        if saved is not None:
            _trainer._blas_single_thread = lambda work: contextlib.nullcontext()
        try:
            with self._ctl.limit(limits=1, user_api="blas"):
                super()._record(epoch)
        finally:
            if saved is not None:
                _trainer._blas_single_thread = saved


class EpochStart(keras.callbacks.Callback):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_epoch_begin(self, epoch, logs=None):
        self.clock["t0"] = time.perf_counter()


class EpochEnd(keras.callbacks.Callback):
    def __init__(self, clock, times):
        super().__init__()
        self.clock, self.times = clock, times

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.clock["t0"])


class Retracing(logging.Handler):
    """Keeps every message of TensorFlow's logger that mentions retracing."""

    def __init__(self):
        super().__init__()
        self.messages = []  # (phase, message)
        self.phase = "training"

    def emit(self, record):
        msg = record.getMessage()
        if "retracing" in msg:
            self.messages.append((self.phase, msg))


def compiled_model():
    keras.utils.set_random_seed(SEED)
    model = demo_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def observe_predict_functions():
    """Records every Keras predict function built from now on, with the callback whose hook built it.

    ``keras.Model.make_predict_function`` is wrapped (not the package's internals), so every side model the
    callbacks run is seen, wherever the package keeps it.
    """
    built = []  # [owner label, model name, tf.function]
    owner = {"label": None}
    original = keras.Model.make_predict_function

    def observed(self, force=False):
        before = self.predict_function
        out = original(self, force)
        if self.predict_function is not before and self.predict_function is not None:
            built.append((owner["label"], self.name, self.predict_function))
        return out

    keras.Model.make_predict_function = observed
    return built, owner


def tracing_counts(built):
    counts = {}
    for i, (label, name, fn) in enumerate(built):
        counts[(label, f"{name}[{i}]")] = fn.experimental_get_tracing_count()
    return counts


def main():
    tf_backend = keras.backend.backend() == "tensorflow"
    handler = Retracing()
    logging.getLogger("tensorflow").addHandler(handler)
    built, owner = observe_predict_functions() if tf_backend else ([], {})

    load_before = os.getloadavg()
    (x_train, y_train), (x_test, y_test) = load_digits(16, random_state=SEED)
    model = compiled_model()
    block = HybridInterpreter(model).blocks[-1].name
    importance = ImportanceOptions(block=block, n_repeats=3, top_k=5)
    settings = {
        "defaults": (Timed, {}),
        "every=5": (Timed, {"every": 5}),
        "max_samples=200": (Timed, {"max_samples": 200}),
        f'importance=ImportanceOptions(block="{block}", n_repeats=3, top_k=5)': (Timed, {"importance": importance}),
        "reference: defaults, probes fitted from zero at every record": (ColdStart, {}),
        'diagnostic: probes=ProbeOptions(tol=1e-4)': (Timed, {"probes": ProbeOptions(tol=1e-4)}),
    }
    try:
        import threadpoolctl  # noqa: F401

        settings["diagnostic: defaults, whole record in one BLAS thread (cached controller)"] = (OneBlasThread, {})
    except ImportError:  # pragma: no cover - scikit-learn brings it
        pass
    callbacks = {label: cls((x_test, y_test), random_state=0, **kw) for label, (cls, kw) in settings.items()}

    clock, epochs = {}, []
    hook = {label: [] for label in callbacks}  # (seconds, recorded?) per on_epoch_end call
    counts_first = None
    with warnings.catch_warnings():
        # The importance setting's health note (importances within noise) comes at every record; not timed here.
        warnings.filterwarnings("ignore", message=r".*permutation importance")
        for r in range(ROUNDS):
            recorded = []
            model.fit(x_train, y_train, batch_size=32, epochs=r + 1, initial_epoch=r, verbose=0,
                      callbacks=[EpochStart(clock), EpochEnd(clock, recorded)])
            if r == 0:
                handler.phase = "on_train_begin (baselines)"
                for label, cb in callbacks.items():
                    owner["label"] = label
                    cb.set_model(model)
                    cb.on_train_begin()
                handler.phase = "later epochs (training and records)"
                continue
            epochs += recorded
            labels = list(callbacks)
            k = r % len(labels)
            for label in labels[k:] + labels[:k]:
                cb = callbacks[label]
                owner["label"] = label
                before = cb._last_recorded
                t = time.perf_counter()
                cb.on_epoch_end(r)
                hook[label].append((time.perf_counter() - t, cb._last_recorded != before))
            if r == 1 and tf_backend:
                counts_first = tracing_counts(built)
    counts_last = tracing_counts(built) if tf_backend else None

    load_after = os.getloadavg()
    epoch = statistics.median(epochs)
    n_sub = {label: len(cb.validation_subset[0]) for label, cb in callbacks.items()}
    print(f"demo CNN {model.count_params()} params, {len(x_train)} training images, batch 32; "
          f"{len(epochs)} timed epochs (after one warm-up epoch); median epoch {1e3 * epoch:.0f} ms "
          f"(mean {1e3 * statistics.mean(epochs):.0f}, min {1e3 * min(epochs):.0f}, max {1e3 * max(epochs):.0f})")
    print("load average (1, 5, 15 min) before: " + ", ".join(f"{v:.2f}" for v in load_before)
          + "; after: " + ", ".join(f"{v:.2f}" for v in load_after) + f" ({os.cpu_count()} CPUs)")
    print()
    print("| setting | subset | on_train_begin (ms) | record (ms, median) | record / epoch | records | "
          "cost per epoch / epoch | pass | probes + correlation | importance |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, cb in callbacks.items():
        # The first record after the baseline is discarded (first call of each pass shape).
        rec = [t for t, did in hook[label] if did][1:]
        parts = cb.parts[2:]  # baseline record and the first record after it discarded
        per_rec = statistics.median(rec)
        per_epoch = sum(t for t, _ in hook[label][1:]) / len(hook[label][1:])

        def part(name, parts=parts):
            vals = [p.get(name, 0.0) for p in parts]
            return f"{1e3 * statistics.median(vals):.1f}" if any(vals) else "-"

        print(f"| {label} | {n_sub[label]} | {1e3 * cb.t_begin[0]:.0f} | {1e3 * per_rec:.1f} | "
              f"{100 * per_rec / epoch:.1f}% | {len(rec)} | {100 * per_epoch / epoch:.1f}% | {part('pass')} | "
              f"{part('numpy')} | {part('importance')} |")
    print()
    print("record / epoch: one record against the median training epoch of this run; cost per epoch: the mean "
          f"on_epoch_end time over all epochs (a record every `every` epochs) against it (target of the "
          f"defaults: at most {100 * TARGET:.0f}%). The parts are medians, so they need not add up exactly.")
    iters = {label: [n for rec in cb.iterations[2:] for n in rec] for label, cb in callbacks.items()}
    iters = {label: v for label, v in iters.items() if v}
    print()
    print("L-BFGS iterations per probe fit (median, max over the timed records and blocks): " + "; ".join(
        f"{label}: {statistics.median(v):.0f}, {max(v)}" for label, v in iters.items()))
    ref = callbacks["defaults"].history
    for label, cb in callbacks.items():
        if "tol" not in label:
            continue
        keyed = ["epoch", "block", "metric"]
        both = ref.merge(cb.history, on=keyed, suffixes=("", "_other"))
        both = both[both.block != "output"]
        gap = (both.value - both.value_other).abs().groupby(both.metric).max()
        print(f"{label} against the defaults, largest |difference| at the same epoch (all blocks): "
              + ", ".join(f"{m} {v:.2g}" for m, v in gap.items()))
    if tf_backend:
        print()
        print("tf.function tracing counts (after the first timed record -> after the last):")
        for key, n in counts_last.items():
            first = counts_first.get(key)
            flag = "" if first == n else ("   <-- NEW FUNCTION" if first is None else "   <-- RETRACED")
            print(f"  {key[0]} / {key[1]}: {first} -> {n}{flag}")
        print(f"TensorFlow log messages mentioning retracing: {len(handler.messages)}")
        for phase, msg in handler.messages:
            print(f"  during {phase}: " + msg[:160] + " ...")


if __name__ == "__main__":
    main()
