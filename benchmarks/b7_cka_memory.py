"""B7: memory and time of layer similarity (CKA), full vs minibatch estimator, on ResNet50.

Model: ``keras.applications.ResNet50(weights=None, include_top=False)`` at
``SIZE`` x ``SIZE`` pixels, nested in a transfer-learning model (GAP and
Dense(10)), with the analyzer's automatic blocks (17 blocks, sum C = 15,168).
``N`` random images, batch size ``B`` (also the minibatch size).

Each estimator runs in a fresh subprocess, which first runs ``model.predict``
over the same images (its peak RSS is the baseline, the model's own memory),
then ``GlobalAnalyzer.layer_similarity(x, estimator=...)``. Reported: wall
time of the call and as a multiple of the ``model.predict`` time measured in
the same process, the peak RSS of the process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), the peak above the
``predict`` peak, and what the estimator's accumulator holds by its
definition: ``(sum C)^2`` float64 for "full", one ``B x B`` float64 Gram per
block and ``L x L`` sums for "minibatch".

Run: ``python benchmarks/b7_cka_memory.py [--size 64] [--n 64] [--batch 32]``
(about 2 minutes on 2 CPU cores; the full estimator needs about 6.5 GB of RAM).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import os, sys, json, time, resource, warnings
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {root!r})
import numpy as np
import keras
from keras import layers
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer

estimator, size, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keras.utils.set_random_seed(0)
inp = keras.Input((size, size, 3))
backbone = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(size, size, 3), name="backbone")
h = layers.GlobalAveragePooling2D()(backbone(inp))
model = keras.Model(inp, layers.Dense(10, activation="softmax")(h), name="transfer")
x = np.random.default_rng(0).random((n, size, size, 3), dtype=np.float32)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model.predict(x[:batch], batch_size=batch, verbose=0)  # compile
t0 = time.perf_counter()
model.predict(x, batch_size=batch, verbose=0)
t_predict = time.perf_counter() - t0
rss_predict = rss()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ga = GlobalAnalyzer(model, batch_size=batch)
    t0 = time.perf_counter()
    res = ga.layer_similarity(x, estimator=estimator)
    dt = time.perf_counter() - t0
sizes = [b.filters for b in ga.blocks]
L, sum_c = len(sizes), int(sum(sizes))
acc = sum_c ** 2 * 8 if estimator == "full" else (L * batch * batch + L * L) * 8
print(json.dumps({{"estimator": estimator, "blocks": L, "sum_c": sum_c, "seconds": dt, "predict_s": t_predict,
                  "peak_rss_mb": rss(), "predict_rss_mb": rss_predict, "accumulator_mb": acc / 2 ** 20,
                  "values": np.asarray(res.values).tolist()}}))
"""


def run(estimator, size, n, batch):
    code = CHILD.format(root=os.path.dirname(HERE))
    out = subprocess.run([sys.executable, "-c", code, estimator, str(size), str(n), str(batch)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"estimator": estimator, "failed": out.stderr.strip().splitlines()[-1:] or [f"rc {out.returncode}"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    rows = [run(e, args.size, args.n, args.batch) for e in ("minibatch", "full")]
    ok = [r for r in rows if "failed" not in r]
    if ok:
        r0 = ok[0]
        print(
            f"ResNet50 {args.size}x{args.size}, N={args.n}, batch={args.batch}: {r0['blocks']} blocks, "
            f"sum C = {r0['sum_c']:,}; model.predict {r0['predict_s']:.1f} s, peak RSS {r0['predict_rss_mb']:.0f} MiB"
        )
    print(
        "| estimator | layer_similarity s | x predict | peak RSS (MiB) "
        "| above predict's peak (MiB) | accumulator (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['estimator']} | failed: {r['failed']} | | | | |")
            continue
        print(f"| {r['estimator']} | {r['seconds']:.1f} | {r['seconds'] / r['predict_s']:.1f} | {r['peak_rss_mb']:.0f} "
              f"| {r['peak_rss_mb'] - r['predict_rss_mb']:.0f} | {r['accumulator_mb']:.2f} |")
    if len(ok) == 2:
        import numpy as np

        a, b = (np.asarray(r["values"]) for r in ok)
        mb, full = ok[0], ok[1]
        above = (full["peak_rss_mb"] - full["predict_rss_mb"]) / max(mb["peak_rss_mb"] - mb["predict_rss_mb"], 1)
        print(
            f"peak above predict's: full / minibatch = {above:.0f}x; "
            f"time full / minibatch = {full['seconds'] / mb['seconds']:.2f}x"
        )
        print(f"CKA, minibatch - full (different estimators): mean |diff| = {np.nanmean(np.abs(a - b)):.3f}, "
              f"max = {np.nanmax(np.abs(a - b)):.3f}")


if __name__ == "__main__":
    main()
