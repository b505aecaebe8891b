"""The fault suite's data and its table (docs/faults.md).

``make test-faults`` runs every scenario at full scale
(``RESOLVER_FAULTS_FULL=1``) and writes the table to the file named by
``RESOLVER_FAULTS_REPORT``; the default suite runs each scenario shorter.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from controlplane_resolver.dev import demo
from controlplane_resolver.dev.clusters import LocalCluster

from support.faults import FULL, RESULTS, table


@dataclass
class Platform:
    """Two clusters of the test's own (free to kill and hang), with data."""

    control_plane: LocalCluster
    run_ops: LocalCluster
    #: Environments (cached by the scenarios before the fault).
    env_ids: list[str]
    #: Legacy (cuid) runs: read on run-ops, then on the control plane.
    legacy_run_ids: list[str]
    #: A NEW (ksuid) run, read on run-ops alone.
    new_run_id: str


@pytest.fixture
def platform(own_clusters: tuple[LocalCluster, LocalCluster]) -> Platform:
    control_plane, run_ops = own_clusters
    with (
        psycopg.connect(control_plane.dsn(), autocommit=True) as cp,
        psycopg.connect(run_ops.dsn(), autocommit=True) as ro,
    ):
        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        envs = [
            demo.insert_environment(cp, project_id=project, organization_id=org) for _ in range(4)
        ]
        legacy = [
            demo.insert_run(
                cp,
                id=demo.new_cuid(),
                environment_id=envs[0],
                project_id=project,
                organization_id=org,
            )
            for _ in range(32)
        ]
        new = demo.insert_run(
            ro,
            id=demo.new_ksuid(),
            environment_id=envs[0],
            project_id=project,
            organization_id=org,
        )
        # The clusters run with fsync and synchronous_commit off: a kill
        # (an immediate stop) must not lose the rows the scenarios read.
        cp.execute("CHECKPOINT")
        ro.execute("CHECKPOINT")
    return Platform(control_plane, run_ops, envs, legacy, new)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    scale = "full scale (make test-faults)" if FULL else "short (default suite)"
    text = f"Fault suite, {stamp}, {scale}:\n\n{table(RESULTS)}\n"
    terminalreporter.write_sep("=", "fault table")
    terminalreporter.write_line(text)
    report = os.environ.get("RESOLVER_FAULTS_REPORT")
    if report:
        with open(report, "w") as f:
            f.write(text)


@pytest.fixture
def stop_after() -> Iterator[list[Any]]:
    """Things with a ``stop()`` to call at the end of the test."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.stop()
