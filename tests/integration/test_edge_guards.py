"""The edge's guards on a real server: a malformed request is the caller's
mistake (INVALID_ARGUMENT, no traceback), method names nobody serves are
one metric label, and UNAVAILABLE tells the caller when to retry
(google.rpc.RetryInfo and the gRFC A6 pushback trailer)."""

from __future__ import annotations

import logging

import grpc
import psycopg
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controlplane_resolver.dev import demo
from controlplane_resolver_client import pb
from controlplane_resolver_client.v1 import SERVICE_NAME, resolver_pb2_grpc

from support.polling import wait_until
from support.scraping import scrape_server


def test_a_malformed_request_is_invalid_argument_without_a_traceback(server, caplog) -> None:
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(f"/{SERVICE_NAME}/ResolveEnv")
        with caplog.at_level(logging.ERROR):
            try:
                raw(b"\xff\xff\xff\xff", timeout=5)
                raise AssertionError("a malformed request was answered")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_methods_nobody_serves_are_one_label(start_server, tokens) -> None:
    running = start_server(metrics_addr="127.0.0.1:0", auth_tokens_file=str(tokens.path))
    with grpc.insecure_channel(running.address) as channel:
        for i in range(50):
            try:
                channel.unary_unary(f"/junk{i}.Service/Method{i}")(b"", timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    methods = {
        dict(labels).get("grpc_method")
        for (name, labels) in scrape_server(running)
        if name == "grpc_server_started_total"
    }
    assert "unknown" in methods
    assert not any(m and m.startswith("Method") for m in methods), methods


def test_unavailable_carries_a_retry_delay(own_clusters, start_server) -> None:
    cp_cluster, ro_cluster = own_clusters
    with psycopg.connect(cp_cluster.dsn(), autocommit=True) as cp:
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        env_id = demo.insert_environment(cp, project_id=project, organization_id=org)
    running = start_server(
        control_plane_database_url=cp_cluster.dsn(),
        run_ops_database_url=ro_cluster.dsn(),
        listen_enabled=False,
        db_timeout_ms=500,
        db_probe_interval_ms=2000,
    )
    cp_cluster.stop("immediate")
    with grpc.insecure_channel(running.address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        refused: list[grpc.RpcError] = []

        def circuit_refuses() -> bool:
            try:
                stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                if "being probed" in exc.details():
                    refused.append(exc)
                    return True
            return False

        wait_until(circuit_refuses, 20, 0.05, "the circuit refuses at once")
    status = rpc_status.from_call(refused[0])
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 2000
    trailers = dict(refused[0].trailing_metadata())
    assert trailers["grpc-retry-pushback-ms"] == "2000"
