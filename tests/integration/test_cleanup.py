"""``controlplane-resolver cleanup`` (docs/design.md, "Cleanup") as a real
process over the real databases: counts checked against the databases,
other environments untouched, dry run, refusal of live environments,
projects (soft-deleted included), one physical database cleaned once, and
an interrupted run re-run to completion."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from controlplane_resolver.admin.cleanup import RUN_DATA_TABLES, TableKey
from controlplane_resolver.dev import demo

CLI = str(Path(sys.executable).parent / "controlplane-resolver")
ARCHIVED = datetime(2026, 1, 2, 3, 4, 5)
REPORT_LINE = re.compile(
    r'^  (?P<location>.+?) \([^()]*\): "(?P<table>\w+)" '
    r"(?:deleted|would delete) (?P<count>\d+)$"
)


def database_flags(
    databases: Any, *, split: bool = True, run_ops: str | None = None, legacy: str | None = None
) -> list[str]:
    flags = [
        "--control-plane-database-url",
        databases.control_plane,
        "--run-ops-database-url",
        run_ops or databases.run_ops,
        "--run-ops-split-enabled",
        "1" if split else "0",
    ]
    if legacy:
        flags += ["--run-ops-legacy-database-url", legacy]
    return flags


def cleanup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "cleanup", *args], capture_output=True, text=True, timeout=60)


def reported(stdout: str) -> dict[tuple[str, str], int]:
    """``{(location, table): count}`` from the printed report."""
    counts = {}
    for line in stdout.splitlines():
        m = REPORT_LINE.match(line)
        if m:
            counts[(m["location"], m["table"])] = int(m["count"])
    return counts


def runs_of(conn: psycopg.Connection[Any], environment_id: str) -> int:
    row = conn.execute(
        'SELECT count(*) FROM "TaskRun" WHERE "runtimeEnvironmentId" = %s', (environment_id,)
    ).fetchone()
    return int(row[0])


def seed_runs(
    conn: psycopg.Connection[Any], env_id: str, project_id: str, n: int, *, new: bool
) -> list[str]:
    return [
        demo.insert_run(
            conn,
            id=demo.new_ksuid() if new else demo.new_cuid(),
            environment_id=env_id,
            project_id=project_id,
        )
        for _ in range(n)
    ]


@pytest.fixture
def dataset(cp, ro, tenant):
    """An archived environment with runs in both databases, a live one of the
    same project, and an archived one of another project."""
    archived = tenant.environment(cp, archived_at=ARCHIVED)
    live = tenant.environment(cp, "STAGING")
    other_project = demo.insert_project(cp, organization_id=tenant.organization_id)
    other = demo.insert_environment(
        cp, project_id=other_project, organization_id=tenant.organization_id, archived_at=ARCHIVED
    )
    seed_runs(ro, archived, tenant.project_id, 7, new=True)
    seed_runs(cp, archived, tenant.project_id, 4, new=False)
    seed_runs(ro, live, tenant.project_id, 3, new=True)
    seed_runs(cp, live, tenant.project_id, 2, new=False)
    seed_runs(ro, other, other_project, 2, new=True)
    seed_runs(cp, other, other_project, 2, new=False)
    return {"archived": archived, "live": live, "other": other}


def snapshot(cp, ro, envs) -> dict[str, tuple[int, int]]:
    return {name: (runs_of(ro, env), runs_of(cp, env)) for name, env in envs.items()}


def test_run_data_tables_are_keyed_on_indexed_columns(cp, ro):
    # The cleanup's premise: every delete key has an index (never "projectId").
    for conn in (cp, ro):
        for t in RUN_DATA_TABLES:
            assert t.key_column != "projectId"
            indexed = conn.execute(
                "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s::regclass AND a.attname = %s",
                (f'"{t.table}"', t.key_column),
            ).fetchone()
            assert indexed, t
    assert RUN_DATA_TABLES[-1] == TableKey("TaskRun", "runtimeEnvironmentId")


def test_dry_run_counts_and_deletes_nothing(databases, cp, ro, dataset):
    before = snapshot(cp, ro, dataset)
    result = cleanup("--environment", dataset["archived"], "--dry-run", *database_flags(databases))
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert reported(result.stdout) == {("run-ops", "TaskRun"): 7, ("legacy", "TaskRun"): 4}
    assert snapshot(cp, ro, dataset) == before


def test_cleanup_deletes_the_environments_runs_only(databases, cp, ro, dataset):
    before = snapshot(cp, ro, dataset)
    result = cleanup(
        "--environment", dataset["archived"], "--batch-size", "3", *database_flags(databases)
    )
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == {("run-ops", "TaskRun"): 7, ("legacy", "TaskRun"): 4}
    after = snapshot(cp, ro, dataset)
    assert after["archived"] == (0, 0)
    assert after["live"] == before["live"] and after["other"] == before["other"]
    # One log line per batch: 3+3+1 in run-ops, 3+1 in the legacy location.
    batches = [line for line in result.stderr.splitlines() if "row(s) from" in line]
    assert len(batches) == 5, result.stderr
    # Re-running finds nothing left and succeeds.
    again = cleanup("--environment", dataset["archived"], *database_flags(databases))
    assert again.returncode == 0, again.stderr
    assert reported(again.stdout) == {("run-ops", "TaskRun"): 0, ("legacy", "TaskRun"): 0}


def test_refuses_a_live_environment(databases, cp, ro, dataset):
    before = snapshot(cp, ro, dataset)
    for args in (
        ["--environment", dataset["live"]],
        ["--environment", dataset["live"], "--dry-run"],
    ):
        result = cleanup(*args, *database_flags(databases))
        assert result.returncode == 3, result
        assert dataset["live"] in result.stderr and "archive" in result.stderr.lower()
        assert result.stdout == ""
    assert snapshot(cp, ro, dataset) == before


def test_project_cleanup_covers_every_environment_of_a_soft_deleted_project(
    databases, cp, ro, tenant, dataset
):
    # A soft-deleted project whose environments were never archived.
    project = demo.insert_project(cp, organization_id=tenant.organization_id)
    envs = [
        demo.insert_environment(
            cp, project_id=project, organization_id=tenant.organization_id, type=t
        )
        for t in ("PRODUCTION", "STAGING")
    ]
    for env in envs:
        seed_runs(ro, env, project, 3, new=True)
        seed_runs(cp, env, project, 2, new=False)
    before = snapshot(cp, ro, dataset)

    live = cleanup("--project", project, *database_flags(databases))
    assert live.returncode == 3 and all(env in live.stderr for env in envs), live
    assert [runs_of(ro, e) for e in envs] == [3, 3]

    cp.execute('UPDATE "Project" SET "deletedAt" = %s WHERE "id" = %s', (ARCHIVED, project))
    result = cleanup("--project", project, "--batch-size", "2", *database_flags(databases))
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == {("run-ops", "TaskRun"): 6, ("legacy", "TaskRun"): 4}
    assert [(runs_of(ro, e), runs_of(cp, e)) for e in envs] == [(0, 0), (0, 0)]
    assert snapshot(cp, ro, dataset) == before
    # The deletes were keyed per environment, never on "TaskRun"."projectId".
    assert "projectId" not in result.stderr


def test_unknown_project_is_an_error_and_a_gone_environment_is_cleaned(databases, cp, ro, tenant):
    unknown = cleanup("--project", demo.new_cuid(), *database_flags(databases))
    assert unknown.returncode == 1 and "--environment" in unknown.stderr, unknown
    # A hard-deleted environment leaves run-ops rows behind (no foreign keys there).
    gone = demo.new_cuid()
    seed_runs(ro, gone, tenant.project_id, 4, new=True)
    result = cleanup("--environment", gone, *database_flags(databases))
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == {("run-ops", "TaskRun"): 4, ("legacy", "TaskRun"): 0}
    assert runs_of(ro, gone) == 0


def test_one_physical_database_is_cleaned_once(databases, cp, ro, dataset):
    # The same database under a DSN that does not look the same.
    parts = conninfo_to_dict(databases.control_plane)
    same = make_conninfo(**parts, application_name="another-name")
    assert same != databases.control_plane
    before = snapshot(cp, ro, dataset)
    result = cleanup(
        "--environment",
        dataset["archived"],
        *database_flags(databases, run_ops=same, legacy=databases.control_plane),
    )
    assert result.returncode == 0, result.stderr
    # One location, named for both roles; only the control-plane rows were its.
    assert reported(result.stdout) == {("run-ops = legacy", "TaskRun"): 4}
    assert snapshot(cp, ro, dataset)["archived"] == (before["archived"][0], 0)


def test_split_off_cleans_the_control_plane_database(databases, cp, ro, dataset):
    result = cleanup("--environment", dataset["archived"], *database_flags(databases, split=False))
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == {("run-ops", "TaskRun"): 7, ("control-plane", "TaskRun"): 4}
    assert snapshot(cp, ro, dataset)["archived"] == (0, 0)


def test_interrupted_cleanup_re_runs_to_completion(databases, cp, ro, tenant):
    env = tenant.environment(cp, archived_at=ARCHIVED)
    seed_runs(ro, env, tenant.project_id, 9, new=True)
    legacy_ids = seed_runs(cp, env, tenant.project_id, 5, new=False)
    args = ["--environment", env, "--batch-size", "2", *database_flags(databases)]

    # Hold a lock on one legacy run: the cleanup works through run-ops, then
    # blocks in the legacy location, where it is killed mid-run.
    with psycopg.connect(databases.control_plane) as locker:
        locker.execute('SELECT 1 FROM "TaskRun" WHERE "id" = %s FOR UPDATE', (legacy_ids[-1],))
        proc = subprocess.Popen(
            [CLI, "cleanup", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stderr is not None
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
        deadline = time.monotonic() + 30
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if "row(s) from" in line:  # the first batch is logged
                break
        assert proc.poll() is None, "the cleanup finished before it was interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The killed client's backend may still wait on the lock: end it, so its
        # uncommitted batch is rolled back rather than left to chance.
        locker.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'controlplane-resolver:cleanup'"
        )
    assert runs_of(ro, env) <= 9 - 2  # at least the logged batch is gone for good

    remaining = (runs_of(ro, env), runs_of(cp, env))
    assert remaining[1] >= 1  # the locked run was never deleted
    result = cleanup(*args)
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == {
        ("run-ops", "TaskRun"): remaining[0],
        ("legacy", "TaskRun"): remaining[1],
    }
    assert (runs_of(ro, env), runs_of(cp, env)) == (0, 0)
