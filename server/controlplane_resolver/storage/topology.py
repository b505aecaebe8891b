"""Which database serves which role, decided once at start-up.

The split decision lives here and nowhere else: the resolver asks for "the
databases for this route" (:meth:`Topology.read_plan`) instead of checking a
flag. With split off no run-ops pool is opened and no probe runs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import cast

from controlplane_resolver.config import Settings, redact_dsn
from controlplane_resolver.domain.residency import Generation, Residency
from controlplane_resolver.domain.roles import DatabaseRole, RunSource, ShardRole
from controlplane_resolver.errors import FailedPrecondition, Refusal
from controlplane_resolver.storage.database import Database
from controlplane_resolver.storage.interlocks import (
    SentinelResult,
    check_realtime_interlock,
    flip_grace_warning,
    run_sentinel,
    run_sentinel_all,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitDecision:
    """The outcome of the start-up checks. ``dsns`` maps each role to its
    DSN; a role absent from it has no database of its own (the control-plane
    replica defaults to the primary; run-ops and legacy exist under split)."""

    split: bool
    sentinel: SentinelResult | None
    dsns: dict[DatabaseRole, str]
    #: Shard char → the DSN its reads use (its read replica when one is set).
    shards: dict[str, str] = field(default_factory=dict)
    #: The shards read but not placed on (``RUN_OPS_SHARDS_NOT_PLACED``).
    not_placed: frozenset[str] = frozenset()
    #: The shards that are aliases of the run-ops database: read from its
    #: pool (``dsns[RUN_OPS]``), never a database of their own.
    aliases: tuple[str, ...] = ()
    #: What the checks found unsafe but not refused (printed by ``check``,
    #: logged at start-up as warnings).
    warnings: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        lines = [f"split mode: {'ON' if self.split else 'off'}"]
        if self.sentinel is not None:
            lines.append(f"sentinel: {self.sentinel.verdict.value} ({self.sentinel.reason})")
        for role, dsn in self.dsns.items():
            lines.append(f"{role.value}: {redact_dsn(dsn)}")
        for char, dsn in self.shards.items():
            lines.append(f"{ShardRole(char).value}: {redact_dsn(dsn)} [{self._placed(char)}]")
        run_ops = self.dsns.get(DatabaseRole.RUN_OPS)
        for char in self.aliases:
            where = f" ({redact_dsn(run_ops)})" if run_ops else ""
            lines.append(f"{ShardRole(char).value}: alias of run-ops{where} [{self._placed(char)}]")
        return lines

    def _placed(self, char: str) -> str:
        return "not placed (read only)" if char in self.not_placed else "placed"


def decide_split(settings: Settings, *, probe_timeout_s: float = 5.0) -> SplitDecision:
    """Run the start-up checks in order (docs/design.md, "Split mode and
    safety interlocks") and decide the topology.

    Raises :class:`Refusal` when split is asked for and any check fails; the
    realtime interlock runs first and makes no network call.
    """
    cp_read = (
        settings.control_plane_database_read_replica_url or settings.control_plane_database_url
    )
    dsns = {DatabaseRole.CONTROL_PLANE: settings.control_plane_database_url}
    if cp_read != settings.control_plane_database_url:
        dsns[DatabaseRole.CONTROL_PLANE_REPLICA] = cp_read
    if not settings.run_ops_split_enabled:
        return SplitDecision(split=False, sentinel=None, dsns=dsns)

    check_realtime_interlock(
        split_enabled=True, realtime_native_enabled=settings.realtime_backend_native_enabled
    )
    if not settings.run_ops_database_url:
        raise Refusal(
            "RUN_OPS_NOT_CONFIGURED",
            "RUN_OPS_SPLIT_ENABLED is on but RUN_OPS_DATABASE_URL is not set: set it to "
            "the run-ops database or turn the split off",
        )
    run_ops_read = settings.run_ops_database_read_replica_url or settings.run_ops_database_url
    legacy = settings.run_ops_legacy_database_url or cp_read
    if settings.run_ops_shards:
        # Every pair of run locations must be distinct: legacy, run-ops and
        # each shard (their primaries: a replica shares its primary's identity).
        # An alias is not a location of its own: it *is* run-ops.
        sentinel = run_sentinel_all(
            [("legacy", legacy), ("run-ops", settings.run_ops_database_url)]
            + [(ShardRole(c).value, dsn) for c, dsn in settings.run_ops_shards],
            timeout_s=probe_timeout_s,
            strict=settings.sentinel_strict,
        )
    else:
        sentinel = run_sentinel(
            settings.run_ops_database_url,
            legacy,
            timeout_s=probe_timeout_s,
            strict=settings.sentinel_strict,
        )
    if not sentinel.allowed:
        raise Refusal("SENTINEL_" + sentinel.verdict.name, sentinel.reason)
    dsns[DatabaseRole.RUN_OPS] = run_ops_read
    dsns[DatabaseRole.LEGACY] = legacy
    replicas = dict(settings.run_ops_shard_read_replica_urls)
    shards = {c: replicas.get(c, dsn) for c, dsn in settings.run_ops_shards}
    return SplitDecision(
        split=True,
        sentinel=sentinel,
        dsns=dsns,
        shards=shards,
        not_placed=frozenset(settings.run_ops_shards_not_placed),
        aliases=tuple(settings.run_ops_shard_aliases),
        warnings=tuple(w for w in (flip_grace_warning(settings),) if w is not None),
    )


class Topology:
    """The open pools, one per distinct DSN, by role.

    ``control_plane_primary`` and ``control_plane_replica`` (where
    control-plane reads go: the primary itself when no replica is set), and
    under split ``run_ops`` and ``legacy``. Roles that share a DSN share one
    pool, named by the first of them.
    """

    def __init__(self, decision: SplitDecision, settings: Settings) -> None:
        self.decision = decision
        self.split = decision.split
        #: The id rule reads are routed by (RUN_OPS_ID_GENERATION).
        self.generation = Generation(settings.run_ops_id_generation)
        #: Minting in the base32hex generation: the region of v1 ids and the
        #: flag flip grace.
        self.region = settings.run_ops_region
        self.mint_flip_grace_ms = settings.run_ops_mint_flip_grace_ms
        #: How root run-ops ids are placed on shards (RUN_OPS_SHARD_PLACEMENT).
        self.shard_placement = settings.run_ops_shard_placement
        timeout_s = settings.db_timeout_ms / 1000
        by_dsn: dict[str, Database] = {}

        def pool_for(role: DatabaseRole, dsn: str) -> Database:
            # One pool per DSN: the legacy location usually *is* the
            # control-plane replica, and two pools would double connections.
            if dsn not in by_dsn:
                by_dsn[dsn] = Database(
                    role, dsn, max_size=settings.pool_max_size, timeout_s=timeout_s
                )
            return by_dsn[dsn]

        self.control_plane_primary = pool_for(
            DatabaseRole.CONTROL_PLANE, settings.control_plane_database_url
        )
        self.control_plane_replica = pool_for(
            DatabaseRole.CONTROL_PLANE_REPLICA,
            decision.dsns.get(
                DatabaseRole.CONTROL_PLANE_REPLICA, settings.control_plane_database_url
            ),
        )
        self.run_ops: Database | None = None
        self.legacy: Database | None = None
        #: Shard char → its pool; empty unless split is on and shards are set.
        #: An alias of run-ops maps to :attr:`run_ops` itself (no pool of its own).
        self.shards: dict[str, Database] = {}
        if self.split:
            self.run_ops = pool_for(DatabaseRole.RUN_OPS, decision.dsns[DatabaseRole.RUN_OPS])
            self.legacy = pool_for(DatabaseRole.LEGACY, decision.dsns[DatabaseRole.LEGACY])
            for char, dsn in decision.shards.items():
                # The sentinel proved every shard its own database: one pool each.
                # A ShardRole names the pool like a DatabaseRole does (``value``).
                self.shards[char] = pool_for(cast(DatabaseRole, ShardRole(char)), dsn)
            for char in decision.aliases:
                self.shards[char] = self.run_ops
        self.databases = list(by_dsn.values())

    def open(self, wait_s: float, cancel: threading.Event | None = None) -> None:
        """Open every pool and wait until each has a working connection.

        Raises :class:`~controlplane_resolver.errors.Unavailable` naming the
        database that did not answer, or
        :class:`~controlplane_resolver.errors.StartCancelled` once ``cancel``
        is set.
        """
        for db in self.databases:
            db.open(wait_s=wait_s, cancel=cancel)

    def close(self) -> None:
        for db in self.databases:
            db.close()

    def get_stats(self) -> dict[str, dict[str, int]]:
        """Each pool's counters (psycopg_pool's ``get_stats()``), by the
        name of the pool's role."""
        return {db.role.value: db.pool.get_stats() for db in self.databases}

    @property
    def shard_chars(self) -> list[str]:
        """The configured shards, aliases of run-ops included, each read (none
        with split off); new root runs are placed on those not in
        :attr:`not_placed_shards`."""
        return sorted(self.shards)

    @property
    def not_placed_shards(self) -> frozenset[str]:
        """The configured shards that get no new root runs (``RUN_OPS_SHARDS_NOT_PLACED``)."""
        return self.decision.not_placed

    def read_plan(
        self, route: Residency, shard: str | None = None
    ) -> list[tuple[RunSource, Database]]:
        """The databases a run read tries, in order, for a route (and, for a
        gen-2 id, the shard its id names: an alias's is :attr:`run_ops`,
        reported as ``RUN_OPS_SHARD`` like any shard).

        Raises :class:`FailedPrecondition` (``SHARD_NOT_CONFIGURED``) under
        split for a shard that is not configured: the run cannot be anywhere
        this server reads, and saying "not found" would be a guess."""
        if not self.split:
            return [(RunSource.CONTROL_PLANE, self.control_plane_replica)]
        assert self.run_ops is not None and self.legacy is not None
        if shard is not None:
            db = self.shards.get(shard)
            if db is None:
                configured = ", ".join(sorted(self.shards)) or "none"
                raise FailedPrecondition(
                    f"the id names run-ops shard {shard!r}, which this server does not "
                    f"configure (RUN_OPS_SHARDS: {configured}); add the shard and restart",
                    reason="SHARD_NOT_CONFIGURED",
                    metadata={"shard": shard},
                )
            return [(RunSource.RUN_OPS_SHARD, db)]
        if route is Residency.NEW:
            return [(RunSource.RUN_OPS, self.run_ops)]
        return [(RunSource.RUN_OPS, self.run_ops), (RunSource.LEGACY, self.legacy)]
