"""Regenerates the demo output printed in the README from a real run.

Runs ``keras-hybrid-interp demo --quiet --out ''`` (the first of the README's two commands,
without writing the report) and writes what it prints between the README's
``<!-- demo-output -->`` markers. ``tests/test_readme.py`` checks that the README matches a
fresh run: the same words and layout, and every decimal number within ``NUMBER_TOLERANCE``
(training and the probes differ in their last bits between CPUs).

Usage: python scripts/readme_demo_output.py [--check]
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- demo-output:start -->", "<!-- demo-output:end -->"


def demo_output() -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, "-m", "keras_hybrid_interp", "demo", "--quiet", "--out", ""],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True, timeout=1800)
    return res.stdout.strip("\n")


def readme_block(text: str) -> str:
    m = re.search(re.escape(START) + r"\n```\n(.*?)\n```\n" + re.escape(END), text, flags=re.S)
    if m is None:
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return m.group(1)


#: How far a printed number may move between CPUs (a probe's accuracy moved by 0.009 between an
#: Intel and an AMD machine of the same image: the CNN trains in float32, and its last bits differ).
NUMBER_TOLERANCE = 0.025
_NUMBER = re.compile(r"^-?\d+\.\d+$")


def differences(old: str, new: str, atol: float = NUMBER_TOLERANCE) -> list[str]:
    """Where ``new`` differs from ``old``: any other word, line or layout, or a decimal number by more than ``atol``."""
    a, b = old.splitlines(), new.splitlines()
    if len(a) != len(b):
        return [f"{len(a)} lines in the README, {len(b)} printed"]
    out = []
    for i, (la, lb) in enumerate(zip(a, b), 1):
        wa, wb = la.split(), lb.split()
        same = len(wa) == len(wb) and all(
            x == y or (_NUMBER.match(x) and _NUMBER.match(y) and abs(float(x) - float(y)) <= atol)
            for x, y in zip(wa, wb))
        if not same:
            out.append(f"line {i}: README {la!r}, printed {lb!r}")
    return out


def main(argv) -> int:
    text = README.read_text(encoding="utf-8")
    old = readme_block(text)
    new = demo_output()
    if "--check" in argv:
        diff = differences(old, new)
        if diff:
            print("README demo output is stale; run python scripts/readme_demo_output.py\n" + "\n".join(diff))
            return 1
        return 0
    README.write_text(text.replace(f"{START}\n```\n{old}\n```\n{END}", f"{START}\n```\n{new}\n```\n{END}"),
                      encoding="utf-8")
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
