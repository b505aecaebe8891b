"""AsyncResolverClient: :class:`~.client.ResolverClient` for asyncio
(``grpc.aio``), method for method, with the same contract and the same
near-cache (docs/near-cache.md)::

    async with AsyncResolverClient("127.0.0.1:50051", near_cache=True) as client:
        env = await client.resolve_env("cm4…")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from . import _requests
from ._requests import environment_of, itself, true
from .client import (
    DEFAULT_TIMEOUT_S,
    RECONNECT_WAIT_S,
    SYNC_METADATA,
    UNREACHED_RETRIES,
    ResolverError,
    _own,
    channel_options,
)
from .near_cache import (
    MISSING,
    RECONNECT_CAP_S,
    RECONNECT_FIRST_S,
    RENEW_AFTER,
    NearCache,
    NearCacheStats,
    warn_refused,
)
from .v1 import resolver_pb2 as pb
from .v1 import resolver_pb2_grpc

T = TypeVar("T")


async def _ready_within(channel: grpc.aio.Channel, wait: float) -> bool:
    """Whether ``channel`` has a ready connection within ``wait`` seconds;
    asks it to connect meanwhile."""
    if wait <= 0:
        return False
    try:
        await asyncio.wait_for(channel.channel_ready(), wait)
        return True
    except asyncio.TimeoutError:
        return False


def create_aio_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    pinned: bool = False,
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` with the resolver's service config
    (:func:`~.client.channel_options`, then ``options``)."""
    full_options = channel_options(options, pinned=pinned)
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=full_options)
    return grpc.aio.insecure_channel(target, options=full_options)


class AsyncResolverClient:
    """The asyncio twin of :class:`~.client.ResolverClient`: the same
    arguments (``channel`` must be a ``grpc.aio`` channel built with
    :func:`create_aio_channel` or ``options=channel_options()``), the same
    methods as coroutines, the same results and errors. The near-cache's
    stream runs as a task of the loop that makes the first call; close with
    :meth:`close` or ``async with``."""

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        near_cache: bool | NearCache = False,
    ) -> None:
        secure = bool(tls or tls_ca or tls_cert or tls_key)
        credentials = (
            grpc.ssl_channel_credentials(
                root_certificates=tls_ca, private_key=tls_key, certificate_chain=tls_cert
            )
            if secure
            else None
        )
        if channel is None:
            if target is None:
                raise ValueError("give a target address or a channel")
            channel = create_aio_channel(target, credentials=credentials, options=options)
        elif target is not None or secure or options:
            raise ValueError(
                "channel= is used as built: give target, tls* and options to the client "
                "or to create_aio_channel(), not with a channel"
            )
        self.channel = channel
        self.stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.near_cache: NearCache | None = None
        self._near_channel: grpc.aio.Channel | None = None
        self._near_stub = self.stub
        self._watch_task: asyncio.Task[None] | None = None
        if near_cache:
            self.near_cache = _own(near_cache, self)
            if target is not None:
                self._pinned = (target, credentials, options)
                self._near_channel = create_aio_channel(
                    target, credentials=credentials, options=options, pinned=True
                )
                self._near_stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(
                    self._near_channel
                )

    async def __aenter__(self) -> AsyncResolverClient:
        self._start_watch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.near_cache is not None:
            self.near_cache.close()
        if self._near_channel is not None:
            await self._near_channel.close()
        await self.channel.close()

    def near_cache_stats(self) -> NearCacheStats | None:
        """The near-cache's counters and stream state (None without one)."""
        return self.near_cache.get_stats() if self.near_cache is not None else None

    # ---------------------------------------------------------- near-cache

    async def _renew_channel(self) -> None:
        """A new pinned channel, which picks among the target's addresses
        afresh (the old one's server refuses the stream)."""
        target, credentials, options = self._pinned
        old = self._near_channel
        self._near_channel = create_aio_channel(
            target, credentials=credentials, options=options, pinned=True
        )
        self._near_stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(self._near_channel)
        if old is not None:
            await old.close()

    def _start_watch(self) -> None:
        if self.near_cache is not None and self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(self.near_cache), name="near-cache-stream"
            )

    async def _watch(self, cache: NearCache) -> None:
        """Keep the stream open, reconnecting with backoff; a stream silent
        past its limit (:meth:`NearCache.silent_for`) is cancelled. One read
        is kept pending across checks of the limit: cancelling a read
        cancels the whole call."""
        delay = RECONNECT_FIRST_S
        warned: set[grpc.StatusCode] = set()
        unstarted = 0
        while True:
            why = "ended by the server"
            started = False
            cache.on_opening()
            call = self._near_stub.WatchInvalidations(
                pb.WatchInvalidationsRequest(), metadata=self._metadata
            )
            read: asyncio.Future[Any] | None = None
            try:
                while True:
                    if read is None:
                        read = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({read}, timeout=max(0.01, -cache.silent_for()))
                    if not done:
                        if cache.silent_for() > 0:
                            why = "silent past its limit"
                            break
                        continue
                    try:
                        message = read.result()
                    except asyncio.CancelledError:  # the read, not this task
                        why = "its read was cancelled"
                        break
                    read = None
                    if message is grpc.aio.EOF:
                        break
                    cache.on_message(message)
                    started = True
                    delay = RECONNECT_FIRST_S
            except grpc.RpcError as exc:
                why = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
                warn_refused(exc.code(), warned)  # type: ignore[attr-defined]
            except Exception as exc:  # never let the task die
                why = f"{type(exc).__name__}: {exc}"
            finally:
                call.cancel()
                if read is not None and not read.done():
                    read.cancel()
            cache.on_broken(why)
            unstarted = 0 if started else unstarted + 1
            if unstarted >= RENEW_AFTER and self._near_channel is not None:
                unstarted = 0
                await self._renew_channel()
                cache.on_renewed()
                delay = RECONNECT_FIRST_S  # a new channel starts afresh
            await asyncio.sleep(delay)  # reconnect backoff
            delay = min(delay * 2, RECONNECT_CAP_S)

    # ---------------------------------------------------------------- calls

    async def _call(
        self,
        rpc: str,
        request: Any,
        timeout: float | None,
        stub: Any = None,
        sync: bool = False,
    ) -> Any:
        """The response; raises :class:`ResolverError` for every failure. A
        call that never reached a resolver is made again when the channel
        connects in time (:data:`~.client.RECONNECT_WAIT_S`,
        :data:`~.client.UNREACHED_RETRIES`).
        ``sync``: send :data:`~.client.SYNC_METADATA`."""
        stub = stub or self.stub
        method = getattr(stub, rpc)
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        metadata = (*(self._metadata or ()), SYNC_METADATA) if sync else self._metadata
        try:
            return await method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            failed = ResolverError.from_rpc_error(error)
        channel = self._near_channel if stub is self._near_stub and self._near_channel else None
        wait_until = min(deadline, loop.time() + RECONNECT_WAIT_S)
        for _ in range(UNREACHED_RETRIES):
            if not failed.unreached or not await _ready_within(
                channel or self.channel, wait_until - loop.time()
            ):
                break
            try:
                return await method(
                    request,
                    timeout=max(0.0, deadline - loop.time()),
                    metadata=metadata,
                    # A channel can still say it is ready just after its
                    # connection was reset: wait for the next one.
                    wait_for_ready=True,
                )
            except grpc.RpcError as error:
                failed = ResolverError.from_rpc_error(error)
        raise failed

    async def _find(
        self,
        rpc: str,
        request: Any,
        timeout: float | None,
        stub: Any = None,
        sync: bool = False,
    ) -> Any:
        try:
            return await self._call(rpc, request, timeout, stub, sync)
        except ResolverError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _kept(
        self,
        key: Hashable,
        rpc: str,
        request: Any,
        timeout: float | None,
        unwrap: Callable[[Any], T],
        *,
        not_found_is_none: bool = True,
    ) -> T | None:
        call = self._find if not_found_is_none else self._call
        near = self.near_cache
        if near is None:
            response = await call(rpc, request, timeout)
            return unwrap(response) if response is not None else None
        self._start_watch()
        value = near.get(key)
        if value is not MISSING:
            return value  # type: ignore[no-any-return]
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        response = await self._ask(call, rpc, request, timeout, sync=False)
        if near.moved(response):
            # As the threaded client: asked again once caught up.
            left = max(0.0, deadline - loop.time())
            response = await self._ask(call, rpc, request, left, sync=True)
        near.answered(response)
        if response is None:
            return None
        value = unwrap(response)
        near.put(key, value, response.revision)
        return value  # type: ignore[no-any-return]

    async def _ask(
        self, call: Callable[..., Any], rpc: str, request: Any, timeout: float, *, sync: bool
    ) -> Any:
        """A near-cache miss's call: the response, or None for NOT_FOUND."""
        # Misses go to one server process at a time, the pinned channel's,
        # live stream or not (replicas apply an invalidation milliseconds
        # apart: alternating could answer an older value after a newer
        # one); the balanced channel only when that process answers
        # UNAVAILABLE itself (as the threaded client, client.py).
        if self._near_channel is None:
            return await call(rpc, request, timeout, None, sync)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            return await call(rpc, request, timeout, self._near_stub, sync)
        except ResolverError as error:
            left = deadline - loop.time()
            if error.code != grpc.StatusCode.UNAVAILABLE or error.unreached or left <= 0:
                raise
            return await call(rpc, request, left, None, sync)

    # ----------------------------------------------------------------- RPCs

    async def resolve_env(
        self, environment_id: str, *, timeout: float | None = None
    ) -> pb.Environment | None:
        """The environment (ResolveEnv), or None when absent."""
        return await self._kept(
            ("ResolveEnv", environment_id),
            "ResolveEnv",
            pb.ResolveEnvRequest(environment_id=environment_id),
            timeout,
            environment_of,
        )

    async def resolve_authenticated_env(
        self, environment_id: str, *, timeout: float | None = None
    ) -> pb.AuthenticatedEnvironment | None:
        """The environment with secrets and relations, or None when absent."""
        return await self._kept(
            ("ResolveAuthenticatedEnv", environment_id),
            "ResolveAuthenticatedEnv",
            pb.ResolveAuthenticatedEnvRequest(environment_id=environment_id),
            timeout,
            environment_of,
        )

    async def resolve_worker_version(
        self,
        environment_id: str,
        *,
        environment_type: pb.EnvironmentType.ValueType | None = None,
        worker_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.ResolveWorkerVersionResponse | None:
        """``worker``, ``tasks``, ``queues`` and ``deployment``, or None."""
        return await self._kept(
            ("ResolveWorkerVersion", environment_id, environment_type, worker_id),
            "ResolveWorkerVersion",
            _requests.worker_version(environment_id, environment_type, worker_id),
            timeout,
            itself,
        )

    async def assert_env_exists(self, environment_id: str, *, timeout: float | None = None) -> bool:
        """True when the environment exists, False when it does not."""
        exists = await self._kept(
            ("AssertEnvExists", environment_id),
            "AssertEnvExists",
            pb.AssertEnvExistsRequest(environment_id=environment_id),
            timeout,
            true,
        )
        return exists is not None

    async def resolve_mint_kind(
        self,
        organization_id: str,
        *,
        parent_id: str | None = None,
        environment_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.ResolveMintKindResponse:
        """Which kind of id a new run of the organization gets, and why.
        ``environment_id`` (the environment a root run is triggered in) is
        required by a server placing root runs by environment
        (``RUN_OPS_SHARD_PLACEMENT=platform``) and ignored by others."""
        decision: pb.ResolveMintKindResponse | None = await self._kept(
            ("ResolveMintKind", organization_id, parent_id, environment_id),
            "ResolveMintKind",
            _requests.mint_kind(organization_id, parent_id, environment_id),
            timeout,
            itself,
            not_found_is_none=False,
        )
        assert decision is not None  # NOT_FOUND raises here
        return decision

    async def read_run(
        self, run_id: str, *, include_environment: bool = False, timeout: float | None = None
    ) -> pb.ReadRunResponse | None:
        """The run with ``source`` and ``residency``, or None when absent."""
        request = pb.ReadRunRequest(run_id=run_id, include_environment=include_environment)
        response: pb.ReadRunResponse | None = await self._find("ReadRun", request, timeout)
        return response

    async def resolve_run_locked_worker(
        self,
        *,
        locked_by_id: str | None = None,
        locked_to_version_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.ResolveRunLockedWorkerResponse:
        """``locked_by`` and ``locked_to_version``; each unset when absent."""
        request = _requests.run_locked_worker(locked_by_id, locked_to_version_id)
        response: pb.ResolveRunLockedWorkerResponse = await self._call(
            "ResolveRunLockedWorker", request, timeout
        )
        return response

    async def classify_run_id(
        self, id: str, *, timeout: float | None = None
    ) -> pb.ClassifyRunIdResponse:
        """How ``id`` classifies by shape and the read order it implies."""
        response: pb.ClassifyRunIdResponse = await self._call(
            "ClassifyRunId", pb.ClassifyRunIdRequest(id=id), timeout
        )
        return response

    async def mint_id(
        self,
        kind: pb.IdKind.ValueType,
        organization_id: str,
        *,
        parent_id: str | None = None,
        environment_id: str | None = None,
        region: str | None = None,
        timeout: float | None = None,
    ) -> pb.MintIdResponse:
        """A new run or batch id, its friendly id and the kind minted.
        ``environment_id`` (the environment a root run is triggered in) is
        required by a server placing root runs by environment
        (``RUN_OPS_SHARD_PLACEMENT=platform``) and ignored by others.
        ``region`` is the region name the trigger asks for (``"us-east-1"``):
        a run's v1 id stamps its char (an unknown name ``0``); without it the
        server's ``RUN_OPS_REGION``. Batch ids and gen-2 ids ignore it."""
        request = _requests.mint_id(kind, organization_id, parent_id, environment_id, region)
        response: pb.MintIdResponse = await self._call("MintId", request, timeout)
        return response

    async def select_store_for_waitpoint(
        self,
        waitpoint_id: str,
        route_kind: pb.UnblockRouteKind.ValueType,
        *,
        tree_owner_residency: pb.Residency.ValueType | None = None,
        cross_tree_idempotency: bool = False,
        has_legacy_parent: bool = False,
        timeout: float | None = None,
    ) -> pb.SelectStoreForWaitpointResponse:
        """Which store a waitpoint completion is written to, and why."""
        request = _requests.store_for_waitpoint(
            waitpoint_id,
            route_kind,
            tree_owner_residency,
            cross_tree_idempotency,
            has_legacy_parent,
        )
        response: pb.SelectStoreForWaitpointResponse = await self._call(
            "SelectStoreForWaitpoint", request, timeout
        )
        return response

    async def invalidate(
        self,
        *,
        environment_id: str | None = None,
        organization_id: str | None = None,
        worker_versions_environment_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Drop cached answers; give exactly one target."""
        request = _requests.invalidate(
            environment_id, organization_id, worker_versions_environment_id
        )
        await self._call("Invalidate", request, timeout)

    async def batch_resolve_envs(
        self, environment_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[pb.BatchResolveEnvsResult]:
        """One result per id, in order; absent ids have ``not_found`` set."""
        request = pb.BatchResolveEnvsRequest(environment_ids=list(environment_ids))
        response = await self._call("BatchResolveEnvs", request, timeout)
        return list(response.results)

    async def batch_read_runs(
        self, run_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[pb.BatchReadRunsResult]:
        """One result per id, in order; absent ids have ``not_found`` set."""
        request = pb.BatchReadRunsRequest(run_ids=list(run_ids))
        response = await self._call("BatchReadRuns", request, timeout)
        return list(response.results)
