"""The command line names the classes: ``--class-names``, or a ``class_names`` array in the .npz (issue 22, §5).

Oracles: the names the test wrote, found in the report's record (provenance, explanation captions) in
the order given; the errors name the flag or the array.
"""

import json

import numpy as np
import pytest

import keras

from keras_hybrid_interp import cli

from models import small_cnn

NAMES = ["normal", "benign", "malignant"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("names")
    keras.utils.set_random_seed(0)
    small_cnn(classes=3).save(tmp / "model.keras")
    rng = np.random.default_rng(0)
    x, y = rng.random((45, 16, 16, 1), dtype=np.float32), np.arange(45) % 3
    np.savez(tmp / "named.npz", x=x, y=y, class_names=np.array(NAMES))
    np.savez(tmp / "plain.npz", x=x, y=y)
    np.savez(tmp / "bad.npz", x=x, y=y, class_names=np.zeros((3, 2)))
    return tmp


def _record(out):
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _explanation_names(record):
    sec = next(s for s in record["sections"] if s["name"] == "explanations")
    return [f["caption"] for f in sec["figures"]]


def _analyze(files, data, out, *extra):
    return cli.main(["analyze", str(files / "model.keras"), "--data", str(files / data), "--out", str(out),
                     "--quiet", *extra])


def test_the_npz_names_the_classes_and_the_flag_overrides_them(files, tmp_path, capsys):
    assert _analyze(files, "named.npz", tmp_path / "a") == 0
    record = _record(tmp_path / "a")
    assert record["provenance"]["interpreter"]["classes"] == NAMES
    captions = _explanation_names(record)
    assert captions and all(any(f"true class '{n}'" in c for n in NAMES) for c in captions)
    printed = capsys.readouterr().out
    assert any(n in printed for n in NAMES)  # the printed tables name them too

    other = ["a", "b", "c"]
    assert _analyze(files, "named.npz", tmp_path / "b", "--class-names", *other) == 0
    record = _record(tmp_path / "b")
    assert record["provenance"]["interpreter"]["classes"] == other
    assert all(any(f"true class '{n}'" in c for n in other) for c in _explanation_names(record))


def test_names_of_the_wrong_count_or_kind_are_refused_naming_their_source(files, tmp_path, capsys):
    assert _analyze(files, "plain.npz", tmp_path / "d", "--class-names", "a", "b") == 2
    assert "error: --class-names has 2 names but the model has 3 classes." in capsys.readouterr().err
    assert _analyze(files, "bad.npz", tmp_path / "e") == 2
    err = capsys.readouterr().err
    assert "array 'class_names' of" in err and "1-D array of names" in err and "Traceback" not in err
