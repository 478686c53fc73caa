"""The "what changed" paragraph of ``build_report(compare=...)`` (issue #22, section 3).

Each part is tested against a planted ground truth and an independent computation:

- **blocks**: a copy of the model whose last block is re-initialised is identical up to it, so that block has
  the lowest CKA; every value equals the minibatch linear CKA computed here in NumPy (Song et al.'s unbiased
  HSIC, written out) on the blocks' spatial means read by plain Keras sub-models;
- **filters**: the head reads one filter almost alone, and a copy with that filter zeroed makes it the filter
  whose importance changed most (its importance in the copy is exactly 0: a dead filter); the ranking, the
  values and the noise flags are recomputed in NumPy/SciPy from the two models' importance tables;
- **checks**: a copy with 9 of 16 filters of the analysed block zeroed (filters the head does not read, so that
  both models' outputs are identical) crosses the dead-filter threshold, and only that check changes status;
  the dead fractions are recomputed in NumPy from the block's maps.
"""

import json
import re

import numpy as np
import pytest
from scipy import stats

import keras
from keras import layers

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter, build_report
from keras_hybrid_interp.report import report_schema

from models import small_cnn
from oracles import assert_not_all_zero

jsonschema = pytest.importorskip("jsonschema")

BATCH = 16  # three minibatches of 16 samples for the CKA


def _data(n=72, seed=0, brightness=True):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 16, 16, 1))
    if brightness:  # varies across images, so that pooled filter responses vary across samples
        x = x * rng.uniform(0.2, 1.0, (n, 1, 1, 1))
    return x.astype(np.float32)


def _copy(model, name="copy_cnn"):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return keras.Model(twin.inputs, twin.outputs, name=name)


def _maps(model, names, x):
    sub = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outs = sub.predict(x, verbose=0, batch_size=len(x))
    outs = outs if isinstance(outs, list) else [outs]
    return [np.asarray(o, dtype=np.float64) for o in outs]


def _hsic1(k, l):
    """Song et al. (2012)'s unbiased HSIC of two Gram matrices, term by term."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def _minibatch_cka(a, b, batch=BATCH):
    """Linear CKA, minibatch estimator: size-weighted sums of HSIC_1 over consecutive minibatches."""
    ab = aa = bb = 0.0
    for s in range(0, len(a), batch):
        fa, fb = a[s:s + batch], b[s:s + batch]
        ka, kb = fa @ fa.T, fb @ fb.T
        ab += len(fa) * _hsic1(ka, kb)
        aa += len(fa) * _hsic1(ka, ka)
        bb += len(fa) * _hsic1(kb, kb)
    return ab / np.sqrt(aa * bb)


def _status(value, warn, fail):
    """A higher-is-worse check's status, as docs/definitions/report.md defines it."""
    return "fail" if value > fail else "warn" if value > warn else "pass"


def _one_filter_head(model, x, star, others=1e-3, seed=0):
    """Sets the head so that class 0 vs 1 is decided by filter ``star``'s pooled value against its median."""
    pooled = _maps(model, ["conv3"], x)[0].mean(axis=(1, 2))
    a = pooled[:, star]
    scale = 20.0 / max(a.std(), 1e-6)
    w = np.random.default_rng(seed).normal(0.0, others, (pooled.shape[1], 2))
    w[star] = [scale, -scale]
    thr = np.median(a)
    model.get_layer("head").set_weights([w.astype(np.float32), np.array([-scale * thr, scale * thr], np.float32)])
    return w


def _valid(report):
    record = json.loads(json.dumps(report.to_record(), allow_nan=False))
    jsonschema.Draft202012Validator(report_schema()).validate(record)
    return record


# ----------------------------------------------------------------------------- blocks: the lowest CKA

@pytest.fixture(scope="module")
def reinitialised():
    keras.utils.set_random_seed(0)
    x = _data(brightness=False)  # (a brightness shared by every filter would make any two conv3s alike)
    y = np.arange(len(x)) % 4
    m = small_cnn(classes=4)
    copy = _copy(m)
    kernel, bias = copy.get_layer("conv3").get_weights()
    rng = np.random.default_rng(7)
    copy.get_layer("conv3").set_weights([rng.normal(0, kernel.std(), kernel.shape).astype(np.float32), bias])
    interp = HybridInterpreter(m).fit_probes(x[:24], y[:24], verbose=0)
    return m, copy, interp, x[24:], y[24:]


def test_the_reinitialised_block_has_the_lowest_cka_and_every_value_is_numpys(reinitialised, tmp_path):
    m, copy, interp, x, y = reinitialised
    report = build_report(interp, x, y, sections=["comparison"], compare=copy, batch_size=BATCH, random_state=0)
    what = report.what_changed()
    names = list(interp.block_names)
    assert names == ["pool1", "pool2", "conv3"]
    mine = [f.mean(axis=(1, 2)) for f in _maps(m, names, x)]
    theirs = [f.mean(axis=(1, 2)) for f in _maps(copy, names, x)]
    oracle = {n: _minibatch_cka(a, b) for n, a, b in zip(names, mine, theirs)}
    assert_not_all_zero(list(oracle.values()))
    # Planted: identical up to conv3, so pool1 and pool2 read 1 and conv3 is the lowest.
    assert oracle["pool1"] > 1 - 1e-9 and oracle["pool2"] > 1 - 1e-9 and oracle["conv3"] < 0.8
    blocks = what["blocks"]
    assert blocks[0]["block"] == "conv3" and {b["block"] for b in blocks} == set(names)
    for b in blocks:
        assert b["other_block"] == b["block"] and b["matched"] == "same name"
        np.testing.assert_allclose(b["cka"], oracle[b["block"]], rtol=1e-5)
    # The paragraph names the three lowest, lowest first, with their values.
    text = what["text"]
    assert text.index("conv3 (") < min(text.index("pool1 ("), text.index("pool2 ("))
    assert f"conv3 ({blocks[0]['cka']:.4g})" in text
    # The parts not asked for say why; the paragraph opens the comparison section, in the HTML and the record.
    assert what["filters"] == [] and what["filters_skipped"] == "the importance section is left out (sections=)"
    assert what["checks"] == [] and "need its probes" in what["checks_skipped"]
    assert "Filter importance is not compared: the importance section is left out" in text
    record = _valid(report)
    assert record["what_changed"] == json.loads(json.dumps(what))
    page = open(report.save(tmp_path / "r.html"), encoding="utf-8").read()
    section = page[page.index("<h2 id='s0'>Comparison with copy_cnn</h2>"):]
    first = re.match(r"<h2[^>]*>[^<]*</h2>\s*<p class='changes' id='what-changed'>(.*?)</p>\s*<p class='def'>",
                     section, re.S)
    assert first is not None
    import html

    assert html.unescape(first.group(1)) == text


def test_a_block_without_a_twin_is_read_at_its_best_match(reinitialised):
    m, copy, interp, x, y = reinitialised
    columns = ["pool1", "conv2", "conv3"]
    report = build_report(interp, x, y, sections=["comparison"], compare=copy, compare_blocks=columns,
                          batch_size=BATCH, random_state=0)
    rows = list(interp.block_names)
    mine = [f.mean(axis=(1, 2)) for f in _maps(m, rows, x)]
    theirs = [f.mean(axis=(1, 2)) for f in _maps(copy, columns, x)]
    cka = np.array([[_minibatch_cka(a, b) for b in theirs] for a in mine])
    assert_not_all_zero(cka)
    got = {b["block"]: b for b in report.what_changed()["blocks"]}
    # pool2 has no block of its name among the columns: its highest CKA with any of them.
    j = int(np.argmax(cka[1]))
    assert got["pool2"]["matched"] == "best match" and got["pool2"]["other_block"] == columns[j]
    np.testing.assert_allclose(got["pool2"]["cka"], cka[1, j], rtol=1e-5)
    for i, name in ((0, "pool1"), (2, "conv3")):
        assert got[name]["matched"] == "same name"
        np.testing.assert_allclose(got[name]["cka"], cka[i, columns.index(name)], rtol=1e-5)
    ranked = sorted(got, key=lambda n: got[n]["cka"])
    assert [b["block"] for b in report.what_changed()["blocks"]] == ranked
    if "pool2" in ranked:
        assert f"its best match {columns[j]}" in report.what_changed()["text"]


# ----------------------------------------------------------------------------- filters: importance changed most

def _importances(report):
    """(filters x repeats) importances of a report's importance table."""
    table = next(t for s in report.sections for _, c, t in s.tables if c.startswith("Importance per filter"))
    return table.pivot(index="filter", columns="repeat", values="importance").to_numpy(dtype=np.float64)


def _assert_filters(what, a, b, other_name):
    """The paragraph's filters against NumPy: the 3 largest |mean(a) - mean(b)|, each with its paired t-interval."""
    change = a.mean(axis=1) - b.mean(axis=1)
    assert_not_all_zero(change)
    order = np.argsort(-np.abs(change), kind="stable")[:3]
    r = a.shape[1]
    d = a - b
    half = stats.t.ppf(0.975, r - 1) * d.std(axis=1, ddof=1) / np.sqrt(r)
    noisy = (d.mean(axis=1) - half <= 0) & (d.mean(axis=1) + half >= 0)
    assert [f["filter"] for f in what["filters"]] == order.tolist()
    for f in what["filters"]:
        i = f["filter"]
        np.testing.assert_allclose([f["importance"], f["other_importance"], f["change"]],
                                   [a[i].mean(), b[i].mean(), change[i]], rtol=1e-12, atol=1e-12)
        assert f["within_noise"] == bool(noisy[i])
    assert what["filters_skipped"] is None
    shown = ", ".join(f"{i} ({a[i].mean():.4g} here, {b[i].mean():.4g} in {other_name}"
                      + ("; within noise" if noisy[i] else "") + ")" for i in order)
    assert f"whose importance changed most: {shown}." in what["text"]
    return order, noisy


def test_the_zeroed_filter_is_the_one_whose_importance_changed_most():
    keras.utils.set_random_seed(0)
    x = _data()
    m = small_cnn(classes=2)
    pooled = _maps(m, ["conv3"], x)[0].mean(axis=(1, 2))
    star = int(np.argmax(pooled.std(axis=0)))  # the filter that varies most across samples drives the head
    _one_filter_head(m, x, star)
    y = np.argmax(m.predict(x, verbose=0), axis=1)  # labels: the model's own classes (accuracy 1)
    assert 0.3 < y.mean() < 0.7
    copy = _copy(m)
    kernel, bias = copy.get_layer("conv3").get_weights()
    kernel[..., star], bias[star] = 0.0, 0.0
    copy.get_layer("conv3").set_weights([kernel, bias])
    interp = HybridInterpreter(m).fit_probes(x[:24], y[:24], verbose=0)
    repeats = 4
    report = build_report(interp, x[24:], y[24:], sections=["importance", "comparison"], compare=copy,
                          n_repeats=repeats, batch_size=BATCH, random_state=0)
    # This model's importances: its own table; the copy's: a separate run of the copy alone (same samples, seed).
    a = _importances(report)
    b = np.asarray(GlobalAnalyzer(copy).filter_importance(x[24:], y[24:], block="conv3", n_repeats=repeats,
                                                          random_state=0, batch_size=BATCH).importances, np.float64)
    assert_not_all_zero(a.mean(axis=1))
    # Planted: the zeroed filter is dead in the copy (importance exactly 0) and was the head's one input here.
    assert np.all(b[star] == 0.0) and a[star].mean() > 0.2
    order, noisy = _assert_filters(report.what_changed(), a, b, "copy_cnn")
    assert order[0] == star and not noisy[star]
    _valid(report)
    # The other way round (the copy's report, compared with the original): the largest change is a drop, and is
    # still the first; its paired interval excludes 0 although the copy's own importances are all 0.
    back = build_report(HybridInterpreter(copy).fit_probes(x[:24], y[:24], verbose=0), x[24:], y[24:],
                        sections=["importance", "comparison"], compare=m, n_repeats=repeats, batch_size=BATCH,
                        random_state=0)
    np.testing.assert_array_equal(_importances(back), b)
    order, noisy = _assert_filters(back.what_changed(), b, a, "small_cnn")
    assert order[0] == star and not noisy[star] and back.what_changed()["filters"][0]["change"] < -0.2


# ----------------------------------------------------------------------------- checks: the status that flipped

def test_the_dead_filter_check_flips_and_nothing_else_and_follows_the_thresholds(monkeypatch):
    from keras_hybrid_interp.core import data_pass

    keras.utils.set_random_seed(1)
    x = _data(seed=1)
    m = small_cnn(classes=2)
    maps = _maps(m, ["conv3"], x)[0]
    star = int(np.argmax(maps.mean(axis=(1, 2)).std(axis=0)))
    born_dead = np.flatnonzero(np.ptp(maps, axis=(0, 1, 2)) == 0)
    if len(born_dead):  # each backend draws its own initial weights: the original starts with no dead filter
        kernel, bias = m.get_layer("conv3").get_weights()
        kernel[..., born_dead], bias[born_dead] = kernel[..., [star]], bias[star]
        m.get_layer("conv3").set_weights([kernel, bias])
    zeroed = [f for f in range(16) if f != star][:9]
    w = _one_filter_head(m, x, star)
    w[zeroed] = 0.0  # the head does not read the filters the copy zeroes: both models give the same outputs
    m.get_layer("head").set_weights([w.astype(np.float32), m.get_layer("head").get_weights()[1]])
    y = np.argmax(m.predict(x, verbose=0), axis=1)
    copy = _copy(m)
    kernel, bias = copy.get_layer("conv3").get_weights()
    kernel[..., zeroed], bias[zeroed] = 0.0, 0.0
    copy.get_layer("conv3").set_weights([kernel, bias])
    np.testing.assert_array_equal(m.predict(x, verbose=0), copy.predict(x, verbose=0))
    interp = HybridInterpreter(m).fit_probes(x[:24], y[:24], verbose=0)
    other = HybridInterpreter(copy).fit_probes(x[:24], y[:24], verbose=0)
    for i in (interp, other):  # precondition: the probe checks cannot differ
        assert np.all(np.asarray(i.convergence_["converged"], bool))
    # Oracle: the dead fraction of conv3 in each model (constant over every position of every sample).
    dead = [float(np.mean(np.ptp(f, axis=(0, 1, 2)) == 0)) for f in
            (_maps(m, ["conv3"], x[24:])[0], _maps(copy, ["conv3"], x[24:])[0])]
    assert dead[1] >= 9 / 16 and dead[0] <= 0.1
    calls = []
    real = data_pass.run
    monkeypatch.setattr(data_pass, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    report = build_report(interp, x[24:], y[24:], sections=["layers", "comparison"], compare=other, examples=0,
                          bootstrap=0, batch_size=BATCH, random_state=0)
    assert len(calls) == 1  # the other model's checks are measured in the report's one pass
    what = report.what_changed()
    assert what["checks_skipped"] is None
    assert what["checks"] == [{"check": "dead_filters", "status": _status(dead[0], 0.1, 0.5),
                               "other_status": _status(dead[1], 0.1, 0.5), "value": dead[0],
                               "other_value": dead[1]}]
    assert "Checks that changed status: dead_filters (pass here" in what["text"]
    # The copy's findings are its own: they decide its checks, not this report's health.
    assert "dead_filters" in report.changes.other_kinds
    mine = [msg for kind, msg in report.health if kind == "dead_filters"]
    assert len(mine) == (1 if dead[0] > 0 else 0)
    # The thresholds apply to both models, after the fact too.
    report.set_thresholds({"dead_filters": {"warn": 0.6, "fail": 0.9}})
    assert report.what_changed()["checks"] == [] and "No check changed status" in report.what_changed()["text"]
    report.set_thresholds({"dead_filters": {"warn": 0.5, "fail": 0.9}})
    record = _valid(report)
    assert [(c["check"], c["status"], c["other_status"]) for c in record["what_changed"]["checks"]] == [
        ("dead_filters", "pass", "warn")]
    paragraph = re.search(r"<p class='changes' id='what-changed'>(.*?)</p>", report.to_html(), re.S).group(1)
    assert f"dead_filters (pass here, value {dead[0]:.4g}; warn in copy_cnn, value {dead[1]:.4g})" in paragraph


# ----------------------------------------------------------------------------- what cannot be compared, and why

def _cnn(name, conv3="conv3", filters=16, classes=4):
    inp = keras.Input((16, 16, 1))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = layers.MaxPooling2D(name="pool1")(h)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(name="pool2")(h)
    h = layers.Conv2D(filters, 3, padding="same", activation="relu", name=conv3)(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, layers.Dense(classes, activation="softmax", name="head")(h), name=name)


@pytest.mark.parametrize("make, filters_reason, checks_reason", [
    (lambda: _cnn("narrow", filters=8), r"block 'conv3' has 16 filters here and 8 in 'narrow': filters cannot be "
     "paired", r"the checks of 'narrow' need its probes"),
    (lambda: _cnn("renamed", conv3="last_conv"), r"'renamed' has no layer named 'conv3'", "need its probes"),
    (lambda: _cnn("three", classes=3), r"'three' is a multiclass model with 3 outputs, this one a multiclass model "
     "with 4: the same labels cannot score both", "'three' is a multiclass model with 3 outputs"),
    (lambda: HybridInterpreter(_cnn("unfitted")), None, r"the checks of 'unfitted' need its probes"),
])
def test_what_cannot_be_compared_is_skipped_with_its_reason(reinitialised, make, filters_reason, checks_reason):
    _, _, interp, x, y = reinitialised
    report = build_report(interp, x, y, sections=["importance", "comparison"], compare=make(), n_repeats=2,
                          batch_size=BATCH, random_state=0)
    what = report.what_changed()
    if filters_reason is None:
        assert what["filters_skipped"] is None and len(what["filters"]) == 3
    else:
        assert re.fullmatch(filters_reason, what["filters_skipped"]), what["filters_skipped"]
        assert what["filters"] == [] and f"Filter importance is not compared: {what['filters_skipped']}." in what[
            "text"]
    assert re.search(checks_reason, what["checks_skipped"]) and what["checks"] == []
    assert len(what["blocks"]) == 3 and what["text"].startswith("What changed between small_cnn (this model) and ")
    _valid(report)
