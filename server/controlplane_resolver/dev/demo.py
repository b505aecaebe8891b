"""Demo data and row factories for the control-plane and run-ops databases.

Plain Python, no gRPC. Two uses:

* :func:`seed` fills a freshly migrated pair of databases (see
  ``schema/control_plane.sql`` and ``schema/run_ops.sql``) with a small,
  realistic demo and returns the ids a newcomer pastes into grpcurl
  (:class:`DemoIds`).
* The ``insert_*`` factories are reused by the tests to write exactly the rows
  a case needs. Each takes a psycopg connection plus keyword overrides, writes
  one row (it never commits: the caller owns the transaction) and returns the
  id of the row it wrote.

Overrides are snake_case keyword arguments mapped to the platform's camelCase
columns (``archived_at=`` -> ``"archivedAt"``, ``parent_environment_id=`` ->
``"parentEnvironmentId"``); a key that is already camelCase passes through
unchanged. Values for JSONB columns (``git=``, ``feature_flags=``,
``metadata=`` ...) may be plain dicts or lists and are sent as JSONB; ``None``
is SQL ``NULL``. Enum columns take their label as a string (``"PRODUCTION"``).
Timestamps are ``TIMESTAMP(3)`` without time zone: pass naive UTC datetimes
(as the platform writes them) to get exact values back.

Ids come from the service's own generators (:mod:`.minting`), re-exported
here as :func:`new_cuid` and :func:`new_ksuid` for the tests' convenience.
"""

from __future__ import annotations

import itertools
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg import Connection, sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from controlplane_resolver.domain.minting import new_cuid, new_ksuid

__all__ = [
    "DemoIds",
    "insert_deployment",
    "insert_environment",
    "insert_org_member",
    "insert_organization",
    "insert_project",
    "insert_queue",
    "insert_run",
    "insert_task",
    "insert_user",
    "insert_worker",
    "link_worker_queue",
    "new_cuid",
    "new_ksuid",
    "promote",
    "seed",
]

# --------------------------------------------------------------------- ids

# The alphabet of the platform's old 21-character friendly-id bodies (nanoid).
_NANOID_ALPHABET = "123456789abcdefghijkmnopqrstuvwxyz"


def _random_string(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


# ------------------------------------------------------------- insert helper

_JSON_COLUMNS = frozenset(
    {
        "featureFlags",
        "apiRateLimiterConfig",
        "batchRateLimitConfig",
        "batchQueueConcurrencyConfig",
        "git",
        "builtInEnvironmentVariableOverrides",
        "metadata",
        "machineConfig",
        "retryConfig",
        "queueConfig",
    }
)


def _camel(key: str) -> str:
    """``archived_at`` -> ``archivedAt``; camelCase keys pass through."""
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _columns(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The row to insert: ``defaults`` (camelCase) updated with ``overrides``
    (snake_case or camelCase)."""
    row = dict(defaults)
    for key, value in overrides.items():
        row[_camel(key)] = value
    return row


def _insert(conn: Connection[Any], table: str, row: Mapping[str, Any]) -> None:
    """``INSERT INTO "table" ("col", ...) VALUES (...)`` for one row of
    camelCase column -> value; JSONB columns are adapted with :class:`Jsonb`."""
    values = [
        Jsonb(value)
        if column in _JSON_COLUMNS and value is not None and not isinstance(value, Jsonb)
        else value
        for column, value in row.items()
    ]
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(sql.Identifier(column) for column in row),
        sql.SQL(", ").join(sql.Placeholder() * len(row)),
    )
    conn.execute(query, values)


def _fetch_one(conn: Connection[Any], query: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        found = cur.fetchone()
    if found is None:
        raise LookupError(f"no row for {params!r}")
    return found


def _utcnow() -> datetime:
    """Now as a naive UTC datetime, the way the platform stores TIMESTAMP(3)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


_worker_version_counter = itertools.count(1)

_ENV_KEY_PREFIX = {
    "PRODUCTION": "prod",
    "STAGING": "stg",
    "DEVELOPMENT": "dev",
    "PREVIEW": "preview",
}

_ALNUM = string.ascii_lowercase + string.digits

# ------------------------------------------------------------------ factories


def insert_user(conn: Connection[Any], **overrides: Any) -> str:
    """Insert a ``"User"``; returns its id (a cuid unless ``id=`` is given)."""
    row = _columns({"id": new_cuid(), "displayName": "Ada", "name": "Ada Lovelace"}, overrides)
    _insert(conn, "User", row)
    return str(row["id"])


def insert_organization(conn: Connection[Any], **overrides: Any) -> str:
    """Insert an ``"Organization"`` with a unique slug; returns its id.

    Unset columns take the schema defaults (``maximumConcurrencyLimit`` 10,
    ``runsEnabled`` true, ``featureFlags`` NULL ...).
    """
    suffix = _random_string(_ALNUM, 6)
    row = _columns({"id": new_cuid(), "slug": f"acme-{suffix}", "title": "Acme Inc."}, overrides)
    _insert(conn, "Organization", row)
    return str(row["id"])


def insert_org_member(
    conn: Connection[Any], *, user_id: str, organization_id: str, **overrides: Any
) -> str:
    """Insert an ``"OrgMember"`` linking a user to an organization; returns its id."""
    row = _columns(
        {"id": new_cuid(), "userId": user_id, "organizationId": organization_id}, overrides
    )
    _insert(conn, "OrgMember", row)
    return str(row["id"])


def insert_project(conn: Connection[Any], *, organization_id: str, **overrides: Any) -> str:
    """Insert a ``"Project"`` with a unique slug and an ``externalRef`` of the
    form ``proj_`` + 20 lowercase alphanumerics; returns its id.
    ``deleted_at=`` soft-deletes it; ``engine`` defaults to ``V2``."""
    suffix = _random_string(_ALNUM, 6)
    row = _columns(
        {
            "id": new_cuid(),
            "slug": f"app-{suffix}",
            "name": "App",
            "externalRef": "proj_" + _random_string(_ALNUM, 20),
            "organizationId": organization_id,
        },
        overrides,
    )
    _insert(conn, "Project", row)
    return str(row["id"])


def insert_environment(
    conn: Connection[Any],
    *,
    project_id: str,
    organization_id: str,
    type: str = "PRODUCTION",
    **overrides: Any,
) -> str:
    """Insert a ``"RuntimeEnvironment"`` of ``type``; returns its id.

    Generates a unique secret ``apiKey`` (``tr_dev_…``, ``tr_prod_…``,
    ``tr_stg_…``, ``tr_preview_…``), a unique ``pkApiKey`` (``pk_…``), a slug
    (``dev``/``prod``/``stg``/``preview``) and a random 6-character
    ``shortcode``. Everything else (limits, burst factor, paused, branch and
    git metadata, ``archived_at=``, ``parent_environment_id=``,
    ``org_member_id=``) comes from the schema defaults or the overrides.
    """
    prefix = _ENV_KEY_PREFIX.get(type, type.lower())
    row = _columns(
        {
            "id": new_cuid(),
            "slug": prefix,
            "apiKey": f"tr_{prefix}_" + _random_string(string.ascii_letters + string.digits, 24),
            "pkApiKey": f"pk_{prefix}_" + _random_string(string.ascii_letters + string.digits, 24),
            "type": type,
            "shortcode": _random_string(_ALNUM, 10),
            "organizationId": organization_id,
            "projectId": project_id,
        },
        overrides,
    )
    _insert(conn, "RuntimeEnvironment", row)
    return str(row["id"])


def insert_worker(
    conn: Connection[Any], *, project_id: str, environment_id: str, **overrides: Any
) -> str:
    """Insert a ``"BackgroundWorker"`` (``friendlyId`` ``worker_…``); returns its id.

    ``version`` defaults to today's date plus a process-wide counter
    (``"20261128.1"``), unique per project and environment within a process;
    ``created_at=`` sets ``"createdAt"`` (the resolver picks the newest worker
    by ``createdAt DESC, id DESC``).
    """
    row = _columns(
        {
            "id": new_cuid(),
            "friendlyId": "worker_" + new_cuid(),
            "engine": "V2",
            "contentHash": secrets.token_hex(16),
            "sdkVersion": "4.0.0",
            "cliVersion": "4.0.0",
            "projectId": project_id,
            "runtimeEnvironmentId": environment_id,
            "version": f"{_utcnow():%Y%m%d}.{next(_worker_version_counter)}",
            "metadata": {"packageVersion": "4.0.0", "runtime": "node"},
            "runtime": "node",
            "runtimeVersion": "22.12.0",
        },
        overrides,
    )
    _insert(conn, "BackgroundWorker", row)
    return str(row["id"])


def insert_task(
    conn: Connection[Any],
    *,
    worker_id: str,
    slug: str = "send-email",
    environment_id: str | None = None,
    project_id: str | None = None,
    **overrides: Any,
) -> str:
    """Insert a ``"BackgroundWorkerTask"`` of ``worker_id``; returns its id.

    ``environment_id``/``project_id`` default to the worker's own (read from
    ``"BackgroundWorker"``). ``slug`` must be unique per worker; ``filePath``,
    ``exportName``, ``machineConfig``, ``retryConfig`` and ``queueConfig``
    get realistic defaults; ``queue_id=`` links the task's queue.
    """
    if environment_id is None or project_id is None:
        found_project, found_env = _fetch_one(
            conn,
            'SELECT "projectId", "runtimeEnvironmentId" FROM "BackgroundWorker" WHERE "id" = %s',
            (worker_id,),
        )
        project_id = project_id or found_project
        environment_id = environment_id or found_env
    export_name = slug.split("-")[0] + "".join(part.title() for part in slug.split("-")[1:])
    row = _columns(
        {
            "id": new_cuid(),
            "slug": slug,
            "filePath": f"src/trigger/{slug}.ts",
            "exportName": export_name,
            "workerId": worker_id,
            "runtimeEnvironmentId": environment_id,
            "projectId": project_id,
            "machineConfig": {"preset": "small-1x"},
            "retryConfig": {"maxAttempts": 3, "factor": 2, "minTimeoutInMs": 1000},
            "queueConfig": {"name": f"task/{slug}"},
        },
        overrides,
    )
    _insert(conn, "BackgroundWorkerTask", row)
    return str(row["id"])


def insert_queue(
    conn: Connection[Any],
    *,
    environment_id: str,
    project_id: str | None = None,
    name: str | None = None,
    **overrides: Any,
) -> str:
    """Insert a ``"TaskQueue"`` (``friendlyId`` ``queue_…``, type ``VIRTUAL``
    unless ``type=`` says ``NAMED``); returns its id.

    ``name`` defaults to a unique ``task/…`` name (names are unique per
    environment); ``project_id`` defaults to the environment's project.
    """
    if project_id is None:
        (project_id,) = _fetch_one(
            conn, 'SELECT "projectId" FROM "RuntimeEnvironment" WHERE "id" = %s', (environment_id,)
        )
    row = _columns(
        {
            "id": new_cuid(),
            "friendlyId": "queue_" + new_cuid(),
            "name": name if name is not None else "task/" + _random_string(_ALNUM, 8),
            "type": "VIRTUAL",
            "runtimeEnvironmentId": environment_id,
            "projectId": project_id,
        },
        overrides,
    )
    _insert(conn, "TaskQueue", row)
    return str(row["id"])


def link_worker_queue(conn: Connection[Any], worker_id: str, queue_id: str) -> None:
    """Link a worker to a queue through ``"_BackgroundWorkerToTaskQueue"``
    (``"A"`` = worker id, ``"B"`` = queue id)."""
    _insert(conn, "_BackgroundWorkerToTaskQueue", {"A": worker_id, "B": queue_id})


def insert_deployment(
    conn: Connection[Any],
    *,
    project_id: str,
    environment_id: str,
    worker_id: str | None = None,
    type: str = "MANAGED",
    status: str = "DEPLOYED",
    **overrides: Any,
) -> str:
    """Insert a ``"WorkerDeployment"`` (``friendlyId`` ``deployment_…``);
    returns its id.

    ``worker_id`` is optional (a deployment without a worker is legal; a worker
    has at most one deployment). ``version`` defaults to the worker's version
    when a worker is given, else to a generated one; ``shortCode`` is random.
    """
    if "version" in overrides:
        version = overrides.pop("version")
    elif worker_id is not None:
        (version,) = _fetch_one(
            conn, 'SELECT "version" FROM "BackgroundWorker" WHERE "id" = %s', (worker_id,)
        )
    else:
        version = f"{_utcnow():%Y%m%d}.{next(_worker_version_counter)}"
    row = _columns(
        {
            "id": new_cuid(),
            "friendlyId": "deployment_" + new_cuid(),
            "shortCode": _random_string(_ALNUM, 8),
            "version": version,
            "runtime": "node",
            "runtimeVersion": "22.12.0",
            "status": status,
            "type": type,
            "environmentId": environment_id,
            "projectId": project_id,
            "workerId": worker_id,
        },
        overrides,
    )
    _insert(conn, "WorkerDeployment", row)
    return str(row["id"])


def promote(
    conn: Connection[Any], deployment_id: str, environment_id: str, label: str = "current"
) -> str:
    """Promote a deployment in an environment under ``label`` (``current`` or
    ``current-unmanaged``): an upsert on ``("environmentId", "label")``, so a
    later promotion replaces the earlier one. Returns the promotion's id (the
    existing row's id when it replaced one)."""
    (promotion_id,) = _fetch_one(
        conn,
        'INSERT INTO "WorkerDeploymentPromotion" ("id", "label", "deploymentId", "environmentId") '
        "VALUES (%s, %s, %s, %s) "
        'ON CONFLICT ("environmentId", "label") '
        'DO UPDATE SET "deploymentId" = EXCLUDED."deploymentId" '
        'RETURNING "id"',
        (new_cuid(), label, deployment_id, environment_id),
    )
    return str(promotion_id)


def insert_run(
    conn: Connection[Any],
    *,
    id: str,
    environment_id: str,
    project_id: str,
    organization_id: str | None = None,
    status: str = "PENDING",
    task_identifier: str = "send-email",
    **overrides: Any,
) -> str:
    """Insert a ``"TaskRun"`` with internal id ``id``; returns ``id``.

    Works on either database (the columns are the same; only the
    control-plane one has foreign keys, to the environment and project).
    ``friendlyId`` defaults to ``"run_" + id`` (override with
    ``friendly_id=``), ``queue`` to ``task/<task_identifier>``. Optional
    overrides include ``environment_type=``, ``locked_by_id=`` (a task id),
    ``locked_to_version_id=`` (a worker id), ``run_tags=`` (a list of str),
    ``batch_id=``, ``parent_task_run_id=``, ``root_task_run_id=``,
    ``idempotency_key=``, ``engine=`` and ``created_at=``.
    """
    row = _columns(
        {
            "id": id,
            "friendlyId": "run_" + id,
            "status": status,
            "taskIdentifier": task_identifier,
            "runtimeEnvironmentId": environment_id,
            "projectId": project_id,
            "organizationId": organization_id,
            "queue": f"task/{task_identifier}",
        },
        overrides,
    )
    _insert(conn, "TaskRun", row)
    return id


# ---------------------------------------------------------------------- seed


@dataclass(frozen=True)
class DemoIds:
    """The ids :func:`seed` wrote, for grpcurl and for tests.

    Runs: ``legacy_run_*`` is a cuid run in the control-plane database;
    ``new_run_*`` a ksuid run in the run-ops database;
    ``legacy_run_in_run_ops_*`` a cuid-shaped run that lives in the run-ops
    database (read-through finds it there first); ``old_short_run_*`` an old
    control-plane run whose internal id is a 25-character cuid but whose
    friendly id has a 21-character body (unclassifiable by shape).
    """

    organization_id: str
    project_id: str
    project_ref: str
    production_environment_id: str
    staging_environment_id: str
    development_environment_id: str
    preview_environment_id: str
    preview_branch_environment_id: str
    development_worker_id: str
    production_worker_id: str
    """The worker of the deployment promoted ``current`` in production."""
    production_deployment_id: str
    production_task_id: str
    """A task of ``production_worker_id`` (what the run-ops runs are locked by)."""
    previous_production_worker_id: str
    previous_production_deployment_id: str
    legacy_run_id: str
    legacy_run_friendly_id: str
    new_run_id: str
    new_run_friendly_id: str
    legacy_run_in_run_ops_id: str
    legacy_run_in_run_ops_friendly_id: str
    old_short_run_id: str
    old_short_run_friendly_id: str


_DEMO_TASKS = ("send-email", "resize-image")


def _seed_worker(
    conn: Connection[Any],
    *,
    project_id: str,
    environment_id: str,
    queue_ids: Mapping[str, str],
    created_at: datetime,
    version: str,
) -> tuple[str, list[str]]:
    """A worker with one task per ``queue_ids`` entry, linked to each queue."""
    worker_id = insert_worker(
        conn,
        project_id=project_id,
        environment_id=environment_id,
        version=version,
        created_at=created_at,
    )
    task_ids = []
    for slug, queue_id in queue_ids.items():
        task_ids.append(
            insert_task(
                conn, worker_id=worker_id, slug=slug, queue_id=queue_id, created_at=created_at
            )
        )
        link_worker_queue(conn, worker_id, queue_id)
    return worker_id, task_ids


def _seed_queues(conn: Connection[Any], *, project_id: str, environment_id: str) -> dict[str, str]:
    return {
        slug: insert_queue(
            conn, environment_id=environment_id, project_id=project_id, name=f"task/{slug}"
        )
        for slug in _DEMO_TASKS
    }


def seed(control_plane: Connection[Any], run_ops: Connection[Any]) -> DemoIds:
    """Write a small realistic demo and commit both connections; returns its ids.

    Expects freshly migrated databases (``schema/control_plane.sql`` on
    ``control_plane``, ``schema/run_ops.sql`` on ``run_ops``); every call mints
    new ids, so seeding the same databases twice writes a second, independent
    demo. ``run_ops`` may be the same connection as ``control_plane``
    (single-database dev mode).

    Control plane: one organization (feature flag ``runOpsMintKsuid`` =
    ``"ksuid"``), a user and org member, one project, environments of every
    type (PRODUCTION, STAGING, DEVELOPMENT owned by the org member, a
    branchable PREVIEW and its ``feature/login`` branch with git metadata), a
    development worker, and in production two MANAGED deployments with their
    workers (the newer one promoted ``current``), each worker with two tasks
    and their queues linked; legacy (cuid) runs. Run-ops: a ksuid run and a
    cuid-shaped run locked to the promoted worker and its task.

    On error both connections are rolled back and the error re-raised.
    """
    try:
        ids = _seed(control_plane, run_ops)
    except BaseException:
        control_plane.rollback()
        if run_ops is not control_plane:
            run_ops.rollback()
        raise
    control_plane.commit()
    if run_ops is not control_plane:
        run_ops.commit()
    return ids


def _seed(cp: Connection[Any], ro: Connection[Any]) -> DemoIds:
    now = _utcnow()
    day = _utcnow().strftime("%Y%m%d")

    user_id = insert_user(cp, display_name="Ada", name="Ada Lovelace")
    organization_id = insert_organization(
        cp, title="Acme Inc.", feature_flags={"runOpsMintKsuid": "ksuid"}
    )
    member_id = insert_org_member(cp, user_id=user_id, organization_id=organization_id)
    project_ref = "proj_" + _random_string(_ALNUM, 20)
    project_id = insert_project(
        cp, organization_id=organization_id, name="Acme App", external_ref=project_ref
    )

    env = {"project_id": project_id, "organization_id": organization_id}
    production_id = insert_environment(cp, type="PRODUCTION", maximum_concurrency_limit=50, **env)
    staging_id = insert_environment(cp, type="STAGING", **env)
    development_id = insert_environment(cp, type="DEVELOPMENT", org_member_id=member_id, **env)
    preview_id = insert_environment(cp, type="PREVIEW", is_branchable_environment=True, **env)
    branch_id = insert_environment(
        cp,
        type="PREVIEW",
        slug="feature-login",
        parent_environment_id=preview_id,
        branch_name="feature/login",
        git={
            "provider": "github",
            "commitSha": secrets.token_hex(20),
            "commitRef": "feature/login",
            "commitMessage": "Add the login form",
            "commitAuthorName": "Ada Lovelace",
            "pullRequestNumber": 42,
            "pullRequestTitle": "Login form",
            "pullRequestState": "open",
            "dirty": False,
            "remoteUrl": "https://github.com/acme/app",
        },
        **env,
    )

    # Development: one worker, as `dev` registers them.
    dev_queues = _seed_queues(cp, project_id=project_id, environment_id=development_id)
    dev_worker_id, _ = _seed_worker(
        cp,
        project_id=project_id,
        environment_id=development_id,
        queue_ids=dev_queues,
        created_at=now - timedelta(hours=1),
        version=f"{day}.1",
    )

    # Production: an older and a newer MANAGED deployment; the newer is current.
    prod_queues = _seed_queues(cp, project_id=project_id, environment_id=production_id)
    old_worker_id, old_task_ids = _seed_worker(
        cp,
        project_id=project_id,
        environment_id=production_id,
        queue_ids=prod_queues,
        created_at=now - timedelta(days=2),
        version=f"{day}.1",
    )
    old_deployment_id = insert_deployment(
        cp,
        project_id=project_id,
        environment_id=production_id,
        worker_id=old_worker_id,
        created_at=now - timedelta(days=2),
    )
    worker_id, task_ids = _seed_worker(
        cp,
        project_id=project_id,
        environment_id=production_id,
        queue_ids=prod_queues,
        created_at=now - timedelta(days=1),
        version=f"{day}.2",
    )
    deployment_id = insert_deployment(
        cp,
        project_id=project_id,
        environment_id=production_id,
        worker_id=worker_id,
        created_at=now - timedelta(days=1),
    )
    promote(cp, old_deployment_id, production_id)
    promote(cp, deployment_id, production_id)

    run = {
        "environment_id": production_id,
        "project_id": project_id,
        "organization_id": organization_id,
        "environment_type": "PRODUCTION",
    }

    # Legacy runs in the control-plane database.
    legacy_run_id = insert_run(
        cp,
        id=new_cuid(),
        status="COMPLETED_SUCCESSFULLY",
        locked_by_id=task_ids[0],
        locked_to_version_id=worker_id,
        run_tags=["user:1234"],
        created_at=now - timedelta(hours=20),
        **run,
    )
    old_short_run_id = new_cuid()
    old_short_friendly = "run_" + _random_string(_NANOID_ALPHABET, 21)
    insert_run(
        cp,
        id=old_short_run_id,
        friendly_id=old_short_friendly,
        status="COMPLETED_SUCCESSFULLY",
        task_identifier="resize-image",
        locked_by_id=old_task_ids[1],
        locked_to_version_id=old_worker_id,
        created_at=now - timedelta(days=2) + timedelta(hours=1),
        **run,
    )

    # Runs in the run-ops database.
    new_run_id = insert_run(
        ro,
        id=new_ksuid(),
        status="EXECUTING",
        locked_by_id=task_ids[0],
        locked_to_version_id=worker_id,
        **run,
    )
    legacy_in_run_ops_id = insert_run(
        ro,
        id=new_cuid(),
        status="PENDING",
        task_identifier="resize-image",
        locked_by_id=task_ids[1],
        locked_to_version_id=worker_id,
        **run,
    )

    return DemoIds(
        organization_id=organization_id,
        project_id=project_id,
        project_ref=project_ref,
        production_environment_id=production_id,
        staging_environment_id=staging_id,
        development_environment_id=development_id,
        preview_environment_id=preview_id,
        preview_branch_environment_id=branch_id,
        development_worker_id=dev_worker_id,
        production_worker_id=worker_id,
        production_deployment_id=deployment_id,
        production_task_id=task_ids[0],
        previous_production_worker_id=old_worker_id,
        previous_production_deployment_id=old_deployment_id,
        legacy_run_id=legacy_run_id,
        legacy_run_friendly_id="run_" + legacy_run_id,
        new_run_id=new_run_id,
        new_run_friendly_id="run_" + new_run_id,
        legacy_run_in_run_ops_id=legacy_in_run_ops_id,
        legacy_run_in_run_ops_friendly_id="run_" + legacy_in_run_ops_id,
        old_short_run_id=old_short_run_id,
        old_short_run_friendly_id=old_short_friendly,
    )


# ------------------------------------------------------- global feature flags


def set_feature_flag(conn: Connection[Any], key: str, value: Any) -> str:
    """Upsert the global ``"FeatureFlag"`` row ``key`` with the JSON ``value``
    (``None`` stores SQL NULL), as the platform's ``setFlag`` does; returns
    the row's id."""
    (flag_id,) = _fetch_one(
        conn,
        'INSERT INTO "FeatureFlag" ("id", "key", "value") VALUES (%s, %s, %s) '
        'ON CONFLICT ("key") DO UPDATE SET "value" = EXCLUDED."value", '
        '"updatedAt" = CURRENT_TIMESTAMP '
        'RETURNING "id"',
        (new_cuid(), key, Jsonb(value) if value is not None else None),
    )
    return str(flag_id)


def delete_feature_flag(conn: Connection[Any], key: str) -> None:
    """Delete the global ``"FeatureFlag"`` row ``key``, if there is one."""
    conn.execute('DELETE FROM "FeatureFlag" WHERE "key" = %s', (key,))


# ------------------------------------------------ run data (what cleanup deletes)
#
# One row each of the run-owned tables (schema/run_ops.sql, and their
# control-plane twins in schema/control_plane.sql). Each works on either
# database; ``updatedAt`` (NOT NULL, no default, as on the platform) is now.


def _run_row(conn: Connection[Any], table: str, defaults: dict[str, Any], overrides: Any) -> str:
    row = _columns({"id": new_cuid(), **defaults}, overrides)
    _insert(conn, table, row)
    return str(row["id"])


def insert_batch(conn: Connection[Any], *, environment_id: str, **overrides: Any) -> str:
    """Insert a ``"BatchTaskRun"`` (``friendlyId`` ``batch_…``); returns its id.
    ``checkpoint_event_id=``/``dependent_task_attempt_id=`` link a V1 batch."""
    defaults = {
        "friendlyId": "batch_" + new_cuid(),
        "runtimeEnvironmentId": environment_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "BatchTaskRun", defaults, overrides)


def insert_batch_item(
    conn: Connection[Any], *, batch_id: str, run_id: str, **overrides: Any
) -> str:
    """Insert a ``"BatchTaskRunItem"`` of ``batch_id`` for ``run_id``; returns its id."""
    defaults = {"batchTaskRunId": batch_id, "taskRunId": run_id, "updatedAt": _utcnow()}
    return _run_row(conn, "BatchTaskRunItem", defaults, overrides)


def insert_batch_error(
    conn: Connection[Any], *, batch_id: str, index: int = 0, **overrides: Any
) -> str:
    """Insert a ``"BatchTaskRunError"`` (item ``index`` of ``batch_id``); returns its id."""
    defaults = {
        "batchTaskRunId": batch_id,
        "index": index,
        "taskIdentifier": "send-email",
        "error": "payload too large",
    }
    return _run_row(conn, "BatchTaskRunError", defaults, overrides)


def insert_attempt(
    conn: Connection[Any], *, run_id: str, environment_id: str, number: int = 1, **overrides: Any
) -> str:
    """Insert a ``"TaskRunAttempt"`` ``number`` of ``run_id`` (``friendlyId``
    ``attempt_…``; worker, task and queue ids are fresh cuids unless given)."""
    defaults = {
        "number": number,
        "friendlyId": "attempt_" + new_cuid(),
        "taskRunId": run_id,
        "backgroundWorkerId": new_cuid(),
        "backgroundWorkerTaskId": new_cuid(),
        "runtimeEnvironmentId": environment_id,
        "queueId": new_cuid(),
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "TaskRunAttempt", defaults, overrides)


def insert_checkpoint(
    conn: Connection[Any],
    *,
    run_id: str,
    attempt_id: str,
    environment_id: str,
    project_id: str,
    **overrides: Any,
) -> str:
    """Insert a V1 ``"Checkpoint"`` of ``run_id``'s ``attempt_id``; returns its id."""
    defaults = {
        "friendlyId": "checkpoint_" + new_cuid(),
        "type": "DOCKER",
        "location": "/checkpoints/" + new_cuid(),
        "imageRef": "registry.local/checkpoint:" + new_cuid(),
        "runId": run_id,
        "attemptId": attempt_id,
        "projectId": project_id,
        "runtimeEnvironmentId": environment_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "Checkpoint", defaults, overrides)


def insert_checkpoint_restore_event(
    conn: Connection[Any],
    *,
    checkpoint_id: str,
    run_id: str,
    attempt_id: str,
    environment_id: str,
    project_id: str,
    **overrides: Any,
) -> str:
    """Insert a ``"CheckpointRestoreEvent"`` (type ``CHECKPOINT``); returns its id."""
    defaults = {
        "type": "CHECKPOINT",
        "checkpointId": checkpoint_id,
        "runId": run_id,
        "attemptId": attempt_id,
        "projectId": project_id,
        "runtimeEnvironmentId": environment_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "CheckpointRestoreEvent", defaults, overrides)


def insert_run_dependency(conn: Connection[Any], *, run_id: str, **overrides: Any) -> str:
    """Insert a ``"TaskRunDependency"`` of ``run_id`` (one per run);
    ``checkpoint_event_id=``, ``dependent_attempt_id=``,
    ``dependent_batch_run_id=`` link what it resumes."""
    defaults = {"taskRunId": run_id, "updatedAt": _utcnow()}
    return _run_row(conn, "TaskRunDependency", defaults, overrides)


def insert_run_checkpoint(
    conn: Connection[Any], *, environment_id: str, project_id: str, **overrides: Any
) -> str:
    """Insert a ``"TaskRunCheckpoint"`` (V2; a snapshot points at it); returns its id."""
    defaults = {
        "friendlyId": "checkpoint_" + new_cuid(),
        "type": "DOCKER",
        "location": "/checkpoints/" + new_cuid(),
        "projectId": project_id,
        "runtimeEnvironmentId": environment_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "TaskRunCheckpoint", defaults, overrides)


def insert_snapshot(
    conn: Connection[Any],
    *,
    run_id: str,
    environment_id: str,
    project_id: str,
    organization_id: str,
    **overrides: Any,
) -> str:
    """Insert a ``"TaskRunExecutionSnapshot"`` of ``run_id`` (``EXECUTING``,
    run ``EXECUTING``, environment ``PRODUCTION`` unless given);
    ``checkpoint_id=`` points it at a ``"TaskRunCheckpoint"``."""
    defaults = {
        "executionStatus": "EXECUTING",
        "description": "Run started executing",
        "runId": run_id,
        "runStatus": "EXECUTING",
        "environmentId": environment_id,
        "environmentType": "PRODUCTION",
        "projectId": project_id,
        "organizationId": organization_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "TaskRunExecutionSnapshot", defaults, overrides)


def insert_waitpoint(
    conn: Connection[Any], *, environment_id: str, project_id: str, **overrides: Any
) -> str:
    """Insert a ``"Waitpoint"`` (type ``MANUAL``, ``friendlyId`` ``waitpoint_…``,
    a generated idempotency key); ``completed_by_task_run_id=`` makes it a
    run's waitpoint. Returns its id."""
    defaults = {
        "friendlyId": "waitpoint_" + new_cuid(),
        "type": "MANUAL",
        "idempotencyKey": new_cuid(),
        "userProvidedIdempotencyKey": False,
        "projectId": project_id,
        "environmentId": environment_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "Waitpoint", defaults, overrides)


def insert_run_waitpoint(
    conn: Connection[Any], *, run_id: str, waitpoint_id: str, project_id: str, **overrides: Any
) -> str:
    """Insert a ``"TaskRunWaitpoint"``: ``run_id`` blocked by ``waitpoint_id``."""
    defaults = {
        "taskRunId": run_id,
        "waitpointId": waitpoint_id,
        "projectId": project_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "TaskRunWaitpoint", defaults, overrides)


def _has_table(conn: Connection[Any], table: str) -> bool:
    (found,) = _fetch_one(conn, "SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',))
    return bool(found)


def connect_waitpoint(conn: Connection[Any], run_id: str, waitpoint_id: str) -> None:
    """Connect a run and a waitpoint: a ``"WaitpointRunConnection"`` row in
    run-ops, a ``"_WaitpointRunConnections"`` row (``"A"`` run, ``"B"``
    waitpoint) in the control plane."""
    if _has_table(conn, "WaitpointRunConnection"):
        row = {"id": new_cuid(), "taskRunId": run_id, "waitpointId": waitpoint_id}
        _insert(conn, "WaitpointRunConnection", row)
    else:
        _insert(conn, "_WaitpointRunConnections", {"A": run_id, "B": waitpoint_id})


def complete_waitpoint(conn: Connection[Any], snapshot_id: str, waitpoint_id: str) -> None:
    """Record ``waitpoint_id`` as completed for ``snapshot_id``: a
    ``"CompletedWaitpoint"`` row in run-ops, a ``"_completedWaitpoints"`` row
    (``"A"`` snapshot, ``"B"`` waitpoint) in the control plane."""
    if _has_table(conn, "CompletedWaitpoint"):
        row = {"id": new_cuid(), "snapshotId": snapshot_id, "waitpointId": waitpoint_id}
        _insert(conn, "CompletedWaitpoint", row)
    else:
        _insert(conn, "_completedWaitpoints", {"A": snapshot_id, "B": waitpoint_id})


def insert_waitpoint_tag(
    conn: Connection[Any], *, environment_id: str, project_id: str, **overrides: Any
) -> str:
    """Insert a ``"WaitpointTag"`` (a unique name per environment); returns its id."""
    defaults = {
        "name": "tag-" + _random_string(_ALNUM, 8),
        "environmentId": environment_id,
        "projectId": project_id,
    }
    return _run_row(conn, "WaitpointTag", defaults, overrides)


def insert_run_tag(conn: Connection[Any], *, project_id: str, **overrides: Any) -> str:
    """Insert a ``"TaskRunTag"`` of the project (a unique name); returns its id."""
    defaults = {
        "name": "tag-" + _random_string(_ALNUM, 8),
        "friendlyId": "runtag_" + new_cuid(),
        "projectId": project_id,
    }
    return _run_row(conn, "TaskRunTag", defaults, overrides)


def insert_bulk_action_item(conn: Connection[Any], *, source_run_id: str, **overrides: Any) -> str:
    """Insert a ``"BulkActionItem"`` (control plane; a ``REPLAY`` of
    ``source_run_id`` in a fresh group unless ``group_id=`` is given)."""
    defaults = {
        "groupId": new_cuid(),
        "type": "REPLAY",
        "sourceRunId": source_run_id,
        "updatedAt": _utcnow(),
    }
    return _run_row(conn, "BulkActionItem", defaults, overrides)


# ------------------------------------------------------- generations and shards


@dataclass(frozen=True)
class GenerationIds:
    """The friendly ids :func:`seed_generations` wrote: a base32hex v1 run
    in the run-ops database and a gen-2 run in each shard (by shard char)."""

    v1_run_friendly_id: str
    gen2_run_friendly_ids: dict[str, str]


def seed_generations(
    control_plane: Connection[Any],
    run_ops: Connection[Any],
    shards: Mapping[str, Connection[Any]],
    ids: DemoIds,
    *,
    region: str | None = None,
) -> GenerationIds:
    """Beside :func:`seed`'s demo (whose ksuid run is legacy-shaped under
    base32hex): a v1 run in run-ops, a gen-2 run in each shard, all in the
    demo's production environment, and the organization's
    ``runOpsMintKind`` set to ``"runOpsId"`` (so MintId mints run-ops ids).
    Commits every connection."""
    from controlplane_resolver.domain.minting import new_run_ops_id, new_run_ops_id_v2

    run = {
        "environment_id": ids.production_environment_id,
        "project_id": ids.project_id,
        "organization_id": ids.organization_id,
    }
    v1 = insert_run(run_ops, id=new_run_ops_id(region), status="EXECUTING", **run)
    gen2 = {
        char: "run_" + insert_run(conn, id=new_run_ops_id_v2(char), status="PENDING", **run)
        for char, conn in shards.items()
    }
    control_plane.execute(
        'UPDATE "Organization" SET "featureFlags" = '
        """coalesce("featureFlags", '{}'::jsonb) || '{"runOpsMintKind": "runOpsId"}'::jsonb """
        'WHERE "id" = %s',
        (ids.organization_id,),
    )
    for conn in (control_plane, run_ops, *shards.values()):
        conn.commit()
    return GenerationIds(v1_run_friendly_id="run_" + v1, gen2_run_friendly_ids=gen2)
