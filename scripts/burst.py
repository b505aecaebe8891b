"""A burst of calls all started at once against a real server: how many end
in each status (docs/faults.md, "burst").

    .venv/bin/python scripts/burst.py [--calls 4000] [--connections 4]
        [--limit 64] [--runs 3] [--bare] [--option NAME=INT ...]

Starts a throwaway PostgreSQL cluster and ``controlplane-resolver serve`` over
it (``RESOLVER_MAX_CONCURRENT_RPCS=--limit``, the listener off), connects
``--connections`` channels (configured as the typed client's, unless
``--bare``), then starts ``--calls`` ``ClassifyRunId`` calls (no database
work; 5 s deadline) as futures spread over them, and prints the answers by
status code, the first few messages of each failure status, the time until
the last answer and the server's resident memory before and after. Each
``--option NAME=INT`` is added to the server's channel arguments
(``grpc.max_concurrent_streams=16``, ``grpc.server.max_pending_requests=…``),
before the server's own: of two values of one argument grpc core takes the
first.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver.dev.clusters import LocalCluster, free_port
from controlplane_resolver_client import channel_options, pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

#: ``serve`` with extra channel arguments (argv[1], JSON pairs).
SERVE = """
import json, sys
from controlplane_resolver.serving import server
extra = [tuple(pair) for pair in json.loads(sys.argv[1])]
own = server.server_options
server.server_options = lambda settings: extra + own(settings)
from controlplane_resolver.cli import main
sys.exit(main(["serve"]))
"""
REQUEST = pb.ClassifyRunIdRequest(id="run_" + "2ZXUZyS4pLPQVsdDHXw1d2eDRX1")


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def burst(
    address: str, calls: int, connections: int, bare: bool
) -> tuple[collections.Counter[str], dict[str, collections.Counter[str]], float]:
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.insecure_channel(address, options=options if bare else channel_options(options))
        for _ in range(connections)
    ]
    stubs = [resolver_pb2_grpc.ControlPlaneResolverServiceStub(c) for c in channels]
    for stub in stubs:
        stub.ClassifyRunId(REQUEST, timeout=5)  # connected before the burst
    started = time.monotonic()
    futures = [
        stubs[i % connections].ClassifyRunId.future(REQUEST, timeout=5) for i in range(calls)
    ]
    codes: collections.Counter[str] = collections.Counter()
    messages: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for future in futures:
        try:
            future.result()
            codes["OK"] += 1
        except grpc.RpcError as exc:
            code = exc.code().name  # type: ignore[attr-defined]
            codes[code] += 1
            messages[code][(exc.details() or "")[:100]] += 1  # type: ignore[attr-defined]
    took = time.monotonic() - started
    for channel in channels:
        channel.close()
    return codes, messages, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--limit", type=int, default=64, help="RESOLVER_MAX_CONCURRENT_RPCS")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bare", action="store_true", help="channels without the service config")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=INT")
    args = parser.parse_args()
    extra = [(o.split("=", 1)[0], int(o.split("=", 1)[1])) for o in args.option]
    cluster = LocalCluster("burst").start()
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "CONTROL_PLANE_DATABASE_URL": cluster.dsn(),
        "RESOLVER_ADDR": address,
        "RESOLVER_LISTEN_ENABLED": "0",
        "RESOLVER_MAX_CONCURRENT_RPCS": str(args.limit),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, json.dumps(extra)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not serving(address):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)  # polling a start-up, with a deadline
        print(
            f"{args.calls} calls over {args.connections} connections "
            f"({'bare' if args.bare else 'typed-client'} channels), limit {args.limit}, "
            f"options {extra or 'none'}",
            flush=True,
        )
        for run in range(1, args.runs + 1):
            before = rss_mb(server.pid)
            codes, messages, took = burst(address, args.calls, args.connections, args.bare)
            print(
                f"run {run}: {dict(codes.most_common())}, last answer after {took:.2f} s, "
                f"server RSS {before:.0f} -> {rss_mb(server.pid):.0f} MB",
                flush=True,
            )
            for code, counted in messages.items():
                for message, n in counted.most_common(2):
                    print(f"    {code} x{n}: {message}", flush=True)
    finally:
        server.terminate()
        server.wait(30)
        cluster.destroy()


if __name__ == "__main__":
    main()
