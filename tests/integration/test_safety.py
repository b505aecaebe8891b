"""The two interlocks that guard split mode (docs/design.md, "Split mode and safety interlocks").

The realtime interlock and identity comparison are pure. The sentinel is
tested against real clusters: it must tell databases apart by what they
*are* (``system_identifier`` and ``current_database()``), never by how
their DSNs are spelled, and fail closed when it cannot look.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from controlplane_resolver.errors import Refusal
from controlplane_resolver.storage.identity import DatabaseIdentity
from controlplane_resolver.storage.interlocks import (
    Verdict,
    check_realtime_interlock,
    compare_identities,
    run_sentinel,
)

PASSWORD = "s3cret"
UNREACHABLE = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"


def respelled(dsn: str, **changes: Any) -> str:
    """The same connection target written as key=value pairs instead of a
    URL (plus ``changes``), so no string comparison could match it."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params.update(changes)
    return make_conninfo("", **params)


# --------------------------------------------------------- realtime interlock


def test_split_without_native_realtime_is_refused() -> None:
    with pytest.raises(Refusal) as info:
        check_realtime_interlock(split_enabled=True, realtime_native_enabled=False)
    assert info.value.code == "REALTIME_INTERLOCK"
    message = str(info.value)
    # Names both settings and the fix.
    assert "RUN_OPS_SPLIT_ENABLED" in message
    assert "REALTIME_BACKEND_NATIVE_ENABLED=1" in message


@pytest.mark.parametrize("split, native", [(True, True), (False, False), (False, True)])
def test_other_combinations_pass_the_interlock(split: bool, native: bool) -> None:
    assert check_realtime_interlock(split_enabled=split, realtime_native_enabled=native) is None


# -------------------------------------------------------- identity comparison


def test_different_system_identifiers_are_distinct_clusters() -> None:
    # Even with the same database name: the name alone means nothing.
    assert (
        compare_identities(DatabaseIdentity(1, "platform"), DatabaseIdentity(2, "platform"))
        is Verdict.DISTINCT_CLUSTERS
    )


def test_same_identifier_other_name_is_same_cluster_other_database() -> None:
    assert (
        compare_identities(DatabaseIdentity(7, "platform"), DatabaseIdentity(7, "run_ops"))
        is Verdict.SAME_CLUSTER_OTHER_DATABASE
    )


def test_same_identifier_same_name_is_the_same_database() -> None:
    assert (
        compare_identities(DatabaseIdentity(7, "platform"), DatabaseIdentity(7, "platform"))
        is Verdict.SAME_DATABASE
    )


# ------------------------------------------------------------ the sentinel, live


def test_two_distinct_clusters_are_allowed(databases: Any) -> None:
    result = run_sentinel(databases.run_ops, databases.control_plane)
    assert result.verdict is Verdict.DISTINCT_CLUSTERS
    assert result.allowed


def test_same_dsn_twice_is_refused(databases: Any) -> None:
    result = run_sentinel(databases.control_plane, databases.control_plane)
    assert result.verdict is Verdict.SAME_DATABASE
    assert not result.allowed
    assert "RUN_OPS_DATABASE_URL" in result.reason


def test_differently_spelled_dsn_to_the_same_database_is_refused(databases: Any) -> None:
    # URL form vs key=value form, "localhost" vs "127.0.0.1", and a password
    # the (trusting) server ignores: three spellings, one database.
    other = respelled(databases.control_plane, host="localhost", password=PASSWORD)
    assert other != databases.control_plane
    result = run_sentinel(other, databases.control_plane)
    assert result.verdict is Verdict.SAME_DATABASE
    assert not result.allowed
    assert PASSWORD not in result.reason


def test_same_cluster_other_database_is_allowed_unless_strict(databases: Any) -> None:
    # Every cluster has the "postgres" maintenance database.
    other_db = respelled(databases.control_plane, dbname="postgres")
    result = run_sentinel(other_db, databases.control_plane)
    assert result.verdict is Verdict.SAME_CLUSTER_OTHER_DATABASE
    assert result.allowed

    strict = run_sentinel(other_db, databases.control_plane, strict=True)
    assert strict.verdict is Verdict.SAME_CLUSTER_OTHER_DATABASE
    assert not strict.allowed
    assert "strict" in strict.reason


@pytest.mark.parametrize("role, broken_first", [("run-ops", True), ("legacy", False)])
def test_probe_failure_fails_closed_naming_the_role(
    databases: Any, role: str, broken_first: bool
) -> None:
    args = (
        (UNREACHABLE, databases.control_plane)
        if broken_first
        else (databases.control_plane, UNREACHABLE)
    )
    started = time.monotonic()
    result = run_sentinel(*args, timeout_s=2)
    assert time.monotonic() - started < 10
    assert result.verdict is Verdict.PROBE_FAILED
    assert not result.allowed
    assert f"the {role} database" in result.reason
    assert "127.0.0.1:1/x" in result.reason  # which one, without credentials
    assert PASSWORD not in result.reason
    assert "u:" not in result.reason


@pytest.fixture
def unprivileged_dsn(databases: Any) -> Iterator[str]:
    """A DSN for a login role that may not call ``pg_control_system()``, in a
    scratch database of the control-plane cluster (function privileges are
    per database, so the session's databases are not touched)."""
    suffix = secrets.token_hex(4)
    dbname, role = f"sentinel_priv_{suffix}", f"sentinel_user_{suffix}"
    admin = respelled(databases.control_plane, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'")
    with psycopg.connect(respelled(admin, dbname=dbname), autocommit=True) as conn:
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        yield respelled(admin, dbname=dbname, user=role, password=PASSWORD)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_missing_privilege_is_refused_with_the_grant_to_make(
    databases: Any, unprivileged_dsn: str
) -> None:
    result = run_sentinel(unprivileged_dsn, databases.control_plane)
    assert result.verdict is Verdict.PROBE_FAILED
    assert not result.allowed
    assert "run-ops" in result.reason and "pg_monitor" in result.reason
    assert PASSWORD not in result.reason


def test_strict_setting_refuses_split_over_one_cluster(databases: Any) -> None:
    from controlplane_resolver.config import Settings
    from controlplane_resolver.errors import Refusal
    from controlplane_resolver.storage.topology import decide_split

    settings = Settings(
        control_plane_database_url=databases.control_plane,
        run_ops_database_url=respelled(databases.control_plane, dbname="postgres"),
        run_ops_split_enabled=True,
        realtime_backend_native_enabled=True,
    )
    assert decide_split(settings).split
    with pytest.raises(Refusal) as refused:
        decide_split(Settings(**{**settings.__dict__, "sentinel_strict": True}))
    assert refused.value.code == "SENTINEL_SAME_CLUSTER_OTHER_DATABASE"
