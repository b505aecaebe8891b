"""Invalidation across replicas: NOTIFY from the control-plane
primary reaches every resolver process (a global "FeatureFlag" row's change
included); a lost listener connection invalidates everything on reconnect;
the Invalidate RPC; readiness."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import psycopg
import pytest
from grpc_health.v1 import health_pb2

from controlplane_resolver.cache import Slot
from controlplane_resolver.dev import demo
from controlplane_resolver.domain.minting import MINT_FLAG
from controlplane_resolver.errors import Unavailable
from controlplane_resolver.invalidation import triggers
from controlplane_resolver.invalidation.protocol import CHANNEL
from controlplane_resolver.serving.server import LISTENER_HEALTH_NAME
from controlplane_resolver_client import ResolverClient, pb

from support.polling import wait_until
from support.processes import ServerProcess, health_status


@pytest.fixture
def cluster_env(own_clusters):
    """Own clusters (triggers installed on the control plane) and the env
    settings for serve processes over them, with long TTLs so that only
    invalidation can explain a fresh answer."""
    cp_cluster, ro_cluster = own_clusters
    triggers.install(cp_cluster.dsn())
    env = {
        "CONTROL_PLANE_DATABASE_URL": cp_cluster.dsn(),
        "RUN_OPS_DATABASE_URL": ro_cluster.dsn(),
        "RUN_OPS_SPLIT_ENABLED": "1",
        "REALTIME_BACKEND_NATIVE_ENABLED": "1",
        "CONTROL_PLANE_CACHE_TTL_MS": "600000",
        "CONTROL_PLANE_CACHE_HARD_TTL_MS": "600000",
        "WORKER_VERSION_CACHE_TTL_MS": "600000",
        "RESOLVER_LOG_LEVEL": "WARNING",
    }
    return cp_cluster, env


def test_notify_reaches_every_replica_within_one_second(cluster_env):
    cp_cluster, env = cluster_env
    with psycopg.connect(cp_cluster.dsn(), autocommit=True) as cp:
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        env_id = demo.insert_environment(
            cp, project_id=project, organization_id=org, maximum_concurrency_limit=5
        )
        servers = [ServerProcess(env) for _ in range(3)]
        try:
            for s in servers:
                s.wait_serving()
            clients = [ResolverClient(s.address) for s in servers]
            assert [c.resolve_env(env_id).maximum_concurrency_limit for c in clients] == [5] * 3

            # The trigger NOTIFYs on commit; every replica must drop its entry.
            cp.execute(
                'UPDATE "RuntimeEnvironment" SET "maximumConcurrencyLimit" = 9 WHERE "id" = %s',
                (env_id,),
            )
            changed_at = time.monotonic()
            for client in clients:
                wait_until(
                    lambda: client.resolve_env(env_id).maximum_concurrency_limit == 9, timeout=1.0
                )
            assert time.monotonic() - changed_at < 1.0
            for c in clients:
                c.close()
        finally:
            for s in servers:
                s.terminate()


def test_promotion_reaches_worker_version_on_every_replica(cluster_env):
    cp_cluster, env = cluster_env
    with psycopg.connect(cp_cluster.dsn(), autocommit=True) as cp:
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        env_id = demo.insert_environment(cp, project_id=project, organization_id=org)
        now = datetime.utcnow()
        old = demo.insert_worker(
            cp, project_id=project, environment_id=env_id, created_at=now - timedelta(hours=1)
        )
        old_dep = demo.insert_deployment(
            cp, project_id=project, environment_id=env_id, worker_id=old
        )
        demo.promote(cp, old_dep, env_id)
        new = demo.insert_worker(cp, project_id=project, environment_id=env_id, created_at=now)
        new_dep = demo.insert_deployment(
            cp, project_id=project, environment_id=env_id, worker_id=new
        )
        servers = [ServerProcess(env) for _ in range(3)]
        try:
            for s in servers:
                s.wait_serving()
            clients = [ResolverClient(s.address) for s in servers]
            assert {c.resolve_worker_version(env_id).worker.id for c in clients} == {old}
            demo.promote(cp, new_dep, env_id)
            promoted_at = time.monotonic()
            for client in clients:
                wait_until(
                    lambda: client.resolve_worker_version(env_id).worker.id == new, timeout=1.0
                )
            assert time.monotonic() - promoted_at < 1.0
            for c in clients:
                c.close()
        finally:
            for s in servers:
                s.terminate()


def test_global_flag_change_reaches_the_server_by_trigger_notify(own_clusters, start_server):
    """The mint flag's global row is cached with every organization's answer;
    the "FeatureFlag" trigger's NOTIFY (flag:<key>) drops those entries, so a
    global flip shows long before the (ten-minute) TTL."""
    cp_cluster, ro_cluster = own_clusters
    triggers.install(cp_cluster.dsn())
    running = start_server(
        control_plane_database_url=cp_cluster.dsn(),
        run_ops_database_url=ro_cluster.dsn(),
        run_ops_mint_ksuid_enabled=True,
        control_plane_cache_ttl_ms=600_000,
        control_plane_cache_hard_ttl_ms=600_000,
    )
    client = running.client
    with psycopg.connect(cp_cluster.dsn(), autocommit=True) as cp:
        orgs = [demo.insert_organization(cp) for _ in range(2)]
        overriding = demo.insert_organization(cp, feature_flags={MINT_FLAG: "cuid"})

        def kinds() -> list[tuple[int, str]]:
            answers = [client.resolve_mint_kind(org) for org in (*orgs, overriding)]
            return [(a.kind, a.reason) for a in answers]

        assert kinds() == [(pb.MINT_KIND_CUID, "default")] * 2 + [(pb.MINT_KIND_CUID, "org_flag")]
        loads = running.app.cache.stats(Slot.MINT_KIND).loads
        # Still cached: a second ask reads nothing.
        assert kinds()[0] == (pb.MINT_KIND_CUID, "default")
        assert running.app.cache.stats(Slot.MINT_KIND).loads == loads

        demo.set_feature_flag(cp, MINT_FLAG, "ksuid")  # the trigger NOTIFYs on commit
        expected = [(pb.MINT_KIND_KSUID, "global_flag")] * 2 + [(pb.MINT_KIND_CUID, "org_flag")]
        wait_until(lambda: kinds() == expected, timeout=2)
        assert running.app.cache.get_stats().invalidations["flag"] >= 1

        demo.delete_feature_flag(cp, MINT_FLAG)
        wait_until(lambda: kinds()[0] == (pb.MINT_KIND_CUID, "default"), timeout=2)


def test_listener_reconnect_invalidates_everything(start_server, cp, tenant, databases):
    running = start_server(
        control_plane_cache_ttl_ms=600_000, control_plane_cache_hard_ttl_ms=600_000
    )
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    client = running.client
    assert client.resolve_env(env_id).maximum_concurrency_limit == 3
    # Changed without any notification (no triggers here): the cache keeps 3.
    cp.execute(
        'UPDATE "RuntimeEnvironment" SET "maximumConcurrencyLimit" = 4 WHERE "id" = %s', (env_id,)
    )
    assert client.resolve_env(env_id).maximum_concurrency_limit == 3
    listener = running.app.listener
    assert listener is not None and listener.connects == 1
    # Kill the listener's backend: notifications sent meanwhile would be lost,
    # so the reconnect must invalidate everything.
    cp.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'controlplane-resolver:listener' "
        "AND pid <> pg_backend_pid()"
    )
    wait_until(lambda: listener.connects >= 2, timeout=10)
    assert client.resolve_env(env_id).maximum_concurrency_limit == 4
    assert (
        health_status(running.address, LISTENER_HEALTH_NAME)
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_manual_notify_payloads(start_server, cp, tenant):
    running = start_server(
        control_plane_cache_ttl_ms=600_000, control_plane_cache_hard_ttl_ms=600_000
    )
    client = running.client
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    assert client.resolve_env(env_id).maximum_concurrency_limit == 3
    cached = 3
    for new, payload in [
        (10, f"organization:{tenant.organization_id}"),
        (11, f"project:{tenant.project_id}"),
        (12, f"environment:{env_id}"),
    ]:
        cp.execute(
            'UPDATE "RuntimeEnvironment" SET "maximumConcurrencyLimit" = %s WHERE "id" = %s',
            (new, env_id),
        )
        # No triggers here: until the notification, the cached answer stands.
        assert client.resolve_env(env_id).maximum_concurrency_limit == cached
        cp.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        wait_until(lambda: client.resolve_env(env_id).maximum_concurrency_limit == new, timeout=2)
        cached = new
    # Garbage payloads are ignored; the server keeps serving.
    cp.execute("SELECT pg_notify(%s, 'nonsense'), pg_notify(%s, 'bogus:x')", (CHANNEL, CHANNEL))
    assert client.resolve_env(env_id).maximum_concurrency_limit == 12


def test_invalidate_rpc_targets(start_server, cp, tenant):
    running = start_server(
        control_plane_cache_ttl_ms=600_000,
        control_plane_cache_hard_ttl_ms=600_000,
        listen_enabled=False,
    )
    client = running.client
    env_id = tenant.environment(cp, type="DEVELOPMENT")
    first = demo.insert_worker(
        cp,
        project_id=tenant.project_id,
        environment_id=env_id,
        created_at=datetime.utcnow() - timedelta(minutes=5),
    )
    assert client.resolve_worker_version(env_id).worker.id == first
    second = demo.insert_worker(cp, project_id=tenant.project_id, environment_id=env_id)
    cp.execute(
        'UPDATE "RuntimeEnvironment" SET "maximumConcurrencyLimit" = 77 WHERE "id" = %s', (env_id,)
    )
    before = client.resolve_env(env_id).maximum_concurrency_limit
    # Worker versions only: the environment entry stays cached.
    client.invalidate(worker_versions_environment_id=env_id)
    assert client.resolve_worker_version(env_id).worker.id == second
    assert client.resolve_env(env_id).maximum_concurrency_limit == before
    client.invalidate(environment_id=env_id)
    assert client.resolve_env(env_id).maximum_concurrency_limit == 77


def test_triggers_install_and_uninstall_are_idempotent(own_clusters):
    cp_cluster, _ = own_clusters
    dsn = cp_cluster.dsn()
    names = triggers.install(dsn)
    assert triggers.install(dsn) == names
    with psycopg.connect(dsn, autocommit=True) as conn:
        count = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s)", (names,)
        ).fetchone()[0]
        assert count == len(triggers.WATCHED)
        triggers.uninstall(dsn)
        triggers.uninstall(dsn)
        count = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s)", (names,)
        ).fetchone()[0]
        assert count == 0


def test_the_publisher_recognises_its_own_echo_once_and_nothing_else(databases):
    from controlplane_resolver.invalidation.publisher import InvalidationPublisher

    publisher = InvalidationPublisher(databases.control_plane, timeout_s=5)
    with psycopg.connect(databases.control_plane, autocommit=True) as listening:
        listening.execute(f"LISTEN {CHANNEL}")
        publisher.publish("environment", "echo-test")
        with psycopg.connect(databases.control_plane, autocommit=True) as writer:
            # Another session sends the very same payload.
            writer.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "environment:echo-test"))
        received = []
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            received.extend(listening.notifies(timeout=0.2, stop_after=2))
    assert [n.payload for n in received] == ["environment:echo-test"] * 2
    ours, theirs = received
    assert publisher.is_echo(ours.pid, ours.payload)
    assert not publisher.is_echo(ours.pid, ours.payload)  # once
    assert not publisher.is_echo(theirs.pid, theirs.payload)
    # A broken connection forgets its pid: PostgreSQL may give it to another session.
    publisher.publish("environment", "echo-test-2")
    with psycopg.connect(databases.control_plane, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s", (ours.pid,)
        )
    with pytest.raises(Unavailable):
        publisher.publish("environment", "echo-test-3")
    assert not publisher.is_echo(ours.pid, "environment:echo-test-2")
    publisher.close()
