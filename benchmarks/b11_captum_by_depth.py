"""B11: the engine against Captum at every residual block of B1's model (torch): how the speed-up follows the cut.

B1 measures one cut (``s2b2_out``), where the tail is 17 % of the model's
multiply-accumulates. Captum's
``LayerFeaturePermutation`` re-runs the whole model per perturbation; the engine
re-runs only what follows the cut (and, at a block read only through a global
pooling, only the head: the pooled-head shortcut). So the speed-up should track
the full model's cost over the tail's. This script measures it at every block
output of B1's ResNet-style CNN (the same seeded weights, ``b1_permutation_engine.make_weights``),
on the torch backend, in one process:

* ``engine``: ``GlobalAnalyzer(model, blocks=[cut]).filter_importance(x, block=cut,
  n_repeats=1, perturbations_per_eval="auto")``, end to end (a fresh analyzer, the tail or
  head built and traced, prefix pass, calibration, baseline, every filter), agreement with
  the model's own predictions.
* ``Captum``: ``LayerFeaturePermutation`` hooked on the cut's layer, forward = the same
  agreement over the N images (a batch metric: Captum needs ``perturbations_per_eval=1``),
  run on ``K`` filters (a layer mask of one group per filter and one for the rest), its
  forward passes counted, extrapolated to the block as ``C + 2`` forward passes (1 repeat).
* ``full / tail MACs``: the compute ratio that bounds a tail-only engine's speed-up.

Run: ``KERAS_BACKEND=torch python benchmarks/b11_captum_by_depth.py`` (``pip install '.[bench]'``;
about 5 minutes on 2 CPU cores). ``--quick``: N = 64, one filter for Captum, to validate the script.
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "torch")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

CUTS = ["s1b1_out", "s1b2_out", "s2b1_out", "s2b2_out", "s3b1_out"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings to validate the script")
    ap.add_argument("--n", type=int, default=None, help="images (default 512; --quick 64)")
    args = ap.parse_args()
    n = args.n or (64 if args.quick else 512)
    k_captum = 1 if args.quick else 2

    import numpy as np

    import keras

    if keras.backend.backend() != "torch" or importlib.util.find_spec("captum") is None:
        sys.exit("B11 needs KERAS_BACKEND=torch and captum (pip install '.[bench]').")
    import captum
    import torch

    from keras_hybrid_interp import GlobalAnalyzer
    from keras_hybrid_interp.core.engine import PooledHeadEngine

    import b1_permutation_engine as b1

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "b1.weights.h5")
        b1.make_weights(weights)
        keras.utils.set_random_seed(b1.SEED)
        model = b1.resnet()
        model.load_weights(weights)
    x = b1.images(n)
    own = np.argmax(np.asarray(model.predict(x, batch_size=128, verbose=0)), axis=1)
    full_macs = b1.macs(model)
    print(f"B11 ({'QUICK: timings not meaningful' if args.quick else 'full'}): torch {torch.__version__}, "
          f"Captum {captum.__version__}, N = {n}, 1 repeat, {torch.get_num_threads()} torch threads", flush=True)

    rows = []
    for cut in CUTS:
        t0 = time.perf_counter()  # a fresh analyzer: building and tracing the tail is part of the cost
        ga = GlobalAnalyzer(model, blocks=[cut])
        res = ga.filter_importance(x, block=cut, n_repeats=1, random_state=b1.SEED, batch_size=128)
        t_engine = time.perf_counter() - t0
        key = ga.graph.resolve(cut)
        kind = "pooled head" if isinstance(ga._engine(key), PooledHeadEngine) else "tail"
        tail_macs = b1.macs(ga.graph.build(ga.graph.output_keys, inputs=ga.graph.frontier(key)))
        c = res.importances.shape[0]

        t_cap, n_calls, _ = b1.run_captum(model, cut, x, own, c, k_captum)
        captum_block = t_cap / n_calls * (c + 2)
        rows.append((cut, c, kind, full_macs / tail_macs, t_engine, captum_block, n_calls))
        print(f"[{cut}] engine ({kind}) {t_engine:.1f} s; Captum {t_cap:.1f} s for {n_calls} forwards "
              f"-> {captum_block:.1f} s for the block", flush=True)

    print()
    print("| cut | filters | engine | full / tail MACs | engine (s) | Captum, extrapolated (s) | Captum / engine |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for cut, c, kind, ratio, te, tc, _ in rows:
        print(f"| `{cut}` | {c} | {kind} | {ratio:.1f} | {te:.1f} | {tc:.1f} | **{tc / te:.1f}x** |")
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
