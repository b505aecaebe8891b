"""Run-ops shards and the base32hex generation over real clusters
(docs/design.md, "Run residency", "Minting ids", "Shards"): the control
plane and run-ops of the session, plus three shard clusters of this module.

Reads route by the configured generation; a gen-2 id goes to the shard its
id names and nowhere else; an unconfigured shard is FAILED_PRECONDITION;
BatchReadRuns reads each shard once, shards in parallel; minted ids round
trip (time, region, shard) and stay in their tree's shard; a stopped shard
fails its own ids only; the sentinel refuses two shards on one database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.types.json import Jsonb

from controlplane_resolver.cache import Slot
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster
from controlplane_resolver.dev.migrate import migrate
from controlplane_resolver.domain import minting
from controlplane_resolver.errors import Refusal
from controlplane_resolver.storage.topology import decide_split
from controlplane_resolver_client import BareChannelWarning, ResolverClient, ResolverError
from controlplane_resolver_client.v1 import resolver_pb2 as pb

from support.databases import STAT_STATEMENTS, Databases, Tenant, count_queries
from support.polling import wait_until
from support.processes import CLI
from support.servers import Running, split_settings

B32 = {"run_ops_id_generation": "base32hex"}


@pytest.fixture(scope="module")
def shard_clusters() -> Iterator[dict[str, LocalCluster]]:
    clusters: dict[str, LocalCluster] = {}
    try:
        for char in "abc":
            clusters[char] = LocalCluster(f"test-shard-{char}", settings=STAT_STATEMENTS).start()
            dsn = clusters[char].create_database("shard")
            migrate(dsn, "run_ops")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield clusters
    finally:
        for cluster in clusters.values():
            cluster.destroy()


@pytest.fixture
def shard_dsns(shard_clusters: dict[str, LocalCluster]) -> dict[str, str]:
    return {c: cluster.dsn("shard") for c, cluster in shard_clusters.items()}


@pytest.fixture
def sharded(
    start_server: Callable[..., Running], shard_dsns: dict[str, str]
) -> Callable[..., Running]:
    """A base32hex split server over the three shards (overrides: settings)."""

    def start(**overrides: Any) -> Running:
        values: dict[str, Any] = {
            **B32,
            "run_ops_shards": tuple(shard_dsns.items()),
            "run_ops_mint_ksuid_enabled": True,
            "run_ops_region": "us-west-2",
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


def set_flags(cp: psycopg.Connection[Any], org_id: str, flags: Any) -> None:
    cp.execute(
        'UPDATE "Organization" SET "featureFlags" = %s WHERE "id" = %s', (Jsonb(flags), org_id)
    )


def _error(call: Callable[[], Any]) -> ResolverError:
    with pytest.raises(ResolverError) as caught:
        call()
    return caught.value


# ----------------------------------------------------------------- classification


def test_classify_reports_generation_format_shard_time_and_region(
    sharded: Callable[..., Running],
) -> None:
    client = sharded().client
    t = int(time.time() * 1000)
    v2 = client.classify_run_id("run_" + minting.new_run_ops_id_v2("b", now_ms=t))
    assert v2.generation == pb.ID_GENERATION_BASE32HEX
    assert v2.format == pb.ID_FORMAT_BASE32HEX_V2
    assert v2.residency == pb.RESIDENCY_NEW
    assert v2.shard == "b" and not v2.HasField("region")
    assert v2.minted_at.ToMilliseconds() == t
    assert list(v2.read_order) == [pb.RUN_SOURCE_RUN_OPS_SHARD]

    v1 = client.classify_run_id("run_" + minting.new_run_ops_id("eu-central-1", now_ms=t))
    assert v1.format == pb.ID_FORMAT_BASE32HEX_V1 and v1.region == "c"
    assert not v1.HasField("shard") and v1.minted_at.ToMilliseconds() == t
    assert list(v1.read_order) == [pb.RUN_SOURCE_RUN_OPS]

    old = client.classify_run_id("run_" + minting.new_ksuid())
    assert old.format == pb.ID_FORMAT_LEGACY and old.classifiable
    assert list(old.read_order) == [pb.RUN_SOURCE_RUN_OPS, pb.RUN_SOURCE_LEGACY]
    assert not old.HasField("minted_at")

    # A shard this server does not configure: named, with nothing to read.
    z = client.classify_run_id("run_" + minting.new_run_ops_id_v2("z"))
    assert z.shard == "z" and list(z.read_order) == []


def test_the_ksuid_generation_is_the_default_and_unchanged(
    start_server: Callable[..., Running],
) -> None:
    client = start_server().client
    k = client.classify_run_id("run_" + minting.new_ksuid())
    assert k.generation == pb.ID_GENERATION_KSUID and k.format == pb.ID_FORMAT_KSUID
    assert k.residency == pb.RESIDENCY_NEW
    v1 = client.classify_run_id("run_" + minting.new_run_ops_id())
    assert v1.format == pb.ID_FORMAT_UNCLASSIFIABLE and not v1.classifiable


# --------------------------------------------------------------------------- reads


def test_each_generation_reads_where_its_ids_live(
    sharded: Callable[..., Running],
    cp: psycopg.Connection[Any],
    ro: psycopg.Connection[Any],
    tenant: Tenant,
    shard_dsns: dict[str, str],
) -> None:
    env = tenant.environment(cp)
    legacy = _run(cp, tenant, env, minting.new_cuid())
    v1 = _run(ro, tenant, env, minting.new_run_ops_id())
    old_ksuid = _run(ro, tenant, env, minting.new_ksuid())
    in_shard = {}
    for char, dsn in shard_dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            in_shard[char] = _run(conn, tenant, env, minting.new_run_ops_id_v2(char))
    # A gen-2 id whose row sits in run-ops, not in its shard: never read there.
    misplaced = _run(ro, tenant, env, minting.new_run_ops_id_v2("a"))

    client = sharded().client
    read = client.read_run("run_" + legacy)
    assert read is not None and read.source == pb.RUN_SOURCE_LEGACY
    read = client.read_run("run_" + v1)
    assert read is not None and read.source == pb.RUN_SOURCE_RUN_OPS
    assert read.residency == pb.RESIDENCY_NEW
    # The old base62 shape is legacy now, and the legacy route still finds it.
    read = client.read_run("run_" + old_ksuid)
    assert read is not None and read.source == pb.RUN_SOURCE_RUN_OPS
    assert read.residency == pb.RESIDENCY_LEGACY
    for char, body in in_shard.items():
        for run_id in (body, "run_" + body):
            read = client.read_run(run_id)
            assert read is not None, (char, run_id)
            assert read.source == pb.RUN_SOURCE_RUN_OPS_SHARD and read.shard == char
            assert read.run.id == body
    assert client.read_run("run_" + misplaced) is None

    results = client.batch_read_runs(
        ["run_" + x for x in (legacy, v1, old_ksuid, misplaced, *in_shard.values())]
    )
    got = {r.run_id: r for r in results}
    assert got["run_" + misplaced].not_found
    for char, body in in_shard.items():
        r = got["run_" + body]
        assert r.source == pb.RUN_SOURCE_RUN_OPS_SHARD and r.shard == char
    assert got["run_" + legacy].source == pb.RUN_SOURCE_LEGACY
    assert got["run_" + v1].source == pb.RUN_SOURCE_RUN_OPS


def test_an_unconfigured_shard_is_failed_precondition_never_not_found(
    sharded: Callable[..., Running],
) -> None:
    client = sharded(run_ops_shards=()).client
    run_id = "run_" + minting.new_run_ops_id_v2("a")
    for call in (lambda: client.read_run(run_id), lambda: client.batch_read_runs([run_id])):
        exc = _error(call)
        assert exc.code == grpc.StatusCode.FAILED_PRECONDITION
        assert exc.reason == "SHARD_NOT_CONFIGURED" and exc.metadata["shard"] == "a"
        assert "'a'" in exc.message


def test_batch_reads_each_shard_once_and_the_shards_in_parallel(
    sharded: Callable[..., Running],
    cp: psycopg.Connection[Any],
    tenant: Tenant,
    shard_dsns: dict[str, str],
) -> None:
    env = tenant.environment(cp)
    chars = list(shard_dsns)
    ids = []
    conns = {c: psycopg.connect(dsn, autocommit=True) for c, dsn in shard_dsns.items()}
    try:
        for i in range(100):
            c = chars[i % 3]
            ids.append("run_" + _run(conns[c], tenant, env, minting.new_run_ops_id_v2(c)))
        client = sharded().client
        before = {c: count_queries(conns[c], 'FROM "TaskRun"') for c in chars}
        results = client.batch_read_runs(ids)
        assert [r.run_id for r in results] == ids
        assert all(not r.not_found for r in results)
        after = {c: count_queries(conns[c], 'FROM "TaskRun"') for c in chars}
        assert {c: after[c] - before[c] for c in chars} == {c: 1 for c in chars}

        # Parallel: hold every shard's table locked; the batch must be
        # waiting on all three shards at once before any lock is let go.
        lockers = {c: psycopg.connect(dsn) for c, dsn in shard_dsns.items()}
        try:
            for conn in lockers.values():
                conn.execute('LOCK TABLE "TaskRun" IN ACCESS EXCLUSIVE MODE')
            outcome: dict[str, Any] = {}
            worker = threading.Thread(
                target=lambda: outcome.update(r=client.batch_read_runs(ids)), daemon=True
            )
            worker.start()

            def waiting(c: str) -> bool:
                row = (
                    conns[c]
                    .execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE %s",
                        ('%FROM "TaskRun"%',),
                    )
                    .fetchone()
                )
                return bool(row and row[0] >= 1)

            wait_until(lambda: all(waiting(c) for c in chars), what="all shards read at once")
        finally:
            for conn in lockers.values():
                conn.rollback()
                conn.close()
        worker.join(timeout=10)
        assert len(outcome["r"]) == 100
    finally:
        for conn in conns.values():
            conn.close()


# ------------------------------------------------------------------------- minting


def _org(cp: psycopg.Connection[Any], flags: Any) -> str:
    return demo.insert_organization(cp, feature_flags=flags)


def test_minted_ids_round_trip_and_trees_stay_in_their_shard(
    sharded: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    client = sharded().client
    org = _org(cp, {"runOpsMintKind": "runOpsId"})
    t0 = int(time.time() * 1000)
    minted = client.mint_id(pb.ID_KIND_RUN, org)
    t1 = int(time.time() * 1000)
    assert minted.mint_kind == pb.MINT_KIND_RUN_OPS_ID
    expected = minting.place_shard(org, ["a", "b", "c"])
    assert minted.shard == expected and minted.friendly_id == "run_" + minted.id
    c = client.classify_run_id(minted.friendly_id)
    assert c.format == pb.ID_FORMAT_BASE32HEX_V2 and c.shard == expected
    assert t0 <= c.minted_at.ToMilliseconds() <= t1
    decision = client.resolve_mint_kind(org)
    assert (decision.shard, decision.shard_reason) == (expected, "hash")

    # Children (and batches) of the parent stay in its shard, whatever the flag says.
    other = _org(cp, {"runOpsMintKind": "cuid"})
    for kind in (pb.ID_KIND_RUN, pb.ID_KIND_BATCH):
        child = client.mint_id(kind, other, parent_id=minted.friendly_id)
        assert child.shard == expected and child.mint_kind == pb.MINT_KIND_RUN_OPS_ID
    assert client.mint_id(pb.ID_KIND_RUN, other).mint_kind == pb.MINT_KIND_CUID

    # Ids sort in mint order (millisecond resolution).
    ids = []
    for _ in range(5):
        ids.append(client.mint_id(pb.ID_KIND_RUN, org).id)
        now = time.time()
        wait_until(lambda: time.time() - now >= 0.002, what="the clock to move 2 ms")
    assert sorted(ids) == ids and all("-" not in i for i in ids)


def test_an_organization_override_pins_its_shard(
    sharded: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    client = sharded().client
    for char in "abc":
        org = _org(cp, {"runOpsMintKind": "runOpsId", "runOpsShard": char})
        minted = client.mint_id(pb.ID_KIND_RUN, org)
        assert minted.shard == char and minted.id[24:] == char + "2"
    stray = _org(cp, {"runOpsMintKind": "runOpsId", "runOpsShard": "q"})
    decision = client.resolve_mint_kind(stray)
    assert decision.shard_reason == "hash" and decision.shard in "abc"


def test_a_flag_change_reaches_the_mint_with_the_records(
    sharded: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    """A root mint decides by a plan derived once from the organization's
    cached flag records: it holds while they are cached, and a change the
    cache drops (Invalidate) is minted by at once — kind, shard override
    and flip grace alike. The grace ends by the clock alone."""
    running = sharded(listen_enabled=False, run_ops_mint_flip_grace_ms=3000)
    client = running.client
    stats = running.app.cache.stats(Slot.MINT_KIND)
    org = _org(cp, {"runOpsMintKind": "runOpsId"})
    hashed = minting.place_shard(org, ["a", "b", "c"])
    other = next(c for c in "abc" if c != hashed)
    assert client.mint_id(pb.ID_KIND_RUN, org).shard == hashed
    loads = stats.loads

    set_flags(cp, org, {"runOpsMintKind": "runOpsId", "runOpsShard": other})
    assert client.mint_id(pb.ID_KIND_RUN, org).shard == hashed  # the cached records
    assert stats.loads == loads
    client.invalidate(organization_id=org)
    minted = client.mint_id(pb.ID_KIND_RUN, org)
    assert minted.shard == other and minted.id[24:] == other + "2"
    assert client.resolve_mint_kind(org).shard_reason == "org_override"

    set_flags(cp, org, {"runOpsMintKind": "cuid"})
    client.invalidate(organization_id=org)
    cuid = client.mint_id(pb.ID_KIND_RUN, org)
    assert cuid.mint_kind == pb.MINT_KIND_CUID and not cuid.HasField("shard")

    # Flipped back to run-ops ids just now: cuids until the grace ends, then
    # run-ops ids in the hashed shard, from the same cached records.
    flipped_at = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    set_flags(
        cp,
        org,
        {
            "runOpsMintKind": "runOpsId",
            "runOpsMintKindPrev": "cuid",
            "runOpsMintKindFlippedAt": flipped_at,
        },
    )
    client.invalidate(organization_id=org)
    during = client.resolve_mint_kind(org)
    loads = stats.loads
    assert (during.kind, during.reason) == (pb.MINT_KIND_CUID, "org_flag_grace")
    assert not during.HasField("shard")
    after = wait_until(
        lambda: (d := client.resolve_mint_kind(org)).reason == "org_flag" and d,
        timeout=10,
        what="the flip grace to end",
    )
    assert (after.kind, after.shard) == (pb.MINT_KIND_RUN_OPS_ID, hashed)
    assert stats.loads == loads  # the clock alone ended it


def test_without_shards_v1_ids_carry_the_region(
    sharded: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    client = sharded(run_ops_shards=()).client
    org = _org(cp, {"runOpsMintKind": "runOpsId"})
    minted = client.mint_id(pb.ID_KIND_RUN, org)
    assert minted.mint_kind == pb.MINT_KIND_RUN_OPS_ID and not minted.HasField("shard")
    assert minted.id.endswith("w1")  # us-west-2
    child = client.mint_id(pb.ID_KIND_RUN, org, parent_id=minted.friendly_id)
    assert child.id.endswith("1") and not child.HasField("shard")


def test_a_gen_2_mint_ignores_the_region(
    sharded: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    """A gen-2 id's positional char is its shard, never a region: MintId's
    region is ignored for a root and for a gen-2 parent's child (the
    platform's shardChar outranks the region), run or batch."""
    client = sharded().client
    org = _org(cp, {"runOpsMintKind": "runOpsId"})
    placed = minting.place_shard(org, ["a", "b", "c"])
    root = client.mint_id(pb.ID_KIND_RUN, org, region="eu-central-1")
    assert (root.shard, root.id[24:]) == (placed, placed + "2")
    for kind in (pb.ID_KIND_RUN, pb.ID_KIND_BATCH):
        for region in ("us-east-1", "mars-north-1"):
            child = client.mint_id(kind, org, parent_id=root.friendly_id, region=region)
            assert (child.shard, child.id[24:]) == (placed, placed + "2")


# ----------------------------------------------------------------------- waitpoints


def test_a_gen_2_waitpoint_is_completed_in_its_runs_shard(
    sharded: Callable[..., Running],
    cp: psycopg.Connection[Any],
    tenant: Tenant,
    shard_dsns: dict[str, str],
) -> None:
    """A gen-2 run's waitpoints carry the run's shard char (the platform's
    mintWaitpointIdFor): SelectStoreForWaitpoint names the shard ReadRun
    finds the run in; a pinned completion goes to the legacy store and names
    none; an unconfigured shard is refused, as its reads are."""
    env = tenant.environment(cp)
    client = sharded().client
    run = pb.UNBLOCK_ROUTE_KIND_RUN
    for char, dsn in shard_dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            body = _run(conn, tenant, env, minting.new_run_ops_id_v2(char))
        read = client.read_run("run_" + body)
        assert read is not None and read.source == pb.RUN_SOURCE_RUN_OPS_SHARD
        # A fresh core stamped with the run's shard char, as the platform mints it.
        waitpoint = "waitpoint_" + minting.new_run_ops_id_v2(body[24])
        answer = client.select_store_for_waitpoint(
            waitpoint, run, tree_owner_residency=pb.RESIDENCY_NEW
        )
        assert (answer.store, answer.residency, answer.shard) == (
            pb.STORE_RUN_OPS,
            pb.RESIDENCY_NEW,
            read.shard,
        )
        assert answer.pin_reason == pb.PIN_REASON_UNSPECIFIED
        pinned = client.select_store_for_waitpoint(waitpoint, run, has_legacy_parent=True)
        assert (pinned.store, pinned.residency, pinned.pin_reason) == (
            pb.STORE_LEGACY,
            pb.RESIDENCY_NEW,
            pb.PIN_REASON_LEGACY_PARENT_DESCENDANT,
        )
        assert not pinned.HasField("shard")

    v1 = client.select_store_for_waitpoint("waitpoint_" + minting.new_run_ops_id(), run)
    assert v1.store == pb.STORE_RUN_OPS and not v1.HasField("shard")
    legacy = client.select_store_for_waitpoint("waitpoint_" + minting.new_cuid(), run)
    assert legacy.store == pb.STORE_LEGACY and not legacy.HasField("shard")

    stray = "waitpoint_" + minting.new_run_ops_id_v2("z")
    exc = _error(lambda: client.select_store_for_waitpoint(stray, run))
    assert exc.code == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.reason == "SHARD_NOT_CONFIGURED" and exc.metadata["shard"] == "z"
    # Pinned to the legacy store, the unconfigured shard does not matter.
    pinned = client.select_store_for_waitpoint(stray, run, cross_tree_idempotency=True)
    assert pinned.store == pb.STORE_LEGACY and not pinned.HasField("shard")


# ---------------------------------------------------------------- failure and safety


def test_a_stopped_shard_fails_its_own_ids_only(
    sharded: Callable[..., Running],
    cp: psycopg.Connection[Any],
    tenant: Tenant,
    shard_clusters: dict[str, LocalCluster],
    shard_dsns: dict[str, str],
) -> None:
    env = tenant.environment(cp)
    ids = {}
    for char, dsn in shard_dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            ids[char] = "run_" + _run(conn, tenant, env, minting.new_run_ops_id_v2(char))
    running = sharded()
    # A channel without the client's retry policy: each call is one attempt.
    with pytest.warns(BareChannelWarning):
        client = ResolverClient(channel=grpc.insecure_channel(running.address), timeout=10)
    assert all(client.read_run(i) is not None for i in ids.values())
    shard_clusters["c"].stop()
    try:
        exc = _error(lambda: client.read_run(ids["c"]))
        assert exc.code == grpc.StatusCode.UNAVAILABLE
        assert exc.metadata.get("database") == "run-ops shard c"
        for char in "ab":
            read = client.read_run(ids[char])
            assert read is not None and read.shard == char
        exc = _error(lambda: client.batch_read_runs(list(ids.values())))
        assert exc.code == grpc.StatusCode.UNAVAILABLE
    finally:
        shard_clusters["c"].start()
    try:
        wait_until(lambda: _readable(client, ids["c"]), timeout=15, what="shard c back")
    finally:
        client.close()


def _readable(client: Any, run_id: str) -> bool:
    try:
        return client.read_run(run_id) is not None
    except ResolverError:
        return False


def test_the_sentinel_refuses_two_shards_on_one_database(
    databases: Databases, shard_dsns: dict[str, str]
) -> None:
    # The same database under two spellings: URL strings are never compared.
    again = shard_dsns["a"] + "?application_name=another-name"
    settings = split_settings(
        databases, **B32, run_ops_shards=(("a", shard_dsns["a"]), ("b", again))
    )
    with pytest.raises(Refusal) as caught:
        decide_split(settings)
    assert caught.value.code == "SENTINEL_SAME_DATABASE"
    assert "run-ops shard a" in str(caught.value) and "run-ops shard b" in str(caught.value)
    # A shard on the run-ops database itself is refused the same way.
    settings = split_settings(databases, **B32, run_ops_shards=(("a", databases.run_ops),))
    with pytest.raises(Refusal, match="run-ops and run-ops shard a"):
        decide_split(settings)
    # Three distinct shards pass.
    ok = decide_split(split_settings(databases, **B32, run_ops_shards=tuple(shard_dsns.items())))
    assert ok.split and sorted(ok.shards) == ["a", "b", "c"]


# ------------------------------------------------------------------------- cleanup


def test_cleanup_covers_every_shard(
    databases: Databases,
    cp: psycopg.Connection[Any],
    tenant: Tenant,
    shard_dsns: dict[str, str],
) -> None:
    from datetime import datetime

    from controlplane_resolver.admin.cleanup import run_cleanup

    archived = tenant.environment(cp, archived_at=datetime(2026, 1, 2, 3, 4, 5))
    live = tenant.environment(cp)
    placed = {}
    for char, dsn in shard_dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            placed[char] = (
                _run(conn, tenant, archived, minting.new_run_ops_id_v2(char)),
                _run(conn, tenant, live, minting.new_run_ops_id_v2(char)),
            )
    settings = split_settings(databases, **B32, run_ops_shards=tuple(shard_dsns.items()))
    report = run_cleanup(settings, environment_id=archived)
    for char, dsn in shard_dsns.items():
        assert report.counts[(f"run-ops shard {char}", "TaskRun")] == 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            left = {
                row[0]
                for row in conn.execute(
                    'SELECT "id" FROM "TaskRun" WHERE "id" = ANY(%s)', (list(placed[char]),)
                )
            }
        assert left == {placed[char][1]}


# --------------------------------------------------------------------------- check


def test_check_warns_of_runs_the_generation_routes_elsewhere(
    databases: Databases,
    cp: psycopg.Connection[Any],
    ro: psycopg.Connection[Any],
    tenant: Tenant,
    shard_dsns: dict[str, str],
) -> None:
    import subprocess

    env_id = tenant.environment(cp)
    _run(ro, tenant, env_id, minting.new_ksuid())
    with psycopg.connect(shard_dsns["b"], autocommit=True) as conn:
        _run(conn, tenant, env_id, minting.new_run_ops_id_v2("a"))  # shard a's id, in b
    env = _check_env(databases, shard_dsns)
    cli = str(CLI)
    done = subprocess.run([cli, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    run_ops = [w for w in warnings if "run-ops database" in w]
    assert len(run_ops) == 1 and "ksuid" in run_ops[0]
    count = int(run_ops[0].split(" holds ")[1].split()[0])
    row = ro.execute(
        'SELECT count(*) FROM "TaskRun" '
        """WHERE length("id") = 27 OR "id" ~ '^[0-9a-v]{24}[a-z0-9]2$'"""
    ).fetchone()
    assert row is not None and count == row[0] >= 1
    assert any("run-ops shard b database" in w for w in warnings)
    # The ksuid generation (no shards) warns of base32hex ids in run-ops instead.
    _run(ro, tenant, env_id, minting.new_run_ops_id())
    env.update(RUN_OPS_ID_GENERATION="ksuid", RUN_OPS_SHARDS="")
    done = subprocess.run([cli, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "base32hex ids" in done.stdout


def test_check_shows_which_shards_are_placed(
    databases: Databases, shard_dsns: dict[str, str]
) -> None:
    import subprocess

    env = _check_env(databases, shard_dsns, RUN_OPS_SHARDS_NOT_PLACED="c")
    cli = str(CLI)
    done = subprocess.run([cli, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shards = {
        line.split(":")[0].strip(): line.rpartition("[")[2]
        for line in done.stdout.splitlines()
        if line.startswith("  run-ops shard ")
    }
    assert shards == {
        "run-ops shard a": "placed]",
        "run-ops shard b": "placed]",
        "run-ops shard c": "not placed (read only)]",
    }
    assert "  run_ops_shards_not_placed = c  [RUN_OPS_SHARDS_NOT_PLACED]" in done.stdout
    # Holding back every shard, or one not configured, is a configuration error.
    for bad, cause in (("a,b,c", "names every shard"), ("d", "does not configure")):
        env.update(RUN_OPS_SHARDS_NOT_PLACED=bad)
        done = subprocess.run([cli, "check"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and cause in done.stderr, (done.returncode, done.stderr)


def test_check_takes_the_platforms_json_shards(
    databases: Databases, shard_dsns: dict[str, str]
) -> None:
    """RUN_OPS_SHARDS in the platform's JSON form: the same shards as the
    char form (sentinel, pools' DSNs), replicaUrl as a read replica, nothing
    printed with a password; an alias of run-ops is shown as one."""
    import json
    import subprocess

    def with_password(dsn: str) -> str:  # trust auth: never asked for
        return dsn.replace("postgresql://postgres@", "postgresql://postgres:hunter2-pw@")

    descriptors = [
        {
            "key": c,
            "region": "us-east-1",
            "url": with_password(dsn),
            "replication": {
                "slotName": f"s_{c}",
                "publicationName": f"p_{c}",
                "originGeneration": 2,
            },
            **({"replicaUrl": with_password(dsn)} if c == "b" else {}),
        }
        for c, dsn in shard_dsns.items()
    ]
    env = _check_env(databases, shard_dsns)
    env.update(RUN_OPS_SHARDS=json.dumps(descriptors))
    cli = str(CLI)
    done = subprocess.run([cli, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shards = [
        line.strip() for line in done.stdout.splitlines() if line.startswith("  run-ops shard ")
    ]
    assert [line.split(":")[0] for line in shards] == [f"run-ops shard {c}" for c in shard_dsns]
    assert "hunter2" not in done.stdout + done.stderr
    assert "  run_ops_shard_read_replica_urls = b=127.0.0.1:" in done.stdout
    assert "[RUN_OPS_SHARDS]" in done.stdout
    # The same shards in the char form print the same shard lines.
    plain = subprocess.run(
        [cli, "check"],
        env=_check_env(databases, shard_dsns),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr
    assert [
        line.strip() for line in plain.stdout.splitlines() if line.startswith("  run-ops shard ")
    ] == shards
    # An alias of the run-ops database is one more shard, without a database
    # of its own (test_shard_alias.py has the rest).
    descriptors.append({"key": "n", "region": "us-east-1", "aliasOf": "new"})
    env.update(RUN_OPS_SHARDS=json.dumps(descriptors))
    done = subprocess.run([cli, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "  run-ops shard n: alias of run-ops (127.0.0.1:" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr


# ----------------------------------------------------------------- observability


def test_metrics_report_each_shard(sharded: Callable[..., Running]) -> None:
    from support.scraping import scrape_server

    running = sharded(metrics_addr="127.0.0.1:0")
    running.client.read_run("run_" + minting.new_run_ops_id_v2("b"))
    samples = scrape_server(running)
    databases = {
        value
        for (_name, labels), _v in samples.items()
        for key, value in labels
        if key == "database"
    }
    assert {"run-ops shard a", "run-ops shard b", "run-ops shard c"} <= databases, databases


def test_adding_a_fourth_shard_moves_only_its_share_of_organizations(
    sharded: Callable[..., Running],
    cp: psycopg.Connection[Any],
    shard_clusters: dict[str, LocalCluster],
    shard_dsns: dict[str, str],
) -> None:
    # Shard d: a database of its own (on shard c's cluster: another database
    # of one cluster passes the non-strict sentinel).
    d = shard_clusters["c"].create_database("shard_d")
    migrate(d, "run_ops")
    orgs = [_org(cp, {"runOpsMintKind": "runOpsId"}) for _ in range(200)]
    three = sharded().client
    four = sharded(run_ops_shards=(*shard_dsns.items(), ("d", d))).client
    before = {org: three.resolve_mint_kind(org).shard for org in orgs}
    after = {org: four.resolve_mint_kind(org).shard for org in orgs}
    assert set(before.values()) == {"a", "b", "c"}
    moved = [org for org in orgs if before[org] != after[org]]
    assert all(after[org] == "d" for org in moved), "an organization moved between old shards"
    assert 25 <= len(moved) <= 75, len(moved)  # its fair share: 1/4 of 200
    # Stable: asking again answers the same.
    assert {org: four.resolve_mint_kind(org).shard for org in orgs[:20]} == {
        org: after[org] for org in orgs[:20]
    }


# ------------------------------------------------------- read but not placed


def test_a_not_placed_shard_is_read_but_gets_no_new_roots(
    sharded: Callable[..., Running],
    cp: psycopg.Connection[Any],
    tenant: Tenant,
    shard_dsns: dict[str, str],
) -> None:
    """RUN_OPS_SHARDS_NOT_PLACED=c: shard c's runs are read (ReadRun,
    BatchReadRuns, waitpoints) and its trees grow in it, but no root run is
    placed on it, not even by an override; placement over a and b is the
    placement of a server without c."""
    env = tenant.environment(cp)
    with psycopg.connect(shard_dsns["c"], autocommit=True) as conn:
        in_c = "run_" + _run(conn, tenant, env, minting.new_run_ops_id_v2("c"))
    held = sharded(run_ops_shards_not_placed=("c",), metrics_addr="127.0.0.1:0")
    client = held.client

    read = client.read_run(in_c)
    assert read is not None and read.source == pb.RUN_SOURCE_RUN_OPS_SHARD and read.shard == "c"
    (batch,) = client.batch_read_runs([in_c])
    assert batch.source == pb.RUN_SOURCE_RUN_OPS_SHARD and batch.shard == "c"
    waitpoint = "waitpoint_" + minting.new_run_ops_id_v2("c")
    answer = client.select_store_for_waitpoint(
        waitpoint, pb.UNBLOCK_ROUTE_KIND_RUN, tree_owner_residency=pb.RESIDENCY_NEW
    )
    assert (answer.store, answer.shard) == (pb.STORE_RUN_OPS, "c")

    # Root runs: over a and b alone, as a server that does not configure c.
    orgs = [_org(cp, {"runOpsMintKind": "runOpsId"}) for _ in range(90)]
    without_c = sharded(
        run_ops_shards=tuple((c, dsn) for c, dsn in shard_dsns.items() if c != "c")
    ).client
    placed = {org: client.resolve_mint_kind(org) for org in orgs}
    assert {org: (d.shard, d.shard_reason) for org, d in placed.items()} == {
        org: (without_c.resolve_mint_kind(org).shard, "hash") for org in orgs
    }
    assert {d.shard for d in placed.values()} == {"a", "b"}
    assert {client.mint_id(pb.ID_KIND_RUN, org).shard for org in orgs[:20]} <= {"a", "b"}

    # An override naming c is ignored (the hash decides); one naming a or b holds.
    pinned_c = _org(cp, {"runOpsMintKind": "runOpsId", "runOpsShard": "c"})
    decision = client.resolve_mint_kind(pinned_c)
    assert (decision.shard, decision.shard_reason) == (
        minting.place_shard(pinned_c, "ab"),
        "hash",
    )
    assert client.mint_id(pb.ID_KIND_RUN, pinned_c).shard in "ab"
    pinned_b = _org(cp, {"runOpsMintKind": "runOpsId", "runOpsShard": "b"})
    assert client.mint_id(pb.ID_KIND_RUN, pinned_b).shard == "b"

    # A tree never spans shards: children (and batches) of a run in c stay in c.
    for kind in (pb.ID_KIND_RUN, pb.ID_KIND_BATCH):
        child = client.mint_id(kind, orgs[0], parent_id=in_c)
        assert child.shard == "c" and child.id[24:] == "c2"
    decision = client.resolve_mint_kind(orgs[0], parent_id=in_c)
    assert (decision.shard, decision.shard_reason) == ("c", "parent_shard")

    # Its pool is a database like any other in the metrics.
    from support.scraping import scrape_server

    samples = scrape_server(held)
    assert any(
        name == "resolver_pool_connections" and ("database", "run-ops shard c") in labels
        for name, labels in samples
    )


def test_placing_a_held_back_shard_moves_only_its_share_onto_it(
    sharded: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    """The rollout's second step (c leaves RUN_OPS_SHARDS_NOT_PLACED) is,
    for placement, exactly adding c: only about a third of organizations
    move, and only onto c."""
    orgs = [_org(cp, {"runOpsMintKind": "runOpsId"}) for _ in range(200)]
    held = sharded(run_ops_shards_not_placed=("c",)).client
    placed = sharded().client
    before = {org: held.resolve_mint_kind(org).shard for org in orgs}
    after = {org: placed.resolve_mint_kind(org).shard for org in orgs}
    assert set(before.values()) == {"a", "b"}
    moved = [org for org in orgs if before[org] != after[org]]
    assert all(after[org] == "c" for org in moved), "an organization moved between a and b"
    assert 40 <= len(moved) <= 95, len(moved)  # its fair share: 1/3 of 200


def test_a_child_of_an_unconfigured_shard_is_refused(
    sharded: Callable[..., Running], cp: psycopg.Connection[Any]
) -> None:
    client = sharded().client
    org = _org(cp, {"runOpsMintKind": "runOpsId"})
    parent = "run_" + minting.new_run_ops_id_v2("z")
    for call in (
        lambda: client.mint_id(pb.ID_KIND_RUN, org, parent_id=parent),
        lambda: client.resolve_mint_kind(org, parent_id=parent),
    ):
        exc = _error(call)
        assert exc.code == grpc.StatusCode.FAILED_PRECONDITION
        assert exc.metadata["shard"] == "z"


def _check_env(databases: Databases, shard_dsns: dict[str, str], **more: str) -> dict[str, str]:
    """The environment of a `check` over the test databases and shards, in
    the base32hex generation: this process's environment without any of the
    resolver's own settings, then these."""
    import os

    from controlplane_resolver.config import OPTIONS

    ours = {name for opt in OPTIONS for name in opt.names}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(
        CONTROL_PLANE_DATABASE_URL=databases.control_plane,
        RUN_OPS_DATABASE_URL=databases.run_ops,
        RUN_OPS_SPLIT_ENABLED="1",
        REALTIME_BACKEND_NATIVE_ENABLED="1",
        RUN_OPS_ID_GENERATION="base32hex",
        RUN_OPS_SHARDS=",".join(f"{c}={dsn}" for c, dsn in shard_dsns.items()),
        **more,
    )
    return env
