"""Observability of a real server Prometheus metrics scraped over
HTTP from ``--metrics-addr`` (gRPC counters per method and code, pre-registered
at zero; cache, pool, split-mode, sentinel and listener state) and the
structured call log (one JSON line per call with method, code, latency, cache
outcome, serving database, peer identity and request id)."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane_resolver.dev import demo
from controlplane_resolver.runtime.logs import JsonFormatter
from controlplane_resolver_client import ResolverClient, ResolverError, pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

from support.credentials import CONSOLE_TOKEN, ENGINE_TOKEN, Pki, Tokens, classify
from support.databases import Tenant
from support.polling import wait_until
from support.scraping import Samples, grpc_labels, handled, scrape_server

METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["ControlPlaneResolverService"].methods]
#: Every code a call of ours can end with, and the ones the issue names.
CODES = (
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNKNOWN",
)


def started(samples: Samples, method: str) -> float:
    return samples[("grpc_server_started_total", grpc_labels(method))]


def timed(samples: Samples, method: str) -> float:
    return samples[("grpc_server_handling_seconds_count", grpc_labels(method))]


def labelled(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def family(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


# ------------------------------------------------------------ gRPC counters


def test_metrics_listen_on_an_ipv6_address_too(start_server) -> None:
    running = start_server(metrics_addr="[::1]:0")
    with urllib.request.urlopen(
        f"http://[::1]:{running.app.metrics_port}/metrics", timeout=5
    ) as response:
        assert "grpc_server_handled_total" in response.read().decode()


def test_every_method_and_code_is_registered_at_zero_before_any_call(start_server) -> None:
    running = start_server(metrics_addr="127.0.0.1:0")
    assert running.app.metrics_port and running.app.metrics_port != running.app.port
    samples = scrape_server(running)
    assert len(METHODS) == 13 and "ResolveAuthenticatedEnv" in METHODS
    for method in METHODS:
        assert started(samples, method) == 0
        assert timed(samples, method) == 0
        for code in CODES:
            assert handled(samples, method, code) == 0, (method, code)


def test_handled_counts_every_outcome_with_its_real_code(
    start_server, tokens: Tokens, cp, tenant: Tenant
) -> None:
    running = start_server(metrics_addr="127.0.0.1:0", auth_tokens_file=str(tokens.path))
    env_id = tenant.environment(cp)
    # A corrupt row: Prisma never writes a NULL inside "runTags", but the
    # column allows it, and a repeated string cannot hold it. Mapping fails
    # with an exception nothing expected (servicer's catch-all: INTERNAL).
    broken = demo.new_cuid()
    demo.insert_run(
        cp, id=broken, environment_id=env_id, project_id=tenant.project_id, run_tags=["ok", None]
    )
    before = scrape_server(running)
    with (
        ResolverClient(running.address, token=ENGINE_TOKEN) as engine,
        ResolverClient(running.address, token=CONSOLE_TOKEN) as console,
        ResolverClient(running.address) as anonymous,
    ):
        assert engine.resolve_env(env_id).id == env_id  # OK
        assert engine.resolve_env(demo.new_cuid()) is None  # NOT_FOUND
        codes = []
        for call in (
            lambda: engine.resolve_env("no such id!"),  # INVALID_ARGUMENT
            lambda: anonymous.resolve_env(env_id),  # UNAUTHENTICATED
            lambda: engine.resolve_authenticated_env(env_id),  # PERMISSION_DENIED
            lambda: engine.read_run(broken),
        ):  # INTERNAL
            with pytest.raises(ResolverError) as failed:
                call()
            codes.append(failed.value.code.name)
        assert codes == ["INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "INTERNAL"]
        assert console.resolve_authenticated_env(env_id).id == env_id  # OK
    after = scrape_server(running)

    def delta(method: str, code: str) -> float:
        return handled(after, method, code) - handled(before, method, code)

    expected = {
        ("ResolveEnv", "OK"): 1,
        ("ResolveEnv", "NOT_FOUND"): 1,
        ("ResolveEnv", "INVALID_ARGUMENT"): 1,
        ("ResolveEnv", "UNAUTHENTICATED"): 1,
        ("ResolveAuthenticatedEnv", "PERMISSION_DENIED"): 1,
        ("ReadRun", "INTERNAL"): 1,
        ("ResolveAuthenticatedEnv", "OK"): 1,
    }
    moved = {(m, c): delta(m, c) for m in METHODS for c in CODES if delta(m, c)}
    assert moved == expected
    for method, calls in (("ResolveEnv", 4), ("ResolveAuthenticatedEnv", 2), ("ReadRun", 1)):
        assert started(after, method) - started(before, method) == calls
        assert timed(after, method) - timed(before, method) == calls
        buckets = family(after, "grpc_server_handling_seconds_bucket")
        assert buckets[grpc_labels(method, le="+Inf")] == calls


# ------------------------------------------------------------ cache metrics


def cache_counter(samples: Samples, field: str, slot: str = "environment") -> float:
    return labelled(samples, f"resolver_cache_{field}_total", slot=slot)


def invalidations(samples: Samples, cause: str) -> float:
    return labelled(samples, "resolver_cache_invalidations_total", cause=cause)


def test_cache_hits_misses_negative_hits_evictions_and_invalidations_are_counted(
    start_server, cp, tenant: Tenant
) -> None:
    running = start_server(metrics_addr="127.0.0.1:0", control_plane_cache_max_entries=2)
    client = running.client
    a, b, c = (tenant.environment(cp) for _ in range(3))
    absent = demo.new_cuid()
    zero = scrape_server(running)
    # The listener's connect invalidated everything once, at start-up.
    assert invalidations(zero, "all") == 1
    for field in ("hits", "misses", "negative_hits", "evictions", "stale_serves", "joins"):
        assert cache_counter(zero, field) == 0

    assert client.resolve_env(a) and client.resolve_env(a)
    assert client.resolve_env(absent) is None and client.resolve_env(absent) is None
    s = scrape_server(running)
    assert (
        cache_counter(s, "misses"),
        cache_counter(s, "hits"),
        cache_counter(s, "negative_hits"),
        cache_counter(s, "evictions"),
    ) == (2, 1, 1, 0)
    # Two entries is the bound: two more fills evict two.
    assert client.resolve_env(b) and client.resolve_env(c)
    s = scrape_server(running)
    assert (cache_counter(s, "misses"), cache_counter(s, "evictions")) == (4, 2)
    assert cache_counter(s, "loads") == 4

    # Invalidation by cause: over gRPC, and by NOTIFY through the listener.
    client.invalidate(environment_id=c)
    client.invalidate(organization_id=tenant.organization_id)
    cp.execute(
        "SELECT pg_notify('controlplane_resolver_invalidate', %s)",
        (f"project:{tenant.project_id}",),
    )
    s = wait_until(
        lambda: (lambda s: invalidations(s, "project") == 1 and s)(scrape_server(running)),
        timeout=5,
    )
    assert (
        invalidations(s, "environment"),
        invalidations(s, "organization"),
        invalidations(s, "all"),
    ) == (1, 1, 1)
    assert labelled(s, "resolver_listener_notifications_total") == 1
    # The invalidated answer is a miss again.
    assert client.resolve_env(c)
    assert cache_counter(scrape_server(running), "misses") == 5


def test_stale_serves_and_single_flight_joins_are_counted(start_server, cp, tenant: Tenant) -> None:
    running = start_server(
        metrics_addr="127.0.0.1:0",
        control_plane_cache_ttl_ms=100,
        control_plane_cache_hard_ttl_ms=60_000,
    )
    client = running.client
    stale_env, cold_env = tenant.environment(cp), tenant.environment(cp)
    assert client.resolve_env(stale_env)
    # Past the soft TTL the cached answer is served and refreshed behind.
    wait_until(
        lambda: (
            client.resolve_env(stale_env)
            and cache_counter(scrape_server(running), "stale_serves") >= 1
        ),
        timeout=5,
    )
    wait_until(lambda: cache_counter(scrape_server(running), "refreshes") >= 1, timeout=5)

    # Two cold calls while the table is locked: one loads, one joins it.
    answers: list[str] = []
    with psycopg.connect(running.app.settings.control_plane_database_url) as locker:
        locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
        callers = [
            threading.Thread(
                target=lambda: answers.append(client.resolve_env(cold_env, timeout=10).id)
            )
            for _ in range(2)
        ]
        for caller in callers:
            caller.start()
        wait_until(lambda: cache_counter(scrape_server(running), "joins") == 1, timeout=5)
        locker.rollback()
    for caller in callers:
        caller.join(10)
    assert answers == [cold_env, cold_env]


# --------------------------------------------- pools, split, sentinel, listener


def test_pool_split_sentinel_and_listener_state_are_exposed(start_server) -> None:
    split = start_server(metrics_addr="127.0.0.1:0")
    s = scrape_server(split)
    roles = {db.role for db in split.app.topology.databases}
    assert roles == {"control-plane", "run-ops"}  # legacy shares the control-plane pool
    for role in roles:
        assert labelled(s, "resolver_pool_connections", database=role) >= 1
        assert labelled(s, "resolver_pool_requests_waiting", database=role) == 0
        assert labelled(s, "resolver_pool_errors_total", database=role) == 0
    assert labelled(s, "resolver_split_mode") == 1
    verdict = split.app.topology.decision.sentinel.verdict.name
    assert family(s, "resolver_sentinel_verdict") == {frozenset({("verdict", verdict)}): 1}
    assert labelled(s, "resolver_listener_listening") == 1

    unsplit = start_server(
        metrics_addr="127.0.0.1:0", run_ops_split_enabled=False, listen_enabled=False
    )
    s = scrape_server(unsplit)
    assert set(family(s, "resolver_pool_connections")) == {
        frozenset({("database", "control-plane")})
    }
    assert labelled(s, "resolver_split_mode") == 0
    assert family(s, "resolver_sentinel_verdict") == {frozenset({("verdict", "NOT_RUN")}): 1}
    assert not family(s, "resolver_listener_listening")


def test_pool_waiting_gauge_counts_callers_waiting_for_a_connection(
    start_server, cp, tenant: Tenant
) -> None:
    running = start_server(
        metrics_addr="127.0.0.1:0", pool_max_size=1, db_timeout_ms=10_000, listen_enabled=False
    )
    envs = [tenant.environment(cp) for _ in range(3)]
    answers: list[str] = []
    with psycopg.connect(running.app.settings.control_plane_database_url) as locker:
        locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
        callers = [
            threading.Thread(
                target=lambda e=e: answers.append(running.client.resolve_env(e, timeout=20).id)
            )
            for e in envs
        ]
        for caller in callers:
            caller.start()
        # One call holds the only connection (blocked on the lock); two wait.
        wait_until(
            lambda: (
                labelled(
                    scrape_server(running),
                    "resolver_pool_requests_waiting",
                    database="control-plane",
                )
                == 2
            ),
            timeout=5,
        )
        locker.rollback()
    for caller in callers:
        caller.join(20)
    assert sorted(answers) == sorted(envs)
    assert (
        labelled(scrape_server(running), "resolver_pool_requests_waiting", database="control-plane")
        == 0
    )


# ------------------------------------------------------------------ call log


@pytest.fixture
def call_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The call log as parsed JSON lines (logger ``controlplane_resolver.calls``
    at DEBUG through the JSON formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("controlplane_resolver.calls")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def test_one_json_line_per_call_with_outcome_cache_database_peer_and_request_id(
    start_server,
    tokens: Tokens,
    cp,
    ro,
    tenant: Tenant,
    call_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    running = start_server(auth_tokens_file=str(tokens.path))
    env_id = tenant.environment(cp)
    absent = demo.new_cuid()
    new_run = demo.insert_run(
        ro, id=demo.new_ksuid(), environment_id=env_id, project_id=tenant.project_id
    )
    legacy_run = demo.insert_run(
        cp, id=demo.new_cuid(), environment_id=env_id, project_id=tenant.project_id
    )
    channel = grpc.insecure_channel(running.address)
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)

    def call(
        rpc: Callable[..., Any],
        request: Any,
        token: str | None = ENGINE_TOKEN,
        request_id: str | None = None,
    ) -> str:
        metadata = []
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        if request_id:
            metadata.append(("x-request-id", request_id))
        try:
            rpc(request, timeout=5, metadata=metadata)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name

    resolve = stub.ResolveEnv
    outcomes = [
        call(resolve, pb.ResolveEnvRequest(environment_id=env_id), request_id="req-0001"),
        call(resolve, pb.ResolveEnvRequest(environment_id=env_id)),
        call(resolve, pb.ResolveEnvRequest(environment_id=absent)),
        call(resolve, pb.ResolveEnvRequest(environment_id=absent)),
        call(stub.ReadRun, pb.ReadRunRequest(run_id=new_run)),
        call(stub.ReadRun, pb.ReadRunRequest(run_id=legacy_run)),
        call(resolve, pb.ResolveEnvRequest(environment_id="bad id!")),
        call(resolve, pb.ResolveEnvRequest(environment_id=env_id), token=None),
        call(
            stub.AssertEnvExists,
            pb.AssertEnvExistsRequest(environment_id=env_id),
            token=CONSOLE_TOKEN,
            request_id="req-0002",
        ),
    ]
    channel.close()
    assert outcomes == [
        "OK",
        "OK",
        "NOT_FOUND",
        "NOT_FOUND",
        "OK",
        "OK",
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    ]
    lines = call_lines()
    assert len(lines) == len(outcomes)  # one line per call, no more
    assert [line["code"] for line in lines] == outcomes
    assert [line["method"] for line in lines] == ["ResolveEnv"] * 4 + ["ReadRun"] * 2 + [
        "ResolveEnv"
    ] * 2 + ["AssertEnvExists"]
    # Successes and absences at debug; errors at warning.
    assert [line["level"] for line in lines] == ["debug"] * 6 + ["warning"] * 3
    assert [line.get("cache") for line in lines[:4]] == ["miss", "hit", "miss", "negative_hit"]
    assert [line.get("database") for line in lines[4:6]] == ["run-ops", "legacy"]
    assert all("database" not in line for line in lines[:4])
    # The token's client is the peer; without one, the caller's address.
    assert [line["peer"] for line in lines] == ["engine"] * 7 + [lines[7]["peer"], "console"]
    assert lines[7]["peer"].startswith("ipv4:127.0.0.1:")
    for line in lines:
        assert isinstance(line["latency_ms"], (int, float)) and 0 <= line["latency_ms"] < 5000
        assert line["logger"] == "controlplane_resolver.calls"
    # The request id is echoed from metadata, else generated afresh per call.
    assert (lines[0]["request_id"], lines[8]["request_id"]) == ("req-0001", "req-0002")
    generated = [line["request_id"] for line in lines[1:8]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in generated)
    assert len(set(generated)) == len(generated)


def test_call_log_names_the_client_certificate_under_mutual_tls(
    start_server, pki: Pki, call_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    running = start_server(**pki.settings(mutual=True))
    with ResolverClient(
        running.address, tls_ca=pki.server_ca.pem, tls_cert=pki.client.cert, tls_key=pki.client.key
    ) as member:
        assert classify(member)
    [line] = call_lines()
    assert (line["method"], line["code"], line["peer"]) == ("ClassifyRunId", "OK", "engine-node-1")


def test_text_call_log_says_what_happened(start_server, caplog: pytest.LogCaptureFixture) -> None:
    running = start_server()
    caplog.set_level(logging.DEBUG, logger="controlplane_resolver.calls")
    assert classify(running.client)
    [record] = [r for r in caplog.records if r.name == "controlplane_resolver.calls"]
    assert re.fullmatch(r"ClassifyRunId OK \d+\.\d+ms ipv4:127\.0\.0\.1:\d+", record.getMessage())


def test_pool_errors_count_callers_that_got_no_connection_in_time(
    start_server, cp, tenant: Tenant
) -> None:
    running = start_server(
        metrics_addr="127.0.0.1:0", pool_max_size=1, db_timeout_ms=300, listen_enabled=False
    )
    envs = [tenant.environment(cp) for _ in range(3)]
    before = labelled(
        scrape_server(running), "resolver_pool_errors_total", database="control-plane"
    )
    codes: list[str] = []
    # A plain channel: no client retries, one attempt per call.
    with grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)

        def call(env_id: str) -> None:
            try:
                stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id), timeout=10)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)

        with psycopg.connect(running.app.settings.control_plane_database_url) as locker:
            locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
            callers = [threading.Thread(target=call, args=(e,)) for e in envs]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(10)
            locker.rollback()
    # The pool wait and the statement timeout are both 0.3 s: of three calls
    # that meet one connection, the first holds it 0.3 s (then its statement
    # times out), the next may just get it, and the last cannot: at least
    # one gives up waiting for a connection.
    assert codes == ["UNAVAILABLE"] * 3
    after = labelled(scrape_server(running), "resolver_pool_errors_total", database="control-plane")
    assert 1 <= after - before <= 2


def test_process_metrics_label_each_childs_samples_and_report_who_answered():
    """process_metrics.py without a server: two real /metrics endpoints
    stand in for two children, a third slot has not reported a port yet."""
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.exposition import generate_latest, start_http_server

    from controlplane_resolver.dev.clusters import free_port
    from controlplane_resolver.runtime.process_metrics import ChildPorts, ChildrenCollector

    ports = ChildPorts(4)
    servers = []
    for slot, calls in ((0, 3), (1, 5)):
        registry = CollectorRegistry()
        Counter("calls", "calls", ["method"], registry=registry).labels("Get").inc(calls)
        Histogram("seconds", "latency", registry=registry, buckets=(0.1,)).observe(0.05)
        httpd, _thread = start_http_server(0, "127.0.0.1", registry=registry)
        servers.append(httpd)
        ports.set(slot, httpd.server_address[1])
    ports.set(3, free_port())  # reported, but nobody listens there any more
    merged = CollectorRegistry(auto_describe=False)
    merged.register(ChildrenCollector(ports, timeout_s=1))
    try:
        families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(merged).decode())
        }
    finally:
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()
    calls = {
        s.labels["process"]: s.value for s in families["calls"].samples if s.name == "calls_total"
    }
    assert calls == {"0": 3, "1": 5}
    assert {
        s.labels["process"]
        for s in families["seconds"].samples
        if s.name == "seconds_bucket" and s.labels["le"] == "0.1"
    } == {"0", "1"}
    assert {s.labels["process"]: s.value for s in families["resolver_process_up"].samples} == {
        "0": 1,
        "1": 1,
        "2": 0,
        "3": 0,
    }
