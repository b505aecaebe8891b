"""ResolverClient: one typed method per RPC over the generated stub.

Contract of every method:

* returns the response message (or the part of it named in the docstring);
* returns ``None`` when the server answers ``NOT_FOUND`` — only the methods
  whose RPC can answer it (``resolve_env``, ``resolve_authenticated_env``,
  ``resolve_worker_version``, ``read_run``; ``assert_env_exists`` returns
  ``False``); the others never return ``None`` and raise for any failure;
* raises :class:`ResolverError` (a :class:`grpc.RpcError`) for every other
  failure, carrying the gRPC status code, the message and the
  ``google.rpc.ErrorInfo`` reason;
* waits at most ``timeout`` seconds (the client's default deadline unless
  given per call).

``UNAVAILABLE`` is retried by the channel itself with exponential backoff,
throttled as gRFC A6 describes (``service_config.json``): the server answers
it only when a database could not answer, never for a missing row, so a
retry is always safe. A lost connection is made again at once, and a failed
connection attempt is tried again 100 ms after it began
(:func:`channel_options`), before a call's retries have run out: the calls
of a server process that died go to another process behind the same
address. The channel balances calls round-robin over every address the
target resolves to, so
``dns:///controlplane-resolver.<namespace>.svc:50051`` (a headless Service)
spreads an engine node's calls over all replicas. All of that is channel
configuration: a channel built elsewhere has it only when it was built with
:func:`channel_options` (or by :func:`create_channel`).

``near_cache=True`` keeps the answers of ``resolve_env``,
``resolve_authenticated_env``, ``resolve_worker_version``,
``assert_env_exists`` and ``resolve_mint_kind`` in memory, kept valid by a
``WatchInvalidations`` stream (:mod:`.near_cache`, docs/near-cache.md).
"""

from __future__ import annotations

import json
import time
import warnings
import weakref
from collections.abc import Callable, Hashable, Sequence
from importlib import resources
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from . import _requests
from ._requests import environment_of, itself, true
from .near_cache import MISSING, NearCache, NearCacheStats, StreamWatcher
from .v1 import resolver_pb2 as pb
from .v1 import resolver_pb2_grpc

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0

#: The metadata key of the request id: sent by callers who have one, and
#: echoed by the server in every response's trailing metadata (a generated
#: id when the caller sent none or one it would not accept).
REQUEST_ID_KEY = "x-request-id"

Metadata = tuple[tuple[str, str | bytes], ...]


def service_config() -> str:
    """The channel's service config, as JSON text: round-robin balancing, a
    5 s default timeout, retries of ``UNAVAILABLE`` and retry throttling."""
    return resources.files(__package__).joinpath("service_config.json").read_text()


def pinned_service_config() -> str:
    """:func:`service_config` with one connection at a time (``pick_first``
    over the target's addresses, shuffled): the near-cache's channel, whose
    answers must come from the server process its stream watches."""
    config = json.loads(service_config())
    config["loadBalancingConfig"] = [{"pick_first": {"shuffleAddressList": True}}]
    return json.dumps(config)


#: The channel's reconnect backoff, in milliseconds: after a failed
#: connection attempt, the next one starts this long after the failed one
#: began (±20 %), the wait growing 1.6 times per failure up to the maximum.
#: gRPC's own default (1 s, up to 120 s) fails every call for about a second
#: whenever one reconnect fails, longer than the retries of ``UNAVAILABLE``
#: last (350 ms ±20 %); 100 ms is the least grpc core accepts.
INITIAL_RECONNECT_BACKOFF_MS = 100
#: After an outage, the channel reconnects within this long (+20 %) of the
#: server's return.
MAX_RECONNECT_BACKOFF_MS = 5000


def channel_options(
    options: Sequence[tuple[str, Any]] = (), *, pinned: bool = False
) -> list[tuple[str, Any]]:
    """The options a channel to the resolver needs, followed by ``options``:
    the service config (:func:`service_config`, or
    :func:`pinned_service_config` when ``pinned``), retries turned on, and a
    short reconnect backoff (:data:`INITIAL_RECONNECT_BACKOFF_MS` up to
    :data:`MAX_RECONNECT_BACKOFF_MS`), so that a connection lost to a server
    process that died is made again before the retries of the calls it
    failed have run out. An option in ``options`` replaces the one of the
    same name (grpc would keep the first of two).

    For callers who build their own channel::

        channel = grpc.secure_channel(target, credentials, options=channel_options())
        client = ResolverClient(channel=channel)

    (:func:`create_channel` does that and spares the client's warning.)
    """
    given = {name for name, _ in options}
    ours = [
        ("grpc.service_config", pinned_service_config() if pinned else service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    return [*(option for option in ours if option[0] not in given), *options]


#: Request metadata that asks the server to apply every invalidation
#: committed before the call first (docs/near-cache.md): sent by the
#: near-cache when its lookups move to another server process, so that
#: their answers are no older than those it returned before.
SYNC_METADATA = ("x-resolver-sync", "1")


#: A call that failed without reaching a resolver (:attr:`ResolverError.unreached`)
#: is made again while the channel has a ready connection within this long
#: of the first failure (and before the call's deadline), at most
#: :data:`UNREACHED_RETRIES` times. Under many calls at once, the channel's
#: retries of such failures are soon throttled (gRFC A6) while it reconnects
#: to the process that took over the address; the client's own tries ride
#: that out. When no resolver answers at all, a call fails up to this much
#: later than its retries alone would make it.
RECONNECT_WAIT_S = 1.0
#: How many times the client makes again a call that did not reach a
#: resolver (:data:`RECONNECT_WAIT_S`), as the TypeScript client does. Each
#: try waits for a connection (``wait_for_ready``); a second one covers a
#: connection lost again under the first, e.g. one a channel still took for
#: ready just after it was reset.
UNREACHED_RETRIES = 2


def _ready_within(channel: grpc.Channel, wait: float) -> bool:
    """Whether ``channel`` has a ready connection within ``wait`` seconds;
    asks it to connect meanwhile."""
    if wait <= 0:
        return False
    ready = grpc.channel_ready_future(channel)
    try:
        ready.result(timeout=wait)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        ready.cancel()


#: Channels built by create_channel(): ResolverClient(channel=…) takes them
#: without a warning.
_configured_channels: weakref.WeakSet[Any] = weakref.WeakSet()


def create_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
    pinned: bool = False,
) -> grpc.Channel:
    """A channel to ``target`` with the resolver's service config
    (:func:`channel_options`, then ``options``), secure when ``credentials``
    are given, wrapped by ``interceptors`` (``grpc.intercept_channel``);
    ``pinned``: one connection at a time (:func:`pinned_service_config`).
    For :class:`ResolverClient`'s ``channel=`` when the constructor's own
    arguments do not cover the channel needed."""
    full_options = channel_options(options, pinned=pinned)
    if credentials is not None:
        channel = grpc.secure_channel(target, credentials, options=full_options)
    else:
        channel = grpc.insecure_channel(target, options=full_options)
    if interceptors:
        channel = grpc.intercept_channel(channel, *interceptors)
    _configured_channels.add(channel)
    return channel


class BareChannelWarning(UserWarning):
    """``ResolverClient(channel=…)`` got a channel :func:`create_channel` did
    not build: it has the resolver's retries, retry throttling and
    round-robin balancing only if it was built with :func:`channel_options`.
    Filter this category out when it was."""


class CallableStatusCode:
    """:attr:`ResolverError.code`: the call's :class:`grpc.StatusCode`, both
    as a value and as the method of grpc's call interface.

    ``exc.code()`` returns the ``grpc.StatusCode`` (as for every
    ``grpc.RpcError``); ``exc.code == grpc.StatusCode.UNAVAILABLE``,
    ``exc.code.name`` and hashing behave as the status code itself does, so
    code written for either form keeps working. Compare with ``==``, not
    ``is`` (or compare ``exc.code()`` with ``is``).
    """

    __slots__ = ("_code",)

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def __call__(self) -> grpc.StatusCode:
        return self._code

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CallableStatusCode):
            return bool(self._code == other._code)
        return bool(self._code == other)

    def __hash__(self) -> int:
        return hash(self._code)

    @property
    def name(self) -> str:
        return str(self._code.name)

    @property
    def value(self) -> tuple[int, str]:
        value: tuple[int, str] = self._code.value
        return value

    def __repr__(self) -> str:
        return repr(self._code)

    def __str__(self) -> str:
        return str(self._code)


class ResolverError(grpc.RpcError):
    """A call that failed (with a status other than NOT_FOUND, for the methods
    that return ``None`` for it).

    A :class:`grpc.RpcError` with grpc's call-error interface —
    :meth:`code`, :meth:`details`, :meth:`initial_metadata`,
    :meth:`trailing_metadata` — so ``except grpc.RpcError`` code and
    ``grpc_status.rpc_status.from_call(exc)`` work on it, and with the
    resolver's own fields: :attr:`message` (= ``details()``), :attr:`reason`
    (the ``ErrorInfo`` reason, ``None`` when the status carried no detail),
    :attr:`metadata` (the ``ErrorInfo`` metadata, a ``dict``) and
    :attr:`request_id` (the id the server echoed).

    ``code`` is a :class:`CallableStatusCode`: ``exc.code()`` and
    ``exc.code == grpc.StatusCode.X`` both work.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str | None,
        metadata: dict[str, str],
        *,
        initial_metadata: Metadata = (),
        trailing_metadata: Metadata = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = CallableStatusCode(code)
        self.message = message
        self.reason = reason
        self.metadata = metadata
        self._initial_metadata = initial_metadata
        self._trailing_metadata = trailing_metadata

    def details(self) -> str:
        """The status message (grpc's interface; the same as :attr:`message`)."""
        return self.message

    def initial_metadata(self) -> Metadata:
        """The response's initial metadata, as the failed call received it."""
        return self._initial_metadata

    def trailing_metadata(self) -> Metadata:
        """The response's trailing metadata, as the failed call received it
        (``grpc-status-details-bin`` and ``x-request-id`` among them)."""
        return self._trailing_metadata

    @property
    def request_id(self) -> str | None:
        """The ``x-request-id`` the server echoed (the caller's, or the one it
        generated); ``None`` when the answer did not come from the resolver
        (e.g. the channel could not connect)."""
        for key, value in (*self._trailing_metadata, *self._initial_metadata):
            if key == REQUEST_ID_KEY and isinstance(value, str):
                return value
        return None

    @property
    def unreached(self) -> bool:
        """The call failed ``UNAVAILABLE`` without an answer from the
        resolver: its connection was lost or none was ready (and the
        channel's retries ran out, or were throttled)."""
        return self.code == grpc.StatusCode.UNAVAILABLE and self.request_id is None

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ResolverError:
        call: Any = error
        reason, metadata = None, {}
        status = rpc_status.from_call(call)
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, metadata = info.reason, dict(info.metadata)
        return cls(
            call.code(),
            call.details() or "",
            reason,
            metadata,
            initial_metadata=tuple(call.initial_metadata() or ()),
            trailing_metadata=tuple(call.trailing_metadata() or ()),
        )


class ResolverClient:
    """A channel to one resolver address and typed methods over it.

    Give ``target`` and the client builds the channel, with the resolver's
    service config (:func:`channel_options`). Or give ``channel`` (not both),
    for credentials or interceptors the constructor's arguments do not
    cover: the client cannot add options to an existing channel, so build
    it with :func:`create_channel`, or with ``options=channel_options()``;
    any other channel makes the client warn (:class:`BareChannelWarning`,
    once per calling line), since it has no retries, retry throttling or
    round-robin balancing. Close with :meth:`close` (which closes the
    channel, given or built) or use as a context manager.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        near_cache: bool | NearCache = False,
    ) -> None:
        """``token`` is sent as ``authorization: Bearer <token>`` on every
        call. TLS is used when ``tls`` is true or any ``tls_*`` is given:
        ``tls_ca`` (PEM) verifies the server (system roots when omitted);
        ``tls_cert``/``tls_key`` (PEM) are the client certificate for mutual
        TLS. ``tls*`` and ``options`` configure the channel the client
        builds, so they cannot be combined with ``channel``.

        ``near_cache``: ``True`` (or a :class:`NearCache`, to size it) keeps
        answers in memory (docs/near-cache.md). With ``target``, the
        near-cache's stream and its misses share a channel of their own,
        pinned to one server process; with ``channel``, they use it, and
        answers that come from another process than the stream's are not
        kept."""
        secure = bool(tls or tls_ca or tls_cert or tls_key)
        credentials = None
        if channel is None:
            if target is None:
                raise ValueError("give a target address or a channel")
            credentials = (
                grpc.ssl_channel_credentials(
                    root_certificates=tls_ca, private_key=tls_key, certificate_chain=tls_cert
                )
                if secure
                else None
            )
            channel = create_channel(target, credentials=credentials, options=options)
        else:
            if target is not None or secure or options:
                raise ValueError(
                    "channel= is used as built: give target, tls* and options to the client "
                    "or to create_channel(), not with a channel"
                )
            if channel not in _configured_channels:
                warnings.warn(
                    "ResolverClient(channel=…): a channel not built by create_channel() has "
                    "the resolver's retries, retry throttling and round-robin balancing only "
                    "if it was built with options=channel_options()",
                    BareChannelWarning,
                    stacklevel=2,
                )
        self.channel = channel
        self.stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.near_cache: NearCache | None = None
        self._near_channel: grpc.Channel | None = None
        self._watcher: StreamWatcher | None = None
        if near_cache:
            self.near_cache = _own(near_cache, self)
            self._near_stub = self.stub
            renew: Callable[[], None] | None = None
            if target is not None:
                pinned_target, pinned_options = target, options

                def renew_channel() -> None:
                    # A new channel picks among the target's addresses afresh.
                    old = self._near_channel
                    self._near_channel = create_channel(
                        pinned_target, credentials=credentials, options=pinned_options, pinned=True
                    )
                    self._near_stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(
                        self._near_channel
                    )
                    if old is not None:
                        old.close()

                renew = renew_channel
                renew()
            metadata = self._metadata
            self._watcher = StreamWatcher(
                self.near_cache,
                lambda: self._near_stub.WatchInvalidations(
                    pb.WatchInvalidationsRequest(), metadata=metadata
                ),
                renew,
            )
            self._watcher.start()

    def near_cache_stats(self) -> NearCacheStats | None:
        """The near-cache's counters and stream state (None without one)."""
        return self.near_cache.get_stats() if self.near_cache is not None else None

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        if self._near_channel is not None:
            self._near_channel.close()
        self.channel.close()

    def __enter__(self) -> ResolverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: Callable[..., T],
        request: Any,
        timeout: float | None,
        channel: grpc.Channel | None = None,
        sync: bool = False,
    ) -> T:
        """The response; raises :class:`ResolverError` for every failure.
        ``channel``: the one ``method`` calls over (the client's own unless
        given); ``sync``: send :data:`SYNC_METADATA`. A call that never
        reached a resolver is made again when the channel connects in time
        (:data:`RECONNECT_WAIT_S`, :data:`UNREACHED_RETRIES`)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        metadata = (*(self._metadata or ()), SYNC_METADATA) if sync else self._metadata
        try:
            return method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            failed = ResolverError.from_rpc_error(error)
        wait_until = min(deadline, time.monotonic() + RECONNECT_WAIT_S)
        for _ in range(UNREACHED_RETRIES):
            if not failed.unreached or not _ready_within(
                channel or self.channel, wait_until - time.monotonic()
            ):
                break
            try:
                return method(
                    request,
                    timeout=max(0.0, deadline - time.monotonic()),
                    metadata=metadata,
                    # A channel can still say it is ready just after its
                    # connection was reset: wait for the next one.
                    wait_for_ready=True,
                )
            except grpc.RpcError as error:
                failed = ResolverError.from_rpc_error(error)
        raise failed

    def _find(
        self,
        method: Callable[..., T],
        request: Any,
        timeout: float | None,
        channel: grpc.Channel | None = None,
        sync: bool = False,
    ) -> T | None:
        """The response, or ``None`` for NOT_FOUND: only for RPCs that can
        answer NOT_FOUND (docs/errors.md)."""
        try:
            return self._call(method, request, timeout, channel, sync)
        except ResolverError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def _kept(
        self,
        key: Hashable,
        rpc: str,
        request: Any,
        timeout: float | None,
        unwrap: Callable[[Any], T],
        *,
        not_found_is_none: bool = True,
    ) -> T | None:
        """``unwrap(response)`` from the near-cache, or from the RPC (then
        kept when the rules allow); None for NOT_FOUND when
        ``not_found_is_none`` (never kept), else it raises as every failure."""
        call = self._find if not_found_is_none else self._call
        near = self.near_cache
        if near is None:
            response = call(getattr(self.stub, rpc), request, timeout)
            return unwrap(response) if response is not None else None
        value = near.get(key)
        if value is not MISSING:
            return value  # type: ignore[no-any-return]
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        response = self._ask(call, rpc, request, timeout, sync=False)
        if near.moved(response):
            # Ask again, once that process has caught up with the database
            # (its answer is then no older than the last one returned).
            response = self._ask(
                call, rpc, request, max(0.0, deadline - time.monotonic()), sync=True
            )
        near.answered(response)
        if response is None:
            return None
        value = unwrap(response)
        near.put(key, value, response.revision)
        return value  # type: ignore[no-any-return]

    def _ask(
        self, call: Callable[..., Any], rpc: str, request: Any, timeout: float, *, sync: bool
    ) -> Any:
        """A near-cache miss's call: the response, or None for NOT_FOUND."""
        # Misses go to one server process at a time, the pinned channel's,
        # live stream or not: replicas apply an invalidation milliseconds
        # apart, so alternating between them could answer an older value
        # after a newer one. Only when that process answers UNAVAILABLE
        # itself (it drains, or its database does not answer) does the
        # balanced, health-checked channel take the call.
        if self._near_channel is None:
            return call(getattr(self.stub, rpc), request, timeout, None, sync)
        deadline = time.monotonic() + timeout
        try:
            return call(getattr(self._near_stub, rpc), request, timeout, self._near_channel, sync)
        except ResolverError as error:
            left = deadline - time.monotonic()
            if error.code != grpc.StatusCode.UNAVAILABLE or error.unreached or left <= 0:
                raise
            return call(getattr(self.stub, rpc), request, left, None, sync)

    # ------------------------------------------------------------------ RPCs
    # NOT_FOUND → None only where the RPC answers NOT_FOUND (docs/errors.md):
    # ResolveEnv, ResolveAuthenticatedEnv, AssertEnvExists, ResolveWorkerVersion
    # and ReadRun. Every other method raises ResolverError for any status.

    def resolve_env(
        self, environment_id: str, *, timeout: float | None = None
    ) -> pb.Environment | None:
        """The environment (ResolveEnv), or None when absent."""
        return self._kept(
            ("ResolveEnv", environment_id),
            "ResolveEnv",
            pb.ResolveEnvRequest(environment_id=environment_id),
            timeout,
            environment_of,
        )

    def resolve_authenticated_env(
        self, environment_id: str, *, timeout: float | None = None
    ) -> pb.AuthenticatedEnvironment | None:
        """The environment with secrets and relations, or None when absent
        (or its project is soft-deleted)."""
        return self._kept(
            ("ResolveAuthenticatedEnv", environment_id),
            "ResolveAuthenticatedEnv",
            pb.ResolveAuthenticatedEnvRequest(environment_id=environment_id),
            timeout,
            environment_of,
        )

    def resolve_worker_version(
        self,
        environment_id: str,
        *,
        environment_type: pb.EnvironmentType.ValueType | None = None,
        worker_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.ResolveWorkerVersionResponse | None:
        """``worker``, ``tasks``, ``queues`` and ``deployment``, or None when
        the environment has no such worker version."""
        return self._kept(
            ("ResolveWorkerVersion", environment_id, environment_type, worker_id),
            "ResolveWorkerVersion",
            _requests.worker_version(environment_id, environment_type, worker_id),
            timeout,
            itself,
        )

    def read_run(
        self, run_id: str, *, include_environment: bool = False, timeout: float | None = None
    ) -> pb.ReadRunResponse | None:
        """The run with ``source`` and ``residency``, or None when absent."""
        return self._find(
            self.stub.ReadRun,
            pb.ReadRunRequest(run_id=run_id, include_environment=include_environment),
            timeout,
        )

    def assert_env_exists(self, environment_id: str, *, timeout: float | None = None) -> bool:
        """True when the environment exists, False when it does not."""
        exists = self._kept(
            ("AssertEnvExists", environment_id),
            "AssertEnvExists",
            pb.AssertEnvExistsRequest(environment_id=environment_id),
            timeout,
            true,
        )
        return exists is not None

    def resolve_run_locked_worker(
        self,
        *,
        locked_by_id: str | None = None,
        locked_to_version_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.ResolveRunLockedWorkerResponse:
        """``locked_by`` and ``locked_to_version``; each unset when absent
        (never NOT_FOUND)."""
        request = _requests.run_locked_worker(locked_by_id, locked_to_version_id)
        return self._call(self.stub.ResolveRunLockedWorker, request, timeout)

    def classify_run_id(self, id: str, *, timeout: float | None = None) -> pb.ClassifyRunIdResponse:
        """How ``id`` classifies by shape and the read order it implies."""
        return self._call(self.stub.ClassifyRunId, pb.ClassifyRunIdRequest(id=id), timeout)

    def resolve_mint_kind(
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
        decision: pb.ResolveMintKindResponse | None = self._kept(
            ("ResolveMintKind", organization_id, parent_id, environment_id),
            "ResolveMintKind",
            _requests.mint_kind(organization_id, parent_id, environment_id),
            timeout,
            itself,
            not_found_is_none=False,
        )
        assert decision is not None  # NOT_FOUND raises here
        return decision

    def mint_id(
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
        return self._call(self.stub.MintId, request, timeout)

    def select_store_for_waitpoint(
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
        return self._call(self.stub.SelectStoreForWaitpoint, request, timeout)

    def invalidate(
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
        self._call(self.stub.Invalidate, request, timeout)

    def batch_resolve_envs(
        self, environment_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[pb.BatchResolveEnvsResult]:
        """One result per id, in order; absent ids have ``not_found`` set."""
        response = self._call(
            self.stub.BatchResolveEnvs,
            pb.BatchResolveEnvsRequest(environment_ids=list(environment_ids)),
            timeout,
        )
        return list(response.results)

    def batch_read_runs(
        self, run_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[pb.BatchReadRunsResult]:
        """One result per id, in order; absent ids have ``not_found`` set."""
        response = self._call(
            self.stub.BatchReadRuns, pb.BatchReadRunsRequest(run_ids=list(run_ids)), timeout
        )
        return list(response.results)


def _own(near_cache: bool | NearCache, client: object) -> NearCache:
    """The near-cache a client was given (or a new one), now the client's
    own: its stream's state cannot be shared."""
    cache = near_cache if isinstance(near_cache, NearCache) else NearCache()
    if cache.owner is not None:
        raise ValueError("this NearCache belongs to another client: give each client its own")
    cache.owner = client
    return cache
