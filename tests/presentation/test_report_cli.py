"""Reports (HTML and folder), end to end. The command line is tested in test_cli.py."""

import base64
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

import keras

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter, build_report
from keras_hybrid_interp.report import DEFINITIONS, Report
from keras_hybrid_interp.report_sections import concepts as rc

from models import small_cnn

#: Per section of REPORT_SECTIONS: (title prefix, the captions of its tables, how many figures).
SECTION_CONTENTS = {
    "blocks": ("Blocks", ["Blocks analysed"], 0),
    "layers": ("Layer-by-layer predictions", ["Layer table"], 1),
    "explanations": ("Local explanations", [], 1),  # examples=1: one figure
    "correlation": ("Filter correlation", ["Dead filters"], 1),
    "association": ("Filter-class association", ["Association (long form)"], 1),
    "importance": ("Filter importance", ["Importance per filter and repeat"], 1),
    "atlas": ("Filter atlas", ["Top-activating samples of the most important filters"], 1),
    "similarity": ("Layer similarity", ["CKA"], 1),
    "comparison": ("Comparison with", ["CKA between the two models"], 1),
    "training": ("Training", ["Training findings", "Training history"], 3),  # history=: test_training_section.py
    # concepts=: test_report_concepts.py; three figures with the concept maps of the first input
    "concepts": ("Concepts", [rc.TABLES[k] for k in ("sets", "controls", "accuracy", "frame", "filters")], 3),
}


def _assert_sections(rep, keys):
    """Each section of ``keys`` once, in REPORT_SECTIONS order, holding its tables (non-empty) and figures.

    The dead-filters table lists the dead filters, which a model may not have (on JAX this seed has
    none): it must hold its column, and may be empty.
    """
    titles = [s.title for s in rep.sections]
    assert len(titles) == len(keys), titles
    for sec, key in zip(rep.sections, keys):
        title, tables, n_figures = SECTION_CONTENTS[key]
        assert sec.title.startswith(title), (key, sec.title)
        assert [c for _, c, _ in sec.tables] == tables, (key, sec.tables)
        assert all(len(t) > 0 for _, c, t in sec.tables if c != "Dead filters"), key
        assert all("filter" in t.columns for _, c, t in sec.tables if c == "Dead filters"), key
        assert len(sec.figures) == n_figures, (key, len(sec.figures))
        for _, _, rendered in sec.figures:
            assert rendered["png"][:8] == b"\x89PNG\r\n\x1a\n", key


def test_report_has_every_section_with_its_table_and_figure(report):
    from keras_hybrid_interp import REPORT_SECTIONS

    assert set(SECTION_CONTENTS) == set(REPORT_SECTIONS)  # a new section needs its row here
    # no compare= nor history= given
    _assert_sections(report, [k for k in REPORT_SECTIONS if k not in ("comparison", "training", "concepts")])
    imp = next(t for s in report.sections for c, t in ((c, t) for _, c, t in s.tables) if c.startswith("Importance"))
    assert np.abs(imp["importance"].to_numpy()).max() > 0  # the section holds real numbers


def test_report_comparison_section_holds_its_table_and_figure():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.random((40, 16, 16, 1), dtype=np.float32)
    y = np.arange(40) % 4
    interp = HybridInterpreter(small_cnn(classes=4)).fit_probes(x[:24], y[:24], verbose=0)
    rep = build_report(interp, x[24:], y[24:], sections=["comparison"], compare=small_cnn(classes=4))
    _assert_sections(rep, ["comparison"])


def test_html_report_has_every_section_and_embedded_images(report, tmp_path):
    path = report.save(tmp_path / "report.html")
    text = open(path, encoding="utf-8").read()
    for title in [t for k, (t, _, _) in SECTION_CONTENTS.items() if k not in ("comparison", "training", "concepts")] + [
            "Model summary"]:
        assert f">{title}" in text, title
    assert ">Health<" in text
    for definition in DEFINITIONS.values():
        assert definition[:60].replace("'", "&#x27;") in text
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    n_figures = sum(len(s.figures) for s in report.sections)
    assert len(images) == n_figures >= 6
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "http://" not in text and "https://" not in text  # opens offline: nothing to fetch
    assert "<table" in text and "conv3" in text


def test_save_dir_writes_every_figure_format_tables_and_json(report, tmp_path):
    written = report.save_dir(tmp_path / "out")
    names = {os.path.basename(p) for p in written}
    figs = [name for s in report.sections for name, _, _ in s.figures]
    for name in figs:
        for fmt in ("png", "pdf", "svg"):
            assert f"{name}.{fmt}" in names
    assert open(tmp_path / "out" / f"{figs[0]}.pdf", "rb").read(4) == b"%PDF"
    tables = [(name, t) for s in report.sections for name, _, t in s.tables]
    for name, table in tables:
        back = pd.read_csv(tmp_path / "out" / f"{name}.csv")
        assert list(back.columns) == [str(c) for c in table.columns] and len(back) == len(table)
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["summary"]["model"] == "small_cnn"
    assert [s["title"] for s in summary["sections"]] == [s.title for s in report.sections]
    report.save_dir(tmp_path / "png_only", formats=["png"])
    assert not list((tmp_path / "png_only").glob("*.svg"))


def test_report_builder_validates():
    import matplotlib.pyplot as plt

    r = Report("t")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 2])
    r.add_section("A", figures=[("line", ax)], tables=[("t", pd.DataFrame({"a": [1]}))])
    assert not plt.get_fignums()  # rendered and closed
    with pytest.raises(TypeError, match="DataFrame"):
        r.add_section("B", tables=[("t", [1, 2])])
    with pytest.raises(ValueError, match=".html"):
        r.save("report.txt")
    with pytest.raises(ValueError, match="formats"):
        r.save_dir("x", formats=("jpg",))


def test_report_sends_the_data_through_the_backbone_once_and_warns_once(monkeypatch):
    # A model with a dead filter in the analysed block: correlation, association and the
    # importance cache all notice it; the report warns once and lists it in its health section.
    import warnings

    from keras_hybrid_interp.core import data_pass as _pass
    from keras_hybrid_interp.core.health import InterpretationWarning

    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.random((60, 16, 16, 1), dtype=np.float32)
    y = np.arange(60) % 4
    m = small_cnn(classes=4)
    conv = m.get_layer("conv3")
    k, b = conv.get_weights()
    k[..., 0], b[0] = 0.0, -1.0  # filter 0 of conv3 is dead (ReLU of -1)
    conv.set_weights([k, b])
    interp = HybridInterpreter(m).fit_probes(x[:40], y[:40], controls=2, random_state=0, verbose=0)

    calls = []
    real_run = _pass.run

    def counting_run(graph, stream, reducers, **kw):
        calls.append(stream)
        return real_run(graph, stream, reducers, **kw)

    monkeypatch.setattr(_pass, "run", counting_run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = build_report(interp, x[40:], y[40:], block="conv3", examples=2, n_repeats=1, random_state=0)
    assert len(calls) == 1  # layer table, explanations, correlation, association, CKA and cache: one pass
    dead = [w for w in caught if issubclass(w.category, InterpretationWarning) and "dead filter" in str(w.message)]
    assert len(dead) == 1 and "dead filter(s) [0" in str(dead[0].message)
    health = report.health_frame()
    assert (health["finding"] == "dead_filters").sum() == 1
    html = report.to_html()
    assert html.index("id='health'") < html.index("id='contents'") < html.index("id='s0'")  # health first
    assert "dead filter(s) [0" in html[html.index("id='health'"):html.index("id='contents'")]
    # the sections computed from that one pass equal the methods run on their own
    monkeypatch.setattr(_pass, "run", real_run)
    # the report's defaults: every fitted control, 1000 resamples seeded by random_state
    table = interp.evaluate_layers(x[40:], y[40:], controls=2, bootstrap=1000, random_state=0).to_frame()
    assert {"selectivity", "selectivity_low", "accuracy_high"} <= set(table.columns)
    got = next(t for s in report.sections for c, t in ((c, t) for _, c, t in s.tables) if c == "Layer table")
    pd.testing.assert_frame_equal(got, table)
    corr = GlobalAnalyzer(interp).filter_correlation(x[40:], block="conv3")
    assert report.summary["redundancy (mean |r|)"] == pytest.approx(corr.redundancy, rel=1e-12)


def _visible_rows(html):
    """Table rows a reader sees without opening anything: rows outside <details>."""
    outside = re.sub(r"<details[^>]*>.*?</details>", "", html, flags=re.S)
    return [len(re.findall(r"<tr", t)) - 1 for t in re.findall(r"<table.*?</table>", outside, flags=re.S)]


def test_long_tables_are_collapsed_with_a_full_csv_download(report):
    html = report.to_html()
    assert max(_visible_rows(html)) <= 25
    long = [(name, t) for s in report.sections for name, _, t in s.tables if len(t) > 25]
    assert long  # the association and importance tables are long
    for name, table in long:
        m = re.search(rf"download='{re.escape(name)}.csv' href='data:text/csv;base64,([A-Za-z0-9+/=]+)'", html)
        assert m, name
        back = pd.read_csv(__import__("io").StringIO(base64.b64decode(m.group(1)).decode()))
        assert len(back) == len(table) and list(back.columns) == [str(c) for c in table.columns]
    assert html.count("<details><summary>Show all") == len(long)
    assert html.count("<details class='provenance'>") == 1  # the provenance's every entry, folded
    assert "Figure 1." in html and "Table 1." in html


def test_very_long_tables_print_the_preview_and_the_csv_only(report, monkeypatch):
    # Past FOLDED_ROWS rows (2,000) the whole table is not printed under "Show all": the CSV holds every row.
    import keras_hybrid_interp.report as report_module

    sizes = sorted({len(t) for s in report.sections for _, _, t in s.tables if len(t) > 25})
    assert len(sizes) >= 2, sizes  # one table each side of the limit
    monkeypatch.setattr(report_module, "FOLDED_ROWS", sizes[0])
    html = report.to_html()
    over = [(name, t) for s in report.sections for name, _, t in s.tables if len(t) > sizes[0]]
    assert html.count("<details><summary>Show all") == sum(len(t) == sizes[0] for s in report.sections
                                                             for _, _, t in s.tables)
    assert html.count("not printed in full here") == len(over)
    for name, table in over:
        m = re.search(rf"download='{re.escape(name)}.csv' href='data:text/csv;base64,([A-Za-z0-9+/=]+)'", html)
        back = pd.read_csv(__import__("io").StringIO(base64.b64decode(m.group(1)).decode()))
        assert len(back) == len(table)
    assert max(_visible_rows(html)) <= 25


def test_model_summary_is_complete_at_any_width(report):
    assert "Param #" in report.model_summary
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a_convolution_with_a_rather_long_name")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same")(inp)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b])))
    from keras_hybrid_interp.report import model_summary_text

    text = model_summary_text(keras.Model(inp, out))
    assert "Connected to" in text and "Param #" in text and "a_convolution_with_a_rather_long_name" in text


def test_importance_within_noise_is_a_one_sample_t_test():
    from scipy.stats import ttest_1samp

    from keras_hybrid_interp.global_.importance import noise_mask

    rng = np.random.default_rng(0)
    imp = np.concatenate([rng.normal(0.0, 0.02, (40, 5)), rng.normal(0.2, 0.02, (10, 5)),
                          rng.normal(0.03, 0.02, (20, 5))])
    mask = noise_mask(imp)
    # the 95% interval covers 0 exactly when the two-sided one-sample t-test does not reject at 5%
    np.testing.assert_array_equal(mask, ttest_1samp(imp, 0.0, axis=1).pvalue >= 0.05)
    assert not mask[40:50].any() and mask[:40].mean() > 0.8
    assert noise_mask(imp[:, :1]).all()  # one repeat: no spread to judge by


def test_the_health_section_lists_rare_classes_and_what_the_fit_found():
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    x = rng.random((70, 16, 16, 1), dtype=np.float32)
    y = np.r_[np.arange(64) % 3, [3] * 6]  # class 3 is rare: 6 samples
    interp = HybridInterpreter(small_cnn(classes=4))
    with pytest.warns(UserWarning, match=r"Classes \['3'\] have no sample"):
        interp.fit_probes(x[:40], np.r_[np.arange(40) % 3], verbose=0)  # class 3 missing at fit time
    assert [c.kind for c in interp.fit_health_].count("missing_classes") == 1
    report = build_report(interp, x[40:], y[40:], examples=0, n_repeats=3)
    kinds = report.health_frame()["finding"].tolist()
    assert "rare_classes" in kinds and "missing_classes" in kinds and "noisy_importance" in kinds
    rare = report.health_frame().set_index("finding").loc["rare_classes", "what it means and what to do"]
    assert "3: 6" in rare
    fit = [m for k, m in report.health if m.startswith("When the probes were fitted")]
    assert fit and "'3'" in fit[0]


def test_report_compares_with_another_model_in_its_one_pass(monkeypatch):
    from keras_hybrid_interp.core import data_pass as _pass

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.random((48, 16, 16, 1), dtype=np.float32)
    y = np.arange(48) % 4
    m = small_cnn(classes=4)
    twin = keras.models.clone_model(m)
    twin.set_weights(m.get_weights())
    other = small_cnn(classes=4, name="other_cnn")  # another initialisation
    interp = HybridInterpreter(m).fit_probes(x[:24], y[:24], verbose=0)
    calls = []
    real_run = _pass.run
    monkeypatch.setattr(_pass, "run", lambda *a, **kw: calls.append(1) or real_run(*a, **kw))
    report = build_report(interp, x[24:], y[24:], examples=0, n_repeats=1, compare=other)
    assert len(calls) == 1  # the other model runs inside the same pass
    monkeypatch.setattr(_pass, "run", real_run)
    section = next(s for s in report.sections if s.title == "Comparison with other_cnn")
    got = section.tables[0][2]
    # Oracle: the standalone two-model CKA on the same samples.
    want = GlobalAnalyzer(interp).layer_similarity(x[24:], other=other).to_frame()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    # A model against its exact copy: 1 on the diagonal.
    same = build_report(interp, x[24:], y[24:], examples=0, n_repeats=1, compare=twin)
    cka = next(s for s in same.sections if s.title.startswith("Comparison with")).tables[0][2]
    diag = cka[cka["block_i"] == cka["block_j"]]["cka"].to_numpy()
    np.testing.assert_allclose(diag, 1.0, atol=1e-6)
    # Bad comparisons are reported under the report's own argument names.
    with pytest.raises(TypeError, match="`compare` must be a keras.Model.*received str"):
        build_report(interp, x[24:], y[24:], compare="other_cnn")
    with pytest.raises(ValueError, match="`compare_blocks`"):
        build_report(interp, x[24:], y[24:], compare=other, compare_blocks=["no_such_layer"])
    with pytest.raises(ValueError, match="`compare_blocks` is given but `compare` is None"):
        build_report(interp, x[24:], y[24:], compare_blocks=["conv1"])

    class Subclassed(keras.Model):
        def call(self, t):
            return t

    with pytest.raises(TypeError, match="`compare` is a subclassed model"):
        build_report(interp, x[24:], y[24:], compare=Subclassed())


def test_sections_restrict_what_is_computed_and_shown(monkeypatch):
    # The stored reference CNN (the same weights on every backend) and its data: a model whose
    # accuracy moves when a filter is permuted, on TensorFlow, JAX and torch alike.
    from test_backend_reference import _data as reference_data
    from test_backend_reference import _load as reference_weights

    from keras_hybrid_interp import REPORT_SECTIONS
    from keras_hybrid_interp.global_ import atlas, importance, similarity

    x, y = reference_data()
    m = small_cnn(classes=4)
    m.set_weights(reference_weights()[0])
    interp = HybridInterpreter(m).fit_probes(x[:40], y[:40], verbose=0)

    def refuse(*a, **k):
        raise AssertionError("a left-out section was computed")

    # Left out: nothing of theirs is computed (no CKA accumulator, no atlas, no importance cache).
    for mod, name in ((similarity, "similarity_reducer"), (atlas, "examples_reducer"),
                      (importance, "importance_reducer")):
        monkeypatch.setattr(mod, name, refuse)
    r = build_report(interp, x[40:], y[40:], examples=1, sections=["layers", "correlation"])
    assert [s.title for s in r.sections] == ["Layer-by-layer predictions", "Filter correlation (conv3)"]
    assert r.summary["sections left out (sections=)"] == ["blocks", "explanations", "association", "importance",
                                                          "atlas", "similarity"]
    assert "top 5 filters by permutation importance" not in r.summary
    monkeypatch.undo()

    # Kept: the importance section equals the method run on its own (same samples, same seed).
    r = build_report(interp, x[40:], y[40:], block="conv3", n_repeats=2, random_state=5,
                     sections=["importance", "atlas"])
    assert [s.title.split(" (")[0] for s in r.sections] == ["Filter importance", "Filter atlas"]
    got = next(t for s in r.sections for c, t in ((c, t) for _, c, t in s.tables) if c.startswith("Importance"))
    alone = GlobalAnalyzer(interp).filter_importance(x[40:], y[40:], block="conv3", n_repeats=2, random_state=5)
    assert np.abs(alone.importances).max() > 0  # the comparison has something to compare
    pd.testing.assert_frame_equal(got, alone.to_frame())
    # Every section by default (no comparison without compare=).
    assert set(REPORT_SECTIONS) == {"blocks", "layers", "explanations", "correlation", "association",
                                    "importance", "atlas", "similarity", "comparison", "training", "concepts"}

    with pytest.raises(ValueError, match="unknown section 'similarty'.*Did you mean 'similarity'"):
        build_report(interp, x[40:], y[40:], sections=["similarty"])
    with pytest.raises(TypeError, match="`sections` must be None or a list"):
        build_report(interp, x[40:], y[40:], sections="layers")
    with pytest.raises(ValueError, match="'atlas' without 'importance'"):
        build_report(interp, x[40:], y[40:], sections=["atlas"])
    with pytest.raises(ValueError, match="`compare` is None"):
        build_report(interp, x[40:], y[40:], sections=["comparison"])
    with pytest.raises(ValueError, match="`compare` is given but `sections` leaves out 'comparison'"):
        build_report(interp, x[40:], y[40:], sections=["layers"], compare=m)
    with pytest.raises(ValueError, match="`sections` is empty"):
        build_report(interp, x[40:], y[40:], sections=[])
