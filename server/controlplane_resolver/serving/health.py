"""The gRPC health service (``grpc.health.v1.Health``): Check and Watch.

:class:`HealthService` answers as grpcio-health-checking's
``HealthServicer`` does — Check of an unknown service is ``NOT_FOUND``, a
watch of one starts with ``SERVICE_UNKNOWN``, every watcher of a service
gets each new status in the order :meth:`HealthService.set` was called —
and it never sends to a watcher while holding the lock that a watcher's
end takes. That library's servicer does: its ``set()`` sends under its
lock and waits for the send to complete, while grpcio's polling thread,
ending a watch whose client went away, waits for that lock before it can
complete any send, so one watcher leaving during a status change stopped
the whole server.

A watch holds no thread: grpcio hands Watch a callback that sends one
response, and the stream lives until the client ends it or the server
stops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: Sends one response on a watch, or ends it when given ``None``; returns
#: once the response is sent (or the stream has ended).
SendResponse = Callable[[Any], Any]


class HealthService(health_pb2_grpc.HealthServicer):
    """Health statuses by service name ("" is the whole server, SERVING
    until :meth:`set` says otherwise), and the watches that follow them."""

    def __init__(self) -> None:
        #: Guards ``_statuses`` and ``_watchers``. Held only to read or
        #: change them, never while sending: grpcio's polling thread takes
        #: it when a watch ends.
        self._lock = threading.Lock()
        #: Orders sends: held while a status is sent to every watcher of its
        #: service, and while a new watch is registered and sent its first
        #: status, so each watcher sees statuses in the order they were set.
        #: grpcio's polling thread never takes it.
        self._send_lock = threading.Lock()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._watchers: dict[str, set[SendResponse]] = {}

    def set(self, service: str, status: int) -> None:
        """Make *status* the status of *service* and send it to the service's
        watchers; returns once each watcher's send has completed (or its
        stream has ended)."""
        with self._send_lock:
            with self._lock:
                self._statuses[service] = status
                watchers = list(self._watchers.get(service, ()))
            response = health_pb2.HealthCheckResponse(status=status)
            for send in watchers:
                send(response)

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(  # type: ignore[override]
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: SendResponse,
    ) -> None:
        service = request.service
        with self._send_lock:
            with self._lock:
                status = self._statuses.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                self._watchers.setdefault(service, set()).add(send_response_callback)

            def end() -> None:
                self._forget(service, send_response_callback)
                send_response_callback(None)

            if not context.add_callback(end):
                # The stream ended before the callback could be added.
                self._forget(service, send_response_callback)
                return
            send_response_callback(health_pb2.HealthCheckResponse(status=status))

    def _forget(self, service: str, send: SendResponse) -> None:
        # A service nobody watches keeps no entry, whatever names callers
        # asked to watch.
        with self._lock:
            watchers = self._watchers.get(service)
            if watchers is not None:
                watchers.discard(send)
                if not watchers:
                    del self._watchers[service]

    # grpcio passes Watch a callback that sends a response (instead of
    # taking a generator from it) when the behaviour says it does not block.
    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]
    Watch.experimental_thread_pool = None  # type: ignore[attr-defined]
