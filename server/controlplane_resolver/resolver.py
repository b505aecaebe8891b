"""The operations: control-plane answers through the cache, runs through
the topology's read plan. Plain Python that knows nothing of gRPC; it
raises :mod:`~controlplane_resolver.errors` of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import psycopg

from controlplane_resolver import callinfo
from controlplane_resolver.cache import (
    ABSENT,
    MISSING,
    AnswerValidity,
    Cache,
    FlightTimeout,
    Slot,
    env_scope,
    flag_scope,
    org_scope,
    project_scope,
    worker_versions_scope,
)
from controlplane_resolver.coalescing import CoalescerStats, ReadCoalescer, WaitTimeout
from controlplane_resolver.domain import minting, waitpoints
from controlplane_resolver.domain.minting import (
    FlagLookup,
    FlagValues,
    IdKind,
    MintFlags,
    MintKind,
    MintKindDecision,
)
from controlplane_resolver.domain.residency import (
    Classification,
    Generation,
    InvalidId,
    Residency,
    classify,
    validate_id,
)
from controlplane_resolver.domain.roles import RunSource
from controlplane_resolver.domain.values import (
    AuthenticatedEnvironment,
    Environment,
    MintedId,
    RunLockedWorker,
    RunRead,
    TaskRun,
    WorkerVersion,
)
from controlplane_resolver.domain.waitpoints import StoreSelection
from controlplane_resolver.errors import (
    SHUTTING_DOWN_RETRY_S,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OperationError,
    Shed,
    Unavailable,
)
from controlplane_resolver.logbounds import BoundedReporter, RateLimitedWarning
from controlplane_resolver.storage import queries
from controlplane_resolver.storage.database import (
    Database,
    PinnedConnection,
    QueryHandle,
    cancellable,
)
from controlplane_resolver.storage.topology import Topology

log = logging.getLogger(__name__)

#: Most ids one batch call may carry.
MAX_BATCH_IDS = 1000

ENVIRONMENT_TYPES = ("PRODUCTION", "STAGING", "DEVELOPMENT", "PREVIEW")


def checked_id(value: str, field: str) -> str:
    try:
        return validate_id(value, field=field)
    except InvalidId as exc:
        raise InvalidArgument(str(exc), reason="INVALID_ID", metadata={"field": field}) from None


@dataclass(frozen=True)
class IdClassification:
    """ClassifyRunId's answer: the shape verdict and the read order it implies."""

    classification: Classification
    read_order: tuple[RunSource, ...]
    generation: Generation = Generation.KSUID


class Resolver:
    """The resolver's operations over one :class:`Topology` and one :class:`Cache`."""

    def __init__(
        self,
        topology: Topology,
        cache: Cache,
        *,
        fill_wait_s: float = 5.0,
        mint_ksuid_enabled: bool = False,
        run_read_gather_s: float = 0.0,
        publish: Callable[[str, str], None] | None = None,
    ) -> None:
        """``publish(kind, id)``, when given, sends an ``Invalidate`` call's
        invalidation to every resolver process (raising
        :class:`Unavailable` when it cannot)."""
        self.topology = topology
        self.cache = cache
        self._publish = publish
        self._fill_wait_s = fill_wait_s
        # Concurrent run reads against one database share queries.
        self._pinned = {db: PinnedConnection(db) for db in topology.databases}
        # While a database answers, a batch runs on the thread of the caller
        # that leads it; otherwise on the database's own threads
        # (Database.start), where a caller only waits for its read, up to its
        # deadline, and a batch whose callers have all gone has its query
        # cancelled.
        loads = {db: _CancellableLoad(self._pinned[db]) for db in topology.databases}
        self._run_readers = {
            db: ReadCoalescer(
                loads[db],
                gather_s=run_read_gather_s,
                start=db.start,
                abandon=loads[db].cancel,
                inline=db.answered_lately,
            )
            for db in topology.databases
        }
        #: Set by drain(): waits end at once, answered UNAVAILABLE (retryable).
        self._draining = False
        #: RUN_OPS_MINT_KSUID_ENABLED: the master switch of ksuid minting.
        self.mint_ksuid_enabled = mint_ksuid_enabled
        #: The id rule (RUN_OPS_ID_GENERATION), from the topology that routes by it.
        self.generation = topology.generation
        #: The configured shards, and those of them new root runs are not
        #: placed on (RUN_OPS_SHARDS_NOT_PLACED); fixed for the process.
        self._shard_chars = tuple(topology.shard_chars)
        self._not_placed_shards = topology.not_placed_shards
        #: How root run-ops ids are placed (RUN_OPS_SHARD_PLACEMENT), and
        #: the flag keys the mint query reads for it.
        self._shard_placement = minting.ShardPlacement(
            getattr(topology, "shard_placement", minting.ShardPlacement.ORGANIZATION.value)
        )
        platform = self._shard_placement is minting.ShardPlacement.PLATFORM
        self._mint_org_keys: tuple[str, ...] = (
            *minting.MINT_KIND_FLAGS,
            *(minting.MINT_SHARD_ORG_FLAGS if platform else (minting.SHARD_OVERRIDE_FLAG,)),
        )
        self._mint_global_keys: tuple[str, ...] = (
            *minting.MINT_KIND_FLAGS,
            *(minting.MINT_SHARD_GLOBAL_FLAGS if platform else ()),
        )
        #: Ignored placement values (an unreadable active set, an override or
        #: a pin outside it): one line per distinct value an hour, bounded.
        self.placement_reports = BoundedReporter(log, "shard placement")
        #: Each cached flag records object's root-mint plan, while it is cached.
        self._root_mint_plans: IdentityMemo[MintFlags, minting.RootMintPlan] = IdentityMemo()
        #: Any caller can send a region name outside the region table: at
        #: most a line a minute.
        self.unknown_region_warning = RateLimitedWarning(
            log,
            "MintId region %r is not in the region table ("
            + ", ".join(minting.REGION_CODES)
            + "): stamped "
            + minting.DEFAULT_REGION_CHAR,
        )
        #: Any caller can send unclassifiable ids: at most a line a minute.
        self.unclassifiable_id_warning = RateLimitedWarning(
            log, "run id body of %d characters is unclassifiable; reading it as legacy"
        )

    def close(self) -> None:
        """Return the run readers' connections to their pools."""
        for pinned in self._pinned.values():
            pinned.release()

    def run_read_stats(self) -> dict[str, CoalescerStats]:
        """Coalesced run reads per database role (batches, keys, largest)."""
        return {db.role.value: reader.stats for db, reader in self._run_readers.items()}

    @property
    def control_plane_replica(self) -> Database:
        """Where control-plane reads go."""
        return self.topology.control_plane_replica

    def drain(self) -> None:
        """End every wait for a database now, and refuse new ones: the
        server is shutting down, and a call answered UNAVAILABLE is retried
        elsewhere, where one cut off at the grace period would be CANCELLED."""
        self._draining = True
        self.cache.abort_waits()
        for reader in self._run_readers.values():
            reader.abort_waits()

    def _wait_budget(self) -> tuple[float, bool]:
        """How long this call may wait for a database, and whether that
        limit is the caller's own deadline.

        Loads run on the databases' own threads under the service's database
        timeout, never a caller's deadline: a load is shared, and one
        caller's deadline must not fail the others. A caller's deadline
        bounds its own wait, whoever started the load.
        """
        if self._draining:
            raise _shutting_down()
        left = callinfo.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the caller's deadline passed before the resolver could answer")
        if left is not None and left < self._fill_wait_s:
            return left, True
        return self._fill_wait_s, False

    def _gave_up(self, exc: Exception, by_deadline: bool, what: str) -> OperationError:
        """The error of a wait that ended before its answer (``exc``)."""
        if self._draining:
            return _shutting_down()
        if by_deadline:
            return DeadlineExceeded(f"{exc}; the caller's deadline passed")
        return Unavailable(f"{exc}; {what} is slow to answer, retry later")

    def _cached(
        self,
        slot: Slot,
        key: Any,
        load: Callable[[], Any],
        *,
        scopes: tuple[str, ...],
        scopes_of: Callable[[Any], tuple[str, ...]] | None = None,
    ) -> Any:
        """``cache.get`` of a control-plane answer: the load runs on the
        replica's threads, each caller waits up to its own budget, and a load
        every caller has given up on has its statement cancelled."""
        db = self.control_plane_replica  # every cached answer is read there
        wait_s, by_deadline = self._wait_budget()
        handle = QueryHandle()

        def cancellable_load() -> Any:
            with cancellable(handle):
                return load()

        try:
            return self.cache.get(
                slot,
                key,
                cancellable_load,
                scopes=scopes,
                scopes_of=scopes_of,
                wait_s=wait_s,
                start=db.start,
                admit=db.admit,
                abandon=handle.cancel,
            )
        except FlightTimeout as exc:
            raise self._gave_up(exc, by_deadline, "the database") from None

    def _on_db_thread(
        self, db: Database, work: Callable[[], Any], wait_s: float, by_deadline: bool
    ) -> Any:
        """``work()`` on one of ``db``'s threads; this caller waits up to
        ``wait_s`` for it. Nobody else waits for it: when the caller leaves,
        the work's running statement is cancelled."""
        done = threading.Event()
        box: dict[str, Any] = {}
        handle = QueryHandle()

        def run() -> None:
            try:
                with cancellable(handle):
                    box["value"] = work()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        db.start(run)
        if not self.cache.wait_for(done, wait_s):
            handle.cancel()
            raise self._gave_up(
                TimeoutError(f"gave up after {wait_s:.3f}s"), by_deadline, "the database"
            )
        if "error" in box:
            raise box["error"]
        return box["value"]

    # --------------------------------------------------------- environments

    def _environment_answer(
        self,
        slot: Slot,
        environment_id: str,
        query: Callable[[Database, str], Any],
        scopes_of: Callable[[Any], tuple[str, ...]] | None = None,
    ) -> Any:
        """``slot``'s cached answer for an environment; on a miss, loaded by
        ``query(control_plane_replica, id)`` (falsy = absent). Raises NotFound when
        absent.

        A fresh hit returns before anything else is built or checked: this
        is the service's hottest path. It needs no id check, since only
        checked ids are ever stored."""
        value = self.cache.fresh(slot, environment_id)
        if value is MISSING:
            env_id = checked_id(environment_id, "environment_id")
            value = self._cached(
                slot,
                env_id,
                lambda: query(self.control_plane_replica, env_id) or ABSENT,
                scopes=(env_scope(env_id),),
                scopes_of=scopes_of,
            )
        if value is ABSENT:
            raise _env_not_found(environment_id)
        return value

    def resolve_env(self, environment_id: str) -> Environment:
        """The environment's ResolveEnv shape. Raises NotFound when absent."""
        env: Environment = self._environment_answer(
            Slot.ENVIRONMENT, environment_id, queries.environment, _environment_scopes
        )
        return env

    def resolve_authenticated_env(self, environment_id: str) -> AuthenticatedEnvironment:
        """The environment with secrets and relations. NotFound when absent or
        when its project is soft-deleted."""
        env: AuthenticatedEnvironment = self._environment_answer(
            Slot.AUTHENTICATED_ENVIRONMENT,
            environment_id,
            queries.authenticated_environment,
            _authenticated_scopes,
        )
        return env

    def assert_env_exists(self, environment_id: str) -> None:
        """Return when the environment exists; raise NotFound otherwise."""
        self._environment_answer(Slot.ENV_EXISTS, environment_id, queries.environment_exists)

    def batch_resolve_envs(
        self, environment_ids: Sequence[str]
    ) -> list[tuple[str, Environment | None]]:
        """ResolveEnv for many ids: ``(id, environment or None)`` in request
        order. Cache hits are served from the cache; all misses are loaded
        with one query."""
        ids = _checked_batch(environment_ids, "environment_ids")
        db = self.control_plane_replica

        def load_many(missing: list[str]) -> dict[str, Environment]:
            wait_s, by_deadline = self._wait_budget()
            with db.admit():
                return self._on_db_thread(
                    db, lambda: queries.environments(db, missing), wait_s, by_deadline
                )

        found = self.cache.get_many(
            Slot.ENVIRONMENT,
            dict.fromkeys(ids),
            load_many,
            scopes_of_key=lambda env_id: (env_scope(env_id),),
            scopes_of=_environment_scopes,
            start=db.start,
        )
        return [(env_id, None if found[env_id] is ABSENT else found[env_id]) for env_id in ids]

    # ------------------------------------------------------- worker versions

    def resolve_worker_version(
        self, environment_id: str, environment_type: str | None = None, worker_id: str | None = None
    ) -> WorkerVersion:
        """The worker version for an environment (docs/design.md, "Control-plane answers"). When
        ``environment_type`` is None the environment's own type is used, so the
        engine's dispatch always applies. Raises NotFound when any step of the
        dispatch finds nothing."""
        env_id = checked_id(environment_id, "environment_id")
        if worker_id is not None:
            worker_id = checked_id(worker_id, "worker_id")
        if environment_type is None:
            environment_type = self.resolve_env(env_id).type
        elif environment_type not in ENVIRONMENT_TYPES:
            raise InvalidArgument(
                f"environment_type {environment_type!r} is not one of "
                f"{', '.join(ENVIRONMENT_TYPES)}",
                reason="INVALID_ENUM",
            )
        env_type = environment_type
        value = self._cached(
            Slot.WORKER_VERSION,
            (env_id, env_type, worker_id),
            lambda: (
                queries.worker_version(self.control_plane_replica, env_id, env_type, worker_id)
                or ABSENT
            ),
            scopes=(env_scope(env_id), worker_versions_scope(env_id)),
        )
        if value is ABSENT:
            what = f"worker {worker_id}" if worker_id else "a current worker version"
            raise NotFound(
                f"environment {env_id} has no {what} ({env_type})",
                reason="WORKER_VERSION_NOT_FOUND",
            )
        return value

    # ------------------------------------------------------------------ runs

    def classify_run_id(self, run_id: str) -> IdClassification:
        """How ``run_id`` classifies and which databases ReadRun would try."""
        c = classify(checked_id(run_id, "id"), self.generation)
        try:
            plan = self.topology.read_plan(c.route, c.shard)
        except FailedPrecondition:
            plan = []  # a shard this server does not configure: ReadRun would refuse
        order = tuple(source for source, _db in plan)
        return IdClassification(classification=c, read_order=order, generation=self.generation)

    def read_run(self, run_id: str, *, include_environment: bool = False) -> RunRead:
        """Read a run wherever it lives (docs/design.md, "Reading runs"). Raises NotFound
        when every database in the plan answered "absent"; Unavailable as
        soon as one could not answer (an unknown is never reported as absent)."""
        c = classify(checked_id(run_id, "run_id"), self.generation)
        if self.topology.split and not c.classifiable:
            self.unclassifiable_id_warning.warn(len(c.body))
        for source, db in self.topology.read_plan(c.route, c.shard):
            wait_s, by_deadline = self._wait_budget()
            try:
                with db.admit():
                    row = self._run_readers[db].get((run_id, c.is_friendly), timeout=wait_s)
            except WaitTimeout as exc:
                raise self._gave_up(exc, by_deadline, f"the {source.value} database") from None
            if row is not None:
                callinfo.note("database", source.value)
                return self._with_environment(
                    RunRead(run=row, source=source, residency=c.route, shard=c.shard),
                    include_environment,
                )
        raise NotFound(
            f"run {run_id} was not found in {_plan_names(self.topology, c)}",
            reason="RUN_NOT_FOUND",
        )

    def batch_read_runs(self, run_ids: Sequence[str]) -> list[tuple[str, RunRead | None]]:
        """ReadRun for many ids: ``(id, read or None)`` in request order, with
        one query per database per step of the read plan (a shard that is an
        alias of run-ops shares run-ops' query); the databases of one step
        (run-ops and every shard, then legacy) are read in parallel.

        Raises FailedPrecondition when an id names a shard that is not
        configured, before any database is read."""
        ids = _checked_batch(run_ids, "run_ids")
        pending = {run_id: classify(run_id, self.generation) for run_id in dict.fromkeys(ids)}
        plans = {run_id: self.topology.read_plan(c.route, c.shard) for run_id, c in pending.items()}
        found: dict[str, RunRead] = {}
        step = 0
        while pending:
            # Grouped by pool, not by source: run-ops serves v1 ids, the
            # legacy route's first step and every alias shard's ids in one
            # query. Each id keeps the source its own plan names.
            by_db: dict[int, tuple[Database, list[tuple[RunSource, Classification]]]] = {}
            for c in pending.values():
                plan = plans[c.id]
                if step < len(plan):
                    source, db = plan[step]
                    by_db.setdefault(id(db), (db, []))[1].append((source, c))
            if not by_db:
                break
            groups = list(by_db.values())
            loads = self._load_in_parallel(
                [(db, [(c.id, c.is_friendly) for _s, c in wanted]) for db, wanted in groups]
            )
            for (_db, wanted), rows in zip(groups, loads, strict=True):
                for source, c in wanted:
                    row = rows.get((c.id, c.is_friendly))
                    if row is not None:
                        found[c.id] = RunRead(
                            run=row, source=source, residency=c.route, shard=c.shard
                        )
                        del pending[c.id]
            step += 1
        return [(run_id, found.get(run_id)) for run_id in ids]

    def _load_in_parallel(
        self, work: list[tuple[Database, list[tuple[str, bool]]]]
    ) -> list[dict[tuple[str, bool], TaskRun]]:
        """:func:`_load_runs` for each ``(database, keys)``, all started at
        once on the databases' own threads (so shards are read in parallel),
        each admitted by its database first; the caller waits for all of
        them within one budget. The first failure is raised."""
        wait_s, by_deadline = self._wait_budget()
        handles = [QueryHandle() for _ in work]
        with ExitStack() as admitted:
            for db, _keys in work:
                admitted.enter_context(db.admit())
            pending: list[tuple[threading.Event, dict[str, Any]]] = []
            try:
                for (db, keys), handle in zip(work, handles, strict=True):
                    done = threading.Event()
                    box: dict[str, Any] = {}

                    def run(
                        db: Database = db,
                        keys: list[tuple[str, bool]] = keys,
                        box: dict[str, Any] = box,
                        done: threading.Event = done,
                        handle: QueryHandle = handle,
                    ) -> None:
                        try:
                            with cancellable(handle):
                                box["value"] = _load_runs(db, keys)
                        except BaseException as exc:
                            box["error"] = exc
                        finally:
                            done.set()

                    db.start(run)
                    pending.append((done, box))
                deadline = time.monotonic() + wait_s
                for done, _box in pending:
                    left = max(0.0, deadline - time.monotonic())
                    if not self.cache.wait_for(done, left):
                        raise self._gave_up(
                            TimeoutError(f"gave up after {wait_s:.3f}s"),
                            by_deadline,
                            "a run database",
                        )
            except BaseException:
                # Nobody waits for these reads any more: free their
                # connections (and any lock they wait for) now.
                for handle in handles:
                    handle.cancel()
                raise
        for _done, box in pending:
            if "error" in box:
                raise box["error"]
        return [box["value"] for _done, box in pending]

    def _with_environment(self, read: RunRead, include: bool) -> RunRead:
        if not include:
            return read
        try:
            env = self.resolve_env(read.run.runtime_environment_id)
        except InvalidArgument:
            # Run-ops rows reference the control plane without foreign keys:
            # a stored id may be malformed. That is the run's problem, not
            # the caller's: report the environment as unresolved.
            log.warning(
                "run %s has a malformed environment id; environment unresolved", read.run.id
            )
            return replace(read, environment_unresolved=True)
        except NotFound:
            return replace(read, environment_unresolved=True)
        return replace(read, environment=env)

    # ---------------------------------------------------------- invalidation

    def invalidate(
        self,
        *,
        environment_id: str | None = None,
        organization_id: str | None = None,
        worker_versions_environment_id: str | None = None,
    ) -> None:
        """Drop cached answers here at once, then in every resolver process
        (``publish``): exactly one target must be given. Raises
        :class:`Unavailable` when the other processes could not be told (this
        one has dropped them; a retry is harmless)."""
        given = [
            (n, v)
            for n, v in (
                ("environment_id", environment_id),
                ("organization_id", organization_id),
                ("worker_versions_environment_id", worker_versions_environment_id),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise InvalidArgument(
                "give exactly one of environment_id, organization_id, "
                "worker_versions_environment_id",
                reason="INVALID_TARGET",
            )
        name, value = given[0]
        checked_id(value, name)
        if name == "environment_id":
            kind = "environment"
            self.cache.invalidate_environment(value)
        elif name == "organization_id":
            kind = "organization"
            self.cache.invalidate_organization(value)
        else:
            kind = "worker_versions"
            self.cache.invalidate_worker_versions(value)
        if self._publish is not None:
            self._publish(kind, value)

    def revision(self) -> int:
        """The cache's current revision (docs/near-cache.md)."""
        return self.cache.revision()

    def answer_validity(self) -> AnswerValidity:
        """The validity of the current call's answer, from the cached answers
        it was made of (docs/near-cache.md)."""
        return self.cache.answer_validity(callinfo.sources())

    # --------------------------------------------------------- locked worker

    def resolve_run_locked_worker(
        self, locked_by_id: str | None = None, locked_to_version_id: str | None = None
    ) -> RunLockedWorker:
        """The task a run is locked by and the version it is locked to (docs/design.md,
        "Control-plane answers"). Each part is ``None`` when its id is ``None`` or names no
        row; neither id given → both ``None`` (not an error).

        Each part is cached on its own in the ``LOCKED_WORKER`` slot (many runs
        share a version but not a task). Tasks and workers are written once
        and never updated, so the TTL alone bounds staleness; a deployment row
        linked to a worker later shows within the TTL.
        """
        task_id = checked_id(locked_by_id, "locked_by_id") if locked_by_id is not None else None
        worker_id = (
            checked_id(locked_to_version_id, "locked_to_version_id")
            if locked_to_version_id is not None
            else None
        )
        task = version = None
        if task_id is not None:
            task = self._cached(
                Slot.LOCKED_WORKER,
                ("locked_by", task_id),
                lambda: queries.locked_task(self.control_plane_replica, task_id) or ABSENT,
                scopes=(),
            )
        if worker_id is not None:
            version = self._cached(
                Slot.LOCKED_WORKER,
                ("locked_to_version", worker_id),
                lambda: queries.locked_version(self.control_plane_replica, worker_id) or ABSENT,
                scopes=(),
            )
        return RunLockedWorker(
            locked_by=None if task is None or task is ABSENT else task,
            locked_to_version=None if version is None or version is ABSENT else version,
        )

    # --------------------------------------------------------------- minting

    def resolve_mint_kind(
        self,
        organization_id: str,
        parent_id: str | None = None,
        environment_id: str | None = None,
    ) -> MintKindDecision:
        """Which kind of id a new run of the organization gets (docs/design.md, "Minting ids";
        the order is :func:`minting.decide_mint_kind`'s: a parent's kind first,
        whatever the gates say). Raises InvalidArgument for an unclassifiable
        parent; never fails for a database error: the flag read falls back to
        cuid, uncached. Raises Unavailable when the bulkhead refused the flag
        read (the database untried: the caller retries).

        ``environment_id`` (validated when given) places a root run-ops id
        with ``RUN_OPS_SHARD_PLACEMENT=platform`` and shards configured, and
        is then required (InvalidArgument, ``ENVIRONMENT_ID_REQUIRED``);
        otherwise it is ignored."""
        org_id = checked_id(organization_id, "organization_id")
        parent = (
            classify(checked_id(parent_id, "parent_id"), self.generation)
            if parent_id is not None
            else None
        )
        env_id = (
            checked_id(environment_id, "environment_id") if environment_id is not None else None
        )
        if self.generation is Generation.BASE32HEX:
            decision = self._run_ops_mint_kind(org_id, parent, env_id)
        else:
            decision = minting.decide_mint_kind(
                master_switch_enabled=self.mint_ksuid_enabled,
                split_enabled=self.topology.split,
                parent=parent,
                read_flags=lambda: self._mint_flags(org_id),
            )
        if (
            decision.reason.endswith("_grace")
            or decision.reason == FlagLookup.READ_FAILED.value
            or (decision.shard_reason is not None and decision.shard_reason.endswith("_grace"))
        ):
            # Inside a flip's grace window, or after a failed flag read, the
            # decision changes with time alone: no caller may keep it.
            callinfo.note_source(self.cache.unkeepable_source())
        return decision

    def _run_ops_mint_kind(
        self, org_id: str, parent: Classification | None, environment_id: str | None = None
    ) -> MintKindDecision:
        """The base32hex generation's decision (``runOpsMintKind``, with its
        flip grace), and for a run-ops root run with shards configured, the
        organization's shard over the placed shards (its ``runOpsShard``
        override, else rendezvous hashing). A child of a gen-2 parent stays
        in the parent's shard, placed or not; a v1 parent's child is a v1 id
        in the run-ops database, like it.

        The plan of a flag records object (:func:`minting.plan_root_mint`:
        source, kinds, shard) is computed once and reused while the records
        stay cached, so a cached organization's mint decides by a clock
        comparison (with ``RUN_OPS_SHARD_PLACEMENT=platform``, and for a
        hash, one SHA-256 per active shard)."""
        decision = minting.decide_run_ops_mint_kind(
            master_switch_enabled=self.mint_ksuid_enabled,
            split_enabled=self.topology.split,
            parent=parent,
            read_flags=lambda: self._run_ops_mint_flags(org_id),
            now_ms=time.time_ns() // 1_000_000,
            grace_ms=self.topology.mint_flip_grace_ms,
            plan=lambda flags: self._root_mint_plans.get(
                flags,
                lambda f: minting.plan_root_mint(
                    f,
                    org_id,
                    self._shard_chars,
                    self._not_placed_shards,
                    placement=self._shard_placement,
                    report=self.placement_reports.report,
                ),
            ),
            environment_id=environment_id,
        )
        if parent is not None and decision.shard is not None:
            # A gen-2 parent's shard: a child this server could not read is
            # refused (FAILED_PRECONDITION, SHARD_NOT_CONFIGURED), as its reads are.
            self.topology.read_plan(Residency.NEW, decision.shard)
        return decision

    def _run_ops_mint_flags(self, org_id: str) -> MintFlags | FlagLookup:
        """The organization's and the global mint flag records through the
        ``MINT_KIND`` slot (key ``(org, "base32hex")``); invalidating the
        organization or any of the three global keys drops the entry. A
        fresh entry is returned before anything else is built."""
        key = (org_id, Generation.BASE32HEX.value)
        cached = self.cache.fresh(Slot.MINT_KIND, key)
        if cached is not MISSING:
            return cached  # type: ignore[no-any-return]
        try:
            flags: MintFlags = self._cached(
                Slot.MINT_KIND,
                key,
                lambda: queries.mint_flags(
                    self.control_plane_replica,
                    org_id,
                    self._mint_org_keys,
                    self._mint_global_keys,
                ),
                scopes=(org_scope(org_id), *(flag_scope(k) for k in self._mint_global_keys)),
            )
        except (Unavailable, psycopg.Error) as exc:
            if isinstance(exc, Shed):
                # Shed by the bulkhead, the flag unread: the caller retries
                # (minting cuid is for a flag read that failed).
                raise
            log.warning(
                "could not read the %s flag of organization %s (%s): minting cuid",
                minting.MINT_KIND_FLAG,
                org_id,
                type(exc).__name__,
            )
            return FlagLookup.READ_FAILED
        return flags

    def _mint_flags(self, org_id: str) -> FlagValues | FlagLookup:
        """The organization's and the global ``runOpsMintKsuid`` values through
        the ``MINT_KIND`` slot: invalidating the organization, or the global
        flag (``flag:runOpsMintKsuid``), drops the entry."""
        try:
            flags: FlagValues = self._cached(
                Slot.MINT_KIND,
                org_id,
                lambda: queries.feature_flag_values(
                    self.control_plane_replica, org_id, minting.MINT_FLAG
                ),
                scopes=(org_scope(org_id), flag_scope(minting.MINT_FLAG)),
            )
        except (Unavailable, psycopg.Error) as exc:
            if isinstance(exc, Shed):
                # Shed by the bulkhead, the flag unread: the caller retries
                # (minting cuid is for a flag read that failed).
                raise
            # Errors are never cached, so the next call reads again.
            log.warning(
                "could not read the %s flag of organization %s (%s): minting cuid",
                minting.MINT_FLAG,
                org_id,
                type(exc).__name__,
            )
            return FlagLookup.READ_FAILED
        return flags

    def mint_id(
        self,
        kind: str | None,
        organization_id: str,
        parent_id: str | None = None,
        environment_id: str | None = None,
        region: str | None = None,
    ) -> MintedId:
        """A new run or batch id (``kind`` ``"RUN"``/``"BATCH"``) of the kind
        :meth:`resolve_mint_kind` decides, with its friendly id.

        ``region`` (validated when given: InvalidArgument, ``INVALID_REGION``)
        is the region name the trigger asked for; a RUN's v1 id stamps its
        char, the deployment's ``RUN_OPS_REGION`` when it is ``None``, and a
        BATCH's v1 id always ``0`` (:func:`minting.v1_region`). A name outside
        the region table stamps ``0``, as the platform does, and is logged (at
        most a line a minute). Gen-2, ksuid and cuid ids ignore it."""
        try:
            id_kind = IdKind[kind] if kind is not None else None
        except KeyError:
            id_kind = None
        if id_kind is None:
            shown = "UNSPECIFIED" if kind is None else kind
            raise InvalidArgument(
                f"kind {shown!r} is not one of RUN, BATCH",
                reason="INVALID_ENUM",
                metadata={"field": "kind"},
            )
        if region is not None:
            minting.validate_region(region)
        decision = self.resolve_mint_kind(organization_id, parent_id, environment_id)
        if decision.kind is MintKind.RUN_OPS_ID:
            if decision.shard is not None:
                new = minting.new_run_ops_id_v2(decision.shard)
            else:
                stamped = minting.v1_region(id_kind, region, self.topology.region)
                if region is not None and stamped == region and minting.is_unknown_region(region):
                    self.unknown_region_warning.warn(region)
                new = minting.new_run_ops_id(stamped)
        else:
            new = minting.new_id(decision.kind)
        return MintedId(
            id=new,
            friendly_id=minting.friendly_id(id_kind, new),
            mint_kind=decision.kind,
            shard=decision.shard,
            shard_reason=decision.shard_reason,
        )

    # ------------------------------------------------------------- waitpoints

    def select_store_for_waitpoint(
        self,
        waitpoint_id: str,
        route_kind: str | None,
        *,
        tree_owner_residency: str | None = None,
        cross_tree_idempotency: bool = False,
        has_legacy_parent: bool = False,
    ) -> StoreSelection:
        """Which store a waitpoint completion is written to (docs/design.md, "Waitpoint routing";
        the rules are :func:`waitpoints.select_store`'s). ``route_kind`` and
        ``tree_owner_residency`` are enum names (``"MANUAL"``, ``"LEGACY"``).

        Raises FailedPrecondition (``SHARD_NOT_CONFIGURED``) when the
        completion goes to a shard this server does not configure, as a read
        of a run there would: the completion has nowhere to go that this
        server knows."""
        kind = waitpoints.route_kind_named(route_kind)
        owner = None
        if tree_owner_residency is not None:
            try:
                owner = Residency[tree_owner_residency]
            except KeyError:
                raise InvalidArgument(
                    f"tree_owner_residency {tree_owner_residency!r} is not one of LEGACY, NEW",
                    reason="INVALID_ENUM",
                    metadata={"field": "tree_owner_residency"},
                ) from None
        selection = waitpoints.select_store(
            split_enabled=self.topology.split,
            waitpoint_id=waitpoint_id,
            route_kind=kind,
            tree_owner_residency=owner,
            cross_tree_idempotency=cross_tree_idempotency,
            has_legacy_parent=has_legacy_parent,
            generation=self.generation,
        )
        if selection.shard is not None:
            self.topology.read_plan(Residency.NEW, selection.shard)
        return selection


def _environment_scopes(env: Environment) -> tuple[str, ...]:
    """Scopes only the answer knows: its organization and project."""
    return (org_scope(env.organization_id), project_scope(env.project_id))


def _authenticated_scopes(env: AuthenticatedEnvironment) -> tuple[str, ...]:
    scopes: tuple[str, ...] = (org_scope(env.organization_id), project_scope(env.project_id))
    if env.parent_environment_id:
        # The parent's API key is part of the answer.
        scopes += (env_scope(env.parent_environment_id),)
    return scopes


class _CancellableLoad:
    """A run reader's batch load (:func:`_load_runs` on a pinned connection)
    whose running query :meth:`cancel` cancels: the reader calls it once
    every caller of the batch has given up."""

    def __init__(self, pinned: PinnedConnection) -> None:
        self._pinned = pinned
        self._handle: QueryHandle | None = None

    def __call__(self, keys: Sequence[tuple[str, bool]]) -> dict[tuple[str, bool], TaskRun]:
        self._handle = handle = QueryHandle()
        with cancellable(handle):
            return _load_runs(self._pinned, keys)

    def cancel(self) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()


def _load_runs(
    db: Database | PinnedConnection, keys: Sequence[tuple[str, bool]]
) -> dict[tuple[str, bool], TaskRun]:
    """Runs for ``(identifier, is_friendly_id)`` keys, in one query."""
    rows = queries.runs(
        db, [k for k, friendly in keys if not friendly], [k for k, friendly in keys if friendly]
    )
    found: dict[tuple[str, bool], TaskRun] = {}
    for row in rows:
        found[(row.id, False)] = row
        found[(row.friendly_id, True)] = row
    return found


def _shutting_down() -> Unavailable:
    return Unavailable(
        "the server is shutting down; retry (another replica answers)",
        reason="SHUTTING_DOWN",
        retry_after_s=SHUTTING_DOWN_RETRY_S,
    )


def _env_not_found(env_id: str) -> NotFound:
    return NotFound(
        f"environment {env_id} was not found",
        reason="ENVIRONMENT_NOT_FOUND",
        metadata={"environment_id": env_id},
    )


def _checked_batch(ids: Sequence[str], field: str) -> list[str]:
    if len(ids) > MAX_BATCH_IDS:
        raise InvalidArgument(
            f"{field} has {len(ids)} ids; at most {MAX_BATCH_IDS} per call",
            reason="BATCH_TOO_LARGE",
        )
    return [checked_id(v, f"{field}[{i}]") for i, v in enumerate(ids)]


def _plan_names(topology: Topology, c: Classification) -> str:
    return " or ".join(
        f"the {db.role.value} database"
        if s is RunSource.RUN_OPS_SHARD
        else f"the {s.value} database"
        for s, db in topology.read_plan(c.route, c.shard)
    )


K = TypeVar("K")
V = TypeVar("V")


class IdentityMemo(Generic[K, V]):
    """``derive(key)`` remembered per key object, for keys that are immutable
    cached answers: while a key stays cached its derived value is reused;
    once the cache drops it the next answer is a new object, derived anew.
    Keyed by identity and holding the key, so an id is never reused while
    its entry is here. Bounded: cleared when it outgrows ``limit``."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._entries: dict[int, tuple[K, V]] = {}

    def get(self, key: K, derive: Callable[[K], V]) -> V:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        value = derive(key)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(key)] = (key, value)
        return value
