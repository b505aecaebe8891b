"""The gRPC edge: request messages → resolver calls → response messages,
and resolver errors → gRPC status with a ``google.rpc.ErrorInfo``.

Thin on purpose: the decisions live in resolver.py and below.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from controlplane_resolver.cache import AnswerValidity, split_scope
from controlplane_resolver.domain.minting import MintKind
from controlplane_resolver.domain.residency import Generation, IdFormat, Residency
from controlplane_resolver.domain.roles import RunSource
from controlplane_resolver.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OperationError,
    Unavailable,
)
from controlplane_resolver.invalidation.feed import EventKind, FeedEvent, FeedFull, InvalidationFeed
from controlplane_resolver.logbounds import RateLimitedWarning
from controlplane_resolver.resolver import Resolver
from controlplane_resolver.serving.rendered_cache import RenderedCache
from controlplane_resolver.serving.rendering import (
    UnknownEnumValue,
    enum_name,
    fill,
    render,
)
from controlplane_resolver_client.v1 import resolver_pb2 as pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

log = logging.getLogger(__name__)

ERROR_DOMAIN = "controlplane-resolver"
#: The trailer of gRFC A6 server pushback: how long a client's retry policy
#: waits before its next attempt.
PUSHBACK_KEY = "grpc-retry-pushback-ms"

_STATUS: dict[type[OperationError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    retry_after_s: float | None = None,
) -> None:
    """End the call with ``code``, ``message`` and an ErrorInfo detail; with
    ``retry_after_s``, also a ``google.rpc.RetryInfo`` detail and the
    ``grpc-retry-pushback-ms`` trailer that gRPC clients' retry policies
    honour (gRFC A6)."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    pushback: tuple[tuple[str, str], ...] = ()
    if retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(retry_after_s * 1000))
        retry_detail = any_pb2.Any()
        retry_detail.Pack(retry)
        details.append(retry_detail)
        pushback = ((PUSHBACK_KEY, str(int(retry_after_s * 1000))),)
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=details)
    )
    if pushback:
        status = status._replace(trailing_metadata=(*status.trailing_metadata, *pushback))
    context.abort_with_status(status)


def _status_of(exc: OperationError) -> grpc.StatusCode:
    """The status of a domain error: its class's, or its nearest base's."""
    for cls in type(exc).__mro__:
        code = _STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _not_ready(context: grpc.ServicerContext) -> None:
    abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        "the resolver is starting: start-up checks and pools are not ready yet",
        "NOT_READY",
        retry_after_s=1.0,
    )


#: Request metadata of a call that must answer no older than the database
#: at the time of the call: the server first applies every invalidation
#: committed before it (a near-cache client that moved to this process
#: asks for it, docs/near-cache.md). Honoured by the methods whose answers
#: carry a revision.
SYNC_KEY = "x-resolver-sync"
#: How long a call waits at most for that (its deadline may be shorter).
SYNC_WAIT_S = 1.0


#: Written when a call that asked for sync is answered without it.
_unsynced = RateLimitedWarning(
    log,
    "a call asking for sync (x-resolver-sync) was answered without catching up with the "
    "database's invalidations: the invalidation listener is not listening or its marker "
    "did not come back within the wait; check the listener's state in /metrics",
)


def _asks_sync(context: grpc.ServicerContext) -> bool:
    return any(key == SYNC_KEY for key, _ in context.invocation_metadata() or ())


def _catches_up(method: Callable[..., Any]) -> Callable[..., Any]:
    """For a method whose answers carry a revision: a call with
    :data:`SYNC_KEY` first waits until this process has applied every
    invalidation committed before it (at most :data:`SYNC_WAIT_S` and the
    call's deadline)."""

    @functools.wraps(method)
    def wrapper(self: ResolverServicer, request: Any, context: grpc.ServicerContext) -> Any:
        if self.sync is not None and _asks_sync(context):
            left = context.time_remaining()
            if not self.sync(min(SYNC_WAIT_S, left if left is not None else SYNC_WAIT_S)):
                _unsynced.warn()
        return method(self, request, context)

    return wrapper


def _edge(method: Callable[..., Any]) -> Callable[..., Any]:
    """Translate domain errors into statuses; anything unexpected is INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: ResolverServicer, request: Any, context: grpc.ServicerContext) -> Any:
        resolver = self.resolver
        if resolver is None:
            _not_ready(context)
        try:
            return method(self, resolver, request, context)
        except OperationError as exc:
            abort(
                context,
                _status_of(exc),
                str(exc),
                exc.reason,
                exc.metadata,
                exc.retry_after_s if isinstance(exc, Unavailable) else None,
            )
        except UnknownEnumValue as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), "INVALID_ENUM")
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            abort(
                context,
                grpc.StatusCode.INTERNAL,
                "internal error; the server log has the details",
                "INTERNAL",
            )
        raise AssertionError("unreachable")  # abort() raises

    return wrapper


def _env_response(env: Any) -> pb.ResolveEnvResponse:
    return pb.ResolveEnvResponse(environment=render(pb.Environment, env))


_SCOPE_KINDS = {
    "environment": pb.SCOPE_KIND_ENVIRONMENT,
    "organization": pb.SCOPE_KIND_ORGANIZATION,
    "project": pb.SCOPE_KIND_PROJECT,
    "worker_versions": pb.SCOPE_KIND_WORKER_VERSIONS,
    "flag": pb.SCOPE_KIND_FLAG,
    "all": pb.SCOPE_KIND_ALL,
}
#: The domain's enum members → the proto enum values named after them.
_RESIDENCIES = {m: pb.Residency.Value("RESIDENCY_" + m.name) for m in Residency}
_RUN_SOURCES = {m: pb.RunSource.Value("RUN_SOURCE_" + m.name) for m in RunSource}
_GENERATIONS = {m: pb.IdGeneration.Value("ID_GENERATION_" + m.name) for m in Generation}
_FORMATS = {m: pb.IdFormat.Value("ID_FORMAT_" + m.name) for m in IdFormat}
_MINT_KINDS = {m: pb.MintKind.Value("MINT_KIND_" + m.name) for m in MintKind}
_MAX_AGE_LIMIT_MS = 2**32 - 1
#: A ResolveEnv response is reused while the cache's revision does not
#: move, for a tenth of its answer's remaining life (at most 10 s); its
#: max_age_ms is shorter by as much, so that it never promises more than
#: the cache entry's remaining life.
REUSE_SHARE = 0.1
REUSE_MAX_S = 10.0


def _stamp(revision: pb.AnswerRevision, validity: AnswerValidity, shorter_by: float = 0.0) -> None:
    """The parts of ``revision`` that belong to this call: ``valid_at`` and
    the max age (``shorter_by`` seconds shorter)."""
    revision.valid_at = validity.valid_at
    if validity.expires_in is not None:
        left_ms = int((validity.expires_in - shorter_by) * 1000)
        revision.max_age_ms = max(0, min(_MAX_AGE_LIMIT_MS, left_ms))


def _fill_scope(message: pb.Scope, scope: str) -> None:
    kind, ident = split_scope(scope)
    message.kind = _SCOPE_KINDS[kind]
    message.id = ident


class ResolverServicer(resolver_pb2_grpc.ControlPlaneResolverServiceServicer):
    """Serves :class:`Resolver`; answers UNAVAILABLE until ``resolver`` is
    set, and WatchInvalidations from ``feed`` once that is set too."""

    def __init__(self, resolver: Resolver | None = None) -> None:
        self.resolver = resolver
        self.feed: InvalidationFeed | None = None
        #: Catches up with the database's invalidations (the listener's
        #: sync), for calls with :data:`SYNC_KEY`; None without a listener.
        self.sync: Callable[[float], bool] | None = None
        # Environments are the hot path. Three layers, each keyed by the
        # cached answer itself: its Environment message (ResolveEnv and
        # BatchResolveEnvs), its ResolveEnv response with the answer's own
        # revision parts (server id, scopes), and that response stamped for
        # the current revision, reused while the revision stands still.
        self._rendered = RenderedCache()
        self._env_templates = RenderedCache()
        self._env_responses = RenderedCache()

    def _revised(self, r: Resolver, response: Any) -> Any:
        """``response`` with its ``revision`` set from the call's answer."""
        validity = r.answer_validity()
        self._scoped(response.revision, validity)
        _stamp(response.revision, validity)
        return response

    def _scoped(self, revision: pb.AnswerRevision, validity: AnswerValidity) -> None:
        """The parts of ``revision`` that belong to the answer itself."""
        if self.feed is not None:
            revision.server_id = self.feed.server_id
        for scope in validity.scopes:
            _fill_scope(revision.scopes.add(), scope)

    @_catches_up
    @_edge
    def ResolveEnv(
        self, r: Resolver, request: pb.ResolveEnvRequest, context: Any
    ) -> pb.ResolveEnvResponse:
        env = r.resolve_env(request.environment_id)
        # Read before the answer's validity: a response built after an
        # invalidation carries a newer revision and is never reused.
        revision = r.revision()
        now = time.monotonic()
        kept: tuple[pb.ResolveEnvResponse, int, float] | None = self._env_responses.peek(env)
        if kept is not None and kept[1] == revision and now < kept[2]:
            return kept[0]
        validity = r.answer_validity()

        def template(e: Any) -> pb.ResolveEnvResponse:
            rendered = pb.ResolveEnvResponse()
            rendered.CopyFrom(self._rendered.get(e, _env_response))
            self._scoped(rendered.revision, validity)  # the answer's own: kept
            return rendered

        response = pb.ResolveEnvResponse()
        response.CopyFrom(self._env_templates.get(env, template))
        reuse_s = min(REUSE_MAX_S, (validity.expires_in or 0.0) * REUSE_SHARE)
        _stamp(response.revision, validity, shorter_by=reuse_s)
        if reuse_s > 0:
            self._env_responses.put(env, (response, revision, now + reuse_s))
        return response

    @_catches_up
    @_edge
    def ResolveAuthenticatedEnv(
        self, r: Resolver, request: pb.ResolveAuthenticatedEnvRequest, context: Any
    ) -> pb.ResolveAuthenticatedEnvResponse:
        env = r.resolve_authenticated_env(request.environment_id)
        return self._revised(
            r,
            pb.ResolveAuthenticatedEnvResponse(
                environment=render(pb.AuthenticatedEnvironment, env)
            ),
        )

    @_catches_up
    @_edge
    def ResolveWorkerVersion(
        self, r: Resolver, request: pb.ResolveWorkerVersionRequest, context: Any
    ) -> pb.ResolveWorkerVersionResponse:
        env_type = None
        if request.HasField("environment_type"):
            env_type = enum_name(pb.EnvironmentType.DESCRIPTOR, request.environment_type)
        worker_id = request.worker_id if request.HasField("worker_id") else None
        version = r.resolve_worker_version(request.environment_id, env_type, worker_id)
        return self._revised(r, render(pb.ResolveWorkerVersionResponse, version))

    @_edge
    def ReadRun(self, r: Resolver, request: pb.ReadRunRequest, context: Any) -> pb.ReadRunResponse:
        read = r.read_run(request.run_id, include_environment=request.include_environment)
        return render(pb.ReadRunResponse, read)

    @_catches_up
    @_edge
    def AssertEnvExists(
        self, r: Resolver, request: pb.AssertEnvExistsRequest, context: Any
    ) -> pb.AssertEnvExistsResponse:
        r.assert_env_exists(request.environment_id)
        return self._revised(r, pb.AssertEnvExistsResponse())

    @_edge
    def ClassifyRunId(
        self, r: Resolver, request: pb.ClassifyRunIdRequest, context: Any
    ) -> pb.ClassifyRunIdResponse:
        result = r.classify_run_id(request.id)
        c = result.classification
        response = pb.ClassifyRunIdResponse(
            body=c.body,
            body_length=len(c.body),
            classifiable=c.classifiable,
            reason=c.reason,
            residency=_RESIDENCIES[c.route],
            read_order=[_RUN_SOURCES[s] for s in result.read_order],
            generation=_GENERATIONS[result.generation],
            format=_FORMATS[c.format],
            shard=c.shard,
            region=c.region,
        )
        if c.timestamp_ms is not None:
            response.minted_at.FromMilliseconds(c.timestamp_ms)
        return response

    @_edge
    def Invalidate(
        self, r: Resolver, request: pb.InvalidateRequest, context: Any
    ) -> pb.InvalidateResponse:
        target = request.WhichOneof("target")
        r.invalidate(**({target: getattr(request, target)} if target else {}))
        return pb.InvalidateResponse()

    @_edge
    def BatchResolveEnvs(
        self, r: Resolver, request: pb.BatchResolveEnvsRequest, context: Any
    ) -> pb.BatchResolveEnvsResponse:
        response = pb.BatchResolveEnvsResponse()
        for env_id, env in r.batch_resolve_envs(list(request.environment_ids)):
            result = response.results.add(environment_id=env_id)
            if env is None:
                result.not_found = True
            else:
                result.environment.CopyFrom(self._rendered.get(env, _env_response).environment)
        return response

    @_edge
    def BatchReadRuns(
        self, r: Resolver, request: pb.BatchReadRunsRequest, context: Any
    ) -> pb.BatchReadRunsResponse:
        response = pb.BatchReadRunsResponse()
        for run_id, read in r.batch_read_runs(list(request.run_ids)):
            result = response.results.add(run_id=run_id)
            if read is None:
                result.not_found = True
            else:
                fill(result, read)
        return response

    @_edge
    def ResolveRunLockedWorker(
        self, r: Resolver, request: pb.ResolveRunLockedWorkerRequest, context: Any
    ) -> pb.ResolveRunLockedWorkerResponse:
        locked = r.resolve_run_locked_worker(
            request.locked_by_id if request.HasField("locked_by_id") else None,
            request.locked_to_version_id if request.HasField("locked_to_version_id") else None,
        )
        return render(pb.ResolveRunLockedWorkerResponse, locked)

    @_catches_up
    @_edge
    def ResolveMintKind(
        self, r: Resolver, request: pb.ResolveMintKindRequest, context: Any
    ) -> pb.ResolveMintKindResponse:
        decision = r.resolve_mint_kind(
            request.organization_id,
            request.parent_id if request.HasField("parent_id") else None,
            request.environment_id if request.HasField("environment_id") else None,
        )
        return self._revised(r, render(pb.ResolveMintKindResponse, decision))

    @_edge
    def MintId(self, r: Resolver, request: pb.MintIdRequest, context: Any) -> pb.MintIdResponse:
        minted = r.mint_id(
            enum_name(pb.IdKind.DESCRIPTOR, request.kind),
            request.organization_id,
            request.parent_id if request.HasField("parent_id") else None,
            request.environment_id if request.HasField("environment_id") else None,
            request.region if request.HasField("region") else None,
        )
        return pb.MintIdResponse(
            id=minted.id,
            friendly_id=minted.friendly_id,
            mint_kind=_MINT_KINDS[minted.mint_kind],
            shard=minted.shard,
            shard_reason=minted.shard_reason,
        )

    @_edge
    def SelectStoreForWaitpoint(
        self, r: Resolver, request: pb.SelectStoreForWaitpointRequest, context: Any
    ) -> pb.SelectStoreForWaitpointResponse:
        owner = None
        if request.HasField("tree_owner_residency"):
            owner = enum_name(pb.Residency.DESCRIPTOR, request.tree_owner_residency)
        selection = r.select_store_for_waitpoint(
            request.waitpoint_id,
            enum_name(pb.UnblockRouteKind.DESCRIPTOR, request.route_kind),
            tree_owner_residency=owner,
            cross_tree_idempotency=request.cross_tree_idempotency,
            has_legacy_parent=request.has_legacy_parent,
        )
        return render(pb.SelectStoreForWaitpointResponse, selection)

    def WatchInvalidations(
        self, request: pb.WatchInvalidationsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchInvalidationsResponse]:
        feed = self.feed
        if feed is None or self.resolver is None:
            _not_ready(context)
            return
        events = feed.watch(context.cancel)
        try:
            first = next(events, None)
        except FeedFull as exc:
            abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{exc}: retry later, or against another replica",
                "TOO_MANY_WATCHERS",
                retry_after_s=1.0,
            )
            return
        if first is None:  # the feed is closed: the server is stopping
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; watch another replica",
                "SHUTTING_DOWN",
                retry_after_s=0.1,
            )
            return
        heartbeat_ms = int(feed.heartbeat_s * 1000)
        yield _watch_message(feed.server_id, first, heartbeat_ms)
        for event in events:
            yield _watch_message(feed.server_id, event, heartbeat_ms)


def _watch_message(
    server_id: str, event: FeedEvent, heartbeat_ms: int
) -> pb.WatchInvalidationsResponse:
    message = pb.WatchInvalidationsResponse(server_id=server_id, revision=event.revision)
    if event.kind is EventKind.INVALIDATION:
        _fill_scope(message.invalidation.scope, event.scope)
    elif event.kind is EventKind.START:
        message.start.heartbeat_interval_ms = heartbeat_ms
        message.start.listening = event.listening
    else:
        message.heartbeat.listening = event.listening
    return message
