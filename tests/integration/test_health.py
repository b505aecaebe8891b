"""The health service (serving/health.py) over a real server: Check and
Watch answers, and watchers that leave while a status changes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@pytest.fixture
def health(start_server) -> Iterator[tuple[object, health_pb2_grpc.HealthStub]]:
    running = start_server()
    with grpc.insecure_channel(running.address) as channel:
        yield running.app, health_pb2_grpc.HealthStub(channel)


def test_check_answers_known_services_and_not_found_for_others(health) -> None:
    _app, stub = health
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    with pytest.raises(grpc.RpcError) as failure:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_watch_follows_the_status_in_the_order_it_was_set(health) -> None:
    app, stub = health
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="later"), timeout=10)
    try:
        assert next(watch).status == SERVICE_UNKNOWN
        for status in (SERVING, NOT_SERVING, SERVING):
            app.health.set("later", status)
        assert [next(watch).status for _ in range(3)] == [SERVING, NOT_SERVING, SERVING]
    finally:
        watch.cancel()


def test_watchers_leaving_while_the_status_changes_stop_nothing(health) -> None:
    """A watcher whose stream ends while set() sends to it must not wedge
    set() or the server's polling thread (grpcio-health-checking's own
    servicer deadlocks there)."""
    app, stub = health
    stop = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not stop.is_set():
            app.health.set("flip", SERVING if flips % 2 else NOT_SERVING)
            flips += 1

    flipper = threading.Thread(target=flip, name="health-flipper", daemon=True)
    flipper.start()
    try:
        for _ in range(150):
            watches = [
                stub.Watch(health_pb2.HealthCheckRequest(service="flip"), timeout=5)
                for _ in range(4)
            ]
            for watch in watches:
                next(watch)  # DEADLINE_EXCEEDED once the polling thread is stuck
            for watch in watches:
                watch.cancel()
    finally:
        stop.set()
        flipper.join(timeout=10)
    assert not flipper.is_alive(), "set() never returned: a send waits on a stuck polling thread"
    assert flips > 150
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
