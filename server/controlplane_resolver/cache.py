"""The per-process cache of control-plane answers (docs/caching.md).

Pieces, each small and named:

* :class:`Slot` — one bounded cache per kind of answer; keys of different
  slots never meet because each slot has its own store.
* :data:`ABSENT` — a confirmed absence, cached as such; a plain miss is
  "no entry". Errors are never stored.
* :class:`Epochs` — invalidation by epoch. One monotonic counter stamps
  every fill when it *starts* and every invalidation when it happens; an
  entry is valid while its stamp is at least the newest invalidation of
  every scope it belongs to (``env:ID``, ``org:ID``, ``project:ID``,
  ``wv:ID``, ``flag:KEY`` and the global scope). A fill that started before
  an invalidation therefore carries an older stamp and is never stored
  after it.
* :class:`_Entries` — a slot's bounded store; a hit reads it without a lock.
* Single-flight (:class:`_Flight`) — concurrent misses for one key run one
  load; the others wait for the leader's value or error. A load run off the
  callers' threads keeps running while one caller still waits for it; once
  every one has given up, its ``abandon`` hook is called (the resolver
  cancels the statement) and the next caller starts a new load.
* Answer validity — every answer a call gets is noted as a *source* of the
  call (:func:`callinfo.note_source`); :meth:`Cache.answer_validity` turns a
  call's sources into the revision (epoch counter) up to which the answer
  is known valid, its scopes and its remaining lifetime, which callers that
  keep answers themselves compare with the invalidations they watch.
* Soft/hard expiry — past the soft deadline a read returns the cached value
  and refreshes it in the background (one refresh per key); past the hard
  deadline the read waits for a load. A failed refresh leaves the old value
  in place until the hard deadline. Deadlines get a random jitter so a fleet
  does not refresh in lockstep.

Nothing here knows about databases or gRPC: a load is any callable returning
a value or :data:`ABSENT`, or raising.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from controlplane_resolver import blocking, callinfo

log = logging.getLogger(__name__)


class Slot(enum.Enum):
    ENVIRONMENT = "environment"
    AUTHENTICATED_ENVIRONMENT = "authenticated_environment"
    ENV_EXISTS = "env_exists"
    WORKER_VERSION = "worker_version"
    LOCKED_WORKER = "locked_worker"
    MINT_KIND = "mint_kind"

    # Members are singletons compared by identity, so identity is a correct
    # hash, and a C one: Enum's own __hash__ is a Python call on every read.
    __hash__ = object.__hash__


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self) -> str:
        return "ABSENT"


#: A confirmed absence: the database answered and the row is not there.
ABSENT: Any = _Absent()


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What :meth:`Cache.fresh` returns when there is no fresh, valid entry.
MISSING: Any = _Missing()

GLOBAL_SCOPE = "*"


@dataclass(frozen=True)
class SlotPolicy:
    """Lifetimes of one slot, in seconds. ``soft_ttl == 0`` stores nothing
    (single-flight still applies)."""

    soft_ttl: float
    hard_ttl: float
    negative_ttl: float
    max_entries: int
    jitter: float = 0.1

    @property
    def stores(self) -> bool:
        return self.soft_ttl > 0


@dataclass
class SlotStats:
    """Plain counters, read without locking (monotonic, approximate under races)."""

    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    stale_serves: int = 0
    joins: int = 0
    loads: int = 0
    load_errors: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    evictions: int = 0
    discarded_fills: int = 0
    #: Loads whose every waiter gave up before they ended (``abandon`` called).
    abandoned: int = 0


@dataclass(frozen=True)
class CacheStats:
    """What :meth:`Cache.get_stats` returns: counters by slot name, and
    invalidations by cause (``environment``, ``organization``, ``project``,
    ``worker_versions``, ``flag``, ``all``)."""

    slots: dict[str, SlotStats]
    invalidations: dict[str, int]


class Epochs:
    """Invalidation epochs (see module docstring). Thread-safe.

    The counter is also the process's *revision*: :attr:`on_bump`, when
    set, is called with ``(revision, scope)`` for every invalidation, in
    revision order (under the writers' lock: it must be quick and must not
    raise). An overflow reports the global scope.

    Reads (:meth:`is_current`, on every cache hit) are plain dict lookups
    without a lock; writers serialise on a lock. Epochs of single scopes
    are forgotten after ``retention_s`` (longer than any entry can live):
    by then no entry stamped before them remains. If more than
    ``max_scopes`` scopes are remembered at once, forgetting one early
    would be unsafe, so everything is invalidated instead.
    """

    def __init__(
        self,
        retention_s: float = 3600.0,
        max_scopes: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._retention_s = retention_s
        self._max_scopes = max_scopes
        self._counter = 0
        self._global = 0
        self._epochs: dict[str, int] = {}
        #: (time, scope, epoch) in bump order, to forget expired epochs.
        self._history: deque[tuple[float, str, int]] = deque()
        self.on_bump: Callable[[int, str], None] | None = None
        self.invalidations: dict[str, int] = {
            "environment": 0,
            "organization": 0,
            "project": 0,
            "worker_versions": 0,
            "flag": 0,
            "all": 0,
        }

    def stamp(self) -> int:
        """The stamp a fill starting now carries."""
        return self._counter

    def is_current(self, stamp: int, scopes: Iterable[str]) -> bool:
        """True when no scope was invalidated after ``stamp`` was taken."""
        if stamp < self._global:
            return False
        get = self._epochs.get
        for scope in scopes:
            if get(scope, 0) > stamp:
                return False
        # Read again: an overflow during the loop raises _global before it
        # clears the epochs, so a cleared map is never mistaken for "none".
        return stamp >= self._global

    def bump(self, scope: str, cause: str) -> int:
        with self._lock:
            # The epoch is written before the counter moves: a reader that
            # sees revision R (stamp()) then finds R's epoch in place, so an
            # answer is never said valid at the revision that replaced it. A
            # fill stamped in between gets R - 1, and is refused as stale.
            revision = self._counter + 1
            now = self._clock()
            self._forget_before(now - self._retention_s)
            if scope == GLOBAL_SCOPE:
                self._global = revision
            elif len(self._epochs) >= self._max_scopes and scope not in self._epochs:
                # Too many to remember: invalidate everything instead.
                self._global = revision
                self._epochs.clear()
                self._history.clear()
                scope = GLOBAL_SCOPE
            else:
                self._epochs[scope] = revision
                self._history.append((now, scope, revision))
            self._counter = revision
            self.invalidations[cause] = self.invalidations.get(cause, 0) + 1
            if self.on_bump is not None:
                self.on_bump(revision, scope)
            return revision

    def _forget_before(self, cutoff: float) -> None:
        history = self._history
        while history and history[0][0] < cutoff:
            _, scope, epoch = history.popleft()
            if self._epochs.get(scope) == epoch:
                del self._epochs[scope]


def env_scope(environment_id: str) -> str:
    return "env:" + environment_id


def org_scope(organization_id: str) -> str:
    return "org:" + organization_id


def project_scope(project_id: str) -> str:
    return "project:" + project_id


def worker_versions_scope(environment_id: str) -> str:
    return "wv:" + environment_id


def flag_scope(key: str) -> str:
    """Answers that read the global ``"FeatureFlag"`` row ``key``."""
    return "flag:" + key


#: Scope prefixes by the kind of scope they name (the kinds of
#: :meth:`Cache.get_stats`'s invalidations).
_SCOPE_KINDS = {
    "env": "environment",
    "org": "organization",
    "project": "project",
    "wv": "worker_versions",
    "flag": "flag",
}


def split_scope(scope: str) -> tuple[str, str]:
    """``(kind, id)`` of a scope: ``("environment", ID)`` for ``env:ID``, …,
    ``("all", "")`` for the global scope."""
    if scope == GLOBAL_SCOPE:
        return "all", ""
    prefix, _, ident = scope.partition(":")
    return _SCOPE_KINDS[prefix], ident


@dataclass(frozen=True)
class AnswerSource:
    """A source of an answer that is not a stored entry: a load whose value
    was not stored, or a decision that must not be kept
    (``hard_deadline`` in the past)."""

    stamp: int
    scopes: tuple[str, ...]
    hard_deadline: float


@dataclass(frozen=True)
class AnswerValidity:
    """What :meth:`Cache.answer_validity` returns.

    No invalidation of ``scopes`` up to revision ``valid_at`` replaced the
    answer; the cache itself would serve it ``expires_in`` seconds more
    (``0``: it is not kept; ``None``: it was made from no cached source)."""

    valid_at: int
    scopes: tuple[str, ...]
    expires_in: float | None


@dataclass
class _Entry:
    value: Any
    stamp: int
    scopes: tuple[str, ...]
    soft_deadline: float
    hard_deadline: float
    #: After a failed refresh, no new refresh before this time.
    retry_after: float = 0.0


@dataclass
class _Flight:
    """One load in progress; waiters block on ``done``."""

    stamp: int
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None
    #: The stored entry, or an AnswerSource when the value was not stored.
    source: Any = None
    #: Callers waiting for the load (the leader too when the load runs on
    #: ``start``'s thread); changed under the slot's lock.
    waiters: int = 0
    #: Called once when the last waiter gives up before the load ends; None
    #: for loads nobody may abandon (background refreshes, loads run on the
    #: leader's thread).
    abandon: Callable[[], None] | None = None


#: Runs work off the calling thread, or raises to refuse it.
Starter = Callable[[Callable[[], None]], None]


class FlightTimeout(Exception):
    """A waiter gave up on a load that another caller leads."""


class _Entries:
    """One slot's entries: at most ``maxsize``, the longest-stored dropped
    first, and none kept long past its hard deadline.

    Reads are ``get``: the C ``dict.get`` of an OrderedDict, atomic under
    the GIL, so a hit takes no lock and makes no Python-level call: a read
    that reordered an LRU list would have to write, and so to lock, on the
    service's hottest path.

    Writes (``put``) happen under the slot's lock. Storing a key moves it to
    the end, and every entry still read past its soft deadline is stored
    again by its refresh, so the front holds what nobody read lately: LRU
    at the granularity of the soft TTL. Expired entries are dropped from the
    front as new ones arrive; a read must still check the hard deadline.
    """

    def __init__(self, maxsize: int, stats: SlotStats) -> None:
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._maxsize = maxsize
        self._stats = stats
        self.get = self._data.get

    def put(self, key: Hashable, entry: _Entry, now: float) -> None:
        data = self._data
        data[key] = entry
        data.move_to_end(key)
        while len(data) > self._maxsize:
            data.popitem(last=False)
            self._stats.evictions += 1
        while data and next(iter(data.values())).hard_deadline <= now:
            data.popitem(last=False)

    def live(self, now: float) -> int:
        """Entries not past their hard deadline."""
        return sum(1 for e in self._data.values() if e.hard_deadline > now)


class _SlotStore:
    """Entries of one slot: a bounded store plus the loads in flight."""

    def __init__(self, slot: Slot, policy: SlotPolicy) -> None:
        self.slot = slot
        self.policy = policy
        self.lock = threading.Lock()
        self.stats = SlotStats()
        # Entries expire at their own hard deadline (jittered, shorter for absence).
        self.entries = _Entries(policy.max_entries, self.stats)
        self.flights: dict[Hashable, _Flight] = {}


def _hit(store: _SlotStore, entry: _Entry) -> Any:
    """Count and note a served fresh entry; return its value."""
    callinfo.note_source(entry)
    if entry.value is ABSENT:
        store.stats.negative_hits += 1
        callinfo.note("cache", "negative_hit")
    else:
        store.stats.hits += 1
        callinfo.note("cache", "hit")
    return entry.value


class Cache:
    """The slots, their policies and the shared :class:`Epochs`.

    :meth:`get` is the one read path. ``refresher`` runs background
    refreshes; pass ``None`` to refresh in the calling thread (tests).
    """

    def __init__(
        self,
        policies: dict[Slot, SlotPolicy],
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_workers: int = 2,
    ) -> None:
        self._clock = clock
        # No entry outlives its longest lifetime: epochs are kept past that.
        longest = max(
            (max(p.hard_ttl, p.soft_ttl, p.negative_ttl) for p in policies.values()), default=0.0
        )
        self.epochs = Epochs(retention_s=max(60.0, longest * 2 + 60.0), clock=clock)
        self._slots = {slot: _SlotStore(slot, policy) for slot, policy in policies.items()}
        self._refresher = ThreadPoolExecutor(
            max_workers=refresh_workers, thread_name_prefix="cache-refresh"
        )
        #: Set by :meth:`abort_waits`.
        self.aborting = threading.Event()

    def close(self) -> None:
        self._refresher.shutdown(wait=False, cancel_futures=True)

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def stats(self, slot: Slot) -> SlotStats:
        return self._slots[slot].stats

    def __len__(self) -> int:
        """Entries not past their hard deadline, over every slot."""
        now = self._clock()
        total = 0
        for store in self._slots.values():
            with store.lock:
                total += store.entries.live(now)
        return total

    # -------------------------------------------------------------- reads

    def get(
        self,
        slot: Slot,
        key: Hashable,
        load: Callable[[], Any],
        *,
        scopes: tuple[str, ...] = (),
        scopes_of: Callable[[Any], tuple[str, ...]] | None = None,
        wait_s: float | None = None,
        start: Starter | None = None,
        admit: Callable[[], AbstractContextManager[Any]] | None = None,
        abandon: Callable[[], None] | None = None,
    ) -> Any:
        """Return the cached answer for ``key`` or load it.

        ``load()`` returns the value or :data:`ABSENT`, or raises; it runs at
        most once at a time per key. ``scopes`` are the invalidation scopes
        known from the key; ``scopes_of(value)`` adds those only the value
        knows (its organization). A waiter gives up after ``wait_s`` with
        :class:`FlightTimeout`. Returns the value or :data:`ABSENT`; raises
        what ``load`` raised when no usable entry exists.

        ``start(work)``, when given, runs loads (and refreshes) off the
        calling thread, or raises to refuse them: the leader then waits for
        its own load as joiners do, bounded by ``wait_s``, and the load
        carries on for the callers still waiting after it leaves.
        ``admit()``, when given, is entered around a miss's load or wait
        (never around a hit or a stale serve) and may refuse it by raising.

        ``abandon()``, given with ``start``, is kept by a caller that leads
        the load: it is called once (quickly, it must not block or raise)
        when every caller waiting for the load has given up (its wait timed
        out, was aborted, or ``admit`` refused it) before the load ended. The
        flight is then forgotten: a caller arriving later starts a new load,
        and whatever the abandoned load ends with is stored only if it is a
        value (errors never are). A background refresh is never abandoned.
        """
        store = self._slots[slot]
        now = self._clock()
        with store.lock:
            entry = store.entries.get(key)
            if (
                entry is not None
                and now < entry.hard_deadline
                and self.epochs.is_current(entry.stamp, entry.scopes)
            ):
                if now < entry.soft_deadline:
                    return _hit(store, entry)
                # Between soft and hard: serve stale, refresh in the background.
                store.stats.stale_serves += 1
                callinfo.note("cache", "stale")
                callinfo.note_source(entry)
                if key not in store.flights and now >= entry.retry_after:
                    flight = self._begin(store, key)
                    try:
                        if start is not None:
                            start(
                                lambda: self._refresh(store, key, flight, load, scopes, scopes_of)
                            )
                        else:
                            self._refresher.submit(
                                self._refresh, store, key, flight, load, scopes, scopes_of
                            )
                    except Exception:  # refused or shutting down: serve what we have
                        self._finish(store, key, flight)
                        entry.retry_after = now + min(1.0, store.policy.soft_ttl)
                return entry.value
            store.stats.misses += 1
            in_flight = store.flights.get(key)
            if in_flight is not None and in_flight.stamp == self.epochs.stamp():
                flight = in_flight
                store.stats.joins += 1
                callinfo.note("cache", "join")
                leader = False
            else:
                # No load in flight, or one that began before an invalidation
                # (its answer may predate the change): lead a new one.
                flight = self._begin(store, key)
                callinfo.note("cache", "miss")
                leader = True
                if start is not None:
                    flight.abandon = abandon
            if start is not None:
                flight.waiters += 1
        try:
            with ExitStack() as stack:
                try:
                    if admit is not None:
                        stack.enter_context(admit())
                    if leader and start is not None:
                        start(
                            lambda: self._lead_quietly(store, key, flight, load, scopes, scopes_of)
                        )
                except BaseException as exc:
                    if leader:
                        store.stats.load_errors += 1
                        flight.error = exc
                        with store.lock:
                            self._finish(store, key, flight)
                    raise
                if leader and start is None:
                    value = self._lead(store, key, flight, load, scopes, scopes_of)
                    callinfo.note_source(flight.source)
                    return value
                return self._await(slot, flight, wait_s)
        finally:
            if start is not None and not flight.done.is_set():
                self._leave(store, key, flight)

    def _await(self, slot: Slot, flight: _Flight, wait_s: float | None) -> Any:
        if not self.wait_for(flight.done, wait_s):
            why = blocking.why_ended(self.aborting)
            if why is not None:
                raise FlightTimeout(f"gave up a {slot.value} load: {why}")
            raise FlightTimeout(f"waited {wait_s:.3f}s for a {slot.value} load")
        if flight.error is not None:
            raise flight.error
        callinfo.note_source(flight.source)
        return flight.value

    def _leave(self, store: _SlotStore, key: Hashable, flight: _Flight) -> None:
        """A waiter of ``flight`` gave up before the load ended. The last one
        to go abandons the load (see :meth:`get`)."""
        with store.lock:
            flight.waiters -= 1
            if flight.waiters > 0 or flight.done.is_set() or flight.abandon is None:
                return
            abandon, flight.abandon = flight.abandon, None
            if store.flights.get(key) is flight:
                del store.flights[key]
            store.stats.abandoned += 1
        try:
            abandon()
        except Exception:  # the hook must not raise; a waiter's error is its own
            log.exception("abandoning a %s load failed", store.slot.value)

    def wait_for(self, done: threading.Event, wait_s: float | None) -> bool:
        """Wait for ``done`` up to ``wait_s`` (:func:`blocking.wait`); False
        early once :attr:`aborting` is set (a drain ends every wait) or the
        current call's caller has gone, unless ``done`` was set meanwhile."""
        return done.is_set() or blocking.wait(done, wait_s, self.aborting) or done.is_set()

    def abort_waits(self) -> None:
        """End every wait for a load now and from now on (a drain)."""
        self.aborting.set()

    def _lead_quietly(
        self,
        store: _SlotStore,
        key: Hashable,
        flight: _Flight,
        load: Callable[[], Any],
        scopes: tuple[str, ...],
        scopes_of: Callable[[Any], tuple[str, ...]] | None,
    ) -> None:
        """:meth:`_lead` off the caller's thread: the outcome goes to the flight."""
        try:
            self._lead(store, key, flight, load, scopes, scopes_of)
        except BaseException:  # in flight.error for the waiters
            pass

    def fresh(self, slot: Slot, key: Hashable) -> Any:
        """The value (or :data:`ABSENT`) of a fresh, valid entry, counted as a
        hit; else :data:`MISSING`, counted as nothing (the caller goes on to
        :meth:`get`, which counts it). Never loads and never waits.

        The hot path's first step: callers check here before they build what
        a miss needs (a load, its scopes, the id check), so a hit builds
        nothing."""
        store = self._slots[slot]
        now = self._clock()
        entry = store.entries.get(key)  # no lock: see _Entries
        if (
            entry is None
            or now >= entry.soft_deadline
            or not self.epochs.is_current(entry.stamp, entry.scopes)
        ):
            return MISSING
        return _hit(store, entry)

    def peek(self, slot: Slot, key: Hashable) -> tuple[bool, Any]:
        """``(True, value)`` for a fresh, valid entry, else ``(False, None)``
        counted as a miss; never loads. Used by batch reads to split hits
        from misses."""
        value = self.fresh(slot, key)
        if value is MISSING:
            self._slots[slot].stats.misses += 1
            return False, None
        return True, value

    def put(
        self, slot: Slot, key: Hashable, value: Any, *, stamp: int, scopes: tuple[str, ...]
    ) -> bool:
        """Store a value loaded outside :meth:`get` (batch reads) whose load
        started at ``stamp``. Returns False when an invalidation since then
        forbids storing it."""
        store = self._slots[slot]
        with store.lock:
            return self._store(store, key, value, stamp, scopes) is not None

    def get_many(
        self,
        slot: Slot,
        keys: Iterable[Hashable],
        load_many: Callable[[list[Any]], Mapping[Any, Any]],
        *,
        scopes_of_key: Callable[[Any], tuple[str, ...]],
        scopes_of: Callable[[Any], tuple[str, ...]] | None = None,
        start: Starter | None = None,
    ) -> dict[Any, Any]:
        """Every key's value or :data:`ABSENT`: fresh entries from the cache
        (counted as hits), the others from one ``load_many(missing_keys)``
        call, which returns the values it found by key (a key it leaves out
        is absent). Loaded answers are stored as :meth:`get` stores them —
        under the epoch taken before the load, so one that raced an
        invalidation is not kept. Batch loads do not single-flight; raises
        what ``load_many`` raised when a key has no usable entry.

        Stale entries (past the soft deadline, before the hard one) are
        served as :meth:`get` serves them: when every other key is fresh,
        at once, refreshed in the background (by ``start`` when given);
        otherwise they join the load, and are served stale if it fails."""
        found: dict[Any, Any] = {}
        missing: list[Any] = []
        stale: dict[Any, Any] = {}
        for key in keys:
            hit, value = self.peek(slot, key)
            if hit:
                found[key] = value
                continue
            value = self._usable(slot, key)
            if value is MISSING:
                missing.append(key)
            else:
                stale[key] = value

        def load_and_store(wanted: list[Any]) -> dict[Any, Any]:
            stamp = self.epochs.stamp()
            loaded = load_many(wanted)
            answers = {}
            for key in wanted:
                value = answers[key] = loaded.get(key, ABSENT)
                scopes = scopes_of_key(key)
                if scopes_of is not None and value is not ABSENT:
                    scopes += scopes_of(value)
                self.put(slot, key, value, stamp=stamp, scopes=scopes)
            return answers

        if missing:
            found.update(load_and_store(missing + list(stale)))
        elif stale:
            store = self._slots[slot]
            store.stats.stale_serves += len(stale)
            callinfo.note("cache", "stale")
            found.update(stale)
            due = self._due_for_refresh(store, stale)
            if due:

                def refresh() -> None:
                    try:
                        load_and_store(due)
                    except Exception as exc:
                        store.stats.refresh_failures += 1
                        log.warning("background refresh of %s failed (%s)", slot.value, exc)

                try:
                    if start is not None:
                        start(refresh)
                    else:
                        self._refresher.submit(refresh)
                except Exception:  # refused or shutting down: serve what we have
                    pass
        return found

    def _usable(self, slot: Slot, key: Hashable) -> Any:
        """A valid entry's value before its hard deadline, else :data:`MISSING`."""
        entry = self._slots[slot].entries.get(key)
        if (
            entry is None
            or self._clock() >= entry.hard_deadline
            or not self.epochs.is_current(entry.stamp, entry.scopes)
        ):
            return MISSING
        return entry.value

    def _due_for_refresh(self, store: _SlotStore, keys: Iterable[Hashable]) -> list[Any]:
        """Keys no refresh was started for lately; marks them started."""
        now = self._clock()
        due = []
        with store.lock:
            for key in keys:
                entry = store.entries.get(key)
                if entry is not None and now >= entry.retry_after:
                    entry.retry_after = now + min(1.0, store.policy.soft_ttl)
                    due.append(key)
        return due

    def get_stats(self) -> CacheStats:
        """A snapshot of every slot's counters and the invalidations by cause."""
        return CacheStats(
            slots={slot.value: replace(store.stats) for slot, store in self._slots.items()},
            invalidations=dict(self.epochs.invalidations),
        )

    # ---------------------------------------------------- answer validity

    def revision(self) -> int:
        """The current revision: the number of invalidations applied so far."""
        return self.epochs.stamp()

    def set_invalidation_observer(self, observer: Callable[[int, str], None]) -> None:
        """Call ``observer(revision, scope)`` for every invalidation from now
        on, in revision order (see :class:`Epochs`)."""
        self.epochs.on_bump = observer

    def answer_validity(self, sources: Iterable[Any]) -> AnswerValidity:
        """The validity of an answer made from ``sources`` (what
        :func:`callinfo.sources` returned for its call): valid at the current
        revision when no scope of the oldest source was invalidated since it
        was loaded, else only at that source's stamp; its lifetime is the
        shortest of theirs."""
        sources = list(sources)
        if not sources:
            return AnswerValidity(self.epochs.stamp(), (), None)
        if len(sources) == 1:  # most answers: one entry
            (source,) = sources
            revision = self.epochs.stamp()  # before the check: see is_current
            current = self.epochs.is_current(source.stamp, source.scopes)
            left = source.hard_deadline - self._clock()
            return AnswerValidity(
                revision if current else source.stamp, source.scopes, max(0.0, left)
            )
        revision = self.epochs.stamp()  # before the check: see is_current
        stamp = min(s.stamp for s in sources)
        scopes = tuple(dict.fromkeys(scope for s in sources for scope in s.scopes))
        valid_at = revision if self.epochs.is_current(stamp, scopes) else stamp
        left = min(s.hard_deadline for s in sources) - self._clock()
        return AnswerValidity(valid_at, scopes, max(0.0, left))

    def unkeepable_source(self) -> AnswerSource:
        """A source that makes an answer not to be kept by anyone (one that
        changes with time, not with an invalidation)."""
        return AnswerSource(self.epochs.stamp(), (), 0.0)

    # -------------------------------------------------------- invalidation

    def invalidate_environment(self, environment_id: str) -> None:
        self.epochs.bump(env_scope(environment_id), "environment")

    def invalidate_organization(self, organization_id: str) -> None:
        self.epochs.bump(org_scope(organization_id), "organization")

    def invalidate_project(self, project_id: str) -> None:
        self.epochs.bump(project_scope(project_id), "project")

    def invalidate_worker_versions(self, environment_id: str) -> None:
        self.epochs.bump(worker_versions_scope(environment_id), "worker_versions")

    def invalidate_flag(self, key: str) -> None:
        self.epochs.bump(flag_scope(key), "flag")

    def invalidate_all(self) -> None:
        self.epochs.bump(GLOBAL_SCOPE, "all")

    # ------------------------------------------------------------ internals

    def _begin(self, store: _SlotStore, key: Hashable) -> _Flight:
        flight = _Flight(stamp=self.epochs.stamp())
        store.flights[key] = flight
        return flight

    def _finish(self, store: _SlotStore, key: Hashable, flight: _Flight) -> None:
        if store.flights.get(key) is flight:
            del store.flights[key]
        flight.done.set()

    def _lead(
        self,
        store: _SlotStore,
        key: Hashable,
        flight: _Flight,
        load: Callable[[], Any],
        scopes: tuple[str, ...],
        scopes_of: Callable[[Any], tuple[str, ...]] | None,
    ) -> Any:
        store.stats.loads += 1
        try:
            value = load()
            all_scopes = scopes + (scopes_of(value) if scopes_of and value is not ABSENT else ())
        except BaseException as exc:
            store.stats.load_errors += 1
            flight.error = exc
            with store.lock:
                self._finish(store, key, flight)
            raise
        flight.value = value
        with store.lock:
            try:
                stored = self._store(store, key, value, flight.stamp, all_scopes)
                flight.source = stored or AnswerSource(flight.stamp, all_scopes, 0.0)
            finally:
                self._finish(store, key, flight)
        return value

    def _refresh(
        self,
        store: _SlotStore,
        key: Hashable,
        flight: _Flight,
        load: Callable[[], Any],
        scopes: tuple[str, ...],
        scopes_of: Callable[[Any], tuple[str, ...]] | None,
    ) -> None:
        store.stats.refreshes += 1
        try:
            self._lead(store, key, flight, load, scopes, scopes_of)
        except Exception as exc:
            store.stats.refresh_failures += 1
            log.warning(
                "background refresh of %s failed (%s); serving the cached answer "
                "until its hard TTL",
                store.slot.value,
                exc,
            )
            with store.lock:
                entry = store.entries.get(key)
                if entry is not None:
                    # Back off: one retry per second at most while it fails.
                    entry.retry_after = self._clock() + min(1.0, store.policy.soft_ttl)

    def _store(
        self, store: _SlotStore, key: Hashable, value: Any, stamp: int, scopes: tuple[str, ...]
    ) -> _Entry | None:
        """Store under ``store.lock`` and return the entry. Refuses (None) a
        fill that raced an invalidation."""
        policy = store.policy
        if not policy.stores:
            return None
        if not self.epochs.is_current(stamp, scopes):
            store.stats.discarded_fills += 1
            return None
        now = self._clock()
        if value is ABSENT:
            soft = hard = policy.negative_ttl
        else:
            soft, hard = policy.soft_ttl, policy.hard_ttl
        if soft <= 0:
            return None
        # Jitter shortens lifetimes (never lengthens them): a promise like
        # "no older than 1 s" holds for every entry.
        spread = 1.0 - policy.jitter * random.random()
        entry = _Entry(
            value=value,
            stamp=stamp,
            scopes=scopes,
            soft_deadline=now + soft * spread,
            hard_deadline=now + max(hard, soft) * spread,
        )
        store.entries.put(key, entry, now)
        return entry
