"""``controlplane-resolver cleanup``: delete a deleted environment's or
project's run data, safely (docs/design.md, "Cleanup").

What it deletes, and where
--------------------------
The rows of :data:`RUN_DATA_TABLES` (children before parents; today only
``"TaskRun"``) whose ``"runtimeEnvironmentId"`` is one of the target's
environments, in every *run location*:

* the run-ops database (``RUN_OPS_DATABASE_URL``), when configured;
* the legacy location — where legacy runs are written:
  ``RUN_OPS_LEGACY_DATABASE_URL`` when set, else the control-plane primary
  (never its read replica: deletes need the primary). Under split it holds
  the legacy runs; with split off it is where *every* run lives, so it is
  cleaned then too. If ``RUN_OPS_LEGACY_DATABASE_URL`` points at a read
  replica, pass the primary's DSN with ``--run-ops-legacy-database-url``.

Locations that are one physical database (same ``system_identifier`` and
database name, :func:`~controlplane_resolver.storage.identity.probe_identity`) are cleaned once.

``--project`` finds the project's environments in the control-plane database
(through the indexed ``"RuntimeEnvironment"."projectId"``; a soft-deleted
project's too) and deletes per environment: a delete is never keyed on
``"TaskRun"."projectId"``, which has no index: such a delete would scan the
whole run table.

Safety
------
* Refuses (:class:`~controlplane_resolver.errors.Refusal`, exit 3) when a target environment
  still exists and is neither archived nor in a soft-deleted project. An
  environment id the control-plane database no longer has is cleaned (its
  run-ops rows have no foreign key to disappear with it); a project id it
  does not have is an error (its environment ids cannot be found).
* Bounded batches: ``DELETE … WHERE "id" IN (SELECT "id" … WHERE <key> = %s
  LIMIT n)``, each batch its own transaction, each logged. Interrupting loses
  at most the batch in flight (rolled back); re-running continues where it
  stopped, since it simply deletes what is left.
* ``--dry-run`` counts what would be deleted and deletes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from controlplane_resolver.admin import cleanup_queries
from controlplane_resolver.config import Settings, redact_dsn
from controlplane_resolver.domain.values import EnvironmentLifecycle
from controlplane_resolver.errors import ConfigError, Refusal, Unavailable
from controlplane_resolver.storage.identity import DatabaseIdentity, probe_identity

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class TableKey:
    """One table of run data: deleted by ``key_column`` (an indexed column
    holding the environment id), in batches of ``id_column`` values."""

    table: str
    key_column: str
    id_column: str = "id"


#: Run data, children before parents: a table whose rows reference another's
#: must come before it. Add tables here as the schema subset grows.
RUN_DATA_TABLES: tuple[TableKey, ...] = (TableKey("TaskRun", "runtimeEnvironmentId"),)


class CleanupError(Exception):
    """The cleanup cannot run as asked (a target that cannot be found)."""


@dataclass(frozen=True)
class Location:
    """A database run data lives in. ``name`` may join several roles that
    turned out to be one physical database (``run-ops = legacy``)."""

    name: str
    dsn: str

    @property
    def label(self) -> str:
        return f"{self.name} ({redact_dsn(self.dsn)})"


@dataclass
class CleanupReport:
    """What a cleanup did (or, dry, would do): rows per location and table."""

    target: str
    environment_ids: list[str]
    locations: list[Location]
    dry_run: bool
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report printed to stdout: one line per location and table."""
        verb = "would delete" if self.dry_run else "deleted"
        head = f"cleanup of {self.target}: {len(self.environment_ids)} environment(s)" + (
            " (dry run: nothing was deleted)" if self.dry_run else ""
        )
        out = [head]
        for location in self.locations:
            for t in RUN_DATA_TABLES:
                n = self.counts.get((location.name, t.table), 0)
                out.append(f'  {location.label}: "{t.table}" {verb} {n}')
        return out


def run_locations(settings: Settings) -> list[tuple[str, str]]:
    """``(role, dsn)`` of every run location, before de-duplication."""
    if settings.run_ops_split_enabled and not settings.run_ops_database_url:
        raise ConfigError(
            "RUN_OPS_SPLIT_ENABLED is on but RUN_OPS_DATABASE_URL is not set: set "
            "it to the run-ops database"
        )
    roles: list[tuple[str, str]] = []
    if settings.run_ops_database_url:
        roles.append(("run-ops", settings.run_ops_database_url))
    legacy = settings.run_ops_legacy_database_url or settings.control_plane_database_url
    roles.append(("legacy" if settings.run_ops_split_enabled else "control-plane", legacy))
    return roles


def distinct_locations(
    roles: list[tuple[str, str]], probe: Callable[[str], DatabaseIdentity] = probe_identity
) -> list[Location]:
    """Merge roles that are one physical database (never by comparing DSNs).
    A probe that fails raises :class:`Unavailable` naming the role."""
    merged: dict[DatabaseIdentity, tuple[list[str], str]] = {}
    for role, dsn in roles:
        try:
            identity = probe(dsn)
        except psycopg.Error as exc:
            raise Unavailable(
                f"could not reach the {role} database ({redact_dsn(dsn)}): {type(exc).__name__}"
            ) from None
        names, _ = merged.setdefault(identity, ([], dsn))
        names.append(role)
    return [Location(" = ".join(names), dsn) for names, dsn in merged.values()]


def target_environments(
    conn: psycopg.Connection[Any], *, environment_id: str | None, project_id: str | None
) -> tuple[str, list[str]]:
    """``(description, environment ids)`` of the target, after the safety check.

    Raises :class:`Refusal` naming every live environment, and
    :class:`CleanupError` for a project the control-plane database lacks.
    """
    if (environment_id is None) == (project_id is None):
        raise ValueError("give exactly one of environment_id, project_id")
    if environment_id is not None:
        env = cleanup_queries.environment_lifecycle(conn, environment_id)
        _refuse_live([env] if env else [])
        if env is None:
            log.info(
                "environment %s is not in the control-plane database: cleaning its "
                "remaining run data",
                environment_id,
            )
        return f"environment {environment_id}", [environment_id]
    assert project_id is not None
    project = cleanup_queries.project_lifecycle(conn, project_id)
    if project is None:
        raise CleanupError(
            f"project {project_id} is not in the control-plane database, so its environment "
            'ids cannot be found (deletes are never keyed on "TaskRun"."projectId", which '
            "has no index): run cleanup --environment for each of its environment ids"
        )
    envs = cleanup_queries.project_environments(conn, project_id)
    _refuse_live(envs)
    return f"project {project_id}", [e.id for e in envs]


def _refuse_live(envs: list[EnvironmentLifecycle]) -> None:
    live = [e.id for e in envs if e.live]
    if live:
        raise Refusal(
            "CLEANUP_TARGET_LIVE",
            f"environment(s) {', '.join(live)} still exist and are neither archived nor in a "
            "soft-deleted project: their runs are in use. Archive the environment or delete "
            "the project first, then run cleanup again.",
        )


def _batches(
    conn: psycopg.Connection[Any], t: TableKey, environment_id: str, batch_size: int
) -> Iterator[int]:
    """Delete in bounded batches until none is left; yields each batch's count."""
    while True:
        with conn.transaction():
            deleted = cleanup_queries.delete_batch(
                conn, t.table, t.key_column, t.id_column, environment_id, batch_size
            )
        yield deleted
        if deleted < batch_size:
            return


def run_cleanup(
    settings: Settings,
    *,
    environment_id: str | None = None,
    project_id: str | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CleanupReport:
    """Check the target, then delete (or count) its run data everywhere.

    Raises :class:`Refusal` for a live target, :class:`CleanupError` for an
    unknown project, :class:`Unavailable` when a database cannot be reached,
    :class:`~.config.ConfigError` for a split without a run-ops database.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be 1 or more")
    roles = run_locations(settings)
    with _connect("control-plane", settings.control_plane_database_url) as cp:
        target, env_ids = target_environments(
            cp, environment_id=environment_id, project_id=project_id
        )
    locations = distinct_locations(roles)
    report = CleanupReport(
        target=target, environment_ids=env_ids, locations=locations, dry_run=dry_run
    )
    for location in locations:
        with _connect(location.name, location.dsn) as conn:
            for t in RUN_DATA_TABLES:
                key = (location.name, t.table)
                report.counts[key] = 0
                for env_id in env_ids:
                    if dry_run:
                        report.counts[key] += cleanup_queries.count_rows(
                            conn, t.table, t.key_column, env_id
                        )
                        continue
                    for batch, deleted in enumerate(_batches(conn, t, env_id, batch_size), 1):
                        report.counts[key] += deleted
                        log.info(
                            '%s: deleted %d row(s) from "%s" of environment %s '
                            "(batch %d, %d so far)",
                            location.label,
                            deleted,
                            t.table,
                            env_id,
                            batch,
                            report.counts[key],
                        )
    return report


@contextmanager
def _connect(role: str, dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection (each batch opens its own transaction);
    driver failures become :class:`Unavailable` naming the role, never the DSN."""
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=10,
            application_name="controlplane-resolver:cleanup",
        )
    except psycopg.OperationalError as exc:
        raise Unavailable(
            f"could not connect to the {role} database ({redact_dsn(dsn)}): {type(exc).__name__}"
        ) from None
    try:
        yield conn
    except psycopg.OperationalError as exc:
        raise Unavailable(
            f"lost the {role} database ({redact_dsn(dsn)}): {type(exc).__name__}; "
            "committed batches stay deleted, re-run to finish"
        ) from None
    finally:
        conn.close()
