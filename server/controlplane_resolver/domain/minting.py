"""Minting new run and batch ids (docs/design.md, "Minting ids"): which kind an id gets,
and the id generators. No database, no gRPC: the only inputs from outside are the
clock and the OS's random bytes.

Kinds and where they live
-------------------------
* **KSUID** (new shape): 27 base62 characters (``0-9A-Za-z``) encoding 20
  bytes — 4 bytes of big-endian seconds since 1,400,000,000 (the KSUID
  epoch) then 16 bytes from :mod:`secrets`. Fixed width and an alphabet in
  ASCII order, so the strings sort by their seconds. A run with a KSUID lives
  in the run-ops database.
* **cuid** (legacy shape): 25 lowercase base36 characters starting with
  ``"c"`` (cuid v1 layout). A run with a cuid lives in the legacy location.
* **run-ops ids** (the base32hex generation, ``RUN_OPS_ID_GENERATION``):
  26 lowercase characters, 24 of base32hex encoding 6 bytes of big-endian
  Unix milliseconds then 9 bytes from the OS's CSPRNG, then a region char and
  ``1`` (v1: the run-ops database) or a shard char and ``2`` (gen-2: that
  shard). :func:`decide_run_ops_mint_kind` is that generation's decision
  (``runOpsMintKind``, with its flip grace) and :func:`choose_shard` places
  a root run's organization on a placed shard (rendezvous hashing, or the
  organization's ``runOpsShard`` override; ``RUN_OPS_SHARDS_NOT_PLACED``
  names shards that are read but not placed on), or, with
  ``RUN_OPS_SHARD_PLACEMENT=platform``, :class:`PlatformPlacement` places
  it as the platform's ``computeMintShard`` does (by environment).

Both generators are written here rather than taken from PyPI: ``svix-ksuid``
pulls in ``python-baseconv`` (unmaintained since 2019) for one base62
conversion, and ``cuid`` 0.4 draws its random blocks from :mod:`random`
(its own TODO says so); each generator is a dozen lines, checked against
segmentio's published KSUID vectors and round-tripped through
:func:`~controlplane_resolver.domain.residency.classify` by property tests.

The mint-kind decision
----------------------
:func:`decide_mint_kind` decides as the platform does (its trigger path and
batch minting: a parent's kind first, then the root-run gates), first match
wins:

1. a parent id given → the parent's residency decides, **before and instead
   of every gate** (``parent_residency``): a ``NEW`` parent mints a ksuid
   child and a ``LEGACY`` parent a cuid child, whatever the master switch,
   split mode or flags say, so a run tree never splits across databases. A
   parent whose shape is unclassifiable is
   :class:`~controlplane_resolver.errors.InvalidArgument`
   (``UNCLASSIFIABLE_PARENT_ID``): the platform's classifier throws there.
2. master switch (``RUN_OPS_MINT_KSUID_ENABLED``) off → cuid, ``master_switch_off``;
3. split off → cuid, ``split_off``;
4. the flag ``runOpsMintKsuid``, read as the platform's ``makeFlag`` reads
   it: the organization's ``"featureFlags"`` value when it is an allowed value
   (the JSON string ``"ksuid"`` or ``"cuid"``; ``org_flag``); otherwise the
   global ``"FeatureFlag"`` row of that key when its value is allowed
   (``global_flag``); otherwise cuid (``default``). An organization that does
   not exist has no value of its own, so the global row decides for it too.
   The flag could not be read (database down) → cuid (``flag_read_failed``),
   never an error.

Flip latency: the resolver caches both values per organization in the
``MINT_KIND`` slot for ``CONTROL_PLANE_CACHE_TTL_MS`` (default 30 s) and never
serves them stale past that (soft and hard TTL are both that value), so a
flip takes effect within ``CONTROL_PLANE_CACHE_TTL_MS`` (plus replica lag
when reading a replica); ``Invalidate(organization_id)`` or the
``organization:<id>`` notification applies an organization's flip at once,
the ``flag:<key>`` notification (the ``"FeatureFlag"`` trigger) a global
flip; ``0`` disables caching. A failed read is never cached.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import os
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timezone

from controlplane_resolver.domain.residency import (
    BASE32HEX,
    CUID_LENGTH,
    KSUID_LENGTH,
    POSITIONAL_CHARS,
    RUN_OPS_ID_VERSION_1,
    RUN_OPS_ID_VERSION_2,
    Classification,
    Residency,
)
from controlplane_resolver.errors import InvalidArgument

# ----------------------------------------------------------------- the values


class MintKind(enum.Enum):
    """The shape of a new id (proto ``MintKind``)."""

    CUID = "cuid"
    KSUID = "ksuid"
    #: A 26-character base32hex run-ops id (v1, or gen-2 with shards): the
    #: base32hex generation's flag value ``runOpsId``.
    RUN_OPS_ID = "runOpsId"


class ShardPlacement(enum.Enum):
    """How a root run-ops id is placed on a shard (``RUN_OPS_SHARD_PLACEMENT``)."""

    #: The resolver's own rule: rendezvous hashing of the organization
    #: (blake2b), the organization's ``runOpsShard`` override,
    #: ``RUN_OPS_SHARDS_NOT_PLACED``.
    ORGANIZATION = "organization"
    #: The platform's rule (``computeMintShard``): the global active set
    #: ``runOpsMintShardSet``, the fleet override, environment and
    #: organization pins, rendezvous hashing of the environment (SHA-256).
    PLATFORM = "platform"


class IdKind(enum.Enum):
    """What is being minted (proto ``IdKind``); the value is the friendly-id prefix."""

    RUN = "run_"
    BATCH = "batch_"


@dataclass(frozen=True)
class MintKindDecision:
    """ResolveMintKind's answer: the kind and the rule that decided it."""

    kind: MintKind
    reason: str
    #: The shard a gen-2 id of this decision goes to (base32hex with shards).
    shard: str | None = None
    #: How the shard was chosen: ``parent_shard``, ``org_override`` or ``hash``;
    #: with the platform's placement (:class:`PlatformPlacement`) also
    #: ``fleet_override``, ``environment_pin``, ``organization_pin``, and for
    #: a v1 id (shard ``None``) ``no_active_shards``, ``no_routable_shards``,
    #: ``fleet_override_v1``, ``environment_pin_v1``, ``organization_pin_v1``;
    #: ending in ``_grace`` inside the active set's flip grace window.
    shard_reason: str | None = None


class FlagLookup(enum.Enum):
    """Outcomes of reading the flag that carry no value."""

    READ_FAILED = "flag_read_failed"


@dataclass(frozen=True)
class FlagValues:
    """The two places the mint flag is read from, as the platform's
    ``makeFlag`` reads them. Each is the text of a JSON string value, or
    ``None`` when unset or not a JSON string (which cannot parse to an
    allowed value)."""

    #: The organization's ``"featureFlags"->'runOpsMintKsuid'`` (``None`` also
    #: when the organization does not exist).
    organization: str | None
    #: The global ``"FeatureFlag"`` row's ``"value"`` for the key.
    global_value: str | None


#: The flag (a key of ``"Organization"."featureFlags"`` and a
#: ``"FeatureFlag"."key"``), and the values it may take.
MINT_FLAG = "runOpsMintKsuid"

_FLAG_KINDS = {"ksuid": MintKind.KSUID, "cuid": MintKind.CUID}


def inherited_kind(parent: Classification) -> MintKindDecision:
    """A child's kind: its parent's. Raises :class:`InvalidArgument` for a
    parent whose shape is unclassifiable (the platform's classifier throws)."""
    if parent.residency is Residency.NEW:
        return MintKindDecision(MintKind.KSUID, "parent_residency")
    if parent.residency is Residency.LEGACY:
        return MintKindDecision(MintKind.CUID, "parent_residency")
    raise InvalidArgument(
        f"parent_id {parent.id!r} has a {len(parent.body)}-character body, neither "
        f"{CUID_LENGTH} (cuid) nor {KSUID_LENGTH} (ksuid): its child's kind cannot be "
        "known, and a child is never minted into a database by a guess",
        reason="UNCLASSIFIABLE_PARENT_ID",
        metadata={"field": "parent_id", "value": parent.id},
    )


def decide_mint_kind(
    *,
    master_switch_enabled: bool,
    split_enabled: bool,
    parent: Classification | None,
    read_flags: Callable[[], FlagValues | FlagLookup],
) -> MintKindDecision:
    """Decide the kind of a new id (see the module docstring for the order).

    ``read_flags`` returns the flag's :class:`FlagValues`, or
    :data:`FlagLookup.READ_FAILED`. It is called only when the earlier gates
    do not decide, so with a parent, or the master switch or the split off,
    the database is never touched.
    """
    if parent is not None:
        return inherited_kind(parent)
    if not master_switch_enabled:
        return MintKindDecision(MintKind.CUID, "master_switch_off")
    if not split_enabled:
        return MintKindDecision(MintKind.CUID, "split_off")
    flags = read_flags()
    if isinstance(flags, FlagLookup):
        return MintKindDecision(MintKind.CUID, flags.value)
    kind = _FLAG_KINDS.get(flags.organization or "")
    if kind is not None:
        return MintKindDecision(kind, "org_flag")
    kind = _FLAG_KINDS.get(flags.global_value or "")
    if kind is not None:
        return MintKindDecision(kind, "global_flag")
    return MintKindDecision(MintKind.CUID, "default")


# ------------------------------------------- the base32hex generation's rules

#: The base32hex generation's flag (``runOpsMintKind``) and its flip-grace
#: companions, as the platform's ``featureFlags.ts`` / ``mintFlipGrace.ts``
#: name them.
MINT_KIND_FLAG = "runOpsMintKind"
MINT_KIND_PREV_FLAG = "runOpsMintKindPrev"
MINT_KIND_FLIPPED_AT_FLAG = "runOpsMintKindFlippedAt"
MINT_KIND_FLAGS = (MINT_KIND_FLAG, MINT_KIND_PREV_FLAG, MINT_KIND_FLIPPED_AT_FLAG)
#: The organization's ``featureFlags`` key that pins its root runs to a shard
#: (a JSON string, one shard char). The resolver's own key: the platform has
#: no placement rule of its own yet.
SHARD_OVERRIDE_FLAG = "runOpsShard"

_RUN_OPS_FLAG_KINDS = {"cuid": MintKind.CUID, "runOpsId": MintKind.RUN_OPS_ID}


@dataclass(frozen=True)
class MintFlags:
    """The base32hex generation's flag records: the organization's
    ``featureFlags`` values and the global ``"FeatureFlag"`` rows, for the
    keys of :data:`MINT_KIND_FLAGS` (the organization's also
    :data:`SHARD_OVERRIDE_FLAG`), JSON-decoded; absent keys are missing."""

    organization: Mapping[str, object]
    global_flags: Mapping[str, object]


@dataclass(frozen=True)
class MintResolution:
    """``{kind, prev, flippedAt}`` read from one source (``mintFlipGrace.ts``)."""

    kind: MintKind
    prev: MintKind | None
    flipped_at_ms: int | None


def _flag_kind(flags: Mapping[str, object], key: str) -> MintKind | None:
    value = flags.get(key)
    return _RUN_OPS_FLAG_KINDS.get(value) if isinstance(value, str) else None


#: The ISO forms ``Date.parse`` reads (the ECMAScript date-time string
#: format, as V8 extends it): a 4-digit or signed 6-digit year, optional
#: month and day of 1 or 2 digits, an optional time (``T``/``t`` or spaces,
#: ``HH:mm`` with optional seconds and any digits of fraction) and an
#: optional ``Z``/``z`` or ``±HH:mm``/``±HHmm`` offset.
_ES_DATE_TIME = re.compile(
    r"(?P<year>[+-]\d{6}|\d{4})"
    r"(?:-(?P<month>\d{1,2})(?:-(?P<day>\d{1,2}))?)?"
    r"(?:(?:[Tt]| +)(?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:?\d{2})?"
)
_MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _parse_time_ms(value: object) -> int | None:
    """A flip stamp as epoch milliseconds, as the platform's ``Date.parse``
    reads it, for the forms an operator writes: the ISO forms of
    :data:`_ES_DATE_TIME` (a date alone is UTC midnight; a time without an
    offset is taken as UTC, the zone the platform's servers run in; a day
    past the month's end runs into the next month, and ``24:00`` is the
    next midnight, as in V8) and the RFC 2822 form of ``toUTCString``.
    Anything else (other forms of V8's lenient parser included, and a
    non-string) is no stamp: None."""
    if not isinstance(value, str):
        return None
    match = _ES_DATE_TIME.fullmatch(value)
    if match is None:
        from email.utils import parsedate_to_datetime

        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return int(parsed.timestamp() * 1000)
    year = int(match["year"])
    month, day = int(match["month"] or 1), int(match["day"] or 1)
    hour, minute = int(match["hour"] or 0), int(match["minute"] or 0)
    second = int(match["second"] or 0)
    ms = int((match["fraction"] or "0")[:3].ljust(3, "0"))
    if not (1 <= month <= 12 and 1 <= day <= 31 and minute <= 59 and second <= 59):
        return None
    if hour > 24 or (hour == 24 and (minute or second or ms)):
        return None
    offset_min = 0
    zone = match["zone"]
    if zone and zone not in "Zz":
        hh, mm = int(zone[1:3]), int(zone[-2:])
        if hh > 23 or mm > 59:
            return None
        offset_min = (hh * 60 + mm) * (1 if zone[0] == "+" else -1)
    if not 1 <= year <= 9999:
        return None  # Python's calendar ends there; no flip is stamped outside it
    days = date(year, month, 1).toordinal() - _EPOCH_ORDINAL + day - 1
    clock_ms = ((hour * 60 + minute - offset_min) * 60 + second) * 1000 + ms
    return days * _MS_PER_DAY + clock_ms


def read_resolution(flags: Mapping[str, object]) -> MintResolution:
    """The trio of one record; a missing or invalid kind is cuid."""
    return MintResolution(
        kind=_flag_kind(flags, MINT_KIND_FLAG) or MintKind.CUID,
        prev=_flag_kind(flags, MINT_KIND_PREV_FLAG),
        flipped_at_ms=_parse_time_ms(flags.get(MINT_KIND_FLIPPED_AT_FLAG)),
    )


def decide_run_ops_mint_kind(
    *,
    master_switch_enabled: bool,
    split_enabled: bool,
    parent: Classification | None,
    read_flags: Callable[[], MintFlags | FlagLookup],
    now_ms: int,
    grace_ms: int,
    plan: Callable[[MintFlags], RootMintPlan] | None = None,
    environment_id: str | None = None,
) -> MintKindDecision:
    """The base32hex generation's decision (``computeRunIdMintKind`` and
    ``resolveMintFlag``): a parent's residency first (a ``NEW`` parent mints
    a run-ops child, in the parent's shard when it has one); then the master
    switch and the split; then ``runOpsMintKind``, source-consistent: the
    organization's value when it sets an allowed one (with its own grace
    stamp), else the global rows (with theirs); the previous kind stays in
    force until ``grace_ms`` after ``runOpsMintKindFlippedAt``.

    ``plan(flags)`` turns the records into a :class:`RootMintPlan` (default
    :func:`plan_root_mint` without shards: no shard is chosen); a caller
    that places root runs on shards, or reuses plans, passes its own."""
    if parent is not None:
        if parent.residency is Residency.NEW:
            if parent.shard is not None:
                return MintKindDecision(
                    MintKind.RUN_OPS_ID, "parent_residency", parent.shard, "parent_shard"
                )
            return MintKindDecision(MintKind.RUN_OPS_ID, "parent_residency")
        return MintKindDecision(MintKind.CUID, "parent_residency")
    if not master_switch_enabled:
        return MintKindDecision(MintKind.CUID, "master_switch_off")
    if not split_enabled:
        return MintKindDecision(MintKind.CUID, "split_off")
    flags = read_flags()
    if isinstance(flags, FlagLookup):
        return _FLAG_READ_FAILED
    return (plan or plan_root_mint)(flags).decide(now_ms, grace_ms, environment_id)


_FLAG_READ_FAILED = MintKindDecision(MintKind.CUID, FlagLookup.READ_FAILED.value)


class RootMintPlan:
    """What one set of flag records decides for an organization's root runs,
    whatever the clock: the source (``org_flag``, ``global_flag`` or
    ``default``), the decision after any flip grace and the one during it,
    and, with shards, the shard a run-ops id goes to. Immutable; ``decide``
    builds nothing, so a plan computed once per records object answers every
    mint that reads those records."""

    __slots__ = ("_after", "_during", "_grace_ends_ms", "_placement")

    def __init__(
        self,
        source: str,
        resolution: MintResolution | None,
        shard: tuple[str, str] | None = None,
        placement: PlatformPlacement | None = None,
    ) -> None:
        #: With the platform's placement, a run-ops decision's shard is
        #: placed per call (by the environment and the clock).
        self._placement = placement

        def decision(kind: MintKind, reason: str) -> MintKindDecision:
            if kind is MintKind.RUN_OPS_ID and shard is not None:
                return MintKindDecision(kind, reason, *shard)
            return MintKindDecision(kind, reason)

        if resolution is None:
            self._after = decision(MintKind.CUID, source)
            self._during, self._grace_ends_ms = self._after, None
            return
        self._after = decision(resolution.kind, source)
        if resolution.prev is None or resolution.flipped_at_ms is None:
            self._during, self._grace_ends_ms = self._after, None
        else:
            self._during = decision(resolution.prev, source + "_grace")
            self._grace_ends_ms = resolution.flipped_at_ms

    def decide(
        self, now_ms: int, grace_ms: int, environment_id: str | None = None
    ) -> MintKindDecision:
        """The decision at ``now_ms``: with a flip stamped
        (``runOpsMintKindPrev`` and ``runOpsMintKindFlippedAt`` both valid),
        the previous kind until ``grace_ms`` after the flip, then the flag's;
        without one, the flag's. With the platform's placement, a run-ops
        decision is placed for ``environment_id``, which it then needs
        (:class:`InvalidArgument`, ``ENVIRONMENT_ID_REQUIRED``, without it)."""
        if self._grace_ends_ms is not None and now_ms < self._grace_ends_ms + grace_ms:
            decision = self._during
        else:
            decision = self._after
        if self._placement is None or decision.kind is not MintKind.RUN_OPS_ID:
            return decision
        if environment_id is None:
            raise InvalidArgument(
                "environment_id is required: this resolver places root runs on shards by "
                "environment (RUN_OPS_SHARD_PLACEMENT=platform), so pass the environment's "
                "id in environment_id",
                reason="ENVIRONMENT_ID_REQUIRED",
                metadata={"field": "environment_id"},
            )
        shard, reason = self._placement.place(environment_id, now_ms, grace_ms)
        return MintKindDecision(decision.kind, decision.reason, shard, reason)


def plan_root_mint(
    flags: MintFlags,
    organization_id: str = "",
    shards: Sequence[str] = (),
    not_placed: Collection[str] = (),
    *,
    placement: ShardPlacement = ShardPlacement.ORGANIZATION,
    report: Report | None = None,
) -> RootMintPlan:
    """The :class:`RootMintPlan` of ``flags``, source-consistent
    (``resolveMintFlag``): the organization's record when it sets an allowed
    ``runOpsMintKind``, else the global one, else ``default`` (cuid). With
    ``shards``, a run-ops id's shard is :func:`choose_shard`'s for
    ``organization_id`` and its ``runOpsShard`` override, over the shards
    not in ``not_placed``; with ``placement`` :attr:`ShardPlacement.PLATFORM`,
    it is :class:`PlatformPlacement`'s (per environment, per call), over the
    active set bounded to ``shards`` (``report`` hears of ignored values)."""
    if _flag_kind(flags.organization, MINT_KIND_FLAG) is not None:
        source, record = "org_flag", flags.organization
    elif _flag_kind(flags.global_flags, MINT_KIND_FLAG) is not None:
        source, record = "global_flag", flags.global_flags
    else:
        return RootMintPlan("default", None)
    shard = None
    if shards and placement is ShardPlacement.PLATFORM:
        return RootMintPlan(
            source,
            read_resolution(record),
            placement=PlatformPlacement(
                flags.global_flags,
                flags.organization,
                shards,
                organization_id=organization_id,
                report=report or _no_report,
            ),
        )
    if shards:
        shard = choose_shard(
            organization_id, shards, flags.organization.get(SHARD_OVERRIDE_FLAG), not_placed
        )
    return RootMintPlan(source, read_resolution(record), shard)


def place_shard(organization_id: str, shards: Sequence[str]) -> str:
    """The shard of an organization's root runs: rendezvous (highest random
    weight) hashing of the organization id over the configured shard chars.
    Stable for a fixed set; adding a shard moves only the organizations
    whose score for the new shard beats their current best (about 1/(n+1)
    of them), and removing one moves only that shard's organizations."""
    if not shards:
        raise ValueError("no shards to place on")
    key = organization_id.encode()

    def score(shard: str) -> int:
        digest = hashlib.blake2b(key, digest_size=8, person=b"cpr-shard", salt=shard.encode())
        return int.from_bytes(digest.digest(), "big")

    return max(sorted(shards), key=score)


def choose_shard(
    organization_id: str,
    shards: Sequence[str],
    override: object,
    not_placed: Collection[str] = (),
) -> tuple[str, str]:
    """``(shard, reason)`` of a root run: the organization's ``runOpsShard``
    override when it names a placed shard (``org_override``), else
    :func:`place_shard` over the placed shards (``hash``). The placed shards
    are ``shards`` less ``not_placed`` (``RUN_OPS_SHARDS_NOT_PLACED``: read,
    but not placed on), so placement is exactly what it would be without the
    not-placed shards, and placing one later moves only its fair share.

    An override naming no configured shard is ignored (an id that cannot be
    routed is never minted), and so is one naming a not-placed shard, as the
    platform ignores a pin outside its active mint-shard set: "not placed"
    holds for every new root, so a shard that some replicas cannot read yet
    (or one being drained) gets none. Raises :class:`ValueError` when no
    shard is placed (the configuration refuses that)."""
    placed = [s for s in shards if s not in not_placed]
    if isinstance(override, str) and override in placed:
        return override, "org_override"
    return place_shard(organization_id, placed), "hash"


# -------------------------------- the platform's placement (RUN_OPS_SHARD_PLACEMENT)


#: The platform's global ``"FeatureFlag"`` rows of shard placement: the active
#: set (a CSV of shard keys), its flip-grace companions, and the fleet override.
MINT_SHARD_SET_FLAG = "runOpsMintShardSet"
MINT_SHARD_SET_PREV_FLAG = "runOpsMintShardSetPrev"
MINT_SHARD_SET_FLIPPED_AT_FLAG = "runOpsMintShardSetFlippedAt"
MINT_SHARD_OVERRIDE_FLAG = "runOpsMintShardOverride"
MINT_SHARD_GLOBAL_FLAGS = (
    MINT_SHARD_SET_FLAG,
    MINT_SHARD_SET_PREV_FLAG,
    MINT_SHARD_SET_FLIPPED_AT_FLAG,
    MINT_SHARD_OVERRIDE_FLAG,
)
#: The organization's ``featureFlags`` keys of the platform's pins: a scalar
#: pin, and a JSON *string* holding an object ``{environment id: pin}``.
MINT_SHARD_PIN_FLAG = "runOpsMintShard"
MINT_SHARD_ENV_PINS_FLAG = "runOpsMintShardEnvPins"
MINT_SHARD_ORG_FLAGS = (MINT_SHARD_PIN_FLAG, MINT_SHARD_ENV_PINS_FLAG)
#: A pin of this value mints a v1 id (the platform's ``GEN_1_PIN_VALUE``).
GEN_1_PIN = "new"
#: Keys that may never be in the active set: ``new`` (a v1 id) and ``legacy``.
_RESERVED_SHARD_KEYS = frozenset({"new", "legacy"})
_SHARD_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def is_shard_key(value: object) -> bool:
    """One char of ``[a-z0-9]``."""
    return isinstance(value, str) and len(value) == 1 and value in _SHARD_KEY_CHARS


def is_pin(value: object) -> bool:
    """A valid pin: ``"new"`` or a shard key (``isValidPinValue``)."""
    return value == GEN_1_PIN or is_shard_key(value)


def parse_shard_set(raw: str) -> tuple[str, ...]:
    """A stored CSV of shard keys → the keys, trimmed, empties dropped,
    deduplicated and sorted (so no placement depends on the order typed).
    Raises ValueError naming the first key that is reserved (``new``,
    ``legacy``) or not one char of ``[a-z0-9]``: the whole value is then
    unreadable, never partly read."""
    keys: set[str] = set()
    for part in raw.split(","):
        key = part.strip()
        if not key:
            continue
        if key in _RESERVED_SHARD_KEYS:
            raise ValueError(f"{key!r} is a reserved key and cannot be an active mint shard")
        if not is_shard_key(key):
            raise ValueError(f"invalid shard key {key!r}: must be a single char in [a-z0-9]")
        keys.add(key)
    return tuple(sorted(keys))


def platform_score(environment_id: str, key: str) -> int:
    """The rendezvous score of ``key`` for an environment: the first 8 bytes,
    big-endian unsigned, of SHA-256 of ``<environment id> NUL <key>`` (UTF-8),
    as the platform's ``shardScore``. Frozen: changing it re-places every
    environment."""
    digest = hashlib.sha256(environment_id.encode() + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def platform_hash_place(environment_id: str, active: Sequence[str]) -> str:
    """The key of ``active`` with the highest :func:`platform_score` for the
    environment; a tie goes to the larger key (the platform's ``hrwSelect``)."""
    if not active:
        raise ValueError("no shards to place on")
    return max(active, key=lambda k: (platform_score(environment_id, k), k))


#: Callback of a misconfiguration worth a (bounded) log line: ``(what, key,
#: detail)``; ``key`` is what deduplicates the line.
Report = Callable[[str, tuple[object, ...], str], None]


def _no_report(what: str, key: tuple[object, ...], detail: str) -> None:
    return None


class _ActiveSet:
    """One side (during or after a flip) of the platform's placement, for one
    set of records: the active set bounded to the routable shards, and what
    the fleet override decides over it, computed once."""

    __slots__ = ("active", "fixed", "override_rejected")

    def __init__(self, raw: tuple[str, ...], routable: Collection[str], override: object) -> None:
        self.active = tuple(k for k in raw if k in routable)
        #: ``(shard, reason)`` when this side decides without the environment.
        self.fixed: tuple[str | None, str] | None = None
        #: The override value when it is ignored (outside the active set).
        self.override_rejected: str | None = None
        if not raw:
            self.fixed = (None, "no_active_shards")
        elif not self.active:
            self.fixed = (None, "no_routable_shards")
        elif is_pin(override):
            assert isinstance(override, str)
            if override == GEN_1_PIN:
                self.fixed = (None, "fleet_override_v1")
            elif override in self.active:
                self.fixed = (override, "fleet_override")
            else:
                self.override_rejected = override


class PlatformPlacement:
    """The platform's placement (``computeMintShard``) of one organization's
    flag records: the active set ``runOpsMintShardSet`` (with its flip grace:
    ``runOpsMintShardSetPrev`` is in force until ``grace_ms`` after a
    parseable ``runOpsMintShardSetFlippedAt``), bounded to ``routable``; then
    the fleet override ``runOpsMintShardOverride``; then the environment's
    pin in ``runOpsMintShardEnvPins``, else the organization's
    ``runOpsMintShard``; else :func:`platform_hash_place` over the active set.
    An empty active set, a ``"new"`` override or pin → a v1 id (no shard).

    Everything but the clock and the environment is computed once, here, per
    records object; :meth:`place` does a clock comparison, a dict lookup and,
    for the hash, one SHA-256 per active key."""

    __slots__ = ("_after", "_during", "_env_pins", "_flipped_at_ms", "_org", "_org_pin", "_report")

    def __init__(
        self,
        global_flags: Mapping[str, object],
        organization_flags: Mapping[str, object],
        routable: Collection[str],
        *,
        organization_id: str = "",
        report: Report = _no_report,
    ) -> None:
        self._report = report
        self._org = organization_id
        override = global_flags.get(MINT_SHARD_OVERRIDE_FLAG)
        routable = frozenset(routable)
        self._after = _ActiveSet(
            self._read_set(global_flags, MINT_SHARD_SET_FLAG), routable, override
        )
        self._flipped_at_ms = _parse_time_ms(global_flags.get(MINT_SHARD_SET_FLIPPED_AT_FLAG))
        self._during = (
            None
            if self._flipped_at_ms is None
            else _ActiveSet(
                self._read_set(global_flags, MINT_SHARD_SET_PREV_FLAG), routable, override
            )
        )
        self._env_pins = self._read_env_pins(organization_flags.get(MINT_SHARD_ENV_PINS_FLAG))
        pin = organization_flags.get(MINT_SHARD_PIN_FLAG)
        self._org_pin: str | None = pin if isinstance(pin, str) and is_pin(pin) else None

    def _read_set(self, flags: Mapping[str, object], key: str) -> tuple[str, ...]:
        value = flags.get(key)
        if not isinstance(value, str):
            return ()
        try:
            return parse_shard_set(value)
        except ValueError as exc:
            # Degrades to empty (v1 ids), as the platform's: reported, not raised.
            shown = value if len(value) <= 200 else value[:200] + "..."
            self._report("unreadable_set", (key, value), f"{key}={shown!r}: {exc}")
            return ()

    @staticmethod
    def _read_env_pins(raw: object) -> Mapping[str, str]:
        """The valid pins of a JSON string holding an object; anything else
        (not a string, not JSON, not an object) is no pins."""
        import json

        if not isinstance(raw, str):
            return {}
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {}
        if not isinstance(parsed, dict):
            return {}
        return {e: p for e, p in parsed.items() if is_pin(p)}

    def place(self, environment_id: str, now_ms: int, grace_ms: int) -> tuple[str | None, str]:
        """``(shard, reason)`` of a root run of ``environment_id`` at
        ``now_ms``; shard ``None`` means a v1 id. Inside the active set's
        flip grace window the reason ends in ``_grace``."""
        side = self._after
        suffix = ""
        if (
            self._during is not None
            and self._flipped_at_ms is not None
            and now_ms < self._flipped_at_ms + grace_ms
        ):
            side, suffix = self._during, "_grace"
        if side.fixed is not None:
            shard, reason = side.fixed
            return shard, reason + suffix
        if side.override_rejected is not None:
            # Fleet-wide: one line per value, whichever environment meets it.
            self._report(
                "override_rejected",
                (side.override_rejected, side.active),
                f"{MINT_SHARD_OVERRIDE_FLAG}={side.override_rejected!r} is not in the active "
                f"set {','.join(side.active)}: ignored",
            )
        pin, source = self._env_pins.get(environment_id), "environment_pin"
        if pin is None:
            pin, source = self._org_pin, "organization_pin"
        if pin is not None:
            if pin == GEN_1_PIN:
                return None, source + "_v1" + suffix
            if pin in side.active:
                return pin, source + suffix
            # Keyed by the organization and the pin (and the environment only
            # for a map entry, whose ids the operator wrote), never by an
            # environment id a caller sends alone.
            env = environment_id if source == "environment_pin" else None
            self._report(
                "pin_rejected",
                (self._org, source, env, pin, side.active),
                f"{source} {pin!r} of organization {self._org}"
                + (f" environment {environment_id}" if env else "")
                + f" is not in the active set {','.join(side.active)}: placed by the hash",
            )
        return platform_hash_place(environment_id, side.active), "hash" + suffix


#: One lowercase ``[a-z0-9]`` char per region (the platform's ``REGION_CODES``).
REGION_CODES = {"us-east-1": "e", "us-west-2": "w", "eu-central-1": "c"}
DEFAULT_REGION_CHAR = "0"
_RUN_OPS_CORE_BYTES = 15
_RUN_OPS_RANDOM_BYTES = 9


#: The longest region name ``MintId`` accepts (the platform's names are a
#: dozen characters; this bounds what a caller can put in a log line).
MAX_REGION_LENGTH = 64


def region_char(region: str | None) -> str:
    """The region char of a region name; ``0`` when unknown or unset."""
    return REGION_CODES.get(region or "", DEFAULT_REGION_CHAR)


def validate_region(region: str) -> str:
    """``region`` unchanged when it can be a region name the trigger asked
    for: at most :data:`MAX_REGION_LENGTH` printable ASCII characters, no
    space or control character (empty is allowed: it names no region and
    stamps ``0``, as the platform's ``regionCharForRegion`` does). Raises
    :class:`InvalidArgument` (``INVALID_REGION``) otherwise: a name that is
    merely unknown is not an error, garbage is."""
    if len(region) > MAX_REGION_LENGTH:
        problem = f"is {len(region)} characters; the limit is {MAX_REGION_LENGTH}"
    elif not all("!" <= c <= "~" for c in region):
        problem = "may contain only printable ASCII characters, no space or control character"
    else:
        return region
    raise InvalidArgument(
        f"region {problem}", reason="INVALID_REGION", metadata={"field": "region"}
    )


def v1_region(id_kind: IdKind, requested: str | None, default: str | None) -> str | None:
    """The region name whose char a v1 id of ``id_kind`` stamps
    (:func:`region_char`; ``None`` stamps ``0``), as the platform stamps it:

    * a RUN (a root, or the child of a v1 parent: the platform's
      ``resolveRunMintTarget`` passes the trigger's region on both arms)
      takes the region the trigger asked for, ``requested`` (``MintId``'s
      ``region``, a name; unknown names stamp ``0``), and when the caller
      sent none, ``default``, the deployment's ``RUN_OPS_REGION``;
    * a BATCH never carries a region: the platform's ``mintBatchFriendlyId``
      resolves its target without one (``generateRunOpsId(undefined)``), for a
      root batch and a parent's batch alike, so it is ``0`` whatever either
      says.
    """
    if id_kind is IdKind.BATCH:
        return None
    return default if requested is None else requested


def is_unknown_region(region: str) -> bool:
    """A non-empty region name outside :data:`REGION_CODES` (it stamps ``0``)."""
    return bool(region) and region not in REGION_CODES


class RandomBlocks:
    """Bytes from the OS's CSPRNG (:func:`os.urandom`), read ``block`` bytes
    at a time and handed out in order, each byte once. One read serves many
    ids: :func:`os.urandom` lets other threads run while it waits on the
    kernel, and on a busy threaded server every such hand-off of the
    interpreter lock costs more than the read. A forked child starts with an
    empty block (``os.register_at_fork``), so no two processes hand out the
    same bytes. Thread-safe."""

    def __init__(self, block: int = 4096) -> None:
        self._block = block
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0

    def take(self, n: int) -> bytes:
        """``n`` (at most ``block``) bytes never handed out before."""
        with self._lock:
            at = self._at
            if at + n > len(self._buffer):
                self._buffer, at = os.urandom(self._block), 0
            self._at = at + n
            return self._buffer[at : at + n]


_random_blocks = RandomBlocks()
#: Every pair of base32hex digits, by the 10 bits they write.
_BASE32HEX_PAIRS = tuple(a + b for a in BASE32HEX for b in BASE32HEX)


def run_ops_core(*, now_ms: int | None = None, random: bytes | None = None) -> str:
    """24 lowercase base32hex chars: 6 bytes of big-endian Unix milliseconds
    then 9 bytes from the OS's CSPRNG (:class:`RandomBlocks`); ``now_ms`` and
    ``random`` pin those parts for tests."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    tail = _random_blocks.take(_RUN_OPS_RANDOM_BYTES) if random is None else random
    if not 0 <= ms < 2**48 or len(tail) != _RUN_OPS_RANDOM_BYTES:
        raise ValueError("a run-ops core needs 0 <= ms < 2^48 and 9 random bytes")
    # The 15 bytes as one 120-bit number, written 10 bits (two digits) at a
    # time, most significant first: exactly 24 digits, no padding.
    n = (ms << 72) | int.from_bytes(tail, "big")
    p = _BASE32HEX_PAIRS
    return (
        p[n >> 110]
        + p[(n >> 100) & 1023]
        + p[(n >> 90) & 1023]
        + p[(n >> 80) & 1023]
        + p[(n >> 70) & 1023]
        + p[(n >> 60) & 1023]
        + p[(n >> 50) & 1023]
        + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023]
        + p[(n >> 20) & 1023]
        + p[(n >> 10) & 1023]
        + p[n & 1023]
    )


def new_run_ops_id(region: str | None = None, *, now_ms: int | None = None) -> str:
    """A v1 body: core + region char + ``1``."""
    return run_ops_core(now_ms=now_ms) + region_char(region) + RUN_OPS_ID_VERSION_1


def new_run_ops_id_v2(shard: str, *, now_ms: int | None = None) -> str:
    """A gen-2 body: core + shard char + ``2``. Raises ValueError for a shard
    char outside ``[a-z0-9]``: an id that cannot be routed is never minted."""
    if len(shard) != 1 or shard not in POSITIONAL_CHARS:
        raise ValueError(f"invalid run-ops shard char: {shard!r}")
    return run_ops_core(now_ms=now_ms) + shard + RUN_OPS_ID_VERSION_2


def friendly_id(kind: IdKind, id: str) -> str:
    """``run_`` / ``batch_`` + ``id``."""
    return kind.value + id


def new_id(kind: MintKind) -> str:
    """A fresh id of ``kind``."""
    return new_ksuid() if kind is MintKind.KSUID else new_cuid()


# ----------------------------------------------------------------------- KSUID

KSUID_EPOCH = 1_400_000_000
KSUID_PAYLOAD_BYTES = 16
_KSUID_BYTES = 4 + KSUID_PAYLOAD_BYTES
_MAX_KSUID_SECONDS = 2**32 - 1
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_INDEX = {c: i for i, c in enumerate(BASE62)}


def ksuid_from_parts(seconds: int, payload: bytes) -> str:
    """The 27-character KSUID of ``seconds`` since the KSUID epoch and a
    16-byte ``payload``. Raises ValueError when either is out of range."""
    if not 0 <= seconds <= _MAX_KSUID_SECONDS:
        raise ValueError(f"{seconds} seconds since the KSUID epoch is outside 0..2^32-1")
    if len(payload) != KSUID_PAYLOAD_BYTES:
        raise ValueError(f"a KSUID payload is {KSUID_PAYLOAD_BYTES} bytes, not {len(payload)}")
    n = int.from_bytes(seconds.to_bytes(4, "big") + payload, "big")
    digits = []
    while n:
        n, r = divmod(n, 62)
        digits.append(BASE62[r])
    # 62^27 > 2^160, so 27 digits always suffice; pad to fixed width so that
    # string order is numeric order.
    return "".join(reversed(digits)).rjust(KSUID_LENGTH, "0")


def ksuid_parts(ksuid: str) -> tuple[int, bytes]:
    """``(seconds since the KSUID epoch, payload)`` of a KSUID string.
    Raises ValueError for anything that is not one."""
    if len(ksuid) != KSUID_LENGTH or any(c not in _BASE62_INDEX for c in ksuid):
        raise ValueError(f"not a {KSUID_LENGTH}-character base62 KSUID: {ksuid!r}")
    n = 0
    for c in ksuid:
        n = n * 62 + _BASE62_INDEX[c]
    if n >= 2 ** (8 * _KSUID_BYTES):
        raise ValueError(f"{ksuid!r} is beyond the largest KSUID")
    raw = n.to_bytes(_KSUID_BYTES, "big")
    return int.from_bytes(raw[:4], "big"), raw[4:]


def new_ksuid(*, now: float | None = None) -> str:
    """A KSUID for ``now`` (Unix seconds; default the current time) with a
    payload of 16 bytes from :func:`secrets.token_bytes`."""
    unix = time.time() if now is None else now
    return ksuid_from_parts(int(unix) - KSUID_EPOCH, secrets.token_bytes(KSUID_PAYLOAD_BYTES))


# ------------------------------------------------------------------------ cuid

_BASE36 = string.digits + string.ascii_lowercase
_BLOCK = 4
_cuid_counter = itertools.count(secrets.randbelow(36**_BLOCK))
_cuid_lock = threading.Lock()


def _base36(n: int, width: int) -> str:
    """``n`` in base36, zero-padded to ``width`` and cut to its last ``width``
    digits (so every block has a fixed width)."""
    if n < 0:
        raise ValueError(f"cannot write {n} in a cuid block: it is negative")
    digits = []
    while n:
        n, r = divmod(n, 36)
        digits.append(_BASE36[r])
    return "".join(reversed(digits)).rjust(width, "0")[-width:]


def _fingerprint() -> str:
    """Two base36 digits of the pid, two of the host name (cuid v1)."""
    host = socket.gethostname()
    return _base36(os.getpid(), 2) + _base36(sum(map(ord, host)) + len(host) + 36, 2)


def new_cuid(*, now_ms: int | None = None, counter: int | None = None) -> str:
    """A cuid (v1 layout): ``"c"`` + 8 base36 digits of milliseconds + 4 of a
    process-wide counter + 4 of host/process fingerprint + 8 random (from
    :mod:`secrets`) — always 25 characters, ``[0-9a-z]``. ``now_ms`` and
    ``counter`` pin those parts for tests; callers leave them out."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if counter is None:
        with _cuid_lock:
            counter = next(_cuid_counter)
    cuid = (
        "c"
        + _base36(ms, 8)
        + _base36(counter, _BLOCK)
        + _fingerprint()
        + _base36(secrets.randbelow(36**8), 8)
    )
    assert len(cuid) == CUID_LENGTH
    return cuid
