"""The worker pool benchmark: what running few threads at once buys, on real
server processes over real PostgreSQL clusters, every answer checked.

    .venv/bin/python bench/workers.py [--rounds 3 --duration 2]

Two servers run side by side over the same databases and every round
measures both, alternating which goes first:

* ``few`` — ``RESOLVER_RUNNING_WORKERS=2`` (the default; ``--running``): a
  thread that finishes a call takes the next queued one itself;
* ``all`` — ``RESOLVER_RUNNING_WORKERS`` = ``RESOLVER_MAX_WORKERS`` (12):
  every call may wake a thread of its own, as a plain thread pool does.

Scenarios: ``health`` (Health/Check, on express threads in both: the
control), ``resolve_env`` (a cached environment), ``classify``
(ClassifyRunId, no I/O) and ``read_run`` (ReadRun: every call waits on a
database). Each is reported as calls/s of ``few`` over ``all`` in the same
round, with server CPU and context switches per call for both.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

# bench/run.py (this script's directory is on sys.path): servers, load, counts.
import run as bench

from controlplane_resolver.dev.clusters import LocalCluster

SCENARIOS = ("health", "resolve_env", "classify", "read_run")
MAX_WORKERS = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--environments", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument(
        "--running", type=int, default=2, help="RESOLVER_RUNNING_WORKERS of the `few` server"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()

    clusters = [
        LocalCluster("bench-cp", settings=bench.STATS),
        LocalCluster("bench-ro", settings=bench.STATS),
    ]
    few = bench.Setup("few", processes=1, channels=1)
    every = bench.Setup("all", processes=1, channels=1)
    try:
        for cluster in clusters:
            cluster.start()
        cp_dsn, ro_dsn = bench.create_databases(clusters)
        _ids, ids_file = bench.seeded(cp_dsn, ro_dsn, args.environments, args.runs)
        with open(bench.SERVER_LOG, "w") as log:
            for setup, running in ((few, args.running), (every, MAX_WORKERS)):
                env = bench.server_env(
                    cp_dsn,
                    ro_dsn,
                    RESOLVER_MAX_WORKERS=str(MAX_WORKERS),
                    RESOLVER_RUNNING_WORKERS=str(running),
                )
                setup.start(bench.SERVE, env, log)
                # Steady state: the hot environments cached before measuring.
                bench.load(setup.address, "resolve_env", ids_file, 0.5, args.concurrency)

            def measure(setup: bench.Setup, scenario: str) -> dict[str, Any]:
                assert setup.server is not None
                pid = setup.server.pid
                cpu, switches = bench.cpu_seconds(pid), bench.context_switches(pid)
                r = bench.load(setup.address, scenario, ids_file, args.duration, args.concurrency)
                calls = max(1, r["calls"] + r["warmup_calls"] + r["errors"])
                r["cpu_us"] = (bench.cpu_seconds(pid) - cpu) * 1e6 / calls
                r["switches"] = (bench.context_switches(pid) - switches) / calls
                return r

            scenarios = args.scenarios.split(",")
            ratios: dict[str, list[float]] = {s: [] for s in scenarios}
            seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for round_no in range(args.rounds):
                line = []
                for scenario in scenarios:
                    results = {}
                    for setup in bench.in_turn([few, every], round_no):
                        results[setup.label] = measure(setup, scenario)
                        seen.setdefault((setup.label, scenario), []).append(results[setup.label])
                    ratios[scenario].append(results["few"]["rps"] / results["all"]["rps"])
                    line.append(
                        f"{scenario} {results['few']['rps']:.0f}/s vs "
                        f"{results['all']['rps']:.0f}/s ({ratios[scenario][-1]:.2f})"
                    )
                print(f"  round {round_no + 1}: " + "; ".join(line), flush=True)

        med = statistics.median
        print("\nresults (medians over rounds; interquartile range of the ratio in brackets):")
        print(
            f"  {'scenario':<12} {'few ÷ all calls/s':>22} {'CPU µs/call':>16} "
            f"{'switches/call':>16}"
        )
        for scenario in scenarios:
            f, a = seen[("few", scenario)], seen[("all", scenario)]
            print(
                f"  {scenario:<12} {med(ratios[scenario]):>10.2f}"
                f"{bench._quartiles(ratios[scenario]):>12} "
                f"{med(r['cpu_us'] for r in f):>7.0f} vs {med(r['cpu_us'] for r in a):<6.0f}"
                f"{med(r['switches'] for r in f):>7.2f} vs {med(r['switches'] for r in a):.2f}"
            )
        bench.fail_on_wrong_answers()
    finally:
        for setup in (few, every):
            setup.stop()
        for cluster in clusters:
            cluster.destroy()


if __name__ == "__main__":
    main()
