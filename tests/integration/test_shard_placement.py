"""The platform's shard placement (RUN_OPS_SHARD_PLACEMENT=platform) over
real clusters and a real server (docs/design.md, "Shards"): the global
"FeatureFlag" active set runOpsMintShardSet moves root mints from v1 to
gen-2 ids once its change is invalidated (the trigger's flag:<key> NOTIFY,
no restart); the fleet override, an environment's pin over its
organization's; a root run-ops mint without environment_id is
INVALID_ARGUMENT; children keep their parent's shard."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest

from controlplane_resolver.cache import Slot
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster
from controlplane_resolver.dev.migrate import migrate
from controlplane_resolver.domain import minting
from controlplane_resolver.invalidation import triggers
from controlplane_resolver_client import ResolverError
from controlplane_resolver_client.v1 import resolver_pb2 as pb

from support.polling import wait_until
from support.servers import Running

SHARDS = "ab"
SET = minting.MINT_SHARD_SET_FLAG
OVERRIDE = minting.MINT_SHARD_OVERRIDE_FLAG
RUN = pb.ID_KIND_RUN


@pytest.fixture(scope="module")
def placement_shards() -> Iterator[dict[str, str]]:
    clusters: dict[str, LocalCluster] = {}
    try:
        for char in SHARDS:
            clusters[char] = LocalCluster(f"test-placement-{char}").start()
            migrate(clusters[char].create_database("shard"), "run_ops")
        yield {c: cluster.dsn("shard") for c, cluster in clusters.items()}
    finally:
        for cluster in clusters.values():
            cluster.destroy()


def _settings(shards: dict[str, str], **overrides: Any) -> dict[str, Any]:
    return {
        "run_ops_id_generation": "base32hex",
        "run_ops_shards": tuple(shards.items()),
        "run_ops_mint_ksuid_enabled": True,
        "run_ops_region": "us-west-2",
        "run_ops_shard_placement": "platform",
        **overrides,
    }


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


def _error(call: Callable[[], Any]) -> ResolverError:
    with pytest.raises(ResolverError) as caught:
        call()
    return caught.value


def test_the_active_set_moves_roots_from_v1_to_gen_2_by_notify(
    own_clusters: tuple[LocalCluster, LocalCluster],
    start_server: Callable[..., Running],
    placement_shards: dict[str, str],
) -> None:
    """The platform's default state (no active set) mints v1 ids; setting
    the global row, committed, reaches the cached records by the trigger's
    NOTIFY (flag:runOpsMintShardSet), long before the ten-minute TTL; the
    fleet override ("new") does too. A cached answer costs no query."""
    cp_cluster, ro_cluster = own_clusters
    triggers.install(cp_cluster.dsn())
    running = start_server(
        **_settings(
            placement_shards,
            control_plane_database_url=cp_cluster.dsn(),
            run_ops_database_url=ro_cluster.dsn(),
            control_plane_cache_ttl_ms=600_000,
            control_plane_cache_hard_ttl_ms=600_000,
        )
    )
    client = running.client
    stats = running.app.cache.stats(Slot.MINT_KIND)
    env = "cm0placementenv0000000001"
    expected = minting.platform_hash_place(env, list(SHARDS))
    with psycopg.connect(cp_cluster.dsn(), autocommit=True) as cp:
        org = demo.insert_organization(cp, feature_flags={"runOpsMintKind": "runOpsId"})

        v1 = client.mint_id(RUN, org, environment_id=env)
        assert v1.mint_kind == pb.MINT_KIND_RUN_OPS_ID and not v1.HasField("shard")
        assert v1.shard_reason == "no_active_shards" and v1.id.endswith("w1")
        loads = stats.loads
        client.mint_id(RUN, org, environment_id=env)
        assert stats.loads == loads  # answered from the cached records

        demo.set_feature_flag(cp, SET, "b, a")  # the trigger NOTIFYs on commit
        gen2 = wait_until(
            lambda: (m := client.mint_id(RUN, org, environment_id=env)).HasField("shard") and m,
            timeout=5,
            what="the active set to reach the mint",
        )
        assert (gen2.shard, gen2.shard_reason) == (expected, "hash")
        assert gen2.id[24:] == expected + "2"
        assert client.classify_run_id(gen2.friendly_id).shard == expected
        decision = client.resolve_mint_kind(org, environment_id=env)
        assert (decision.shard, decision.shard_reason) == (expected, "hash")
        assert running.app.cache.get_stats().invalidations["flag"] >= 1

        demo.set_feature_flag(cp, OVERRIDE, "new")
        wait_until(
            lambda: (
                client.mint_id(RUN, org, environment_id=env).shard_reason == "fleet_override_v1"
            ),
            timeout=5,
            what="the fleet override to reach the mint",
        )
        demo.delete_feature_flag(cp, OVERRIDE)
        demo.set_feature_flag(cp, SET, "")
        wait_until(
            lambda: client.mint_id(RUN, org, environment_id=env).shard_reason == "no_active_shards",
            timeout=5,
            what="the emptied set to reach the mint",
        )


def test_an_environment_pin_beats_the_organization_pin(
    start_server: Callable[..., Running],
    placement_shards: dict[str, str],
    cp: psycopg.Connection[Any],
    global_rows: Callable[[str, Any], None],
) -> None:
    global_rows(SET, "a,b")
    client = start_server(**_settings(placement_shards)).client
    flags = {
        "runOpsMintKind": "runOpsId",
        "runOpsMintShard": "a",
        "runOpsMintShardEnvPins": json.dumps({"cm0pinnedenv": "b", "cm0v1env": "new"}),
    }
    org = demo.insert_organization(cp, feature_flags=flags)
    pinned = client.mint_id(RUN, org, environment_id="cm0pinnedenv")
    assert (pinned.shard, pinned.shard_reason) == ("b", "environment_pin")
    assert pinned.id[24:] == "b2"
    other = client.mint_id(RUN, org, environment_id="cm0otherenv")
    assert (other.shard, other.shard_reason) == ("a", "organization_pin")
    v1 = client.mint_id(RUN, org, environment_id="cm0v1env")
    assert not v1.HasField("shard") and v1.shard_reason == "environment_pin_v1"
    decision = client.resolve_mint_kind(org, environment_id="cm0pinnedenv")
    assert (decision.shard, decision.shard_reason) == ("b", "environment_pin")
    # A child stays in its parent's shard, with or without an environment.
    child = client.mint_id(RUN, org, parent_id=pinned.friendly_id)
    assert (child.shard, child.shard_reason) == ("b", "parent_shard")


def test_a_root_mint_without_environment_id_is_invalid(
    start_server: Callable[..., Running],
    placement_shards: dict[str, str],
    cp: psycopg.Connection[Any],
) -> None:
    client = start_server(**_settings(placement_shards)).client
    org = demo.insert_organization(cp, feature_flags={"runOpsMintKind": "runOpsId"})
    for call in (lambda: client.mint_id(RUN, org), lambda: client.resolve_mint_kind(org)):
        exc = _error(call)
        assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.reason == "ENVIRONMENT_ID_REQUIRED" and "environment_id" in exc.message
    exc = _error(lambda: client.mint_id(RUN, org, environment_id="not an id!"))
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT and exc.reason == "INVALID_ID"
    # A cuid root needs no environment.
    cuid_org = demo.insert_organization(cp, feature_flags={"runOpsMintKind": "cuid"})
    assert client.mint_id(RUN, cuid_org).mint_kind == pb.MINT_KIND_CUID


def test_the_organization_rule_accepts_and_ignores_environment_id(
    start_server: Callable[..., Running],
    placement_shards: dict[str, str],
    cp: psycopg.Connection[Any],
    global_rows: Callable[[str, Any], None],
) -> None:
    org = demo.insert_organization(cp, feature_flags={"runOpsMintKind": "runOpsId"})
    expected = minting.place_shard(org, list(SHARDS))
    # The platform's rows name the other shard: the organization rule reads none.
    global_rows(SET, next(c for c in SHARDS if c != expected))
    client = start_server(
        **_settings(placement_shards, run_ops_shard_placement="organization")
    ).client
    for env in (None, "cm0someenv", "cm0otherenv"):
        minted = client.mint_id(RUN, org, environment_id=env)
        assert (minted.shard, minted.shard_reason) == (expected, "hash")
