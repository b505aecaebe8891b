"""Where a run lives, decided by the shape of its id (docs/design.md, "Run residency").

This module is the only place that knows the rule. It is pure: no I/O.

The rule: strip everything up to and including the first ``_``
(``run_cm4…`` → ``cm4…``); a 25-character body is a cuid (``LEGACY``), a
27-character body is a base62 ksuid (``NEW``); any other length is
unclassifiable. Only the length decides.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

CUID_LENGTH = 25
KSUID_LENGTH = 27
MAX_ID_LENGTH = 255
_ID_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")


class Residency(enum.Enum):
    LEGACY = "legacy"
    NEW = "new"


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


def classify(run_id: str) -> Classification:
    """Classify an (already validated) run, batch or waitpoint id by shape."""
    prefix, sep, rest = run_id.partition("_")
    body = rest if sep else prefix
    if len(body) == CUID_LENGTH:
        residency: Residency | None = Residency.LEGACY
    elif len(body) == KSUID_LENGTH:
        residency = Residency.NEW
    else:
        residency = None
    return Classification(id=run_id, body=body, residency=residency, is_friendly=bool(sep))
