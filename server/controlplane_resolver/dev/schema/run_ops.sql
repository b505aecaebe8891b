-- Run-ops database: where new runs live (docs/design.md, "Run
-- residency"). "TaskRun" has the same columns as in the control-plane
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

-- controlplane-resolver: idempotent from here
--
-- Everything below is re-applied by `controlplane-resolver migrate` to a
-- database it migrated before (CREATE ... IF NOT EXISTS, ADD COLUMN IF NOT
-- EXISTS, and each foreign key dropped if present and added again), so older
-- dev/test databases gain the tables added since.
--
-- The run-owned tables of the platform's run-ops schema
-- (internal-packages/run-ops-database), with its foreign keys, ON DELETE
-- actions and the indexes cleanup uses: what `cleanup` deletes, children
-- first (docs/design.md, "Cleanup"). Columns are the ones cleanup and the
-- factories need plus the NOT NULL ones without a default; enum columns
-- nothing here reads are TEXT.

ALTER TABLE "TaskRun" ADD COLUMN IF NOT EXISTS "parentTaskRunAttemptId" TEXT;

CREATE TABLE IF NOT EXISTS "BatchTaskRun" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "runtimeEnvironmentId" TEXT NOT NULL,
    "idempotencyKey" TEXT,
    "checkpointEventId" TEXT,
    "dependentTaskAttemptId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "BatchTaskRun_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "BatchTaskRunItem" (
    "id" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "batchTaskRunId" TEXT NOT NULL,
    "taskRunId" TEXT NOT NULL,
    "taskRunAttemptId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "BatchTaskRunItem_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "BatchTaskRunError" (
    "id" TEXT NOT NULL,
    "batchTaskRunId" TEXT NOT NULL,
    "index" INTEGER NOT NULL,
    "taskIdentifier" TEXT NOT NULL,
    "error" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "BatchTaskRunError_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "TaskRunAttempt" (
    "id" TEXT NOT NULL,
    "number" INTEGER NOT NULL DEFAULT 0,
    "friendlyId" TEXT NOT NULL,
    "taskRunId" TEXT NOT NULL,
    "backgroundWorkerId" TEXT NOT NULL,
    "backgroundWorkerTaskId" TEXT NOT NULL,
    "runtimeEnvironmentId" TEXT NOT NULL,
    "queueId" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "TaskRunAttempt_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "Checkpoint" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "location" TEXT NOT NULL,
    "imageRef" TEXT NOT NULL,
    "runId" TEXT NOT NULL,
    "attemptId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "runtimeEnvironmentId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "Checkpoint_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "CheckpointRestoreEvent" (
    "id" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "checkpointId" TEXT NOT NULL,
    "runId" TEXT NOT NULL,
    "attemptId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "runtimeEnvironmentId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "CheckpointRestoreEvent_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "TaskRunDependency" (
    "id" TEXT NOT NULL,
    "taskRunId" TEXT NOT NULL,
    "checkpointEventId" TEXT,
    "dependentAttemptId" TEXT,
    "dependentBatchRunId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "TaskRunDependency_pkey" PRIMARY KEY ("id")
);

-- No run id and no index on the environment (as on the platform): cleanup
-- reaches it through the snapshots that reference it.
CREATE TABLE IF NOT EXISTS "TaskRunCheckpoint" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "location" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "runtimeEnvironmentId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "TaskRunCheckpoint_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "TaskRunExecutionSnapshot" (
    "id" TEXT NOT NULL,
    "engine" "RunEngineVersion" NOT NULL DEFAULT 'V2',
    "executionStatus" TEXT NOT NULL,
    "description" TEXT NOT NULL,
    "isValid" BOOLEAN NOT NULL DEFAULT true,
    "runId" TEXT NOT NULL,
    "runStatus" "TaskRunStatus" NOT NULL,
    "environmentId" TEXT NOT NULL,
    "environmentType" "RuntimeEnvironmentType" NOT NULL,
    "projectId" TEXT NOT NULL,
    "organizationId" TEXT NOT NULL,
    "checkpointId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "TaskRunExecutionSnapshot_pkey" PRIMARY KEY ("id")
);

-- Waitpoints and their edges: no foreign keys in the run-ops schema.
CREATE TABLE IF NOT EXISTS "Waitpoint" (
    "id" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "idempotencyKey" TEXT NOT NULL,
    "userProvidedIdempotencyKey" BOOLEAN NOT NULL,
    "completedByTaskRunId" TEXT,
    "completedByBatchId" TEXT,
    "projectId" TEXT NOT NULL,
    "environmentId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "Waitpoint_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "TaskRunWaitpoint" (
    "id" TEXT NOT NULL,
    "taskRunId" TEXT NOT NULL,
    "waitpointId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "batchId" TEXT,
    "batchIndex" INTEGER,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "TaskRunWaitpoint_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "WaitpointRunConnection" (
    "id" TEXT NOT NULL,
    "taskRunId" TEXT NOT NULL,
    "waitpointId" TEXT NOT NULL,

    CONSTRAINT "WaitpointRunConnection_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "CompletedWaitpoint" (
    "id" TEXT NOT NULL,
    "snapshotId" TEXT NOT NULL,
    "waitpointId" TEXT NOT NULL,

    CONSTRAINT "CompletedWaitpoint_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "WaitpointTag" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "environmentId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "WaitpointTag_pkey" PRIMARY KEY ("id")
);

-- Project-scoped: no environment column.
CREATE TABLE IF NOT EXISTS "TaskRunTag" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "friendlyId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "TaskRunTag_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX IF NOT EXISTS "BatchTaskRun_friendlyId_key" ON "BatchTaskRun"("friendlyId");
CREATE UNIQUE INDEX IF NOT EXISTS "BatchTaskRun_checkpointEventId_key" ON "BatchTaskRun"("checkpointEventId");
CREATE UNIQUE INDEX IF NOT EXISTS "BatchTaskRun_runtimeEnvironmentId_idempotencyKey_key" ON "BatchTaskRun"("runtimeEnvironmentId", "idempotencyKey");
CREATE INDEX IF NOT EXISTS "BatchTaskRun_runtimeEnvironmentId_createdAt_id_idx" ON "BatchTaskRun"("runtimeEnvironmentId", "createdAt" DESC, "id" DESC);
CREATE INDEX IF NOT EXISTS "BatchTaskRun_dependentTaskAttemptId_idx" ON "BatchTaskRun"("dependentTaskAttemptId");
CREATE UNIQUE INDEX IF NOT EXISTS "BatchTaskRunItem_batchTaskRunId_taskRunId_key" ON "BatchTaskRunItem"("batchTaskRunId", "taskRunId");
CREATE INDEX IF NOT EXISTS "idx_batchtaskrunitem_taskrun" ON "BatchTaskRunItem"("taskRunId");
CREATE INDEX IF NOT EXISTS "idx_batchtaskrunitem_taskrunattempt" ON "BatchTaskRunItem"("taskRunAttemptId");
CREATE UNIQUE INDEX IF NOT EXISTS "BatchTaskRunError_batchTaskRunId_index_key" ON "BatchTaskRunError"("batchTaskRunId", "index");
CREATE INDEX IF NOT EXISTS "BatchTaskRunError_batchTaskRunId_idx" ON "BatchTaskRunError"("batchTaskRunId");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunAttempt_friendlyId_key" ON "TaskRunAttempt"("friendlyId");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunAttempt_taskRunId_number_key" ON "TaskRunAttempt"("taskRunId", "number");
CREATE INDEX IF NOT EXISTS "TaskRunAttempt_taskRunId_idx" ON "TaskRunAttempt"("taskRunId");
CREATE UNIQUE INDEX IF NOT EXISTS "Checkpoint_friendlyId_key" ON "Checkpoint"("friendlyId");
CREATE INDEX IF NOT EXISTS "Checkpoint_runId_idx" ON "Checkpoint"("runId");
CREATE INDEX IF NOT EXISTS "Checkpoint_attemptId_idx" ON "Checkpoint"("attemptId");
CREATE INDEX IF NOT EXISTS "CheckpointRestoreEvent_checkpointId_idx" ON "CheckpointRestoreEvent"("checkpointId");
CREATE INDEX IF NOT EXISTS "CheckpointRestoreEvent_runId_idx" ON "CheckpointRestoreEvent"("runId");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunDependency_taskRunId_key" ON "TaskRunDependency"("taskRunId");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunDependency_checkpointEventId_key" ON "TaskRunDependency"("checkpointEventId");
CREATE INDEX IF NOT EXISTS "TaskRunDependency_dependentAttemptId_idx" ON "TaskRunDependency"("dependentAttemptId");
CREATE INDEX IF NOT EXISTS "TaskRunDependency_dependentBatchRunId_idx" ON "TaskRunDependency"("dependentBatchRunId");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunCheckpoint_friendlyId_key" ON "TaskRunCheckpoint"("friendlyId");
CREATE INDEX IF NOT EXISTS "TaskRunExecutionSnapshot_runId_isValid_createdAt_idx" ON "TaskRunExecutionSnapshot"("runId", "isValid", "createdAt" DESC);
CREATE UNIQUE INDEX IF NOT EXISTS "Waitpoint_friendlyId_key" ON "Waitpoint"("friendlyId");
CREATE UNIQUE INDEX IF NOT EXISTS "Waitpoint_completedByTaskRunId_key" ON "Waitpoint"("completedByTaskRunId");
CREATE UNIQUE INDEX IF NOT EXISTS "Waitpoint_environmentId_idempotencyKey_key" ON "Waitpoint"("environmentId", "idempotencyKey");
CREATE INDEX IF NOT EXISTS "Waitpoint_environmentId_type_createdAt_idx" ON "Waitpoint"("environmentId", "type", "createdAt" DESC);
CREATE INDEX IF NOT EXISTS "Waitpoint_completedByBatchId_idx" ON "Waitpoint"("completedByBatchId");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunWaitpoint_taskRunId_waitpointId_batchIndex_key" ON "TaskRunWaitpoint"("taskRunId", "waitpointId", "batchIndex");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunWaitpoint_taskRunId_waitpointId_batchIndex_null_key" ON "TaskRunWaitpoint"("taskRunId", "waitpointId") WHERE "batchIndex" IS NULL;
CREATE INDEX IF NOT EXISTS "TaskRunWaitpoint_taskRunId_idx" ON "TaskRunWaitpoint"("taskRunId");
CREATE INDEX IF NOT EXISTS "TaskRunWaitpoint_waitpointId_idx" ON "TaskRunWaitpoint"("waitpointId");
CREATE UNIQUE INDEX IF NOT EXISTS "WaitpointTag_environmentId_name_key" ON "WaitpointTag"("environmentId", "name");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunTag_friendlyId_key" ON "TaskRunTag"("friendlyId");
CREATE UNIQUE INDEX IF NOT EXISTS "TaskRunTag_projectId_name_key" ON "TaskRunTag"("projectId", "name");
CREATE INDEX IF NOT EXISTS "TaskRunTag_name_id_idx" ON "TaskRunTag"("name", "id");
CREATE UNIQUE INDEX IF NOT EXISTS "WaitpointRunConnection_taskRunId_waitpointId_key" ON "WaitpointRunConnection"("taskRunId", "waitpointId");
CREATE INDEX IF NOT EXISTS "WaitpointRunConnection_taskRunId_idx" ON "WaitpointRunConnection"("taskRunId");
CREATE INDEX IF NOT EXISTS "WaitpointRunConnection_waitpointId_idx" ON "WaitpointRunConnection"("waitpointId");
CREATE UNIQUE INDEX IF NOT EXISTS "CompletedWaitpoint_snapshotId_waitpointId_key" ON "CompletedWaitpoint"("snapshotId", "waitpointId");
CREATE INDEX IF NOT EXISTS "CompletedWaitpoint_snapshotId_idx" ON "CompletedWaitpoint"("snapshotId");
CREATE INDEX IF NOT EXISTS "CompletedWaitpoint_waitpointId_idx" ON "CompletedWaitpoint"("waitpointId");

-- Foreign keys (ON UPDATE CASCADE as on the platform). Dropped if present and
-- added again, so a re-applied migration leaves exactly these.
ALTER TABLE "BatchTaskRun" DROP CONSTRAINT IF EXISTS "BatchTaskRun_checkpointEventId_fkey";
ALTER TABLE "BatchTaskRun" ADD CONSTRAINT "BatchTaskRun_checkpointEventId_fkey" FOREIGN KEY ("checkpointEventId") REFERENCES "CheckpointRestoreEvent"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "BatchTaskRun" DROP CONSTRAINT IF EXISTS "BatchTaskRun_dependentTaskAttemptId_fkey";
ALTER TABLE "BatchTaskRun" ADD CONSTRAINT "BatchTaskRun_dependentTaskAttemptId_fkey" FOREIGN KEY ("dependentTaskAttemptId") REFERENCES "TaskRunAttempt"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "BatchTaskRunItem" DROP CONSTRAINT IF EXISTS "BatchTaskRunItem_batchTaskRunId_fkey";
ALTER TABLE "BatchTaskRunItem" ADD CONSTRAINT "BatchTaskRunItem_batchTaskRunId_fkey" FOREIGN KEY ("batchTaskRunId") REFERENCES "BatchTaskRun"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "BatchTaskRunItem" DROP CONSTRAINT IF EXISTS "BatchTaskRunItem_taskRunId_fkey";
ALTER TABLE "BatchTaskRunItem" ADD CONSTRAINT "BatchTaskRunItem_taskRunId_fkey" FOREIGN KEY ("taskRunId") REFERENCES "TaskRun"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "BatchTaskRunItem" DROP CONSTRAINT IF EXISTS "BatchTaskRunItem_taskRunAttemptId_fkey";
ALTER TABLE "BatchTaskRunItem" ADD CONSTRAINT "BatchTaskRunItem_taskRunAttemptId_fkey" FOREIGN KEY ("taskRunAttemptId") REFERENCES "TaskRunAttempt"("id") ON DELETE SET NULL ON UPDATE CASCADE;
ALTER TABLE "BatchTaskRunError" DROP CONSTRAINT IF EXISTS "BatchTaskRunError_batchTaskRunId_fkey";
ALTER TABLE "BatchTaskRunError" ADD CONSTRAINT "BatchTaskRunError_batchTaskRunId_fkey" FOREIGN KEY ("batchTaskRunId") REFERENCES "BatchTaskRun"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "TaskRunAttempt" DROP CONSTRAINT IF EXISTS "TaskRunAttempt_taskRunId_fkey";
ALTER TABLE "TaskRunAttempt" ADD CONSTRAINT "TaskRunAttempt_taskRunId_fkey" FOREIGN KEY ("taskRunId") REFERENCES "TaskRun"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "Checkpoint" DROP CONSTRAINT IF EXISTS "Checkpoint_runId_fkey";
ALTER TABLE "Checkpoint" ADD CONSTRAINT "Checkpoint_runId_fkey" FOREIGN KEY ("runId") REFERENCES "TaskRun"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "Checkpoint" DROP CONSTRAINT IF EXISTS "Checkpoint_attemptId_fkey";
ALTER TABLE "Checkpoint" ADD CONSTRAINT "Checkpoint_attemptId_fkey" FOREIGN KEY ("attemptId") REFERENCES "TaskRunAttempt"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "CheckpointRestoreEvent" DROP CONSTRAINT IF EXISTS "CheckpointRestoreEvent_checkpointId_fkey";
ALTER TABLE "CheckpointRestoreEvent" ADD CONSTRAINT "CheckpointRestoreEvent_checkpointId_fkey" FOREIGN KEY ("checkpointId") REFERENCES "Checkpoint"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "CheckpointRestoreEvent" DROP CONSTRAINT IF EXISTS "CheckpointRestoreEvent_runId_fkey";
ALTER TABLE "CheckpointRestoreEvent" ADD CONSTRAINT "CheckpointRestoreEvent_runId_fkey" FOREIGN KEY ("runId") REFERENCES "TaskRun"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "CheckpointRestoreEvent" DROP CONSTRAINT IF EXISTS "CheckpointRestoreEvent_attemptId_fkey";
ALTER TABLE "CheckpointRestoreEvent" ADD CONSTRAINT "CheckpointRestoreEvent_attemptId_fkey" FOREIGN KEY ("attemptId") REFERENCES "TaskRunAttempt"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "TaskRunDependency" DROP CONSTRAINT IF EXISTS "TaskRunDependency_taskRunId_fkey";
ALTER TABLE "TaskRunDependency" ADD CONSTRAINT "TaskRunDependency_taskRunId_fkey" FOREIGN KEY ("taskRunId") REFERENCES "TaskRun"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "TaskRunDependency" DROP CONSTRAINT IF EXISTS "TaskRunDependency_checkpointEventId_fkey";
ALTER TABLE "TaskRunDependency" ADD CONSTRAINT "TaskRunDependency_checkpointEventId_fkey" FOREIGN KEY ("checkpointEventId") REFERENCES "CheckpointRestoreEvent"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "TaskRunDependency" DROP CONSTRAINT IF EXISTS "TaskRunDependency_dependentAttemptId_fkey";
ALTER TABLE "TaskRunDependency" ADD CONSTRAINT "TaskRunDependency_dependentAttemptId_fkey" FOREIGN KEY ("dependentAttemptId") REFERENCES "TaskRunAttempt"("id") ON DELETE SET NULL ON UPDATE CASCADE;
ALTER TABLE "TaskRunDependency" DROP CONSTRAINT IF EXISTS "TaskRunDependency_dependentBatchRunId_fkey";
ALTER TABLE "TaskRunDependency" ADD CONSTRAINT "TaskRunDependency_dependentBatchRunId_fkey" FOREIGN KEY ("dependentBatchRunId") REFERENCES "BatchTaskRun"("id") ON DELETE SET NULL ON UPDATE CASCADE;
-- RESTRICT: a run with a snapshot cannot be deleted before its snapshots.
ALTER TABLE "TaskRunExecutionSnapshot" DROP CONSTRAINT IF EXISTS "TaskRunExecutionSnapshot_runId_fkey";
ALTER TABLE "TaskRunExecutionSnapshot" ADD CONSTRAINT "TaskRunExecutionSnapshot_runId_fkey" FOREIGN KEY ("runId") REFERENCES "TaskRun"("id") ON DELETE RESTRICT ON UPDATE CASCADE;
ALTER TABLE "TaskRunExecutionSnapshot" DROP CONSTRAINT IF EXISTS "TaskRunExecutionSnapshot_checkpointId_fkey";
ALTER TABLE "TaskRunExecutionSnapshot" ADD CONSTRAINT "TaskRunExecutionSnapshot_checkpointId_fkey" FOREIGN KEY ("checkpointId") REFERENCES "TaskRunCheckpoint"("id") ON DELETE SET NULL ON UPDATE CASCADE;
-- Run-ops only: "TaskRun"'s own references (none of them indexed on the
-- platform but "parentTaskRunId": each SET NULL scans "TaskRun" there).
ALTER TABLE "TaskRun" DROP CONSTRAINT IF EXISTS "TaskRun_batchId_fkey";
ALTER TABLE "TaskRun" ADD CONSTRAINT "TaskRun_batchId_fkey" FOREIGN KEY ("batchId") REFERENCES "BatchTaskRun"("id") ON DELETE SET NULL ON UPDATE NO ACTION;
ALTER TABLE "TaskRun" DROP CONSTRAINT IF EXISTS "TaskRun_parentTaskRunAttemptId_fkey";
ALTER TABLE "TaskRun" ADD CONSTRAINT "TaskRun_parentTaskRunAttemptId_fkey" FOREIGN KEY ("parentTaskRunAttemptId") REFERENCES "TaskRunAttempt"("id") ON DELETE SET NULL ON UPDATE NO ACTION;
ALTER TABLE "TaskRun" DROP CONSTRAINT IF EXISTS "TaskRun_parentTaskRunId_fkey";
ALTER TABLE "TaskRun" ADD CONSTRAINT "TaskRun_parentTaskRunId_fkey" FOREIGN KEY ("parentTaskRunId") REFERENCES "TaskRun"("id") ON DELETE SET NULL ON UPDATE NO ACTION;
ALTER TABLE "TaskRun" DROP CONSTRAINT IF EXISTS "TaskRun_rootTaskRunId_fkey";
ALTER TABLE "TaskRun" ADD CONSTRAINT "TaskRun_rootTaskRunId_fkey" FOREIGN KEY ("rootTaskRunId") REFERENCES "TaskRun"("id") ON DELETE SET NULL ON UPDATE NO ACTION;
