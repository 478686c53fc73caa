"""B3: filter_correlation memory does not grow with the number of samples.

Each N runs in a fresh subprocess that streams a generated ``tf.data``
dataset (or a ``keras.utils.PyDataset``) of N images, 100 per batch, through
``GlobalAnalyzer.filter_correlation`` and reports its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). Target: peak RSS at
N = 20,000 within 100 MB of peak RSS at N = 2,000. For scale, the
activations of the analysed block for N = 20,000 would take
``N x 32 x 32 x 64 x 4`` bytes = 5.2 GB if they were held.

Run: ``python benchmarks/b3_correlation_memory.py`` (about 2 minutes on 2 CPU cores).
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import os, sys, json, time, resource
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {root!r})
import numpy as np
import tensorflow as tf
import keras
from keras import layers
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer

n, kind = int(sys.argv[1]), sys.argv[2]
keras.utils.set_random_seed(0)
inp = keras.Input((32, 32, 3))
h = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
h = layers.Conv2D(64, 3, padding="same", activation="relu", name="block")(h)
h = layers.GlobalAveragePooling2D()(h)
model = keras.Model(inp, layers.Dense(10, activation="softmax")(h))
B = 100
if kind == "tf.data":
    ds = tf.data.Dataset.range(n).batch(B).map(
        lambda i: tf.random.stateless_normal((tf.shape(i)[0], 32, 32, 3),
                                             seed=tf.stack([tf.constant(0, tf.int64), i[0]])))
else:
    class Gen(keras.utils.PyDataset):
        def __len__(self):
            return (n + B - 1) // B
        def __getitem__(self, i):
            m = min(B, n - i * B)
            return np.random.default_rng(i).normal(size=(m, 32, 32, 3)).astype("float32")
    ds = Gen()
ga = GlobalAnalyzer(model, blocks=["block"])
t0 = time.perf_counter()
res = ga.filter_correlation(ds, block="block")
dt = time.perf_counter() - t0
print(json.dumps({{"n": res.n_samples, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": dt, "finite": bool(np.isfinite(res.values).all())}}))
"""


def run(n, kind):
    code = CHILD.format(root=os.path.dirname(HERE))
    out = subprocess.run([sys.executable, "-c", code, str(n), kind], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    rows = []
    for kind in ["tf.data", "PyDataset"]:
        for n in [2000, 20000]:
            t0 = time.perf_counter()
            r = run(n, kind)
            r["kind"] = kind
            r["wall"] = time.perf_counter() - t0
            rows.append(r)
    print("| stream | N | peak RSS (MB) | filter_correlation s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['n']} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} |")
    for kind in ["tf.data", "PyDataset"]:
        a, b = [r for r in rows if r["kind"] == kind]
        d = b["peak_rss_mb"] - a["peak_rss_mb"]
        print(f"{kind}: peak RSS(N=20,000) - peak RSS(N=2,000) = {d:+.0f} MB (target <= 100 MB: {d <= 100})")


if __name__ == "__main__":
    main()
