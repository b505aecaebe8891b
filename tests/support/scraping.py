"""Reading a real ``/metrics`` endpoint, with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from controlplane_resolver_client.v1 import SERVICE_NAME

from support.servers import Running

#: Every sample, keyed by sample name and label set.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``http://127.0.0.1:port/metrics``; raises OSError when
    nothing answers."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_server(running: Running) -> Samples:
    """Every sample of the server's ``/metrics``, keyed by name and label set."""
    assert running.app.metrics_port is not None
    return scrape(running.app.metrics_port)


def grpc_labels(method: str, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {"grpc_type": "unary", "grpc_service": SERVICE_NAME, "grpc_method": method, **more}.items()
    )


def handled(samples: Samples, method: str, code: str) -> float:
    return samples[("grpc_server_handled_total", grpc_labels(method, grpc_code=code))]
