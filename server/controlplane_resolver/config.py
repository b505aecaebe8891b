"""Settings: environment variables and command-line flags → one immutable
object. No I/O happens here.

Every option is declared once, as a field of :class:`Settings` with its
environment variable, parser, default and help; :data:`OPTIONS` and the
CLI's flags derive from those declarations, so an environment variable, its
flag and its default cannot drift apart.
A flag given on the command line wins over the environment variable.

Some options also answer to the platform's own variable names
(``apps/webapp/app/env.server.ts``), declared on the option:

* **aliases** are other names of the same setting (``TASK_RUN_DATABASE_URL``
  for ``RUN_OPS_DATABASE_URL``). When the option's name and an alias are
  both set to different values, loading fails naming both: which one was
  meant cannot be known.
* **fallbacks** are read only when neither the name nor an alias is set, in
  order, as the platform's ``CONTROL_PLANE_DATABASE_URL ?? DATABASE_URL``
  does; both set is normal (the dedicated name wins).

:attr:`Settings.sources` records which name (or flag) supplied each value,
for ``controlplane-resolver check``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from controlplane_resolver.errors import ConfigError

#: Where the server listens unless told otherwise (``RESOLVER_ADDR``).
DEFAULT_ADDR = "127.0.0.1:50051"


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


def argparse_type(parse: Callable[[str, str], Any], what: str) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type=``: its :class:`ConfigError` becomes
    argparse's usage error, naming ``what``."""

    def convert(raw: str) -> Any:
        try:
            return parse(what, raw)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


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


#: The id generations (``RUN_OPS_ID_GENERATION``); domain/residency.Generation's values.
ID_GENERATIONS = ("ksuid", "base32hex")
_SHARD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def parse_generation(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ID_GENERATIONS:
        raise ConfigError(f"{name}={raw!r} is not an id generation: use ksuid or base32hex")
    return value


#: The value of a ``<char>=`` entry of ``RUN_OPS_SHARDS`` (char form) that
#: makes the shard an alias of the run-ops database, as the JSON form's
#: ``"aliasOf": "new"`` does; ``check`` prints an alias this way too.
RUN_OPS_ALIAS = "@run-ops"


def _shard_entries(name: str, raw: str) -> list[tuple[str, str]]:
    """``a=<x>,b=<y>`` → ``[("a", "<x>"), ("b", "<y>")]``, values stripped.

    Entries are split at a comma followed by ``<char>=``, so a multi-host
    URL's commas stay inside its DSN. A shard char is one of ``[a-z0-9]``
    and appears once. Errors name the setting and the entry, never a value.
    """
    import re

    if not raw.strip():
        return []
    out: list[tuple[str, str]] = []
    for i, entry in enumerate(re.split(r",(?=\s*[a-z0-9]\s*=)", raw.strip())):
        char, sep, value = entry.partition("=")
        char = char.strip()
        if not sep or len(char) != 1 or char not in _SHARD_CHARS:
            raise ConfigError(
                f"{name}: entry {i + 1} does not start with a shard char: write "
                "<char>=<dsn>[,<char>=<dsn>...] with each char one of a-z, 0-9"
            )
        if any(char == c for c, _ in out):
            raise ConfigError(f"{name}: shard {char!r} is given twice")
        out.append((char, value.strip()))
    return out


def parse_shard_map(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``a=<dsn>,b=<dsn>`` → ``(("a", dsn), ("b", dsn))``, in the given order
    (:func:`_shard_entries`); each value a valid DSN. ``@run-ops`` is refused
    by name: only ``RUN_OPS_SHARDS`` takes an alias."""
    out: list[tuple[str, str]] = []
    for char, value in _shard_entries(name, raw):
        if value == RUN_OPS_ALIAS:
            raise ConfigError(
                f"{name}: shard {char!r} is {RUN_OPS_ALIAS}, an alias of the run-ops "
                f"database, which only RUN_OPS_SHARDS takes; give {char}=<dsn> here"
            )
        out.append((char, parse_dsn(f"{name} (shard {char!r})", value)))
    return tuple(out)


@dataclass(frozen=True)
class ShardDescriptors:
    """What ``RUN_OPS_SHARDS`` parses to, in either form: the shards with a
    database of their own, the aliases of the run-ops database (``"aliasOf":
    "new"``, or ``<char>=@run-ops``), and the read replicas the JSON form
    gives (``replicaUrl``; none in the char form). :meth:`Settings.load`
    merges ``replicas`` into ``RUN_OPS_SHARD_READ_REPLICA_URLS`` and keeps
    ``aliases`` as :attr:`Settings.run_ops_shard_aliases`."""

    shards: tuple[tuple[str, str], ...] = ()
    replicas: tuple[tuple[str, str], ...] = ()
    aliases: tuple[str, ...] = ()


#: The fields of one element of the platform's JSON form (its strict zod
#: ``DescriptorSchema``). ``region``, ``directUrl``, ``replication`` and
#: ``knobs`` are the platform's own: checked for shape, then ignored.
_DESCRIPTOR_FIELDS = (
    "key",
    "region",
    "url",
    "replicaUrl",
    "directUrl",
    "replication",
    "knobs",
    "aliasOf",
)


def _shown(value: object, limit: int = 8) -> str:
    """``value`` for an error message when it cannot be a secret (a string
    of at most ``limit`` chars without URL punctuation), else only its JSON
    type."""
    if isinstance(value, str) and len(value) <= limit and not any(c in value for c in ":@/=?"):
        return repr(value)
    kind = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return kind.get(type(value), "a value")


def parse_shard_descriptors(name: str, raw: str) -> ShardDescriptors:
    """The platform's JSON form of ``RUN_OPS_SHARDS``: an array of shard
    descriptors, ``[{"key": "a", "region": "...", "url": "<dsn>", ...}]``.

    Checked as the platform checks it where that matters here: each element
    an object with no unknown field, ``key`` one char of ``[a-z0-9]`` given
    once, ``region`` a non-empty string, exactly one of ``url`` and
    ``aliasOf``, ``replication`` an object unless ``aliasOf`` is set, and
    ``url``/``replicaUrl`` valid DSNs. ``"aliasOf": "new"`` (the only alias)
    makes the key an alias of the run-ops database: its gen-2 runs live
    there. An alias's ``replicaUrl`` is checked and ignored, as the platform
    ignores it: an alias is read where run-ops is. Errors name the setting,
    the element's index and its key, never a DSN.
    """
    import json

    try:
        value = json.loads(raw)
    except ValueError as exc:
        # JSONDecodeError's msg and pos carry no part of the document.
        where = (
            f" ({exc.msg} at character {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        )
        raise ConfigError(
            f"{name} is not valid JSON{where}: its JSON form is an array of shard "
            'descriptors, e.g. [{"key": "a", "region": "us-east-1", "url": "postgresql://...", '
            '"replication": {...}}]'
        ) from None
    if not isinstance(value, list):
        raise ConfigError(
            f"{name} is JSON but {_shown(value)}, not an array: write an array of shard "
            "descriptors, [{...}, ...]"
        )
    shards: list[tuple[str, str]] = []
    replicas: list[tuple[str, str]] = []
    aliases: list[str] = []
    for i, element in enumerate(value):
        at = f"{name}[{i}]"
        if not isinstance(element, dict):
            raise ConfigError(
                f"{at} is {_shown(element)}: each element of {name} is an object, "
                '{"key": ..., "region": ..., "url": ...}'
            )
        key = element.get("key")
        if isinstance(key, str) and len(key) == 1 and key in _SHARD_CHARS:
            at = f"{at} (key {key!r})"
        unknown = [f for f in element if f not in _DESCRIPTOR_FIELDS]
        if unknown:
            raise ConfigError(
                f"{at} has an unknown field ({_shown(unknown[0], 40)}): an element's fields "
                f"are {', '.join(_DESCRIPTOR_FIELDS)}, as the platform's schema (strict) "
                "allows; remove or correct the others"
            )
        if not isinstance(key, str) or len(key) != 1 or key not in _SHARD_CHARS:
            what = "has no key" if "key" not in element else f"has key {_shown(key)}"
            raise ConfigError(
                f'{at} {what}: "key" is the shard char, one of a-z, 0-9 (the last but one '
                "char of the shard's gen-2 ids)"
            )
        if any(key == c for c, _ in shards) or key in aliases:
            raise ConfigError(f"{at}: shard {key!r} is given twice; give each key once")
        region = element.get("region")
        if not isinstance(region, str) or not region.strip():
            raise ConfigError(f'{at}: "region" is required, a non-empty string')
        has_url, has_alias = "url" in element, "aliasOf" in element
        if has_url == has_alias:
            raise ConfigError(
                f'{at} has {"both" if has_url else "neither"} "url" {"and" if has_url else "nor"} '
                '"aliasOf": give exactly one (the shard\'s database URL, or "aliasOf": "new")'
            )
        for optional in ("replicaUrl", "directUrl"):
            if optional in element and not isinstance(element[optional], str):
                raise ConfigError(
                    f'{at}: "{optional}" is {_shown(element[optional])}, not a string'
                )
        for obj in ("replication", "knobs"):
            if obj in element and not isinstance(element[obj], dict):
                raise ConfigError(f'{at}: "{obj}" is {_shown(element[obj])}, not an object')
        if has_alias:
            alias = element["aliasOf"]
            if alias != "new":
                raise ConfigError(
                    f'{at}: "aliasOf" is {_shown(alias)}; the only alias is "new" (the run-ops '
                    "database)"
                )
            if "replicaUrl" in element:  # checked as the platform checks it; not used
                _descriptor_replica(at, element["replicaUrl"])
            aliases.append(key)
            continue
        if "replication" not in element:
            raise ConfigError(
                f'{at}: "replication" is required unless "aliasOf" is set (the platform '
                "refuses the element without it)"
            )
        url = element["url"]
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f'{at}: "url" must be a non-empty database URL string')
        shards.append((key, parse_dsn(f'{at} "url"', url.strip())))
        if "replicaUrl" in element:
            replicas.append((key, _descriptor_replica(at, element["replicaUrl"])))
    return ShardDescriptors(tuple(shards), tuple(replicas), tuple(aliases))


def _descriptor_replica(at: str, raw: str) -> str:
    """A descriptor's ``replicaUrl`` (a string): a non-empty, valid DSN."""
    replica = raw.strip()
    if not replica:
        raise ConfigError(f'{at}: "replicaUrl" is empty: give a database URL or omit it')
    return parse_dsn(f'{at} "replicaUrl"', replica)


def parse_run_ops_shards(name: str, raw: str) -> ShardDescriptors:
    """``RUN_OPS_SHARDS`` in either form: the platform's JSON array of shard
    descriptors when its first non-blank char is ``[``
    (:func:`parse_shard_descriptors`), else ``<char>=<dsn>[,...]``, where
    ``<char>=@run-ops`` makes the char an alias of the run-ops database."""
    head = raw.lstrip()[:1]
    if head == "[":
        return parse_shard_descriptors(name, raw)
    if head == "{":
        raise ConfigError(
            f"{name} starts with {{: its JSON form is an array of shard descriptors, so "
            "wrap the object in [ ], or write <char>=<dsn>[,<char>=<dsn>...]"
        )
    shards: list[tuple[str, str]] = []
    aliases: list[str] = []
    for char, value in _shard_entries(name, raw):
        if value == RUN_OPS_ALIAS:
            aliases.append(char)
        else:
            shards.append((char, parse_dsn(f"{name} (shard {char!r})", value)))
    return ShardDescriptors(tuple(shards), aliases=tuple(aliases))


def parse_shard_chars(name: str, raw: str) -> tuple[str, ...]:
    """``c`` or ``c,d`` → ``("c", "d")``, in the given order: shard chars,
    each one of ``[a-z0-9]`` and given once; blanks around a char are
    allowed. Whether each is a configured shard is checked by
    :meth:`Settings.load`, which knows ``RUN_OPS_SHARDS``."""
    out: list[str] = []
    for i, entry in enumerate(raw.split(",") if raw.strip() else ()):
        char = entry.strip()
        if len(char) != 1 or char not in _SHARD_CHARS:
            raise ConfigError(
                f"{name}: entry {i + 1} ({entry.strip()!r}) is not a shard char: write "
                "<char>[,<char>...] with each char one of a-z, 0-9"
            )
        if char in out:
            raise ConfigError(f"{name}: shard {char!r} is given twice")
        out.append(char)
    return tuple(out)


#: The shard placement rules (``RUN_OPS_SHARD_PLACEMENT``); domain/minting.ShardPlacement's values.
SHARD_PLACEMENTS = ("organization", "platform")


def parse_shard_placement(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in SHARD_PLACEMENTS:
        raise ConfigError(
            f"{name}={raw!r} is not a shard placement rule: use organization or platform"
        )
    return value


@dataclass(frozen=True)
class Option:
    """One setting: its field of :class:`Settings`, environment variable,
    parser, default and help. The flag is derived from the field name."""

    field: str
    env: str
    parse: Callable[[str, str], Any]
    default: Any
    help: str
    secret: bool = False
    #: Other names of this setting; two of them set to different values is an error.
    aliases: tuple[str, ...] = ()
    #: Names read, in order, only when neither ``env`` nor an alias is set.
    fallbacks: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def names(self) -> tuple[str, ...]:
        """Every environment variable this option reads, in precedence order."""
        return (self.env, *self.aliases, *self.fallbacks)

    def from_environment(self, environ: Mapping[str, str]) -> tuple[str, str] | None:
        """``(name, raw value)`` of the environment variable that supplies
        this option, or ``None`` when none does. An empty DSN counts as unset.
        Raises :class:`ConfigError` when the name and an alias disagree."""

        def given(name: str) -> str | None:
            raw = environ.get(name)
            return None if raw is None or (self.secret and raw == "") else raw

        named = [
            (name, raw) for name in (self.env, *self.aliases) if (raw := given(name)) is not None
        ]
        for name, raw in named[1:]:
            if raw != named[0][1]:
                # Never echo the values: they may hold passwords.
                raise ConfigError(
                    f"{named[0][0]} and {name} are both set, to different values: they name "
                    "the same setting, so set one of them (or both to the same value)"
                )
        if named:
            return named[0]
        for name in self.fallbacks:
            raw = given(name)
            if raw is not None:
                return name, raw
        return None


def setting(
    env: str,
    parse: Callable[[str, str], Any],
    default: Any,
    help: str,
    *,
    secret: bool = False,
    aliases: tuple[str, ...] = (),
    fallbacks: tuple[str, ...] = (),
) -> Any:
    """Declare a field of :class:`Settings` as a setting: the dataclass
    default is ``default``; the rest of the :class:`Option` (filled in with
    the field's name) rides in the field's metadata."""
    option = Option(
        field="",
        env=env,
        parse=parse,
        default=default,
        help=help,
        secret=secret,
        aliases=aliases,
        fallbacks=fallbacks,
    )
    return field(default=default, metadata={"option": option})


#: What :attr:`Settings.sources` says of a value no name or flag supplied.
DEFAULT_SOURCE = "default"


@dataclass(frozen=True)
class Settings:
    """The whole configuration, validated. Construct with :meth:`load`.

    Each field is declared once, here, with its environment variable,
    parser, default and help (:func:`setting`); :data:`OPTIONS`, the CLI's
    flags and the docs' table are derived from these declarations.
    """

    control_plane_database_url: str = setting(
        "CONTROL_PLANE_DATABASE_URL",
        parse_dsn,
        None,
        "control-plane primary (required)",
        secret=True,
        fallbacks=("DATABASE_URL",),
    )
    control_plane_database_read_replica_url: str | None = setting(
        "CONTROL_PLANE_DATABASE_READ_REPLICA_URL",
        parse_dsn,
        None,
        "control-plane read replica (default: the primary)",
        secret=True,
        fallbacks=("DATABASE_READ_REPLICA_URL",),
    )
    run_ops_database_url: str | None = setting(
        "RUN_OPS_DATABASE_URL",
        parse_dsn,
        None,
        "run-ops database, where new runs live",
        secret=True,
        aliases=("TASK_RUN_DATABASE_URL",),
    )
    run_ops_database_read_replica_url: str | None = setting(
        "RUN_OPS_DATABASE_READ_REPLICA_URL",
        parse_dsn,
        None,
        "run-ops read replica (default: the run-ops database)",
        secret=True,
        aliases=("TASK_RUN_DATABASE_READ_REPLICA_URL",),
    )
    run_ops_legacy_database_url: str | None = setting(
        "RUN_OPS_LEGACY_DATABASE_URL",
        parse_dsn,
        None,
        "where legacy runs are read under split (default: the control-plane replica)",
        secret=True,
        aliases=("TASK_RUN_LEGACY_DATABASE_URL",),
    )
    run_ops_shards: tuple[tuple[str, str], ...] = setting(
        "RUN_OPS_SHARDS",
        parse_run_ops_shards,
        (),
        "run-ops shards for gen-2 ids: <char>=<dsn>[,<char>=<dsn>...], char in [a-z0-9] "
        "(<char>=@run-ops: an alias of the run-ops database), "
        'or the platform\'s JSON array [{"key": "a", "region": ..., "url": <dsn>, ...}] '
        '(an element with "aliasOf": "new" instead of "url": an alias) '
        "(needs RUN_OPS_ID_GENERATION=base32hex)",
    )
    run_ops_shard_read_replica_urls: tuple[tuple[str, str], ...] = setting(
        "RUN_OPS_SHARD_READ_REPLICA_URLS",
        parse_shard_map,
        (),
        "read replicas of shards, <char>=<dsn>[,<char>=<dsn>...] (a shard without one is "
        "read on its primary; the JSON form of RUN_OPS_SHARDS gives them as replicaUrl)",
    )
    run_ops_shards_not_placed: tuple[str, ...] = setting(
        "RUN_OPS_SHARDS_NOT_PLACED",
        parse_shard_chars,
        (),
        "shards of RUN_OPS_SHARDS that are read but get no new root runs: <char>[,<char>...] "
        "(a shard's first rollout step; children of its runs stay in it)",
    )
    run_ops_id_generation: str = setting(
        "RUN_OPS_ID_GENERATION",
        parse_generation,
        "ksuid",
        "which run ids are new and minted: ksuid (27-char base62) or base32hex (26-char "
        "v1 and gen-2 ids, the platform's current format)",
    )
    run_ops_region: str | None = setting(
        "RUN_OPS_REGION",
        parse_str,
        None,
        "the default region of base32hex v1 run ids, stamped when MintId names no "
        "region (us-east-1, us-west-2, eu-central-1; other or unset: 0; batch ids: 0)",
    )
    run_ops_mint_flip_grace_ms: int = setting(
        "RUN_OPS_MINT_FLIP_GRACE_MS",
        parse_ms,
        90_000,
        "base32hex: after a runOpsMintKind flip stamped runOpsMintKindFlippedAt, the "
        "previous kind stays in force this long",
    )
    run_ops_shard_placement: str = setting(
        "RUN_OPS_SHARD_PLACEMENT",
        parse_shard_placement,
        "organization",
        "how a root run-ops id is placed on a shard: organization (rendezvous hashing of "
        "the organization, its runOpsShard override, RUN_OPS_SHARDS_NOT_PLACED) or "
        "platform (the platform's computeMintShard: the global runOpsMintShardSet, the "
        "runOpsMintShardOverride, environment and organization pins, hashing of the "
        "environment; MintId then needs environment_id)",
    )
    run_ops_split_enabled: bool = setting(
        "RUN_OPS_SPLIT_ENABLED",
        parse_bool,
        False,
        "1/true turns the run-ops split on",
    )
    realtime_backend_native_enabled: bool = setting(
        "REALTIME_BACKEND_NATIVE_ENABLED",
        parse_bool,
        False,
        "1/true when the realtime feed reads runs natively (required for split)",
    )
    sentinel_strict: bool = setting(
        "RESOLVER_SENTINEL_STRICT",
        parse_bool,
        False,
        "also refuse split when run-ops and legacy are two databases of one cluster",
    )
    control_plane_cache_ttl_ms: int = setting(
        "CONTROL_PLANE_CACHE_TTL_MS",
        parse_ms,
        30_000,
        "soft TTL of cached control-plane answers; 0 disables caching",
    )
    control_plane_cache_hard_ttl_ms: int = setting(
        "CONTROL_PLANE_CACHE_HARD_TTL_MS",
        parse_ms,
        300_000,
        "hard TTL: a stale answer is served while refreshes fail, until this age",
    )
    control_plane_cache_negative_ttl_ms: int = setting(
        "CONTROL_PLANE_CACHE_NEGATIVE_TTL_MS",
        parse_ms,
        5_000,
        "lifetime of a cached confirmed absence",
    )
    control_plane_cache_max_entries: int = setting(
        "CONTROL_PLANE_CACHE_MAX_ENTRIES",
        parse_positive,
        10_000,
        "bound on entries per cache slot",
    )
    worker_version_cache_ttl_ms: int = setting(
        "WORKER_VERSION_CACHE_TTL_MS",
        parse_ms,
        1_000,
        "worker-version cache lifetime (bounds how long a promotion takes to show)",
    )
    run_ops_mint_ksuid_enabled: bool = setting(
        "RUN_OPS_MINT_KSUID_ENABLED",
        parse_bool,
        False,
        "master switch for minting new-shape ids (ksuid, or base32hex run-ops ids)",
        aliases=("RUN_OPS_MINT_ENABLED",),
    )
    listen_enabled: bool = setting(
        "RESOLVER_LISTEN_ENABLED",
        parse_bool,
        True,
        "LISTEN for invalidations on the control-plane primary (see `triggers install`)",
    )
    addr: str = setting("RESOLVER_ADDR", parse_str, DEFAULT_ADDR, "address to listen on")
    tls_cert: str | None = setting(
        "RESOLVER_TLS_CERT",
        parse_str,
        None,
        "PEM certificate chain: serve TLS (re-read when the file changes)",
    )
    tls_key: str | None = setting(
        "RESOLVER_TLS_KEY", parse_str, None, "PEM private key for --tls-cert"
    )
    tls_client_ca: str | None = setting(
        "RESOLVER_TLS_CLIENT_CA",
        parse_str,
        None,
        "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    )
    tls_client_grants_file: str | None = setting(
        "RESOLVER_TLS_CLIENT_GRANTS_FILE",
        parse_str,
        None,
        "the resolver's methods per client certificate, one identity (CN or SAN) a line: "
        "IDENTITY [METHOD ...] (mutual TLS; re-read on change)",
    )
    auth_tokens_file: str | None = setting(
        "RESOLVER_AUTH_TOKENS_FILE",
        parse_str,
        None,
        "bearer tokens, one client a line: NAME TOKEN [METHOD ...] (re-read on change)",
    )
    allow_unauthenticated: bool = setting(
        "RESOLVER_ALLOW_UNAUTHENTICATED",
        parse_bool,
        False,
        "serve without tokens or client certificates on a non-loopback address",
    )
    open_health: bool = setting(
        "RESOLVER_OPEN_HEALTH",
        parse_bool,
        True,
        "health checks need no token (Kubernetes probes cannot send one)",
    )
    open_reflection: bool = setting(
        "RESOLVER_OPEN_REFLECTION",
        parse_bool,
        False,
        "server reflection needs no token",
    )
    metrics_addr: str | None = setting(
        "RESOLVER_METRICS_ADDR",
        parse_str,
        None,
        "serve Prometheus /metrics on this host:port (off when unset; with --processes N, "
        'every process\'s samples, labelled process="i")',
    )
    health_addr: str | None = setting(
        "RESOLVER_HEALTH_ADDR",
        parse_str,
        None,
        "also serve grpc.health.v1 alone, in plaintext, on this host:port (for probes "
        "that cannot speak TLS; not subject to the concurrency limit)",
    )
    log_format: str = setting("RESOLVER_LOG_FORMAT", parse_str, "text", "text or json")
    max_concurrent_rpcs: int = setting(
        "RESOLVER_MAX_CONCURRENT_RPCS",
        parse_positive,
        256,
        "calls in progress or queued beyond this get RESOURCE_EXHAUSTED at once",
    )
    startup_timeout_ms: int = setting(
        "RESOLVER_STARTUP_TIMEOUT_MS",
        parse_positive,
        30_000,
        "how long start-up waits for each database and the listener before giving up",
    )
    shutdown_pause_ms: int = setting(
        "RESOLVER_SHUTDOWN_PAUSE_MS",
        parse_ms,
        0,
        "on SIGTERM, report NOT_SERVING this long before draining (load balancers)",
    )
    shutdown_grace_ms: int = setting(
        "RESOLVER_SHUTDOWN_GRACE_MS",
        parse_ms,
        5_000,
        "on SIGTERM, in-flight calls get this long to finish",
    )
    stuck_after_ms: int = setting(
        "RESOLVER_STUCK_AFTER_MS",
        parse_ms,
        60_000,
        "report NOT_SERVING (so the liveness probe restarts the process) when calls are "
        "in flight and none has finished for this long (0: never)",
    )
    keepalive_time_ms: int = setting(
        "RESOLVER_KEEPALIVE_TIME_MS",
        parse_ms,
        60_000,
        "HTTP/2 keepalive ping interval",
    )
    max_connection_age_ms: int = setting(
        "RESOLVER_MAX_CONNECTION_AGE_MS",
        parse_ms,
        300_000,
        "close client connections after this age so channels rebalance across replicas",
    )
    processes: int = setting(
        "RESOLVER_PROCESSES",
        parse_positive,
        1,
        "worker processes sharing the port (SO_REUSEPORT), each with its own cache",
    )
    max_workers: int = setting(
        "RESOLVER_MAX_WORKERS",
        parse_positive,
        12,
        "threads serving calls (they share one interpreter lock: more threads add "
        "contention; docs/benchmarks.md has the measurements behind the default)",
    )
    running_workers: int = setting(
        "RESOLVER_RUNNING_WORKERS",
        parse_positive,
        2,
        "of those threads, how many run at once outside their waits on databases (2: one "
        "can hold the interpreter lock while another is in grpc's C code); a thread that "
        "finishes a call takes the next queued one without a thread switch "
        '(docs/benchmarks.md, "The worker pool")',
    )
    watch_max_streams: int = setting(
        "RESOLVER_WATCH_MAX_STREAMS",
        whole_number(),
        64,
        "WatchInvalidations streams served at once, each on a thread of its own beside "
        "--max-workers; more get RESOURCE_EXHAUSTED (0: no streams)",
    )
    watch_heartbeat_ms: int = setting(
        "RESOLVER_WATCH_HEARTBEAT_MS",
        parse_positive,
        1_000,
        "WatchInvalidations sends a heartbeat after this long without an event; clients "
        "take a stream silent for 3 intervals as broken",
    )
    run_read_gather_us: int = setting(
        "RESOLVER_RUN_READ_GATHER_US",
        parse_microseconds,
        500,
        "under concurrent ReadRun load, wait up to this many microseconds for more reads "
        "to share a query (0: never wait)",
    )
    pool_max_size: int = setting(
        "RESOLVER_POOL_MAX_SIZE",
        parse_positive,
        8,
        "connections per database pool",
    )
    db_timeout_ms: int = setting(
        "RESOLVER_DB_TIMEOUT_MS",
        parse_positive,
        5_000,
        "longest wait for a pooled connection, and the statement timeout",
    )
    db_max_waiting: int = setting(
        "RESOLVER_DB_MAX_WAITING",
        whole_number(),
        0,
        "calls that may wait on one database at once (a bulkhead); more get UNAVAILABLE "
        "at once with a retry delay (0: two thirds of RESOLVER_MAX_WORKERS)",
    )
    db_probe_interval_ms: int = setting(
        "RESOLVER_DB_PROBE_INTERVAL_MS",
        parse_positive,
        1_000,
        "while a database's circuit is open (it failed repeatedly), probe it this often; "
        "its calls get UNAVAILABLE at once until a probe connects",
    )
    #: The shard chars of ``RUN_OPS_SHARDS`` that are aliases of the run-ops
    #: database (``"aliasOf": "new"``, ``<char>=@run-ops``): their gen-2 runs
    #: live in ``RUN_OPS_DATABASE_URL``. Part of ``RUN_OPS_SHARDS``, not a
    #: setting of its own; ``run_ops_shards`` holds the shards with a DSN.
    run_ops_shard_aliases: tuple[str, ...] = ()
    #: Which environment variable or flag supplied each setting, by field name
    #: (:data:`DEFAULT_SOURCE` when none did). Not a setting itself.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Settings:
        """Build settings from environment variables, overridden by ``flags``
        (argparse values keyed by field name; ``None`` means "not given").

        Raises :class:`ConfigError` naming the first bad or missing setting.
        """
        flags = flags or {}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for opt in OPTIONS:
            given = flags.get(opt.field)
            found = (str(given), opt.flag) if given is not None else None
            if found is None:
                named = opt.from_environment(environ)
                found = (named[1], named[0]) if named is not None else None
            if found is None:
                values[opt.field] = opt.default
                sources[opt.field] = DEFAULT_SOURCE
                continue
            raw, source = found
            values[opt.field] = opt.parse(source, raw) if (raw or not opt.secret) else None
            sources[opt.field] = source
        if not values["control_plane_database_url"]:
            raise ConfigError(
                "CONTROL_PLANE_DATABASE_URL is required: set it (or DATABASE_URL, or "
                "--control-plane-database-url) to the control-plane primary, e.g. "
                "postgresql://user@host:5432/platform"
            )
        _merge_shard_replicas(values, sources)
        settings = cls(**values, sources=sources)
        if settings.log_format not in ("text", "json"):
            raise ConfigError(f"RESOLVER_LOG_FORMAT={settings.log_format!r}: use text or json")
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if settings.tls_client_ca and not settings.tls_cert:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if settings.tls_client_grants_file and not settings.tls_client_ca:
            raise ConfigError(
                "--tls-client-grants-file grants methods to client certificates: it needs "
                "--tls-client-ca (mutual TLS)"
            )
        if settings.control_plane_cache_ttl_ms > 0 and (
            settings.control_plane_cache_hard_ttl_ms < settings.control_plane_cache_ttl_ms
        ):
            raise ConfigError(
                "CONTROL_PLANE_CACHE_HARD_TTL_MS must be at least CONTROL_PLANE_CACHE_TTL_MS "
                f"({settings.control_plane_cache_hard_ttl_ms} < "
                f"{settings.control_plane_cache_ttl_ms})"
            )
        shard_chars = {c for c, _ in settings.run_ops_shards} | set(settings.run_ops_shard_aliases)
        if shard_chars and settings.run_ops_id_generation != "base32hex":
            raise ConfigError(
                "RUN_OPS_SHARDS is set but RUN_OPS_ID_GENERATION is not base32hex: only "
                "base32hex gen-2 ids name a shard; set RUN_OPS_ID_GENERATION=base32hex"
            )
        stray = [c for c, _ in settings.run_ops_shard_read_replica_urls if c not in shard_chars]
        if stray:
            raise ConfigError(
                f"RUN_OPS_SHARD_READ_REPLICA_URLS names shard {stray[0]!r}, which "
                "RUN_OPS_SHARDS does not configure"
            )
        aliased = [
            c
            for c, _ in settings.run_ops_shard_read_replica_urls
            if c in settings.run_ops_shard_aliases
        ]
        if aliased:
            raise ConfigError(
                f"RUN_OPS_SHARD_READ_REPLICA_URLS names shard {aliased[0]!r}, an alias of the "
                "run-ops database in RUN_OPS_SHARDS: an alias is read where run-ops is (its "
                "replica is RUN_OPS_DATABASE_READ_REPLICA_URL); remove "
                f"{aliased[0]!r} from RUN_OPS_SHARD_READ_REPLICA_URLS"
            )
        stray = [c for c in settings.run_ops_shards_not_placed if c not in shard_chars]
        if stray:
            raise ConfigError(
                f"RUN_OPS_SHARDS_NOT_PLACED names shard {stray[0]!r}, which RUN_OPS_SHARDS "
                "does not configure: a shard is read before it is placed, so add "
                f"{stray[0]}=<dsn> to RUN_OPS_SHARDS, or remove {stray[0]!r} from "
                "RUN_OPS_SHARDS_NOT_PLACED"
            )
        if shard_chars and shard_chars <= set(settings.run_ops_shards_not_placed):
            raise ConfigError(
                "RUN_OPS_SHARDS_NOT_PLACED names every shard of RUN_OPS_SHARDS "
                f"({', '.join(sorted(shard_chars))}): new root runs would have no shard to go "
                "to; leave at least one shard placed (remove it from RUN_OPS_SHARDS_NOT_PLACED)"
            )
        if settings.run_ops_shard_placement == "platform" and settings.run_ops_shards_not_placed:
            raise ConfigError(
                "RUN_OPS_SHARDS_NOT_PLACED is set but RUN_OPS_SHARD_PLACEMENT is platform: "
                "with the platform's placement the global FeatureFlag runOpsMintShardSet (the "
                "active set, a CSV of shard chars) names the shards new roots are placed on, "
                "and a configured shard outside it is read but not placed; unset "
                "RUN_OPS_SHARDS_NOT_PLACED and leave the shard out of runOpsMintShardSet"
            )
        return settings

    def public_items(self) -> list[tuple[str, str]]:
        """Every setting as (name, printable value), DSNs redacted."""
        out = []
        for opt in OPTIONS:
            value = getattr(self, opt.field)
            if opt.field.endswith("_url"):
                value = redact_dsn(value) if value else "(unset)"
            elif opt.parse in (parse_shard_map, parse_run_ops_shards):
                shown = [f"{c}={redact_dsn(d)}" for c, d in value]
                if opt.parse is parse_run_ops_shards:
                    shown += [f"{c}={RUN_OPS_ALIAS}" for c in self.run_ops_shard_aliases]
                value = ",".join(shown) or "(unset)"
            elif opt.parse is parse_shard_chars:
                value = ",".join(value) or "(unset)"
            out.append((opt.field, str(value)))
        return out

    def source_of(self, name: str) -> str:
        """The environment variable or flag that supplied setting ``name``
        (a field name), or :data:`DEFAULT_SOURCE`."""
        return self.sources.get(name, DEFAULT_SOURCE)


def _merge_shard_replicas(values: dict[str, Any], sources: dict[str, str]) -> None:
    """``RUN_OPS_SHARDS`` parses to :class:`ShardDescriptors`: its shards
    become the setting, its aliases ``run_ops_shard_aliases``, and the read
    replicas of its JSON form (``replicaUrl``) join
    ``RUN_OPS_SHARD_READ_REPLICA_URLS`` as if given there. One shard's
    replica given in both is an error naming both."""
    parsed = values["run_ops_shards"]
    if not isinstance(parsed, ShardDescriptors):
        return  # the default, ()
    values["run_ops_shards"] = parsed.shards
    values["run_ops_shard_aliases"] = parsed.aliases
    if not parsed.replicas:
        return
    given = values["run_ops_shard_read_replica_urls"]
    here, there = sources["run_ops_shards"], sources["run_ops_shard_read_replica_urls"]
    both = [c for c, _ in given if c in dict(parsed.replicas)]
    if both:
        raise ConfigError(
            f'shard {both[0]!r} has a read replica in both {here} (its "replicaUrl") and '
            f"{there}: give it in one of them"
        )
    values["run_ops_shard_read_replica_urls"] = parsed.replicas + tuple(given)
    sources["run_ops_shard_read_replica_urls"] = (
        here if there == DEFAULT_SOURCE else f"{here} (replicaUrl) and {there}"
    )


#: Every setting, in declaration order, derived from :class:`Settings`.
OPTIONS: tuple[Option, ...] = tuple(
    replace(f.metadata["option"], field=f.name) for f in fields(Settings) if "option" in f.metadata
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option to ``parser`` (values default to ``None`` so
    :meth:`Settings.load` can tell "not given" from a value)."""
    for opt in OPTIONS:
        parser.add_argument(
            opt.flag,
            dest=opt.field,
            default=None,
            metavar=opt.env,
            help=f"{opt.help} [env {' or '.join(opt.names)}]",
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
