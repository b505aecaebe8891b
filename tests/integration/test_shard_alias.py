"""A shard that is an alias of the run-ops database (RUN_OPS_SHARDS
``"aliasOf": "new"``, or ``<char>=@run-ops``) over real clusters and a real
server (docs/design.md, "Shards"): shard ``a`` has a database of its own,
shard ``b`` is an alias.

Gen-2 ids of ``b`` are read from the run-ops database, through run-ops'
own pool; BatchReadRuns reads run-ops once for v1, legacy and ``b`` ids;
the sentinel lets the alias be but still refuses a ``url`` shard on
run-ops; roots are placed on ``b`` under both placement rules, and its
waitpoints and children stay in ``b``; ``check`` shows the alias and does
not count ``b``'s runs in run-ops as misplaced; cleanup cleans run-ops once.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from controlplane_resolver.admin.cleanup import run_cleanup
from controlplane_resolver.config import OPTIONS
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster
from controlplane_resolver.dev.migrate import migrate
from controlplane_resolver.domain import minting
from controlplane_resolver.errors import Refusal
from controlplane_resolver.storage.topology import decide_split
from controlplane_resolver_client.v1 import resolver_pb2 as pb

from support.databases import STAT_STATEMENTS, Databases, Tenant, count_queries
from support.processes import CLI
from support.scraping import scrape_server
from support.servers import Running, split_settings

B32 = {"run_ops_id_generation": "base32hex"}
RUN = pb.ID_KIND_RUN


@pytest.fixture(scope="module")
def shard_a() -> Iterator[str]:
    """Shard ``a``'s database, on a cluster of its own."""
    cluster = LocalCluster("test-alias-shard-a", settings=STAT_STATEMENTS).start()
    try:
        dsn = cluster.create_database("shard")
        migrate(dsn, "run_ops")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield dsn
    finally:
        cluster.destroy()


@pytest.fixture
def aliased(start_server: Callable[..., Running], shard_a: str) -> Callable[..., Running]:
    """A base32hex split server, shard ``a`` on its database and shard ``b``
    an alias of run-ops (overrides: settings)."""

    def start(**overrides: Any) -> Running:
        values: dict[str, Any] = {
            **B32,
            "run_ops_shards": (("a", shard_a),),
            "run_ops_shard_aliases": ("b",),
            "run_ops_mint_ksuid_enabled": True,
        }
        values.update(overrides)
        return start_server(**values)

    return start


def _run(conn: psycopg.Connection[Any], tenant: Tenant, env: str, body: str) -> str:
    demo.insert_run(
        conn,
        id=body,
        environment_id=env,
        project_id=tenant.project_id,
        organization_id=tenant.organization_id,
    )
    return body


# --------------------------------------------------------------------------- reads


def test_an_alias_shards_runs_are_read_from_run_ops_through_its_pool(
    aliased: Callable[..., Running],
    cp: psycopg.Connection[Any],
    ro: psycopg.Connection[Any],
    tenant: Tenant,
    shard_a: str,
) -> None:
    env = tenant.environment(cp)
    in_b = _run(ro, tenant, env, minting.new_run_ops_id_v2("b"))
    with psycopg.connect(shard_a, autocommit=True) as conn:
        in_a = _run(conn, tenant, env, minting.new_run_ops_id_v2("a"))
        # A b id whose row sits in shard a: b is read from run-ops alone.
        stray_b = _run(conn, tenant, env, minting.new_run_ops_id_v2("b"))
    running = aliased(metrics_addr="127.0.0.1:0")
    client = running.client

    for run_id in (in_b, "run_" + in_b):
        read = client.read_run(run_id)
        assert read is not None and read.run.id == in_b
        assert read.source == pb.RUN_SOURCE_RUN_OPS_SHARD and read.shard == "b"
    assert client.read_run("run_" + stray_b) is None
    assert list(client.classify_run_id("run_" + in_b).read_order) == [pb.RUN_SOURCE_RUN_OPS_SHARD]
    read = client.read_run("run_" + in_a)
    assert read is not None and read.shard == "a"

    # One pool for run-ops and its alias: no second pool, no pool metrics of b.
    topology = running.app.topology
    assert topology.shards["b"] is topology.run_ops
    assert [db.role.value for db in topology.databases].count("run-ops") == 1
    assert "run-ops shard b" not in {db.role.value for db in topology.databases}
    labels = {
        v for (_n, ls), _v in scrape_server(running).items() for k, v in ls if k == "database"
    }
    assert "run-ops shard a" in labels and "run-ops" in labels
    assert "run-ops shard b" not in labels


def test_batch_reads_run_ops_once_for_v1_legacy_and_alias_ids(
    aliased: Callable[..., Running],
    cp: psycopg.Connection[Any],
    ro: psycopg.Connection[Any],
    tenant: Tenant,
    shard_a: str,
) -> None:
    env = tenant.environment(cp)
    v1 = _run(ro, tenant, env, minting.new_run_ops_id())
    legacy = _run(cp, tenant, env, minting.new_cuid())
    in_b = [_run(ro, tenant, env, minting.new_run_ops_id_v2("b")) for _ in range(3)]
    with psycopg.connect(shard_a, autocommit=True) as a:
        in_a = _run(a, tenant, env, minting.new_run_ops_id_v2("a"))
        client = aliased().client
        # v1 first: the run-ops query's first id is not b's, and each id
        # keeps its own source.
        ids = ["run_" + x for x in (v1, *in_b, legacy, in_a)]
        before = count_queries(ro, 'FROM "TaskRun"'), count_queries(a, 'FROM "TaskRun"')
        results = client.batch_read_runs(ids)
        after = count_queries(ro, 'FROM "TaskRun"'), count_queries(a, 'FROM "TaskRun"')
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert [r.run_id for r in results] == ids and not any(r.not_found for r in results)
    got = {r.run_id: r for r in results}
    assert got["run_" + v1].source == pb.RUN_SOURCE_RUN_OPS
    assert not got["run_" + v1].HasField("shard")
    for body in in_b:
        assert (got["run_" + body].source, got["run_" + body].shard) == (
            pb.RUN_SOURCE_RUN_OPS_SHARD,
            "b",
        )
    assert got["run_" + legacy].source == pb.RUN_SOURCE_LEGACY
    assert (got["run_" + in_a].source, got["run_" + in_a].shard) == (
        pb.RUN_SOURCE_RUN_OPS_SHARD,
        "a",
    )


def test_an_alias_shards_waitpoints_and_trees_are_its_own(
    aliased: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    """A gen-2 waitpoint of b names b (its completion goes to b's database,
    run-ops), and a child of a b run is minted in b: an alias is a shard."""
    client = aliased().client
    waitpoint = "waitpoint_" + minting.new_run_ops_id_v2("b")
    answer = client.select_store_for_waitpoint(
        waitpoint, pb.UNBLOCK_ROUTE_KIND_RUN, tree_owner_residency=pb.RESIDENCY_NEW
    )
    assert (answer.store, answer.shard) == (pb.STORE_RUN_OPS, "b")
    org = demo.insert_organization(cp, feature_flags={"runOpsMintKind": "cuid"})
    parent = "run_" + minting.new_run_ops_id_v2("b")
    child = client.mint_id(RUN, org, parent_id=parent)
    assert (child.mint_kind, child.shard, child.shard_reason) == (
        pb.MINT_KIND_RUN_OPS_ID,
        "b",
        "parent_shard",
    )


# ------------------------------------------------------------------------ sentinel


def test_the_sentinel_lets_an_alias_be_but_refuses_a_url_shard_on_run_ops(
    databases: Databases, shard_a: str
) -> None:
    ok = decide_split(
        split_settings(
            databases, **B32, run_ops_shards=(("a", shard_a),), run_ops_shard_aliases=("b",)
        )
    )
    assert ok.split and ok.sentinel is not None and ok.sentinel.allowed
    assert (list(ok.shards), ok.aliases) == (["a"], ("b",))
    assert "run-ops shard b" not in ok.sentinel.reason
    # Aliases alone: the legacy/run-ops pair, as without shards.
    alone = decide_split(split_settings(databases, **B32, run_ops_shard_aliases=("b", "c")))
    assert alone.split and alone.shards == {} and alone.aliases == ("b", "c")
    # A url shard on the run-ops database is still refused, alias or not.
    settings = split_settings(
        databases,
        **B32,
        run_ops_shards=(("a", databases.run_ops + "?application_name=x"),),
        run_ops_shard_aliases=("b",),
    )
    with pytest.raises(Refusal, match="run-ops and run-ops shard a") as caught:
        decide_split(settings)
    assert caught.value.code == "SENTINEL_SAME_DATABASE"


# ------------------------------------------------------------------------- minting


def test_roots_are_placed_on_an_alias_like_on_any_shard(
    aliased: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    client = aliased().client
    flags = {"runOpsMintKind": "runOpsId"}
    # Rendezvous hashing over a and b: an organization that hashes to b.
    org = next(
        o
        for o in (demo.insert_organization(cp, feature_flags=flags) for _ in range(64))
        if minting.place_shard(o, ["a", "b"]) == "b"
    )
    root = client.mint_id(RUN, org)
    assert (root.shard, root.shard_reason, root.id[24:]) == ("b", "hash", "b2")
    child = client.mint_id(RUN, org, parent_id=root.friendly_id)
    assert (child.shard, child.shard_reason) == ("b", "parent_shard")
    pinned = demo.insert_organization(cp, feature_flags={**flags, "runOpsShard": "b"})
    assert client.mint_id(RUN, pinned).shard_reason == "org_override"
    # Held back, b gets no roots; its trees still grow in it.
    held = aliased(run_ops_shards_not_placed=("b",)).client
    assert held.mint_id(RUN, org).shard == "a"
    assert held.mint_id(RUN, pinned).shard == "a"
    assert held.mint_id(RUN, org, parent_id=root.friendly_id).shard == "b"


@pytest.fixture
def global_rows(cp: psycopg.Connection[Any]) -> Iterator[Callable[[str, Any], None]]:
    """Set global "FeatureFlag" rows of the session database; removed after."""
    keys: set[str] = set()

    def set_row(key: str, value: Any) -> None:
        keys.add(key)
        demo.set_feature_flag(cp, key, value)

    try:
        yield set_row
    finally:
        for key in keys:
            demo.delete_feature_flag(cp, key)


def test_the_platforms_placement_places_on_an_alias(
    aliased: Callable[..., Running],
    cp: psycopg.Connection[Any],
    global_rows: Callable[[str, Any], None],
) -> None:
    global_rows(minting.MINT_SHARD_SET_FLAG, "a,b")
    client = aliased(run_ops_shard_placement="platform").client
    org = demo.insert_organization(cp, feature_flags={"runOpsMintKind": "runOpsId"})
    env = next(
        e
        for e in (f"cm0aliasenv{i:014d}" for i in range(64))
        if minting.platform_hash_place(e, ["a", "b"]) == "b"
    )
    minted = client.mint_id(RUN, org, environment_id=env)
    assert (minted.shard, minted.shard_reason, minted.id[24:]) == ("b", "hash", "b2")


# --------------------------------------------------------------------------- check


def _check_env(databases: Databases, **more: str) -> dict[str, str]:
    """The environment of a `check` over the test databases, in the
    base32hex generation: this process's environment without any of the
    resolver's own settings, then these."""
    ours = {name for opt in OPTIONS for name in opt.names}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(
        CONTROL_PLANE_DATABASE_URL=databases.control_plane,
        RUN_OPS_DATABASE_URL=databases.run_ops,
        RUN_OPS_SPLIT_ENABLED="1",
        REALTIME_BACKEND_NATIVE_ENABLED="1",
        RUN_OPS_ID_GENERATION="base32hex",
        **more,
    )
    return env


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(CLI), "check"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def _misplaced_in_run_ops(stdout: str) -> int:
    [line] = [w for w in stdout.splitlines() if w.startswith("WARNING: the run-ops database (")]
    return int(line.split(" holds ")[1].split()[0])


def test_check_shows_the_alias_and_counts_its_runs_in_run_ops_as_at_home(
    databases: Databases,
    cp: psycopg.Connection[Any],
    ro: psycopg.Connection[Any],
    tenant: Tenant,
    shard_a: str,
) -> None:
    env_id = tenant.environment(cp)
    _run(ro, tenant, env_id, minting.new_run_ops_id_v2("a"))  # misplaced: a's id in run-ops
    at_home = 3
    for _ in range(at_home):
        _run(ro, tenant, env_id, minting.new_run_ops_id_v2("b"))
    secret = shard_a.replace("postgresql://postgres@", "postgresql://postgres:hunter2-pw@")
    descriptors = [
        {"key": "a", "region": "us-east-1", "url": secret, "replication": {"slotName": "s"}},
        {"key": "b", "region": "us-east-1", "aliasOf": "new", "replicaUrl": secret},
    ]
    done = _check(_check_env(databases, RUN_OPS_SHARDS=json.dumps(descriptors)))
    lines = [line.strip() for line in done.stdout.splitlines()]
    run_ops = next(line for line in lines if line.startswith("run-ops: "))
    assert f"run-ops shard b: alias of run-ops ({run_ops.split(': ')[1]}) [placed]" in lines
    assert any(line.startswith("run-ops shard a: 127.0.0.1:") for line in lines)
    assert any(line.startswith("run_ops_shards = a=127.0.0.1:") for line in lines)
    assert any(",b=@run-ops  [RUN_OPS_SHARDS]" in line for line in lines)
    assert "hunter2" not in done.stdout + done.stderr
    # b's runs in run-ops are at home: a server that does not alias b
    # counts exactly them more.
    with_alias = _misplaced_in_run_ops(done.stdout)
    plain = _check(_check_env(databases, RUN_OPS_SHARDS=f"a={shard_a}"))
    assert _misplaced_in_run_ops(plain.stdout) - with_alias >= at_home
    assert with_alias >= 1
    row = ro.execute(
        """SELECT count(*) FROM "TaskRun" WHERE "id" ~ '^[0-9a-v]{24}b2$'"""
    ).fetchone()
    assert row is not None and _misplaced_in_run_ops(plain.stdout) - with_alias == row[0]
    # The char form's alias is the same configuration.
    char_form = _check(_check_env(databases, RUN_OPS_SHARDS=f"a={shard_a},b=@run-ops"))
    assert _misplaced_in_run_ops(char_form.stdout) == with_alias
    assert "run-ops shard b: alias of run-ops" in char_form.stdout


# ------------------------------------------------------------------------- cleanup


def test_cleanup_cleans_run_ops_once_with_an_alias(
    databases: Databases,
    cp: psycopg.Connection[Any],
    ro: psycopg.Connection[Any],
    tenant: Tenant,
    shard_a: str,
) -> None:
    archived = tenant.environment(cp, archived_at=datetime(2026, 1, 2, 3, 4, 5))
    in_ro = [
        _run(ro, tenant, archived, minting.new_run_ops_id()),
        _run(ro, tenant, archived, minting.new_run_ops_id_v2("b")),
    ]
    with psycopg.connect(shard_a, autocommit=True) as conn:
        _run(conn, tenant, archived, minting.new_run_ops_id_v2("a"))
    settings = split_settings(
        databases, **B32, run_ops_shards=(("a", shard_a),), run_ops_shard_aliases=("b",)
    )
    report = run_cleanup(settings, environment_id=archived)
    names = [location.name for location in report.locations]
    assert [n for n in names if "run-ops shard b" in n or n.startswith("run-ops ")] == [
        "run-ops = run-ops shard b",
        "run-ops shard a",
    ]
    assert len(names) == len(set(names)) == 3  # and legacy
    assert report.counts[("run-ops = run-ops shard b", "TaskRun")] == len(in_ro)
    assert report.counts[("run-ops shard a", "TaskRun")] == 1
    left = ro.execute('SELECT count(*) FROM "TaskRun" WHERE "id" = ANY(%s)', (in_ro,)).fetchone()
    assert left is not None and left[0] == 0
