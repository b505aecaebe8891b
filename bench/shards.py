"""The shard benchmark (issue 14's targets): real server processes over real
PostgreSQL clusters — control plane, run-ops and three run-ops shards —
driven by bench/load.py in its own process, every answer checked.

    .venv/bin/python bench/shards.py [--rounds 3 --duration 2 --runs 3000]
                                     [--setting NAME=VALUE …]

``--setting`` gives both servers a setting (e.g. ``RESOLVER_RUN_READ_GATHER_US``).

Two servers run side by side and every round measures both, alternating
which goes first:

* ``single`` — the ksuid generation, one run-ops database: ``read_run``
  (ReadRun of ksuids in run-ops), the single-run-ops figure;
* ``sharded`` — the base32hex generation with shards a, b, c:
  ``read_run_gen2`` (ReadRun of gen-2 ids spread evenly over the three
  shards), ``mint_base32hex`` (MintId of a root run: a gen-2 id) and
  ``batch_read_runs_100_sharded`` (BatchReadRuns of 100 gen-2 ids).

Each scenario is measured between two Health/Check runs on its own server
(the floor), and reported as its ratio to the mean of those floors: the
machine is shared and drifts. The targets:

* ReadRun over 3 shards ≥ 0.9 × single run-ops: the two floor ratios
  divided (the raw calls/s ratio is printed beside it);
* MintId base32hex ≥ 0.95 × the health-check floor;
* BatchReadRuns(100) over 3 shards: one query per shard per call
  (pg_stat_statements on each shard, warm-up included), the shards read in
  parallel (the p50 latency of a batch against a single ReadRun's, scaled
  to the batch run's lower concurrency, ``--batch-concurrency``: a batch
  waits on every shard at once, and more batches in flight than the
  per-database bulkhead, ``RESOLVER_DB_MAX_WAITING``, are shed).

Beside the ReadRun ratio it prints the run ids each coalesced query carried
(the servers' /metrics): a shard sees a third of the reads, so its queries
carry fewer ids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from typing import Any

import psycopg

# bench/run.py (this script's directory is on sys.path): servers, load, counts.
import run as bench

from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster, free_port
from controlplane_resolver.dev.migrate import create_migrated, migrate
from controlplane_resolver.domain import minting

SHARDS = "abc"
TASKRUN = 'FROM "TaskRun"'


def shard_databases(cluster: LocalCluster) -> dict[str, str]:
    """A run-ops shard per char of :data:`SHARDS` as one more migrated
    database of ``cluster`` (distinct databases pass the non-strict
    sentinel): their DSNs by shard char."""
    shard_dsns = {}
    for c in SHARDS:
        shard_dsns[c] = cluster.create_database(f"shard_{c}")
        migrate(shard_dsns[c], "run_ops")
    return shard_dsns


def base32hex_settings(shard_dsns: dict[str, str]) -> dict[str, str]:
    """Server settings of the base32hex generation over ``shard_dsns``,
    minting run-ops ids."""
    return {
        "RUN_OPS_ID_GENERATION": "base32hex",
        "RUN_OPS_SHARDS": ",".join(f"{c}={d}" for c, d in shard_dsns.items()),
        "RUN_OPS_MINT_KSUID_ENABLED": "1",
    }


def seed(cp_dsn: str, ro_dsn: str, shard_dsns: dict[str, str], runs: int) -> dict[str, Any]:
    """``runs`` ksuid runs and ``runs`` v1 runs in run-ops, ``runs`` gen-2
    runs spread evenly over the shards, and an organization that mints
    run-ops ids."""
    conns = {c: psycopg.connect(dsn) for c, dsn in shard_dsns.items()}
    try:
        with psycopg.connect(cp_dsn) as cp, psycopg.connect(ro_dsn) as ro:
            org = demo.insert_organization(cp, feature_flags={"runOpsMintKind": "runOpsId"})
            project = demo.insert_project(cp, organization_id=org)
            envs = [
                demo.insert_environment(cp, project_id=project, organization_id=org)
                for _ in range(20)
            ]
            ksuids, v1, gen2 = [], [], []
            for i in range(runs):
                owner = {
                    "environment_id": envs[i % len(envs)],
                    "project_id": project,
                    "organization_id": org,
                }
                ksuids.append(demo.insert_run(ro, id=minting.new_ksuid(), **owner))
                v1.append(demo.insert_run(ro, id=minting.new_run_ops_id(), **owner))
                char = SHARDS[i % len(SHARDS)]
                gen2.append(
                    demo.insert_run(conns[char], id=minting.new_run_ops_id_v2(char), **owner)
                )
            cp.commit()
            ro.commit()
        for conn in conns.values():
            conn.commit()
    finally:
        for conn in conns.values():
            conn.close()
    return {"runs": ksuids, "v1_runs": v1, "gen2_runs": gen2, "mint_organization": [org]}


def seed_one_server(
    cp_dsn: str, ro_dsn: str, cluster: LocalCluster, runs: int
) -> tuple[dict[str, str], dict[str, Any]]:
    """For one base32hex server over shards: the shards as databases of the
    run-ops ``cluster`` (:func:`shard_databases`), seeded (:func:`seed`),
    with ``"runs"`` (bench/load.py's ClassifyRunId and ReadRun ids) naming
    the v1 runs, which that server reads in the run-ops database. Returns
    (shard DSNs by char, ids)."""
    shard_dsns = shard_databases(cluster)
    ids = seed(cp_dsn, ro_dsn, shard_dsns, runs)
    ids["runs"] = ids["v1_runs"]
    return shard_dsns, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3000)
    # Each batch waits on every shard at once: more batches in flight than the
    # per-database bulkhead (RESOLVER_DB_MAX_WAITING, default 8) are shed.
    parser.add_argument("--batch-concurrency", type=int, default=6)
    parser.add_argument(
        "--setting",
        type=bench.setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting of both servers (repeatable)",
    )
    args = parser.parse_args()
    settings = dict(args.setting)

    names = ["cp", "ro", *(f"shard-{c}" for c in SHARDS)]
    clusters = [LocalCluster(f"bench-{n}", settings=bench.STATS) for n in names]
    single = bench.Setup("single", processes=1, channels=1, metrics_port=free_port())
    sharded = bench.Setup("sharded", processes=1, channels=1, metrics_port=free_port())
    try:
        print(f"starting {len(clusters)} clusters ({', '.join(names)})…", flush=True)
        for cluster in clusters:
            cluster.start()
        locations = create_migrated(clusters, SHARDS)
        cp_dsn, ro_dsn, shard_dsns = locations.control_plane, locations.run_ops, locations.shards
        for dsn in (ro_dsn, *shard_dsns.values()):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        print(f"seeding {args.runs} ksuid runs and {args.runs} gen-2 runs…", flush=True)
        ids = seed(cp_dsn, ro_dsn, shard_dsns, args.runs)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(ids, f)
            ids_file = f.name

        with open(bench.SERVER_LOG, "w") as log:
            single.start(bench.SERVE, bench.server_env(cp_dsn, ro_dsn, **settings), log)
            sharded.start(
                bench.SERVE,
                bench.server_env(cp_dsn, ro_dsn, **base32hex_settings(shard_dsns), **settings),
                log,
            )

            def run(setup: bench.Setup, scenario: str) -> dict[str, Any]:
                concurrency = args.concurrency
                if scenario.startswith("batch_"):
                    concurrency = args.batch_concurrency
                return bench.load(setup.address, scenario, ids_file, args.duration, concurrency)

            def cpu_per_call(setup: bench.Setup, scenario: str) -> tuple[float, dict[str, Any]]:
                """Server CPU µs per call (warm-up included): steadier than
                calls/s on a shared machine, where neighbours steal time."""
                assert setup.server is not None
                before = bench.cpu_seconds(setup.server.pid)
                r = run(setup, scenario)
                used = bench.cpu_seconds(setup.server.pid) - before
                return used * 1e6 / max(1, r["calls"] + r["warmup_calls"] + r["errors"]), r

            def between_floors(setup: bench.Setup, scenario: str) -> tuple[float, dict[str, Any]]:
                floor_cpu, before = cpu_per_call(setup, "health")
                counted = bench.scrape(setup.metrics_port)
                cpu, r = cpu_per_call(setup, scenario)
                r["keys_per_query"] = keys_per_query(counted, bench.scrape(setup.metrics_port))
                _, after = cpu_per_call(setup, "health")
                cpus.setdefault((setup.label, scenario), []).append(cpu)
                cpus.setdefault((setup.label, "health"), []).append(floor_cpu)
                return r["rps"] / statistics.mean([before["rps"], after["rps"]]), r

            def keys_per_query(before: dict[str, float], after: dict[str, float]) -> float:
                """Run ids per coalesced query between two scrapes, over every
                database (0 when no read ran)."""
                names = ("resolver_run_read_keys_total", "resolver_run_read_batches_total")
                totals = [
                    sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(n + "{"))
                    for n in names
                ]
                return totals[0] / totals[1] if totals[1] else 0.0

            cpus: dict[tuple[str, str], list[float]] = {}
            # Steady state: the organization's mint flags are cached before
            # measuring (concurrent first reads may be shed by the control
            # plane's bulkhead, and a shed flag read mints a cuid: wrong here).
            bench.load(sharded.address, "mint_base32hex", ids_file, 0.2, 1)

            read_ratio, raw_ratio, mint_ratio = [], [], []
            batch_p50, single_p50, queries_per_call = [], [], []
            keys_single, keys_sharded = [], []
            for round_no in range(args.rounds):
                results: dict[str, Any] = {}
                for setup in bench.in_turn([single, sharded], round_no):
                    if setup is single:
                        results["single"] = between_floors(single, "read_run")
                        # A reference for MintId: any call with a payload (no I/O).
                        between_floors(single, "classify")
                    else:
                        results["sharded"] = between_floors(sharded, "read_run_gen2")
                (s_ratio, s), (g_ratio, g) = results["single"], results["sharded"]
                read_ratio.append(g_ratio / s_ratio)
                keys_single.append(s["keys_per_query"])
                keys_sharded.append(g["keys_per_query"])
                raw_ratio.append(g["rps"] / s["rps"])
                m_ratio, m = between_floors(sharded, "mint_base32hex")
                mint_ratio.append(m_ratio)
                before = {c: bench.statement_calls(d, TASKRUN) for c, d in shard_dsns.items()}
                b = run(sharded, "batch_read_runs_100_sharded")
                after = {c: bench.statement_calls(d, TASKRUN) for c, d in shard_dsns.items()}
                calls = b["calls"] + b["warmup_calls"] + b["errors"]
                queries_per_call.append(
                    max(abs((after[c] - before[c]) / calls - 1) for c in SHARDS)
                )
                batch_p50.append(b["p50_ms"])
                single_p50.append(g["p50_ms"] * args.batch_concurrency / args.concurrency)
                print(
                    f"  round {round_no + 1}: ReadRun single {s['rps']:.0f}/s ({s_ratio:.2f} of "
                    f"floor, {s['keys_per_query']:.1f} ids per query), gen-2 over 3 shards "
                    f"{g['rps']:.0f}/s ({g_ratio:.2f}, {g['keys_per_query']:.1f} per query); "
                    f"MintId {m['rps']:.0f}/s ({m_ratio:.2f}); BatchReadRuns(100) "
                    f"{b['items_per_s']:.0f} ids/s, p50 {b['p50_ms']:.1f} ms, queries per "
                    "shard per call "
                    + ", ".join(f"{c} {(after[c] - before[c]) / calls:.2f}" for c in SHARDS),
                    flush=True,
                )
        med = statistics.median
        print("\nresults (medians over rounds, interquartile range in brackets):")
        print(
            f"  ReadRun gen-2 over 3 shards / single run-ops: {med(read_ratio):.2f}"
            f"{bench._quartiles(read_ratio)} (raw calls/s ratio {med(raw_ratio):.2f}); "
            f"target ≥ 0.9: {bench._verdict(read_ratio, 0.9)}; run ids per query "
            f"{med(keys_single):.1f} single, {med(keys_sharded):.1f} per shard"
        )
        print(
            f"  MintId base32hex / health floor: {med(mint_ratio):.2f}"
            f"{bench._quartiles(mint_ratio)}; target ≥ 0.95: {bench._verdict(mint_ratio, 0.95)}"
        )
        print(
            "  BatchReadRuns(100) over 3 shards: one query per shard per call: "
            f"{'yes' if max(queries_per_call) < 0.01 else 'no'}; p50 "
            f"{med(batch_p50):.1f} ms against {med(single_p50):.1f} ms for one ReadRun "
            "(its p50 scaled to the batch's concurrency)"
        )
        cpu = {k: med(v) for k, v in cpus.items()}
        print(
            "  server CPU per call (µs, median): Health/Check single "
            f"{cpu[('single', 'health')]:.0f}, sharded {cpu[('sharded', 'health')]:.0f}; "
            f"ReadRun single {cpu[('single', 'read_run')]:.0f}, gen-2 over 3 shards "
            f"{cpu[('sharded', 'read_run_gen2')]:.0f} "
            f"({cpu[('sharded', 'read_run_gen2')] / cpu[('single', 'read_run')]:.2f}×); "
            f"MintId {cpu[('sharded', 'mint_base32hex')]:.0f} "
            f"({cpu[('sharded', 'mint_base32hex')] / cpu[('sharded', 'health')]:.2f}× the floor's; "
            f"ClassifyRunId, no I/O, {cpu[('single', 'classify')]:.0f}: "
            f"{cpu[('single', 'classify')] / cpu[('single', 'health')]:.2f}×)"
        )
        bench.fail_on_wrong_answers()
    finally:
        for setup in (single, sharded):
            setup.stop()
        for cluster in clusters:
            cluster.destroy()


if __name__ == "__main__":
    main()
