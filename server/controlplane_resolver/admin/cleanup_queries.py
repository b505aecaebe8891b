"""The SQL of ``cleanup``, apart from the serving path's.

It runs over plain psycopg connections (one per database, outside the
serving pools), on the primary of each location. Deletes are keyed on an
indexed column and bounded: ``DELETE … WHERE "id" IN (SELECT "id" … LIMIT
n)``, and the caller owns each batch's transaction.

:data:`STEPS` is what is deleted, in order, and how each table is reached
(docs/design.md, "Cleanup"). The indexes named there were checked against the
platform's own schema (run-ops and control-plane migrations); the compatible
schema in ``dev/schema`` carries the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql as psycopg_sql

from controlplane_resolver.domain.values import EnvironmentLifecycle, ProjectLifecycle

CLEANUP_ENVIRONMENT = """
SELECT e."id", e."projectId", e."archivedAt", p."deletedAt" AS "projectDeletedAt"
  FROM "RuntimeEnvironment" e
  JOIN "Project" p ON p."id" = e."projectId"
 WHERE e."id" = %s
"""
CLEANUP_PROJECT = 'SELECT "id", "deletedAt" FROM "Project" WHERE "id" = %s'
# "RuntimeEnvironment"("projectId", "shortcode") is a unique index: this is
# an index scan, unlike anything keyed on "TaskRun"."projectId".
CLEANUP_PROJECT_ENVIRONMENTS = """
SELECT e."id", e."projectId", e."archivedAt", p."deletedAt" AS "projectDeletedAt"
  FROM "RuntimeEnvironment" e
  JOIN "Project" p ON p."id" = e."projectId"
 WHERE e."projectId" = %s
 ORDER BY e."id"
"""


def _lifecycle(r: Any) -> EnvironmentLifecycle:
    return EnvironmentLifecycle(id=r[0], project_id=r[1], archived_at=r[2], project_deleted_at=r[3])


def environment_lifecycle(
    conn: psycopg.Connection[Any], environment_id: str
) -> EnvironmentLifecycle | None:
    """The environment's lifecycle, or ``None`` when it no longer exists."""
    row = conn.execute(CLEANUP_ENVIRONMENT, (environment_id,)).fetchone()
    return _lifecycle(row) if row else None


def project_lifecycle(conn: psycopg.Connection[Any], project_id: str) -> ProjectLifecycle | None:
    row = conn.execute(CLEANUP_PROJECT, (project_id,)).fetchone()
    return ProjectLifecycle(id=row[0], deleted_at=row[1]) if row else None


def project_environments(
    conn: psycopg.Connection[Any], project_id: str
) -> list[EnvironmentLifecycle]:
    """Every environment of the project (soft-deleted project included), by id."""
    return [_lifecycle(r) for r in conn.execute(CLEANUP_PROJECT_ENVIRONMENTS, (project_id,))]


# ------------------------------------------------------------------ run data

#: The temporary table (one per connection) holding the run ids of the
#: environment being cleaned: paged through by id, so each table's pass reads
#: every run once rather than the whole environment per batch.
RUN_IDS = "cleanup_run_ids"

Scope = Literal["environment", "runs", "all runs", "project"]


@dataclass(frozen=True)
class Step:
    """One table of run data, and how its rows of a target are found.

    ``condition`` is SQL over ``table``'s columns. ``environment`` and
    ``all runs`` steps are deleted in batches over the whole environment;
    ``runs`` steps page through the environment's run ids (``{runs}`` is
    replaced by a set of run ids) and delete in batches per page; ``project``
    steps run once per ``--project`` target. ``%(env)s``/``%(project)s`` are
    the target's ids. ``reads`` names the other tables the condition reads;
    ``index`` the ``(table, column)`` whose index leads the lookup (``None``:
    the platform's schema indexes nothing usable). ``row_key`` is ``ctid``
    for Prisma's implicit many-to-many tables, which have no id.
    """

    table: str
    scope: Scope
    condition: str
    index: tuple[str, str] | None
    reads: tuple[str, ...] = ()
    row_key: str = "id"


_SNAPSHOTS_OF_RUNS = 'SELECT "id" FROM "TaskRunExecutionSnapshot" WHERE "runId" IN ({runs})'

#: Run data, children first: a table comes before every table it references
#: with ON DELETE CASCADE or RESTRICT (so neither ever fires, and counts are
#: exact) and, where the order allows, with SET NULL (so no row is updated
#: just before it is deleted; "TaskRun"'s own references to its batch and
#: parent attempt, and snapshots' to their "TaskRunCheckpoint", are the
#: exceptions),
#: and a table reached through another comes before that one (so an
#: interrupted cleanup never strands a row the next run cannot reach). Tables
#: a location lacks are skipped there (run-ops has "CompletedWaitpoint" and
#: "WaitpointRunConnection"; the control plane their Prisma join tables and
#: "BulkActionItem").
STEPS: tuple[Step, ...] = (
    Step("BatchTaskRunItem", "runs", '"taskRunId" IN ({runs})', ("BatchTaskRunItem", "taskRunId")),
    Step(
        "BatchTaskRunError",
        "environment",
        '"batchTaskRunId" IN '
        '(SELECT "id" FROM "BatchTaskRun" WHERE "runtimeEnvironmentId" = %(env)s)',
        ("BatchTaskRunError", "batchTaskRunId"),
        reads=("BatchTaskRun",),
    ),
    Step(
        "TaskRunDependency", "runs", '"taskRunId" IN ({runs})', ("TaskRunDependency", "taskRunId")
    ),
    Step(
        "CompletedWaitpoint",
        "runs",
        f'"snapshotId" IN ({_SNAPSHOTS_OF_RUNS})',
        ("CompletedWaitpoint", "snapshotId"),
        reads=("TaskRunExecutionSnapshot",),
    ),
    Step(
        "_completedWaitpoints",
        "runs",
        f'"A" IN ({_SNAPSHOTS_OF_RUNS})',
        ("_completedWaitpoints", "A"),
        reads=("TaskRunExecutionSnapshot",),
        row_key="ctid",
    ),
    Step("TaskRunWaitpoint", "runs", '"taskRunId" IN ({runs})', ("TaskRunWaitpoint", "taskRunId")),
    Step(
        "WaitpointRunConnection",
        "runs",
        '"taskRunId" IN ({runs})',
        ("WaitpointRunConnection", "taskRunId"),
    ),
    Step(
        "_WaitpointRunConnections",
        "runs",
        '"A" IN ({runs})',
        ("_WaitpointRunConnections", "A"),
        row_key="ctid",
    ),
    Step("Waitpoint", "environment", '"environmentId" = %(env)s', ("Waitpoint", "environmentId")),
    Step(
        "WaitpointTag",
        "environment",
        '"environmentId" = %(env)s',
        ("WaitpointTag", "environmentId"),
    ),
    Step(
        "BatchTaskRun",
        "environment",
        '"runtimeEnvironmentId" = %(env)s',
        ("BatchTaskRun", "runtimeEnvironmentId"),
    ),
    Step(
        "CheckpointRestoreEvent", "runs", '"runId" IN ({runs})', ("CheckpointRestoreEvent", "runId")
    ),
    Step("Checkpoint", "runs", '"runId" IN ({runs})', ("Checkpoint", "runId")),
    Step("TaskRunAttempt", "runs", '"taskRunId" IN ({runs})', ("TaskRunAttempt", "taskRunId")),
    Step(
        "TaskRunCheckpoint",
        "runs",
        '"id" IN (SELECT "checkpointId" FROM "TaskRunExecutionSnapshot" WHERE "runId" IN ({runs}))',
        ("TaskRunExecutionSnapshot", "runId"),
        reads=("TaskRunExecutionSnapshot",),
    ),
    Step(
        "TaskRunExecutionSnapshot",
        "runs",
        '"runId" IN ({runs})',
        ("TaskRunExecutionSnapshot", "runId"),
    ),
    # No index but the primary key on the platform: one sequential scan per
    # batch, over the whole environment's run ids rather than per page.
    Step(
        "BulkActionItem",
        "all runs",
        '"sourceRunId" IN ({runs}) OR "destinationRunId" IN ({runs})',
        None,
    ),
    Step(
        "TaskRun",
        "environment",
        '"runtimeEnvironmentId" = %(env)s',
        ("TaskRun", "runtimeEnvironmentId"),
    ),
    Step("TaskRunTag", "project", '"projectId" = %(project)s', ("TaskRunTag", "projectId")),
)

_RUNS_OF_PAGE = "SELECT unnest(%(runs)s::text[])"
_RUNS_COLLECTED = f'SELECT "id" FROM pg_temp."{RUN_IDS}"'
_RUNS_OF_ENVIRONMENT = 'SELECT "id" FROM "TaskRun" WHERE "runtimeEnvironmentId" = %(env)s'


def existing_tables(conn: psycopg.Connection[Any], tables: list[str]) -> set[str]:
    """Those of ``tables`` this database has."""
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
        (tables,),
    )
    return {r[0] for r in rows}


def _condition(step: Step, runs: str) -> psycopg_sql.Composable:
    return psycopg_sql.SQL(step.condition.replace("{runs}", runs))


def count_rows(conn: psycopg.Connection[Any], step: Step, params: dict[str, Any]) -> int:
    """How many rows of ``step`` the target has (``params``: ``env`` or
    ``project``); reads the run table itself, so it needs no temporary table."""
    statement = psycopg_sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        psycopg_sql.Identifier(step.table), _condition(step, _RUNS_OF_ENVIRONMENT)
    )
    row = conn.execute(statement, params).fetchone()
    return int(row[0]) if row else 0


def delete_batch(
    conn: psycopg.Connection[Any], step: Step, params: dict[str, Any], limit: int
) -> int:
    """Delete at most ``limit`` rows of ``step`` (``params``: ``env``,
    ``project`` or ``runs``, a page of run ids); returns how many went. The
    caller owns the transaction."""
    runs = _RUNS_OF_PAGE if step.scope == "runs" else _RUNS_COLLECTED
    table = psycopg_sql.Identifier(step.table)
    if step.row_key == "ctid":
        template = (
            "DELETE FROM {t} WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM {t} WHERE {c} LIMIT %(limit)s))"
        )
    else:
        template = 'DELETE FROM {t} WHERE "id" IN (SELECT "id" FROM {t} WHERE {c} LIMIT %(limit)s)'
    statement = psycopg_sql.SQL(template).format(t=table, c=_condition(step, runs))
    return conn.execute(statement, {**params, "limit": limit}).rowcount


def collect_runs(conn: psycopg.Connection[Any], environment_id: str) -> int:
    """Fill this connection's temporary :data:`RUN_IDS` with the environment's
    run ids (one index scan); returns how many."""
    conn.execute(f'DROP TABLE IF EXISTS pg_temp."{RUN_IDS}"')
    conn.execute(f'CREATE TEMPORARY TABLE "{RUN_IDS}" ("id" TEXT PRIMARY KEY)')
    n = conn.execute(
        f'INSERT INTO pg_temp."{RUN_IDS}" '
        'SELECT "id" FROM "TaskRun" WHERE "runtimeEnvironmentId" = %s',
        (environment_id,),
    ).rowcount
    conn.execute(f'ANALYZE pg_temp."{RUN_IDS}"')
    return n


def run_pages(conn: psycopg.Connection[Any], size: int) -> Iterator[list[str]]:
    """The collected run ids, ``size`` at a time, in id order (keyset on the
    temporary table's primary key)."""
    after = ""
    while True:
        page = [
            r[0]
            for r in conn.execute(
                f'SELECT "id" FROM pg_temp."{RUN_IDS}" WHERE "id" > %s ORDER BY "id" LIMIT %s',
                (after, size),
            )
        ]
        if not page:
            return
        yield page
        after = page[-1]
