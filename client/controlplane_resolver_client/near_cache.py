"""The near-cache: answers kept in the engine's own memory, valid while a
``WatchInvalidations`` stream says so (docs/near-cache.md).

:class:`NearCache` holds the answers and the stream's state and does no
I/O; :class:`StreamWatcher` (threads) and the asyncio client's task feed it
the stream's messages. The rules, which are those of the server's own cache:

* Revisions count one server process's invalidations. Answers and stream
  messages name their process (``server_id``); an answer from another
  process than the stream's is returned but never kept.
* An answer carries ``valid_at``: no invalidation of its scopes up to that
  revision replaced it. It is kept only while no invalidation of one of its
  scopes (or of everything) with a higher revision has been seen, and only
  when ``valid_at`` is at least the stream's starting revision (the client
  cannot know what it missed before).
* An answer that is not kept removes the key's entry: having returned
  it, the client never answers an older one from memory after it.
* It is answered from memory only while the stream is live: started, heard
  from within three heartbeat intervals, and its server listening to the
  database. A broken stream drops everything at once; nothing is answered
  from memory until a new stream has started.
* Every answer expires after the smaller of the client's ``ttl_s`` and the
  server's ``max_age_ms`` for it.

One rule more, for the clients: an RPC answer from another process than
the last answer returned (:meth:`NearCache.moved`) is asked again with sync
metadata (:data:`~.client.SYNC_METADATA`), so that a lookup never returns an
older answer than before, even across a move to another replica.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import grpc

from .v1 import resolver_pb2 as pb

log = logging.getLogger(__name__)

#: A stream silent for this many heartbeat intervals is taken as broken.
SILENT_INTERVALS = 3
#: A stream that has not started this long after it was opened is taken as
#: broken (the server is hung, or queues the stream).
START_TIMEOUT_S = 10.0
#: Invalidations remembered at most; beyond, everything is dropped instead.
MAX_SCOPES = 100_000
#: Streams in a row that end before they start (the server refuses them:
#: too many watchers, draining) before the client renews its pinned channel,
#: which then picks an address afresh.
RENEW_AFTER = 5
#: What :meth:`NearCache.get` returns when it has no answer to give.
MISSING: Any = object()


class StreamState(enum.Enum):
    """Where the near-cache's watch stream stands."""

    #: No stream yet, or reconnecting after one broke: nothing is answered
    #: from memory.
    CONNECTING = "connecting"
    #: Started and heard from: answers come from memory.
    LIVE = "live"
    #: Started, but the server does not hear the database's invalidations
    #: now: nothing is answered from memory.
    NOT_LISTENING = "not_listening"
    CLOSED = "closed"


@dataclass(frozen=True)
class NearCacheStats:
    """What :meth:`NearCache.get_stats` returns (counters since creation)."""

    state: StreamState
    entries: int
    hits: int
    #: Lookups answered by an RPC (no entry, expired, replaced, or the
    #: stream not live).
    misses: int
    stores: int
    #: Answers returned but not kept: from another server process than the
    #: stream's, older than an invalidation seen, or the stream not live.
    not_kept: int
    invalidations: int
    #: Streams started (the first and every reconnect).
    stream_starts: int
    #: Streams that broke (each dropped every answer).
    stream_breaks: int
    #: Times the pinned channel was renewed after refused streams.
    channel_renewals: int


@dataclass
class _Entry:
    value: Any
    valid_at: int
    scopes: tuple[tuple[int, str], ...]
    expires_at: float


class NearCache:
    """Answers by key, and the state of the stream that keeps them valid.
    Thread-safe: reads take no lock; the stream's messages and stores
    serialise on one lock. The counters of :meth:`get_stats` are plain
    integers, approximate under concurrent lookups. One client's own: give
    each client a NearCache of its own."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        # Guards every write: entries, the stream's state, the seen revisions.
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.state = StreamState.CONNECTING
        self._server_id = ""
        #: The server process of the last answer a lookup returned, from
        #: memory or by RPC ("" before any): see :meth:`moved`. One
        #: attribute written without the lock: a racing lookup can only
        #: leave another process's id, which costs a sync, never an old answer.
        self._answered_by = ""
        #: Answers from memory only before this time (the stream's silence
        #: limit); 0 while the stream is not live.
        self._live_until = 0.0
        self._silence_s = 0.0
        #: Lowest valid_at an answer may have: the stream's starting
        #: revision, raised as old invalidations are forgotten.
        self._floor = 0
        #: Revision of the last invalidation of everything.
        self._global = 0
        #: Latest invalidation revision by scope, and (time, scope, revision)
        #: in arrival order to forget those older than any entry.
        self._seen: dict[tuple[int, str], int] = {}
        self._history: deque[tuple[float, tuple[int, str], int]] = deque()
        self._hits = self._misses = self._stores = self._not_kept = 0
        self._invalidations = self._starts = self._breaks = self._renewals = 0
        #: When the stream was last heard from (or opened): a stream silent
        #: past its limit, started or not, is broken.
        self._heard_at = clock()
        self.owner: object | None = None

    # ---------------------------------------------------------------- reads

    def get(self, key: Hashable) -> Any:
        """The kept answer for ``key``, or :data:`MISSING`."""
        now = self._clock()
        entry = self._entries.get(key)
        if (
            entry is None
            or now >= self._live_until
            or now >= entry.expires_at
            or not self._current(entry.valid_at, entry.scopes)
        ):
            self._misses += 1
            return MISSING
        self._hits += 1
        # (a stream that broke meanwhile: unknown, so the next RPC answer syncs)
        self._answered_by = self._server_id or "?"
        return entry.value

    def _current(self, valid_at: int, scopes: tuple[tuple[int, str], ...]) -> bool:
        if valid_at < self._global or valid_at < self._floor:
            return False
        seen = self._seen.get
        return all(seen(scope, 0) <= valid_at for scope in scopes)

    def put(self, key: Hashable, value: Any, revision: pb.AnswerRevision) -> bool:
        """Keep ``value`` under ``key`` if the rules allow (module
        docstring); returns whether it was kept."""
        now = self._clock()
        scopes = tuple((s.kind, s.id) for s in revision.scopes)
        lifetime = self.ttl_s
        if revision.HasField("max_age_ms"):
            lifetime = min(lifetime, revision.max_age_ms / 1000)
        with self._lock:
            if (
                lifetime <= 0
                or now >= self._live_until
                or revision.server_id != self._server_id
                or not self._current(revision.valid_at, scopes)
            ):
                # This answer is returned: an entry kept before it may be
                # older (another process's view), so it goes too.
                self._entries.pop(key, None)
                self._not_kept += 1
                return False
            entries = self._entries
            entries[key] = _Entry(value, revision.valid_at, scopes, now + lifetime)
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
            self._stores += 1
            return True

    # ------------------------------------------------------- stream messages

    def on_message(self, message: pb.WatchInvalidationsResponse) -> None:
        """Apply one message of the watch stream."""
        now = self._clock()
        event = message.WhichOneof("event")
        with self._lock:
            self._heard_at = now
            if event == "start":
                self._entries.clear()
                self._seen.clear()
                self._history.clear()
                self._server_id = message.server_id
                self._floor = message.revision
                self._global = 0
                interval = max(1, message.start.heartbeat_interval_ms) / 1000
                self._silence_s = SILENT_INTERVALS * interval
                self._starts += 1
                self._set_listening(message.start.listening, now)
                return
            if message.server_id != self._server_id:
                self._break("the stream changed server without a new start")
                return
            if event == "invalidation":
                self._invalidations += 1
                scope = message.invalidation.scope
                if scope.kind == pb.SCOPE_KIND_ALL:
                    self._global = message.revision
                elif len(self._seen) >= MAX_SCOPES:
                    # Too many to remember: drop everything instead.
                    self._global = message.revision
                    self._entries.clear()
                    self._seen.clear()
                    self._history.clear()
                else:
                    key = (scope.kind, scope.id)
                    self._seen[key] = message.revision
                    self._history.append((now, key, message.revision))
                self._forget_before(now - self.ttl_s)
                if self.state is StreamState.LIVE:
                    self._live_until = now + self._silence_s
            elif event == "heartbeat":
                self._set_listening(message.heartbeat.listening, now)

    def _set_listening(self, listening: bool, now: float) -> None:
        if listening:
            self.state = StreamState.LIVE
            self._live_until = now + self._silence_s
        else:
            # Invalidations may be missed from now on: keep nothing.
            self.state = StreamState.NOT_LISTENING
            self._live_until = 0.0
            self._entries.clear()

    def _forget_before(self, cutoff: float) -> None:
        """Forget invalidations older than any entry can be; answers valid
        only before them are refused from now on (the floor)."""
        history = self._history
        while history and history[0][0] < cutoff:
            _, key, revision = history.popleft()
            # The floor first: a reader never sees the scope forgotten
            # before the floor covers it.
            self._floor = max(self._floor, revision)
            if self._seen.get(key) == revision:
                del self._seen[key]

    def on_broken(self, why: str) -> None:
        """The stream broke (or closed): drop everything, answer nothing from
        memory until a new stream starts."""
        with self._lock:
            self._break(why)

    def _break(self, why: str) -> None:
        if self.state is StreamState.CLOSED:
            return
        if self.state is not StreamState.CONNECTING:
            self._breaks += 1
            log.info("near-cache stream broke (%s): answering by RPC until it is back", why)
        self.state = StreamState.CONNECTING
        self._live_until = 0.0
        self._server_id = ""
        self._entries.clear()

    def close(self) -> None:
        with self._lock:
            self.state = StreamState.CLOSED
            self._live_until = 0.0
            self._entries.clear()

    def moved(self, response: Any) -> bool:
        """Whether an RPC ``response`` (None for NOT_FOUND) comes from
        another server process than the last answer returned: that process
        may not yet have applied an invalidation the other had, so the
        lookup asks again with sync metadata."""
        server = response.revision.server_id if response is not None else ""
        return bool(server) and bool(self._answered_by) and server != self._answered_by

    def answered(self, response: Any) -> None:
        """Note the server process of an RPC ``response`` the lookup returns
        (None and answers without a server id are not noted)."""
        if response is not None and response.revision.server_id:
            self._answered_by = response.revision.server_id

    def live(self) -> bool:
        """Whether answers are kept and served from memory now."""
        return self._clock() < self._live_until

    def on_opening(self) -> None:
        """A new stream is being opened: its start is due within
        :data:`START_TIMEOUT_S`."""
        with self._lock:
            self._heard_at = self._clock()

    def silent_for(self) -> float:
        """Seconds past the stream's silence limit (negative while within
        it): three heartbeat intervals once started, :data:`START_TIMEOUT_S`
        before."""
        started = self._server_id != ""
        limit = self._silence_s if started else START_TIMEOUT_S
        return self._clock() - self._heard_at - limit

    def get_stats(self) -> NearCacheStats:
        return NearCacheStats(
            state=self.state,
            entries=len(self._entries),
            hits=self._hits,
            misses=self._misses,
            stores=self._stores,
            not_kept=self._not_kept,
            invalidations=self._invalidations,
            stream_starts=self._starts,
            stream_breaks=self._breaks,
            channel_renewals=self._renewals,
        )

    def on_renewed(self) -> None:
        """The client renewed its pinned channel (counted)."""
        self._renewals += 1


#: Reconnect delays of the watch stream: doubling from the first, capped.
RECONNECT_FIRST_S = 0.05
RECONNECT_CAP_S = 2.0
#: Refusals that retrying will not fix: logged once as a warning.
REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED: "the client's token is missing or not accepted",
    grpc.StatusCode.PERMISSION_DENIED: "the client's token may not call WatchInvalidations",
    grpc.StatusCode.UNIMPLEMENTED: "the server is older than WatchInvalidations",
}


def warn_refused(code: grpc.StatusCode | None, warned: set[grpc.StatusCode]) -> None:
    """Log once per code why the near-cache cannot watch (lookups still work,
    by RPC)."""
    if code is not None and code in REFUSALS and code not in warned:
        warned.add(code)
        log.warning(
            "near-cache off: %s (%s); every lookup is an RPC until that changes",
            REFUSALS[code],
            code.name,
        )


class StreamWatcher:
    """Keeps one ``WatchInvalidations`` stream open on a daemon thread and
    feeds its messages to ``cache``; reconnects with backoff. A second
    thread cancels a stream silent past its limit."""

    def __init__(
        self,
        cache: NearCache,
        open_stream: Callable[[], Any],
        renew: Callable[[], None] | None = None,
    ) -> None:
        """``renew()``, when given, replaces the channel ``open_stream`` uses
        after :data:`RENEW_AFTER` streams in a row ended before starting."""
        self._cache = cache
        self._open_stream = open_stream
        self._renew = renew
        self._closed = threading.Event()
        # Guards _call: the stream being read, cancelled by the monitor or close().
        self._lock = threading.Lock()
        self._call: Any = None
        self._warned: set[grpc.StatusCode] = set()
        self._reader = threading.Thread(target=self._read, name="near-cache-stream", daemon=True)
        self._monitor = threading.Thread(
            target=self._watch_silence, name="near-cache-monitor", daemon=True
        )

    def start(self) -> None:
        self._reader.start()
        self._monitor.start()

    def close(self) -> None:
        self._closed.set()
        self._cache.close()
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def _read(self) -> None:
        delay = RECONNECT_FIRST_S
        unstarted = 0
        while not self._closed.is_set():
            why = "ended by the server"
            started = False
            try:
                self._cache.on_opening()
                call = self._open_stream()
                with self._lock:
                    self._call = call
                if self._closed.is_set():
                    call.cancel()
                for message in call:
                    self._cache.on_message(message)
                    started = True
                    delay = RECONNECT_FIRST_S
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                why = f"{code.name if code else 'error'}: {getattr(exc, 'details', lambda: '')()}"
                warn_refused(code, self._warned)
            except Exception as exc:  # never let the thread die
                why = f"{type(exc).__name__}: {exc}"
            finally:
                with self._lock:
                    self._call = None
            self._cache.on_broken(why)
            unstarted = 0 if started else unstarted + 1
            if unstarted >= RENEW_AFTER and self._renew is not None:
                unstarted = 0
                self._renew()
                self._cache.on_renewed()
                delay = RECONNECT_FIRST_S  # a new channel starts afresh
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, RECONNECT_CAP_S)

    def _watch_silence(self) -> None:
        while not self._closed.wait(0.1):
            with self._lock:
                call = self._call
            if call is not None and self._cache.silent_for() > 0:
                self._cache.on_broken("silent past its limit")
                call.cancel()  # the reader reconnects
