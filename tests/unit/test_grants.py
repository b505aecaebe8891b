"""The certificate grants file format (docs/configuration.md)."""

from __future__ import annotations

import pytest

from controlplane_resolver.serving.auth import TokenFileError, parse_grants


def test_grants_name_methods_per_identity_and_star_excludes_the_secret() -> None:
    grants = parse_grants(
        "# identity  methods\n"
        "engine.svc  *\n"
        "console     ResolveAuthenticatedEnv /controlplane.resolver.v1.X/ResolveEnv\n"
        "probe\n"
    )
    by_identity = {g.identity: g for g in grants}
    assert by_identity["engine.svc"].may_call("ReadRun")
    assert not by_identity["engine.svc"].may_call("ResolveAuthenticatedEnv")
    assert by_identity["console"].may_call("ResolveAuthenticatedEnv")
    assert by_identity["console"].may_call("ResolveEnv")
    assert not by_identity["console"].may_call("ReadRun")
    assert by_identity["probe"].methods == frozenset({"*"})


def test_a_malformed_or_empty_grants_file_names_the_problem() -> None:
    with pytest.raises(TokenFileError, match="line 2: 'Resolve-Env' is not a method name"):
        parse_grants("engine *\nconsole Resolve-Env\n", "grants")
    with pytest.raises(TokenFileError, match="has no identity lines"):
        parse_grants("# nothing\n\n", "grants")
