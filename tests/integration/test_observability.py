"""Observability of a real server: Prometheus metrics scraped over
HTTP from ``--metrics-addr`` (gRPC counters per method and code, pre-registered
at zero; cache, pool, split-mode, sentinel and listener state; the standard
``process_*`` metrics of every process; no ``_created`` series), the
structured call log (one JSON line per call with method, code, latency, cache
outcome, serving database, peer identity and request id, at a level chosen by
the code), the request id echoed to the caller, and a rate-limited warning
that callers' input triggers."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import free_port
from controlplane_resolver.runtime.logs import JsonFormatter
from controlplane_resolver_client import ResolverClient, ResolverError, pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

from support.credentials import CONSOLE_TOKEN, ENGINE_TOKEN, Pki, Tokens, classify
from support.databases import Tenant
from support.polling import wait_until
from support.processes import ServerProcess
from support.scraping import Samples, grpc_labels, handled, scrape, scrape_server
from support.servers import Running

#: The unary methods: the call metrics count those (the watch stream has its own).
METHODS = [
    m.name
    for m in pb.DESCRIPTOR.services_by_name["ControlPlaneResolverService"].methods
    if not m.server_streaming
]
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
    # An Invalidate call counts once on the replica that took it: its own
    # NOTIFY (sent before the project's) comes back and is not applied again.
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
    # Successes and absences at debug; the caller's mistakes at info; a
    # denied call at warning (every level by code: the test below).
    assert [line["level"] for line in lines] == ["debug"] * 6 + ["info", "info", "warning"]
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
    assert running.app.topology is not None
    pool = running.app.topology.control_plane_replica.pool  # no replica: the primary's
    envs = [tenant.environment(cp) for _ in range(3)]

    def pool_errors() -> float:
        return labelled(
            scrape_server(running), "resolver_pool_errors_total", database="control-plane"
        )

    before = pool_errors()
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

        # The pool's one connection is held here: each call's load waits the
        # pool's 0.3 s for it and gives up.
        with pool.connection():
            callers = [threading.Thread(target=call, args=(e,)) for e in envs]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(10)
            # The callers stop waiting at 0.3 s too: a load's timeout may be
            # counted just after its caller's answer.
            wait_until(lambda: pool_errors() - before >= 3, 5, what="three pool timeouts")
    assert codes == ["UNAVAILABLE"] * 3
    assert pool_errors() - before == 3


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


# ------------------------------------------------------ process metrics


#: The standard process collector's metrics (prometheus_client, on Linux).
PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_process_metrics_and_no_created_series_in_a_real_scrape(start_server) -> None:
    running = start_server(metrics_addr="127.0.0.1:0")
    assert classify(running.client)  # counters and a histogram with a sample
    assert running.app.metrics_port is not None
    text = metrics_text(running.app.metrics_port)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    for name in PROCESS_METRICS:
        assert name in samples, name
    assert samples["process_resident_memory_bytes"] > 0
    assert 0 < samples["process_open_fds"] <= samples["process_max_fds"]
    assert samples["process_start_time_seconds"] <= time.time()
    # No counter or histogram carries a creation timestamp series.
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert "grpc_server_handled_total" in names and "grpc_server_handling_seconds_sum" in names
    assert not [n for n in names if n.endswith("_created")]
    assert "_created" not in text


def test_every_process_of_processes_n_reports_its_process_metrics(databases) -> None:
    metrics = free_port()
    env = {
        "CONTROL_PLANE_DATABASE_URL": databases.control_plane,
        "RUN_OPS_SPLIT_ENABLED": "0",
        "RESOLVER_LISTEN_ENABLED": "0",
        "RESOLVER_PROCESSES": "2",
        "RESOLVER_METRICS_ADDR": f"127.0.0.1:{metrics}",
    }
    with ServerProcess(env).wait_serving():

        def by_process(name: str) -> dict[str, float]:
            return {
                dict(labels)["process"]: value
                for (n, labels), value in scrape(metrics).items()
                if n == name
            }

        wait_until(
            lambda: by_process("resolver_process_up") == {"0": 1, "1": 1},
            timeout=20,
            interval=0.05,
        )
        text = metrics_text(metrics)
        for name in PROCESS_METRICS:
            assert set(by_process(name)) == {"0", "1", "supervisor"}, name
        memory = by_process("process_resident_memory_bytes")
        assert all(value > 0 for value in memory.values())
        # Each child reports itself: forked after the supervisor started.
        started_at = by_process("process_start_time_seconds")
        assert started_at["0"] >= started_at["supervisor"]
        assert started_at["1"] >= started_at["supervisor"]
        assert "_created" not in text


# ---------------------------------------------------- call log levels


#: The call log's level per code (go-grpc-middleware's server defaults,
#: with OK and NOT_FOUND at debug: they are answers).
LEVELS = {
    "OK": "debug",
    "NOT_FOUND": "debug",
    "INVALID_ARGUMENT": "info",
    "UNAUTHENTICATED": "info",
    "CANCELLED": "info",
    "PERMISSION_DENIED": "warning",
    "DEADLINE_EXCEEDED": "warning",
    "UNAVAILABLE": "warning",
    "INTERNAL": "error",
}


def lock_waiters(cp: psycopg.Connection[Any]) -> int:
    """The resolvers' connections waiting for a lock right now."""
    row = cp.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND application_name LIKE 'controlplane-resolver%'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_call_log_level_follows_the_status_code(
    start_server, cp, tenant: Tenant, call_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    running = start_server(listen_enabled=False, db_timeout_ms=10_000)
    stalled = start_server(listen_enabled=False, db_timeout_ms=300)
    env_id = tenant.environment(cp)
    late, timed_out, cancelled = (tenant.environment(cp) for _ in range(3))
    broken = demo.new_cuid()
    demo.insert_run(
        cp, id=broken, environment_id=env_id, project_id=tenant.project_id, run_tags=["ok", None]
    )
    channel = grpc.insecure_channel(running.address)  # no retries: one attempt per call
    stalled_channel = grpc.insecure_channel(stalled.address)
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
    stalled_stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(stalled_channel)

    def code_of(call: Callable[[], Any]) -> str:
        try:
            call()
            return "OK"
        except grpc.RpcError as exc:
            return str(exc.code().name)

    codes = [code_of(lambda: stub.ReadRun(pb.ReadRunRequest(run_id=broken), timeout=5))]
    with psycopg.connect(running.app.settings.control_plane_database_url) as locker:
        locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
        # The caller gives up before the locked table answers.
        codes.append(
            code_of(lambda: stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=late), timeout=0.3))
        )
        # The statement times out (300 ms) while the caller still waits.
        codes.append(
            code_of(
                lambda: stalled_stub.ResolveEnv(
                    pb.ResolveEnvRequest(environment_id=timed_out), timeout=10
                )
            )
        )
        # The caller cancels while the call waits for the lock; the answer
        # comes later. (The loads above, which nobody waits for any more,
        # have stopped waiting for the lock by now.)
        wait_until(lambda: lock_waiters(cp) == 0, timeout=5)
        pending = stub.ResolveEnv.future(pb.ResolveEnvRequest(environment_id=cancelled), timeout=30)
        wait_until(lambda: lock_waiters(cp) == 1, timeout=5)
        assert pending.cancel()
        codes.append("CANCELLED")
        # The server reads the cancellation off the connection before the
        # call sent after it: once that call is answered, the cancelled one
        # ends CANCELLED, not OK, whenever its answer comes.
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        locker.rollback()
    lines = wait_until(
        lambda: (lambda found: len(found) == 4 and found)(
            [line for line in call_lines() if line["code"] != "OK"]
        ),
        timeout=15,
        what="a call-log line for each call",
    )
    channel.close()
    stalled_channel.close()
    assert codes == ["INTERNAL", "DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"]
    assert sorted(line["code"] for line in lines) == sorted(codes)
    for line in lines:
        assert line["level"] == LEVELS[line["code"]], line


def test_call_log_levels_of_answers_and_of_the_callers_mistakes(
    start_server, tokens: Tokens, cp, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """At the default INFO level the call log carries the callers' mistakes
    and worse, never a line per answered call."""
    running = start_server(auth_tokens_file=str(tokens.path), listen_enabled=False)
    caplog.set_level(logging.INFO, logger="controlplane_resolver.calls")
    env_id = tenant.environment(cp)
    with (
        ResolverClient(running.address, token=ENGINE_TOKEN) as engine,
        ResolverClient(running.address) as anonymous,
    ):
        for _ in range(5):
            assert engine.resolve_env(env_id) is not None  # OK
            assert engine.resolve_env(demo.new_cuid()) is None  # NOT_FOUND
        with pytest.raises(ResolverError):
            engine.resolve_env("bad id!")
        with pytest.raises(ResolverError):
            anonymous.resolve_env(env_id)
        with pytest.raises(ResolverError):
            engine.resolve_authenticated_env(env_id)
    seen = [
        (r.levelname, r.getMessage().split()[1])
        for r in caplog.records
        if r.name == "controlplane_resolver.calls"
    ]
    assert seen == [
        ("INFO", "INVALID_ARGUMENT"),
        ("INFO", "UNAUTHENTICATED"),
        ("WARNING", "PERMISSION_DENIED"),
    ]


# ---------------------------------------------------------- request ids


def test_request_id_is_echoed_on_answers_and_errors(
    start_server, tokens: Tokens, cp, tenant: Tenant, call_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    running = start_server(auth_tokens_file=str(tokens.path), listen_enabled=False)
    env_id = tenant.environment(cp)
    channel = grpc.insecure_channel(running.address)
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)

    def echoed(env: str, request_id: str | None, token: str | None = ENGINE_TOKEN) -> str:
        """The x-request-id of the answer (or of the error)."""
        metadata = [("authorization", f"Bearer {token}")] if token else []
        if request_id is not None:
            metadata.append(("x-request-id", request_id))
        request = pb.ResolveEnvRequest(environment_id=env)
        try:
            _response, call = stub.ResolveEnv.with_call(request, timeout=5, metadata=metadata)
            trailing = call.trailing_metadata()
        except grpc.RpcError as exc:
            trailing = exc.trailing_metadata()
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # The error's own details still travel beside the id.
                status = rpc_status.from_call(exc)
                assert status is not None and status.details
        [value] = [v for k, v in trailing if k == "x-request-id"]
        return str(value)

    uuid_like = "0f6c1c0e-8d57-4b6e-9d0e-3f1b3c2a9e77"
    assert echoed(env_id, "req-0001") == "req-0001"  # OK
    assert echoed(demo.new_cuid(), uuid_like) == uuid_like  # NOT_FOUND
    assert echoed("bad id!", "trace:a/b+c=d.e_f") == "trace:a/b+c=d.e_f"  # INVALID_ARGUMENT
    assert echoed(env_id, "req-0004", token=None) == "req-0004"  # UNAUTHENTICATED
    # None sent, too long, or outside the safe set: a generated id instead.
    generated = [
        echoed(env_id, None),
        echoed(env_id, "x" * 65),
        echoed(env_id, "two words"),
        echoed(env_id, "<script>"),
        echoed(env_id, "line\\nbreak"),
    ]
    channel.close()
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in generated), generated
    assert len(set(generated)) == len(generated)
    # The log line carries the id the caller got back.
    ids = [line["request_id"] for line in call_lines()]
    assert ids == ["req-0001", uuid_like, "trace:a/b+c=d.e_f", "req-0004", *generated]


def test_the_client_exposes_the_echoed_request_id_of_an_error(server: Running) -> None:
    with pytest.raises(ResolverError) as caught:
        server.client.mint_id(pb.ID_KIND_UNSPECIFIED, demo.new_cuid())
    assert caught.value.reason == "INVALID_ENUM"
    assert caught.value.request_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", caught.value.request_id)


# ------------------------------------------------ rate-limited warnings


def test_unclassifiable_run_id_warning_is_rate_limited(
    server: Running, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any caller can send unclassifiable run ids under split: they may not
    grow the log by a line each."""
    caplog.set_level(logging.WARNING, logger="controlplane_resolver.resolver")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "controlplane_resolver.resolver" and "unclassifiable" in r.getMessage()
        ]

    for n in range(100):
        assert server.client.read_run(f"run_{n:08d}") is None  # an 8-character body
    assert warnings() == ["run id body of 8 characters is unclassifiable; reading it as legacy"]
    # Once the interval has passed, the next line counts what was held back.
    warning = server.app.servicer.resolver.unclassifiable_id_warning
    assert warning.interval_s == 60
    monkeypatch.setattr(warning, "interval_s", 0.0)
    assert server.client.read_run("run_abc") is None
    assert warnings()[1:] == [
        "run id body of 3 characters is unclassifiable; reading it as legacy "
        "(99 more like it suppressed since the last such line)"
    ]
