"""Both id generations (docs/design.md, "Run residency", "Minting ids",
"Shards"): the platform's classification cases for base32hex v1 and gen-2
ids, minting round trips, mint-order sorting, the runOpsMintKind flag with
its flip grace, rendezvous placement, and the shard settings.

Pure: no database, no server.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane_resolver.config import Settings
from controlplane_resolver.domain import minting
from controlplane_resolver.domain.minting import (
    FlagLookup,
    MintFlags,
    MintKind,
    choose_shard,
    decide_run_ops_mint_kind,
    new_run_ops_id,
    new_run_ops_id_v2,
    place_shard,
    run_ops_core,
)
from controlplane_resolver.domain.residency import (
    Generation,
    IdFormat,
    Residency,
    classify,
)
from controlplane_resolver.errors import ConfigError

B32 = Generation.BASE32HEX
SHARD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
T = 1_783_168_496_789  # 2026-07-04T12:34:56.789Z


def b32(run_id: str):  # type: ignore[no-untyped-def]
    return classify(run_id, B32)


# ------------------------------------------------- the platform's classification cases


def test_version_char_not_length_decides() -> None:
    assert b32("a" * 24 + "e1").residency is Residency.NEW
    assert b32("a" * 24 + "e1").format is IdFormat.BASE32HEX_V1
    gen2 = b32("a" * 24 + "e2")
    assert gen2.residency is Residency.NEW and gen2.shard == "e"
    assert gen2.format is IdFormat.BASE32HEX_V2
    assert b32("a" * 24 + "e9").residency is Residency.LEGACY  # unallocated version char
    assert b32("a" * 26).residency is Residency.LEGACY  # 26 chars, no version marker


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "x" * 24 + "01",  # 'x' outside base32hex
        "x" * 24 + "02",
        "A" * 25 + "1",  # uppercase
        "A" * 25 + "2",
        "a" * 24 + "-1",  # hyphen positional char
        "a" * 24 + "-2",
        "a" * 27,  # the pre-cutover 27-character shape
        "run_" + "b" * 27,
        "x" * 40,
        "w" * 24 + "e2",
        "z" * 24 + "e2",
        "a" * 23 + "-" + "e2",
        "a" * 24 + "e",  # 25
        "a" * 24 + "ee2",  # 27
        "123456789abcdefghijkm",  # nanoid
        "cm4z1x2y3000008l0abcdefgh",  # cuid
    ],
)
def test_everything_else_is_legacy_and_classifiable(bad: str) -> None:
    c = b32(bad)
    assert c.residency is Residency.LEGACY
    assert c.classifiable and c.route is Residency.LEGACY
    assert c.shard is None and c.timestamp_ms is None
    assert c.format is IdFormat.LEGACY


def test_ksuid_generation_is_unchanged() -> None:
    assert classify("run_" + "2" * 27).residency is Residency.NEW
    assert classify("run_" + "2" * 27).format is IdFormat.KSUID
    assert classify("run_" + "c" * 25).residency is Residency.LEGACY
    # A base32hex v1 id is 26 characters: unclassifiable under ksuid.
    assert classify("run_" + new_run_ops_id()).residency is None
    # ...and a ksuid is legacy under base32hex (it must be drained first).
    assert b32("run_" + minting.new_ksuid()).residency is Residency.LEGACY


@pytest.mark.parametrize("prefix", ["", "run_", "waitpoint_", "batch_"])
def test_every_shard_char_round_trips_friendly_and_internal(prefix: str) -> None:
    for c in SHARD_CHARS:
        got = b32(prefix + new_run_ops_id_v2(c))
        assert got.shard == c and got.residency is Residency.NEW
        assert got.is_friendly is bool(prefix)


@given(st.text(max_size=40))
def test_classification_is_total(value: str) -> None:
    c = b32(value)
    assert c.classifiable


def test_three_way_disjointness() -> None:
    for i in range(3000):
        assert b32(minting.new_cuid()).residency is Residency.LEGACY
        v1 = b32(new_run_ops_id())
        assert v1.residency is Residency.NEW and v1.shard is None and v1.region == "0"
        char = SHARD_CHARS[i % len(SHARD_CHARS)]
        v2 = b32(new_run_ops_id_v2(char))
        assert v2.shard == char and v2.region is None


# --------------------------------------------------------------------------- minting


def test_base32hex_core_matches_a_big_integer_reference() -> None:
    # Reference: the 15 bytes as one integer, 24 digits of 5 bits, MSB first.
    for ms, tail in [(0, bytes(9)), (2**48 - 1, b"\xff" * 9), (T, bytes(range(9)))]:
        n = int.from_bytes(ms.to_bytes(6, "big") + tail, "big")
        ref = "".join(
            "0123456789abcdefghijklmnopqrstuv"[(n >> (5 * i)) & 31] for i in range(23, -1, -1)
        )
        assert run_ops_core(now_ms=ms, random=tail) == ref
    assert run_ops_core(now_ms=0, random=bytes(9)) == "0" * 24
    assert run_ops_core(now_ms=2**48 - 1, random=b"\xff" * 9) == "v" * 24


@given(st.integers(min_value=0, max_value=2**48 - 1), st.binary(min_size=9, max_size=9))
def test_base32hex_core_matches_the_standard_librarys_encoder(ms: int, tail: bytes) -> None:
    expected = base64.b32hexencode(ms.to_bytes(6, "big") + tail).decode("ascii").lower()
    assert run_ops_core(now_ms=ms, random=tail) == expected


def test_random_blocks_hand_out_each_byte_once_across_refills_and_threads() -> None:
    pool = minting.RandomBlocks(block=90)  # a refill every 10 takes
    taken: list[bytes] = []
    lock = threading.Lock()

    def take_many() -> None:
        mine = [pool.take(9) for _ in range(500)]
        with lock:
            taken.extend(mine)

    threads = [threading.Thread(target=take_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 2000 and all(len(b) == 9 for b in taken)
    assert len(set(taken)) == 2000  # 72 random bits each: a repeat is a reuse


def test_a_forked_child_never_hands_out_its_parents_bytes() -> None:
    pool = minting.RandomBlocks(block=4096)
    pool.take(9)  # the parent holds a block it has barely used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, to the parent
        os.write(write, pool.take(9))
        os._exit(0)
    os.close(write)
    child = os.read(read, 9)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 9 and child != pool.take(9)


def test_v1_layout_region_and_timestamp_round_trip() -> None:
    for region, char in [
        ("us-east-1", "e"),
        ("us-west-2", "w"),
        ("eu-central-1", "c"),
        ("mars-north-1", "0"),
        (None, "0"),
    ]:
        body = new_run_ops_id(region, now_ms=T)
        assert re.fullmatch(r"[0-9a-v]{24}[a-z0-9]1", body)
        c = b32("run_" + body)
        assert (c.format, c.region, c.timestamp_ms) == (IdFormat.BASE32HEX_V1, char, T)


def test_gen2_layout_and_round_trip() -> None:
    body = new_run_ops_id_v2("e", now_ms=T)
    assert re.fullmatch(r"[0-9a-v]{24}e2", body)
    c = b32(body)
    assert (c.format, c.shard, c.timestamp_ms) == (IdFormat.BASE32HEX_V2, "e", T)


@pytest.mark.parametrize("bad", ["", "-", "_", "A", "ab", " ", "/"])
def test_gen2_refuses_an_unroutable_shard_char(bad: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        new_run_ops_id_v2(bad)


def test_ids_are_lowercase_dns_safe_and_never_contain_a_hyphen() -> None:
    for i in range(3000):
        for body in (new_run_ops_id("us-west-2"), new_run_ops_id_v2(SHARD_CHARS[i % 36])):
            assert re.fullmatch(r"[a-z0-9]{26}", body)
            assert re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", "runner-" + body)


def test_ids_sort_in_mint_order_at_millisecond_resolution() -> None:
    a = new_run_ops_id(now_ms=T)
    b = new_run_ops_id(now_ms=T + 1000)
    c = new_run_ops_id(now_ms=T + 3)
    assert sorted([b, c, a]) == [a, c, b]
    ids = [new_run_ops_id_v2("a", now_ms=T + i) for i in range(0, 500, 7)]
    assert sorted(ids) == ids


def test_unique_within_one_millisecond() -> None:
    assert len({new_run_ops_id(now_ms=T) for _ in range(5000)}) == 5000


# ------------------------------------------------------------------ runOpsMintKind


def decide(
    org: Mapping[str, object], glob: Mapping[str, object], **kw: object
) -> minting.MintKindDecision:
    args: dict[str, object] = {
        "master_switch_enabled": True,
        "split_enabled": True,
        "parent": None,
        "read_flags": lambda: MintFlags(organization=org, global_flags=glob),
        "now_ms": T,
        "grace_ms": 90_000,
    }
    args.update(kw)
    return decide_run_ops_mint_kind(**args)  # type: ignore[arg-type]


def test_flag_values_and_sources() -> None:
    assert decide({"runOpsMintKind": "runOpsId"}, {}) == minting.MintKindDecision(
        MintKind.RUN_OPS_ID, "org_flag"
    )
    assert decide({"runOpsMintKind": "cuid"}, {"runOpsMintKind": "runOpsId"}).kind is (
        MintKind.CUID
    )
    assert decide({}, {"runOpsMintKind": "runOpsId"}).reason == "global_flag"
    # The ksuid generation's values are not this generation's.
    assert decide({"runOpsMintKind": "ksuid"}, {}).reason == "default"
    assert decide({"runOpsMintKsuid": "ksuid"}, {}).reason == "default"
    assert decide({}, {}, read_flags=lambda: FlagLookup.READ_FAILED).reason == "flag_read_failed"


def test_gates_come_before_the_flag_and_the_parent_before_the_gates() -> None:
    def never() -> MintFlags:
        raise AssertionError("flags read")

    assert decide({}, {}, master_switch_enabled=False, read_flags=never).reason == (
        "master_switch_off"
    )
    assert decide({}, {}, split_enabled=False, read_flags=never).reason == "split_off"
    parent = b32("run_" + new_run_ops_id_v2("k"))
    d = decide({}, {}, master_switch_enabled=False, parent=parent, read_flags=never)
    assert (d.kind, d.shard, d.shard_reason) == (MintKind.RUN_OPS_ID, "k", "parent_shard")
    legacy = b32("run_" + "c" * 25)
    assert decide({}, {}, parent=legacy, read_flags=never).kind is MintKind.CUID
    v1 = decide({}, {}, parent=b32(new_run_ops_id()), read_flags=never)
    assert (v1.kind, v1.shard) == (MintKind.RUN_OPS_ID, None)


def iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def test_flip_grace_keeps_the_previous_kind_then_switches() -> None:
    flipped = {
        "runOpsMintKind": "runOpsId",
        "runOpsMintKindPrev": "cuid",
        "runOpsMintKindFlippedAt": iso(T - 10_000),
    }
    during = decide(flipped, {})
    assert (during.kind, during.reason) == (MintKind.CUID, "org_flag_grace")
    after = decide(flipped, {}, now_ms=T + 80_001)
    assert (after.kind, after.reason) == (MintKind.RUN_OPS_ID, "org_flag")
    # Source-consistent: a global stamp never dates an organization's own value.
    glob = dict(flipped, runOpsMintKind="cuid", runOpsMintKindPrev="runOpsId")
    assert decide({"runOpsMintKind": "runOpsId"}, glob).reason == "org_flag"
    assert decide({}, glob).reason == "global_flag_grace"
    assert decide({}, glob).kind is MintKind.RUN_OPS_ID
    # An unparseable stamp is no stamp.
    assert decide(dict(flipped, runOpsMintKindFlippedAt="soon"), {}).reason == "org_flag"


@pytest.mark.parametrize(
    ("stamp", "epoch_ms"),
    [
        # What the platform's Date.parse returns for each (Node 20, TZ=UTC: its
        # servers run in UTC).
        ("2026-08-21T10:00:00.123Z", 1_787_306_400_123),
        ("2026-08-21T10:00:00+01:00", 1_787_302_800_000),
        ("2026-08-21T10:00:00", 1_787_306_400_000),
        ("2026-08-21", 1_787_270_400_000),
        ("Fri, 21 Aug 2026 10:00:00 GMT", 1_787_306_400_000),
        ("2026", 1_767_225_600_000),
        ("2026-08", 1_785_542_400_000),
        ("2026-08-21t10:00:00z", 1_787_306_400_000),
        ("2026-08-21 10:00", 1_787_306_400_000),
        ("2026-08-21T10:00:00+0200", 1_787_299_200_000),
        ("+002026-08-21T10:00:00Z", 1_787_306_400_000),
        ("2026-08-21T24:00:00Z", 1_787_356_800_000),  # the next midnight
        ("2026-02-30", 1_772_409_600_000),  # runs into March, as in V8
        ("2026-08-21T24:30:00Z", None),
        ("2026-08-21T10Z", None),
        ("2026-08-21T10:00:00,5Z", None),
        ("20260821", None),  # ISO 8601's basic and week forms: not Date.parse's
        ("2026-W34-5", None),
        (" 2026-08-21T10:00:00Z", None),
        ("2026-08-21T10:00:00Z ", None),
        ("soon", None),
        ("", None),
        (1_787_306_400_000, None),  # a number is not a stamp
    ],
)
def test_a_flip_stamp_is_read_as_the_platform_reads_it(stamp: object, epoch_ms: int | None) -> None:
    flags = {"runOpsMintKind": "runOpsId", "runOpsMintKindPrev": "cuid"}
    resolution = minting.read_resolution({**flags, "runOpsMintKindFlippedAt": stamp})
    assert resolution.flipped_at_ms == epoch_ms


def test_a_root_mint_plan_decides_as_the_rule_and_places_only_run_ops_ids() -> None:
    flipped = {
        "runOpsMintKind": "runOpsId",
        "runOpsMintKindPrev": "cuid",
        "runOpsMintKindFlippedAt": iso(T),
        "runOpsShard": "b",
    }
    plan = minting.plan_root_mint(MintFlags(flipped, {}), "org1", ["a", "b", "c"])
    # During the grace: the previous kind, a cuid, which has no shard.
    assert plan.decide(T + 10, 1000) == minting.MintKindDecision(MintKind.CUID, "org_flag_grace")
    assert plan.decide(T + 1000, 1000) == minting.MintKindDecision(
        MintKind.RUN_OPS_ID, "org_flag", "b", "org_override"
    )
    hashed = minting.plan_root_mint(MintFlags({"runOpsMintKind": "runOpsId"}, {}), "org1", "abc")
    assert hashed.decide(T, 0).shard == place_shard("org1", "abc")
    # Without shards (v1 ids), and with no allowed value anywhere.
    assert minting.plan_root_mint(MintFlags(flipped, {})).decide(T + 1000, 1000).shard is None
    assert minting.plan_root_mint(MintFlags({}, {}), "org1", "abc").decide(T, 0) == (
        minting.MintKindDecision(MintKind.CUID, "default")
    )


# ------------------------------------------------------------------------ placement


ORGS = [f"org{i:05d}" for i in range(6000)]


def test_placement_is_stable_and_spreads_evenly() -> None:
    shards = ["a", "b", "c"]
    first = {org: place_shard(org, shards) for org in ORGS}
    assert first == {org: place_shard(org, list(reversed(shards))) for org in ORGS}
    counts = Counter(first.values())
    assert set(counts) == set(shards)
    assert all(abs(n - len(ORGS) / 3) < len(ORGS) * 0.05 for n in counts.values()), counts


def test_adding_a_shard_moves_only_its_fair_share_and_only_onto_it() -> None:
    before = {org: place_shard(org, ["a", "b", "c"]) for org in ORGS}
    after = {org: place_shard(org, ["a", "b", "c", "d"]) for org in ORGS}
    moved = [org for org in ORGS if before[org] != after[org]]
    assert all(after[org] == "d" for org in moved)
    share = len(moved) / len(ORGS)
    assert 0.20 < share < 0.30, share  # expected 1/4
    # hash % n would have moved about 3/4 of them.


def test_removing_a_shard_moves_only_its_organizations() -> None:
    before = {org: place_shard(org, ["a", "b", "c", "d"]) for org in ORGS}
    after = {org: place_shard(org, ["a", "b", "d"]) for org in ORGS}
    assert all(before[o] == after[o] for o in ORGS if before[o] != "c")


def test_override_wins_when_it_names_a_configured_shard() -> None:
    assert choose_shard("org1", ["a", "b"], "b") == ("b", "org_override")
    assert choose_shard("org1", ["a", "b"], "z")[1] == "hash"
    assert choose_shard("org1", ["a", "b"], 7)[1] == "hash"


def test_a_not_placed_shard_is_placed_as_if_it_were_absent() -> None:
    """RUN_OPS_SHARDS_NOT_PLACED: placement over the other shards equals
    placement without the not-placed shard; placing it later moves only its
    fair share, and only onto it (the rollout's second step is "add a shard")."""
    held = {org: choose_shard(org, "abcd", None, {"d"}) for org in ORGS}
    assert held == {org: (place_shard(org, "abc"), "hash") for org in ORGS}
    assert {shard for shard, _ in held.values()} == {"a", "b", "c"}
    placed = {org: choose_shard(org, "abcd", None)[0] for org in ORGS}
    moved = [org for org in ORGS if held[org][0] != placed[org]]
    assert all(placed[org] == "d" for org in moved)
    assert 0.20 < len(moved) / len(ORGS) < 0.30  # expected 1/4
    # Two shards held back: the rest alone, whatever the order of either list.
    assert all(
        choose_shard(org, "dcba", None, ("d", "b"))[0] == place_shard(org, "ac") for org in ORGS
    )


def test_an_override_naming_a_not_placed_shard_is_ignored() -> None:
    assert choose_shard("org1", "abc", "c", {"c"}) == (place_shard("org1", "ab"), "hash")
    assert choose_shard("org1", "abc", "b", {"c"}) == ("b", "org_override")
    plan = minting.plan_root_mint(
        MintFlags({"runOpsMintKind": "runOpsId", "runOpsShard": "c"}, {}), "org1", "abc", {"c"}
    )
    assert plan.decide(T, 0) == minting.MintKindDecision(
        MintKind.RUN_OPS_ID, "org_flag", place_shard("org1", "ab"), "hash"
    )
    with pytest.raises(ValueError):
        choose_shard("org1", "ab", None, {"a", "b"})


# ------------------------------------------------------------------------- settings


def load(**env: str) -> Settings:
    return Settings.load({"CONTROL_PLANE_DATABASE_URL": "postgresql://u@cp/platform", **env})


def test_generation_setting() -> None:
    assert load().run_ops_id_generation == "ksuid"
    assert load(RUN_OPS_ID_GENERATION="base32hex").run_ops_id_generation == "base32hex"
    with pytest.raises(ConfigError, match="RUN_OPS_ID_GENERATION"):
        load(RUN_OPS_ID_GENERATION="uuid")


def test_shard_map_parses_and_redacts() -> None:
    s = load(
        RUN_OPS_ID_GENERATION="base32hex",
        RUN_OPS_SHARDS="a=postgresql://u:sekret@h1:5432/ro,b=postgresql://u:sekret@h2,h3/ro",
        RUN_OPS_SHARD_READ_REPLICA_URLS="b=postgresql://u:sekret@r2/ro",
    )
    assert [c for c, _ in s.run_ops_shards] == ["a", "b"]
    assert s.run_ops_shards[1][1] == "postgresql://u:sekret@h2,h3/ro"
    printed = dict(s.public_items())
    assert "sekret" not in printed["run_ops_shards"] and "h1:5432/ro" in printed["run_ops_shards"]
    assert "sekret" not in printed["run_ops_shard_read_replica_urls"]


def test_not_placed_shards_parse_and_print() -> None:
    s = load(
        RUN_OPS_ID_GENERATION="base32hex",
        RUN_OPS_SHARDS="a=postgresql://h/ro,b=postgresql://g/ro,c=postgresql://f/ro",
        RUN_OPS_SHARDS_NOT_PLACED=" c , b",
    )
    assert s.run_ops_shards_not_placed == ("c", "b")
    assert dict(s.public_items())["run_ops_shards_not_placed"] == "c,b"
    assert s.source_of("run_ops_shards_not_placed") == "RUN_OPS_SHARDS_NOT_PLACED"
    assert load().run_ops_shards_not_placed == ()
    assert dict(load().public_items())["run_ops_shards_not_placed"] == "(unset)"


SHARDS_AB = {
    "RUN_OPS_ID_GENERATION": "base32hex",
    "RUN_OPS_SHARDS": "a=postgresql://h/ro,b=postgresql://g/ro",
}


@pytest.mark.parametrize(
    "not_placed, message",
    [
        (
            "c",
            r"RUN_OPS_SHARDS_NOT_PLACED names shard 'c', which RUN_OPS_SHARDS does not "
            r"configure: .* add c=<dsn> to RUN_OPS_SHARDS",
        ),
        ("a,b", r"names every shard of RUN_OPS_SHARDS \(a, b\).*leave at least one shard placed"),
        ("b,a,b", r"RUN_OPS_SHARDS_NOT_PLACED: shard 'b' is given twice"),
        ("a,", r"RUN_OPS_SHARDS_NOT_PLACED: entry 2 \(''\) is not a shard char"),
        ("A", r"RUN_OPS_SHARDS_NOT_PLACED: entry 1 \('A'\) is not a shard char"),
        ("ab", r"entry 1 \('ab'\) is not a shard char"),
    ],
)
def test_bad_not_placed_shards_are_refused(not_placed: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(**SHARDS_AB, RUN_OPS_SHARDS_NOT_PLACED=not_placed)
    # Without any shard, naming one is the same mistake.
    with pytest.raises(ConfigError, match="RUN_OPS_SHARDS_NOT_PLACED"):
        load(RUN_OPS_SHARDS_NOT_PLACED="a")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RUN_OPS_SHARDS": "a=postgresql://h/ro"}, "base32hex"),
        ({"RUN_OPS_ID_GENERATION": "base32hex", "RUN_OPS_SHARDS": "A=postgresql://h/ro"}, "char"),
        (
            {
                "RUN_OPS_ID_GENERATION": "base32hex",
                "RUN_OPS_SHARDS": "a=postgresql://h/ro,a=postgresql://g/ro",
            },
            "twice",
        ),
        (
            {
                "RUN_OPS_ID_GENERATION": "base32hex",
                "RUN_OPS_SHARDS": "a=postgresql://h/ro",
                "RUN_OPS_SHARD_READ_REPLICA_URLS": "b=postgresql://r/ro",
            },
            "does not configure",
        ),
    ],
)
def test_bad_shard_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(**env)


# ------------------------------------------------------------------------ waitpoints


def test_the_waitpoint_guard_follows_the_generation() -> None:
    from controlplane_resolver.domain.waitpoints import RouteKind, Store, select_store
    from controlplane_resolver.errors import InvalidArgument

    short = "waitpoint_" + "x" * 21
    with pytest.raises(InvalidArgument):
        select_store(split_enabled=True, waitpoint_id=short, route_kind=RouteKind.MANUAL)
    legacy = select_store(
        split_enabled=True, waitpoint_id=short, route_kind=RouteKind.MANUAL, generation=B32
    )
    assert (legacy.store, legacy.residency) == (Store.LEGACY, Residency.LEGACY)
    for body in (new_run_ops_id(), new_run_ops_id_v2("k")):
        new = select_store(
            split_enabled=True,
            waitpoint_id="waitpoint_" + body,
            route_kind=RouteKind.MANUAL,
            generation=B32,
        )
        assert (new.store, new.residency) == (Store.RUN_OPS, Residency.NEW)
    # A ksuid waitpoint is legacy under base32hex.
    old = select_store(
        split_enabled=True,
        waitpoint_id="waitpoint_" + minting.new_ksuid(),
        route_kind=RouteKind.MANUAL,
        generation=B32,
    )
    assert old.store is Store.LEGACY


def test_a_store_format_waitpoint_id_is_answered_legacy_as_the_platform_guard_does() -> None:
    """The platform's newer waitpoint ids (``<24-char core><r|b|d|m>w``,
    ``friendlyId.ts`` ``generateWaitpointId``) have no run version char: its
    guard classifies them legacy, and so does this one (docs/design.md,
    "Waitpoint routing"). Pinned here so that a change is deliberate."""
    from controlplane_resolver.domain.waitpoints import RouteKind, Store, select_store

    core = new_run_ops_id()[:24]
    for type_char in "rbdm":
        answer = select_store(
            split_enabled=True,
            waitpoint_id=f"waitpoint_{core}{type_char}w",
            route_kind=RouteKind.MANUAL,
            generation=B32,
        )
        assert (answer.store, answer.residency, answer.shard) == (
            Store.LEGACY,
            Residency.LEGACY,
            None,
        )
