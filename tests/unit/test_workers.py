"""The worker pool (serving/workers.py): few threads run at once, a declared
wait lets the next call start, an undeclared one is caught by the stall
timer, and the pool behaves as an Executor."""

from __future__ import annotations

import threading
from concurrent import futures

import pytest

from controlplane_resolver import blocking
from controlplane_resolver.serving.workers import WorkerPool

from support.polling import wait_until


def held(gate: threading.Event, running: list[int]) -> None:
    """A call that holds its thread (without declaring a wait) until ``gate``."""
    running.append(1)
    gate.wait(10)


def test_no_more_than_the_limit_run_at_once() -> None:
    pool = WorkerPool(max_workers=8, running=2, stall_s=60)
    gate, running = threading.Event(), []
    try:
        calls = [pool.submit(held, gate, running) for _ in range(5)]
        wait_until(lambda: len(running) == 2 and pool.queued() == 3, what="two running")
        assert pool.stats.started == 2
        gate.set()
        futures.wait(calls, timeout=10)
        assert all(c.done() and c.exception() is None for c in calls)
        assert len(running) == 5
    finally:
        gate.set()
        pool.shutdown()


def test_a_declared_wait_lets_the_next_call_start() -> None:
    pool = WorkerPool(max_workers=4, running=1, stall_s=60)
    gate = threading.Event()

    def waits() -> str:
        with blocking.waiting():
            gate.wait(10)
        return "waited"

    try:
        first = pool.submit(waits)
        second = pool.submit(lambda: "ran")
        assert second.result(timeout=5) == "ran"
        assert not first.done()
        gate.set()
        assert first.result(timeout=5) == "waited"
        assert pool.stats.stall_starts == 0
    finally:
        gate.set()
        pool.shutdown()


def test_an_undeclared_wait_is_caught_by_the_stall_timer() -> None:
    pool = WorkerPool(max_workers=4, running=1, stall_s=0.05)
    gate, running = threading.Event(), []
    try:
        first = pool.submit(held, gate, running)
        wait_until(lambda: running, what="the first call running")
        second = pool.submit(lambda: "ran")
        assert second.result(timeout=5) == "ran"
        assert not first.done()
        assert pool.stats.stall_starts == 1
    finally:
        gate.set()
        pool.shutdown()


def test_a_burst_of_short_calls_is_served_by_few_threads() -> None:
    # The point of the pool: a thread that finishes takes the next call
    # itself, so a burst does not wake a thread per call.
    pool = WorkerPool(max_workers=32, running=2, stall_s=60)
    try:
        calls = [pool.submit(sum, range(100)) for _ in range(2_000)]
        assert all(c.result(timeout=10) == 4950 for c in calls)
        assert pool.stats.threads <= 4, pool.stats
    finally:
        pool.shutdown()


def test_errors_reach_the_future_and_the_thread_serves_on() -> None:
    pool = WorkerPool(max_workers=1, running=1)
    try:
        failed = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result(timeout=5)
        assert pool.submit(lambda: 2).result(timeout=5) == 2
    finally:
        pool.shutdown()


def test_shutdown_finishes_queued_calls_and_refuses_new_ones() -> None:
    pool = WorkerPool(max_workers=1, running=1, stall_s=60)
    gate, running = threading.Event(), []
    first = pool.submit(held, gate, running)
    queued = pool.submit(lambda: "queued")
    wait_until(lambda: running, what="the first call running")
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    gate.set()
    assert queued.result(timeout=5) == "queued"
    pool.shutdown()  # joins the threads
    assert first.done()


def test_shutdown_can_cancel_queued_calls() -> None:
    pool = WorkerPool(max_workers=1, running=1, stall_s=60)
    gate, running = threading.Event(), []
    pool.submit(held, gate, running)
    queued = pool.submit(lambda: "queued")
    wait_until(lambda: running, what="the first call running")
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()


def test_calls_submitted_back_to_back_still_have_a_stall_watcher() -> None:
    # With idle threads, the first call wakes one; the second must not count
    # on that thread to watch for a stall, since it takes the first call.
    pool = WorkerPool(max_workers=4, running=1, stall_s=0.05)
    gate, running = threading.Event(), []
    try:
        _make_idle_threads(pool, 3)
        first = pool.submit(held, gate, running)
        second = pool.submit(lambda: "ran")
        assert second.result(timeout=5) == "ran"
        assert not first.done()
    finally:
        gate.set()
        pool.shutdown()


def test_shutdown_returns_when_threads_waited_for_room() -> None:
    pool = WorkerPool(max_workers=4, running=1, stall_s=60)
    gate, running = threading.Event(), []
    _make_idle_threads(pool, 3)
    first = pool.submit(held, gate, running)
    wait_until(lambda: running, what="the first call running")
    queued = pool.submit(lambda: "queued")  # behind the running limit
    stopper = threading.Thread(target=pool.shutdown)
    stopper.start()
    gate.set()
    assert queued.result(timeout=5) == "queued" and first.done()
    stopper.join(10)
    assert not stopper.is_alive(), "shutdown() still joining threads"


def test_a_wait_inside_a_wait_counts_once() -> None:
    pool = WorkerPool(max_workers=4, running=1, stall_s=60)
    inner, release = threading.Event(), threading.Event()
    started = []

    def nested() -> None:
        with blocking.waiting(), blocking.waiting():
            inner.set()
            release.wait(10)

    def busy() -> None:
        started.append(1)
        release.wait(10)

    try:
        pool.submit(nested)
        assert inner.wait(5)
        # One declared wait frees one place: one more call may run, not two.
        pool.submit(busy)
        pool.submit(busy)
        wait_until(lambda: started, what="one call started")
        with pytest.raises(AssertionError):
            wait_until(lambda: len(started) > 1, timeout=0.5, what="a second call started")
        assert pool.queued() == 1
    finally:
        release.set()
        pool.shutdown()


def test_cancelled_queued_calls_never_run() -> None:
    pool = WorkerPool(max_workers=1, running=1, stall_s=60)
    gate, running = threading.Event(), []
    pool.submit(held, gate, running)
    wait_until(lambda: running, what="the first call running")
    ran = []
    queued = [pool.submit(ran.append, i) for i in range(3)]
    assert pool.cancel_queued() == 3
    assert all(f.cancelled() for f in queued)
    gate.set()
    pool.shutdown()
    assert ran == []


def test_in_flight_counts_queued_and_running_calls_until_they_finish() -> None:
    pool = WorkerPool(max_workers=1, running=1, stall_s=60)
    gate, running = threading.Event(), []
    try:
        pool.submit(held, gate, running)
        pool.submit(lambda: "queued")
        wait_until(lambda: running, what="the first call running")
        assert pool.in_flight == 2
        assert not pool.wait_idle(0.05)
        gate.set()
        assert pool.wait_idle(5)
        assert pool.in_flight == 0
    finally:
        gate.set()
        pool.shutdown()


def test_cancelled_queued_calls_leave_the_in_flight_count() -> None:
    pool = WorkerPool(max_workers=1, running=1, stall_s=60)
    gate, running = threading.Event(), []
    pool.submit(held, gate, running)
    wait_until(lambda: running, what="the first call running")
    for _ in range(3):
        pool.submit(lambda: None)
    assert pool.cancel_queued() == 3
    assert pool.in_flight == 1
    gate.set()
    assert pool.wait_idle(5)
    pool.shutdown()


def _make_idle_threads(pool: WorkerPool, n: int) -> None:
    """Leave ``n`` idle threads in ``pool``: calls that wait (declared) make
    it start one each."""
    gate = threading.Event()

    def waits() -> None:
        with blocking.waiting():
            gate.wait(10)

    calls = [pool.submit(waits) for _ in range(n)]
    wait_until(lambda: pool.stats.threads == n, what=f"{n} threads")
    gate.set()
    futures.wait(calls, timeout=5)
