"""What the current call did, noted by the domain and read by the call log.

A thread-local dict and the caller's deadline: the threaded server runs
each call on one worker thread from start to end. The domain notes facts (``cache`` outcome,
serving ``database``) without knowing who reads them; outside a call the
notes go nowhere useful and cost one attribute write.

Apart from the notes (which the call log prints), the cache records the
*sources* of the call's answer: the cached entries or loads it was made
from, from which the servicer tells callers how long the answer stays valid.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

_local = threading.local()


def begin(
    deadline: float | None = None, is_active: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Start a fresh set of notes for the call on this thread and return it.
    ``deadline`` is the caller's deadline on the ``time.monotonic`` clock;
    ``is_active`` says whether the caller still waits for the answer (the
    call's ``ServicerContext.is_active``)."""
    notes: dict[str, Any] = {}
    _local.notes = notes
    _local.deadline = deadline
    _local.is_active = is_active
    _local.sources = []
    return notes


def remaining() -> float | None:
    """Seconds left before the current caller's deadline (negative once it
    passed), or None when the caller set none or there is no call."""
    deadline = getattr(_local, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


def caller_gone() -> bool:
    """True once the current call's caller no longer waits for its answer
    (it cancelled, its deadline passed or its connection closed): a wait
    on its behalf may end. False when there is no call, or no way to tell.
    Costs a lock: for waits that wake now and then, not for every call."""
    is_active = getattr(_local, "is_active", None)
    return is_active is not None and not is_active()


def note(key: str, value: Any) -> None:
    notes = getattr(_local, "notes", None)
    if notes is not None:
        notes[key] = value


def get(key: str) -> Any:
    """A note of the current call, or None (no such note, or no call)."""
    notes = getattr(_local, "notes", None)
    return None if notes is None else notes.get(key)


def note_source(source: Any) -> None:
    """Record one source of the current call's answer (outside a call:
    nothing)."""
    sources = getattr(_local, "sources", None)
    if sources is not None:
        sources.append(source)


def sources() -> list[Any]:
    """The sources recorded for the current call's answer, in order (empty
    outside a call)."""
    return getattr(_local, "sources", None) or []


def end() -> None:
    _local.notes = None
    _local.deadline = None
    _local.is_active = None
    _local.sources = None
