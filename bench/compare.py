"""Two server configurations side by side: which serves more, in one run.

    .venv/bin/python bench/compare.py --b RESOLVER_MAX_WORKERS=6 [--a NAME=VALUE …]

A change of a setting (or of the code behind an environment switch) moves
throughput by a few percent, while this shared machine moves it by ±20 %
from one second to the next; two measurements taken minutes apart compare
the machine, not the change. So both servers run at once over the same two
throwaway clusters, and every round measures A and B back to back
(alternating which goes first), with bench/run.py's round: each scenario
between two floor measurements, in a client process of its own. The report
gives, per scenario, the median calls/s of each, B ÷ A, in how many rounds
B served more, the ratios to each server's own floor, the server CPU per
call (steadier than throughput, since time stolen by neighbours is not
our CPU) and the server threads' context switches per call. Answers are
checked as in bench/run.py: a wrong one is flagged and makes the
comparison exit 1 after its report.
"""

from __future__ import annotations

import argparse
import functools
import statistics

from run import (
    ROUND,
    SERVE,
    SERVER_LOG,
    STATS,
    Setup,
    client_channels,
    create_databases,
    fail_on_wrong_answers,
    in_turn,
    load,
    measure_round,
    seeded,
    server_env,
    setting,
)

from controlplane_resolver.dev.clusters import LocalCluster, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--a",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting of configuration A (repeatable)",
    )
    parser.add_argument(
        "--b",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting of configuration B (repeatable)",
    )
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()

    clusters = [
        LocalCluster("compare-cp", settings=STATS).start(),
        LocalCluster("compare-ro", settings=STATS).start(),
    ]
    setups = [
        Setup(
            label,
            args.processes,
            channels=client_channels(args.processes),
            metrics_port=free_port(),
        )
        for label in "AB"
    ]
    try:
        cp_dsn, ro_dsn = create_databases(clusters)
        _ids, ids_file = seeded(cp_dsn, ro_dsn, 5000, 5000)
        env = server_env(cp_dsn, ro_dsn)
        log = open(SERVER_LOG, "w")
        for s, overrides in zip(setups, (args.a, args.b)):
            s.start(SERVE, {**env, **dict(overrides)}, log)
        run = functools.partial(
            load,
            ids_file=ids_file,
            duration=args.duration,
            concurrency=args.concurrency,
            warmup=args.warmup,
        )
        for round_no in range(args.rounds):
            for s in in_turn(setups, round_no):
                measure_round(s, run, cp_dsn)
        report(args, *setups)
        fail_on_wrong_answers()
    finally:
        for s in setups:
            s.stop()
        for c in clusters:
            c.destroy()


def report(args: argparse.Namespace, a: Setup, b: Setup) -> None:
    def label(overrides: list[tuple[str, str]]) -> str:
        return " ".join(f"{k}={v}" for k, v in overrides) or "defaults"

    print(f"\nA: {label(args.a)}\nB: {label(args.b)}\n")
    print(
        "| scenario | A calls/s | B calls/s | B ÷ A | rounds B served more | "
        "A ratio to floor | B ratio to floor | A CPU/call | B CPU/call | "
        "A switches/call | B switches/call |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    floors_per_round = ROUND.count("health")
    for scenario in dict.fromkeys(ROUND):
        per_round = []
        for s in (a, b):
            rps = [r["rps"] for r in s.results[scenario]]
            if scenario == "health":  # several floor measurements per round: their mean
                rps = [
                    statistics.mean(rps[i : i + floors_per_round])
                    for i in range(0, len(rps), floors_per_round)
                ]
            per_round.append(rps)
        wins = sum(rb > ra for ra, rb in zip(*per_round))
        ma, mb = (statistics.median(r) for r in per_round)
        ratios = [
            f"{statistics.median(s.ratios[scenario]):.3f}" if scenario in s.ratios else "1"
            for s in (a, b)
        ]
        cpu = [f"{statistics.median(s.cpu_per_call[scenario]):.0f} µs" for s in (a, b)]
        switches = [f"{statistics.median(s.switches_per_call[scenario]):.1f}" for s in (a, b)]
        print(
            f"| {scenario} | {ma:.0f} | {mb:.0f} | {mb / ma:.3f} | {wins}/{len(per_round[0])} "
            f"| {ratios[0]} | {ratios[1]} | {cpu[0]} | {cpu[1]} | {switches[0]} | {switches[1]} |"
        )
    flags = "".join(f" --a {k}={v}" for k, v in args.a) + "".join(
        f" --b {k}={v}" for k, v in args.b
    )
    print(
        f"\n{args.rounds} rounds, {args.processes} process(es) per server, "
        f"{args.concurrency} calls in flight."
    )
    print(
        f"reproduce: .venv/bin/python bench/compare.py{flags} --processes {args.processes} "
        f"--rounds {args.rounds} --duration {args.duration:g} "
        f"--concurrency {args.concurrency} --warmup {args.warmup:g}"
    )


if __name__ == "__main__":
    main()
