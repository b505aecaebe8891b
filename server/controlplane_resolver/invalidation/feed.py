"""The invalidation feed: every invalidation this process applies, in
order, for the callers that watch it (``WatchInvalidations``,
docs/near-cache.md).

The feed keeps the latest ``capacity`` invalidations in one log that every
watcher reads from its own cursor: memory is bounded by the log, whatever
the number of watchers or their speed. A watcher that falls more than
``capacity`` invalidations behind, or whose caller takes more than
``send_timeout_s`` to accept one message, is dropped (its call cancelled):
it must start over, as after any broken stream.

Each watcher occupies the thread that serves it for as long as it watches,
so there are at most ``max_watchers`` at once; one more is refused with
:class:`FeedFull`.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


class FeedFull(Exception):
    """The feed has ``max_watchers`` watchers already."""


class EventKind(enum.Enum):
    START = "start"
    INVALIDATION = "invalidation"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class FeedEvent:
    """One message of a watch. ``revision`` is the invalidation's own, or
    the current revision for START and HEARTBEAT; ``scope`` is set for an
    INVALIDATION (a cache scope string), ``listening`` for the others."""

    kind: EventKind
    revision: int
    scope: str = ""
    listening: bool = False


@dataclass(frozen=True)
class FeedStats:
    """What :meth:`InvalidationFeed.get_stats` returns."""

    watchers: int
    watches_started: int
    events_published: int
    events_sent: int
    #: Watches ended by the feed, by reason: "slow" (behind, or not
    #: reading), "closed" (the process is stopping), "full" (refused).
    dropped: dict[str, int]


class _Watcher:
    """One watch's position in the log, read and written under the feed's
    condition."""

    def __init__(self, cursor: int, cancel: Callable[[], None]) -> None:
        self.cursor = cursor
        self.cancel = cancel
        self.listening_sent: bool | None = None
        self.last_sent = 0.0
        #: When the last message was handed to the caller's side; cleared
        #: when the watch asks for the next one (the send completed).
        self.handed_at: float | None = None
        self.dropped = False


class InvalidationFeed:
    """The log of invalidations and its watchers. Thread-safe.

    :meth:`publish` is called for every invalidation in revision order (the
    cache's invalidation observer); :meth:`watch` yields a watcher's events.
    """

    def __init__(
        self,
        *,
        revision: Callable[[], int],
        capacity: int = 4096,
        heartbeat_s: float = 1.0,
        max_watchers: int = 64,
        send_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: This process's id: revisions are comparable only within it.
        self.server_id = uuid.uuid4().hex
        self.heartbeat_s = heartbeat_s
        self._revision = revision
        self._capacity = capacity
        self._max_watchers = max_watchers
        self._send_timeout_s = send_timeout_s
        self._clock = clock
        # Guards the log, the sequence numbers, the watchers and the counters.
        self._cond = threading.Condition()
        #: (revision, scope) of the latest invalidations; the first has
        #: sequence number _first_seq.
        self._log: deque[tuple[int, str]] = deque(maxlen=capacity)
        self._first_seq = 0
        self._next_seq = 0
        self._listening = False
        self._closed = False
        self._watchers: set[_Watcher] = set()
        self._watches_started = 0
        self._events_sent = 0
        self._dropped = {"slow": 0, "closed": 0, "full": 0}
        self._monitor = threading.Thread(
            target=self._watch_senders, name="invalidation-feed", daemon=True
        )
        self._monitor.start()

    # ------------------------------------------------------------- writers

    def publish(self, revision: int, scope: str) -> None:
        """Append one invalidation (quick; never raises)."""
        with self._cond:
            if len(self._log) == self._capacity:
                self._first_seq += 1
            self._log.append((revision, scope))
            self._next_seq += 1
            self._cond.notify_all()

    def set_listening(self, listening: bool) -> None:
        """Whether this process hears the database's invalidations; every
        watcher is told at once when it changes."""
        with self._cond:
            if listening != self._listening:
                self._listening = listening
                self._cond.notify_all()

    def close(self) -> None:
        """End every watch (they end without error) and refuse new ones."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------- readers

    def watch(self, cancel: Callable[[], None]) -> Iterator[FeedEvent]:
        """A watcher's events: START, then every invalidation published
        after it in order, with a HEARTBEAT after each quiet
        ``heartbeat_s`` and whenever listening changes. Ends when the feed
        closes or drops the watcher (``cancel`` is then called to end its
        call). Raises :class:`FeedFull` at once when there are
        ``max_watchers`` already."""
        with self._cond:
            if self._closed:
                return
            if len(self._watchers) >= self._max_watchers:
                self._dropped["full"] += 1
                raise FeedFull(
                    f"{self._max_watchers} watchers already (RESOLVER_WATCH_MAX_STREAMS)"
                )
            watcher = _Watcher(self._next_seq, cancel)
            self._watchers.add(watcher)
            self._watches_started += 1
            start = FeedEvent(EventKind.START, self._revision(), listening=self._listening)
        try:
            yield self._sent(watcher, start)
            while True:
                event = self._next(watcher)
                if event is None:
                    return
                yield self._sent(watcher, event)
        finally:
            with self._cond:
                self._watchers.discard(watcher)

    def _sent(self, watcher: _Watcher, event: FeedEvent) -> FeedEvent:
        with self._cond:
            now = self._clock()
            watcher.last_sent = now
            watcher.handed_at = now
            self._events_sent += 1
            if event.kind is not EventKind.INVALIDATION:
                watcher.listening_sent = event.listening
        return event

    def _next(self, watcher: _Watcher) -> FeedEvent | None:
        """The watcher's next event, waiting up to a heartbeat for one; None
        when the watch must end."""
        with self._cond:
            watcher.handed_at = None
            while True:
                if self._closed:
                    self._dropped["closed"] += 1
                    return None
                if watcher.dropped:
                    return None
                if watcher.cursor < self._first_seq:
                    self._drop(watcher, f"fell more than {self._capacity} invalidations behind")
                    return None
                if watcher.cursor < self._next_seq:
                    revision, scope = self._log[watcher.cursor - self._first_seq]
                    watcher.cursor += 1
                    return FeedEvent(EventKind.INVALIDATION, revision, scope)
                quiet_for = self._clock() - watcher.last_sent
                if watcher.listening_sent != self._listening or quiet_for >= self.heartbeat_s:
                    return FeedEvent(
                        EventKind.HEARTBEAT, self._revision(), listening=self._listening
                    )
                self._cond.wait(self.heartbeat_s - quiet_for)

    def _drop(self, watcher: _Watcher, why: str) -> None:
        """Under the condition: end a watcher and cancel its call."""
        if watcher.dropped:
            return
        watcher.dropped = True
        self._dropped["slow"] += 1
        log.warning("dropped an invalidation watcher that %s; it must reconnect", why)
        try:
            watcher.cancel()
        except Exception:  # the call may be over already
            pass
        self._cond.notify_all()

    def _watch_senders(self) -> None:
        """Drop watchers whose caller stopped accepting messages (a send
        that never completes holds its thread)."""
        while True:
            with self._cond:
                if self._closed:
                    return
                now = self._clock()
                for watcher in list(self._watchers):
                    handed = watcher.handed_at
                    if watcher.cursor < self._first_seq:
                        # Its thread may be stuck in a send: end its call.
                        self._drop(watcher, f"fell more than {self._capacity} invalidations behind")
                    elif handed is not None and now - handed > self._send_timeout_s:
                        self._drop(
                            watcher, f"did not accept a message for {self._send_timeout_s:.0f}s"
                        )
                self._cond.wait(min(1.0, self._send_timeout_s / 4))

    def get_stats(self) -> FeedStats:
        with self._cond:
            return FeedStats(
                watchers=len(self._watchers),
                watches_started=self._watches_started,
                events_published=self._next_seq,
                events_sent=self._events_sent,
                dropped=dict(self._dropped),
            )
