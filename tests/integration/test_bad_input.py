"""Malformed requests to every RPC answer INVALID_ARGUMENT (docs/errors.md),
with a machine-readable ``ErrorInfo`` reason, and the server keeps serving.

An id is malformed when it is empty, longer than 255 characters, or holds a
character outside ``[A-Za-z0-9_-]``: the reason is ``INVALID_ID``. An enum
value the proto does not define is malformed too. Requests go through the
raw stub (``client.stub``) so the exact bad value reaches the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest

from controlplane_resolver.dev import demo
from controlplane_resolver_client import ResolverClient, pb
from controlplane_resolver_client.client import ResolverError

from support.servers import serving

Conn = psycopg.Connection[Any]

#: A request builder: the bad value goes into one id field, the rest is valid.
Build = Callable[[str], tuple[str, Any]]

_VALID = demo.new_cuid()

#: Every id field of every RPC (all 13 of the proto), keyed ``Rpc.field``.
ID_FIELDS: dict[str, Build] = {
    "ResolveEnv.environment_id": lambda v: ("ResolveEnv", pb.ResolveEnvRequest(environment_id=v)),
    "ResolveAuthenticatedEnv.environment_id": lambda v: (
        "ResolveAuthenticatedEnv",
        pb.ResolveAuthenticatedEnvRequest(environment_id=v),
    ),
    "ResolveWorkerVersion.environment_id": lambda v: (
        "ResolveWorkerVersion",
        pb.ResolveWorkerVersionRequest(environment_id=v),
    ),
    "ResolveWorkerVersion.worker_id": lambda v: (
        "ResolveWorkerVersion",
        pb.ResolveWorkerVersionRequest(
            environment_id=_VALID, environment_type=pb.ENVIRONMENT_TYPE_PRODUCTION, worker_id=v
        ),
    ),
    "ReadRun.run_id": lambda v: ("ReadRun", pb.ReadRunRequest(run_id=v, include_environment=True)),
    "AssertEnvExists.environment_id": lambda v: (
        "AssertEnvExists",
        pb.AssertEnvExistsRequest(environment_id=v),
    ),
    "ResolveRunLockedWorker.locked_by_id": lambda v: (
        "ResolveRunLockedWorker",
        pb.ResolveRunLockedWorkerRequest(locked_by_id=v, locked_to_version_id=_VALID),
    ),
    "ResolveRunLockedWorker.locked_to_version_id": lambda v: (
        "ResolveRunLockedWorker",
        pb.ResolveRunLockedWorkerRequest(locked_by_id=_VALID, locked_to_version_id=v),
    ),
    "ClassifyRunId.id": lambda v: ("ClassifyRunId", pb.ClassifyRunIdRequest(id=v)),
    "ResolveMintKind.organization_id": lambda v: (
        "ResolveMintKind",
        pb.ResolveMintKindRequest(organization_id=v),
    ),
    "ResolveMintKind.parent_id": lambda v: (
        "ResolveMintKind",
        pb.ResolveMintKindRequest(organization_id=_VALID, parent_id=v),
    ),
    "MintId.organization_id": lambda v: (
        "MintId",
        pb.MintIdRequest(kind=pb.ID_KIND_RUN, organization_id=v),
    ),
    "MintId.parent_id": lambda v: (
        "MintId",
        pb.MintIdRequest(kind=pb.ID_KIND_RUN, organization_id=_VALID, parent_id=v),
    ),
    "SelectStoreForWaitpoint.waitpoint_id": lambda v: (
        "SelectStoreForWaitpoint",
        pb.SelectStoreForWaitpointRequest(waitpoint_id=v, route_kind=pb.UNBLOCK_ROUTE_KIND_MANUAL),
    ),
    "Invalidate.environment_id": lambda v: ("Invalidate", pb.InvalidateRequest(environment_id=v)),
    "Invalidate.organization_id": lambda v: ("Invalidate", pb.InvalidateRequest(organization_id=v)),
    "Invalidate.worker_versions_environment_id": lambda v: (
        "Invalidate",
        pb.InvalidateRequest(worker_versions_environment_id=v),
    ),
    "BatchResolveEnvs.environment_ids": lambda v: (
        "BatchResolveEnvs",
        pb.BatchResolveEnvsRequest(environment_ids=[_VALID, v]),
    ),
    "BatchReadRuns.run_ids": lambda v: (
        "BatchReadRuns",
        pb.BatchReadRunsRequest(run_ids=[_VALID, v]),
    ),
}

BAD_IDS: dict[str, str] = {
    "empty": "",
    "256-chars": "c" * 256,
    "space": "cm4abc def0000000000000000",
    "quote": "cm4abc'0000000000000000000",
    "unicode": "cm4abcé000000000000000000",
}

#: Enum fields set to a number their enum does not define.
BAD_ENUMS: dict[str, tuple[str, Any]] = {
    "ResolveWorkerVersion.environment_type": (
        "ResolveWorkerVersion",
        pb.ResolveWorkerVersionRequest(environment_id=_VALID, environment_type=99),
    ),
    "MintId.kind": ("MintId", pb.MintIdRequest(kind=99, organization_id=_VALID)),
    "SelectStoreForWaitpoint.route_kind": (
        "SelectStoreForWaitpoint",
        pb.SelectStoreForWaitpointRequest(waitpoint_id="waitpoint_" + _VALID, route_kind=99),
    ),
    "SelectStoreForWaitpoint.tree_owner_residency": (
        "SelectStoreForWaitpoint",
        pb.SelectStoreForWaitpointRequest(
            waitpoint_id="waitpoint_" + _VALID,
            route_kind=pb.UNBLOCK_ROUTE_KIND_RUN,
            tree_owner_residency=99,
        ),
    ),
}


@pytest.fixture(scope="module")
def client(databases: Any) -> Iterator[ResolverClient]:
    """One split-mode server for the module: no test here writes anything."""
    with serving(databases) as running:
        yield running.client


@pytest.fixture(scope="module")
def known_env(databases: Any) -> str:
    """An environment that exists, for the "still serving" check."""
    with psycopg.connect(databases.control_plane, autocommit=True) as conn:
        org = demo.insert_organization(conn)
        project = demo.insert_project(conn, organization_id=org)
        return demo.insert_environment(conn, project_id=project, organization_id=org)


def call_raw(client: ResolverClient, method: str, request: Any) -> ResolverError:
    """Send ``request`` through the raw stub; return the error it failed with."""
    with pytest.raises(grpc.RpcError) as caught:
        getattr(client.stub, method)(request, timeout=10)
    return ResolverError.from_rpc_error(caught.value)


def assert_still_serving(client: ResolverClient, environment_id: str) -> None:
    env = client.resolve_env(environment_id)
    assert env is not None and env.id == environment_id


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
@pytest.mark.parametrize("field", ID_FIELDS.keys())
def test_malformed_id_is_invalid_argument(
    client: ResolverClient, known_env: str, field: str, bad: str
) -> None:
    method, request = ID_FIELDS[field](bad)
    error = call_raw(client, method, request)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == "INVALID_ID", error
    assert_still_serving(client, known_env)


@pytest.mark.parametrize("field", BAD_ENUMS.keys())
def test_unknown_enum_value_is_invalid_argument(
    client: ResolverClient, known_env: str, field: str
) -> None:
    method, request = BAD_ENUMS[field]
    error = call_raw(client, method, request)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason, "an INVALID_ARGUMENT without an ErrorInfo reason"
    assert_still_serving(client, known_env)


def test_invalid_id_error_names_the_field(client: ResolverClient) -> None:
    """The ErrorInfo metadata says which field was malformed, down to the batch index."""
    error = call_raw(
        client,
        "BatchResolveEnvs",
        pb.BatchResolveEnvsRequest(environment_ids=[_VALID, _VALID, "bad id"]),
    )
    assert error.reason == "INVALID_ID"
    assert error.metadata.get("field") == "environment_ids[2]"
    error = call_raw(
        client,
        "ResolveWorkerVersion",
        pb.ResolveWorkerVersionRequest(environment_id=_VALID, worker_id="bad id"),
    )
    assert error.metadata.get("field") == "worker_id"


def test_typed_client_raises_resolver_error(client: ResolverClient) -> None:
    """Through the typed client a malformed id raises ResolverError, never None."""
    with pytest.raises(ResolverError) as caught:
        client.resolve_env("")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_ID"
    with pytest.raises(ResolverError) as caught:
        client.read_run("run id")
    assert caught.value.reason == "INVALID_ID"


@pytest.mark.parametrize(
    "method,request_",
    [
        ("ResolveEnv", pb.ResolveEnvRequest(environment_id="c" * 255)),
        ("ReadRun", pb.ReadRunRequest(run_id="run_" + "c" * 251)),
        ("AssertEnvExists", pb.AssertEnvExistsRequest(environment_id="A-z_0" * 51)),
    ],
    ids=["ResolveEnv", "ReadRun", "AssertEnvExists"],
)
def test_longest_well_formed_id_is_not_rejected(
    client: ResolverClient, method: str, request_: Any
) -> None:
    """255 characters of ``[A-Za-z0-9_-]`` is a legal id: absent, not invalid."""
    error = call_raw(client, method, request_)
    assert error.code == grpc.StatusCode.NOT_FOUND, error


def test_invalidate_without_target_is_invalid_argument(client: ResolverClient) -> None:
    error = call_raw(client, "Invalidate", pb.InvalidateRequest())
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason
