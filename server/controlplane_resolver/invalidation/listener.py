"""Cross-replica invalidation: ``LISTEN`` on the control-plane primary.

Every resolver process listens on its own connection and thread for the
notifications of :mod:`~controlplane_resolver.invalidation.protocol` and
applies each to its :class:`~.protocol.InvalidationTarget` (the cache).

Notifications are not durable: one sent while this process was not
listening is lost. So every (re)connect invalidates the whole cache before
reporting itself listening; the TTLs stay the backstop. ``LISTEN`` does not
work on a read replica, which is why this connects to the primary.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from controlplane_resolver.config import redact_dsn
from controlplane_resolver.invalidation.protocol import (
    CHANNEL,
    InvalidationTarget,
    apply_notification,
)

log = logging.getLogger(__name__)


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


class InvalidationListener:
    """A daemon thread that keeps one ``LISTEN`` connection open.

    ``on_state`` is called (from the listener thread) on every state change;
    the app uses it to report the listener in health. A notification
    ``is_echo`` recognises (this process's own ``Invalidate``, applied when it
    was called) is not applied again. Reconnects with
    exponential backoff (``min_backoff_s`` doubling up to ``max_backoff_s``).
    """

    def __init__(
        self,
        dsn: str,
        target: InvalidationTarget,
        *,
        on_state: Callable[[ListenerState], None] = lambda _s: None,
        is_echo: Callable[[int, str], bool] = lambda _pid, _payload: False,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        poll_s: float = 0.1,
        ping_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._target = target
        self._on_state = on_state
        self._is_echo = is_echo
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
        self._thread = threading.Thread(target=self._run, name="invalidation-listener", daemon=True)

    def get_stats(self) -> ListenerStats:
        return ListenerStats(self.state, self.connects, self.notifications)

    def start(self) -> None:
        self._thread.start()

    def wait_listening(self, timeout_s: float) -> bool:
        """True once the listener has connected at least once."""
        return self._listening.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._set_state(ListenerState.STOPPED)

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
                    # Anything sent while we were not listening is lost:
                    # start from a clean cache.
                    self._target.invalidate_all()
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
                            if not self._is_echo(notify.pid, notify.payload):
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
