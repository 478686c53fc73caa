"""Input drift is checked wherever fitted input statistics exist, at any number of samples (issue 22, section 1).

The rules (core/drift.py): from DRIFT_MIN_SAMPLES samples on, the moments; below, the fitted range widened
by DRIFT_RANGE_MARGIN of its width. The exact cases of the issue: ``explain(x * 255)`` on probes fitted on
[0, 1], ``layer_predictions`` on fewer than 30 samples, ``filter_importance`` on rescaled data.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_hybrid_interp import GlobalAnalyzer, HybridInterpreter  # noqa: E402
from keras_hybrid_interp.core import drift as _drift  # noqa: E402
from keras_hybrid_interp.core.data_pass import Batch, InputMoments  # noqa: E402
from keras_hybrid_interp.core.health import InterpretationWarning  # noqa: E402
from keras_hybrid_interp.datasets import load_digits  # noqa: E402

from models import small_cnn  # noqa: E402
from segmentation_models import planted_data, planted_unet  # noqa: E402


def drift_warnings(fn, *args, **kwargs):
    """The input-drift messages of one call."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return [str(w.message) for w in record
            if issubclass(w.category, InterpretationWarning) and "Input drift" in str(w.message)]


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


@pytest.fixture(scope="module")
def fitted(digits):
    """Probes fitted on the digits, which lie in [0, 1] (the drift check reads only the inputs: no training)."""
    (xtr, ytr), _ = digits
    interp = HybridInterpreter(small_cnn())
    interp.fit_probes(xtr, ytr, verbose=0)
    return interp


# ----------------------------------------------------------------------
# The statistics and the rule, against NumPy
# ----------------------------------------------------------------------
def test_input_moments_range_equals_numpy_over_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5, 4, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([0.0, -7.0, 3.0])
    m = InputMoments()
    for start in range(0, 23, 6):
        m.update(Batch(x[start:start + 6], None, start, {}))
    np.testing.assert_array_equal(m.min, x.min(axis=(0, 1, 2)))
    np.testing.assert_array_equal(m.max, x.max(axis=(0, 1, 2)))
    stats = m.statistics()
    assert set(stats) == {"mean", "std", "min", "max"}
    np.testing.assert_allclose(stats["mean"], x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], x.std(axis=(0, 1, 2)), rtol=1e-12)


def test_input_moments_in_chunks_smaller_than_a_batch_equal_numpy():
    # update() reduces a batch in float64 copies of at most CHUNK_VALUES values; 7 splits every batch
    # of 6 x 5 x 4 x 3 values into 2-position chunks plus a remainder
    rng = np.random.default_rng(1)
    x = rng.normal(size=(23, 5, 4, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([0.0, -7.0, 3.0])
    m = InputMoments()
    m.CHUNK_VALUES = 7
    for start in range(0, 23, 6):
        m.update(Batch(x[start:start + 6], None, start, {}))
    assert m.count == 23 * 5 * 4
    np.testing.assert_array_equal(m.min, x.min(axis=(0, 1, 2)))
    np.testing.assert_array_equal(m.max, x.max(axis=(0, 1, 2)))
    np.testing.assert_allclose(m.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(m.std, x.std(axis=(0, 1, 2)), rtol=1e-12)


def test_input_moments_range_of_several_inputs_in_input_order():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 4, 4, 2)), rng.uniform(5, 6, size=(9, 3))
    m = InputMoments()
    for start in (0, 4):
        m.update(Batch([a[start:start + 5 if start else 4], b[start:start + 5 if start else 4]], None, start, {}))
    np.testing.assert_array_equal(m.min, np.concatenate([a.min(axis=(0, 1, 2)), b.min(axis=0)]))
    np.testing.assert_array_equal(m.max, np.concatenate([a.max(axis=(0, 1, 2)), b.max(axis=0)]))
    assert InputMoments().statistics() is None


def _moments(x):
    m = InputMoments()
    m.update(Batch(np.asarray(x, np.float64), None, 0, {}))
    return m


def test_few_samples_are_checked_against_the_widened_fitted_range():
    ref = {"mean": np.array([0.5, 0.0]), "std": np.array([0.3, 1.0]),
           "min": np.array([0.0, -2.0]), "max": np.array([1.0, 2.0])}
    margin = 0.5  # the documented DRIFT_RANGE_MARGIN: half the fitted range's width on either side
    x = np.zeros((3, 2, 2, 2))
    x[..., 0], x[..., 1] = 0.4, 0.1
    assert drift_warnings(_drift.check_drift, ref, _moments(x)) == []
    # Channel 0 exactly at the edge max + margin * width: no drift; just beyond: drift.
    x[0, 0, 0, 0] = 1.0 + margin * 1.0
    assert drift_warnings(_drift.check_drift, ref, _moments(x)) == []
    x[0, 0, 0, 0] = 1.0 + margin * 1.0 + 1e-6
    msgs = drift_warnings(_drift.check_drift, ref, _moments(x))
    assert len(msgs) == 1 and "channel 0 of these 3 samples" in msgs[0] and "[0, 1]" in msgs[0], msgs
    # The low side of channel 1 (width 4).
    x[0, 0, 0, 0] = 0.4
    x[1, 1, 1, 1] = -2.0 - margin * 4.0 - 1e-6
    msgs = drift_warnings(_drift.check_drift, ref, _moments(x))
    assert len(msgs) == 1 and "channel 1" in msgs[0] and "1 of 2 channels" in msgs[0], msgs


def test_from_min_samples_on_the_moments_decide_not_the_range():
    ref = {"mean": np.array([0.5]), "std": np.array([0.3]), "min": np.array([0.0]), "max": np.array([1.0])}
    n = _drift.DRIFT_MIN_SAMPLES
    x = np.random.default_rng(2).uniform(0.0, 1.0, (n, 2, 2, 1))
    x[0, 0, 0, 0] = 3.0  # one value far outside the range, the moments barely move: not drift at n samples
    m = _moments(x)
    assert abs(m.mean[0] - 0.5) < 3 * 0.3 and 0.3 / 4 < m.std[0] < 0.3 * 4  # the moments' own rule holds
    assert drift_warnings(_drift.check_drift, ref, m) == []
    # The same value among n - 1 samples: the range decides.
    msgs = drift_warnings(_drift.check_drift, ref, _moments(x[: n - 1]))
    assert len(msgs) == 1 and f"these {n - 1} samples" in msgs[0], msgs


def test_statistics_without_a_range_check_moments_only():
    ref = {"mean": np.array([0.5]), "std": np.array([0.3])}  # saved before the range was recorded
    assert drift_warnings(_drift.check_drift, ref, _moments(np.full((2, 2, 2, 1), 255.0))) == []
    msgs = drift_warnings(_drift.check_drift, ref, _moments(np.full((30, 2, 2, 1), 255.0)))
    assert len(msgs) == 1 and "mean 255" in msgs[0]


# ----------------------------------------------------------------------
# The exact cases of the issue
# ----------------------------------------------------------------------
def test_fit_records_the_range_of_the_fitting_data(fitted, digits):
    (xtr, _), _ = digits
    stats = fitted.input_statistics
    np.testing.assert_array_equal(stats["min"], [xtr.min()])
    np.testing.assert_array_equal(stats["max"], [xtr.max()])
    assert stats["min"][0] == 0.0 and stats["max"][0] == 1.0


def test_explain_of_one_rescaled_sample_warns(fitted, digits):
    _, (xte, _) = digits
    msgs = drift_warnings(fitted.explain, xte[0] * 255.0)
    assert len(msgs) == 1 and "these 1 samples takes values in [0, 255]" in msgs[0], msgs
    assert drift_warnings(fitted.explain, xte[0]) == []


@pytest.mark.parametrize("n", [1, 5, 29])
def test_layer_predictions_on_fewer_than_30_rescaled_samples_warn(fitted, digits, n):
    _, (xte, _) = digits
    assert n < _drift.DRIFT_MIN_SAMPLES
    msgs = drift_warnings(fitted.layer_predictions, xte[:n] * 255.0)
    assert len(msgs) == 1 and f"these {n} samples" in msgs[0], msgs
    assert drift_warnings(fitted.layer_predictions, xte[:n]) == []


def test_layer_predictions_from_30_samples_on_use_the_moments(fitted, digits):
    _, (xte, _) = digits
    msgs = drift_warnings(fitted.layer_predictions, xte[:30] * 255.0)
    assert len(msgs) == 1 and "standard deviation" in msgs[0], msgs
    assert drift_warnings(fitted.layer_predictions, xte[:30]) == []


@pytest.mark.parametrize("n", [12, 100])
def test_filter_importance_from_a_fitted_interpreter_on_rescaled_data_warns(fitted, digits, n):
    _, (xte, yte) = digits
    ga = GlobalAnalyzer(fitted)
    assert ga.input_statistics is fitted.input_statistics
    kwargs = dict(block="conv2", n_repeats=1, random_state=0)
    msgs = drift_warnings(ga.filter_importance, xte[:n] * 255.0, yte[:n], **kwargs)
    assert len(msgs) == 1, msgs
    assert drift_warnings(ga.filter_importance, xte[:n], yte[:n], **kwargs) == []


def test_every_global_analysis_of_a_fitted_interpreter_checks_drift(fitted, digits):
    _, (xte, yte) = digits
    ga = GlobalAnalyzer(fitted)
    x = xte[:8] * 255.0
    assert len(drift_warnings(ga.filter_correlation, x, block="conv2")) == 1
    assert len(drift_warnings(ga.filter_class_association, x, yte[:8], block="conv2")) == 1
    assert len(drift_warnings(ga.layer_similarity, x)) == 1
    assert len(drift_warnings(ga.filter_examples, x, block="conv2", k=2)) == 1


def test_an_analyzer_of_a_bare_model_or_an_unfitted_interpreter_has_no_reference(digits):
    _, (xte, yte) = digits
    model = small_cnn()
    for ga in (GlobalAnalyzer(model), GlobalAnalyzer(HybridInterpreter(model))):
        assert ga.input_statistics is None
        assert drift_warnings(ga.filter_correlation, xte[:8] * 255.0, block="conv2") == []


def test_saved_interpreter_keeps_the_range(fitted, digits, tmp_path):
    _, (xte, _) = digits
    path = tmp_path / "interp.keras"
    fitted.save(path)
    loaded = HybridInterpreter.load(path)
    np.testing.assert_array_equal(loaded.input_statistics["max"], fitted.input_statistics["max"])
    assert len(drift_warnings(loaded.explain, xte[0] * 255.0)) == 1


def test_segmentation_probes_and_their_analyses_check_a_few_samples():
    model = planted_unet()
    x, y = planted_data(24, seed=3)
    interp = HybridInterpreter(model, blocks=["enc1", "dec1"])
    interp.fit_probes(x, y, verbose=0, random_state=0)
    assert {"min", "max"} <= set(interp.input_statistics)
    assert len(drift_warnings(interp.explain, x[0] * 255.0)) == 1
    assert drift_warnings(interp.explain, x[0]) == []
    ga = GlobalAnalyzer(interp)
    assert len(drift_warnings(ga.filter_class_association, x[:4] * 255.0, y[:4], block="enc1")) == 1
    assert drift_warnings(ga.filter_class_association, x[:4], y[:4], block="enc1") == []
