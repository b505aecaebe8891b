"""The worker pool: the threads that serve calls, few of them running at once.

Every call's Python code shares one interpreter lock. A call answered from
memory (a cached environment, a classification, a minted id) holds it from
start to end; a call that reads a database spends most of its time waiting
for a database thread. With a plain thread pool each call wakes a sleeping
thread of its own, and under load a dozen threads take turns at the lock:
every turn is a context switch (docs/benchmarks.md, "The worker pool",
measures what that costs).

:class:`WorkerPool` keeps up to ``max_workers`` threads but starts a call
only while fewer than ``running`` of them are running. A thread that
finishes a call takes the next queued one at once, without sleeping, so
under load a couple of threads serve answers back to back. A thread about
to wait says so (:func:`controlplane_resolver.blocking.waiting`): it stops
counting as running and the next queued call starts on another thread, so
calls that wait on databases still overlap up to ``max_workers``.

A wait nobody declared (grpcio's own wait for the request's message, a
lock held elsewhere, a log write to a full pipe) cannot stall the queue for
long: when calls are queued and no call has
started, finished or begun a declared wait for ``stall_s``, one more call
starts beyond the limit (counted in :attr:`WorkerStats.stall_starts`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from controlplane_resolver import blocking

#: With calls queued, how long no call may start or finish before one more
#: starts beyond the running limit.
STALL_S = 0.02

log = logging.getLogger(__name__)

_Work = tuple[futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


@dataclass
class WorkerStats:
    """Plain counters and levels, read without the pool's lock."""

    #: Threads started so far (at most ``max_workers``).
    threads: int = 0
    #: Calls started.
    started: int = 0
    #: Calls started beyond the running limit because the queue stalled.
    stall_starts: int = 0
    #: Idle threads woken for work (a thread switch each); under load,
    #: far fewer than the calls started.
    wakes: int = 0


class WorkerPool(futures.Executor):
    """``submit(fn, ...)`` queues ``fn`` and returns its future; ``fn`` runs
    on one of at most ``max_workers`` threads, started while fewer than
    ``running`` threads run (see the module's docstring). :attr:`in_flight`
    counts the calls submitted and not finished (queued or running);
    :meth:`wait_idle` waits for it to reach zero. ``shutdown`` refuses new
    work and, with ``wait``, returns once the queued and running calls are
    done."""

    def __init__(
        self,
        max_workers: int,
        running: int,
        *,
        stall_s: float = STALL_S,
        thread_name_prefix: str = "worker",
    ) -> None:
        if max_workers < 1 or running < 1:
            raise ValueError("max_workers and running must be at least 1")
        self._max_workers = max_workers
        self._limit = min(running, max_workers)
        self._stall_s = stall_s
        self._prefix = thread_name_prefix
        # Guards every field below; idle threads wait on it for work.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        #: Notified when :attr:`in_flight` drops to zero.
        self._drained = threading.Condition(self._lock)
        self._queue: deque[_Work] = deque()
        self._threads: list[threading.Thread] = []
        #: Threads waiting for work.
        self._idle = 0
        #: Threads running a call outside a declared wait.
        self._running = 0
        #: Threads woken (or started) for work that have not taken it yet:
        #: counted so that a burst of calls wakes no more threads than may run.
        self._waking = 0
        #: When a call last started, finished or began a declared wait.
        self._progress = time.monotonic()
        #: An idle thread waits with a timeout, to catch a stall.
        self._watching = False
        self._shutdown = False
        #: Calls submitted and not finished: queued, or running on a thread.
        self.in_flight = 0
        self.stats = WorkerStats()

    # ------------------------------------------------------------ callers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future: futures.Future[Any] = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append((future, fn, args, kwargs))
            self.in_flight += 1
            self._wake_for_queue()
        return future

    def wait_idle(self, timeout: float) -> bool:
        """True once no call is in flight; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(left)
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            self.cancel_queued()
        with self._lock:
            self._shutdown = True
            self._waking = 0
            self._work.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()

    def cancel_queued(self) -> int:
        """Cancel the calls not started yet and return how many: their
        functions never run. Their futures' callbacks run outside the pool's
        lock."""
        with self._lock:
            queued, self._queue = list(self._queue), deque()
            self._finished(len(queued))
        return sum(1 for future, *_ in queued if future.cancel())

    def queued(self) -> int:
        """Calls waiting for a thread."""
        return len(self._queue)

    # ------------------------------------------- its threads (blocking.py)

    def begin_wait(self) -> None:
        with self._lock:
            self._running -= 1
            self._progress = time.monotonic()
            if self._queue and self._running + self._waking < self._limit:
                self._wake_one()

    def end_wait(self) -> None:
        with self._lock:
            self._running += 1

    # ----------------------------------------------------------- internals

    def _finished(self, calls: int) -> None:
        """Under the lock: ``calls`` calls are no longer in flight."""
        self.in_flight -= calls
        if not self.in_flight:
            self._drained.notify_all()

    def _wake_for_queue(self) -> None:
        """Under the lock, with calls queued: wake a thread to start one now
        if one may start, or one to watch for a stall if none watches and
        none is on its way."""
        if self._running + self._waking < self._limit or not (self._watching or self._waking):
            self._wake_one()

    def _wake_one(self) -> None:
        """Under the lock: wake an idle thread, or start one. Never raises:
        if the system refuses a new thread, the queued calls wait for a
        thread that finishes."""
        if self._idle > self._waking:
            self._waking += 1
            self.stats.wakes += 1
            self._work.notify()
        elif len(self._threads) < self._max_workers:
            thread = threading.Thread(
                target=self._serve,
                name=f"{self._prefix}_{len(self._threads)}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread"
                log.error(
                    "could not start a worker thread (%d running): calls queue until one "
                    "finishes; lower RESOLVER_MAX_WORKERS or raise the process's thread limit",
                    len(self._threads),
                )
                return
            self._waking += 1
            self._threads.append(thread)
            self.stats.threads = len(self._threads)

    def _next(self, started: bool) -> _Work | None:
        """Under the lock: the next call this thread may start (counted as
        running), waiting for one; None once shut down and drained.
        ``started``: this thread was just started for work."""
        if started and self._waking:
            self._waking -= 1
        while True:
            if self._queue:
                now = time.monotonic()
                if self._running < self._limit or now - self._progress >= self._stall_s:
                    work = self._queue.popleft()
                    if self._running >= self._limit:
                        self.stats.stall_starts += 1
                    self._running += 1
                    self.stats.started += 1
                    self._progress = now
                    if self._queue:
                        # Calls submitted back to back may have counted on
                        # this thread to start them or to watch for a stall.
                        self._wake_for_queue()
                    elif self._shutdown:
                        # Threads that waited for room wait for nothing now.
                        self._work.notify_all()
                    return work
            elif self._shutdown:
                return None
            watch = bool(self._queue) and not self._watching
            self._idle += 1
            if watch:
                self._watching = True
            try:
                self._work.wait(self._stall_s if watch else None)
            finally:
                self._idle -= 1
                if watch:
                    self._watching = False
                # Every return from a wait takes one pending wake, timeouts
                # included: a watcher's timeout can race a notify() and
                # swallow it while reporting a timeout. Counting too few
                # wakes costs a spare wake later; too many would leave calls
                # queued with nobody to run them.
                if self._waking:
                    self._waking -= 1

    def _serve(self) -> None:
        blocking.attach(self)
        lock = self._lock
        started = True
        with lock:
            while True:
                work = self._next(started)
                started = False
                if work is None:
                    return
                future, fn, args, kwargs = work
                lock.release()
                try:
                    if future.set_running_or_notify_cancel():
                        try:
                            result = fn(*args, **kwargs)
                        except BaseException as exc:
                            future.set_exception(exc)
                        else:
                            future.set_result(result)
                finally:
                    # Drop the references before waiting for more work.
                    work = future = fn = args = kwargs = None  # type: ignore[assignment]
                    lock.acquire()
                    self._running -= 1
                    self._finished(1)
                    self._progress = time.monotonic()
