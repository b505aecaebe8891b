"""Every SQL statement the resolver runs, by name, and the row → value
mapping.

The tables are the platform's, created by Prisma: quoted PascalCase table
names and quoted camelCase columns. Statements name only the columns the
answers use (no ``SELECT *``: the real tables have many more columns, and
some hold large JSON payloads). "Newest" is always ``"createdAt" DESC,
"id" DESC``, never the id alone.
"""

from __future__ import annotations

from typing import Any, Sequence

from .database import Database, Row
from .model import (
    AuthenticatedEnvironment,
    BackgroundWorker,
    BackgroundWorkerTask,
    Environment,
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
ENVIRONMENT_TYPE = 'SELECT "type"::text AS "type" FROM "RuntimeEnvironment" WHERE "id" = %s'


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


def environment_type(db: Database, environment_id: str) -> str | None:
    row = db.fetch_one(ENVIRONMENT_TYPE, (environment_id,))
    return row["type"] if row else None


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
        member = OrgMember(id=r["orgMemberId"], user_id=r["userId"],
                           user=User(id=r["userId"], display_name=r["displayName"],
                                     name=r["userName"]))
    parent = None
    if r["parentEnvironmentId"] is not None and r["parentApiKey"] is not None:
        parent = ParentEnvironment(id=r["parentEnvironmentId"], api_key=r["parentApiKey"])
    return AuthenticatedEnvironment(
        id=r["id"], slug=r["slug"], type=r["type"], api_key=r["apiKey"],
        organization_id=r["organizationId"], project_id=r["projectId"],
        org_member_id=r["orgMemberId"], parent_environment_id=r["parentEnvironmentId"],
        branch_name=r["branchName"], archived_at=r["archivedAt"], paused=r["paused"],
        shortcode=r["shortcode"], maximum_concurrency_limit=r["maximumConcurrencyLimit"],
        concurrency_limit_burst_factor=r["burstFactor"],
        built_in_environment_variable_overrides=r["builtInEnvironmentVariableOverrides"],
        created_at=r["createdAt"], updated_at=r["updatedAt"],
        is_branchable_environment=r["isBranchableEnvironment"], pause_source=r["pauseSource"],
        project=Project(id=r["projectId"], slug=r["projectSlug"], name=r["projectName"],
                        external_ref=r["externalRef"],
                        organization_id=r["projectOrganizationId"], engine=r["projectEngine"],
                        builder_project_id=r["builderProjectId"],
                        default_worker_group_id=r["defaultWorkerGroupId"]),
        organization=Organization(
            id=r["organizationId"], slug=r["orgSlug"], title=r["orgTitle"],
            maximum_concurrency_limit=r["orgMaximumConcurrencyLimit"],
            maximum_dev_queue_size=r["maximumDevQueueSize"],
            maximum_deployed_queue_size=r["maximumDeployedQueueSize"],
            runs_enabled=r["runsEnabled"], feature_flags=r["featureFlags"],
            api_rate_limiter_config=r["apiRateLimiterConfig"],
            batch_rate_limit_config=r["batchRateLimitConfig"],
            batch_queue_concurrency_config=r["batchQueueConcurrencyConfig"],
            stream_basin_name=r["streamBasinName"]),
        org_member=member,
        parent_environment=parent,
        git=r["git"],
    )


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
DEPLOYMENT_OF_WORKER = f'SELECT {_DEPLOYMENT_COLUMNS} FROM "WorkerDeployment" d WHERE d."workerId" = %s'
PROMOTED_DEPLOYMENT = f"""
SELECT {_DEPLOYMENT_COLUMNS} FROM "WorkerDeploymentPromotion" pr
  JOIN "WorkerDeployment" d ON d."id" = pr."deploymentId"
 WHERE pr."environmentId" = %s AND pr."label" = %s
"""
NEWEST_MANAGED_DEPLOYMENT_WITH_WORKER = f"""
SELECT {_DEPLOYMENT_COLUMNS} FROM "WorkerDeployment" d
 WHERE d."environmentId" = %s AND d."type" = 'MANAGED' AND d."workerId" IS NOT NULL
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
        id=r["id"], friendly_id=r["friendlyId"], engine=r["engine"], content_hash=r["contentHash"],
        sdk_version=r["sdkVersion"], cli_version=r["cliVersion"], version=r["version"],
        runtime=r["runtime"], runtime_version=r["runtimeVersion"],
        supports_lazy_attempts=r["supportsLazyAttempts"], project_id=r["projectId"],
        runtime_environment_id=r["runtimeEnvironmentId"], worker_group_id=r["workerGroupId"],
        created_at=r["createdAt"])


def deployment_from_row(r: Row) -> WorkerDeployment:
    return WorkerDeployment(
        id=r["id"], friendly_id=r["friendlyId"], short_code=r["shortCode"], version=r["version"],
        runtime=r["runtime"], runtime_version=r["runtimeVersion"], status=r["status"],
        type=r["type"], worker_id=r["workerId"], created_at=r["createdAt"])


def worker_version(db: Database, environment_id: str, environment_type: str,
                   worker_id: str | None) -> WorkerVersion | None:
    """The worker version runs of an environment execute on (spec section 5).

    * ``DEVELOPMENT``: the given worker, else the environment's newest; no deployment.
    * a worker id: that worker (it must belong to the environment) with its deployment.
    * otherwise the deployment promoted as ``current``; if it is not ``MANAGED``,
      the newest ``MANAGED`` deployment that has a worker.

    Returns ``None`` when any step finds nothing. All reads use one connection.
    """
    with db.connection() as conn:
        def one(sql: str, *params: Any) -> Row | None:
            return conn.execute(sql, params).fetchone()

        deployment_row: Row | None = None
        if environment_type == "DEVELOPMENT":
            worker_row = (one(WORKER_OF_ENVIRONMENT, worker_id, environment_id) if worker_id
                          else one(NEWEST_WORKER_OF_ENVIRONMENT, environment_id))
        elif worker_id:
            worker_row = one(WORKER_OF_ENVIRONMENT, worker_id, environment_id)
            if worker_row is not None:
                deployment_row = one(DEPLOYMENT_OF_WORKER, worker_id)
        else:
            deployment_row = one(PROMOTED_DEPLOYMENT, environment_id, PROMOTION_LABEL)
            if deployment_row is None or deployment_row["workerId"] is None:
                return None
            if deployment_row["type"] != "MANAGED":
                deployment_row = one(NEWEST_MANAGED_DEPLOYMENT_WITH_WORKER, environment_id)
                if deployment_row is None:
                    return None
            worker_row = one(WORKER_BY_ID, deployment_row["workerId"])
        if worker_row is None:
            return None
        tasks = conn.execute(TASKS_OF_WORKER, (worker_row["id"],)).fetchall()
        queues = conn.execute(QUEUES_OF_WORKER, (worker_row["id"],)).fetchall()
    return WorkerVersion(
        worker=worker_from_row(worker_row),
        tasks=tuple(BackgroundWorkerTask(
            id=t["id"], slug=t["slug"], file_path=t["filePath"], export_name=t["exportName"],
            worker_id=t["workerId"], machine_config=t["machineConfig"],
            retry_config=t["retryConfig"], queue_config=t["queueConfig"], queue_id=t["queueId"])
            for t in tasks),
        queues=tuple(TaskQueue(
            id=q["id"], friendly_id=q["friendlyId"], name=q["name"], type=q["type"],
            concurrency_limit=q["concurrencyLimit"], paused=q["paused"]) for q in queues),
        deployment=deployment_from_row(deployment_row) if deployment_row else None,
    )


# ------------------------------------------------------------------------ runs

_RUN_COLUMNS = """
    "id", "friendlyId", "status"::text AS "status", "taskIdentifier", "runtimeEnvironmentId",
    "environmentType"::text AS "environmentType", "projectId", "organizationId", "queue",
    "lockedById", "lockedToVersionId", "runTags", "batchId", "parentTaskRunId",
    "rootTaskRunId", "idempotencyKey", "engine"::text AS "engine", "createdAt", "updatedAt"
"""
RUN_BY_ID = f'SELECT {_RUN_COLUMNS} FROM "TaskRun" WHERE "id" = %s'
RUN_BY_FRIENDLY_ID = f'SELECT {_RUN_COLUMNS} FROM "TaskRun" WHERE "friendlyId" = %s'
RUNS_BY_IDS = f"""
SELECT {_RUN_COLUMNS} FROM "TaskRun" WHERE "id" = ANY(%s)
UNION ALL
SELECT {_RUN_COLUMNS} FROM "TaskRun" WHERE "friendlyId" = ANY(%s)
"""


def run_from_row(r: Row) -> TaskRun:
    return TaskRun(
        id=r["id"], friendly_id=r["friendlyId"], status=r["status"],
        task_identifier=r["taskIdentifier"], runtime_environment_id=r["runtimeEnvironmentId"],
        environment_type=r["environmentType"], project_id=r["projectId"],
        organization_id=r["organizationId"], queue=r["queue"], locked_by_id=r["lockedById"],
        locked_to_version_id=r["lockedToVersionId"], run_tags=tuple(r["runTags"] or ()),
        batch_id=r["batchId"], parent_task_run_id=r["parentTaskRunId"],
        root_task_run_id=r["rootTaskRunId"], idempotency_key=r["idempotencyKey"],
        engine=r["engine"], created_at=r["createdAt"], updated_at=r["updatedAt"])


def run(db: Database, run_id: str, *, by_friendly_id: bool) -> TaskRun | None:
    row = db.fetch_one(RUN_BY_FRIENDLY_ID if by_friendly_id else RUN_BY_ID, (run_id,))
    return run_from_row(row) if row else None


def runs(db: Database, ids: Sequence[str], friendly_ids: Sequence[str]) -> list[TaskRun]:
    """Runs matching any of ``ids`` (by ``"id"``) or ``friendly_ids`` (one query)."""
    rows = db.fetch_all(RUNS_BY_IDS, (list(ids), list(friendly_ids)))
    return [run_from_row(r) for r in rows]
