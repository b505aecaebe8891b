"""The benchmark: a real server process over two real PostgreSQL clusters,
driven by a separate client process (bench/load.py). Reports ratios
measured in one run, because this machine is shared and noisy.

    make bench        # or: .venv/bin/python bench/run.py [--duration 2 --rounds 12]

Each round measures, on the same server and back to back:

* ``health`` — grpc.health.v1.Health/Check: the floor for this stack (a call
  that does no work), measured before and after each scenario below; each
  scenario's ratio is to the mean of the two floors around it;
* ``classify`` — ClassifyRunId: our servicer with no I/O and no cache, a
  reference for what any call with a payload costs on this stack;
* ``resolve_env`` — ResolveEnv over 100 hot environments: cache hits, and the
  control-plane queries they cost per 1,000 calls (pg_stat_statements);
* ``read_run`` — ReadRun of new-shape runs: never cached, database-bound, and
  how many run ids each coalesced query carried (the server's /metrics);
* ``batch_resolve_envs_100`` vs ``resolve_env_uncached_singles`` — ids
  resolved per second by batches of 100 versus single calls, both starting
  from a cold cache.

Then: the queries one stampede of 64 concurrent cold calls on one key costs;
ReadRun on bench/naive_reference.py (the issue's naive reference) against
that server's own floor; and throughput of ``serve --processes 2`` over 1
process (8 connections). The report prints medians over rounds with
interquartile ranges, and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver import demo
from controlplane_resolver.localpg import LocalCluster, free_port
from controlplane_resolver.migrate import migrate
from controlplane_resolver_client import pb
from controlplane_resolver_client._gen.controlplane.resolver.v1 import resolver_pb2_grpc

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STATS = {"shared_preload_libraries": "pg_stat_statements"}
#: One round: every scenario between two measurements of the floor.
ROUND = ("health", "classify", "health", "resolve_env", "health", "read_run", "health")


def seed(cp_dsn: str, ro_dsn: str, environments: int, runs: int) -> dict[str, list[str]]:
    with psycopg.connect(cp_dsn) as cp, psycopg.connect(ro_dsn) as ro:
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        env_ids = [demo.insert_environment(cp, project_id=project, organization_id=org)
                   for _ in range(environments)]
        # Environments no scenario touches: cold keys for the stampedes.
        cold = [demo.insert_environment(cp, project_id=project, organization_id=org)
                for _ in range(5)]
        run_ids = []
        for i in range(runs):
            run_id = demo.new_ksuid()
            demo.insert_run(ro, id=run_id, environment_id=env_ids[i % len(env_ids)],
                            project_id=project, organization_id=org)
            run_ids.append(run_id)
        cp.commit()
        ro.commit()
    return {"hot_environments": env_ids[:100], "all_environments": env_ids, "runs": run_ids,
            "cold_environments": cold}


def wait_serving(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"server at {address} did not become SERVING")


def load(address: str, scenario: str, ids_file: str, duration: float, concurrency: int,
         channels: int = 1) -> dict[str, Any]:
    """Run bench/load.py in its own process and return its JSON report."""
    out = subprocess.run(
        [sys.executable, str(HERE / "load.py"), "--target", address, "--scenario", scenario,
         "--ids", ids_file, "--duration", str(duration), "--concurrency", str(concurrency),
         "--channels", str(channels)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def scrape(port: int) -> dict[str, float]:
    """The server's /metrics as {sample name{labels}: value} (labels dropped
    for single-series families, which is all this needs)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
            base = name.split("{", 1)[0]
            if 'database="run-ops"' in name:
                out[base] = float(value)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def invalidate_org(address: str, organization_id: str) -> None:
    with grpc.insecure_channel(address) as channel:
        resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel).Invalidate(
            pb.InvalidateRequest(organization_id=organization_id))


def statement_calls(dsn: str, fragment: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                           "WHERE query LIKE %s", (f"%{fragment}%",)).fetchone()
    return int(row[0]) if row else 0


async def stampede(address: str, env_id: str, n: int = 64) -> int:
    """Fire ``n`` concurrent ResolveEnv calls for one cold key; return failures."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        await channel.channel_ready()
        calls = [stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id), timeout=10)
                 for _ in range(n)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    return sum(1 for r in results if isinstance(r, BaseException))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per scenario run")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--environments", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()

    clusters = [LocalCluster("bench-cp", settings=STATS).start(),
                LocalCluster("bench-ro", settings=STATS).start()]
    server = None
    try:
        cp_dsn = clusters[0].create_database("platform")
        ro_dsn = clusters[1].create_database("run_ops")
        migrate(cp_dsn, "control_plane")
        migrate(ro_dsn, "run_ops")
        for dsn in (cp_dsn, ro_dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        print(f"seeding {args.environments} environments and {args.runs} runs…", flush=True)
        ids = seed(cp_dsn, ro_dsn, args.environments, args.runs)
        ids_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(ids, ids_file)
        ids_file.close()

        address = f"127.0.0.1:{free_port()}"
        metrics_port = free_port()
        env = {**os.environ, "CONTROL_PLANE_DATABASE_URL": cp_dsn, "RUN_OPS_DATABASE_URL": ro_dsn,
               "RUN_OPS_SPLIT_ENABLED": "1", "REALTIME_BACKEND_NATIVE_ENABLED": "1",
               "RESOLVER_ADDR": address, "RESOLVER_LOG_LEVEL": "WARNING",
               "RESOLVER_METRICS_ADDR": f"127.0.0.1:{metrics_port}"}
        log = open(Path(tempfile.gettempdir()) / "bench-server.log", "w")
        server = subprocess.Popen([str(BIN / "controlplane-resolver"), "serve"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        wait_serving(address)

        run = functools.partial(load, ids_file=ids_file.name, duration=args.duration,
                                concurrency=args.concurrency)
        ratios: dict[str, list[float]] = {"classify": [], "resolve_env": [], "read_run": []}
        # Server CPU per call: steadier than throughput on a shared machine,
        # since time stolen by neighbours does not count as our CPU.
        cpu_per_call: dict[str, list[float]] = {"health": [], "classify": [], "resolve_env": [],
                                                "read_run": []}
        results: dict[str, list[dict[str, Any]]] = {}
        env_queries, batch_ratios = [], []
        coalesced = {"batches": 0.0, "keys": 0.0}
        for round_no in range(1, args.rounds + 1):
            # Steady state: the hot environments are cached before measuring.
            run(address, "resolve_env", duration=0.5)
            measured: dict[str, dict[str, Any]] = {}
            floors: list[float] = []
            for scenario in ROUND:
                # Database and /metrics counters only around the scenarios they describe.
                before_q = (statement_calls(cp_dsn, '"RuntimeEnvironment"')
                            if scenario == "resolve_env" else 0)
                before_m = scrape(metrics_port) if scenario == "read_run" else {}
                cpu_before = cpu_seconds(server.pid)
                r = run(address, scenario)
                cpu_per_call[scenario].append((cpu_seconds(server.pid) - cpu_before) * 1e6
                                              / max(1, r["calls"] + r["errors"]
                                                    + r["warmup_calls"]))
                if scenario == "health":
                    floors.append(r["rps"])
                    results.setdefault(scenario, []).append(r)
                else:
                    measured[scenario] = r
                if scenario == "resolve_env":
                    env_queries.append((statement_calls(cp_dsn, '"RuntimeEnvironment"')
                                        - before_q) * 1000 / max(1, r["calls"]))
                if scenario == "read_run":
                    after_m = scrape(metrics_port)
                    for k in coalesced:
                        coalesced[k] += (after_m.get(f"resolver_run_read_{k}_total", 0)
                                         - before_m.get(f"resolver_run_read_{k}_total", 0))
            # Each scenario against the floor measured just before and just
            # after it: the machine is shared, and its speed drifts within
            # seconds, so a floor from another moment would add that drift.
            for i, scenario in enumerate(s for s in ROUND if s != "health"):
                ratios[scenario].append(measured[scenario]["rps"]
                                        / statistics.mean(floors[i:i + 2]))
            for scenario in ("batch_resolve_envs_100", "resolve_env_uncached_singles"):
                # Each starts cold, so both pay for their loads.
                invalidate_org(address, _org_of(cp_dsn))
                measured[scenario] = run(address, scenario)
            print(f"  round {round_no}  Health/Check {statistics.mean(floors):8.0f} calls/s  "
                  + "  ".join(f"{s} {measured[s]['rps']:.0f}" for s in measured), flush=True)
            for scenario, r in measured.items():
                results.setdefault(scenario, []).append(r)
            batch_ratios.append(measured["batch_resolve_envs_100"]["items_per_s"]
                                / measured["resolve_env_uncached_singles"]["items_per_s"])

        # Stampedes: 64 concurrent calls on keys nobody asked for yet.
        stampede_queries = []
        for env_id in ids["cold_environments"]:
            before = statement_calls(cp_dsn, 'FROM "RuntimeEnvironment" e')
            failures = asyncio.run(stampede(address, env_id))
            stampede_queries.append(statement_calls(cp_dsn, 'FROM "RuntimeEnvironment" e')
                                    - before)
            assert failures == 0, f"{failures} stampede calls failed"
        server.terminate()
        server.wait(15)
        server = None

        # The issue's calibration ("a naive pool with a transaction per lookup
        # reaches about 0.45 here"): that ReadRun, on this machine, against
        # its own server's floor (bench/naive_reference.py).
        naive_address = f"127.0.0.1:{free_port()}"
        naive_env = {**env, "RESOLVER_ADDR": naive_address}
        naive_env.pop("RESOLVER_METRICS_ADDR")
        server = subprocess.Popen([sys.executable, str(HERE / "naive_reference.py")],
                                  env=naive_env, stdout=log, stderr=subprocess.STDOUT)
        wait_serving(naive_address)
        naive_ratios, naive_rps = [], []
        for _ in range(max(3, args.rounds // 2)):
            before = run(naive_address, "health")["rps"]
            naive = run(naive_address, "read_run")["rps"]
            after = run(naive_address, "health")["rps"]
            naive_ratios.append(naive / statistics.mean((before, after)))
            naive_rps.append(naive)
        server.terminate()
        server.wait(15)
        server = None

        # Processes: the same server with 1 and with 2 processes, 8 connections.
        scaling = {}
        for processes in (1, 2):
            proc_address = f"127.0.0.1:{free_port()}"
            proc_env = {**env, "RESOLVER_ADDR": proc_address, "RESOLVER_PROCESSES": str(processes)}
            proc_env.pop("RESOLVER_METRICS_ADDR")
            server = subprocess.Popen([str(BIN / "controlplane-resolver"), "serve"],
                                      env=proc_env, stdout=log, stderr=subprocess.STDOUT)
            wait_serving(proc_address)
            run(proc_address, "resolve_env", duration=0.5, channels=8)
            scaling[processes] = {s: run(proc_address, s, channels=8)["rps"]
                                  for s in ("health", "resolve_env", "read_run")}
            server.terminate()
            server.wait(15)
            server = None

        med = {s: {k: statistics.median(r[k] for r in rs) for k in
                   ("rps", "items_per_s", "p50_ms", "p99_ms")} for s, rs in results.items()}
        print("\n| scenario | calls/s | p50 ms | p99 ms | ratio to floor (median of rounds) "
              "| target |")
        print("|---|---:|---:|---:|---:|---|")
        for name, key, target in (("Health/Check (floor)", "health", ""),
                                  ("ClassifyRunId (no I/O: our servicer's own floor)",
                                   "classify", ""),
                                  ("ResolveEnv, cache hit", "resolve_env", ">= 0.95"),
                                  ("ReadRun, uncached", "read_run", ">= 0.6")):
            m = med[key]
            ratio = statistics.median(ratios[key]) if key in ratios else 1.0
            print(f"| {name} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                  f"{ratio:.2f}{_quartiles(ratios.get(key))} | {target} |")
        print(f"| ReadRun, naive pool + transaction per lookup (reference server) | "
              f"{statistics.median(naive_rps):.0f} | | | {statistics.median(naive_ratios):.2f}"
              f"{_quartiles(naive_ratios)} | the issue: ~0.45 |")
        cpu = {s: statistics.median(v) for s, v in cpu_per_call.items()}
        print("\n| server CPU per call (median of rounds) | µs | ÷ Health/Check |")
        print("|---|---:|---:|")
        for name, key in (("Health/Check", "health"), ("ClassifyRunId", "classify"),
                          ("ResolveEnv, cache hit", "resolve_env"),
                          ("ReadRun, uncached", "read_run")):
            print(f"| {name} | {cpu[key]:.0f} | {cpu[key] / cpu['health']:.2f} |")
        batch = med["batch_resolve_envs_100"]["items_per_s"]
        singles = med["resolve_env_uncached_singles"]["items_per_s"]
        print("\n| measure | value | target |\n|---|---:|---|")
        print(f"| BatchResolveEnvs(100) ids/s ÷ single-call ids/s | "
              f"{statistics.median(batch_ratios):.1f} ({batch:.0f} / {singles:.0f}) | >= 20 |")
        print(f"| control-plane queries per 1,000 cache-hit ResolveEnv | "
              f"{statistics.median(env_queries):.2f} | ~0 |")
        print(f"| queries for a stampede of 64 cold calls on one key (5 keys) | "
              f"{', '.join(map(str, stampede_queries))} | exactly 1 |")
        if coalesced["batches"]:
            print(f"| ReadRun: run ids per coalesced query | "
                  f"{coalesced['keys'] / coalesced['batches']:.1f} | |")
        for s in ("health", "resolve_env", "read_run"):
            print(f"| `serve --processes 2` ÷ 1 process, {s} (8 connections) | "
                  f"{scaling[2][s] / scaling[1][s]:.2f} ({scaling[2][s]:.0f} / "
                  f"{scaling[1][s]:.0f}) | |")
        print(f"| ReadRun ratio ÷ the naive reference's ratio | "
              f"{statistics.median(ratios['read_run']) / statistics.median(naive_ratios):.2f} | "
              f"the issue: 0.6 / 0.45 = 1.33 |")
        print(f"\n{args.rounds} rounds of {args.duration:g} s per scenario, each scenario between two "
              f"floor measurements; ratios are medians of rounds (interquartile range in "
              f"brackets); {args.concurrency} calls in flight, client in its own process; "
              f"machine: {os.cpu_count()} cores.")
        print(f"reproduce: .venv/bin/python bench/run.py --duration {args.duration:g} "
              f"--rounds {args.rounds} --concurrency {args.concurrency}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(15)
        for c in clusters:
            c.destroy()


def _quartiles(values: list[float] | None) -> str:
    """`` (q1–q3)`` of per-round ratios: how far one round can be trusted."""
    if not values or len(values) < 2:
        return ""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f" ({q1:.2f}–{q3:.2f})"


def _org_of(cp_dsn: str) -> str:
    with psycopg.connect(cp_dsn) as conn:
        row = conn.execute('SELECT "id" FROM "Organization" LIMIT 1').fetchone()
    assert row is not None
    return str(row[0])


if __name__ == "__main__":
    main()
