"""The near-cache benchmark (issue 15's targets): real server processes
over real PostgreSQL clusters with the invalidation triggers installed, and
client processes with ``near_cache=True``.

    .venv/bin/python bench/near_cache.py [--updates 50 --duration 2]

Three measurements, in one run:

* **hit rate** — from one client process, sequential near-cache hits per
  second against sequential Health/Check calls per second to a server
  (the RPC floor), measured floor, hits, floor; target ≥ 50×;
* **propagation** — 3 server processes, 4 client processes each polling
  one environment's ``ResolveEnv`` about every half millisecond; the
  environment's row is updated ``--updates`` times, and for each update the
  time from its commit to the moment the *last* client stops returning the
  old value is recorded; target p99 ≤ 100 ms;
* **stream cut** — the same set-up, with two of the three server processes
  killed (SIGKILL), one a third of the way through the updates, the other
  two thirds, and the row updated while clients reconnect: every answer a
  client returns after the commit of a newer value is counted as stale with
  how long after the commit it came; goal: none later than the propagation
  bound.

Clients reach the servers through one target naming all three
(``ipv4:…``), as engine nodes reach a headless Service: the near-cache's
channel pins to one of them (shuffled) and moves to another when it dies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import psycopg

# bench/run.py (this script's directory is on sys.path): server settings.
import run as bench

from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster, free_port
from controlplane_resolver.dev.migrate import create_migrated
from controlplane_resolver.invalidation import triggers

SERVERS = 3
CLIENTS = 4
#: Stale answers later than this after a commit are counted against the goal.
BOUND_S = 0.1


# ------------------------------------------------------------ client side


def client_main(target: str, env_id: str, conn: Connection, stop: Any) -> None:
    """A client process: waits for its near-cache to be live, then either
    measures the hit rate (``"hitrate"``) or polls until ``stop`` is set,
    logging each change of the answer with its time (``"poll"``)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from controlplane_resolver_client import ResolverClient, ResolverError, StreamState

    client = ResolverClient(target, near_cache=True, timeout=2)
    deadline = time.monotonic() + 30
    while client.near_cache_stats().state is not StreamState.LIVE:  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            conn.send({"error": "near-cache stream not live within 30 s"})
            return
        time.sleep(0.01)  # polling interval
    conn.send("live")
    mode = conn.recv()
    if mode == "hitrate":
        duration = conn.recv()
        first_address = target.removeprefix("ipv4:").split(",")[0]
        channel = grpc.insecure_channel(first_address)
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()

        def floor() -> float:
            calls, end = 0, time.perf_counter() + duration
            while time.perf_counter() < end:
                health.Check(request, timeout=5)
                calls += 1
            return calls / duration

        def hits() -> float:
            client.resolve_env(env_id)  # kept from here on
            before = client.near_cache_stats().hits  # type: ignore[union-attr]
            calls, end = 0, time.perf_counter() + duration
            while time.perf_counter() < end:
                for _ in range(100):
                    client.resolve_env(env_id)
                calls += 100
            kept = client.near_cache_stats().hits - before  # type: ignore[union-attr]
            if kept != calls:
                raise SystemExit(f"{calls - kept} of {calls} lookups were not hits")
            return calls / duration

        floors = [floor()]
        hit_rate = hits()
        floors.append(floor())
        conn.send({"floors": floors, "hits": hit_rate})
        channel.close()
        client.close()
        return
    log: list[tuple[float, int]] = []
    errors = 0
    last = None
    client.resolve_env(env_id)  # kept from here on
    conn.send("polling")
    while not stop.is_set():
        try:
            env = client.resolve_env(env_id)
        except ResolverError:
            errors += 1
            continue
        assert env is not None
        value = env.maximum_concurrency_limit
        if value != last:
            log.append((time.monotonic(), value))
            last = value
        time.sleep(0.0005)  # polling interval
    stats = client.near_cache_stats()
    conn.send({"log": log, "errors": errors, "stats": stats.__dict__ if stats else None})
    client.close()


# ------------------------------------------------------------ parent side


def start_servers(cp_dsn: str, ro_dsn: str, ports: list[int], log: Any) -> list[subprocess.Popen]:
    procs = []
    for port in ports:
        env = bench.server_env(
            cp_dsn,
            ro_dsn,
            RESOLVER_ADDR=f"127.0.0.1:{port}",
            CONTROL_PLANE_CACHE_TTL_MS="600000",
            CONTROL_PLANE_CACHE_HARD_TTL_MS="600000",
        )
        procs.append(subprocess.Popen(bench.SERVE, env=env, stdout=log, stderr=log))
    for port in ports:
        bench.wait_serving(f"127.0.0.1:{port}")
    return procs


def start_clients(ctx: Any, target: str, env_id: str, count: int) -> list[tuple[Any, Any, Any]]:
    clients = []
    for _ in range(count):
        parent, child = ctx.Pipe()
        stop = ctx.Event()
        proc = ctx.Process(target=client_main, args=(target, env_id, child, stop), daemon=True)
        proc.start()
        clients.append((proc, parent, stop))
    return clients


def staleness(
    logs: list[list[tuple[float, int]]], commits: list[tuple[float, int]]
) -> tuple[list[float], list[float]]:
    """For each commit, how long after it the slowest client still returned
    an older value (the propagation time), and every client's stale answer
    time beyond the commit, as the client logs of answer changes show."""
    per_update = []
    late = []
    for committed_at, value in commits:
        worst = 0.0
        for log in logs:
            # The first time this client returned this value or a newer one.
            seen = next((t for t, v in log if v >= value), None)
            if seen is None:
                raise SystemExit(f"a client never returned {value}")
            lag = max(0.0, seen - committed_at)
            worst = max(worst, lag)
            # An older value returned after having seen this one: a regression.
            for t, v in log:
                if t > seen and v < value:
                    late.append(t - committed_at)
                    print(f"older answer: {v} at {t:.4f} after {value} at {seen:.4f}")
        per_update.append(worst)
    return per_update, late


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    clusters = [LocalCluster(f"bench-{n}") for n in ("cp", "ro")]
    procs: list[subprocess.Popen] = []
    try:
        print("starting 2 clusters…", flush=True)
        for cluster in clusters:
            cluster.start()
        locations = create_migrated(clusters, "")
        cp_dsn, ro_dsn = locations.control_plane, locations.run_ops
        triggers.install(cp_dsn)
        with psycopg.connect(cp_dsn, autocommit=True) as cp:
            org = demo.insert_organization(cp)
            project = demo.insert_project(cp, organization_id=org)
            env_id = demo.insert_environment(
                cp, project_id=project, organization_id=org, maximum_concurrency_limit=1
            )
        ports = [free_port() for _ in range(SERVERS)]
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        with open(bench.SERVER_LOG, "w") as log:
            print(f"starting {SERVERS} servers…", flush=True)
            procs = start_servers(cp_dsn, ro_dsn, ports, log)

            # Hit rate, from one client process.
            [(proc, conn, _stop)] = start_clients(ctx, f"127.0.0.1:{ports[0]}", env_id, 1)
            if conn.recv() != "live":
                raise SystemExit("the hit-rate client did not start")
            conn.send("hitrate")
            conn.send(args.duration)
            hit = conn.recv()
            proc.join()
            if "error" in hit:
                raise SystemExit(hit["error"])
            floor = statistics.mean(hit["floors"])

            # Propagation: 4 clients, 3 servers, updates by triggers.
            def scenario(kill: bool) -> dict[str, Any]:
                clients = start_clients(ctx, target, env_id, CLIENTS)
                for _proc, conn, _stop in clients:
                    if conn.recv() != "live":
                        raise SystemExit("a client did not start")
                    conn.send("poll")
                for _proc, conn, _stop in clients:
                    assert conn.recv() == "polling"
                commits = []
                with psycopg.connect(cp_dsn, autocommit=True) as cp:
                    value = cp.execute(
                        'SELECT "maximumConcurrencyLimit" FROM "RuntimeEnvironment" '
                        'WHERE "id" = %s',
                        (env_id,),
                    ).fetchone()[0]
                    for i in range(args.updates):
                        if kill and i in (args.updates // 3, 2 * args.updates // 3):
                            # Two of the three: most likely some client's own.
                            victim = procs[0 if i == args.updates // 3 else 1]
                            victim.send_signal(signal.SIGKILL)
                            victim.wait()
                        value += 1
                        cp.execute(
                            'UPDATE "RuntimeEnvironment" SET "maximumConcurrencyLimit" = %s '
                            'WHERE "id" = %s',
                            (value, env_id),
                        )
                        commits.append((time.monotonic(), value))
                        time.sleep(0.2)  # pacing between updates
                reports = []
                for _proc, _conn, stop in clients:
                    stop.set()
                for proc, conn, _stop in clients:
                    reports.append(conn.recv())
                    proc.join()
                for r in reports:
                    if "error" in r:
                        raise SystemExit(r["error"])
                per_update, late = staleness([r["log"] for r in reports], commits)
                return {
                    "per_update": per_update,
                    "late": late,
                    "errors": sum(r["errors"] for r in reports),
                    "breaks": sum(r["stats"]["stream_breaks"] for r in reports),
                }

            print(f"propagation: {args.updates} updates, {CLIENTS} clients…", flush=True)
            normal = scenario(kill=False)
            print("stream cut: two servers killed in turn…", flush=True)
            cut = scenario(kill=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        for cluster in clusters:
            cluster.destroy()

    p99 = percentile(normal["per_update"], 0.99) * 1000
    p50 = percentile(normal["per_update"], 0.50) * 1000
    cut_p99 = percentile(cut["per_update"], 0.99) * 1000
    cut_max = max(cut["per_update"]) * 1000
    beyond = [t for t in cut["per_update"] if t > BOUND_S]
    print()
    print(f"# near-cache benchmark ({time.strftime('%Y-%m-%d')}, os.cpu_count()={os.cpu_count()})")
    print()
    print("| Measure | Result | Target | Met |")
    print("|---|---|---|---|")
    ratio = hit["hits"] / floor
    print(
        f"| near-cache hit vs Health/Check floor (calls/s, one client process) | "
        f"{hit['hits']:,.0f} / {floor:,.0f} = {ratio:.0f}× | ≥ 50× | "
        f"{'yes' if ratio >= 50 else 'no'} |"
    )
    print(
        f"| commit → every client new answer, {SERVERS} servers × {CLIENTS} clients, "
        f"{args.updates} updates | p50 {p50:.1f} ms, p99 {p99:.1f} ms | p99 ≤ 100 ms | "
        f"{'yes' if p99 <= 100 else 'no'} |"
    )
    met = "yes" if not beyond and not cut["late"] else "no"
    print(
        f"| same, two of the servers killed in turn | p99 {cut_p99:.1f} ms, max {cut_max:.1f} ms; "
        f"{len(beyond)} updates stale > {BOUND_S * 1000:.0f} ms; {len(cut['late'])} older "
        f"answers after a newer one; {cut['errors']} failed lookups; {cut['breaks']} stream "
        f"breaks | none stale beyond the bound | {met} |"
    )
    print()
    print(
        f"normal run: {len(normal['late'])} older answers after a newer one, "
        f"{normal['errors']} failed lookups"
    )
    for name, run in (("normal", normal), ("cut", cut)):
        lags = [round(t * 1000, 1) for t in run["per_update"]]
        print(f"commit → last client (ms) per update, {name} run: {lags}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
