"""The near-cache's rules (docs/near-cache.md), fed real stream messages
and answers on a controlled clock: which answers it keeps, and for how long."""

from __future__ import annotations

from controlplane_resolver_client import NearCache, StreamState, pb
from controlplane_resolver_client.near_cache import MISSING

SERVER = "a" * 32
ENV = (pb.SCOPE_KIND_ENVIRONMENT, "env1")
ORG = (pb.SCOPE_KIND_ORGANIZATION, "org1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def start(cache: NearCache, revision: int = 10, *, listening: bool = True, server: str = SERVER):
    cache.on_message(
        pb.WatchInvalidationsResponse(
            server_id=server,
            revision=revision,
            start=pb.WatchStart(heartbeat_interval_ms=1000, listening=listening),
        )
    )


def invalidation(cache: NearCache, revision: int, kind: int, ident: str = "") -> None:
    cache.on_message(
        pb.WatchInvalidationsResponse(
            server_id=SERVER,
            revision=revision,
            invalidation=pb.Invalidation(scope=pb.Scope(kind=kind, id=ident)),
        )
    )


def heartbeat(cache: NearCache, revision: int, *, listening: bool = True) -> None:
    cache.on_message(
        pb.WatchInvalidationsResponse(
            server_id=SERVER, revision=revision, heartbeat=pb.Heartbeat(listening=listening)
        )
    )


def answer(valid_at: int, *scopes: tuple[int, str], server: str = SERVER, max_age_ms=None):
    revision = pb.AnswerRevision(server_id=server, valid_at=valid_at)
    for kind, ident in scopes:
        revision.scopes.add(kind=kind, id=ident)
    if max_age_ms is not None:
        revision.max_age_ms = max_age_ms
    return revision


def new_cache(**kwargs) -> tuple[NearCache, Clock]:
    clock = Clock()
    return NearCache(clock=clock, **kwargs), clock


def test_nothing_is_kept_before_the_stream_starts():
    cache, _ = new_cache()
    assert not cache.put("k", "v", answer(5, ENV))
    assert cache.get("k") is MISSING


def test_an_answer_is_kept_until_an_invalidation_of_one_of_its_scopes():
    cache, _ = new_cache()
    start(cache, 10)
    assert cache.put("k", "v", answer(12, ENV, ORG))
    assert cache.get("k") == "v"
    invalidation(cache, 13, pb.SCOPE_KIND_PROJECT, "p")  # not one of its scopes
    assert cache.get("k") == "v"
    invalidation(cache, 14, *ORG)
    assert cache.get("k") is MISSING


def test_an_answer_older_than_a_seen_invalidation_is_not_kept():
    cache, _ = new_cache()
    start(cache, 10)
    invalidation(cache, 15, *ENV)
    assert not cache.put("stale", "v", answer(14, ENV))
    assert cache.put("fresh", "v", answer(15, ENV))  # loaded after it
    assert cache.get_stats().not_kept == 1


def test_an_answer_from_before_the_stream_started_is_not_kept():
    cache, _ = new_cache()
    start(cache, 10)
    assert not cache.put("k", "v", answer(9, ENV))


def test_an_answer_from_another_server_process_is_not_kept():
    cache, _ = new_cache()
    start(cache, 10)
    assert not cache.put("k", "v", answer(20, ENV, server="b" * 32))


def test_an_answer_not_kept_removes_the_entry_it_was_returned_instead_of():
    # The client returned the other process's answer (it may be newer than
    # the entry): the entry must not be answered from memory after it.
    cache, _ = new_cache()
    start(cache, 10)
    assert cache.put("k", "old", answer(12, ENV))
    assert not cache.put("k", "new", answer(20, ENV, server="b" * 32))
    assert cache.get("k") is MISSING
    assert cache.put("k", "newer", answer(12, ENV))  # still valid here: kept again
    assert cache.get("k") == "newer"


def test_invalidating_everything_drops_every_answer():
    cache, _ = new_cache()
    start(cache, 10)
    cache.put("k", "v", answer(12, ENV))
    invalidation(cache, 13, pb.SCOPE_KIND_ALL)
    assert cache.get("k") is MISSING
    assert not cache.put("late", "v", answer(12, ORG))


def test_a_server_that_stops_listening_makes_the_cache_answer_nothing():
    cache, _ = new_cache()
    start(cache, 10)
    cache.put("k", "v", answer(12, ENV))
    heartbeat(cache, 12, listening=False)
    assert cache.state is StreamState.NOT_LISTENING
    assert cache.get("k") is MISSING
    assert not cache.put("k", "v", answer(12, ENV))
    heartbeat(cache, 12, listening=True)
    assert cache.get("k") is MISSING  # dropped, not merely hidden


def test_a_silent_stream_stops_answers_from_memory():
    cache, clock = new_cache()
    start(cache, 10)
    cache.put("k", "v", answer(12, ENV))
    clock.now += 2.9
    assert cache.get("k") == "v"
    heartbeat(cache, 12)
    clock.now += 2.9
    assert cache.get("k") == "v"
    clock.now += 0.2  # three intervals without a message
    assert cache.get("k") is MISSING
    assert cache.silent_for() > 0


def test_a_broken_stream_drops_everything_and_a_new_start_begins_clean():
    cache, _ = new_cache()
    start(cache, 10)
    cache.put("k", "v", answer(12, ENV))
    cache.on_broken("test")
    assert cache.state is StreamState.CONNECTING
    assert cache.get("k") is MISSING
    start(cache, 20)
    assert cache.get("k") is MISSING
    assert not cache.put("k", "v", answer(12, ENV))  # fetched before the break
    stats = cache.get_stats()
    assert (stats.stream_starts, stats.stream_breaks, stats.entries) == (2, 1, 0)


def test_the_shorter_of_the_ttl_and_the_server_max_age_bounds_an_answer():
    cache, clock = new_cache(ttl_s=60)
    start(cache, 10)
    assert not cache.put("never", "v", answer(12, ENV, max_age_ms=0))
    cache.put("short", "v", answer(12, ENV, max_age_ms=500))
    cache.put("long", "v", answer(12, ENV))
    clock.now += 0.6
    heartbeat(cache, 12)
    assert cache.get("short") is MISSING
    assert cache.get("long") == "v"
    for _ in range(30):
        clock.now += 2
        heartbeat(cache, 12)
    assert cache.get("long") is MISSING


def test_forgotten_invalidations_raise_the_floor():
    cache, clock = new_cache(ttl_s=10)
    start(cache, 10)
    invalidation(cache, 11, *ENV)
    clock.now += 11
    invalidation(cache, 12, *ORG)  # forgets the first: older than any entry
    assert not cache.put("k", "v", answer(10, ENV))
    assert cache.put("k", "v", answer(12, ENV))


def test_entries_are_bounded():
    cache, _ = new_cache(max_entries=3)
    start(cache, 10)
    for i in range(5):
        cache.put(i, i, answer(12, ENV))
    assert cache.get_stats().entries == 3
    assert cache.get(0) is MISSING and cache.get(4) == 4


def test_a_stream_that_never_starts_is_taken_as_broken():
    from controlplane_resolver_client.near_cache import START_TIMEOUT_S

    cache, clock = new_cache()
    cache.on_opening()
    clock.now += START_TIMEOUT_S - 0.1
    assert cache.silent_for() < 0
    clock.now += 0.2
    assert cache.silent_for() > 0


def test_too_many_remembered_invalidations_drop_everything(monkeypatch):
    from controlplane_resolver_client import near_cache

    monkeypatch.setattr(near_cache, "MAX_SCOPES", 2)
    cache, _ = new_cache()
    start(cache, 10)
    cache.put("k", "v", answer(12, ORG))
    invalidation(cache, 13, pb.SCOPE_KIND_ENVIRONMENT, "a")
    invalidation(cache, 14, pb.SCOPE_KIND_ENVIRONMENT, "b")
    assert cache.get("k") == "v"
    invalidation(cache, 15, pb.SCOPE_KIND_ENVIRONMENT, "c")  # one too many
    assert cache.get("k") is MISSING
    assert not cache.put("k", "v", answer(14, ORG))
    assert cache.put("k", "v", answer(15, ORG))


def test_a_near_cache_belongs_to_one_client():
    import pytest

    from controlplane_resolver_client import ResolverClient

    shared = NearCache()
    first = ResolverClient("127.0.0.1:1", near_cache=shared)
    try:
        with pytest.raises(ValueError, match="belongs to another client"):
            ResolverClient("127.0.0.1:1", near_cache=shared)
    finally:
        first.close()
