"""``controlplane-resolver``: serve | check | migrate | dev.

Exit codes: 0 success, 1 runtime failure (a database unreachable), 2 bad
configuration, 3 refused by a safety interlock.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict, replace
from typing import Any, Sequence

import psycopg

from .config import ConfigError, Settings, add_flags
from .errors import Unavailable
from .safety import Refusal

log = logging.getLogger("controlplane_resolver")

EXIT_RUNTIME, EXIT_CONFIG, EXIT_REFUSED = 1, 2, 3
SERVICE = "controlplane.resolver.v1.ControlPlaneResolverService"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(os.environ, vars(args))


def _serve_until_signalled(settings: Settings, *, grace_s: float, on_ready: Any = None) -> int:
    from .app import ResolverApp  # grpc is imported only by commands that serve

    app = ResolverApp(settings)
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    app.start()
    if on_ready is not None:
        on_ready(app)
    stop.wait()
    app.stop(grace=grace_s)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve_until_signalled(_settings(args), grace_s=args.grace)


def cmd_check(args: argparse.Namespace) -> int:
    from .topology import decide_split

    settings = _settings(args)
    decision = decide_split(settings)  # raises Refusal
    print("configuration OK")
    for line in decision.describe():
        print("  " + line)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate

    for dsn, schema in ((args.control_plane, "control_plane"), (args.run_ops, "run_ops")):
        if dsn:
            from .config import redact_dsn

            print(f"{schema}: {migrate(dsn, schema)} ({redact_dsn(dsn)})")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from . import demo
    from .localpg import LocalCluster
    from .migrate import migrate

    clusters: list[LocalCluster] = []
    try:
        print("starting two throwaway PostgreSQL clusters (control-plane, run-ops)…", flush=True)
        for name in ("control-plane", "run-ops"):
            clusters.append(LocalCluster(name).start())
        cp_dsn = clusters[0].create_database("platform")
        ro_dsn = clusters[1].create_database("run_ops")
        migrate(cp_dsn, "control_plane")
        migrate(ro_dsn, "run_ops")
        with psycopg.connect(cp_dsn) as cp, psycopg.connect(ro_dsn) as ro:
            ids = demo.seed(cp, ro)
        settings = Settings.load({}, {
            "control_plane_database_url": cp_dsn,
            "run_ops_database_url": ro_dsn,
            "run_ops_split_enabled": "1",
            "realtime_backend_native_enabled": "1",
            "run_ops_mint_ksuid_enabled": "1",
            "addr": args.addr or os.environ.get("RESOLVER_ADDR") or "127.0.0.1:50051",
        })
        return _serve_until_signalled(settings, grace_s=1.0,
                                      on_ready=lambda app: _print_examples(app, ids))
    finally:
        for cluster in clusters:
            cluster.destroy()
        if clusters:
            print("removed the throwaway clusters", flush=True)


def _print_examples(app: Any, ids: Any) -> None:
    addr = f"127.0.0.1:{app.port}"
    calls = [
        ("ResolveEnv", {"environmentId": ids.production_environment_id}),
        ("ResolveAuthenticatedEnv", {"environmentId": ids.preview_branch_environment_id}),
        ("ResolveWorkerVersion", {"environmentId": ids.production_environment_id}),
        ("ResolveWorkerVersion", {"environmentId": ids.development_environment_id}),
        ("ReadRun", {"runId": ids.new_run_friendly_id, "includeEnvironment": True}),
        ("ReadRun", {"runId": ids.legacy_run_id}),
        ("ReadRun", {"runId": ids.old_short_run_friendly_id}),
        ("ClassifyRunId", {"id": ids.legacy_run_in_run_ops_friendly_id}),
        ("AssertEnvExists", {"environmentId": ids.staging_environment_id}),
    ]
    print(f"\ncontrolplane-resolver dev: serving on {addr} with split mode ON "
          "(two clusters, demo data). Ctrl-C stops and removes everything.\n")
    print("Try (grpcurl is installed in .venv/bin by `make dev`):\n")
    for method, body in calls:
        print(f"  grpcurl -plaintext -d '{json.dumps(body)}' {addr} {SERVICE}/{method}")
    print(f"\n  grpcurl -plaintext {addr} list")
    print(f"  grpcurl -plaintext {addr} grpc.health.v1.Health/Check\n", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane-resolver", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("RESOLVER_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="check the configuration, open pools and serve")
    add_flags(serve)
    serve.add_argument("--grace", type=float, default=5.0,
                       help="seconds in-flight calls get to finish on SIGTERM")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate configuration, run the interlocks, print "
                                         "the verdict and topology")
    add_flags(check)
    check.set_defaults(func=cmd_check)

    migrate = sub.add_parser("migrate", help="create the compatible schema subset in empty "
                                             "databases (idempotent)")
    migrate.add_argument("--control-plane", metavar="DSN", help="control-plane database")
    migrate.add_argument("--run-ops", metavar="DSN", help="run-ops database")
    migrate.set_defaults(func=cmd_migrate)

    dev = sub.add_parser("dev", help="throwaway databases with demo data, split on, serve")
    dev.add_argument("--addr", default=None, help="listen address (default 127.0.0.1:50051)")
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Refusal as exc:
        print(f"refused ({exc.code}): {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Unavailable as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as exc:
        from .localpg import PostgresNotInstalled
        from .migrate import MigrationRefused

        if isinstance(exc, (PostgresNotInstalled, MigrationRefused)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        raise


if __name__ == "__main__":
    raise SystemExit(main())
