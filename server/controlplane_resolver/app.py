"""Assembly: settings → safety → topology → resolver → gRPC server, with
the health and reflection services, and an orderly shutdown.

Start-up order (spec section 2): the split decision and its interlocks run
before the port is bound, so a refused configuration never serves. The
server then starts with health ``NOT_SERVING`` while the pools open, and
turns ``SERVING`` once every pool has a working connection.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane_resolver_client._gen.controlplane.resolver.v1 import resolver_pb2, resolver_pb2_grpc

from .cache import Cache
from .config import Settings
from .errors import Unavailable
from .listener import InvalidationListener, ListenerState
from .resolver import Resolver, cache_policies
from .servicer import ResolverServicer
from .topology import SplitDecision, Topology, decide_split

log = logging.getLogger(__name__)

SERVICE_NAME = resolver_pb2.DESCRIPTOR.services_by_name["ControlPlaneResolverService"].full_name
#: A health "service" that reports the invalidation listener alone: it goes
#: NOT_SERVING while the listener reconnects, without taking the resolver out.
LISTENER_HEALTH_NAME = "controlplane-resolver.invalidation-listener"


class ResolverApp:
    """One serving process. ``start()`` returns once the server is SERVING;
    ``stop()`` drains it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.decision: SplitDecision | None = None
        self.topology: Topology | None = None
        self.cache: Cache | None = None
        self.port: int | None = None
        self.listener: InvalidationListener | None = None
        self._stopped = threading.Event()
        self.servicer = ResolverServicer()
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers,
                                       thread_name_prefix="grpc-worker"),
            # grpcio enables SO_REUSEPORT by default: a second server could
            # silently share our port. Refuse that.
            options=[("grpc.so_reuseport", 0)],
        )
        resolver_pb2_grpc.add_ControlPlaneResolverServiceServicer_to_server(self.servicer,
                                                                             self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self.server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _on_listener_state(self, state: ListenerState) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if state is ListenerState.LISTENING
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(LISTENER_HEALTH_NAME, status)

    def start(self, *, pool_wait_s: float = 30.0) -> None:
        """Check, bind, open pools, then report SERVING.

        Raises :class:`~controlplane_resolver.safety.Refusal` (before binding)
        for a refused split configuration, and
        :class:`~controlplane_resolver.errors.Unavailable` when a database
        does not answer within ``pool_wait_s`` (the server is stopped again).
        """
        self.decision = decide_split(self.settings)
        for line in self.decision.describe():
            log.info("%s", line)
        port = self.server.add_insecure_port(self.settings.addr)
        if port == 0:
            raise OSError(f"could not listen on {self.settings.addr}: is the port in use?")
        self.port = port
        self.server.start()
        try:
            self.topology = Topology(self.decision, self.settings)
            self.topology.open(wait_s=pool_wait_s)
            self.cache = Cache(cache_policies(self.settings))
            if self.settings.listen_enabled:
                self.health.set(LISTENER_HEALTH_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
                self.listener = InvalidationListener(self.settings.control_plane_database_url,
                                                     self.cache, on_state=self._on_listener_state)
                self.listener.start()
                # Never answer from a cache that may have missed invalidations.
                if not self.listener.wait_listening(pool_wait_s):
                    raise Unavailable(
                        "the invalidation listener could not LISTEN on the control-plane "
                        f"primary within {pool_wait_s:g}s: check the primary is reachable, or "
                        "set RESOLVER_LISTEN_ENABLED=0 to rely on TTLs alone")
            self.servicer.resolver = Resolver(self.topology, self.cache,
                                              fill_wait_s=self.settings.db_timeout_ms / 1000)
        except BaseException:
            self.stop(grace=0)
            raise
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s (port %d)", SERVICE_NAME, self.settings.addr, port)

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, drain in-flight calls for up to ``grace``
        seconds, then close the pools. Idempotent."""
        if self._stopped.is_set():
            return
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        if self.listener is not None:
            self.listener.stop()
        if self.topology is not None:
            self.topology.close()
        if self.cache is not None:
            self.cache.close()
        self._stopped.set()
        log.info("stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` has finished."""
        self._stopped.wait()
