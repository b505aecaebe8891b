"""Database outages (docs/design.md, "Reading runs"; docs/errors.md): a database that cannot answer
is ``UNAVAILABLE`` with reason ``DATABASE_UNAVAILABLE`` — never
``NOT_FOUND`` — the message names the database but no credentials, the
other database keeps serving, and the pools recover when it comes back.

Each test stops one of its own clusters under a real split-mode server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from controlplane_resolver.config import Settings
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster
from controlplane_resolver.serving.server import ResolverApp
from controlplane_resolver_client import BareChannelWarning, ResolverClient, ResolverError, pb

from support.polling import wait_until

# The clusters trust local connections, so a password in the DSN is ignored
# by the server but still travels through the resolver: it must never leak.
PASSWORD = "s3cret"


def with_password(dsn: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    return make_conninfo("", **params, password=PASSWORD)


def retry_until(call: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Call ``call`` until it stops raising ``ResolverError`` UNAVAILABLE and
    return its result; fail naming ``what`` after ``timeout_s``."""
    outcome: list[Any] = []

    def answered() -> bool:
        try:
            outcome.append(call())
            return True
        except ResolverError as exc:
            if exc.code != grpc.StatusCode.UNAVAILABLE:
                raise
            return False

    wait_until(answered, timeout_s, 0.1, what)
    return outcome[-1]


@dataclass
class Outage:
    """A split-mode server over two clusters this test may stop, with data."""

    control_plane: LocalCluster
    run_ops: LocalCluster
    client: ResolverClient
    environment_id: str
    other_environment_id: str
    new_run_friendly_id: str
    legacy_run_id: str


@pytest.fixture
def outage(own_clusters: tuple[LocalCluster, LocalCluster]) -> Iterator[Outage]:
    control_plane, run_ops = own_clusters
    with (
        psycopg.connect(control_plane.dsn(), autocommit=True) as cp,
        psycopg.connect(run_ops.dsn(), autocommit=True) as ro,
    ):
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        env = demo.insert_environment(cp, project_id=project, organization_id=org)
        other_env = demo.insert_environment(
            cp, project_id=project, organization_id=org, type="STAGING"
        )
        new_run = demo.insert_run(
            ro, id=demo.new_ksuid(), environment_id=env, project_id=project, organization_id=org
        )
        legacy_run = demo.insert_run(
            cp, id=demo.new_cuid(), environment_id=env, project_id=project, organization_id=org
        )
    settings = Settings(
        control_plane_database_url=with_password(control_plane.dsn()),
        run_ops_database_url=with_password(run_ops.dsn()),
        run_ops_split_enabled=True,
        realtime_backend_native_enabled=True,
        addr="127.0.0.1:0",
        # Small, so an outage is reported within a second per attempt.
        db_timeout_ms=1000,
    )
    app = ResolverApp(settings)
    app.start(pool_wait_s=10)
    # A channel without the client's retry policy: each call is one attempt,
    # so the status we assert is the server's first answer.
    with pytest.warns(BareChannelWarning):
        client = ResolverClient(channel=grpc.insecure_channel(f"127.0.0.1:{app.port}"), timeout=10)
    try:
        yield Outage(control_plane, run_ops, client, env, other_env, "run_" + new_run, legacy_run)
    finally:
        client.close()
        app.stop(grace=0)


def assert_database_unavailable(exc: ResolverError, role: str, cluster: LocalCluster) -> None:
    assert exc.code == grpc.StatusCode.UNAVAILABLE
    assert exc.reason == "DATABASE_UNAVAILABLE"
    assert f"the {role} database" in exc.message
    assert f"127.0.0.1:{cluster.port}/postgres" in exc.message  # which one, recognisably
    assert PASSWORD not in exc.message and PASSWORD not in str(exc.metadata)


def test_run_ops_outage_is_unavailable_never_not_found(outage: Outage) -> None:
    client = outage.client
    # Healthy first, and the environment lands in the cache.
    assert client.read_run(outage.new_run_friendly_id).source == pb.RUN_SOURCE_RUN_OPS
    assert client.read_run(outage.legacy_run_id).source == pb.RUN_SOURCE_LEGACY
    assert client.resolve_env(outage.environment_id) is not None

    outage.run_ops.stop()

    # NEW id: the run-ops database is the only place it can be.
    with pytest.raises(ResolverError) as info:
        client.read_run(outage.new_run_friendly_id)
    assert_database_unavailable(info.value, "run-ops", outage.run_ops)
    assert info.value.metadata.get("database") == "run-ops"

    # LEGACY id: run-ops is read first, and an unknown there is not a miss.
    with pytest.raises(ResolverError) as info:
        client.read_run(outage.legacy_run_id)
    assert_database_unavailable(info.value, "run-ops", outage.run_ops)

    # The control plane is untouched, cached or not.
    assert client.resolve_env(outage.environment_id).id == outage.environment_id
    assert client.resolve_env(outage.other_environment_id).id == outage.other_environment_id

    outage.run_ops.start()
    read = retry_until(
        lambda: client.read_run(outage.new_run_friendly_id),
        timeout_s=30,
        what="ReadRun after the run-ops database restarted",
    )
    assert read.source == pb.RUN_SOURCE_RUN_OPS
    assert client.read_run(outage.legacy_run_id).source == pb.RUN_SOURCE_LEGACY


def test_control_plane_outage_is_unavailable_for_uncached_answers(outage: Outage) -> None:
    client = outage.client
    assert client.resolve_env(outage.environment_id) is not None  # cached from here on

    outage.control_plane.stop()

    with pytest.raises(ResolverError) as info:
        client.resolve_env(outage.other_environment_id)
    assert_database_unavailable(info.value, "control-plane", outage.control_plane)

    # A fresh cached answer is still served.
    assert client.resolve_env(outage.environment_id).id == outage.environment_id
    # NEW runs never touch the control plane.
    assert client.read_run(outage.new_run_friendly_id).source == pb.RUN_SOURCE_RUN_OPS
    # LEGACY runs: run-ops answers "absent", then the legacy location (the
    # control plane) cannot answer: UNAVAILABLE, not NOT_FOUND.
    with pytest.raises(ResolverError) as info:
        client.read_run(outage.legacy_run_id)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.reason == "DATABASE_UNAVAILABLE"

    outage.control_plane.start()
    # The failure was not cached as absence: the environment resolves.
    env = retry_until(
        lambda: client.resolve_env(outage.other_environment_id),
        timeout_s=30,
        what="ResolveEnv after the control-plane database restarted",
    )
    assert env is not None and env.id == outage.other_environment_id
    assert client.read_run(outage.legacy_run_id).source == pb.RUN_SOURCE_LEGACY
