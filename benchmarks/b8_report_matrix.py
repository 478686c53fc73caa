"""B8: does ``build_report`` finish on every keras.applications architecture of the matrix at 224 px?

For each architecture of docs/ARCHITECTURES.md, in the **nested** form
(``App(include_top=False, weights=None, input_shape=(S, S, 3))`` as the
backbone of ``Input -> base(inp, training=False) -> GlobalAveragePooling2D ->
Dense(10, softmax)``), a FRESH subprocess (so the peak RSS is that
architecture's alone):

1. builds the model (``keras.utils.set_random_seed(0)``) and ``N`` images of
   seeded uniform noise in [0, 1), labels ``0..9`` cycling (every class appears
   when N >= 10);
2. runs ``model.predict(x, batch_size=32)`` once to trace it, then times a
   second call: the reference forward pass;
3. times ``HybridInterpreter(model)`` + ``fit_probes(x, y)``,
   ``build_report(interp, x, y)`` (default sections) and
   ``report.save(<tmp>.html)``.

Recorded: seconds of each step, the report's time as a multiple of the
forward pass, the peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
after the predict and after the report, the number of automatic blocks and
their sum of channels (sum C), the InterpretationWarnings raised, and whether
the report finished. Any exception is recorded with its type, message and the
innermost traceback frames inside ``keras_hybrid_interp``; a process killed
(by the kernel's OOM killer, or by this script's memory watchdog, see
``--max-rss-gib``) is recorded as such with the peak RSS the parent saw via
``os.wait4``. Progress is written to a JSON file after every step, so a crash
keeps what was measured before it.

Run::

    python benchmarks/b8_report_matrix.py                 # all 12, 224 px, N = 32 (15-30 min, 2 cores)
    python benchmarks/b8_report_matrix.py --only DenseNet121
    QUICK=1 python benchmarks/b8_report_matrix.py         # validation: 64 px (or the smallest accepted), N = 8, 2 archs

Options: ``--size``, ``--n``, ``--json FILE`` (raw results), ``--max-rss-gib``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The keras.applications architectures of docs/ARCHITECTURES.md with the
#: smallest input side each accepts (include_top=False, weights=None).
ARCHITECTURES = {
    "VGG16": 32,
    "ResNet50": 32,
    "ResNet50V2": 32,
    "MobileNetV2": 32,
    "MobileNetV3Small": 32,
    "DenseNet121": 32,
    "EfficientNetB0": 32,
    "EfficientNetV2B0": 32,
    "InceptionV3": 75,
    "Xception": 71,
    "ConvNeXtTiny": 32,
    "NASNetMobile": 32,
}
QUICK_ARCHITECTURES = ("MobileNetV2", "ResNet50")

CHILD = r"""
import os, sys, json, time, resource, traceback, warnings
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, {root!r})
name, size, n, out_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rec = {{"arch": name, "size": size, "n": n, "step": "import"}}

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

def dump():
    with open(out_path, "w") as fh:
        json.dump(rec, fh)

dump()
try:
    import numpy as np
    import keras
    from keras import layers
    import keras_hybrid_interp as khi
    from keras_hybrid_interp import HybridInterpreter, build_report

    rec["step"] = "build"; dump()
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    base = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(size, size, 3))
    inp = keras.Input((size, size, 3))
    h = layers.GlobalAveragePooling2D()(base(inp, training=False))
    model = keras.Model(inp, layers.Dense(10, activation="softmax")(h), name="transfer")
    rec["build_s"] = time.perf_counter() - t0
    rec["params"] = int(model.count_params())
    x = np.random.default_rng(0).random((n, size, size, 3), dtype=np.float32)
    y = np.arange(n) % 10

    rec["step"] = "predict"; dump()
    t0 = time.perf_counter()
    model.predict(x, batch_size=32, verbose=0)
    rec["predict_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.predict(x, batch_size=32, verbose=0)
    rec["predict_s"] = time.perf_counter() - t0
    rec["rss_predict_kib"] = rss()

    caught = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec["step"] = "fit_probes"; dump()
        t0 = time.perf_counter()
        interp = HybridInterpreter(model)
        rec["blocks"] = len(interp.blocks)
        rec["sum_c"] = int(sum(int(b.filters or 0) for b in interp.blocks))
        interp.fit_probes(x, y)
        rec["fit_probes_s"] = time.perf_counter() - t0
        rec["rss_probes_kib"] = rss()

        rec["step"] = "build_report"; dump()
        t0 = time.perf_counter()
        report = build_report(interp, x, y)
        rec["report_s"] = time.perf_counter() - t0
        rec["rss_report_kib"] = rss()

        rec["step"] = "save"; dump()
        path = os.path.join(os.path.dirname(out_path), name + ".html")
        t0 = time.perf_counter()
        report.save(path)
        rec["save_s"] = time.perf_counter() - t0
        rec["html_bytes"] = os.path.getsize(path)
        os.remove(path)
    import re
    kinds = {{}}
    for w in caught:
        # One key per kind of message: block names, numbers and lists blanked out.
        msg = re.sub(r"\[[^\]]*\]", "[..]", re.sub(r"'[^']*'", "'..'", str(w.message).splitlines()[0]))
        msg = re.sub(r"\d+(\.\d+)?", "#", msg)[:110]
        where = "" if w.category.__name__ == "InterpretationWarning" else (
            f" [{{w.filename.split('site-packages/')[-1]}}:{{w.lineno}}]")
        key = f"{{w.category.__name__}}{{where}}: {{msg}}"
        kinds[key] = kinds.get(key, 0) + 1
    rec["warnings"] = kinds
    rec["finished"] = True
    rec["step"] = "done"
except BaseException as exc:  # record, never crash the table
    rec["finished"] = False
    rec["error_type"] = type(exc).__name__
    rec["error"] = str(exc)[:2000]
    frames = traceback.extract_tb(exc.__traceback__)
    rec["traceback"] = traceback.format_exception(type(exc), exc, exc.__traceback__)[-40:]
    rec["package_frames"] = [f"{{os.path.relpath(f.filename, {root!r})}}:{{f.lineno}} in {{f.name}}: {{f.line}}"
                             for f in frames if "keras_hybrid_interp" in f.filename][-6:]
rec["rss_end_kib"] = rss()
dump()
"""


def _current_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_one(name, size, n, max_rss_gib, workdir):
    """Runs one architecture in a fresh subprocess; returns its record (never raises)."""
    out_path = os.path.join(workdir, f"{name}.json")
    log_path = os.path.join(workdir, f"{name}.log")
    code = CHILD.format(root=ROOT)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, name, str(size), str(n), out_path],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    killed = {}
    limit = max_rss_gib * 2 ** 20 if max_rss_gib else None

    def watch():
        while proc.poll() is None:
            cur = _current_rss_kib(proc.pid)
            if limit and cur > limit:
                killed["rss_kib"] = cur
                proc.kill()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    watcher.join(timeout=2)
    wall = time.perf_counter() - t0
    try:
        with open(out_path) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        rec = {"arch": name, "size": size, "n": n, "step": "start"}
    rec["wall_s"] = wall
    rec["child_maxrss_kib"] = usage.ru_maxrss  # the parent's view, valid even if the child was killed
    rec["returncode"] = proc.returncode
    if rec.get("step") != "done" and "error_type" not in rec:
        rec["finished"] = False
        if killed:
            rec["error_type"] = "MemoryLimit"
            rec["error"] = (f"killed by the benchmark's watchdog during {rec['step']}: RSS "
                            f"{killed['rss_kib'] / 2 ** 20:.1f} GiB > --max-rss-gib {max_rss_gib}")
        elif proc.returncode < 0:
            rec["error_type"] = f"signal {-proc.returncode}"
            rec["error"] = (f"process killed by signal {-proc.returncode} during {rec['step']} "
                            "(SIGKILL: most likely the kernel's OOM killer)")
        else:
            rec["error_type"] = f"exit {proc.returncode}"
            with open(log_path) as fh:
                tail = fh.read().strip().splitlines()[-5:]
            rec["error"] = f"process exited with {proc.returncode} during {rec['step']}: " + " | ".join(tail)
    return rec


def _mib(kib):
    return f"{kib / 1024:,.0f}" if kib else ""


def _int(v):
    return f"{v:,}" if isinstance(v, int) else ""


def _s(v):
    return f"{v:.1f}" if isinstance(v, (int, float)) else ""


def table(rows):
    lines = [
        "| architecture | input | params | blocks | sum C | predict s | fit_probes s | build_report s "
        "| x forward | save s | peak RSS after predict (MiB) | peak RSS after report (MiB) | finished |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = r["report_s"] / r["predict_s"] if r.get("report_s") and r.get("predict_s") else None
        peak_report = r.get("rss_report_kib") or (r.get("child_maxrss_kib") if not r.get("finished") else None)
        if r.get("finished"):
            status = "yes"
        else:
            status = f"**no**: {r.get('error_type')} in {r.get('step')}"
            if not r.get("rss_report_kib") and r.get("child_maxrss_kib"):
                status += " (peak RSS column: whole process)"
        params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else ""
        lines.append(
            f"| {r['arch']} | {r['size']}x{r['size']} | {params} | {r.get('blocks', '')} | "
            f"{_int(r.get('sum_c'))} | {_s(r.get('predict_s'))} | "
            f"{_s(r.get('fit_probes_s'))} | {_s(r.get('report_s'))} | {_s(ratio)} | {_s(r.get('save_s'))} | "
            f"{_mib(r.get('rss_predict_kib'))} | {_mib(peak_report)} | {status} |"
        )
    return "\n".join(lines)


def failures(rows):
    out = []
    for r in rows:
        if r.get("finished"):
            continue
        out.append(f"### {r['arch']}: {r.get('error_type')} during {r.get('step')}\n")
        out.append(f"{r.get('error', '')}\n")
        if r.get("package_frames"):
            out.append("Innermost frames inside keras_hybrid_interp:\n")
            out += [f"    {f}" for f in r["package_frames"]]
        if r.get("traceback"):
            out.append("\nTraceback (last lines):\n")
            out += ["    " + line for chunk in r["traceback"][-12:] for line in chunk.rstrip().splitlines()]
        out.append("")
    return "\n".join(out)


def main(argv=None):
    quick = os.environ.get("QUICK", "") not in ("", "0")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(ARCHITECTURES), metavar="NAME",
                    help=f"architectures to run (default: all; QUICK=1: {', '.join(QUICK_ARCHITECTURES)})")
    ap.add_argument("--size", type=int, default=64 if quick else 224,
                    help="input side; raised to the smallest the architecture accepts (default 224; QUICK 64)")
    ap.add_argument("--n", type=int, default=8 if quick else 32, help="images (default 32; QUICK 8)")
    ap.add_argument("--max-rss-gib", type=float, default=20.0,
                    help="kill an architecture's process above this RSS and record it (0: no limit)")
    ap.add_argument("--json", help="also write the raw records to this file")
    args = ap.parse_args(argv)
    names = args.only or (list(QUICK_ARCHITECTURES) if quick else list(ARCHITECTURES))

    import platform

    print(f"B8: build_report matrix, nested form, N = {args.n}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="b8_") as workdir:
        for name in names:
            size = max(args.size, ARCHITECTURES[name])
            rec = run_one(name, size, args.n, args.max_rss_gib, workdir)
            rows.append(rec)
            state = "finished" if rec.get("finished") else f"FAILED ({rec.get('error_type')} in {rec.get('step')})"
            print(f"{name:18s} {size}px {state:40s} {rec['wall_s']:7.1f} s wall, peak RSS "
                  f"{rec['child_maxrss_kib'] / 1024:,.0f} MiB, load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"total_wall_s": time.perf_counter() - t_all, "rows": rows}, fh, indent=1)
    print()
    print(table(rows))
    print()
    print(f"{sum(bool(r.get('finished')) for r in rows)} / {len(rows)} finished; "
          f"{time.perf_counter() - t_all:.0f} s wall in all.")
    warned = {}
    for r in rows:
        for k, c in (r.get("warnings") or {}).items():
            warned.setdefault(k, []).append(f"{r['arch']} ({c})")
    if warned:
        print("\nWarnings raised (architecture, count):")
        for k, archs in warned.items():
            print(f"- {k}: {', '.join(archs)}")
    fail = failures(rows)
    if fail:
        print("\nFailures:\n")
        print(fail)
    return 0 if all(r.get("finished") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
