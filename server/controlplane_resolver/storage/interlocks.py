"""The two safety interlocks that guard split mode (docs/design.md, "Split
mode and safety interlocks"), and one advisory check.

* :func:`check_realtime_interlock` is pure and runs first, before any
  network call: split mode with the native realtime backend off would make
  runs in the run-ops database invisible to realtime subscribers.
* :func:`run_sentinel` connects to both run locations and refuses when they
  are one physical database. URL strings are never compared: a pooler, a
  replica or a second hostname can all point at the same database.
* :func:`flip_grace_warning` warns, never refuses, when a mint flag's flip
  grace does not outlast the cache the flip drains through (as the
  platform's own boot-time check does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import psycopg

from controlplane_resolver.config import Settings, redact_dsn
from controlplane_resolver.errors import Refusal
from controlplane_resolver.storage.identity import DatabaseIdentity, probe_identity


def check_realtime_interlock(*, split_enabled: bool, realtime_native_enabled: bool) -> None:
    """Raise :class:`Refusal` when split is asked for without native realtime."""
    if split_enabled and not realtime_native_enabled:
        raise Refusal(
            "REALTIME_INTERLOCK",
            "RUN_OPS_SPLIT_ENABLED is on but REALTIME_BACKEND_NATIVE_ENABLED is off: the "
            "realtime feed replicates only the control-plane database, so runs written to the "
            "run-ops database would be invisible to subscribers. Enable the native realtime "
            "backend (REALTIME_BACKEND_NATIVE_ENABLED=1) or turn the split off.",
        )


def flip_grace_warning(settings: Settings) -> str | None:
    """Why a flip of ``runOpsMintKind`` (or of the platform's shard set) can
    leave replicas minting differently, or None when it cannot.

    In the base32hex generation, with split and the master switch on, a
    flipped flag keeps its previous value in force for
    ``RUN_OPS_MINT_FLIP_GRACE_MS`` after its stamp, so that replicas that
    read the flag at different moments still mint alike. A replica keeps a
    flag it read for up to ``CONTROL_PLANE_CACHE_TTL_MS`` (the mint flags are
    never served stale): a grace that does not exceed that TTL leaves a
    window in which two replicas mint different kinds for one
    organization."""
    if not (
        settings.run_ops_split_enabled
        and settings.run_ops_mint_ksuid_enabled
        and settings.run_ops_id_generation == "base32hex"
    ):
        return None
    grace, ttl = settings.run_ops_mint_flip_grace_ms, settings.control_plane_cache_ttl_ms
    if grace > ttl:
        return None
    return (
        f"RUN_OPS_MINT_FLIP_GRACE_MS ({grace} ms) does not exceed CONTROL_PLANE_CACHE_TTL_MS "
        f"({ttl} ms), how long a replica keeps a mint flag it read: after a runOpsMintKind "
        "flip, replicas can mint different kinds of id for one organization's root runs "
        "until the TTL passes. Raise RUN_OPS_MINT_FLIP_GRACE_MS above the TTL (and above the "
        "platform's own flag caches, if it mints too), or lower the TTL"
    )


class Verdict(enum.Enum):
    DISTINCT_CLUSTERS = "distinct clusters"
    SAME_CLUSTER_OTHER_DATABASE = "same cluster, different database"
    SAME_DATABASE = "same physical database"
    PROBE_FAILED = "probe failed"


@dataclass(frozen=True)
class SentinelResult:
    verdict: Verdict
    allowed: bool
    reason: str


def compare_identities(a: DatabaseIdentity, b: DatabaseIdentity) -> Verdict:
    """Pure comparison of two identities."""
    if a.system_identifier != b.system_identifier:
        return Verdict.DISTINCT_CLUSTERS
    if a.database != b.database:
        return Verdict.SAME_CLUSTER_OTHER_DATABASE
    return Verdict.SAME_DATABASE


def run_sentinel(
    run_ops_dsn: str, legacy_dsn: str, *, strict: bool = False, timeout_s: float = 5.0
) -> SentinelResult:
    """Decide whether the run-ops and legacy locations are distinct databases.

    Same identifier and same database name → refuse. Same cluster, other
    database → allowed (refused when ``strict``). Any probe error → refuse
    (fail closed), with the reason. Never raises.
    """
    identities = []
    for role, dsn in (("run-ops", run_ops_dsn), ("legacy", legacy_dsn)):
        try:
            identities.append(probe_identity(dsn, timeout_s))
        except psycopg.errors.InsufficientPrivilege:
            return SentinelResult(
                Verdict.PROBE_FAILED,
                False,
                f"cannot read pg_control_system() on the {role} database "
                f"({redact_dsn(dsn)}): grant the pg_monitor role to the "
                "resolver's user",
            )
        except Exception as exc:  # fail closed on anything
            return SentinelResult(
                Verdict.PROBE_FAILED,
                False,
                f"could not probe the {role} database ({redact_dsn(dsn)}): "
                f"{type(exc).__name__}; split mode stays refused until both "
                "databases answer",
            )
    verdict = compare_identities(identities[0], identities[1])
    if verdict is Verdict.SAME_DATABASE:
        return SentinelResult(
            verdict,
            False,
            "RUN_OPS_DATABASE_URL and the legacy location are the same physical "
            f"database (system_identifier {identities[0].system_identifier}, "
            f"database {identities[0].database!r}): point RUN_OPS_DATABASE_URL "
            "at the dedicated run-ops database",
        )
    if verdict is Verdict.SAME_CLUSTER_OTHER_DATABASE and strict:
        return SentinelResult(
            verdict,
            False,
            "the run-ops and legacy databases share one cluster, which strict "
            "mode refuses: move run-ops to its own cluster",
        )
    return SentinelResult(verdict, True, f"run-ops and legacy locations are {verdict.value}")


def run_sentinel_all(
    locations: list[tuple[str, str]], *, strict: bool = False, timeout_s: float = 5.0
) -> SentinelResult:
    """Decide whether every pair of run locations (``(name, dsn)``: legacy,
    run-ops, each shard) is two distinct databases. Each location is probed
    once; any probe error refuses (fail closed), as does any pair that is
    one physical database, or (``strict``) one cluster. Never raises.

    The verdict reported when allowed is the closest pair's: ``same
    cluster, different database`` when any two share a cluster."""
    identities: list[tuple[str, DatabaseIdentity]] = []
    for name, dsn in locations:
        try:
            identities.append((name, probe_identity(dsn, timeout_s)))
        except psycopg.errors.InsufficientPrivilege:
            return SentinelResult(
                Verdict.PROBE_FAILED,
                False,
                f"cannot read pg_control_system() on the {name} database "
                f"({redact_dsn(dsn)}): grant the pg_monitor role to the resolver's user",
            )
        except Exception as exc:  # fail closed on anything
            return SentinelResult(
                Verdict.PROBE_FAILED,
                False,
                f"could not probe the {name} database ({redact_dsn(dsn)}): "
                f"{type(exc).__name__}; split mode stays refused until every run "
                "location answers",
            )
    overall = Verdict.DISTINCT_CLUSTERS
    for i, (name_a, a) in enumerate(identities):
        for name_b, b in identities[i + 1 :]:
            verdict = compare_identities(a, b)
            if verdict is Verdict.SAME_DATABASE:
                return SentinelResult(
                    verdict,
                    False,
                    f"the {name_a} and {name_b} locations are the same physical database "
                    f"(system_identifier {a.system_identifier}, database {a.database!r}): "
                    "every run location must be its own database",
                )
            if verdict is Verdict.SAME_CLUSTER_OTHER_DATABASE:
                if strict:
                    return SentinelResult(
                        verdict,
                        False,
                        f"the {name_a} and {name_b} databases share one cluster, which "
                        "strict mode refuses: move one to its own cluster",
                    )
                overall = verdict
    names = ", ".join(name for name, _ in locations)
    return SentinelResult(overall, True, f"run locations ({names}) are pairwise {overall.value}")
