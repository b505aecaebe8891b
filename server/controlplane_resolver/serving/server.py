"""Assembly: settings → safety → topology → resolver → gRPC server, with
health, reflection, authentication, TLS, metrics and an orderly shutdown.

Start-up order (docs/design.md, "Start-up and shutdown"): the split
decision and its interlocks run first, so a refused configuration never
serves. The pools open and the invalidation listener connects before the
service's port is bound: a client (or a load balancer) never reaches a
process that cannot answer yet, it finds the port closed and goes to
another. The health port (``RESOLVER_HEALTH_ADDR``), when configured, is
bound at once and says ``NOT_SERVING`` until the service port is bound and
``SERVING``.

Shutdown: health turns ``NOT_SERVING``, an optional pause lets load
balancers notice, ``server.stop(grace)`` drains in-flight calls, and only
then are the listener and pools closed.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane_resolver.cache import Cache, Slot, SlotPolicy
from controlplane_resolver.config import Settings
from controlplane_resolver.errors import ConfigError, StartCancelled, Unavailable
from controlplane_resolver.invalidation.feed import InvalidationFeed
from controlplane_resolver.invalidation.listener import InvalidationListener, ListenerState
from controlplane_resolver.invalidation.publisher import InvalidationPublisher
from controlplane_resolver.resolver import Resolver
from controlplane_resolver.serving.admission import Admission, AdmissionExecutor, grpc_limit
from controlplane_resolver.serving.auth import (
    AuthInterceptor,
    CertificateGrantsInterceptor,
    GrantsFile,
    TokenFile,
    is_loopback,
)
from controlplane_resolver.serving.health import HealthService
from controlplane_resolver.serving.observability import CallInterceptor, Metrics, StateCollector
from controlplane_resolver.serving.servicer import ResolverServicer
from controlplane_resolver.serving.tls import RotatingCertificates, TlsFiles, server_credentials
from controlplane_resolver.serving.watchdog import ProgressWatchdog
from controlplane_resolver.storage.topology import SplitDecision, Topology, decide_split
from controlplane_resolver_client.v1 import SERVICE, SERVICE_NAME, resolver_pb2_grpc

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: A health "service" that reports the invalidation listener alone: it goes
#: NOT_SERVING while the listener reconnects, without taking the resolver out.
LISTENER_HEALTH_NAME = "controlplane-resolver.invalidation-listener"


#: Calls received that may wait in grpc core for grpcio's polling thread
#: (see server_options): about five seconds of its pace on a 2-core machine
#: (docs/faults.md), so those still waiting beyond are mostly past their deadline.
PENDING_CALLS = 10_000


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server (docs/operations.md, "Connections")."""
    return [
        # grpcio enables SO_REUSEPORT by default: a second server could
        # silently share our port. Only --processes N shares it on purpose.
        ("grpc.so_reuseport", 1 if settings.processes > 1 else 0),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Closing old connections makes long-lived engine-node channels
        # re-resolve and spread over new replicas; the grace lets calls finish.
        ("grpc.max_connection_age_ms", settings.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", 30_000),
        # Idle connections cost memory and a file descriptor each: close
        # those without a call for five minutes (clients reconnect on use).
        ("grpc.max_connection_idle_ms", 300_000),
        ("grpc.max_receive_message_length", 1 << 20),
        # Calls grpc core has received but grpcio's polling thread has not
        # taken yet wait in a backlog, which grpc core bounds by cancelling
        # calls (CANCELLED, which clients do not retry) beyond 1,000 (some,
        # at random) and 3,000 (all) by default: a burst of thousands at once
        # ended partly CANCELLED. With a larger backlog they reach admission
        # and get answers (docs/faults.md, "burst").
        ("grpc.server.max_pending_requests", PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
    ]


#: How long before the end of a drain's grace the calls still waiting for
#: a database are answered UNAVAILABLE, so each answer is sent in time.
DRAIN_MARGIN_S = 0.5


def db_max_waiting(settings: Settings) -> int:
    """Calls that may wait on one database at once (the bulkhead)."""
    return settings.db_max_waiting or max(1, settings.max_workers * 2 // 3)


def guard_stats(topology: Topology | None) -> dict[str, dict[str, int]]:
    """Each database's circuit and bulkhead counters, by role."""
    if topology is None:
        return {}
    return {
        db.role.value: {
            "circuit_open": int(db.circuit.open),
            "circuit_opened": db.circuit.opened_total,
            "refused_bulkhead": db.refused["bulkhead"],
            "refused_circuit": db.refused["circuit"],
            "reaped": db.reaped,
        }
        for db in topology.databases
    }


def cache_policies(settings: Settings) -> dict[Slot, SlotPolicy]:
    """Slot lifetimes from settings (docs/caching.md)."""
    ms = 1 / 1000
    soft = settings.control_plane_cache_ttl_ms * ms
    hard = settings.control_plane_cache_hard_ttl_ms * ms
    negative = settings.control_plane_cache_negative_ttl_ms * ms
    size = settings.control_plane_cache_max_entries
    control_plane = SlotPolicy(
        soft_ttl=soft, hard_ttl=hard, negative_ttl=negative, max_entries=size
    )
    wv = settings.worker_version_cache_ttl_ms * ms
    return {
        Slot.ENVIRONMENT: control_plane,
        Slot.AUTHENTICATED_ENVIRONMENT: control_plane,
        Slot.ENV_EXISTS: control_plane,
        Slot.LOCKED_WORKER: control_plane,
        # A promotion must show within the worker-version TTL: never serve a
        # worker version past it (soft == hard), whatever the other slots do.
        Slot.WORKER_VERSION: SlotPolicy(
            soft_ttl=wv if soft else 0,
            hard_ttl=wv,
            negative_ttl=min(negative, wv),
            max_entries=size,
        ),
        # A feature-flag flip takes effect within the TTL: no stale serving.
        Slot.MINT_KIND: SlotPolicy(
            soft_ttl=soft, hard_ttl=soft, negative_ttl=negative, max_entries=size
        ),
    }


class ResolverApp:
    """One serving process. ``start()`` returns once the server is SERVING;
    ``stop()`` drains it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.decision: SplitDecision | None = None
        self.topology: Topology | None = None
        self.cache: Cache | None = None
        self.listener: InvalidationListener | None = None
        self.feed: InvalidationFeed | None = None
        self.publisher: InvalidationPublisher | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        #: True once start() has reported SERVING.
        self.ready = False
        self.certificates: RotatingCertificates | None = None
        self._stopped = threading.Event()
        self._stopping = threading.Lock()
        #: Orders the watchdog's health changes against stop()'s NOT_SERVING.
        self._health_lock = threading.Lock()
        self.watchdog: ProgressWatchdog | None = None
        self.tokens = self._check_authentication(settings)
        self.metrics = Metrics()
        self.state_metrics = StateCollector(ready=lambda: self.ready)
        self.metrics.registry.register(self.state_metrics)
        self.servicer = ResolverServicer()
        self.health = HealthService()
        # Each watch stream holds a thread of the executor's stream pool for
        # its life, beside the max_workers that serve calls.
        self.executor = AdmissionExecutor(
            settings.max_workers,
            running=settings.running_workers,
            stream_workers=settings.watch_max_streams,
        )
        self.state_metrics.attach(worker_stats=lambda: self.executor.workers.stats)
        self.admission = Admission(self.executor, settings.max_concurrent_rpcs, self.metrics)
        interceptors: list[grpc.ServerInterceptor] = [
            self.admission,
            CallInterceptor(self.metrics),
        ]
        if self.tokens is not None:
            interceptors.append(
                AuthInterceptor(
                    self.tokens,
                    open_health=settings.open_health,
                    open_reflection=settings.open_reflection,
                )
            )
        self.grants = (
            GrantsFile(settings.tls_client_grants_file) if settings.tls_client_grants_file else None
        )
        if self.grants is not None:
            interceptors.append(CertificateGrantsInterceptor(self.grants))
        self.server = grpc.server(
            self.executor,
            interceptors=interceptors,
            options=server_options(settings),
            # Admission refuses beyond the limit (RESOURCE_EXHAUSTED with a
            # retry delay); grpcio's own refusal bounds the refusals queued.
            maximum_concurrent_rpcs=grpc_limit(settings.max_concurrent_rpcs),
        )
        resolver_pb2_grpc.add_ControlPlaneResolverServiceServicer_to_server(
            self.servicer, self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # Probes that cannot speak TLS or send tokens get the health service
        # alone on a plaintext port of its own, outside the call limit.
        self.health_server: grpc.Server | None = None
        if settings.health_addr:
            self.health_server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-health"),
                options=server_options(settings),
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.metrics.preregister(
            # The unary methods: CallInterceptor counts those (the watch
            # stream is counted by the feed).
            [f"/{SERVICE_NAME}/{m.name}" for m in SERVICE.methods if not m.server_streaming]
            + [f"/{HEALTH_SERVICE_NAME}/Check"]
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    @staticmethod
    def _check_authentication(settings: Settings) -> TokenFile | None:
        tokens = TokenFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
        if tokens is None and not settings.tls_client_ca:
            if not is_loopback(settings.addr) and not settings.allow_unauthenticated:
                raise ConfigError(
                    f"refusing to serve {settings.addr} without authentication: set "
                    "RESOLVER_AUTH_TOKENS_FILE (bearer tokens) or RESOLVER_TLS_CLIENT_CA (mutual "
                    "TLS), listen on a loopback address, or pass --allow-unauthenticated"
                )
            log.warning(
                "serving %s WITHOUT authentication: any caller that reaches it can "
                "read API keys with ResolveAuthenticatedEnv",
                settings.addr,
            )
        elif tokens is None and not settings.tls_client_grants_file:
            log.warning(
                "mutual TLS without RESOLVER_AUTH_TOKENS_FILE or RESOLVER_TLS_CLIENT_GRANTS_FILE: "
                "every certificate the client CA signed may call every method, "
                "ResolveAuthenticatedEnv (API keys) included; grant methods per certificate "
                "in RESOLVER_TLS_CLIENT_GRANTS_FILE"
            )
        return tokens

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _on_listener_state(self, state: ListenerState) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if state is ListenerState.LISTENING
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set(LISTENER_HEALTH_NAME, status)
        if self.feed is not None:
            self.feed.set_listening(state is ListenerState.LISTENING)

    def _bind(self) -> int:
        """Bind the service's port (not started yet)."""
        s = self.settings
        try:
            if s.tls_cert and s.tls_key:
                creds, self.certificates = server_credentials(
                    TlsFiles(s.tls_cert, s.tls_key, s.tls_client_ca)
                )
                port = self.server.add_secure_port(s.addr, creds)
            else:
                port = self.server.add_insecure_port(s.addr)
        except RuntimeError:  # grpcio raises instead of returning 0 on a busy port
            port = 0
        if port == 0:
            raise OSError(f"could not listen on {s.addr}: is the port in use?")
        return port

    def _serve_health_port(self) -> None:
        """Bind and start the health port, when one is configured (with one
        process, at the start of start-up: probes see NOT_SERVING meanwhile)."""
        s = self.settings
        if self.health_server is None or not s.health_addr:
            return
        try:
            self.health_port = self.health_server.add_insecure_port(s.health_addr)
        except RuntimeError:
            self.health_port = 0
        if self.health_port == 0:
            raise OSError(
                f"could not listen on {s.health_addr} (RESOLVER_HEALTH_ADDR): is the port in use?"
            )
        self.health_server.start()

    def start(
        self,
        *,
        pool_wait_s: float | None = None,
        cancel: threading.Event | None = None,
        decision: SplitDecision | None = None,
    ) -> None:
        """Check, open pools and the listener, then bind the service's port
        and report SERVING (with one process, the health port, if any, is
        bound first).

        Raises :class:`~controlplane_resolver.storage.interlocks.Refusal` (before binding)
        for a refused split configuration, and
        :class:`~controlplane_resolver.errors.Unavailable` when a database
        does not answer within ``pool_wait_s`` (default: the start-up
        timeout setting), :class:`~controlplane_resolver.storage.database.StartCancelled`
        once ``cancel`` is set. Either way the server is stopped again.
        ``decision`` is a split decision already taken (by the parent of
        ``--processes N``); the checks then do not run again.
        """
        if pool_wait_s is None:
            pool_wait_s = self.settings.startup_timeout_ms / 1000
        self.decision = decision or decide_split(self.settings)
        for line in self.decision.describe():
            log.info("%s", line)
        for warning in self.decision.warnings:
            log.warning("%s", warning)
        if self.settings.metrics_addr:
            self.metrics_port = self.metrics.serve_http(self.settings.metrics_addr)
            host = self.settings.metrics_addr.rpartition(":")[0] or "0.0.0.0"
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
        # The health port of one of several processes sharing it is bound
        # once ready too: a probe must not see one process still starting
        # while the others serve.
        health_early = self.settings.processes == 1
        try:
            if health_early:
                self._serve_health_port()
            self.topology = Topology(self.decision, self.settings)
            for db in self.topology.databases:
                db.set_limits(
                    max_waiting=db_max_waiting(self.settings),
                    probe_interval_s=self.settings.db_probe_interval_ms / 1000,
                )
            self.state_metrics.attach(
                pool_stats=self.topology.get_stats,
                decision=self.topology.decision,
                guard_stats=lambda: guard_stats(self.topology),
            )
            self.topology.open(wait_s=pool_wait_s, cancel=cancel)
            self.cache = Cache(cache_policies(self.settings))
            self.state_metrics.attach(cache_stats=self.cache.get_stats)
            self.feed = InvalidationFeed(
                revision=self.cache.revision,
                heartbeat_s=self.settings.watch_heartbeat_ms / 1000,
                max_watchers=self.settings.watch_max_streams,
            )
            self.cache.set_invalidation_observer(self.feed.publish)
            self.state_metrics.attach(feed_stats=self.feed.get_stats)
            self.publisher = InvalidationPublisher(
                self.settings.control_plane_database_url,
                timeout_s=self.settings.db_timeout_ms / 1000,
            )
            if self.settings.listen_enabled:
                self.health.set(LISTENER_HEALTH_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
                self.listener = InvalidationListener(
                    self.settings.control_plane_database_url,
                    self.cache,
                    on_state=self._on_listener_state,
                    is_echo=self.publisher.is_echo,
                    send_marker=self.publisher.send_marker,
                )
                self.state_metrics.attach(listener_stats=self.listener.get_stats)
                self.listener.start()
                self.servicer.sync = self.listener.sync
                # Never answer from a cache that may have missed invalidations.
                if not self._wait_listening(pool_wait_s, cancel):
                    raise Unavailable(
                        "the invalidation listener could not LISTEN on the control-plane "
                        f"primary within {pool_wait_s:g}s: check the primary is reachable, or "
                        "set RESOLVER_LISTEN_ENABLED=0 to rely on TTLs alone"
                    )
            # The feed first: answers carry its server id from the first call.
            self.servicer.feed = self.feed
            self.servicer.resolver = Resolver(
                self.topology,
                self.cache,
                fill_wait_s=self.settings.db_timeout_ms / 1000,
                mint_ksuid_enabled=self.settings.run_ops_mint_ksuid_enabled,
                run_read_gather_s=self.settings.run_read_gather_us / 1e6,
                publish=self.publisher.publish,
            )
            self.state_metrics.attach(run_read_stats=self.servicer.resolver.run_read_stats)
            # Bound only now, once ready: a process still starting is not
            # reachable (with --processes N the kernel would otherwise hand
            # it a share of the shared port's connections), so callers and
            # load balancers go to a replica that can answer.
            self._serve_ports()
            if not health_early:
                self._serve_health_port()
        except BaseException:
            self.stop(grace=0, pause=0)
            raise
        with self._health_lock:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
            self.ready = True
        log.info("serving %s on %s (port %d)", SERVICE_NAME, self.settings.addr, self.port)
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        s = self.settings
        if not s.stuck_after_ms:
            return
        if s.stuck_after_ms < 6 * s.db_timeout_ms:
            log.warning(
                "RESOLVER_STUCK_AFTER_MS (%d) is under 6 x RESOLVER_DB_TIMEOUT_MS (%d): "
                "calls waiting on a slow database may be taken for stuck ones and the "
                "process restarted; raise it",
                s.stuck_after_ms,
                s.db_timeout_ms,
            )

        def on_change(stuck: bool) -> None:
            with self._health_lock:
                if self.ready:  # never undo stop()'s NOT_SERVING
                    self._set_health(
                        health_pb2.HealthCheckResponse.NOT_SERVING
                        if stuck
                        else health_pb2.HealthCheckResponse.SERVING
                    )

        self.watchdog = ProgressWatchdog(self.metrics.progress, s.stuck_after_ms / 1000, on_change)
        self.watchdog.start()

    def _serve_ports(self) -> None:
        self.port = self._bind()
        self.server.start()

    def _wait_listening(self, wait_s: float, cancel: threading.Event | None) -> bool:
        assert self.listener is not None
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.listener.wait_listening(0.25):
                return True
            if cancel is not None and cancel.is_set():
                raise StartCancelled("start-up cancelled while the listener connected")
        return False

    def stop(
        self, grace: float | None = None, pause: float | None = None, *, close_server: bool = True
    ) -> None:
        """Report NOT_SERVING, wait ``pause`` seconds (clients that watch
        health, and load balancers, move to other replicas meanwhile), then
        drain: new calls are answered UNAVAILABLE (``SHUTTING_DOWN``) while
        the calls in flight get up to ``grace`` seconds to finish; then stop
        the server and close the listener and pools. Defaults come from the
        settings. Idempotent.

        grpc core's own shutdown (``close_server=True``) cancels the calls
        it has received but no thread has taken yet, and their callers see
        CANCELLED, which clients do not retry. A process that exits next
        passes ``close_server=False``: the server is left answering
        ``SHUTTING_DOWN``, and pools, listener and metrics endpoint are left
        open, until the exit closes every connection at once (a call still
        open then ends UNAVAILABLE at its caller; docs/operations.md,
        "Draining")."""
        with self._stopping:
            if self._stopped.is_set():
                return
            s = self.settings
            grace = s.shutdown_grace_ms / 1000 if grace is None else grace
            pause = s.shutdown_pause_ms / 1000 if pause is None else pause
            if self.watchdog is not None:
                self.watchdog.stop()
            with self._health_lock:
                self.ready = False
                self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            if pause > 0:
                log.info("NOT_SERVING; draining in %.1fs", pause)
                time.sleep(pause)  # the documented pause, not synchronisation
            if self.feed is not None:
                # Watchers end now and reconnect elsewhere.
                self.feed.close()
            self.admission.drain()
            # Calls still waiting for a database near the end of the grace
            # are answered UNAVAILABLE (retried elsewhere) before the grace
            # ends and the process with it.
            resolver = self.servicer.resolver
            if not self.executor.wait_idle(max(0.0, grace - DRAIN_MARGIN_S)):
                if resolver is not None:
                    resolver.drain()
                if not self.executor.wait_idle(min(grace, DRAIN_MARGIN_S)):
                    log.warning(
                        "%d calls still running at the end of the %.1fs grace "
                        "(RESOLVER_SHUTDOWN_GRACE_MS) are cut: raise it if calls need longer",
                        self.executor.in_flight,
                        grace,
                    )
            if close_server:
                self.server.stop(0).wait()
                if self.health_server is not None:
                    self.health_server.stop(0).wait()
                self._close_resources()
            self._stopped.set()
            log.info("stopped")

    def _close_resources(self) -> None:
        if self.servicer.resolver is not None:
            self.servicer.resolver.close()
        if self.listener is not None:
            self.listener.stop()
        if self.publisher is not None:
            self.publisher.close()
        if self.topology is not None:
            self.topology.close()
        if self.cache is not None:
            self.cache.close()
        self.metrics.close()

    def wait(self) -> None:
        """Block until :meth:`stop` has finished."""
        self._stopped.wait()
