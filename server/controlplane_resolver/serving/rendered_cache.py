"""Responses rendered from cached answers, kept as long as the answer is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


class RenderedCache:
    """Messages rendered from cached values (or anything made from them),
    reused while the value is.

    Cached answers are immutable objects that live as long as their cache
    entry, so the message rendered from one can be reused for every call
    that gets the same object — a cache hit then costs no rendering. Keyed
    by identity and holding the value itself, so an id is never reused
    while its entry is here. Bounded: cleared when it outgrows ``limit``
    (the next calls simply render again). Callers must not mutate the
    messages they get.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._entries: dict[int, tuple[Any, Any]] = {}

    def get(self, value: Any, render: Callable[[Any], M]) -> M:
        """The message rendered from ``value``: rendered now by
        ``render(value)`` the first time."""
        message = self.peek(value)
        if message is None:
            message = render(value)
            self.put(value, message)
        return message  # type: ignore[no-any-return]

    def peek(self, value: Any) -> Any:
        """What was kept for ``value``, or None."""
        entry = self._entries.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        return None

    def put(self, value: Any, message: Any) -> None:
        """Keep ``message`` for ``value`` (replacing what was kept)."""
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(value)] = (value, message)
