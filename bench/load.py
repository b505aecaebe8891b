"""The load generator: a separate client process, closed loop.

    python bench/load.py --target 127.0.0.1:50051 --scenario resolve_env \
        --ids ids.json --duration 5 --concurrency 32 [--channels 1]

Prints one JSON object: calls, seconds, rps, p50_ms, p99_ms, errors,
``busy_cores`` (how many of the machine's cores were busy, client included,
while calls were measured) and ``items_per_s`` (ids resolved, for batches).
Uses grpc.aio with ``concurrency`` calls in flight over ``channels``
connections: on this machine the most efficient client
(shared/notes/machine.md), so the server, not the client, is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver_client import pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc


def make_call(
    scenario: str, channel: grpc.aio.Channel, ids: dict[str, list[str]], rng: random.Random
) -> tuple[Callable[[], Awaitable[Any]], int]:
    """The coroutine factory for one call of ``scenario`` and the number of
    items each call resolves."""
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    envs, runs = ids["hot_environments"], ids["runs"]
    if scenario == "health":
        request = health_pb2.HealthCheckRequest()
        return (lambda: health.Check(request)), 1
    if scenario == "resolve_env":
        requests = [pb.ResolveEnvRequest(environment_id=e) for e in envs]
        return (lambda: stub.ResolveEnv(rng.choice(requests))), 1
    if scenario == "classify":
        requests = [pb.ClassifyRunIdRequest(id=r) for r in runs]
        return (lambda: stub.ClassifyRunId(rng.choice(requests))), 1
    if scenario == "read_run":
        requests = [pb.ReadRunRequest(run_id=r) for r in runs]
        return (lambda: stub.ReadRun(rng.choice(requests))), 1
    if scenario == "batch_resolve_envs_100":
        all_envs = ids["all_environments"]

        def batch() -> Awaitable[Any]:
            return stub.BatchResolveEnvs(
                pb.BatchResolveEnvsRequest(environment_ids=rng.sample(all_envs, 100))
            )

        return batch, 100
    if scenario == "resolve_env_uncached_singles":
        all_envs = ids["all_environments"]
        return (
            lambda: stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=rng.choice(all_envs)))
        ), 1
    raise SystemExit(f"unknown scenario {scenario}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ids = json.loads(open(args.ids).read())
    rng = random.Random(42)
    # Several channels = several TCP connections (a local subchannel pool
    # stops grpc from sharing one): SO_REUSEPORT spreads connections, so
    # that is what spreads load over `serve --processes N`.
    channels = [
        grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)
    ]
    try:
        calls = [make_call(args.scenario, channel, ids, rng) for channel in channels]
        items = calls[0][1]
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + args.warmup
        warmup_calls = 0
        while time.perf_counter() < deadline:  # warm connections and code paths
            await asyncio.gather(*(call() for call, _ in calls))
            warmup_calls += len(calls)
        busy_before = machine_busy()
        start = time.perf_counter()
        stop_at = start + args.duration

        async def worker(call: Callable[[], Awaitable[Any]]) -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    await call()
                except grpc.RpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker(calls[i % len(calls)][0]) for i in range(args.concurrency)))
        seconds = time.perf_counter() - start
        busy, total = (a - b for a, b in zip(machine_busy(), busy_before))
    finally:
        for channel in channels:
            await channel.close()
    latencies.sort()
    n = len(latencies)
    return {
        "scenario": args.scenario,
        "calls": n,
        "errors": errors,
        "seconds": seconds,
        "warmup_calls": warmup_calls,
        "rps": n / seconds,
        "items_per_s": n * items / seconds,
        "p50_ms": latencies[n // 2] * 1000 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else None,
        "busy_cores": busy / max(1, total) * (os.cpu_count() or 1),
    }


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU so far (Linux /proc/stat); idle
    and iowait are not busy."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    total = sum(values[:8])  # guest time is already inside user
    return total - values[3] - values[4], total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    args = parser.parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
