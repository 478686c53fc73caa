"""``keras-hybrid-interp analyze ... --concepts concepts.npz [--concept-random random.npz]``, end to end.

Runs ``cli.main`` in-process (the subprocess start-up is tested in test_cli.py). The oracle of the
report's Concepts numbers: ``HybridInterpreter.concepts`` run here on the test part of the split, with the
random control re-drawn by its documented rule (NumPy), against the ``report.json`` the command wrote.
Bad concept files and flags exit with status 2 and one line naming the flag.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest

import keras

from keras_hybrid_interp import HybridInterpreter
from keras_hybrid_interp.cli import main, split_train_test
from keras_hybrid_interp.report_sections import concepts as rc

from models import small_cnn

SEED = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_concepts")
    keras.utils.set_random_seed(0)
    small_cnn(classes=3).save(d / "model.keras")
    rng = np.random.default_rng(0)
    x = rng.random((60, 16, 16, 1), dtype=np.float32)
    np.savez(d / "data.npz", x=x, y=np.arange(60) % 3)
    bright = np.clip(rng.random((24, 16, 16, 1), dtype=np.float32) * 0.5 + 0.5, 0, 1)
    stripes = rng.random((20, 16, 16, 1), dtype=np.float32) * 0.3
    stripes[:, ::2] += 0.7
    np.savez(d / "concepts.npz", bright=bright, stripes=stripes)
    np.savez(d / "random.npz", pool=rng.random((200, 16, 16, 1), dtype=np.float32))
    np.savez(d / "two.npz", a=x[:20], b=x[20:40])
    np.savez(d / "bad_shape.npz", bad=rng.random((30, 8, 8, 1), dtype=np.float32))
    np.savez(d / "few.npz", few=bright[:5])
    return d


def _run(files, *args, out="out"):
    return main(["analyze", str(files / "model.keras"), "--data", str(files / "data.npz"), "--out",
                 str(files / out), "--quiet", "--seed", str(SEED), *args])


def test_analyze_with_concepts_writes_the_section_with_the_numbers_of_interp_concepts(files, capsys):
    status = _run(files, "--concepts", str(files / "concepts.npz"), "--concept-random", str(files / "random.npz"),
                  "--n-random", "10")
    assert status == 0, capsys.readouterr().err[-2000:]
    record = json.loads((files / "out" / "report.json").read_text())
    sec = next(s for s in record["sections"] if s["name"] == "concepts")
    assert ">Concepts</h2>" in (files / "out" / "report.html").read_text()
    # The oracle: the analysis on the command's test part, with the random control drawn by its rule.
    data, concepts = np.load(files / "data.npz"), dict(np.load(files / "concepts.npz"))
    pool = np.load(files / "random.npz")["pool"]
    x, y = data["x"], data["y"]
    _, test = split_train_test(y, len(y), 0.3, SEED)
    rows = np.sort(np.random.default_rng([SEED, 21]).choice(len(pool), 24, replace=False))  # 24: largest concept
    concepts[rc.RANDOM_CONTROL] = pool[rows]
    model = keras.models.load_model(files / "model.keras")
    expected = HybridInterpreter(model).concepts(concepts, x[test], y[test], random=np.delete(pool, rows, axis=0),
                                                 n_random=10, random_state=SEED).to_frame()
    table = next(t for t in sec["tables"] if t["caption"] == rc.TABLES["frame"])
    got = pd.DataFrame(table["rows"], columns=table["columns"])
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected) > 0
    for col in expected.columns:
        if pd.api.types.is_float_dtype(expected[col]):
            np.testing.assert_array_equal(np.array(got[col].tolist(), dtype=float), expected[col].to_numpy(), col)
        else:
            assert got[col].tolist() == expected[col].tolist(), col
    assert np.abs(expected["tcav_magnitude"]).max() > 0
    assert sec["values"]["random_control_rows"] == rows.tolist()
    assert "--concepts" in record["provenance"]["command_line"]


def test_analyze_with_a_control_of_the_users(files, capsys):
    status = _run(files, "--concepts", str(files / "concepts.npz"), "--concept-random", str(files / "random.npz"),
                  "--concept-controls", "stripes", "--n-random", "10", out="out_ctl")
    assert status == 0, capsys.readouterr().err[-2000:]
    record = json.loads((files / "out_ctl" / "report.json").read_text())
    sec = next(s for s in record["sections"] if s["name"] == "concepts")
    sets = next(t for t in sec["tables"] if t["caption"] == rc.TABLES["sets"])
    roles = {row[0]: row[1] for row in sets["rows"]}
    assert roles == {"bright": "concept", "stripes": "negative control"}
    assert sec["values"]["random_control_rows"] is None


@pytest.mark.parametrize("args, message", [
    (["--concepts", "missing.npz"], "--concepts: no such file: missing.npz"),
    (["--concept-random", "random.npz"], "--concept-random is given but --concepts is not"),
    (["--concept-controls", "bright"], "--concept-controls is given but --concepts is not"),
    (["--concepts", "bad_shape.npz"], "--concepts: array 'bad' has shape (30, 8, 8, 1), but the model's inputs"),
    (["--concepts", "concepts.npz", "--concept-random", "two.npz"], "must hold one array (the random inputs)"),
    (["--concepts", "concepts.npz", "--n-random", "2"], "--n-random must be at least 3"),
    (["--concepts", "concepts.npz", "--concept-random", "random.npz", "--concept-controls", "nope"],
     "--concept-controls names 'nope', which is not one of `concepts`"),
    (["--concepts", "few.npz", "--concept-random", "random.npz", "--n-random", "10"],
     "--concepts array 'few' has 5 examples; a concept needs at least 10"),
    (["--concepts", "concepts.npz", "--n-random", "10"],
     "--x-key array 'x' has 18 inputs: too few to draw a random control concept of 24"),
])
def test_bad_concept_files_and_flags_exit_2_with_one_line(files, capsys, args, message):
    cwd = os.getcwd()
    os.chdir(files)
    try:
        status = main(["analyze", "model.keras", "--data", "data.npz", "--out", "bad", "--quiet", *args])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert message in lines[-1], lines[-1]
    assert "Traceback" not in err
