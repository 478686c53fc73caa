"""B5: scale - 50,000 generated images streamed through tf.data.

For N in (5,000, 20,000, 50,000), a FRESH subprocess builds the demo CNN
(``keras_hybrid_interp.cli.demo_model(input_shape=(32, 32, 3))``: conv16 -
pool - conv32 - pool - conv48 - GAP - dense10, blocks found automatically:
``pool1`` 16x16x16, ``pool2`` 8x8x32, ``conv3`` 8x8x48), trains it for one
epoch on 4,096 generated images (so that importance has something to
measure), and builds a ``tf.data`` pipeline that generates the N images on
the fly::

    tf.data.Dataset.range(N).map(image_and_label_from_index).batch(256).prefetch(2)

Image ``i`` is ``template[label_i] + 0.5 * noise_i`` (32x32x3, float32), with
``label_i`` and ``noise_i`` drawn by ``tf.random.stateless_*`` from seeds made
of ``i``, and ten fixed 32x32x3 class templates (120 KB). No N-sized array of
images is ever built. The subprocess then runs, timing each step:

1. ``GlobalAnalyzer.filter_correlation(ds, block="pool1")`` over all N images
   (streaming moments: memory O(C^2));
2. ``HybridInterpreter.fit_probes(ds)`` over all N images (one forward
   pass, then each probe is fitted to its optimum by L-BFGS on the cached
   pooled features: the cache is ``N x sum(C) x 4`` bytes = ``N x 96 x 4``,
   plus one block's standardized float64 copy at a time);
3. ``GlobalAnalyzer.filter_importance(ds, block="pool1", n_repeats=2,
   max_samples=2000)`` (permutation caches the ``pool1`` activations of the
   first 2,000 samples only: 2,000 x 16x16x16 x 4 bytes = 33 MB, whatever N).

Memory: peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (read after
each step, so the peak reached by the end of each step is known); the baseline
is the current RSS (``VmRSS`` of ``/proc/self/status``) right after imports,
model build and the 1-epoch training, before any analysis. The theoretical
sizes printed next to it are what holding the data would take: the N images
(``N x 32x32x3 x 4`` bytes), the ``pool1`` activations (``N x 16x16x16 x 4``)
and the probes' pooled-feature cache (``N x 96 x 4``).

After the peak is read, ``fit_probes`` runs once more under ``tracemalloc``
(untimed) to report what it holds at its own peak per sample.

Run: ``python benchmarks/b5_scale.py`` (about 2 minutes on 2 CPU cores).
"""

import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NS = (5_000, 20_000, 50_000)
BATCH = 256
BLOCK = "pool1"
MAX_SAMPLES = 2000

CHILD = r"""
import os, sys, json, time, resource
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {root!r})
import warnings
import numpy as np
import tensorflow as tf
import keras
from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer
from keras_hybrid_interp.cli import demo_model

N, BATCH, BLOCK, MAX_SAMPLES = int(sys.argv[1]), {batch}, {block!r}, {max_samples}
MB = 2.0 ** 20


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


keras.utils.set_random_seed(0)
TEMPLATES = tf.constant(np.random.default_rng(0).normal(size=(10, 32, 32, 3)).astype("float32"))


def sample(i, stream):
    # Image and label from the index alone (stateless RNG): nothing N-sized exists.
    s = tf.stack([tf.constant(stream, tf.int64), i])
    label = tf.random.stateless_uniform((), seed=s, minval=0, maxval=10, dtype=tf.int32)
    noise = tf.random.stateless_normal((32, 32, 3), seed=s + tf.constant([1, 0], tf.int64))
    return tf.gather(TEMPLATES, label) + 0.5 * noise, label


def dataset(n, stream):
    return (tf.data.Dataset.range(n)
            .map(lambda i: sample(i, stream), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(BATCH).prefetch(2))


model = demo_model(input_shape=(32, 32, 3))
model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
t0 = time.perf_counter()
hist = model.fit(dataset(4096, stream=1000), epochs=1, verbose=0)   # a separate stream of images
t_train = time.perf_counter() - t0
interp = HybridInterpreter(model)
ga = GlobalAnalyzer(interp)
ds = dataset(N, stream=0)
out = {{"n": N, "baseline_rss_mb": rss_mb(), "baseline_peak_mb": peak_mb(), "train_s": t_train,
        "train_acc": float(hist.history["accuracy"][-1]),
        "blocks": [[b.name, list(b.output_shape[1:])] for b in interp.blocks]}}

t0 = time.perf_counter()
corr = ga.filter_correlation(ds, block=BLOCK)
out.update(corr_s=time.perf_counter() - t0, corr_n=corr.n_samples, corr_peak_mb=peak_mb(), corr_rss_mb=rss_mb())

t0 = time.perf_counter()
interp.fit_probes(ds, verbose=0)
out.update(probes_s=time.perf_counter() - t0, probes_peak_mb=peak_mb(), probes_rss_mb=rss_mb(),
           probes_loss=[float(v) for v in interp.convergence_["loss"]],
           probes_iter=[int(v) for v in interp.convergence_["n_iter"]])

t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # an untrained-ish filter may be dead: not the point here
    imp = ga.filter_importance(ds, block=BLOCK, n_repeats=2, max_samples=MAX_SAMPLES, random_state=0)
out.update(imp_s=time.perf_counter() - t0, imp_n=imp.n_samples, imp_peak_mb=peak_mb(), imp_rss_mb=rss_mb(),
           imp_baseline=imp.baseline_score)
out["peak_rss_mb"] = peak_mb()

# Not timed, after the peak is read: the same fit_probes call again under
# tracemalloc (NumPy reports its buffers to it), to split what fit_probes
# holds at its peak from what the process keeps (TensorFlow, allocator).
import tracemalloc
tracemalloc.start()
interp.fit_probes(ds, verbose=0)
cur, tpeak = tracemalloc.get_traced_memory()
tracemalloc.stop()
out.update(probes_traced_peak_mb=tpeak / 1e6, probes_traced_after_mb=cur / 1e6)
print(json.dumps(out))
"""


def run(n):
    code = CHILD.format(root=os.path.dirname(HERE), batch=BATCH, block=BLOCK, max_samples=MAX_SAMPLES)
    proc = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child for N={n} failed with status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    import keras
    import tensorflow as tf  # noqa: F401  (versions only)

    print(f"python {platform.python_version()}, tensorflow {tf.__version__}, keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    rows = []
    for n in NS:
        t0 = time.perf_counter()
        r = run(n)
        r["wall_s"] = time.perf_counter() - t0
        rows.append(r)
        print(f"N={n}: done in {r['wall_s']:.0f} s", flush=True)
    r0 = rows[0]
    print("blocks:", ", ".join(f"{b} {'x'.join(map(str, s))}" for b, s in r0["blocks"]),
          f"| 1-epoch training on 4,096 images: {r0['train_s']:.1f} s, accuracy {r0['train_acc']:.3f}")
    sum_c = sum(s[-1] for _, s in r0["blocks"])
    hwc = next(s for b, s in r0["blocks"] if b == BLOCK)
    per_img, per_act = 32 * 32 * 3 * 4, hwc[0] * hwc[1] * hwc[2] * 4
    mb = 1e6
    print()
    print("| N | baseline RSS (MB) | peak RSS (MB) | peak - baseline (MB) | peak after corr / probes / importance (MB) "
          "| N images f32 (MB) | N x H x W x C of `pool1` (MB) | pooled cache N x sum(C) (MB) "
          "| correlation s | fit_probes s | importance s |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["n"]
        print(f"| {n:,} | {r['baseline_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | "
              f"{r['corr_peak_mb']:.0f} / {r['probes_peak_mb']:.0f} / {r['imp_peak_mb']:.0f} | "
              f"{n * per_img / mb:,.0f} | {n * per_act / mb:,.0f} | {n * sum_c * 4 / mb:.1f} | "
              f"{r['corr_s']:.1f} | {r['probes_s']:.1f} | {r['imp_s']:.1f} |")
    print()
    for r in rows:
        print(f"N={r['n']:,}: correlation n_samples={r['corr_n']}, importance n_samples={r['imp_n']} "
              f"(baseline accuracy {r['imp_baseline']:.3f}), probe training loss per block "
              f"{[round(v, 3) for v in r['probes_loss']]} after {r['probes_iter']} L-BFGS iterations; "
              f"current RSS after corr / probes / importance: {r['corr_rss_mb']:.0f} / {r['probes_rss_mb']:.0f} / "
              f"{r['imp_rss_mb']:.0f} MB")
    a, b = rows[0], rows[-1]
    dn = (b["n"] - a["n"]) / 10_000
    ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
    growth = (b["peak_rss_mb"] - a["peak_rss_mb"]) / dn
    probes_growth = ((b["probes_peak_mb"] - b["corr_peak_mb"]) - (a["probes_peak_mb"] - a["corr_peak_mb"])) / dn
    print(f"peak({b['n']:,}) / peak({a['n']:,}) = {ratio:.3f}; growth {growth:+.1f} MB per 10,000 images "
          f"(pooled cache alone: {10_000 * sum_c * 4 / mb:.2f} MB per 10,000; holding the images: "
          f"{10_000 * per_img / mb:.0f} MB, the `pool1` activations: {10_000 * per_act / mb:.0f} MB per 10,000)")
    print(f"peak-RSS step of fit_probes above correlation's: growth {probes_growth:+.1f} MB per 10,000 images")
    for r in rows:
        print(f"N={r['n']:,}: fit_probes traced (tracemalloc) peak {r['probes_traced_peak_mb']:.1f} MB = "
              f"{r['probes_traced_peak_mb'] * 1e6 / r['n']:.0f} B/sample (pooled cache: {sum_c * 4} B/sample), "
              f"still traced after it returns: {r['probes_traced_after_mb']:.1f} MB")


if __name__ == "__main__":
    main()
