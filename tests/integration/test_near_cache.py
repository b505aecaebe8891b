"""The client's near-cache and the WatchInvalidations stream that keeps it
coherent (docs/near-cache.md): real servers, real databases, real streams."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import psycopg
import pytest

from controlplane_resolver_client import ResolverClient, ResolverError, StreamState, pb
from controlplane_resolver_client.v1 import SERVICE_NAME, resolver_pb2_grpc

from support.environments import concurrency_limit, set_concurrency_limit
from support.polling import wait_until, wait_until_async

#: TTLs long enough that only an invalidation explains a new answer.
LONG_TTLS = {
    "control_plane_cache_ttl_ms": 600_000,
    "control_plane_cache_hard_ttl_ms": 600_000,
    "worker_version_cache_ttl_ms": 600_000,
}


def live(client: ResolverClient, timeout: float = 10) -> ResolverClient:
    """``client`` once its near-cache stream is live."""
    wait_until(
        lambda: client.near_cache_stats().state is StreamState.LIVE,  # type: ignore[union-attr]
        timeout=timeout,
        what="near-cache stream live",
    )
    return client


def process_env(databases: Any) -> dict[str, str]:
    """Settings of a ``serve`` process over the session databases, with
    :data:`LONG_TTLS`."""
    return {
        "CONTROL_PLANE_DATABASE_URL": databases.control_plane,
        "RUN_OPS_DATABASE_URL": databases.run_ops,
        "RUN_OPS_SPLIT_ENABLED": "1",
        "REALTIME_BACKEND_NATIVE_ENABLED": "1",
        **{name.upper(): str(ms) for name, ms in LONG_TTLS.items()},
        "RESOLVER_LOG_LEVEL": "WARNING",
    }


def started(running: Any, method: str) -> float:
    """Calls of ``method`` the server has started."""
    value = running.app.metrics.registry.get_sample_value(
        "grpc_server_started_total",
        {"grpc_type": "unary", "grpc_service": SERVICE_NAME, "grpc_method": method},
    )
    return value or 0.0


def test_a_hit_is_answered_without_a_call(start_server, cp, tenant):
    running = start_server(**LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=7)
    org = tenant.organization_id
    with live(ResolverClient(running.address, near_cache=True)) as client:
        before = {
            m: started(running, m)
            for m in ("ResolveEnv", "ResolveAuthenticatedEnv", "AssertEnvExists", "ResolveMintKind")
        }
        for _ in range(50):
            assert concurrency_limit(client, env_id) == 7
            assert client.resolve_authenticated_env(env_id).id == env_id
            assert client.assert_env_exists(env_id) is True
            assert client.resolve_mint_kind(org).kind == pb.MINT_KIND_CUID
        after = {m: started(running, m) for m in before}
        assert {m: after[m] - before[m] for m in before} == dict.fromkeys(before, 1.0)
        stats = client.near_cache_stats()
        assert stats.hits == 4 * 49 and stats.stores == 4
        # An absent environment is never kept: every lookup asks the server.
        missing = "cm" + "0" * 23
        before_missing = started(running, "ResolveEnv")
        assert client.resolve_env(missing) is None
        assert client.resolve_env(missing) is None
        assert started(running, "ResolveEnv") - before_missing == 2
    samples = running.app.metrics.registry
    assert samples.get_sample_value("resolver_watch_streams_started_total") >= 1
    # The closed client's stream is gone from the server within a heartbeat.
    wait_until(lambda: samples.get_sample_value("resolver_watch_streams") == 0, timeout=5)


def test_invalidate_here_reaches_the_near_cache(start_server, cp, tenant):
    running = start_server(**LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    with live(ResolverClient(running.address, near_cache=True)) as client:
        assert concurrency_limit(client, env_id) == 3
        set_concurrency_limit(cp, env_id, 4)
        # No trigger on these databases: the client keeps its answer...
        assert concurrency_limit(client, env_id) == 3
        assert client.near_cache_stats().hits >= 1
        # ...until a writer says what it changed.
        running.client.invalidate(environment_id=env_id)
        wait_until(lambda: concurrency_limit(client, env_id) == 4, timeout=1.0)


def test_invalidate_on_another_replica_reaches_the_near_cache(start_server, cp, tenant):
    watched = start_server(**LONG_TTLS)
    other = start_server(**LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    with live(ResolverClient(watched.address, near_cache=True)) as client:
        assert concurrency_limit(client, env_id) == 3
        set_concurrency_limit(cp, env_id, 8)
        assert concurrency_limit(client, env_id) == 3
        # The other replica publishes it through the control-plane primary.
        other.client.invalidate(organization_id=tenant.organization_id)
        wait_until(lambda: concurrency_limit(client, env_id) == 8, timeout=1.0)


def test_a_trigger_reaches_the_near_cache(own_clusters):
    from controlplane_resolver.dev import demo
    from controlplane_resolver.invalidation import triggers

    from support.databases import Databases
    from support.servers import serving

    cp_cluster, ro_cluster = own_clusters
    triggers.install(cp_cluster.dsn())
    with (
        psycopg.connect(cp_cluster.dsn(), autocommit=True) as conn,
        serving(Databases(cp_cluster.dsn(), ro_cluster.dsn()), **LONG_TTLS) as running,
    ):
        org = demo.insert_organization(conn)
        project = demo.insert_project(conn, organization_id=org)
        env_id = demo.insert_environment(
            conn, project_id=project, organization_id=org, maximum_concurrency_limit=5
        )
        with live(ResolverClient(running.address, near_cache=True)) as client:
            assert concurrency_limit(client, env_id) == 5
            assert concurrency_limit(client, env_id) == 5
            assert client.near_cache_stats().hits == 1
            set_concurrency_limit(conn, env_id, 6)
            wait_until(lambda: concurrency_limit(client, env_id) == 6, timeout=1.0)


def test_a_listener_reconnect_drops_every_kept_answer(start_server, cp, tenant):
    running = start_server(**LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    with live(ResolverClient(running.address, near_cache=True)) as client:
        assert concurrency_limit(client, env_id) == 3
        set_concurrency_limit(cp, env_id, 5)
        assert concurrency_limit(client, env_id) == 3
        # Notifications sent while the listener is away are lost: its
        # reconnect invalidates everything, on the server and in the client.
        cp.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'controlplane-resolver:listener'"
        )
        wait_until(lambda: concurrency_limit(client, env_id) == 5, timeout=10.0)


def test_a_load_that_began_before_an_invalidation_is_not_kept(start_server, cp, databases, tenant):
    running = start_server(**LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    with live(ResolverClient(running.address, near_cache=True)) as client:
        stats = client.near_cache_stats
        answers: list[Any] = []
        with psycopg.connect(databases.control_plane) as locker:
            locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
            reader = threading.Thread(target=lambda: answers.append(client.resolve_env(env_id)))
            reader.start()
            wait_until(
                lambda: (
                    cp.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%%RuntimeEnvironment%%'"
                    ).fetchone()[0]
                    >= 1
                ),
                what="the load waiting on the lock",
            )
            # The invalidation reaches the client while the load still waits.
            seen = stats().invalidations
            running.client.invalidate(environment_id=env_id)
            wait_until(lambda: stats().invalidations > seen, timeout=2.0)
            locker.commit()
        reader.join(10)
        assert answers and answers[0].maximum_concurrency_limit == 3
        assert stats().stores == 0 and stats().not_kept == 1
        # The next lookup asks the server again (and keeps that answer).
        before = started(running, "ResolveEnv")
        assert concurrency_limit(client, env_id) == 3
        assert started(running, "ResolveEnv") == before + 1
        assert stats().stores == 1


def test_a_cut_stream_falls_through_at_once_and_drops_everything(databases, cp, tenant):
    from support.processes import ServerProcess

    env = process_env(databases)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    first = ServerProcess(env).wait_serving()
    try:
        with live(ResolverClient(first.address, near_cache=True, timeout=2)) as client:
            assert concurrency_limit(client, env_id) == 3
            assert concurrency_limit(client, env_id) == 3
            assert client.near_cache_stats().hits == 1
            first.proc.kill()
            first.proc.wait()
            # The broken stream is seen at once: nothing more from memory.
            wait_until(
                lambda: client.near_cache_stats().state is StreamState.CONNECTING, timeout=1.0
            )
            with pytest.raises(ResolverError) as failure:
                client.resolve_env(env_id)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            set_concurrency_limit(cp, env_id, 9)
            # The same address again: the client reconnects and starts clean.
            second = ServerProcess(env, port=first.port).wait_serving()
            try:
                live(client)
                assert client.near_cache_stats().entries == 0
                assert concurrency_limit(client, env_id) == 9
                assert client.near_cache_stats().stream_breaks >= 1
            finally:
                second.terminate()
    finally:
        first.terminate()


def test_a_watcher_that_stops_reading_is_dropped_and_the_server_stays_healthy(
    start_server, cp, tenant
):
    running = start_server()
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    channel = grpc.insecure_channel(running.address, options=[("grpc.http2.bdp_probe", 0)])
    stalled = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel).WatchInvalidations(
        pb.WatchInvalidationsRequest()
    )
    try:
        first = next(stalled)  # then it reads nothing more
        assert first.WhichOneof("event") == "start"
        feed = running.app.feed
        wait_until(lambda: feed.get_stats().watchers == 1)
        # Far more invalidations than its window and the feed's log hold.
        ident = "x" * 200
        cp.execute(
            "SELECT pg_notify('controlplane_resolver_invalidate', "
            "'environment:' || g || %s) FROM generate_series(1, 6000) g",
            (ident,),
        )
        wait_until(lambda: feed.get_stats().dropped["slow"] == 1, timeout=15.0)
        wait_until(lambda: feed.get_stats().watchers == 0, timeout=5.0)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stalled:
                pass
        assert ended.value.code() == grpc.StatusCode.CANCELLED
        assert concurrency_limit(running.client, env_id) == 3
    finally:
        stalled.cancel()
        channel.close()


def test_watchers_beyond_the_limit_are_refused(start_server):
    running = start_server(watch_max_streams=1)
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(running.client.channel)
    first = stub.WatchInvalidations(pb.WatchInvalidationsRequest())
    try:
        assert next(first).start.heartbeat_interval_ms == 1000
        second = stub.WatchInvalidations(pb.WatchInvalidationsRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as refused:
            next(second)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert running.app.feed.get_stats().dropped["full"] == 1
    finally:
        first.cancel()


def test_the_asyncio_client_keeps_and_drops_as_the_threaded_one(start_server, cp, tenant):
    import asyncio

    from controlplane_resolver_client import AsyncResolverClient

    running = start_server(**LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)

    async def scenario() -> None:
        async with AsyncResolverClient(running.address, near_cache=True) as client:
            stats = client.near_cache_stats
            await wait_until_async(lambda: stats().state is StreamState.LIVE, 10, what="live")
            before = started(running, "ResolveEnv")
            for _ in range(10):
                assert (await client.resolve_env(env_id)).maximum_concurrency_limit == 3
            assert started(running, "ResolveEnv") == before + 1
            assert stats().hits == 9
            assert await client.assert_env_exists(env_id) is True
            assert await client.resolve_env("cm" + "0" * 23) is None
            assert (await client.classify_run_id("run_" + "c" * 25)).classifiable
            set_concurrency_limit(cp, env_id, 6)
            await client.invalidate(environment_id=env_id)
            await wait_until_async(lambda: stats().invalidations >= 1, 5, what="invalidation")
            assert (await client.resolve_env(env_id)).maximum_concurrency_limit == 6

    asyncio.run(scenario())


def test_the_near_cache_pins_its_misses_to_the_stream_s_server(start_server, cp, tenant):
    servers = [start_server(**LONG_TTLS) for _ in range(2)]
    target = "ipv4:" + ",".join(s.address for s in servers)
    envs = [tenant.environment(cp) for _ in range(20)]
    with live(ResolverClient(target, near_cache=True)) as client:
        for env_id in envs:
            assert client.resolve_env(env_id).id == env_id
        # Round-robin would send half the misses elsewhere: not kept.
        stats = client.near_cache_stats()
        assert (stats.stores, stats.not_kept) == (20, 0)
        # The client's other calls still spread over both replicas.
        for _ in range(20):
            client.classify_run_id("run_" + "c" * 25)
    assert all(started(s, "ClassifyRunId") > 0 for s in servers)


def test_the_stream_is_granted_like_any_method(start_server, tokens, cp, tenant):
    from support.credentials import CONSOLE_TOKEN, ENGINE_TOKEN

    tokens.write(f"engine  {ENGINE_TOKEN}  *", f"console {CONSOLE_TOKEN} ResolveEnv")
    running = start_server(auth_tokens_file=str(tokens.path), **LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(running.client.channel)
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {CONSOLE_TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=metadata))
        assert refused.value.code() == code
    # A client whose token may not watch answers every lookup by RPC.
    with ResolverClient(running.address, token=CONSOLE_TOKEN, near_cache=True) as console:
        for _ in range(3):
            assert concurrency_limit(console, env_id) == 3
        stats = console.near_cache_stats()
        assert (stats.state, stats.hits, stats.stores) == (StreamState.CONNECTING, 0, 0)
    with live(ResolverClient(running.address, token=ENGINE_TOKEN, near_cache=True)) as engine:
        assert concurrency_limit(engine, env_id) == 3
        assert concurrency_limit(engine, env_id) == 3
        assert engine.near_cache_stats().hits == 1


def test_the_asyncio_client_falls_through_when_its_stream_is_cut(databases, cp, tenant):
    import asyncio

    from controlplane_resolver_client import AsyncResolverClient

    from support.processes import ServerProcess

    env = process_env(databases)
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    server = ServerProcess(env).wait_serving()

    def until(predicate: Any, what: str) -> Any:
        return wait_until_async(predicate, 10, what=what)

    async def scenario() -> None:
        async with AsyncResolverClient(server.address, near_cache=True, timeout=2) as client:
            stats = client.near_cache_stats
            await until(lambda: stats().state is StreamState.LIVE, "stream live")
            assert (await client.resolve_env(env_id)).maximum_concurrency_limit == 3
            assert (await client.resolve_env(env_id)).maximum_concurrency_limit == 3
            assert stats().hits == 1
            server.proc.kill()
            server.proc.wait()
            await until(lambda: stats().state is StreamState.CONNECTING, "stream broken")
            assert stats().entries == 0
            with pytest.raises(ResolverError) as failure:
                await client.resolve_env(env_id)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            # The same address again: the task reconnects and starts clean.
            set_concurrency_limit(cp, env_id, 4)
            replacements.append(ServerProcess(env, port=server.port).wait_serving())
            await until(lambda: stats().state is StreamState.LIVE, "stream live again")
            assert (await client.resolve_env(env_id)).maximum_concurrency_limit == 4
            assert stats().stream_starts == 2

    replacements: list[ServerProcess] = []
    try:
        asyncio.run(scenario())
    finally:
        server.terminate()
        for replacement in replacements:
            replacement.terminate()


def test_health_watches_take_no_stream_thread(start_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running = start_server(watch_max_streams=1)
    channel = grpc.insecure_channel(running.address)
    health = health_pb2_grpc.HealthStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(6)]
    try:
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        stream = stub.WatchInvalidations(pb.WatchInvalidationsRequest())
        assert next(stream).WhichOneof("event") == "start"
        stream.cancel()
    finally:
        for watch in watches:
            watch.cancel()
        channel.close()


def test_a_refused_stream_renews_the_pinned_channel_until_a_replica_takes_it(
    start_server, cp, tenant
):
    full = start_server(watch_max_streams=0, **LONG_TTLS)  # refuses every watcher
    env_id = tenant.environment(cp, maximum_concurrency_limit=3)
    with ResolverClient(full.address, near_cache=True) as alone:
        # Its one replica refuses it: lookups are RPCs, and the channel is
        # renewed after RENEW_AFTER refused streams in a row.
        wait_until(lambda: alone.near_cache_stats().channel_renewals >= 1, timeout=15)
        assert concurrency_limit(alone, env_id) == 3
        assert alone.near_cache_stats().state is StreamState.CONNECTING
    other = start_server(**LONG_TTLS)
    target = f"ipv4:{full.address},{other.address}"
    with ResolverClient(target, near_cache=True) as client:
        # Whichever replica it tries first, it ends up watching the other one
        # (each renewal picks at random: allow for a few unlucky picks).
        live(client, timeout=30)
        assert concurrency_limit(client, env_id) == 3
        assert concurrency_limit(client, env_id) == 3
        assert client.near_cache_stats().hits == 1


def pin_in_order(monkeypatch: Any) -> None:
    """The near-cache's pinned channel takes the target's addresses in
    order (not shuffled), so a test knows which replica it watches first."""
    import json

    from controlplane_resolver_client import client as client_module

    balanced = json.loads(client_module.service_config())
    pinned = {**balanced, "loadBalancingConfig": [{"pick_first": {"shuffleAddressList": False}}]}
    monkeypatch.setattr(client_module, "pinned_service_config", lambda: json.dumps(pinned))


def test_answers_never_go_back_while_the_stream_is_not_live(start_server, cp, tenant, monkeypatch):
    """bench/near_cache.py once saw a client answer 9 after 10 while its
    stream was down after a server kill: its misses went round-robin over
    the other replicas, and one had not yet applied the invalidation the
    other had. Here a replica that hears no invalidation at all stands for
    the late one, so the alternation is certain rather than a race."""
    # The pinned channel takes the target's first address: the replica that
    # lags, whose stream is never live (not listening).
    pin_in_order(monkeypatch)
    late = start_server(listen_enabled=False, **LONG_TTLS)
    current = start_server(**LONG_TTLS)
    env_id = tenant.environment(cp, maximum_concurrency_limit=9)
    assert concurrency_limit(late.client, env_id) == 9  # kept by the late replica
    set_concurrency_limit(cp, env_id, 10)
    assert concurrency_limit(current.client, env_id) == 10
    with ResolverClient(f"ipv4:{late.address},{current.address}", near_cache=True) as client:
        wait_until(
            lambda: client.near_cache_stats().state is StreamState.NOT_LISTENING,  # type: ignore[union-attr]
            timeout=10,
            what="stream started on the replica that does not listen",
        )
        # Both replicas take the client's balanced calls (round-robin).
        before = {s.address: started(s, "ClassifyRunId") for s in (late, current)}
        wait_until(
            lambda: (
                client.classify_run_id("run_" + "c" * 25) is not None
                and all(started(s, "ClassifyRunId") > before[s.address] for s in (late, current))
            ),
            timeout=10,
            what="the balanced channel reaching both replicas",
        )
        answers = [concurrency_limit(client, env_id) for _ in range(20)]
    # One replica's answers, stale as that replica is, but never older
    # after newer.
    assert answers == [9] * 20, answers


class GatedTarget:
    """A listener's invalidation target whose environment invalidations wait
    for ``gate``: a replica that has received an invalidation but not yet
    applied it, for as long as the test says."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.entered = threading.Event()
        self.gate = threading.Event()

    def invalidate_environment(self, environment_id: str) -> None:
        self.entered.set()
        self.gate.wait(30)  # a bound, not a synchronisation: the test opens it
        self._target.invalidate_environment(environment_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def replica_behind(start_server: Any) -> tuple[Any, GatedTarget]:
    """A server whose listener holds environment invalidations back until
    a call asks for sync (its gate opens then): a replica that has heard an
    invalidation but not applied it."""
    behind = start_server(**LONG_TTLS)
    assert behind.app.listener is not None
    gated = GatedTarget(behind.app.listener._target)
    behind.app.listener._target = gated
    synced = behind.app.servicer.sync
    assert synced is not None

    def sync(timeout_s: float) -> bool:
        gated.gate.set()  # the invalidation is applied from now on
        return synced(timeout_s)

    behind.app.servicer.sync = sync
    return behind, gated


def test_answers_never_go_back_when_lookups_move_to_a_replica_behind(
    start_server, databases, cp, tenant, monkeypatch
):
    """The client answered 10 from its replica, which dies; the replica it
    moves to has heard the invalidation but not applied it, and answers 9.
    The client asks again with sync: that replica applies everything
    committed before the call first, and answers 10."""
    from support.processes import ServerProcess

    pin_in_order(monkeypatch)
    env_id = tenant.environment(cp, maximum_concurrency_limit=9)
    first = ServerProcess(process_env(databases)).wait_serving()
    try:
        behind, gated = replica_behind(start_server)
        assert concurrency_limit(behind.client, env_id) == 9  # kept by the replica behind
        target = f"ipv4:{first.address},{behind.address}"
        with live(ResolverClient(target, near_cache=True, timeout=5)) as client:
            assert concurrency_limit(client, env_id) == 9
            seen = client.near_cache_stats().invalidations  # type: ignore[union-attr]
            set_concurrency_limit(cp, env_id, 10)
            with ResolverClient(first.address) as writer:
                writer.invalidate(environment_id=env_id)  # applied there, published
            wait_until(
                lambda: client.near_cache_stats().invalidations > seen,  # type: ignore[union-attr]
                timeout=5,
                what="the invalidation on the client's stream",
            )
            assert concurrency_limit(client, env_id) == 10  # from the first replica
            assert gated.entered.wait(10), "the replica behind never heard the invalidation"
            first.proc.kill()
            first.proc.wait()
            wait_until(
                lambda: client.near_cache_stats().state is not StreamState.LIVE,  # type: ignore[union-attr]
                timeout=5,
                what="the stream broken",
            )
            # The replica behind still answers 9 to a call without sync.
            assert concurrency_limit(behind.client, env_id) == 9
            assert concurrency_limit(client, env_id) == 10
            assert concurrency_limit(client, env_id) == 10
    finally:
        first.terminate()


def test_the_asyncio_client_asks_a_replica_behind_with_sync(
    start_server, databases, cp, tenant, monkeypatch
):
    """As the threaded client, above: AsyncResolverClient."""
    import asyncio

    from controlplane_resolver_client import AsyncResolverClient

    from support.processes import ServerProcess

    pin_in_order(monkeypatch)
    env_id = tenant.environment(cp, maximum_concurrency_limit=9)
    first = ServerProcess(process_env(databases)).wait_serving()
    try:
        behind, gated = replica_behind(start_server)
        assert concurrency_limit(behind.client, env_id) == 9

        async def scenario() -> None:
            target = f"ipv4:{first.address},{behind.address}"
            async with AsyncResolverClient(target, near_cache=True, timeout=5) as client:
                stats = client.near_cache_stats

                async def limit() -> int:
                    return (await client.resolve_env(env_id)).maximum_concurrency_limit

                await wait_until_async(
                    lambda: stats().state is StreamState.LIVE, 10, what="stream live"
                )
                assert await limit() == 9
                seen = stats().invalidations
                set_concurrency_limit(cp, env_id, 10)
                with ResolverClient(first.address) as writer:
                    writer.invalidate(environment_id=env_id)
                await wait_until_async(
                    lambda: stats().invalidations > seen, 5, what="the invalidation on the stream"
                )
                assert await limit() == 10
                assert gated.entered.wait(10), "the replica behind never heard the invalidation"
                first.proc.kill()
                first.proc.wait()
                await wait_until_async(
                    lambda: stats().state is not StreamState.LIVE, 5, what="stream broken"
                )
                assert concurrency_limit(behind.client, env_id) == 9
                assert await limit() == 10
                assert await limit() == 10

        asyncio.run(scenario())
    finally:
        first.terminate()


def test_calls_asking_for_sync_at_once_share_markers(start_server):
    """Sync costs a pg_notify on the primary: calls that wait for one at the
    same time share it, so a burst of them (or a caller sending the
    metadata on every call) does not cost a notification each."""
    listener = start_server().app.listener
    assert listener is not None
    before = listener.get_stats().sync_markers
    callers = 16
    start = threading.Barrier(callers)
    synced: list[bool] = []

    def ask() -> None:
        start.wait()
        synced.append(listener.sync(5.0))

    threads = [threading.Thread(target=ask) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert synced == [True] * callers
    sent = listener.get_stats().sync_markers - before
    assert 1 <= sent <= callers // 2, f"{sent} markers for {callers} calls at once"


def test_sync_markers_and_invalidations_share_one_connection_to_the_primary(
    start_server, databases, cp
):
    """A process sends both kinds of notification on one connection (its
    publisher's): a sync and an Invalidate open one connection between
    them, and once that connection is killed the next sync opens it again."""
    running = start_server()
    listener = running.app.listener
    assert listener is not None
    # The second name is the one a separate sync connection used to carry.
    names = ("controlplane-resolver:publisher", "controlplane-resolver:sync")

    def senders() -> list[int]:
        rows = cp.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)", (list(names),)
        ).fetchall()
        return [pid for (pid,) in rows]

    before = set(senders())
    assert listener.sync(5.0)
    running.client.invalidate(environment_id="cm_sync_and_publish_share")
    opened = set(senders()) - before
    assert len(opened) == 1, f"{len(opened)} connections opened to send notifications"

    with psycopg.connect(databases.control_plane, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (opened.pop(),))
    # The first send after the kill may find the connection dead (that sync
    # answers False); a later one reconnects.
    wait_until(lambda: listener.sync(2.0), 10, what="a sync after the connection was killed")
