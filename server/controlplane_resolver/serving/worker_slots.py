"""At most ``RESOLVER_MAX_WORKERS`` unary calls run at once.

The server's thread pool also holds a thread for each ``WatchInvalidations``
stream for as long as it is open, so it is larger than that; this
interceptor keeps the unary calls to their own share. A call that finds
every slot taken waits for one up to its deadline (as it would in the
pool's queue), and one whose deadline passes first ends
``DEADLINE_EXCEEDED`` without having done anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc


class _Slots:
    """A counting semaphore whose uncontended path is one C lock round
    trip (``threading.Semaphore`` runs Python code on every call)."""

    def __init__(self, count: int) -> None:
        # Guards _free and _waiting; _freed wakes waiters.
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._free = count
        self._waiting = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free now."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            return False

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout`` seconds for one."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            self._waiting += 1
            try:
                if not self._freed.wait_for(lambda: self._free > 0, timeout):
                    return False
                self._free -= 1
                return True
            finally:
                self._waiting -= 1

    def release(self) -> None:
        with self._lock:
            self._free += 1
            if self._waiting:
                self._freed.notify()


class WorkerSlots(grpc.ServerInterceptor):
    """Runs at most ``slots`` unary calls at once (streams pass through)."""

    def __init__(self, slots: int) -> None:
        self._slots = _Slots(slots)
        #: Wrapped handlers by the handler they wrap (one per method): the
        #: wrapper holds nothing of a call's, so it is made once.
        self._wrapped: dict[int, tuple[Any, Any]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        made = self._wrapped.get(id(handler))
        if made is not None and made[0] is handler:
            return made[1]
        wrapped = self._wrap(handler)
        if len(self._wrapped) < 1000:  # the methods served, and a few more
            self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any) -> Any:
        behavior = handler.unary_unary
        slots = self._slots

        def in_a_slot(request: Any, context: grpc.ServicerContext) -> Any:
            # No deadline: grpcio reports a remaining time far too long to wait on.
            if not slots.try_acquire() and not slots.acquire(
                min(context.time_remaining(), threading.TIMEOUT_MAX)
            ):
                context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the caller's deadline passed while every worker thread was busy",
                )
            try:
                return behavior(request, context)
            finally:
                slots.release()

        return handler._replace(unary_unary=in_a_slot)
