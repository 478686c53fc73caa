"""The report's Concepts section (``report_sections/concepts.py``, ``build_report(concepts=...)``).

The concepts' numbers have their independent oracles in tests/local/test_concepts.py (scikit-learn's
logistic regression, finite differences, scipy's t-tests, Captum). Here: the section shows exactly the
numbers of ``HybridInterpreter.concepts`` on the same data and seed (tables, figures' values, the JSON
record); each concept stands beside its control (the table recomputed here with pandas lookups); the
random control is the documented draw from the pool (re-drawn here with NumPy); each health line appears
in exactly its case; bad arguments are refused before any data is read.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

from keras_hybrid_interp import HybridInterpreter, build_report  # noqa: E402
from keras_hybrid_interp.core.health import InterpretationWarning  # noqa: E402
from keras_hybrid_interp.report_sections import concepts as rc  # noqa: E402

from oracles import assert_not_all_zero  # noqa: E402

BLOCKS = ["c1", "c2"]
SEED = 3
N_RANDOM = 10  # the fewest the concepts accept without a warning: keeps the suite fast
BOOT = 50


def smooth_cnn(classes=3, size=8):
    inp = keras.Input((size, size, 3))
    h = layers.Conv2D(6, 3, padding="same", activation="tanh", name="c1")(inp)
    h = layers.AveragePooling2D(2, name="p1")(h)
    h = layers.Conv2D(5, 3, padding="same", activation="tanh", name="c2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, layers.Dense(classes, activation="softmax", name="head")(h), name="smooth_cnn")


@dataclasses.dataclass
class Data:
    interp: HybridInterpreter
    x: np.ndarray
    y: np.ndarray
    pool: np.ndarray
    concepts: dict


@pytest.fixture(scope="module")
def data():
    keras.utils.set_random_seed(0)
    model = smooth_cnn()
    rng = np.random.default_rng(0)
    x = rng.random((45, 8, 8, 3), dtype=np.float32)
    y = np.arange(45) % 3
    pool = rng.random((240, 8, 8, 3), dtype=np.float32)

    def bright(n):
        return np.clip(rng.random((n, 8, 8, 3), dtype=np.float32) * 0.6 + 0.4, 0, 1)

    concepts = {"bright": bright(30), "tiny": rng.random((12, 8, 8, 3), dtype=np.float32), "bright2": bright(30)}
    interp = HybridInterpreter(model, BLOCKS).fit_probes(x, y, verbose=0)
    return Data(interp, x, y, pool, concepts)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpretationWarning)
        return fn(*args, **kwargs)


def _report(d, concepts, **kwargs):
    return _quiet(build_report, d.interp, d.x, d.y, sections=["concepts"], concepts=concepts,
                  concept_random=d.pool, concept_options={"n_random": N_RANDOM}, random_state=SEED,
                  bootstrap=BOOT, **kwargs)


def _expected(d, concepts, random):
    return _quiet(d.interp.concepts, concepts, d.x, d.y, random=random, n_random=N_RANDOM, random_state=SEED,
                  bootstrap=BOOT, confidence=0.95, batch_size=64, max_samples=512)


@pytest.fixture(scope="module")
def user_control(data):
    """'bright2' (a second set of bright images) as the user's negative control."""
    return _report(data, data.concepts, concept_controls="bright2")


@pytest.fixture(scope="module")
def random_control(data):
    return _report(data, {k: data.concepts[k] for k in ("bright", "tiny")})


def _section(report):
    return next(s for s in report.sections if s.name == "concepts")


def _tables(report):
    return {caption: table for _, caption, table in _section(report).tables}


def _record_table(record_section, caption):
    t = next(t for t in record_section["tables"] if t["caption"] == caption)
    return pd.DataFrame(t["rows"], columns=t["columns"])


def _assert_record_equals(frame_from_record, frame):
    assert list(frame_from_record.columns) == list(frame.columns)
    assert len(frame_from_record) == len(frame)
    for col in frame.columns:
        want = frame[col]
        got = frame_from_record[col]
        if pd.api.types.is_float_dtype(want):
            np.testing.assert_array_equal(np.array(got.tolist(), dtype=float), want.to_numpy(), err_msg=col)
        else:
            assert [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in want.tolist()] \
                == got.tolist(), col


def test_the_section_shows_exactly_the_numbers_of_interp_concepts(data, user_control):
    expected = _expected(data, data.concepts, data.pool)
    tables = _tables(user_control)
    pd.testing.assert_frame_equal(tables[rc.TABLES["frame"]], expected.to_frame())
    pd.testing.assert_frame_equal(tables[rc.TABLES["accuracy"]], expected.accuracy_frame())
    pd.testing.assert_frame_equal(tables[rc.TABLES["filters"]], expected.top_filters(5))
    assert_not_all_zero(expected.to_frame()["tcav_magnitude"].to_numpy())
    assert_not_all_zero(expected.to_frame()["p_value"].to_numpy())
    # The JSON record holds the same numbers: every table in full, and every CAV's score and magnitude.
    record = json.loads(json.dumps(user_control.to_record(), allow_nan=False))
    sec = next(s for s in record["sections"] if s["name"] == "concepts")
    _assert_record_equals(_record_table(sec, rc.TABLES["frame"]), expected.to_frame())
    _assert_record_equals(_record_table(sec, rc.TABLES["accuracy"]), expected.accuracy_frame())
    np.testing.assert_array_equal(np.array(sec["values"]["scores"], dtype=float), expected.scores)
    np.testing.assert_array_equal(np.array(sec["values"]["magnitudes"], dtype=float), expected.magnitudes)
    assert sec["values"]["concepts"] == list(expected.concepts) and sec["values"]["random_control_rows"] is None
    assert len(sec["values"]["concept_maps"]["maps"]) == len(BLOCKS)
    # Two figures and the concept maps; the definition states TCAV's known weakness.
    assert len(_section(user_control).figures) == 3
    assert "any consistent direction, not only a meaningful one" in _section(user_control).text
    page = user_control.to_html()
    assert "<h2 id='s1'>Concepts</h2>" in page or ">Concepts</h2>" in page


def test_each_concept_stands_beside_its_control(data, user_control):
    frame = _tables(user_control)[rc.TABLES["frame"]]
    beside = _tables(user_control)[rc.TABLES["controls"]]
    assert set(beside["concept"]) == {"bright", "tiny"} and set(beside["control"]) == {"bright2"}
    assert len(beside) == 2 * len(BLOCKS) * 3
    by = frame.set_index(["concept", "block", "class"])
    for row in beside.itertuples(index=False):
        mine = by.loc[(row.concept, row.block, row._3)]
        ctl = by.loc[(row.control, row.block, row._3)]
        assert row.tcav_score == mine["tcav_score"] and row.p_adjusted == mine["p_adjusted"]
        assert row.tcav_magnitude == mine["tcav_magnitude"] and row.significant == mine["significant"]
        assert row.control_tcav_score == ctl["tcav_score"] and row.control_p_adjusted == ctl["p_adjusted"]
        assert row.control_significant == ctl["significant"]
    sets = _tables(user_control)[rc.TABLES["sets"]]
    assert dict(zip(sets["concept"], sets["role"])) == {"bright": "concept", "tiny": "concept",
                                                        "bright2": "negative control"}
    assert dict(zip(sets["concept"], sets["n_examples"])) == {"bright": 30, "tiny": 12, "bright2": 30}


def test_the_readings_follow_the_significance_of_the_concept_and_its_control():
    # A planted grid: (concept, control) significant at (c2, 1), only the concept at (c1, 0).
    @dataclasses.dataclass
    class Fake:
        concepts: tuple = ("a", "ctl")
        relative: tuple = (False, False)

        def to_frame(self):
            rows = []
            for c in self.concepts:
                for b in ("c1", "c2"):
                    for k in ("0", "1"):
                        sig = ((c == "a" and (b, k) in {("c1", "0"), ("c2", "1")})
                               or (c == "ctl" and (b, k) == ("c2", "1")))
                        rows.append((c, b, k, 0.5, 0.1, 0.01 if sig else 0.9, sig))
            return pd.DataFrame(rows, columns=["concept", "block", "class", "tcav_score", "tcav_magnitude",
                                               "p_adjusted", "significant"])

    out = rc.control_frame(Fake(), ("ctl",)).set_index(["block", "class"])["reading"]
    assert out[("c1", "0")] == "significant; its control is not"
    assert out[("c2", "1")] == "significant, and so is its control: possibly a confound"
    assert out[("c1", "1")] == out[("c2", "0")] == "not significant"


def test_the_random_control_is_the_documented_draw_from_the_pool(data, random_control):
    size = 30  # the largest concept given as an array
    rows = np.sort(np.random.default_rng([SEED, 21]).choice(len(data.pool), size, replace=False))
    concepts = {"bright": data.concepts["bright"], "tiny": data.concepts["tiny"], "random (control)": data.pool[rows]}
    expected = _expected(data, concepts, np.delete(data.pool, rows, axis=0))
    tables = _tables(random_control)
    pd.testing.assert_frame_equal(tables[rc.TABLES["frame"]], expected.to_frame())
    record = random_control.to_record()
    sec = next(s for s in record["sections"] if s["name"] == "concepts")
    assert sec["values"]["random_control_rows"] == rows.tolist()
    sets = tables[rc.TABLES["sets"]]
    assert dict(zip(sets["concept"], sets["role"]))["random (control)"] == "random control"
    assert set(tables[rc.TABLES["controls"]]["control"]) == {"random (control)"}


def _lines(report, kind):
    return [m for k, m in report.health if k == kind]


def _named(report, kind):
    return {m.split("'")[1] for m in _lines(report, kind) if m.startswith("Concept ")}


@pytest.mark.parametrize("which", ["user_control", "random_control"])
def test_each_health_line_appears_in_exactly_its_case(which, request):
    report = request.getfixturevalue(which)
    acc = _tables(report)[rc.TABLES["accuracy"]]
    frame = _tables(report)[rc.TABLES["frame"]]
    control = "bright2" if which == "user_control" else "random (control)"
    tested = {"bright", "tiny"}
    # Too few examples: 'tiny' has 12 (< 20); the others 30.
    assert _named(report, "few_samples") == {"tiny"}
    assert any("'tiny' has only 12 examples" in m for m in _lines(report, "few_samples"))
    # Separable at no block: exactly the tested concepts whose every block fails (here 'tiny', not 'bright').
    never = {c for c, g in acc.groupby("concept") if not g["separable"].any()}
    assert _named(report, "concept_not_separable") == never & tested == {"tiny"}
    # Significant nowhere: exactly the tested concepts with no significant (block, class).
    nowhere = {c for c, g in frame.groupby("concept") if not g["significant"].any()}
    assert _named(report, "not_significant") == nowhere & tested
    assert _named(report, "not_significant")  # the case occurs here
    # A control significant nowhere (and, for the random one, separable nowhere) is what it should do: no line.
    # The case occurs on TensorFlow and JAX; on torch (other initial weights) 'bright2' is significant somewhere,
    # and then the line is control_significant.
    assert control not in _named(report, "not_significant") | _named(report, "concept_not_separable")
    if which == "random_control":
        assert control in never
    assert len(_lines(report, "control_significant")) == (control not in nowhere)


@pytest.mark.parametrize("drawn", [False, True])
def test_a_significant_control_is_a_finding_naming_where(data, monkeypatch, drawn):
    real = HybridInterpreter.concepts

    def planted(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        sig = np.zeros_like(result.significant_magnitude)
        sig[result.concepts.index("bright2" if not drawn else "random (control)"), 1, 2] = True
        sig[result.concepts.index("bright"), 1, 2] = True
        sig[result.concepts.index("bright"), 0, 0] = True  # the concept alone
        return dataclasses.replace(result, significant_magnitude=sig)

    monkeypatch.setattr(HybridInterpreter, "concepts", planted)
    if drawn:
        report = _report(data, {"bright": data.concepts["bright"]})
        name = "random (control)"
    else:
        report = _report(data, {"bright": data.concepts["bright"], "bright2": data.concepts["bright2"]},
                         concept_controls=["bright2"])
        name = "bright2"
    lines = _lines(report, "control_significant")
    assert len(lines) == 1
    assert lines[0].startswith(f"Negative control {name!r} is significant for 1 (block, class) pair(s): class '2' at "
                               "block 'c2'.")
    assert ("drawn from the random pool" in lines[0]) == drawn and ("relative TCAV" in lines[0]) == (not drawn)
    beside = _tables(report)[rc.TABLES["controls"]].set_index(["block", "class"])["reading"]
    assert beside[("c2", "2")] == "significant, and so is its control: possibly a confound"
    assert beside[("c1", "0")] == "significant; its control is not"
    assert (beside.drop([("c2", "2"), ("c1", "0")]) == "not significant").all()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"concept_options": {"random_state": 1}}, ValueError, r"sets 'random_state'.*build_report\(\.\.\., random_state="),
    ({"concept_options": {"bootstrap": 10}}, ValueError, r"build_report\(\.\.\., bootstrap="),
    ({"concept_options": {"n_randoms": 10}}, ValueError, r"unknown option 'n_randoms'.*Did you mean 'n_random'"),
    ({"concept_options": [("n_random", 10)]}, TypeError, r"`concept_options` must be None or a dict"),
    ({"concept_controls": "nope"}, ValueError, r"`concept_controls` names 'nope', which is not one of `concepts`"),
    ({"concept_controls": []}, ValueError, r"`concept_controls` is empty"),
    ({"concept_controls": ["bright", "tiny", "bright2"]}, ValueError, r"names every concept"),
    ({"concept_controls": 3}, TypeError, r"`concept_controls` must be None"),
])
def test_bad_concept_arguments_are_refused_before_any_pass(data, kwargs, error, match, monkeypatch):
    monkeypatch.setattr(HybridInterpreter, "_stream", lambda *a, **k: pytest.fail("data was read"))
    options = {"concept_options": {"n_random": N_RANDOM}, **kwargs}
    with pytest.raises(error, match=match):
        build_report(data.interp, data.x, data.y, sections=["concepts"], concepts=data.concepts,
                     concept_random=data.pool, **options)


def test_concept_arguments_need_concepts_and_the_section(data):
    with pytest.raises(ValueError, match=r"`concept_random` is given but `concepts` is None"):
        build_report(data.interp, data.x, data.y, concept_random=data.pool)
    with pytest.raises(ValueError, match=r"`concept_options` is given but `concepts` is None"):
        build_report(data.interp, data.x, data.y, concept_options={"n_random": 10})
    with pytest.raises(ValueError, match=r"`sections` has 'concepts' but `concepts` is None"):
        build_report(data.interp, data.x, data.y, sections=["concepts"])
    with pytest.raises(ValueError, match=r"`concepts` is given but `sections` leaves out 'concepts'"):
        build_report(data.interp, data.x, data.y, sections=["layers"], concepts=data.concepts)


def test_a_random_control_needs_an_array_pool_large_enough(data):
    import tensorflow as tf

    tfd = tf.data.Dataset.from_tensor_slices(data.pool).batch(32)
    with pytest.raises(TypeError, match=r"`concept_random` is a .*Dataset.*concept_controls="):
        build_report(data.interp, data.x, data.y, sections=["concepts"], concepts=data.concepts, concept_random=tfd)
    # The pool is x (45 analysed inputs): too few for a control of 30 and random sets of that size.
    with pytest.raises(ValueError, match=r"`x` has 45 inputs: too few to draw a random control concept of 30"):
        build_report(data.interp, data.x, data.y, sections=["concepts"], concepts=data.concepts)
    # A pool of its own, too small likewise.
    with pytest.raises(ValueError, match=r"`concept_random` has 40 inputs"):
        build_report(data.interp, data.x, data.y, sections=["concepts"], concepts=data.concepts,
                     concept_random=data.pool[:40])
    with pytest.raises(ValueError, match=r"named 'random \(control\)'"):
        build_report(data.interp, data.x, data.y, sections=["concepts"], concepts={"random (control)": data.pool[:30]},
                     concept_random=data.pool[30:])


def test_the_provenance_records_the_concepts_and_their_options(data, user_control):
    args = user_control.provenance["arguments"]
    assert args["concepts"] == {"bright": "ndarray float32 of shape (30, 8, 8, 3)",
                                "tiny": "ndarray float32 of shape (12, 8, 8, 3)",
                                "bright2": "ndarray float32 of shape (30, 8, 8, 3)"}
    assert args["concept_random"] == "ndarray float32 of shape (240, 8, 8, 3)"
    assert args["concept_controls"] == "bright2" and args["concept_options"] == {"n_random": N_RANDOM}
    assert user_control.provenance["seed"] == SEED
