"""Publishing to every resolver process: ``pg_notify`` on the control-plane
primary. Invalidations go on the channel every process LISTENs on (the
``Invalidate`` RPC's way to reach the other replicas and their watchers);
the listener's sync markers go on a channel of its own process, through the
same connection."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import psycopg

from controlplane_resolver import blocking
from controlplane_resolver.config import redact_dsn
from controlplane_resolver.errors import Unavailable
from controlplane_resolver.invalidation.protocol import CHANNEL, payload
from controlplane_resolver.storage.database import socket_kwargs

log = logging.getLogger(__name__)


#: How long a published notification waits for its echo (it takes
#: milliseconds): one not back by then is no longer recognised.
ECHO_WAIT_S = 10.0
#: Echoes awaited at most; beyond, the oldest is no longer recognised.
MAX_AWAITED = 10_000


class InvalidationPublisher:
    """One connection to the control-plane primary, opened on first use
    and again after a failure, that sends one notification at a time.
    :meth:`publish` sends an invalidation: it waits up to ``timeout_s`` and
    raises :class:`~controlplane_resolver.errors.Unavailable` when the
    primary does not take it. :meth:`send_marker` sends a listener's sync
    marker and says whether it went.

    The process that publishes has applied the invalidation already, and
    its own listener hears it again: :meth:`is_echo` recognises that echo (the
    same payload from this connection's backend within
    :data:`ECHO_WAIT_S`), so it is not applied twice. An echo not recognised
    (after a reconnect, or late) is applied again, which is harmless."""

    def __init__(self, dsn: str, *, timeout_s: float) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        # Guards the connection: one notification at a time.
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        # Guards the awaited echoes and the backend pid they come from.
        self._echo_lock = threading.Lock()
        self._pid: int | None = None
        #: (time sent, payload) of notifications whose echo is awaited.
        self._awaited: deque[tuple[float, str]] = deque()

    def is_echo(self, pid: int, text: str) -> bool:
        """Whether a notification (sending backend ``pid``, payload ``text``)
        is this publisher's own, sent within :data:`ECHO_WAIT_S`; each sent
        notification is recognised once."""
        with self._echo_lock:
            awaited = self._awaited
            cutoff = time.monotonic() - ECHO_WAIT_S
            while awaited and awaited[0][0] < cutoff:
                awaited.popleft()
            if pid != self._pid:
                return False
            for i, (_, payload_sent) in enumerate(awaited):
                if payload_sent == text:
                    del awaited[i]
                    return True
            return False

    def publish(self, kind: str, ident: str) -> None:
        """NOTIFY every listening resolver process of one invalidation."""
        with blocking.waiting():  # on the primary, from this thread
            if not self._lock.acquire(timeout=self._timeout_s):
                raise Unavailable(
                    "the invalidation could not be published: earlier notifications are still "
                    "waiting for the control-plane primary; retry",
                    reason="INVALIDATION_NOT_PUBLISHED",
                )
            try:
                self._send(CHANNEL, payload(kind, ident), echo=True)
            except psycopg.Error as exc:
                log.warning(
                    "could not publish an invalidation on %s (%s)",
                    redact_dsn(self._dsn),
                    type(exc).__name__,
                )
                raise Unavailable(
                    "the invalidation was applied here but could not be published to the other "
                    f"replicas: the control-plane primary did not take it ({type(exc).__name__}); "
                    "retry",
                    reason="INVALIDATION_NOT_PUBLISHED",
                ) from None
            finally:
                self._lock.release()

    def send_marker(self, channel: str, text: str, wait_s: float) -> str | None:
        """Send ``text`` on ``channel`` (a listener's sync marker; no echo is
        awaited), waiting up to ``wait_s`` for the notifications before it.
        None once sent; else why not (the error's name, or ``"busy"``). The
        caller declares the wait (:func:`~controlplane_resolver.blocking.waiting`)."""
        if not self._lock.acquire(timeout=max(0.0, wait_s)):
            return "busy: earlier notifications are still waiting for the primary"
        try:
            self._send(channel, text, echo=False)
        except psycopg.Error as exc:
            return type(exc).__name__
        finally:
            self._lock.release()
        return None

    def _send(self, channel: str, text: str, *, echo: bool) -> None:
        """Under the lock: send one notification, connecting first when
        needed; on an error the connection is closed and the error raised."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    application_name="controlplane-resolver:publisher",
                    **socket_kwargs(self._timeout_s),
                )
                with self._echo_lock:
                    self._pid = self._conn.info.backend_pid
                    self._awaited.clear()
            if echo:
                with self._echo_lock:
                    # Before it is sent: the echo may come back at once.
                    if len(self._awaited) >= MAX_AWAITED:
                        self._awaited.popleft()
                    self._awaited.append((time.monotonic(), text))
            self._conn.execute("SELECT pg_notify(%s, %s)", (channel, text), prepare=False)
        except psycopg.Error:
            self._close()
            raise

    def _close(self) -> None:
        with self._echo_lock:
            # The backend is gone: its pid may go to another session.
            self._pid = None
            self._awaited.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()
