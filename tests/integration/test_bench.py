"""The benchmark end to end at a tiny size: it must run on a fresh machine
and report every measure docs/benchmarks.md describes. Its numbers are
not judged here (timed assertions would only measure the CI machine); what
does not depend on speed is: the stampede's query count, the cache state
each batch-versus-single run claims (the server's own counters), and that
every answer was checked and right — and that a wrong one is caught."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from controlplane_resolver_client.v1 import resolver_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def bench_module(name: str) -> ModuleType:
    """``bench/<name>.py`` imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(script: str, *args: str, timeout: float) -> str:
    """Run ``bench/<script>`` with ``args``; its report, once it exits 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.timeout(600)
def test_bench_runs_and_reports_every_measure():
    report = bench(
        "run.py",
        "--rounds",
        "1",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
        "--environments",
        "120",
        "--runs",
        "120",
        "--fresh-environments",
        "1000",
        timeout=540,
    )
    for row in (
        "| Health/Check (floor) |",
        "| ResolveEnv, cache hit |",
        "| ReadRun, uncached |",
        "| ReadRun, naive pool + transaction per lookup (reference server) |",
        "control-plane queries per 1,000 cache-hit ResolveEnv",
        "| BatchResolveEnvs(100) ids/s ÷ single-call ids/s |",
        "1 process (`serve --processes 1`",
        "2 processes (`serve --processes 2`",
        "reproduce: .venv/bin/python bench/run.py",
        "| ReadRun, uncached, legacy id (run-ops miss, then the legacy database) |",
        "| ReadRun calls/s: legacy id ÷ new id |",
        "| target | this run (median, IQR) | met |",
    ):
        assert row in report, f"the report lacks {row!r}:\n{report}"
    stampede = re.search(r"stampede of 64 cold calls on one key \(5 keys\) \| ([\d, ]+) \|", report)
    assert stampede, report
    assert [int(n) for n in stampede.group(1).split(",")] == [1] * 5
    # Batch against single on one cache state, as the server counted it:
    # warm runs served every id from the cache, cold runs none.
    for state, served in (
        ("warm: every id cached", "100% / 100%"),
        ("cold: no id cached", "0% / 0%"),
    ):
        row = re.search(
            rf"^\| BatchResolveEnvs\(100\) ids/s ÷ single-call ids/s \| {state} \| [\d.]+ "
            rf"\| \d+ \| \d+ \| ([^|]+) \|",
            report,
            re.M,
        )
        assert row, f"no batch-versus-single row for {state!r}:\n{report}"
        assert row.group(1).strip() == served, row.group(0)
    # Every answer was checked and right; and the check catches wrong ones.
    assert "WRONG" not in report, report
    assert re.search(
        r"^\| content check: BatchResolveEnvs\(100\) of ids that do not exist \| 0 of (\d+) ids "
        r"counted resolved, \1 flagged wrong: flagged \|",
        report,
        re.M,
    ), report


def test_load_counts_only_right_answers():
    """bench/load.py's checks, on answers made up here: a batch whose items
    are ``not_found`` (or another environment) resolves nothing, and a run
    from the wrong database or with another id is wrong."""
    load = bench_module("load")
    ids = ["env_a", "env_b", "env_c"]
    not_found = pb.BatchResolveEnvsResponse(
        results=[pb.BatchResolveEnvsResult(environment_id=i, not_found=True) for i in ids]
    )
    assert load.batch_outcome(ids, not_found) == (0, 3)
    mixed = pb.BatchResolveEnvsResponse(
        results=[
            pb.BatchResolveEnvsResult(
                environment_id="env_a", environment=pb.Environment(id="env_a")
            ),
            pb.BatchResolveEnvsResult(
                environment_id="env_b", environment=pb.Environment(id="env_x")
            ),
        ]
    )
    assert load.batch_outcome(ids, mixed) == (1, 2)
    run = pb.ReadRunResponse(run=pb.TaskRun(id="run_1"), source=pb.RUN_SOURCE_RUN_OPS)
    assert load.run_outcome("run_1", run, pb.RUN_SOURCE_RUN_OPS) == (1, 0)
    assert load.run_outcome("run_1", run, pb.RUN_SOURCE_LEGACY) == (0, 1)
    assert load.run_outcome("run_2", run, pb.RUN_SOURCE_RUN_OPS) == (0, 1)
    env = pb.ResolveEnvResponse(environment=pb.Environment(id="env_a"))
    assert load.environment_outcome("env_a", env) == (1, 0)
    assert load.environment_outcome("env_b", pb.ResolveEnvResponse()) == (0, 1)


@pytest.mark.timeout(300)
def test_compare_runs_two_configurations_and_reports_each_scenario():
    report = bench(
        "compare.py",
        "--b",
        "RESOLVER_MAX_WORKERS=4",
        "--rounds",
        "1",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
        timeout=280,
    )
    assert "B: RESOLVER_MAX_WORKERS=4" in report, report
    for scenario in ("health", "classify", "resolve_env", "read_run", "read_run_legacy"):
        assert re.search(rf"^\| {scenario} \| \d+ \| \d+ \| [\d.]+ \| [01]/1 \|", report, re.M), (
            f"no row for {scenario}:\n{report}"
        )
    assert "reproduce: .venv/bin/python bench/compare.py --b RESOLVER_MAX_WORKERS=4" in report


@pytest.mark.timeout(600)
def test_shard_bench_runs_and_reports_its_targets():
    report = bench(
        "shards.py",
        "--rounds",
        "1",
        "--duration",
        "0.2",
        "--runs",
        "150",
        timeout=540,
    )
    for row in (
        "ReadRun gen-2 over 3 shards / single run-ops:",
        "MintId base32hex / health floor:",
        "server CPU per call",
    ):
        assert row in report, f"the report lacks {row!r}:\n{report}"
    # Not a speed: every batch read each shard exactly once.
    assert "one query per shard per call: yes" in report, report
    # Reads were coalesced into counted queries on both servers.
    assert re.search(r"run ids per query [1-9][\d.]* single, [1-9][\d.]* per shard", report), report


@pytest.mark.timeout(300)
def test_near_cache_bench_runs_and_reports_its_targets():
    report = bench("near_cache.py", "--updates", "6", "--duration", "0.2", timeout=240)
    for row in (
        "near-cache hit vs Health/Check floor",
        "commit → every client new answer",
        "two of the servers killed in turn",
    ):
        assert row in report, f"the report lacks {row!r}:\n{report}"
    # Not a speed: no client went back to an older answer once it had a newer one.
    assert "older answer:" not in report
    assert re.search(r"normal run: 0 older answers after a newer one", report), report


@pytest.mark.timeout(300)
def test_handler_bench_runs_and_reports_each_call():
    report = bench(
        "handlers.py", "--rounds", "1", "--duration", "0.2", "--loop-calls", "200", timeout=240
    )
    for row in (
        "| Health/Check |",
        "| ClassifyRunId |",
        "| MintId, gen-2 root run |",
        "| MintId, resolver's work taken out (control) |",
        "MintId's work (resolver.mint_id):",
        "of its thread's CPU per call in the loaded server",
        "reproduce: .venv/bin/python bench/handlers.py",
    ):
        assert row in report, f"the report lacks {row!r}:\n{report}"
