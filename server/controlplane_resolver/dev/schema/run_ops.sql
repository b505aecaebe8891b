-- Run-ops database: where new runs live (shared/spec/schema.md, "Run-ops
-- database"). "TaskRun" has the same columns as in the control-plane
-- database, but its references to control-plane rows (environment, project,
-- organization, locked task and worker version) are plain columns with NO
-- foreign keys: those rows live in the other database, which is why engine
-- nodes need the resolver.
--
-- A plain script of CREATE statements: the caller wraps it in a transaction.

CREATE TYPE "RunEngineVersion" AS ENUM ('V1', 'V2');

CREATE TYPE "RuntimeEnvironmentType" AS ENUM ('PRODUCTION', 'STAGING', 'DEVELOPMENT', 'PREVIEW');

CREATE TYPE "TaskRunStatus" AS ENUM (
    'DELAYED', 'PENDING', 'PENDING_VERSION', 'WAITING_FOR_DEPLOY', 'DEQUEUED',
    'EXECUTING', 'WAITING_TO_RESUME', 'RETRYING_AFTER_FAILURE', 'PAUSED',
    'CANCELED', 'INTERRUPTED', 'COMPLETED_SUCCESSFULLY', 'COMPLETED_WITH_ERRORS',
    'SYSTEM_FAILURE', 'CRASHED', 'EXPIRED', 'TIMED_OUT'
);

CREATE TABLE "TaskRun" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "engine" "RunEngineVersion" NOT NULL DEFAULT 'V2',
    "status" "TaskRunStatus" NOT NULL DEFAULT 'PENDING',
    "taskIdentifier" TEXT NOT NULL,
    "runtimeEnvironmentId" TEXT NOT NULL,
    "environmentType" "RuntimeEnvironmentType",
    "projectId" TEXT NOT NULL,
    "organizationId" TEXT,
    "queue" TEXT NOT NULL,
    "lockedById" TEXT,
    "lockedToVersionId" TEXT,
    "runTags" TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[],
    "batchId" TEXT,
    "parentTaskRunId" TEXT,
    "rootTaskRunId" TEXT,
    "idempotencyKey" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "TaskRun_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "TaskRun_friendlyId_key" ON "TaskRun"("friendlyId");

CREATE INDEX "TaskRun_runtimeEnvironmentId_idx" ON "TaskRun"("runtimeEnvironmentId");
