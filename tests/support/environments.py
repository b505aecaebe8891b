"""Reading and changing an environment's concurrency limit: a field that
tests change behind the resolver's back to see whether it noticed."""

from __future__ import annotations

from typing import Any

import psycopg

from controlplane_resolver_client import ResolverClient

Conn = psycopg.Connection[Any]


def concurrency_limit(client: ResolverClient, environment_id: str) -> int:
    """The environment's maximum concurrency limit as ResolveEnv answers it."""
    env = client.resolve_env(environment_id)
    assert env is not None, f"{environment_id} did not resolve"
    return env.maximum_concurrency_limit


def set_concurrency_limit(cp: Conn, environment_id: str, limit: int) -> None:
    """A writer changes the environment behind the resolver's back."""
    cp.execute(
        'UPDATE "RuntimeEnvironment" SET "maximumConcurrencyLimit" = %s WHERE "id" = %s',
        (limit, environment_id),
    )
