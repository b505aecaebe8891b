"""Liveness of a wedged server: the health port has threads of its own, so
only the progress watchdog (watchdog.py) can tell the liveness probe that
the main server's worker threads are stuck."""

from __future__ import annotations

import grpc
import psycopg
from grpc_health.v1 import health_pb2

from controlplane_resolver.dev.clusters import free_port
from controlplane_resolver.serving.watchdog import ProgressWatchdog
from controlplane_resolver_client import pb
from controlplane_resolver_client.v1 import SERVICE_NAME, resolver_pb2_grpc

from support.polling import wait_until
from support.processes import health_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_calls_a_server_stuck_only_when_calls_wait_and_none_finishes():
    clock, counts, changes = Clock(), [0, 0], []
    watchdog = ProgressWatchdog(lambda: (counts[0], counts[1]), 10, changes.append, clock=clock)
    clock.now = 100
    assert watchdog.check(), "idle is not stuck, however long"
    counts[0] = 1  # one call in flight from now on
    assert watchdog.check()
    clock.now = 109.9
    assert watchdog.check()
    clock.now = 110
    assert not watchdog.check() and changes == [True]
    assert not watchdog.check() and changes == [True], "reported once"
    counts[1] = 1  # it finished
    assert watchdog.check() and changes == [True, False]
    # Busy: calls pile up, but some finish between looks.
    for _ in range(50):
        counts[0] += 3
        counts[1] += 1
        clock.now += 9
        assert watchdog.check()
    assert changes == [True, False]


def test_a_server_whose_workers_all_hang_reports_not_serving_until_calls_finish(
    start_server, databases, cp, tenant
):
    envs = [tenant.environment(cp) for _ in range(2)]
    health_port = free_port()
    probe = f"127.0.0.1:{health_port}"
    # Two worker threads; the database timeout far beyond the watchdog's
    # limit, so the blocked calls stay in flight (a real deployment keeps
    # the limit above 6 x the database timeout; start-up warns otherwise).
    # Both calls may wait on the database (the bulkhead would otherwise
    # refuse the second at once: a database lock no longer holds every
    # worker thread, see test_faults; the watchdog is what is tested here).
    running = start_server(
        max_workers=2,
        db_max_waiting=2,
        db_timeout_ms=60_000,
        stuck_after_ms=400,
        health_addr=probe,
        listen_enabled=False,
    )
    assert health_status(probe) == SERVING
    with (
        grpc.insecure_channel(running.address) as channel,
        psycopg.connect(databases.control_plane) as locker,
    ):
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
        calls = [
            stub.ResolveEnv.future(pb.ResolveEnvRequest(environment_id=e), timeout=60) for e in envs
        ]
        # Every worker waits on the lock: the health port still answers,
        # and now says NOT_SERVING, for the process and for the service.
        wait_until(lambda: health_status(probe) == NOT_SERVING, timeout=15, interval=0.05)
        assert health_status(probe, SERVICE_NAME) == NOT_SERVING
        assert all(not c.done() for c in calls)
        locker.rollback()
        assert sorted(c.result(timeout=30).environment.id for c in calls) == sorted(envs)
    wait_until(lambda: health_status(probe) == SERVING, timeout=15, interval=0.05)
    assert health_status(probe, SERVICE_NAME) == SERVING
