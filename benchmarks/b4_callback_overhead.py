"""B4: overhead of ``InterpretationCallback`` while training the demo CNN.

The demo CNN (``keras_hybrid_interp.cli.demo_model``, compiled as in the demo)
trains on ``load_digits(16)`` (1347 training images, batch 32) twice in one
process, with identical seeds: model A without the callback, model B with
``InterpretationCallback((x_test, y_test), random_state=0)`` (default
settings, ``every=1``; the 450 test images are the validation subset). The
two trainings alternate in chunks of ``CHUNK`` epochs, so that a slow spell of
the machine hits both (the epoch times of this 2-core VM jump between about 0.2
and 0.5 s); the first chunk of each (tracing) is discarded.

Epoch time runs from ``on_epoch_begin`` of a callback placed first to
``on_epoch_end`` of a callback placed last, so it includes the
interpretation callback's ``on_epoch_end``. Reported:

* median epoch time without and with the callback, and their ratio
  (target: at most 1.10);
* the callback's own ``on_epoch_end`` time (median), as a fraction of the
  median epoch time without it;
* the one-off ``on_train_begin`` cost (side model, tracing, baseline record);
* the cost of one record for smaller ``max_samples``, and per epoch for
  ``every`` = 1, 2, 5 (derived), to document the trade-off;
* why the default refit is cheap: on a third training (15 epochs), the
  warm-started probes (defaults: 5 epochs at learning rate 0.01 per refit)
  against a fresh 100-epoch fit at every record (``fit_probes``' defaults),
  both scored against an L2 logistic regression (C=100, standardized
  features) fitted on the same probe-fit half: mean and worst gaps in
  evaluation accuracy and loss, and the cost of a record.

Run: ``python benchmarks/b4_callback_overhead.py`` (about 1.5 minutes on 2 CPU cores).
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import keras  # noqa: E402

from keras_hybrid_interp.callback import InterpretationCallback  # noqa: E402
from keras_hybrid_interp.cli import demo_model  # noqa: E402
from keras_hybrid_interp.datasets import load_digits  # noqa: E402

SEED, CHUNK, ROUNDS = 0, 1, 61  # 61 rounds of 1 epoch per arm; the first round is warm-up


class ColdRefit(InterpretationCallback):
    """Reference: every record fits the probes from zero (100 epochs), as fit_probes does."""

    def _record(self, epoch):
        self._probe_fits = None
        super()._record(epoch)


class LogisticReference(InterpretationCallback):
    """Reference: scikit-learn's L2 logistic regression on the same halves of the same features."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = []

    def _statistics(self, epoch, feats, probs):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        fit, ev = self.probe_fit_indices, self.eval_indices
        y = self.validation_subset[1]
        for name, f in zip(self._interp.block_names, feats):
            lr = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=20000)).fit(f[fit], y[fit])
            p = np.clip(lr.predict_proba(f[ev]), 1e-7, 1.0)
            self.rows += [(epoch, name, "accuracy", lr.score(f[ev], y[ev])),
                          (epoch, name, "loss", -np.mean(np.log(p[np.arange(len(ev)), y[ev]])))]
        return [], {}


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


class Timed(InterpretationCallback):
    """The callback, with its own hooks timed (no behaviour change)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.t_begin, self.t_epoch_end = [], []

    def on_train_begin(self, logs=None):
        t = time.perf_counter()
        super().on_train_begin(logs)
        self.t_begin.append(time.perf_counter() - t)

    def on_epoch_end(self, epoch, logs=None):
        t = time.perf_counter()
        super().on_epoch_end(epoch, logs)
        self.t_epoch_end.append(time.perf_counter() - t)


def compiled_model():
    keras.utils.set_random_seed(SEED)
    model = demo_model()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main():
    (x_train, y_train), (x_test, y_test) = load_digits(16, random_state=SEED)
    model_a, model_b = compiled_model(), compiled_model()
    cb = Timed((x_test, y_test), random_state=0)
    times = {"without": [], "with": []}
    clocks = {"without": {}, "with": {}}
    for r in range(ROUNDS):
        for arm, model in (("without", model_a), ("with", model_b)):
            clock = clocks[arm]
            extra = [cb] if arm == "with" else []
            recorded = []
            model.fit(x_train, y_train, batch_size=32, epochs=(r + 1) * CHUNK, initial_epoch=r * CHUNK, verbose=0,
                      callbacks=[EpochStart(clock)] + extra + [EpochEnd(clock, recorded)])
            if r > 0:
                times[arm] += recorded
    med_without = statistics.median(times["without"])
    med_with = statistics.median(times["with"])
    own = statistics.median(cb.t_epoch_end[CHUNK:])
    ratio = med_with / med_without
    paired = statistics.median(b / a for a, b in zip(times["without"], times["with"]))
    n_sub = len(cb.validation_subset[0])

    # Cost of one record against max_samples (same trained model B), sizes taken in turn so that
    # a slow spell of the machine hits all of them.
    sizes = (100, 200, 450)
    per_record = {m: [] for m in sizes}
    probes = {}
    for m in sizes:
        probes[m] = InterpretationCallback((x_test, y_test), max_samples=m, random_state=0)
        probes[m].set_model(model_b)
        probes[m].on_train_begin()
    for e in range(20):
        for m in sizes:
            t = time.perf_counter()
            probes[m].on_epoch_end(e, {})
            per_record[m].append(time.perf_counter() - t)
    per_record = {m: statistics.median(ts[2:]) for m, ts in per_record.items()}

    print(f"demo CNN {model_a.count_params()} params, {len(x_train)} training images, batch 32; validation "
          f"subset {n_sub} images; {len(times['without'])} timed epochs per arm ({ROUNDS - 1} rounds of {CHUNK}, "
          "after one warm-up round)")
    print()
    print("| | median epoch (ms) | mean epoch (ms) |")
    print("|---|---:|---:|")
    print(f"| without callback | {1e3 * med_without:.0f} | {1e3 * statistics.mean(times['without']):.0f} |")
    print(f"| with callback (defaults, every=1) | {1e3 * med_with:.0f} | {1e3 * statistics.mean(times['with']):.0f} |")
    print()
    print(f"epoch-time ratio with / without: ratio of medians {ratio:.3f}; median of the {len(times['with'])} "
          f"paired ratios (adjacent epochs) {paired:.3f}; ratio of means "
          f"{statistics.mean(times['with']) / statistics.mean(times['without']):.3f}  (target <= 1.10)")
    print(f"callback on_epoch_end, median: {1e3 * own:.1f} ms = {100 * own / med_without:.1f}% of the median "
          "epoch without it")
    print(f"one-off on_train_begin (side model, tracing, baseline record with the 100-epoch first probe fit): "
          f"{1e3 * cb.t_begin[0]:.0f} ms; later fit() calls: {1e3 * statistics.median(cb.t_begin[1:]):.1f} ms")
    print()
    print("| max_samples | record (ms) | every=1 (% of epoch) | every=2 | every=5 |")
    print("|---:|---:|---:|---:|---:|")
    for m, t in per_record.items():
        pct = [100 * t / e / med_without for e in (1, 2, 5)]
        print(f"| {m} | {1e3 * t:.1f} | {pct[0]:.1f}% | {pct[1]:.1f}% | {pct[2]:.1f}% |")
    # Warm start against a fresh fit at every record, on a third training.
    model_c = compiled_model()
    warm, cold = Timed((x_test, y_test), random_state=0), ColdRefit((x_test, y_test), random_state=0)
    ref = LogisticReference((x_test, y_test), random_state=0, correlation=False)
    cold_t = []
    cold_record = cold._record

    def timed_cold(epoch):
        t = time.perf_counter()
        cold_record(epoch)
        cold_t.append(time.perf_counter() - t)

    cold._record = timed_cold
    model_c.fit(x_train, y_train, batch_size=32, epochs=15, verbose=0, callbacks=[warm, cold, ref])
    ref_s = pd.DataFrame(ref.rows, columns=["epoch", "block", "metric", "value"]).set_index(
        ["epoch", "block", "metric"])["value"]
    print()
    print("Probes against L2 logistic regression on the same features (15 epochs + baseline, 3 blocks; "
          "gap = probe - logistic regression; accuracy in points):")
    print()
    print("| probes | accuracy gap: mean | worst | loss gap: mean | worst | record (ms, median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, c, ts in (("warm start (defaults: 5 epochs, lr 0.01)", warm, warm.t_epoch_end),
                         ("fresh 100-epoch fit at every record", cold, cold_t)):
        h = c.history
        h = h[(h.block != "output") & h.metric.isin(["accuracy", "loss"])].set_index(["epoch", "block", "metric"])
        gap = (h["value"] - ref_s).dropna().unstack("metric")
        later = gap.loc[gap.index.get_level_values("epoch") > 0]
        print(f"| {label} | {100 * later['accuracy'].mean():+.1f} | {100 * later['accuracy'].min():+.1f} | "
              f"{later['loss'].mean():+.3f} | {later['loss'].max():+.3f} | {1e3 * statistics.median(ts[2:]):.1f} |")
    base = gap.loc[0]
    print(f"(epochs 1-15; both share the baseline fit at epoch 0, whose gap is "
          f"{100 * base['accuracy'].mean():+.1f} points of accuracy on average)")

    last = cb.history.query("metric == 'accuracy'").pivot(index="epoch", columns="block", values="value").iloc[-1]
    print()
    print(f"models trained {len(cb.t_epoch_end)} epochs each; history rows: {len(cb.history)}; last record's "
          f"accuracy: " + ", ".join(f"{b} {v:.3f}" for b, v in last.items()))


if __name__ == "__main__":
    main()
