"""The ``controlplane-resolver`` command, run as a real subprocess.

Contract (cli.py): exit 0 success, 1 runtime failure, 2 bad configuration,
3 refused by a safety interlock; reasons go to stderr; DSN passwords never
appear in any output; ``migrate`` is idempotent and never touches a
database that holds the platform's own tables; ``serve`` reports SERVING
and exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from controlplane_resolver.config import OPTIONS
from controlplane_resolver.dev.clusters import free_port

from support.polling import wait_until
from support.processes import CLI

PASSWORD = "s3cret"
EXIT_RUNTIME, EXIT_CONFIG, EXIT_REFUSED = 1, 2, 3


def respelled(dsn: str, **changes: Any) -> str:
    """``dsn`` as key=value pairs with ``changes`` applied."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params.update(changes)
    return make_conninfo("", **params)


def with_password(dsn: str) -> str:
    # The test clusters trust local connections: the password is ignored by
    # the server, but the CLI still sees it and must never print it.
    return respelled(dsn, password=PASSWORD)


def cli_env(**settings: str) -> dict[str, str]:
    """The inherited environment without any resolver setting, plus ``settings``."""
    ours = {name for opt in OPTIONS for name in opt.names} | {"RESOLVER_LOG_LEVEL"}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(settings)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def port_is_listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def scratch_database(databases: Any) -> Iterator[str]:
    """A fresh, empty database in the control-plane cluster; dropped after."""
    name = f"cli_{secrets.token_hex(4)}"
    admin = respelled(databases.control_plane, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield respelled(databases.control_plane, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------- check


def test_check_with_split_off_prints_the_topology(databases: Any) -> None:
    result = run_cli(
        "check", env=cli_env(CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane))
    )
    assert result.returncode == 0, result.stderr
    cp = conninfo_to_dict(databases.control_plane)
    assert "configuration OK" in result.stdout
    assert "split mode: off" in result.stdout
    assert f"control-plane: {cp['host']}:{cp['port']}/{cp['dbname']}" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_check_with_split_on_prints_the_sentinel_verdict(databases: Any) -> None:
    result = run_cli(
        "check",
        env=cli_env(
            CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
            RUN_OPS_DATABASE_URL=with_password(databases.run_ops),
            RUN_OPS_SPLIT_ENABLED="1",
            REALTIME_BACKEND_NATIVE_ENABLED="true",
        ),
    )
    assert result.returncode == 0, result.stderr
    assert "split mode: ON" in result.stdout
    assert "sentinel: distinct clusters" in result.stdout
    ro = conninfo_to_dict(databases.run_ops)
    assert f"run-ops: {ro['host']}:{ro['port']}/{ro['dbname']}" in result.stdout
    assert "legacy: " in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_check_warns_of_a_flip_grace_the_flag_cache_outlasts(databases: Any) -> None:
    env = cli_env(
        CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
        RUN_OPS_DATABASE_URL=with_password(databases.run_ops),
        RUN_OPS_SPLIT_ENABLED="1",
        REALTIME_BACKEND_NATIVE_ENABLED="1",
        RUN_OPS_MINT_ENABLED="1",
        RUN_OPS_ID_GENERATION="base32hex",
        RUN_OPS_MINT_FLIP_GRACE_MS="20000",
    )
    result = run_cli("check", env=env)
    assert result.returncode == 0, result.stderr  # a warning, not a refusal
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.stdout
    assert "RUN_OPS_MINT_FLIP_GRACE_MS (20000 ms)" in warnings[0]
    assert "CONTROL_PLANE_CACHE_TTL_MS (30000 ms)" in warnings[0]
    result = run_cli("check", "--run-ops-mint-flip-grace-ms", "31000", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: " not in result.stdout


def test_check_prints_where_each_value_came_from(databases: Any) -> None:
    """The platform's names are accepted, and ``check`` says which name (or
    flag, or the default) supplied every setting."""
    result = run_cli(
        "check",
        "--control-plane-cache-ttl-ms",
        "1000",
        "--control-plane-cache-hard-ttl-ms",
        "1000",
        env=cli_env(
            DATABASE_URL=with_password(databases.control_plane),
            TASK_RUN_DATABASE_URL=with_password(databases.run_ops),
            RUN_OPS_SPLIT_ENABLED="1",
            REALTIME_BACKEND_NATIVE_ENABLED="1",
        ),
    )
    assert result.returncode == 0, result.stderr
    assert "split mode: ON" in result.stdout
    cp, ro = conninfo_to_dict(databases.control_plane), conninfo_to_dict(databases.run_ops)
    lines = result.stdout.splitlines()
    for expected in (
        f"  control_plane_database_url = {cp['host']}:{cp['port']}/{cp['dbname']}  [DATABASE_URL]",
        f"  run_ops_database_url = {ro['host']}:{ro['port']}/{ro['dbname']}"
        "  [TASK_RUN_DATABASE_URL]",
        "  run_ops_split_enabled = True  [RUN_OPS_SPLIT_ENABLED]",
        "  control_plane_cache_ttl_ms = 1000  [--control-plane-cache-ttl-ms]",
        "  control_plane_database_read_replica_url = (unset)  [default]",
        "  worker_version_cache_ttl_ms = 1000  [default]",
    ):
        assert expected in lines, (expected, result.stdout)
    settings_lines = lines[lines.index("settings (DSNs redacted):") + 1 :]
    assert len(settings_lines) == len(OPTIONS)
    assert all(line.endswith("]") for line in settings_lines), settings_lines
    assert PASSWORD not in result.stdout + result.stderr


def test_check_refuses_two_names_of_one_setting_set_differently(databases: Any) -> None:
    result = run_cli(
        "check",
        env=cli_env(
            CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
            RUN_OPS_DATABASE_URL=with_password(databases.run_ops),
            TASK_RUN_DATABASE_URL=with_password(databases.control_plane),
        ),
    )
    assert result.returncode == EXIT_CONFIG
    assert "RUN_OPS_DATABASE_URL and TASK_RUN_DATABASE_URL" in result.stderr
    assert "configuration OK" not in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_check_refuses_split_without_native_realtime(databases: Any) -> None:
    result = run_cli(
        "check",
        env=cli_env(
            CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
            RUN_OPS_DATABASE_URL=with_password(databases.run_ops),
            RUN_OPS_SPLIT_ENABLED="1",
            REALTIME_BACKEND_NATIVE_ENABLED="0",
        ),
    )
    assert result.returncode == EXIT_REFUSED
    assert "refused (REALTIME_INTERLOCK)" in result.stderr
    assert "REALTIME_BACKEND_NATIVE_ENABLED" in result.stderr
    assert "configuration OK" not in result.stdout


def test_check_refuses_run_ops_at_the_control_plane_database(databases: Any) -> None:
    # Two spellings of one database: the sentinel compares identities.
    result = run_cli(
        "check",
        env=cli_env(
            CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
            RUN_OPS_DATABASE_URL=respelled(databases.control_plane, host="localhost"),
            RUN_OPS_SPLIT_ENABLED="1",
            REALTIME_BACKEND_NATIVE_ENABLED="1",
        ),
    )
    assert result.returncode == EXIT_REFUSED
    assert "refused (SENTINEL_SAME_DATABASE)" in result.stderr
    assert "same physical database" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_flags_override_the_environment(databases: Any) -> None:
    # The environment asks for split without realtime; the flag turns split off.
    result = run_cli(
        "check",
        "--run-ops-split-enabled",
        "0",
        env=cli_env(CONTROL_PLANE_DATABASE_URL=databases.control_plane, RUN_OPS_SPLIT_ENABLED="1"),
    )
    assert result.returncode == 0, result.stderr
    assert "split mode: off" in result.stdout


def test_missing_control_plane_dsn_is_a_configuration_error() -> None:
    result = run_cli("check", env=cli_env())
    assert result.returncode == EXIT_CONFIG
    assert "CONTROL_PLANE_DATABASE_URL is required" in result.stderr


def test_malformed_dsn_is_a_configuration_error_without_the_password() -> None:
    result = run_cli(
        "check", env=cli_env(CONTROL_PLANE_DATABASE_URL=f"postgresql://u:{PASSWORD}@[::1/platform")
    )
    assert result.returncode == EXIT_CONFIG
    assert "CONTROL_PLANE_DATABASE_URL is not a valid" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


# -------------------------------------------------------------------- migrate


def test_migrate_twice_creates_then_finds_the_schema(scratch_database: str) -> None:
    name = conninfo_to_dict(scratch_database)["dbname"]
    first = run_cli("migrate", "--control-plane", with_password(scratch_database), env=cli_env())
    assert first.returncode == 0, first.stderr
    assert "control_plane: created" in first.stdout and f"/{name})" in first.stdout
    second = run_cli("migrate", "--control-plane", with_password(scratch_database), env=cli_env())
    assert second.returncode == 0, second.stderr
    assert "control_plane: already migrated" in second.stdout
    assert PASSWORD not in first.stdout + first.stderr + second.stdout + second.stderr
    with psycopg.connect(scratch_database) as conn:
        assert conn.execute(
            "SELECT to_regclass('\"RuntimeEnvironment\"') IS NOT NULL"
        ).fetchone() == (True,)


def test_migrate_never_touches_a_database_with_platform_tables(scratch_database: str) -> None:
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute('CREATE TABLE "RuntimeEnvironment" (id TEXT PRIMARY KEY, note TEXT)')
        conn.execute("""INSERT INTO "RuntimeEnvironment" VALUES ('env_1', 'theirs')""")
    result = run_cli("migrate", "--control-plane", scratch_database, env=cli_env())
    assert result.returncode != 0
    assert "left untouched" in result.stderr
    assert "Traceback" not in result.stderr
    with psycopg.connect(scratch_database) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'RuntimeEnvironment' ORDER BY ordinal_position"
            ).fetchall()
        ]
        rows = conn.execute('SELECT * FROM "RuntimeEnvironment"').fetchall()
    assert tables == {"RuntimeEnvironment"}
    assert columns == ["id", "note"]
    assert rows == [("env_1", "theirs")]


# ---------------------------------------------------------------------- serve


def wait_for_serving(proc: subprocess.Popen[str], port: int, *, timeout_s: float) -> None:
    """Poll Health/Check until SERVING; fail early if the process exits."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            assert proc.poll() is None, f"serve exited early with {proc.returncode}"
            try:
                return (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
            except grpc.RpcError:
                return False  # not listening yet

        wait_until(serving, timeout_s, 0.1, "serve reporting SERVING")


def test_serve_answers_serving_and_exits_cleanly_on_sigterm(databases: Any) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "serve", "--shutdown-grace-ms", "1000"],
        env=cli_env(
            CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
            RUN_OPS_DATABASE_URL=with_password(databases.run_ops),
            RUN_OPS_SPLIT_ENABLED="1",
            REALTIME_BACKEND_NATIVE_ENABLED="1",
            RESOLVER_ADDR=f"127.0.0.1:{port}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_serving(proc, port, timeout_s=30)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(
                    service="controlplane.resolver.v1.ControlPlaneResolverService"
                ),
                timeout=5,
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "received SIGTERM" in stderr and "stopped" in stderr
    assert PASSWORD not in stdout + stderr
    assert not port_is_listening(port)


def test_serve_with_a_refused_configuration_exits_and_never_listens(databases: Any) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "serve"],
        env=cli_env(
            CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
            RUN_OPS_DATABASE_URL=with_password(databases.control_plane),
            RUN_OPS_SPLIT_ENABLED="1",
            REALTIME_BACKEND_NATIVE_ENABLED="1",
            RESOLVER_ADDR=f"127.0.0.1:{port}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Watch the port for the process's whole life: it must never listen.
    listened = False
    while proc.poll() is None:
        listened = listened or port_is_listening(port)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_REFUSED
    assert "refused (SENTINEL_SAME_DATABASE)" in stderr
    assert not listened and not port_is_listening(port)
    assert "serving controlplane" not in stderr  # the log line of a started server
    assert PASSWORD not in stdout + stderr


def test_serve_on_a_busy_port_fails_with_a_clear_message(databases: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(
            "serve",
            env=cli_env(
                CONTROL_PLANE_DATABASE_URL=with_password(databases.control_plane),
                RESOLVER_ADDR=f"127.0.0.1:{port}",
            ),
        )
    assert result.returncode == EXIT_RUNTIME
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_on_a_busy_metrics_port_names_the_setting(databases: Any, processes: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(
            "serve",
            env=cli_env(
                CONTROL_PLANE_DATABASE_URL=databases.control_plane,
                RESOLVER_LISTEN_ENABLED="0",
                RESOLVER_ADDR=f"127.0.0.1:{free_port()}",
                RESOLVER_PROCESSES=processes,
                RESOLVER_METRICS_ADDR=f"127.0.0.1:{port}",
            ),
        )
    assert result.returncode == EXIT_RUNTIME, result.stderr
    assert f"127.0.0.1:{port} (RESOLVER_METRICS_ADDR)" in result.stderr, result.stderr
    assert "in use" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------- triggers


def test_triggers_install_and_uninstall_from_the_command_line(scratch_database: str) -> None:
    from controlplane_resolver.dev.migrate import migrate

    migrate(scratch_database, "control_plane")
    env = cli_env(CONTROL_PLANE_DATABASE_URL=with_password(scratch_database))

    def installed() -> int:
        with psycopg.connect(scratch_database) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'controlplane_resolver_notify_%'"
            ).fetchone()[0]

    done = run_cli("triggers", "install", env=env)
    assert done.returncode == 0, done.stderr
    # One trigger per watched table ("FeatureFlag" made it seven).
    assert "installed 7 triggers" in done.stdout and PASSWORD not in done.stdout
    assert installed() == 7
    # A change now announces itself to every listener.
    with (
        psycopg.connect(scratch_database, autocommit=True) as listener,
        psycopg.connect(scratch_database, autocommit=True) as writer,
    ):
        listener.execute("LISTEN controlplane_resolver_invalidate")
        writer.execute(
            'INSERT INTO "Organization" ("id", "slug", "title", "updatedAt") '
            "VALUES ('org1', 'org1', 'Org', now())"
        )
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        assert payloads == ["organization:org1"]
    removed = run_cli("triggers", "uninstall", env=env)
    assert removed.returncode == 0, removed.stderr
    assert installed() == 0
