"""Where a run lives, decided by the shape of its id (docs/design.md, "Run residency").

This module is the only place that knows the rule. It is pure: no I/O.

The rule depends on the id generation the operator configured
(``RUN_OPS_ID_GENERATION``). Both first strip everything up to and including
the first ``_`` (``run_cm4…`` → ``cm4…``).

* ``ksuid`` (the default): a 25-character body is a cuid (``LEGACY``), a
  27-character body is a base62 ksuid (``NEW``); any other length is
  unclassifiable. Only the length decides.
* ``base32hex`` (the platform's current rule, ``resolveShard`` /
  ``classifyKind`` in its ``runOpsResidency.ts``): a 26-character body of 24
  lowercase base32hex characters (``0-9a-v``), a positional char in
  ``[a-z0-9]`` and a version char decides. Version ``1`` is a v1 id (the
  positional char is a region; the run lives in the run-ops database);
  version ``2`` is a gen-2 id (the positional char names the shard that holds
  the run). Every other string is ``LEGACY``: classification is total.
  The first 6 bytes of the decoded core are the mint time in milliseconds.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

CUID_LENGTH = 25
KSUID_LENGTH = 27
#: A base32hex run-ops body: 24 core chars, a positional char, a version char.
RUN_OPS_ID_LENGTH = 26
RUN_OPS_ID_CORE_LENGTH = 24
RUN_OPS_ID_VERSION_1 = "1"
RUN_OPS_ID_VERSION_2 = "2"
#: Lowercase base32hex (RFC 4648 section 7).
BASE32HEX = "0123456789abcdefghijklmnopqrstuv"
#: A region char or a shard char: one DNS-safe lowercase character.
POSITIONAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_BASE32HEX_CHARS = frozenset(BASE32HEX)
MAX_ID_LENGTH = 255
_ID_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")


class Residency(enum.Enum):
    LEGACY = "legacy"
    NEW = "new"


class Generation(enum.Enum):
    """The id generation the resolver classifies and mints by
    (``RUN_OPS_ID_GENERATION``; proto ``IdGeneration``)."""

    KSUID = "ksuid"
    BASE32HEX = "base32hex"


class IdFormat(enum.Enum):
    """One id's format under a generation (proto ``IdFormat``)."""

    LEGACY = "legacy"
    KSUID = "ksuid"
    BASE32HEX_V1 = "base32hex_v1"
    BASE32HEX_V2 = "base32hex_v2"
    UNCLASSIFIABLE = "unclassifiable"


class InvalidId(ValueError):
    """An identifier that can never name a row: empty, too long, or with
    characters outside ``[A-Za-z0-9_-]``."""


@dataclass(frozen=True)
class Classification:
    """What the id-shape rule says about one identifier."""

    id: str
    body: str
    #: ``None`` when the body's length matches neither shape.
    residency: Residency | None
    #: ``True`` when the id came with a prefix (``run_…``): a friendly id.
    is_friendly: bool
    format: IdFormat = IdFormat.UNCLASSIFIABLE
    #: A gen-2 body's shard char.
    shard: str | None = None
    #: A base32hex body's mint time, in Unix milliseconds.
    timestamp_ms: int | None = None
    #: A v1 body's region char.
    region: str | None = None
    #: The generation the id was classified under.
    generation: Generation = Generation.KSUID

    @property
    def classifiable(self) -> bool:
        return self.residency is not None

    @property
    def route(self) -> Residency:
        """The residency reads are routed by: unclassifiable ids take the
        legacy route (the two-step read), which finds them wherever they are."""
        return self.residency or Residency.LEGACY

    @property
    def reason(self) -> str:
        n = len(self.body)
        if self.format is IdFormat.BASE32HEX_V1:
            return f"body is a base32hex v1 id (region {self.region!r}): new residency, run-ops"
        if self.format is IdFormat.BASE32HEX_V2:
            return f"body is a base32hex gen-2 id: new residency, shard {self.shard!r}"
        if self.format is IdFormat.LEGACY and self.generation is Generation.BASE32HEX:
            return (
                f"body is {n} characters and not a well-formed base32hex v1 or gen-2 id: "
                "legacy residency"
            )
        if self.residency is Residency.LEGACY:
            return f"body is {n} characters: a cuid, legacy residency"
        if self.residency is Residency.NEW:
            return f"body is {n} characters: a ksuid, new residency"
        return (
            f"body is {n} characters, neither {CUID_LENGTH} (cuid) nor "
            f"{KSUID_LENGTH} (ksuid): unclassifiable, routed as legacy"
        )


def validate_id(value: str, *, field: str = "id") -> str:
    """Return ``value`` unchanged if it can be an identifier.

    Raises :class:`InvalidId` naming ``field`` and the problem otherwise.
    """
    if not value:
        raise InvalidId(f"{field} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{field} is {len(value)} characters; the limit is {MAX_ID_LENGTH}")
    if not _ID_CHARACTERS.fullmatch(value):
        raise InvalidId(f"{field} may contain only A-Z, a-z, 0-9, '_' and '-'")
    return value


def classify(run_id: str, generation: Generation = Generation.KSUID) -> Classification:
    """Classify an (already validated) run, batch or waitpoint id by shape,
    under ``generation``. Never raises."""
    prefix, sep, rest = run_id.partition("_")
    body = rest if sep else prefix
    if generation is Generation.BASE32HEX:
        return _classify_base32hex(run_id, body, bool(sep))
    if len(body) == CUID_LENGTH:
        residency: Residency | None = Residency.LEGACY
        fmt = IdFormat.LEGACY
    elif len(body) == KSUID_LENGTH:
        residency = Residency.NEW
        fmt = IdFormat.KSUID
    else:
        residency = None
        fmt = IdFormat.UNCLASSIFIABLE
    return Classification(
        id=run_id, body=body, residency=residency, is_friendly=bool(sep), format=fmt
    )


def core_timestamp_ms(core: str) -> int | None:
    """The Unix milliseconds in the first 6 bytes of a 24-character base32hex
    core, or ``None`` when the core is not lowercase base32hex."""
    if len(core) != RUN_OPS_ID_CORE_LENGTH or not _BASE32HEX_CHARS.issuperset(core):
        return None
    # 24 chars x 5 bits = 120 bits = 15 bytes; the top 48 bits are the time.
    return int(core, 32) >> 72


def _classify_base32hex(run_id: str, body: str, is_friendly: bool) -> Classification:
    legacy = Classification(
        id=run_id,
        body=body,
        residency=Residency.LEGACY,
        is_friendly=is_friendly,
        format=IdFormat.LEGACY,
        generation=Generation.BASE32HEX,
    )
    if len(body) != RUN_OPS_ID_LENGTH:
        return legacy
    version = body[RUN_OPS_ID_LENGTH - 1]
    positional = body[RUN_OPS_ID_CORE_LENGTH]
    if version not in (RUN_OPS_ID_VERSION_1, RUN_OPS_ID_VERSION_2):
        return legacy
    if positional not in POSITIONAL_CHARS:
        return legacy
    ms = core_timestamp_ms(body[:RUN_OPS_ID_CORE_LENGTH])
    if ms is None:
        return legacy
    v2 = version == RUN_OPS_ID_VERSION_2
    return Classification(
        id=run_id,
        body=body,
        residency=Residency.NEW,
        is_friendly=is_friendly,
        format=IdFormat.BASE32HEX_V2 if v2 else IdFormat.BASE32HEX_V1,
        shard=positional if v2 else None,
        timestamp_ms=ms,
        region=None if v2 else positional,
        generation=Generation.BASE32HEX,
    )
