"""Minting (docs/design.md, "Minting ids"): the id generators and the mint-kind
gates as pure functions, then ResolveMintKind, MintId and ClassifyRunId
through real servers — a parent's kind before every gate, gate order, the
flag read as the platform's makeFlag reads it (organization, then the global
"FeatureFlag" row, then the default), the fallback when the control plane is
down, a flag flip observed within the TTL, inheritance across a flip."""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from controlplane_resolver.cache import Slot
from controlplane_resolver.dev import demo
from controlplane_resolver.domain import minting
from controlplane_resolver.domain.minting import (
    MINT_FLAG,
    FlagLookup,
    FlagValues,
    MintKind,
    decide_mint_kind,
)
from controlplane_resolver.domain.residency import Residency, classify
from controlplane_resolver.errors import InvalidArgument
from controlplane_resolver_client import AsyncResolverClient, ResolverError, pb

from support.polling import wait_until

BASE62 = set(string.digits + string.ascii_letters)
BASE36 = set(string.digits + string.ascii_lowercase)
MAX_SECONDS = 2**32 - 1


def poll_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.02) -> Any:
    """The first truthy value of ``condition()`` within ``timeout`` seconds."""
    return wait_until(condition, timeout, interval)


def set_flags(cp: psycopg.Connection[Any], org_id: str, flags: Any) -> None:
    cp.execute(
        'UPDATE "Organization" SET "featureFlags" = %s WHERE "id" = %s',
        (Jsonb(flags) if flags is not None else None, org_id),
    )


# ------------------------------------------------------------------ KSUID


def test_ksuid_matches_segmentio_published_vectors():
    # From segmentio/ksuid's README (`ksuid -f inspect`) and its bounds.
    payload = bytes.fromhex("B5A1CD34B5F99D1154FB6853345C9735")
    assert minting.ksuid_from_parts(107608047, payload) == "0ujtsYcgvSTl8PAuAdqWYSMnLOv"
    assert minting.ksuid_parts("0ujtsYcgvSTl8PAuAdqWYSMnLOv") == (107608047, payload)
    assert minting.ksuid_from_parts(0, bytes(16)) == "0" * 27
    assert minting.ksuid_from_parts(MAX_SECONDS, b"\xff" * 16) == "aWgEPTl1tmebfsQzFP4bxwgy80V"


@given(seconds=st.integers(0, MAX_SECONDS), payload=st.binary(min_size=16, max_size=16))
def test_ksuid_round_trips_and_classifies_as_new(seconds, payload):
    ksuid = minting.ksuid_from_parts(seconds, payload)
    assert len(ksuid) == 27 and set(ksuid) <= BASE62
    assert minting.ksuid_parts(ksuid) == (seconds, payload)
    for id_kind in minting.IdKind:
        c = classify(minting.friendly_id(id_kind, ksuid))
        assert (c.residency, c.body, c.is_friendly) == (Residency.NEW, ksuid, True)
    assert classify(ksuid).residency is Residency.NEW


@given(
    a=st.integers(0, MAX_SECONDS),
    b=st.integers(0, MAX_SECONDS),
    pa=st.binary(min_size=16, max_size=16),
    pb_=st.binary(min_size=16, max_size=16),
)
def test_ksuids_sort_by_time_as_strings(a, b, pa, pb_):
    # Whatever the random payloads, an earlier second sorts first.
    earlier, later = sorted((a, b))
    if earlier == later:
        return
    assert minting.ksuid_from_parts(earlier, pa) < minting.ksuid_from_parts(later, pb_)


def test_new_ksuid_encodes_the_given_second_and_fresh_random_bytes():
    now = 1_800_000_000.9
    ids = {minting.new_ksuid(now=now) for _ in range(200)}
    assert len(ids) == 200  # 16 random bytes each
    assert {minting.ksuid_parts(k)[0] for k in ids} == {1_800_000_000 - minting.KSUID_EPOCH}
    before = int(time.time()) - minting.KSUID_EPOCH
    seconds, _ = minting.ksuid_parts(minting.new_ksuid())
    assert before <= seconds <= int(time.time()) - minting.KSUID_EPOCH


def test_ksuid_rejects_out_of_range_parts():
    with pytest.raises(ValueError):
        minting.ksuid_from_parts(-1, bytes(16))
    with pytest.raises(ValueError):
        minting.ksuid_from_parts(2**32, bytes(16))
    with pytest.raises(ValueError):
        minting.ksuid_from_parts(0, bytes(15))
    with pytest.raises(ValueError):
        minting.ksuid_parts("z" * 27)  # beyond 2^160
    with pytest.raises(ValueError):
        minting.ksuid_parts("0ujtsYcgvSTl8PAuAdqWYSMnLO_")


# ------------------------------------------------------------------- cuid


@given(now_ms=st.integers(0, 36**9), counter=st.integers(0, 36**5))
def test_cuid_is_25_base36_characters_starting_with_c_and_classifies_as_legacy(now_ms, counter):
    cuid = minting.new_cuid(now_ms=now_ms, counter=counter)
    assert len(cuid) == 25 and cuid[0] == "c" and set(cuid) <= BASE36
    assert classify(cuid).residency is Residency.LEGACY
    assert classify("run_" + cuid).residency is Residency.LEGACY


def test_cuids_of_one_process_are_distinct():
    ids = {minting.new_cuid() for _ in range(5000)}
    assert len(ids) == 5000


@given(kind=st.sampled_from(list(MintKind)), id_kind=st.sampled_from(list(minting.IdKind)))
@settings(max_examples=50)
def test_every_minted_id_classifies_back_to_its_kind(kind, id_kind):
    new = minting.new_id(kind)
    expected = Residency.NEW if kind is MintKind.KSUID else Residency.LEGACY
    assert classify(new).residency is expected
    assert classify(minting.friendly_id(id_kind, new)).residency is expected


# ------------------------------------------------------- mint-kind gates


def _never_read() -> Any:
    raise AssertionError("the organization flag must not be read")


KSUID_PARENT = classify("run_" + minting.ksuid_from_parts(1, bytes(16)))
CUID_PARENT = classify("run_" + minting.new_cuid())
SHORT_PARENT = classify("run_" + "a" * 21)


def _flags(organization: str | None, global_value: str | None = None) -> Callable[[], FlagValues]:
    return lambda: FlagValues(organization=organization, global_value=global_value)


@pytest.mark.parametrize(
    "master, split, parent, flags, expected",
    [
        # A parent decides first, whatever the master switch and the split say,
        # and without reading the flag.
        (False, True, KSUID_PARENT, _never_read, (MintKind.KSUID, "parent_residency")),
        (False, False, KSUID_PARENT, _never_read, (MintKind.KSUID, "parent_residency")),
        (True, False, KSUID_PARENT, _never_read, (MintKind.KSUID, "parent_residency")),
        (True, True, KSUID_PARENT, _never_read, (MintKind.KSUID, "parent_residency")),
        (True, True, CUID_PARENT, _never_read, (MintKind.CUID, "parent_residency")),
        (False, False, CUID_PARENT, _never_read, (MintKind.CUID, "parent_residency")),
        # Without a parent: the master switch, then split off.
        (False, True, None, _never_read, (MintKind.CUID, "master_switch_off")),
        (False, False, None, _never_read, (MintKind.CUID, "master_switch_off")),
        (True, False, None, _never_read, (MintKind.CUID, "split_off")),
        # The organization's value when allowed, else the global row's, else cuid.
        (True, True, None, _flags("ksuid"), (MintKind.KSUID, "org_flag")),
        (True, True, None, _flags("cuid", "ksuid"), (MintKind.CUID, "org_flag")),
        (True, True, None, _flags(None, "ksuid"), (MintKind.KSUID, "global_flag")),
        (True, True, None, _flags("KSUID", "ksuid"), (MintKind.KSUID, "global_flag")),
        (True, True, None, _flags("yes please", "cuid"), (MintKind.CUID, "global_flag")),
        (True, True, None, _flags(None), (MintKind.CUID, "default")),
        (True, True, None, _flags("KSUID", "on"), (MintKind.CUID, "default")),
        (True, True, None, lambda: FlagLookup.READ_FAILED, (MintKind.CUID, "flag_read_failed")),
    ],
)
def test_mint_kind_gates_in_order(master, split, parent, flags, expected):
    decision = decide_mint_kind(
        master_switch_enabled=master, split_enabled=split, parent=parent, read_flags=flags
    )
    assert (decision.kind, decision.reason) == expected


@pytest.mark.parametrize("master, split", [(False, False), (True, False), (True, True)])
def test_an_unclassifiable_parent_is_an_error_whatever_the_gates(master, split):
    with pytest.raises(InvalidArgument) as caught:
        decide_mint_kind(
            master_switch_enabled=master,
            split_enabled=split,
            parent=SHORT_PARENT,
            read_flags=_never_read,
        )
    assert caught.value.reason == "UNCLASSIFIABLE_PARENT_ID"
    assert caught.value.metadata["field"] == "parent_id"


# --------------------------------------------------------- through gRPC


def _org(cp: psycopg.Connection[Any], flags: Any = None) -> str:
    return demo.insert_organization(cp, feature_flags=flags)


def _kind(client: Any, org_id: str, parent_id: str | None = None) -> tuple[int, str]:
    answer = client.resolve_mint_kind(org_id, parent_id=parent_id)
    return answer.kind, answer.reason


def test_mint_kind_gate_order_over_grpc(start_server, cp):
    ksuid_org = _org(cp, {"runOpsMintKsuid": "ksuid"})
    cuid_org = _org(cp, {"runOpsMintKsuid": "cuid", "other": True})
    unset_org = _org(cp, {"somethingElse": "ksuid"})
    null_org = _org(cp)
    odd_org = _org(cp, {"runOpsMintKsuid": "yes please"})
    not_a_string_org = _org(cp, {"runOpsMintKsuid": ["ksuid"]})
    ksuid_parent = "run_" + demo.new_ksuid()
    cuid_parent = "run_" + demo.new_cuid()

    off = start_server(run_ops_mint_ksuid_enabled=False).client
    assert _kind(off, ksuid_org) == (pb.MINT_KIND_CUID, "master_switch_off")

    single = start_server(run_ops_mint_ksuid_enabled=True, run_ops_split_enabled=False).client
    assert _kind(single, ksuid_org) == (pb.MINT_KIND_CUID, "split_off")

    on = start_server(run_ops_mint_ksuid_enabled=True).client
    assert _kind(on, ksuid_org) == (pb.MINT_KIND_KSUID, "org_flag")
    assert _kind(on, cuid_org) == (pb.MINT_KIND_CUID, "org_flag")
    assert _kind(on, unset_org) == (pb.MINT_KIND_CUID, "default")
    assert _kind(on, null_org) == (pb.MINT_KIND_CUID, "default")
    # Values that do not parse fall through to the (absent) global row.
    assert _kind(on, odd_org) == (pb.MINT_KIND_CUID, "default")
    assert _kind(on, not_a_string_org) == (pb.MINT_KIND_CUID, "default")
    # An organization that does not exist has no value of its own.
    assert _kind(on, demo.new_cuid()) == (pb.MINT_KIND_CUID, "default")
    # The parent wins over the flag, both ways; its internal id works too.
    for client in (off, single, on):
        assert _kind(client, cuid_org, ksuid_parent) == (pb.MINT_KIND_KSUID, "parent_residency")
        assert _kind(client, ksuid_org, cuid_parent) == (pb.MINT_KIND_CUID, "parent_residency")
        assert _kind(client, cuid_org, ksuid_parent[4:]) == (
            pb.MINT_KIND_KSUID,
            "parent_residency",
        )


def test_a_new_shape_parent_mints_a_new_shape_child_with_the_master_switch_or_split_off(
    start_server, cp
):
    """The platform mints a child from its parent's id before any gate: a
    ksuid parent's child is a ksuid even where no root run could get one."""
    org = _org(cp, {"runOpsMintKsuid": "cuid"})
    parent = "run_" + demo.new_ksuid()
    master_off = start_server(run_ops_mint_ksuid_enabled=False).client
    split_off = start_server(run_ops_mint_ksuid_enabled=True, run_ops_split_enabled=False).client
    for client in (master_off, split_off):
        assert client.mint_id(pb.ID_KIND_RUN, org).mint_kind == pb.MINT_KIND_CUID
        for id_kind, prefix in ((pb.ID_KIND_RUN, "run_"), (pb.ID_KIND_BATCH, "batch_")):
            child = client.mint_id(id_kind, org, parent_id=parent)
            assert child.mint_kind == pb.MINT_KIND_KSUID and len(child.id) == 27
            assert child.friendly_id == prefix + child.id
            assert client.classify_run_id(child.id).residency == pb.RESIDENCY_NEW


def test_an_unclassifiable_parent_is_refused(start_server, cp):
    org = _org(cp, {"runOpsMintKsuid": "ksuid"})
    parent = "run_" + "a" * 21
    for client in (
        start_server(run_ops_mint_ksuid_enabled=True).client,
        start_server(run_ops_mint_ksuid_enabled=False, run_ops_split_enabled=False).client,
    ):
        for call in (
            lambda: client.resolve_mint_kind(org, parent_id=parent),
            lambda: client.mint_id(pb.ID_KIND_RUN, org, parent_id=parent),
        ):
            with pytest.raises(ResolverError) as caught:
                call()
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.reason == "UNCLASSIFIABLE_PARENT_ID"


# ------------------------------------------------------ the global flag row


@pytest.fixture
def global_flag(cp: psycopg.Connection[Any]) -> Iterator[Callable[[Any], None]]:
    """Set the global ``runOpsMintKsuid`` row of the session database (a JSON
    value, or None for SQL NULL); the row is removed after the test, so no
    other test sees it."""
    try:
        yield lambda value: demo.set_feature_flag(cp, MINT_FLAG, value)
    finally:
        demo.delete_feature_flag(cp, MINT_FLAG)


def test_the_global_row_decides_when_the_organization_does_not(start_server, cp, global_flag):
    absent_org = _org(cp)
    unset_org = _org(cp, {"somethingElse": True})
    garbage_org = _org(cp, {"runOpsMintKsuid": "yes please"})
    number_org = _org(cp, {"runOpsMintKsuid": 1})
    cuid_org = _org(cp, {"runOpsMintKsuid": "cuid"})
    global_flag("ksuid")
    client = start_server(run_ops_mint_ksuid_enabled=True).client
    # Organization flag absent (or NULL flags, or no organization) → the global row.
    assert _kind(client, absent_org) == (pb.MINT_KIND_KSUID, "global_flag")
    assert _kind(client, unset_org) == (pb.MINT_KIND_KSUID, "global_flag")
    assert _kind(client, demo.new_cuid()) == (pb.MINT_KIND_KSUID, "global_flag")
    # Organization value garbage → the global row.
    assert _kind(client, garbage_org) == (pb.MINT_KIND_KSUID, "global_flag")
    assert _kind(client, number_org) == (pb.MINT_KIND_KSUID, "global_flag")
    # An allowed organization value wins over the global row.
    assert _kind(client, cuid_org) == (pb.MINT_KIND_CUID, "org_flag")
    minted = client.mint_id(pb.ID_KIND_BATCH, absent_org)
    assert minted.mint_kind == pb.MINT_KIND_KSUID and len(minted.id) == 27
    # The gates still come first.
    off = start_server(run_ops_mint_ksuid_enabled=False).client
    assert _kind(off, absent_org) == (pb.MINT_KIND_CUID, "master_switch_off")


@pytest.mark.parametrize("value", ["on", None, {"kind": "ksuid"}])
def test_a_global_row_that_does_not_parse_is_the_default(start_server, cp, global_flag, value):
    org = _org(cp, {"runOpsMintKsuid": "garbage"})
    global_flag(value)
    client = start_server(run_ops_mint_ksuid_enabled=True).client
    assert _kind(client, org) == (pb.MINT_KIND_CUID, "default")


def test_mint_kind_rejects_malformed_ids(server):
    for org_id, parent_id in (
        ("", None),
        ("bad id!", None),
        ("c" * 25, ""),
        ("c" * 25, "run/x"),
        ("c" * 256, None),
    ):
        with pytest.raises(ResolverError) as caught:
            server.client.resolve_mint_kind(org_id, parent_id=parent_id)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, (org_id, parent_id)
        assert caught.value.reason == "INVALID_ID"


def test_flag_read_failure_falls_back_to_cuid_and_is_not_cached(own_clusters, start_server):
    cp_cluster, ro_cluster = own_clusters
    with psycopg.connect(cp_cluster.dsn(), autocommit=True) as conn:
        org = _org(conn, {"runOpsMintKsuid": "ksuid"})
    running = start_server(
        control_plane_database_url=cp_cluster.dsn(),
        run_ops_database_url=ro_cluster.dsn(),
        run_ops_mint_ksuid_enabled=True,
        listen_enabled=False,
        db_timeout_ms=500,
    )
    client = running.client
    cp_cluster.stop()
    assert _kind(client, org) == (pb.MINT_KIND_CUID, "flag_read_failed")
    minted = client.mint_id(pb.ID_KIND_RUN, org)
    assert minted.mint_kind == pb.MINT_KIND_CUID and len(minted.id) == 25
    # The fallback was not cached: once the database is back, the flag decides.
    cp_cluster.start()
    poll_until(
        lambda: _kind(client, org) == (pb.MINT_KIND_KSUID, "org_flag"), timeout=15, interval=0.1
    )


def test_flag_flip_is_observed_within_the_cache_ttl(start_server, cp):
    ttl_s = 1.0
    running = start_server(
        run_ops_mint_ksuid_enabled=True, control_plane_cache_ttl_ms=1000, listen_enabled=False
    )
    client = running.client
    stats = running.app.cache.stats(Slot.MINT_KIND)
    org = _org(cp)
    filled_at = time.monotonic()
    assert _kind(client, org) == (pb.MINT_KIND_CUID, "default")
    loads = stats.loads

    set_flags(cp, org, {"runOpsMintKsuid": "ksuid"})
    early = _kind(client, org)
    if time.monotonic() - filled_at < ttl_s * 0.9:  # jitter only shortens lifetimes, by ≤ 10 %
        # Still inside the entry's lifetime: the cached answer, no new read.
        assert early == (pb.MINT_KIND_CUID, "default") and stats.loads == loads

    poll_until(lambda: _kind(client, org) == (pb.MINT_KIND_KSUID, "org_flag"), timeout=ttl_s + 2)
    seen_after = time.monotonic() - filled_at
    # The TTL bounds the flip latency (plus one poll and one read).
    assert seen_after <= ttl_s + 0.5, seen_after

    # Invalidating the organization applies a flip at once.
    set_flags(cp, org, {"runOpsMintKsuid": "cuid"})
    client.invalidate(organization_id=org)
    assert _kind(client, org) == (pb.MINT_KIND_CUID, "org_flag")


def test_children_inherit_their_parents_kind_across_a_flip(start_server, cp):
    # TTL 0: every call reads the flag, so each flip shows at once.
    client = start_server(
        run_ops_mint_ksuid_enabled=True, control_plane_cache_ttl_ms=0, listen_enabled=False
    ).client
    org = _org(cp, {"runOpsMintKsuid": "ksuid"})
    new_parent = client.mint_id(pb.ID_KIND_RUN, org)
    assert new_parent.mint_kind == pb.MINT_KIND_KSUID

    set_flags(cp, org, {"runOpsMintKsuid": "cuid"})
    assert client.mint_id(pb.ID_KIND_RUN, org).mint_kind == pb.MINT_KIND_CUID
    child = client.mint_id(pb.ID_KIND_RUN, org, parent_id=new_parent.friendly_id)
    assert child.mint_kind == pb.MINT_KIND_KSUID and len(child.id) == 27
    legacy_parent = client.mint_id(pb.ID_KIND_BATCH, org)
    assert legacy_parent.mint_kind == pb.MINT_KIND_CUID

    set_flags(cp, org, {"runOpsMintKsuid": "ksuid"})
    assert client.mint_id(pb.ID_KIND_RUN, org).mint_kind == pb.MINT_KIND_KSUID
    grandchild = client.mint_id(pb.ID_KIND_RUN, org, parent_id=child.id)
    assert grandchild.mint_kind == pb.MINT_KIND_KSUID
    legacy_child = client.mint_id(pb.ID_KIND_RUN, org, parent_id=legacy_parent.friendly_id)
    assert legacy_child.mint_kind == pb.MINT_KIND_CUID and len(legacy_child.id) == 25


def test_minted_ids_round_trip_through_classification_over_grpc(start_server, cp):
    client = start_server(run_ops_mint_ksuid_enabled=True).client
    orgs = {
        pb.MINT_KIND_KSUID: _org(cp, {"runOpsMintKsuid": "ksuid"}),
        pb.MINT_KIND_CUID: _org(cp, {"runOpsMintKsuid": "cuid"}),
    }
    expected = {
        pb.MINT_KIND_KSUID: (27, pb.RESIDENCY_NEW),
        pb.MINT_KIND_CUID: (25, pb.RESIDENCY_LEGACY),
    }
    seen = set()
    for mint_kind, org in orgs.items():
        for id_kind, prefix in ((pb.ID_KIND_RUN, "run_"), (pb.ID_KIND_BATCH, "batch_")):
            for _ in range(20):
                minted = client.mint_id(id_kind, org)
                length, residency = expected[mint_kind]
                assert minted.mint_kind == mint_kind
                assert minted.friendly_id == prefix + minted.id and len(minted.id) == length
                for form in (minted.id, minted.friendly_id):
                    shape = client.classify_run_id(form)
                    assert shape.classifiable and shape.residency == residency
                seen.add(minted.id)
    assert len(seen) == 2 * 2 * 20


def test_mint_id_rejects_an_unknown_id_kind(server, cp):
    org = _org(cp)
    for kind in (pb.ID_KIND_UNSPECIFIED, 7):
        with pytest.raises(ResolverError) as caught:
            server.client.mint_id(kind, org)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, kind
        assert caught.value.reason == "INVALID_ENUM"


# --------------------------------------------------- the region of a v1 id

B32_REGION = {
    "run_ops_id_generation": "base32hex",
    "run_ops_mint_ksuid_enabled": True,
    "run_ops_region": "us-west-2",
}


def test_mint_id_stamps_the_region_the_trigger_asks_for(start_server, cp, caplog):
    """MintId's region (a name) picks a run's v1 region char through the
    platform's REGION_CODES; unset, RUN_OPS_REGION (the deployment's default);
    an unknown name 0, logged once; a v1 parent's child takes the caller's
    region (the platform's resolveRunMintTarget); ClassifyRunId reads it back."""
    running = start_server(**B32_REGION)
    client = running.client
    org = _org(cp, {"runOpsMintKind": "runOpsId"})

    def minted(region: str | None = None, **kw: Any) -> Any:
        answer = client.mint_id(pb.ID_KIND_RUN, org, region=region, **kw)
        assert answer.mint_kind == pb.MINT_KIND_RUN_OPS_ID and not answer.HasField("shard")
        assert len(answer.id) == 26 and answer.id[25] == "1"
        return answer

    for region, char in (("us-east-1", "e"), ("us-west-2", "w"), ("eu-central-1", "c")):
        run = minted(region)
        assert run.id[24] == char, region
        assert client.classify_run_id(run.friendly_id).region == char
    assert minted().id[24] == "w"  # RUN_OPS_REGION
    assert minted("").id[24] == "0"
    with caplog.at_level(logging.WARNING, logger="controlplane_resolver.resolver"):
        for _ in range(3):
            assert minted("mars-north-1").id[24] == "0"
    unknown = [r for r in caplog.records if "mars-north-1" in r.getMessage()]
    assert len(unknown) == 1, unknown  # bounded: at most a line a minute
    parent = minted("us-east-1")
    child = minted("eu-central-1", parent_id=parent.friendly_id)
    assert client.resolve_mint_kind(org, parent_id=parent.friendly_id).reason == "parent_residency"
    assert child.id[24] == "c"
    assert minted(parent_id=parent.friendly_id).id[24] == "w"

    async def through_asyncio() -> str:
        async with AsyncResolverClient(running.address) as aio:
            answer = await aio.mint_id(pb.ID_KIND_RUN, org, region="eu-central-1")
            return str(answer.id)

    assert asyncio.run(through_asyncio())[24:] == "c1"


def test_a_minted_batch_id_carries_no_region(start_server, cp):
    """The platform's mintBatchFriendlyId resolves a batch's target without a
    region, root or child: its v1 id stamps 0 whatever MintId's region or
    RUN_OPS_REGION say."""
    client = start_server(**B32_REGION).client
    org = _org(cp, {"runOpsMintKind": "runOpsId"})
    parent = client.mint_id(pb.ID_KIND_RUN, org, region="us-east-1")
    for region in (None, "us-east-1", "mars-north-1"):
        for parent_id in (None, parent.friendly_id):
            batch = client.mint_id(pb.ID_KIND_BATCH, org, parent_id=parent_id, region=region)
            assert batch.mint_kind == pb.MINT_KIND_RUN_OPS_ID
            assert batch.friendly_id == "batch_" + batch.id and batch.id[24:] == "01"


@pytest.mark.parametrize(
    ("region", "says"),
    [("x" * 65, "65 characters"), ("us east 1", "printable ASCII"), ("eu\n", "printable ASCII")],
)
def test_mint_id_refuses_a_malformed_region(start_server, cp, region, says):
    """Garbage is INVALID_ARGUMENT (INVALID_REGION) in every generation: a
    ksuid server validates the region it ignores."""
    org = _org(cp, {"runOpsMintKind": "runOpsId", "runOpsMintKsuid": "ksuid"})
    for settings_ in (B32_REGION, {"run_ops_mint_ksuid_enabled": True}):
        client = start_server(**settings_).client
        with pytest.raises(ResolverError) as caught:
            client.mint_id(pb.ID_KIND_RUN, org, region=region)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == "INVALID_REGION"
        assert caught.value.metadata == {"field": "region"}
        assert says in caught.value.details()
    ksuid = client.mint_id(pb.ID_KIND_RUN, org, region="us-east-1")
    assert ksuid.mint_kind == pb.MINT_KIND_KSUID and len(ksuid.id) == 27


# ------------------------------------------------------- ClassifyRunId


CLASSIFY_CASES = [
    # (id, body length, classifiable, residency ReadRun routes by)
    ("run_" + "c" + "a" * 24, 25, True, pb.RESIDENCY_LEGACY),
    ("c" + "a" * 24, 25, True, pb.RESIDENCY_LEGACY),
    ("run_" + "A" * 27, 27, True, pb.RESIDENCY_NEW),
    ("batch_" + "A" * 27, 27, True, pb.RESIDENCY_NEW),
    ("run_" + "a" * 21, 21, False, pb.RESIDENCY_LEGACY),
    ("run_", 0, False, pb.RESIDENCY_LEGACY),
    ("run_" + "a" * 40, 40, False, pb.RESIDENCY_LEGACY),
]


def test_classify_run_id_over_grpc(start_server):
    split_on = start_server().client
    split_off = start_server(run_ops_split_enabled=False).client
    for raw_id, body_length, classifiable, residency in CLASSIFY_CASES:
        shape = split_on.classify_run_id(raw_id)
        assert shape.body == (raw_id.partition("_")[2] if "_" in raw_id else raw_id), raw_id
        assert len(shape.body) == shape.body_length == body_length, raw_id
        assert shape.classifiable is classifiable and shape.residency == residency, raw_id
        assert f"{body_length} characters" in shape.reason, shape.reason
        expected_order = (
            [pb.RUN_SOURCE_RUN_OPS]
            if residency == pb.RESIDENCY_NEW
            else [pb.RUN_SOURCE_RUN_OPS, pb.RUN_SOURCE_LEGACY]
        )
        assert list(shape.read_order) == expected_order, raw_id
        single = split_off.classify_run_id(raw_id)
        assert list(single.read_order) == [pb.RUN_SOURCE_CONTROL_PLANE], raw_id
        assert (single.body_length, single.classifiable) == (body_length, classifiable), raw_id


def test_a_flag_read_the_bulkhead_refused_is_retried_never_minted_as_cuid(start_server, cp):
    import threading

    from controlplane_resolver_client.v1 import resolver_pb2_grpc

    running = start_server(
        run_ops_mint_ksuid_enabled=True,
        db_max_waiting=1,
        db_timeout_ms=10_000,
        listen_enabled=False,
    )
    first, second = _org(cp, {"runOpsMintKsuid": "ksuid"}), _org(cp, {"runOpsMintKsuid": "ksuid"})
    answers: list[Any] = []
    with psycopg.connect(cp.info.dsn) as locker:
        locker.execute('LOCK TABLE "Organization" IN ACCESS EXCLUSIVE MODE')
        # The first read waits on the lock and holds the database's one place.
        reader = threading.Thread(target=lambda: answers.append(_kind(running.client, first)))
        reader.start()
        wait_until(
            lambda: (
                cp.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%%Organization%%'"
                ).fetchone()[0]
                >= 1
            ),
            what="the first flag read waiting on the lock",
        )
        # One attempt, no retries: the refused read is UNAVAILABLE, not a cuid.
        with grpc.insecure_channel(running.address) as channel:
            stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.MintId(
                    pb.MintIdRequest(kind=pb.ID_KIND_RUN, organization_id=second), timeout=5
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "already waiting" in refused.value.details()
        locker.commit()
    reader.join(15)
    assert answers == [(pb.MINT_KIND_KSUID, "org_flag")]
    assert running.client.mint_id(pb.ID_KIND_RUN, second).mint_kind == pb.MINT_KIND_KSUID
