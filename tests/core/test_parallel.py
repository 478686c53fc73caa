"""core/parallel.ordered_map: the results of a plain loop, in order, on several threads, bounded, and failing loudly."""

import threading
import time

import numpy as np
import pytest

from keras_hybrid_interp.core import parallel


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_results_are_the_loop_s_in_input_order(n_threads):
    """Each task's value is what a plain loop gives, in input order, however long each task takes."""
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(2000) for _ in range(17)]
    delays = rng.random(17) * 0.01

    def fn(i):
        time.sleep(delays[i])  # later items often finish first
        return np.sort(data[i]) @ data[i]

    want = [np.sort(d) @ d for d in data]
    got = list(parallel.ordered_map(fn, range(17), n_threads))
    assert got == want  # bit for bit, in order


def test_one_thread_runs_in_the_calling_thread_and_several_do_not(monkeypatch):
    names = list(parallel.ordered_map(lambda _: threading.current_thread().name, range(3), 1))
    assert set(names) == {threading.current_thread().name}
    names = list(parallel.ordered_map(lambda _: threading.current_thread().name, range(3), 2))
    assert all(n.startswith("khi") for n in names)
    monkeypatch.setattr(parallel, "MAX_THREADS", 1)
    assert parallel.threads() == 1
    monkeypatch.setattr(parallel, "MAX_THREADS", 10_000)
    assert 1 <= parallel.threads() <= 10_000


def test_at_most_twice_the_threads_are_in_flight_ahead_of_the_reader():
    submitted = []
    read = []

    def items():
        for i in range(40):
            submitted.append(i)
            yield i

    for value in parallel.ordered_map(lambda i: i * i, items(), 3):
        read.append(value)
        assert len(submitted) - len(read) <= 2 * 3  # the items taken in, beyond those read back
    assert read == [i * i for i in range(40)]


def test_an_exception_reaches_the_caller_and_stops_the_tasks_not_started():
    started = []

    def fn(i):
        started.append(i)
        if i == 3:
            raise ValueError("task 3 failed")
        time.sleep(0.02)
        return i

    with pytest.raises(ValueError, match="task 3 failed"):
        list(parallel.ordered_map(fn, range(100), 2))
    time.sleep(0.1)
    assert len(started) < 100  # the queued tasks were cancelled, not run


def test_tasks_run_in_the_caller_s_context_and_their_findings_join_its_health():
    """A task sees the caller's NumPy errstate (a context variable), and what it reports with health.warn lands
    in the caller's collected findings (a report's health section), not in a warning of its own thread."""
    from keras_hybrid_interp.core import health

    def divide(i):
        return np.ones(3) / np.zeros(3) if i == 2 else np.ones(3)

    with np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError):
            list(parallel.ordered_map(divide, range(4), 2))

    def finding(i):
        health.warn("kind", f"finding {i}")
        return i

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with health.collect() as caveats:
            assert list(parallel.ordered_map(finding, range(5), 2)) == list(range(5))
            assert sorted(c.message for c in caveats) == [f"finding {i}" for i in range(5)]
            assert not caught  # gathered, not emitted yet
    assert sorted(str(w.message) for w in caught) == [f"finding {i}" for i in range(5)]
