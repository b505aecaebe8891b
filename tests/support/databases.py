"""Real PostgreSQL for the tests: where the session's two databases come
from, and small helpers over them.

Databases come from, in order of preference:

1. DSNs in the environment: ``RESOLVER_TEST_CONTROL_PLANE_DSN`` and
   ``RESOLVER_TEST_RUN_OPS_DSN`` (two *distinct* clusters, empty or already
   migrated by ``controlplane-resolver migrate``);
2. throwaway local clusters started from the machine's PostgreSQL binaries
   (:mod:`controlplane_resolver.dev.clusters`; the default here and in CI);
3. testcontainers, when ``RESOLVER_TEST_USE_DOCKER=1`` and a Docker engine runs.

Each test writes rows with fresh random ids (``demo.insert_*``), so tests
share the session's databases without seeing each other's data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster
from controlplane_resolver.dev.migrate import migrate

#: Lets tests count the queries a database really ran (pg_stat_statements).
STAT_STATEMENTS = {"shared_preload_libraries": "pg_stat_statements"}


@dataclass
class Databases:
    control_plane: str
    run_ops: str


def _docker_postgres(stack: list[Any]) -> Databases:
    from testcontainers.postgres import PostgresContainer

    dsns = []
    for _ in range(2):
        container = PostgresContainer("postgres:15", driver=None).start()
        stack.append(container)
        dsns.append(container.get_connection_url())
    return Databases(*dsns)


@contextmanager
def session_databases() -> Iterator[Databases]:
    """Two migrated databases on two distinct clusters, removed on exit
    when this started them."""
    started: list[Any] = []
    if os.environ.get("RESOLVER_TEST_CONTROL_PLANE_DSN"):
        dbs = Databases(
            os.environ["RESOLVER_TEST_CONTROL_PLANE_DSN"], os.environ["RESOLVER_TEST_RUN_OPS_DSN"]
        )
    elif os.environ.get("RESOLVER_TEST_USE_DOCKER") == "1":
        dbs = _docker_postgres(started)
    else:
        cp = LocalCluster("test-cp", settings=STAT_STATEMENTS).start()
        started.append(cp)
        ro = LocalCluster("test-ro", settings=STAT_STATEMENTS).start()
        started.append(ro)
        dbs = Databases(cp.create_database("platform"), ro.create_database("run_ops"))
    try:
        migrate(dbs.control_plane, "control_plane")
        migrate(dbs.run_ops, "run_ops")
        for dsn in (dbs.control_plane, dbs.run_ops):
            with psycopg.connect(dsn, autocommit=True) as conn:
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                except psycopg.Error:
                    pass  # external DSNs may not preload it; query-counting tests say so
        yield dbs
    finally:
        for thing in started:
            if isinstance(thing, LocalCluster):
                thing.destroy()
            else:
                thing.stop()


@contextmanager
def own_cluster_pair() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """Two migrated clusters of the caller's own, free to stop and start."""
    clusters = [LocalCluster("own-cp").start(), LocalCluster("own-ro").start()]
    try:
        migrate(clusters[0].dsn(), "control_plane")
        migrate(clusters[1].dsn(), "run_ops")
        yield clusters[0], clusters[1]
    finally:
        for c in clusters:
            c.destroy()


@dataclass
class Tenant:
    """An organization with a project, ready for environments."""

    organization_id: str
    project_id: str

    def environment(
        self, conn: psycopg.Connection[Any], type: str = "PRODUCTION", **overrides: Any
    ) -> str:
        return demo.insert_environment(
            conn,
            project_id=self.project_id,
            organization_id=self.organization_id,
            type=type,
            **overrides,
        )


def new_tenant(conn: psycopg.Connection[Any]) -> Tenant:
    """A fresh organization and project in the control-plane database."""
    org = demo.insert_organization(conn)
    project = demo.insert_project(conn, organization_id=org)
    return Tenant(org, project)


def count_queries(conn: psycopg.Connection[Any], fragment: str) -> int:
    """How many times statements containing ``fragment`` ran (all users,
    all sessions) according to pg_stat_statements."""
    row = conn.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
        (f"%{fragment}%",),
    ).fetchone()
    assert row is not None
    return int(row[0])
