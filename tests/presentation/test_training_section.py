"""The report's Training section (issue 22, section 4): build_report(..., history=cb.history).

Oracle: a planted history whose findings are known by construction (which block fell late in training, from
which best value at which epoch; where filters died), and the callback's own history for the end-to-end report.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import keras
from keras import layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_hybrid_interp import InterpretationCallback, build_report, plotting  # noqa: E402
from keras_hybrid_interp.callback import ImportanceOptions  # noqa: E402
from keras_hybrid_interp.report_sections.training import (  # noqa: E402
    TRAINING_DROP,
    TrainingStory,
    training_story,
)

EPOCHS = list(range(11))
#: Planted accuracy by block (epochs 0..10). The second half of training is epochs 5..10.
PLANTED = {
    # rises to 0.9 at epoch 6, then falls to 0.84: a drop of 0.06 from its late best -> fell late
    "b1": [0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.9, 0.88, 0.86, 0.84],
    # falls 0.04 from its late best: within TRAINING_DROP -> not a finding
    "b2": [0.3, 0.4, 0.5, 0.6, 0.7, 0.72, 0.74, 0.76, 0.75, 0.73, 0.72],
    # peaks at epoch 2 then drops by 0.2 before the second half, flat afterwards: an early swing, not a finding
    "b3": [0.4, 0.8, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7],
    # the model itself: 0.95 at epoch 5, 0.85 at the end -> fell late
    "output": [0.1, 0.5, 0.7, 0.85, 0.9, 0.95, 0.94, 0.92, 0.9, 0.88, 0.85],
}
#: Planted dead-filter counts: b1 gains 3 (died), b2 loses one (revived: not a finding), b3 stays at 1.
DEAD = {
    "b1": [0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3],
    "b2": [2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1],
    "b3": [1] * 11,
}
#: Planted importance of block b3's top filters: filter 7 every epoch, 4 only from epoch 5, 2 only before.
IMPORTANCE = {7: [0.1] * 11, 4: [None] * 5 + [0.2, 0.25, 0.3, 0.3, 0.3, 0.35], 2: [0.3] * 5 + [None] * 6}


def planted_history():
    rows = []
    for e in EPOCHS:
        for b, v in PLANTED.items():
            rows.append((e, b, "accuracy", v[e], None))
            rows.append((e, b, "loss", 1.0 - v[e], None))
        for b, d in DEAD.items():
            rows.append((e, b, "dead_filters", float(d[e]), None))
        for f, v in IMPORTANCE.items():
            if v[e] is not None:
                rows.append((e, "b3", "importance", v[e], f))
    cols = list(zip(*rows))
    return pd.DataFrame({"epoch": np.asarray(cols[0], np.int64), "block": pd.Series(cols[1], dtype=object),
                         "metric": pd.Series(cols[2], dtype=object), "value": np.asarray(cols[3], np.float64),
                         "filter": pd.array(list(cols[4]), dtype="Int64")})


def test_the_planted_story_is_found():
    story = training_story(planted_history())
    assert TRAINING_DROP == 0.05  # the documented threshold
    assert story.metric == "accuracy"  # the headline, before loss
    assert story.blocks == ["b1", "b2", "b3", "output"]
    np.testing.assert_array_equal(story.epochs, EPOCHS)
    np.testing.assert_array_equal(story.values, np.array([PLANTED[b] for b in story.blocks]).T)
    assert story.fell_late == ["b1", "output"]
    # b1: best of epochs 5..10 is 0.9 at epoch 6 (the first of two); output: 0.95 at epoch 5.
    np.testing.assert_array_equal(story.late_best_epoch, [6, 7, 5, 5])
    np.testing.assert_allclose(story.late_best, [0.9, 0.76, 0.7, 0.95])
    np.testing.assert_allclose(story.drop, [0.06, 0.04, 0.0, 0.10], atol=1e-12)
    assert story.dead_blocks == ["b1", "b2", "b3"]
    np.testing.assert_array_equal(story.died, [3, -1, 0])
    assert story.died_blocks == ["b1"]
    assert story.importance_block == "b3"
    np.testing.assert_array_equal(story.importance_filters, [4, 7, 2])  # by importance at the last record
    np.testing.assert_array_equal(story.importance[:, 2], [0.3] * 5 + [np.nan] * 6)
    kinds = [k for k, _ in story.findings()]
    assert kinds == ["training_probe_fell", "training_probe_fell", "filters_died"]
    msgs = [m for _, m in story.findings()]
    assert "block 'b1' fell late in training, from 0.900 at epoch 6 to 0.840" in msgs[0]
    assert "the model's own accuracy fell late in training, from 0.950 at epoch 5 to 0.850" in msgs[1]
    assert "3 filter(s) of block 'b1' died during training (0 dead at epoch 0, 3 at epoch 10)" in msgs[2]
    frame = story.findings_frame()
    assert frame.to_dict("records") == [
        {"block": "b1", "finding": "probe fell late", "epoch_from": 6, "value_from": 0.9, "epoch_to": 10,
         "value_to": 0.84},
        {"block": "output", "finding": "probe fell late", "epoch_from": 5, "value_from": 0.95, "epoch_to": 10,
         "value_to": 0.85},
        {"block": "b1", "finding": "filters died", "epoch_from": 0, "value_from": 0.0, "epoch_to": 10,
         "value_to": 3.0},
    ]


@pytest.mark.parametrize("n, fell", [(None, ["b1", "output"]), (20, []), (100, ["output"]), (5000, ["b1", "output"])])
def test_a_drop_within_the_binomial_noise_of_the_evaluation_samples_is_not_a_finding(n, fell):
    # b1 fell 0.06 at q = 0.87, the model 0.10 at q = 0.90: 2 sqrt(q (1 - q) / n) is 0.150 and 0.134 at n = 20,
    # 0.067 and 0.060 at n = 100 (the model's drop exceeds it, b1's does not), 0.0095 and 0.0085 at n = 5000.
    h = planted_history()
    if n is not None:
        h.attrs["eval_samples"] = n
    story = training_story(h)
    assert story.eval_samples == n
    assert story.fell_late == fell
    if n is not None:
        q = (np.array([0.9, 0.76, 0.7, 0.95]) + np.array([0.84, 0.72, 0.7, 0.85])) / 2
        np.testing.assert_allclose(story.noise, 2 * np.sqrt(q * (1 - q) / n))
    if n == 100:
        assert "beyond 2 standard errors on 100 samples" in story.findings()[0][1]


def test_a_steady_story_has_no_finding_and_two_records_cannot_fall_late():
    h = planted_history()
    steady = h[h["block"].isin(["b2", "b3"]) & (h["metric"] != "dead_filters")]
    assert training_story(steady).findings() == []
    two = h[h["epoch"].isin([0, 10])]  # b1 rose from 0.3 to 0.84; only the last record is in the second half
    story = training_story(two)
    assert story.fell_late == [] and story.died_blocks == ["b1"]


def test_to_frame_holds_the_drawn_rows_of_the_history():
    h = planted_history()
    drawn = h[h["metric"].isin(["accuracy", "dead_filters", "importance"])]
    got = training_story(h).to_frame()
    key = ["metric", "block", "filter", "epoch"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True)[list(h.columns)],
                                  drawn.sort_values(key).reset_index(drop=True), check_dtype=False)


def test_the_plots_draw_what_the_story_holds():
    story = training_story(planted_history())
    ax = plotting.plot_training_metric(story)
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(EPOCHS)]
    assert len(lines) == 4
    np.testing.assert_array_equal(lines[0].get_ydata(), PLANTED["b1"])
    marks = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1]  # best-late circle and last cross per fall
    assert sorted((float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in marks) == sorted(
        [(6.0, 0.9), (10.0, 0.84), (5.0, 0.95), (10.0, 0.85)])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["b1 (fell)", "b2", "b3", "output (model) (fell)"]
    ax = plotting.plot_dead_filters_over_epochs(story)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["b1 (+3 died)", "b2", "b3"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), DEAD["b1"])
    ax = plotting.plot_importance_over_epochs(story)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["filter 4", "filter 7", "filter 2"]
    fig = story.plot()
    assert len(fig.axes) == 3


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = rng.normal(0.0, 0.5, size=(120, 12, 12, 1)).astype("float32")
    for k in range(3):
        x[y == k, 4 * k:4 * k + 4, :, 0] += 1.5
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = layers.MaxPooling2D(name="p1")(h)
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, layers.Dense(3, activation="softmax", name="head")(h), name="tiny")
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    cb = InterpretationCallback((x[80:], y[80:]), random_state=0,
                                importance=ImportanceOptions(block="c2", n_repeats=2, top_k=2))
    model.fit(x[:80], y[:80], epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    return cb, x[80:], y[80:]


def test_the_report_shows_the_callbacks_history(trained):
    cb, x, y = trained
    report = build_report(cb.interpreter, x, y, history=cb.history, sections=["layers", "training"], bootstrap=0)
    assert [s.title for s in report.sections] == ["Layer-by-layer predictions", "Training"]
    sec = report.sections[1]
    assert [c for _, c, _ in sec.tables] == ["Training findings", "Training history"]
    assert len(sec.figures) == 3  # probe metric, dead filters, importance
    shown = next(t for _, c, t in sec.tables if c == "Training history")
    h = cb.history
    drawn = h[h["metric"].isin(["accuracy", "dead_filters", "importance"])]
    assert len(shown) == len(drawn) > 0
    np.testing.assert_array_equal(np.sort(shown["value"].to_numpy()), np.sort(drawn["value"].to_numpy()))
    html = report.to_html()
    assert "Training" in html and "4 records, epochs 0 to 3" in html


def test_the_planted_findings_reach_the_reports_health(trained):
    cb, x, y = trained
    report = build_report(cb.interpreter, x, y, history=planted_history(), sections=["training"], bootstrap=0)
    kinds = [k for k, _ in report.health]
    assert kinds.count("training_probe_fell") == 2 and kinds.count("filters_died") == 1
    sec = report.sections[0]
    assert "Fell late in training: b1, output." in sec.text


def test_the_report_from_a_log_file_equals_the_one_from_memory(trained, tmp_path):
    cb, x, y = trained
    path = tmp_path / "h.jsonl"
    cb2 = InterpretationCallback((x, y), random_state=0, log_path=path)
    model = cb.interpreter.wrapped_model
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb2])
    a = training_story(InterpretationCallback.load_history(path))
    b = training_story(cb2.history)
    assert isinstance(a, TrainingStory)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sections": ["layers", "training"]}, ValueError, "`sections` has 'training' but `history` is None"),
    ({"history": "PLANTED", "sections": ["layers"]}, ValueError, "`history` is given but `sections` leaves out"),
    ({"history": {"epoch": [0]}}, TypeError, "`history` must be InterpretationCallback.history"),
    ({"history": "EMPTY"}, ValueError, "`history` holds no record"),
])
def test_bad_history_arguments(trained, kwargs, error, match):
    cb, x, y = trained
    kwargs = dict(kwargs)
    history = kwargs.get("history")
    if isinstance(history, str):
        kwargs["history"] = planted_history() if history == "PLANTED" else planted_history().iloc[:0]
    with pytest.raises(error, match=match):
        build_report(cb.interpreter, x, y, **kwargs)


def test_the_callback_passes_its_history_to_the_end_of_training_report(trained, tmp_path):
    cb, x, y = trained
    path = tmp_path / "r.html"
    cb2 = InterpretationCallback((x, y), random_state=0, report_path=path,
                                 report_options={"sections": ["layers", "training"], "bootstrap": 0})
    cb.interpreter.wrapped_model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb2])
    html = path.read_text(encoding="utf-8")
    assert "Training" in html and "2 records, epochs 0 to 1" in html
    # Every section by default: the Training section among them.
    path = tmp_path / "all.html"
    cb3 = InterpretationCallback((x, y), random_state=0, report_path=path, report_options={"bootstrap": 0})
    cb.interpreter.wrapped_model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb3])
    assert "2 records, epochs 0 to 1" in path.read_text(encoding="utf-8")
