"""ResolveWorkerVersion through a real server: every branch of the dispatch
in docs/design.md, "Control-plane answers" (the platform's
controlPlaneResolver.server.ts, branch by branch), and how soon a promotion
shows.

* a worker id, whatever the type (``DEVELOPMENT`` too): that worker (of this
  environment only) with its deployment, if it has one.
* ``DEVELOPMENT`` without one: the newest worker of the environment by
  ``createdAt DESC, id DESC``; no deployment.
* otherwise the deployment promoted ``current`` (none, or without a worker:
  absent); when it is not ``MANAGED``, the newest ``MANAGED`` deployment,
  absent when that one has no worker yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from google.protobuf import json_format

from controlplane_resolver.dev import demo
from controlplane_resolver_client import ResolverClient, pb

from support.servers import serving

Conn = psycopg.Connection[Any]

T0 = datetime(2025, 5, 1, 9, 0, 0)


@pytest.fixture(scope="module")
def client(databases: Any) -> Iterator[ResolverClient]:
    """One split-mode server for the module. Every test uses fresh
    environments, so cached answers never meet. Its worker-version TTL is long
    (60 s, not the default 1 s) so that a test can tell a refresh caused by
    invalidation from one caused by expiry; the TTL itself is tested on a
    server of its own."""
    with serving(databases, worker_version_cache_ttl_ms=60_000) as running:
        yield running.client


@dataclass(frozen=True)
class Worker:
    """A worker as written: its tasks and the queues linked to it."""

    id: str
    environment_id: str
    task_ids: tuple[str, ...]
    queue_ids: tuple[str, ...]


def add_worker(
    cp: Conn,
    tenant: Any,
    environment_id: str,
    *,
    created_at: datetime = T0,
    id: str | None = None,
    slugs: tuple[str, ...] = ("send-email",),
) -> Worker:
    """A worker with one task and one linked queue per slug."""
    worker_id = demo.insert_worker(
        cp,
        project_id=tenant.project_id,
        environment_id=environment_id,
        created_at=created_at,
        **({"id": id} if id else {}),
    )
    task_ids, queue_ids = [], []
    for slug in slugs:
        queue_id = demo.insert_queue(
            cp, environment_id=environment_id, project_id=tenant.project_id
        )
        task_ids.append(
            demo.insert_task(
                cp,
                worker_id=worker_id,
                slug=slug,
                queue_id=queue_id,
                environment_id=environment_id,
                project_id=tenant.project_id,
            )
        )
        demo.link_worker_queue(cp, worker_id, queue_id)
        queue_ids.append(queue_id)
    return Worker(worker_id, environment_id, tuple(task_ids), tuple(queue_ids))


def add_deployment(
    cp: Conn,
    tenant: Any,
    environment_id: str,
    worker: Worker | None,
    *,
    type: str = "MANAGED",
    created_at: datetime = T0,
    id: str | None = None,
) -> str:
    return demo.insert_deployment(
        cp,
        project_id=tenant.project_id,
        environment_id=environment_id,
        worker_id=worker.id if worker else None,
        type=type,
        created_at=created_at,
        **({"id": id} if id else {}),
    )


def assert_version(
    answer: pb.ResolveWorkerVersionResponse | None, worker: Worker, *, deployment_id: str | None
) -> None:
    """The answer is ``worker`` with exactly its tasks and linked queues, and
    the given deployment (or none)."""
    assert answer is not None, "no worker version"
    assert answer.worker.id == worker.id
    assert answer.worker.runtime_environment_id == worker.environment_id
    assert sorted(t.id for t in answer.tasks) == sorted(worker.task_ids)
    assert all(t.worker_id == worker.id for t in answer.tasks)
    assert sorted(q.id for q in answer.queues) == sorted(worker.queue_ids)
    if deployment_id is None:
        assert not answer.HasField("deployment")
    else:
        assert answer.HasField("deployment")
        assert answer.deployment.id == deployment_id
        assert answer.deployment.worker_id == worker.id


# ------------------------------------------------------------------ DEVELOPMENT


def test_development_newest_worker_by_created_at_then_id(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """Newest is ``createdAt DESC, id DESC``: of two workers created at the same
    instant the larger id wins, and an older worker loses even with the largest id."""
    env_id = tenant.environment(cp, "DEVELOPMENT")
    base = demo.new_cuid()[:-1]
    add_worker(cp, tenant, env_id, created_at=T0, id=base + "0")
    larger = add_worker(cp, tenant, env_id, created_at=T0, id=base + "z")
    # Larger than both ids above ("z…" > "c…"), but a second older.
    add_worker(cp, tenant, env_id, created_at=T0 - timedelta(seconds=1), id="z" + base[1:] + "z")
    answer = client.resolve_worker_version(env_id)
    assert_version(answer, larger, deployment_id=None)
    assert answer is not None and answer.worker.created_at.ToDatetime() == T0


def test_development_newest_worker_fields(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """The worker, its tasks and its queues carry the written values; no deployment."""
    env_id = tenant.environment(cp, "DEVELOPMENT")
    worker = add_worker(cp, tenant, env_id, slugs=("resize-image", "send-email"))
    answer = client.resolve_worker_version(env_id)
    assert_version(answer, worker, deployment_id=None)
    assert answer is not None
    w = answer.worker
    assert w.friendly_id.startswith("worker_")
    assert (w.engine, w.sdk_version, w.cli_version) == ("V2", "4.0.0", "4.0.0")
    assert (w.runtime, w.runtime_version) == ("node", "22.12.0")
    assert w.project_id == tenant.project_id
    assert w.supports_lazy_attempts is False and not w.HasField("worker_group_id")
    tasks = {t.slug: t for t in answer.tasks}
    assert set(tasks) == {"resize-image", "send-email"}
    task = tasks["send-email"]
    assert task.file_path == "src/trigger/send-email.ts"
    assert task.export_name == "sendEmail"
    assert json_format.MessageToDict(task.machine_config) == {"preset": "small-1x"}
    assert json_format.MessageToDict(task.retry_config)["maxAttempts"] == 3
    assert json_format.MessageToDict(task.queue_config) == {"name": "task/send-email"}
    assert task.queue_id in worker.queue_ids
    for queue in answer.queues:
        assert queue.type == "VIRTUAL" and queue.friendly_id.startswith("queue_")
        assert queue.name.startswith("task/") and queue.paused is False
        assert not queue.HasField("concurrency_limit")


def test_development_with_worker_id(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """A given worker id wins over "newest"; a worker without a deployment
    answers without one."""
    env_id = tenant.environment(cp, "DEVELOPMENT")
    older = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    add_worker(cp, tenant, env_id, created_at=T0)
    assert_version(
        client.resolve_worker_version(env_id, worker_id=older.id), older, deployment_id=None
    )


def test_development_with_worker_id_answers_its_deployment(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """As the platform's worker-by-id read: a DEVELOPMENT environment given a
    worker id answers that worker with its deployment, when it has one (the
    newest-worker branch never carries one)."""
    env_id = tenant.environment(cp, "DEVELOPMENT")
    worker = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    deployment_id = add_deployment(cp, tenant, env_id, worker)
    newest = add_worker(cp, tenant, env_id, created_at=T0)
    answer = client.resolve_worker_version(env_id, worker_id=worker.id)
    assert_version(answer, worker, deployment_id=deployment_id)
    # The same through the environment's own type, and asked as DEVELOPMENT.
    assert_version(
        client.resolve_worker_version(
            env_id, environment_type=pb.ENVIRONMENT_TYPE_DEVELOPMENT, worker_id=worker.id
        ),
        worker,
        deployment_id=deployment_id,
    )
    assert_version(client.resolve_worker_version(env_id), newest, deployment_id=None)


def test_development_without_workers_is_absent(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    assert client.resolve_worker_version(tenant.environment(cp, "DEVELOPMENT")) is None


def test_worker_of_another_environment_is_absent(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """A worker id must belong to the environment asked about, on both paths."""
    dev = tenant.environment(cp, "DEVELOPMENT")
    other_dev = tenant.environment(cp, "DEVELOPMENT")
    add_worker(cp, tenant, dev)
    foreign = add_worker(cp, tenant, other_dev)
    assert client.resolve_worker_version(dev, worker_id=foreign.id) is None

    prod = tenant.environment(cp, "PRODUCTION")
    other_prod = tenant.environment(cp, "PRODUCTION")
    foreign_deployed = add_worker(cp, tenant, other_prod)
    add_deployment(cp, tenant, other_prod, foreign_deployed)
    assert client.resolve_worker_version(prod, worker_id=foreign_deployed.id) is None
    assert client.resolve_worker_version(prod, worker_id=demo.new_cuid()) is None


# ------------------------------------------------------- non-dev with worker id


def test_non_development_with_worker_id_returns_its_deployment(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """That worker, with its own deployment, whatever is promoted."""
    env_id = tenant.environment(cp, "STAGING")
    pinned = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    pinned_deployment = add_deployment(
        cp, tenant, env_id, pinned, created_at=T0 - timedelta(days=1)
    )
    current = add_worker(cp, tenant, env_id)
    demo.promote(cp, add_deployment(cp, tenant, env_id, current), env_id)
    answer = client.resolve_worker_version(env_id, worker_id=pinned.id)
    assert_version(answer, pinned, deployment_id=pinned_deployment)


def test_non_development_worker_without_deployment(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    env_id = tenant.environment(cp, "PRODUCTION")
    worker = add_worker(cp, tenant, env_id)
    assert_version(
        client.resolve_worker_version(env_id, worker_id=worker.id), worker, deployment_id=None
    )


# --------------------------------------------------------------- promotion path


def test_promoted_managed_deployment(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """The ``current`` promotion's worker, with its tasks, the queues linked to
    it through ``_BackgroundWorkerToTaskQueue`` (and no other queue of the
    environment), and the deployment."""
    env_id = tenant.environment(cp, "PRODUCTION")
    worker = add_worker(cp, tenant, env_id, slugs=("resize-image", "send-email"))
    # Noise: a newer unpromoted deployment, and a queue of the environment not linked.
    newer = add_worker(cp, tenant, env_id, created_at=T0 + timedelta(hours=1))
    add_deployment(cp, tenant, env_id, newer, created_at=T0 + timedelta(hours=1))
    demo.insert_queue(cp, environment_id=env_id, project_id=tenant.project_id)
    deployment_id = add_deployment(cp, tenant, env_id, worker)
    demo.promote(cp, deployment_id, env_id)

    answer = client.resolve_worker_version(env_id)
    assert_version(answer, worker, deployment_id=deployment_id)
    assert answer is not None
    d = answer.deployment
    assert d.friendly_id.startswith("deployment_") and len(d.short_code) == 8
    assert (d.status, d.type) == ("DEPLOYED", "MANAGED")
    assert d.version == answer.worker.version
    assert (d.runtime, d.runtime_version) == ("node", "22.12.0")
    assert d.created_at.ToDatetime() == T0


def test_no_promotion_is_absent(client: ResolverClient, cp: Conn, tenant: Any) -> None:
    """Deployments with workers exist, but none is promoted ``current``
    (a ``current-unmanaged`` label does not count)."""
    env_id = tenant.environment(cp, "PRODUCTION")
    worker = add_worker(cp, tenant, env_id)
    deployment_id = add_deployment(cp, tenant, env_id, worker)
    assert client.resolve_worker_version(env_id) is None
    demo.promote(cp, deployment_id, env_id, label="current-unmanaged")
    client.invalidate(worker_versions_environment_id=env_id)
    assert client.resolve_worker_version(env_id) is None


def test_promoted_deployment_without_worker_is_absent(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    env_id = tenant.environment(cp, "PRODUCTION")
    # An older MANAGED deployment with a worker does not stand in for it.
    add_deployment(
        cp, tenant, env_id, add_worker(cp, tenant, env_id), created_at=T0 - timedelta(days=1)
    )
    demo.promote(cp, add_deployment(cp, tenant, env_id, None), env_id)
    assert client.resolve_worker_version(env_id) is None


def test_promoted_unmanaged_falls_back_to_the_newest_managed(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """A promoted UNMANAGED deployment: the newest MANAGED deployment answers,
    by ``createdAt DESC, id DESC`` (on a tie the larger id wins; an older one
    loses even with the largest id)."""
    env_id = tenant.environment(cp, "PRODUCTION")
    old = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=2))
    add_deployment(
        cp, tenant, env_id, old, created_at=T0 - timedelta(days=2), id="z" + demo.new_cuid()[1:]
    )
    base = demo.new_cuid()[:-1]
    tie_small = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    add_deployment(cp, tenant, env_id, tie_small, created_at=T0 - timedelta(days=1), id=base + "0")
    tie_large = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    tie_large_deployment = add_deployment(
        cp, tenant, env_id, tie_large, created_at=T0 - timedelta(days=1), id=base + "z"
    )
    unmanaged = add_worker(cp, tenant, env_id, created_at=T0 + timedelta(hours=1))
    demo.promote(
        cp,
        add_deployment(
            cp, tenant, env_id, unmanaged, type="UNMANAGED", created_at=T0 + timedelta(hours=1)
        ),
        env_id,
    )

    answer = client.resolve_worker_version(env_id)
    assert_version(answer, tie_large, deployment_id=tie_large_deployment)
    assert answer is not None and answer.deployment.type == "MANAGED"


def test_newest_managed_without_a_worker_yet_is_absent(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """As the platform: when the newest MANAGED deployment has no worker yet
    (it is still building), the answer is absent; an older MANAGED deployment
    with a worker does not stand in for it."""
    env_id = tenant.environment(cp, "PRODUCTION")
    older = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    add_deployment(cp, tenant, env_id, older, created_at=T0 - timedelta(days=1))
    unmanaged = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(hours=1))
    demo.promote(
        cp,
        add_deployment(
            cp, tenant, env_id, unmanaged, type="UNMANAGED", created_at=T0 - timedelta(hours=1)
        ),
        env_id,
    )
    building = add_deployment(cp, tenant, env_id, None, created_at=T0)
    assert client.resolve_worker_version(env_id) is None
    # Once the building deployment gets its worker, it answers.
    newest = add_worker(cp, tenant, env_id, created_at=T0)
    cp.execute(
        'UPDATE "WorkerDeployment" SET "workerId" = %s WHERE "id" = %s', (newest.id, building)
    )
    client.invalidate(worker_versions_environment_id=env_id)
    assert_version(client.resolve_worker_version(env_id), newest, deployment_id=building)


def test_promoted_unmanaged_without_managed_is_absent(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    env_id = tenant.environment(cp, "PRODUCTION")
    # Only non-MANAGED deployments, and a MANAGED one without a worker.
    add_deployment(cp, tenant, env_id, add_worker(cp, tenant, env_id), type="V1")
    add_deployment(cp, tenant, env_id, None, type="MANAGED")
    unmanaged = add_worker(cp, tenant, env_id)
    demo.promote(cp, add_deployment(cp, tenant, env_id, unmanaged, type="UNMANAGED"), env_id)
    assert client.resolve_worker_version(env_id) is None


# ------------------------------------------------------------ environment type


def test_omitted_type_is_the_environments_own(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    dev = tenant.environment(cp, "DEVELOPMENT")
    dev_worker = add_worker(cp, tenant, dev)
    assert_version(client.resolve_worker_version(dev), dev_worker, deployment_id=None)

    prod = tenant.environment(cp, "PRODUCTION")
    promoted = add_worker(cp, tenant, prod, created_at=T0 - timedelta(days=1))
    deployment_id = add_deployment(cp, tenant, prod, promoted)
    demo.promote(cp, deployment_id, prod)
    add_worker(cp, tenant, prod, created_at=T0)  # newest, but not promoted
    assert_version(client.resolve_worker_version(prod), promoted, deployment_id=deployment_id)


def test_omitted_type_of_absent_environment_is_absent(client: ResolverClient) -> None:
    assert client.resolve_worker_version(demo.new_cuid()) is None


def test_explicit_type_overrides_the_environments_own(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """A PRODUCTION environment asked as DEVELOPMENT answers its newest worker
    (not the promoted one) without deployment; a DEVELOPMENT environment asked
    as PRODUCTION follows the promotion."""
    prod = tenant.environment(cp, "PRODUCTION")
    promoted = add_worker(cp, tenant, prod, created_at=T0 - timedelta(days=1))
    deployment_id = add_deployment(cp, tenant, prod, promoted)
    demo.promote(cp, deployment_id, prod)
    newest = add_worker(cp, tenant, prod, created_at=T0)
    assert_version(
        client.resolve_worker_version(prod, environment_type=pb.ENVIRONMENT_TYPE_DEVELOPMENT),
        newest,
        deployment_id=None,
    )
    assert_version(
        client.resolve_worker_version(prod, environment_type=pb.ENVIRONMENT_TYPE_PRODUCTION),
        promoted,
        deployment_id=deployment_id,
    )

    dev = tenant.environment(cp, "DEVELOPMENT")
    dev_promoted = add_worker(cp, tenant, dev, created_at=T0 - timedelta(days=1))
    dev_deployment = add_deployment(cp, tenant, dev, dev_promoted)
    demo.promote(cp, dev_deployment, dev)
    add_worker(cp, tenant, dev, created_at=T0)
    assert_version(
        client.resolve_worker_version(dev, environment_type=pb.ENVIRONMENT_TYPE_STAGING),
        dev_promoted,
        deployment_id=dev_deployment,
    )


# ---------------------------------------------------------- promotion visibility


def wait_for_worker(
    client: ResolverClient, environment_id: str, worker_id: str, deadline_s: float
) -> float | None:
    """Poll until the answer's worker is ``worker_id``; the seconds it took,
    or None if it did not happen within ``deadline_s``."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        answer = client.resolve_worker_version(environment_id)
        if answer is not None and answer.worker.id == worker_id:
            return time.monotonic() - start
    return None


def test_promotion_shows_within_the_worker_version_ttl(
    start_server: Callable[..., Any], cp: Conn, tenant: Any
) -> None:
    """A cached worker version does not outlive a promotion by more than the
    worker-version TTL (300 ms here; the documented bound is one second)."""
    client = start_server(worker_version_cache_ttl_ms=300).client
    env_id = tenant.environment(cp, "PRODUCTION")
    first = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    first_deployment = add_deployment(cp, tenant, env_id, first)
    demo.promote(cp, first_deployment, env_id)
    assert_version(client.resolve_worker_version(env_id), first, deployment_id=first_deployment)

    second = add_worker(cp, tenant, env_id, created_at=T0)
    demo.promote(cp, add_deployment(cp, tenant, env_id, second), env_id)
    took = wait_for_worker(client, env_id, second.id, deadline_s=2.0)
    assert took is not None, "the promoted worker was not served within 2 s"
    assert took < 1.0, f"the promotion took {took:.3f}s to show"


def test_invalidating_worker_versions_shows_a_promotion_at_once(
    client: ResolverClient, cp: Conn, tenant: Any
) -> None:
    """A cached worker version is served after a promotion until the writer
    invalidates the environment's worker versions; then the new one shows."""
    env_id = tenant.environment(cp, "PRODUCTION")
    first = add_worker(cp, tenant, env_id, created_at=T0 - timedelta(days=1))
    first_deployment = add_deployment(cp, tenant, env_id, first)
    demo.promote(cp, first_deployment, env_id)
    assert_version(client.resolve_worker_version(env_id), first, deployment_id=first_deployment)
    second = add_worker(cp, tenant, env_id, created_at=T0)
    second_deployment = add_deployment(cp, tenant, env_id, second)
    demo.promote(cp, second_deployment, env_id)
    assert_version(client.resolve_worker_version(env_id), first, deployment_id=first_deployment)
    client.invalidate(worker_versions_environment_id=env_id)
    assert_version(client.resolve_worker_version(env_id), second, deployment_id=second_deployment)
