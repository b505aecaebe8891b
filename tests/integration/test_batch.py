"""BatchResolveEnvs and BatchReadRuns through a real server.

Contract: one result per requested id, in request order, echoing the id;
an absent id sets ``not_found`` instead of failing the call; duplicates are
answered each time; at most 1000 ids; one malformed id fails the whole call.
Environments come from the cache when cached (batch and single calls share
it); runs are never cached and follow the same read-through as ReadRun.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from controlplane_resolver.dev import demo
from controlplane_resolver_client import ResolverClient, pb
from controlplane_resolver_client.client import ResolverError

from support.environments import concurrency_limit, set_concurrency_limit
from support.servers import serving

Conn = psycopg.Connection[Any]

NANOID_ALPHABET = "123456789abcdefghijkmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def client(databases: Any) -> Iterator[ResolverClient]:
    """One split-mode server for the module, default cache TTLs (ids are
    fresh per test, so cache entries of different tests never meet)."""
    with serving(databases) as running:
        yield running.client


def add_run(
    conn: Conn,
    run_id: str,
    tenant: Any,
    environment_id: str,
    *,
    status: str = "PENDING",
    friendly_id: str | None = None,
) -> str:
    """A run with ``run_id``; returns the id."""
    return demo.insert_run(
        conn,
        id=run_id,
        environment_id=environment_id,
        project_id=tenant.project_id,
        organization_id=tenant.organization_id,
        status=status,
        environment_type="PRODUCTION",
        **({"friendly_id": friendly_id} if friendly_id else {}),
    )


# ------------------------------------------------------------ BatchResolveEnvs


def test_batch_resolve_envs_in_request_order(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """Results follow the request: ids echoed, absent ids flagged, duplicates
    answered each time, each environment the ResolveEnv shape."""
    prod = tenant.environment(cp, "PRODUCTION", maximum_concurrency_limit=11)
    dev = tenant.environment(cp, "DEVELOPMENT")
    absent = demo.new_cuid()
    request = [dev, absent, prod, dev, absent]
    results = client.batch_resolve_envs(request)
    assert [r.environment_id for r in results] == request
    assert [r.not_found for r in results] == [False, True, False, False, True]
    assert [r.environment.id for r in results] == [dev, "", prod, dev, ""]
    for r in results:
        assert r.HasField("environment") is not r.not_found
    assert results[2].environment.type == pb.ENVIRONMENT_TYPE_PRODUCTION
    assert results[2].environment.maximum_concurrency_limit == 11
    assert results[0].environment.type == pb.ENVIRONMENT_TYPE_DEVELOPMENT
    assert results[2].environment == client.resolve_env(prod)
    assert results[0].environment == results[3].environment


def test_batch_resolve_envs_empty_and_largest(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """No ids → no results; exactly 1000 ids is allowed."""
    assert client.batch_resolve_envs([]) == []
    env_id = tenant.environment(cp, "STAGING")
    ids = [demo.new_cuid() for _ in range(999)] + [env_id]
    results = client.batch_resolve_envs(ids)
    assert len(results) == 1000
    assert [r.environment_id for r in results] == ids
    assert sum(r.not_found for r in results) == 999
    assert results[-1].environment.id == env_id


def test_batch_resolve_envs_serves_cached_answers(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """An environment cached by a first batch (or by ResolveEnv) is served from
    the cache by the next batch even after the row changed; an id first seen
    in the second batch is read fresh."""
    first = tenant.environment(cp, "PRODUCTION", maximum_concurrency_limit=5)
    by_single_call = tenant.environment(cp, "STAGING", maximum_concurrency_limit=5)
    fresh = tenant.environment(cp, "PREVIEW", maximum_concurrency_limit=5)
    assert client.batch_resolve_envs([first])[0].environment.maximum_concurrency_limit == 5
    assert concurrency_limit(client, by_single_call) == 5
    for env_id in (first, by_single_call, fresh):
        set_concurrency_limit(cp, env_id, 6)

    results = client.batch_resolve_envs([first, by_single_call, fresh])
    assert [r.environment.maximum_concurrency_limit for r in results] == [5, 5, 6]
    # The batch filled the cache for single calls too.
    assert concurrency_limit(client, first) == 5

    client.invalidate(environment_id=first)
    results = client.batch_resolve_envs([first, by_single_call])
    assert [r.environment.maximum_concurrency_limit for r in results] == [6, 5]


def test_batch_resolve_envs_bad_input(client: ResolverClient) -> None:
    """Over 1000 ids, or one malformed id, fails the whole call."""
    with pytest.raises(ResolverError) as caught:
        client.batch_resolve_envs([demo.new_cuid() for _ in range(1001)])
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert caught.value.reason == "BATCH_TOO_LARGE"
    with pytest.raises(ResolverError) as caught:
        client.batch_resolve_envs([demo.new_cuid(), "not an id", demo.new_cuid()])
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert caught.value.reason == "INVALID_ID"


# --------------------------------------------------------------- BatchReadRuns


def test_batch_read_runs_mixed_residencies(
    client: ResolverClient, cp: Conn, ro: Conn, tenant: Any
) -> None:
    """Every residency and both id forms in one call, across both databases,
    in request order, with duplicates and absent ids."""
    env_id = tenant.environment(cp, "PRODUCTION")
    new_run = add_run(ro, demo.new_ksuid(), tenant, env_id, status="EXECUTING")
    legacy_run = add_run(cp, demo.new_cuid(), tenant, env_id, status="COMPLETED_SUCCESSFULLY")
    legacy_in_run_ops = add_run(ro, demo.new_cuid(), tenant, env_id, status="DEQUEUED")
    short_friendly = "run_" + "".join(secrets.choice(NANOID_ALPHABET) for _ in range(21))
    old_run = add_run(
        cp, demo.new_cuid(), tenant, env_id, friendly_id=short_friendly, status="CANCELED"
    )
    new_only_in_cp = add_run(cp, demo.new_ksuid(), tenant, env_id)
    both = demo.new_cuid()
    add_run(cp, both, tenant, env_id, status="COMPLETED_WITH_ERRORS")
    add_run(ro, both, tenant, env_id, status="WAITING_TO_RESUME")

    LEGACY, NEW = pb.RESIDENCY_LEGACY, pb.RESIDENCY_NEW
    RUN_OPS, FROM_LEGACY = pb.RUN_SOURCE_RUN_OPS, pb.RUN_SOURCE_LEGACY
    # (requested id, expected run id or None, source, residency, status)
    expected = [
        (new_run, new_run, RUN_OPS, NEW, "EXECUTING"),
        ("run_" + legacy_run, legacy_run, FROM_LEGACY, LEGACY, "COMPLETED_SUCCESSFULLY"),
        (demo.new_ksuid(), None, None, None, None),
        (legacy_in_run_ops, legacy_in_run_ops, RUN_OPS, LEGACY, "DEQUEUED"),
        (short_friendly, old_run, FROM_LEGACY, LEGACY, "CANCELED"),
        ("run_" + new_run, new_run, RUN_OPS, NEW, "EXECUTING"),
        (legacy_run, legacy_run, FROM_LEGACY, LEGACY, "COMPLETED_SUCCESSFULLY"),
        (new_only_in_cp, None, None, None, None),
        ("run_" + legacy_in_run_ops, legacy_in_run_ops, RUN_OPS, LEGACY, "DEQUEUED"),
        (both, both, RUN_OPS, LEGACY, "WAITING_TO_RESUME"),
        (old_run, old_run, FROM_LEGACY, LEGACY, "CANCELED"),
        (demo.new_cuid(), None, None, None, None),
        (new_run, new_run, RUN_OPS, NEW, "EXECUTING"),
    ]
    results = client.batch_read_runs([e[0] for e in expected])
    assert [r.run_id for r in results] == [e[0] for e in expected]
    for result, (requested, run_id, source, residency, status) in zip(results, expected):
        if run_id is None:
            assert result.not_found, requested
            assert not result.HasField("run"), requested
            continue
        assert not result.not_found, requested
        assert result.run.id == run_id, requested
        assert result.run.status == status, requested
        assert result.source == source, (requested, pb.RunSource.Name(result.source))
        assert result.residency == residency, (requested, pb.Residency.Name(result.residency))
        assert result.run.runtime_environment_id == env_id
        assert result.run.project_id == tenant.project_id
        assert result.run.organization_id == tenant.organization_id


def test_batch_read_runs_agrees_with_read_run(
    client: ResolverClient, cp: Conn, ro: Conn, tenant: Any
) -> None:
    """Each batch result carries the same run, source and residency as ReadRun."""
    env_id = tenant.environment(cp, "PRODUCTION")
    ids = [
        add_run(ro, demo.new_ksuid(), tenant, env_id),
        add_run(cp, demo.new_cuid(), tenant, env_id),
        add_run(ro, demo.new_cuid(), tenant, env_id),
    ]
    for result in client.batch_read_runs(ids):
        single = client.read_run(result.run_id)
        assert single is not None
        assert (result.run, result.source, result.residency) == (
            single.run,
            single.source,
            single.residency,
        )


def test_batch_read_runs_split_off(
    start_server: Callable[..., Any], cp: Conn, ro: Conn, tenant: Any
) -> None:
    """Split off: every id is read from the control-plane database only."""
    client = start_server(run_ops_split_enabled=False).client
    env_id = tenant.environment(cp, "PRODUCTION")
    in_cp = [
        add_run(cp, demo.new_cuid(), tenant, env_id),
        add_run(cp, demo.new_ksuid(), tenant, env_id),
    ]
    in_run_ops = [
        add_run(ro, demo.new_ksuid(), tenant, env_id),
        add_run(ro, demo.new_cuid(), tenant, env_id),
    ]
    request = [in_cp[0], in_run_ops[0], "run_" + in_cp[1], "run_" + in_run_ops[1]]
    results = client.batch_read_runs(request)
    assert [r.run_id for r in results] == request
    assert [r.not_found for r in results] == [False, True, False, True]
    assert [r.run.id for r in results] == [in_cp[0], "", in_cp[1], ""]
    assert results[0].source == results[2].source == pb.RUN_SOURCE_CONTROL_PLANE
    assert (results[0].residency, results[2].residency) == (pb.RESIDENCY_LEGACY, pb.RESIDENCY_NEW)


def test_batch_read_runs_are_not_cached(
    client: ResolverClient, ro: Conn, cp: Conn, tenant: Any
) -> None:
    """Runs change constantly: a second batch sees a status change at once."""
    env_id = tenant.environment(cp, "PRODUCTION")
    run_id = add_run(ro, demo.new_ksuid(), tenant, env_id, status="PENDING")
    assert client.batch_read_runs([run_id])[0].run.status == "PENDING"
    ro.execute("""UPDATE "TaskRun" SET "status" = 'EXECUTING' WHERE "id" = %s""", (run_id,))
    assert client.batch_read_runs([run_id])[0].run.status == "EXECUTING"


def test_batch_read_runs_empty_and_largest(
    client: ResolverClient, cp: Conn, ro: Conn, tenant: Any
) -> None:
    """No ids → no results; exactly 1000 ids (both shapes) is allowed."""
    assert client.batch_read_runs([]) == []
    env_id = tenant.environment(cp, "PRODUCTION")
    present = add_run(ro, demo.new_ksuid(), tenant, env_id)
    ids = [demo.new_cuid() if i % 2 else demo.new_ksuid() for i in range(999)] + [present]
    results = client.batch_read_runs(ids)
    assert [r.run_id for r in results] == ids
    assert sum(r.not_found for r in results) == 999
    assert results[-1].run.id == present


def test_batch_read_runs_bad_input(client: ResolverClient) -> None:
    with pytest.raises(ResolverError) as caught:
        client.batch_read_runs([demo.new_ksuid() for _ in range(1001)])
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert caught.value.reason == "BATCH_TOO_LARGE"
    with pytest.raises(ResolverError) as caught:
        client.batch_read_runs([demo.new_ksuid(), "run_bad'id"])
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert caught.value.reason == "INVALID_ID"
