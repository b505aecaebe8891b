"""The databases the resolver knows, by role, and where a run came from.

A role is what a database *is* to the resolver; the role's value is how
logs, error metadata (``database``) and metrics (label ``database``) name
it. Several roles may share one physical database and one pool (the legacy
location is the control-plane replica unless configured otherwise).
"""

from __future__ import annotations

import enum


class DatabaseRole(str, enum.Enum):
    """A database by what it serves."""

    #: The control-plane primary: ``LISTEN`` for invalidations.
    CONTROL_PLANE = "control-plane"
    #: Where control-plane reads go (the primary when no replica is set).
    CONTROL_PLANE_REPLICA = "control-plane replica"
    #: Where new runs live (its read replica when one is set).
    RUN_OPS = "run-ops"
    #: Where legacy runs are read under split.
    LEGACY = "legacy"


class RunSource(enum.Enum):
    """The database that served a run, as reported to callers (the proto's
    ``RunSource``): with split off every run comes from the control plane."""

    CONTROL_PLANE = "control-plane"
    RUN_OPS = "run-ops"
    LEGACY = "legacy"
