"""The one validation helper: every scalar option is refused the same way, naming it, what was expected and
what was received; bools are never numbers; NumPy scalars are."""

import math

import numpy as np
import pytest

from keras_hybrid_interp.core.validation import check_int, check_real, is_int, is_real


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int8(1)])
def test_a_positive_int_is_returned_as_a_python_int(value):
    out = check_int(value, "n")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize(("value", "kwargs", "expected"), [
    (0, {}, "a positive int"),
    (-2, {}, "a positive int"),
    (True, {}, "a positive int"),
    (2.0, {}, "a positive int"),
    ("3", {}, "a positive int"),
    (None, {}, "a positive int"),
    (-1, {"min_value": 0}, "a non-negative int"),
    (4, {"min_value": 8}, "an int >= 8"),
    (5, {"min_value": 0, "max_value": 4}, "an int in 0..4"),
    (0, {"allow_none": True}, "a positive int or None"),
    (0, {"what": " (examples kept per filter)"}, r"a positive int \(examples kept per filter\)"),
    (1, {"min_value": 2, "expected": "0 or an int >= 2"}, "0 or an int >= 2"),
])
def test_a_bad_int_names_the_argument_what_was_expected_and_what_was_received(value, kwargs, expected):
    with pytest.raises(ValueError, match=rf"^`n_repeats` must be {expected}; received {re_repr(value)}\.$"):
        check_int(value, "n_repeats", **kwargs)


def re_repr(value):
    import re
    return re.escape(repr(value))


def test_none_passes_only_where_allowed():
    assert check_int(None, "steps", allow_none=True) is None
    assert check_real(None, "threshold", low=0, allow_none=True) is None
    with pytest.raises(ValueError, match="`threshold` must be a number >= 0; received None"):
        check_real(None, "threshold", low=0)


@pytest.mark.parametrize(("value", "kwargs"), [
    (0.5, {"low": 0, "high": 1, "low_open": True, "high_open": True}),
    (0, {"low": 0, "high": 1}),
    (1, {"low": 0, "high": 1}),
    (np.float32(0.25), {"low": 0}),
    (np.inf, {"low": 0, "low_open": True}),
])
def test_a_real_in_range_is_returned_as_a_float(value, kwargs):
    out = check_real(value, "x", **kwargs)
    assert type(out) is float and (out == float(value))


@pytest.mark.parametrize(("value", "kwargs", "expected"), [
    (0, {"low": 0, "low_open": True}, "a positive float"),
    (0.0, {"low": 0, "high": 1, "low_open": True, "high_open": True}, r"a float in \(0, 1\)"),
    (1.5, {"low": 0, "high": 1}, r"a float in \[0, 1\]"),
    (math.nan, {"low": 0}, "a number >= 0"),
    (math.inf, {"low": 0, "finite": True}, "a finite number >= 0"),
    (False, {"low": 0}, "a number >= 0"),
    ("0.1", {"low": 0, "low_open": True}, "a positive float"),
])
def test_a_bad_real_names_the_argument_what_was_expected_and_what_was_received(value, kwargs, expected):
    with pytest.raises(ValueError, match=rf"^`tol` must be {expected}; received {re_repr(value)}\.$"):
        check_real(value, "tol", **kwargs)


def test_the_type_tests():
    assert is_int(3) and is_int(np.uint8(3)) and not is_int(True) and not is_int(3.0) and not is_int("3")
    assert is_real(3) and is_real(np.float16(1)) and is_real(2.5) and not is_real(False) and not is_real("1")
