"""Serving a Prometheus registry as ``/metrics`` over HTTP.

Imports no gRPC: the parent of ``serve --processes N`` serves its merged
metrics (process_metrics.py) before it forks the serving processes.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_http_server


def serve_metrics(addr: str, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` as ``/metrics`` on ``addr`` (``host:port``,
    ``[v6]:port`` or ``:port`` for every interface) from a thread of its
    own; returns the HTTP server. Raises OSError naming the setting when the
    address cannot be bound."""
    host, _, port = addr.rpartition(":")
    try:
        # "[::1]" is how an address names an IPv6 host; the socket wants "::1".
        httpd, _thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0",
                                           registry=registry)
    except OSError as exc:
        raise OSError(f"could not serve metrics on {addr} (RESOLVER_METRICS_ADDR): "
                      f"{exc.strerror or exc}; is the port in use?") from None
    return httpd
