"""The SQL of ``cleanup``, apart from the serving path's.

It runs over plain psycopg connections (one per database, outside the
serving pools), on the primary of each location. Deletes are keyed on an
indexed column and bounded: ``DELETE … WHERE "id" IN (SELECT "id" … LIMIT
n)``, and the caller owns each batch's transaction.
"""

from __future__ import annotations

from typing import Any

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


def count_rows(conn: psycopg.Connection[Any], table: str, key_column: str, key: str) -> int:
    """``count(*)`` of ``table`` rows whose ``key_column`` is ``key``."""
    statement = psycopg_sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
        psycopg_sql.Identifier(table), psycopg_sql.Identifier(key_column)
    )
    row = conn.execute(statement, (key,)).fetchone()
    return int(row[0]) if row else 0


def delete_batch(
    conn: psycopg.Connection[Any], table: str, key_column: str, id_column: str, key: str, limit: int
) -> int:
    """Delete at most ``limit`` rows of ``table`` whose ``key_column`` is
    ``key``; returns how many went. The caller owns the transaction."""
    statement = psycopg_sql.SQL(
        "DELETE FROM {table} WHERE {id} IN (SELECT {id} FROM {table} WHERE {key} = %s LIMIT %s)"
    ).format(
        table=psycopg_sql.Identifier(table),
        id=psycopg_sql.Identifier(id_column),
        key=psycopg_sql.Identifier(key_column),
    )
    return conn.execute(statement, (key, limit)).rowcount
