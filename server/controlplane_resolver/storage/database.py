"""One named database: a psycopg connection pool, the translation of driver
failures into :class:`~controlplane_resolver.errors.Unavailable`, and the
guards that keep a slow, dead or hung database from taking the server down
with it (docs/operations.md, "When a database is slow, down or hung"):

* **a bulkhead**: at most ``max_waiting`` calls wait on this database at
  once (:meth:`Database.admit`); the next one is refused at once with
  ``Unavailable`` and a retry delay, so calls that need no database (cache
  hits, pure RPCs, health) always find a worker thread;
* **work off the caller's thread**: queries run on the database's own
  threads (:meth:`Database.start`, at most ``pool max size`` at once), so a
  caller waits only as long as its deadline allows, and a query whose
  server never answers is ended by closing its socket (:class:`_Reaper`)
  after the database timeout: ``statement_timeout`` is enforced by the
  server, which cannot enforce it while hung;
* **cancellation**: work started under a :class:`QueryHandle`
  (:func:`cancellable`) exposes the connection of its running statement,
  and :meth:`QueryHandle.cancel` asks the server to cancel it (a loaded
  answer nobody waits for any more is not worth a connection and a lock);
* **a circuit**: after :data:`CIRCUIT_THRESHOLD` consecutive connection
  failures the database is known down: calls are refused at once and a
  background probe connects every ``probe_interval_s`` until it answers;
* **socket timeouts** (``connect_timeout``, TCP keepalives,
  ``tcp_user_timeout``) and a reconnect backoff that never grows past
  :data:`RECONNECT_CAP_S`.

Pools run in autocommit mode: every statement here is a single read, so a
transaction around it would only add a BEGIN/COMMIT round trip.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from controlplane_resolver import blocking, callinfo
from controlplane_resolver.config import redact_dsn
from controlplane_resolver.domain.roles import DatabaseRole
from controlplane_resolver.errors import Shed, StartCancelled, Unavailable

log = logging.getLogger(__name__)

Row = dict[str, Any]

#: Consecutive connection failures that open a database's circuit.
CIRCUIT_THRESHOLD = 3
#: psycopg_pool doubles its reconnect delay without a cap; a series of
#: attempts is given up after this long and a new one (from a 1 s delay)
#: starts on the next demand, so no delay between attempts exceeds it.
RECONNECT_CAP_S = 2.0
#: A database whose last successful query is this recent answers: a call
#: waits briefly for a place in its bulkhead, and a run read leads its
#: batch on its own thread (coalescing.py).
ANSWERED_LATELY_S = 0.1
#: A query still running this long past the database timeout has a server
#: that does not answer: its socket is closed (docs/operations.md).
REAP_MARGIN_S = 1.0


def socket_kwargs(timeout_s: float) -> dict[str, Any]:
    """Client-side socket timeouts (libpq parameters): a server that stops
    answering is noticed by the client, whatever the server enforces."""
    return {
        "connect_timeout": max(2, round(timeout_s)),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        # Unacknowledged data older than this breaks the connection.
        "tcp_user_timeout": int((timeout_s + REAP_MARGIN_S) * 1000),
    }


class _Threads:
    """A few daemon threads running submitted work. Daemon threads: a
    query stuck on a hung server must not keep the process from exiting
    when it is told to (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = 0
        self._count = 0
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._count += 1
                threading.Thread(
                    target=self._run, name=f"{self._name}-{self._count}", daemon=True
                ).start()
        self._queue.put(work)

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                work()
            except BaseException:  # pragma: no cover - work reports its own errors
                log.exception("database work failed")
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        with self._lock:
            n = self._count
        for _ in range(n):
            self._queue.put(None)


class _Circuit:
    """Closed while the database answers; open after consecutive connection
    failures, until a background probe connects."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self.failures = 0
        self.open = False
        self.opened_total = 0
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None

    def success(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.open or self.failures < CIRCUIT_THRESHOLD or self._stop.is_set():
                return
            self.open = True
            self.opened_total += 1
            self._prober = threading.Thread(
                target=self._probe, name=f"probe-{self._db.role.value}", daemon=True
            )
        log.warning(
            "database %s (%s): %d connection failures in a row; refusing its calls at once "
            "and probing every %.1fs until it answers",
            self._db.role.value,
            self._db.label,
            CIRCUIT_THRESHOLD,
            self._db.probe_interval_s,
        )
        self._prober.start()

    def _probe(self) -> None:
        db = self._db
        while not self._stop.wait(db.probe_interval_s):
            try:
                with psycopg.connect(
                    db.dsn, autocommit=True, **socket_kwargs(db.timeout_s)
                ) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error:
                continue
            break
        if self._stop.is_set():
            return
        # Replace pooled connections the outage broke before calls get them.
        try:
            db.pool.check()
        except Exception:  # pragma: no cover - best effort
            log.debug("pool check after recovery failed", exc_info=True)
        with self._lock:
            self.open = False
            self.failures = 0
        log.warning("database %s (%s) answers again", db.role.value, db.label)

    def close(self) -> None:
        self._stop.set()


def _reporting_connection(circuit: _Circuit) -> type[psycopg.Connection[Any]]:
    """A connection class whose failed connects count against ``circuit``:
    the pool retries them in the background, and a database that refuses
    connections must be known down without waiting for a caller to time out."""

    class ReportingConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().connect(*args, **kwargs)
            except psycopg.OperationalError:
                circuit.failure()
                raise

    return ReportingConnection


class _Reaper:
    """Closes the socket of a query that has run longer than the database
    timeout plus a margin: its server is not answering (hung, or the
    network dropped it), and only the client can end the wait."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._busy: dict[int, tuple[psycopg.Connection[Any], float]] = {}
        self._stop = threading.Event()
        self.reaped = 0
        self._thread = threading.Thread(
            target=self._run, name=f"reaper-{db.role.value}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def watch(self, conn: psycopg.Connection[Any]) -> None:
        """``conn`` starts a statement; pair with :meth:`unwatch`."""
        self._busy[id(conn)] = (conn, time.monotonic())

    def unwatch(self, conn: psycopg.Connection[Any]) -> None:
        """``conn``'s statement ended (or its socket was closed already)."""
        self._busy.pop(id(conn), None)

    def _run(self) -> None:
        limit = self._db.timeout_s + REAP_MARGIN_S
        while not self._stop.wait(0.25):
            now = time.monotonic()
            for key, (conn, since) in list(self._busy.items()):
                if now - since > limit and self._busy.pop(key, None) is not None:
                    self.reaped += 1
                    log.warning(
                        "database %s (%s): no answer for %.1fs; closing the connection",
                        self._db.role.value,
                        self._db.label,
                        now - since,
                    )
                    _shut(conn)

    def close(self) -> None:
        self._stop.set()


def _shut(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down from another thread: the thread
    blocked reading it gets an error at once."""
    try:
        fd = conn.pgconn.socket
        s = socket.socket(fileno=os.dup(fd))
    except Exception:
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()


_current = threading.local()


class QueryHandle:
    """The statement a piece of database work is running, so that another
    thread can cancel it. Work runs under it with :func:`cancellable`; a
    statement started after :meth:`cancel` is refused before it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: tuple[Database, psycopg.Connection[Any]] | None = None
        self.cancelled = False

    def begin(self, db: Database, conn: psycopg.Connection[Any]) -> None:
        """``conn`` starts a statement of this work; pair with :meth:`end`.
        Raises :class:`Unavailable` (and marks nothing) once cancelled."""
        with self._lock:
            if self.cancelled:
                raise db._unavailable("its statement was cancelled: no caller waits for it")
            self._running = (db, conn)

    def end(self) -> None:
        """The statement :meth:`begin` marked has ended."""
        with self._lock:
            self._running = None

    def cancel(self) -> None:
        """Cancel the running statement (if any) and refuse the next ones.
        Returns at once: the request goes out on a thread of its own."""
        with self._lock:
            self.cancelled = True
            running = self._running
        if running is not None:
            db, conn = running
            db.cancel_statement(conn)


def cancellable(handle: QueryHandle | None) -> _Cancellable:
    """Run the block's statements (on this thread) under ``handle``."""
    return _Cancellable(handle)


class _Cancellable:
    """:func:`cancellable`'s block (a class, not a generator: it is entered
    once per coalesced run read)."""

    __slots__ = ("_handle", "_previous")

    def __init__(self, handle: QueryHandle | None) -> None:
        self._handle = handle
        self._previous: QueryHandle | None = None

    def __enter__(self) -> None:
        self._previous = getattr(_current, "handle", None)
        _current.handle = self._handle

    def __exit__(self, *exc: object) -> None:
        _current.handle = self._previous


class _Statement:
    """A statement on ``conn``, for the block: watched by the reaper,
    cancellable by the current :class:`QueryHandle` (entering raises
    :class:`Unavailable` once that handle is cancelled). A class, not a
    generator: every coalesced run read enters one."""

    __slots__ = ("_conn", "_db", "_handle")

    def __init__(self, db: Database, conn: psycopg.Connection[Any]) -> None:
        self._db = db
        self._conn = conn
        self._handle: QueryHandle | None = getattr(_current, "handle", None)

    def __enter__(self) -> None:
        self._db._reaper.watch(self._conn)
        if self._handle is not None:
            try:
                self._handle.begin(self._db, self._conn)
            except BaseException:
                self._db._reaper.unwatch(self._conn)
                raise

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.end()
        self._db._reaper.unwatch(self._conn)


class Database:
    """A pool to one database, named by its :class:`DatabaseRole`.

    ``label`` (host:port/dbname, no credentials) appears in logs and errors
    so an operator can tell which database failed.
    """

    def __init__(
        self,
        role: DatabaseRole,
        dsn: str,
        *,
        max_size: int,
        timeout_s: float,
        max_waiting: int = 8,
        probe_interval_s: float = 1.0,
    ) -> None:
        self.role = role
        self.dsn = dsn
        self.label = redact_dsn(dsn)
        self.timeout_s = timeout_s
        self.max_size = max_size
        self.probe_interval_s = probe_interval_s
        self._waiting = threading.BoundedSemaphore(max_waiting)
        self.max_waiting = max_waiting
        #: Work running on this database's threads at once: beyond the
        #: pool's size it waits for a connection there, not on a caller.
        self.max_running = max(max_size, max_waiting)
        self._running = threading.BoundedSemaphore(self.max_running)
        self._threads = _Threads(f"db-{role.value}")
        self.circuit = _Circuit(self)
        self._reaper = _Reaper(self)
        #: When a query last succeeded (time.monotonic).
        self.last_success = 0.0
        #: Calls refused by the bulkhead or the open circuit (for metrics).
        self.refused = {"bulkhead": 0, "circuit": 0}
        self._admission = _Admission(self)
        statement_timeout_ms = int(timeout_s * 1000)
        self.pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            timeout=timeout_s,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": f"controlplane-resolver:{role.value}",
                "options": f"-c statement_timeout={statement_timeout_ms}",
                **socket_kwargs(timeout_s),
            },
            name=f"controlplane-resolver-{role.value}",
            connection_class=_reporting_connection(self.circuit),
            open=False,
            # No per-checkout check (ConnectionPool.check_connection): it
            # costs a round trip on every call. A connection that died
            # fails its query instead (UNAVAILABLE, retried by clients) and
            # the pool discards it on return.
            reconnect_timeout=RECONNECT_CAP_S,
        )

    @property
    def reaped(self) -> int:
        """Connections closed because their server did not answer."""
        return self._reaper.reaped

    def set_limits(self, *, max_waiting: int, probe_interval_s: float) -> None:
        """Resize the bulkhead and the probe interval (before :meth:`open`)."""
        self._waiting = threading.BoundedSemaphore(max_waiting)
        self.max_waiting = max_waiting
        self.max_running = max(self.max_size, max_waiting)
        self._running = threading.BoundedSemaphore(self.max_running)
        self.probe_interval_s = probe_interval_s

    def open(self, wait_s: float | None = None, cancel: threading.Event | None = None) -> None:
        """Open the pool; with ``wait_s``, wait until one connection works.

        Raises :class:`Unavailable` if the database does not answer in time,
        and :class:`StartCancelled` as soon as ``cancel`` is set (a SIGTERM
        during start-up must not wait for a database that is down).
        """
        self.pool.open(wait=False)
        self._reaper.start()
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

    def close(self, timeout_s: float = 1.0) -> None:
        self.circuit.close()
        self._reaper.close()
        self._threads.close()
        self.pool.close(timeout=timeout_s)

    # ------------------------------------------------------------ guards

    def admit(self) -> AbstractContextManager[None]:
        """A place among the calls waiting on this database, for the block.

        Raises :class:`Unavailable` at once (with a retry delay) while the
        circuit is open or the bulkhead is full: a call never queues behind
        a database that does not answer. When the bulkhead is full of calls
        that finish quickly (a database that answered within the last 100 ms),
        a place frees within milliseconds: a call waits for one up to 20 ms."""
        return self._admission

    def _take_place(self) -> None:
        """Enter the bulkhead (see :meth:`admit`)."""
        if self.circuit.open:
            self.refused["circuit"] += 1
            raise self._unavailable(
                "it failed repeatedly and is being probed",
                retry_after_s=self.probe_interval_s,
                quiet=True,
            )
        # Wait briefly for a place only while the database answers:
        # places then free within milliseconds.
        wait = 0.02 if self.answered_lately() else 0.0
        left = callinfo.remaining()
        if left is not None:
            wait = max(0.0, min(wait, left))
        if not self._waiting.acquire(blocking=False) and not self._wait_for_place(wait):
            self.refused["bulkhead"] += 1
            raise self._unavailable(
                f"{self.max_waiting} calls are already waiting for it",
                retry_after_s=0.5,
                quiet=True,
                shed=True,
            )

    def answered_lately(self) -> bool:
        """True while the database answers: its circuit is closed and a
        query succeeded within the last :data:`ANSWERED_LATELY_S`."""
        return not self.circuit.open and time.monotonic() - self.last_success < ANSWERED_LATELY_S

    def _wait_for_place(self, wait: float) -> bool:
        if not wait:
            return False
        with blocking.waiting():
            return self._waiting.acquire(timeout=wait)

    def start(self, work: Callable[[], None]) -> None:
        """Run ``work`` on one of this database's threads (at most
        ``max_running`` at once). Raises :class:`Unavailable` at once when all
        are busy (the database is slow or hung); ``work`` must report its
        own outcome."""
        if not self._running.acquire(blocking=False):
            self.refused["bulkhead"] += 1
            raise self._unavailable(
                f"{self.max_running} of its queries are still running",
                retry_after_s=0.5,
                quiet=True,
                shed=True,
            )

        def run() -> None:
            try:
                work()
            finally:
                self._running.release()

        try:
            self._threads.submit(run)
        except BaseException:
            self._running.release()
            raise

    def cancel_statement(self, conn: psycopg.Connection[Any]) -> None:
        """Ask the server to cancel ``conn``'s running statement (it fails
        with ``QueryCanceled``), from a daemon thread: a hung server may
        never answer the request, and the caller does not wait for it."""

        def cancel() -> None:
            try:
                conn.cancel_safe(timeout=self.timeout_s)
            except Exception:  # the statement ended, or the server is gone
                log.debug("cancelling a statement failed", exc_info=True)

        threading.Thread(target=cancel, name=f"cancel-{self.role.value}", daemon=True).start()

    # ----------------------------------------------------------- queries

    @contextmanager
    def connection(self, timeout_s: float | None = None) -> Iterator[psycopg.Connection[Row]]:
        """A pooled connection; driver and pool failures become :class:`Unavailable`."""
        with (
            self.translated_errors(),
            self.pool.connection(timeout=timeout_s or self.timeout_s) as conn,
            _Statement(self, conn),
        ):
            yield conn

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Turn pool and driver failures into :class:`Unavailable`, and tell
        the circuit how the database did."""
        try:
            yield
        except psycopg.OperationalError as exc:
            raise self._failed(exc) from None
        else:
            self._answered()

    def _answered(self) -> None:
        """A statement succeeded: tell the circuit."""
        self.last_success = time.monotonic()
        self.circuit.success()

    def _failed(self, exc: psycopg.OperationalError) -> Unavailable:
        """The :class:`Unavailable` to raise for a pool or driver failure
        (:class:`PoolTimeout` is an ``OperationalError`` too), after telling
        the circuit."""
        if isinstance(exc, PoolTimeout):
            self.circuit.failure()
            return self._unavailable("no connection was free or reachable in time")
        if isinstance(exc, psycopg.errors.QueryCanceled):
            self.circuit.success()
            handle: QueryHandle | None = getattr(_current, "handle", None)
            if handle is not None and handle.cancelled:
                return self._unavailable(
                    "its statement was cancelled: no caller waits for it", quiet=True
                )
            return self._unavailable("a statement exceeded the statement timeout")
        self.circuit.failure()
        return self._unavailable(f"connection failed ({type(exc).__name__})")

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

    def _unavailable(
        self, what: str, *, retry_after_s: float = 1.0, quiet: bool = False, shed: bool = False
    ) -> Unavailable:
        """``shed``: the call was refused by the bulkhead without trying the
        database (:class:`~controlplane_resolver.errors.Shed`)."""
        if not quiet:
            log.warning("database %s (%s) unavailable: %s", self.role.value, self.label, what)
        message = (
            f"the {self.role.value} database ({self.label}) is unavailable: {what}; retry later"
        )
        if shed:
            return Shed(
                message,
                metadata={"database": self.role.value, "cause": "bulkhead"},
                retry_after_s=retry_after_s,
            )
        return Unavailable(
            message, metadata={"database": self.role.value}, retry_after_s=retry_after_s
        )


class _Admission:
    """:meth:`Database.admit`'s block. Its state is the database's, so one
    object serves every call (a class, not a generator: every call that
    reads the database enters it)."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db._take_place()

    def __exit__(self, *exc: object) -> None:
        self._db._waiting.release()


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
        """Rows as tuples; the guards of :meth:`Database.connection`
        (translated errors, the reaper, the current :class:`QueryHandle`)."""
        # Errors are translated in line, not by translated_errors(): this
        # runs once per coalesced run read, and a generator context manager
        # costs a tenth of the query's driver work.
        db = self.db
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = db.pool.getconn(timeout=db.timeout_s)
            try:
                cursor = self._cursor
                if cursor is None:
                    cursor = self._cursor = conn.cursor(row_factory=tuple_row)
                with _Statement(db, conn):
                    rows = cursor.execute(sql, params).fetchall()
            except BaseException:
                self.release()
                raise
        except psycopg.OperationalError as exc:
            raise db._failed(exc) from None
        db._answered()
        return rows

    def release(self) -> None:
        """Give the connection back to the pool (before the pool closes)."""
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            try:
                self.db.pool.putconn(conn)
            except Exception:  # the pool is closed already
                log.debug("could not return a connection", exc_info=True)
