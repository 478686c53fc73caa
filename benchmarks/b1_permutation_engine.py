"""B1: permutation importance of every filter of a middle block of a ResNet-style CNN, on TF, JAX and torch.

Permutation importance (agreement with the model's own predictions) of the C = 64 filters of
``s2b2_out`` (16x16x64), N images, R repeats: C x R perturbations. Each backend runs in its own
subprocess (``KERAS_BACKEND``); the weights are built once with a seed, saved to a ``.weights.h5``
in a temporary folder and loaded by every backend; the images come from one seeded NumPy
generator. The random-init head is re-scaled once (on other images) so that the predictions spread
over the 10 classes: with the raw head the model predicts one class for 99 % of the images and
every importance would be 0.

Arms, all measured in the same run on each backend:

* ``engine``: ``GlobalAnalyzer(model).filter_importance(x, perturbations_per_eval="auto")``, end to
  end: analyzer, tail building, the prefix pass, the stacking calibration, the baseline and every
  trace or compile included.
* ``bound``: the minimum over batch sizes B (8, 16, ..., 4096) of the time per sample of the tail
  alone (a pre-built, already traced tail model, ``predict_on_batch`` on cached activations, no
  perturbation work), times C x R x N. Stacking perturbations is a batch size, so no plan of the
  engine can beat it; it leaves out the prefix pass the engine needs too.
* ``naive tail loop``: what a user writes: a tail-only ``keras.Model`` from the block's output
  (and the skip tensors that cross the cut: none at this block) to the model output, made of the
  model's own layers; the activations computed once by a prefix model; per perturbation, one
  channel permuted in NumPy and one compiled call ``tail.predict_on_batch`` on the N samples.
  Its setup (models built, activations, baseline) is timed once; the loop runs on ``K_NAIVE``
  filters x R and is extrapolated to C filters (each perturbation costs the same).
* ``full-model loop``: a perturbation layer (channel mask and permutation in variables) inserted in
  the full model, ``model.predict`` over the N images per perturbation; run on ``K_FULL`` filters x R
  (after one untimed call that traces it) and extrapolated to C filters.
* ``Captum`` (torch, where captum is installed): ``captum.attr.LayerFeaturePermutation`` on the
  Keras model (a ``torch.nn.Module`` on this backend), hooked on the block layer, forward =
  agreement with the model's own predictions over the N images (a batch metric, for which Captum
  requires ``perturbations_per_eval=1``). Run on ``K_CAPTUM`` filters (a layer mask with one group
  per filter and one group for the other filters) for one repeat; it makes ``2 + groups`` full
  forward passes (the layer's activations, the baseline, one per group), counted, so the full run
  is extrapolated as R x (C + 2) forward passes.
* diagnostics: the engine's time inside tail passes (its ``predict_on_batch`` wrapped with a
  timer) against the rest; and, alternated in one loop so that the machine's load drifts alike
  for all, on ``K_PLAN`` filters x R: the engine's tail passes (``TailEngine.run``) with the
  stacking ``"auto"`` used before calibration (as many perturbations as the 512 MiB budget
  allows), with the calibrated plan, and bare tail passes of the calibrated shape and of the
  sweep's best batch size over the same samples.

Targets: engine / bound <= 1.2 on every backend; Captum / engine >= 10 on the same model (torch).
Checks: the engine's importances equal the naive tail loop's and the full-model loop's (same
permutations, ``job_permutation``); the model's outputs agree across backends.

Run: ``python benchmarks/b1_permutation_engine.py [--backends tensorflow,jax,torch] [--quick]``
(``pip install '.[bench]'`` for torch and Captum). ``--quick`` or ``B1_QUICK=1``: tiny
settings (N = 64, R = 2, fewer batch sizes and filters, calibration forced with
``CALIBRATE_MIN_WORK = 0``) to validate the script in a minute or two; its timings mean nothing.
"""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

BLOCK, SEED = "s2b2_out", 0
FULL = dict(N=512, R=5, K_NAIVE=16, K_FULL=2, K_CAPTUM=2, K_PLAN=2, SIZES=[2**k for k in range(3, 13)],
            ROUNDS=3, ROUNDS_PAIRED=3)
QUICK = dict(N=64, R=2, K_NAIVE=8, K_FULL=1, K_CAPTUM=1, K_PLAN=2, SIZES=[8, 32, 128], ROUNDS=1,
             ROUNDS_PAIRED=1)
BACKENDS = ("tensorflow", "jax", "torch")


# ----------------------------------------------------------------------
# The model (built the same way in every backend)
# ----------------------------------------------------------------------
def res_block(x, filters, stride, name):
    from keras import layers

    y = layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu", name=f"{name}_conv1")(x)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    if stride != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_proj")(x)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))


def resnet(input_shape=(32, 32, 3), classes=10):
    import keras
    from keras import layers

    inp = keras.Input(input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="stem")(inp)
    x = res_block(x, 32, 1, "s1b1")
    x = res_block(x, 32, 1, "s1b2")
    x = res_block(x, 64, 2, "s2b1")
    x = res_block(x, 64, 1, "s2b2")  # the middle block analysed (64 filters, 16x16)
    x = res_block(x, 128, 2, "s3b1")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="resnet_b1")


def images(n, seed=SEED):
    import numpy as np

    return np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype("float32")


def make_weights(path):
    """Seeded random init; the head standardises its logits on 256 other images; saved to ``path``."""
    import numpy as np

    import keras

    keras.utils.set_random_seed(SEED)
    model = resnet()
    xc = images(256, seed=SEED + 1)
    f = np.asarray(keras.Model(model.input, model.get_layer("gap").output).predict(xc, batch_size=128, verbose=0),
                   dtype=np.float64)
    w = np.random.default_rng(SEED).normal(size=(f.shape[1], 10)) * 2 / (f.std(axis=0)[:, None] + 1e-6)
    model.get_layer("head").set_weights([w.astype("float32"), (-(f.mean(axis=0) @ w)).astype("float32")])
    model.save_weights(path)


def macs(model):
    """Multiply-accumulates per sample of the convolutions and dense layers."""
    import numpy as np

    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.Dense)):
            out = layer.output.shape
            total += int(np.prod(layer.kernel.shape)) * int(np.prod(out[1:-1]) if len(out) > 2 else 1)
    return total


def run_captum(model, layer, x, own, c, k):
    """Captum's ``LayerFeaturePermutation`` on ``layer`` (torch backend): filters ``0..k-1`` one group each, the
    other ``c - k`` filters one group; forward = agreement with the model's own predictions ``own`` over ``x``.

    Returns (seconds, forward passes made, attributions as NumPy).
    """
    import numpy as np

    import torch
    from captum.attr import LayerFeaturePermutation

    own_t, calls = torch.as_tensor(own), [0]

    def forward(t):
        calls[0] += 1
        return (torch.argmax(model(t, training=False), dim=1) == own_t).float().mean()

    lfp = LayerFeaturePermutation(forward, model.get_layer(layer))
    mask = torch.as_tensor(np.minimum(np.arange(c), k)).reshape(1, 1, 1, c)
    t0 = time.perf_counter()
    attr = lfp.attribute(torch.as_tensor(x), layer_mask=mask)
    return time.perf_counter() - t0, calls[0], np.asarray(attr.detach().cpu().numpy())


# ----------------------------------------------------------------------
# One backend (child process)
# ----------------------------------------------------------------------
def user_tail(model):
    """The tail after ``s2b2_out`` as a user writes it: the model's own layers on a fresh input."""
    import keras

    L = model.get_layer
    inp = keras.Input(tuple(L(BLOCK).output.shape[1:]))
    y = L("s3b1_conv2")(L("s3b1_conv1")(inp))
    z = L("s3b1_out")(L("s3b1_add")([L("s3b1_proj")(inp), y]))
    return keras.Model(inp, L("head")(L("gap")(z)), name="user_tail")


def child(backend, weights, cfg, quick):
    import numpy as np

    import keras
    from keras import layers, ops

    from keras_hybrid_interp.core import data_pass as _pass
    from keras_hybrid_interp.core import perturbation as _perturbation
    from keras_hybrid_interp.core import plan as _plan
    from keras_hybrid_interp.core.data import DataStream
    from keras_hybrid_interp.core.engine import TailEngine
    from keras_hybrid_interp.core.perturbation import Job, job_permutation
    from keras_hybrid_interp.core.reducers import FrontierCache
    from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    if backend == "tensorflow":  # the sweep's batch sizes retrace on purpose; TF would warn about it
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    if quick:
        _plan.CALIBRATE_MIN_WORK = 0  # so that quick mode exercises the calibration
    N, R = cfg["N"], cfg["R"]
    out = {"backend": backend, "rows": {}, "info": {}}
    keras.utils.set_random_seed(SEED)
    model = resnet()
    model.load_weights(weights)
    x = images(N)
    out["probe_outputs"] = np.asarray(model.predict_on_batch(x[:64])).tolist()

    # --- bound: min over batch sizes of the tail's time per sample ---------
    # One round of the sweep before the engine, the others after it: the machine's load drifts, and
    # the minimum over both sides is the tighter (harder) bound.
    g0 = GlobalAnalyzer(model, blocks=[BLOCK]).graph
    key0 = g0.resolve(BLOCK)
    tail = g0.build(g0.output_keys, inputs=g0.frontier(key0))
    red = FrontierCache(TailEngine(g0, key0))
    _pass.run(g0, DataStream(x, batch_size=128), [red])
    cache = red.result()
    acts = cache.arrays[0]
    feeds = {B: np.concatenate([acts] * math.ceil(B / N), axis=0)[:B] for B in cfg["SIZES"]}
    for B in cfg["SIZES"]:
        tail.predict_on_batch(feeds[B])  # trace / compile
    per_sample = {B: math.inf for B in cfg["SIZES"]}

    def sweep():
        for B in cfg["SIZES"]:
            k = max(1, math.ceil(512 / B)) if not quick else 2
            t0 = time.perf_counter()
            for _ in range(k):
                tail.predict_on_batch(feeds[B])
            per_sample[B] = min(per_sample[B], (time.perf_counter() - t0) / (k * B))

    load = [os.getloadavg()[0]]
    sweep()

    # --- engine, end to end ------------------------------------------------
    # The engine's predict_on_batch (its runs' in core/perturbation.py, its calibration's in core/plan.py)
    # is wrapped with a timer: the time inside tail passes (calibration included) splits the end-to-end
    # time from the rest (analyzer, prefix pass, NumPy perturbation and scoring).
    real_pob = _perturbation.predict_on_batch
    in_tail = [0.0, 0]

    def timed_pob(m, feed):
        t = time.perf_counter()
        r_ = real_pob(m, feed)
        in_tail[0] += time.perf_counter() - t
        in_tail[1] += 1
        return r_

    _perturbation.predict_on_batch = _plan.predict_on_batch = timed_pob
    t0 = time.perf_counter()
    ga = GlobalAnalyzer(model, blocks=[BLOCK])
    res = ga.filter_importance(x, block=BLOCK, n_repeats=R, random_state=SEED, batch_size=128)
    t_engine = time.perf_counter() - t0
    _perturbation.predict_on_batch = _plan.predict_on_batch = real_pob
    out["info"]["engine_in_tail"] = in_tail
    g = ga.graph
    key = g.resolve(BLOCK)
    eng = ga._engine(key)
    C = eng.channels
    jobs = C * R
    work = jobs * N
    cal = eng.calibrations.get((N, _plan.DEFAULT_MEMORY_BUDGET))
    plan = eng.plan(N, jobs)
    out["info"].update(C=C, jobs=jobs, plan=list(plan), frontier=[g.tensors[k].name for k in eng.frontier],
                       calibration=None if cal is None else {
                           "wall": cal.wall, "plan": list(cal.plan),
                           "candidates": [[p, b, cal.pass_seconds[(p, b)], cal.seconds[(p, b)]]
                                          for (p, b) in cal.seconds]})
    out["importances"] = res.importances.tolist()
    out["rows"]["engine"] = t_engine
    print(f"[{backend}] engine {t_engine:.1f} s, plan {plan}", flush=True)

    load.append(os.getloadavg()[0])
    for _ in range(cfg["ROUNDS"] - 1):
        sweep()
    best_B = min(per_sample, key=per_sample.get)
    out["rows"]["bound"] = per_sample[best_B] * work
    out["info"]["bound_sweep_us"] = {str(B): 1e6 * v for B, v in per_sample.items()}
    out["info"]["bound_B"] = best_B
    print(f"[{backend}] bound {out['rows']['bound']:.1f} s (B = {best_B})", flush=True)

    # --- paired diagnostics (alternated, so that the machine's load drifts alike for all) --------
    # The engine's tail passes with the memory plan (the former "auto") and with the calibrated
    # plan, on the same K_PLAN x R jobs, against bare tail passes of the calibrated shape and of the
    # sweep's best batch size over the same samples.
    kp = min(cfg["K_PLAN"], C)
    sub = [Job(np.array([ch]), "permute", perm=job_permutation(res.random_state, ch, r, N))
           for ch in range(kp) for r in range(R)]
    saved = _plan.CALIBRATE_MIN_WORK
    _plan.CALIBRATE_MIN_WORK = math.inf
    mem_plan = TailEngine(g, key).plan(N, jobs)
    _plan.CALIBRATE_MIN_WORK = saved
    own = np.argmax(eng.baseline_outputs(cache, jobs), axis=1)

    def agree(o):
        return float(np.mean(np.argmax(o, axis=1) == own))

    p_c, b_c = plan
    n_cal_passes = math.ceil(len(sub) / p_c) * math.ceil(N / b_c)
    n_best_passes = math.ceil(len(sub) * N / best_B)
    feed_cal = np.concatenate([acts] * math.ceil(p_c * b_c / N), axis=0)[:p_c * b_c]
    arms = {
        "memory": lambda: eng.run(cache, sub, agree, perturbations_per_eval=mem_plan[0]),
        "calibrated": lambda: eng.run(cache, sub, agree),  # "auto": the cached calibrated plan
        "bare_calibrated": lambda: [tail.predict_on_batch(feed_cal) for _ in range(n_cal_passes)],
        "bare_best": lambda: [tail.predict_on_batch(feeds[best_B]) for _ in range(n_best_passes)],
    }
    eng.run(cache, sub[:mem_plan[0]], agree, perturbations_per_eval=mem_plan[0])  # trace that shape
    tail.predict_on_batch(feed_cal)
    paired = {k: 0.0 for k in arms}
    scores = {}
    for _ in range(cfg["ROUNDS_PAIRED"]):
        for k, f in arms.items():
            t0 = time.perf_counter()
            r_ = f()
            paired[k] += time.perf_counter() - t0
            if k in ("memory", "calibrated"):
                scores[k] = r_
    out["info"]["paired"] = paired
    out["info"]["memory_plan"] = list(mem_plan)
    out["info"]["plan_scores_equal"] = bool(np.array_equal(scores["memory"], scores["calibrated"]))
    out["info"]["K_PLAN"] = kp

    # --- naive tail loop, as a user writes it (K_NAIVE filters, extrapolated) ---
    kn = min(cfg["K_NAIVE"], C)
    t0 = time.perf_counter()
    utail = user_tail(model)
    prefix = keras.Model(model.input, model.get_layer(BLOCK).output)
    a = np.asarray(prefix.predict(x, batch_size=128, verbose=0))
    own_u = np.argmax(model.predict(x, batch_size=128, verbose=0), axis=1)
    base = np.mean(np.argmax(utail.predict_on_batch(a), axis=1) == own_u)
    t_setup = time.perf_counter() - t0
    naive = np.empty((kn, R))
    pa = a.copy()
    t0 = time.perf_counter()
    for ch in range(kn):
        for r in range(R):
            perm = job_permutation(res.random_state, ch, r, N)
            pa[..., ch] = a[perm, ..., ch]
            naive[ch, r] = base - np.mean(np.argmax(utail.predict_on_batch(pa), axis=1) == own_u)
        pa[..., ch] = a[..., ch]
    t_loop = time.perf_counter() - t0
    out["rows"]["naive_tail"] = t_setup + t_loop * C / kn
    out["info"]["K_NAIVE"] = kn
    out["info"]["naive_setup"] = t_setup
    out["info"]["naive_equal"] = bool(np.array_equal(naive, res.importances[:kn]))
    out["info"]["naive_max_diff"] = float(np.abs(naive - res.importances[:kn]).max())
    print(f"[{backend}] naive tail loop {t_setup:.1f} s setup + {t_loop:.1f} s on {kn} filters", flush=True)

    # --- full-model loop with a perturbation layer (K_FULL filters, extrapolated) --
    class SetPerm(layers.Layer):
        def __init__(self, n, c, **kw):
            super().__init__(**kw)
            self.perm = self.add_weight(shape=(n,), dtype="int32", initializer="zeros", trainable=False, name="perm")
            self.mask = self.add_weight(shape=(c,), dtype="bool", initializer="zeros", trainable=False, name="mask")

        def call(self, t):
            mask, perm = ops.convert_to_tensor(self.mask), ops.convert_to_tensor(self.perm)
            return ops.where(mask, ops.take(t, perm, axis=0), t)

        def compute_output_shape(self, shape):
            return shape

    kf = min(cfg["K_FULL"], C)
    inp = keras.Input((32, 32, 3))
    vals = dict(g.replay({g.input_keys[0]: inp}, g.frontier(key)))
    pert = SetPerm(N, C)
    vals[key] = pert(vals[key])
    full = keras.Model(inp, g.replay(vals, g.output_keys)[g.output_keys[0]])
    full.predict(x, batch_size=N, verbose=0)  # trace, as the engine's time includes its own
    full_imp = np.empty((kf, R))
    t0 = time.perf_counter()
    base_f = np.mean(np.argmax(full.predict(x, batch_size=N, verbose=0), axis=1) == own_u)
    for ch in range(kf):
        mask = np.zeros(C, bool)
        mask[ch] = True
        pert.mask.assign(mask)
        for r in range(R):
            pert.perm.assign(job_permutation(res.random_state, ch, r, N).astype("int32"))
            full_imp[ch, r] = base_f - np.mean(np.argmax(full.predict(x, batch_size=N, verbose=0), axis=1) == own_u)
    t_full = time.perf_counter() - t0
    # The same perturbed full model through predict_on_batch: predict()'s per-call overhead, split off.
    full.predict_on_batch(x)
    t0 = time.perf_counter()
    full.predict_on_batch(x)
    out["info"]["full_pob_ms"] = 1e3 * (time.perf_counter() - t0)
    out["rows"]["full_model"] = t_full * C / kf
    out["info"]["full_equal"] = bool(np.array_equal(full_imp, res.importances[:kf]))
    out["info"]["K_FULL"] = kf
    print(f"[{backend}] full-model loop {t_full:.1f} s on {kf} filters", flush=True)

    # --- Captum (torch) ---------------------------------------------------
    if backend == "torch" and importlib.util.find_spec("captum") is not None:
        import captum

        kc = min(cfg["K_CAPTUM"], C - 1)
        t_cap, n_calls, attr = run_captum(model, BLOCK, x, own_u, C, kc)
        out["rows"]["captum"] = t_cap / n_calls * R * (C + 2)
        out["info"]["captum"] = {"version": captum.__version__, "filters": kc, "forward_calls": n_calls,
                                 "seconds": t_cap, "nonzero": bool(np.any(attr[0, 0, 0, :kc] != 0))}
        print(f"[{backend}] Captum {t_cap:.1f} s for {n_calls} forward passes", flush=True)

    load.append(os.getloadavg()[0])
    out["info"]["load"] = load
    out["info"]["macs"] = [macs(tail), macs(model)]
    return out


# ----------------------------------------------------------------------
# The parent: one subprocess per backend, one table
# ----------------------------------------------------------------------
def table(results, cfg):
    import numpy as np

    lines = ["| backend | arm | seconds | per perturbation (ms) | ratio |", "|---|---|---:|---:|---:|"]
    for res in results:
        be, rows, info = res["backend"], res["rows"], res["info"]
        jobs = info["jobs"]
        eng = rows["engine"]

        def row(arm, sec, ratio="", be=be, jobs=jobs):
            lines.append(f"| {be} | {arm} | {sec:.1f} | {1e3 * sec / jobs:.1f} | {ratio} |")

        cal = info["calibration"]
        plan = f"{info['plan'][0]} x {info['plan'][1]} samples per pass"
        cal_s = "" if cal is None else f", calibration {cal['wall']:.1f} s"
        row(f"engine (end to end; `auto`: {plan}{cal_s})", eng, "1")
        row(f"bound (min over B of tail time per sample x C x R x N; best B = {info['bound_B']})", rows["bound"],
            f"engine / bound = **{eng / rows['bound']:.2f}x**")
        row(f"naive tail loop (user-built tail model, one `predict_on_batch` per perturbation; setup "
            f"{info['naive_setup']:.1f} s + {info['K_NAIVE']} filters, extrapolated)", rows["naive_tail"],
            f"naive / engine = {rows['naive_tail'] / eng:.2f}x")
        row(f"full-model loop (perturbation layer + `model.predict`; {info['K_FULL']} filters, extrapolated)",
            rows["full_model"], f"full / engine = {rows['full_model'] / eng:.2f}x")
        if "captum" in rows:
            c = info["captum"]
            row(f"Captum {c['version']} `LayerFeaturePermutation` ({c['filters']} filters, 1 repeat, "
                f"{c['forward_calls']} forwards; extrapolated)", rows["captum"],
                f"Captum / engine = **{rows['captum'] / eng:.1f}x**")
    print("\n".join(lines))
    print()
    ref = np.asarray(results[0]["probe_outputs"])
    for res in results:
        info = res["info"]
        d = float(np.abs(np.asarray(res["probe_outputs"]) - ref).max())
        di = float(np.abs(np.asarray(res["importances"]) - np.asarray(results[0]["importances"])).max())
        cal = info["calibration"]
        cands = "" if cal is None else "; ".join(
            f"{p}x{b}: {1e3 * t:.0f} ms/pass, run {s:.1f} s" for p, b, t, s in cal["candidates"])
        sweep = ", ".join(f"{B}: {v:.0f}" for B, v in info["bound_sweep_us"].items())
        print(f"- {res['backend']}: engine == naive tail loop: {info['naive_equal']} (max diff "
              f"{info['naive_max_diff']:.3g}); == full-model loop on its filters: {info['full_equal']}; "
              f"memory-plan scores == calibrated: {info['plan_scores_equal']}; outputs vs {results[0]['backend']}: "
              f"max |diff| {d:.2g}; importances vs {results[0]['backend']}: max |diff| {di:.3g}")
        print(f"  calibration candidates: {cands or 'none (not calibrated)'}")
        print(f"  tail time per sample (us) by batch size: {sweep}")
        print(f"  1-minute load average (2 CPUs) before the sweep / after the engine / at the end: "
              f"{' / '.join(f'{v:.1f}' for v in info['load'])}")
        t_in, n_in = info["engine_in_tail"]
        cal_wall = 0.0 if cal is None else cal["wall"]
        print(f"  engine: {t_in:.1f} s in {n_in} tail passes (calibration's {cal_wall:.1f} s included), "
              f"{res['rows']['engine'] - t_in:.1f} s outside them (analyzer, prefix pass, NumPy perturbation "
              f"and scoring); tail passes / bound = {t_in / res['rows']['bound']:.2f}")
        pr, mp = info["paired"], info["memory_plan"]
        print(f"  paired, alternated ({info['K_PLAN']} filters x R, {len(pr)} arms): memory plan {mp[0]} x {mp[1]} / "
              f"calibrated = {pr['memory'] / pr['calibrated']:.2f}; engine passes (calibrated) / bare tail "
              f"passes of that shape = {pr['calibrated'] / pr['bare_calibrated']:.2f}; bare passes of the "
              f"calibrated shape / of the best B = {pr['bare_calibrated'] / pr['bare_best']:.2f}")
        print(f"  full-model loop: {1e3 * res['rows']['full_model'] / info['jobs']:.0f} ms per `model.predict` call; "
              f"the same perturbed model through one `predict_on_batch`: {info['full_pob_ms']:.0f} ms")
        if "captum" in info:
            print(f"  Captum: {info['captum']}")
    tm, fm = results[0]["info"]["macs"]
    print(f"- tail MACs / full-model MACs per sample: {tm / 1e6:.1f}M / {fm / 1e6:.1f}M = {tm / fm:.2f}")
    print(f"- frontier of the cut: {results[0]['info']['frontier']}")
    print("- targets: engine / bound <= 1.2: " + ", ".join(
        f"{r['backend']} {r['rows']['engine'] / r['rows']['bound'] <= 1.2}" for r in results)
        + "; Captum / engine >= 10: " + ", ".join(
        f"{r['backend']} {r['rows']['captum'] / r['rows']['engine'] >= 10}" for r in results if "captum" in r["rows"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default=None, help="comma-separated; default: every installed one")
    ap.add_argument("--quick", action="store_true", help="tiny settings to validate the script")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--make-weights", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    quick = args.quick or os.environ.get("B1_QUICK", "") not in ("", "0")
    cfg = QUICK if quick else FULL
    if args.make_weights:
        make_weights(args.make_weights)
        return
    if args.child:
        res = child(args.child, args.weights, cfg, quick)
        with open(args.out, "w") as f:
            json.dump(res, f)
        return
    backends = args.backends.split(",") if args.backends else [
        b for b in BACKENDS if b == "tensorflow" or importlib.util.find_spec(b) is not None]
    print(f"B1 ({'QUICK: timings not meaningful' if quick else 'full'}): N={cfg['N']}, n_repeats={cfg['R']}, "
          f"block {BLOCK!r}, backends {backends}", flush=True)
    me = os.path.abspath(__file__)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "b1.weights.h5")
        env = dict(os.environ, KERAS_BACKEND=backends[0])
        subprocess.run([sys.executable, me, "--make-weights", weights] + (["--quick"] if quick else []),
                       env=env, check=True)
        for be in backends:
            path = os.path.join(tmp, f"{be}.json")
            env = dict(os.environ, KERAS_BACKEND=be)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, me, "--child", be, "--weights", weights, "--out", path]
                           + (["--quick"] if quick else []), env=env, check=True)
            print(f"[{be}] subprocess {time.perf_counter() - t0:.0f} s", flush=True)
            with open(path) as f:
                results.append(json.load(f))
    print()
    table(results, cfg)


if __name__ == "__main__":
    main()
