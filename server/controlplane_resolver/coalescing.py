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

With ``start`` (how the server runs it), a batch can run off the
callers' threads: ``start(work)`` runs the batch loop on a thread of the
database's own, and every caller, the first one included, only waits, each
up to its own deadline or until it goes away (cancels, or its connection
closes). A batch is then never led by a caller that has gone,
and a database that does not answer holds the database's thread, not the
callers'. If ``start`` refuses (raises), every queued caller gets its error.

That hand-off to the database's thread and back costs as much server time
as the query's driver work, so ``inline`` decides per batch: while it says
the database answers (a query succeeded a moment ago), the caller that
begins a batch runs it on its own thread and then passes the lead to the
oldest queued caller; otherwise the batch goes to ``start``'s thread. A
database that stops answering can then hold the one caller leading the
batch running at that moment, until the database's own timeouts end its
query; every later batch goes to ``start``'s thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, NoReturn, TypeVar

from controlplane_resolver import blocking

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class WaitTimeout(Exception):
    """A caller's own time ran out while it waited for someone else's query."""


def _gave_up(why: str) -> NoReturn:
    raise WaitTimeout(f"gave up waiting for a batched read ({why})")


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
        """True once set; False if ``timeout`` seconds passed first. A True
        re-arms it: the next wait waits for the next set."""
        return self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


@dataclass(eq=False, slots=True)
class _Waiter(Generic[K, V]):
    key: K
    #: Set when the waiter is answered, or handed the lead.
    done: _Signal = field(default_factory=_Signal)
    #: Runs the next batch (on its own thread, or by handing it to ``start``).
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
    #: Batches run on a caller's thread (the rest ran on ``start``'s).
    inline: int = 0


class ReadCoalescer(Generic[K, V]):
    """``get(key)`` → the value, or ``None`` when ``load_many`` did not
    return the key. ``load_many(keys)`` returns a mapping for the keys it
    found; if it raises, every caller of that batch gets the exception.

    At most ``max_batch`` keys go into one query; the rest wait for the next.

    Without ``start``, every batch runs on the thread of the caller that
    leads it. With ``start``, a batch runs on ``start``'s thread unless
    ``inline()`` says, as the batch begins, that it may run on its leader's
    (see the module's docstring).
    """

    def __init__(
        self,
        load_many: Callable[[Sequence[K]], Mapping[K, V]],
        *,
        max_batch: int = 128,
        gather_s: float = 0.0,
        start: Callable[[Callable[[], None]], None] | None = None,
        abandon: Callable[[], None] | None = None,
        inline: Callable[[], bool] | None = None,
    ) -> None:
        self._load_many = load_many
        self._start = start
        #: Called (under the lock) when every caller of the batch loading
        #: now has given up; with ``start`` only (an inline batch's leader
        #: never gives up).
        self._abandon = abandon
        self._inline = inline
        #: Batches abandoned (for stats and tests).
        self.abandoned = 0
        #: Once set, every wait ends (a drain): see :meth:`abort_waits`.
        self.aborting = threading.Event()
        self._max_batch = max_batch
        self._gather_s = gather_s
        #: Guards the queue, the busy flag, the batch loading and ``lead``.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: list[_Waiter[K, V]] = []
        #: A batch is running, or its leader is about to run it.
        self._busy = False
        #: The batch being loaded.
        self._loading: list[_Waiter[K, V]] | None = None
        #: Keys of the last batch (only its leader writes it).
        self._last_batch = 1
        self.stats = CoalescerStats()

    def waiting(self) -> int:
        """Callers queued for the next batch (for stats and tests)."""
        with self._lock:
            return len(self._queue)

    def get(self, key: K, timeout: float | None = None) -> V | None:
        """Raises :class:`WaitTimeout` when ``timeout`` seconds pass while
        this caller waits for a batch led by another (its own key may still
        be read, for nobody), or at once when :meth:`abort_waits` was
        called; raises what ``start`` raised when it refused the batch."""
        deadline = None if timeout is None else time.monotonic() + timeout
        me: _Waiter[K, V] = _Waiter(key)
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = me.lead = True
            elif self._gather_s and len(self._queue) >= self._max_batch:
                self._arrived.notify()  # a gathering leader stops at a full batch
        while True:
            if not me.lead:
                self._wait_turn(me, timeout, deadline)
            if not me.lead:
                break  # answered
            if self._lead(me):
                break  # led a batch on this thread: answered
        if me.error is not None:
            raise me.error
        return me.value if me.found else None

    def abort_waits(self) -> None:
        """End every wait now and from now on (a drain)."""
        self.aborting.set()

    def _wait_turn(self, me: _Waiter[K, V], timeout: float | None, deadline: float | None) -> None:
        """Wait until ``me`` is answered or handed the lead; raise
        :class:`WaitTimeout` at ``deadline`` (or a drain, or once its caller
        has gone) unless one of them happened meanwhile."""
        left = None if deadline is None else deadline - time.monotonic()
        if blocking.wait(me.done, left, self.aborting):
            return
        why = blocking.why_ended(self.aborting) or f"{timeout:.3f}s"
        with self._lock:
            if not me.lead:
                if me in self._queue:
                    self._queue.remove(me)
                    _gave_up(why)
                if self._loading is not None and me in self._loading:
                    me.gone = True
                    if self._abandon is not None and all(w.gone for w in self._loading):
                        self.abandoned += 1
                        self._abandon()
                    _gave_up(why)
            # Handed the lead, or answered, just now: carry on.
        me.done.wait()

    def _lead(self, me: _Waiter[K, V]) -> bool:
        """Run the next batch (``me`` among its callers) on this thread and
        return True, or hand it to ``start``'s thread and return False."""
        if self._start is None or (self._inline is not None and self._inline()):
            with blocking.waiting():
                batch = self._load_batch()
            self.stats.inline += 1
            self._finish(batch, detached=False)
            return True
        me.lead = False
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
        return False

    def _run_batches(self) -> None:
        """Batches until the queue is empty, or until the lead passes to a
        caller (on a thread ``start`` gave)."""
        while self._finish(self._load_batch(), detached=True):
            pass

    def _load_batch(self) -> list[_Waiter[K, V]]:
        """Take the next batch off the queue and load it: each of its
        callers gets its value or the error (and is not woken yet)."""
        with self._lock:
            self._gather()
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
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
        return batch

    def _finish(self, batch: list[_Waiter[K, V]], *, detached: bool) -> bool:
        """Wake ``batch``'s callers and pass the lead on: to the oldest
        queued caller, unless this is ``start``'s thread and ``inline`` does
        not allow it (then return True: this thread runs the next batch)."""
        successor = None
        run_on = False
        with self._lock:
            self._loading = None
            if not self._queue:
                self._busy = False
            elif detached and (self._inline is None or not self._inline()):
                run_on = True
            else:
                successor = self._queue[0]
                successor.lead = True
        self._wake(batch, successor)
        return run_on

    @staticmethod
    def _wake(batch: list[_Waiter[K, V]], successor: _Waiter[K, V] | None) -> None:
        # The successor first, so that the next query starts as soon as possible.
        if successor is not None:
            successor.done.set()
        for w in batch:
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
