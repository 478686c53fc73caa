"""B2: Taylor importance against ablation (the loss change it approximates) and permutation.

Two trained models, no download:

* the digits CNN of the CLI (``keras_hybrid_interp.cli.demo_model``: conv16-pool-conv32-pool-conv48-GAP-dense)
  trained on scikit-learn's ``load_digits`` upsampled to 16x16;
* a small residual CNN (stem, two residual blocks with BatchNorm, a strided conv, GAP, dense) trained on
  ``make_synthetic`` (24x24 RGB, the class is the shape).

On held-out samples, the filters of each analysed block are scored by the three Taylor estimators
(``taylor="molchanov" | "abs_mean" | "abs_per_sample"``), by zero and mean ablation (``scoring="loss"``:
the increase of the mean cross-entropy when the filter's map is replaced) and by permutation
(``scoring="loss"``, 5 repeats). Prints the Spearman rank correlation of each Taylor estimator with each
reference, and the times (after a warm-up call that traces the passes).

Run: ``python benchmarks/b2_taylor_vs_permutation.py`` (a few minutes on 2 CPU cores).
"""

import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

from keras_hybrid_interp.cli import demo_model  # noqa: E402
from keras_hybrid_interp.datasets import load_digits, make_synthetic  # noqa: E402
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer  # noqa: E402
from keras_hybrid_interp.global_.importance import TAYLOR_VARIANTS  # noqa: E402

SEED = 0


def digits_model():
    (x_tr, y_tr), (x_te, y_te) = load_digits(16, test_size=0.3, random_state=SEED)
    keras.utils.set_random_seed(SEED)
    model = demo_model((16, 16, 1), 10)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=20, batch_size=32, verbose=0)
    return model, x_te, y_te, ["conv2", "conv3"]


def residual_model():
    x, y = make_synthetic(1600, factor="shape", image_size=24, random_state=SEED)
    x_tr, y_tr, x_te, y_te = x[:1100], y[:1100], x[1100:], y[1100:]
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((24, 24, 3))
    s = layers.Conv2D(32, 3, padding="same", name="stem")(inp)
    s = layers.BatchNormalization(name="stem_bn")(s)
    s = layers.ReLU(name="stem_relu")(s)
    for b in (1, 2):
        h = layers.Conv2D(32, 3, padding="same", activation="relu", name=f"b{b}_c1")(s)
        h = layers.Conv2D(32, 3, padding="same", name=f"b{b}_c2")(h)
        h = layers.BatchNormalization(name=f"b{b}_bn")(h)
        s = layers.ReLU(name=f"b{b}_out")(layers.Add(name=f"b{b}_add")([s, h]))
    h = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="down")(s)
    h = layers.GlobalAveragePooling2D()(h)
    out = layers.Dense(4, activation="softmax", name="head")(h)
    model = keras.Model(inp, out, name="residual_cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=12, batch_size=32, verbose=0)
    return model, x_te, y_te, ["b1_c1", "b2_out", "down"]


def rho(a, b):
    return float(spearmanr(a, b).statistic)


def analyse(name, model, x, y, blocks):
    acc = model.evaluate(x, y, verbose=0)[1]
    print(f"{name}: test accuracy {acc:.3f} on {len(x)} held-out images")
    ga = GlobalAnalyzer(model, blocks=blocks)
    rows = []
    for block in blocks:
        # Warm-up: builds and traces the prefix/tail once per block for each method.
        ga.filter_importance(x[:64], y[:64], block=block, n_repeats=1, random_state=SEED, scoring="loss")
        ga.filter_importance(x[:64], y[:64], block=block, method="taylor")
        times = {}
        t0 = time.perf_counter()
        zero = ga.filter_importance(x, y, block=block, method="ablation", scoring="loss")
        times["ablation"] = time.perf_counter() - t0
        mean = ga.filter_importance(x, y, block=block, method="ablation", ablation_value="mean", scoring="loss")
        t0 = time.perf_counter()
        perm = ga.filter_importance(x, y, block=block, n_repeats=5, random_state=SEED, scoring="loss")
        times["permutation"] = time.perf_counter() - t0
        perm2 = ga.filter_importance(x, y, block=block, n_repeats=5, random_state=SEED + 1, scoring="loss")
        for v in TAYLOR_VARIANTS:
            t0 = time.perf_counter()
            tay = ga.filter_importance(x, y, block=block, method="taylor", taylor=v)
            t = time.perf_counter() - t0
            est = tay.importances_mean
            rows.append((name, block, zero.importances.shape[0], v, rho(est, zero.importances_mean),
                         rho(est, np.abs(zero.importances_mean)), rho(est, mean.importances_mean),
                         rho(est, perm.importances_mean), t, times["ablation"], times["permutation"]))
        rows.append((name, block, zero.importances.shape[0], "(permutation, other seed)",
                     rho(perm2.importances_mean, zero.importances_mean), rho(perm2.importances_mean,
                     np.abs(zero.importances_mean)), rho(perm2.importances_mean, mean.importances_mean),
                     rho(perm2.importances_mean, perm.importances_mean), np.nan, np.nan, np.nan))
        print(f"  {block}: dead filters {zero.dead_filters.tolist()}")
    return rows


def main():
    warnings.simplefilter("ignore", UserWarning)  # dead filters and noise notes are listed instead
    rows = analyse("digits CNN", *digits_model())
    rows += analyse("residual CNN", *residual_model())
    print()
    print("| model | block | filters | estimator | Spearman ~ zero ablation | ~ abs(zero ablation) | "
          "~ mean ablation | ~ permutation | estimator s | zero ablation s | permutation s (5 repeats) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, b, c, v, rz, raz, rm, rp, t, ta, tp in rows:
        ts = "" if np.isnan(t) else f"{t:.2f} | {ta:.2f} | {tp:.2f}"
        print(f"| {m} | {b} | {c} | {v} | {rz:.2f} | {raz:.2f} | {rm:.2f} | {rp:.2f} | {ts or ' | | '} |")
    print()
    print("Mean Spearman over the blocks of both models:")
    for v in TAYLOR_VARIANTS:
        sel = [r for r in rows if r[3] == v]
        print(f"  {v}: zero ablation {np.mean([r[4] for r in sel]):.2f}, |zero ablation| "
              f"{np.mean([r[5] for r in sel]):.2f}, mean ablation {np.mean([r[6] for r in sel]):.2f}, "
              f"permutation {np.mean([r[7] for r in sel]):.2f}")


if __name__ == "__main__":
    main()
