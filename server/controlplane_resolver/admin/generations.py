"""``controlplane-resolver check``'s audit of the run locations under the
configured id generation (docs/design.md, "Run residency").

Switching ``RUN_OPS_ID_GENERATION`` is the operator's decision. Before it
(and after), ``check`` counts the runs a location holds whose ids the
configured generation would send elsewhere:

* the run-ops database, under ``base32hex``: 27-character ids (ksuids of
  the previous generation, now legacy: reads still find them through the
  legacy route, but their children mint cuids and their waitpoints go to the
  legacy store) and gen-2 ids (read only from their shard), except those of
  shards that are aliases of run-ops (``RUN_OPS_SHARDS``), which live there;
* the run-ops database, under ``ksuid``: base32hex v1 and gen-2 ids (shapes
  the ksuid rule cannot classify);
* each shard: ids that are not gen-2 ids naming that shard.

The counts are read with one ``count(*)`` per location, on its primary; a
location that cannot be read is reported as such, never as zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from controlplane_resolver.config import Settings, redact_dsn

_V1_OR_V2 = r"^[0-9a-v]{24}[a-z0-9][12]$"
_V2 = r"^[0-9a-v]{24}[a-z0-9]2$"
_SHARD_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Misrouted:
    """Runs of one location whose ids the configured generation routes elsewhere."""

    location: str
    dsn: str
    #: ``None`` when the location could not be read.
    count: int | None
    what: str
    error: str | None = None

    def line(self) -> str:
        where = f"the {self.location} database ({redact_dsn(self.dsn)})"
        if self.count is None:
            return f"WARNING: could not count {self.what} in {where}: {self.error}"
        return f"WARNING: {where} holds {self.count} run(s) {self.what}"


def audits(settings: Settings) -> list[tuple[str, str, str, str]]:
    """``(location, dsn, SQL predicate on "id", what)`` for each location
    the configured generation has an opinion on."""
    out: list[tuple[str, str, str, str]] = []
    if settings.run_ops_database_url:
        if settings.run_ops_id_generation == "base32hex":
            aliases = sorted(settings.run_ops_shard_aliases)
            elsewhere = _V2
            at_home = ""
            if aliases:
                # Gen-2 ids of a shard that is an alias of run-ops live here.
                others = "".join(c for c in _SHARD_CHARS if c not in aliases)
                elsewhere = f"^[0-9a-v]{{24}}[{others}]2$" if others else "^$"
                at_home = f" (those of shard {', '.join(aliases)}, aliases of run-ops, are at home)"
            out.append(
                (
                    "run-ops",
                    settings.run_ops_database_url,
                    f'(length("id") = 27 OR "id" ~ \'{elsewhere}\')',
                    "whose ids base32hex does not route to run-ops (27-character ksuids, "
                    f"now legacy; gen-2 ids, read only from their shard{at_home})",
                )
            )
        else:
            out.append(
                (
                    "run-ops",
                    settings.run_ops_database_url,
                    f"\"id\" ~ '{_V1_OR_V2}'",
                    "with base32hex ids, which the ksuid generation cannot classify",
                )
            )
    for char, dsn in settings.run_ops_shards:
        out.append(
            (
                f"run-ops shard {char}",
                dsn,
                f"\"id\" !~ '^[0-9a-v]{{24}}{char}2$'",
                f"whose ids are not gen-2 ids of shard {char!r} (never read there)",
            )
        )
    return out


def misrouted_runs(settings: Settings, *, timeout_s: float = 10.0) -> list[Misrouted]:
    """The locations that hold runs the configured generation routes
    elsewhere (a count above zero), and those that could not be counted."""
    found: list[Misrouted] = []
    for location, dsn, predicate, what in audits(settings):
        try:
            with psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s))) as conn:
                conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
                row = conn.execute(f'SELECT count(*) FROM "TaskRun" WHERE {predicate}').fetchone()
        except psycopg.Error as exc:
            found.append(Misrouted(location, dsn, None, what, type(exc).__name__))
            continue
        count = int(row[0]) if row else 0
        if count:
            found.append(Misrouted(location, dsn, count, what))
    return found
