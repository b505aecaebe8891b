"""Cross-replica invalidation: ``LISTEN`` on the control-plane primary.

Every resolver process listens on its own connection and thread for the
notifications of :mod:`~controlplane_resolver.invalidation.protocol` and
applies each to its :class:`~.protocol.InvalidationTarget` (the cache).

Notifications are not durable: one sent while this process was not
listening is lost. So every (re)connect invalidates the whole cache before
reporting itself listening; the TTLs stay the backstop. ``LISTEN`` does not
work on a read replica, which is why this connects to the primary.

:meth:`InvalidationListener.sync` catches up with the database: it sends a
marker on a channel of this process's own (through the process's
:class:`~controlplane_resolver.invalidation.publisher.InvalidationPublisher`)
and waits until the listener has received it. PostgreSQL delivers
notifications in commit order, so by then every invalidation committed
before the call has been applied (a client that moves to this replica asks
for it, docs/near-cache.md).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from controlplane_resolver import blocking
from controlplane_resolver.config import redact_dsn
from controlplane_resolver.invalidation.protocol import (
    CHANNEL,
    InvalidationTarget,
    apply_notification,
)
from controlplane_resolver.logbounds import RateLimitedWarning

log = logging.getLogger(__name__)

#: Prefix of the channel each listener also LISTENs on for its own sync
#: markers (a random suffix per process: 27 + 32 characters, within
#: PostgreSQL's 63).
SYNC_CHANNEL_PREFIX = "controlplane_resolver_sync_"


class ListenerState(enum.Enum):
    STARTING = "starting"
    LISTENING = "listening"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ListenerStats:
    """What :meth:`InvalidationListener.get_stats` returns."""

    state: ListenerState
    connects: int
    notifications: int
    #: Sync markers sent (one may serve many calls that asked for sync).
    sync_markers: int


class InvalidationListener:
    """A daemon thread that keeps one ``LISTEN`` connection open.

    ``on_state`` is called (from the listener thread) on every state change;
    the app uses it to report the listener in health. A notification
    ``is_echo`` recognises (this process's own ``Invalidate``, applied when it
    was called) is not applied again. :meth:`sync` sends its markers with
    ``send_marker(channel, text, wait_s)`` (None once sent, else why not;
    :meth:`InvalidationPublisher.send_marker`); without it, :meth:`sync`
    returns False. Reconnects with
    exponential backoff (``min_backoff_s`` doubling up to ``max_backoff_s``).
    """

    def __init__(
        self,
        dsn: str,
        target: InvalidationTarget,
        *,
        on_state: Callable[[ListenerState], None] = lambda _s: None,
        is_echo: Callable[[int, str], bool] = lambda _pid, _payload: False,
        send_marker: Callable[[str, str, float], str | None] | None = None,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        poll_s: float = 0.1,
        ping_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._target = target
        self._on_state = on_state
        self._is_echo = is_echo
        self._marker_sender = send_marker
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        # poll_s bounds how long stop() waits; ping_s how soon a silently
        # dead connection is noticed.
        self._poll_s = poll_s
        self._ping_s = ping_s
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._conn: psycopg.Connection | None = None
        self.state = ListenerState.STARTING
        self.connects = 0
        self.notifications = 0
        # Sync markers: numbered and sent one at a time (_sync_lock guards the
        # two fields after it); _synced is the highest one delivered, or one
        # every marker up to it is as good as (a reconnect invalidates everything).
        self._sync_channel = SYNC_CHANNEL_PREFIX + uuid.uuid4().hex
        self._sync_lock = threading.Lock()
        self._sync_sent = 0
        #: When the newest marker's send began (monotonic; 0 after a failed
        #: send): a call that arrived before then shares that marker.
        self._sync_send_began = 0.0
        self._sync_failed = RateLimitedWarning(
            log,
            "could not send a sync marker to the control-plane primary (%s): calls "
            "asking for sync are answered without catching up until it answers",
        )
        self._synced = 0
        self._sync_done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="invalidation-listener", daemon=True)

    def get_stats(self) -> ListenerStats:
        return ListenerStats(self.state, self.connects, self.notifications, self._sync_sent)

    def start(self) -> None:
        self._thread.start()

    def wait_listening(self, timeout_s: float) -> bool:
        """True once the listener has connected at least once."""
        return self._listening.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._set_state(ListenerState.STOPPED)
        with self._sync_done:
            self._sync_done.notify_all()

    def sync(self, timeout_s: float) -> bool:
        """Wait until every invalidation committed before this call has been
        applied (at most ``timeout_s``). False when that cannot be known:
        not listening, the marker not sent, or not back in time."""
        send = self._marker_sender
        if self.state is not ListenerState.LISTENING or timeout_s <= 0 or send is None:
            return False
        with blocking.waiting():  # on the primary and the listener thread
            return self._sync(send, timeout_s)

    def _sync(self, send: Callable[[str, str, float], str | None], timeout_s: float) -> bool:
        arrived = time.monotonic()
        deadline = arrived + timeout_s
        if not self._sync_lock.acquire(timeout=timeout_s):
            return False
        try:
            if self._sync_send_began > arrived:
                # A marker whose send began after this call arrived covers
                # it too: calls waiting here share one, so a burst of them
                # costs about one pg_notify per round trip, not one each.
                marker: int | None = self._sync_sent
            else:
                marker = self._send_marker(send, deadline)
        finally:
            self._sync_lock.release()
        if marker is None:
            return False
        with self._sync_done:
            return (
                self._sync_done.wait_for(
                    lambda: self._synced >= marker or self._stop.is_set(),
                    max(0.0, deadline - time.monotonic()),
                )
                and self._synced >= marker
            )

    def _send_marker(
        self, send: Callable[[str, str, float], str | None], deadline: float
    ) -> int | None:
        """Under ``_sync_lock``: send the next marker and return its number;
        None when it could not be sent by ``deadline`` (then no call shares it)."""
        self._sync_sent += 1
        marker = self._sync_sent
        self._sync_send_began = time.monotonic()
        failure = send(self._sync_channel, str(marker), deadline - self._sync_send_began)
        if failure is not None:
            self._sync_send_began = 0.0
            self._sync_failed.warn(failure)
            return None
        return marker

    def _synced_up_to(self, marker: int) -> None:
        with self._sync_done:
            if marker > self._synced:
                self._synced = marker
                self._sync_done.notify_all()

    def _set_state(self, state: ListenerState) -> None:
        if state is not self.state:
            self.state = state
            self._on_state(state)

    def _run(self) -> None:
        backoff = self._min_backoff_s
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=5,
                    application_name="controlplane-resolver:listener",
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {self._sync_channel}")
                    # Markers sent so far may be lost; the clean cache below
                    # is newer than all of them.
                    sent = self._sync_sent
                    # Anything sent while we were not listening is lost:
                    # start from a clean cache.
                    self._target.invalidate_all()
                    self._synced_up_to(sent)
                    self.connects += 1
                    backoff = self._min_backoff_s
                    log.info(
                        "invalidation listener listening on %s (connect #%d; cache invalidated)",
                        redact_dsn(self._dsn),
                        self.connects,
                    )
                    self._set_state(ListenerState.LISTENING)
                    self._listening.set()
                    last_ping = time.monotonic()
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=self._poll_s):
                            if notify.channel == self._sync_channel:
                                # Every notification before it is applied.
                                self._synced_up_to(int(notify.payload))
                            elif not self._is_echo(notify.pid, notify.payload):
                                self.notifications += 1
                                apply_notification(self._target, notify.payload)
                        if time.monotonic() - last_ping >= self._ping_s:
                            # A dead server is not always noticed by waiting alone.
                            conn.execute("SELECT 1")
                            last_ping = time.monotonic()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._set_state(ListenerState.DISCONNECTED)
                log.warning(
                    "invalidation listener lost its connection to %s (%s); "
                    "reconnecting in %.1fs — cached answers fall back to their TTLs",
                    redact_dsn(self._dsn),
                    type(exc).__name__,
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
