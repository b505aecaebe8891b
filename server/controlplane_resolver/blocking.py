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

A call that waits for someone else's work uses :func:`wait`: such a block
that also ends early when the server drains or the call's caller has gone.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from controlplane_resolver import callinfo

#: How often :func:`wait` looks at its abort event and at the caller.
POLL_S = 0.05


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


class Waitable(Protocol):
    """What :func:`wait` waits for: a :class:`threading.Event`, or anything
    whose ``wait(timeout)`` says whether it happened."""

    def wait(self, timeout: float | None = ...) -> bool: ...


def wait(done: Waitable, timeout: float | None, abort: threading.Event) -> bool:
    """Wait for ``done`` up to ``timeout`` seconds (``None``: no limit), as a
    :func:`waiting` block. True once it happened; False at the timeout, or
    as soon as ``abort`` is set (a drain) or the current call's caller has
    gone (:func:`callinfo.caller_gone`), both looked at every
    :data:`POLL_S`. :func:`why_ended` tells the last two apart."""
    with _WAITING:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if done.wait(POLL_S if left is None else max(0.0, min(POLL_S, left))):
                return True
            if abort.is_set() or (left is not None and left <= POLL_S) or callinfo.caller_gone():
                return False


def why_ended(abort: threading.Event) -> str | None:
    """Why a :func:`wait` with ``abort`` that returned False ended early:
    ``"the server is shutting down"`` or ``"its caller has gone"``; None
    when it ran to its timeout."""
    if abort.is_set():
        return "the server is shutting down"
    if callinfo.caller_gone():
        return "its caller has gone"
    return None
