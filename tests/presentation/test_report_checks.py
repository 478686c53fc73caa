"""Checks (issue #22, section 3): every health finding is a check with a threshold and a status, shown first;
thresholds can be overridden; ``keras-hybrid-interp analyze --fail-on warn|fail`` gates on them.

Oracles: the planted models of test_report_findings (12 of 16 filters dead, a head that always predicts class 0),
the model's own predictions for the margin above chance, NumPy moments of the inputs for the drift.
"""

import json

import numpy as np
import pytest
from test_report_findings import DEAD, N_FIT, _degenerate_data, _degenerate_model, _head_model

import keras

from keras_hybrid_interp import HybridInterpreter, build_report
from keras_hybrid_interp.report import Report
from keras_hybrid_interp.report_sections.checks import CHECKS


@pytest.fixture(scope="module")
def degenerate():
    model = _degenerate_model()
    x, y = _degenerate_data()
    interp = HybridInterpreter(model).fit_probes(x[:N_FIT], y[:N_FIT], random_state=0, verbose=0)
    return model, x, y, build_report(interp, x[N_FIT:], y[N_FIT:], examples=0, n_repeats=3, random_state=0)


def test_every_check_has_a_value_a_threshold_and_a_status_shown_first(degenerate):
    model, x, y, report = degenerate
    rows = {c["check"]: c for c in report.checks}
    assert list(rows) == [c.name for c in CHECKS]
    pred = model.predict(x[N_FIT:], verbose=0).argmax(axis=1)
    margin = np.mean(pred == y[N_FIT:]) - np.bincount(y[N_FIT:]).max() / len(pred)
    assert rows["collapsed_model"]["value"] == pytest.approx(margin) and rows["collapsed_model"]["status"] == "fail"
    assert rows["dead_filters"]["value"] == len(DEAD) / 16 and rows["dead_filters"]["status"] == "fail"  # 0.75 > 0.5
    assert rows["importance_noise"]["value"] == 1.0 and rows["importance_noise"]["status"] == "warn"
    assert rows["missing_classes"] == {**rows["missing_classes"], "value": 0.0, "status": "pass"}
    assert rows["rare_classes"]["value"] == np.bincount(y[N_FIT:]).min() == 10
    assert rows["rare_classes"]["status"] == "pass"  # 10 samples: not rare (warns at 9 or fewer)
    # drift: the largest shift of a channel mean in the fit's standard deviations (over samples and positions)
    fit, ev = x[:N_FIT].reshape(-1, 2).astype(np.float64), x[N_FIT:].reshape(-1, 2).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.abs(ev.mean(0) - fit.mean(0)) / np.maximum(fit.std(0), 1e-12 + 1e-6 * np.maximum(
            np.abs(fit.mean(0)), 1.0))
    assert rows["input_drift"]["value"] == pytest.approx(shift.max(), rel=1e-6, abs=1e-9)
    assert rows["input_drift"]["status"] == "pass"
    # the constant filter's finding is not covered by another check
    assert rows["other_findings"]["value"] >= 1 and rows["other_findings"]["status"] == "warn"
    assert report.worst_status() == "fail"
    page = report.to_html()
    assert page.index("id='checks'") < page.index("id='health'") < page.index("id='contents'")
    assert "<b class='fail'>fail</b>" in page
    record = report.to_record()
    assert [c["check"] for c in record["checks"]] == list(rows)


def test_thresholds_can_be_overridden_and_bad_ones_are_refused(degenerate):
    *_, report = degenerate
    try:
        frame = report.set_thresholds({"dead_filters": {"warn": 0.8, "fail": 0.9}, "importance_noise": {"warn": None}})
        rows = frame.set_index("check")
        assert rows.loc["dead_filters", "status"] == "pass" and rows.loc["dead_filters", "warn"] == 0.8
        assert rows.loc["importance_noise", "status"] == "pass"
        # A collapsed model fails whatever its thresholds: the finding itself is the failure.
        assert report.set_thresholds({"collapsed_model": {"warn": None, "fail": None}}).set_index("check").loc[
            "collapsed_model", "status"] == "fail"
        with pytest.raises(ValueError, match="unknown check 'dead'.*'dead_filters'"):
            report.set_thresholds({"dead": {"warn": 0.1}})
        with pytest.raises(ValueError, match=r"`thresholds\['dead_filters'\]\['warn'\]` must be a finite number"):
            report.set_thresholds({"dead_filters": {"warn": "high"}})
        with pytest.raises(ValueError, match="'warn' and/or 'fail'"):
            report.set_thresholds({"dead_filters": {"critical": 0.1}})
    finally:
        report.set_thresholds(None)


def test_status_rules_at_their_boundaries():
    values = {"dead_filters": 0.1, "input_drift": 10.0000001, "collapsed_model": 0.05, "rare_classes": 9.0,
              "missing_classes": 0.0, "probe_convergence": 0.0, "importance_noise": None}
    rows = {c["check"]: c["status"] for c in Report("t", check_values=values).checks}
    assert rows["dead_filters"] == "pass"  # warns above 0.1, not at it
    assert rows["input_drift"] == "fail"  # above 10
    assert rows["collapsed_model"] == "warn"  # lower is worse: at or below 0.05
    assert rows["rare_classes"] == "warn"  # at or below 9 samples
    assert rows["missing_classes"] == rows["probe_convergence"] == rows["importance_noise"] == "pass"
    # a finding whose check measured nothing still raises it
    found = Report("t", check_values={}, health=[("input_drift", "few samples out of range")]).checks
    assert {c["check"]: c["status"] for c in found}["input_drift"] == "warn"
    assert Report("t").checks == [] and Report("t").worst_status() == "pass"


def _save(tmp_path, model, x, y):
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "data.npz", x=x, y=y)


def _analyze(tmp_path, *extra):
    from keras_hybrid_interp import cli

    out = tmp_path / ("out" + "_".join(e.strip("-") for e in extra if not e.endswith(".json")))
    argv = ["analyze", str(tmp_path / "model.keras"), "--data", str(tmp_path / "data.npz"), "--out", str(out),
            "--quiet", "--seed", "0", *extra]
    status = cli.main(argv)
    record = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return status, record


def test_the_command_line_fails_on_a_collapsed_model_only_when_asked(tmp_path):
    x, y = _degenerate_data()
    _save(tmp_path, _degenerate_model(), x, y)
    status, record = _analyze(tmp_path)
    assert status == 0 and {c["check"]: c["status"] for c in record["checks"]}["collapsed_model"] == "fail"
    assert _analyze(tmp_path, "--fail-on", "fail")[0] == 1
    assert _analyze(tmp_path, "--fail-on", "warn")[0] == 1


def test_the_command_line_passes_a_healthy_model_and_takes_thresholds(tmp_path, capsys):
    rng = np.random.default_rng(5)
    x = (rng.random((200, 12, 12, 1)) * rng.uniform(0.2, 2, (200, 1, 1, 1))).astype("float32")
    model = _head_model(x)
    y = model.predict(x, verbose=0).argmax(axis=1)  # the model is right on every sample
    _save(tmp_path, model, x, y)
    status, record = _analyze(tmp_path, "--fail-on", "fail")
    statuses = {c["check"]: c["status"] for c in record["checks"]}
    assert status == 0 and "fail" not in statuses.values() and statuses["collapsed_model"] == "pass"
    assert statuses["dead_filters"] == "warn"  # 1 of 8 dead: above 0.1
    assert _analyze(tmp_path, "--fail-on", "warn")[0] == 1
    relaxed = tmp_path / "relaxed.json"
    relaxed.write_text(json.dumps({c: {"warn": None} for c, s in statuses.items() if s == "warn"}))
    status, record = _analyze(tmp_path, "--fail-on", "warn", "--thresholds", str(relaxed))
    assert status == 0 and {c["status"] for c in record["checks"]} == {"pass"}
    assert "Checks: pass" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dead": {"warn": 0.1}}))
    from keras_hybrid_interp import cli

    assert cli.main(["analyze", str(tmp_path / "model.keras"), "--data", str(tmp_path / "data.npz"), "--out",
                     str(tmp_path / "never"), "--thresholds", str(bad)]) == 2
    assert "--thresholds" in capsys.readouterr().err and not (tmp_path / "never").exists()
    keras.backend.clear_session()
