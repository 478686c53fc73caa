"""B1: permutation importance of every filter of a middle block of a ResNet-style CNN.

Compares, in one run and on the same permutations:

* ``engine``: ``GlobalAnalyzer.filter_importance`` (prefix once, cached
  frontier, tail-only passes with stacked perturbations), end to end
  (model building, prefix pass, baseline and tracing included);
* ``naive``: for every filter and repeat, set the permutation in a
  perturbation layer inserted in the full model and call ``model.predict``
  on the full model (N samples);
* ``lower bound``: ``C x n_repeats`` passes of a pre-built, already traced
  tail model over the N cached samples, without any perturbation work.

Targets: naive / engine >= 5, engine / lower bound <= 1.5.
The importances of the engine and the naive loop must be identical.

Run: ``python benchmarks/b1_permutation_engine.py`` (about 5 minutes on 2 CPU cores).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from keras_hybrid_interp.core.data import DataStream  # noqa: E402
from keras_hybrid_interp.core.engine import TailEngine, job_permutation  # noqa: E402
from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer  # noqa: E402

N, N_REPEATS, SEED = 512, 5, 0


def res_block(x, filters, stride, name):
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu", name=f"{name}_conv1")(x)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    if stride != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_proj")(x)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))


def resnet(input_shape=(32, 32, 3), classes=10):
    inp = keras.Input(input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="stem")(inp)
    x = res_block(x, 32, 1, "s1b1")
    x = res_block(x, 32, 1, "s1b2")
    x = res_block(x, 64, 2, "s2b1")
    x = res_block(x, 64, 1, "s2b2")  # the middle block analysed (64 filters, 16x16)
    x = res_block(x, 128, 2, "s3b1")
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="resnet_b1")


class SetPerm(layers.Layer):
    """Perturbation layer for the naive loop: channel mask and permutation held in variables."""

    def __init__(self, n, c, **kw):
        super().__init__(**kw)
        self.perm = self.add_weight(shape=(n,), dtype="int32", initializer="zeros", trainable=False, name="perm")
        self.mask = self.add_weight(shape=(c,), dtype="bool", initializer="zeros", trainable=False, name="mask")

    def call(self, x):
        return ops.where(self.mask, ops.take(x, self.perm, axis=0), x)


def macs(model_or_tail):
    """Multiply-accumulates per sample of the convolutions and dense layers."""
    total = 0
    for layer in model_or_tail.layers:
        if isinstance(layer, (layers.Conv2D, layers.Dense)):
            k = layer.kernel.shape
            out = layer.output.shape
            total += int(np.prod(k)) * int(np.prod(out[1:-1]) if len(out) > 2 else 1)
    return total


def main():
    keras.utils.set_random_seed(SEED)
    model = resnet()
    x = np.random.default_rng(SEED).normal(size=(N, 32, 32, 3)).astype("float32")
    block = "s2b2_out"
    ga = GlobalAnalyzer(model, blocks=[block])
    g = ga.graph
    key = g.resolve(block)
    c = int(g.tensors[key].shape[-1])
    jobs = c * N_REPEATS
    print(f"model {model.name}: {model.count_params()} params; block {block!r} {g.tensors[key].shape}; "
          f"N={N}, n_repeats={N_REPEATS}, {jobs} perturbations")

    # --- engine, end to end -------------------------------------------------
    t0 = time.perf_counter()
    res = ga.filter_importance(x, None, block=block, n_repeats=N_REPEATS, random_state=SEED, batch_size=128)
    t_engine = time.perf_counter() - t0
    eng = ga._engine(key)
    p, b = eng.plan(N, jobs)
    print(f"engine plan: {p} perturbations x {b} samples per forward pass; frontier = "
          f"{[g.tensors[k].name for k in eng.frontier]}")

    # --- lower bound: pre-built, traced tail, C x n_repeats passes -----------
    tail = g.build(g.output_keys, inputs=g.frontier(key))
    cache = TailEngine(g, key).cache(DataStream(x, batch_size=128))
    feed = cache.arrays if len(cache.arrays) > 1 else cache.arrays[0]
    tail.predict_on_batch(feed)  # trace
    t0 = time.perf_counter()
    for _ in range(jobs):
        tail.predict_on_batch(feed)
    t_lower = time.perf_counter() - t0

    # --- naive loop: full model per filter and repeat ----------------------
    inp = keras.Input((32, 32, 3))
    vals = dict(g.replay({g.input_keys[0]: inp}, g.frontier(key)))
    pert = SetPerm(N, c)
    vals[key] = pert(vals[key])
    full = keras.Model(inp, g.replay(vals, g.output_keys)[g.output_keys[0]])
    own = np.argmax(model.predict(x, batch_size=N, verbose=0), axis=1)
    naive = np.empty((c, N_REPEATS))
    t0 = time.perf_counter()
    base = np.mean(np.argmax(model.predict(x, batch_size=N, verbose=0), axis=1) == own)
    for ch in range(c):
        mask = np.zeros(c, bool)
        mask[ch] = True
        pert.mask.assign(mask)
        for r in range(N_REPEATS):
            pert.perm.assign(job_permutation(res.random_state, ch, r, N).astype("int32"))
            out = full.predict(x, batch_size=N, verbose=0)
            naive[ch, r] = base - np.mean(np.argmax(out, axis=1) == own)
    t_naive = time.perf_counter() - t0

    same = np.array_equal(naive, res.importances)
    tail_macs, full_macs = macs(tail), macs(model)
    print()
    print("| method | seconds | per perturbation (ms) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| naive loop (full model.predict per filter x repeat) | {t_naive:.1f} | {1e3 * t_naive / jobs:.1f} | "
          f"naive / engine = {t_naive / t_engine:.2f}x |")
    print(f"| engine (GlobalAnalyzer.filter_importance, end to end) | {t_engine:.1f} | {1e3 * t_engine / jobs:.1f} | 1 |")
    print(f"| lower bound (C x n_repeats traced tail passes) | {t_lower:.1f} | {1e3 * t_lower / jobs:.1f} | "
          f"engine / lower bound = {t_engine / t_lower:.2f}x |")
    print()
    print(f"tail MACs / full-model MACs per sample: {tail_macs / 1e6:.1f}M / {full_macs / 1e6:.1f}M "
          f"= {tail_macs / full_macs:.2f}")
    print(f"engine importances == naive importances (same permutations): {same}")
    print(f"targets: naive/engine >= 5: {t_naive / t_engine >= 5}; engine/lower <= 1.5: {t_engine / t_lower <= 1.5}")


if __name__ == "__main__":
    main()
