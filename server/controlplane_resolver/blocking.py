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
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def waiting() -> Iterator[None]:
    """Wrap a wait: while it lasts, this thread's pool (if any) counts the
    thread as waiting, not running."""
    pool: WaitAware | None = getattr(_local, "pool", None)
    if pool is None or _local.depth:
        # Not a pool's thread, or inside a wait already (counted once).
        yield
        return
    pool.begin_wait()
    _local.depth = 1
    try:
        yield
    finally:
        _local.depth = 0
        pool.end_wait()
