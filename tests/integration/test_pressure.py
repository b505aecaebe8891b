"""Behaviour under pressure , on a real server over a table held
locked by the test (the database is slow, not down): each caller's deadline
bounds its own wait without failing the others, a call that arrives too
late never reaches the database, and overload is refused at once with
RESOURCE_EXHAUSTED instead of queueing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from controlplane_resolver.cache import Slot
from controlplane_resolver.dev import demo
from controlplane_resolver_client import ResolverError, pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

from support.credentials import classify
from support.databases import Tenant
from support.polling import wait_until
from support.scraping import handled, scrape_server
from support.servers import Running

LOCK = 'LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE'


@contextmanager
def environments_locked(running: Running) -> Iterator[None]:
    """Hold an exclusive lock on the environments table: every SELECT of it
    waits until the block ends, like a database that is slow to answer."""
    with psycopg.connect(running.app.settings.control_plane_database_url) as locker:
        locker.execute(LOCK)
        try:
            yield
        finally:
            locker.rollback()


def lock_waiters(dsn: str, role: str) -> int:
    """The resolver's connections of ``role`` (``control-plane``,
    ``run-ops``) waiting for a lock in ``dsn``'s database right now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database() "
            "AND wait_event_type = 'Lock'",
            (f"controlplane-resolver:{role}",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def timed_failure(call: Callable[[], Any]) -> tuple[grpc.StatusCode, float]:
    """The status a failing call ends with, and how long it took."""
    started = time.monotonic()
    with pytest.raises(ResolverError) as failed:
        call()
    return failed.value.code, time.monotonic() - started


class Background:
    """A call running on its own thread; ``result`` once it has finished."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,))
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # handed to the test through join()
            self.error = exc

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert self.finished, "the call did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def test_each_callers_deadline_bounds_its_own_wait_and_fails_no_other(
    start_server, cp, tenant: Tenant
) -> None:
    # The database timeout is long: only the callers' deadlines can end
    # the waits below while the table is locked.
    running = start_server(metrics_addr="127.0.0.1:0", db_timeout_ms=10_000, listen_enabled=False)
    client = running.client
    env_id = tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    dsn = running.app.settings.control_plane_database_url
    with environments_locked(running):
        # The first caller leads the load, which blocks on the lock.
        leader = Background(lambda: client.resolve_env(env_id, timeout=1.5))
        wait_until(lambda: stats.loads == 1, timeout=5)
        # A second caller joins the blocked load with a short deadline.
        code, took = timed_failure(lambda: client.resolve_env(env_id, timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and took < 1.0
        assert stats.joins == 1
        # The server itself gave up on the joiner at its deadline (not just
        # the client), while the table is still locked.
        wait_until(
            lambda: handled(scrape_server(running), "ResolveEnv", "DEADLINE_EXCEEDED") >= 1,
            timeout=2,
        )
        # A third caller with time to spare joins the same load before the
        # leader gives up, and keeps it running after the leader has gone.
        patient = Background(lambda: client.resolve_env(env_id, timeout=20))
        wait_until(lambda: stats.joins == 2, timeout=5)
        with pytest.raises(ResolverError) as gone:
            leader.join(5)
        assert gone.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not patient.finished
        assert stats.abandoned == 0 and lock_waiters(dsn, "control-plane") == 1
    # Released: the one load completes and the patient caller gets the value.
    assert patient.join(10).id == env_id
    assert stats.loads == 1 and stats.load_errors == 0 and stats.abandoned == 0
    assert client.resolve_env(env_id).id == env_id  # now cached
    assert stats.hits == 1
    s = scrape_server(running)
    assert handled(s, "ResolveEnv", "OK") == 2
    # Leader and joiner: the server knows neither got an answer.
    wait_until(
        lambda: handled(scrape_server(running), "ResolveEnv", "DEADLINE_EXCEEDED") == 2, timeout=5
    )


def test_a_cached_load_nobody_waits_for_is_cancelled(start_server, cp, tenant: Tenant) -> None:
    # Statements may run 20 s: only the cancellation can end the lock wait
    # below while the table stays locked.
    running = start_server(db_timeout_ms=20_000, listen_enabled=False)
    client = running.client
    env_id = tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    dsn = running.app.settings.control_plane_database_url
    with environments_locked(running):
        leader = Background(lambda: client.resolve_env(env_id, timeout=1.0))
        wait_until(lambda: lock_waiters(dsn, "control-plane") == 1, timeout=5)
        code, _took = timed_failure(lambda: client.resolve_env(env_id, timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and stats.joins == 1
        # One caller still waits: the load runs on.
        assert lock_waiters(dsn, "control-plane") == 1 and stats.abandoned == 0
        with pytest.raises(ResolverError) as gone:
            leader.join(5)
        assert gone.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # Nobody waits any more: the statement stops waiting for the lock,
        # which is still held, long before the statement timeout.
        wait_until(lambda: lock_waiters(dsn, "control-plane") == 0, timeout=5)
        assert stats.abandoned == 1
    # The cancellation was not cached: the next caller loads the answer.
    assert client.resolve_env(env_id, timeout=10).id == env_id
    assert stats.loads == 2


def test_a_cached_load_whose_callers_cancelled_is_cancelled(
    start_server, cp, tenant: Tenant
) -> None:
    """Callers that cancel (a client shutting down, a caller that moved on)
    stop waiting at once, not at their deadlines: when the last has gone,
    the load's statement is cancelled, long before those deadlines. Both
    calls are counted CANCELLED: what the callers saw, not the error the
    server gave up with."""
    running = start_server(metrics_addr="127.0.0.1:0", db_timeout_ms=20_000, listen_enabled=False)
    env_id = tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    dsn = running.app.settings.control_plane_database_url
    request = pb.ResolveEnvRequest(environment_id=env_id)
    with environments_locked(running), grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        leader = stub.ResolveEnv.future(request, timeout=30)
        wait_until(lambda: lock_waiters(dsn, "control-plane") == 1, timeout=5)
        joiner = stub.ResolveEnv.future(request, timeout=30)
        wait_until(lambda: stats.joins == 1, timeout=5)
        assert leader.cancel()
        # One caller still waits: the load runs on.
        assert lock_waiters(dsn, "control-plane") == 1 and stats.abandoned == 0
        assert joiner.cancel()
        wait_until(lambda: lock_waiters(dsn, "control-plane") == 0, timeout=5)
        assert stats.abandoned == 1
        counted = wait_until(
            lambda: (lambda s: s if handled(s, "ResolveEnv", "CANCELLED") == 2 else None)(
                scrape_server(running)
            ),
            timeout=5,
            what="both cancelled calls to be counted",
        )
        assert handled(counted, "ResolveEnv", "UNAVAILABLE") == 0
    assert running.client.resolve_env(env_id, timeout=10).id == env_id
    assert stats.loads == 2


def test_a_batch_load_its_caller_gave_up_on_is_cancelled(start_server, cp, tenant: Tenant) -> None:
    running = start_server(db_timeout_ms=20_000, listen_enabled=False)
    env_id = tenant.environment(cp)
    dsn = running.app.settings.control_plane_database_url
    with environments_locked(running), grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.BatchResolveEnvs(pb.BatchResolveEnvsRequest(environment_ids=[env_id]), timeout=1.0)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: lock_waiters(dsn, "control-plane") == 0, timeout=5)
    assert running.client.resolve_env(env_id, timeout=10).id == env_id


def test_call_whose_deadline_passed_before_it_was_served_never_touches_the_database(
    start_server, cp, tenant: Tenant
) -> None:
    # One worker thread: a second call waits in the server's queue.
    running = start_server(max_workers=1, db_timeout_ms=10_000, listen_enabled=False)
    client = running.client
    blocked_env, late_env = tenant.environment(cp), tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    with environments_locked(running):
        first = Background(lambda: client.resolve_env(blocked_env, timeout=20))
        wait_until(lambda: stats.loads == 1, timeout=5)
        # Queued behind the blocked call until its deadline has passed.
        code, took = timed_failure(lambda: client.resolve_env(late_env, timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and took < 1.0
    assert first.join(10).id == blocked_env
    # The worker is free again and has dealt with the late call by now: a
    # call queued after it has been answered.
    assert classify(client)
    assert (stats.loads, stats.misses) == (1, 1)
    assert len(running.app.cache) == 1


def test_overload_is_refused_at_once_and_recovers(start_server, cp, tenant: Tenant) -> None:
    # The bulkhead admits all four (its default would refuse two of them at
    # once, tested in test_bulkheads): here the server's call limit is full,
    # and further calls are answered at once on the express threads.
    running = start_server(
        max_concurrent_rpcs=4,
        max_workers=4,
        db_max_waiting=4,
        db_timeout_ms=10_000,
        listen_enabled=False,
    )
    client = running.client
    envs = [tenant.environment(cp) for _ in range(4)]
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    with environments_locked(running):
        blocked = [Background(lambda e=e: client.resolve_env(e, timeout=30).id) for e in envs]
        # Four calls in progress, each waiting on the locked table.
        wait_until(lambda: stats.loads == 4, timeout=5)
        refusals = [
            timed_failure(lambda: client.resolve_env(envs[0], timeout=10)) for _ in range(6)
        ]
        # Other methods too, even those that need no database.
        refusals.append(timed_failure(lambda: classify(client, timeout=10)))
        assert {code for code, _ in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert max(took for _, took in refusals) < 1.0
        # With a reason and a retry delay (one attempt, bare channel).
        with grpc.insecure_channel(running.address) as channel:
            stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ClassifyRunId(pb.ClassifyRunIdRequest(id="c" * 25), timeout=10)
        status = rpc_status.from_call(refused.value)
        assert status is not None
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        status.details[0].Unpack(info)
        status.details[1].Unpack(retry)
        assert (info.reason, retry.retry_delay.ToMilliseconds()) == ("OVERLOADED", 100)
        assert "RESOLVER_MAX_CONCURRENT_RPCS" in refused.value.details()
        # Health checks and watches are answered on the express threads,
        # while every worker waits on the database.
        with grpc.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=2)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
        assert not any(call.finished for call in blocked)
    assert [call.join(10) for call in blocked] == envs
    # Recovered: a burst within the limit is served in full.
    burst = [Background(lambda e=e: client.resolve_env(e).id) for e in envs]
    assert [call.join(10) for call in burst] == envs
    assert classify(client)


def test_call_cancelled_by_its_caller_is_counted_as_cancelled(
    start_server, cp, tenant: Tenant
) -> None:
    running = start_server(metrics_addr="127.0.0.1:0", db_timeout_ms=10_000, listen_enabled=False)
    env_id = tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    with grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        with environments_locked(running):
            pending = stub.ResolveEnv.future(
                pb.ResolveEnvRequest(environment_id=env_id), timeout=20
            )
            wait_until(lambda: stats.loads == 1, timeout=5)
            assert pending.cancel()
    # The handler finished after its caller left: not an OK nobody received.
    # Wait for the call to be counted at all (the load finishes once the lock
    # is gone), then check how.
    finished = wait_until(
        lambda: (
            lambda s: (
                s
                if handled(s, "ResolveEnv", "CANCELLED") + handled(s, "ResolveEnv", "OK") >= 1
                else None
            )
        )(scrape_server(running)),
        timeout=15,
        what="the cancelled call to be counted",
    )
    assert handled(finished, "ResolveEnv", "CANCELLED") == 1
    assert handled(finished, "ResolveEnv", "OK") == 0


def test_a_drain_answers_new_calls_shutting_down_while_calls_in_flight_finish(
    start_server, cp, tenant: Tenant
) -> None:
    running = start_server(db_timeout_ms=10_000, listen_enabled=False)
    env_id = tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    with environments_locked(running), grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        in_flight = Background(lambda: running.client.resolve_env(env_id, timeout=20))
        wait_until(lambda: stats.loads == 1, timeout=5)
        stopping = Background(lambda: running.app.stop(grace=20, pause=0))
        wait_until(lambda: running.app.admission.draining, timeout=5)
        # A new call (one attempt, bare channel) is answered at once, with
        # a reason and a 10 ms retry delay: retried elsewhere, never CANCELLED.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ClassifyRunId(pb.ClassifyRunIdRequest(id="c" * 25), timeout=10)
        assert time.monotonic() - started < 1.0
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(refused.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        assert info.reason == "SHUTTING_DOWN"
        assert dict(refused.value.trailing_metadata())["grpc-retry-pushback-ms"] == "10"
        # Health checks are answered still: NOT_SERVING.
        checked = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The call taken on before the drain is still waiting, not cut.
        assert not in_flight.finished and not stopping.finished
    # Released: the call in flight is answered, then the drain ends.
    assert in_flight.join(10).id == env_id
    stopping.join(10)
    assert running.app.admission.refused["draining"] >= 1


def test_a_drain_ends_watch_streams_first_and_refuses_new_ones(
    start_server, cp, tenant: Tenant
) -> None:
    running = start_server(db_timeout_ms=10_000, listen_enabled=False)
    env_id = tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    with environments_locked(running), grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        watching = stub.WatchInvalidations(pb.WatchInvalidationsRequest())
        assert next(watching).WhichOneof("event") == "start"
        in_flight = Background(lambda: running.client.resolve_env(env_id, timeout=20))
        wait_until(lambda: stats.loads == 1, timeout=5)
        stopping = Background(lambda: running.app.stop(grace=20, pause=0))
        wait_until(lambda: running.app.admission.draining, timeout=5)
        # The open stream has ended, without an error: its client moves on.
        assert [m.WhichOneof("event") for m in watching] in ([], ["heartbeat"])
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.WatchInvalidations(pb.WatchInvalidationsRequest(), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not in_flight.finished
    assert in_flight.join(10).id == env_id
    stopping.join(10)
    assert running.app.feed.get_stats().dropped["closed"] == 1


# ------------------------------------------------- loads nobody waits for


RUNS_LOCK = 'LOCK TABLE "TaskRun" IN ACCESS EXCLUSIVE MODE'


@pytest.mark.parametrize("leaves", ["at_its_deadline", "by_cancelling"])
@pytest.mark.parametrize("method", ["ReadRun", "BatchReadRuns"])
def test_a_run_read_nobody_waits_for_is_cancelled(start_server, databases, method, leaves) -> None:
    """The caller leaves, at its deadline or by cancelling long before it:
    its query stops waiting for the lock, which is still held, long before
    the statement timeout (20 s: only the cancellation can end the wait)."""
    running = start_server(db_timeout_ms=20_000, listen_enabled=False)
    run_id = demo.new_ksuid()  # a NEW run: read on run-ops alone
    request: Any = (
        pb.ReadRunRequest(run_id=run_id)
        if method == "ReadRun"
        else pb.BatchReadRunsRequest(run_ids=[run_id])
    )
    with psycopg.connect(databases.run_ops) as locker:
        locker.execute(RUNS_LOCK)
        with grpc.insecure_channel(running.address) as channel:
            call = getattr(resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel), method)
            if leaves == "at_its_deadline":
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as failed:
                    call(request, timeout=1.0)
                assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - started < 2.0
            else:
                pending = call.future(request, timeout=30)
                wait_until(lambda: lock_waiters(databases.run_ops, "run-ops") == 1, timeout=5)
                assert pending.cancel()
            wait_until(lambda: lock_waiters(databases.run_ops, "run-ops") == 0, timeout=5)
        locker.rollback()
    # The reader serves again (the cancelled connection was given back).
    with grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        with pytest.raises(grpc.RpcError) as absent:
            stub.ReadRun(pb.ReadRunRequest(run_id=run_id), timeout=10)
        assert absent.value.code() == grpc.StatusCode.NOT_FOUND


def test_batch_run_reads_pass_the_bulkhead_as_single_reads_do(start_server, databases) -> None:
    running = start_server(db_max_waiting=1, db_timeout_ms=20_000, listen_enabled=False)
    with (
        psycopg.connect(databases.run_ops) as locker,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        locker.execute(RUNS_LOCK)
        waiting = stub.BatchReadRuns.future(
            pb.BatchReadRunsRequest(run_ids=[demo.new_ksuid()]), timeout=20
        )
        wait_until(lambda: lock_waiters(databases.run_ops, "run-ops") == 1, timeout=5)
        # The run-ops bulkhead is full: batch and single reads of it are
        # refused at once, with a retry delay, not queued behind the lock.
        for call in (
            lambda: stub.BatchReadRuns(
                pb.BatchReadRunsRequest(run_ids=[demo.new_ksuid()]), timeout=10
            ),
            lambda: stub.ReadRun(pb.ReadRunRequest(run_id=demo.new_ksuid()), timeout=10),
        ):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert time.monotonic() - started < 1.0
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "waiting for it" in refused.value.details()
            assert dict(refused.value.trailing_metadata())["grpc-retry-pushback-ms"] == "500"
        locker.rollback()
        assert waiting.result(timeout=10).results[0].not_found
