"""RUN_OPS_SHARDS in the platform's JSON form (an array of shard
descriptors) beside today's ``<char>=<dsn>`` form: the same shards either
way, its ``replicaUrl`` as a read replica, ``"aliasOf": "new"`` (and
``<char>=@run-ops``) as an alias of the run-ops database, and every refusal
naming the setting and the element, never a DSN."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controlplane_resolver.config import Settings
from controlplane_resolver.errors import ConfigError

SECRET = "sekret-pw"
DSN_A = f"postgresql://u:{SECRET}@shard-a:5432/run_ops"
DSN_B = f"postgresql://u:{SECRET}@shard-b,shard-b2/run_ops"  # a multi-host URL
REPLICA_A = f"postgresql://u:{SECRET}@shard-a-replica:5432/run_ops"
REPLICATION = {"slotName": "slot_a", "publicationName": "pub_a", "originGeneration": 2}


def load(**env: str) -> Settings:
    return Settings.load(
        {
            "CONTROL_PLANE_DATABASE_URL": "postgresql://u@cp/platform",
            "RUN_OPS_ID_GENERATION": "base32hex",
            **env,
        }
    )


def descriptor(key: str = "a", url: str = DSN_A, **fields: Any) -> dict[str, Any]:
    return {"key": key, "region": "us-east-1", "url": url, "replication": REPLICATION, **fields}


def as_json(*elements: Any) -> str:
    return json.dumps(list(elements))


def test_the_json_form_is_the_same_shards_as_the_char_form() -> None:
    platform = load(
        RUN_OPS_SHARDS=as_json(
            descriptor("a", DSN_A, directUrl="postgresql://u@direct-a/run_ops"),
            descriptor("b", DSN_B, region="eu-central-1", knobs={"poolSize": 4, "on": True}),
        )
    )
    ours = load(RUN_OPS_SHARDS=f"a={DSN_A},b={DSN_B}")
    assert platform.run_ops_shards == ours.run_ops_shards == (("a", DSN_A), ("b", DSN_B))
    assert platform.run_ops_shard_read_replica_urls == ()
    assert platform.public_items() == ours.public_items()
    assert platform.source_of("run_ops_shards") == "RUN_OPS_SHARDS"
    # Leading blanks still make it the JSON form; the flag takes it too.
    assert load(RUN_OPS_SHARDS="  \n" + as_json(descriptor())).run_ops_shards == (("a", DSN_A),)
    flagged = Settings.load(
        {"CONTROL_PLANE_DATABASE_URL": "postgresql://u@cp/platform"},
        {"run_ops_id_generation": "base32hex", "run_ops_shards": as_json(descriptor())},
    )
    assert flagged.run_ops_shards == (("a", DSN_A),)
    assert flagged.source_of("run_ops_shards") == "--run-ops-shards"


def test_a_replica_url_is_the_shards_read_replica() -> None:
    s = load(
        RUN_OPS_SHARDS=as_json(descriptor("a", replicaUrl=REPLICA_A), descriptor("b", DSN_B)),
        RUN_OPS_SHARD_READ_REPLICA_URLS="b=postgresql://u@shard-b-replica/run_ops",
    )
    assert s.run_ops_shards == (("a", DSN_A), ("b", DSN_B))
    assert dict(s.run_ops_shard_read_replica_urls) == {
        "a": REPLICA_A,
        "b": "postgresql://u@shard-b-replica/run_ops",
    }
    assert s.source_of("run_ops_shard_read_replica_urls") == (
        "RUN_OPS_SHARDS (replicaUrl) and RUN_OPS_SHARD_READ_REPLICA_URLS"
    )
    alone = load(RUN_OPS_SHARDS=as_json(descriptor("a", replicaUrl=REPLICA_A)))
    assert alone.run_ops_shard_read_replica_urls == (("a", REPLICA_A),)
    assert alone.source_of("run_ops_shard_read_replica_urls") == "RUN_OPS_SHARDS"
    # `check` prints the replica as it prints one given in its own setting: redacted.
    printed = dict(alone.public_items())["run_ops_shard_read_replica_urls"]
    assert printed == "a=shard-a-replica:5432/run_ops"


def test_a_replica_given_in_both_settings_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as raised:
        load(
            RUN_OPS_SHARDS=as_json(descriptor("a", replicaUrl=REPLICA_A)),
            RUN_OPS_SHARD_READ_REPLICA_URLS=f"a={REPLICA_A}",
        )
    message = str(raised.value)
    assert "shard 'a'" in message
    assert "RUN_OPS_SHARDS" in message and "RUN_OPS_SHARD_READ_REPLICA_URLS" in message
    assert SECRET not in message


@pytest.mark.parametrize("raw", ["", "   ", "[]", " [ ] "])
def test_blank_and_an_empty_array_are_no_shards(raw: str) -> None:
    s = load(RUN_OPS_SHARDS=raw)
    assert s.run_ops_shards == () and s.run_ops_shard_read_replica_urls == ()
    assert dict(s.public_items())["run_ops_shards"] == "(unset)"


BAD = [
    pytest.param("[", r"^RUN_OPS_SHARDS is not valid JSON", id="invalid-json"),
    pytest.param(
        f'[{{"key": "a", "url": "{DSN_A}",]', r"^RUN_OPS_SHARDS is not valid JSON", id="truncated"
    ),
    pytest.param(
        json.dumps(descriptor())[:-1] + "}", r"^RUN_OPS_SHARDS starts with \{.*wrap", id="object"
    ),
    pytest.param('["a"]', r"^RUN_OPS_SHARDS\[0\] is 'a': each element .* is an object", id="str"),
    pytest.param(
        as_json({k: v for k, v in descriptor().items() if k != "key"}),
        r'^RUN_OPS_SHARDS\[0\] has no key: "key" is the shard char, one of a-z, 0-9',
        id="missing-key",
    ),
    pytest.param(
        as_json(descriptor("a"), descriptor("B", DSN_B)),
        r"^RUN_OPS_SHARDS\[1\] has key 'B': \"key\" is the shard char",
        id="upper-key",
    ),
    pytest.param(as_json(descriptor("ab")), r"^RUN_OPS_SHARDS\[0\] has key 'ab'", id="long-key"),
    pytest.param(
        as_json(descriptor(1)),  # type: ignore[arg-type]
        r"^RUN_OPS_SHARDS\[0\] has key a number",
        id="number-key",
    ),
    pytest.param(
        as_json(descriptor("a"), descriptor("a", DSN_B)),
        r"^RUN_OPS_SHARDS\[1\] \(key 'a'\): shard 'a' is given twice",
        id="duplicate-key",
    ),
    pytest.param(
        as_json(descriptor(aliasOf="new")),
        r"^RUN_OPS_SHARDS\[0\] \(key 'a'\) has both \"url\" and \"aliasOf\": give exactly one",
        id="url-and-alias",
    ),
    pytest.param(
        as_json({"key": "a", "region": "us-east-1", "replication": REPLICATION}),
        r"^RUN_OPS_SHARDS\[0\] \(key 'a'\) has neither \"url\" nor \"aliasOf\"",
        id="neither",
    ),
    pytest.param(
        as_json(descriptor("a"), descriptor("b", DSN_B, replicaURL=REPLICA_A)),
        r"^RUN_OPS_SHARDS\[1\] \(key 'b'\) has an unknown field \('replicaURL'\)",
        id="unknown-field",
    ),
    pytest.param(
        as_json({**descriptor(), DSN_A: 1}),
        r"^RUN_OPS_SHARDS\[0\] \(key 'a'\) has an unknown field \(a string\)",
        id="unknown-field-that-is-a-dsn",
    ),
    pytest.param(
        as_json(descriptor(region="")), r"\(key 'a'\): \"region\" is required", id="blank-region"
    ),
    pytest.param(
        as_json({k: v for k, v in descriptor().items() if k != "replication"}),
        r"\(key 'a'\): \"replication\" is required unless \"aliasOf\" is set",
        id="no-replication",
    ),
    pytest.param(
        as_json(descriptor(knobs=[1])), r"\(key 'a'\): \"knobs\" is an array", id="knobs-shape"
    ),
    pytest.param(
        as_json(descriptor(replicaUrl=None)),
        r"\(key 'a'\): \"replicaUrl\" is null, not a string",
        id="null-replica",
    ),
    pytest.param(
        as_json(descriptor(url="")), r"\(key 'a'\): \"url\" must be a non-empty", id="empty-url"
    ),
    pytest.param(
        as_json(descriptor(url=f"postgresql://u:{SECRET}@h/ro?sslmode")),
        r"^RUN_OPS_SHARDS\[0\] \(key 'a'\) \"url\" is not a valid PostgreSQL connection string",
        id="bad-url",
    ),
    pytest.param(
        as_json(descriptor(replicaUrl=f"host=h password={SECRET} x")),
        r"\(key 'a'\) \"replicaUrl\" is not a valid PostgreSQL connection string",
        id="bad-replica-url",
    ),
    pytest.param(
        as_json({"key": "a", "region": "us-east-1", "aliasOf": "old"}),
        r"\(key 'a'\): \"aliasOf\" is 'old'; the only alias is \"new\"",
        id="alias-of-other",
    ),
    pytest.param(
        as_json(descriptor("a"), {"key": "a", "region": "us-east-1", "aliasOf": "new"}),
        r"^RUN_OPS_SHARDS\[1\] \(key 'a'\): shard 'a' is given twice",
        id="alias-duplicates-a-key",
    ),
    pytest.param(
        as_json({"key": "n", "region": "us-east-1", "aliasOf": "new", "replicaUrl": "x y"}),
        r"\(key 'n'\) \"replicaUrl\" is not a valid PostgreSQL connection string",
        id="alias-bad-replica-url",
    ),
]


@pytest.mark.parametrize("raw, message", BAD)
def test_bad_json_shards_are_refused_without_echoing_a_dsn(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load(RUN_OPS_SHARDS=raw)
    assert SECRET not in str(raised.value)
    assert "shard-a" not in str(raised.value) and "sekret" not in str(raised.value)


def test_the_char_form_is_unchanged() -> None:
    s = load(
        RUN_OPS_SHARDS=f" a={DSN_A} ,b={DSN_B}", RUN_OPS_SHARD_READ_REPLICA_URLS=f"a={REPLICA_A}"
    )
    assert s.run_ops_shards == (("a", DSN_A), ("b", DSN_B))
    assert s.run_ops_shard_read_replica_urls == (("a", REPLICA_A),)
    assert s.source_of("run_ops_shard_read_replica_urls") == "RUN_OPS_SHARD_READ_REPLICA_URLS"
    with pytest.raises(ConfigError, match="entry 1 does not start with a shard char"):
        load(RUN_OPS_SHARDS=DSN_A)


# ------------------------------------------------------------------ aliases


ALIAS_N = {"key": "n", "region": "us-east-1", "aliasOf": "new"}


def test_an_alias_of_new_is_a_shard_without_a_database_of_its_own() -> None:
    s = load(RUN_OPS_SHARDS=as_json(descriptor("a"), ALIAS_N))
    assert s.run_ops_shards == (("a", DSN_A),)
    assert s.run_ops_shard_aliases == ("n",)
    assert s.run_ops_shard_read_replica_urls == ()
    assert dict(s.public_items())["run_ops_shards"] == "a=shard-a:5432/run_ops,n=@run-ops"
    # The char form says the same with <char>=@run-ops, and prints the same.
    ours = load(RUN_OPS_SHARDS=f"a={DSN_A},n=@run-ops")
    assert (ours.run_ops_shards, ours.run_ops_shard_aliases) == ((("a", DSN_A),), ("n",))
    assert ours.public_items() == s.public_items()
    # Aliases alone, several of them (the platform allows it), and placement
    # settings naming them.
    only = load(
        RUN_OPS_SHARDS=as_json(ALIAS_N, {**ALIAS_N, "key": "m"}), RUN_OPS_SHARDS_NOT_PLACED="m"
    )
    assert only.run_ops_shards == () and only.run_ops_shard_aliases == ("n", "m")
    assert only.run_ops_shards_not_placed == ("m",)


def test_an_alias_takes_the_platforms_other_fields_and_ignores_them() -> None:
    """As on the platform: ``replication`` may be left out, and
    ``replicaUrl``, ``directUrl``, ``knobs`` are checked, then ignored (an
    alias is read where run-ops is)."""
    s = load(
        RUN_OPS_SHARDS=as_json(
            {
                **ALIAS_N,
                "replicaUrl": REPLICA_A,
                "directUrl": "postgresql://u@direct/run_ops",
                "knobs": {"poolSize": 2},
                "replication": REPLICATION,
            }
        )
    )
    assert s.run_ops_shard_aliases == ("n",)
    assert s.run_ops_shards == () and s.run_ops_shard_read_replica_urls == ()


@pytest.mark.parametrize(
    "env, message",
    [
        pytest.param(
            {"RUN_OPS_SHARDS": as_json(ALIAS_N), "RUN_OPS_ID_GENERATION": "ksuid"},
            r"RUN_OPS_SHARDS is set but RUN_OPS_ID_GENERATION is not base32hex",
            id="ksuid",
        ),
        pytest.param(
            {
                "RUN_OPS_SHARDS": as_json(descriptor("a"), ALIAS_N),
                "RUN_OPS_SHARD_READ_REPLICA_URLS": f"n={REPLICA_A}",
            },
            r"names shard 'n', an alias of the run-ops database .* "
            r"RUN_OPS_DATABASE_READ_REPLICA_URL",
            id="replica-of-an-alias",
        ),
        pytest.param(
            {"RUN_OPS_SHARDS": as_json(ALIAS_N), "RUN_OPS_SHARDS_NOT_PLACED": "n"},
            r"names every shard of RUN_OPS_SHARDS \(n\)",
            id="the-only-shard-not-placed",
        ),
        pytest.param(
            {"RUN_OPS_SHARDS": f"a={DSN_A},a=@run-ops"},
            r"^RUN_OPS_SHARDS: shard 'a' is given twice",
            id="char-form-twice",
        ),
        pytest.param(
            {"RUN_OPS_SHARDS": f"a={DSN_A}", "RUN_OPS_SHARD_READ_REPLICA_URLS": "a=@run-ops"},
            r"^RUN_OPS_SHARD_READ_REPLICA_URLS: shard 'a' is @run-ops, an alias .* only "
            r"RUN_OPS_SHARDS takes",
            id="alias-as-a-replica",
        ),
    ],
)
def test_alias_refusals_name_the_cause(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load(**env)
    assert SECRET not in str(raised.value)
