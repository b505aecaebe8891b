"""The load generator: a separate client process, closed loop.

    python bench/load.py --target 127.0.0.1:50051 --scenario resolve_env \
        --ids ids.json --duration 5 --concurrency 32 [--channels 1]

Prints one JSON object: calls, seconds, rps, p50_ms, p99_ms, errors, shed
(UNAVAILABLE answers: the server shedding load, retried by the typed client),
``busy_cores`` (how many of the machine's cores were busy, client included,
while calls were measured), ``items`` and ``items_per_s`` (ids that came back
resolved, and right), ``wrong`` (ids answered wrongly, warm-up included) with
``wrong_example``, and for the scenarios that draw fresh ids ``fresh_used``,
``fresh_pool`` and ``exhausted``. Uses grpc.aio with ``concurrency`` calls in
flight over ``channels`` connections, so the server, not the client, is the
bottleneck.

Every answer is checked, not only its status: an environment must come back
with the id asked for (a batch item that is ``not_found`` is wrong, not
resolved), a run with the id asked for and from the database its id's shape
routes it to, a health check SERVING. Only right answers count as resolved.

Scenarios (the ids come from ``--ids``, written by bench/run.py's seeding):

* ``health``, ``classify``, ``resolve_env`` (100 hot environments),
  ``read_run`` (new-shape runs: run-ops only), ``read_run_legacy``
  (legacy-shaped runs that live in the legacy location: run-ops is asked
  first, then the legacy database);
* ``batch_resolve_envs_100_warm`` / ``resolve_env_singles_warm``: 100 random
  ids per batch, or one per call, from ``all_environments``, which the caller
  has cached beforehand;
* ``batch_resolve_envs_100_cold`` / ``resolve_env_singles_cold``: ids taken
  in turn from ``fresh_environments``, never one twice, so that after the
  caller invalidated the cache no call finds its id cached; a run stops early
  (``exhausted``) if the pool runs out, and warms up with two calls per
  connection only, to save the pool;
* ``batch_resolve_envs_100_unknown``: batches of ids that do not exist, whose
  every item must be counted wrong (the check of the check);
* ``read_run_gen2`` (bench/shards.py): gen-2 runs spread over the shards,
  each answered from its shard (``RUN_SOURCE_RUN_OPS_SHARD``, the id's shard);
* ``batch_read_runs_100_sharded``: 100 random gen-2 runs per call, every
  item from its own shard;
* ``mint_base32hex``: MintId(RUN) for an organization whose
  ``runOpsMintKind`` is ``runOpsId``: a 26-character run-ops id, and its
  shard (when the server has shards) the one the id names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver_client.v1 import resolver_pb2 as pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

#: (ids answered right, ids answered wrong) by one call.
Outcome = tuple[int, int]
Call = Callable[[], Awaitable[Outcome]]

#: Scenarios that take fresh ids from a pool, never the same one twice.
FRESH = frozenset({"batch_resolve_envs_100_cold", "resolve_env_singles_cold"})
BATCH = 100


class Exhausted(Exception):
    """The pool of fresh ids ran out."""


class FreshIds:
    """Ids handed out in a shuffled order, each once, shared by every
    connection of this process (asyncio: one thread, no lock needed)."""

    def __init__(self, ids: Sequence[str], rng: random.Random) -> None:
        self.ids = list(ids)
        rng.shuffle(self.ids)
        self.used = 0

    def take(self, n: int) -> list[str]:
        if self.used + n > len(self.ids):
            raise Exhausted
        self.used += n
        return self.ids[self.used - n : self.used]


class Wrong:
    """The first wrong answer seen, to quote in the report."""

    def __init__(self) -> None:
        self.example: str | None = None

    def note(self, example: str) -> None:
        if self.example is None:
            self.example = example


def environment_outcome(env_id: str, response: pb.ResolveEnvResponse) -> Outcome:
    """A ResolveEnv answer is right when it carries the environment asked for."""
    return (1, 0) if response.environment.id == env_id else (0, 1)


def batch_outcome(env_ids: Sequence[str], response: pb.BatchResolveEnvsResponse) -> Outcome:
    """Of a BatchResolveEnvs answer, the items that resolved to the
    environment asked for (in request order); every other item — ``not_found``,
    another id, a missing item — is wrong."""
    results = response.results
    right = sum(
        1
        for i, env_id in enumerate(env_ids)
        if i < len(results)
        and results[i].environment_id == env_id
        and not results[i].not_found
        and results[i].environment.id == env_id
    )
    return right, len(env_ids) - right


def run_outcome(run_id: str, response: pb.ReadRunResponse, source: int) -> Outcome:
    """A ReadRun answer is right when it carries the run asked for, read
    from ``source`` (a ``pb.RunSource`` value)."""
    return (1, 0) if response.run.id == run_id and response.source == source else (0, 1)


def make_call(
    scenario: str,
    channel: grpc.aio.Channel,
    ids: dict[str, list[str]],
    rng: random.Random,
    fresh: FreshIds | None,
    wrong: Wrong,
) -> Call:
    """The coroutine factory for one call of ``scenario``; each call checks
    its answer and returns its :data:`Outcome`."""
    stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)

    def checked(outcome: Outcome, what: Callable[[], str]) -> Outcome:
        # ``what()`` describes a wrong answer, formatted only then: the
        # client shares the server's cores, and formatting costs more in
        # some scenarios than in others.
        if outcome[1]:
            wrong.note(what())
        return outcome

    if scenario == "health":
        request = health_pb2.HealthCheckRequest()

        async def check() -> Outcome:
            status = (await health.Check(request)).status
            serving = status == health_pb2.HealthCheckResponse.SERVING
            return checked((1, 0) if serving else (0, 1), lambda: f"Health/Check answered {status}")

        return check

    if scenario == "classify":
        requests = [pb.ClassifyRunIdRequest(id=r) for r in ids["runs"]]

        async def classify() -> Outcome:
            request = rng.choice(requests)
            response = await stub.ClassifyRunId(request)
            ok = response.classifiable and response.residency == pb.RESIDENCY_NEW
            return checked(
                (1, 0) if ok else (0, 1), lambda: f"ClassifyRunId({request.id}): {response}"
            )

        return classify

    if scenario in ("resolve_env", "resolve_env_singles_warm", "resolve_env_singles_cold"):
        pool = ids["hot_environments" if scenario == "resolve_env" else "all_environments"]

        async def resolve() -> Outcome:
            env_id = fresh.take(1)[0] if fresh is not None else rng.choice(pool)
            response = await stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id))
            return checked(
                environment_outcome(env_id, response),
                lambda: f"ResolveEnv({env_id}) answered environment {response.environment.id!r}",
            )

        return resolve

    if scenario in ("read_run", "read_run_legacy"):
        legacy = scenario == "read_run_legacy"
        runs = ids["legacy_runs" if legacy else "runs"]
        source = pb.RUN_SOURCE_LEGACY if legacy else pb.RUN_SOURCE_RUN_OPS

        async def read() -> Outcome:
            run_id = rng.choice(runs)
            response = await stub.ReadRun(pb.ReadRunRequest(run_id=run_id))
            return checked(
                run_outcome(run_id, response, source),
                lambda: (
                    f"ReadRun({run_id}) answered run {response.run.id!r} from "
                    f"{pb.RunSource.Name(response.source)}, expected {pb.RunSource.Name(source)}"
                ),
            )

        return read

    if scenario.startswith("batch_resolve_envs_100_"):
        pool = ids["unknown_environments" if scenario.endswith("_unknown") else "all_environments"]

        async def batch() -> Outcome:
            env_ids = fresh.take(BATCH) if fresh is not None else rng.sample(pool, BATCH)
            response = await stub.BatchResolveEnvs(
                pb.BatchResolveEnvsRequest(environment_ids=env_ids)
            )
            outcome = batch_outcome(env_ids, response)
            return checked(
                outcome,
                lambda: (
                    f"BatchResolveEnvs of {len(env_ids)} ids resolved {outcome[0]} "
                    f"(first item: {response.results[0] if response.results else 'none'})"
                ),
            )

        return batch

    if scenario == "read_run_gen2":
        runs = ids["gen2_runs"]

        async def read_gen2() -> Outcome:
            run_id = rng.choice(runs)
            response = await stub.ReadRun(pb.ReadRunRequest(run_id=run_id))
            ok = (
                response.run.id == run_id
                and response.source == pb.RUN_SOURCE_RUN_OPS_SHARD
                and response.shard == run_id[24]
            )
            return checked(
                (1, 0) if ok else (0, 1),
                lambda: (
                    f"ReadRun({run_id}) answered run {response.run.id!r} from "
                    f"{pb.RunSource.Name(response.source)} shard {response.shard!r}"
                ),
            )

        return read_gen2

    if scenario == "batch_read_runs_100_sharded":
        runs = ids["gen2_runs"]

        async def batch_runs() -> Outcome:
            run_ids = rng.sample(runs, BATCH)
            response = await stub.BatchReadRuns(pb.BatchReadRunsRequest(run_ids=run_ids))
            right = sum(
                1
                for want, got in zip(run_ids, response.results, strict=False)
                if got.run_id == want
                and got.run.id == want
                and got.source == pb.RUN_SOURCE_RUN_OPS_SHARD
                and got.shard == want[24]
            )
            return checked(
                (right, len(run_ids) - right),
                lambda: f"BatchReadRuns of {len(run_ids)} gen-2 ids: {right} right",
            )

        return batch_runs

    if scenario == "mint_base32hex":
        org = ids["mint_organization"][0]
        request = pb.MintIdRequest(kind=pb.ID_KIND_RUN, organization_id=org)

        async def mint() -> Outcome:
            response = await stub.MintId(request)
            body = response.id
            ok = (
                response.mint_kind == pb.MINT_KIND_RUN_OPS_ID
                and len(body) == 26
                and body[25] in "12"
                and (not response.shard or body[24] == response.shard)
            )
            return checked((1, 0) if ok else (0, 1), lambda: f"MintId answered {response}")

        return mint

    raise SystemExit(f"unknown scenario {scenario}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ids = json.loads(open(args.ids).read())
    rng = random.Random(42)
    fresh = FreshIds(ids["fresh_environments"], rng) if args.scenario in FRESH else None
    wrong = Wrong()
    # Several channels = several TCP connections (a local subchannel pool
    # stops grpc from sharing one): SO_REUSEPORT spreads connections, so
    # that is what spreads load over `serve --processes N`.
    channels = [
        grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)
    ]
    latencies: list[float] = []
    errors = 0
    shed = 0
    items = 0
    wrong_items = 0
    exhausted = False
    try:
        calls = [make_call(args.scenario, channel, ids, rng, fresh, wrong) for channel in channels]
        deadline = time.perf_counter() + args.warmup
        warmup_calls = 0
        # Warm connections and code paths; a fresh-id pool is spent sparingly.
        while time.perf_counter() < deadline and not (fresh is not None and warmup_calls >= 2):
            try:
                outcomes = await asyncio.gather(*(call() for call in calls))
            except Exhausted:
                exhausted = True
                break
            wrong_items += sum(w for _, w in outcomes)
            warmup_calls += len(calls)
        busy_before = machine_busy()
        cpu_before = time.process_time()
        start = time.perf_counter()
        stop_at = start + args.duration

        async def worker(call: Call) -> None:
            nonlocal errors, shed, items, wrong_items, exhausted
            while time.perf_counter() < stop_at and not exhausted:
                t0 = time.perf_counter()
                try:
                    right, bad = await call()
                except grpc.RpcError as exc:
                    # UNAVAILABLE from a healthy server is its bulkhead
                    # shedding load (with a retry delay the typed client
                    # honours): not served, and not a wrong answer.
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        shed += 1
                    else:
                        errors += 1
                    continue
                except Exhausted:
                    exhausted = True
                    return
                latencies.append(time.perf_counter() - t0)
                items += right
                wrong_items += bad

        await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(args.concurrency)))
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - cpu_before
        busy, total = (a - b for a, b in zip(machine_busy(), busy_before))
    finally:
        for channel in channels:
            await channel.close()
    latencies.sort()
    n = len(latencies)
    report: dict[str, Any] = {
        "scenario": args.scenario,
        "calls": n,
        "errors": errors,
        "shed": shed,
        "seconds": seconds,
        "warmup_calls": warmup_calls,
        "rps": n / seconds,
        "items": items,
        "items_per_s": items / seconds,
        "wrong": wrong_items,
        "wrong_example": wrong.example,
        "p50_ms": latencies[n // 2] * 1000 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else None,
        # This load generator's own CPU per call: when it nears a whole core,
        # the generator, not the server, bounds calls/s.
        "client_cpu_us": client_cpu * 1e6 / max(1, n + errors + shed),
        "client_cores": client_cpu / seconds,
        "busy_cores": busy / max(1, total) * (os.cpu_count() or 1),
    }
    if fresh is not None:
        report.update(fresh_used=fresh.used, fresh_pool=len(fresh.ids), exhausted=exhausted)
    return report


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
