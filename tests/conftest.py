"""Fixtures: real PostgreSQL and real gRPC servers.

Databases come from, in order of preference:

1. DSNs in the environment: ``RESOLVER_TEST_CONTROL_PLANE_DSN`` and
   ``RESOLVER_TEST_RUN_OPS_DSN`` (two *distinct* clusters, empty or already
   migrated by ``controlplane-resolver migrate``);
2. throwaway local clusters started from the machine's PostgreSQL binaries
   (``localpg``; the default here and in CI);
3. testcontainers, when ``RESOLVER_TEST_USE_DOCKER=1`` and a Docker engine runs.

Each test writes rows with fresh random ids (``demo.insert_*``), so tests
share the session's databases without seeing each other's data. Tests that
stop a database get clusters of their own (``own_clusters``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from credentials import pki, tokens  # noqa: F401  (fixtures for the security tests)

from controlplane_resolver.config import Settings
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster
from controlplane_resolver.dev.migrate import migrate
from controlplane_resolver.serving.server import ResolverApp
from controlplane_resolver_client import ResolverClient

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


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    """Two migrated databases on two distinct clusters, for the session."""
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
    migrate(dbs.control_plane, "control_plane")
    migrate(dbs.run_ops, "run_ops")
    for dsn in (dbs.control_plane, dbs.run_ops):
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            except psycopg.Error:
                pass  # external DSNs may not preload it; query-counting tests say so
    yield dbs
    for thing in started:
        if isinstance(thing, LocalCluster):
            thing.destroy()
        else:
            thing.stop()


@pytest.fixture
def cp(databases: Databases) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the control-plane database."""
    with psycopg.connect(databases.control_plane, autocommit=True) as conn:
        yield conn


@pytest.fixture
def ro(databases: Databases) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the run-ops database."""
    with psycopg.connect(databases.run_ops, autocommit=True) as conn:
        yield conn


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


@pytest.fixture
def tenant(cp: psycopg.Connection[Any]) -> Tenant:
    org = demo.insert_organization(cp)
    project = demo.insert_project(cp, organization_id=org)
    return Tenant(org, project)


@dataclass
class Running:
    app: ResolverApp
    client: ResolverClient
    address: str


def split_settings(databases: Databases, **overrides: Any) -> Settings:
    """Settings of a split-mode server over the session databases on a
    free port; ``overrides`` are Settings fields."""
    values: dict[str, Any] = {
        "control_plane_database_url": databases.control_plane,
        "run_ops_database_url": databases.run_ops,
        "run_ops_split_enabled": True,
        "realtime_backend_native_enabled": True,
        "addr": "127.0.0.1:0",
        "db_timeout_ms": 2000,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def serving(databases: Databases, **overrides: Any) -> Iterator[Running]:
    """A real resolver server (in this process, over a real port) and a
    client to it, stopped on exit."""
    app = ResolverApp(split_settings(databases, **overrides))
    app.start(pool_wait_s=10)
    address = f"127.0.0.1:{app.port}"
    try:
        with ResolverClient(address, timeout=10) as client:
            yield Running(app, client, address)
    finally:
        app.stop(grace=0)


@pytest.fixture
def start_server(databases: Databases) -> Iterator[Callable[..., Running]]:
    """Start a real resolver server on a free port; returns a client to it.

    Keyword arguments are settings (field names); by default split mode is
    on over the session's two databases. Every server is stopped at the end
    of the test.
    """
    with ExitStack() as stack:
        yield lambda **overrides: stack.enter_context(serving(databases, **overrides))


@pytest.fixture
def server(start_server: Callable[..., Running]) -> Running:
    """A split-mode server over the session databases."""
    return start_server()


def count_queries(conn: psycopg.Connection[Any], fragment: str) -> int:
    """How many times statements containing ``fragment`` ran (all users,
    all sessions) according to pg_stat_statements."""
    row = conn.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
        (f"%{fragment}%",),
    ).fetchone()
    return int(row[0])


@pytest.fixture
def own_clusters() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """Two migrated clusters of this test's own, free to stop and start."""
    clusters = [LocalCluster("own-cp").start(), LocalCluster("own-ro").start()]
    try:
        migrate(clusters[0].dsn(), "control_plane")
        migrate(clusters[1].dsn(), "run_ops")
        yield clusters[0], clusters[1]
    finally:
        for c in clusters:
            c.destroy()
