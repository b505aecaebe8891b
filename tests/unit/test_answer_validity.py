"""The cache's revisions as the near-cache reads them: an answer is never
said valid at the revision of the invalidation that replaced it, whatever
the interleaving of a reader with the invalidation."""

from __future__ import annotations

from controlplane_resolver import callinfo
from controlplane_resolver.cache import (
    ABSENT,
    Cache,
    Slot,
    SlotPolicy,
    env_scope,
    split_scope,
)

POLICY = SlotPolicy(soft_ttl=60, hard_ttl=60, negative_ttl=60, max_entries=10)


class SteppingClock:
    """A clock that can run code the moment the cache reads it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.on_read = None

    def __call__(self) -> float:
        hook, self.on_read = self.on_read, None
        if hook is not None:
            hook()
        return self.now


def cached_answer(cache: Cache) -> list:
    callinfo.begin()
    try:
        assert cache.get(Slot.ENVIRONMENT, "e1", lambda: "old", scopes=(env_scope("e1"),)) == "old"
        callinfo.end()
        callinfo.begin()
        assert cache.fresh(Slot.ENVIRONMENT, "e1") == "old"
        return callinfo.sources()
    finally:
        callinfo.end()


def test_a_reader_inside_an_invalidation_never_gets_its_revision_as_valid_at():
    clock = SteppingClock()
    cache = Cache({Slot.ENVIRONMENT: POLICY}, clock=clock)
    sources = cached_answer(cache)
    seen: list = []

    # Read the validity while bump() is inside its critical section (it
    # reads the clock there): before the fix, the counter had moved and the
    # epoch had not, and valid_at came out equal to the new revision.
    clock.on_read = lambda: seen.append(cache.answer_validity(sources))
    revision = cache.epochs.bump(env_scope("e1"), "environment")
    (validity,) = seen
    assert validity.valid_at < revision
    # And after it: the stamp, not the current revision.
    assert cache.answer_validity(sources).valid_at < revision


def test_an_answer_is_valid_at_the_current_revision_until_its_scope_is_invalidated():
    cache = Cache({Slot.ENVIRONMENT: POLICY})
    sources = cached_answer(cache)
    cache.invalidate_project("other")
    validity = cache.answer_validity(sources)
    assert validity.valid_at == cache.revision() == 1
    assert [split_scope(s) for s in validity.scopes] == [("environment", "e1")]
    assert 0 < validity.expires_in <= 60


def test_observers_see_every_invalidation_in_revision_order_and_overflow_as_all():
    cache = Cache({Slot.ENVIRONMENT: POLICY})
    cache.epochs._max_scopes = 2
    events: list = []
    cache.set_invalidation_observer(lambda revision, scope: events.append((revision, scope)))
    cache.invalidate_environment("a")
    cache.invalidate_organization("b")
    cache.invalidate_project("c")  # a third scope: everything instead
    cache.invalidate_all()
    assert events == [(1, "env:a"), (2, "org:b"), (3, "*"), (4, "*")]
    assert cache.get(Slot.ENVIRONMENT, "x", lambda: ABSENT) is ABSENT
