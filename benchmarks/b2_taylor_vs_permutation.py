"""B2: Taylor importance against permutation importance on a trained CNN.

A small CNN is trained on scikit-learn's bundled ``load_digits`` (8x8 grey
images, 10 classes; no download). On the held-out split, the filters of a
block are ranked by permutation importance (``scoring="loss"``,
``n_repeats=5``), by first-order Taylor importance and by zero ablation.
Reports the time of each and the Spearman rank agreement.

Run: ``python benchmarks/b2_taylor_vs_permutation.py`` (about a minute on 2 CPU cores).
"""

import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

from keras_hybrid_interp.core.data import DataStream  # noqa: E402
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer  # noqa: E402
from keras_hybrid_interp.global_.importance import _per_sample_loss  # noqa: E402

SEED = 0


def per_sample_abs_taylor(ga, block, x, y):
    """Variant for comparison only (not the library's definition): mean_n |sum_hw a * dL_n/da|."""
    eng = ga._engine(ga.graph.resolve(block))
    loss = _per_sample_loss(ga._spec)
    total = np.zeros(eng.channels)
    for xb, yb in DataStream(x, y, batch_size=64):
        a = np.asarray(eng.prefix.predict_on_batch(xb))
        grad, _ = eng.input_gradient([a], loss, yb.astype(np.int32))
        total += np.abs(np.einsum("nhwc,nhwc->nc", a.astype(np.float64), grad.astype(np.float64))).sum(0)
    return total / len(x)


def main():
    keras.utils.set_random_seed(SEED)
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.3, random_state=SEED, stratify=d.target)
    inp = keras.Input((8, 8, 1))
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
    h = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(name="pool")(h)
    h = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(h)
    h = layers.GlobalAveragePooling2D()(h)
    out = layers.Dense(10, activation="softmax", name="head")(h)
    model = keras.Model(inp, out, name="digits_cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=30, batch_size=32, verbose=0)
    acc = model.evaluate(x_te, y_te, verbose=0)[1]
    print(f"digits CNN test accuracy {acc:.3f} on {len(x_te)} held-out images")

    ga = GlobalAnalyzer(model, blocks=["conv2", "conv3"])
    warnings.simplefilter("ignore", UserWarning)  # dead filters are listed in the table instead
    rows = []
    for block in ["conv2", "conv3"]:
        # Warm-up (builds and traces the prefix/tail once per block for both methods).
        ga.filter_importance(x_te[:64], y_te[:64], block=block, n_repeats=1, random_state=SEED, scoring="loss")
        ga.filter_importance(x_te[:64], y_te[:64], block=block, method="taylor")
        t0 = time.perf_counter()
        perm = ga.filter_importance(x_te, y_te, block=block, n_repeats=5, random_state=SEED, scoring="loss")
        t_perm = time.perf_counter() - t0
        t0 = time.perf_counter()
        tay = ga.filter_importance(x_te, y_te, block=block, method="taylor")
        t_tay = time.perf_counter() - t0
        t0 = time.perf_counter()
        abl = ga.filter_importance(x_te, y_te, block=block, method="ablation", scoring="loss")
        t_abl = time.perf_counter() - t0
        perm2 = ga.filter_importance(x_te, y_te, block=block, n_repeats=5, random_state=SEED + 1, scoring="loss")
        abs_t = per_sample_abs_taylor(ga, block, x_te, y_te)
        rho_pp = spearmanr(perm.importances_mean, perm2.importances_mean).statistic
        rho_abs = spearmanr(abs_t, perm.importances_mean).statistic
        rho_tp = spearmanr(tay.importances_mean, perm.importances_mean).statistic
        rho_ap = spearmanr(abl.importances_mean, perm.importances_mean).statistic
        rho_ta = spearmanr(tay.importances_mean, abl.importances_mean).statistic
        top = 10
        overlap = len(set(perm.ranking[:top]) & set(tay.ranking[:top]))
        print(f"{block}: dead filters (same map on every test image): {perm.dead_filters.tolist()}")
        rows.append((block, perm.importances.shape[0], t_perm, t_tay, t_abl, rho_tp, rho_ap, rho_ta, overlap, rho_pp, rho_abs))

    print()
    print("| block | filters | permutation s (5 repeats) | taylor s | ablation s | perm/taylor time | "
          "Spearman taylor~perm | Spearman ablation~perm | Spearman taylor~ablation | top-10 overlap taylor/perm | "
          "Spearman perm~perm (other seed) | Spearman per-sample-abs taylor~perm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, c, tp, tt, ta, r1, r2, r3, ov, rpp, rabs in rows:
        print(f"| {b} | {c} | {tp:.2f} | {tt:.2f} | {ta:.2f} | {tp / tt:.1f}x | {r1:.2f} | {r2:.2f} | {r3:.2f} | "
              f"{ov}/10 | {rpp:.2f} | {rabs:.2f} |")


if __name__ == "__main__":
    main()
