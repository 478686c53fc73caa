"""Regenerates the demo output printed in the README from a real run.

Runs ``keras-hybrid-interp demo --quiet --out ''`` (the first of the README's two commands,
without writing the report) and writes what it prints between the README's
``<!-- demo-output -->`` markers. ``tests/test_readme.py`` checks that the README matches a
fresh run.

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


def main(argv) -> int:
    text = README.read_text(encoding="utf-8")
    old = readme_block(text)
    new = demo_output()
    if "--check" in argv:
        if old != new:
            print("README demo output is stale; run python scripts/readme_demo_output.py")
            return 1
        return 0
    README.write_text(text.replace(f"{START}\n```\n{old}\n```\n{END}", f"{START}\n```\n{new}\n```\n{END}"),
                      encoding="utf-8")
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
