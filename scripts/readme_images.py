"""Regenerates the README's pictures (docs/images/*.png) from a real demo run.

Runs ``keras-hybrid-interp demo`` into a temporary folder and copies four of the figures the
report wrote there (``figures/*.png``) to ``docs/images/``.

Usage: python scripts/readme_images.py
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: README picture -> prefix of the report figure it is copied from.
PICTURES = {
    "layer_accuracy.png": "layer_by_layer_predictions_",
    "local_explanation.png": "local_explanations_local_explanation_of_input_0",
    "filter_importance.png": "filter_importance_",
    "filter_correlation.png": "filter_correlation_",
}


def main() -> int:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "keras_hybrid_interp", "demo", "--quiet", "--out", tmp],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=1800)
        figures = sorted((pathlib.Path(tmp) / "figures").glob("*.png"))
        for picture, prefix in PICTURES.items():
            match = [f for f in figures if f.name.startswith(prefix)]
            if not match:
                raise SystemExit(f"no report figure starts with {prefix!r}; have {[f.name for f in figures]}")
            shutil.copyfile(match[0], ROOT / "docs" / "images" / picture)
            print(f"docs/images/{picture} <- {match[0].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
