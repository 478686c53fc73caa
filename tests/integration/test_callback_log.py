"""InterpretationCallback's training log (log_path=, load_history) and end-of-training report (report_path=).

Issue 22, section 4: the history is appended to a JSON-lines file at every record, flushed and fsync-ed, so a
training run killed mid-way keeps every finished epoch (tested by killing a training subprocess with SIGKILL);
``load_history`` reads it back into the frame ``cb.history`` is; ``report_path`` writes the full report at
the end of training.
"""

import functools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import keras
from keras import layers

from keras_hybrid_interp.callback import LOG_FORMAT, LOG_VERSION, ImportanceOptions, InterpretationCallback
from keras_hybrid_interp.core.health import InterpretationWarning

CLASSES = 3


def make_data(n, seed):
    """Images whose class brightens one of three bands, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(0.0, 0.5, size=(n, 12, 12, 1)).astype("float32")
    for k in range(CLASSES):
        x[y == k, 4 * k:4 * k + 4, :, 0] += 1.5
    return x, y


def tiny_cnn(first_filters=4):
    inp = keras.Input((12, 12, 1))
    h = layers.Conv2D(first_filters, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.MaxPooling2D(name="p1")(h)
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    out = layers.Dense(CLASSES, activation="softmax", name="head")(h)
    return keras.Model(inp, out, name="tiny_cnn")


def compiled(seed=0, first_filters=4):
    keras.utils.set_random_seed(seed)
    m = tiny_cnn(first_filters)
    m.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return m


@pytest.fixture(scope="module")
def data():
    return make_data(96, 0), make_data(60, 1)


def read_lines(path):
    """The records of a log file, parsed by the json module alone (NaN or Infinity refused), not by load_history."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


# ----------------------------------------------------------------------
# The file, record by record, and load_history
# ----------------------------------------------------------------------
def test_each_record_is_one_self_describing_json_line_equal_to_the_history(data, tmp_path):
    (x, y), (xv, yv) = data
    path = tmp_path / "logs" / "train.jsonl"  # the folder is created
    m = compiled()
    cb = InterpretationCallback((xv, yv), random_state=0, log_path=path,
                                importance=ImportanceOptions(block="c2", n_repeats=2, top_k=2))
    cb.set_model(m)
    cb.on_train_begin()
    assert len(read_lines(path)) == 1  # the baseline, on disk before the first epoch
    m.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    records = read_lines(path)
    h = cb.history
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]  # fit's on_train_begin does not record epoch 0 twice
    for r in records:
        assert r["format"] == LOG_FORMAT and r["version"] == LOG_VERSION
        assert r["model"] == "tiny_cnn" and r["task"] == "multiclass" and r["blocks"] == ["p1", "c2"]
        assert set(r) >= {"time", "rows"}
    # The rows, in order, against the in-memory history (read with the json module only).
    flat = [(r["epoch"], row["block"], row["metric"], row["value"], row["filter"])
            for r in records for row in r["rows"]]
    assert len(flat) == len(h)
    for (e, b, met, v, f), row in zip(flat, h.itertuples(index=False)):
        assert (e, b, met) == (row.epoch, row.block, row.metric)
        assert v == row.value  # floats written exactly (shortest repr round trip)
        assert (f is None) == pd.isna(row.filter) and (f is None or f == row.filter)
    assert {"accuracy", "loss", "agreement", "dead_filters", "redundancy", "importance"} <= {t[2] for t in flat}
    assert sum(t[2] == "importance" for t in flat) == 2 * 4


def test_load_history_equals_history(data, tmp_path):
    (x, y), (xv, yv) = data
    path = tmp_path / "train.jsonl"
    cb = InterpretationCallback((xv, yv), random_state=0, log_path=str(path),
                                importance=ImportanceOptions(block="c2", n_repeats=2, top_k=3))
    compiled().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    loaded = InterpretationCallback.load_history(path)
    pd.testing.assert_frame_equal(loaded, cb.history, check_exact=True)  # dtypes, <NA> filters, every value
    assert loaded["filter"].notna().sum() == 3 * 3
    assert loaded.attrs == cb.history.attrs == {"eval_samples": len(cb.eval_indices)} == {"eval_samples": 30}
    assert cb.load_history(os.fspath(path)).equals(loaded)  # from an instance too


def test_nan_is_written_as_null_and_read_back_as_nan(data, tmp_path):
    # A block of one filter has no pair of live filters: its redundancy is NaN (FilterCorrelation.redundancy).
    (x, y), (xv, yv) = data
    path = tmp_path / "train.jsonl"
    cb = InterpretationCallback((xv, yv), blocks=["p1", "c2"], random_state=0, log_path=path)
    compiled(first_filters=1).fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])
    h = cb.history
    nan_rows = h[h["value"].isna()]
    assert list(nan_rows["metric"].unique()) == ["redundancy"] and set(nan_rows["block"]) == {"p1"}
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert "NaN" not in text and '"value": null' in text
    values = [row["value"] for r in read_lines(path) for row in r["rows"] if row["metric"] == "redundancy"
              and row["block"] == "p1"]
    assert values == [None, None]
    loaded = InterpretationCallback.load_history(path)
    pd.testing.assert_frame_equal(loaded, h, check_exact=True)
    assert math.isnan(loaded[(loaded.block == "p1") & (loaded.metric == "redundancy")]["value"].iloc[0])


def test_a_cut_short_last_line_is_left_out_with_a_warning_and_a_bad_line_refused(data, tmp_path):
    (x, y), (xv, yv) = data
    path = tmp_path / "train.jsonl"
    cb = InterpretationCallback((xv, yv), random_state=0, log_path=path)
    compiled().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    whole = path.read_text(encoding="utf-8")
    cut = tmp_path / "cut.jsonl"
    cut.write_text(whole + whole.splitlines()[1][:37], encoding="utf-8")  # killed while writing a record
    with pytest.warns(InterpretationWarning, match="line 4.*cut short"):
        loaded = InterpretationCallback.load_history(cut)
    pd.testing.assert_frame_equal(loaded, cb.history, check_exact=True)
    bad = tmp_path / "bad.jsonl"
    lines = whole.splitlines()
    bad.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"`path`: line 2 .* is not JSON"):
        InterpretationCallback.load_history(bad)
    other = tmp_path / "other.jsonl"
    other.write_text('{"epoch": 1, "rows": []}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 .* not a record of 'keras-hybrid-interp/training-history'"):
        InterpretationCallback.load_history(other)
    newer = tmp_path / "newer.jsonl"
    record = json.loads(lines[0])
    record["version"] = LOG_VERSION + 1
    newer.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"version {LOG_VERSION + 1}"):
        InterpretationCallback.load_history(newer)


_TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    from keras import layers
    from keras_hybrid_interp import InterpretationCallback

    log_path = sys.argv[1]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 64)
    x = rng.normal(0.0, 0.5, size=(64, 8, 8, 1)).astype("float32")
    for k in range(3):
        x[y == k, 2 * k:2 * k + 3, :, 0] += 1.5
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.MaxPooling2D(name="p1")(h)
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, layers.Dense(3, activation="softmax", name="head")(h))
    model.compile("adam", "sparse_categorical_crossentropy")

    class Done(keras.callbacks.Callback):
        # Runs after the InterpretationCallback: an epoch printed here has finished its record.
        def on_epoch_end(self, epoch, logs=None):
            print(f"finished {epoch + 1}", flush=True)

    cb = InterpretationCallback((x, y), random_state=0, log_path=log_path, max_samples=32)
    model.fit(x, y, epochs=100000, batch_size=32, verbose=0, callbacks=[cb, Done()])
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_training_run_killed_mid_way_keeps_every_finished_epoch(tmp_path):
    path = tmp_path / "train.jsonl"
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT, encoding="utf-8")
    printed = tmp_path / "stdout.txt"
    with open(printed, "wb") as out:  # the child's own descriptor; read back by name (no shared offset)
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=out, stderr=subprocess.DEVNULL,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.read_text(encoding="utf-8").count("\n") >= 3:
                break
            # Epochs finished but not on disk: fail now, not at the deadline.
            if printed.read_text(encoding="utf-8").count("finished ") >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the training process ended before it was killed"
        assert path.exists() and path.read_text(encoding="utf-8").count("\n") >= 3, "no log after 240 s"
        proc.send_signal(signal.SIGKILL)  # no on_train_end, no clean-up, no Python finaliser
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = [int(line.split()[1]) for line in printed.read_text(encoding="utf-8").splitlines()
                if line.startswith("finished ")]
    text = path.read_text(encoding="utf-8")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a record being written may be cut
    records = [json.loads(line) for line in complete.splitlines()]
    epochs = [r["epoch"] for r in records]
    assert len(epochs) >= 3
    assert epochs == list(range(len(epochs)))  # the baseline and every epoch, in order, none lost
    assert set(finished) <= set(epochs)  # every epoch that finished (its record done) is in the file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)  # a cut last line, if the kill fell mid-write
        loaded = InterpretationCallback.load_history(path)
    assert sorted(loaded["epoch"].unique()) == epochs
    assert set(loaded["metric"]) >= {"accuracy", "loss", "agreement", "dead_filters", "redundancy"}
    assert loaded["value"].notna().any()


# ----------------------------------------------------------------------
# The report at the end of training
# ----------------------------------------------------------------------
def test_report_path_writes_the_report_of_the_evaluation_half_with_the_history(data, tmp_path, monkeypatch):
    import keras_hybrid_interp.report as report_module

    (x, y), (xv, yv) = data
    calls = []
    real = report_module.build_report

    @functools.wraps(real)  # the callback reads build_report's signature
    def spy(interp, xs, ys=None, **kwargs):
        calls.append((interp, xs, ys, kwargs))
        return real(interp, xs, ys, **kwargs)

    monkeypatch.setattr(report_module, "build_report", spy)
    path = tmp_path / "out" / "training_report.html"
    cb = InterpretationCallback((xv, yv), random_state=0, report_path=path,
                                report_options={"sections": ["blocks", "layers"], "bootstrap": 0})
    compiled().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    assert len(calls) == 1  # at the end of training only
    interp, xs, ys, kwargs = calls[0]
    assert interp is cb.interpreter
    ev = cb.eval_indices
    np.testing.assert_array_equal(xs, xv[ev])  # the probes' held-out half
    np.testing.assert_array_equal(ys, yv[ev])
    assert kwargs["random_state"] == cb.random_state_ and kwargs["bootstrap"] == 0
    assert "history" not in kwargs  # report_options' sections leave "training" out
    html = path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") and "tiny_cnn" in html


@pytest.mark.parametrize("kwargs, error, match", [
    ({"report_path": "r.txt"}, ValueError, r"`report_path` must end in \.html"),
    ({"report_path": "r.html", "probes": False}, ValueError, "`report_path`.*probes"),
    ({"report_options": {"title": "x"}}, ValueError, "pass report_path too"),
    ({"report_path": "r.html", "report_options": {"titel": "x"}}, TypeError, r"\['titel'\]"),
    ({"report_path": "r.html", "report_options": [("title", "x")]}, TypeError, "`report_options` must be a dict"),
    ({"log_path": 3}, TypeError, "`log_path` must be a str or path-like"),
])
def test_bad_file_arguments_are_refused_before_training(data, kwargs, error, match):
    _, (xv, yv) = data
    with pytest.raises(error, match=match):
        InterpretationCallback((xv, yv), **kwargs)


def test_a_folder_is_refused_as_log_path(data, tmp_path):
    _, (xv, yv) = data
    with pytest.raises(ValueError, match="`log_path` must name a file"):
        InterpretationCallback((xv, yv), log_path=tmp_path)


@pytest.mark.parametrize("suffix", [".html", ".htm", ".pdf", ".json", ".txt"])
def test_report_path_takes_exactly_what_the_report_can_save(data, tmp_path, suffix):
    # Refused at construction (before training) exactly when Report.save would refuse it after training.
    from keras_hybrid_interp import Report

    _, (xv, yv) = data
    path = tmp_path / f"report{suffix}"
    try:
        Report("t").save(path)
        saves = True
    except ValueError:
        saves = False
    try:
        InterpretationCallback((xv, yv), report_path=path)
        takes = True
    except ValueError:
        takes = False
    assert takes == saves, (suffix, saves)
