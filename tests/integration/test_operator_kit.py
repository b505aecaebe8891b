"""The operator kit watches metrics the server really exports.

Every metric of every PromQL expression in the PrometheusRule
(deploy/kubernetes/monitoring/prometheusrule.yaml) and the Grafana dashboard
(deploy/grafana/controlplane-resolver.json), with every label it matches or
groups on, is found in a real server's ``/metrics``, scraped after a few
calls; so is every metric their prose names. The same scrape, through the
supervisor's merging endpoint of ``serve --processes N``, gives
``resolver_process_up`` and the ``process`` label. Expressions are read with
scripts/validate_k8s.py's PromQL reader, whose metric table (the offline
check CI runs) is held to the same scrape here; a second, cruder reading of
the files' raw text does not depend on that reader.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from controlplane_resolver.dev import demo
from controlplane_resolver.runtime.process_metrics import ProcessMetrics
from controlplane_resolver_client import ResolverError

from support.databases import Tenant
from support.scraping import Samples, scrape, scrape_server

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "controlplane-resolver.json"

#: Metrics that come from elsewhere, and may be absent from the scrape:
#: Prometheus' own ``up``, and kube-state-metrics' restart counter. Pinned
#: here, so that the validator's allowance cannot grow unnoticed.
EXTERNAL = {"up", "kube_pod_container_status_restarts_total"}
#: What the issue asks the kit to watch: each must be queried somewhere.
RULES_MUST_USE = {
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "resolver_pool_errors_total",
    "resolver_listener_listening",
    "resolver_cache_stale_serves_total",
    "resolver_process_up",
}
DASHBOARD_MUST_USE = {
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "resolver_cache_hits_total",
    "resolver_pool_connections",
    "resolver_pool_requests_waiting",
    "resolver_listener_listening",
    "resolver_split_mode",
    "resolver_sentinel_verdict",
    "resolver_ready",
    "resolver_process_up",
}

#: {sample name: every label name it carries}
Exported = dict[str, set[str]]


@pytest.fixture(scope="module")
def kit() -> ModuleType:
    """scripts/validate_k8s.py, imported as a module."""
    path = ROOT / "scripts" / "validate_k8s.py"
    spec = importlib.util.spec_from_file_location("validate_k8s", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def label_names(samples: Samples) -> Exported:
    found: Exported = {}
    for name, labels in samples:
        found.setdefault(name, set()).update(label for label, _ in labels)
    return found


@pytest.fixture
def exported(start_server, cp, tenant: Tenant) -> Iterator[tuple[Exported, Exported]]:
    """(one process's /metrics, the same merged as ``serve --processes 2``
    serves it), each as {sample name: label names}, after calls that end
    OK, NOT_FOUND and INVALID_ARGUMENT and read runs."""
    running = start_server(metrics_addr="127.0.0.1:0")
    client = running.client
    env_id = tenant.environment(cp)
    assert client.resolve_env(env_id) is not None
    assert client.resolve_env(demo.new_cuid()) is None
    assert client.read_run(demo.new_cuid()) is None
    with pytest.raises(ResolverError):
        client.resolve_env("not an id!")
    single = label_names(scrape_server(running))
    # The supervisor's endpoint, as `serve --processes 2` builds it: slot 0
    # is this server, slot 1 has not reported a port (a process restarting).
    merged_endpoint = ProcessMetrics("127.0.0.1:0", 2)
    try:
        assert running.app.metrics_port is not None
        merged_endpoint.ports.set(0, running.app.metrics_port)
        merged = label_names(scrape(merged_endpoint.port))
    finally:
        merged_endpoint.close()
    yield single, merged


# ------------------------------------------------------------ the kit's queries


def rule_expressions() -> dict[str, str]:
    """{alert or record name: expr} of the PrometheusRule."""
    rule = yaml.safe_load(RULES.read_text())
    return {
        r.get("alert") or r["record"]: r["expr"]
        for group in rule["spec"]["groups"]
        for r in group["rules"]
    }


def dashboard_expressions() -> dict[str, str]:
    """{panel title and refId, or variable name: PromQL} of the dashboard;
    a ``label_values(selector, label)`` variable gives its selector."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:  # a row holds its panels when collapsed
        panels += [panel, *panel.get("panels", [])]
    found = {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in panels
        for target in panel.get("targets", [])
    }
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        values = re.fullmatch(r"label_values\((.*),\s*\w+\)", str(query))
        if variable.get("type") == "query" and values:
            found[f"variable {variable['name']}"] = values.group(1)
    return found


def uses(kit: ModuleType, expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """({metric: labels its selectors match on}, labels the expression
    groups on: by, without, on, ignoring, group_left/right)."""
    promql = kit.read_promql(expr)
    assert not promql.errors, (expr, promql.errors)
    matched: dict[str, set[str]] = {}
    for selector in promql.selectors:
        matched.setdefault(selector.metric, set()).update(set(selector.matchers) - {"__name__"})
    return matched, promql.grouping | promql.dropped


def missing(kit: ModuleType, expressions: dict[str, str], exported: Exported) -> list[str]:
    """What the expressions query that ``exported`` lacks: metrics; labels
    matched that neither the metric nor the scrape target carries; labels
    grouped on that none of the expression's metrics carries."""
    problems = []
    for where, expr in expressions.items():
        matched, grouped = uses(kit, expr)
        carried = set(kit.TARGET_LABELS)
        for metric, labels in sorted(matched.items()):
            if metric in EXTERNAL:
                carried |= kit.EXTERNAL_METRICS[metric]
                continue
            if metric not in exported:
                problems.append(f"{where}: {metric} is not exported")
                continue
            carried |= exported[metric]
            for label in sorted(labels - exported[metric] - kit.TARGET_LABELS):
                problems.append(f"{where}: {metric} has no label {label}")
        for label in sorted(grouped - carried):
            problems.append(f"{where}: grouped by {label}, which no metric carries")
    return problems


def all_metrics(kit: ModuleType, expressions: dict[str, str]) -> set[str]:
    return {metric for expr in expressions.values() for metric in uses(kit, expr)[0]}


# ------------------------------------------------------------ tests


def test_rules_and_dashboard_query_only_exported_metrics_and_labels(
    kit: ModuleType, exported: tuple[Exported, Exported]
) -> None:
    single, merged = exported
    rules, dashboard = rule_expressions(), dashboard_expressions()
    assert len(rules) >= 6 and len(dashboard) >= 20
    assert all_metrics(kit, rules) >= RULES_MUST_USE
    assert all_metrics(kit, dashboard) >= DASHBOARD_MUST_USE
    # One process per pod (the manifests), then N: every query is answered
    # by the merged endpoint, and all but resolver_process_up by one process.
    assert missing(kit, {**rules, **dashboard}, merged) == []
    assert {
        problem.rpartition(": ")[2] for problem in missing(kit, {**rules, **dashboard}, single)
    } <= {"resolver_process_up is not exported"}
    # Only the pinned outside metrics are queried without being exported.
    queried = all_metrics(kit, rules) | all_metrics(kit, dashboard)
    assert queried - set(merged) <= EXTERNAL
    assert set(kit.EXTERNAL_METRICS) == EXTERNAL

    # The check can fail: the same rules with one name misspelled, and a
    # label that does not exist.
    broken = {
        **rules,
        "ControlplaneResolverListenerDown": "resolver_listener_listenning == 0",
        "label": 'sum by (namespace) (rate(resolver_pool_errors_total{db="x"}[5m]))',
    }
    assert missing(kit, broken, merged) == [
        "ControlplaneResolverListenerDown: resolver_listener_listenning is not exported",
        "label: resolver_pool_errors_total has no label db",
    ]


def test_metrics_named_anywhere_in_the_files_are_exported(
    exported: tuple[Exported, Exported],
) -> None:
    """Without the PromQL reader: every resolver_* / grpc_server_* word of
    the two files, expressions and prose alike, names an exported series (a
    histogram may be named by its base name)."""
    _, merged = exported
    word = re.compile(r"(?<![\w.])(?:resolver|grpc_server)_[a-z_]*[a-z]")
    for path in (RULES, DASHBOARD):
        names = set(word.findall(path.read_text()))
        assert len(names) >= 8, path
        unknown = {
            name for name in names if not {name, f"{name}_total", f"{name}_bucket"} & set(merged)
        }
        assert not unknown, f"{path.relative_to(ROOT)} names {sorted(unknown)}"


def test_the_validators_metric_table_is_what_the_server_exports(
    kit: ModuleType, exported: tuple[Exported, Exported]
) -> None:
    """scripts/validate_k8s.py checks the kit offline against its own table
    of metrics and labels: every entry is exported, with exactly those
    labels, and every resolver_* / grpc_server_* series is in it."""
    single, merged = exported
    assert {name: single.get(name) for name in kit.SERVER_METRICS} == {
        name: set(labels) for name, labels in kit.SERVER_METRICS.items()
    }
    assert {name: merged.get(name) for name in kit.SUPERVISOR_METRICS} == {
        name: set(labels) for name, labels in kit.SUPERVISOR_METRICS.items()
    }
    ours = {
        name
        for name in single
        if name.startswith(("resolver_", "grpc_server_")) and not name.endswith("_created")
    }
    assert ours == set(kit.SERVER_METRICS)
    # Under --processes N every sample carries process="i" as well: a target
    # label the validator allows on every metric.
    assert "process" in kit.TARGET_LABELS
    assert all("process" in labels for labels in merged.values())


def test_the_validator_reads_every_expression_of_the_kit(kit: ModuleType) -> None:
    """The offline check (CI) finds nothing wrong with the files as they are,
    and the reader it uses rejects broken PromQL."""
    expressions: dict[str, Any] = {**rule_expressions(), **dashboard_expressions()}
    for where, expr in expressions.items():
        assert kit.read_promql(expr).errors == [], where
    for broken in ("rate(resolver_ready)", "sum(resolver_ready", "resolver_ready resolver_ready"):
        assert kit.read_promql(broken).errors, broken
