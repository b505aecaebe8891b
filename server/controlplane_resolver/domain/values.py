"""The values the resolver answers with: plain, immutable, gRPC-free.

Field names match the proto's field names so the edge can translate them
mechanically (servicer.py). Database enum values stay strings as stored
(``"PRODUCTION"``, ``"DEPLOYED"``): a database with newer enum values than
this code knows still reads. Timestamps are naive UTC datetimes, as Prisma
stores them; JSON columns are plain Python values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controlplane_resolver.domain.minting import MintKind
from controlplane_resolver.domain.residency import Residency
from controlplane_resolver.domain.roles import RunSource


@dataclass(frozen=True)
class Environment:
    """The ResolveEnv shape."""

    id: str
    type: str
    project_id: str
    organization_id: str
    archived_at: datetime | None
    maximum_concurrency_limit: int
    concurrency_limit_burst_factor: str
    parent_environment_type: str | None


@dataclass(frozen=True)
class Project:
    id: str
    slug: str
    name: str
    external_ref: str
    organization_id: str
    engine: str
    builder_project_id: str | None
    default_worker_group_id: str | None


@dataclass(frozen=True)
class Organization:
    id: str
    slug: str
    title: str
    maximum_concurrency_limit: int
    maximum_dev_queue_size: int | None
    maximum_deployed_queue_size: int | None
    runs_enabled: bool
    feature_flags: Any
    api_rate_limiter_config: Any
    batch_rate_limit_config: Any
    batch_queue_concurrency_config: Any
    stream_basin_name: str | None


@dataclass(frozen=True)
class User:
    id: str
    display_name: str | None
    name: str | None


@dataclass(frozen=True)
class OrgMember:
    id: str
    user_id: str
    user: User


@dataclass(frozen=True)
class ParentEnvironment:
    id: str
    api_key: str

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"ParentEnvironment(id={self.id!r}, api_key=<redacted>)"


@dataclass(frozen=True)
class AuthenticatedEnvironment:
    """The ResolveAuthenticatedEnv shape. Holds secrets: its repr hides them."""

    id: str
    slug: str
    type: str
    api_key: str
    organization_id: str
    project_id: str
    org_member_id: str | None
    parent_environment_id: str | None
    branch_name: str | None
    archived_at: datetime | None
    paused: bool
    shortcode: str
    maximum_concurrency_limit: int
    concurrency_limit_burst_factor: str
    built_in_environment_variable_overrides: Any
    created_at: datetime
    updated_at: datetime
    is_branchable_environment: bool
    pause_source: str | None
    project: Project
    organization: Organization
    org_member: OrgMember | None
    parent_environment: ParentEnvironment | None
    git: dict[str, Any] | None

    def __repr__(self) -> str:
        return f"AuthenticatedEnvironment(id={self.id!r}, api_key=<redacted>)"


@dataclass(frozen=True)
class BackgroundWorker:
    id: str
    friendly_id: str
    engine: str
    content_hash: str
    sdk_version: str
    cli_version: str
    version: str
    runtime: str | None
    runtime_version: str | None
    supports_lazy_attempts: bool
    project_id: str
    runtime_environment_id: str
    worker_group_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class BackgroundWorkerTask:
    id: str
    slug: str
    file_path: str
    export_name: str | None
    worker_id: str
    machine_config: Any
    retry_config: Any
    queue_config: Any
    queue_id: str | None


@dataclass(frozen=True)
class TaskQueue:
    id: str
    friendly_id: str
    name: str
    type: str
    concurrency_limit: int | None
    paused: bool


@dataclass(frozen=True)
class WorkerDeployment:
    id: str
    friendly_id: str
    short_code: str
    version: str
    runtime: str | None
    runtime_version: str | None
    status: str
    type: str
    worker_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class WorkerVersion:
    """The ResolveWorkerVersion shape: ``worker``, ``tasks``, ``queues`` and
    ``deployment`` side by side."""

    worker: BackgroundWorker
    tasks: tuple[BackgroundWorkerTask, ...]
    queues: tuple[TaskQueue, ...]
    deployment: WorkerDeployment | None


@dataclass(frozen=True)
class TaskRun:
    id: str
    friendly_id: str
    status: str
    task_identifier: str
    runtime_environment_id: str
    environment_type: str | None
    project_id: str
    organization_id: str | None
    queue: str
    locked_by_id: str | None
    locked_to_version_id: str | None
    run_tags: tuple[str, ...]
    batch_id: str | None
    parent_task_run_id: str | None
    root_task_run_id: str | None
    idempotency_key: str | None
    engine: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RunRead:
    """A run and where it came from."""

    run: TaskRun
    source: RunSource
    residency: Residency
    environment: Environment | None = None
    environment_unresolved: bool = False
    #: The shard char when ``source`` is ``RUN_OPS_SHARD``.
    shard: str | None = None


# ------------------------------------------------- ResolveRunLockedWorker, MintId


@dataclass(frozen=True)
class LockedTaskWorker:
    """The worker a locked task belongs to (proto ``LockedTaskWorker``)."""

    id: str
    version: str
    sdk_version: str
    cli_version: str
    supports_lazy_attempts: bool


@dataclass(frozen=True)
class LockedDeployment:
    """The deployment summary of a locked task's worker (proto ``LockedDeployment``)."""

    friendly_id: str
    short_code: str
    version: str
    runtime: str | None
    runtime_version: str | None
    #: The deployment's git metadata, a JSON object as the platform writes it
    #: (``None`` when unset or not an object).
    git: dict[str, Any] | None


@dataclass(frozen=True)
class LockedTask:
    """The task a run is locked by (proto ``LockedTask``)."""

    id: str
    slug: str
    file_path: str
    export_name: str | None
    machine_config: Any
    worker: LockedTaskWorker
    #: ``None`` when the worker has no deployment (development workers).
    deployment: LockedDeployment | None


@dataclass(frozen=True)
class LockedVersion:
    """The worker version a run is locked to (proto ``LockedVersion``)."""

    version: str
    sdk_version: str
    runtime: str | None
    runtime_version: str | None
    supports_lazy_attempts: bool


@dataclass(frozen=True)
class RunLockedWorker:
    """The ResolveRunLockedWorker shape: each part ``None`` when its id was
    not given or names no row."""

    locked_by: LockedTask | None
    locked_to_version: LockedVersion | None


@dataclass(frozen=True)
class MintedId:
    """The MintId shape: a new id, its friendly form, and its kind."""

    id: str
    friendly_id: str
    mint_kind: MintKind
    #: The shard char of a gen-2 id.
    shard: str | None = None
    #: How the shard was chosen (:attr:`MintKindDecision.shard_reason`).
    shard_reason: str | None = None


# ------------------------------------------------------------------- cleanup


@dataclass(frozen=True)
class EnvironmentLifecycle:
    """Whether an environment is still in use: the cleanup's safety check."""

    id: str
    project_id: str
    archived_at: datetime | None
    project_deleted_at: datetime | None

    @property
    def live(self) -> bool:
        """Neither archived nor in a soft-deleted project."""
        return self.archived_at is None and self.project_deleted_at is None


@dataclass(frozen=True)
class ProjectLifecycle:
    id: str
    deleted_at: datetime | None
