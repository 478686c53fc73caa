"""THE one way the package runs independent NumPy work on several CPU cores: :func:`ordered_map`.

Some steps are many independent NumPy computations with the model idle: the
mean-IoU importance of a segmentation model goes filter by filter over every
cached position (:meth:`.linear_head.LinearHead.run_maps`). NumPy releases the
GIL inside its array operations, so threads run them on several cores at
once. Each task computes exactly what it computes alone, and the results
come back in the order of the inputs, so the numbers do not depend on the
number of threads nor on their scheduling (bit for bit, tested).

Where it did not pay, it is not used: running the reducers of the one pass
at once, and a segmentation layer table's blocks at once, measured no gain on
B13's U-Net (2 cores: the probes' products already run on OpenBLAS's threads,
and much of the rest holds the GIL), so the pass stays serial.

:data:`MAX_THREADS` caps the threads (1: everything runs in the calling
thread, as before this module existed).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["MAX_THREADS", "threads", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")

#: The most threads :func:`ordered_map` uses (fewer where the process may use fewer CPU cores).
#: Set it to 1 to run every task in the calling thread.
MAX_THREADS = 4


def threads() -> int:
    """The threads :func:`ordered_map` uses: the cores this process may run on, at most :data:`MAX_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(int(MAX_THREADS), cores))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], n_threads: int | None = None) -> Iterator[R]:
    """``fn(item)`` for every item, in the order of ``items``, on up to ``n_threads`` threads (default :func:`threads`).

    Lazy and bounded: at most ``2 * n_threads`` tasks are submitted ahead of the
    result being read, so the memory in flight stays bounded, and an exception
    (or the caller stopping) cancels the tasks not started. With one thread,
    everything runs in the calling thread. Each task runs in a copy of the caller's context (NumPy's
    ``errstate`` included), and its :func:`.health.warn` findings join the
    caller's (:func:`.health.collect`): a report's health section sees them.
    A task must not call :func:`.health.apart`.
    """
    n = threads() if n_threads is None else max(1, int(n_threads))
    it = iter(items)
    if n == 1:
        for item in it:
            yield fn(item)
        return
    from . import health

    findings = health.current()  # the caller's health findings: the workers add to the same list

    def task(item):
        with health.adopted(findings):
            return fn(item)

    pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="khi")
    pending: collections.deque = collections.deque()
    try:
        for item in it:
            # Each task runs in a copy of the caller's context (NumPy's errstate, any other context variable).
            pending.append(pool.submit(contextvars.copy_context().run, task, item))
            if len(pending) >= 2 * n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
