"""The benchmark: a real server process over two real PostgreSQL clusters,
driven by a separate client process (bench/load.py). Reports ratios
measured in one run, because this machine is shared and noisy.

    make bench                     # or: .venv/bin/python bench/run.py [--duration 5]

Scenarios (each run ``--rounds`` times, interleaved; the median is kept):

* ``health`` — grpc.health.v1.Health/Check on the same server: the floor
  for this stack (a call that does no work).
* ``resolve_env`` — ResolveEnv over 100 hot environments: cache hits.
* ``read_run`` — ReadRun of new-shape runs: never cached, one query each.
* ``batch_resolve_envs_100`` vs ``resolve_env_uncached_singles`` — ids
  resolved per second by batches of 100 versus single calls over 5,000
  environments.

Plus database queries per 1,000 RPCs at steady state (pg_stat_statements)
and the queries one stampede of 64 concurrent cold calls on one key costs.
"""

from __future__ import annotations

import argparse
import asyncio
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


def load(address: str, scenario: str, ids_file: str, duration: float,
         concurrency: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "load.py"), "--target", address, "--scenario", scenario,
         "--ids", ids_file, "--duration", str(duration), "--concurrency", str(concurrency)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


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
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per scenario run")
    parser.add_argument("--rounds", type=int, default=2)
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
        env = {**os.environ, "CONTROL_PLANE_DATABASE_URL": cp_dsn, "RUN_OPS_DATABASE_URL": ro_dsn,
               "RUN_OPS_SPLIT_ENABLED": "1", "REALTIME_BACKEND_NATIVE_ENABLED": "1",
               "RESOLVER_ADDR": address, "RESOLVER_LOG_LEVEL": "WARNING"}
        log = open(Path(tempfile.gettempdir()) / "bench-server.log", "w")
        server = subprocess.Popen([str(BIN / "controlplane-resolver"), "serve"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        wait_serving(address)

        scenarios = ["health", "resolve_env", "read_run", "batch_resolve_envs_100",
                     "resolve_env_uncached_singles"]
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
        # Fill the cache with the hot environments: steady state, not cold start.
        load(address, "resolve_env", ids_file.name, 1.0, args.concurrency)
        env_queries = []
        for _ in range(args.rounds):
            for scenario in scenarios:
                if scenario in ("batch_resolve_envs_100", "resolve_env_uncached_singles"):
                    # Start each of these cold, so both pay for their loads.
                    stub_channel = grpc.insecure_channel(address)
                    resolver_pb2_grpc.ControlPlaneResolverServiceStub(stub_channel).Invalidate(
                        pb.InvalidateRequest(organization_id=_org_of(cp_dsn)))
                    stub_channel.close()
                before = statement_calls(cp_dsn, '"RuntimeEnvironment"')
                r = load(address, scenario, ids_file.name, args.duration, args.concurrency)
                after = statement_calls(cp_dsn, '"RuntimeEnvironment"')
                if scenario == "resolve_env":
                    env_queries.append((after - before) * 1000 / max(1, r["calls"]))
                results[scenario].append(r)
                print(f"  {scenario:30s} {r['rps']:8.0f} rps  p50 {r['p50_ms']:.2f} ms  "
                      f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)

        # Stampedes: 64 concurrent calls on keys nobody asked for yet.
        stampede_queries = []
        for env_id in ids["cold_environments"]:
            before = statement_calls(cp_dsn, 'FROM "RuntimeEnvironment" e')
            failures = asyncio.run(stampede(address, env_id))
            stampede_queries.append(statement_calls(cp_dsn, 'FROM "RuntimeEnvironment" e')
                                    - before)
            assert failures == 0, f"{failures} stampede calls failed"

        med = {s: {k: statistics.median(r[k] for r in rs) for k in
                   ("rps", "items_per_s", "p50_ms", "p99_ms")}
               for s, rs in results.items()}
        floor = med["health"]["rps"]
        rows = [
            ("Health/Check (floor)", med["health"], 1.0, ""),
            ("ResolveEnv, cache hit", med["resolve_env"], med["resolve_env"]["rps"] / floor,
             ">= 0.95"),
            ("ReadRun, uncached", med["read_run"], med["read_run"]["rps"] / floor, ">= 0.6"),
        ]
        print("\n| scenario | calls/s | p50 ms | p99 ms | ratio to floor | target |")
        print("|---|---:|---:|---:|---:|---|")
        for name, m, ratio, target in rows:
            print(f"| {name} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                  f"{ratio:.2f} | {target} |")
        batch = med["batch_resolve_envs_100"]["items_per_s"]
        singles = med["resolve_env_uncached_singles"]["items_per_s"]
        print("\n| measure | value | target |\n|---|---:|---|")
        print(f"| BatchResolveEnvs(100): ids/s ÷ single-call ids/s | {batch / singles:.1f} "
              f"({batch:.0f} / {singles:.0f}) | >= 20 |")
        print(f"| control-plane queries per 1,000 cache-hit ResolveEnv | "
              f"{statistics.median(env_queries):.2f} | ~0 |")
        print(f"| queries for a stampede of 64 cold calls on one key (5 keys) | "
              f"{', '.join(map(str, stampede_queries))} | exactly 1 |")
        print(f"\n{args.rounds} rounds of {args.duration:g} s per scenario, {args.concurrency} "
              f"calls in flight, medians; machine: {os.cpu_count()} cores.")
        print(f"reproduce: .venv/bin/python bench/run.py --duration {args.duration:g} "
              f"--rounds {args.rounds} --concurrency {args.concurrency}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(15)
        for c in clusters:
            c.destroy()


def _org_of(cp_dsn: str) -> str:
    with psycopg.connect(cp_dsn) as conn:
        row = conn.execute('SELECT "id" FROM "Organization" LIMIT 1').fetchone()
    assert row is not None
    return str(row[0])


if __name__ == "__main__":
    main()
