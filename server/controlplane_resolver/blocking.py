"""Marking where a thread waits, so that the pool running it can start
another call meanwhile.

The server lets only a few of its worker threads run at once
(:mod:`controlplane_resolver.serving.workers`). A thread that is about to
wait on something other than the interpreter — another thread's database
query, a load someone else leads — says so::

    with blocking.waiting():
        done.wait(timeout)

and stops counting as running until the block ends; a wait inside a wait
counts once. On a thread that no such pool runs (a test, a database's own
thread), :func:`waiting` does nothing.
"""

from __future__ import annotations

import threading
from typing import Protocol


class WaitAware(Protocol):
    """What a pool offers its own threads (see :func:`attach`)."""

    def begin_wait(self) -> None:
        """This thread stops running: another call may start."""

    def end_wait(self) -> None:
        """This thread runs again."""


_local = threading.local()


def attach(pool: WaitAware) -> None:
    """Tell :func:`waiting` on this thread to report to ``pool``; called by
    the pool on each thread it starts."""
    _local.pool = pool
    _local.depth = 0


def waiting() -> _Waiting:
    """Wrap a wait: while it lasts, this thread's pool (if any) counts the
    thread as waiting, not running."""
    return _WAITING


class _Waiting:
    """:func:`waiting`'s block; its state is the thread's (``_local``), so
    one instance serves every thread (a class, not a generator: every
    coalesced run read enters it)."""

    __slots__ = ()

    def __enter__(self) -> None:
        pool: WaitAware | None = getattr(_local, "pool", None)
        if pool is None:
            return  # not a pool's thread
        if not _local.depth:  # a wait inside a wait is counted once
            pool.begin_wait()
        _local.depth += 1

    def __exit__(self, *exc: object) -> None:
        pool: WaitAware | None = getattr(_local, "pool", None)
        if pool is None:
            return
        _local.depth -= 1
        if not _local.depth:
            pool.end_wait()


_WAITING = _Waiting()
