"""Real resolver servers inside the test process, over real ports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from controlplane_resolver.config import Settings
from controlplane_resolver.serving.server import ResolverApp
from controlplane_resolver_client import ResolverClient

from support.databases import Databases


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
