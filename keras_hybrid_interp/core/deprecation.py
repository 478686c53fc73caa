"""Renamed arguments and attributes: the old name keeps working for one release, with a warning naming the new one.

As scikit-learn deprecates (its ``FutureWarning``, shown to end users by default, where a
``DeprecationWarning`` is hidden outside ``__main__``) and as Keras renames keyword arguments:
the old name is accepted and mapped onto the new one, and the warning says which release
removes it. Passing both names is a ``TypeError``. Every rename is listed in CHANGELOG.md.

* :func:`renamed` wraps a function or method whose keyword arguments were renamed;
* :func:`renamed_attribute` reads a renamed attribute of a result object.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["REMOVED_IN", "renamed", "renamed_attribute", "rename_message"]

#: The release that removes the names deprecated in this one (0.1): the next minor release.
REMOVED_IN = "0.2"

F = TypeVar("F", bound=Callable[..., Any])


def rename_message(old: str, new: str, where: str, *, attribute: bool = False) -> str:
    """The warning's text: ``where``'s argument (or attribute) ``old`` is now ``new``."""
    instead = f"Read `.{new}` instead." if attribute else f"Pass `{new}=` instead."
    return (f"{where}: `{old}` was renamed `{new}`; `{old}` still works but is deprecated and will be removed "
            f"in {REMOVED_IN}. {instead}")


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: keyword argument ``old`` of the function is now called ``new`` (``@renamed(k="top_k")``).

    A call with ``old=...`` warns (``FutureWarning``, pointing at the caller's line) and runs as
    with ``new=...``; a call with both is a ``TypeError``. The signature (and the documentation)
    shows the new names only.
    """

    def decorate(fn: F) -> F:
        where = f"{fn.__qualname__}()"

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{where} got both `{old}` and `{new}`: `{old}` is the deprecated name of "
                                        f"`{new}`. Pass `{new}` only.")
                    warnings.warn(rename_message(old, new, where), FutureWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_attribute(obj, old: str, new: str):
    """``obj.new``, with the ``FutureWarning`` of reading it by its deprecated name ``old``.

    For a property ``old`` of a result class::

        @property
        def k(self):
            return renamed_attribute(self, "k", "top_k")
    """
    warnings.warn(rename_message(old, new, type(obj).__name__, attribute=True), FutureWarning, stacklevel=3)
    return getattr(obj, new)
