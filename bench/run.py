"""The benchmark: real server processes over two real PostgreSQL clusters,
driven by a separate client process (bench/load.py). Reports ratios
measured in one run, because this machine is shared and noisy.

    make bench        # or: .venv/bin/python bench/run.py [--duration 2 --rounds 12]

Two servers run side by side, and every round measures both: ``serve`` with
one process (the default) and ``serve --processes 2`` (one process per core
of this 2-core machine). One Python process cannot keep two cores busy on
database-bound calls (its threads share one GIL), so the two answer
different questions: the first what one process does, the second what the
calls cost when the machine, not the process, is the limit. The report
shows both, with how many of the machine's cores were busy.

Each round measures, on the same server and back to back:

* ``health`` — grpc.health.v1.Health/Check: the floor for this stack (a call
  that does no work), measured before and after each scenario below; each
  scenario's ratio is to the mean of the two floors around it;
* ``classify`` — ClassifyRunId: our servicer with no I/O and no cache, a
  reference for what any call with a payload costs on this stack;
* ``resolve_env`` — ResolveEnv over 100 hot environments: cache hits, and the
  control-plane queries they cost per 1,000 calls (pg_stat_statements);
* ``read_run`` — ReadRun of new-shape runs: never cached, one database
  (run-ops), and how many run ids each coalesced query carried (/metrics);
* ``read_run_legacy`` — ReadRun of legacy-shaped runs under split: run-ops
  is read first (a miss), then the legacy location.

Then, on the one-process server, BatchResolveEnvs(100) against single
ResolveEnv calls, in ids resolved per second, on the same cache state for
both, in each round:

* warm — every id cached: all ``--environments`` are loaded (and checked)
  just before each of the two runs, which draw from those ids only;
* cold — no id cached: the organization's cached environments are dropped
  (the Invalidate RPC) before each run, and each run takes ids in turn from
  ``--fresh-environments`` never used twice, so no call finds its ids cached.

The server's own cache counters (/metrics) give, per run, the share of ids
that were served from the cache, so the report shows the state it claims.

Every answer is checked (bench/load.py): only ids that came back resolved,
and right, count; any wrong answer is flagged in the report and makes the
run exit 1. Each run also checks the check: batches of ids that do not
exist must come back flagged as wrong, every one.

Then: the queries one stampede of 64 concurrent cold calls on one key costs;
and ReadRun on bench/naive_reference.py (a naive reference), with one and
with two processes, each against its own server's floor. The report prints
medians over rounds with interquartile ranges, and the command that
reproduces it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster, free_port
from controlplane_resolver.dev.migrate import migrate
from controlplane_resolver_client import channel_options
from controlplane_resolver_client.v1 import resolver_pb2 as pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STATS = {"shared_preload_libraries": "pg_stat_statements"}
#: One round: every scenario between two measurements of the floor.
ROUND = (
    "health",
    "classify",
    "health",
    "resolve_env",
    "health",
    "read_run",
    "health",
    "read_run_legacy",
    "health",
)
SERVE = [str(BIN / "controlplane-resolver"), "serve"]
#: Where the benchmarked servers write their logs.
SERVER_LOG = Path(tempfile.gettempdir()) / "bench-server.log"
#: Batch versus single: (cache state, batch scenario, single scenario).
BATCH_VS_SINGLE = (
    ("warm", "batch_resolve_envs_100_warm", "resolve_env_singles_warm"),
    ("cold", "batch_resolve_envs_100_cold", "resolve_env_singles_cold"),
)
#: Wrong answers seen by :func:`load` (other than those it was told to
#: expect), one line each; a run that saw any exits 1 after its report.
WRONG_ANSWERS: list[str] = []


def seed(
    cp_dsn: str, ro_dsn: str, environments: int, runs: int, fresh: int = 0
) -> dict[str, list[str]]:
    """Seed both databases; returns the ids bench/load.py draws from:

    * ``all_environments`` (``environments`` of them; the first 100 are
      ``hot_environments``) and, apart from them, ``fresh`` more,
      ``fresh_environments``, for the cold batch-versus-single runs;
    * ``stampede_environments``: 5 environments no scenario touches;
    * ``unknown_environments``: 100 well-formed ids that do not exist;
    * ``runs``: ``runs`` new-shape (ksuid) runs in the run-ops database, and
      ``legacy_runs``: as many legacy-shaped (cuid) runs in the control-plane
      database, the legacy location under split.
    """
    with psycopg.connect(cp_dsn) as cp, psycopg.connect(ro_dsn) as ro:
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)

        def environment() -> str:
            return demo.insert_environment(cp, project_id=project, organization_id=org)

        env_ids = [environment() for _ in range(environments)]
        fresh_ids = [environment() for _ in range(fresh)]
        stampede_ids = [environment() for _ in range(5)]
        run_ids, legacy_ids = [], []
        for i in range(runs):
            owner = {
                "environment_id": env_ids[i % len(env_ids)],
                "project_id": project,
                "organization_id": org,
            }
            run_ids.append(demo.insert_run(ro, id=demo.new_ksuid(), **owner))
            legacy_ids.append(demo.insert_run(cp, id=demo.new_cuid(), **owner))
        cp.commit()
        ro.commit()
    return {
        "hot_environments": env_ids[:100],
        "all_environments": env_ids,
        "fresh_environments": fresh_ids,
        "stampede_environments": stampede_ids,
        "unknown_environments": [demo.new_cuid() for _ in range(100)],
        "runs": run_ids,
        "legacy_runs": legacy_ids,
    }


def create_databases(clusters: list[LocalCluster]) -> tuple[str, str]:
    """The control-plane and run-ops databases on the two clusters, migrated;
    returns their DSNs."""
    cp_dsn = clusters[0].create_database("platform")
    ro_dsn = clusters[1].create_database("run_ops")
    migrate(cp_dsn, "control_plane")
    migrate(ro_dsn, "run_ops")
    return cp_dsn, ro_dsn


def seeded(
    cp_dsn: str, ro_dsn: str, environments: int, runs: int, fresh: int = 0
) -> tuple[dict[str, list[str]], str]:
    """Seed both databases (see :func:`seed`) with pg_stat_statements on
    (the clusters must preload it: ``STATS``); returns the ids and the path
    of a JSON file holding them, for bench/load.py."""
    for dsn in (cp_dsn, ro_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    print(
        f"seeding {environments + fresh} environments and {runs} runs of each shape…",
        flush=True,
    )
    ids = seed(cp_dsn, ro_dsn, environments, runs, fresh)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as ids_file:
        json.dump(ids, ids_file)
    return ids, ids_file.name


def server_env(cp_dsn: str, ro_dsn: str, **settings: str) -> dict[str, str]:
    """The environment for a server over those databases, split on, quiet,
    no /metrics unless ``settings`` asks; ``settings`` add or override."""
    env = {
        **os.environ,
        "CONTROL_PLANE_DATABASE_URL": cp_dsn,
        "RUN_OPS_DATABASE_URL": ro_dsn,
        "RUN_OPS_SPLIT_ENABLED": "1",
        "REALTIME_BACKEND_NATIVE_ENABLED": "1",
        "RESOLVER_LOG_LEVEL": "WARNING",
    }
    env.pop("RESOLVER_METRICS_ADDR", None)
    return {**env, **settings}


def setting(text: str) -> tuple[str, str]:
    """A ``NAME=VALUE`` command-line argument: a server setting."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE")
    return name, value


def wait_serving(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"server at {address} did not become SERVING")


def load(
    address: str,
    scenario: str,
    ids_file: str,
    duration: float,
    concurrency: int,
    channels: int = 1,
    warmup: float = 0.5,
    expect_wrong: bool = False,
) -> dict[str, Any]:
    """Run bench/load.py in its own process and return its JSON report.
    Exits if any call failed: a throughput of errors measures nothing.
    Wrong answers (unless ``expect_wrong``) are flagged at once and kept in
    :data:`WRONG_ANSWERS`, which fails the run after its report."""
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "load.py"),
            "--target",
            address,
            "--scenario",
            scenario,
            "--ids",
            ids_file,
            "--duration",
            str(duration),
            "--concurrency",
            str(concurrency),
            "--channels",
            str(channels),
            "--warmup",
            str(warmup),
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(
            f"bench/load.py ({scenario} on {address}) failed with exit code {out.returncode}:\n"
            + "\n".join(out.stderr.splitlines()[-12:])
        )
    report: dict[str, Any] = json.loads(out.stdout)
    if report["errors"]:
        raise SystemExit(
            f"{report['errors']} {scenario} calls to {address} failed; the "
            f"servers' log is {SERVER_LOG}"
        )
    if report.get("shed"):
        print(
            f"  note: {report['shed']} {scenario} calls to {address} were shed (UNAVAILABLE "
            "with a retry delay: the server's per-database bulkhead); not counted as served",
            flush=True,
        )
    if report["wrong"] and not expect_wrong:
        line = (
            f"{scenario} on {address}: {report['wrong']} wrong answers, "
            f"e.g. {report['wrong_example']}"
        )
        WRONG_ANSWERS.append(line)
        print(f"  WRONG ANSWERS: {line}", flush=True)
    return report


def fail_on_wrong_answers() -> None:
    """End the run with exit status 1 if any answer was wrong."""
    if WRONG_ANSWERS:
        print(
            "\nWRONG ANSWERS: the throughput above counts only right ones, and this run "
            "fails because of these:"
        )
        for line in WRONG_ANSWERS:
            print(f"  {line}")
        raise SystemExit(1)


def scrape(port: int) -> dict[str, float]:
    """The server's /metrics as {sample name{labels}: value}, summed over
    the processes of ``serve --processes N`` (their ``process`` label
    dropped); run-ops series also under their bare name."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            name = _PROCESS_LABEL.sub("", name).replace(",}", "}").replace("{}", "")
            out[name] = out.get(name, 0.0) + float(value)
            if 'database="run-ops"' in name:
                base = name.split("{", 1)[0]
                out[base] = out.get(base, 0.0) + float(value)
    return out


_PROCESS_LABEL = re.compile(r'process="\d+",?')


def served_from_cache(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Of the environment lookups between two scrapes, the share the cache
    served (fresh, negative or stale hits) rather than a load; None when the
    server counted none."""
    counts = {
        f: after.get(f'resolver_cache_{f}_total{{slot="environment"}}', 0.0)
        - before.get(f'resolver_cache_{f}_total{{slot="environment"}}', 0.0)
        for f in ("hits", "negative_hits", "stale_serves", "misses")
    }
    total = sum(counts.values())
    return (total - counts["misses"]) / total if total else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its live children (the
    processes of ``serve --processes N``) have used so far (Linux /proc)."""
    total = 0
    for candidate in _process_tree(pid):
        try:
            fields = open(f"/proc/{candidate}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Context switches (voluntary and not) of every live thread of a
    process and its live children so far (Linux /proc): with CPU per call,
    what shows a thread pool's hand-offs."""
    total = 0
    for candidate in _process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{candidate}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                status = open(f"/proc/{candidate}/task/{task}/status").read()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def _process_tree(pid: int) -> list[str]:
    """``pid`` and its live children (the processes of ``serve --processes N``)."""
    return [str(pid), *_children(pid)]


def _children(pid: int) -> Iterator[str]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == str(pid):
                yield entry


def invalidate_org(address: str, organization_id: str) -> None:
    with grpc.insecure_channel(address) as channel:
        resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel).Invalidate(
            pb.InvalidateRequest(organization_id=organization_id)
        )


def prefill(address: str, environment_ids: list[str]) -> None:
    """Load every one of ``environment_ids`` into the cache
    (BatchResolveEnvs, 1,000 ids a call); exits unless each came back."""
    with grpc.insecure_channel(address) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        for i in range(0, len(environment_ids), 1000):
            chunk = environment_ids[i : i + 1000]
            response = stub.BatchResolveEnvs(
                pb.BatchResolveEnvsRequest(environment_ids=chunk), timeout=30
            )
            found = [r.environment.id for r in response.results if not r.not_found]
            if found != chunk:
                raise SystemExit(
                    f"warming the cache: {len(found)} of {len(chunk)} environments came back"
                )


def statement_calls(dsn: str, fragment: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
            (f"%{fragment}%",),
        ).fetchone()
    return int(row[0]) if row else 0


async def stampede(address: str, env_id: str, n: int = 64) -> int:
    """Fire ``n`` concurrent ResolveEnv calls for one cold key, over a
    channel configured as the typed client's (its retries honour the
    bulkhead's retry delay); return how many failed or answered another
    environment than ``env_id``. A call the bulkhead shed (``UNAVAILABLE``)
    after its retries is counted apart, as not served, not as a failure."""
    async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        await channel.channel_ready()
        calls = [
            stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id), timeout=10)
            for _ in range(n)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
    shed = sum(
        1
        for r in results
        if isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.UNAVAILABLE
    )
    if shed:
        print(f"  note: {shed} of {n} stampede calls were shed after retries", flush=True)
    return (
        sum(
            1
            for r in results
            if not isinstance(r, pb.ResolveEnvResponse) or r.environment.id != env_id
        )
        - shed
    )


def client_channels(processes: int) -> int:
    """Connections the client opens to a server of ``processes``: the kernel
    spreads connections, not calls, over the processes of ``serve
    --processes N``, so 8 reach both of 2; one process measures best over one."""
    return 1 if processes == 1 else 8


def in_turn(setups: list[Any], round_no: int) -> list[Any]:
    """``setups`` (or any list) in the order to measure them in round
    ``round_no``: alternating, so that none always follows another."""
    return setups if round_no % 2 == 0 else setups[::-1]


@dataclass
class Setup:
    """One server configuration, measured in every round."""

    label: str
    processes: int
    #: Connections the client opens (:func:`client_channels`).
    channels: int
    address: str = ""
    metrics_port: int = 0
    server: subprocess.Popen[bytes] | None = None
    ratios: dict[str, list[float]] = field(default_factory=dict)
    #: Server CPU per call: steadier than throughput on a shared machine,
    #: since time stolen by neighbours does not count as our CPU.
    cpu_per_call: dict[str, list[float]] = field(default_factory=dict)
    #: Context switches of the server's threads per call: a thread pool's
    #: hand-offs, which CPU per call shows only in part.
    switches_per_call: dict[str, list[float]] = field(default_factory=dict)
    #: Cores of the whole machine busy while the scenario ran.
    busy_cores: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    coalesced: dict[str, float] = field(default_factory=lambda: {"batches": 0.0, "keys": 0.0})
    #: Control-plane queries during the cache-hit ResolveEnv runs, and the
    #: calls they served (and warmed up with), summed over rounds.
    env_queries: int = 0
    env_calls: int = 0
    #: Of those queries, the background refreshes of soft-expired entries.
    env_refreshes: int = 0

    def start(self, command: list[str], env: dict[str, str], log: Any) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        env = {**env, "RESOLVER_ADDR": self.address, "RESOLVER_PROCESSES": str(self.processes)}
        if self.metrics_port:
            env["RESOLVER_METRICS_ADDR"] = f"127.0.0.1:{self.metrics_port}"
        self.server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_serving(self.address)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(15)
            self.server = None


def measure_round(setup: Setup, run: Any, cp_dsn: str) -> None:
    """Run ROUND on ``setup``'s server and record, in ``setup``, each
    scenario's ratio to the floor, its results, CPU and machine load."""
    assert setup.server is not None
    run = functools.partial(run, channels=setup.channels)
    # Steady state: the hot environments are cached before measuring.
    run(setup.address, "resolve_env", duration=0.5)
    measured: dict[str, dict[str, Any]] = {}
    floors: list[float] = []
    queries = 0
    for scenario in ROUND:
        # Database and /metrics counters only around the scenarios they describe.
        before_q = (
            statement_calls(cp_dsn, '"RuntimeEnvironment"') if scenario == "resolve_env" else 0
        )
        before_m = scrape(setup.metrics_port) if scenario in ("resolve_env", "read_run") else {}
        cpu_before = cpu_seconds(setup.server.pid)
        switches_before = context_switches(setup.server.pid)
        r = run(setup.address, scenario)
        setup.busy_cores.setdefault(scenario, []).append(r["busy_cores"])
        calls = max(1, r["calls"] + r["errors"] + r["warmup_calls"])
        setup.cpu_per_call.setdefault(scenario, []).append(
            (cpu_seconds(setup.server.pid) - cpu_before) * 1e6 / calls
        )
        setup.switches_per_call.setdefault(scenario, []).append(
            (context_switches(setup.server.pid) - switches_before) / calls
        )
        if scenario == "health":
            floors.append(r["rps"])
            setup.results.setdefault(scenario, []).append(r)
        else:
            measured[scenario] = r
        if scenario == "resolve_env":
            queries = statement_calls(cp_dsn, '"RuntimeEnvironment"') - before_q
            setup.env_queries += queries
            setup.env_calls += r["calls"] + r["warmup_calls"]
            refreshes = 'resolver_cache_refreshes_total{slot="environment"}'
            setup.env_refreshes += int(
                scrape(setup.metrics_port).get(refreshes, 0) - before_m.get(refreshes, 0)
            )
        if scenario == "read_run":
            after_m = scrape(setup.metrics_port)
            for k in setup.coalesced:
                setup.coalesced[k] += after_m.get(f"resolver_run_read_{k}_total", 0) - before_m.get(
                    f"resolver_run_read_{k}_total", 0
                )
    # Each scenario against the floor measured just before and just after
    # it: the machine is shared, and its speed drifts within seconds, so a
    # floor from another moment would add that drift.
    for i, scenario in enumerate(s for s in ROUND if s != "health"):
        setup.ratios.setdefault(scenario, []).append(
            measured[scenario]["rps"] / statistics.mean(floors[i : i + 2])
        )
    for scenario, r in measured.items():
        setup.results.setdefault(scenario, []).append(r)
    print(
        f"  round {len(setup.ratios['read_run'])}  {setup.label:12s}  Health/Check "
        f"{statistics.mean(floors):6.0f} calls/s  "
        + "  ".join(f"{s} {r['rps']:.0f} ({setup.ratios[s][-1]:.2f})" for s, r in measured.items())
        + f"  control-plane queries {queries}",
        flush=True,
    )


def measure_batch_vs_single(
    setup: Setup,
    run: Any,
    ids: dict[str, list[str]],
    org: str,
    round_no: int,
    batches: dict[str, list[dict[str, Any]]],
    batch_ratios: dict[str, list[float]],
) -> None:
    """One round of BatchResolveEnvs(100) against single ResolveEnv calls,
    warm then cold, each pair back to back (alternating which goes first) on
    the same cache state; records each run, with the share of ids the cache
    served (``from_cache``), and the round's ratio of ids/s per state."""
    line = []
    for state, batch, single in BATCH_VS_SINGLE:
        for scenario in in_turn([batch, single], round_no):
            # Every run starts from nothing cached; warm ones then load
            # every id they may draw, so none is older than this run.
            invalidate_org(setup.address, org)
            if state == "warm":
                prefill(setup.address, ids["all_environments"])
            before = scrape(setup.metrics_port)
            r = run(setup.address, scenario)
            r["from_cache"] = served_from_cache(before, scrape(setup.metrics_port))
            batches.setdefault(scenario, []).append(r)
        b, s = batches[batch][-1], batches[single][-1]
        ratio = b["items_per_s"] / s["items_per_s"] if s["items_per_s"] else float("nan")
        batch_ratios.setdefault(state, []).append(ratio)
        line.append(
            f"{state}: {b['items_per_s']:.0f} vs {s['items_per_s']:.0f} ids/s ({ratio:.1f}×, "
            f"from cache {_share(b['from_cache'])} / {_share(s['from_cache'])})"
        )
    print(f"  round {round_no + 1}  batch vs single  " + "  ".join(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per scenario run")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--environments", type=int, default=5000)
    parser.add_argument(
        "--fresh-environments",
        type=int,
        default=100000,
        help="environments for the cold batch-versus-single runs, none used twice in a run",
    )
    parser.add_argument("--runs", type=int, default=5000, help="runs of each shape")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="seconds each client process warms up before measuring",
    )
    args = parser.parse_args()

    clusters = [
        LocalCluster("bench-cp", settings=STATS).start(),
        LocalCluster("bench-ro", settings=STATS).start(),
    ]
    setups = [
        Setup(label, n, channels=client_channels(n), metrics_port=free_port())
        for label, n in (("1 process", 1), ("2 processes", 2))
    ]
    naive = [Setup(s.label, s.processes, s.channels) for s in setups]
    try:
        cp_dsn, ro_dsn = create_databases(clusters)
        ids, ids_file = seeded(
            cp_dsn, ro_dsn, args.environments, args.runs, args.fresh_environments
        )
        org = _org_of(cp_dsn)
        env = server_env(cp_dsn, ro_dsn)
        log = open(SERVER_LOG, "w")
        for setup in setups:
            setup.start(SERVE, env, log)
        main_setup = setups[0]

        run = functools.partial(
            load,
            ids_file=ids_file,
            duration=args.duration,
            concurrency=args.concurrency,
            warmup=args.warmup,
        )
        batch_ratios: dict[str, list[float]] = {}
        batches: dict[str, list[dict[str, Any]]] = {}
        for round_no in range(args.rounds):
            for setup in in_turn(setups, round_no):
                measure_round(setup, run, cp_dsn)
            measure_batch_vs_single(main_setup, run, ids, org, round_no, batches, batch_ratios)

        # The check of the check: batches of ids that do not exist must be
        # counted wrong, every item, and none resolved.
        check = run(
            main_setup.address,
            "batch_resolve_envs_100_unknown",
            duration=min(args.duration, 0.5),
            expect_wrong=True,
        )
        asked = (check["calls"] + check["warmup_calls"]) * 100
        check["asked"] = asked
        check["flagged"] = asked > 0 and check["wrong"] == asked and check["items"] == 0
        if not check["flagged"]:
            WRONG_ANSWERS.append(
                f"the content check is broken: of {asked} ids that do not exist, "
                f"{check['wrong']} were flagged wrong and {check['items']} counted resolved"
            )

        # Stampedes: 64 concurrent calls on keys nobody asked for yet.
        stampede_queries = []
        for env_id in ids["stampede_environments"]:
            before = statement_calls(cp_dsn, 'FROM "RuntimeEnvironment" e')
            failures = asyncio.run(stampede(main_setup.address, env_id))
            stampede_queries.append(statement_calls(cp_dsn, 'FROM "RuntimeEnvironment" e') - before)
            assert failures == 0, f"{failures} stampede calls failed or answered wrongly"
        for setup in setups:
            setup.stop()

        # A naive calibration ("a naive pool with a transaction per lookup"):
        # that ReadRun, on this machine, against its own server's floor
        # (bench/naive_reference.py), in both set-ups.
        for setup in naive:
            setup.start([sys.executable, str(HERE / "naive_reference.py")], env, log)
        for round_no in range(max(3, args.rounds // 2)):
            for setup in in_turn(naive, round_no):
                before = run(setup.address, "health", channels=setup.channels)["rps"]
                r = run(setup.address, "read_run", channels=setup.channels)
                after = run(setup.address, "health", channels=setup.channels)["rps"]
                setup.ratios.setdefault("read_run", []).append(
                    r["rps"] / statistics.mean((before, after))
                )
                setup.results.setdefault("read_run", []).append(r)
        for setup in naive:
            setup.stop()

        report(args, setups, naive, batch_ratios, batches, check, stampede_queries)
        fail_on_wrong_answers()
    finally:
        for setup in (*setups, *naive):
            setup.stop()
        for c in clusters:
            c.destroy()


#: The per-server table: (row label, scenario).
ROWS = (
    ("Health/Check (floor)", "health"),
    ("ClassifyRunId (no I/O: our servicer's own floor)", "classify"),
    ("ResolveEnv, cache hit", "resolve_env"),
    ("ReadRun, uncached", "read_run"),
    ("ReadRun, uncached, legacy id (run-ops miss, then the legacy database)", "read_run_legacy"),
)
#: Targets on a ratio to the floor, by scenario.
FLOOR_TARGETS = {"resolve_env": 0.95, "read_run": 0.6}
BATCH_TARGET = 20.0


def report(
    args: argparse.Namespace,
    setups: list[Setup],
    naive: list[Setup],
    batch_ratios: dict[str, list[float]],
    batches: dict[str, list[dict[str, Any]]],
    check: dict[str, Any],
    stampede_queries: list[int],
) -> None:
    def med(rs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    verdicts: list[tuple[str, str, str]] = []
    for setup, reference in zip(setups, naive):
        print(
            f"\n{setup.label} (`serve --processes {setup.processes}`, "
            f"{setup.channels} client connection{'s' if setup.channels > 1 else ''})\n"
        )
        print(
            "| scenario | calls/s | p50 ms | p99 ms | ratio to floor (median, IQR) "
            "| server CPU per call | machine busy (cores) | wrong answers | target |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        cpu = {s: statistics.median(v) for s, v in setup.cpu_per_call.items()}
        for name, key in ROWS:
            rs = setup.results[key]
            ratio = (
                f"{statistics.median(setup.ratios[key]):.2f}{_quartiles(setup.ratios[key])}"
                if key in setup.ratios
                else "1.00"
            )
            target = f">= {FLOOR_TARGETS[key]:g}" if key in FLOOR_TARGETS else ""
            print(
                f"| {name} | {med(rs, 'rps'):.0f} | {med(rs, 'p50_ms'):.2f} | "
                f"{med(rs, 'p99_ms'):.2f} | {ratio} | {cpu[key]:.0f} µs "
                f"({cpu[key] / cpu['health']:.2f}×) | "
                f"{statistics.median(setup.busy_cores[key]):.2f} | "
                f"{_wrong(rs)} | {target} |"
            )
            if key in FLOOR_TARGETS:
                verdicts.append(
                    (
                        f"{name} >= {FLOOR_TARGETS[key]:g} × floor, {setup.label}",
                        f"{statistics.median(setup.ratios[key]):.2f}"
                        f"{_quartiles(setup.ratios[key])}",
                        _verdict(setup.ratios[key], FLOOR_TARGETS[key]),
                    )
                )
        naive_ratio = statistics.median(reference.ratios["read_run"])
        print(
            f"| ReadRun, naive pool + transaction per lookup (reference server) | "
            f"{med(reference.results['read_run'], 'rps'):.0f} | | | {naive_ratio:.2f}"
            f"{_quartiles(reference.ratios['read_run'])} | | | "
            f"{_wrong(reference.results['read_run'])} | |"
        )
        print(
            f"| ReadRun ratio ÷ the naive reference's ratio | | | | "
            f"{statistics.median(setup.ratios['read_run']) / naive_ratio:.2f} | | | | |"
        )
        legacy = med(setup.results["read_run_legacy"], "rps") / med(
            setup.results["read_run"], "rps"
        )
        print(f"| ReadRun calls/s: legacy id ÷ new id | | | | {legacy:.2f} | | | | |")
        # A sum over rounds, not a median: the soft TTL's refreshes (each hot
        # key once per ~30 s, per process) fall into some rounds and not others.
        print(
            f"| control-plane queries per 1,000 cache-hit ResolveEnv (all rounds: "
            f"{setup.env_queries} queries, {setup.env_refreshes} of them refreshes, "
            f"/ {setup.env_calls} calls) | | | | "
            f"{setup.env_queries * 1000 / max(1, setup.env_calls):.2f} | | | | ~0 |"
        )
        if setup.coalesced["batches"]:
            print(
                f"| ReadRun: run ids per coalesced query | | | | "
                f"{setup.coalesced['keys'] / setup.coalesced['batches']:.1f} | | | | |"
            )

    print(f"\nBatch versus single, one process, {args.concurrency} calls in flight each\n")
    print(
        "| BatchResolveEnvs(100) ids/s ÷ single-call ids/s | cache state | ratio (median, IQR) "
        "| batch ids/s | single ids/s | served from cache: batch / single "
        "| fresh ids used per run: batch / single | wrong answers | target |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for state, batch, single in BATCH_VS_SINGLE:
        b, s = batches[batch], batches[single]
        ratios = batch_ratios[state]
        described = "warm: every id cached" if state == "warm" else "cold: no id cached"
        fresh = f"{_fresh(b)} / {_fresh(s)}" if state == "cold" else "— (ids drawn from the cached)"
        print(
            f"| BatchResolveEnvs(100) ids/s ÷ single-call ids/s | {described} | "
            f"{statistics.median(ratios):.1f}{_quartiles(ratios, 1)} | "
            f"{med(b, 'items_per_s'):.0f} | {med(s, 'items_per_s'):.0f} | "
            f"{_share(_median_share(b))} / {_share(_median_share(s))} | {fresh} | "
            f"{_wrong(b + s)} | >= {BATCH_TARGET:g} |"
        )
        verdicts.append(
            (
                f"BatchResolveEnvs(100) >= {BATCH_TARGET:g} × singles in ids/s, {state}",
                f"{statistics.median(ratios):.1f}{_quartiles(ratios, 1)}",
                _verdict(ratios, BATCH_TARGET),
            )
        )

    one, two = setups
    print("\n| measure | value | target |\n|---|---:|---|")
    print(
        f"| content check: BatchResolveEnvs(100) of ids that do not exist | "
        f"{check['items']} of {check['asked']} ids counted resolved, {check['wrong']} "
        f"flagged wrong: {'flagged' if check['flagged'] else 'NOT FLAGGED'} | "
        f"every id flagged wrong |"
    )
    print(
        f"| queries for a stampede of 64 cold calls on one key (5 keys) | "
        f"{', '.join(map(str, stampede_queries))} | exactly 1 |"
    )
    verdicts.append(
        (
            "exactly 1 query for a stampede of 64 cold calls on one key",
            ", ".join(map(str, stampede_queries)),
            "yes" if all(q == 1 for q in stampede_queries) else "no",
        )
    )
    for scenario in ("health", "resolve_env", "read_run", "read_run_legacy"):
        print(
            f"| calls/s, 2 processes ÷ 1 process: {scenario} | "
            f"{med(two.results[scenario], 'rps') / med(one.results[scenario], 'rps'):.2f} | |"
        )
    print("\n| target | this run (median, IQR) | met |\n|---|---:|---|")
    for target, value, met in verdicts:
        print(f"| {target} | {value} | {met} |")
    print(
        f"\n{args.rounds} rounds of {args.duration:g} s per scenario on each server, each "
        f"scenario between two floor measurements; ratios are medians of rounds "
        f"(interquartile range in brackets); {args.concurrency} calls in flight, client in "
        f"its own process; machine: {os.cpu_count()} cores. A target is met on the median; "
        f"'within noise' when the interquartile range reaches the other side."
    )
    print(
        f"reproduce: .venv/bin/python bench/run.py --duration {args.duration:g} "
        f"--rounds {args.rounds} --concurrency {args.concurrency} --warmup {args.warmup:g} "
        f"--environments {args.environments} --fresh-environments {args.fresh_environments} "
        f"--runs {args.runs}"
    )


def _quartiles(values: list[float] | None, digits: int = 2) -> str:
    """`` (q1–q3)`` of per-round ratios: how far one round can be trusted."""
    if not values or len(values) < 2:
        return ""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f" ({q1:.{digits}f}–{q3:.{digits}f})"


def _verdict(values: list[float], target: float) -> str:
    """Whether the median of ``values`` reaches ``target``, and whether the
    interquartile range stays on the same side."""
    met = statistics.median(values) >= target
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4)
        if (met and q1 < target) or (not met and q3 >= target):
            return f"{'yes' if met else 'no'}, within noise"
    return "yes" if met else "no"


def _wrong(results: list[dict[str, Any]]) -> str:
    wrong = sum(r["wrong"] for r in results)
    return "0" if not wrong else f"**{wrong} WRONG**"


def _median_share(results: list[dict[str, Any]]) -> float | None:
    shares = [r["from_cache"] for r in results if r.get("from_cache") is not None]
    return statistics.median(shares) if shares else None


def _share(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def _fresh(results: list[dict[str, Any]]) -> str:
    used = statistics.median(r["fresh_used"] for r in results)
    out = f"{used:.0f} of {results[0]['fresh_pool']}"
    exhausted = sum(1 for r in results if r["exhausted"])
    return out + (f", **ran out in {exhausted} runs**" if exhausted else "")


def _org_of(cp_dsn: str) -> str:
    with psycopg.connect(cp_dsn) as conn:
        row = conn.execute('SELECT "id" FROM "Organization" LIMIT 1').fetchone()
    assert row is not None
    return str(row[0])


if __name__ == "__main__":
    main()
