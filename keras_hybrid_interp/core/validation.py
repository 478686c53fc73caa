"""One check for the scalar options of every public function: an int, or a real number, in a range.

Every count, size, index and tolerance the package takes goes through :func:`check_int` or
:func:`check_real`, so that a bad one is refused the same way everywhere: a ``ValueError`` that
names the argument, says what was expected and shows what was received::

    `n_repeats` must be a positive int; received 0.
    `max_samples` must be a positive int or None; received 0.
    `confidence` must be a float in (0, 1); received 1.5.

As scikit-learn's ``sklearn.utils.check_scalar``, with two differences: a value of the wrong type
is a ``ValueError`` too (the message is the same one: what was expected), and ``bool`` is never a
number here (``True`` is an ``int`` to Python, and ``n_repeats=True`` is a mistake). NumPy
integers and floats are accepted; an int is returned as a Python ``int``, a real as a ``float``.

:func:`is_int` and :func:`is_real` are the type tests alone, for arguments that take a number or
something else (a block name or index, ``"auto"`` or a count).
"""

from __future__ import annotations

import math
from typing import Literal, overload

import numpy as np

__all__ = ["check_int", "check_real", "is_int", "is_real"]


def is_int(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value) -> bool:
    """Whether ``value`` is a real number (Python or NumPy int or float), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _int_text(min_value, max_value) -> str:
    if max_value is not None:
        return f"an int in {min_value}..{max_value}" if min_value is not None else f"an int <= {max_value}"
    if min_value is None:
        return "an int"
    return {1: "a positive int", 0: "a non-negative int"}.get(int(min_value), f"an int >= {min_value}")


@overload
def check_int(value, name: str, *, min_value: int | None = 1, max_value: int | None = None,
              allow_none: Literal[False] = False, what: str = "", expected: str | None = None) -> int: ...
@overload
def check_int(value, name: str, *, min_value: int | None = 1, max_value: int | None = None,
              allow_none: bool, what: str = "", expected: str | None = None) -> int | None: ...
def check_int(value, name: str, *, min_value: int | None = 1, max_value: int | None = None,
              allow_none: bool = False, what: str = "", expected: str | None = None) -> int | None:
    """``value`` as a Python ``int`` if it is an integer in ``min_value..max_value`` (both included).

    Parameters
    ----------
    value
        What the user passed.
    name : str
        How the message names the argument (``"n_repeats"``, ``"ImportanceOptions(top_k=...)"``).
    min_value, max_value : int or None
        The range, both ends included; None: no bound on that side. The default is a positive int.
    allow_none : bool
        None is accepted (and returned).
    what : str
        Appended to what is expected, e.g. ``" (examples kept per filter)"``.
    expected : str, optional
        What is expected, instead of the text made from the range (``"0 or an int >= 2"``).

    Raises
    ------
    ValueError
        ``"`name` must be <expected><what>; received <value!r>."``
    """
    if value is None and allow_none:
        return None
    if (not is_int(value) or (min_value is not None and value < min_value)
            or (max_value is not None and value > max_value)):
        text = expected if expected is not None else _int_text(min_value, max_value) + (
            " or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {text}{what}; received {value!r}.")
    return int(value)


def _real_text(low, high, low_open, high_open, finite) -> str:
    if low is not None and high is not None:
        return f"a float in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low == 0 and low_open and high is None:
        return "a positive float"
    kind = "a finite number" if finite else "a number"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


@overload
def check_real(value, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, finite: bool = False,
               allow_none: Literal[False] = False, what: str = "", expected: str | None = None) -> float: ...
@overload
def check_real(value, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, finite: bool = False,
               allow_none: bool, what: str = "", expected: str | None = None) -> float | None: ...
def check_real(value, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, finite: bool = False,
               allow_none: bool = False, what: str = "", expected: str | None = None) -> float | None:
    """``value`` as a ``float`` if it is a real number between ``low`` and ``high``.

    Parameters
    ----------
    value
        What the user passed.
    name : str
        How the message names the argument.
    low, high : float or None
        The range; None: no bound on that side. NaN is outside every range.
    low_open, high_open : bool
        The bound itself is excluded (``(0, 1)``: both open).
    finite : bool
        Infinity is refused as well.
    allow_none : bool
        None is accepted (and returned).
    what : str
        Appended to what is expected, e.g. ``" (a distance 1 - |r|)"``.
    expected : str, optional
        What is expected, instead of the text made from the range.

    Raises
    ------
    ValueError
        ``"`name` must be <expected><what>; received <value!r>."``
    """
    if value is None and allow_none:
        return None
    ok = is_real(value) and not math.isnan(float(value))
    if ok and finite and not math.isfinite(float(value)):
        ok = False
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        text = expected if expected is not None else _real_text(low, high, low_open, high_open, finite) + (
            " or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {text}{what}; received {value!r}.")
    return float(value)
