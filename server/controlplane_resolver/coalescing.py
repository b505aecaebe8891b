"""Coalescing concurrent point reads into one multi-key query.

Runs are never cached, so every ReadRun reaches a database. Under load many
of them arrive at once; :class:`ReadCoalescer` turns the reads waiting at
the same moment into one ``WHERE "id" = ANY(…)`` query, in the manner of a
database's group commit: there is no timer and no added latency. One caller
(the leader) runs a query for everything queued so far; callers arriving
meanwhile queue up, and when the query ends the first of them leads the next
batch. At low load every batch holds one key; at high load the per-query
cost (round trip, planning, Python driver work) is shared by the batch.

Under load a leader also *gathers*: when the previous batch carried more
than one key (reads are arriving concurrently), it waits up to ``gather_s``
for more to queue before querying, in the manner of PostgreSQL's
``commit_delay``. A read that arrives alone (the previous batch held one
key) never waits, so light traffic sees no added latency. Gathering trades
a bounded wait for fewer, larger queries (docs/benchmarks.md measures it).

Identical keys in one batch cost one row, so identical concurrent reads
share one query (docs/design.md, "Reading runs").

With ``start`` (how the server runs it), batches run off the callers'
threads: ``start(work)`` runs the batch loop on a thread of the database's
own, and every caller, the first one included, only waits, each up to its
own deadline. A batch is then never led by a caller that has gone, and a
database that does not answer holds the database's thread, not the
callers'. If ``start`` refuses (raises), every queued caller gets its error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from controlplane_resolver import blocking

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class WaitTimeout(Exception):
    """A caller's own time ran out while it waited for someone else's query."""


class _Signal:
    """A one-shot wake-up for the one thread that waits on it: a lock taken
    at birth and released by the waker.

    Not :class:`threading.Event`: an Event's waiter, once woken, must retake
    the Event's condition lock, which the waker may still hold, so a
    hand-off can cost an extra context switch, and this is the hand-off of
    every coalesced ReadRun.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Wake the waiter; call at most once."""
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if ``timeout`` seconds passed first. After
        True, do not wait again."""
        return self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


@dataclass(eq=False, slots=True)
class _Waiter(Generic[K, V]):
    key: K
    done: _Signal = field(default_factory=_Signal)
    lead: bool = False
    #: Gave up waiting while its batch was loading.
    gone: bool = False
    found: bool = False
    value: V | None = None
    error: BaseException | None = None


@dataclass
class CoalescerStats:
    """Plain counters: ``keys / batches`` is the mean batch size."""

    batches: int = 0
    keys: int = 0
    largest_batch: int = 0
    #: Batches whose leader waited for more reads to queue.
    gathered: int = 0


class ReadCoalescer(Generic[K, V]):
    """``get(key)`` → the value, or ``None`` when ``load_many`` did not
    return the key. ``load_many(keys)`` returns a mapping for the keys it
    found; if it raises, every caller of that batch gets the exception.

    At most ``max_batch`` keys go into one query; the rest wait for the next.
    """

    def __init__(
        self,
        load_many: Callable[[Sequence[K]], Mapping[K, V]],
        *,
        max_batch: int = 128,
        gather_s: float = 0.0,
        start: Callable[[Callable[[], None]], None] | None = None,
        abandon: Callable[[], None] | None = None,
    ) -> None:
        self._load_many = load_many
        self._start = start
        #: Called (under the lock) when every caller of the batch loading
        #: now has given up; with ``start`` only.
        self._abandon = abandon
        #: The batch being loaded on ``start``'s thread.
        self._loading: list[_Waiter[K, V]] | None = None
        #: Batches abandoned (for stats and tests).
        self.abandoned = 0
        #: Once set, every wait ends (a drain): see :meth:`abort_waits`.
        self.aborting = threading.Event()
        self._max_batch = max_batch
        self._gather_s = gather_s
        self._last_batch = 1
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: list[_Waiter[K, V]] = []
        self._busy = False
        self.stats = CoalescerStats()

    def waiting(self) -> int:
        """Callers queued for the next batch (for stats and tests)."""
        with self._lock:
            return len(self._queue)

    def get(self, key: K, timeout: float | None = None) -> V | None:
        """Raises :class:`WaitTimeout` when ``timeout`` seconds pass while
        this caller waits for a batch led by another (its own key may still
        be read, for nobody)."""
        if self._start is not None:
            return self._get_detached(key, timeout)
        me: _Waiter[K, V] = _Waiter(key)
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = me.lead = True
            elif self._gather_s and len(self._queue) >= self._max_batch:
                self._arrived.notify()  # a gathering leader stops at a full batch
        if not me.lead and not me.done.wait(timeout):
            with self._lock:
                if me in self._queue and not me.lead:
                    self._queue.remove(me)
                    raise WaitTimeout(f"gave up after {timeout:.3f}s waiting for a batched read")
                # Handed the lead (or the answer) just now: carry on.
            me.done.wait()
        if me.lead:
            self._run_batch()
        if me.error is not None:
            raise me.error
        return me.value if me.found else None

    def abort_waits(self) -> None:
        """End every wait now and from now on (a drain)."""
        self.aborting.set()

    def _get_detached(self, key: K, timeout: float | None) -> V | None:
        me: _Waiter[K, V] = _Waiter(key)
        launch = False
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = launch = True
            elif self._gather_s and len(self._queue) >= self._max_batch:
                self._arrived.notify()
        if launch:
            assert self._start is not None
            try:
                self._start(self._run_batches)
            except BaseException as exc:
                with self._lock:
                    refused, self._queue, self._busy = self._queue, [], False
                for w in refused:
                    if w is not me:
                        w.error = exc
                        w.done.set()
                raise
        if not self._wait(me.done, timeout):
            with self._lock:
                if me in self._queue:
                    self._queue.remove(me)
                elif self._loading is not None and me in self._loading:
                    me.gone = True
                    if all(w.gone for w in self._loading):
                        self.abandoned += 1
                        if self._abandon is not None:
                            self._abandon()
            why = "the server is shutting down" if self.aborting.is_set() else f"{timeout:.3f}s"
            raise WaitTimeout(f"gave up waiting for a batched read ({why})")
        if me.error is not None:
            raise me.error
        return me.value if me.found else None

    def _wait(self, done: _Signal, timeout: float | None) -> bool:
        """``done.wait(timeout)``, ended early by :meth:`abort_waits`."""
        with blocking.waiting():
            return self._wait_blocking(done, timeout)

    def _wait_blocking(self, done: _Signal, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if done.wait(0.05 if left is None else max(0.0, min(0.05, left))):
                return True
            if self.aborting.is_set() or (left is not None and left <= 0.05):
                return False

    def _run_batches(self) -> None:
        """Batches until the queue is empty (on a thread ``start`` gave)."""
        while True:
            self._run_batch(detached=True)
            with self._lock:
                if not self._queue:
                    self._busy = False
                    return

    def _run_batch(self, detached: bool = False) -> None:
        with self._lock:
            self._gather()
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            if detached:
                self._loading = batch
        keys = list(dict.fromkeys(w.key for w in batch))
        self._last_batch = len(batch)
        stats = self.stats
        stats.batches += 1
        stats.keys += len(keys)
        stats.largest_batch = max(stats.largest_batch, len(keys))
        try:
            found = self._load_many(keys)
        except BaseException as exc:
            for w in batch:
                w.error = exc
        else:
            for w in batch:
                if w.key in found:
                    w.found, w.value = True, found[w.key]
        if detached:
            with self._lock:
                self._loading = None
            for w in batch:
                w.done.set()
            return
        with self._lock:
            # Hand the lead to the oldest waiter before waking the batch, so
            # the next query starts as soon as possible.
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                successor.done.set()
            else:
                self._busy = False
        for w in batch:
            if not w.lead:
                w.done.set()

    def _gather(self) -> None:
        """Under the lock: after a batch of several keys, wait up to
        ``gather_s`` (or until the batch is full) for more to queue."""
        if not self._gather_s or self._last_batch < 2:
            return
        self.stats.gathered += 1
        deadline = time.monotonic() + self._gather_s
        while len(self._queue) < self._max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.wait(left)
