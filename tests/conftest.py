"""Fixtures: real PostgreSQL and real gRPC servers (helpers in ``support``).

Tests that stop a database get clusters of their own (``own_clusters``);
the others share the session's two databases, each writing rows with fresh
random ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

from controlplane_resolver.dev.clusters import LocalCluster

from support.credentials import pki, tokens  # noqa: F401  (fixtures for the security tests)
from support.databases import (
    Databases,
    Tenant,
    new_tenant,
    own_cluster_pair,
    session_databases,
)
from support.servers import Running, serving


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    """Two migrated databases on two distinct clusters, for the session."""
    with session_databases() as dbs:
        yield dbs


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


@pytest.fixture
def tenant(cp: psycopg.Connection[Any]) -> Tenant:
    return new_tenant(cp)


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


@pytest.fixture
def own_clusters() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """Two migrated clusters of this test's own, free to stop and start."""
    with own_cluster_pair() as pair:
        yield pair
