"""The README's printed demo output is what the demo prints (slow: it trains the demo CNN)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_readme_demo_output_is_a_fresh_run():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "readme_demo_output.py"), "--check"],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
