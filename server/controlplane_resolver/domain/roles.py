"""The databases the resolver knows, by role, and where a run came from.

A role is what a database *is* to the resolver; the role's value is how
logs, error metadata (``database``) and metrics (label ``database``) name
it. Several roles may share one physical database and one pool (the legacy
location is the control-plane replica unless configured otherwise).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


@dataclass(frozen=True)
class ShardRole:
    """A run-ops shard (``RUN_OPS_SHARDS``): a role per shard char, named
    like a :class:`DatabaseRole` (``value``) so pools, logs, errors and
    metrics name each shard."""

    shard: str

    @property
    def value(self) -> str:
        return f"run-ops shard {self.shard}"

    @property
    def name(self) -> str:
        return f"RUN_OPS_SHARD_{self.shard.upper()}"


class RunSource(enum.Enum):
    """The database that served a run, as reported to callers (the proto's
    ``RunSource``): with split off every run comes from the control plane."""

    CONTROL_PLANE = "control-plane"
    RUN_OPS = "run-ops"
    LEGACY = "legacy"
    #: A run-ops shard; the read names which (``RunRead.shard``).
    RUN_OPS_SHARD = "run-ops shard"
