"""Environment answers through a real server (docs/design.md, "Control-plane answers", with the
visible parts of section 6): ResolveEnv, ResolveAuthenticatedEnv and
AssertEnvExists, their caching and invalidation, and reads from the
control-plane read replica.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from google.protobuf import json_format
from psycopg.conninfo import make_conninfo

from controlplane_resolver.dev import demo
from controlplane_resolver.dev.migrate import migrate
from controlplane_resolver_client import ResolverClient, pb

from support.environments import concurrency_limit, set_concurrency_limit
from support.servers import serving

Conn = psycopg.Connection[Any]

ARCHIVED_AT = datetime(2025, 1, 2, 3, 4, 5, 678000)
CREATED_AT = datetime(2024, 6, 1, 12, 0, 0, 1000)
UPDATED_AT = datetime(2024, 6, 2, 12, 0, 0, 2000)


@pytest.fixture(scope="module")
def client(databases: Any) -> Iterator[ResolverClient]:
    """One split-mode server for the module, with the default cache TTLs.

    Tests use fresh ids, so their cache entries never meet; tests that need
    other settings start their own server."""
    with serving(databases) as running:
        yield running.client


def is_paused(client: ResolverClient, environment_id: str) -> bool:
    """``paused`` as ResolveAuthenticatedEnv answers it."""
    env = client.resolve_authenticated_env(environment_id)
    assert env is not None, f"{environment_id} did not resolve"
    return env.paused


def env_row(cp: Conn, environment_id: str) -> dict[str, Any]:
    """The stored row, for fields the factories generate (keys, shortcode, timestamps)."""
    cur = cp.execute(
        'SELECT "apiKey", "shortcode", "slug", "createdAt", "updatedAt" '
        'FROM "RuntimeEnvironment" WHERE "id" = %s',
        (environment_id,),
    )
    row = cur.fetchone()
    assert row is not None
    return dict(zip(("apiKey", "shortcode", "slug", "createdAt", "updatedAt"), row))


# ------------------------------------------------------------------ ResolveEnv


def test_resolve_env_fields(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    env_id = tenant.environment(cp, "PRODUCTION", maximum_concurrency_limit=50)
    env = client.resolve_env(env_id)
    assert env is not None
    assert env.id == env_id
    assert env.type == pb.ENVIRONMENT_TYPE_PRODUCTION
    assert env.project_id == tenant.project_id
    assert env.organization_id == tenant.organization_id
    assert not env.HasField("archived_at")
    assert env.maximum_concurrency_limit == 50
    # The schema default, as exact decimal text.
    assert env.concurrency_limit_burst_factor == "2.00"
    assert env.parent_environment_type == pb.ENVIRONMENT_TYPE_UNSPECIFIED


def test_resolve_env_non_default_burst_factor_is_exact(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    env_id = tenant.environment(cp, "STAGING", concurrency_limit_burst_factor=Decimal("1.5"))
    env = client.resolve_env(env_id)
    assert env is not None and env.type == pb.ENVIRONMENT_TYPE_STAGING
    assert env.concurrency_limit_burst_factor == "1.50"


def test_resolve_env_reports_archived_environment(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """Archived environments are reported, not filtered."""
    env_id = tenant.environment(cp, "PREVIEW", archived_at=ARCHIVED_AT)
    env = client.resolve_env(env_id)
    assert env is not None
    assert env.HasField("archived_at") and env.archived_at.ToDatetime() == ARCHIVED_AT
    authenticated = client.resolve_authenticated_env(env_id)
    assert authenticated is not None
    assert authenticated.archived_at.ToDatetime() == ARCHIVED_AT


def test_resolve_env_reports_parent_type(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """A child environment carries its parent's type. The parent is STAGING and
    the child PREVIEW so the answer cannot be the child's own type by accident."""
    parent = tenant.environment(cp, "STAGING", is_branchable_environment=True)
    child = tenant.environment(
        cp, "PREVIEW", parent_environment_id=parent, branch_name="feature/login"
    )
    env = client.resolve_env(child)
    assert env is not None
    assert env.type == pb.ENVIRONMENT_TYPE_PREVIEW
    assert env.parent_environment_type == pb.ENVIRONMENT_TYPE_STAGING


def test_resolve_env_organization_comes_from_the_project(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """The environment row's own organizationId is not what ResolveEnv reports:
    the organization is the project's."""
    other_org = demo.insert_organization(cp)
    env_id = demo.insert_environment(cp, project_id=tenant.project_id, organization_id=other_org)
    env = client.resolve_env(env_id)
    assert env is not None
    assert env.organization_id == tenant.organization_id


def test_soft_deleted_project_is_reported_by_resolve_env_only(
    client: ResolverClient, cp: Conn
) -> None:
    """ResolveEnv and AssertEnvExists report an environment of a soft-deleted
    project; ResolveAuthenticatedEnv treats it as absent."""
    org = demo.insert_organization(cp)
    project = demo.insert_project(cp, organization_id=org, deleted_at=datetime(2025, 1, 1))
    env_id = demo.insert_environment(cp, project_id=project, organization_id=org)
    env = client.resolve_env(env_id)
    assert env is not None and env.project_id == project and env.organization_id == org
    assert client.assert_env_exists(env_id) is True
    assert client.resolve_authenticated_env(env_id) is None


def test_absent_environment(client: ResolverClient) -> None:
    absent = demo.new_cuid()
    assert client.resolve_env(absent) is None
    assert client.resolve_authenticated_env(absent) is None
    assert client.assert_env_exists(absent) is False


def test_assert_env_exists(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    assert client.assert_env_exists(tenant.environment(cp, "DEVELOPMENT")) is True
    assert client.assert_env_exists(demo.new_cuid()) is False


# ---------------------------------------------------------- ResolveAuthenticatedEnv


def test_authenticated_env_full_shape(client: ResolverClient, cp: Conn) -> None:
    """Every scalar and every relation, with non-default values throughout."""
    user = demo.insert_user(cp, display_name="Ada", name="Ada Lovelace")
    flags = {"runOpsMintKsuid": "ksuid", "beta": True}
    limiter = {"type": "tokenBucket", "refillRate": 10, "maxTokens": 100}
    batch_limit = {"type": "fixedWindow", "window": "1m", "tokens": 5}
    batch_concurrency = {"processingConcurrency": 4}
    org = demo.insert_organization(
        cp,
        title="Acme Inc.",
        maximum_concurrency_limit=25,
        maximum_dev_queue_size=100,
        maximum_deployed_queue_size=1000,
        runs_enabled=False,
        feature_flags=flags,
        api_rate_limiter_config=limiter,
        batch_rate_limit_config=batch_limit,
        batch_queue_concurrency_config=batch_concurrency,
        stream_basin_name="basin-eu-1",
    )
    member = demo.insert_org_member(cp, user_id=user, organization_id=org)
    external_ref = "proj_" + secrets.token_hex(10)
    project = demo.insert_project(
        cp,
        organization_id=org,
        name="Acme App",
        external_ref=external_ref,
        engine="V1",
        builder_project_id="builder_1",
        default_worker_group_id="wg_1",
    )
    parent = demo.insert_environment(
        cp, project_id=project, organization_id=org, type="PREVIEW", is_branchable_environment=True
    )
    git = {
        "provider": "github",
        "commitSha": secrets.token_hex(20),
        "commitRef": "feature/login",
        "commitMessage": "Add the login form",
        "pullRequestNumber": 42,
        "dirty": False,
        "remoteUrl": "https://github.com/acme/app",
    }
    overrides = {"TRIGGER_STREAM_URL": "https://example.invalid"}
    env_id = demo.insert_environment(
        cp,
        project_id=project,
        organization_id=org,
        type="PREVIEW",
        slug="feature-login",
        parent_environment_id=parent,
        branch_name="feature/login",
        git=git,
        org_member_id=member,
        paused=True,
        pause_source="BILLING_LIMIT",
        maximum_concurrency_limit=7,
        concurrency_limit_burst_factor=Decimal("1.25"),
        built_in_environment_variable_overrides=overrides,
        archived_at=ARCHIVED_AT,
        created_at=CREATED_AT,
        updated_at=UPDATED_AT,
    )
    row, parent_row = env_row(cp, env_id), env_row(cp, parent)
    org_slug = cp.execute('SELECT "slug" FROM "Organization" WHERE "id" = %s', (org,)).fetchone()
    project_slug = cp.execute('SELECT "slug" FROM "Project" WHERE "id" = %s', (project,)).fetchone()
    assert org_slug is not None and project_slug is not None

    env = client.resolve_authenticated_env(env_id)
    assert env is not None
    assert env.id == env_id
    assert env.slug == "feature-login"
    assert env.type == pb.ENVIRONMENT_TYPE_PREVIEW
    assert env.api_key == row["apiKey"]
    assert env.organization_id == org
    assert env.project_id == project
    assert env.org_member_id == member
    assert env.parent_environment_id == parent
    assert env.branch_name == "feature/login"
    assert env.archived_at.ToDatetime() == ARCHIVED_AT
    assert env.paused is True
    assert env.pause_source == "BILLING_LIMIT"
    assert env.shortcode == row["shortcode"]
    assert env.maximum_concurrency_limit == 7
    assert env.concurrency_limit_burst_factor == "1.25"
    assert json_format.MessageToDict(env.built_in_environment_variable_overrides) == overrides
    assert env.created_at.ToDatetime() == CREATED_AT
    assert env.updated_at.ToDatetime() == UPDATED_AT
    assert env.is_branchable_environment is False
    assert env.HasField("git")
    assert json_format.MessageToDict(env.git) == git

    assert env.project == pb.Project(
        id=project,
        slug=project_slug[0],
        name="Acme App",
        external_ref=external_ref,
        organization_id=org,
        engine="V1",
        builder_project_id="builder_1",
        default_worker_group_id="wg_1",
    )

    o = env.organization
    assert (o.id, o.slug, o.title) == (org, org_slug[0], "Acme Inc.")
    assert o.maximum_concurrency_limit == 25
    assert o.maximum_dev_queue_size == 100
    assert o.maximum_deployed_queue_size == 1000
    assert o.runs_enabled is False
    assert json_format.MessageToDict(o.feature_flags) == flags
    assert json_format.MessageToDict(o.api_rate_limiter_config) == limiter
    assert json_format.MessageToDict(o.batch_rate_limit_config) == batch_limit
    assert json_format.MessageToDict(o.batch_queue_concurrency_config) == batch_concurrency
    assert o.stream_basin_name == "basin-eu-1"

    assert env.org_member == pb.OrgMember(
        id=member, user_id=user, user=pb.User(id=user, display_name="Ada", name="Ada Lovelace")
    )
    assert env.parent_environment == pb.ParentEnvironment(id=parent, api_key=parent_row["apiKey"])


def test_authenticated_env_without_relations(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """No member, parent, git or overrides: those parts are unset, not empty."""
    env_id = tenant.environment(cp, "PRODUCTION")
    env = client.resolve_authenticated_env(env_id)
    assert env is not None
    assert env.api_key == env_row(cp, env_id)["apiKey"]
    assert env.api_key.startswith("tr_prod_")
    for unset in (
        "org_member_id",
        "parent_environment_id",
        "branch_name",
        "archived_at",
        "pause_source",
        "org_member",
        "parent_environment",
        "git",
        "built_in_environment_variable_overrides",
    ):
        assert not env.HasField(unset), unset
    assert env.paused is False
    assert env.concurrency_limit_burst_factor == "2.00"
    o = env.organization
    assert o.id == tenant.organization_id and o.runs_enabled is True
    assert o.maximum_concurrency_limit == 10
    for unset in (
        "maximum_dev_queue_size",
        "maximum_deployed_queue_size",
        "feature_flags",
        "stream_basin_name",
    ):
        assert not o.HasField(unset), unset
    assert env.project.id == tenant.project_id and env.project.engine == "V2"
    assert not env.project.HasField("builder_project_id")


def test_authenticated_env_member_without_names(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """A user with no display name or name: the optional fields stay unset."""
    user = demo.insert_user(cp, display_name=None, name=None)
    member = demo.insert_org_member(cp, user_id=user, organization_id=tenant.organization_id)
    env_id = tenant.environment(cp, "DEVELOPMENT", org_member_id=member)
    env = client.resolve_authenticated_env(env_id)
    assert env is not None
    assert env.org_member.user_id == user and env.org_member.user.id == user
    assert not env.org_member.user.HasField("display_name")
    assert not env.org_member.user.HasField("name")


# --------------------------------------------------------------------- caching


def test_git_metadata_that_is_not_an_object_is_left_out(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    # The column takes any JSON; the answer's git is a Struct. A corrupt
    # value must not fail the environment's callers.
    env_id = tenant.environment(cp, "PREVIEW", git=["not", "an", "object"])
    env = client.resolve_authenticated_env(env_id)
    assert env is not None and env.id == env_id
    assert not env.HasField("git")


def test_cached_env_is_served_until_invalidated(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """A change in the database is not seen while the answer is cached;
    invalidating the environment, or its organization, refreshes it."""
    env_id = tenant.environment(cp, "PRODUCTION", maximum_concurrency_limit=5)
    assert concurrency_limit(client, env_id) == 5

    set_concurrency_limit(cp, env_id, 6)
    assert concurrency_limit(client, env_id) == 5
    client.invalidate(environment_id=env_id)
    assert concurrency_limit(client, env_id) == 6

    set_concurrency_limit(cp, env_id, 7)
    assert concurrency_limit(client, env_id) == 6
    client.invalidate(organization_id=tenant.organization_id)
    assert concurrency_limit(client, env_id) == 7


def test_invalidation_is_scoped(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """Invalidating one environment, or another organization, leaves a
    cached answer alone."""
    env_id = tenant.environment(cp, "PRODUCTION", maximum_concurrency_limit=5)
    sibling = tenant.environment(cp, "STAGING")
    assert concurrency_limit(client, env_id) == 5
    set_concurrency_limit(cp, env_id, 9)
    client.invalidate(environment_id=sibling)
    client.invalidate(organization_id=demo.insert_organization(cp))
    assert concurrency_limit(client, env_id) == 5


def test_cached_authenticated_env_refreshes_with_its_parent(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """The answer holds the parent's API key: rotating that key and
    invalidating the *parent* refreshes the child's cached answer."""
    parent = tenant.environment(cp, "PREVIEW", is_branchable_environment=True)
    child = tenant.environment(cp, "PREVIEW", parent_environment_id=parent, branch_name="b")
    before = client.resolve_authenticated_env(child)
    assert before is not None
    assert before.parent_environment.api_key == env_row(cp, parent)["apiKey"]

    rotated = "tr_preview_" + secrets.token_hex(12)
    cp.execute('UPDATE "RuntimeEnvironment" SET "apiKey" = %s WHERE "id" = %s', (rotated, parent))
    cached = client.resolve_authenticated_env(child)
    assert cached is not None
    assert cached.parent_environment.api_key == before.parent_environment.api_key
    client.invalidate(environment_id=parent)
    after = client.resolve_authenticated_env(child)
    assert after is not None and after.parent_environment.api_key == rotated


def test_cached_absence_is_served_until_invalidated(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """A confirmed absence is cached as absence: an environment created after
    the first answer is seen once its id is invalidated."""
    env_id = demo.new_cuid()
    assert client.assert_env_exists(env_id) is False
    assert client.resolve_env(env_id) is None
    tenant.environment(cp, "PRODUCTION", id=env_id)
    assert client.assert_env_exists(env_id) is False
    assert client.resolve_env(env_id) is None
    client.invalidate(environment_id=env_id)
    assert client.assert_env_exists(env_id) is True
    assert client.resolve_env(env_id) is not None


def test_cache_ttl_zero_shows_changes_at_once(
    start_server: Callable[..., Any], cp: Conn, tenant: Any
) -> None:
    client = start_server(control_plane_cache_ttl_ms=0).client
    env_id = tenant.environment(cp, "PRODUCTION", maximum_concurrency_limit=5)
    assert concurrency_limit(client, env_id) == 5
    assert is_paused(client, env_id) is False
    set_concurrency_limit(cp, env_id, 8)
    cp.execute('UPDATE "RuntimeEnvironment" SET "paused" = true WHERE "id" = %s', (env_id,))
    assert concurrency_limit(client, env_id) == 8
    assert is_paused(client, env_id) is True

    absent = demo.new_cuid()
    assert client.assert_env_exists(absent) is False
    tenant.environment(cp, "STAGING", id=absent)
    assert client.assert_env_exists(absent) is True


# ---------------------------------------------------------------- read replica


@pytest.fixture
def replica_dsn(databases: Any) -> Iterator[str]:
    """A separate, migrated database on the control-plane cluster, standing
    in for a read replica: rows written there exist nowhere else. (Request it
    before ``start_server`` so the server stops before the database is dropped.)"""
    name = "cp_replica_" + secrets.token_hex(4)
    with psycopg.connect(databases.control_plane, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(databases.control_plane, dbname=name)
    try:
        migrate(dsn, "control_plane")
        yield dsn
    finally:
        with psycopg.connect(databases.control_plane, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_reads_go_to_the_read_replica(
    replica_dsn: str, start_server: Callable[..., Any], cp: Conn, tenant: Any
) -> None:
    """With a replica configured, control-plane answers come from it: an
    environment only in the replica resolves, one only in the primary does not."""
    client = start_server(control_plane_database_read_replica_url=replica_dsn).client
    with psycopg.connect(replica_dsn, autocommit=True) as replica:
        org = demo.insert_organization(replica)
        project = demo.insert_project(replica, organization_id=org)
        in_replica = demo.insert_environment(
            replica, project_id=project, organization_id=org, maximum_concurrency_limit=42
        )
    in_primary = tenant.environment(cp, "PRODUCTION")

    env = client.resolve_env(in_replica)
    assert env is not None
    assert (env.project_id, env.organization_id) == (project, org)
    assert env.maximum_concurrency_limit == 42
    assert client.resolve_authenticated_env(in_replica) is not None
    assert client.assert_env_exists(in_replica) is True

    assert client.resolve_env(in_primary) is None
    assert client.assert_env_exists(in_primary) is False
