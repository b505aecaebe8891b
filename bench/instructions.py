"""What a call costs the server, in instructions: the server runs under
valgrind's callgrind, which counts every instruction it executes, so the
count per call repeats to about 1 % whatever else the machine is doing —
unlike throughput on this shared machine, whose ratios move by ±10 % from
run to run.

    make bench-instructions    # or: .venv/bin/python bench/instructions.py [--duration 8]

It starts two throwaway clusters and ``controlplane-resolver serve`` under
callgrind (slow: start-up takes a minute or two), then for each scenario
zeroes the counters, drives the server from bench/load.py (``--concurrency`` calls in
flight, no warm-up), dumps the counters and divides the instructions by
the calls, after subtracting what the server's background threads (pool
upkeep, the listener, gRPC's timers) execute in that time when idle.
Each scenario runs ``--repeat`` times and the report gives the median and
its ratio to Health/Check. The cache's TTLs are set long so
that no refresh falls inside a ResolveEnv measurement: this measures a hit.

The ratio answers "does a cache hit cost no more than the health check
itself?" for the server's own work (docs/benchmarks.md lists the targets); it leaves out the kernel
(network, scheduling) and, for ReadRun, PostgreSQL. ReadRun is measured on
both routes: a new-shape id (run-ops only) and a legacy-shaped one (run-ops
first, then the legacy database). Answers are checked as in bench/run.py.

``--shards`` measures the base32hex generation instead (issue 14's targets):
three run-ops shards as three more databases of the run-ops cluster, and
MintId of a root run (a gen-2 id), ReadRun of gen-2 ids spread over the
shards and, beside it, ReadRun of v1 ids (the run-ops database: one query,
like a gen-2 read).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import (
    SERVE,
    create_databases,
    fail_on_wrong_answers,
    load,
    seed,
    server_env,
    wait_serving,
)
from shards import base32hex_settings, seed_one_server

from controlplane_resolver.dev.clusters import LocalCluster, free_port

SCENARIOS = ("health", "resolve_env", "classify", "read_run", "read_run_legacy")
SHARD_SCENARIOS = ("health", "classify", "mint_base32hex", "read_run", "read_run_gen2")
NAMES = {
    "health": "Health/Check",
    "resolve_env": "ResolveEnv, cache hit",
    "classify": "ClassifyRunId",
    "read_run": "ReadRun, uncached",
    "read_run_legacy": "ReadRun, uncached, legacy id (run-ops miss, then legacy)",
    "mint_base32hex": "MintId, base32hex root run (a gen-2 id)",
}
SHARD_NAMES = {
    **NAMES,
    "read_run": "ReadRun, uncached, a v1 id (the run-ops database)",
    "read_run_gen2": "ReadRun, uncached, gen-2 ids over 3 shards",
}


def dump_instructions(pid: int, out_dir: Path) -> int:
    """Ask callgrind in ``pid`` to dump its counters; return the
    instructions counted since the last zeroing."""
    before = set(out_dir.iterdir())
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in set(out_dir.iterdir()) - before:
            for line in path.read_text().splitlines():
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1])
        time.sleep(0.2)  # callgrind writes the file at its next safe point
    raise SystemExit("callgrind did not write a dump within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=8.0,
        help="seconds of calls per measurement (under callgrind: ~100 calls/s)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--shards", action="store_true", help="the base32hex generation over three shards"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="calls in flight (1: no two reads can share a coalesced query)",
    )
    args = parser.parse_args()
    scenarios = SHARD_SCENARIOS if args.shards else SCENARIOS
    names = SHARD_NAMES if args.shards else NAMES
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")

    clusters = [LocalCluster("instr-cp").start(), LocalCluster("instr-ro").start()]
    out_dir = Path(tempfile.mkdtemp(prefix="callgrind-"))
    server = None
    try:
        cp_dsn, ro_dsn = create_databases(clusters)
        settings: dict[str, str] = {}
        if args.shards:
            # Shards as databases of the run-ops cluster: the instructions are the server's.
            shard_dsns, ids = seed_one_server(cp_dsn, ro_dsn, clusters[1], runs=1000)
            settings = base32hex_settings(shard_dsns)
        else:
            ids = seed(cp_dsn, ro_dsn, environments=200, runs=1000)
        ids_file = out_dir / "ids.json"
        ids_file.write_text(json.dumps(ids))
        address = f"127.0.0.1:{free_port()}"
        env = server_env(
            cp_dsn,
            ro_dsn,
            RESOLVER_ADDR=address,
            RESOLVER_STARTUP_TIMEOUT_MS="600000",
            CONTROL_PLANE_CACHE_TTL_MS="3600000",
            CONTROL_PLANE_CACHE_HARD_TTL_MS="7200000",
            **settings,
        )
        log = open(out_dir / "server.log", "w")
        print("starting the server under callgrind (a minute or two)…", flush=True)
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out_dir}/cg.%p",
                "--dump-instr=no",
                sys.executable,
                *SERVE,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_serving(address, timeout=600)
        # Fill the cache and take every code path once before counting.
        for scenario in scenarios:
            load(address, scenario, str(ids_file), duration=2, concurrency=8, warmup=0)

        def zero() -> float:
            subprocess.run(
                ["callgrind_control", "--zero", str(server.pid)], check=True, capture_output=True
            )
            return time.monotonic()

        per_call: dict[str, list[float]] = {s: [] for s in scenarios}
        idle_rates = []
        for _ in range(args.repeat):
            started = zero()
            time.sleep(args.duration)
            idle_rates.append(dump_instructions(server.pid, out_dir) / (time.monotonic() - started))
            for scenario in scenarios:
                started = zero()
                r = load(
                    address,
                    scenario,
                    str(ids_file),
                    duration=args.duration,
                    concurrency=args.concurrency,
                    warmup=0,
                )
                busy = dump_instructions(server.pid, out_dir) - idle_rates[-1] * (
                    time.monotonic() - started
                )
                per_call[scenario].append(busy / r["calls"])
                print(
                    f"  {scenario:12s} {r['calls']:5d} calls  "
                    f"{per_call[scenario][-1] / 1000:8.1f} k instructions per call",
                    flush=True,
                )

        floor = statistics.median(per_call["health"])
        print("\n| scenario | server instructions per call (median) | ÷ Health/Check |")
        print("|---|---:|---:|")
        for key in scenarios:
            name = names[key]
            median = statistics.median(per_call[key])
            spread = f"{min(per_call[key]) / 1000:.0f}–{max(per_call[key]) / 1000:.0f} k"
            print(f"| {name} | {median / 1000:.1f} k ({spread}) | {median / floor:.3f} |")
        print(
            f"\n{args.repeat} measurements of {args.duration:g} s per scenario, "
            f"{args.concurrency} calls in "
            f"flight, server under valgrind --tool=callgrind; idle background "
            f"{statistics.median(idle_rates) / 1e6:.2f} M instructions/s subtracted."
        )
        print(
            f"reproduce: .venv/bin/python bench/instructions.py --duration {args.duration:g} "
            f"--repeat {args.repeat}{' --shards' if args.shards else ''}"
            + (f" --concurrency {args.concurrency}" if args.concurrency != 8 else "")
        )
        fail_on_wrong_answers()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                # Draining under valgrind on a busy machine can outlast the
                # wait: the clusters are removed all the same.
                server.kill()
                server.wait()
        for c in clusters:
            c.destroy()
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
