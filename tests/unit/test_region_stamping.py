"""The region char of a minted v1 id (docs/design.md, "Minting ids"): MintId's
``region`` (the name the trigger asks for) through the platform's
``REGION_CODES``, an unknown name ``0`` (logged, bounded), no name the
deployment's ``RUN_OPS_REGION``, a BATCH always ``0`` (the platform's
``mintBatchFriendlyId`` passes no region), gen-2 ids a shard char instead,
and garbage refused. Resolver.mint_id runs without a database: its mint-kind
decision is stubbed."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from controlplane_resolver.domain import minting
from controlplane_resolver.domain.minting import IdKind, MintKind, MintKindDecision
from controlplane_resolver.errors import InvalidArgument
from controlplane_resolver.logbounds import RateLimitedWarning
from controlplane_resolver.resolver import Resolver

V1 = MintKindDecision(MintKind.RUN_OPS_ID, "org_flag")
V1_CHILD = MintKindDecision(MintKind.RUN_OPS_ID, "parent_residency")
GEN_2 = MintKindDecision(MintKind.RUN_OPS_ID, "org_flag", shard="b", shard_reason="hash")
KSUID = MintKindDecision(MintKind.KSUID, "org_flag")


def resolver(decision: MintKindDecision, default_region: str | None = None) -> Resolver:
    """A Resolver with only what mint_id reads: the topology's region and a
    stubbed mint-kind decision (which records its arguments)."""
    r = object.__new__(Resolver)
    r.topology = SimpleNamespace(region=default_region)  # type: ignore[assignment]
    r.unknown_region_warning = RateLimitedWarning(
        logging.getLogger("controlplane_resolver.resolver"), "MintId region %r is unknown"
    )
    r.calls = []  # type: ignore[attr-defined]

    def decide(org: str, parent: str | None = None, env: str | None = None) -> MintKindDecision:
        r.calls.append((org, parent, env))  # type: ignore[attr-defined]
        return decision

    r.resolve_mint_kind = decide  # type: ignore[method-assign]
    return r


def region_of(minted: Any) -> str:
    assert len(minted.id) == 26 and minted.id[25] == "1", minted.id
    return str(minted.id[24])


# ------------------------------------------------------------- the pure rule


@pytest.mark.parametrize(
    ("kind", "requested", "default", "expected"),
    [
        (IdKind.RUN, "us-east-1", None, "us-east-1"),
        (IdKind.RUN, "us-east-1", "us-west-2", "us-east-1"),  # the trigger's wins
        (IdKind.RUN, None, "us-west-2", "us-west-2"),  # none sent: the default
        (IdKind.RUN, None, None, None),
        (IdKind.RUN, "mars-north-1", "us-west-2", "mars-north-1"),  # stamps 0
        (IdKind.RUN, "", "us-west-2", ""),  # sent but empty: stamps 0
        (IdKind.BATCH, "us-east-1", "us-west-2", None),
        (IdKind.BATCH, None, "us-west-2", None),
    ],
)
def test_v1_region(kind, requested, default, expected):
    assert minting.v1_region(kind, requested, default) == expected


def test_region_chars_are_the_platforms():
    assert {r: minting.region_char(r) for r in ("us-east-1", "us-west-2", "eu-central-1")} == {
        "us-east-1": "e",
        "us-west-2": "w",
        "eu-central-1": "c",
    }
    for other in (None, "", "US-EAST-1", "us-east-2", "e"):
        assert minting.region_char(other) == "0"


@pytest.mark.parametrize("name", ["", "us-east-1", "x" * 64, "ap_south:1.a", "!~"])
def test_validate_region_accepts_names(name):
    assert minting.validate_region(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("x" * 65, "65 characters; the limit is 64"),
        ("us east 1", "printable ASCII"),
        ("us-east-1\n", "printable ASCII"),
        ("us-east-1\x00", "printable ASCII"),
        ("us-\u00e9ast-1", "printable ASCII"),
    ],
)
def test_validate_region_refuses_garbage(name, says):
    with pytest.raises(InvalidArgument) as caught:
        minting.validate_region(name)
    assert caught.value.reason == "INVALID_REGION"
    assert caught.value.metadata == {"field": "region"}
    assert says in str(caught.value)


# ------------------------------------------------------ through Resolver.mint_id


@pytest.mark.parametrize(
    ("region", "char"), [("us-east-1", "e"), ("us-west-2", "w"), ("eu-central-1", "c")]
)
def test_a_run_stamps_the_region_the_trigger_asks_for(region, char):
    for decision in (V1, V1_CHILD):  # a root, and a v1 parent's child
        r = resolver(decision, default_region="us-west-2" if char != "w" else "us-east-1")
        assert region_of(r.mint_id("RUN", "org", region=region)) == char


def test_an_unknown_region_stamps_0_and_is_logged_bounded(caplog):
    r = resolver(V1, default_region="us-east-1")
    with caplog.at_level(logging.WARNING, logger="controlplane_resolver.resolver"):
        for _ in range(5):
            assert region_of(r.mint_id("RUN", "org", region="mars-north-1")) == "0"
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines == ["MintId region 'mars-north-1' is unknown"]  # once a minute, not 5 times


def test_an_empty_region_stamps_0_unlogged(caplog):
    r = resolver(V1, default_region="us-east-1")
    with caplog.at_level(logging.WARNING, logger="controlplane_resolver.resolver"):
        assert region_of(r.mint_id("RUN", "org", region="")) == "0"
    assert not caplog.records


@pytest.mark.parametrize(("default", "char"), [("eu-central-1", "c"), (None, "0")])
def test_no_region_stamps_run_ops_region(default, char):
    r = resolver(V1, default_region=default)
    assert region_of(r.mint_id("RUN", "org")) == char


def test_a_batch_stamps_0_whatever_the_region_says(caplog):
    for decision in (V1, V1_CHILD):
        r = resolver(decision, default_region="us-west-2")
        with caplog.at_level(logging.WARNING, logger="controlplane_resolver.resolver"):
            for region in (None, "us-east-1", "mars-north-1"):
                minted = r.mint_id("BATCH", "org", region=region)
                assert minted.friendly_id == "batch_" + minted.id
                assert region_of(minted) == "0"
        assert not caplog.records  # a batch stamps no region: nothing to report


def test_gen_2_and_ksuid_ids_ignore_the_region(caplog):
    with caplog.at_level(logging.WARNING, logger="controlplane_resolver.resolver"):
        for region in ("us-east-1", "mars-north-1", None):
            gen_2 = resolver(GEN_2, "us-west-2").mint_id("RUN", "org", region=region)
            assert (gen_2.id[24:], gen_2.shard) == ("b2", "b")
            ksuid = resolver(KSUID, "us-west-2").mint_id("RUN", "org", region=region)
            assert len(ksuid.id) == 27
    assert not caplog.records


def test_garbage_is_refused_before_the_mint_kind_is_decided():
    r = resolver(V1)
    with pytest.raises(InvalidArgument) as caught:
        r.mint_id("RUN", "org", region="us-east-1\r\n")
    assert caught.value.reason == "INVALID_REGION"
    assert r.calls == []  # type: ignore[attr-defined]
    # Validated whatever the id would have been.
    for decision in (GEN_2, KSUID):
        with pytest.raises(InvalidArgument):
            resolver(decision).mint_id("BATCH", "org", region="y" * 65)
