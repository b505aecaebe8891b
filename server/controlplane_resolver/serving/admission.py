"""Admission: which calls the server takes on, and which it answers at once.

grpcio takes each call off the wire on one polling thread, runs the
interceptors there, and hands the call to its thread pool, where it waits
for a worker. This module decides at that hand-off (docs/operations.md,
"Draining" and "Overload"):

* **Draining.** Once :meth:`Admission.drain` is called, every new call
  (health checks aside) is answered ``UNAVAILABLE`` with the reason
  ``SHUTTING_DOWN`` and a 10 ms retry delay: an answer, which clients' retry
  policies retry on another replica, never a call left for grpc core to
  cancel. :meth:`AdmissionExecutor.wait_idle` tells when the calls taken on
  before the drain have all finished.
* **Overload.** At most ``limit`` calls are in progress or waiting for a
  worker (:attr:`AdmissionExecutor.in_flight`); the next is answered
  ``RESOURCE_EXHAUSTED`` with the reason ``OVERLOADED`` and a retry delay
  (:data:`OVERLOAD_RETRY_S`), at once, instead of queueing until its
  deadline.
* **Express threads.** Refusals and health checks and watches run on a few
  threads of their own (:class:`Express`), never queued behind the calls waiting for a
  worker: they answer at once without blocking on anything.
* **Stream threads.** A server-streaming call (``WatchInvalidations``)
  holds its thread for as long as it is open: it runs on a pool of its own
  (:class:`Stream`), so streams never take the workers' threads, and is not
  counted among the calls in flight. During a drain a new stream is
  answered ``SHUTTING_DOWN`` like any call.

Admission sees only the calls grpcio's polling thread has taken off the
wire; a burst of thousands of calls at once outpaces that one thread, and
the calls not taken yet wait in grpc core's backlog (bounded by the
server's options, :data:`~controlplane_resolver.serving.server.PENDING_CALLS`:
beyond it grpc core cancels them), or end DEADLINE_EXCEEDED when the
backlog outlasts their deadline (docs/faults.md). Beyond the limit plus :data:`EXPRESS_QUEUE`
calls grpcio refuses calls itself (:func:`grpc_limit`:
``RESOURCE_EXHAUSTED`` without a retry delay), which bounds the refusals
waiting for an express thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from controlplane_resolver.errors import SHUTTING_DOWN_RETRY_S
from controlplane_resolver.serving.observability import Metrics
from controlplane_resolver.serving.servicer import abort
from controlplane_resolver.serving.workers import WorkerPool

#: Threads that run refusals and health checks (:class:`Express`).
EXPRESS_WORKERS = 2
#: The retry delay of an OVERLOADED refusal: calls of a saturated server
#: finish within milliseconds, so a place frees soon.
OVERLOAD_RETRY_S = 0.1
#: Refusals and health checks that may wait for an express thread at once
#: (at least): beyond the limit and this many, grpcio refuses calls itself.
EXPRESS_QUEUE = 256
#: Methods that are never refused: health checks answer NOT_SERVING
#: during a drain, and a probe must always get an answer.
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class Express:
    """A call's behaviour that answers without blocking (a refusal, a health
    check or watch): :class:`AdmissionExecutor` runs it on its express
    threads. A behaviour that streams without holding a thread (grpcio's
    ``experimental_non_blocking``: health Watch) stays so."""

    __slots__ = ("behavior",)

    def __init__(self, behavior: Callable[..., Any]) -> None:
        self.behavior = behavior

    @property
    def experimental_non_blocking(self) -> bool:
        return bool(getattr(self.behavior, "experimental_non_blocking", False))

    def __call__(
        self, request: Any, context: grpc.ServicerContext, *args: Any, **kwargs: Any
    ) -> Any:
        return self.behavior(request, context, *args, **kwargs)


class Stream:
    """A server-streaming call's behaviour: :class:`AdmissionExecutor` runs
    it on its stream threads."""

    __slots__ = ("behavior",)

    def __init__(self, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> None:
        self.behavior = behavior

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.behavior(request, context)


class AdmissionExecutor(futures.Executor):
    """The server's thread pool. Work for an :class:`Express` behaviour runs
    on :data:`EXPRESS_WORKERS` threads of its own, work for a
    :class:`Stream` on ``stream_workers`` threads (and a few more, so that a
    stream refused for want of room is refused at once); other work runs on
    a :class:`~controlplane_resolver.serving.workers.WorkerPool` of
    ``max_workers`` threads, ``running`` of them running at once, and is
    counted from hand-off to end (:attr:`in_flight`: running or waiting for
    a worker)."""

    def __init__(self, max_workers: int, *, running: int, stream_workers: int = 0) -> None:
        self.workers = WorkerPool(max_workers, running, thread_name_prefix="grpc-worker")
        self._express = futures.ThreadPoolExecutor(
            max_workers=EXPRESS_WORKERS, thread_name_prefix="grpc-express"
        )
        self._streams = futures.ThreadPoolExecutor(
            max_workers=stream_workers + EXPRESS_WORKERS, thread_name_prefix="grpc-stream"
        )

    @property
    def in_flight(self) -> int:
        """Calls handed to the worker threads and not finished yet."""
        return self.workers.in_flight

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        # grpcio passes the call's behaviour among the arguments.
        for arg in args:
            kind = type(arg)
            if kind is Express:
                return self._express.submit(fn, *args, **kwargs)
            if kind is Stream:
                return self._streams.submit(fn, *args, **kwargs)
        return self.workers.submit(fn, *args, **kwargs)

    def wait_idle(self, timeout: float) -> bool:
        """True once no call is in flight; False if ``timeout`` seconds pass first."""
        return self.workers.wait_idle(timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._express.shutdown(wait, cancel_futures=cancel_futures)
        self._streams.shutdown(wait, cancel_futures=cancel_futures)
        # Cancelled calls never run: they leave the count there.
        self.workers.shutdown(wait, cancel_futures=cancel_futures)


def grpc_limit(limit: int) -> int:
    """grpcio's ``maximum_concurrent_rpcs`` for an admission ``limit``."""
    return limit + max(limit, EXPRESS_QUEUE)


def _shutting_down(_request: Any, context: grpc.ServicerContext) -> None:
    abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        "the server is shutting down; retry (another replica answers)",
        "SHUTTING_DOWN",
        retry_after_s=SHUTTING_DOWN_RETRY_S,
    )


def _shutting_down_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
    _shutting_down(request, context)
    yield  # pragma: no cover - abort() raises; this makes a generator


def _overloaded(limit: int) -> Callable[[Any, grpc.ServicerContext], None]:
    def refuse(_request: Any, context: grpc.ServicerContext) -> None:
        abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server is overloaded: {limit} calls are in progress or waiting for a "
            "thread (RESOLVER_MAX_CONCURRENT_RPCS); retry after the delay, or add replicas",
            "OVERLOADED",
            retry_after_s=OVERLOAD_RETRY_S,
        )

    return refuse


class Admission(grpc.ServerInterceptor):
    """Place it first among the interceptors: it sees every call as handed
    to ``executor``. Refusals are counted in ``metrics`` (by method and
    code) and in :attr:`refused`."""

    def __init__(
        self, executor: AdmissionExecutor, limit: int, metrics: Metrics | None = None
    ) -> None:
        self._executor = executor
        self.limit = limit
        self._metrics = metrics
        self._draining = False
        self._refuse_overload = _overloaded(limit)
        #: Calls refused, by cause.
        self.refused = {"draining": 0, "overload": 0}

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """From now on, answer every new call but health checks UNAVAILABLE
        (``SHUTTING_DOWN``)."""
        self._draining = True

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        if (
            handler is not None
            and handler.unary_stream is not None
            and not getattr(handler.unary_stream, "experimental_non_blocking", False)
        ):
            # A stream that holds its thread (WatchInvalidations).
            if self._draining:
                self.refused["draining"] += 1
                return handler._replace(unary_stream=Express(_shutting_down_stream))
            return handler._replace(unary_stream=Stream(handler.unary_stream))
        if handler is not None and handler.unary_stream is not None:
            # A stream that holds no thread (health Watch): only its first
            # status is sent from a thread, an express one, outside the
            # calls in flight and during a drain too.
            return handler._replace(unary_stream=Express(handler.unary_stream))
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method
        if method.startswith(HEALTH_PREFIX):
            return handler._replace(unary_unary=Express(handler.unary_unary))
        if self._draining:
            return self._refuse(handler, method, "draining", "UNAVAILABLE", _shutting_down)
        if self._executor.in_flight >= self.limit:
            return self._refuse(
                handler, method, "overload", "RESOURCE_EXHAUSTED", self._refuse_overload
            )
        return handler

    def _refuse(
        self,
        handler: grpc.RpcMethodHandler,
        method: str,
        cause: str,
        code: str,
        behavior: Callable[[Any, grpc.ServicerContext], None],
    ) -> Any:
        self.refused[cause] += 1
        if self._metrics is not None:
            series = self._metrics.series(method)
            series.started.inc()
            series.handled_with(code).inc()
        return handler._replace(unary_unary=Express(behavior))
