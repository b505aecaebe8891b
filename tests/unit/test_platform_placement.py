"""The platform's shard placement (RUN_OPS_SHARD_PLACEMENT=platform):
domain/minting.PlatformPlacement against vectors computed independently
with Node's crypto (the platform's own runtime), grace, precedence, "new",
unreadable sets, the routable bound and the bounded reports."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from controlplane_resolver.config import Settings
from controlplane_resolver.domain import minting
from controlplane_resolver.domain.minting import (
    MintFlags,
    MintKind,
    PlatformPlacement,
    ShardPlacement,
    parse_shard_set,
    plan_root_mint,
    platform_hash_place,
    platform_score,
)
from controlplane_resolver.errors import ConfigError, InvalidArgument
from controlplane_resolver.logbounds import BoundedReporter

ALL = "abcdefghijklmnopqrstuvwxyz0123456789"

# node -e 'const c=require("crypto"); c.createHash("sha256")
#   .update(`${e}\0${k}`).digest().readBigUInt64BE(0)'
SCORES = [
    ("cm1envabc", "a", 6236633678339869550),
    ("clx0000000000000000000000", "z", 8579306230026660924),
]

# The same, through the platform's hrwSelect (highest score; a tie to the larger key).
WINNERS = [
    ("cm1envabc", "ab", "b"),
    ("cm1envabc", "abc", "b"),
    ("cm1envabc", "0123", "0"),
    ("cm1envabc", "cewz", "w"),
    ("cm2envxyz", "0123", "2"),
    ("cm2envxyz", "cewz", "w"),
    ("clx0000000000000000000000", "0123", "2"),
    ("clx0000000000000000000000", "cewz", "e"),
    ("env_prod_1", "0123", "1"),
    ("env_prod_1", "cewz", "z"),
    ("e", "abc", "c"),
    ("e", "0123", "0"),
    ("environment-42", "abc", "c"),
    ("environment-42", "0123", "1"),
    ("environment-42", "cewz", "z"),
    ("env-0", "ab", "b"),
    ("env-1", "ab", "a"),
    ("env-2", "ab", "a"),
    ("env-6", "ab", "b"),
    ("env-7", "ab", "a"),
]


@pytest.mark.parametrize(("env", "key", "score"), SCORES)
def test_score_matches_node(env: str, key: str, score: int) -> None:
    assert platform_score(env, key) == score


@pytest.mark.parametrize(("env", "keys", "winner"), WINNERS)
def test_hash_winner_matches_node(env: str, keys: str, winner: str) -> None:
    assert platform_hash_place(env, list(keys)) == winner
    # Order-free: the platform sorts the set, and so does the max here.
    assert platform_hash_place(env, list(reversed(keys))) == winner
    place = PlatformPlacement({"runOpsMintShardSet": ",".join(keys)}, {}, ALL)
    assert place.place(env, 0, 0) == (winner, "hash")


def test_every_key_wins_about_one_in_n() -> None:
    keys = list("abcd")
    wins = Counter(platform_hash_place(f"cm{i:08d}env", keys) for i in range(8000))
    assert set(wins) == set(keys)
    for key in keys:
        assert 1700 < wins[key] < 2300, wins  # 2000 expected, sd about 39


def test_adding_a_key_moves_only_its_share() -> None:
    envs = [f"env{i}" for i in range(3000)]
    before = {e: platform_hash_place(e, list("abc")) for e in envs}
    after = {e: platform_hash_place(e, list("abcd")) for e in envs}
    moved = [e for e in envs if before[e] != after[e]]
    assert all(after[e] == "d" for e in moved)
    assert 600 < len(moved) < 900  # about a quarter


def test_tie_goes_to_the_larger_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minting, "platform_score", lambda env, key: 7)
    assert platform_hash_place("e", ["c", "a", "b"]) == "c"


def test_parse_shard_set() -> None:
    assert parse_shard_set(" c, a,,b ,a,") == ("a", "b", "c")
    assert parse_shard_set("") == ()
    for bad in ("a,new", "legacy", "A", "ab", "a,-", "a,é"):
        with pytest.raises(ValueError):
            parse_shard_set(bad)


def _reports() -> tuple[list[tuple[str, tuple[object, ...]]], minting.Report]:
    seen: list[tuple[str, tuple[object, ...]]] = []
    return seen, lambda what, key, detail: seen.append((what, key))


def test_unreadable_set_is_empty_and_reported() -> None:
    seen, report = _reports()
    place = PlatformPlacement({"runOpsMintShardSet": "a,B"}, {}, ALL, report=report)
    assert place.place("env", 0, 0) == (None, "no_active_shards")
    assert seen == [("unreadable_set", ("runOpsMintShardSet", "a,B"))]
    # A reserved key spoils the whole value, not only itself.
    place = PlatformPlacement({"runOpsMintShardSet": "a,new"}, {}, ALL, report=report)
    assert place.place("env", 0, 0) == (None, "no_active_shards")
    # Not a JSON string (a list, a number): no set, nothing to report.
    seen.clear()
    for value in (["a"], 3, None):
        place = PlatformPlacement({"runOpsMintShardSet": value}, {}, ALL, report=report)
        assert place.place("env", 0, 0) == (None, "no_active_shards")
    assert seen == []


def test_empty_set_is_v1_whatever_the_pins() -> None:
    place = PlatformPlacement({"runOpsMintShardOverride": "a"}, {"runOpsMintShard": "a"}, ALL)
    assert place.place("env", 0, 0) == (None, "no_active_shards")


def test_routable_bound() -> None:
    flags = {"runOpsMintShardSet": "a,b,q"}
    place = PlatformPlacement(flags, {"runOpsMintShard": "q"}, "ab")
    shard, reason = place.place("env-1", 0, 0)
    assert (shard, reason) == ("a", "hash")  # q unroutable: the pin falls through
    place = PlatformPlacement({"runOpsMintShardSet": "q,r"}, {}, "ab")
    assert place.place("env-1", 0, 0) == (None, "no_routable_shards")


def test_grace_prev_set_until_flip_plus_grace() -> None:
    flags = {
        "runOpsMintShardSet": "c",
        "runOpsMintShardSetPrev": "",
        "runOpsMintShardSetFlippedAt": "2026-01-01T00:00:00Z",
    }
    at = 1767225600000  # 2026-01-01T00:00:00Z
    place = PlatformPlacement(flags, {}, ALL)
    assert place.place("env", at - 1, 1000) == (None, "no_active_shards_grace")
    assert place.place("env", at + 999, 1000) == (None, "no_active_shards_grace")
    assert place.place("env", at + 1000, 1000) == ("c", "hash")
    # A prev set with no parseable stamp never applies.
    flags["runOpsMintShardSetFlippedAt"] = "not a time"
    place = PlatformPlacement(flags, {}, ALL)
    assert place.place("env", at, 1000) == ("c", "hash")
    # The stamp in the platform's other forms (date alone = UTC midnight).
    flags.update(runOpsMintShardSetPrev="a", runOpsMintShardSetFlippedAt="2026-01-01")
    place = PlatformPlacement(flags, {}, ALL)
    assert place.place("env", at + 10, 1000) == ("a", "hash_grace")


def test_fleet_override_beats_pins() -> None:
    set_ab = {"runOpsMintShardSet": "a,b", "runOpsMintShardOverride": "b"}
    org = {"runOpsMintShard": "a", "runOpsMintShardEnvPins": '{"env": "a"}'}
    assert PlatformPlacement(set_ab, org, ALL).place("env", 0, 0) == ("b", "fleet_override")
    v1 = {**set_ab, "runOpsMintShardOverride": "new"}
    assert PlatformPlacement(v1, org, ALL).place("env", 0, 0) == (None, "fleet_override_v1")
    # Outside the set: ignored (reported once per value), the pins decide.
    seen, report = _reports()
    out = {**set_ab, "runOpsMintShardOverride": "z"}
    place = PlatformPlacement(out, org, ALL, report=report)
    assert place.place("env", 0, 0) == ("a", "environment_pin")
    assert seen == [("override_rejected", ("z", ("a", "b")))]
    # Not a valid pin value at all: ignored silently.
    for junk in ("legacy", "ab", 5):
        bad = {**set_ab, "runOpsMintShardOverride": junk}
        assert PlatformPlacement(bad, org, ALL).place("env", 0, 0) == ("a", "environment_pin")


def test_environment_pin_beats_organization_pin() -> None:
    flags = {"runOpsMintShardSet": "a,b,c"}
    org = {"runOpsMintShard": "c", "runOpsMintShardEnvPins": '{"env-1": "b", "env-2": "new"}'}
    place = PlatformPlacement(flags, org, ALL)
    assert place.place("env-1", 0, 0) == ("b", "environment_pin")
    assert place.place("env-2", 0, 0) == (None, "environment_pin_v1")
    assert place.place("env-3", 0, 0) == ("c", "organization_pin")
    org_v1 = {"runOpsMintShard": "new"}
    assert PlatformPlacement(flags, org_v1, ALL).place("x", 0, 0) == (None, "organization_pin_v1")


@pytest.mark.parametrize(
    "env_pins",
    [
        "not json",
        '["b"]',
        '{"env-1": "B"}',
        '{"env-1": 3}',
        {"env-1": "b"},  # an object, not a JSON string holding one
        '{"env-1": "legacy"}',
    ],
)
def test_unusable_env_pins_leave_the_organization_pin(env_pins: object) -> None:
    flags = {"runOpsMintShardSet": "a,b,c"}
    org = {"runOpsMintShard": "c", "runOpsMintShardEnvPins": env_pins}
    assert PlatformPlacement(flags, org, ALL).place("env-1", 0, 0) == ("c", "organization_pin")


def test_pin_outside_the_set_falls_through_to_the_hash_and_is_reported() -> None:
    seen, report = _reports()
    flags = {"runOpsMintShardSet": "a,b"}
    org = {"runOpsMintShard": "z"}
    place = PlatformPlacement(flags, org, ALL, organization_id="org", report=report)
    assert place.place("env-1", 0, 0) == ("a", "hash")
    assert place.place("env-0", 0, 0) == ("b", "hash")
    # The organization's scalar pin is keyed without the environment, so any
    # number of environment ids a caller sends is one key.
    assert {key for _, key in seen} == {("org", "organization_pin", None, "z", ("a", "b"))}


def test_bounded_reporter_bounds_lines_and_memory(caplog: pytest.LogCaptureFixture) -> None:
    reporter = BoundedReporter(
        logging.getLogger("t"), "shard placement", max_entries=5, max_lines=8
    )
    with caplog.at_level(logging.ERROR, logger="t"):
        for _ in range(3):
            reporter.report("x", ("same",), "same")
        assert reporter.lines == 1
        for i in range(100):
            reporter.report("x", (i,), f"value {i}")
    assert reporter.lines == 8
    assert len(caplog.records) == 8
    assert len(reporter._seen) <= 5


def _flags(global_flags: dict[str, object], org: dict[str, object]) -> MintFlags:
    return MintFlags(organization=org, global_flags=global_flags)


def test_plan_kind_first_then_placement() -> None:
    on = {"runOpsMintKind": "runOpsId", "runOpsMintShardSet": "a,b"}
    plan = plan_root_mint(_flags(on, {}), "org", "ab", placement=ShardPlacement.PLATFORM)
    d = plan.decide(0, 0, "env-1")
    assert (d.kind, d.reason, d.shard, d.shard_reason) == (
        MintKind.RUN_OPS_ID,
        "global_flag",
        "a",
        "hash",
    )
    with pytest.raises(InvalidArgument) as raised:
        plan.decide(0, 0, None)
    assert raised.value.reason == "ENVIRONMENT_ID_REQUIRED"
    # The kind is cuid: nothing placed, no environment needed.
    off = {"runOpsMintKind": "cuid", "runOpsMintShardSet": "a,b"}
    plan = plan_root_mint(_flags(off, {}), "org", "ab", placement=ShardPlacement.PLATFORM)
    assert plan.decide(0, 0, None).kind is MintKind.CUID
    # The organization rule ignores the platform's rows and the environment.
    plan = plan_root_mint(_flags(on, {}), "org", "ab")
    d = plan.decide(0, 0, None)
    assert d.shard == minting.place_shard("org", "ab") and d.shard_reason == "hash"
    # No shards configured: v1 ids, as today, with or without the rule.
    plan = plan_root_mint(_flags(on, {}), "org", (), placement=ShardPlacement.PLATFORM)
    assert plan.decide(0, 0, None).shard is None


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {
        "CONTROL_PLANE_DATABASE_URL": "postgresql://u@h/db",
        "RUN_OPS_ID_GENERATION": "base32hex",
        "RUN_OPS_SHARDS": "a=postgresql://u@h/a,b=postgresql://u@h/b",
    }
    assert Settings.load(environ=base).run_ops_shard_placement == "organization"
    env = {**base, "RUN_OPS_SHARD_PLACEMENT": "Platform"}
    assert Settings.load(environ=env).run_ops_shard_placement == "platform"
    with pytest.raises(ConfigError, match="organization or platform"):
        Settings.load(environ={**base, "RUN_OPS_SHARD_PLACEMENT": "env"})
    with pytest.raises(ConfigError, match="runOpsMintShardSet"):
        Settings.load(environ={**env, "RUN_OPS_SHARDS_NOT_PLACED": "b"})
    assert Settings.load(environ={**base, "RUN_OPS_SHARDS_NOT_PLACED": "b"})
