"""``controlplane-resolver cleanup``: delete a deleted environment's or
project's run data, safely (docs/design.md, "Cleanup").

What it deletes, and where
--------------------------
Every run-owned table of :data:`STEPS` (``admin/cleanup_queries.py``), children
first: the target environments' rows, found through indexed columns (the
environment id where the table has an index on it, else the environment's run
ids), in every *run location*:

* the run-ops database (``RUN_OPS_DATABASE_URL``), when configured;
* every run-ops shard (``RUN_OPS_SHARDS``; their primaries); an alias of
  run-ops is the run-ops database, cleaned once;
* the legacy location — where legacy runs are written:
  ``RUN_OPS_LEGACY_DATABASE_URL`` when set, else the control-plane primary
  (never its read replica: deletes need the primary). Under split it holds
  the legacy runs; with split off it is where *every* run lives, so it is
  cleaned then too. If ``RUN_OPS_LEGACY_DATABASE_URL`` points at a read
  replica, pass the primary's DSN with ``--run-ops-legacy-database-url``.

A location is cleaned of the tables it has (run-ops and the control plane
name the waitpoint edges differently; only the control plane has
``"BulkActionItem"``). ``--project`` also deletes the project's
``"TaskRunTag"`` rows.

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
* Bounded batches: ``DELETE … WHERE "id" IN (SELECT "id" … WHERE <key> …
  LIMIT n)``, each batch its own transaction, each logged. A table is emptied
  of the target's rows before any table it references or is reached through,
  so an interrupted cleanup (the batch in flight rolled back) leaves every
  remaining row reachable, and re-running continues where it stopped.
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


Step = cleanup_queries.Step

#: Run data, children first (see :data:`.cleanup_queries.STEPS`).
STEPS: tuple[Step, ...] = cleanup_queries.STEPS


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
    tables: dict[str, list[str]] = field(default_factory=dict)
    """The tables each location was cleaned of, in order (location name → tables)."""

    def lines(self) -> list[str]:
        """The report printed to stdout: one line per location and table."""
        verb = "would delete" if self.dry_run else "deleted"
        head = f"cleanup of {self.target}: {len(self.environment_ids)} environment(s)" + (
            " (dry run: nothing was deleted)" if self.dry_run else ""
        )
        out = [head]
        for location in self.locations:
            for table in self.tables.get(location.name, []):
                n = self.counts.get((location.name, table), 0)
                out.append(f'  {location.label}: "{table}" {verb} {n}')
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
    # Every shard holds runs of its own (gen-2 ids), whatever the split mode:
    # a deleted environment's runs may be on any of them.
    roles.extend((f"run-ops shard {char}", dsn) for char, dsn in settings.run_ops_shards)
    if settings.run_ops_database_url:
        # An alias of run-ops is the run-ops database: merged with it below
        # (one location, cleaned once, named for both).
        roles.extend(
            (f"run-ops shard {char}", settings.run_ops_database_url)
            for char in settings.run_ops_shard_aliases
        )
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
    conn: psycopg.Connection[Any], step: Step, params: dict[str, Any], batch_size: int
) -> Iterator[int]:
    """Delete ``step``'s rows of the target in bounded batches, each its own
    transaction, until none is left; yields each batch's count. A ``runs``
    step works through the collected run ids a page at a time."""
    pages: Iterator[dict[str, Any]]
    if step.scope == "runs":
        pages = ({**params, "runs": page} for page in cleanup_queries.run_pages(conn, batch_size))
    else:
        pages = iter([params])
    for page_params in pages:
        while True:
            with conn.transaction():
                deleted = cleanup_queries.delete_batch(conn, step, page_params, batch_size)
            yield deleted
            if deleted < batch_size:
                break


def _applicable(step: Step, present: set[str], *, project: bool) -> bool:
    return (
        step.table in present
        and set(step.reads) <= present
        and (step.scope != "project" or project)
    )


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
            present = cleanup_queries.existing_tables(conn, sorted({s.table for s in STEPS}))
            steps = [s for s in STEPS if _applicable(s, present, project=project_id is not None)]
            report.tables[location.name] = [s.table for s in steps]
            for step in steps:
                report.counts[(location.name, step.table)] = 0
            scopes: list[tuple[str, dict[str, Any], list[Step]]] = [
                (
                    f"environment {env_id}",
                    {"env": env_id},
                    [s for s in steps if s.scope != "project"],
                )
                for env_id in env_ids
            ]
            if project_id is not None:
                scopes.append(
                    (
                        f"project {project_id}",
                        {"project": project_id},
                        [s for s in steps if s.scope == "project"],
                    )
                )
            for what, params, scope_steps in scopes:
                _clean(conn, location, report, what, params, scope_steps, dry_run, batch_size)
    return report


def _clean(
    conn: psycopg.Connection[Any],
    location: Location,
    report: CleanupReport,
    what: str,
    params: dict[str, Any],
    steps: list[Step],
    dry_run: bool,
    batch_size: int,
) -> None:
    """Count (dry) or delete one target's rows of ``steps`` in one location."""
    if dry_run:
        for step in steps:
            report.counts[(location.name, step.table)] += cleanup_queries.count_rows(
                conn, step, params
            )
        return
    if any(s.scope in ("runs", "all runs") for s in steps):
        cleanup_queries.collect_runs(conn, params["env"])
    for step in steps:
        key = (location.name, step.table)
        batch = 0
        for deleted in _batches(conn, step, params, batch_size):
            if not deleted:
                continue
            batch += 1
            report.counts[key] += deleted
            log.info(
                '%s: deleted %d row(s) from "%s" of %s (batch %d, %d so far)',
                location.label,
                deleted,
                step.table,
                what,
                batch,
                report.counts[key],
            )


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
