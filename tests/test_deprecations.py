"""One default and one name per idea; the old names work for one release, with a FutureWarning naming the new one.

* ``random_state`` defaults to None (fresh entropy) in every analysis, the report included
  (it was 0 there); ``batch_size`` to 64 everywhere (the callback had 256), or None on a
  ``GlobalAnalyzer`` method, meaning the analyzer's own (64 by default).
* The number of top items kept is ``top_k`` (``filter_examples``' ``k``, the report's ``atlas_k``,
  ``FilterExamples.k``); the number of permutations is ``n_repeats`` (the report's
  ``importance_repeats``). CHANGELOG.md lists the renames.
"""

import inspect

import numpy as np
import pytest

import keras

from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter, InterpretationCallback, build_report
from keras_hybrid_interp import report as _report
from keras_hybrid_interp.core.deprecation import REMOVED_IN

from models import small_cnn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OLD_NAMES = {"k", "atlas_k", "importance_repeats"}


def public_callables():
    for cls in (HybridInterpreter, GlobalAnalyzer):
        for name, fn in vars(cls).items():
            if not name.startswith("_") and callable(fn):
                yield f"{cls.__name__}.{name}", fn
    yield "GlobalAnalyzer", GlobalAnalyzer.__init__
    yield "HybridInterpreter", HybridInterpreter.__init__
    yield "InterpretationCallback", InterpretationCallback.__init__
    yield "build_report", build_report


CALLABLES = list(public_callables())


@pytest.mark.parametrize(("name", "fn"), CALLABLES, ids=[n for n, _ in CALLABLES])
def test_one_default_and_one_name_per_idea(name, fn):
    params = inspect.signature(fn).parameters
    assert not OLD_NAMES & set(params), f"{name} still has {sorted(OLD_NAMES & set(params))}"
    if "random_state" in params:
        assert params["random_state"].default is None, name
    if "batch_size" in params:
        inherits = name.startswith("GlobalAnalyzer.")  # None: the analyzer's own batch_size
        assert params["batch_size"].default == (None if inherits else 64), name
    assert inspect.signature(GlobalAnalyzer.__init__).parameters["batch_size"].default == 64


def test_the_checks_see_the_methods():  # the table above is not empty, and holds what it must
    names = {n for n, _ in CALLABLES}
    assert {"GlobalAnalyzer.filter_examples", "GlobalAnalyzer.filter_importance", "build_report",
            "HybridInterpreter.fit_probes", "InterpretationCallback"} <= names


@pytest.fixture(scope="module")
def env():
    keras.utils.set_random_seed(0)
    model = small_cnn(classes=3)
    rng = np.random.default_rng(0)
    x = rng.random((10, 16, 16, 1), dtype=np.float32)
    return GlobalAnalyzer(model, blocks=["conv3"]), x


def test_filter_examples_k_is_top_k_with_a_future_warning(env):
    ga, x = env
    new = ga.filter_examples(x, block="conv3", filters=[0, 5], top_k=3)
    with pytest.warns(FutureWarning, match=r"GlobalAnalyzer\.filter_examples\(\): `k` was renamed `top_k`.*"
                                           rf"removed in {REMOVED_IN}\. Pass `top_k=` instead"):
        old = ga.filter_examples(x, block="conv3", filters=[0, 5], k=3)
    np.testing.assert_array_equal(old.indices, new.indices)
    assert new.top_k == 3 and new.indices.shape == (2, 3)
    with pytest.warns(FutureWarning, match=r"FilterExamples: `k` was renamed `top_k`.*Read `\.top_k` instead"):
        assert old.k == 3


def test_the_warning_points_at_the_callers_line(env):
    ga, x = env
    with pytest.warns(FutureWarning) as record:
        ga.filter_examples(x, block="conv3", filters=[0], k=1)
    assert record[0].filename == __file__


def test_both_names_are_a_type_error(env):
    ga, x = env
    with pytest.raises(TypeError, match=r"got both `k` and `top_k`: `k` is the deprecated name of `top_k`"):
        ga.filter_examples(x, block="conv3", k=2, top_k=2)


class _Stop(Exception):
    pass


def test_build_report_old_names_map_onto_the_new_ones(monkeypatch, env):
    ga, x = env
    interp = HybridInterpreter(ga.model, blocks=["conv3"]).fit_probes(x, np.arange(10) % 3, verbose=0)
    seen = {}

    def capture(interp, x, y, options, want):
        seen["options"] = options
        raise _Stop

    monkeypatch.setattr(_report, "run_sections", capture)
    with pytest.warns(FutureWarning, match=r"build_report\(\): `importance_repeats` was renamed `n_repeats`"):
        with pytest.warns(FutureWarning, match=r"build_report\(\): `atlas_k` was renamed `top_k`"):
            with pytest.raises(_Stop):
                build_report(interp, x, importance_repeats=7, atlas_k=2)
    assert seen["options"].n_repeats == 7 and seen["options"].top_k == 2
    with pytest.raises(_Stop):
        build_report(interp, x)
    assert seen["options"].n_repeats == 3 and seen["options"].top_k == 6 and seen["options"].random_state is None


def test_build_report_names_the_concepts_arguments_after_hybrid_interpreter_concepts():
    # concepts= as in interp.concepts(concepts, ...); its `random` is concept_random=; the report's own samples,
    # seed and bootstrap are passed to the analysis, and its other options go through concept_options=.
    from keras_hybrid_interp.local.concepts import concepts as concepts_fn
    from keras_hybrid_interp.report_sections.concepts import REPORT_SET, check_concept_options

    report_params = inspect.signature(build_report).parameters
    method_params = inspect.signature(HybridInterpreter.concepts).parameters
    fn_params = inspect.signature(concepts_fn).parameters
    assert list(report_params)[-4:] == ["concepts", "concept_random", "concept_controls", "concept_options"]
    assert all(report_params[p].default is None for p in list(report_params)[-4:])
    assert "concepts" in method_params and "random" in method_params and REPORT_SET["random"] == "concept_random"
    assert set(REPORT_SET) <= set(fn_params) and set(REPORT_SET.values()) <= set(report_params) | {"x", "y"}
    for name, arg in REPORT_SET.items():  # one default per idea, where both have one
        if name in ("random_state", "batch_size", "bootstrap", "confidence"):
            assert fn_params[name].default == report_params[arg].default, name
    others = {p: fn_params[p].default for p in fn_params if p not in REPORT_SET and p != "interp"}
    assert check_concept_options(others) == others and "n_random" in others
