"""Routing a waitpoint completion (docs/design.md, "Waitpoint routing"): the catalogue
against the proto, the full truth table as a pure function and through
real servers (split on and off), and the rejections."""

from __future__ import annotations

import itertools

import grpc
import pytest

from controlplane_resolver.dev import demo
from controlplane_resolver.domain import minting
from controlplane_resolver.domain.residency import Generation, Residency
from controlplane_resolver.domain.waitpoints import (
    CATALOGUE,
    PinReason,
    RouteKind,
    Store,
    route_kind_named,
    select_store,
    site_of,
)
from controlplane_resolver.errors import InvalidArgument
from controlplane_resolver.serving.rendering import enum_prefix
from controlplane_resolver_client import ResolverError, pb

LEGACY_WAITPOINT = "waitpoint_" + demo.new_cuid()
NEW_WAITPOINT = "waitpoint_" + demo.new_ksuid()
WAITPOINTS = {Residency.LEGACY: LEGACY_WAITPOINT, Residency.NEW: NEW_WAITPOINT}


def expected_route(
    kind: RouteKind,
    waitpoint: Residency,
    owner: Residency | None,
    cross_tree: bool,
    legacy_parent: bool,
) -> tuple[Store, PinReason | None]:
    """The documented rule (docs/design.md), written out: the first pin that holds, in order."""
    pins = [
        (owner is Residency.LEGACY, PinReason.NON_TREE_OWNED),
        # Whatever the route kind, as the platform's crossSeamGuard.server.ts.
        (cross_tree, PinReason.CROSS_TREE_IDEMPOTENCY),
        (legacy_parent, PinReason.LEGACY_PARENT_DESCENDANT),
    ]
    for holds, pin in pins:
        if holds:
            return Store.LEGACY, pin
    return (Store.RUN_OPS if waitpoint is Residency.NEW else Store.LEGACY), None


COMBINATIONS = list(
    itertools.product(
        list(RouteKind),
        [Residency.LEGACY, Residency.NEW],
        [None, Residency.LEGACY, Residency.NEW],
        [False, True],
        [False, True],
    )
)


# ------------------------------------------------------------ the catalogue


def test_catalogue_and_proto_enum_agree():
    prefix = enum_prefix(pb.UnblockRouteKind.DESCRIPTOR)
    proto_kinds = [
        v.name[len(prefix) :] for v in pb.UnblockRouteKind.DESCRIPTOR.values if v.number != 0
    ]
    catalogue_kinds = [site.route_kind.name for site in CATALOGUE]
    # Every proto value has exactly one row, and every row a proto value.
    assert sorted(catalogue_kinds) == sorted(proto_kinds)
    assert len(set(catalogue_kinds)) == len(catalogue_kinds)
    assert {k.name for k in RouteKind} == set(proto_kinds)
    for site in CATALOGUE:
        assert site.engine_sites and all(site.engine_sites) and site.description
        assert site_of(site.route_kind) is site


def test_route_kind_names_and_rejections():
    for kind in RouteKind:
        assert route_kind_named(kind.name) is kind
    for bad in (None, "manual", "BATCH", ""):
        with pytest.raises(InvalidArgument) as caught:
            route_kind_named(bad)
        assert repr("UNSPECIFIED" if bad is None else bad) in str(caught.value)
        assert caught.value.reason == "INVALID_ENUM"


# --------------------------------------------------- the rule, pure


@pytest.mark.parametrize("kind, waitpoint, owner, cross_tree, legacy_parent", COMBINATIONS)
def test_truth_table_split_on(kind, waitpoint, owner, cross_tree, legacy_parent):
    selection = select_store(
        split_enabled=True,
        waitpoint_id=WAITPOINTS[waitpoint],
        route_kind=kind,
        tree_owner_residency=owner,
        cross_tree_idempotency=cross_tree,
        has_legacy_parent=legacy_parent,
    )
    assert (selection.store, selection.pin_reason) == expected_route(
        kind, waitpoint, owner, cross_tree, legacy_parent
    )
    assert selection.residency is waitpoint  # always the waitpoint's own


@pytest.mark.parametrize("kind, waitpoint, owner, cross_tree, legacy_parent", COMBINATIONS)
def test_truth_table_split_off_is_always_legacy(kind, waitpoint, owner, cross_tree, legacy_parent):
    selection = select_store(
        split_enabled=False,
        waitpoint_id=WAITPOINTS[waitpoint],
        route_kind=kind,
        tree_owner_residency=owner,
        cross_tree_idempotency=cross_tree,
        has_legacy_parent=legacy_parent,
    )
    assert (selection.store, selection.residency, selection.pin_reason) == (
        Store.LEGACY,
        Residency.LEGACY,
        None,
    )


@pytest.mark.parametrize("kind, waitpoint, owner, cross_tree, legacy_parent", COMBINATIONS)
def test_a_gen_2_waitpoint_is_completed_in_the_shard_its_id_names(
    kind, waitpoint, owner, cross_tree, legacy_parent
):
    """base32hex: the same table, a gen-2 id for the NEW waitpoint; the shard
    is reported exactly when the completion goes to the run-ops family."""
    ids = {
        Residency.LEGACY: "waitpoint_" + demo.new_cuid(),
        Residency.NEW: "waitpoint_" + minting.new_run_ops_id_v2("b"),
    }
    selection = select_store(
        split_enabled=True,
        waitpoint_id=ids[waitpoint],
        route_kind=kind,
        tree_owner_residency=owner,
        cross_tree_idempotency=cross_tree,
        has_legacy_parent=legacy_parent,
        generation=Generation.BASE32HEX,
    )
    store, pin = expected_route(kind, waitpoint, owner, cross_tree, legacy_parent)
    assert (selection.store, selection.pin_reason) == (store, pin)
    assert selection.residency is waitpoint
    assert selection.shard == ("b" if store is Store.RUN_OPS else None)


def test_only_gen_2_waitpoints_name_a_shard():
    def shard(waitpoint_id, generation=Generation.BASE32HEX, split=True):
        s = select_store(
            split_enabled=split,
            waitpoint_id=waitpoint_id,
            route_kind=RouteKind.MANUAL,
            generation=generation,
        )
        return s.store, s.shard

    v1 = "waitpoint_" + minting.new_run_ops_id("us-east-1")
    assert shard(v1) == (Store.RUN_OPS, None)  # the run-ops database itself
    assert shard("waitpoint_" + minting.new_ksuid()) == (Store.LEGACY, None)
    assert shard(NEW_WAITPOINT, Generation.KSUID) == (Store.RUN_OPS, None)
    gen2 = "waitpoint_" + minting.new_run_ops_id_v2("7")
    assert shard(gen2) == (Store.RUN_OPS, "7")
    assert shard(gen2.removeprefix("waitpoint_")) == (Store.RUN_OPS, "7")
    assert shard(gen2, split=False) == (Store.LEGACY, None)  # one store


def test_named_rows_of_the_table():
    def route(**kw):
        s = select_store(split_enabled=True, **kw)
        return s.store, s.residency, s.pin_reason

    # No pin: the waitpoint's own residency decides.
    assert route(waitpoint_id=NEW_WAITPOINT, route_kind=RouteKind.RUN) == (
        Store.RUN_OPS,
        Residency.NEW,
        None,
    )
    assert route(waitpoint_id=LEGACY_WAITPOINT, route_kind=RouteKind.DATETIME) == (
        Store.LEGACY,
        Residency.LEGACY,
        None,
    )
    # Every pin sends a new waitpoint to the legacy store, first one reported.
    assert route(
        waitpoint_id=NEW_WAITPOINT,
        route_kind=RouteKind.IDEMPOTENCY_REUSE,
        tree_owner_residency=Residency.LEGACY,
        cross_tree_idempotency=True,
        has_legacy_parent=True,
    ) == (Store.LEGACY, Residency.NEW, PinReason.NON_TREE_OWNED)
    assert route(
        waitpoint_id=NEW_WAITPOINT,
        route_kind=RouteKind.IDEMPOTENCY_REUSE,
        tree_owner_residency=Residency.NEW,
        cross_tree_idempotency=True,
        has_legacy_parent=True,
    ) == (Store.LEGACY, Residency.NEW, PinReason.CROSS_TREE_IDEMPOTENCY)
    assert route(
        waitpoint_id=NEW_WAITPOINT,
        route_kind=RouteKind.MANUAL,
        has_legacy_parent=True,
    ) == (Store.LEGACY, Residency.NEW, PinReason.LEGACY_PARENT_DESCENDANT)
    # The cross-tree pin applies on every route kind, before the legacy parent.
    for kind in RouteKind:
        assert route(
            waitpoint_id=NEW_WAITPOINT,
            route_kind=kind,
            cross_tree_idempotency=True,
            has_legacy_parent=True,
        ) == (Store.LEGACY, Residency.NEW, PinReason.CROSS_TREE_IDEMPOTENCY), kind
    # Internal ids (no prefix) classify the same way.
    assert route(waitpoint_id=NEW_WAITPOINT.partition("_")[2], route_kind=RouteKind.RUN) == (
        Store.RUN_OPS,
        Residency.NEW,
        None,
    )


def test_unclassifiable_waitpoint_id_is_an_error_under_split_only():
    short = "waitpoint_" + "a" * 21
    with pytest.raises(InvalidArgument) as caught:
        select_store(split_enabled=True, waitpoint_id=short, route_kind=RouteKind.MANUAL)
    assert short in str(caught.value) and caught.value.reason == "UNCLASSIFIABLE_WAITPOINT_ID"
    # Split off: one store, nothing to classify.
    assert (
        select_store(split_enabled=False, waitpoint_id=short, route_kind=RouteKind.MANUAL).store
        is Store.LEGACY
    )


# ---------------------------------------------------------- through gRPC

_RESIDENCY = {None: None, Residency.LEGACY: pb.RESIDENCY_LEGACY, Residency.NEW: pb.RESIDENCY_NEW}
_STORE = {Store.LEGACY: pb.STORE_LEGACY, Store.RUN_OPS: pb.STORE_RUN_OPS}
_PIN = {
    None: pb.PIN_REASON_UNSPECIFIED,
    PinReason.NON_TREE_OWNED: pb.PIN_REASON_NON_TREE_OWNED,
    PinReason.CROSS_TREE_IDEMPOTENCY: pb.PIN_REASON_CROSS_TREE_IDEMPOTENCY,
    PinReason.LEGACY_PARENT_DESCENDANT: pb.PIN_REASON_LEGACY_PARENT_DESCENDANT,
}


def _route_kind(kind: RouteKind) -> int:
    return pb.UnblockRouteKind.Value("UNBLOCK_ROUTE_KIND_" + kind.name)


def test_truth_table_over_grpc(start_server):
    split_on = start_server().client
    split_off = start_server(run_ops_split_enabled=False).client
    for kind, waitpoint, owner, cross_tree, legacy_parent in COMBINATIONS:
        case = (kind, waitpoint, owner, cross_tree, legacy_parent)
        kwargs = dict(
            tree_owner_residency=_RESIDENCY[owner],
            cross_tree_idempotency=cross_tree,
            has_legacy_parent=legacy_parent,
        )
        answer = split_on.select_store_for_waitpoint(
            WAITPOINTS[waitpoint], _route_kind(kind), **kwargs
        )
        store, pin = expected_route(*case)
        assert answer.store == _STORE[store], case
        assert answer.residency == _RESIDENCY[waitpoint], case
        assert answer.pin_reason == _PIN[pin], case
        assert not answer.HasField("shard"), case  # the ksuid generation has none
        single = split_off.select_store_for_waitpoint(
            WAITPOINTS[waitpoint], _route_kind(kind), **kwargs
        )
        assert (single.store, single.residency, single.pin_reason) == (
            pb.STORE_LEGACY,
            pb.RESIDENCY_LEGACY,
            pb.PIN_REASON_UNSPECIFIED,
        ), case


def _rejection(client, *args, **kwargs) -> ResolverError:
    with pytest.raises(ResolverError) as caught:
        client.select_store_for_waitpoint(*args, **kwargs)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return caught.value


def test_rejections_over_grpc(start_server):
    split_on = start_server().client
    split_off = start_server(run_ops_split_enabled=False).client
    manual = pb.UNBLOCK_ROUTE_KIND_MANUAL
    for client in (split_on, split_off):
        # Unknown route kinds, named, whatever the split mode.
        error = _rejection(client, NEW_WAITPOINT, pb.UNBLOCK_ROUTE_KIND_UNSPECIFIED)
        assert "UNSPECIFIED" in error.message and error.reason == "INVALID_ENUM"
        error = _rejection(client, NEW_WAITPOINT, 42)
        assert "42" in error.message and error.reason == "INVALID_ENUM"
        # A tree-owner residency the proto does not define.
        error = _rejection(client, NEW_WAITPOINT, manual, tree_owner_residency=9)
        assert "9" in error.message
        # Ids that can never name a row.
        for bad in ("", "waitpoint_bad id", "w" * 256):
            assert _rejection(client, bad, manual).reason == "INVALID_ID"
    # An unclassifiable id: an error under split, named in the message.
    for short in ("waitpoint_" + "a" * 21, "waitpoint_", "a" * 40):
        error = _rejection(split_on, short, manual)
        assert error.reason == "UNCLASSIFIABLE_WAITPOINT_ID" and short in error.message
        assert split_off.select_store_for_waitpoint(short, manual).store == pb.STORE_LEGACY
    # An explicitly unspecified tree owner is no owner.
    answer = split_on.select_store_for_waitpoint(
        NEW_WAITPOINT, manual, tree_owner_residency=pb.RESIDENCY_UNSPECIFIED
    )
    assert answer.store == pb.STORE_RUN_OPS and answer.pin_reason == pb.PIN_REASON_UNSPECIFIED


def test_cross_tree_pin_on_a_run_completion_over_grpc(start_server):
    """A RUN completion (a child run reused across trees finishing) marked
    cross-tree is pinned to the legacy store, as the platform's guard does;
    the same completion unmarked goes to run-ops."""
    client = start_server().client
    pinned = client.select_store_for_waitpoint(
        NEW_WAITPOINT, pb.UNBLOCK_ROUTE_KIND_RUN, cross_tree_idempotency=True
    )
    assert (pinned.store, pinned.residency, pinned.pin_reason) == (
        pb.STORE_LEGACY,
        pb.RESIDENCY_NEW,
        pb.PIN_REASON_CROSS_TREE_IDEMPOTENCY,
    )
    unpinned = client.select_store_for_waitpoint(NEW_WAITPOINT, pb.UNBLOCK_ROUTE_KIND_RUN)
    assert (unpinned.store, unpinned.pin_reason) == (
        pb.STORE_RUN_OPS,
        pb.PIN_REASON_UNSPECIFIED,
    )
    # The tree owner still comes first.
    owned = client.select_store_for_waitpoint(
        NEW_WAITPOINT,
        pb.UNBLOCK_ROUTE_KIND_RUN,
        tree_owner_residency=pb.RESIDENCY_LEGACY,
        cross_tree_idempotency=True,
    )
    assert owned.pin_reason == pb.PIN_REASON_NON_TREE_OWNED
