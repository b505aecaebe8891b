"""ReadRun through a real server over the two real databases (docs/design.md,
"Run residency" and "Reading runs").

Every residency case and every branch of the read-through:

* split off: only the control-plane database is read, and it is reported as
  ``RUN_SOURCE_CONTROL_PLANE``;
* split on, ``NEW`` (27-character ksuid body): the run-ops database only;
* split on, ``LEGACY`` (25-character cuid body): run-ops first, then the
  legacy location (the control-plane database here);
* split on, unclassifiable body (old 21-character friendly ids): routed and
  reported as ``LEGACY``, with a warning naming the body's length;
* both miss: NOT_FOUND (``None`` from the typed client);
* ``include_environment``: the ResolveEnv shape, or ``environment_unresolved``.

Each lookup is made by internal id and by friendly id (``run_`` + id): the
shape of the identifier the caller gives decides the route.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
import psycopg
import pytest

from controlplane_resolver.dev import demo
from controlplane_resolver.domain.values import TaskRun
from controlplane_resolver.storage import queries
from controlplane_resolver_client import ResolverClient, pb
from controlplane_resolver_client.client import ResolverError

from support.scraping import scrape_server
from support.servers import serving

Conn = psycopg.Connection[Any]

#: Timestamps are TIMESTAMP(3) without time zone: naive UTC, millisecond precision.
CREATED_AT = datetime(2025, 3, 4, 5, 6, 7, 123000)
UPDATED_AT = datetime(2025, 3, 4, 6, 7, 8, 456000)

#: The alphabet of the platform's old 21-character friendly-id bodies (nanoid).
NANOID_ALPHABET = "123456789abcdefghijkmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def client(databases: Any) -> Iterator[ResolverClient]:
    """One split-mode server for the whole module: every test writes rows with
    fresh ids, so sharing its (uncached) run reads is safe and saves start-ups."""
    with serving(databases) as running:
        yield running.client


@pytest.fixture(scope="module")
def split_off_client(databases: Any) -> Iterator[ResolverClient]:
    """One server with split mode off, for the module."""
    with serving(databases, run_ops_split_enabled=False) as running:
        yield running.client


@pytest.fixture
def env_id(tenant: Any, cp: Conn) -> str:
    """A production environment of a fresh tenant, in the control-plane database."""
    return tenant.environment(cp, "PRODUCTION")


@dataclass(frozen=True)
class WrittenRun:
    """The values a run row was written with, to compare the answer against."""

    id: str
    friendly_id: str
    status: str
    task_identifier: str
    runtime_environment_id: str
    project_id: str
    organization_id: str
    locked_by_id: str
    locked_to_version_id: str
    run_tags: list[str] = field(default_factory=list)

    def assert_matches(self, run: pb.TaskRun) -> None:
        """The answer's run carries exactly the values written."""
        assert run.id == self.id
        assert run.friendly_id == self.friendly_id
        assert run.status == self.status
        assert run.task_identifier == self.task_identifier
        assert run.runtime_environment_id == self.runtime_environment_id
        assert run.environment_type == pb.ENVIRONMENT_TYPE_PRODUCTION
        assert run.project_id == self.project_id
        assert run.organization_id == self.organization_id
        assert run.queue == f"task/{self.task_identifier}"
        assert run.locked_by_id == self.locked_by_id
        assert run.locked_to_version_id == self.locked_to_version_id
        assert list(run.run_tags) == self.run_tags
        assert run.engine == "V2"
        assert not run.HasField("batch_id")
        assert not run.HasField("idempotency_key")
        assert run.HasField("created_at") and run.created_at.ToDatetime() == CREATED_AT
        assert run.updated_at.ToDatetime() == UPDATED_AT


def write_run(
    conn: Conn,
    run_id: str,
    tenant: Any,
    environment_id: str,
    *,
    status: str = "EXECUTING",
    friendly_id: str | None = None,
) -> WrittenRun:
    """Insert a run with every field the answer reports set to a known value."""
    written = WrittenRun(
        id=run_id,
        friendly_id=friendly_id or "run_" + run_id,
        status=status,
        task_identifier="resize-image",
        runtime_environment_id=environment_id,
        project_id=tenant.project_id,
        organization_id=tenant.organization_id,
        locked_by_id=demo.new_cuid(),
        locked_to_version_id=demo.new_cuid(),
        run_tags=["user:1234", "tier:gold"],
    )
    demo.insert_run(
        conn,
        id=run_id,
        friendly_id=written.friendly_id,
        environment_id=environment_id,
        project_id=tenant.project_id,
        organization_id=tenant.organization_id,
        status=status,
        task_identifier=written.task_identifier,
        environment_type="PRODUCTION",
        locked_by_id=written.locked_by_id,
        locked_to_version_id=written.locked_to_version_id,
        run_tags=written.run_tags,
        created_at=CREATED_AT,
        updated_at=UPDATED_AT,
    )
    return written


def old_friendly_id() -> str:
    """An old run's friendly id: ``run_`` + a 21-character nanoid body (unclassifiable)."""
    return "run_" + "".join(secrets.choice(NANOID_ALPHABET) for _ in range(21))


def assert_read(
    read: pb.ReadRunResponse | None,
    written: WrittenRun,
    source: pb.RunSource.ValueType,
    residency: pb.Residency.ValueType,
) -> None:
    assert read is not None, f"{written.id} was not found"
    assert read.source == source, pb.RunSource.Name(read.source)
    assert read.residency == residency, pb.Residency.Name(read.residency)
    written.assert_matches(read.run)
    # Not asked for: neither an environment nor the unresolved flag.
    assert not read.HasField("environment")
    assert not read.environment_unresolved


# ------------------------------------------------------------------ split off


def test_split_off_reads_only_the_control_plane(
    split_off_client: ResolverClient, cp: Conn, ro: Conn, tenant: Any, env_id: str
) -> None:
    """Split off: every run is read from the control-plane database, whatever
    its shape, and reported as CONTROL_PLANE; run-ops is never consulted."""
    client = split_off_client
    legacy = write_run(cp, demo.new_cuid(), tenant, env_id)
    new_shape = write_run(cp, demo.new_ksuid(), tenant, env_id)
    for lookup in (legacy.id, legacy.friendly_id):
        assert_read(
            client.read_run(lookup), legacy, pb.RUN_SOURCE_CONTROL_PLANE, pb.RESIDENCY_LEGACY
        )
    for lookup in (new_shape.id, new_shape.friendly_id):
        assert_read(
            client.read_run(lookup), new_shape, pb.RUN_SOURCE_CONTROL_PLANE, pb.RESIDENCY_NEW
        )

    only_in_run_ops = [
        write_run(ro, demo.new_ksuid(), tenant, env_id),
        write_run(ro, demo.new_cuid(), tenant, env_id),
    ]
    for written in only_in_run_ops:
        assert client.read_run(written.id) is None
        assert client.read_run(written.friendly_id) is None


def test_split_off_ignores_a_run_ops_row_with_the_same_id(
    split_off_client: ResolverClient, cp: Conn, ro: Conn, tenant: Any, env_id: str
) -> None:
    """Split off, an id held by both databases: the control-plane row answers
    (under split the run-ops row would win, see below)."""
    client = split_off_client
    run_id = demo.new_cuid()
    in_cp = write_run(cp, run_id, tenant, env_id, status="COMPLETED_SUCCESSFULLY")
    write_run(ro, run_id, tenant, env_id, status="EXECUTING")
    assert_read(client.read_run(run_id), in_cp, pb.RUN_SOURCE_CONTROL_PLANE, pb.RESIDENCY_LEGACY)


# --------------------------------------------------------------- split on: NEW


def test_new_id_is_read_from_run_ops(
    client: ResolverClient, ro: Conn, tenant: Any, env_id: str
) -> None:
    written = write_run(ro, demo.new_ksuid(), tenant, env_id)
    assert len(written.id) == 27
    for lookup in (written.id, written.friendly_id):
        assert_read(client.read_run(lookup), written, pb.RUN_SOURCE_RUN_OPS, pb.RESIDENCY_NEW)


def test_new_id_only_in_the_control_plane_is_not_found(
    client: ResolverClient, cp: Conn, tenant: Any, env_id: str
) -> None:
    """A NEW id is read from run-ops only: a row in the control-plane database
    with that id is never looked at."""
    written = write_run(cp, demo.new_ksuid(), tenant, env_id)
    assert client.read_run(written.id) is None
    assert client.read_run(written.friendly_id) is None


# ------------------------------------------------------------ split on: LEGACY


def test_legacy_id_in_the_control_plane_is_read_from_legacy(
    client: ResolverClient, cp: Conn, tenant: Any, env_id: str
) -> None:
    written = write_run(cp, demo.new_cuid(), tenant, env_id, status="COMPLETED_SUCCESSFULLY")
    assert len(written.id) == 25
    for lookup in (written.id, written.friendly_id):
        assert_read(client.read_run(lookup), written, pb.RUN_SOURCE_LEGACY, pb.RESIDENCY_LEGACY)


def test_legacy_shaped_run_in_run_ops_is_read_from_run_ops(
    client: ResolverClient, ro: Conn, tenant: Any, env_id: str
) -> None:
    """A cuid-shaped run that lives in run-ops is found there (run-ops is read first)."""
    written = write_run(ro, demo.new_cuid(), tenant, env_id, status="PENDING")
    for lookup in (written.id, written.friendly_id):
        assert_read(client.read_run(lookup), written, pb.RUN_SOURCE_RUN_OPS, pb.RESIDENCY_LEGACY)


def test_run_ops_wins_when_both_databases_hold_the_id(
    client: ResolverClient, cp: Conn, ro: Conn, tenant: Any, env_id: str
) -> None:
    """Same LEGACY id in both databases: the run-ops row answers, because it is
    read first (the statuses differ so the test can tell the rows apart)."""
    run_id = demo.new_cuid()
    write_run(cp, run_id, tenant, env_id, status="COMPLETED_SUCCESSFULLY")
    in_run_ops = write_run(ro, run_id, tenant, env_id, status="EXECUTING")
    for lookup in (run_id, "run_" + run_id):
        assert_read(client.read_run(lookup), in_run_ops, pb.RUN_SOURCE_RUN_OPS, pb.RESIDENCY_LEGACY)


# ---------------------------------------------------- split on: unclassifiable


def test_old_run_with_short_friendly_id(
    client: ResolverClient, cp: Conn, tenant: Any, env_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An old run: 25-character internal id, 21-character friendly-id body.

    By friendly id the body is unclassifiable: routed (and reported) LEGACY,
    found in the legacy location, with a warning naming the length. By
    internal id it is an ordinary cuid.
    """
    written = write_run(cp, demo.new_cuid(), tenant, env_id, friendly_id=old_friendly_id())
    with caplog.at_level(logging.WARNING, logger="controlplane_resolver"):
        read = client.read_run(written.friendly_id)
    assert_read(read, written, pb.RUN_SOURCE_LEGACY, pb.RESIDENCY_LEGACY)
    assert any(
        "21" in r.getMessage() and "unclassifiable" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert_read(client.read_run(written.id), written, pb.RUN_SOURCE_LEGACY, pb.RESIDENCY_LEGACY)


def test_unclassifiable_id_in_run_ops_is_found_there(
    client: ResolverClient, ro: Conn, tenant: Any, env_id: str
) -> None:
    """The LEGACY route of an unclassifiable id still reads run-ops first."""
    written = write_run(ro, demo.new_cuid(), tenant, env_id, friendly_id=old_friendly_id())
    assert_read(
        client.read_run(written.friendly_id), written, pb.RUN_SOURCE_RUN_OPS, pb.RESIDENCY_LEGACY
    )


# ------------------------------------------------------------------- not found


@pytest.mark.parametrize(
    "make_id",
    [
        demo.new_cuid,
        demo.new_ksuid,
        lambda: "run_" + demo.new_cuid(),
        lambda: "run_" + demo.new_ksuid(),
        old_friendly_id,
    ],
    ids=["cuid", "ksuid", "friendly-cuid", "friendly-ksuid", "friendly-unclassifiable"],
)
def test_absent_everywhere_is_not_found(client: ResolverClient, make_id: Callable[[], str]) -> None:
    """Every database of the plan answered "absent": NOT_FOUND with reason
    RUN_NOT_FOUND (the typed client returns None)."""
    run_id = make_id()
    assert client.read_run(run_id) is None
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ReadRun(pb.ReadRunRequest(run_id=run_id), timeout=10)
    error = ResolverError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "RUN_NOT_FOUND"


# -------------------------------------------------------- include_environment


def test_include_environment_returns_the_resolve_env_shape(
    client: ResolverClient, cp: Conn, ro: Conn, tenant: Any, env_id: str
) -> None:
    """A run from either database comes with its environment, exactly as
    ResolveEnv answers it."""
    expected = client.resolve_env(env_id)
    assert expected is not None
    for conn, run_id, source in (
        (ro, demo.new_ksuid(), pb.RUN_SOURCE_RUN_OPS),
        (cp, demo.new_cuid(), pb.RUN_SOURCE_LEGACY),
    ):
        written = write_run(conn, run_id, tenant, env_id)
        read = client.read_run(written.friendly_id, include_environment=True)
        assert read is not None and read.source == source
        written.assert_matches(read.run)
        assert read.HasField("environment")
        assert read.environment == expected
        assert read.environment.id == env_id
        assert read.environment.organization_id == tenant.organization_id
        assert not read.environment_unresolved


def test_run_whose_environment_is_missing_is_environment_unresolved(
    client: ResolverClient, ro: Conn, tenant: Any
) -> None:
    """Run-ops has no foreign keys: a run can name an environment that does
    not exist. The run is still returned, flagged, without an environment."""
    missing_env = demo.new_cuid()
    written = write_run(ro, demo.new_ksuid(), tenant, missing_env)
    read = client.read_run(written.id, include_environment=True)
    assert read is not None and read.source == pb.RUN_SOURCE_RUN_OPS
    written.assert_matches(read.run)
    assert read.environment_unresolved
    assert not read.HasField("environment")
    # Without include_environment nothing is said about the environment.
    plain = client.read_run(written.id)
    assert plain is not None and not plain.environment_unresolved


def test_run_whose_environment_id_is_malformed_is_environment_unresolved(
    client: ResolverClient, ro: Conn, tenant: Any
) -> None:
    """A stored environment id that could never name a row (run-ops has no
    foreign keys) is an unresolvable environment, not a bad request: the
    caller's run id was fine."""
    written = write_run(ro, demo.new_ksuid(), tenant, "")
    read = client.read_run(written.id, include_environment=True)
    assert read is not None
    assert read.run.id == written.id
    assert read.environment_unresolved
    assert not read.HasField("environment")


def test_run_columns_are_in_task_run_field_order() -> None:
    """Rows become TaskRuns positionally: the SELECT list and the dataclass
    must name the same fields in the same order."""
    assert [f for f, _column in queries.RUN_FIELDS] == [f.name for f in dataclasses.fields(TaskRun)]


def test_a_run_from_a_row_is_the_constructors_run() -> None:
    """run_from_tuple bypasses TaskRun's constructor: what it makes must
    still be the same value, and as immutable."""
    row = tuple(
        ["a", "b"] if name == "run_tags" else CREATED_AT if name.endswith("_at") else name
        for name, _column in queries.RUN_FIELDS
    )
    run = queries.run_from_tuple(row)
    built = TaskRun(**{**dict(zip(TaskRun.__dataclass_fields__, row)), "run_tags": ("a", "b")})
    assert run == built and hash(run) == hash(built) and repr(run) == repr(built)
    assert dataclasses.replace(run, status="X") == dataclasses.replace(built, status="X")
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "X"  # type: ignore[misc]
    tags = [name for name, _column in queries.RUN_FIELDS].index("run_tags")
    assert queries.run_from_tuple((*row[:tags], None, *row[tags + 1 :])).run_tags == ()


def test_id_lists_reach_the_database_unchanged(ro: Conn) -> None:
    """Run reads send their id lists as array literals: any string,
    including the literal's own syntax, arrives as written."""
    values = ["run_a", 'a"b', "a\\b", '\\"', "{x,y}", " padded ", "NULL", "", "é"]
    row = ro.execute("SELECT %s::text[]", (queries.text_array(values),)).fetchone()
    assert row is not None and row[0] == values


def test_reads_of_an_answering_database_run_on_the_callers_thread(
    databases: Any, ro: Conn, tenant: Any, env_id: str
) -> None:
    """Reads one after another find run-ops answering (a query succeeded a
    moment ago): their queries run on the calling thread. Every answer is
    right, and the metrics tell the two ways apart."""
    written = write_run(ro, demo.new_ksuid(), tenant, env_id)
    with serving(databases, metrics_addr="127.0.0.1:0") as running:
        for _ in range(20):
            assert_read(
                running.client.read_run(written.id),
                written,
                pb.RUN_SOURCE_RUN_OPS,
                pb.RESIDENCY_NEW,
            )
        samples = scrape_server(running)
    run_ops = frozenset({("database", "run-ops")})
    assert samples[("resolver_run_read_batches_total", run_ops)] == 20
    # The first read may find the database idle; a stall of 100 ms between
    # two calls of this loop on a loaded machine makes one more.
    assert samples[("resolver_run_read_inline_batches_total", run_ops)] >= 15
