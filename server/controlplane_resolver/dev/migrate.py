"""The project's compatible subset of the platform's schema, for dev mode
and tests (``controlplane-resolver migrate``).

A database is migrated once: the schema is created in one transaction
together with a marker table. Running again finds the marker and re-applies
only the schema's idempotent tail (everything after :data:`UPGRADE_LINE`:
``CREATE TABLE IF NOT EXISTS``, ``CREATE INDEX IF NOT EXISTS``, foreign keys
dropped if present and added again), so a database migrated before gains the
tables added since; it reports ``upgraded`` when that created a table, index or
constraint, else ``already migrated``. A database that already holds the
platform's own tables (it has ``"RuntimeEnvironment"`` or ``"TaskRun"`` but no
marker) is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import psycopg

from controlplane_resolver.dev.clusters import LocalCluster

MARKER_TABLE = "_controlplane_resolver_schema"

#: The line of a schema file after which every statement is idempotent.
UPGRADE_LINE = "-- controlplane-resolver: idempotent from here"

# Names of the relations and constraints in the public schema: what an
# upgrade may add.
_OBJECTS = """
SELECT count(*) FROM (
    SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace
) o
"""


class MigrationRefused(RuntimeError):
    pass


def schema_sql(name: str) -> str:
    """The SQL of ``schema/<name>.sql`` (``control_plane`` or ``run_ops``)."""
    return resources.files("controlplane_resolver.dev").joinpath(f"schema/{name}.sql").read_text()


def upgrade_sql(name: str) -> str:
    """The idempotent tail of ``schema/<name>.sql`` (empty when it has none)."""
    _, found, tail = schema_sql(name).partition(UPGRADE_LINE)
    return tail if found else ""


def migrate(dsn: str, schema: str) -> str:
    """Create ``schema`` in the database at ``dsn`` if it is not there yet,
    else re-apply its idempotent tail.

    Returns ``"created"``, ``"upgraded"`` or ``"already migrated"``; raises
    :class:`MigrationRefused` for a database holding the platform's own tables.
    """
    with psycopg.connect(dsn) as conn:
        # One migration at a time per database, even from parallel processes.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (MARKER_TABLE,))
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass('\"RuntimeEnvironment\"') IS NOT NULL"
            " OR to_regclass('\"TaskRun\"') IS NOT NULL",
            (f'"{MARKER_TABLE}"',),
        ).fetchone()
        assert row is not None
        marked, platform_tables = row
        if marked:
            upgrade = upgrade_sql(schema)
            if not upgrade.strip():
                return "already migrated"
            before = conn.execute(_OBJECTS).fetchone()
            conn.execute(upgrade)
            after = conn.execute(_OBJECTS).fetchone()
            return "already migrated" if before == after else "upgraded"
        if platform_tables:
            raise MigrationRefused(
                "this database already holds the platform's tables and was not created by "
                "`controlplane-resolver migrate`: it is left untouched. Point the resolver at it "
                "directly; migrate is only for empty dev/test databases."
            )
        conn.execute(schema_sql(schema))
        conn.execute(
            f'CREATE TABLE "{MARKER_TABLE}" (schema TEXT NOT NULL, '
            "applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        conn.execute(f'INSERT INTO "{MARKER_TABLE}" (schema) VALUES (%s)', (schema,))
    return "created"


@dataclass(frozen=True)
class RunLocations:
    """The DSNs of a migrated set of throwaway databases."""

    control_plane: str
    run_ops: str
    #: Shard char → DSN of that shard's run-ops database.
    shards: dict[str, str]


def create_migrated(clusters: Sequence[LocalCluster], shard_chars: Sequence[str]) -> RunLocations:
    """Create and migrate the control-plane database on ``clusters[0]``, the
    run-ops database on ``clusters[1]`` and one run-ops database per shard
    char on each cluster after them (started clusters, one per shard)."""
    cp = clusters[0].create_database("platform")
    run_ops = clusters[1].create_database("run_ops")
    shards = {
        c: cluster.create_database("run_ops")
        for c, cluster in zip(shard_chars, clusters[2:], strict=True)
    }
    migrate(cp, "control_plane")
    for dsn in (run_ops, *shards.values()):
        migrate(dsn, "run_ops")
    return RunLocations(cp, run_ops, shards)
