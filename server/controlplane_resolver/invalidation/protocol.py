"""The invalidation protocol: one ``NOTIFY`` channel, one payload format,
and the interface an invalidation is applied to.

A writer (the optional triggers of ``triggers.py``, or any writer that
knows what it changed) sends ``NOTIFY controlplane_resolver_invalidate,
'<kind>:<id>'`` with kind one of :data:`KINDS`. Every listening resolver
process applies it to its cache (docs/caching.md, "Invalidation").
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)

#: The channel every resolver LISTENs on and every writer NOTIFYs.
CHANNEL = "controlplane_resolver_invalidate"

#: The kinds a payload may name, each a scope of cached answers.
KINDS = ("environment", "organization", "project", "worker_versions", "flag")


def payload(kind: str, ident: str) -> str:
    """The ``NOTIFY`` payload of one invalidation (``kind`` one of :data:`KINDS`)."""
    return f"{kind}:{ident}"


class InvalidationTarget(Protocol):
    """What an invalidation is applied to (the cache implements it)."""

    def invalidate_environment(self, environment_id: str) -> None: ...

    def invalidate_organization(self, organization_id: str) -> None: ...

    def invalidate_project(self, project_id: str) -> None: ...

    def invalidate_worker_versions(self, environment_id: str) -> None: ...

    def invalidate_flag(self, key: str) -> None: ...

    def invalidate_all(self) -> None: ...


def apply_notification(target: InvalidationTarget, payload: str) -> bool:
    """Apply the invalidation a payload names. Returns False for a payload
    this version does not understand (logged, with its length bounded, and
    ignored)."""
    kind, _, ident = payload.partition(":")
    if not ident:
        log.warning("ignoring invalidation notification without an id: %r", payload[:100])
        return False
    if kind == "environment":
        target.invalidate_environment(ident)
    elif kind == "organization":
        target.invalidate_organization(ident)
    elif kind == "project":
        target.invalidate_project(ident)
    elif kind == "worker_versions":
        target.invalidate_worker_versions(ident)
    elif kind == "flag":
        # The id is the "FeatureFlag"."key": answers that read that global flag.
        target.invalidate_flag(ident)
    else:
        log.warning("ignoring invalidation notification of unknown kind %r", kind[:50])
        return False
    return True
