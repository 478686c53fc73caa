"""B13: task reports - build_report on a U-Net, a multi-label and a regression ResNet50 (issue 19, section 5).

Each report is measured as a multiple of one ``model.predict`` of the same
model over the same images, in the same run, and its peak memory against
``predict``'s peak.

Models (random init, ``keras.utils.set_random_seed(0)`` before each build):

- **unet**: a U-Net for 256 x 256 grey images: 4 levels, two 3x3
  Conv-ReLU per level with 32, 64, 128 filters on the way down (2x2 max
  pooling between levels) and 256 at the bottleneck; on the way up a 2x2
  stride-2 ``Conv2DTranspose`` to the level's width, ``Concatenate`` with the
  encoder's tensor of the same size, two 3x3 Conv-ReLU (128, 64, 32); a 1x1
  ``Conv2D(4, softmax)`` head: a per-pixel softmax over 4 classes
  (1.9 M parameters). Data: ``make_shapes_segmentation(N, size=256)`` (grey
  images of planted squares, discs and textured shapes, masks 0..3).
  ``HybridInterpreter(model)`` infers ``task="segmentation"`` and finds its
  7 blocks automatically (3 encoder, the bottleneck, 3 decoder).
- **multilabel**, **regression**, **multiclass**: B6's nested ResNet50,
  ``Input -> ResNet50(include_top=False, weights=None) -> GlobalAveragePooling2D
  -> head``, with the head ``Dense(14, sigmoid)`` (multi-label, ``y`` (N, 14)
  of 0/1 drawn with P(1) = 0.3, every label having both values),
  ``Dense(2)`` (``task="regression"``, ``y`` (N, 2) standard normal floats),
  or B6's ``Dense(10, softmax)`` (single-label, labels 0..9: the reference
  the issue compares with, re-measured in the same run). Images: seeded
  uniform noise in [0, 1) (``numpy.random.default_rng(0)``), as B6. 17
  automatic blocks.

Rows. Each (model, row) runs in a FRESH subprocess (this script with
``--child``), which builds the model from the seed and makes the data:

- ``predict``: ``model.predict(x, batch_size=B)``, the first call in the
  process (tracing included, as in B6), then a second, warm call;
- ``report``: ``HybridInterpreter(model[, task="regression"])`` and
  ``fit_probes(x, y, batch_size=B)`` first, untimed (as in B6: fitting is
  not part of "the report"; its seconds are printed), then timed:
  ``build_report(interp, x, y, batch_size=B)`` with the default sections and
  options (``n_repeats=3, max_samples=512``: every sample), then
  ``.save(<tmp>/report.html)`` (the PNGs rendered). "The report", as in B6,
  is build + save; ``build_report`` alone is shown too.

Batch size ``B``: 64 for ResNet50 (B6's); 16 for the U-Net (at 256 x 256 the
first level's maps take 8 MiB per image and channel block of 32; N = 64 in
batches of 64 would be a single batch, not a stream). ``predict`` and the
report use the same ``B``.

Memory, as B6: *setup RSS* = ``VmRSS`` just before the timed call;
*call peak* = ``VmHWM`` after it, the high-water mark having been reset just
before (``/proc/self/clear_refs``), so ``fit_probes``' own peak does not count
but what it leaves resident does; *process peak* = ``ru_maxrss``. GB = 1e9 B.

Targets (issue 19): U-Net report <= 2x one ``predict`` and call peak <=
``predict``'s peak + 1 GB; multi-label and regression reports <= 1.5x one
``predict`` ("as the single-label report is there": B6 measured 1.29x).

Run::

    python benchmarks/b13_task_reports.py                  # full: U-Net 256 px N = 64, ResNet50 224 px N = 256
    QUICK=1 python benchmarks/b13_task_reports.py          # validation only: 64 px, N = 16
    python benchmarks/b13_task_reports.py --only unet,regression
    python benchmarks/b13_task_reports.py --no-reference   # without the single-label ResNet50 rows
    python benchmarks/b13_task_reports.py --profile unet   # cProfile of that report (its own run, not timed)
    python benchmarks/b13_task_reports.py --json out.json

Duration: the full run about 10 minutes on 2 quiet cores (8 subprocesses;
the ResNet50 ``predict`` rows about 20 s each).
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

MODELS = ("unet", "multilabel", "regression", "multiclass")
TASK_ARG = {"regression": "regression"}  # the others: task="auto" infers it
TARGETS = {"unet": (2.0, True), "multilabel": (1.5, False), "regression": (1.5, False)}  # (x predict, memory?)
BATCH = {"unet": 16}  # the others: 64 (B6)
UNET_FILTERS = (32, 64, 128, 256)
N_LABELS = 14


# ----------------------------------------------------------------------------------------------
# child: one row in a fresh process
# ----------------------------------------------------------------------------------------------


def build_unet(size, filters=UNET_FILTERS, classes=4):
    import keras
    from keras import layers

    def level(h, f, name):
        h = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"{name}_conv1")(h)
        return layers.Conv2D(f, 3, padding="same", activation="relu", name=f"{name}_conv2")(h)

    inp = keras.Input((size, size, 1))
    h, skips = inp, []
    for i, f in enumerate(filters[:-1], 1):
        h = level(h, f, f"enc{i}")
        skips.append(h)
        h = layers.MaxPooling2D(name=f"pool{i}")(h)
    h = level(h, filters[-1], "bottleneck")
    for i in range(len(filters) - 1, 0, -1):
        f = filters[i - 1]
        up = layers.Conv2DTranspose(f, 2, strides=2, name=f"up{i}")(h)
        h = level(layers.Concatenate(name=f"skip{i}")([up, skips[i - 1]]), f, f"dec{i}")
    return keras.Model(inp, layers.Conv2D(classes, 1, activation="softmax", name="mask")(h), name="unet")


def build(model_name, size, n):
    """(model, x, y) from the seed."""
    import numpy as np

    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    if model_name == "unet":
        from keras_hybrid_interp.datasets import make_shapes_segmentation

        x, masks = make_shapes_segmentation(n, size=size, random_state=0)
        return build_unet(size), x, masks
    inp = keras.Input((size, size, 3))
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3))
    h = layers.GlobalAveragePooling2D()(backbone(inp))
    head = {"multilabel": layers.Dense(N_LABELS, activation="sigmoid"), "regression": layers.Dense(2),
            "multiclass": layers.Dense(10, activation="softmax")}[model_name]
    model = keras.Model(inp, head(h), name=f"resnet50_{model_name}")
    rng = np.random.default_rng(0)
    x = rng.random((n, size, size, 3), dtype=np.float32)
    if model_name == "multilabel":
        y = (rng.random((n, N_LABELS)) < 0.3).astype(np.float32)
        y[0], y[1] = 1.0, 0.0  # every label has both values
    elif model_name == "regression":
        y = rng.standard_normal((n, 2)).astype(np.float32)
    else:
        y = rng.integers(0, 10, size=n)
    return model, x, y


def child(model_name, row, size, n, profile_path=None, skip=()):
    import resource
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)

    from keras_hybrid_interp import HybridInterpreter
    from keras_hybrid_interp.report import build_report

    bs = BATCH.get(model_name, 64)
    out = {"model": model_name, "row": row, "size": size, "n": n, "batch_size": bs}
    t0 = time.perf_counter()
    model, x, y = build(model_name, size, n)
    out["build_s"] = time.perf_counter() - t0
    out["params"] = int(model.count_params())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        interp = None
        if row == "report":
            interp = HybridInterpreter(model, task=TASK_ARG.get(model_name, "auto"))
            out["task"] = interp.task
            out["blocks"] = len(interp.block_names)
            out["sum_c"] = int(sum(b.filters for b in interp.blocks))
            frame = interp.blocks.to_frame()
            if "stage" in frame:
                out["stages"] = {str(k): int(v) for k, v in frame["stage"].value_counts().items()}
            t0 = time.perf_counter()
            interp.fit_probes(x, y, batch_size=bs, verbose=0)
            out["fit_probes_s"] = time.perf_counter() - t0
        out["setup_rss"] = status_bytes("VmRSS")
        out["peak_reset"] = reset_peak()
        n_setup_warnings = len(caught)

        t0 = time.perf_counter()
        if row == "predict":
            pred = model.predict(x, batch_size=bs, verbose=0)
            out["seconds"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            model.predict(x, batch_size=bs, verbose=0)
            out["warm_s"] = time.perf_counter() - t1
            out["output_shape"] = list(pred.shape)
        elif row == "report":
            prof = None
            if profile_path:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            kw = {}
            if skip:
                from keras_hybrid_interp.report import REPORT_SECTIONS

                kw["sections"] = [s for s in REPORT_SECTIONS if s not in skip and s != "comparison"]
                out["sections"] = kw["sections"]
            rep = build_report(interp, x, y, batch_size=bs, **kw)
            out["report_s"] = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp:  # what a reviewer gets: the saved HTML
                path = os.path.join(tmp, "report.html")
                rep.save(path)
                out["html_mb"] = os.path.getsize(path) / 1e6
            out["seconds"] = time.perf_counter() - t0
            out["save_s"] = out["seconds"] - out["report_s"]
            if prof is not None:
                prof.disable()
                prof.dump_stats(profile_path)
            out["health"] = [k for k, _ in rep.health]
        else:
            raise SystemExit(f"unknown row {row!r}")
        out["call_peak"] = status_bytes("VmHWM")
    out["process_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
    kinds = {}
    for w in caught[n_setup_warnings:]:  # the call's warnings, names and numbers blanked, counted
        msg = re.sub(r"\d+", "#", re.sub(r"'[^']*'", "'...'", str(w.message)))[:160]
        key = f"{w.category.__name__}: {msg}"
        kinds[key] = kinds.get(key, 0) + 1
    out.update(warnings_call=len(caught) - n_setup_warnings,
               warning_kinds=[f"{c} x {m}" for m, c in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]])
    if not out["peak_reset"]:
        out["call_peak"] = out["process_peak"]
    print("B13-RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------
def run_row(model_name, row, size, n, timeout=None, profile_path=None, skip=""):
    cmd = [sys.executable, HERE, "--child", model_name, row, str(size), str(n)]
    cmd += [profile_path] if profile_path else []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", B13_SKIP_SECTIONS=skip)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model_name, "row": row, "failed": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("B13-RESULT "):
            rec = json.loads(line[len("B13-RESULT "):])
            rec["wall_s"] = wall
            return rec
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    why = "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else f"exit status {proc.returncode}"
    return {"model": model_name, "row": row, "failed": f"{why}: {tail}", "wall_s": wall}


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


def commit():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                                "keras_hybrid_interp"], capture_output=True, text=True).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
        return head + (f" (package files modified in the working tree: {', '.join(dirty)})" if dirty else "")
    except OSError:
        return "?"


def table(results):
    print("| model | task | size, N, batch | blocks (sum C) | predict s (warm) | fit_probes s (untimed) "
          "| build_report s | save s | report s | **report / predict** | build_report / predict "
          "| predict peak (GB) | report call peak (GB) | peak - predict peak (GB) | target | met |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for model_name, recs in results:
        base, rep = recs.get("predict", {}), recs.get("report", {})
        if "failed" in base or "failed" in rep or not base or not rep:
            print(f"| {model_name} | | | | {base.get('failed', '')} | | | | {rep.get('failed', '')} "
                  "| | | | | | | |")
            continue
        fx = rep["seconds"] / base["seconds"]
        fb = rep["report_s"] / base["seconds"]
        above = rep["call_peak"] - base["call_peak"]
        target, met = "reference (B6: 1.29x)", ""
        if model_name in TARGETS:
            lim, mem = TARGETS[model_name]
            target = f"<= {lim}x" + (" and <= predict peak + 1 GB" if mem else "")
            good = fx <= lim and (not mem or above <= 1 * GB)
            met = "yes" if good else "**no**"
            if not good and fb <= lim and (not mem or above <= 1 * GB):
                met += " (build_report alone: yes)"
        print(f"| {model_name} | {rep['task']} | {rep['size']} px, {rep['n']}, {rep['batch_size']} | "
              f"{rep['blocks']} ({rep['sum_c']:,}) | {base['seconds']:.1f} ({base['warm_s']:.1f}) | "
              f"{rep['fit_probes_s']:.1f} | {rep['report_s']:.1f} | {rep['save_s']:.1f} | {rep['seconds']:.1f} | "
              f"**{fx:.2f}** | {fb:.2f} | {base['call_peak'] / GB:.2f} | {rep['call_peak'] / GB:.2f} | "
              f"{above / GB:+.2f} | {target} | {met} |")
    print()
    for model_name, recs in results:
        for row, r in recs.items():
            if "failed" in r:
                continue
            extra = [f"params {r['params']:,}", f"setup RSS {r['setup_rss'] / GB:.2f} GB",
                     f"process peak {r['process_peak'] / GB:.2f} GB", f"subprocess wall {r['wall_s']:.0f} s"]
            if "stages" in r:
                extra.append(f"blocks by stage {r['stages']}")
            if "html_mb" in r:
                extra.append(f"HTML {r['html_mb']:.1f} MB")
            if "health" in r:
                extra.append(f"health notes {sorted(set(r['health']))}")
            if "output_shape" in r:
                extra.append(f"output {r['output_shape']}")
            extra.append(f"warnings during the call {r['warnings_call']}")
            print(f"- {model_name} {row}: " + "; ".join(extra))
            for w in r.get("warning_kinds", []):
                print(f"    - {w}")
    print()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model_name, row, size, n = sys.argv[2:6]
        skip = tuple(v for v in os.environ.get("B13_SKIP_SECTIONS", "").split(",") if v)
        return child(model_name, row, int(size), int(n), sys.argv[6] if len(sys.argv) > 6 else None, skip)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quick = os.environ.get("QUICK", "") not in ("", "0")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help=f"models, comma separated, from {MODELS}")
    ap.add_argument("--no-reference", action="store_true", help="skip the single-label ResNet50 rows")
    ap.add_argument("--unet-size", type=int, default=64 if quick else 256)
    ap.add_argument("--unet-n", type=int, default=16 if quick else 64)
    ap.add_argument("--size", type=int, default=64 if quick else 224, help="ResNet50 input side")
    ap.add_argument("--n", type=int, default=16 if quick else 256, help="ResNet50 images")
    ap.add_argument("--profile", default=None, metavar="MODEL",
                    help="run MODEL's report once under cProfile and print where the time goes (no table)")
    ap.add_argument("--skip-sections", default="", metavar="S1,S2",
                    help="report sections to leave out (e.g. importance,atlas): a diagnostic, not the benchmark")
    ap.add_argument("--row-timeout", type=float, default=None)
    ap.add_argument("--json", default=None, help="also write the raw records to this file")
    args = ap.parse_args()
    models = [m.strip() for m in args.only.split(",") if m.strip()] or list(MODELS)
    if args.no_reference and "multiclass" in models:
        models.remove("multiclass")
    bad = set(models) - set(MODELS)
    if bad or (args.profile and args.profile not in MODELS):
        raise SystemExit(f"unknown model(s) {sorted(bad) or [args.profile]}; choose from {MODELS}")

    def shape(m):
        return (args.unet_size, args.unet_n) if m == "unet" else (args.size, args.n)

    if args.profile:
        import pstats

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.prof")
            rec = run_row(args.profile, "report", *shape(args.profile), args.row_timeout, profile_path=path,
                          skip=args.skip_sections)
            print(json.dumps({k: v for k, v in rec.items() if k not in ("warning_kinds", "health")}))
            if "failed" not in rec:
                st = pstats.Stats(path)
                st.sort_stats("cumulative").print_stats(45)
                st.sort_stats("tottime").print_stats(25)
                if os.environ.get("B13_PROFILE_SAVE"):  # keep the profile for a closer look (pstats)
                    import shutil

                    shutil.copy(path, os.environ["B13_PROFILE_SAVE"])
        return

    print(("QUICK MODE (validation only, not the benchmark): " if quick else "") +
          f"U-Net {args.unet_size} px N = {args.unet_n}; ResNet50 {args.size} px N = {args.n}; {machine()}")
    print(f"commit {commit()}; {time.strftime('%Y-%m-%d %H:%M')}")
    if args.skip_sections:
        print(f"DIAGNOSTIC: report sections left out: {args.skip_sections}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    t_all = time.perf_counter()
    results = []
    for m in models:
        recs = {}
        for row in ("predict", "report"):
            rec = run_row(m, row, *shape(m), args.row_timeout, skip=args.skip_sections)
            recs[row] = rec
            state = rec.get("failed") or f"{rec['seconds']:.1f} s, call peak {rec['call_peak'] / GB:.2f} GB"
            print(f"  {m} {row}: {state} (wall {rec.get('wall_s', 0):.0f} s; load "
                  f"{' '.join(f'{v:.2f}' for v in os.getloadavg())})", flush=True)
        results.append((m, recs))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"total {time.perf_counter() - t_all:.0f} s\n")
    table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results), f, indent=1)


if __name__ == "__main__":
    main()
