"""The tutorials in tutorials/*.ipynb: well-formed, and they run offline without an error.

The structural checks read the notebook JSON and run in the default suite. Executing the
notebooks takes minutes, so it is in the slow group (``python -m pytest -m slow``); it needs
nbclient, nbformat and ipykernel (a ``python3`` kernel), and is skipped without them.
"""

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPO / "tutorials").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/keras-hybrid-interp/keras-hybrid-interp/blob/main/tutorials/{}"
INSTALL = "pip install -q git+https://github.com/keras-hybrid-interp/keras-hybrid-interp"
MAX_BYTES = 1_500_000


def _load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_tutorials():
    names = [p.name for p in TUTORIALS]
    assert {"01_quickstart.ipynb", "02_global_analysis.ipynb", "03_transfer_learning.ipynb",
            "05_filter_atlas.ipynb", "06_signals_1d.ipynb", "07_volumes_3d.ipynb", "08_multilabel_signals.ipynb",
            "09_segmentation_unet.ipynb", "10_regression_blobs.ipynb"} <= set(names)


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = _load(path)
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    assert COLAB.format(path.name) in _source(first), "the first cell needs its own 'Open in Colab' badge"

    code = _code_cells(nb)
    install = _source(code[0])
    assert '"google.colab" in sys.modules' in install and INSTALL in install
    compile(install, f"{path.name}: install cell", "exec")  # plain Python, no '!' or '%' magic
    for i, cell in enumerate(code):
        # Line magics (%config) are fine in a notebook; everything else must be valid Python.
        src = "\n".join("" if line.lstrip().startswith("%") else line for line in _source(cell).splitlines())
        compile(src, f"{path.name}: code cell {i}", "exec")
        assert "plt.show(" not in src
    assert any("keras.utils.set_random_seed(" in _source(c) for c in code), "fix the seed"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_notebook_is_stored_executed_and_small(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes; lower the figure dpi"
    nb = _load(path)
    code = _code_cells(nb)
    counts = [c.get("execution_count") for c in code]
    assert all(isinstance(n, int) for n in counts[1:]), "store the notebook executed, every cell run"
    assert counts[1:] == sorted(counts[1:]), "cells were executed out of order"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the stored outputs"
    # Outputs must not leak the machine the notebook was executed on.
    assert str(REPO) not in path.read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    nb = nbformat.read(str(path), as_version=4)
    # One extra cell at the end says where the kernel imported the package from.
    nb.cells.append(nbformat.v4.new_code_cell("import keras_hybrid_interp\nprint(keras_hybrid_interp.__file__)"))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as in Jupyter or Colab
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,  # per cell
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    before = {p.name for d in (REPO, REPO / "tutorials") for p in d.iterdir()}
    client.execute(env=env)  # raises CellExecutionError on the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    where = "".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout").strip()
    assert Path(where).resolve().is_relative_to(REPO), f"the kernel imported keras_hybrid_interp from {where}"
    # What the notebook wrote (reports, saved models) is in its working directory, not in the repository.
    after = {p.name for d in (REPO, REPO / "tutorials") for p in d.iterdir()}
    written = {p.name for p in tmp_path.iterdir()}
    assert not (after - before) & written, (
        f"the notebook wrote {sorted((after - before) & written)} into the repository"
    )
