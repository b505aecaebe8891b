"""Request messages of the typed clients' methods, and what each method
takes from its response: in one place for the threaded and the asyncio
client."""

from __future__ import annotations

from typing import Any, TypeVar

from .v1 import resolver_pb2 as pb

T = TypeVar("T")


def environment_of(response: Any) -> Any:
    """ResolveEnv's and ResolveAuthenticatedEnv's answer."""
    return response.environment


def itself(response: T) -> T:
    return response


def true(_response: Any) -> bool:
    """AssertEnvExists: any answer but NOT_FOUND means it exists."""
    return True


def worker_version(
    environment_id: str,
    environment_type: pb.EnvironmentType.ValueType | None,
    worker_id: str | None,
) -> pb.ResolveWorkerVersionRequest:
    request = pb.ResolveWorkerVersionRequest(environment_id=environment_id)
    if environment_type is not None:
        request.environment_type = environment_type
    if worker_id is not None:
        request.worker_id = worker_id
    return request


def run_locked_worker(
    locked_by_id: str | None, locked_to_version_id: str | None
) -> pb.ResolveRunLockedWorkerRequest:
    request = pb.ResolveRunLockedWorkerRequest()
    if locked_by_id is not None:
        request.locked_by_id = locked_by_id
    if locked_to_version_id is not None:
        request.locked_to_version_id = locked_to_version_id
    return request


def mint_kind(
    organization_id: str, parent_id: str | None, environment_id: str | None = None
) -> pb.ResolveMintKindRequest:
    request = pb.ResolveMintKindRequest(organization_id=organization_id)
    if parent_id is not None:
        request.parent_id = parent_id
    if environment_id is not None:
        request.environment_id = environment_id
    return request


def mint_id(
    kind: pb.IdKind.ValueType,
    organization_id: str,
    parent_id: str | None,
    environment_id: str | None = None,
    region: str | None = None,
) -> pb.MintIdRequest:
    request = pb.MintIdRequest(kind=kind, organization_id=organization_id)
    if parent_id is not None:
        request.parent_id = parent_id
    if environment_id is not None:
        request.environment_id = environment_id
    if region is not None:
        request.region = region
    return request


def store_for_waitpoint(
    waitpoint_id: str,
    route_kind: pb.UnblockRouteKind.ValueType,
    tree_owner_residency: pb.Residency.ValueType | None,
    cross_tree_idempotency: bool,
    has_legacy_parent: bool,
) -> pb.SelectStoreForWaitpointRequest:
    request = pb.SelectStoreForWaitpointRequest(
        waitpoint_id=waitpoint_id,
        route_kind=route_kind,
        cross_tree_idempotency=cross_tree_idempotency,
        has_legacy_parent=has_legacy_parent,
    )
    if tree_owner_residency is not None:
        request.tree_owner_residency = tree_owner_residency
    return request


def invalidate(
    environment_id: str | None,
    organization_id: str | None,
    worker_versions_environment_id: str | None,
) -> pb.InvalidateRequest:
    request = pb.InvalidateRequest()
    if environment_id is not None:
        request.environment_id = environment_id
    if organization_id is not None:
        request.organization_id = organization_id
    if worker_versions_environment_id is not None:
        request.worker_versions_environment_id = worker_versions_environment_id
    return request
