"""Settings: environment variables and command-line flags → one immutable
object. No I/O happens here.

Every option is declared once in :data:`OPTIONS`; the CLI derives its flags
from that table, so an environment variable and its flag cannot drift apart.
A flag given on the command line wins over the environment variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from psycopg.conninfo import conninfo_to_dict


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and the fix."""


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use 1/true or 0/false")


def whole_number(unit: str = "", minimum: int = 0) -> Callable[[str, str], int]:
    """A parser of whole numbers of ``unit`` that are at least ``minimum``;
    its errors name the setting, the unit and the bound."""
    what = f"a whole number of {unit}" if unit else "a whole number"

    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not {what}") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be {minimum} or more")
        return value

    return parse


parse_ms = whole_number("milliseconds")
parse_microseconds = whole_number("microseconds")
parse_positive = whole_number(minimum=1)


def parse_dsn(name: str, raw: str) -> str:
    try:
        conninfo_to_dict(raw)
    except Exception:
        # The DSN may hold a password: say which setting, never echo it.
        raise ConfigError(
            f"{name} is not a valid PostgreSQL connection string "
            "(expected postgresql://user:password@host:port/dbname or key=value pairs)"
        ) from None
    return raw


def parse_str(name: str, raw: str) -> str:
    return raw


@dataclass(frozen=True)
class Option:
    field: str
    env: str
    parse: Callable[[str, str], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "control_plane_database_url",
        "CONTROL_PLANE_DATABASE_URL",
        parse_dsn,
        None,
        "control-plane primary (required)",
        secret=True,
    ),
    Option(
        "control_plane_database_read_replica_url",
        "CONTROL_PLANE_DATABASE_READ_REPLICA_URL",
        parse_dsn,
        None,
        "control-plane read replica (default: the primary)",
        secret=True,
    ),
    Option(
        "run_ops_database_url",
        "RUN_OPS_DATABASE_URL",
        parse_dsn,
        None,
        "run-ops database, where new runs live",
        secret=True,
    ),
    Option(
        "run_ops_database_read_replica_url",
        "RUN_OPS_DATABASE_READ_REPLICA_URL",
        parse_dsn,
        None,
        "run-ops read replica (default: the run-ops database)",
        secret=True,
    ),
    Option(
        "run_ops_legacy_database_url",
        "RUN_OPS_LEGACY_DATABASE_URL",
        parse_dsn,
        None,
        "where legacy runs are read under split (default: the control-plane replica)",
        secret=True,
    ),
    Option(
        "run_ops_split_enabled",
        "RUN_OPS_SPLIT_ENABLED",
        parse_bool,
        False,
        "1/true turns the run-ops split on",
    ),
    Option(
        "realtime_backend_native_enabled",
        "REALTIME_BACKEND_NATIVE_ENABLED",
        parse_bool,
        False,
        "1/true when the realtime feed reads runs natively (required for split)",
    ),
    Option(
        "sentinel_strict",
        "RESOLVER_SENTINEL_STRICT",
        parse_bool,
        False,
        "also refuse split when run-ops and legacy are two databases of one cluster",
    ),
    Option(
        "control_plane_cache_ttl_ms",
        "CONTROL_PLANE_CACHE_TTL_MS",
        parse_ms,
        30_000,
        "soft TTL of cached control-plane answers; 0 disables caching",
    ),
    Option(
        "control_plane_cache_hard_ttl_ms",
        "CONTROL_PLANE_CACHE_HARD_TTL_MS",
        parse_ms,
        300_000,
        "hard TTL: a stale answer is served while refreshes fail, until this age",
    ),
    Option(
        "control_plane_cache_negative_ttl_ms",
        "CONTROL_PLANE_CACHE_NEGATIVE_TTL_MS",
        parse_ms,
        5_000,
        "lifetime of a cached confirmed absence",
    ),
    Option(
        "control_plane_cache_max_entries",
        "CONTROL_PLANE_CACHE_MAX_ENTRIES",
        parse_positive,
        10_000,
        "bound on entries per cache slot",
    ),
    Option(
        "worker_version_cache_ttl_ms",
        "WORKER_VERSION_CACHE_TTL_MS",
        parse_ms,
        1_000,
        "worker-version cache lifetime (bounds how long a promotion takes to show)",
    ),
    Option(
        "run_ops_mint_ksuid_enabled",
        "RUN_OPS_MINT_KSUID_ENABLED",
        parse_bool,
        False,
        "master switch for minting new-shape (ksuid) ids",
    ),
    Option(
        "listen_enabled",
        "RESOLVER_LISTEN_ENABLED",
        parse_bool,
        True,
        "LISTEN for invalidations on the control-plane primary (see `triggers install`)",
    ),
    Option("addr", "RESOLVER_ADDR", parse_str, "127.0.0.1:50051", "address to listen on"),
    Option(
        "tls_cert",
        "RESOLVER_TLS_CERT",
        parse_str,
        None,
        "PEM certificate chain: serve TLS (re-read when the file changes)",
    ),
    Option("tls_key", "RESOLVER_TLS_KEY", parse_str, None, "PEM private key for --tls-cert"),
    Option(
        "tls_client_ca",
        "RESOLVER_TLS_CLIENT_CA",
        parse_str,
        None,
        "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    ),
    Option(
        "auth_tokens_file",
        "RESOLVER_AUTH_TOKENS_FILE",
        parse_str,
        None,
        "bearer tokens, one client a line: NAME TOKEN [METHOD ...] (re-read on change)",
    ),
    Option(
        "allow_unauthenticated",
        "RESOLVER_ALLOW_UNAUTHENTICATED",
        parse_bool,
        False,
        "serve without tokens or client certificates on a non-loopback address",
    ),
    Option(
        "open_health",
        "RESOLVER_OPEN_HEALTH",
        parse_bool,
        True,
        "health checks need no token (Kubernetes probes cannot send one)",
    ),
    Option(
        "open_reflection",
        "RESOLVER_OPEN_REFLECTION",
        parse_bool,
        False,
        "server reflection needs no token",
    ),
    Option(
        "metrics_addr",
        "RESOLVER_METRICS_ADDR",
        parse_str,
        None,
        "serve Prometheus /metrics on this host:port (off when unset; with --processes N, "
        'every process\'s samples, labelled process="i")',
    ),
    Option(
        "health_addr",
        "RESOLVER_HEALTH_ADDR",
        parse_str,
        None,
        "also serve grpc.health.v1 alone, in plaintext, on this host:port (for probes "
        "that cannot speak TLS; not subject to the concurrency limit)",
    ),
    Option("log_format", "RESOLVER_LOG_FORMAT", parse_str, "text", "text or json"),
    Option(
        "max_concurrent_rpcs",
        "RESOLVER_MAX_CONCURRENT_RPCS",
        parse_positive,
        256,
        "calls in progress or queued beyond this get RESOURCE_EXHAUSTED at once",
    ),
    Option(
        "startup_timeout_ms",
        "RESOLVER_STARTUP_TIMEOUT_MS",
        parse_positive,
        30_000,
        "how long start-up waits for each database and the listener before giving up",
    ),
    Option(
        "shutdown_pause_ms",
        "RESOLVER_SHUTDOWN_PAUSE_MS",
        parse_ms,
        0,
        "on SIGTERM, report NOT_SERVING this long before draining (load balancers)",
    ),
    Option(
        "shutdown_grace_ms",
        "RESOLVER_SHUTDOWN_GRACE_MS",
        parse_ms,
        5_000,
        "on SIGTERM, in-flight calls get this long to finish",
    ),
    Option(
        "stuck_after_ms",
        "RESOLVER_STUCK_AFTER_MS",
        parse_ms,
        60_000,
        "report NOT_SERVING (so the liveness probe restarts the process) when calls are "
        "in flight and none has finished for this long (0: never)",
    ),
    Option(
        "keepalive_time_ms",
        "RESOLVER_KEEPALIVE_TIME_MS",
        parse_ms,
        60_000,
        "HTTP/2 keepalive ping interval",
    ),
    Option(
        "max_connection_age_ms",
        "RESOLVER_MAX_CONNECTION_AGE_MS",
        parse_ms,
        300_000,
        "close client connections after this age so channels rebalance across replicas",
    ),
    Option(
        "processes",
        "RESOLVER_PROCESSES",
        parse_positive,
        1,
        "worker processes sharing the port (SO_REUSEPORT), each with its own cache",
    ),
    Option(
        "max_workers",
        "RESOLVER_MAX_WORKERS",
        parse_positive,
        12,
        "threads serving calls: they share one GIL, so more threads add contention (on 2 "
        "cores 12 served 8-17 % more cache hits/s than 16; 64 was slower than 16)",
    ),
    Option(
        "run_read_gather_us",
        "RESOLVER_RUN_READ_GATHER_US",
        parse_microseconds,
        500,
        "under concurrent ReadRun load, wait up to this many microseconds for more reads "
        "to share a query (0: never wait)",
    ),
    Option(
        "pool_max_size",
        "RESOLVER_POOL_MAX_SIZE",
        parse_positive,
        8,
        "connections per database pool",
    ),
    Option(
        "db_timeout_ms",
        "RESOLVER_DB_TIMEOUT_MS",
        parse_positive,
        5_000,
        "longest wait for a pooled connection, and the statement timeout",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The whole configuration, validated. Construct with :meth:`load`."""

    control_plane_database_url: str
    control_plane_database_read_replica_url: str | None = None
    run_ops_database_url: str | None = None
    run_ops_database_read_replica_url: str | None = None
    run_ops_legacy_database_url: str | None = None
    run_ops_split_enabled: bool = False
    realtime_backend_native_enabled: bool = False
    sentinel_strict: bool = False
    control_plane_cache_ttl_ms: int = 30_000
    control_plane_cache_hard_ttl_ms: int = 300_000
    control_plane_cache_negative_ttl_ms: int = 5_000
    control_plane_cache_max_entries: int = 10_000
    worker_version_cache_ttl_ms: int = 1_000
    run_ops_mint_ksuid_enabled: bool = False
    listen_enabled: bool = True
    addr: str = "127.0.0.1:50051"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_tokens_file: str | None = None
    allow_unauthenticated: bool = False
    open_health: bool = True
    open_reflection: bool = False
    metrics_addr: str | None = None
    health_addr: str | None = None
    log_format: str = "text"
    max_concurrent_rpcs: int = 256
    startup_timeout_ms: int = 30_000
    shutdown_pause_ms: int = 0
    shutdown_grace_ms: int = 5_000
    stuck_after_ms: int = 60_000
    keepalive_time_ms: int = 60_000
    max_connection_age_ms: int = 300_000
    processes: int = 1
    max_workers: int = 12
    run_read_gather_us: int = 500
    pool_max_size: int = 8
    db_timeout_ms: int = 5_000

    @classmethod
    def load(cls, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Settings:
        """Build settings from environment variables, overridden by ``flags``
        (argparse values keyed by field name; ``None`` means "not given").

        Raises :class:`ConfigError` naming the first bad or missing setting.
        """
        flags = flags or {}
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            given = flags.get(opt.field)
            if given is not None:
                raw, source = str(given), opt.flag
            elif opt.env in environ:
                raw, source = environ[opt.env], opt.env
            else:
                values[opt.field] = opt.default
                continue
            values[opt.field] = opt.parse(source, raw) if (raw or not opt.secret) else None
        if not values["control_plane_database_url"]:
            raise ConfigError(
                "CONTROL_PLANE_DATABASE_URL is required: set it (or --control-plane-database-url) "
                "to the control-plane primary, e.g. postgresql://user@host:5432/platform"
            )
        settings = cls(**values)
        if settings.log_format not in ("text", "json"):
            raise ConfigError(f"RESOLVER_LOG_FORMAT={settings.log_format!r}: use text or json")
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if settings.tls_client_ca and not settings.tls_cert:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if settings.control_plane_cache_ttl_ms > 0 and (
            settings.control_plane_cache_hard_ttl_ms < settings.control_plane_cache_ttl_ms
        ):
            raise ConfigError(
                "CONTROL_PLANE_CACHE_HARD_TTL_MS must be at least CONTROL_PLANE_CACHE_TTL_MS "
                f"({settings.control_plane_cache_hard_ttl_ms} < "
                f"{settings.control_plane_cache_ttl_ms})"
            )
        return settings

    def public_items(self) -> list[tuple[str, str]]:
        """Every setting as (name, printable value), DSNs redacted."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_url"):
                value = redact_dsn(value) if value else "(unset)"
            out.append((f.name, str(value)))
        return out


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option to ``parser`` (values default to ``None`` so
    :meth:`Settings.load` can tell "not given" from a value)."""
    for opt in OPTIONS:
        parser.add_argument(
            opt.flag,
            dest=opt.field,
            default=None,
            metavar=opt.env,
            help=f"{opt.help} [env {opt.env}]",
        )


def redact_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN: enough to recognise it, no secrets."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable DSN>"
    host = parts.get("host") or "localhost"
    if "," in str(host) or str(host).startswith("/"):
        host = f"socket {host}"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or '(default)'}"
