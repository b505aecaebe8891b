"""``controlplane-resolver cleanup`` (docs/design.md, "Cleanup") as a real
process over the real databases: every run-owned table of both locations
(the compatible schema carries the platform's foreign keys), counts checked
against the databases, other environments untouched, dry run, refusal of
live environments, projects (soft-deleted included), one physical database
cleaned once, an interrupted run re-run to completion, and ``migrate``
upgrading a database migrated before these tables existed."""

from __future__ import annotations

import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from controlplane_resolver.admin.cleanup import STEPS
from controlplane_resolver.dev import demo
from controlplane_resolver.dev.migrate import UPGRADE_LINE, migrate, schema_sql

from support.polling import wait_until

CLI = str(Path(sys.executable).parent / "controlplane-resolver")
ARCHIVED = datetime(2026, 1, 2, 3, 4, 5)
REPORT_LINE = re.compile(
    r'^  (?P<location>.+?) \([^()]*\): "(?P<table>\w+)" '
    r"(?:deleted|would delete) (?P<count>\d+)$"
)
#: Tables with no id column (Prisma's implicit many-to-many): rows are ("A", "B").
JOIN_TABLES = {"_completedWaitpoints", "_WaitpointRunConnections"}


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


def run_ops_only(counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {k: v for k, v in counts.items() if k[0] == "run-ops"}


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


Rows = dict[str, list[Any]]


def seed_run_data(
    conn: psycopg.Connection[Any], env: str, project: str, org: str, *, n: int = 3, new: bool
) -> Rows:
    """A row in every run-owned table of this database for ``env``: ``n``
    runs (one batch; a parent and a root), each with an attempt, two
    snapshots (the second at a checkpoint and completing a waitpoint), a V1
    checkpoint and restore event, a waitpoint it completes, a waitpoint
    blocking it, a connection and a batch item (and, in the control plane, a
    bulk action item); dependencies across runs; a batch error and a
    waitpoint tag. Returns the ids written, by table ("A", "B" pairs for the
    join tables)."""
    rows: Rows = {}

    def add(table: str, value: Any) -> Any:
        rows.setdefault(table, []).append(value)
        return value

    has = {
        t
        for (t,) in conn.execute(
            "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
            (["CompletedWaitpoint", "BulkActionItem"],),
        )
    }
    at = {"environment_id": env, "project_id": project}
    batch = add("BatchTaskRun", demo.insert_batch(conn, environment_id=env))
    runs: list[str] = []
    for _ in range(n):
        parent = {"parent_task_run_id": runs[0], "root_task_run_id": runs[0]} if runs else {}
        runs.append(
            add(
                "TaskRun",
                demo.insert_run(
                    conn,
                    id=demo.new_ksuid() if new else demo.new_cuid(),
                    organization_id=org,
                    batch_id=batch,
                    **at,
                    **parent,
                ),
            )
        )
    attempts, events = [], []
    blocker = add("Waitpoint", demo.insert_waitpoint(conn, **at))
    for run in runs:
        attempt = add("TaskRunAttempt", demo.insert_attempt(conn, run_id=run, environment_id=env))
        attempts.append(attempt)
        add(
            "BatchTaskRunItem",
            demo.insert_batch_item(conn, batch_id=batch, run_id=run, task_run_attempt_id=attempt),
        )
        checkpoint = add(
            "Checkpoint", demo.insert_checkpoint(conn, run_id=run, attempt_id=attempt, **at)
        )
        events.append(
            add(
                "CheckpointRestoreEvent",
                demo.insert_checkpoint_restore_event(
                    conn, checkpoint_id=checkpoint, run_id=run, attempt_id=attempt, **at
                ),
            )
        )
        add(
            "TaskRunExecutionSnapshot",
            demo.insert_snapshot(conn, run_id=run, organization_id=org, **at),
        )
        run_checkpoint = add("TaskRunCheckpoint", demo.insert_run_checkpoint(conn, **at))
        snapshot = add(
            "TaskRunExecutionSnapshot",
            demo.insert_snapshot(
                conn, run_id=run, organization_id=org, checkpoint_id=run_checkpoint, **at
            ),
        )
        own = add(
            "Waitpoint", demo.insert_waitpoint(conn, type="RUN", completed_by_task_run_id=run, **at)
        )
        add(
            "TaskRunWaitpoint",
            demo.insert_run_waitpoint(conn, run_id=run, waitpoint_id=blocker, project_id=project),
        )
        demo.connect_waitpoint(conn, run, blocker)
        demo.complete_waitpoint(conn, snapshot, own)
        if "CompletedWaitpoint" in has:
            rows.setdefault("WaitpointRunConnection", []).append((run, blocker))
            rows.setdefault("CompletedWaitpoint", []).append((snapshot, own))
        else:
            add("_WaitpointRunConnections", (run, blocker))
            add("_completedWaitpoints", (snapshot, own))
        if "BulkActionItem" in has:
            add("BulkActionItem", demo.insert_bulk_action_item(conn, source_run_id=run))
    # A V1 batch resuming the first run's attempt at its restore event; the
    # second run resumes the first's attempt, the first the batch.
    conn.execute(
        'UPDATE "BatchTaskRun" SET "dependentTaskAttemptId" = %s, "checkpointEventId" = %s '
        'WHERE "id" = %s',
        (attempts[0], events[0], batch),
    )
    add(
        "TaskRunDependency",
        demo.insert_run_dependency(
            conn, run_id=runs[1], dependent_attempt_id=attempts[0], checkpoint_event_id=events[-1]
        ),
    )
    add(
        "TaskRunDependency",
        demo.insert_run_dependency(conn, run_id=runs[0], dependent_batch_run_id=batch),
    )
    add("BatchTaskRunError", demo.insert_batch_error(conn, batch_id=batch))
    add("WaitpointTag", demo.insert_waitpoint_tag(conn, **at))
    return rows


def id_counts(rows: Rows) -> dict[str, int]:
    return {table: len(ids) for table, ids in rows.items()}


def remaining(conn: psycopg.Connection[Any], rows: Rows) -> dict[str, int]:
    """How many of ``rows`` (ids by table) are still there, by table."""
    out = {}
    pairs = {
        "CompletedWaitpoint": ("snapshotId", "waitpointId"),
        "WaitpointRunConnection": ("taskRunId", "waitpointId"),
        **dict.fromkeys(JOIN_TABLES, ("A", "B")),
    }
    for table, ids in rows.items():
        params: tuple[Any, ...]
        if table in pairs:
            a, b = pairs[table]
            query = sql.SQL(
                "SELECT count(*) FROM {} WHERE ({}, {}) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[]))"
            ).format(sql.Identifier(table), sql.Identifier(a), sql.Identifier(b))
            params = ([x for x, _ in ids], [y for _, y in ids])
        else:
            query = sql.SQL('SELECT count(*) FROM {} WHERE "id" = ANY(%s)').format(
                sql.Identifier(table)
            )
            params = (ids,)
        row = conn.execute(query, params).fetchone()
        out[table] = int(row[0])
    return out


def expected(location: str, rows: Rows) -> dict[tuple[str, str], int]:
    return {(location, table): n for table, n in id_counts(rows).items()}


@pytest.fixture
def graph(cp, ro, tenant):
    """Two archived environments (of two projects) with rows in every run
    table of both databases, and a live environment with runs."""
    archived = tenant.environment(cp, archived_at=ARCHIVED)
    other_project = demo.insert_project(cp, organization_id=tenant.organization_id)
    other = demo.insert_environment(
        cp, project_id=other_project, organization_id=tenant.organization_id, archived_at=ARCHIVED
    )
    org = tenant.organization_id
    data = {
        "archived": {
            "ro": seed_run_data(ro, archived, tenant.project_id, org, new=True),
            "cp": seed_run_data(cp, archived, tenant.project_id, org, new=False),
        },
        "other": {
            "ro": seed_run_data(ro, other, other_project, org, new=True),
            "cp": seed_run_data(cp, other, other_project, org, new=False),
        },
    }
    return {"archived": archived, "other": other, "data": data}


def left_of(cp, ro, data) -> dict[str, dict[str, int]]:
    return {"ro": remaining(ro, data["ro"]), "cp": remaining(cp, data["cp"])}


def all_of(data) -> dict[str, dict[str, int]]:
    return {"ro": id_counts(data["ro"]), "cp": id_counts(data["cp"])}


def nothing_of(data) -> dict[str, dict[str, int]]:
    return {"ro": dict.fromkeys(data["ro"], 0), "cp": dict.fromkeys(data["cp"], 0)}


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


def runs_reported(stdout: str) -> dict[str, int]:
    return {loc: n for (loc, table), n in reported(stdout).items() if table == "TaskRun"}


# ------------------------------------------------------------------ the plan


def leading_index_columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(quote_ident(%s))",
        (table,),
    )
    return {r[0] for r in rows}


def test_steps_are_keyed_on_indexed_columns_children_first(cp, ro):
    # Every lookup leads with an indexed column (the compatible schema carries
    # the platform's indexes); "BulkActionItem" is the one table the platform
    # indexes nothing usable on. Never keyed on "TaskRun"."projectId".
    tables = [s.table for s in STEPS]
    assert len(set(tables)) == len(tables)
    for conn in (cp, ro):
        for step in STEPS:
            assert '"TaskRun"."projectId"' not in step.condition
            if step.index is None:
                assert step.table == "BulkActionItem"
                continue
            table, column = step.index
            if conn.execute("SELECT to_regclass(quote_ident(%s))", (table,)).fetchone()[0]:
                assert column in leading_index_columns(conn, table), step
        # Children first: a table comes before every table it references with
        # CASCADE or RESTRICT, so neither ever fires during a cleanup.
        fks = conn.execute(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid <> confrelid AND confdeltype <> 'n'"
        ).fetchall()
        assert ('"TaskRunExecutionSnapshot"', '"TaskRun"') in fks
        order = {f'"{t}"': i for i, t in enumerate(tables)}
        for child, parent in fks:
            if child in order and parent in order:
                assert order[child] < order[parent], (child, parent)
        # A table reached through another comes before it.
        for i, step in enumerate(STEPS):
            for read in step.reads:
                assert tables.index(read) > i, (step.table, read)


def test_a_task_run_only_delete_hits_the_restrict_foreign_key(cp, ro, tenant):
    # The old behaviour: deleting "TaskRun" rows alone fails on a run with a
    # snapshot, in both locations (and on the legacy waitpoint edge).
    env = tenant.environment(cp, archived_at=ARCHIVED)
    for conn, new in ((ro, True), (cp, False)):
        (run,) = seed_runs(conn, env, tenant.project_id, 1, new=new)
        demo.insert_snapshot(
            conn,
            run_id=run,
            environment_id=env,
            project_id=tenant.project_id,
            organization_id=tenant.organization_id,
        )
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as failed:
            conn.execute('DELETE FROM "TaskRun" WHERE "runtimeEnvironmentId" = %s', (env,))
        assert failed.value.diag.constraint_name == "TaskRunExecutionSnapshot_runId_fkey"
        assert runs_of(conn, env) == 1
    (run,) = seed_runs(cp, env, tenant.project_id, 1, new=False)
    waitpoint = demo.insert_waitpoint(cp, environment_id=env, project_id=tenant.project_id)
    demo.insert_run_waitpoint(cp, run_id=run, waitpoint_id=waitpoint, project_id=tenant.project_id)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as failed:
        cp.execute('DELETE FROM "TaskRun" WHERE "id" = %s', (run,))
    assert failed.value.diag.constraint_name == "TaskRunWaitpoint_taskRunId_fkey"


# ------------------------------------------------------------ every table


def test_dry_run_counts_every_table_exactly(databases, cp, ro, graph):
    result = cleanup("--environment", graph["archived"], "--dry-run", *database_flags(databases))
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    data = graph["data"]["archived"]
    assert reported(result.stdout) == {
        **expected("run-ops", data["ro"]),
        **expected("legacy", data["cp"]),
    }
    for name in ("archived", "other"):
        assert left_of(cp, ro, graph["data"][name]) == all_of(graph["data"][name])


def test_cleanup_deletes_every_table_of_the_environment_only(databases, cp, ro, graph):
    result = cleanup(
        "--environment", graph["archived"], "--batch-size", "2", *database_flags(databases)
    )
    assert result.returncode == 0, result.stderr
    data = graph["data"]["archived"]
    assert reported(result.stdout) == {
        **expected("run-ops", data["ro"]),
        **expected("legacy", data["cp"]),
    }
    assert left_of(cp, ro, data) == nothing_of(data)
    other = graph["data"]["other"]
    assert left_of(cp, ro, other) == all_of(other)
    # Bounded: no batch deleted more than 2 rows.
    sizes = [int(m) for m in re.findall(r"deleted (\d+) row\(s\) from", result.stderr)]
    assert sizes and max(sizes) == 2 and sum(sizes) == sum(reported(result.stdout).values())
    # Re-running finds nothing left and succeeds.
    again = cleanup("--environment", graph["archived"], *database_flags(databases))
    assert again.returncode == 0, again.stderr
    assert set(reported(again.stdout).values()) == {0}


def test_interrupted_cleanup_re_runs_to_completion(databases, cp, ro, graph):
    env = graph["archived"]
    data = graph["data"]["archived"]
    args = ["--environment", env, "--batch-size", "1", *database_flags(databases)]
    # Hold a lock on one run-ops snapshot of the environment: the cleanup
    # commits batches of the tables before it, then blocks (the checkpoint's
    # SET NULL or the snapshot's delete) and is killed there.
    locked = data["ro"]["TaskRunExecutionSnapshot"][-1]
    with psycopg.connect(databases.run_ops) as locker:
        locker.execute(
            'SELECT 1 FROM "TaskRunExecutionSnapshot" WHERE "id" = %s FOR UPDATE', (locked,)
        )
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
        # It cannot get past the locked snapshot: wait until it waits on it.
        with psycopg.connect(databases.run_ops, autocommit=True) as watcher:
            wait_until(
                lambda: watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                    "'controlplane-resolver:cleanup' AND wait_event_type = 'Lock'"
                ).fetchone(),
                timeout=30,
                what="the cleanup blocked on the locked snapshot",
            )
        assert proc.poll() is None, "the cleanup finished before it was interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        locker.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'controlplane-resolver:cleanup'"
        )
    # Interrupted midway: the batch tables are gone, the runs and snapshots are not.
    left = remaining(ro, data["ro"])
    assert left["BatchTaskRunItem"] == 0 and left["BatchTaskRun"] == 0
    assert left["TaskRun"] == len(data["ro"]["TaskRun"])
    assert left["TaskRunExecutionSnapshot"] >= 1
    assert remaining(cp, data["cp"]) == id_counts(data["cp"])

    dry = cleanup("--environment", env, "--dry-run", *database_flags(databases))
    assert dry.returncode == 0, dry.stderr
    assert run_ops_only(reported(dry.stdout)) == {
        ("run-ops", table): n for table, n in left.items()
    }
    result = cleanup(*args)
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == reported(dry.stdout)
    assert left_of(cp, ro, data) == nothing_of(data)
    other = graph["data"]["other"]
    assert left_of(cp, ro, other) == all_of(other)


# ------------------------------------------------------------ targets


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
    org = tenant.organization_id
    data = [
        {
            "ro": seed_run_data(ro, env, project, org, n=2, new=True),
            "cp": seed_run_data(cp, env, project, org, n=2, new=False),
        }
        for env in envs
    ]
    tags = {
        "ro": [demo.insert_run_tag(ro, project_id=project) for _ in range(2)],
        "cp": [demo.insert_run_tag(cp, project_id=project) for _ in range(3)],
    }
    kept_tags = {
        "ro": [demo.insert_run_tag(ro, project_id=tenant.project_id)],
        "cp": [demo.insert_run_tag(cp, project_id=tenant.project_id)],
    }
    before = snapshot(cp, ro, dataset)

    live = cleanup("--project", project, *database_flags(databases))
    assert live.returncode == 3 and all(env in live.stderr for env in envs), live
    assert [runs_of(ro, e) for e in envs] == [2, 2]

    cp.execute('UPDATE "Project" SET "deletedAt" = %s WHERE "id" = %s', (ARCHIVED, project))
    dry = cleanup("--project", project, "--dry-run", *database_flags(databases))
    result = cleanup("--project", project, "--batch-size", "2", *database_flags(databases))
    assert result.returncode == 0, result.stderr
    want = Counter[tuple[str, str]]()
    for d in data:
        want.update(expected("run-ops", d["ro"]))
        want.update(expected("legacy", d["cp"]))
    want.update({("run-ops", "TaskRunTag"): 2, ("legacy", "TaskRunTag"): 3})
    assert reported(result.stdout) == dict(want) == reported(dry.stdout)
    for d in data:
        assert left_of(cp, ro, d) == nothing_of(d)
    assert remaining(ro, {"TaskRunTag": tags["ro"] + kept_tags["ro"]}) == {"TaskRunTag": 1}
    assert remaining(cp, {"TaskRunTag": tags["cp"] + kept_tags["cp"]}) == {"TaskRunTag": 1}
    assert snapshot(cp, ro, dataset) == before
    # The deletes were keyed per environment, never on "TaskRun"."projectId".
    assert "projectId" not in result.stderr


def test_unknown_project_is_an_error_and_a_gone_environment_is_cleaned(databases, cp, ro, tenant):
    unknown = cleanup("--project", demo.new_cuid(), *database_flags(databases))
    assert unknown.returncode == 1 and "--environment" in unknown.stderr, unknown
    # A hard-deleted environment leaves run-ops rows behind (no foreign keys there).
    gone = demo.new_cuid()
    rows = seed_run_data(ro, gone, tenant.project_id, tenant.organization_id, new=True)
    result = cleanup("--environment", gone, *database_flags(databases))
    assert result.returncode == 0, result.stderr
    assert run_ops_only(reported(result.stdout)) == expected("run-ops", rows)
    assert runs_reported(result.stdout)["legacy"] == 0
    assert remaining(ro, rows) == dict.fromkeys(rows, 0)


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
    assert runs_reported(result.stdout) == {"run-ops = legacy": 4}
    assert {loc for loc, _ in reported(result.stdout)} == {"run-ops = legacy"}
    assert snapshot(cp, ro, dataset)["archived"] == (before["archived"][0], 0)


def test_split_off_cleans_the_control_plane_database(databases, cp, ro, dataset):
    result = cleanup("--environment", dataset["archived"], *database_flags(databases, split=False))
    assert result.returncode == 0, result.stderr
    assert runs_reported(result.stdout) == {"run-ops": 7, "control-plane": 4}
    assert snapshot(cp, ro, dataset)["archived"] == (0, 0)


# ------------------------------------------------------------ migrate


@pytest.mark.parametrize("schema", ["control_plane", "run_ops"])
def test_migrate_upgrades_a_database_migrated_before_the_run_tables(databases, schema):
    # A database migrated by the previous schema: everything before the
    # idempotent tail, and the marker.
    name = f"cleanup_upgrade_{secrets.token_hex(4)}"
    with psycopg.connect(databases.control_plane, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(databases.control_plane, dbname=name)
    try:
        old, _, _ = schema_sql(schema).partition(UPGRADE_LINE)
        with psycopg.connect(dsn) as conn:
            conn.execute(old)
            conn.execute(
                'CREATE TABLE "_controlplane_resolver_schema" (schema TEXT NOT NULL, '
                "applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            conn.execute(
                'INSERT INTO "_controlplane_resolver_schema" (schema) VALUES (%s)', (schema,)
            )
        assert migrate(dsn, schema) == "upgraded"
        assert migrate(dsn, schema) == "already migrated"
        with psycopg.connect(dsn) as conn:
            present = {
                t
                for (t,) in conn.execute(
                    "SELECT t FROM unnest(%s::text[]) t "
                    "WHERE to_regclass(quote_ident(t)) IS NOT NULL",
                    ([s.table for s in STEPS],),
                )
            }
            constraint = conn.execute(
                "SELECT confdeltype FROM pg_constraint "
                "WHERE conname = 'TaskRunExecutionSnapshot_runId_fkey'"
            ).fetchone()
        assert constraint == ("r",)  # RESTRICT, as on the platform
        only_here = {
            "control_plane": {"_completedWaitpoints", "_WaitpointRunConnections", "BulkActionItem"},
            "run_ops": {"CompletedWaitpoint", "WaitpointRunConnection"},
        }
        assert (
            present
            == {s.table for s in STEPS}
            - only_here["run_ops" if schema == "control_plane" else "control_plane"]
        )
    finally:
        with psycopg.connect(databases.control_plane, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
