"""Settings from environment variables and flags (docs/configuration.md).

Pure: ``Settings.load`` does no I/O. Contract under test: every option is an
environment variable and a flag, the flag wins, bad values raise
``ConfigError`` naming the setting and never echoing a DSN's password, and
the defaults are the documented ones (docs/configuration.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from controlplane_resolver.config import (
    OPTIONS,
    ConfigError,
    Settings,
    add_flags,
    redact_dsn,
)

PASSWORD = "s3cret-Pa55"
CP_DSN = f"postgresql://resolver:{PASSWORD}@cp.internal:5433/platform"
RO_DSN = f"postgresql://resolver:{PASSWORD}@ro.internal:5434/run_ops"


def load(**env: str) -> Settings:
    """Settings from ``env`` alone, with a control-plane DSN unless given."""
    env.setdefault("CONTROL_PLANE_DATABASE_URL", CP_DSN)
    return Settings.load(env)


def flags(*argv: str) -> dict[str, Any]:
    """What the CLI's argparse hands to ``Settings.load`` for ``argv``."""
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return vars(parser.parse_args(list(argv)))


# -------------------------------------------------------------------- defaults


def test_defaults_match_the_documented_ones() -> None:
    s = load()
    assert s.control_plane_cache_ttl_ms == 30_000
    assert s.control_plane_cache_max_entries == 10_000
    assert s.worker_version_cache_ttl_ms == 1_000
    assert s.run_ops_split_enabled is False
    assert s.realtime_backend_native_enabled is False
    assert s.run_ops_mint_ksuid_enabled is False
    assert s.control_plane_database_read_replica_url is None
    assert s.run_ops_database_url is None
    assert s.run_ops_legacy_database_url is None


def test_option_table_and_dataclass_defaults_agree() -> None:
    # OPTIONS derives from the Settings fields: Settings(...) in code and
    # the service read from the environment share every default.
    fields = Settings.__dataclass_fields__
    for opt in OPTIONS:
        if opt.field == "control_plane_database_url":
            continue
        assert fields[opt.field].default == opt.default, opt.field


def test_every_documented_variable_is_an_option() -> None:
    documented_variables = {
        "CONTROL_PLANE_DATABASE_URL",
        "CONTROL_PLANE_DATABASE_READ_REPLICA_URL",
        "RUN_OPS_DATABASE_URL",
        "RUN_OPS_DATABASE_READ_REPLICA_URL",
        "RUN_OPS_LEGACY_DATABASE_URL",
        "RUN_OPS_SPLIT_ENABLED",
        "REALTIME_BACKEND_NATIVE_ENABLED",
        "CONTROL_PLANE_CACHE_TTL_MS",
        "CONTROL_PLANE_CACHE_MAX_ENTRIES",
        "WORKER_VERSION_CACHE_TTL_MS",
        "RUN_OPS_MINT_KSUID_ENABLED",
    }
    assert documented_variables <= {opt.env for opt in OPTIONS}


# -------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" true ", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("", False),
    ],
)
def test_booleans_parse(raw: str, expected: bool) -> None:
    s = load(RUN_OPS_SPLIT_ENABLED=raw, REALTIME_BACKEND_NATIVE_ENABLED=raw)
    assert s.run_ops_split_enabled is expected
    assert s.realtime_backend_native_enabled is expected


@pytest.mark.parametrize("raw", ["2", "enabled", "tru", "-1"])
def test_bad_boolean_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(REALTIME_BACKEND_NATIVE_ENABLED=raw)
    message = str(info.value)
    assert "REALTIME_BACKEND_NATIVE_ENABLED" in message
    assert "1/true" in message and "0/false" in message


def test_bad_boolean_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--run-ops-split-enabled"):
        Settings.load(
            {"CONTROL_PLANE_DATABASE_URL": CP_DSN}, flags("--run-ops-split-enabled", "maybe")
        )


@pytest.mark.parametrize(
    "variable, raw",
    [
        ("CONTROL_PLANE_CACHE_TTL_MS", "soon"),
        ("CONTROL_PLANE_CACHE_TTL_MS", "-1"),
        ("CONTROL_PLANE_CACHE_MAX_ENTRIES", "0"),
        ("WORKER_VERSION_CACHE_TTL_MS", "1.5"),
    ],
)
def test_bad_numbers_name_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load(**{variable: raw})


# ------------------------------------------------------------ flags versus env


def test_flags_override_environment() -> None:
    env = {
        "CONTROL_PLANE_DATABASE_URL": CP_DSN,
        "RUN_OPS_SPLIT_ENABLED": "0",
        "CONTROL_PLANE_CACHE_TTL_MS": "100",
        "CONTROL_PLANE_CACHE_HARD_TTL_MS": "200",
        "RUN_OPS_DATABASE_URL": RO_DSN,
    }
    other = "postgresql://other@elsewhere:6000/run_ops"
    s = Settings.load(
        env,
        flags(
            "--run-ops-split-enabled",
            "1",
            "--control-plane-cache-ttl-ms",
            "150",
            "--run-ops-database-url",
            other,
        ),
    )
    assert s.run_ops_split_enabled is True
    assert s.control_plane_cache_ttl_ms == 150
    assert s.run_ops_database_url == other
    # Not given as a flag: the environment still counts.
    assert s.control_plane_cache_hard_ttl_ms == 200
    assert s.control_plane_database_url == CP_DSN


def test_flag_not_given_falls_back_to_environment() -> None:
    s = Settings.load(
        {"CONTROL_PLANE_DATABASE_URL": CP_DSN, "RUN_OPS_SPLIT_ENABLED": "true"}, flags()
    )
    assert s.run_ops_split_enabled is True


def test_flag_alone_supplies_the_required_dsn() -> None:
    s = Settings.load({}, flags("--control-plane-database-url", CP_DSN))
    assert s.control_plane_database_url == CP_DSN


# ------------------------------------------------------------------- the DSNs


@pytest.mark.parametrize("env", [{}, {"CONTROL_PLANE_DATABASE_URL": ""}])
def test_control_plane_dsn_is_required_and_the_message_says_how(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env)
    message = str(info.value)
    assert "CONTROL_PLANE_DATABASE_URL is required" in message
    # The fix: which variable or flag to set, and what it looks like.
    assert "--control-plane-database-url" in message
    assert "postgresql://" in message


@pytest.mark.parametrize(
    "bad",
    [
        f"postgresql://u:{PASSWORD}@[::1/db",  # unbalanced IPv6 bracket
        f"postgresql://u:{PASSWORD}@h:5432/db?bogus=1",  # unknown URI parameter
        f"host=h password={PASSWORD} dbname",  # key without "="
        f"password={PASSWORD} host=h dbname='unterminated",  # open quote
    ],
)
def test_bad_dsn_names_the_variable_and_never_echoes_the_password(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(RUN_OPS_DATABASE_URL=bad)
    message = str(info.value)
    assert "RUN_OPS_DATABASE_URL" in message
    assert "postgresql://user:password@host:port/dbname" in message
    assert PASSWORD not in message
    # Chained errors show up in tracebacks: the driver's message quotes the DSN.
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_empty_optional_dsn_means_unset() -> None:
    assert load(RUN_OPS_DATABASE_URL="").run_ops_database_url is None


def test_key_value_dsn_is_accepted() -> None:
    dsn = f"host=127.0.0.1 port=5432 dbname=platform user=u password={PASSWORD}"
    assert load(CONTROL_PLANE_DATABASE_URL=dsn).control_plane_database_url == dsn


# ------------------------------------------------------------------ cache TTLs


def test_hard_ttl_below_soft_ttl_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load(CONTROL_PLANE_CACHE_TTL_MS="5000", CONTROL_PLANE_CACHE_HARD_TTL_MS="4999")
    message = str(info.value)
    assert "CONTROL_PLANE_CACHE_HARD_TTL_MS" in message
    assert "CONTROL_PLANE_CACHE_TTL_MS" in message


def test_hard_ttl_equal_to_soft_ttl_is_accepted() -> None:
    s = load(CONTROL_PLANE_CACHE_TTL_MS="5000", CONTROL_PLANE_CACHE_HARD_TTL_MS="5000")
    assert s.control_plane_cache_hard_ttl_ms == 5000


def test_soft_ttl_zero_disables_caching_whatever_the_hard_ttl() -> None:
    s = load(CONTROL_PLANE_CACHE_TTL_MS="0", CONTROL_PLANE_CACHE_HARD_TTL_MS="0")
    assert s.control_plane_cache_ttl_ms == 0


def test_default_hard_ttl_below_a_large_soft_ttl_is_rejected() -> None:
    # Raising only the soft TTL past the default hard TTL (300000) must not
    # silently produce an inverted pair.
    with pytest.raises(ConfigError, match="CONTROL_PLANE_CACHE_HARD_TTL_MS"):
        load(CONTROL_PLANE_CACHE_TTL_MS="600000")


# ---------------------------------------------------------------- public_items


def test_public_items_redact_every_dsn() -> None:
    kv_dsn = f"host=replica.internal port=6543 dbname=platform user=u password={PASSWORD}"
    s = load(
        CONTROL_PLANE_DATABASE_READ_REPLICA_URL=kv_dsn,
        RUN_OPS_DATABASE_URL=RO_DSN,
        RUN_OPS_LEGACY_DATABASE_URL=f"postgresql://u@legacy:7000/platform?password={PASSWORD}",
    )
    items = dict(s.public_items())
    printed = "\n".join(f"{k}={v}" for k, v in s.public_items())
    assert PASSWORD not in printed
    assert "resolver" not in printed  # the user name is not needed either
    assert items["control_plane_database_url"] == "cp.internal:5433/platform"
    assert items["control_plane_database_read_replica_url"] == "replica.internal:6543/platform"
    assert items["run_ops_database_url"] == "ro.internal:5434/run_ops"
    assert items["run_ops_legacy_database_url"] == "legacy:7000/platform"
    assert items["run_ops_database_read_replica_url"] == "(unset)"
    # Non-secret settings are printed as they are.
    assert items["control_plane_cache_ttl_ms"] == "30000"
    assert items["run_ops_split_enabled"] == "False"


def test_public_items_cover_every_setting() -> None:
    # Every field but ``sources`` (which records where the others came from)
    # and ``run_ops_shard_aliases`` (part of RUN_OPS_SHARDS, printed with it).
    not_settings = ("sources", "run_ops_shard_aliases")
    settings_fields = [name for name in Settings.__dataclass_fields__ if name not in not_settings]
    assert [name for name, _ in load().public_items()] == settings_fields
    assert [opt.field for opt in OPTIONS] == settings_fields


def test_redact_dsn_of_garbage_does_not_echo_it() -> None:
    assert redact_dsn(f"postgresql://u:{PASSWORD}@[::1/db") == "<unparseable DSN>"


# ------------------------------------------------- the platform's variable names

OTHER_DSN = f"postgresql://resolver:{PASSWORD}@elsewhere.internal:6000/other"


def option(field: str) -> Any:
    return next(opt for opt in OPTIONS if opt.field == field)


def test_database_url_is_the_control_plane_fallback() -> None:
    s = Settings.load({"DATABASE_URL": CP_DSN})
    assert s.control_plane_database_url == CP_DSN
    assert s.source_of("control_plane_database_url") == "DATABASE_URL"


def test_control_plane_name_wins_over_its_fallback() -> None:
    # The platform's CONTROL_PLANE_DATABASE_URL ?? DATABASE_URL: both set is
    # the normal case of a dedicated control plane, not a conflict.
    s = Settings.load(
        {
            "CONTROL_PLANE_DATABASE_URL": CP_DSN,
            "DATABASE_URL": OTHER_DSN,
            "CONTROL_PLANE_DATABASE_READ_REPLICA_URL": RO_DSN,
            "DATABASE_READ_REPLICA_URL": OTHER_DSN,
        }
    )
    assert s.control_plane_database_url == CP_DSN
    assert s.control_plane_database_read_replica_url == RO_DSN
    assert s.source_of("control_plane_database_url") == "CONTROL_PLANE_DATABASE_URL"
    assert (
        s.source_of("control_plane_database_read_replica_url")
        == "CONTROL_PLANE_DATABASE_READ_REPLICA_URL"
    )


def test_database_read_replica_url_is_the_replica_fallback() -> None:
    s = load(DATABASE_READ_REPLICA_URL=RO_DSN)
    assert s.control_plane_database_read_replica_url == RO_DSN
    assert s.source_of("control_plane_database_read_replica_url") == "DATABASE_READ_REPLICA_URL"


def test_empty_control_plane_name_falls_back() -> None:
    s = Settings.load({"CONTROL_PLANE_DATABASE_URL": "", "DATABASE_URL": CP_DSN})
    assert s.control_plane_database_url == CP_DSN


@pytest.mark.parametrize(
    "field, ours, platforms",
    [
        ("run_ops_database_url", "RUN_OPS_DATABASE_URL", "TASK_RUN_DATABASE_URL"),
        (
            "run_ops_database_read_replica_url",
            "RUN_OPS_DATABASE_READ_REPLICA_URL",
            "TASK_RUN_DATABASE_READ_REPLICA_URL",
        ),
        (
            "run_ops_legacy_database_url",
            "RUN_OPS_LEGACY_DATABASE_URL",
            "TASK_RUN_LEGACY_DATABASE_URL",
        ),
    ],
)
def test_task_run_names_are_aliases(field: str, ours: str, platforms: str) -> None:
    alone = load(**{platforms: RO_DSN})
    assert getattr(alone, field) == RO_DSN
    assert alone.source_of(field) == platforms
    # Both names, one value: accepted, and ours is named as the source.
    both = load(**{ours: RO_DSN, platforms: RO_DSN})
    assert getattr(both, field) == RO_DSN and both.source_of(field) == ours
    # Both names, two values: which one was meant cannot be known.
    with pytest.raises(ConfigError) as info:
        load(**{ours: RO_DSN, platforms: OTHER_DSN})
    message = str(info.value)
    assert ours in message and platforms in message
    assert PASSWORD not in message
    # A flag wins over both, so the environment's disagreement does not count.
    flagged = Settings.load(
        {"CONTROL_PLANE_DATABASE_URL": CP_DSN, ours: RO_DSN, platforms: OTHER_DSN},
        flags(option(field).flag, CP_DSN),
    )
    assert getattr(flagged, field) == CP_DSN and flagged.source_of(field) == option(field).flag


def test_an_empty_alias_is_unset_not_a_conflict() -> None:
    s = load(RUN_OPS_DATABASE_URL=RO_DSN, TASK_RUN_DATABASE_URL="")
    assert s.run_ops_database_url == RO_DSN


def test_sources_name_the_environment_the_flag_or_the_default() -> None:
    s = Settings.load(
        {"CONTROL_PLANE_DATABASE_URL": CP_DSN, "RUN_OPS_SPLIT_ENABLED": "1"},
        flags("--control-plane-cache-ttl-ms", "100", "--control-plane-cache-hard-ttl-ms", "100"),
    )
    assert s.source_of("run_ops_split_enabled") == "RUN_OPS_SPLIT_ENABLED"
    assert s.source_of("control_plane_cache_ttl_ms") == "--control-plane-cache-ttl-ms"
    assert s.source_of("worker_version_cache_ttl_ms") == "default"
    assert set(s.sources) == {opt.field for opt in OPTIONS}


def test_the_platforms_names_are_declared_on_their_options() -> None:
    names = {opt.field: opt.names for opt in OPTIONS}
    assert names["control_plane_database_url"] == ("CONTROL_PLANE_DATABASE_URL", "DATABASE_URL")
    assert names["control_plane_database_read_replica_url"] == (
        "CONTROL_PLANE_DATABASE_READ_REPLICA_URL",
        "DATABASE_READ_REPLICA_URL",
    )
    every_name = [name for opt in OPTIONS for name in opt.names]
    assert len(every_name) == len(set(every_name)), "a name read by two options"


def test_every_alternative_name_is_documented() -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [name for opt in OPTIONS for name in opt.names if f"`{name}`" not in reference]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_a_flip_grace_not_outlasting_the_flag_cache_is_warned_about_not_refused() -> None:
    """As the platform's boot check: the grace must exceed how long a
    replica keeps a mint flag it read (CONTROL_PLANE_CACHE_TTL_MS), or
    replicas can mint differently after a flip; only where a grace applies
    (base32hex, split and the master switch on)."""
    from controlplane_resolver.storage.interlocks import flip_grace_warning

    minting = {
        "RUN_OPS_DATABASE_URL": RO_DSN,
        "RUN_OPS_SPLIT_ENABLED": "1",
        "REALTIME_BACKEND_NATIVE_ENABLED": "1",
        "RUN_OPS_MINT_ENABLED": "1",
        "RUN_OPS_ID_GENERATION": "base32hex",
    }
    assert flip_grace_warning(load(**minting)) is None  # defaults: 90 s > 30 s
    warning = flip_grace_warning(
        load(**minting, RUN_OPS_MINT_FLIP_GRACE_MS="30000", CONTROL_PLANE_CACHE_TTL_MS="30000")
    )
    assert warning is not None
    assert "RUN_OPS_MINT_FLIP_GRACE_MS (30000 ms)" in warning
    assert "CONTROL_PLANE_CACHE_TTL_MS (30000 ms)" in warning
    assert "Raise RUN_OPS_MINT_FLIP_GRACE_MS" in warning
    short = {"RUN_OPS_MINT_FLIP_GRACE_MS": "1000"}
    assert flip_grace_warning(load(**{**minting, **short})) is not None
    # No grace applies: the ksuid generation, the master switch or the split off.
    for off in (
        {"RUN_OPS_ID_GENERATION": "ksuid"},
        {"RUN_OPS_MINT_ENABLED": "0"},
        {"RUN_OPS_SPLIT_ENABLED": "0"},
    ):
        assert flip_grace_warning(load(**{**minting, **short, **off})) is None, off
