"""B10: the pooled-head shortcut against the tail engine on ResNet50's last block, in one run.

ResNet50 (``include_top=False, weights=None``, 224 x 224) nested in
``Input -> backbone -> GlobalAveragePooling2D -> Dense(10, softmax)``; the
last block ``conv5_block3_out`` (7 x 7 x 2,048) is read only through the GAP,
so ``GlobalAnalyzer.filter_importance`` perturbs the pooled features and re-runs
only the Dense head (:class:`~keras_hybrid_interp.core.engine.PooledHeadEngine`).
The reference arm is the plain tail engine (``TailEngine``: GAP and Dense re-run
on the perturbed 7 x 7 x 2,048 maps), as the package ran it before.

Both arms score the same jobs (every filter, permutation with ``n_repeats`` and
zero ablation) on the same N samples; each arm first makes its own cache pass
(one forward pass of the N images: the same work for both, timed separately),
then runs its perturbations. Printed: seconds of the cache pass and of the
perturbation phase per arm, their ratio, and the largest difference between
the two arms' importances (the oracle of ``tests/global_/test_pooled_head.py``,
here at scale).

Run: ``python benchmarks/b10_pooled_head.py`` (about 3 minutes on 2 CPU cores;
``--n``, ``--repeats``).
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
from keras_hybrid_interp.core.engine import PooledHeadEngine, TailEngine  # noqa: E402
from keras_hybrid_interp.global_.importance import check_request, importance_reducer, importance_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
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
    arms = {"pooled-head shortcut": ga._engine(key), "tail engine": ga._engine(key, shortcut=False)}
    assert isinstance(arms["pooled-head shortcut"], PooledHeadEngine)
    assert type(arms["tail engine"]) is TailEngine
    print(f"B10: {block} ({arms['tail engine'].channels} filters), N = {args.n}, {s} px, "
          f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = {}
    rows = []
    for method, kw in (("permutation", dict(n_repeats=args.repeats, random_state=0)), ("ablation", {})):
        for arm, engine in arms.items():
            request = check_request(engine, ga.reader, method=method, scoring="loss", **kw)
            red = importance_reducer(engine, request, ga.reader)
            t0 = time.perf_counter()
            ga._run(ga._stream(x, y), [red])
            t_pass = time.perf_counter() - t0
            t0 = time.perf_counter()
            imp = importance_result(engine, red, request, ga.reader, y_given=True, block=block)
            t_perturb = time.perf_counter() - t0
            results[(method, arm)] = imp.importances
            rows.append((method, arm, t_pass, t_perturb, red.result().nbytes))
    print()
    print("| method | arm | cache pass (s) | perturbations (s) | cache (MB) | tail engine / shortcut, perturbations |")
    print("|---|---|---:|---:|---:|---:|")
    for method, arm, t_pass, t_perturb, nbytes in rows:
        ref = next(r[3] for r in rows if r[0] == method and r[1] == "tail engine")
        ratio = f"**{ref / t_perturb:.0f}x**" if arm != "tail engine" else "1"
        print(f"| {method} | {arm} | {t_pass:.1f} | {t_perturb:.2f} | {nbytes / 1e6:.1f} | {ratio} |")
    for method in ("permutation", "ablation"):
        d = np.abs(results[(method, "pooled-head shortcut")] - results[(method, "tail engine")]).max()
        print(f"\n{method}: largest |shortcut - tail engine| importance difference {d:.2e} "
              f"(importances up to {np.abs(results[(method, 'tail engine')]).max():.2e})")


if __name__ == "__main__":
    main()
