"""ResolverClient: one typed method per RPC over the generated stub.

Contract of every method:

* returns the response message (or the part of it named in the docstring);
* returns ``None`` when the server answers ``NOT_FOUND``;
* raises :class:`ResolverError` for every other failure, carrying the gRPC
  status code, the message and the ``google.rpc.ErrorInfo`` reason;
* waits at most ``timeout`` seconds (the client's default deadline unless
  given per call).

``UNAVAILABLE`` is retried by the channel itself with exponential backoff
(``service_config.json``): the server answers it only when a database could
not answer, never for a missing row, so a retry is always safe. The channel
balances calls round-robin over every address the target resolves to, so
``dns:///controlplane-resolver.<namespace>.svc:50051`` (a headless Service)
spreads an engine node's calls over all replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .v1 import resolver_pb2 as pb
from .v1 import resolver_pb2_grpc

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0


def service_config() -> str:
    """The channel's service config (retry policy), as JSON text."""
    return resources.files(__package__).joinpath("service_config.json").read_text()


class ResolverError(Exception):
    """A call that failed with a status other than NOT_FOUND."""

    def __init__(
        self, code: grpc.StatusCode, message: str, reason: str | None, metadata: dict[str, str]
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata

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
        return cls(call.code(), call.details() or "", reason, metadata)


class ResolverClient:
    """A channel to one resolver address and typed methods over it.

    ``channel`` may be given instead of ``target`` (e.g. a secure channel).
    Close with :meth:`close` or use as a context manager.
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
    ) -> None:
        """``token`` is sent as ``authorization: Bearer <token>`` on every
        call. TLS is used when ``tls`` is true or any ``tls_*`` is given:
        ``tls_ca`` (PEM) verifies the server (system roots when omitted);
        ``tls_cert``/``tls_key`` (PEM) are the client certificate for mutual
        TLS."""
        if channel is None:
            if target is None:
                raise ValueError("give a target address or a channel")
            channel_options = [
                ("grpc.service_config", service_config()),
                ("grpc.enable_retries", 1),
                *options,
            ]
            if tls or tls_ca or tls_cert or tls_key:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=tls_ca, private_key=tls_key, certificate_chain=tls_cert
                )
                channel = grpc.secure_channel(target, credentials, options=channel_options)
            else:
                channel = grpc.insecure_channel(target, options=channel_options)
        self.channel = channel
        self.stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ResolverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T | None:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return None
            raise ResolverError.from_rpc_error(error) from None

    # ------------------------------------------------------------------ RPCs

    def resolve_env(
        self, environment_id: str, *, timeout: float | None = None
    ) -> pb.Environment | None:
        """The environment (ResolveEnv), or None when absent."""
        response = self._call(
            self.stub.ResolveEnv, pb.ResolveEnvRequest(environment_id=environment_id), timeout
        )
        return response.environment if response is not None else None

    def resolve_authenticated_env(
        self, environment_id: str, *, timeout: float | None = None
    ) -> pb.AuthenticatedEnvironment | None:
        """The environment with secrets and relations, or None when absent
        (or its project is soft-deleted)."""
        response = self._call(
            self.stub.ResolveAuthenticatedEnv,
            pb.ResolveAuthenticatedEnvRequest(environment_id=environment_id),
            timeout,
        )
        return response.environment if response is not None else None

    def resolve_worker_version(
        self,
        environment_id: str,
        *,
        environment_type: pb.EnvironmentType.ValueType | None = None,
        worker_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.ResolveWorkerVersionResponse | None:
        """``worker``, ``tasks``, ``queues`` and ``deployment``, or None."""
        request = pb.ResolveWorkerVersionRequest(environment_id=environment_id)
        if environment_type is not None:
            request.environment_type = environment_type
        if worker_id is not None:
            request.worker_id = worker_id
        return self._call(self.stub.ResolveWorkerVersion, request, timeout)

    def read_run(
        self, run_id: str, *, include_environment: bool = False, timeout: float | None = None
    ) -> pb.ReadRunResponse | None:
        """The run with ``source`` and ``residency``, or None when absent."""
        return self._call(
            self.stub.ReadRun,
            pb.ReadRunRequest(run_id=run_id, include_environment=include_environment),
            timeout,
        )

    def assert_env_exists(self, environment_id: str, *, timeout: float | None = None) -> bool:
        """True when the environment exists, False when it does not."""
        response = self._call(
            self.stub.AssertEnvExists,
            pb.AssertEnvExistsRequest(environment_id=environment_id),
            timeout,
        )
        return response is not None

    def resolve_run_locked_worker(
        self,
        *,
        locked_by_id: str | None = None,
        locked_to_version_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.ResolveRunLockedWorkerResponse | None:
        """``locked_by`` and ``locked_to_version``; each unset when absent."""
        request = pb.ResolveRunLockedWorkerRequest()
        if locked_by_id is not None:
            request.locked_by_id = locked_by_id
        if locked_to_version_id is not None:
            request.locked_to_version_id = locked_to_version_id
        return self._call(self.stub.ResolveRunLockedWorker, request, timeout)

    def classify_run_id(
        self, id: str, *, timeout: float | None = None
    ) -> pb.ClassifyRunIdResponse | None:
        return self._call(self.stub.ClassifyRunId, pb.ClassifyRunIdRequest(id=id), timeout)

    def resolve_mint_kind(
        self, organization_id: str, *, parent_id: str | None = None, timeout: float | None = None
    ) -> pb.ResolveMintKindResponse | None:
        request = pb.ResolveMintKindRequest(organization_id=organization_id)
        if parent_id is not None:
            request.parent_id = parent_id
        return self._call(self.stub.ResolveMintKind, request, timeout)

    def mint_id(
        self,
        kind: pb.IdKind.ValueType,
        organization_id: str,
        *,
        parent_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.MintIdResponse | None:
        request = pb.MintIdRequest(kind=kind, organization_id=organization_id)
        if parent_id is not None:
            request.parent_id = parent_id
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
    ) -> pb.SelectStoreForWaitpointResponse | None:
        request = pb.SelectStoreForWaitpointRequest(
            waitpoint_id=waitpoint_id,
            route_kind=route_kind,
            cross_tree_idempotency=cross_tree_idempotency,
            has_legacy_parent=has_legacy_parent,
        )
        if tree_owner_residency is not None:
            request.tree_owner_residency = tree_owner_residency
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
        request = pb.InvalidateRequest()
        if environment_id is not None:
            request.environment_id = environment_id
        if organization_id is not None:
            request.organization_id = organization_id
        if worker_versions_environment_id is not None:
            request.worker_versions_environment_id = worker_versions_environment_id
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
        return list(response.results) if response is not None else []

    def batch_read_runs(
        self, run_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[pb.BatchReadRunsResult]:
        """One result per id, in order; absent ids have ``not_found`` set."""
        response = self._call(
            self.stub.BatchReadRuns, pb.BatchReadRunsRequest(run_ids=list(run_ids)), timeout
        )
        return list(response.results) if response is not None else []
