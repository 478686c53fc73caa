"""B12: the closed-form linear head against the pooled-head engine on ResNet50's last block, in one run.

ResNet50 (``include_top=False, weights=None``) nested in
``Input -> backbone -> GlobalAveragePooling2D -> Dense(10, softmax)`` at 160 x 160
(issue #23's case); the last block ``conv5_block3_out`` (5 x 5 x 2,048) is read
only through the GAP and one Dense layer, so ``GlobalAnalyzer.filter_importance``
scores every perturbation by a rank-1 update of the logits in NumPy
(:class:`~keras_hybrid_interp.core.engine.LinearHeadEngine`, no head pass). The
naive arm is the pooled-head engine (``PooledHeadEngine``: the Dense head re-run
on the perturbed pooled features), as the package ran it before.

One cache pass (the forward pass of the N images, the same for both arms) fills
the pooled features; each arm then runs ``importance_result`` on that same cache:
permutation of all 2,048 filters with ``--repeats`` repeats, then zero ablation (each arm's time
the fastest of ``--trials`` runs),
``scoring="accuracy"`` (the report's default) and ``"loss"``. Printed per
(method, scoring): seconds of each arm, their ratio, and the largest difference
between the arms' importances (accuracy: the number of differing entries).
Target of issue #23: permutation, 3 repeats, N = 192: <= 0.3 s.

Run: ``python benchmarks/b12_linear_head.py`` (about 2 minutes on 2 CPU cores;
``--n``, ``--repeats``, ``--size``, ``--trials``).
"""

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import keras  # noqa: E402

from keras_hybrid_interp import GlobalAnalyzer  # noqa: E402
from keras_hybrid_interp.core.engine import LinearHeadEngine, PooledHeadEngine  # noqa: E402
from keras_hybrid_interp.core.layers import global_pool_after  # noqa: E402
from keras_hybrid_interp.core.perturbation import job_permutation  # noqa: E402
from keras_hybrid_interp.global_.importance import check_request, importance_reducer, importance_result  # noqa: E402


class _Cached:
    """A reducer that has seen the pass: hands out the same cache to every arm."""

    def __init__(self, cache):
        self.cache = cache

    def result(self):
        return self.cache


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--trials", type=int, default=3, help="each arm's time is the fastest of this many runs")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    keras.utils.set_random_seed(0)
    s = args.size
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(s, s, 3))
    inp = keras.Input((s, s, 3))
    h = keras.layers.GlobalAveragePooling2D()(base(inp, training=False))
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))
    rng = np.random.default_rng(0)
    x = rng.random((args.n, s, s, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.n)

    ga = GlobalAnalyzer(model)
    key, block = ga._key(ga.block_names[-1])
    linear = ga._engine(key)
    assert type(linear) is LinearHeadEngine
    naive = PooledHeadEngine(ga.graph, key, *global_pool_after(ga.graph, key))
    print(f"B12: {block} ({linear.channels} filters), N = {args.n}, {s} px, {args.repeats} repeats, "
          f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    request = check_request(linear, ga.reader, method="permutation", n_repeats=args.repeats, random_state=0)
    red = importance_reducer(linear, request, ga.reader)
    t0 = time.perf_counter()
    ga._run(ga._stream(x, y), [red])
    t_pass = time.perf_counter() - t0
    cache = red.result()
    print(f"cache pass (one forward pass of the {args.n} images): {t_pass:.1f} s; pooled cache "
          f"{cache.nbytes / 1e6:.2f} MB")
    rows = []
    for method, kw in (("permutation", dict(n_repeats=args.repeats, random_state=0)), ("ablation", {})):
        for scoring in ("accuracy", "loss"):
            times, imps = {}, {}
            for arm, engine in (("linear head", linear), ("pooled-head engine", naive)):
                request = check_request(engine, ga.reader, method=method, scoring=scoring, **kw)
                times[arm] = float("inf")
                for _ in range(args.trials):  # the machine is shared: the fastest of a few runs
                    t0 = time.perf_counter()
                    imp = importance_result(engine, _Cached(cache), request, ga.reader, y_given=True, block=block)
                    times[arm] = min(times[arm], time.perf_counter() - t0)
                imps[arm] = imp.importances
            a, b = imps["linear head"], imps["pooled-head engine"]
            diff = (f"{int(np.sum(a != b))} of {a.size} differ" if scoring == "accuracy"
                    else f"{np.abs(a - b).max():.1e} (up to {np.abs(b).max():.1e})")
            rows.append((method, scoring, a.shape, times["linear head"], times["pooled-head engine"], diff))
    # What every arm pays before any arithmetic: drawing the permutations (one SeedSequence per job).
    t0 = time.perf_counter()
    for g in range(linear.channels):
        for r in range(args.repeats):
            job_permutation(0, g, r, args.n)
    t_perms = time.perf_counter() - t0
    print(f"drawing the {linear.channels * args.repeats:,} permutations alone (part of every permutation row): "
          f"{t_perms:.3f} s; load average now {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print("| method | scoring | jobs | linear head (s) | pooled-head engine (s) | engine / linear head | "
          "largest difference |")
    print("|---|---|---:|---:|---:|---:|---|")
    for method, scoring, shape, t_lin, t_naive, diff in rows:
        print(f"| {method} | {scoring} | {shape[0] * shape[1]:,} | {t_lin:.3f} | {t_naive:.2f} | "
              f"**{t_naive / t_lin:.0f}x** | {diff} |")


if __name__ == "__main__":
    main()
