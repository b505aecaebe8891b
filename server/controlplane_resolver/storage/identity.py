"""What makes a database physically itself, and the probe that reads it.

Two DSNs name the same database exactly when their identities are equal:
the cluster's ``system_identifier`` and the database's name. The
distinct-database sentinel (``interlocks.py``) and ``cleanup`` (which cleans
a location reached through two DSNs once) both rely on it; URL strings are
never compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class DatabaseIdentity:
    """What makes a database physically itself."""

    system_identifier: int
    database: str


PROBE_SQL = "SELECT system_identifier, current_database() AS database FROM pg_control_system()"


def probe_identity(dsn: str, timeout_s: float = 5.0) -> DatabaseIdentity:
    """Connect once to ``dsn`` and read its identity. Raises psycopg errors."""
    with psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s)), autocommit=True) as conn:
        row = conn.execute(PROBE_SQL).fetchone()
    assert row is not None
    return DatabaseIdentity(system_identifier=int(row[0]), database=str(row[1]))
