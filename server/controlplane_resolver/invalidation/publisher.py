"""Publishing an invalidation to every resolver process: ``pg_notify`` on
the control-plane primary, the channel every process LISTENs on (the
``Invalidate`` RPC's way to reach the other replicas and their watchers)."""

from __future__ import annotations

import logging
import threading

import psycopg

from controlplane_resolver.config import redact_dsn
from controlplane_resolver.errors import Unavailable
from controlplane_resolver.invalidation.protocol import CHANNEL, payload
from controlplane_resolver.storage.database import socket_kwargs

log = logging.getLogger(__name__)


class InvalidationPublisher:
    """One connection to the control-plane primary, opened on first use
    and again after a failure. :meth:`publish` waits up to ``timeout_s``
    and raises :class:`~controlplane_resolver.errors.Unavailable` when the
    primary does not take the notification."""

    def __init__(self, dsn: str, *, timeout_s: float) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        # Guards the connection: one notification at a time.
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def publish(self, kind: str, ident: str) -> None:
        """NOTIFY every listening resolver process of one invalidation."""
        if not self._lock.acquire(timeout=self._timeout_s):
            raise Unavailable(
                "the invalidation could not be published: earlier ones are still waiting for "
                "the control-plane primary; retry",
                reason="INVALIDATION_NOT_PUBLISHED",
            )
        try:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self._dsn,
                        autocommit=True,
                        application_name="controlplane-resolver:publisher",
                        **socket_kwargs(self._timeout_s),
                    )
                self._conn.execute(
                    "SELECT pg_notify(%s, %s)",
                    (CHANNEL, payload(kind, ident)),
                    prepare=False,
                )
            except psycopg.Error as exc:
                self._close()
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

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()
