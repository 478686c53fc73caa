"""The package's warnings: one category, each message once per public call.

Every caveat the package finds (dead filters, missing classes, input drift,
probes that did not converge, ...) is a :class:`InterpretationWarning`
emitted through :func:`warn`. A public method runs inside :func:`collect`:
while it runs, warnings are gathered, duplicates are dropped, and they are
emitted once when the outermost call returns. So ``build_report()``, which runs
several analyses that each notice the same dead filter, warns once.

The caveats stay available to the caller as data: ``collect()`` yields a
list of :class:`Caveat` (the report's health section reads it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings

import numpy as np

__all__ = ["InterpretationWarning", "Caveat", "warn", "collect", "apart", "collecting", "check_classes", "listing"]


class InterpretationWarning(UserWarning):
    """A result rests on a broken precondition (dead filters, missing classes, drift, ...)."""


@dataclasses.dataclass(frozen=True)
class Caveat:
    """One thing found that limits the conclusions.

    Attributes
    ----------
    kind : str
        ``"dead_filters"``, ``"missing_classes"``, ``"rare_classes"``,
        ``"input_drift"``, ``"not_converged"``, ``"noisy_importance"``,
        ``"few_samples"``, ...
    message : str
        What was found, and what to do about it.
    """

    kind: str
    message: str


_state = threading.local()


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points ``warnings.warn`` at the first frame outside this package."""
    import os
    import sys
    import types

    here = os.path.dirname(os.path.abspath(__file__))
    level = 2
    frame: types.FrameType | None = sys._getframe(level)  # the caller of warnings.warn's caller
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(here) or name.endswith("contextlib.py")):
            break
        frame, level = frame.f_back, level + 1
    return level


def _stack():
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def warn(kind: str, message: str) -> None:
    """Emits ``message`` as an :class:`InterpretationWarning` (once per outermost public call)."""
    stack = _stack()
    if stack:
        caveats = stack[0]
        if all(c.message != message for c in caveats):
            caveats.append(Caveat(kind, message))
        return
    warnings.warn(message, InterpretationWarning, stacklevel=_user_stacklevel())


@contextlib.contextmanager
def collect():
    """Gathers the warnings of a public call; emits each distinct one once at the end.

    Yields the list of :class:`Caveat` found so far in the outermost call.
    Nested ``collect()`` blocks share the outermost list.
    """
    stack = _stack()
    outer = not stack
    if outer:
        stack.append([])
    caveats = stack[0]
    try:
        yield caveats
    finally:
        if outer:
            stack.pop()
            for c in caveats:
                warnings.warn(c.message, InterpretationWarning, stacklevel=_user_stacklevel())


def current() -> list:
    """The calling thread's findings (its :func:`collect` stack), for :func:`adopted` in a worker thread."""
    return _stack()


@contextlib.contextmanager
def adopted(stack: list):
    """Runs the block, in a worker thread, with the findings ``stack`` of the thread that started it (:func:`current`).

    Health state is per thread: a worker's :func:`warn` would otherwise be emitted on its own instead of
    joining the caller's :func:`collect` (a report's health section). Where the caller collects, the worker
    adds to the same list; where it does not, the worker has a list of its own.
    """
    _state.stack = stack if stack else []
    try:
        yield
    finally:
        _state.stack = []


@contextlib.contextmanager
def apart():
    """Gathers the warnings of an analysis of *another* subject into a list of their own.

    Inside, :func:`warn` (and any :func:`collect` nested in it) adds to the
    yielded list only: nothing is emitted, and the enclosing call's list does
    not see them. For a report that analyses a second model (``compare=``):
    that model's findings decide its checks, not this report's health.
    """
    stack = _stack()
    saved = list(stack)
    stack[:] = [[]]
    try:
        yield stack[0]
    finally:
        stack[:] = saved


def collecting(fn):
    """Decorator: runs a public method inside :func:`collect`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with collect():
            return fn(*args, **kwargs)

    return wrapper


def listing(items, limit: int = 20) -> str:
    """``items`` as a list for a message: the first ``limit``, then how many more (``[3, 7] (and 12 more)``)."""
    items = [int(i) if isinstance(i, (int, np.integer)) else i for i in list(items)]
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


#: A class with fewer samples than this is reported as rare.
RARE_CLASS_SAMPLES = 10


def check_classes(counts, class_names, source="the labels"):
    """Warns once, naming the classes with no sample (and the rare ones, with n); returns the missing indices."""
    counts = np.asarray(counts)
    rare = np.flatnonzero((counts > 0) & (counts < RARE_CLASS_SAMPLES))
    if len(rare):
        shown = ", ".join(f"{class_names[i]}: {int(counts[i])}" for i in rare[:20])
        warn(
            "rare_classes",
            f"Classes with fewer than {RARE_CLASS_SAMPLES} samples among the {int(counts.sum())} analysed (classes "
            f"from {source}; n per class: {shown}): every per-class number rests on a handful of samples. Pass "
            "more samples of those classes.",
        )
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        warn(
            "missing_classes",
            f"Classes {listing(class_names[i] for i in missing)} have no sample among the {int(np.sum(counts))} "
            f"analysed (classes from {source}); every number computed for them is NaN, "
            "and a probe trained without them never "
            "predicts them. Shuffle class-sorted data before cutting it with `max_samples`, or pass more data.",
        )
    return missing
