"""The typed client's contract against real servers: the channel's service
config (retries of UNAVAILABLE, throttled as gRFC A6 says), channels built
by the caller, ``ResolverError`` as a ``grpc.RpcError``, and ``None`` only
where an RPC can answer NOT_FOUND."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import types
import typing
import warnings
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from controlplane_resolver.config import Settings
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster, free_port
from controlplane_resolver.serving.server import ResolverApp
from controlplane_resolver_client import (
    AsyncResolverClient,
    BareChannelWarning,
    ResolverClient,
    ResolverError,
    channel_options,
    create_channel,
    pb,
    service_config,
)
from controlplane_resolver_client.client import RECONNECT_WAIT_S
from controlplane_resolver_client.v1 import SERVICE_NAME, resolver_pb2_grpc

from support.polling import wait_until, wait_until_async
from support.proxy import KillingProxy
from support.scraping import handled, scrape, scrape_server
from support.servers import Running


@pytest.fixture(scope="module")
def outage() -> Iterator[ResolverApp]:
    """A real server whose only database was killed (``pg_ctl stop -m
    immediate``) after it started: once its circuit is open it answers every
    call that needs the database UNAVAILABLE at once (``DATABASE_UNAVAILABLE``,
    retry after the 100 ms probe interval), as it would through an outage.
    Shared by the module: tests count attempts as differences, each on a
    channel (and so a retry throttle) of its own."""
    cluster = LocalCluster("outage").start()
    try:
        settings = Settings(
            control_plane_database_url=cluster.dsn(),
            run_ops_split_enabled=False,
            listen_enabled=False,
            addr="127.0.0.1:0",
            metrics_addr="127.0.0.1:0",
            db_timeout_ms=1000,
            db_probe_interval_ms=100,
        )
        app = ResolverApp(settings)
        app.start(pool_wait_s=30)
        try:
            cluster.stop("immediate")
            db = app.topology.control_plane_replica if app.topology else None
            assert db is not None
            with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)

                def refused_at_once() -> bool:
                    try:
                        stub.ResolveEnv(
                            pb.ResolveEnvRequest(environment_id=demo.new_cuid()), timeout=3
                        )
                    except grpc.RpcError:
                        pass
                    return db.circuit.open

                wait_until(refused_at_once, timeout=30, what="the circuit to open")
            yield app
        finally:
            app.stop(grace=0)
    finally:
        cluster.destroy()


#: Channel options of the tests below that count attempts: each channel
#: then makes no health-check stream of its own.
NO_HEALTH_CHECKS = [("grpc.inhibit_health_checking", 1)]


def refusals(app: ResolverApp) -> int:
    """ResolveEnv attempts the server has answered UNAVAILABLE so far."""
    assert app.metrics_port is not None
    return int(handled(scrape(app.metrics_port), "ResolveEnv", "UNAVAILABLE"))


def attempts_per_call(app: ResolverApp, client: ResolverClient, calls: int) -> list[int]:
    """Make ``calls`` ResolveEnv calls that the server answers UNAVAILABLE;
    return the attempts that reached the server, counted from the first
    call, after each."""
    base = refusals(app)
    seen = []
    for _ in range(calls):
        with pytest.raises(ResolverError) as failed:
            client.resolve_env(demo.new_cuid())
        assert (failed.value.code, failed.value.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        )
        seen.append(refusals(app) - base)
    return seen


# ------------------------------------------------------------ service config


def test_service_config_retries_unavailable_with_retry_throttling(outage: ResolverApp) -> None:
    config = json.loads(service_config())
    assert config["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.1}
    assert config["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 4
    assert channel_options()[:2] == [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
    ]
    app = outage
    with ResolverClient(f"127.0.0.1:{app.port}", timeout=10, options=NO_HEALTH_CHECKS) as client:
        # A6 with 100 tokens: every failed attempt takes one, and retries
        # stop at half. The first 12 calls make 4 attempts each (100 → 52
        # tokens), the 13th 2 (→ 50), and from then on no call is retried:
        # an outage adds fewer than 50 attempts to those of its calls.
        started = time.monotonic()
        attempts = attempts_per_call(app, client, 15)
        took = time.monotonic() - started
    assert attempts == [*range(4, 49, 4), 50, 51, 52]
    # Each retry waited for the server's pushback (100 ms: the probe interval).
    assert took >= 12 * 0.3
    # The tokens belong to the channel: another client (another channel)
    # starts with a full bucket. Hence one client per process.
    with ResolverClient(f"127.0.0.1:{app.port}", timeout=10, options=NO_HEALTH_CHECKS) as another:
        assert attempts_per_call(app, another, 2) == [4, 8]


def test_channel_options_reconnect_soon_and_give_way_to_the_callers() -> None:
    """The channel reconnects 100 ms after a failed attempt (gRPC's default:
    1 s), and up to 5 s apart (default: 120 s); an option the caller gives
    replaces the client's of the same name, in the list and in effect: grpc
    keeps the first of two, so the client's own must not be there too."""
    options = dict(channel_options())
    assert options["grpc.initial_reconnect_backoff_ms"] == 100
    assert options["grpc.max_reconnect_backoff_ms"] == 5000
    assert dict(channel_options(pinned=True))["grpc.initial_reconnect_backoff_ms"] == 100
    mine = [("grpc.initial_reconnect_backoff_ms", 1000), ("grpc.keepalive_time_ms", 60000)]
    built = channel_options(mine)
    assert built[-2:] == mine
    assert [name for name, _ in built].count("grpc.initial_reconnect_backoff_ms") == 1
    assert dict(built)["grpc.max_reconnect_backoff_ms"] == 5000
    # In effect: a service config of the caller's that grpc refuses (no
    # tokens) fails the call, where the client's would have let it try to
    # connect (nothing listens on port 1).
    config = json.loads(service_config())
    config["retryThrottling"]["maxTokens"] = 0
    theirs = [("grpc.service_config", json.dumps(config))]
    for client in (
        ResolverClient("127.0.0.1:1", timeout=2, options=theirs),
        ResolverClient(channel=create_channel("127.0.0.1:1", options=theirs)),
    ):
        with client, pytest.raises(ResolverError) as failed:
            client.classify_run_id("run_" + demo.new_ksuid())
        assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "retryThrottling" in failed.value.details()


@pytest.mark.parametrize("concurrency", [8, 32])
def test_calls_ride_through_a_killed_server_process(server: Running, concurrency: int) -> None:
    """What a client sees when the server process it is connected to dies
    (SIGKILL) and another listens on the same address: its connection reset,
    and its reconnect, made at once, reset too (it reached the dead process's
    listening socket). The channel fails calls until it has connected again
    and retries them: it connects again 100 ms (±20 %) after the failed
    attempt began, before the retries of a call run out (350 ms ±20 %).
    8 callers' failed attempts stay within the retry throttle's 50 tokens;
    32 callers' drain it, and the channel stops retrying: each call that
    failed so without reaching a server is made again by the client, once
    the channel has connected again (RECONNECT_WAIT_S, UNREACHED_RETRIES).
    No call fails.
    With gRPC's default backoff (1 s) most calls of that second fail; without
    the client's own tries, about 4 in 5 of the 32 callers' calls did."""
    run_id = "run_" + demo.new_ksuid()
    codes: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with KillingProxy(server.app.port) as proxy, ResolverClient(proxy.address, timeout=5) as client:

        def caller() -> None:
            while not stop.is_set():
                try:
                    code = "OK" if client.classify_run_id(run_id).classifiable else "wrong"
                except ResolverError as error:
                    code = error.code.name
                    failures.append(f"{error} (unreached: {error.unreached})")
                with lock:
                    codes[code] += 1

        callers = [threading.Thread(target=caller, name=f"caller-{n}") for n in range(concurrency)]
        for thread in callers:
            thread.start()
        try:
            for kill in range(1, 4):
                answered = codes["OK"] + 50
                wait_until(lambda n=answered: codes["OK"] >= n, 10, what="calls answered")
                accepted = proxy.accepted
                proxy.kill(refuse_next=1)
                # The reconnect that was refused, then the one that was not.
                wait_until(
                    lambda n=accepted: proxy.accepted >= n + 2, 10, what="the client reconnected"
                )
                assert proxy.refused == kill
            answered = codes["OK"] + 50
            wait_until(lambda: codes["OK"] >= answered, 10, what="calls answered")
        finally:
            stop.set()
            for thread in callers:
                thread.join(10)
    assert set(codes) == {"OK"}, (codes, failures[:5])


def test_async_calls_ride_through_a_killed_server_process(server: Running) -> None:
    """The same for :class:`AsyncResolverClient`: 32 concurrent callers, a
    connection reset three times, no call fails."""
    run_id = "run_" + demo.new_ksuid()
    codes: Counter[str] = Counter()
    failures: list[str] = []

    async def scenario(proxy: KillingProxy) -> None:
        stop = asyncio.Event()
        async with AsyncResolverClient(proxy.address, timeout=5) as client:

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        answer = await client.classify_run_id(run_id)
                        codes["OK" if answer.classifiable else "wrong"] += 1
                    except ResolverError as error:
                        codes[error.code.name] += 1
                        failures.append(f"{error} (unreached: {error.unreached})")

            callers = [asyncio.create_task(caller()) for _ in range(32)]
            try:
                for kill in range(1, 4):
                    answered = codes["OK"] + 50
                    await wait_until_async(lambda n=answered: codes["OK"] >= n, 10)
                    accepted = proxy.accepted
                    proxy.kill(refuse_next=1)
                    await wait_until_async(lambda n=accepted: proxy.accepted >= n + 2, 10)
                    assert proxy.refused == kill
                answered = codes["OK"] + 50
                await wait_until_async(lambda: codes["OK"] >= answered, 10)
            finally:
                stop.set()
                await asyncio.gather(*callers)

    with KillingProxy(server.app.port) as proxy:
        asyncio.run(scenario(proxy))
    assert set(codes) == {"OK"}, (codes, failures[:5])


def test_a_call_no_server_answers_fails_soon_not_at_its_deadline() -> None:
    """Nothing listens: the call fails UNAVAILABLE once its retries and the
    client's wait for a connection (RECONNECT_WAIT_S) are over, long before
    its 30 s deadline."""
    with ResolverClient(f"127.0.0.1:{free_port()}", timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(ResolverError) as failed:
            client.classify_run_id("run_" + demo.new_ksuid())
        elapsed = time.monotonic() - started
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE and failed.value.unreached
    assert elapsed < RECONNECT_WAIT_S + 5, elapsed


def test_the_channel_leaves_a_server_that_is_not_serving(start_server) -> None:
    """The service config watches each server's health (gRFC A17): a server
    that says NOT_SERVING (here: one that is stopping, in its pause, still
    answering every call) is not called; the call fails in the client,
    without an attempt reaching the server."""
    assert json.loads(service_config())["healthCheckConfig"] == {"serviceName": SERVICE_NAME}
    running = start_server(metrics_addr="127.0.0.1:0")
    app: ResolverApp = running.app
    run_id = "run_" + demo.new_ksuid()
    stopping = threading.Thread(target=app.stop, kwargs={"grace": 0, "pause": 5}, name="stop")
    stopping.start()
    try:
        with grpc.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            wait_until(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.NOT_SERVING
                ),
                timeout=5,
                what="NOT_SERVING",
            )
        # In its pause the server still answers a channel that ignores health…
        with ResolverClient(running.address, timeout=2, options=NO_HEALTH_CHECKS) as ignoring:
            assert ignoring.classify_run_id(run_id).classifiable
        # …but a channel that watches health does not call it.
        with (
            ResolverClient(running.address, timeout=1) as client,
            pytest.raises(ResolverError) as failed,
        ):
            client.classify_run_id(run_id)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        assert failed.value.request_id is None  # not answered by the server
        samples = scrape_server(running)
        assert handled(samples, "ClassifyRunId", "OK") == 1
        assert handled(samples, "ClassifyRunId", "UNAVAILABLE") == 0
    finally:
        stopping.join(30)


def test_grpc_validates_the_service_config_it_is_given(outage: ResolverApp) -> None:
    """The check that makes the test above meaningful: grpcio parses the
    config, and an invalid throttling section fails the channel's calls, so
    ours was accepted, not ignored."""
    config = json.loads(service_config())
    config["retryThrottling"]["maxTokens"] = 0
    app = outage
    before = refusals(app)
    options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=demo.new_cuid()), timeout=5)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "retryThrottling" in failed.value.details()
    assert refusals(app) == before


# ------------------------------------------------------- caller's channels


def test_a_channel_from_create_channel_carries_the_service_config(outage: ResolverApp) -> None:
    app = outage
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no BareChannelWarning
        channel = create_channel(f"127.0.0.1:{app.port}", options=NO_HEALTH_CHECKS)
        with ResolverClient(channel=channel, timeout=10) as c:
            assert attempts_per_call(app, c, 2) == [4, 8]


def test_a_bare_channel_warns_and_gets_no_retries(outage: ResolverApp) -> None:
    app = outage
    with pytest.warns(BareChannelWarning, match=r"channel_options\(\)") as caught:
        client = ResolverClient(channel=grpc.insecure_channel(f"127.0.0.1:{app.port}"))
    # Once, pointing at the caller's line.
    assert [w.filename for w in caught if w.category is BareChannelWarning] == [__file__]
    with client:
        assert attempts_per_call(app, client, 2) == [1, 2]


def test_the_bare_channel_warning_is_written_once_per_calling_line(server: Running) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # Python's default for UserWarning
        for _ in range(3):
            ResolverClient(channel=grpc.insecure_channel(server.address)).close()
    assert [w.category for w in seen] == [BareChannelWarning]


def test_channel_options_make_a_channel_of_ones_own_work(server: Running) -> None:
    channel = grpc.insecure_channel(server.address, options=channel_options())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=BareChannelWarning)
        client = ResolverClient(channel=channel)
    with client:
        assert client.classify_run_id("run_" + demo.new_ksuid()).classifiable


def test_channel_settings_cannot_be_combined_with_a_channel(server: Running) -> None:
    channel = create_channel(server.address)
    for extra in (
        {"target": server.address},
        {"options": [("grpc.max_receive_message_length", 1 << 20)]},
        {"tls": True},
        {"tls_ca": b"-----BEGIN CERTIFICATE-----"},
    ):
        with pytest.raises(ValueError, match="not with a channel"):
            ResolverClient(channel=channel, **extra)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target address or a channel"):
        ResolverClient()
    channel.close()


# ------------------------------------------------------------ ResolverError


def test_resolver_error_is_a_grpc_rpc_error_with_its_call_interface(server: Running) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.client.resolve_env("not a valid id!")
    exc = caught.value
    assert isinstance(exc, ResolverError)
    # grpc's call-error interface…
    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert exc.details() == exc.message and "environment_id" in exc.details()
    status = rpc_status.from_call(exc)
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # …and the attribute form code written before it keeps working.
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.code != grpc.StatusCode.NOT_FOUND
    assert exc.code.name == "INVALID_ARGUMENT"
    assert {exc.code} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert (exc.reason, exc.metadata) == ("INVALID_ID", {"field": "environment_id"})
    assert str(exc).startswith("INVALID_ARGUMENT: ") and str(exc).endswith("[INVALID_ID]")
    # The server's request id came back with the error.
    assert exc.request_id is not None and re.fullmatch(r"[0-9a-f]{32}", exc.request_id)
    assert dict(exc.trailing_metadata())["x-request-id"] == exc.request_id


def test_an_error_without_a_detail_has_no_reason(start_server, tokens) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    with ResolverClient(running.address) as anonymous, pytest.raises(ResolverError) as caught:
        anonymous.classify_run_id("run_" + demo.new_ksuid())
    exc = caught.value
    assert (exc.code(), exc.reason, exc.metadata) == (grpc.StatusCode.UNAUTHENTICATED, None, {})
    assert exc.request_id is not None


def test_a_channel_that_cannot_connect_raises_resolver_error_without_request_id() -> None:
    with (
        ResolverClient(f"127.0.0.1:{free_port()}", timeout=0.5) as client,
        pytest.raises(ResolverError) as caught,
    ):
        client.mint_id(pb.ID_KIND_RUN, demo.new_cuid())
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert caught.value.request_id is None


# -------------------------------------------------------------- None or not

#: The RPCs that answer NOT_FOUND (docs/errors.md), as client methods.
CAN_BE_ABSENT = {"resolve_env", "resolve_authenticated_env", "resolve_worker_version", "read_run"}


def test_only_methods_whose_rpc_answers_not_found_can_return_none() -> None:
    methods = {
        name: typing.get_type_hints(getattr(ResolverClient, name))["return"]
        for name in vars(ResolverClient)
        if not name.startswith("_") and name not in ("close", "near_cache_stats")
    }
    # One method per unary RPC (invalidate returns nothing; assert_env_exists
    # a bool); the stream is the near-cache's own.
    service = pb.DESCRIPTOR.services_by_name["ControlPlaneResolverService"]
    assert len(methods) == len([m for m in service.methods if not m.server_streaming])
    optional = {
        name
        for name, hint in methods.items()
        if isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    }
    assert optional == CAN_BE_ABSENT
    assert methods["invalidate"] is type(None)
    assert methods["assert_env_exists"] is bool


def test_absent_answers_are_none_and_present_ones_are_never_none(
    server: Running, cp, tenant
) -> None:
    client = server.client
    env_id = tenant.environment(cp)
    assert client.resolve_env(demo.new_cuid()) is None
    assert client.read_run("run_" + demo.new_ksuid()) is None
    assert client.assert_env_exists(demo.new_cuid()) is False
    # Never NOT_FOUND: absent parts are unset, absent ids flagged per id.
    locked = client.resolve_run_locked_worker(locked_by_id=demo.new_cuid())
    assert not locked.HasField("locked_by")
    [result] = client.batch_resolve_envs([demo.new_cuid()])
    assert result.not_found
    assert isinstance(client.resolve_mint_kind(tenant.organization_id), pb.ResolveMintKindResponse)
    assert client.mint_id(pb.ID_KIND_RUN, demo.new_cuid()).id
    assert client.resolve_env(env_id).id == env_id
