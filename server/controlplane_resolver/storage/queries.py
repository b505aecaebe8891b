"""Every SQL statement of the serving path, by name, and the row → value
mapping (``cleanup`` keeps its own, in ``admin/cleanup_queries.py``).

The tables are the platform's, created by Prisma: quoted PascalCase table
names and quoted camelCase columns. Statements name only the columns the
answers use (no ``SELECT *``: the real tables have many more columns, and
some hold large JSON payloads). "Newest" is always ``"createdAt" DESC,
"id" DESC``, never the id alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from controlplane_resolver.domain.minting import FlagValues, MintFlags
from controlplane_resolver.domain.values import (
    AuthenticatedEnvironment,
    BackgroundWorker,
    BackgroundWorkerTask,
    Environment,
    LockedDeployment,
    LockedTask,
    LockedTaskWorker,
    LockedVersion,
    Organization,
    OrgMember,
    ParentEnvironment,
    Project,
    TaskQueue,
    TaskRun,
    User,
    WorkerDeployment,
    WorkerVersion,
)
from controlplane_resolver.storage.database import Database, PinnedConnection, Row

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- environment

_ENVIRONMENT_COLUMNS = """
    e."id", e."type"::text AS "type", e."projectId", p."organizationId", e."archivedAt",
    e."maximumConcurrencyLimit", e."concurrencyLimitBurstFactor"::text AS "burstFactor",
    parent."type"::text AS "parentType"
  FROM "RuntimeEnvironment" e
  JOIN "Project" p ON p."id" = e."projectId"
  LEFT JOIN "RuntimeEnvironment" parent ON parent."id" = e."parentEnvironmentId"
"""

ENVIRONMENT_BY_ID = f'SELECT {_ENVIRONMENT_COLUMNS} WHERE e."id" = %s'
ENVIRONMENTS_BY_IDS = f'SELECT {_ENVIRONMENT_COLUMNS} WHERE e."id" = ANY(%s)'
ENVIRONMENT_EXISTS = 'SELECT 1 AS "exists" FROM "RuntimeEnvironment" WHERE "id" = %s'


def environment_from_row(row: Row) -> Environment:
    return Environment(
        id=row["id"],
        type=row["type"],
        project_id=row["projectId"],
        organization_id=row["organizationId"],
        archived_at=row["archivedAt"],
        maximum_concurrency_limit=row["maximumConcurrencyLimit"],
        concurrency_limit_burst_factor=row["burstFactor"],
        parent_environment_type=row["parentType"],
    )


def environment(db: Database, environment_id: str) -> Environment | None:
    row = db.fetch_one(ENVIRONMENT_BY_ID, (environment_id,))
    return environment_from_row(row) if row else None


def environments(db: Database, environment_ids: Sequence[str]) -> dict[str, Environment]:
    """The environments that exist among ``environment_ids``, by id (one query)."""
    rows = db.fetch_all(ENVIRONMENTS_BY_IDS, (list(environment_ids),))
    return {row["id"]: environment_from_row(row) for row in rows}


def environment_exists(db: Database, environment_id: str) -> bool:
    return db.fetch_one(ENVIRONMENT_EXISTS, (environment_id,)) is not None


# ----------------------------------------------------- authenticated environment

AUTHENTICATED_ENVIRONMENT = """
SELECT
    e."id", e."slug", e."type"::text AS "type", e."apiKey", e."organizationId", e."projectId",
    e."orgMemberId", e."parentEnvironmentId", e."branchName", e."archivedAt", e."paused",
    e."shortcode", e."maximumConcurrencyLimit",
    e."concurrencyLimitBurstFactor"::text AS "burstFactor",
    e."builtInEnvironmentVariableOverrides", e."createdAt", e."updatedAt",
    e."isBranchableEnvironment", e."pauseSource"::text AS "pauseSource", e."git",
    p."slug" AS "projectSlug", p."name" AS "projectName", p."externalRef",
    p."organizationId" AS "projectOrganizationId", p."engine"::text AS "projectEngine",
    p."builderProjectId", p."defaultWorkerGroupId",
    o."slug" AS "orgSlug", o."title" AS "orgTitle",
    o."maximumConcurrencyLimit" AS "orgMaximumConcurrencyLimit",
    o."maximumDevQueueSize", o."maximumDeployedQueueSize", o."runsEnabled", o."featureFlags",
    o."apiRateLimiterConfig", o."batchRateLimitConfig", o."batchQueueConcurrencyConfig",
    o."streamBasinName",
    m."userId", u."displayName", u."name" AS "userName",
    pe."apiKey" AS "parentApiKey"
  FROM "RuntimeEnvironment" e
  JOIN "Project" p ON p."id" = e."projectId" AND p."deletedAt" IS NULL
  JOIN "Organization" o ON o."id" = e."organizationId"
  LEFT JOIN "OrgMember" m ON m."id" = e."orgMemberId"
  LEFT JOIN "User" u ON u."id" = m."userId"
  LEFT JOIN "RuntimeEnvironment" pe ON pe."id" = e."parentEnvironmentId"
 WHERE e."id" = %s
"""


def authenticated_environment(db: Database, environment_id: str) -> AuthenticatedEnvironment | None:
    """The environment with its relations; ``None`` when absent or when its
    project is soft-deleted."""
    r = db.fetch_one(AUTHENTICATED_ENVIRONMENT, (environment_id,))
    if r is None:
        return None
    member = None
    if r["orgMemberId"] is not None and r["userId"] is not None:
        member = OrgMember(
            id=r["orgMemberId"],
            user_id=r["userId"],
            user=User(id=r["userId"], display_name=r["displayName"], name=r["userName"]),
        )
    parent = None
    if r["parentEnvironmentId"] is not None and r["parentApiKey"] is not None:
        parent = ParentEnvironment(id=r["parentEnvironmentId"], api_key=r["parentApiKey"])
    return AuthenticatedEnvironment(
        id=r["id"],
        slug=r["slug"],
        type=r["type"],
        api_key=r["apiKey"],
        organization_id=r["organizationId"],
        project_id=r["projectId"],
        org_member_id=r["orgMemberId"],
        parent_environment_id=r["parentEnvironmentId"],
        branch_name=r["branchName"],
        archived_at=r["archivedAt"],
        paused=r["paused"],
        shortcode=r["shortcode"],
        maximum_concurrency_limit=r["maximumConcurrencyLimit"],
        concurrency_limit_burst_factor=r["burstFactor"],
        built_in_environment_variable_overrides=r["builtInEnvironmentVariableOverrides"],
        created_at=r["createdAt"],
        updated_at=r["updatedAt"],
        is_branchable_environment=r["isBranchableEnvironment"],
        pause_source=r["pauseSource"],
        project=Project(
            id=r["projectId"],
            slug=r["projectSlug"],
            name=r["projectName"],
            external_ref=r["externalRef"],
            organization_id=r["projectOrganizationId"],
            engine=r["projectEngine"],
            builder_project_id=r["builderProjectId"],
            default_worker_group_id=r["defaultWorkerGroupId"],
        ),
        organization=Organization(
            id=r["organizationId"],
            slug=r["orgSlug"],
            title=r["orgTitle"],
            maximum_concurrency_limit=r["orgMaximumConcurrencyLimit"],
            maximum_dev_queue_size=r["maximumDevQueueSize"],
            maximum_deployed_queue_size=r["maximumDeployedQueueSize"],
            runs_enabled=r["runsEnabled"],
            feature_flags=r["featureFlags"],
            api_rate_limiter_config=r["apiRateLimiterConfig"],
            batch_rate_limit_config=r["batchRateLimitConfig"],
            batch_queue_concurrency_config=r["batchQueueConcurrencyConfig"],
            stream_basin_name=r["streamBasinName"],
        ),
        org_member=member,
        parent_environment=parent,
        git=_git_object(r),
    )


def _git_object(r: Row) -> dict[str, Any] | None:
    """The environment's git metadata (see :func:`_json_object`)."""
    return _json_object(r["git"], f"environment {r['id']}")


def _json_object(value: Any, owner: str) -> dict[str, Any] | None:
    """A git metadata column, which the platform writes as a JSON object. Any
    other JSON (the column accepts it) cannot be the answer's ``Struct``:
    report it missing rather than fail the callers of ``owner``."""
    if value is None or isinstance(value, dict):
        return value
    log.warning(
        "%s has git metadata that is not a JSON object (%s); answering without it",
        owner,
        type(value).__name__,
    )
    return None


# ------------------------------------------------------------- worker version

_WORKER_COLUMNS = """
    w."id", w."friendlyId", w."engine"::text AS "engine", w."contentHash", w."sdkVersion",
    w."cliVersion", w."version", w."runtime", w."runtimeVersion", w."supportsLazyAttempts",
    w."projectId", w."runtimeEnvironmentId", w."workerGroupId", w."createdAt"
"""
_DEPLOYMENT_COLUMNS = """
    d."id", d."friendlyId", d."shortCode", d."version", d."runtime", d."runtimeVersion",
    d."status"::text AS "status", d."type"::text AS "type", d."workerId", d."createdAt"
"""

WORKER_OF_ENVIRONMENT = f"""
SELECT {_WORKER_COLUMNS} FROM "BackgroundWorker" w
 WHERE w."id" = %s AND w."runtimeEnvironmentId" = %s
"""
NEWEST_WORKER_OF_ENVIRONMENT = f"""
SELECT {_WORKER_COLUMNS} FROM "BackgroundWorker" w
 WHERE w."runtimeEnvironmentId" = %s
 ORDER BY w."createdAt" DESC, w."id" DESC
 LIMIT 1
"""
DEPLOYMENT_OF_WORKER = (
    f'SELECT {_DEPLOYMENT_COLUMNS} FROM "WorkerDeployment" d WHERE d."workerId" = %s'
)
PROMOTED_DEPLOYMENT = f"""
SELECT {_DEPLOYMENT_COLUMNS} FROM "WorkerDeploymentPromotion" pr
  JOIN "WorkerDeployment" d ON d."id" = pr."deploymentId"
 WHERE pr."environmentId" = %s AND pr."label" = %s
"""
NEWEST_MANAGED_DEPLOYMENT = f"""
SELECT {_DEPLOYMENT_COLUMNS} FROM "WorkerDeployment" d
 WHERE d."environmentId" = %s AND d."type" = 'MANAGED'
 ORDER BY d."createdAt" DESC, d."id" DESC
 LIMIT 1
"""
WORKER_BY_ID = f'SELECT {_WORKER_COLUMNS} FROM "BackgroundWorker" w WHERE w."id" = %s'
TASKS_OF_WORKER = """
SELECT t."id", t."slug", t."filePath", t."exportName", t."workerId", t."machineConfig",
       t."retryConfig", t."queueConfig", t."queueId"
  FROM "BackgroundWorkerTask" t
 WHERE t."workerId" = %s
 ORDER BY t."slug"
"""
QUEUES_OF_WORKER = """
SELECT q."id", q."friendlyId", q."name", q."type"::text AS "type", q."concurrencyLimit", q."paused"
  FROM "_BackgroundWorkerToTaskQueue" link
  JOIN "TaskQueue" q ON q."id" = link."B"
 WHERE link."A" = %s
 ORDER BY q."name"
"""

PROMOTION_LABEL = "current"


def worker_from_row(r: Row) -> BackgroundWorker:
    return BackgroundWorker(
        id=r["id"],
        friendly_id=r["friendlyId"],
        engine=r["engine"],
        content_hash=r["contentHash"],
        sdk_version=r["sdkVersion"],
        cli_version=r["cliVersion"],
        version=r["version"],
        runtime=r["runtime"],
        runtime_version=r["runtimeVersion"],
        supports_lazy_attempts=r["supportsLazyAttempts"],
        project_id=r["projectId"],
        runtime_environment_id=r["runtimeEnvironmentId"],
        worker_group_id=r["workerGroupId"],
        created_at=r["createdAt"],
    )


def deployment_from_row(r: Row) -> WorkerDeployment:
    return WorkerDeployment(
        id=r["id"],
        friendly_id=r["friendlyId"],
        short_code=r["shortCode"],
        version=r["version"],
        runtime=r["runtime"],
        runtime_version=r["runtimeVersion"],
        status=r["status"],
        type=r["type"],
        worker_id=r["workerId"],
        created_at=r["createdAt"],
    )


def worker_version(
    db: Database, environment_id: str, environment_type: str, worker_id: str | None
) -> WorkerVersion | None:
    """The worker version runs of an environment execute on (docs/design.md,
    "Control-plane answers"), branch by branch as the platform's resolver:

    * a worker id: that worker (it must belong to the environment) with the
      deployment whose worker it is, whatever the type (``DEVELOPMENT`` too);
    * ``DEVELOPMENT`` without one: the environment's newest worker, no deployment;
    * otherwise the deployment promoted ``current`` (none, or one without a
      worker: ``None``); one that is not ``MANAGED`` is replaced by the
      environment's newest ``MANAGED`` deployment (``None`` when that one has
      no worker yet: an older one never stands in for it).

    Returns ``None`` when any step finds nothing. All reads use one connection.
    """
    with db.connection() as conn:

        def one(sql: str, *params: Any) -> Row | None:
            return conn.execute(sql, params).fetchone()

        deployment_row: Row | None = None
        if worker_id:
            worker_row = one(WORKER_OF_ENVIRONMENT, worker_id, environment_id)
            if worker_row is not None:
                deployment_row = one(DEPLOYMENT_OF_WORKER, worker_id)
        elif environment_type == "DEVELOPMENT":
            worker_row = one(NEWEST_WORKER_OF_ENVIRONMENT, environment_id)
        else:
            deployment_row = one(PROMOTED_DEPLOYMENT, environment_id, PROMOTION_LABEL)
            if deployment_row is None or deployment_row["workerId"] is None:
                return None
            if deployment_row["type"] != "MANAGED":
                deployment_row = one(NEWEST_MANAGED_DEPLOYMENT, environment_id)
                if deployment_row is None or deployment_row["workerId"] is None:
                    return None
            worker_row = one(WORKER_BY_ID, deployment_row["workerId"])
        if worker_row is None:
            return None
        tasks = conn.execute(TASKS_OF_WORKER, (worker_row["id"],)).fetchall()
        queues = conn.execute(QUEUES_OF_WORKER, (worker_row["id"],)).fetchall()
    return WorkerVersion(
        worker=worker_from_row(worker_row),
        tasks=tuple(
            BackgroundWorkerTask(
                id=t["id"],
                slug=t["slug"],
                file_path=t["filePath"],
                export_name=t["exportName"],
                worker_id=t["workerId"],
                machine_config=t["machineConfig"],
                retry_config=t["retryConfig"],
                queue_config=t["queueConfig"],
                queue_id=t["queueId"],
            )
            for t in tasks
        ),
        queues=tuple(
            TaskQueue(
                id=q["id"],
                friendly_id=q["friendlyId"],
                name=q["name"],
                type=q["type"],
                concurrency_limit=q["concurrencyLimit"],
                paused=q["paused"],
            )
            for q in queues
        ),
        deployment=deployment_from_row(deployment_row) if deployment_row else None,
    )


# ------------------------------------------------------------------------ runs

#: (TaskRun field, column expression) in TaskRun's field order: rows come
#: back as tuples in this order and become TaskRuns by these names (tuple
#: rows and a kept cursor cost about two thirds of dict rows on a new cursor
#: per query; ReadRun runs this statement more than any other).
RUN_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", '"id"'),
    ("friendly_id", '"friendlyId"'),
    ("status", '"status"::text'),
    ("task_identifier", '"taskIdentifier"'),
    ("runtime_environment_id", '"runtimeEnvironmentId"'),
    ("environment_type", '"environmentType"::text'),
    ("project_id", '"projectId"'),
    ("organization_id", '"organizationId"'),
    ("queue", '"queue"'),
    ("locked_by_id", '"lockedById"'),
    ("locked_to_version_id", '"lockedToVersionId"'),
    ("run_tags", '"runTags"'),
    ("batch_id", '"batchId"'),
    ("parent_task_run_id", '"parentTaskRunId"'),
    ("root_task_run_id", '"rootTaskRunId"'),
    ("idempotency_key", '"idempotencyKey"'),
    ("engine", '"engine"::text'),
    ("created_at", '"createdAt"'),
    ("updated_at", '"updatedAt"'),
)
_RUN_COLUMNS = ", ".join(expr for _field, expr in RUN_FIELDS)
_RUN_FIELD_NAMES = tuple(f for f, _ in RUN_FIELDS)
# Each id list is one text parameter holding an array literal
# (:func:`text_array`): psycopg dumps a string in C but a list element by
# element in Python, about a fifth of its work for a read of one id.
RUNS_BY_IDS = f'SELECT {_RUN_COLUMNS} FROM "TaskRun" WHERE "id" = ANY(%s::text[])'
RUNS_BY_FRIENDLY_IDS = f'SELECT {_RUN_COLUMNS} FROM "TaskRun" WHERE "friendlyId" = ANY(%s::text[])'
RUNS_BY_EITHER = f"{RUNS_BY_IDS} UNION ALL {RUNS_BY_FRIENDLY_IDS}"


def text_array(values: Sequence[str]) -> str:
    """``values`` as a PostgreSQL array literal (for a ``%s::text[]``
    parameter): every element quoted, so any string reads back unchanged."""
    quoted = ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
    return "{" + ",".join(quoted) + "}"


def run_from_tuple(t: tuple[Any, ...]) -> TaskRun:
    """A TaskRun from a row of ``RUN_FIELDS`` columns, equal to the one its
    constructor makes from the same values."""
    # Filled in through its __dict__: a frozen dataclass's __init__ sets each
    # of the 19 fields with a call of object.__setattr__, which cost twice
    # what this does. text[] arrives as a list; TaskRun is immutable, so its
    # tags are a tuple.
    values = dict(zip(_RUN_FIELD_NAMES, t))
    values["run_tags"] = tuple(values["run_tags"] or ())
    run = object.__new__(TaskRun)
    object.__setattr__(run, "__dict__", values)
    return run


def runs(
    db: Database | PinnedConnection, ids: Sequence[str], friendly_ids: Sequence[str]
) -> list[TaskRun]:
    """Runs matching any of ``ids`` (by ``"id"``) or ``friendly_ids`` (one query)."""
    if ids and friendly_ids:
        rows = db.fetch_tuples(RUNS_BY_EITHER, (text_array(ids), text_array(friendly_ids)))
    elif ids or friendly_ids:
        rows = db.fetch_tuples(
            RUNS_BY_IDS if ids else RUNS_BY_FRIENDLY_IDS, (text_array(ids or friendly_ids),)
        )
    else:
        return []
    return [run_from_tuple(r) for r in rows]


# ------------------------------------------------------------ locked worker

LOCKED_TASK = """
SELECT t."id", t."slug", t."filePath", t."exportName", t."machineConfig",
       w."id" AS "workerId", w."version" AS "workerVersion", w."sdkVersion", w."cliVersion",
       w."supportsLazyAttempts",
       d."friendlyId" AS "deploymentFriendlyId", d."shortCode" AS "deploymentShortCode",
       d."version" AS "deploymentVersion", d."runtime" AS "deploymentRuntime",
       d."runtimeVersion" AS "deploymentRuntimeVersion", d."git" AS "deploymentGit"
  FROM "BackgroundWorkerTask" t
  JOIN "BackgroundWorker" w ON w."id" = t."workerId"
  LEFT JOIN "WorkerDeployment" d ON d."workerId" = w."id"
 WHERE t."id" = %s
"""
LOCKED_VERSION = """
SELECT "version", "sdkVersion", "runtime", "runtimeVersion", "supportsLazyAttempts"
  FROM "BackgroundWorker"
 WHERE "id" = %s
"""


def locked_task(db: Database, task_id: str) -> LockedTask | None:
    """The task, its worker and the worker's deployment summary (``None``
    when the worker has none); ``None`` when the task does not exist."""
    r = db.fetch_one(LOCKED_TASK, (task_id,))
    if r is None:
        return None
    deployment = None
    # "WorkerDeployment"."workerId" is unique: at most one row joins.
    if r["deploymentFriendlyId"] is not None:
        deployment = LockedDeployment(
            friendly_id=r["deploymentFriendlyId"],
            short_code=r["deploymentShortCode"],
            version=r["deploymentVersion"],
            runtime=r["deploymentRuntime"],
            runtime_version=r["deploymentRuntimeVersion"],
            git=_json_object(r["deploymentGit"], f"deployment {r['deploymentFriendlyId']}"),
        )
    return LockedTask(
        id=r["id"],
        slug=r["slug"],
        file_path=r["filePath"],
        export_name=r["exportName"],
        machine_config=r["machineConfig"],
        worker=LockedTaskWorker(
            id=r["workerId"],
            version=r["workerVersion"],
            sdk_version=r["sdkVersion"],
            cli_version=r["cliVersion"],
            supports_lazy_attempts=r["supportsLazyAttempts"],
        ),
        deployment=deployment,
    )


def locked_version(db: Database, worker_id: str) -> LockedVersion | None:
    """The worker version a run is locked to; ``None`` when it does not exist."""
    r = db.fetch_one(LOCKED_VERSION, (worker_id,))
    if r is None:
        return None
    return LockedVersion(
        version=r["version"],
        sdk_version=r["sdkVersion"],
        runtime=r["runtime"],
        runtime_version=r["runtimeVersion"],
        supports_lazy_attempts=r["supportsLazyAttempts"],
    )


# ------------------------------------------------------------------ feature flags

# One round trip reads both places the platform's makeFlag reads: the
# organization's override and the global "FeatureFlag" row. Only a JSON string
# can parse to an allowed value, so anything else is answered as NULL; the
# rest of "featureFlags" never leaves the database.
FEATURE_FLAG_VALUES = """
SELECT
  (SELECT CASE WHEN jsonb_typeof(o."featureFlags" -> %s) = 'string'
               THEN o."featureFlags" ->> %s END
     FROM "Organization" o WHERE o."id" = %s) AS "organization",
  (SELECT CASE WHEN jsonb_typeof(f."value") = 'string' THEN f."value" #>> '{}' END
     FROM "FeatureFlag" f WHERE f."key" = %s) AS "global"
"""


def feature_flag_values(db: Database, organization_id: str, key: str) -> FlagValues:
    """The flag ``key`` of the organization (``None`` when unset, not a JSON
    string, or the organization does not exist) and of the global
    ``"FeatureFlag"`` row (``None`` when there is none, or not a JSON string)."""
    r = db.fetch_one(FEATURE_FLAG_VALUES, (key, key, organization_id, key))
    if r is None:  # a SELECT without FROM always answers one row
        return FlagValues(organization=None, global_value=None)
    return FlagValues(organization=r["organization"], global_value=r["global"])


# The base32hex generation's flag records: the organization's values of the
# mint keys (and its shard override), and the global rows of the mint keys,
# each as one JSON object of only those keys.
MINT_FLAGS = """
SELECT
  (SELECT jsonb_object_agg(e."key", e."value")
     FROM "Organization" o, jsonb_each(
       CASE WHEN jsonb_typeof(o."featureFlags") = 'object' THEN o."featureFlags"
            ELSE '{}'::jsonb END) e
    WHERE o."id" = %s AND e."key" = ANY(%s)) AS "organization",
  (SELECT jsonb_object_agg(f."key", f."value")
     FROM "FeatureFlag" f WHERE f."key" = ANY(%s)) AS "global"
"""


def mint_flags(
    db: Database, organization_id: str, org_keys: Sequence[str], global_keys: Sequence[str]
) -> MintFlags:
    """The organization's ``featureFlags`` values of ``org_keys`` and the
    global ``"FeatureFlag"`` values of ``global_keys`` (missing keys absent)."""
    r = db.fetch_one(MINT_FLAGS, (organization_id, list(org_keys), list(global_keys)))
    if r is None:  # a SELECT without FROM always answers one row
        return MintFlags(organization={}, global_flags={})
    return MintFlags(
        organization=dict(r["organization"] or {}), global_flags=dict(r["global"] or {})
    )
