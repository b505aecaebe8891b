"""Routing a waitpoint completion to its store (docs/design.md, "Waitpoint routing"): the
cross-seam guard. Pure: no I/O, no gRPC.

A waitpoint completion arrives at an engine site with the waitpoint's id and
little else; the engine asks which store (the legacy location or the run-ops
database) to write the completion to. :data:`CATALOGUE` names every route
kind together with the engine sites that complete waitpoints that way — one
table, so adding a route kind means adding its row here (a test checks the
table against the proto's ``UnblockRouteKind``).

:func:`select_store` decides:

* unknown (or unspecified) route kind → :class:`~.errors.InvalidArgument`
  naming the value, whatever the split mode;
* split off → ``LEGACY`` store, ``LEGACY`` residency (there is one store);
* split on → classify the waitpoint id by shape, under the configured id
  generation; unclassifiable (``ksuid`` only: ``base32hex`` classification
  is total) → :class:`~.errors.InvalidArgument` naming the id (an error,
  not a guess); a gen-2 waitpoint's store is ``RUN_OPS`` (the run-ops
  family) and its shard the one its id names;
  then pin to the legacy store, checking in this order and reporting the
  first that holds:

  1. ``NON_TREE_OWNED`` — the run tree the waitpoint belongs to is owned by
     a legacy run (``tree_owner_residency`` is ``LEGACY``);
  2. ``CROSS_TREE_IDEMPOTENCY`` — the request marks the completion as
     crossing into another run tree (``cross_tree_idempotency``), whatever
     the route kind: the platform's guard pins on the flag alone (a ``RUN``
     completion of a run reused by an idempotency key from another tree is
     one such case);
  3. ``LEGACY_PARENT_DESCENDANT`` — the waiting run has a legacy parent
     (``has_legacy_parent``);

  no pin → the store of the waitpoint's own residency (``NEW`` → run-ops,
  ``LEGACY`` → legacy), and for a gen-2 waitpoint the shard its id names
  (the platform stamps a gen-2 run's waitpoints with the run's shard char).
  Pins are reported even when the waitpoint is legacy itself (the rule held;
  the store is the same).

The reported residency is always the waitpoint's own; the reported shard is
where the completion is written, so a pinned completion has none. Whether
this server configures that shard is not this module's question (the
resolver refuses one it does not).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from controlplane_resolver.domain.residency import (
    CUID_LENGTH,
    KSUID_LENGTH,
    Generation,
    InvalidId,
    Residency,
    classify,
    validate_id,
)
from controlplane_resolver.errors import InvalidArgument


class RouteKind(enum.Enum):
    """How a waitpoint is being completed (proto ``UnblockRouteKind``)."""

    MANUAL = "manual"
    DATETIME = "datetime"
    RESUME_TOKEN = "resume_token"
    IDEMPOTENCY_REUSE = "idempotency_reuse"
    RUN = "run"


class Store(enum.Enum):
    """Where a completion is written (proto ``Store``)."""

    LEGACY = "legacy"
    RUN_OPS = "run-ops"


class PinReason(enum.Enum):
    """Why a completion was pinned to the legacy store (proto ``PinReason``)."""

    NON_TREE_OWNED = "non_tree_owned"
    CROSS_TREE_IDEMPOTENCY = "cross_tree_idempotency"
    LEGACY_PARENT_DESCENDANT = "legacy_parent_descendant"


@dataclass(frozen=True)
class CompletionSite:
    """One route kind and the engine sites that complete waitpoints that way."""

    route_kind: RouteKind
    engine_sites: tuple[str, ...]
    description: str


#: Every route kind, once, with the engine sites that complete waitpoints by it.
CATALOGUE: tuple[CompletionSite, ...] = (
    CompletionSite(
        RouteKind.MANUAL,
        (
            "engine.completeWaitpoint (a manual waitpoint completed or failed by id)",
            "worker job finishWaitpoint (a manual waitpoint's timeout fails it)",
        ),
        "A MANUAL waitpoint is completed by id alone: the caller knows nothing of "
        "the run that waits on it.",
    ),
    CompletionSite(
        RouteKind.DATETIME,
        ("worker job finishWaitpoint (wait.for / wait.until reached completedAfter)",),
        "A DATETIME waitpoint completes itself when its time comes.",
    ),
    CompletionSite(
        RouteKind.RESUME_TOKEN,
        ("API: complete a waitpoint token (wait.forToken resumed from outside the run)",),
        "A token completed by the user's own code or an HTTP callback, from any process.",
    ),
    CompletionSite(
        RouteKind.IDEMPOTENCY_REUSE,
        (
            "trigger with an idempotency key that matches an existing run "
            "(the waiting parent is blocked by that run's waitpoint)",
        ),
        "triggerAndWait reused an existing run; that run may belong to another tree.",
    ),
    CompletionSite(
        RouteKind.RUN,
        (
            "run attempt succeeded or failed (the run's own waitpoint completes)",
            "run cancelled or expired (the run's own waitpoint completes with an error)",
        ),
        "A child run finished: the waitpoint its parent waits on completes.",
    ),
)


def site_of(route_kind: RouteKind) -> CompletionSite:
    """The catalogue row of ``route_kind``."""
    return next(site for site in CATALOGUE if site.route_kind is route_kind)


def route_kind_named(name: str | None) -> RouteKind:
    """The route kind called ``name`` (``"MANUAL"`` …). Raises
    :class:`InvalidArgument` naming the value for anything else, including
    ``None`` (the proto's unspecified zero)."""
    try:
        if name is not None:
            return RouteKind[name]
    except KeyError:
        pass
    known = ", ".join(kind.name for kind in RouteKind)
    shown = "UNSPECIFIED" if name is None else name
    raise InvalidArgument(
        f"route_kind {shown!r} is not one of {known}",
        reason="INVALID_ENUM",
        metadata={"field": "route_kind", "value": shown},
    )


@dataclass(frozen=True)
class StoreSelection:
    """SelectStoreForWaitpoint's answer (field names are the proto's)."""

    store: Store
    #: The waitpoint's own residency (``LEGACY`` when split is off).
    residency: Residency
    #: The pin that sent the completion to the legacy store; ``None`` when none.
    pin_reason: PinReason | None
    #: The shard the completion is written to: a gen-2 waitpoint's shard char
    #: when the store is ``RUN_OPS``; ``None`` otherwise.
    shard: str | None = None


_STORE_OF = {Residency.NEW: Store.RUN_OPS, Residency.LEGACY: Store.LEGACY}


def select_store(
    *,
    split_enabled: bool,
    waitpoint_id: str,
    route_kind: RouteKind,
    tree_owner_residency: Residency | None = None,
    cross_tree_idempotency: bool = False,
    has_legacy_parent: bool = False,
    generation: Generation = Generation.KSUID,
) -> StoreSelection:
    """Decide the store for one completion (see the module docstring).

    Raises :class:`InvalidArgument` for an id that is not an identifier, or,
    under split, one whose shape is unclassifiable.
    """
    try:
        validate_id(waitpoint_id, field="waitpoint_id")
    except InvalidId as exc:
        raise InvalidArgument(
            str(exc), reason="INVALID_ID", metadata={"field": "waitpoint_id"}
        ) from None
    if not split_enabled:
        return StoreSelection(Store.LEGACY, Residency.LEGACY, None)
    c = classify(waitpoint_id, generation)
    if c.residency is None:
        raise InvalidArgument(
            f"waitpoint_id {waitpoint_id!r} has a {len(c.body)}-character body, neither "
            f"{CUID_LENGTH} (cuid) nor {KSUID_LENGTH} (ksuid): its store cannot be known, "
            "and a completion is never routed by a guess",
            reason="UNCLASSIFIABLE_WAITPOINT_ID",
            metadata={"field": "waitpoint_id", "value": waitpoint_id},
        )
    pin: PinReason | None = None
    if tree_owner_residency is Residency.LEGACY:
        pin = PinReason.NON_TREE_OWNED
    elif cross_tree_idempotency:
        pin = PinReason.CROSS_TREE_IDEMPOTENCY
    elif has_legacy_parent:
        pin = PinReason.LEGACY_PARENT_DESCENDANT
    if pin is not None:
        return StoreSelection(Store.LEGACY, c.residency, pin)
    return StoreSelection(_STORE_OF[c.residency], c.residency, None, c.shard)
