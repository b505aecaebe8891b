"""What a call's own handler costs, and what it costs the server under load.

    .venv/bin/python bench/handlers.py [--rounds 5 --duration 3]

The server runs in this process (``ResolverApp``, the base32hex generation
over three shards, as three more databases of the run-ops cluster) on a
real port, driven by bench/load.py in its own process; every answer is
checked. For each call it reports:

* **handler µs**: the servicer method called in a loop in this process
  (``timeit``, best of 5; hot caches, no gRPC, no other thread): the work
  the call adds to what gRPC does for every call;
* **server CPU per call** under load (32 calls in flight): this process's
  user + system CPU time divided by the calls, and its ratio to the
  health check's (the mean of the two health-check runs around it, in the
  same round);
* **calls/s ÷ health**: the throughput ratio of issue 14's MintId target,
  taken the same way.

The calls: Health/Check (the floor), ClassifyRunId (no I/O, no cache),
MintId of a root run (a gen-2 id: the organization's cached flags, its
shard, 15 bytes of id) and a **control**: MintId with the resolver's work
taken out — the resolver answers every mint with one id minted
beforehand, so the call keeps the servicer, its translation and the
rendering of the answer but decides and mints nothing. The control's
distance from the floor is what a MintId costs beyond the health check
before it does any work; MintId's distance from the control is what its
work costs under load, set against that work's cost in a hot loop.

After the rounds, one more MintId run times the resolver's work on the
serving thread (thread CPU around each ``resolver.mint_id`` call): the same
code's cost in the loaded server, next to its hot-loop figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

# bench/run.py (this script's directory is on sys.path): seeding, load, checks.
from run import create_databases, fail_on_wrong_answers, load, server_env
from shards import base32hex_settings, seed_one_server

from controlplane_resolver.config import Settings
from controlplane_resolver.dev.clusters import LocalCluster, free_port
from controlplane_resolver.serving.server import ResolverApp
from controlplane_resolver_client.v1 import resolver_pb2 as pb

#: (label, bench/load.py scenario): the calls measured, in the order run.
CALLS = (
    ("ClassifyRunId", "classify"),
    ("MintId, gen-2 root run", "mint_base32hex"),
    ("MintId, resolver's work taken out (control)", "mint_control"),
)


class LoopContext:
    """What the handlers read of a call's context when they succeed: a call
    that never ends and was never told anything."""

    def time_remaining(self) -> float:
        return 60.0

    def is_active(self) -> bool:
        return True

    def set_code(self, code: Any) -> None:
        raise AssertionError(f"the handler set {code}: the loop measures successful calls")

    def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"the handler aborted with {code}: {details}")


def cpu_seconds() -> float:
    """This process's user + system CPU time (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def hot_loop_us(call: Callable[[], Any], number: int) -> float:
    """µs per ``call()``, best of 5 runs of ``number`` calls."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--loop-calls", type=int, default=20_000, help="calls per timed loop (best of 5 loops)"
    )
    args = parser.parse_args()

    clusters = [LocalCluster("handlers-cp").start(), LocalCluster("handlers-ro").start()]
    workdir = Path(tempfile.mkdtemp(prefix="handlers-"))
    app: ResolverApp | None = None
    try:
        cp_dsn, ro_dsn = create_databases(clusters)
        shard_dsns, ids = seed_one_server(cp_dsn, ro_dsn, clusters[1], runs=500)
        ids_file = workdir / "ids.json"
        ids_file.write_text(json.dumps(ids))
        address = f"127.0.0.1:{free_port()}"
        env = server_env(
            cp_dsn,
            ro_dsn,
            RESOLVER_ADDR=address,
            **base32hex_settings(shard_dsns),
        )
        app = ResolverApp(Settings.load(env))
        app.start()
        servicer, resolver = app.servicer, app.servicer.resolver
        assert resolver is not None
        org = ids["mint_organization"][0]
        context = LoopContext()
        mint = pb.MintIdRequest(kind=pb.ID_KIND_RUN, organization_id=org)
        classify = pb.ClassifyRunIdRequest(id=ids["v1_runs"][0])
        health = health_pb2.HealthCheckRequest()
        minted = resolver.mint_id("RUN", org)  # also caches the organization's flags

        @contextlib.contextmanager
        def mint_shadowed(stand_in: Callable[..., Any]) -> Iterator[None]:
            """While the block runs, ``stand_in`` answers in place of the
            resolver's ``mint_id`` (an instance attribute shadows the method)."""
            resolver.mint_id = stand_in  # type: ignore[method-assign]
            try:
                yield
            finally:
                del resolver.mint_id

        def constant_mint(*_args: Any, **_kwargs: Any) -> Any:
            """The control's stand-in: the resolver's minting work taken out."""
            return minted

        n = args.loop_calls
        handler_us = {"health": hot_loop_us(lambda: app.health.Check(health, context), n)}
        handler_us["classify"] = hot_loop_us(lambda: servicer.ClassifyRunId(classify, context), n)
        handler_us["mint_base32hex"] = hot_loop_us(lambda: servicer.MintId(mint, context), n)
        with mint_shadowed(constant_mint):
            handler_us["mint_control"] = hot_loop_us(lambda: servicer.MintId(mint, context), n)

        def measured(scenario: str) -> tuple[float, float]:
            """(calls/s, server CPU µs per call, warm-up included)."""
            is_control = scenario == "mint_control"
            with mint_shadowed(constant_mint) if is_control else contextlib.nullcontext():
                before = cpu_seconds()
                r = load(
                    address,
                    "mint_base32hex" if is_control else scenario,
                    str(ids_file),
                    args.duration,
                    args.concurrency,
                )
                used = cpu_seconds() - before
            return r["rps"], used * 1e6 / max(1, r["calls"] + r["warmup_calls"])

        def mint_work_under_load() -> float:
            """Thread CPU µs per call of the resolver's minting work
            (``resolver.mint_id``) in one MintId run under load, timed
            around each call."""
            work = resolver.mint_id
            spent = [0, 0]  # ns of thread CPU, calls

            def timed(*call_args: Any, **call_kwargs: Any) -> Any:
                start = time.thread_time_ns()
                try:
                    return work(*call_args, **call_kwargs)
                finally:
                    spent[0] += time.thread_time_ns() - start
                    spent[1] += 1

            with mint_shadowed(timed):
                load(address, "mint_base32hex", str(ids_file), args.duration, args.concurrency)
            return spent[0] / 1e3 / max(1, spent[1])

        rps_ratio: dict[str, list[float]] = {s: [] for _, s in CALLS}
        cpu_ratio: dict[str, list[float]] = {s: [] for _, s in CALLS}
        cpu_us: dict[str, list[float]] = {s: [] for _, s in (*CALLS, ("", "health"))}
        for round_no in range(args.rounds):
            floor_rps, floor_cpu = measured("health")
            cpu_us["health"].append(floor_cpu)
            line = [f"round {round_no + 1}: health {floor_rps:.0f}/s {floor_cpu:.0f} µs"]
            for _, scenario in CALLS:
                rps, cpu = measured(scenario)
                next_rps, next_cpu = measured("health")
                cpu_us["health"].append(next_cpu)
                rps_ratio[scenario].append(rps / statistics.mean([floor_rps, next_rps]))
                cpu_ratio[scenario].append(cpu / statistics.mean([floor_cpu, next_cpu]))
                cpu_us[scenario].append(cpu)
                line.append(f"{scenario} {rps:.0f}/s {cpu:.0f} µs")
                floor_rps, floor_cpu = next_rps, next_cpu
            print("  " + "; ".join(line), flush=True)

        work_in_server_us = mint_work_under_load()
        med = statistics.median
        print(
            f"\n| call | handler µs (hot loop) | server CPU µs per call (median of "
            f"{args.rounds}) | ÷ health's | calls/s ÷ health (range) |"
        )
        print("|---|---:|---:|---:|---:|")
        print(
            f"| Health/Check | {handler_us['health']:.2f} | {med(cpu_us['health']):.0f} "
            "| 1.00 | 1.00 |"
        )
        for label, scenario in CALLS:
            ratios = rps_ratio[scenario]
            print(
                f"| {label} | {handler_us[scenario]:.2f} | {med(cpu_us[scenario]):.0f} "
                f"| {med(cpu_ratio[scenario]):.2f} | {med(ratios):.2f} "
                f"({min(ratios):.2f}–{max(ratios):.2f}) |"
            )
        work_us = handler_us["mint_base32hex"] - handler_us["mint_control"]
        under_load = med(cpu_us["mint_base32hex"]) - med(cpu_us["mint_control"])
        print(
            f"\nMintId's work (resolver.mint_id): {work_us:.2f} µs in a hot loop; "
            f"{work_in_server_us:.1f} µs of its thread's CPU per call in the loaded server "
            f"({work_in_server_us / max(work_us, 1e-9):.1f}× the loop's, one more MintId run "
            f"after the rounds, timed around the call); MintId's server CPU per call less "
            f"the control's: {under_load:.0f} µs."
        )
        print(
            f"{args.concurrency} calls in flight, {args.duration:g} s per run; reproduce: "
            f".venv/bin/python bench/handlers.py --rounds {args.rounds} "
            f"--duration {args.duration:g}"
        )
    finally:
        if app is not None:
            app.stop(grace=0, pause=0)
        for cluster in clusters:
            cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    fail_on_wrong_answers()


if __name__ == "__main__":
    main()
