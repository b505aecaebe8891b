"""The naive reference ReadRun is calibrated against: the same server, but
every run read checks a connection out of a pool and runs its lookup in a
transaction of its own (BEGIN, SELECT, COMMIT) — no pinned connection, no
autocommit, no coalescing.

    CONTROL_PLANE_DATABASE_URL=… RUN_OPS_DATABASE_URL=… RUN_OPS_SPLIT_ENABLED=1 \
        REALTIME_BACKEND_NATIVE_ENABLED=1 RESOLVER_ADDR=127.0.0.1:50052 \
        python bench/naive_reference.py

bench/run.py starts it (with RESOLVER_PROCESSES=1 and 2, as it runs the real
server) to show what "naive" reaches on the machine at hand
(docs/benchmarks.md). Benchmark-only: the product never runs this.
"""

from __future__ import annotations

import os
from typing import Any

from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from controlplane_resolver import cli
from controlplane_resolver.config import Settings
from controlplane_resolver.domain.residency import classify
from controlplane_resolver.domain.roles import RunSource
from controlplane_resolver.domain.values import RunRead
from controlplane_resolver.errors import NotFound
from controlplane_resolver.resolver import Resolver, checked_id
from controlplane_resolver.runtime.logs import configure_logging
from controlplane_resolver.storage import queries


class NaiveRunReads(Resolver):
    """ReadRun as a naive service would do it; everything else as ours."""

    def __init__(self, resolver: Resolver, run_ops_dsn: str, pool_size: int) -> None:
        super().__init__(resolver.topology, resolver.cache)
        # Not autocommit: psycopg wraps each `with pool.connection()` block
        # in a transaction, as a default pool does.
        self.naive_pool: ConnectionPool[Any] = ConnectionPool(
            run_ops_dsn,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={"row_factory": tuple_row},
            open=True,
        )

    def read_run(self, run_id: str, *, include_environment: bool = False) -> RunRead:
        c = classify(checked_id(run_id, "run_id"))
        with self.naive_pool.connection() as conn:
            row = conn.execute(queries.RUNS_BY_IDS, ([run_id],)).fetchone()
        if row is None:
            raise NotFound(f"run {run_id} was not found", reason="RUN_NOT_FOUND")
        return RunRead(run=queries.run_from_tuple(row), source=RunSource.RUN_OPS, residency=c.route)


def main() -> int:
    settings = Settings.load(os.environ)
    configure_logging(os.environ.get("RESOLVER_LOG_LEVEL", "WARNING"), settings.log_format)
    assert settings.run_ops_database_url, "RUN_OPS_DATABASE_URL is required"
    dsn = settings.run_ops_database_url

    def swap(app: Any) -> None:
        app.servicer.resolver = NaiveRunReads(app.servicer.resolver, dsn, settings.max_workers)

    return cli.serve(settings, on_ready=swap)  # honours RESOLVER_PROCESSES, as `serve` does


if __name__ == "__main__":
    raise SystemExit(main())
