"""The pieces that keep a slow, dead or hung database from taking the
server with it, without a database: loads off the caller's thread with
waits bounded by the caller (cache and coalescer), stale batch answers, the
circuit and the bulkhead, and the supervisor giving up on children that
cannot start. The fault suite (tests/faults) tries them on real clusters."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controlplane_resolver.cache import ABSENT, Cache, FlightTimeout, Slot, SlotPolicy
from controlplane_resolver.coalescing import ReadCoalescer, WaitTimeout
from controlplane_resolver.domain.roles import DatabaseRole
from controlplane_resolver.errors import Unavailable
from controlplane_resolver.runtime.supervisor import START_FAILED, supervise
from controlplane_resolver.storage.database import CIRCUIT_THRESHOLD, Database

from support.polling import wait_until


def on_a_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, daemon=True).start()


@pytest.fixture
def cache() -> Iterator[Cache]:
    c = Cache(
        {Slot.ENVIRONMENT: SlotPolicy(soft_ttl=60, hard_ttl=600, negative_ttl=5, max_entries=100)}
    )
    yield c
    c.close()


def test_leader_waits_only_its_own_time_and_the_load_serves_the_next_caller(cache: Cache) -> None:
    release = threading.Event()
    loads = []

    def load() -> str:
        loads.append(1)
        release.wait(10)
        return "value"

    started = time.monotonic()
    with pytest.raises(FlightTimeout):
        cache.get(Slot.ENVIRONMENT, "k", load, wait_s=0.1, start=on_a_thread)
    assert time.monotonic() - started < 1.0  # the leader left; the load did not
    release.set()
    wait_until(lambda: cache.fresh(Slot.ENVIRONMENT, "k") == "value", 5)
    assert loads == [1]


def test_refused_start_fails_the_leader_at_once_and_leaves_no_flight(cache: Cache) -> None:
    def refuse(_work: Callable[[], None]) -> None:
        raise Unavailable("full")

    with pytest.raises(Unavailable):
        cache.get(Slot.ENVIRONMENT, "k", lambda: "v", wait_s=5, start=refuse)
    assert cache.get(Slot.ENVIRONMENT, "k", lambda: "v", wait_s=5, start=on_a_thread) == "v"


def test_admission_guards_misses_never_hits(cache: Cache) -> None:
    admitted = []

    class Gate:
        def __enter__(self) -> None:
            admitted.append(1)

        def __exit__(self, *exc: object) -> None:
            pass

    assert cache.get(Slot.ENVIRONMENT, "k", lambda: "v", admit=Gate) == "v"
    assert cache.get(Slot.ENVIRONMENT, "k", lambda: "w", admit=Gate) == "v"
    assert admitted == [1]


def test_batch_serves_stale_answers_while_their_refresh_fails() -> None:
    now = [0.0]
    cache = Cache({Slot.ENVIRONMENT: SlotPolicy(1, 100, 1, 100, jitter=0.0)}, clock=lambda: now[0])
    try:
        got = cache.get_many(
            Slot.ENVIRONMENT,
            ["a", "b"],
            lambda keys: {k: k.upper() for k in keys},
            scopes_of_key=lambda k: (),
        )
        assert got == {"a": "A", "b": "B"}
        now[0] = 5.0  # past the soft TTL, before the hard one

        def down(keys: list[str]) -> dict[str, str]:
            raise Unavailable("down")

        ran: list[Callable[[], None]] = []
        got = cache.get_many(
            Slot.ENVIRONMENT, ["a", "b"], down, scopes_of_key=lambda k: (), start=ran.append
        )
        assert got == {"a": "A", "b": "B"}
        assert len(ran) == 1  # one background refresh of both
        ran[0]()  # it fails, and is counted
        assert cache.stats(Slot.ENVIRONMENT).refresh_failures == 1
        # A key with nothing cached cannot be answered: the batch fails.
        with pytest.raises(Unavailable):
            cache.get_many(Slot.ENVIRONMENT, ["a", "c"], down, scopes_of_key=lambda k: ())
        assert cache.get_many(
            Slot.ENVIRONMENT, ["c"], lambda keys: {}, scopes_of_key=lambda k: ()
        ) == {"c": ABSENT}
    finally:
        cache.close()


def test_detached_coalescer_waiter_leaves_at_its_deadline() -> None:
    release = threading.Event()

    def load_many(keys: list[str]) -> dict[str, str]:
        release.wait(10)
        return {k: k.upper() for k in keys}

    c: ReadCoalescer[str, str] = ReadCoalescer(load_many, start=on_a_thread)
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        c.get("a", timeout=0.1)
    assert time.monotonic() - started < 1.0
    release.set()
    wait_until(lambda: c.get("b", timeout=5) == "B", 5)


def test_detached_coalescer_refused_start_fails_the_caller() -> None:
    def refuse(_work: Callable[[], None]) -> None:
        raise Unavailable("full")

    c: ReadCoalescer[str, str] = ReadCoalescer(lambda keys: {}, start=refuse)
    with pytest.raises(Unavailable):
        c.get("a", timeout=1)
    assert c.waiting() == 0


def test_circuit_opens_after_consecutive_failures_and_refuses_at_once() -> None:
    db = Database(
        DatabaseRole.CONTROL_PLANE,
        "postgresql://nobody@127.0.0.1:9/none",
        max_size=2,
        timeout_s=1,
        max_waiting=2,
        probe_interval_s=60,
    )
    try:
        for _ in range(CIRCUIT_THRESHOLD - 1):
            db.circuit.failure()
        with db.admit():
            pass  # still closed
        db.circuit.failure()
        assert db.circuit.open
        started = time.monotonic()
        with pytest.raises(Unavailable) as info, db.admit():
            pass
        assert time.monotonic() - started < 0.05
        assert info.value.retry_after_s == 60
        assert db.refused["circuit"] == 1
    finally:
        db.close()


def test_bulkhead_refuses_beyond_its_size_at_once() -> None:
    db = Database(
        DatabaseRole.CONTROL_PLANE,
        "postgresql://nobody@127.0.0.1:9/none",
        max_size=2,
        timeout_s=1,
        max_waiting=2,
    )
    try:
        with db.admit(), db.admit(), pytest.raises(Unavailable), db.admit():
            pass
        with db.admit():
            pass  # places are given back
        assert db.refused["bulkhead"] == 1
    finally:
        db.close()


def test_supervisor_gives_up_when_children_cannot_start() -> None:
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        started = time.monotonic()
        assert supervise(2, lambda slot: START_FAILED, start_attempts=2) == 1
        assert time.monotonic() - started < 10
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
