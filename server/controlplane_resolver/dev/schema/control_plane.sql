-- Control-plane database: a compatible subset of the platform's Prisma schema
-- (shared/spec/schema.md). Table and column names are the platform's own
-- (quoted PascalCase tables, quoted camelCase columns); constraint and index
-- names follow Prisma's conventions. Used by dev mode and the tests only: the
-- resolver itself reads a live control-plane database and tolerates the many
-- tables and columns this file leaves out.
--
-- A plain script of CREATE statements: the caller wraps it in a transaction.

-- ------------------------------------------------------------------ enums

CREATE TYPE "RunEngineVersion" AS ENUM ('V1', 'V2');

CREATE TYPE "RuntimeEnvironmentType" AS ENUM ('PRODUCTION', 'STAGING', 'DEVELOPMENT', 'PREVIEW');

CREATE TYPE "EnvironmentPauseSource" AS ENUM ('BILLING_LIMIT');

CREATE TYPE "TaskQueueType" AS ENUM ('VIRTUAL', 'NAMED');

CREATE TYPE "WorkerDeploymentStatus" AS ENUM (
    'PENDING', 'INSTALLING', 'BUILDING', 'DEPLOYING', 'DEPLOYED', 'FAILED',
    'CANCELED', 'TIMED_OUT'
);

CREATE TYPE "WorkerDeploymentType" AS ENUM ('MANAGED', 'UNMANAGED', 'V1');

CREATE TYPE "TaskRunStatus" AS ENUM (
    'DELAYED', 'PENDING', 'PENDING_VERSION', 'WAITING_FOR_DEPLOY', 'DEQUEUED',
    'EXECUTING', 'WAITING_TO_RESUME', 'RETRYING_AFTER_FAILURE', 'PAUSED',
    'CANCELED', 'INTERRUPTED', 'COMPLETED_SUCCESSFULLY', 'COMPLETED_WITH_ERRORS',
    'SYSTEM_FAILURE', 'CRASHED', 'EXPIRED', 'TIMED_OUT'
);

-- ------------------------------------------------------------------ tables

CREATE TABLE "User" (
    "id" TEXT NOT NULL,
    "displayName" TEXT,
    "name" TEXT,

    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "Organization" (
    "id" TEXT NOT NULL,
    "slug" TEXT NOT NULL,
    "title" TEXT NOT NULL,
    "maximumConcurrencyLimit" INTEGER NOT NULL DEFAULT 10,
    "maximumDevQueueSize" INTEGER,
    "maximumDeployedQueueSize" INTEGER,
    "runsEnabled" BOOLEAN NOT NULL DEFAULT true,
    "featureFlags" JSONB,
    "apiRateLimiterConfig" JSONB,
    "batchRateLimitConfig" JSONB,
    "batchQueueConcurrencyConfig" JSONB,
    "streamBasinName" TEXT,
    "deletedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Organization_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "OrgMember" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "organizationId" TEXT NOT NULL,

    CONSTRAINT "OrgMember_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "Project" (
    "id" TEXT NOT NULL,
    "slug" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "externalRef" TEXT NOT NULL,
    "organizationId" TEXT NOT NULL,
    "deletedAt" TIMESTAMP(3),
    "engine" "RunEngineVersion" NOT NULL DEFAULT 'V2',
    "builderProjectId" TEXT,
    "defaultWorkerGroupId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Project_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "RuntimeEnvironment" (
    "id" TEXT NOT NULL,
    "slug" TEXT NOT NULL,
    "apiKey" TEXT NOT NULL,
    "pkApiKey" TEXT NOT NULL,
    "type" "RuntimeEnvironmentType" NOT NULL DEFAULT 'DEVELOPMENT',
    "isBranchableEnvironment" BOOLEAN NOT NULL DEFAULT false,
    "branchName" TEXT,
    "parentEnvironmentId" TEXT,
    "git" JSONB,
    "archivedAt" TIMESTAMP(3),
    "shortcode" TEXT NOT NULL,
    "maximumConcurrencyLimit" INTEGER NOT NULL DEFAULT 5,
    "concurrencyLimitBurstFactor" DECIMAL(4,2) NOT NULL DEFAULT 2.00,
    "paused" BOOLEAN NOT NULL DEFAULT false,
    "pauseSource" "EnvironmentPauseSource",
    "organizationId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "orgMemberId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "builtInEnvironmentVariableOverrides" JSONB,

    CONSTRAINT "RuntimeEnvironment_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "BackgroundWorker" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "engine" "RunEngineVersion" NOT NULL DEFAULT 'V2',
    "contentHash" TEXT NOT NULL,
    "sdkVersion" TEXT NOT NULL,
    "cliVersion" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "runtimeEnvironmentId" TEXT NOT NULL,
    "version" TEXT NOT NULL,
    "metadata" JSONB NOT NULL,
    "runtime" TEXT,
    "runtimeVersion" TEXT,
    "supportsLazyAttempts" BOOLEAN NOT NULL DEFAULT false,
    "workerGroupId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "BackgroundWorker_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "TaskQueue" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "type" "TaskQueueType" NOT NULL DEFAULT 'VIRTUAL',
    "runtimeEnvironmentId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "concurrencyLimit" INTEGER,
    "paused" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "TaskQueue_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "BackgroundWorkerTask" (
    "id" TEXT NOT NULL,
    "slug" TEXT NOT NULL,
    "filePath" TEXT NOT NULL,
    "exportName" TEXT,
    "workerId" TEXT NOT NULL,
    "runtimeEnvironmentId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "machineConfig" JSONB,
    "retryConfig" JSONB,
    "queueConfig" JSONB,
    "queueId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "BackgroundWorkerTask_pkey" PRIMARY KEY ("id")
);

-- Prisma's implicit many-to-many join table: "A" is the BackgroundWorker id,
-- "B" the TaskQueue id.
CREATE TABLE "_BackgroundWorkerToTaskQueue" (
    "A" TEXT NOT NULL,
    "B" TEXT NOT NULL
);

CREATE TABLE "WorkerDeployment" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "shortCode" TEXT NOT NULL,
    "version" TEXT NOT NULL,
    "runtime" TEXT,
    "runtimeVersion" TEXT,
    "status" "WorkerDeploymentStatus" NOT NULL DEFAULT 'PENDING',
    "type" "WorkerDeploymentType" NOT NULL DEFAULT 'MANAGED',
    "environmentId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "workerId" TEXT,
    "git" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "WorkerDeployment_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "WorkerDeploymentPromotion" (
    "id" TEXT NOT NULL,
    "label" TEXT NOT NULL,
    "deploymentId" TEXT NOT NULL,
    "environmentId" TEXT NOT NULL,

    CONSTRAINT "WorkerDeploymentPromotion_pkey" PRIMARY KEY ("id")
);

-- Legacy runs. "lockedById" (a BackgroundWorkerTask) and "lockedToVersionId"
-- (a BackgroundWorker) are deliberately plain columns here, as are the batch,
-- parent and root references and "organizationId": the same rows are seeded
-- into the run-ops database, where nothing is a foreign key.
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

-- ------------------------------------------------------------------ indexes

CREATE UNIQUE INDEX "RuntimeEnvironment_apiKey_key" ON "RuntimeEnvironment"("apiKey");

CREATE UNIQUE INDEX "RuntimeEnvironment_pkApiKey_key" ON "RuntimeEnvironment"("pkApiKey");

CREATE UNIQUE INDEX "RuntimeEnvironment_projectId_shortcode_key" ON "RuntimeEnvironment"("projectId", "shortcode");

CREATE INDEX "RuntimeEnvironment_parentEnvironmentId_idx" ON "RuntimeEnvironment"("parentEnvironmentId");

CREATE UNIQUE INDEX "BackgroundWorker_projectId_runtimeEnvironmentId_version_key" ON "BackgroundWorker"("projectId", "runtimeEnvironmentId", "version");

-- "Newest worker of an environment": ORDER BY "createdAt" DESC, "id" DESC.
CREATE INDEX "BackgroundWorker_runtimeEnvironmentId_createdAt_idx" ON "BackgroundWorker"("runtimeEnvironmentId", "createdAt" DESC, "id" DESC);

CREATE UNIQUE INDEX "BackgroundWorkerTask_workerId_slug_key" ON "BackgroundWorkerTask"("workerId", "slug");

CREATE INDEX "BackgroundWorkerTask_workerId_idx" ON "BackgroundWorkerTask"("workerId");

CREATE UNIQUE INDEX "TaskQueue_runtimeEnvironmentId_name_key" ON "TaskQueue"("runtimeEnvironmentId", "name");

CREATE UNIQUE INDEX "_BackgroundWorkerToTaskQueue_AB_unique" ON "_BackgroundWorkerToTaskQueue"("A", "B");

CREATE INDEX "_BackgroundWorkerToTaskQueue_B_index" ON "_BackgroundWorkerToTaskQueue"("B");

CREATE UNIQUE INDEX "WorkerDeployment_workerId_key" ON "WorkerDeployment"("workerId");

-- "Newest MANAGED deployment of an environment": ORDER BY "createdAt" DESC, "id" DESC.
CREATE INDEX "WorkerDeployment_environmentId_type_createdAt_idx" ON "WorkerDeployment"("environmentId", "type", "createdAt" DESC, "id" DESC);

CREATE UNIQUE INDEX "WorkerDeploymentPromotion_environmentId_label_key" ON "WorkerDeploymentPromotion"("environmentId", "label");

CREATE UNIQUE INDEX "TaskRun_friendlyId_key" ON "TaskRun"("friendlyId");

CREATE INDEX "TaskRun_runtimeEnvironmentId_idx" ON "TaskRun"("runtimeEnvironmentId");

-- ------------------------------------------------------------------ foreign keys

ALTER TABLE "OrgMember" ADD CONSTRAINT "OrgMember_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "OrgMember" ADD CONSTRAINT "OrgMember_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "Project" ADD CONSTRAINT "Project_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "RuntimeEnvironment" ADD CONSTRAINT "RuntimeEnvironment_parentEnvironmentId_fkey" FOREIGN KEY ("parentEnvironmentId") REFERENCES "RuntimeEnvironment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "RuntimeEnvironment" ADD CONSTRAINT "RuntimeEnvironment_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "RuntimeEnvironment" ADD CONSTRAINT "RuntimeEnvironment_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "RuntimeEnvironment" ADD CONSTRAINT "RuntimeEnvironment_orgMemberId_fkey" FOREIGN KEY ("orgMemberId") REFERENCES "OrgMember"("id") ON DELETE SET NULL ON UPDATE CASCADE;

ALTER TABLE "BackgroundWorker" ADD CONSTRAINT "BackgroundWorker_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "BackgroundWorker" ADD CONSTRAINT "BackgroundWorker_runtimeEnvironmentId_fkey" FOREIGN KEY ("runtimeEnvironmentId") REFERENCES "RuntimeEnvironment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "BackgroundWorkerTask" ADD CONSTRAINT "BackgroundWorkerTask_workerId_fkey" FOREIGN KEY ("workerId") REFERENCES "BackgroundWorker"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "BackgroundWorkerTask" ADD CONSTRAINT "BackgroundWorkerTask_runtimeEnvironmentId_fkey" FOREIGN KEY ("runtimeEnvironmentId") REFERENCES "RuntimeEnvironment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "BackgroundWorkerTask" ADD CONSTRAINT "BackgroundWorkerTask_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "BackgroundWorkerTask" ADD CONSTRAINT "BackgroundWorkerTask_queueId_fkey" FOREIGN KEY ("queueId") REFERENCES "TaskQueue"("id") ON DELETE SET NULL ON UPDATE CASCADE;

ALTER TABLE "TaskQueue" ADD CONSTRAINT "TaskQueue_runtimeEnvironmentId_fkey" FOREIGN KEY ("runtimeEnvironmentId") REFERENCES "RuntimeEnvironment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "TaskQueue" ADD CONSTRAINT "TaskQueue_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "_BackgroundWorkerToTaskQueue" ADD CONSTRAINT "_BackgroundWorkerToTaskQueue_A_fkey" FOREIGN KEY ("A") REFERENCES "BackgroundWorker"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "_BackgroundWorkerToTaskQueue" ADD CONSTRAINT "_BackgroundWorkerToTaskQueue_B_fkey" FOREIGN KEY ("B") REFERENCES "TaskQueue"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "WorkerDeployment" ADD CONSTRAINT "WorkerDeployment_workerId_fkey" FOREIGN KEY ("workerId") REFERENCES "BackgroundWorker"("id") ON DELETE SET NULL ON UPDATE CASCADE;

ALTER TABLE "WorkerDeployment" ADD CONSTRAINT "WorkerDeployment_environmentId_fkey" FOREIGN KEY ("environmentId") REFERENCES "RuntimeEnvironment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "WorkerDeployment" ADD CONSTRAINT "WorkerDeployment_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "WorkerDeploymentPromotion" ADD CONSTRAINT "WorkerDeploymentPromotion_deploymentId_fkey" FOREIGN KEY ("deploymentId") REFERENCES "WorkerDeployment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "WorkerDeploymentPromotion" ADD CONSTRAINT "WorkerDeploymentPromotion_environmentId_fkey" FOREIGN KEY ("environmentId") REFERENCES "RuntimeEnvironment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "TaskRun" ADD CONSTRAINT "TaskRun_runtimeEnvironmentId_fkey" FOREIGN KEY ("runtimeEnvironmentId") REFERENCES "RuntimeEnvironment"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "TaskRun" ADD CONSTRAINT "TaskRun_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE CASCADE ON UPDATE CASCADE;
