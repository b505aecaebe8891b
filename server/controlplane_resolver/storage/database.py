"""One named database: a psycopg connection pool plus the translation of
driver failures into :class:`~controlplane_resolver.errors.Unavailable`.

Pools run in autocommit mode: every statement here is a single read, so a
transaction around it would only add a BEGIN/COMMIT round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from controlplane_resolver.config import redact_dsn
from controlplane_resolver.domain.roles import DatabaseRole
from controlplane_resolver.errors import StartCancelled, Unavailable

log = logging.getLogger(__name__)

Row = dict[str, Any]


class Database:
    """A pool to one database, named by its :class:`DatabaseRole`.

    ``label`` (host:port/dbname, no credentials) appears in logs and errors
    so an operator can tell which database failed.
    """

    def __init__(self, role: DatabaseRole, dsn: str, *, max_size: int, timeout_s: float) -> None:
        self.role = role
        self.label = redact_dsn(dsn)
        self.timeout_s = timeout_s
        statement_timeout_ms = int(timeout_s * 1000)
        self.pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            timeout=timeout_s,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": max(1, int(timeout_s)),
                "application_name": f"controlplane-resolver:{role.value}",
                "options": f"-c statement_timeout={statement_timeout_ms}",
            },
            name=f"controlplane-resolver-{role.value}",
            open=False,
            # No per-checkout check (ConnectionPool.check_connection): it
            # costs a round trip on every call. A connection that died
            # fails its query instead (UNAVAILABLE, retried by clients) and
            # the pool discards it on return.
            reconnect_timeout=24 * 3600,
        )

    def open(self, wait_s: float | None = None, cancel: threading.Event | None = None) -> None:
        """Open the pool; with ``wait_s``, wait until one connection works.

        Raises :class:`Unavailable` if the database does not answer in time,
        and :class:`StartCancelled` as soon as ``cancel`` is set (a SIGTERM
        during start-up must not wait for a database that is down).
        """
        self.pool.open(wait=False)
        if wait_s is None:
            return
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            try:
                # Not pool.wait(): a timed-out wait closes the pool for good.
                self.pool.putconn(self.pool.getconn(timeout=max(0.001, min(0.25, left))))
                return
            except PoolTimeout:
                if cancel is not None and cancel.is_set():
                    raise StartCancelled(
                        f"start-up cancelled while waiting for the {self.role.value} database"
                    ) from None
                if left <= 0.25:
                    raise Unavailable(
                        f"the {self.role.value} database ({self.label}) did not accept a "
                        f"connection within {wait_s:g}s: check that it is running and the DSN "
                        "is right"
                    ) from None

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def connection(self, timeout_s: float | None = None) -> Iterator[psycopg.Connection[Row]]:
        """A pooled connection; driver and pool failures become :class:`Unavailable`."""
        with (
            self.translated_errors(),
            self.pool.connection(timeout=timeout_s or self.timeout_s) as conn,
        ):
            yield conn

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Turn pool and driver failures into :class:`Unavailable`."""
        try:
            yield
        except PoolTimeout:
            raise self._unavailable("no connection was free or reachable in time") from None
        except psycopg.errors.QueryCanceled:
            raise self._unavailable("a statement exceeded the statement timeout") from None
        except psycopg.OperationalError as exc:
            raise self._unavailable(f"connection failed ({type(exc).__name__})") from None

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def fetch_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples (for statements whose column order is the contract)."""
        with self.connection() as conn:
            return conn.cursor(row_factory=tuple_row).execute(sql, params).fetchall()

    def _unavailable(self, what: str) -> Unavailable:
        log.warning("database %s (%s) unavailable: %s", self.role.value, self.label, what)
        return Unavailable(
            f"the {self.role.value} database ({self.label}) is unavailable: {what}; retry later",
            metadata={"database": self.role.value},
        )


class PinnedConnection:
    """One pool connection kept checked out for a serial user.

    The run reader of a database runs one batch at a time (coalescing.py),
    so it can keep a connection, and one cursor on it, instead of checking a
    connection out of the pool and back in and making a cursor for every
    query (a new cursor alone cost a fifth of the query's CPU here). A failed
    query returns the connection to the pool (which discards it if broken)
    and the next query takes a new one. Not thread-safe: one caller at a time.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: psycopg.Connection[Row] | None = None
        self._cursor: psycopg.Cursor[tuple[Any, ...]] | None = None

    def fetch_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples."""
        with self.db.translated_errors():
            if self._conn is None:
                self._conn = self.db.pool.getconn(timeout=self.db.timeout_s)
            try:
                if self._cursor is None:
                    self._cursor = self._conn.cursor(row_factory=tuple_row)
                return self._cursor.execute(sql, params).fetchall()
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        """Give the connection back to the pool (before the pool closes)."""
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            self.db.pool.putconn(conn)
