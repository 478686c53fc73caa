"""B6: real models - the package on ResNet50 and DenseNet121 at 224 px (issue #13).

Model: ``keras.applications.ResNet50(include_top=False, weights=None,
input_shape=(S, S, 3))`` (and ``DenseNet121``, same arguments) nested in a
transfer-learning model ``Input -> backbone -> GlobalAveragePooling2D ->
Dense(10, softmax)``, built after ``keras.utils.set_random_seed(0)``; random
init (no network). ``HybridInterpreter(model)`` with its default (automatic)
blocks: 17 for ResNet50 (sum C = 15,168), 62 for DenseNet121 (sum C = 34,336).
Data: ``N`` seeded random uniform images in [0, 1) with random labels 0..9
(``numpy.random.default_rng(0)``); no class structure, this is a cost
benchmark. Batch size 64 everywhere (the package's default; ``model.predict``
is given ``batch_size=64`` too).

Every row runs in a FRESH subprocess (this script with ``--child``), which
builds the model from the same seed, generates the same data, does what the
row needs first (``fit_probes`` before ``evaluate_layers`` and the report;
untimed) and then times only the row's call. Memory per row:

- setup RSS: the current RSS (``VmRSS``) just before the call (imports,
  model, data and the row's untimed prerequisites): what was there already;
- call peak: the peak RSS during the call. The kernel's high-water mark is
  reset just before the call (``echo 5 > /proc/self/clear_refs``) and
  ``VmHWM`` read after it, so a prerequisite's own peak (``fit_probes``
  before the report) does not count; the setup RSS is included;
- process peak: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end
  (KiB on Linux), the whole subprocess, prerequisites included.

"x forward" is the row's seconds over the seconds of the same model's
``model.predict`` over the same N images, measured in the same run: the
predict row's FIRST call in its fresh process (so, like every other row, it
includes its own tracing/compilation); "x warm" divides by a second, warm
``predict`` call in that process. Targets (issue #13, where one exists):
``fit_probes`` <= 1.5x forward (compilation included); ``layer_similarity``
<= 1.5x forward and call peak <= predict's peak + 1 GB; ``build_report``
<= 3x forward and call peak <= predict's peak + 1 GB. GB = 10^9 bytes.

Rows (ResNet50): ``model.predict``; ``fit_probes(x, y)``;
``evaluate_layers(x, y)``; permutation importance of the last block
(``conv5_block3_out``, 2,048 filters, ``n_repeats=1, max_samples=128``);
ablation (zero) importance of the last block (``max_samples=128``);
``layer_similarity(x)`` over all blocks (default estimator);
``build_report(interp, x, y)`` (defaults) then ``.save("report.html")``. For DenseNet121: predict,
``fit_probes``, ``build_report``.

Mid-block fast path (ResNet50, ``conv4_block6_out``, 1,024 filters,
``max_samples=128, n_repeats=1``), in one process: permutation with
``groups=[[0],...,[7]]`` (first call: includes the cache pass and tracing),
then ``[[8],...,[15]]`` and ``[[16],...,[47]]`` (warm). Marginal seconds per
filter = (t(32 filters) - t(8 filters)) / 24; the whole block is extrapolated
as first call + 1,016 x marginal. ``method="taylor"`` on the whole block (one
forward + backward pass over the 128 samples), first and second call.

Run:
    python benchmarks/b6_real_models.py                     # full: 224 px, N = 256
    QUICK=1 python benchmarks/b6_real_models.py             # validation: 64 px, N = 32
    python benchmarks/b6_real_models.py --only resnet50     # one model
    python benchmarks/b6_real_models.py --only report,fit_probes   # some rows (predict always runs)
    python benchmarks/b6_real_models.py --only densenet121:report
    python benchmarks/b6_real_models.py --json out.json     # also save the raw per-row records
    python benchmarks/b6_real_models.py --row-timeout 3600  # give up on a row after an hour

Duration: QUICK=1 about 7 minutes on 2 shared CPU cores (most of it is the 12
subprocesses starting TensorFlow and building the model); the full run an
estimated 20-40 minutes on 2 quiet cores (the report rows dominate), with peaks
of a few GB per row.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from _proc_memory import reset_peak, status_bytes

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
GB = 1e9
KIB = 1024

ROWS = {
    "resnet50": ["predict", "fit_probes", "evaluate_layers", "permutation_last", "ablation_last",
                 "layer_similarity", "report", "permutation_mid", "taylor_mid"],
    "densenet121": ["predict", "fit_probes", "report"],
}
LABELS = {
    "predict": "`model.predict`",
    "fit_probes": "`fit_probes(x, y)`",
    "evaluate_layers": "`evaluate_layers(x, y)`",
    "permutation_last": "permutation importance, last block, n_repeats=1, max_samples=128",
    "ablation_last": "ablation (zero) importance, last block, max_samples=128",
    "layer_similarity": "`layer_similarity(x)` over all blocks (minibatch CKA)",
    "report": "`build_report(interp, x, y)` and `.save('report.html')`",
    "permutation_mid": "permutation, `conv4_block6_out`, 8 single-filter groups, max_samples=128 (first call)",
    "taylor_mid": "`method=\"taylor\"`, `conv4_block6_out`, all filters, max_samples=128 (first call)",
}
# (max x forward, peak <= predict peak + 1 GB?)
TARGETS = {"fit_probes": (1.5, False), "layer_similarity": (1.5, True), "report": (3.0, True)}
MAX_SAMPLES = 128
MID_BLOCK = "conv4_block6_out"


# ----------------------------------------------------------------------------------------------
# child: one row in a fresh process
# ----------------------------------------------------------------------------------------------


def _block(names, suffix):
    hits = [b for b in names if b == suffix or b.endswith("/" + suffix)]
    if len(hits) != 1:
        raise SystemExit(f"block {suffix!r} not found (once) among {names}")
    return hits[0]


def child(model_name, row, size, n):
    import resource
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    import numpy as np

    import keras
    from keras import layers

    from keras_hybrid_interp import HybridInterpreter
    from keras_hybrid_interp.global_.analyzer import GlobalAnalyzer
    from keras_hybrid_interp.report import build_report

    out = {"model": model_name, "row": row, "size": size, "n": n}
    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    ctor = {"resnet50": keras.applications.ResNet50, "densenet121": keras.applications.DenseNet121}[model_name]
    inp = keras.Input((size, size, 3))
    backbone = ctor(include_top=False, weights=None, input_shape=(size, size, 3))
    h = layers.GlobalAveragePooling2D()(backbone(inp))
    model = keras.Model(inp, layers.Dense(10, activation="softmax")(h), name=f"transfer_{model_name}")
    rng = np.random.default_rng(0)
    x = rng.random((n, size, size, 3), dtype=np.float32)
    y = rng.integers(0, 10, size=n)
    out["build_s"] = time.perf_counter() - t0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        interp = None if row == "predict" else HybridInterpreter(model)
        if interp is not None:
            out["blocks"] = len(interp.block_names)
            out["sum_c"] = int(sum(b.filters for b in interp.blocks))
        if row in ("evaluate_layers", "report"):
            t0 = time.perf_counter()
            interp.fit_probes(x, y, verbose=0)
            out["prereq_s"] = time.perf_counter() - t0
        ga = GlobalAnalyzer(interp) if row in ("permutation_last", "ablation_last", "layer_similarity",
                                              "permutation_mid", "taylor_mid") else None
        last = interp.block_names[-1] if interp is not None else None
        ms = min(MAX_SAMPLES, n)
        out["setup_rss"] = status_bytes("VmRSS")
        out["setup_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
        out["peak_reset"] = reset_peak()
        n_setup_warnings = len(caught)

        t0 = time.perf_counter()
        if row == "predict":
            proba = model.predict(x, batch_size=64, verbose=0)
            out["seconds"] = time.perf_counter() - t0
            out["predict_peak_first"] = status_bytes("VmHWM")
            t1 = time.perf_counter()
            model.predict(x, batch_size=64, verbose=0)
            out["warm_s"] = time.perf_counter() - t1
            out["predicted_classes"] = int(len(np.unique(proba.argmax(1))))
            out["max_proba_mean"] = float(proba.max(1).mean())
        elif row == "fit_probes":
            # Time inside the probe trainer (L-BFGS on the cached features) vs the rest (the pass).
            from keras_hybrid_interp.local import interpreter as _interp_mod

            real_fit, in_fit = _interp_mod.fit_task_probe, [0.0]

            def timed_fit(*a, **k):
                t = time.perf_counter()
                try:
                    return real_fit(*a, **k)
                finally:
                    in_fit[0] += time.perf_counter() - t

            _interp_mod.fit_task_probe = timed_fit
            try:
                interp.fit_probes(x, y, verbose=0)
            finally:
                _interp_mod.fit_task_probe = real_fit
            out["seconds"] = time.perf_counter() - t0
            out["probe_iters"] = [int(v) for v in interp.convergence_["n_iter"]]
            out["trainer_s"] = in_fit[0]
        elif row == "evaluate_layers":
            interp.evaluate_layers(x, y)
            out["seconds"] = time.perf_counter() - t0
        elif row in ("permutation_last", "ablation_last"):
            method = row.split("_")[0]
            seeded = {"n_repeats": 1, "random_state": 0} if method == "permutation" else {}
            imp = ga.filter_importance(x, y, block=last, method=method, max_samples=ms, **seeded)
            out["seconds"] = time.perf_counter() - t0
            out.update(block=last, filters=int(len(imp.importances_mean)), samples=int(imp.n_samples),
                       baseline=float(imp.baseline_score))
        elif row == "layer_similarity":
            ga.layer_similarity(x)
            out["seconds"] = time.perf_counter() - t0
        elif row == "report":
            rep = build_report(interp, x, y)
            out["build_s"] = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp:  # what a reviewer gets: the saved HTML (PNGs rendered)
                rep.save(os.path.join(tmp, "report.html"))
            out["seconds"] = time.perf_counter() - t0
            out["save_s"] = out["seconds"] - out["build_s"]
            out["health"] = len(rep.health)
        elif row == "permutation_mid":
            block = _block(interp.block_names, MID_BLOCK)
            times = []
            for groups in ([[i] for i in range(8)], [[i] for i in range(8, 16)], [[i] for i in range(16, 48)]):
                t1 = time.perf_counter()
                imp = ga.filter_importance(x, y, block=block, method="permutation", n_repeats=1,
                                           max_samples=ms, groups=groups, random_state=0)
                times.append(time.perf_counter() - t1)
            out["seconds"] = times[0]
            filters = int(dict(zip(interp.block_names, (b.filters for b in interp.blocks)))[block])
            marginal = (times[2] - times[1]) / 24
            out.update(block=block, filters=filters, samples=int(imp.n_samples), times=times,
                       per_filter_s=marginal, fixed_warm_s=times[1] - 8 * marginal,
                       extrapolated_s=times[0] + (filters - 8) * marginal)
        elif row == "taylor_mid":
            block = _block(interp.block_names, MID_BLOCK)
            imp = ga.filter_importance(x, y, block=block, method="taylor", max_samples=ms)
            out["seconds"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            ga.filter_importance(x, y, block=block, method="taylor", max_samples=ms)
            out["warm_s"] = time.perf_counter() - t1
            out.update(block=block, filters=int(len(imp.importances_mean)), samples=int(imp.n_samples))
        else:
            raise SystemExit(f"unknown row {row!r}")
        out["call_peak"] = status_bytes("VmHWM")
    out["process_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
    kinds = {}
    for w in caught[n_setup_warnings:]:  # the call's warnings, block names and numbers blanked, counted
        msg = re.sub(r"\d+", "#", re.sub(r"'[^']*'", "'...'", str(w.message)))[:200]
        kinds[f"{w.category.__name__}: {msg}"] = kinds.get(f"{w.category.__name__}: {msg}", 0) + 1
    out.update(warnings_setup=n_setup_warnings, warnings_call=len(caught) - n_setup_warnings,
               warning_kinds=[f"{c} x {m}" for m, c in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]])
    if not out["peak_reset"]:
        out["call_peak"] = out["process_peak"]
    print("B6-RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------
def run_row(model_name, row, size, n, timeout):
    cmd = [sys.executable, HERE, "--child", model_name, row, str(size), str(n)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model_name, "row": row, "failed": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("B6-RESULT "):
            rec = json.loads(line[len("B6-RESULT "):])
            rec["wall_s"] = wall
            return rec
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
    why = "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else f"exit status {proc.returncode}"
    return {"model": model_name, "row": row, "failed": f"{why}: {tail}", "wall_s": wall}


def selected(only):
    """[(model, [rows])] from --only: 'resnet50', 'report,fit_probes', 'densenet121:report'."""
    plan = {m: list(r) for m, r in ROWS.items()}
    if not only:
        return list(plan.items())
    models, rows = set(), {}
    for item in only.split(","):
        item = item.strip().lower()
        if ":" in item:
            m, r = item.split(":", 1)
            rows.setdefault(m, set()).add(r)
        elif item in plan:
            models.add(item)
        else:
            rows.setdefault("*", set()).add(item)
    out = []
    for m, rs in plan.items():
        want = set(rs) if m in models else rows.get(m, set()) | (rows.get("*", set()) & set(rs))
        if want:
            out.append((m, [r for r in rs if r in want or r == "predict"]))  # predict: the baseline
    unknown = {r for rs in rows.values() for r in rs} - {r for rs in ROWS.values() for r in rs}
    if unknown or set(rows) - set(plan) - {"*"}:
        raise SystemExit(f"--only: unknown {sorted(unknown | (set(rows) - set(plan) - {'*'}))}; "
                         f"models {list(ROWS)}, rows {ROWS}")
    return out


def machine():
    import numpy

    import keras
    import tensorflow as tf

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) * KIB for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem / 2 ** 30:.1f} GiB RAM, GPUs: "
            f"{len(tf.config.list_physical_devices('GPU'))}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__} ({keras.backend.backend()}), "
            f"NumPy {numpy.__version__}")


def fmt_gb(v):
    return f"{v / GB:.2f}"


def table(model_name, recs):
    base = next((r for r in recs if r["row"] == "predict" and "failed" not in r), None)
    ok = [r for r in recs if "failed" not in r]
    r0 = next((r for r in ok if "blocks" in r), None)
    head = f"### {model_name}"
    if r0:
        head += f" ({r0['size']} px, N = {r0['n']}, {r0['blocks']} blocks, sum C = {r0['sum_c']:,})"
    print(head)
    if base:
        print(f"predict: first call {base['seconds']:.1f} s, warm call {base['warm_s']:.1f} s; peak "
              f"{fmt_gb(base['call_peak'])} GB; predicted classes {base['predicted_classes']} of 10, mean max "
              f"probability {base['max_proba_mean']:.3f}")
    print()
    print("| call | seconds | x forward | x warm | setup RSS (GB) | call peak RSS (GB) | call peak - predict peak (GB) "
          "| process peak RSS (GB) | target | met |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in recs:
        label = LABELS[r["row"]].replace("max_samples=128", f"max_samples={min(MAX_SAMPLES, r.get('n', MAX_SAMPLES))}")
        if "failed" in r:
            print(f"| {label} | failed: {r['failed']} | | | | | | | | |")
            continue
        fx = r["seconds"] / base["seconds"] if base else float("nan")
        fw = r["seconds"] / base["warm_s"] if base else float("nan")
        above = r["call_peak"] - base["call_peak"] if base else float("nan")
        target, met = "", ""
        if r["row"] in TARGETS:
            lim, mem = TARGETS[r["row"]]
            target = f"<= {lim}x" + (" and <= predict peak + 1 GB" if mem else "")
            good = fx <= lim and (not mem or above <= 1 * GB)
            met = "yes" if good else "**no**"
        print(f"| {label} | {r['seconds']:.1f} | {fx:.2f} | {fw:.2f} | {fmt_gb(r['setup_rss'])} | "
              f"{fmt_gb(r['call_peak'])} | {above / GB:+.2f} | {fmt_gb(r['process_peak'])} | {target} | {met} |")
    print()
    for r in ok:
        extra = []
        if "prereq_s" in r:
            extra.append(f"untimed fit_probes first: {r['prereq_s']:.1f} s")
        if "filters" in r:
            extra.append(f"{r['block']}: {r['filters']} filters, {r['samples']} samples")
        if "baseline" in r:
            extra.append(f"baseline accuracy {r['baseline']:.3f}")
        if "probe_iters" in r:
            extra.append(f"L-BFGS iterations per block {r['probe_iters']}")
        if "trainer_s" in r:
            extra.append(f"{r['trainer_s']:.1f} s in the probe trainer (L-BFGS, all blocks), "
                         f"{r['seconds'] - r['trainer_s']:.1f} s in the pass and the rest")
        if "health" in r:
            extra.append(f"{r['health']} health notes")
        if r.get("row") == "taylor_mid":
            extra.append(f"second call {r['warm_s']:.1f} s")
        extra.append(f"warnings during call {r['warnings_call']} (setup {r['warnings_setup']})")
        extra.append(f"subprocess wall {r['wall_s']:.0f} s (model build {r['build_s']:.1f} s)")
        if not r.get("peak_reset", True):
            extra.append("could not reset VmHWM: call peak = process peak")
        print(f"- {r['row']}: " + "; ".join(extra))
        for w in r.get("warning_kinds", []):
            print(f"    - {w}")
    mid = next((r for r in ok if r["row"] == "permutation_mid"), None)
    tay = next((r for r in ok if r["row"] == "taylor_mid"), None)
    if mid:
        t = mid["times"]
        print()
        print(f"Mid-block fast path, `{mid['block']}` ({mid['filters']:,} filters), max_samples={mid['samples']}, "
              "n_repeats=1:")
        print()
        print("| method | filters | seconds | seconds per filter | whole block (s) |")
        print("|---|---:|---:|---:|---:|")
        print(f"| permutation, first call (cache pass + tracing) | 8 | {t[0]:.1f} | {t[0] / 8:.2f} (average) | |")
        print(f"| permutation, warm | 8 | {t[1]:.1f} | {t[1] / 8:.2f} (average) | |")
        print(f"| permutation, warm | 32 | {t[2]:.1f} | {t[2] / 32:.2f} (average) | |")
        print(f"| permutation, marginal (32 - 8 filters) / 24; whole block = first call + "
              f"{mid['filters'] - 8} x marginal | | | **{mid['per_filter_s']:.3f}** | "
              f"**{mid['extrapolated_s']:.0f}** (extrapolated) |")
        if tay:
            print(f"| taylor, whole block, first call (one forward + backward pass) | {tay['filters']:,} | "
                  f"{tay['seconds']:.1f} | {tay['seconds'] / tay['filters']:.4f} | **{tay['seconds']:.1f}** |")
            print(f"| taylor, whole block, second call | {tay['filters']:,} | {tay['warm_s']:.1f} | "
                  f"{tay['warm_s'] / tay['filters']:.4f} | {tay['warm_s']:.1f} |")
    print()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, model_name, row, size, n = sys.argv
        return child(model_name, row, int(size), int(n))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quick = os.environ.get("QUICK", "") not in ("", "0")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="models and/or rows, comma separated: resnet50, densenet121, "
                    "a row name (both models), or model:row; predict always runs (the baseline)")
    ap.add_argument("--size", type=int, default=64 if quick else 224)
    ap.add_argument("--n", type=int, default=32 if quick else 256)
    ap.add_argument("--row-timeout", type=float, default=None, help="seconds per row subprocess (default: none)")
    ap.add_argument("--json", default=None, help="also write the raw records to this file")
    args = ap.parse_args()
    plan = selected(args.only)
    print(("QUICK MODE (validation only, not the benchmark): " if quick else "") +
          f"{args.size} px, N = {args.n}; {machine()}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    t_all = time.perf_counter()
    records = []
    for model_name, rows in plan:
        recs = []
        for row in rows:
            rec = run_row(model_name, row, args.size, args.n, args.row_timeout)
            recs.append(rec)
            state = rec.get("failed") or f"{rec['seconds']:.1f} s, call peak {fmt_gb(rec['call_peak'])} GB"
            print(f"  {model_name} {row}: {state} (wall {rec.get('wall_s', 0):.0f} s)", flush=True)
        records.append((model_name, recs))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"total {time.perf_counter() - t_all:.0f} s\n")
    for model_name, recs in records:
        table(model_name, recs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({m: r for m, r in records}, f, indent=1)


if __name__ == "__main__":
    main()
