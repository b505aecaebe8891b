"""The cache under outages and stampedes through a real server:
stale answers while the control plane is down, UNAVAILABLE (never
NOT_FOUND) after the hard TTL, recovery, and one query for a stampede."""

from __future__ import annotations

import threading

import grpc
import psycopg

from controlplane_resolver.cache import Slot
from controlplane_resolver.dev import demo
from controlplane_resolver_client import ResolverError

from support.databases import count_queries
from support.polling import wait_until


def test_stale_while_down_then_unavailable_after_hard_ttl_then_recovery(own_clusters, start_server):
    cp_cluster, ro_cluster = own_clusters
    with psycopg.connect(cp_cluster.dsn(), autocommit=True) as cp:
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        env_id = demo.insert_environment(cp, project_id=project, organization_id=org)
    running = start_server(
        control_plane_database_url=cp_cluster.dsn(),
        run_ops_database_url=ro_cluster.dsn(),
        control_plane_cache_ttl_ms=200,
        control_plane_cache_hard_ttl_ms=3000,
        listen_enabled=False,
        db_timeout_ms=500,
    )
    client = running.client
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    assert client.resolve_env(env_id).id == env_id
    cp_cluster.stop()

    # Past the soft TTL the cached answer is served while refreshes fail.
    wait_until(
        lambda: client.resolve_env(env_id).id == env_id and stats.refresh_failures > 0, timeout=5
    )
    assert stats.stale_serves > 0

    # Past the hard TTL: UNAVAILABLE, never NOT_FOUND (None).
    def unavailable() -> bool:
        try:
            assert client.resolve_env(env_id, timeout=5) is not None
            return False
        except ResolverError as exc:
            assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
            return True

    wait_until(unavailable, timeout=10, interval=0.1)

    # The database comes back: the pool reconnects and answers resume.
    cp_cluster.start()
    wait_until(lambda: not unavailable(), timeout=15, interval=0.1)


def test_stampede_of_64_cold_calls_runs_one_query(start_server, cp, tenant):
    # Every worker thread may wait on the database here (its bulkhead would
    # otherwise refuse the callers beyond its share at once: test_faults).
    running = start_server(listen_enabled=False, db_max_waiting=12, max_workers=12)
    env_id = tenant.environment(cp)
    stats = running.app.cache.stats(Slot.ENVIRONMENT)
    fragment = 'FROM "RuntimeEnvironment" e'
    before = count_queries(cp, fragment)
    results: list[object] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(running.client.resolve_env(env_id, timeout=20).id)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    # Hold a lock that blocks the leader's SELECT so every call arrives
    # while the one load is still in flight, as under a slow database.
    with psycopg.connect(running.app.settings.control_plane_database_url) as locker:
        locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
        threads = [threading.Thread(target=call) for _ in range(64)]
        for t in threads:
            t.start()
        # All server worker threads but the leader's are waiting on the flight.
        workers = running.app.settings.max_workers
        wait_until(lambda: stats.joins >= workers - 1, timeout=10)
        locker.rollback()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert results == [env_id] * 64
    assert count_queries(cp, fragment) - before == 1
    assert stats.loads == 1
