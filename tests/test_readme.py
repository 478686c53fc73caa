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


def test_the_readme_check_allows_cpu_rounding_and_nothing_else():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_demo_output",
                                                  os.path.join(ROOT, "scripts", "readme_demo_output.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    old = " block  accuracy  loss\n pool1     0.816 0.596\nOne image: agree from block 'pool1' on."
    assert mod.differences(old, old.replace("0.816", "0.807").replace("0.596", "0.600")) == []
    assert mod.differences(old, old.replace("0.816", "0.716"))  # a real change
    assert mod.differences(old, old.replace("'pool1' on", "'pool2' on"))  # another word
    assert mod.differences(old, old.replace("0.596", "0.596 0.1"))  # another layout
    assert mod.differences(old, old + "\nmore")  # another line
