"""ResolveRunLockedWorker (docs/design.md, "Control-plane answers") through a real server:
every shape of the answer — both parts, one, neither, ids that name no row,
a worker without a deployment, the deployment's git metadata — and the cache
slot it lives in."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format

from controlplane_resolver.cache import Slot
from controlplane_resolver.dev import demo
from controlplane_resolver_client import ResolverError


def _row(cp: psycopg.Connection[Any], sql: str, *params: Any) -> tuple[Any, ...]:
    row = cp.execute(sql, params).fetchone()
    assert row is not None
    return row


GIT = {
    "commitSha": "0f3c1a2b",
    "commitMessage": "resize faster",
    "dirty": False,
    "remoteUrl": "https://github.com/acme/app",
    "pullRequestNumber": 42,
}


@pytest.fixture
def deployed(cp, tenant):
    """A deployed worker with a task, and a development worker with a task."""
    env = tenant.environment(cp, "PRODUCTION")
    worker = demo.insert_worker(
        cp,
        project_id=tenant.project_id,
        environment_id=env,
        sdk_version="4.1.0",
        cli_version="4.1.2",
        supports_lazy_attempts=True,
        runtime="bun",
        runtime_version="1.2.3",
    )
    task = demo.insert_task(
        cp, worker_id=worker, slug="resize-image", machine_config={"preset": "large-2x", "cpu": 2}
    )
    deployment = demo.insert_deployment(
        cp,
        project_id=tenant.project_id,
        environment_id=env,
        worker_id=worker,
        runtime="node",
        runtime_version="22.12.0",
        git=GIT,
    )
    dev_env = tenant.environment(cp, "DEVELOPMENT")
    dev_worker = demo.insert_worker(
        cp, project_id=tenant.project_id, environment_id=dev_env, runtime=None, runtime_version=None
    )
    dev_task = demo.insert_task(cp, worker_id=dev_worker, export_name=None, machine_config=None)
    return {
        "worker": worker,
        "task": task,
        "deployment": deployment,
        "dev_worker": dev_worker,
        "dev_task": dev_task,
    }


def test_both_parts_carry_every_named_field(server, cp, deployed):
    answer = server.client.resolve_run_locked_worker(
        locked_by_id=deployed["task"], locked_to_version_id=deployed["worker"]
    )
    assert answer.HasField("locked_by") and answer.HasField("locked_to_version")

    task = answer.locked_by
    slug, file_path, export_name = _row(
        cp,
        'SELECT "slug", "filePath", "exportName" FROM "BackgroundWorkerTask" WHERE "id" = %s',
        deployed["task"],
    )
    assert (task.id, task.slug, task.file_path, task.export_name) == (
        deployed["task"],
        slug,
        file_path,
        export_name,
    )
    assert json_format.MessageToDict(task.machine_config) == {"preset": "large-2x", "cpu": 2}

    version = _row(
        cp, 'SELECT "version" FROM "BackgroundWorker" WHERE "id" = %s', deployed["worker"]
    )[0]
    w = task.worker
    assert (w.id, w.version, w.sdk_version, w.cli_version, w.supports_lazy_attempts) == (
        deployed["worker"],
        version,
        "4.1.0",
        "4.1.2",
        True,
    )

    friendly, short_code, d_version = _row(
        cp,
        'SELECT "friendlyId", "shortCode", "version" FROM "WorkerDeployment" WHERE "id" = %s',
        deployed["deployment"],
    )
    d = task.deployment
    assert (d.friendly_id, d.short_code, d.version, d.runtime, d.runtime_version) == (
        friendly,
        short_code,
        d_version,
        "node",
        "22.12.0",
    )

    v = answer.locked_to_version
    assert (v.version, v.sdk_version, v.runtime, v.runtime_version, v.supports_lazy_attempts) == (
        version,
        "4.1.0",
        "bun",
        "1.2.3",
        True,
    )


def test_the_deployments_git_metadata(server, cp, tenant, deployed):
    """The locked task's deployment carries its git metadata as the platform
    returns it; unset when the deployment has none, or when the column holds
    JSON that is not an object."""
    answer = server.client.resolve_run_locked_worker(locked_by_id=deployed["task"])
    git = answer.locked_by.deployment.git
    assert answer.locked_by.deployment.HasField("git")
    assert json_format.MessageToDict(git) == GIT

    env = tenant.environment(cp, "PRODUCTION")
    for stored in (None, ["not", "an", "object"]):
        worker = demo.insert_worker(cp, project_id=tenant.project_id, environment_id=env)
        task = demo.insert_task(cp, worker_id=worker)
        demo.insert_deployment(
            cp, project_id=tenant.project_id, environment_id=env, worker_id=worker, git=stored
        )
        d = server.client.resolve_run_locked_worker(locked_by_id=task).locked_by.deployment
        assert d.friendly_id.startswith("deployment_")
        assert not d.HasField("git"), stored


def test_each_part_alone(server, deployed):
    only_task = server.client.resolve_run_locked_worker(locked_by_id=deployed["task"])
    assert only_task.HasField("locked_by") and not only_task.HasField("locked_to_version")
    only_version = server.client.resolve_run_locked_worker(locked_to_version_id=deployed["worker"])
    assert only_version.HasField("locked_to_version") and not only_version.HasField("locked_by")


def test_neither_id_is_an_empty_answer_not_an_error(server):
    answer = server.client.resolve_run_locked_worker()
    assert answer is not None
    assert not answer.HasField("locked_by") and not answer.HasField("locked_to_version")


def test_ids_that_name_no_row_leave_their_part_unset(server, deployed):
    client = server.client
    answer = client.resolve_run_locked_worker(
        locked_by_id=demo.new_cuid(), locked_to_version_id=demo.new_cuid()
    )
    assert answer is not None  # absent parts, not NOT_FOUND
    assert not answer.HasField("locked_by") and not answer.HasField("locked_to_version")
    # A missing task does not hide a present version, and the other way round.
    mixed = client.resolve_run_locked_worker(
        locked_by_id=demo.new_cuid(), locked_to_version_id=deployed["worker"]
    )
    assert not mixed.HasField("locked_by") and mixed.HasField("locked_to_version")
    # A worker id is not a task id: ids are looked up in their own table.
    swapped = client.resolve_run_locked_worker(
        locked_by_id=deployed["worker"], locked_to_version_id=deployed["task"]
    )
    assert not swapped.HasField("locked_by") and not swapped.HasField("locked_to_version")


def test_worker_without_a_deployment(server, deployed):
    answer = server.client.resolve_run_locked_worker(
        locked_by_id=deployed["dev_task"], locked_to_version_id=deployed["dev_worker"]
    )
    task = answer.locked_by
    assert task.worker.id == deployed["dev_worker"]
    assert not task.HasField("deployment")
    assert not task.HasField("export_name") and not task.HasField("machine_config")
    v = answer.locked_to_version
    assert not v.HasField("runtime") and not v.HasField("runtime_version")


def test_malformed_ids_are_invalid_argument(server):
    for kwargs in (
        {"locked_by_id": ""},
        {"locked_to_version_id": "bad id!"},
        {"locked_by_id": "c" * 25, "locked_to_version_id": "x" * 256},
    ):
        with pytest.raises(ResolverError) as caught:
            server.client.resolve_run_locked_worker(**kwargs)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs
        assert caught.value.reason == "INVALID_ID"


def test_parts_are_cached_in_the_locked_worker_slot(start_server, cp, deployed):
    running = start_server(listen_enabled=False)
    stats = running.app.cache.stats(Slot.LOCKED_WORKER)
    client = running.client
    first = client.resolve_run_locked_worker(
        locked_by_id=deployed["task"], locked_to_version_id=deployed["worker"]
    )
    assert stats.loads == 2
    # Served from the cache: a change in the database does not show within the TTL.
    cp.execute(
        'UPDATE "BackgroundWorkerTask" SET "filePath" = %s WHERE "id" = %s',
        ("src/moved.ts", deployed["task"]),
    )
    second = client.resolve_run_locked_worker(
        locked_by_id=deployed["task"], locked_to_version_id=deployed["worker"]
    )
    assert second == first and stats.loads == 2 and stats.hits >= 2
    # A confirmed absence is cached as absence too.
    missing = demo.new_cuid()
    client.resolve_run_locked_worker(locked_by_id=missing)
    client.resolve_run_locked_worker(locked_by_id=missing)
    assert stats.loads == 3 and stats.negative_hits >= 1


def test_a_run_read_then_its_locked_worker(server, cp, ro):
    ids = demo.seed(cp, ro)
    run = server.client.read_run(ids.new_run_friendly_id).run
    answer = server.client.resolve_run_locked_worker(
        locked_by_id=run.locked_by_id, locked_to_version_id=run.locked_to_version_id
    )
    assert answer.locked_by.id == ids.production_task_id
    assert answer.locked_by.worker.id == ids.production_worker_id
    friendly = _row(
        cp,
        'SELECT "friendlyId" FROM "WorkerDeployment" WHERE "id" = %s',
        ids.production_deployment_id,
    )[0]
    assert answer.locked_by.deployment.friendly_id == friendly
    assert answer.locked_to_version.version == answer.locked_by.worker.version
