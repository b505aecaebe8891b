"""Metrics (Prometheus) and the structured call log, as one interceptor.

Metrics follow the names of go-grpc-prometheus, which dashboards expect:
``grpc_server_started_total``, ``grpc_server_handled_total{grpc_code}`` and
``grpc_server_handling_seconds``. Each app has its own registry (several
apps can live in one test process); the counters of every method and code
are registered at zero so rates exist before the first call. Cache, pool,
split-mode and listener state are read at scrape time from the plain
counters the components keep (:class:`StateCollector`). Every registry also
carries prometheus_client's standard process collector (``process_*``: CPU,
memory, open and maximum file descriptors, start time), and no ``*_created``
series (metrics_http.py turns them off).

Logs are one JSON object a line (``--log-format json``): one line per call,
at the level of its status code (:data:`CODE_LEVELS`), with method, code,
latency, cache outcome, serving database, peer identity (the token's client
name, else the client certificate's identity, else the address) and a
request id. Secrets never reach them: requests and responses are not
logged, and messages of our errors carry none.

The request id is the caller's ``x-request-id`` metadata when it is 1 to 64
characters of ``[A-Za-z0-9._:=/+-]``, else one generated for the call (32
hex digits); either way it is echoed to the caller in the response's
trailing metadata (``x-request-id``), on errors too.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from controlplane_resolver import callinfo
from controlplane_resolver.cache import CacheStats, SlotStats
from controlplane_resolver.coalescing import CoalescerStats
from controlplane_resolver.invalidation.feed import FeedStats
from controlplane_resolver.invalidation.listener import ListenerState, ListenerStats
from controlplane_resolver.runtime.metrics_http import MetricsEndpoint, serve_metrics
from controlplane_resolver.serving.workers import WorkerStats
from controlplane_resolver.storage.topology import SplitDecision

call_log = logging.getLogger("controlplane_resolver.calls")

#: Codes pre-registered at zero for every method.
EXPECTED_CODES = (
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNKNOWN",
)

#: The call log's level per status code: go-grpc-middleware's
#: ``logging.DefaultServerCodeToLevel`` (the caller's own mistakes at INFO,
#: trouble worth a look at WARNING, bugs at ERROR), except OK and NOT_FOUND
#: at DEBUG: both are answers (NOT_FOUND is a confirmed absence, which the
#: client returns as ``None``), and an INFO log must not carry a line per
#: answered call. A code not listed logs at ERROR.
CODE_LEVELS: dict[str, int] = {
    "OK": logging.DEBUG,
    "NOT_FOUND": logging.DEBUG,
    "CANCELLED": logging.INFO,
    "ALREADY_EXISTS": logging.INFO,
    "INVALID_ARGUMENT": logging.INFO,
    "UNAUTHENTICATED": logging.INFO,
    "DEADLINE_EXCEEDED": logging.WARNING,
    "PERMISSION_DENIED": logging.WARNING,
    "RESOURCE_EXHAUSTED": logging.WARNING,
    "FAILED_PRECONDITION": logging.WARNING,
    "ABORTED": logging.WARNING,
    "OUT_OF_RANGE": logging.WARNING,
    "UNAVAILABLE": logging.WARNING,
    "UNKNOWN": logging.ERROR,
    "UNIMPLEMENTED": logging.ERROR,
    "INTERNAL": logging.ERROR,
    "DATA_LOSS": logging.ERROR,
}

#: The label value (``grpc_service`` and ``grpc_method``) of every method
#: name the server does not serve.
UNKNOWN_METHOD = "/unknown/unknown"

#: The request-id metadata key, read from the caller and echoed back.
REQUEST_ID_KEY = "x-request-id"
#: A caller's request id is taken as is when it matches this (bounded, and
#: safe in a log line or a header); otherwise the call gets a generated one.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:=/+-]{1,64}")


def request_id(metadata: Any) -> str:
    """The call's request id: the caller's first ``x-request-id`` when
    acceptable, else a new one (32 hex digits)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and _ACCEPTED_REQUEST_ID.fullmatch(value):
                return value
            break
    return uuid.uuid4().hex


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # process_* of the process that collects (it reads /proc/self at
        # scrape time, so each process of --processes N reports its own).
        ProcessCollector(registry=self.registry)
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            labels,
            registry=self.registry,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
        )
        self._series: dict[str, MethodSeries] = {}
        #: The method names served (preregister); None: count every name.
        self._known: frozenset[str] | None = None
        self._endpoint: MetricsEndpoint | None = None

    def progress(self) -> tuple[float, float]:
        """(calls started, calls finished) over every method (for watchdog.py)."""
        return _total(self.started), _total(self.handled)

    def series(self, full_method: str) -> MethodSeries:
        """The label children of one method (``/pkg.Service/Method``),
        created once: splitting the name and ``labels()`` (which takes a lock
        and builds a key) are not for every call.

        Once :meth:`preregister` has named the methods served, any other
        name (a caller can send any) is counted as the one method
        :data:`UNKNOWN_METHOD`: nothing a caller sends creates series."""
        found = self._series.get(full_method)
        if found is None and self._known is not None and full_method not in self._known:
            full_method = UNKNOWN_METHOD
            found = self._series.get(full_method)
        if found is None:
            service, method = split_method(full_method)
            found = self._series[full_method] = MethodSeries(
                method=method,
                started=self.started.labels("unary", service, method),
                seconds=self.seconds.labels("unary", service, method),
                handled=lambda code: self.handled.labels("unary", service, method, code),
            )
        return found

    def preregister(self, methods: Iterable[str]) -> None:
        """Create every method × code series at zero; from now on, other
        method names count as :data:`UNKNOWN_METHOD`."""
        methods = list(methods)
        self._known = (self._known or frozenset()) | frozenset(methods)
        for full in methods:
            series = self.series(full)
            for code in EXPECTED_CODES:
                series.handled_with(code)

    def serve_http(self, addr: str) -> int:
        """Expose ``/metrics`` on ``addr``; returns the port."""
        self._endpoint = serve_metrics(addr, self.registry)
        return self._endpoint.port

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()


@dataclass
class MethodSeries:
    method: str
    started: Any
    seconds: Any
    handled: Callable[[str], Any]
    _by_code: dict[str, Any] = field(default_factory=dict)

    def handled_with(self, code: str) -> Any:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self.handled(code)
        return child


def _total(counter: Counter) -> float:
    return sum(
        sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    _, service, method = full.split("/", 2) if full.count("/") >= 2 else ("", "", full)
    return service, method


class CallInterceptor(grpc.ServerInterceptor):
    """Counts, times and logs every unary call (and any call the auth
    interceptor rejected, when this one is placed first)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        #: Lines of calls anyone can make in any number (no valid token, or
        #: an unknown method): at most a few a second.
        self._untrusted_lines = LineBudget(per_second=5)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        call_id = request_id(details.invocation_metadata)
        behavior = handler.unary_unary
        deserialize = handler.request_deserializer
        series = self.metrics.series(details.method) if self.metrics is not None else None
        method = series.method if series is not None else split_method(details.method)[1]

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            if series is not None:
                series.started.inc()
            left = context.time_remaining()
            # Ended in the finally below: a wait on a later call of this
            # thread must not see this call's caller.
            notes = callinfo.begin(
                None if left is None else time.monotonic() + left, context.is_active
            )
            code = "OK"
            try:
                if type(request) is _Malformed:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "the request is not a valid protobuf message of this method",
                    )
                response = behavior(request, context)
                code = _outcome(context, "OK")
                return response
            except BaseException:
                code = _outcome(context, "UNKNOWN")
                raise
            finally:
                elapsed = time.perf_counter() - start
                callinfo.end()
                # Echoed on every outcome: added to whatever trailing metadata
                # the handler left (an error's status details among them);
                # the status is sent after this, with it.
                context.set_trailing_metadata(
                    (*(context.trailing_metadata() or ()), (REQUEST_ID_KEY, call_id))
                )
                if series is not None:
                    series.handled_with(code).inc()
                    series.seconds.observe(elapsed)
                level = CODE_LEVELS.get(code, logging.ERROR)
                if call_log.isEnabledFor(level) and (
                    (code not in UNTRUSTED_CODES and method != UNKNOWN_NAME)
                    or self._untrusted_lines.allow()
                ):
                    latency_ms = round(elapsed * 1000, 3)
                    peer = notes.pop("client", None) or _peer(context)
                    # The message repeats the essentials for the text format,
                    # which shows only the message.
                    call_log.log(
                        level,
                        "%s %s %.1fms %s",
                        method,
                        code,
                        latency_ms,
                        peer,
                        extra={
                            "call": {
                                "method": method,
                                "code": code,
                                "latency_ms": latency_ms,
                                "request_id": call_id,
                                "peer": peer,
                                **notes,
                            }
                        },
                    )

        if deserialize is None:
            return handler._replace(unary_unary=observed)

        def tolerant(data: bytes) -> Any:
            # grpcio answers a request it cannot decode INTERNAL, with an
            # ERROR traceback; it is the caller's mistake: INVALID_ARGUMENT.
            try:
                return deserialize(data)
            except Exception:
                return _Malformed()

        return handler._replace(unary_unary=observed, request_deserializer=tolerant)


#: Codes of calls refused before any handler ran, which callers without
#: credentials can make in any number: their call-log lines are budgeted.
UNTRUSTED_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED"})
#: The method name of :data:`UNKNOWN_METHOD` in the call log.
UNKNOWN_NAME = "unknown"


class LineBudget:
    """At most ``per_second`` lines a second (a token bucket of that size);
    the lines over budget are dropped, and counted in ``dropped``."""

    def __init__(self, per_second: float) -> None:
        self._rate = per_second
        self._tokens = per_second
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.dropped = 0

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            self.dropped += 1
            return False


class _Malformed:
    """A request whose bytes did not decode as the method's message."""

    __slots__ = ()


def _outcome(context: grpc.ServicerContext, default: str) -> str:
    """The code the caller saw: ``DEADLINE_EXCEEDED`` or ``CANCELLED`` when
    it had gone before the handler ended (whatever the handler answered was
    never delivered: a handler that outlived its caller must count neither
    as OK nor as the error it gave up with), else the code the handler set,
    else ``default``."""
    if not context.is_active():
        return "DEADLINE_EXCEEDED" if context.time_remaining() <= 0 else "CANCELLED"
    code = context.code()
    return code.name if code is not None else default


def _peer(context: grpc.ServicerContext) -> str:
    """Who called, when no token named the caller: the client certificate's
    identity under mutual TLS, else the address."""
    identities = context.peer_identities()
    if identities:
        return identities[0].decode(errors="replace")
    return context.peer()


class StateCollector:
    """Scrape-time gauges and counters, read from the stats each component
    exposes. The server hands it each source once the component exists
    (:meth:`attach`); a source not attached yet exports nothing."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self._cache_stats: Callable[[], CacheStats] | None = None
        self._pool_stats: Callable[[], dict[str, dict[str, int]]] | None = None
        self._decision: SplitDecision | None = None
        self._run_read_stats: Callable[[], dict[str, CoalescerStats]] | None = None
        self._listener_stats: Callable[[], ListenerStats] | None = None
        self._guard_stats: Callable[[], dict[str, dict[str, int]]] | None = None
        self._feed_stats: Callable[[], FeedStats] | None = None
        self._worker_stats: Callable[[], WorkerStats] | None = None

    def attach(
        self,
        *,
        cache_stats: Callable[[], CacheStats] | None = None,
        pool_stats: Callable[[], dict[str, dict[str, int]]] | None = None,
        decision: SplitDecision | None = None,
        run_read_stats: Callable[[], dict[str, CoalescerStats]] | None = None,
        listener_stats: Callable[[], ListenerStats] | None = None,
        guard_stats: Callable[[], dict[str, dict[str, int]]] | None = None,
        feed_stats: Callable[[], FeedStats] | None = None,
        worker_stats: Callable[[], WorkerStats] | None = None,
    ) -> None:
        """Start exporting the sources given (the others stay as they are)."""
        self._worker_stats = worker_stats or self._worker_stats
        self._feed_stats = feed_stats or self._feed_stats
        self._guard_stats = guard_stats or self._guard_stats
        self._cache_stats = cache_stats or self._cache_stats
        self._pool_stats = pool_stats or self._pool_stats
        self._decision = decision or self._decision
        self._run_read_stats = run_read_stats or self._run_read_stats
        self._listener_stats = listener_stats or self._listener_stats

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        ready = GaugeMetricFamily("resolver_ready", "1 while this process reports SERVING.")
        ready.add_metric([], 1 if self._ready() else 0)
        yield ready
        if self._cache_stats is not None:
            yield from _cache_families(self._cache_stats())
        if self._pool_stats is not None:
            yield from _pool_families(self._pool_stats())
        if self._decision is not None:
            yield from _split_families(self._decision)
        if self._run_read_stats is not None:
            yield from _run_read_families(self._run_read_stats())
        if self._listener_stats is not None:
            yield from _listener_families(self._listener_stats())
        if self._guard_stats is not None:
            yield from _guard_families(self._guard_stats())
        if self._feed_stats is not None:
            yield from _feed_families(self._feed_stats())
        if self._worker_stats is not None:
            yield from _worker_families(self._worker_stats())


_CACHE_COUNTERS = tuple(f.name for f in dataclasses.fields(SlotStats))


def _cache_families(stats: CacheStats) -> Iterator[Any]:
    families = {
        f: CounterMetricFamily(
            f"resolver_cache_{f}", f"Cache {f.replace('_', ' ')}.", labels=["slot"]
        )
        for f in _CACHE_COUNTERS
    }
    for slot, counters in stats.slots.items():
        for f in _CACHE_COUNTERS:
            families[f].add_metric([slot], getattr(counters, f))
    yield from families.values()
    inv = CounterMetricFamily(
        "resolver_cache_invalidations", "Cache invalidations by cause.", labels=["cause"]
    )
    for cause, count in stats.invalidations.items():
        inv.add_metric([cause], count)
    yield inv


def _pool_families(pools: dict[str, dict[str, int]]) -> Iterator[Any]:
    size = GaugeMetricFamily(
        "resolver_pool_connections", "Open pool connections.", labels=["database"]
    )
    waiting = GaugeMetricFamily(
        "resolver_pool_requests_waiting",
        "Callers waiting for a pool connection.",
        labels=["database"],
    )
    errors = CounterMetricFamily(
        "resolver_pool_errors", "Pool connection errors and timeouts.", labels=["database"]
    )
    for role, pool in pools.items():
        size.add_metric([role], pool.get("pool_size", 0))
        waiting.add_metric([role], pool.get("requests_waiting", 0))
        errors.add_metric(
            [role], pool.get("connections_errors", 0) + pool.get("requests_errors", 0)
        )
    yield from (size, waiting, errors)


def _guard_families(guards: dict[str, dict[str, int]]) -> Iterator[Any]:
    circuit = GaugeMetricFamily(
        "resolver_db_circuit_open",
        "1 while the database's circuit is open (its calls refused at once, probed).",
        labels=["database"],
    )
    opened = CounterMetricFamily(
        "resolver_db_circuit_opened", "Times the database's circuit opened.", labels=["database"]
    )
    refused = CounterMetricFamily(
        "resolver_db_refused",
        "Calls refused at once (UNAVAILABLE) by the database's guards, by cause.",
        labels=["database", "cause"],
    )
    reaped = CounterMetricFamily(
        "resolver_db_reaped",
        "Connections closed because their server did not answer in time.",
        labels=["database"],
    )
    for role, g in guards.items():
        circuit.add_metric([role], g["circuit_open"])
        opened.add_metric([role], g["circuit_opened"])
        refused.add_metric([role, "bulkhead"], g["refused_bulkhead"])
        refused.add_metric([role, "circuit"], g["refused_circuit"])
        reaped.add_metric([role], g["reaped"])
    yield from (circuit, opened, refused, reaped)


def _split_families(decision: SplitDecision) -> Iterator[Any]:
    split = GaugeMetricFamily("resolver_split_mode", "1 when the run-ops split is on.")
    split.add_metric([], 1 if decision.split else 0)
    yield split
    verdict = GaugeMetricFamily(
        "resolver_sentinel_verdict",
        "The distinct-database sentinel's verdict (1 = this one).",
        labels=["verdict"],
    )
    sentinel = decision.sentinel
    verdict.add_metric([sentinel.verdict.name if sentinel else "NOT_RUN"], 1)
    yield verdict


def _run_read_families(reads_by_role: dict[str, CoalescerStats]) -> Iterator[Any]:
    batches = CounterMetricFamily(
        "resolver_run_read_batches",
        "Queries run for coalesced run reads.",
        labels=["database"],
    )
    keys = CounterMetricFamily(
        "resolver_run_read_keys",
        "Run ids read by coalesced queries (keys / batches is the mean batch size).",
        labels=["database"],
    )
    inline = CounterMetricFamily(
        "resolver_run_read_inline_batches",
        "Coalesced run-read queries run on a caller's thread (the database was answering); "
        "the rest ran on the database's own threads.",
        labels=["database"],
    )
    for role, reads in reads_by_role.items():
        batches.add_metric([role], reads.batches)
        keys.add_metric([role], reads.keys)
        inline.add_metric([role], reads.inline)
    yield from (batches, keys, inline)


def _listener_families(stats: ListenerStats) -> Iterator[Any]:
    state = GaugeMetricFamily(
        "resolver_listener_listening", "1 while the invalidation listener is connected."
    )
    state.add_metric([], 1 if stats.state is ListenerState.LISTENING else 0)
    yield state
    n = CounterMetricFamily(
        "resolver_listener_notifications", "Invalidation notifications received."
    )
    n.add_metric([], stats.notifications)
    yield n
    markers = CounterMetricFamily(
        "resolver_listener_sync_markers",
        "Sync markers sent for calls asking for sync (x-resolver-sync); calls share them.",
    )
    markers.add_metric([], stats.sync_markers)
    yield markers


def _feed_families(stats: FeedStats) -> Iterator[Any]:
    watchers = GaugeMetricFamily("resolver_watch_streams", "WatchInvalidations streams open now.")
    watchers.add_metric([], stats.watchers)
    started = CounterMetricFamily(
        "resolver_watch_streams_started", "WatchInvalidations streams started."
    )
    started.add_metric([], stats.watches_started)
    published = CounterMetricFamily(
        "resolver_watch_invalidations", "Invalidations published to the watch streams."
    )
    published.add_metric([], stats.events_published)
    sent = CounterMetricFamily(
        "resolver_watch_events_sent",
        "Messages sent on watch streams (starts, invalidations, heartbeats).",
    )
    sent.add_metric([], stats.events_sent)
    dropped = CounterMetricFamily(
        "resolver_watch_streams_dropped",
        "Watch streams the server ended or refused, by reason (slow: behind or not "
        "reading; closed: shutting down; full: RESOLVER_WATCH_MAX_STREAMS reached).",
        labels=["reason"],
    )
    for reason, count in stats.dropped.items():
        dropped.add_metric([reason], count)
    yield from (watchers, started, published, sent, dropped)


def _worker_families(stats: WorkerStats) -> Iterator[Any]:
    threads = GaugeMetricFamily(
        "resolver_worker_threads", "Threads of the worker pool (at most RESOLVER_MAX_WORKERS)."
    )
    threads.add_metric([], stats.threads)
    wakes = CounterMetricFamily(
        "resolver_worker_wakes",
        "Idle worker threads woken for a call (under load, far fewer than the calls: a "
        "thread that finishes one takes the next).",
    )
    wakes.add_metric([], stats.wakes)
    stalls = CounterMetricFamily(
        "resolver_worker_stall_starts",
        "Calls started beyond RESOLVER_RUNNING_WORKERS because no call had started or "
        "finished for 20 ms (a wait the code does not declare; steady growth is a bug to report).",
    )
    stalls.add_metric([], stats.stall_starts)
    yield from (threads, wakes, stalls)
