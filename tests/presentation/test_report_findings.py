"""A report never misleads (issue #22, section 1): each degenerate case gets its health finding, and the summary
says only what the data support.

The cases are planted by setting weights: a collapsed classifier (its head's bias picks class 0), twelve dead
filters (more than the summary lists inline), a constant filter (it copies an input channel that is the same
ramp in every sample: its map varies over positions, its per-sample mean does not), and a head that reads two
filters strongly and one weakly. Oracles: the model's own predictions (``model.predict``), NumPy correlations of
the block's per-sample means (``keras.Model(model.input, layer.output)``), SciPy's one-sample t-test.
"""

import re
import warnings

import numpy as np
import pytest
from scipy.stats import ttest_1samp

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter, build_report
from keras_hybrid_interp.report import LIST_LIMIT, Report

DEAD = list(range(12))
CONSTANT = 13
N_FIT, N = 40, 80


def _degenerate_model():
    """conv2: filters 0-11 dead, 13 constant per sample, 12/14/15 live; the head always predicts class 0."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 2))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = layers.MaxPooling2D(name="pool1")(h)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    out = layers.Dense(4, activation="softmax", name="head")(layers.GlobalAveragePooling2D(name="gap")(h))
    model = keras.Model(inp, out, name="degenerate")
    _numpy_weights(model, 0)  # the same on every backend
    k, b = model.get_layer("conv1").get_weights()
    k[:, :, 1, :] = 0.0  # only conv1 filter 0 reads the ramp channel, and only it
    k[..., 0] = 0.0
    k[1, 1, 1, 0], b[0] = 1.0, 0.0
    model.get_layer("conv1").set_weights([k, b])
    k, b = model.get_layer("conv2").get_weights()
    k[:, :, 0, :] = 0.0  # only conv2 filter 13 reads conv1 filter 0 (the ramp), and only it
    k[..., CONSTANT] = 0.0
    k[1, 1, 0, CONSTANT], b[CONSTANT] = 1.0, 0.0
    k[..., DEAD], b[DEAD] = 0.0, -1.0  # ReLU(-1) = 0 everywhere
    model.get_layer("conv2").set_weights([k, b])
    w, hb = model.get_layer("head").get_weights()
    hb[0] = 50.0
    model.get_layer("head").set_weights([w, hb])
    return model


def _numpy_weights(model, seed):
    """Every weight drawn by NumPy (the backends' initialisers differ), biases 0.5: no filter dead by chance."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.3, w.shape).astype("float32") if w.ndim > 1
                       else np.full(w.shape, 0.5, "float32") for w in model.get_weights()])


def _degenerate_data():
    rng = np.random.default_rng(0)
    x = rng.random((N, 16, 16, 2)).astype("float32")
    x[..., 1] = np.linspace(0.1, 1.0, 16, dtype="float32")[None, :, None]  # the same ramp in every sample
    return x, np.arange(N) % 4


@pytest.fixture(scope="module")
def degenerate():
    model = _degenerate_model()
    x, y = _degenerate_data()
    interp = HybridInterpreter(model).fit_probes(x[:N_FIT], y[:N_FIT], random_state=0, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = build_report(interp, x[N_FIT:], y[N_FIT:], examples=1, n_repeats=3, random_state=0)
        html = report.to_html()  # renders every figure (the atlas crops, the correlation matrix)
    return model, interp, x[N_FIT:], y[N_FIT:], report, html, caught


def _summary_cell(html, key):
    m = re.search(rf"<th style='text-align:left'>{re.escape(key)}</th><td style='text-align:left'>(.*?)</td></tr>",
                  html, flags=re.S)
    assert m, key
    return m.group(1)


def test_a_collapsed_model_is_the_first_health_finding_and_explains_the_zero_importances(degenerate):
    model, _, x, y, report, html, _ = degenerate
    pred = model.predict(x, verbose=0).argmax(axis=1)
    assert set(pred.tolist()) == {0}  # the planted case: one class for every sample
    accuracy, chance = np.mean(pred == y), np.bincount(y).max() / len(y)
    assert accuracy <= chance
    kind, message = report.health[0]
    assert kind == "collapsed_model"
    assert f"predicts class '0' for every one of the {len(x)} analysed samples" in message
    assert f"accuracy {accuracy:.3g} is at or below chance ({chance:.3g}" in message
    assert html.index("collapsed model") < html.index("id='contents'")  # at the top, before anything else
    section = next(s for s in report.sections if s.title.startswith("Filter importance"))
    table = section.tables[0][2]
    assert (table["importance"] == 0).all()
    assert "Every importance is exactly 0 because the model has collapsed" in section.text


def test_a_model_below_chance_that_predicts_several_classes_is_collapsed_too():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1))
    h = layers.Conv2D(4, 3, activation="tanh", name="conv")(inp)
    model = keras.Model(inp, layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 8, 8, 1)).astype("float32") * np.linspace(0.2, 3, 60)[:, None, None, None]
    x = x.astype("float32")
    pred = model.predict(x, verbose=0).argmax(axis=1)
    assert len(set(pred.tolist())) > 1
    interp = HybridInterpreter(model).fit_probes(x[:30], pred[:30], random_state=0, verbose=0)
    # Labels the model always gets wrong: accuracy 0, below chance. Then labels it always gets right.
    wrong = build_report(interp, x[30:], (pred[30:] + 1) % 3, sections=["layers"])
    right = build_report(interp, x[30:], pred[30:], sections=["layers"])
    found = dict(wrong.health)
    assert "collapsed_model" in found and "accuracy 0 is at or below chance" in found["collapsed_model"]
    assert "for every one" not in found["collapsed_model"]
    assert "collapsed_model" not in dict(right.health)
    assert wrong.health[0][0] == "collapsed_model"


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_task_models_at_or_below_chance_are_collapsed(task):
    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 2))
    h = layers.Conv2D(5, 3, activation="tanh", name="conv")(inp)
    head = layers.Dense(2, activation=None if task == "regression" else "sigmoid")
    model = keras.Model(inp, head(layers.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 8, 8, 2)).astype("float32") * 3
    out = model.predict(x, verbose=0).astype(np.float64)
    if task == "regression":
        good, bad = out, 2 * out.mean(axis=0) - out  # R^2 of the model: 1, then negative (mirrored targets)
    else:
        good = (out > 0.5).astype(int)
        bad = 1 - good  # every label decision wrong: AUROC < 0.5
        assert 0 < good[:, 0].mean() < 1 and 0 < good[:, 1].mean() < 1
    interp = HybridInterpreter(model, ["conv"], task="regression" if task == "regression" else "auto")
    interp.fit_probes(x[:40], good[:40], random_state=0, verbose=0)
    assert "collapsed_model" not in dict(build_report(interp, x[40:], good[40:], sections=["layers"]).health)
    found = dict(build_report(interp, x[40:], bad[40:], sections=["layers"]).health)
    assert "collapsed_model" in found and "at or below chance" in found["collapsed_model"]


def test_no_dead_noisy_or_zero_filter_is_called_important(degenerate):
    _, _, _, _, report, html, _ = degenerate
    key = "top 5 filters by permutation importance"
    assert report.summary[key] == []
    assert report.summary_notes[key].startswith("none: no filter's importance is positive and distinguishable")
    assert "16 of 16 within noise, 12 dead, 1 constant" in report.summary_notes[key]
    assert _summary_cell(html, key).startswith("none: no filter")
    atlas = next(s for s in report.sections if s.title.startswith("Filter atlas")).tables[0][2]
    assert not set(atlas["filter"]) & set(DEAD + [CONSTANT])  # no atlas of a filter that ties on every sample


def _head_model(x):
    """A head reading filter 3 strongly, filter 5 strongly, filter 6 weakly; filter 0 dead; its bias splits ``x``."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((12, 12, 1))
    h = layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    pooled = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, layers.Dense(2, activation="softmax", name="head")(pooled))
    _numpy_weights(model, 5)
    k, b = model.get_layer("conv").get_weights()
    k[..., 0], b[0] = 0.0, -1.0
    model.get_layer("conv").set_weights([k, b])
    f = keras.Model(inp, pooled).predict(x, verbose=0).astype(np.float64)
    w = np.zeros((8, 2), "float32")
    for c, weight in ((3, 8.0), (5, -8.0), (6, 0.2)):  # per standard deviation of the pooled filter
        w[c] = [weight / f[:, c].std(), -weight / f[:, c].std()]
    margin = np.median(f @ (w[:, 0] - w[:, 1]).astype(np.float64))  # half the samples on each side
    model.get_layer("head").set_weights([w, np.array([-margin / 2, margin / 2], "float32")])
    return model


def test_the_summary_names_only_filters_above_noise_and_agrees_with_its_figure():
    rng = np.random.default_rng(5)
    x = (rng.random((160, 12, 12, 1)) * rng.uniform(0.2, 2, (160, 1, 1, 1))).astype("float32")
    model = _head_model(x)
    y = model.predict(x, verbose=0).argmax(axis=1)
    assert 0.2 < y.mean() < 0.8
    interp = HybridInterpreter(model, ["conv"]).fit_probes(x[:60], y[:60], random_state=0, verbose=0)
    report = build_report(interp, x[60:], y[60:], examples=0, n_repeats=6, random_state=0,
                          sections=["correlation", "importance"])
    section = next(s for s in report.sections if s.title.startswith("Filter importance"))
    table = section.tables[0][2]
    per = table.pivot(index="filter", columns="repeat", values="importance").to_numpy()
    mean = per.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.nan_to_num(ttest_1samp(per, 0.0, axis=1).pvalue, nan=1.0)  # constant rows: no evidence
    ranking = np.argsort(-mean, kind="stable")
    want = [int(f) for f in ranking if mean[f] > 0 and p[f] < 0.05 and f != 0][:5]
    got = report.summary["top 5 filters by permutation importance"]
    assert got == want and {3, 5} <= set(got)
    assert got != [int(f) for f in ranking[:5]]  # the rule matters here: the plain ranking names noise
    # The figure on the same page hatches none of them, and hatches the ones the ranking alone would add.
    fig = report._figures[section.figures[0][0]]
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    bars = [b for b in ax.patches if b.get_height() > 0]
    hatched = {re.sub(r"\D", "", label) for label, bar in zip(labels, bars) if bar.get_gid() == "within_noise"}
    assert hatched and not hatched & {str(f) for f in got}
    assert {str(int(f)) for f in ranking[:5]} & hatched


def test_no_nan_reaches_the_summary_without_its_reason(degenerate):
    model, _, x, _, report, html, _ = degenerate
    key, other = "redundancy (mean |r|)", "redundancy without constant filters (mean |r|)"
    assert np.isnan(report.summary[key])
    assert f"filter(s) [{CONSTANT}] are constant" in report.summary_notes[key]
    # Oracle: NumPy correlation of the per-sample means of the live filters that vary across samples.
    s = keras.Model(model.input, model.get_layer("conv2").output).predict(x, verbose=0).astype(np.float64)
    s = s.mean(axis=(1, 2))
    assert np.ptp(s[:, CONSTANT]) == 0 and np.ptp(keras.Model(model.input, model.get_layer("conv2").output).predict(
        x, verbose=0)[..., CONSTANT]) > 0  # constant per sample, varying over positions: not dead
    keep = [c for c in range(16) if c not in DEAD + [CONSTANT]]
    r = np.abs(np.corrcoef(s[:, keep], rowvar=False))
    assert report.summary[other] == pytest.approx(r[~np.eye(len(keep), dtype=bool)].mean(), abs=1e-6)
    assert ("constant_mean_filters" in dict(report.health)
            and f"[{CONSTANT}] are not dead" in dict(report.health)["constant_mean_filters"])
    summary_html = html[html.index("id='summary'"):html.index("id='s0'")]
    assert not re.search(r"\bnan\b", summary_html, flags=re.I)
    assert _summary_cell(html, key).startswith("undefined: filter(s) [13] are constant")


def test_long_index_lists_are_counted_and_linked_to_their_table(degenerate):
    _, interp, x, y, report, html, _ = degenerate
    assert len(DEAD) > LIST_LIMIT
    assert report.summary["dead filters in that block"] == DEAD  # the data keep every index
    cell = _summary_cell(html, "dead filters in that block")
    number = report.table_numbers()["Dead filters"]
    assert cell == f"{len(DEAD)}: listed in <a href='#t{number}'>Table {number}</a>"
    assert f"<p id='t{number}'><b>Table {number}.</b> Dead filters</p>" in html
    # The health finding counts them and links the same table; no index list inline.
    finding = dict(report.health)["dead_filters"]
    assert f"{len(DEAD)} dead filter(s) (every index in" in finding and "[0, 1" not in finding
    health = html[html.index("id='health'"):html.index("id='contents'")]
    assert f"<a href='#t{number}'>table &#x27;Dead filters&#x27; (Table {number})</a>" in health
    # Without the correlation section there is no table to link: the list is folded away, not inline.
    left = build_report(interp, x, y, sections=["layers"]).to_html()
    cell = _summary_cell(left, "dead filters in that block")
    assert cell.startswith(f"<details><summary>{len(DEAD)}</summary>0, 1, 2")


def test_the_summary_display_rules_on_a_report_built_by_hand():
    import pandas as pd

    r = Report("t", summary={"many": list(range(760)), "few": [1, 2], "none": [], "why": float("nan"),
                             "bare": float("nan"), "x": 0.5},
               summary_notes={"why": "undefined: because", "none": "none: nothing qualifies"},
               summary_links={"many": "All of them"})
    r.add_section("S", tables=[("Other", pd.DataFrame({"a": [1]})), ("All of them", pd.DataFrame({"i": range(760)}))])
    rows = {k: (text, number, folded) for k, text, number, folded in r.summary_rows()}
    assert rows["many"] == ("760", 2, None)
    assert rows["few"] == ("1, 2", None, None)
    assert rows["none"] == ("none: nothing qualifies", None, None)
    assert rows["why"] == ("undefined: because", None, None)
    assert rows["bare"] == ("undefined (NaN)", None, None)
    assert rows["x"] == ("0.5", None, None)
    r2 = Report("t", summary={"many": list(range(760))}, summary_links={"many": "absent"})
    text, number, folded = r2.summary_rows()[0][1:]
    assert (text, number) == ("760", None) and folded.startswith("0, 1, 2")


def test_no_numpy_runtime_warning_leaks_from_the_report(degenerate):
    *_, caught = degenerate
    leaked = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
              if issubclass(w.category, RuntimeWarning)]
    assert not leaked, leaked


@pytest.mark.parametrize("bad", ["model", "analyzer", "text"])
def test_build_report_refuses_what_is_not_a_fitted_interpreter(degenerate, bad):
    model, interp, x, y, *_ = degenerate
    obj = {"model": model, "analyzer": GlobalAnalyzer(interp), "text": "degenerate"}[bad]
    name = {"model": r"Functional \(a Keras model\)", "analyzer": "GlobalAnalyzer", "text": "str"}[bad]
    with pytest.raises(TypeError, match=rf"`interp` must be a HybridInterpreter with fitted probes; received {name}"
                                        r"\. Wrap the model and fit its probes first: interp = HybridInterpreter"):
        build_report(obj, x, y)
    with pytest.raises(ValueError, match="not fitted"):
        build_report(HybridInterpreter(model), x, y)
