"""The per-process cache of control-plane answers (docs/caching.md).

Pure: no database, no gRPC. Time is a :class:`FakeClock` injected into
``Cache(policies, clock=...)``; a load is a plain callable standing in for a
database query (:class:`CountingLoad` counts its calls). Tests that involve
threads never sleep to synchronise: they wait on a condition with a deadline
(:func:`wait_for`) or on a :class:`Gate` the test opens.

Contracts covered: hits, misses and slot separation; confirmed absence
(``ABSENT``) versus miss versus error; invalidation by scope and its race
with fills in flight; the bound; soft/hard expiry with background refresh
and jitter; single-flight; the epoch bookkeeping of :class:`Epochs`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from controlplane_resolver import callinfo
from controlplane_resolver.cache import (
    ABSENT,
    MISSING,
    Cache,
    Epochs,
    FlightTimeout,
    Slot,
    SlotPolicy,
    env_scope,
    org_scope,
    project_scope,
    worker_versions_scope,
)

from support.polling import wait_until

# Lifetimes of the default test policy, in fake seconds. Negative < soft <
# hard, as in production; no jitter so deadlines are exact.
SOFT = 10.0
HARD = 100.0
NEGATIVE = 2.0
BOUND = 100
BASE_POLICY = SlotPolicy(
    soft_ttl=SOFT, hard_ttl=HARD, negative_ttl=NEGATIVE, max_entries=BOUND, jitter=0.0
)

SLOT = Slot.ENVIRONMENT

#: Longest a test waits for a condition another thread brings about.
DEADLINE_S = 10.0


# ---------------------------------------------------------------- helpers


class FakeClock:
    """A monotonic clock that moves only when the test moves it. Thread-safe:
    background refreshes read it while the test thread advances it."""

    def __init__(self, start: float = 1_000.0) -> None:
        # Not zero, so nothing can pass by confusing "time" with "elapsed".
        self._start = start
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def move_to(self, elapsed: float) -> None:
        """Set the time to ``elapsed`` seconds after the clock's start."""
        with self._lock:
            self._now = self._start + elapsed


class Gate:
    """A one-way barrier a load blocks on until the test opens it. Waiting
    is bounded so a failing test cannot hang the run."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def open(self) -> None:
        self._event.set()

    def wait(self) -> None:
        if not self._event.wait(DEADLINE_S):
            raise AssertionError(f"gate was not opened within {DEADLINE_S}s")


class CountingLoad:
    """A stand-in for one database query.

    Call *n* (1-based) first runs ``on_call(n)`` (to block on a gate or to
    invalidate mid-load), then returns ``results[n-1]`` — the last result
    repeats — or raises it when it is an exception instance.
    """

    def __init__(self, *results: Any, on_call: Callable[[int], None] | None = None) -> None:
        assert results, "a load needs at least one result"
        self._results = results
        self._on_call = on_call
        self._lock = threading.Lock()
        self._calls = 0

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    def __call__(self) -> Any:
        with self._lock:
            self._calls += 1
            n = self._calls
        if self._on_call is not None:
            self._on_call(n)
        result = self._results[min(n, len(self._results)) - 1]
        if isinstance(result, BaseException):
            raise result
        return result


class Boom(Exception):
    """What a failing load raises (a database error, in production)."""


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after :data:`DEADLINE_S`."""
    wait_until(condition, DEADLINE_S, 0.0005, what)


@dataclass
class Outcome:
    """What one thread's call returned or raised."""

    value: Any = None
    error: BaseException | None = None


def run_concurrently(n: int, call: Callable[[int], Any]) -> list[Outcome]:
    """Run ``call(i)`` for i in 0..n-1, each on its own thread, and return
    their outcomes in order once all finished."""
    outcomes = [Outcome() for _ in range(n)]

    def run(i: int) -> None:
        try:
            outcomes[i].value = call(i)
        except BaseException as exc:
            outcomes[i].error = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still running past the deadline"
    return outcomes


class Background:
    """One call run on a thread, whose outcome the test collects later."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome = Outcome()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.outcome.value = call()
        except BaseException as exc:
            self.outcome.error = exc

    def result(self) -> Any:
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "background call still running past the deadline"
        if self.outcome.error is not None:
            raise self.outcome.error
        return self.outcome.value


def env_get(
    cache: Cache, env_id: str, load: Callable[[], Any], slot: Slot = SLOT, **kwargs: Any
) -> Any:
    """A read keyed and scoped by an environment id, as the resolver does."""
    return cache.get(slot, env_id, load, scopes=(env_scope(env_id),), **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_cache(clock: FakeClock) -> Iterator[Callable[..., Cache]]:
    """``make_cache(refresh_workers=2, **policy_fields)``: a Cache on the fake
    clock whose every slot has ``BASE_POLICY`` with the given fields replaced.
    Closed after the test."""
    made: list[Cache] = []

    def make(*, refresh_workers: int = 2, **policy_fields: Any) -> Cache:
        policy = replace(BASE_POLICY, **policy_fields)
        cache = Cache({slot: policy for slot in Slot}, clock=clock, refresh_workers=refresh_workers)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture
def cache(make_cache: Callable[..., Cache]) -> Cache:
    return make_cache()


# ------------------------------------------------------ hits and misses


def test_get_after_fill_is_a_hit_without_a_second_load(cache: Cache) -> None:
    load = CountingLoad("value")
    assert env_get(cache, "e1", load) == "value"
    assert env_get(cache, "e1", load) == "value"
    assert load.calls == 1
    stats = cache.stats(SLOT)
    assert (stats.hits, stats.misses, stats.loads) == (1, 1, 1)


def test_first_get_is_a_counted_miss(cache: Cache) -> None:
    env_get(cache, "e1", CountingLoad("value"))
    stats = cache.stats(SLOT)
    assert (stats.misses, stats.hits, stats.negative_hits) == (1, 0, 0)


def test_same_key_in_different_slots_never_collides(cache: Cache) -> None:
    environment = CountingLoad("environment row")
    exists = CountingLoad(True)
    worker_version = CountingLoad(ABSENT)
    assert env_get(cache, "e1", environment, Slot.ENVIRONMENT) == "environment row"
    assert env_get(cache, "e1", exists, Slot.ENV_EXISTS) is True
    assert env_get(cache, "e1", worker_version, Slot.WORKER_VERSION) is ABSENT
    # Served from cache, each from its own slot.
    assert env_get(cache, "e1", environment, Slot.ENVIRONMENT) == "environment row"
    assert env_get(cache, "e1", exists, Slot.ENV_EXISTS) is True
    assert env_get(cache, "e1", worker_version, Slot.WORKER_VERSION) is ABSENT
    assert (environment.calls, exists.calls, worker_version.calls) == (1, 1, 1)
    assert cache.stats(Slot.ENVIRONMENT).hits == 1
    assert cache.stats(Slot.ENV_EXISTS).hits == 1
    assert cache.stats(Slot.WORKER_VERSION).negative_hits == 1
    assert len(cache) == 3


def test_peek_never_loads_and_sees_only_fresh_entries(cache: Cache, clock: FakeClock) -> None:
    assert cache.peek(SLOT, "e1") == (False, None)
    env_get(cache, "e1", CountingLoad("value"))
    assert cache.peek(SLOT, "e1") == (True, "value")
    clock.advance(SOFT)  # stale: a batch read must load it rather than use it
    assert cache.peek(SLOT, "e1") == (False, None)


def test_fresh_answers_hits_only_and_counts_nothing_on_a_miss(
    cache: Cache, clock: FakeClock
) -> None:
    assert cache.fresh(SLOT, "e1") is MISSING
    env_get(cache, "e1", CountingLoad("value"))
    env_get(cache, "gone", CountingLoad(ABSENT))
    stats = cache.stats(SLOT)
    assert (stats.hits, stats.negative_hits, stats.misses) == (0, 0, 2)

    assert cache.fresh(SLOT, "e1") == "value"
    assert cache.fresh(SLOT, "gone") is ABSENT
    assert (stats.hits, stats.negative_hits, stats.misses) == (1, 1, 2)

    cache.invalidate_environment("e1")
    assert cache.fresh(SLOT, "e1") is MISSING  # invalidated: get() must reload it
    clock.advance(SOFT)
    assert cache.fresh(SLOT, "gone") is MISSING  # past its (negative) lifetime
    assert (stats.hits, stats.negative_hits, stats.misses) == (1, 1, 2)


# ------------------------------------------------------ confirmed absence


def test_absent_is_cached_as_a_negative_hit(cache: Cache) -> None:
    load = CountingLoad(ABSENT)
    assert env_get(cache, "e1", load) is ABSENT
    assert env_get(cache, "e1", load) is ABSENT
    assert load.calls == 1
    stats = cache.stats(SLOT)
    assert (stats.negative_hits, stats.hits, stats.misses) == (1, 0, 1)


def test_absent_expires_after_the_shorter_negative_ttl(cache: Cache, clock: FakeClock) -> None:
    absent = CountingLoad(ABSENT, "created since")
    present = CountingLoad("present")
    env_get(cache, "gone", absent)
    env_get(cache, "here", present)

    clock.move_to(NEGATIVE - 0.001)
    assert env_get(cache, "gone", absent) is ABSENT
    assert absent.calls == 1

    clock.move_to(NEGATIVE)
    # Past the negative TTL the absence is not served, not even stale: the
    # read waits for a fresh answer.
    assert env_get(cache, "gone", absent) == "created since"
    assert absent.calls == 2
    assert cache.stats(SLOT).stale_serves == 0
    # A value stored at the same moment lives on.
    assert env_get(cache, "here", present) == "present"
    assert present.calls == 1


# ----------------------------------------------------------------- errors


def test_load_error_is_not_cached(cache: Cache) -> None:
    boom = Boom("database down")
    load = CountingLoad(boom, "value")
    with pytest.raises(Boom) as raised:
        env_get(cache, "e1", load)
    assert raised.value is boom
    assert env_get(cache, "e1", load) == "value"
    assert load.calls == 2
    stats = cache.stats(SLOT)
    assert (stats.load_errors, stats.loads) == (1, 2)


def test_load_error_is_never_turned_into_absent(cache: Cache) -> None:
    load = CountingLoad(Boom("database down"))
    for _ in range(2):
        # Each read raises (an unknown is not "absent") and loads afresh.
        with pytest.raises(Boom):
            env_get(cache, "e1", load)
    assert load.calls == 2
    assert cache.stats(SLOT).negative_hits == 0
    assert len(cache) == 0


# ----------------------------------------------------------- invalidation


def test_invalidate_environment_drops_only_that_environment(cache: Cache) -> None:
    a = CountingLoad("a1", "a2")
    b = CountingLoad("b1", "b2")
    env_get(cache, "a", a)
    env_get(cache, "b", b)

    cache.invalidate_environment("a")

    assert env_get(cache, "a", a) == "a2"
    assert env_get(cache, "b", b) == "b1"
    assert (a.calls, b.calls) == (2, 1)
    assert cache.epochs.invalidations["environment"] == 1


def test_invalidate_environment_reaches_every_slot_scoped_to_it(cache: Cache) -> None:
    loads = {
        slot: CountingLoad(f"{slot.value} 1", f"{slot.value} 2")
        for slot in (Slot.ENVIRONMENT, Slot.AUTHENTICATED_ENVIRONMENT, Slot.ENV_EXISTS)
    }
    for slot, load in loads.items():
        env_get(cache, "a", load, slot)

    cache.invalidate_environment("a")

    for slot, load in loads.items():
        assert env_get(cache, "a", load, slot) == f"{slot.value} 2"


def _org_of(value: tuple[str, str]) -> tuple[str, ...]:
    """Scopes only the value knows: ``(organization_id, payload)``."""
    return (org_scope(value[0]),)


def test_invalidate_organization_drops_entries_whose_value_names_it(cache: Cache) -> None:
    # The key does not say which organization an environment belongs to;
    # only the loaded value does, through scopes_of.
    loads = {
        "a": CountingLoad(("o1", "a1"), ("o1", "a2")),
        "b": CountingLoad(("o1", "b1"), ("o1", "b2")),
        "c": CountingLoad(("o2", "c1"), ("o2", "c2")),
    }
    for env_id, load in loads.items():
        env_get(cache, env_id, load, scopes_of=_org_of)

    cache.invalidate_organization("o1")

    assert env_get(cache, "a", loads["a"], scopes_of=_org_of) == ("o1", "a2")
    assert env_get(cache, "b", loads["b"], scopes_of=_org_of) == ("o1", "b2")
    assert env_get(cache, "c", loads["c"], scopes_of=_org_of) == ("o2", "c1")
    assert [load.calls for load in loads.values()] == [2, 2, 1]


def test_invalidate_project_drops_entries_whose_value_names_it(cache: Cache) -> None:
    def project_of(value: tuple[str, str]) -> tuple[str, ...]:
        return (project_scope(value[0]),)

    in_p1 = CountingLoad(("p1", "1"), ("p1", "2"))
    in_p2 = CountingLoad(("p2", "1"), ("p2", "2"))
    env_get(cache, "a", in_p1, scopes_of=project_of)
    env_get(cache, "b", in_p2, scopes_of=project_of)

    cache.invalidate_project("p1")

    assert env_get(cache, "a", in_p1, scopes_of=project_of) == ("p1", "2")
    assert env_get(cache, "b", in_p2, scopes_of=project_of) == ("p2", "1")


def test_invalidate_worker_versions_drops_only_worker_version_entries(cache: Cache) -> None:
    worker_version = CountingLoad("wv 1", "wv 2")
    environment = CountingLoad("env 1", "env 2")
    wv_scopes = (env_scope("a"), worker_versions_scope("a"))
    cache.get(Slot.WORKER_VERSION, "a", worker_version, scopes=wv_scopes)
    env_get(cache, "a", environment)

    cache.invalidate_worker_versions("a")

    assert cache.get(Slot.WORKER_VERSION, "a", worker_version, scopes=wv_scopes) == "wv 2"
    # A promotion changes which version serves, not the environment.
    assert env_get(cache, "a", environment) == "env 1"
    assert (worker_version.calls, environment.calls) == (2, 1)


def test_invalidate_all_drops_everything(cache: Cache) -> None:
    scoped = CountingLoad("scoped 1", "scoped 2")
    unscoped = CountingLoad("unscoped 1", "unscoped 2")
    absent = CountingLoad(ABSENT, "absent 2")
    env_get(cache, "a", scoped)
    cache.get(Slot.MINT_KIND, "flag", unscoped)
    env_get(cache, "b", absent, Slot.ENV_EXISTS)

    cache.invalidate_all()

    assert env_get(cache, "a", scoped) == "scoped 2"
    assert cache.get(Slot.MINT_KIND, "flag", unscoped) == "unscoped 2"
    assert env_get(cache, "b", absent, Slot.ENV_EXISTS) == "absent 2"


# --------------------------------------------------- fills raced by invalidation


def test_fill_raced_by_environment_invalidation_is_returned_but_not_stored(cache: Cache) -> None:
    # The invalidation lands while the first load runs: its answer may
    # predate the change, so it goes to its caller but not into the cache.
    load = CountingLoad(
        "old", "new", on_call=lambda n: cache.invalidate_environment("a") if n == 1 else None
    )
    assert env_get(cache, "a", load) == "old"
    assert cache.stats(SLOT).discarded_fills == 1
    assert env_get(cache, "a", load) == "new"
    assert env_get(cache, "a", load) == "new"
    assert load.calls == 2


def test_fill_raced_by_invalidation_from_another_thread_is_not_stored(cache: Cache) -> None:
    gate = Gate()
    load = CountingLoad("old", "new", on_call=lambda n: gate.wait() if n == 1 else None)
    reader = Background(lambda: env_get(cache, "a", load))
    wait_for(lambda: load.calls == 1, "the first load started")

    cache.invalidate_environment("a")
    gate.open()

    assert reader.result() == "old"
    assert env_get(cache, "a", load) == "new"
    assert load.calls == 2


def test_fill_raced_by_organization_invalidation_is_not_stored(cache: Cache) -> None:
    # The organization is only known from the value, after the load: the
    # check must use the scopes of the value, not only those of the key.
    load = CountingLoad(
        ("o1", "old"),
        ("o1", "new"),
        on_call=lambda n: cache.invalidate_organization("o1") if n == 1 else None,
    )
    assert env_get(cache, "a", load, scopes_of=_org_of) == ("o1", "old")
    assert cache.stats(SLOT).discarded_fills == 1
    assert env_get(cache, "a", load, scopes_of=_org_of) == ("o1", "new")
    assert env_get(cache, "a", load, scopes_of=_org_of) == ("o1", "new")
    assert load.calls == 2


def test_fill_raced_by_unrelated_invalidation_is_stored(cache: Cache) -> None:
    # Control for the two tests above: only the value's own scopes matter.
    load = CountingLoad(
        ("o1", "value"),
        on_call=lambda _n: (cache.invalidate_organization("o2"), cache.invalidate_environment("b")),
    )
    env_get(cache, "a", load, scopes_of=_org_of)
    assert env_get(cache, "a", load, scopes_of=_org_of) == ("o1", "value")
    assert load.calls == 1
    assert cache.stats(SLOT).discarded_fills == 0


def test_put_refuses_a_fill_that_started_before_an_invalidation(cache: Cache) -> None:
    # The batch path: stamp taken before its query, value stored after.
    stamp = cache.epochs.stamp()
    cache.invalidate_environment("a")
    assert not cache.put(SLOT, "a", "old", stamp=stamp, scopes=(env_scope("a"),))
    assert cache.peek(SLOT, "a") == (False, None)

    stamp = cache.epochs.stamp()
    assert cache.put(SLOT, "a", "new", stamp=stamp, scopes=(env_scope("a"),))
    assert cache.peek(SLOT, "a") == (True, "new")


# ------------------------------------------------------------------ bound


def test_inserting_past_the_bound_evicts(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache(max_entries=3)
    for i in range(5):
        env_get(cache, f"e{i}", CountingLoad(i))
    assert len(cache) == 3
    assert cache.stats(SLOT).evictions == 2


def test_the_bound_drops_the_entry_stored_longest_ago(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache(max_entries=3)
    loads = {key: CountingLoad(f"{key} 1", f"{key} 2") for key in ("e0", "e1", "e2", "e3")}
    for key in ("e0", "e1", "e2"):
        env_get(cache, key, loads[key])
    cache.invalidate_environment("e0")
    env_get(cache, "e0", loads["e0"])  # stored again: now the newest

    env_get(cache, "e3", loads["e3"])  # over the bound: e1 goes, not e0

    assert cache.stats(SLOT).evictions == 1
    assert env_get(cache, "e0", loads["e0"]) == "e0 2"
    assert env_get(cache, "e1", loads["e1"]) == "e1 2"
    assert [loads[k].calls for k in ("e0", "e1", "e2", "e3")] == [2, 2, 1, 1]


def test_expired_entries_leave_the_store_without_counting_as_evictions(
    make_cache: Callable[..., Cache], clock: FakeClock
) -> None:
    cache = make_cache(max_entries=3)
    for key in ("e0", "e1"):
        env_get(cache, key, CountingLoad(key))
    clock.advance(HARD + 1)
    for key in ("e2", "e3", "e4"):
        env_get(cache, key, CountingLoad(key))

    assert cache.stats(SLOT).evictions == 0
    assert len(cache) == 3
    reload = CountingLoad("e0 again")
    assert env_get(cache, "e0", reload) == "e0 again"
    assert reload.calls == 1


def test_updating_an_existing_key_at_the_bound_evicts_nothing(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache(max_entries=3)
    loads = [CountingLoad(f"e{i} 1", f"e{i} 2") for i in range(3)]
    for i, load in enumerate(loads):
        env_get(cache, f"e{i}", load)

    cache.invalidate_environment("e1")
    assert env_get(cache, "e1", loads[1]) == "e1 2"  # refilled in place

    assert cache.stats(SLOT).evictions == 0
    assert len(cache) == 3
    assert env_get(cache, "e0", loads[0]) == "e0 1"
    assert env_get(cache, "e2", loads[2]) == "e2 1"
    assert [load.calls for load in loads] == [1, 2, 1]


# -------------------------------------------------------------- soft/hard TTL


def test_value_is_fresh_before_the_soft_ttl(cache: Cache, clock: FakeClock) -> None:
    load = CountingLoad("old", "new")
    env_get(cache, "a", load)
    clock.move_to(SOFT - 0.001)
    assert env_get(cache, "a", load) == "old"
    assert load.calls == 1
    stats = cache.stats(SLOT)
    assert (stats.hits, stats.stale_serves, stats.refreshes) == (1, 0, 0)


def test_stale_value_is_served_at_once_and_refreshed_once_in_the_background(
    cache: Cache, clock: FakeClock
) -> None:
    gate = Gate()
    refresh_threads: list[threading.Thread] = []

    def block_the_refresh(n: int) -> None:
        if n == 2:
            refresh_threads.append(threading.current_thread())
            gate.wait()

    load = CountingLoad("old", "new", on_call=block_the_refresh)
    env_get(cache, "a", load)
    clock.move_to(SOFT + 1)

    # The refresh is held at the gate, so every one of these returns without
    # waiting for it — and none starts a second refresh.
    for _ in range(10):
        assert env_get(cache, "a", load) == "old"
    wait_for(lambda: load.calls == 2, "the background refresh started")
    stats = cache.stats(SLOT)
    assert stats.stale_serves == 10
    assert stats.refreshes == 1
    assert refresh_threads[0] is not threading.current_thread()

    gate.open()
    wait_for(lambda: cache.peek(SLOT, "a") == (True, "new"), "the refresh stored its value")
    assert env_get(cache, "a", load) == "new"
    assert load.calls == 2
    assert stats.refreshes == 1


def test_past_the_hard_ttl_a_get_waits_for_a_load(cache: Cache, clock: FakeClock) -> None:
    load = CountingLoad("old", "new")
    env_get(cache, "a", load)
    clock.move_to(HARD)
    # Loaded in this call (the value it returns is the new one), never stale.
    assert env_get(cache, "a", load) == "new"
    assert load.calls == 2
    stats = cache.stats(SLOT)
    assert (stats.misses, stats.stale_serves, stats.refreshes) == (2, 0, 0)


def test_failed_refresh_keeps_the_old_value_until_the_hard_ttl(
    cache: Cache, clock: FakeClock
) -> None:
    boom = Boom("database down")
    load = CountingLoad("old", boom)
    env_get(cache, "a", load)

    clock.move_to(SOFT + 1)
    assert env_get(cache, "a", load) == "old"
    stats = cache.stats(SLOT)
    wait_for(lambda: stats.refresh_failures >= 1, "the background refresh failed")
    assert env_get(cache, "a", load) == "old"

    clock.move_to(HARD - 0.001)
    assert env_get(cache, "a", load) == "old"

    clock.move_to(HARD)
    # No usable entry left: the load's own error reaches the caller (whether
    # this call loads or joins a refresh still failing in the background).
    with pytest.raises(Boom) as raised:
        env_get(cache, "a", load)
    assert raised.value is boom


def test_failed_refresh_is_retried_at_most_once_a_second(
    make_cache: Callable[..., Cache], clock: FakeClock
) -> None:
    # One refresh worker runs refreshes in submission order, so a refresh of
    # a probe key submitted after another has started only once that other
    # one has finished entirely (its failure handling included).
    cache = make_cache(refresh_workers=1)
    failing = CountingLoad("old", Boom("database down"))
    probes = [CountingLoad(f"probe {i}") for i in range(2)]
    env_get(cache, "a", failing)
    for i, probe in enumerate(probes):
        env_get(cache, f"probe{i}", probe)

    def drain(probe_index: int) -> None:
        probe = probes[probe_index]
        env_get(cache, f"probe{probe_index}", probe)  # stale: queues its refresh
        wait_for(lambda: probe.calls == 2, "earlier refreshes finished")

    clock.move_to(SOFT + 1)
    env_get(cache, "a", failing)
    drain(0)
    assert failing.calls == 2
    assert cache.stats(SLOT).refresh_failures == 1

    # Within a second of the failure: served stale, no new refresh.
    clock.move_to(SOFT + 1.5)
    assert env_get(cache, "a", failing) == "old"
    drain(1)
    assert failing.calls == 2

    clock.move_to(SOFT + 2)
    assert env_get(cache, "a", failing) == "old"
    wait_for(lambda: failing.calls == 3, "the refresh was retried after a second")


def test_jitter_never_lengthens_lifetimes(
    make_cache: Callable[..., Cache], clock: FakeClock
) -> None:
    jitter = 0.5
    keys = [f"e{i}" for i in range(200)]
    cache = make_cache(jitter=jitter, max_entries=len(keys))
    for key in keys:
        env_get(cache, key, CountingLoad(key))
        env_get(cache, key, CountingLoad(ABSENT), Slot.ENV_EXISTS)

    def fresh(slot: Slot) -> list[bool]:
        return [cache.peek(slot, key)[0] for key in keys]

    # Jitter only shortens, and by at most the jitter fraction.
    clock.move_to(NEGATIVE * (1 - jitter) - 0.001)
    assert all(fresh(Slot.ENV_EXISTS))
    clock.move_to(NEGATIVE)
    assert not any(fresh(Slot.ENV_EXISTS))

    clock.move_to(SOFT * (1 - jitter) - 0.001)
    assert all(fresh(SLOT))
    clock.move_to(SOFT * (1 - jitter / 2))
    spread = fresh(SLOT)
    assert any(spread) and not all(spread), "jitter spreads soft deadlines"
    clock.move_to(SOFT)
    assert not any(fresh(SLOT))

    clock.move_to(HARD)
    assert len(cache) == 0


# ------------------------------------------------------------ soft_ttl == 0


def test_soft_ttl_zero_loads_on_every_get(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache(soft_ttl=0.0)
    load = CountingLoad("value")
    for _ in range(3):
        assert env_get(cache, "a", load) == "value"
    assert load.calls == 3
    assert len(cache) == 0


def test_soft_ttl_zero_does_not_store_absence_either(make_cache: Callable[..., Cache]) -> None:
    # The negative TTL is positive here: "stores nothing" must still win.
    cache = make_cache(soft_ttl=0.0)
    load = CountingLoad(ABSENT)
    for _ in range(3):
        assert env_get(cache, "a", load) is ABSENT
    assert load.calls == 3
    assert cache.stats(SLOT).negative_hits == 0


def test_soft_ttl_zero_still_shares_one_load_between_concurrent_gets(
    make_cache: Callable[..., Cache],
) -> None:
    cache = make_cache(soft_ttl=0.0)
    stats = cache.stats(SLOT)
    value = object()
    load = CountingLoad(
        value, on_call=lambda _n: wait_for(lambda: stats.joins == 7, "7 callers joined the load")
    )
    outcomes = run_concurrently(8, lambda _i: env_get(cache, "a", load))
    assert [o.error for o in outcomes] == [None] * 8
    assert all(o.value is value for o in outcomes)
    assert load.calls == 1
    assert len(cache) == 0


# ---------------------------------------------------------- single-flight

THREADS = 64


def test_concurrent_misses_share_one_load(cache: Cache) -> None:
    stats = cache.stats(SLOT)
    value = object()
    # The leader holds its load until every other caller waits on it.
    load = CountingLoad(
        value,
        on_call=lambda _n: wait_for(
            lambda: stats.joins == THREADS - 1, f"{THREADS - 1} callers joined the load"
        ),
    )
    outcomes = run_concurrently(THREADS, lambda _i: env_get(cache, "a", load))
    assert [o.error for o in outcomes] == [None] * THREADS
    assert all(o.value is value for o in outcomes)
    assert load.calls == 1
    assert env_get(cache, "a", load) is value  # and it was stored
    assert load.calls == 1


def test_concurrent_misses_all_get_the_leaders_error(cache: Cache) -> None:
    stats = cache.stats(SLOT)
    boom = Boom("database down")
    load = CountingLoad(
        boom,
        "value",
        on_call=lambda n: (
            wait_for(lambda: stats.joins == THREADS - 1, f"{THREADS - 1} callers joined the load")
            if n == 1
            else None
        ),
    )
    outcomes = run_concurrently(THREADS, lambda _i: env_get(cache, "a", load))
    assert all(o.error is boom for o in outcomes)
    assert load.calls == 1
    assert len(cache) == 0
    assert env_get(cache, "a", load) == "value"  # nothing cached: loads again
    assert load.calls == 2


def test_waiter_with_a_short_wait_times_out_while_others_get_the_value(cache: Cache) -> None:
    gate = Gate()
    load = CountingLoad("value", on_call=lambda _n: gate.wait())
    leader = Background(lambda: env_get(cache, "a", load))
    wait_for(lambda: load.calls == 1, "the leader's load started")
    patient = Background(lambda: env_get(cache, "a", load))
    wait_for(lambda: cache.stats(SLOT).joins == 1, "a patient caller joined")

    with pytest.raises(FlightTimeout):
        env_get(cache, "a", load, wait_s=0.05)

    gate.open()
    assert leader.result() == "value"
    assert patient.result() == "value"
    assert load.calls == 1


def test_flight_started_before_an_invalidation_is_not_joined(cache: Cache) -> None:
    gate = Gate()
    before = CountingLoad("old", on_call=lambda _n: gate.wait())
    after = CountingLoad("new")
    early = Background(lambda: env_get(cache, "a", before))
    wait_for(lambda: before.calls == 1, "the early load started")

    cache.invalidate_environment("a")
    # Joining would hand out an answer that may predate the invalidation:
    # this caller leads its own load instead (and does not wait for the gate).
    assert env_get(cache, "a", after) == "new"
    assert cache.stats(SLOT).joins == 0

    gate.open()
    assert early.result() == "old"
    assert env_get(cache, "a", after) == "new"  # the early answer was not stored
    assert (before.calls, after.calls) == (1, 1)


# ------------------------------------------- loads nobody waits for any more


def on_a_thread(work: Callable[[], None]) -> None:
    """A ``start`` that runs the load on a thread of its own (as the
    resolver runs it on the database's threads)."""
    threading.Thread(target=work, daemon=True).start()


def test_a_detached_load_is_abandoned_once_every_waiter_has_given_up(cache: Cache) -> None:
    gate = Gate()
    abandoned: list[str] = []
    load = CountingLoad(
        Boom("cancelled"), "value", on_call=lambda n: gate.wait() if n == 1 else None
    )

    def get(name: str, wait_s: float) -> Any:
        return env_get(
            cache,
            "a",
            load,
            wait_s=wait_s,
            start=on_a_thread,
            abandon=lambda: abandoned.append(name),
        )

    leader = Background(lambda: get("leader", 1.0))
    wait_for(lambda: load.calls == 1, "the leader's load started")
    # A joiner gives up first: the leader still waits, nothing is abandoned.
    with pytest.raises(FlightTimeout):
        get("joiner", 0.05)
    assert abandoned == [] and cache.stats(SLOT).joins == 1
    # The leader gives up too: nobody waits, the load is abandoned, once,
    # through the hook of the caller that started it.
    with pytest.raises(FlightTimeout):
        leader.result()
    assert abandoned == ["leader"] and cache.stats(SLOT).abandoned == 1
    # The flight is forgotten: the next caller starts a load of its own
    # instead of joining one that is being cancelled.
    assert get("late", DEADLINE_S) == "value"
    assert load.calls == 2
    # The abandoned load ends in an error (its statement was cancelled):
    # not stored, and the value the later load stored stays.
    gate.open()
    wait_for(lambda: cache.stats(SLOT).load_errors == 1, "the abandoned load ended")
    assert env_get(cache, "a", load) == "value"
    assert load.calls == 2 and abandoned == ["leader"]


def test_a_waiter_whose_caller_has_gone_stops_waiting(cache: Cache) -> None:
    """A wait on behalf of a call whose caller has gone (the call's
    ``is_active`` says so) ends at its next look, long before its own
    ``wait_s``; nobody else waits, so the load is abandoned."""
    gate = Gate()
    abandoned: list[str] = []
    load = CountingLoad(Boom("cancelled"), on_call=lambda n: gate.wait())
    caller_waits = threading.Event()
    caller_waits.set()

    def call() -> Any:
        callinfo.begin(None, caller_waits.is_set)
        try:
            return env_get(
                cache,
                "a",
                load,
                wait_s=10 * DEADLINE_S,
                start=on_a_thread,
                abandon=lambda: abandoned.append("a"),
            )
        finally:
            callinfo.end()

    caller = Background(call)
    wait_for(lambda: load.calls == 1, "the load started")
    assert abandoned == []
    caller_waits.clear()  # the caller cancels
    with pytest.raises(FlightTimeout, match="its caller has gone"):
        caller.result()
    assert abandoned == ["a"] and cache.stats(SLOT).abandoned == 1
    gate.open()


def test_a_caller_that_joins_before_the_others_give_up_keeps_the_load(cache: Cache) -> None:
    gate = Gate()
    abandoned: list[str] = []
    load = CountingLoad("value", on_call=lambda _n: gate.wait())

    def get(wait_s: float) -> Any:
        return env_get(
            cache,
            "a",
            load,
            wait_s=wait_s,
            start=on_a_thread,
            abandon=lambda: abandoned.append("abandoned"),
        )

    leader = Background(lambda: get(1.0))
    wait_for(lambda: load.calls == 1, "the leader's load started")
    patient = Background(lambda: get(DEADLINE_S))
    wait_for(lambda: cache.stats(SLOT).joins == 1, "a patient caller joined")
    with pytest.raises(FlightTimeout):
        leader.result()
    assert abandoned == []
    gate.open()
    assert patient.result() == "value"
    assert load.calls == 1 and abandoned == [] and cache.stats(SLOT).abandoned == 0


def test_a_background_refresh_is_never_abandoned(cache: Cache, clock: FakeClock) -> None:
    gate = Gate()
    abandoned: list[str] = []
    load = CountingLoad("old", "new", on_call=lambda n: gate.wait() if n == 2 else None)

    def get(wait_s: float) -> Any:
        return env_get(
            cache,
            "a",
            load,
            wait_s=wait_s,
            start=on_a_thread,
            abandon=lambda: abandoned.append("abandoned"),
        )

    assert get(DEADLINE_S) == "old"
    clock.advance(SOFT + 1)
    assert get(DEADLINE_S) == "old"  # stale: refreshed in the background
    wait_for(lambda: load.calls == 2, "the refresh started")
    # Past the hard deadline a caller waits for the refresh, and gives up:
    # the refresh still runs (it waits for nobody).
    clock.advance(HARD)
    with pytest.raises(FlightTimeout):
        get(0.05)
    assert abandoned == [] and cache.stats(SLOT).abandoned == 0
    gate.open()
    wait_for(lambda: cache.fresh(SLOT, "a") == "new", "the refresh stored its value")
    assert get(DEADLINE_S) == "new"
    assert load.calls == 2


# ----------------------------------------------------------- thread safety


def test_concurrent_gets_and_invalidations_smoke(
    make_cache: Callable[..., Cache], clock: FakeClock
) -> None:
    bound = 50
    cache = make_cache(max_entries=bound, soft_ttl=0.5, hard_ttl=2.0, negative_ttl=0.2, jitter=0.1)
    keys = [f"e{i}" for i in range(200)]
    unexpected: list[str] = []

    def org_of(value: Any) -> tuple[str, ...]:
        return (org_scope(value[1]),)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(1_500):
            key = rng.choice(keys)
            org = "o" + key[-1]

            # Bound now, not looked up when called: a background refresh
            # runs this load after the loop has moved on to other keys.
            def load(key: str = key, org: str = org, n: int = n, roll: float = rng.random()) -> Any:
                if roll < 0.05:
                    raise Boom("database down")
                if roll < 0.15:
                    return ABSENT
                return (key, org, n)

            op = rng.random()
            try:
                if op < 0.85:
                    value = env_get(cache, key, load, scopes_of=org_of, wait_s=DEADLINE_S)
                    # An answer always belongs to the key it was asked for.
                    if value is not ABSENT and value[0] != key:
                        unexpected.append(f"asked {key}, got {value!r}")
                elif op < 0.90:
                    cache.invalidate_environment(key)
                elif op < 0.93:
                    cache.invalidate_organization(org)
                elif op < 0.95:
                    cache.invalidate_worker_versions(key)
                elif op < 0.955:
                    cache.invalidate_all()
                else:
                    clock.advance(0.05)
            except Boom:
                pass
            except BaseException as exc:
                unexpected.append(repr(exc))

    outcomes = run_concurrently(8, worker)
    assert [o.error for o in outcomes] == [None] * 8
    assert unexpected == []
    assert len(cache) <= bound
    stats = cache.stats(SLOT)
    assert stats.evictions > 0, "the bound was reached"
    assert stats.hits > 0 and stats.loads > 0


# ---------------------------------------------------------------- Epochs


def test_invalidation_holds_for_the_whole_life_of_the_entries_it_drops(
    cache: Cache, clock: FakeClock
) -> None:
    # Nobody reads the dropped entries until just before they would expire
    # anyway: the epoch must still be remembered then, positive and negative.
    present = CountingLoad("old", "new")
    absent = CountingLoad(ABSENT, "created")
    env_get(cache, "a", present)
    env_get(cache, "b", absent)
    cache.invalidate_environment("a")
    cache.invalidate_environment("b")

    # Other invalidations keep happening (forgetting may be done by them).
    clock.move_to(NEGATIVE - 0.001)
    cache.invalidate_environment("unrelated 1")
    assert env_get(cache, "b", absent) == "created"
    clock.move_to(HARD - 0.001)
    cache.invalidate_environment("unrelated 2")
    assert env_get(cache, "a", present) == "new"


def test_epochs_forgotten_after_retention_are_harmless(cache: Cache, clock: FakeClock) -> None:
    load = CountingLoad("old", "new")
    env_get(cache, "a", load)
    stamp_of_fill = cache.epochs.stamp()
    cache.invalidate_environment("a")
    assert not cache.epochs.is_current(stamp_of_fill, [env_scope("a")])

    # Retention is longer than any entry lives: once the epoch is forgotten,
    # the entries it guarded are gone too, so none comes back as valid.
    clock.move_to(2 * HARD + 61)
    # Forgetting may be lazy (done by a later invalidation): give it one.
    cache.invalidate_environment("unrelated")
    assert cache.epochs.is_current(stamp_of_fill, [env_scope("a")]), "epoch forgotten"
    assert env_get(cache, "a", load) == "new"
    assert load.calls == 2
    assert env_get(cache, "a", load) == "new"  # and caching works as before


def test_epochs_overflowing_max_scopes_invalidates_everything(clock: FakeClock) -> None:
    epochs = Epochs(retention_s=100.0, max_scopes=3, clock=clock)
    before = epochs.stamp()
    for env_id in ("a", "b", "c"):
        epochs.bump(env_scope(env_id), "environment")
    assert epochs.is_current(before, [env_scope("x")]), "within max_scopes: exact"
    assert not epochs.is_current(before, [env_scope("a")])

    epochs.bump(env_scope("d"), "environment")  # one scope too many

    after = epochs.stamp()
    # Whichever epoch was dropped, nothing stamped before it can be trusted.
    for env_id in ("a", "b", "c", "d", "x"):
        assert not epochs.is_current(before, [env_scope(env_id)])
        assert epochs.is_current(after, [env_scope(env_id)])


def test_epochs_expire_after_retention(clock: FakeClock) -> None:
    epochs = Epochs(retention_s=100.0, max_scopes=3, clock=clock)
    before = epochs.stamp()
    epochs.bump(env_scope("a"), "environment")
    clock.advance(99.0)
    epochs.bump(env_scope("b"), "environment")
    assert not epochs.is_current(before, [env_scope("a")]), "within retention: kept"
    clock.advance(2.0)  # a's epoch is now past retention, b's is not
    epochs.bump(env_scope("c"), "environment")  # forgetting may be lazy
    assert epochs.is_current(before, [env_scope("a")]), "past retention: forgotten"
    assert not epochs.is_current(before, [env_scope("b")])
    # The forgotten epoch freed its room: b, c and d fit without overflow.
    epochs.bump(env_scope("d"), "environment")
    assert epochs.is_current(before, [env_scope("x")])


def test_many_invalidations_never_resurrect_a_stale_entry(cache: Cache) -> None:
    # The cache's own Epochs (default max_scopes): invalidate "a", then
    # so many other environments within the retention window that a's
    # epoch cannot be kept. The stale entry of "a" must still not be served.
    load = CountingLoad("old", "new")
    env_get(cache, "a", load)
    cache.invalidate_environment("a")
    for i in range(100_000):
        cache.invalidate_environment(f"other{i}")
    assert env_get(cache, "a", load) == "new"
    assert load.calls == 2


# ------------------------------------ regressions: bugs found by these tests


def test_retention_outlives_negative_entries(
    make_cache: Callable[..., Cache], clock: FakeClock
) -> None:
    # Config allows a negative TTL longer than the hard TTL (only hard >= soft
    # is checked). Retention computed from hard TTLs alone (as it once was)
    # forgets the epoch of an invalidated absence while the absence lives.
    cache = make_cache(soft_ttl=1.0, hard_ttl=1.0, negative_ttl=300.0)
    load = CountingLoad(ABSENT, "created")
    env_get(cache, "a", load)
    clock.move_to(1.0)
    cache.invalidate_environment("a")  # the environment was just created
    clock.move_to(100.0)  # past retention if computed from hard TTLs: max(60, 2 * 1 + 60)
    cache.invalidate_environment("unrelated")  # forgetting may be done by the next bump
    assert env_get(cache, "a", load) == "created"


def test_failing_scopes_of_does_not_wedge_the_key(cache: Cache) -> None:
    # A fault after the load (here scopes_of; likewise the store) must still
    # finish the flight, or every later caller joins a flight that never ends.
    def broken_scopes_of(value: Any) -> tuple[str, ...]:
        if value == "bad":
            raise KeyError("organization")
        return ()

    load = CountingLoad("bad", "good")
    with pytest.raises(KeyError):
        env_get(cache, "a", load, scopes_of=broken_scopes_of)
    assert env_get(cache, "a", load, scopes_of=broken_scopes_of, wait_s=1.0) == "good"


def test_is_current_is_not_fooled_by_an_overflow_during_the_check(clock: FakeClock) -> None:
    # FAILS until Epochs.is_current re-reads the global epoch after the
    # scope lookups (``return stamp >= self._global`` instead of ``True``).
    # is_current reads the global epoch, then the scope epochs, without a
    # lock. An overflow in between (another thread) raises the global epoch
    # and clears the scope epochs: a check that saw the old global epoch and
    # the cleared scopes would call valid an entry invalidated long before.
    # The scopes iterable runs that other thread's bumps at exactly that point.
    epochs = Epochs(retention_s=100.0, max_scopes=2, clock=clock)
    stamp_of_fill = epochs.stamp()
    epochs.bump(env_scope("a"), "environment")  # the entry is now invalid

    def scopes_meanwhile_overflowing() -> Iterator[str]:
        epochs.bump(env_scope("b"), "environment")
        epochs.bump(env_scope("c"), "environment")  # one too many
        yield env_scope("a")

    assert not epochs.is_current(stamp_of_fill, scopes_meanwhile_overflowing())
