"""Serving a Prometheus registry as ``/metrics`` over HTTP.

Imports no gRPC: the parent of ``serve --processes N`` serves its merged
metrics (process_metrics.py) before it forks the serving processes.

Importing this module turns prometheus_client's ``*_created`` series off, for
the whole process: every process that serves metrics imports it (the parent
of ``--processes N`` through process_metrics.py, a serving process through
serving/observability.py) before it creates a metric, and a forked child
inherits the setting. The series would double the sample count of every
counter and histogram for a timestamp nothing here uses.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import start_http_server

disable_created_metrics()


class MetricsEndpoint:
    """A running ``/metrics`` HTTP server (prometheus_client's, on a daemon
    thread of its own)."""

    def __init__(self, httpd: Any) -> None:
        self.httpd = httpd
        #: The bound port (the one asked for, or the kernel's pick for port 0).
        self.port = int(httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_metrics(addr: str, registry: CollectorRegistry) -> MetricsEndpoint:
    """Serve ``registry`` as ``/metrics`` on ``addr`` (``host:port``,
    ``[v6]:port`` or ``:port`` for every interface). Raises OSError naming
    the setting when the address cannot be bound."""
    host, _, port = addr.rpartition(":")
    try:
        # "[::1]" is how an address names an IPv6 host; the socket wants "::1".
        httpd, _thread = start_http_server(
            int(port), host.strip("[]") or "0.0.0.0", registry=registry
        )
    except OSError as exc:
        raise OSError(
            f"could not serve metrics on {addr} (RESOLVER_METRICS_ADDR): "
            f"{exc.strerror or exc}; is the port in use?"
        ) from None
    return MetricsEndpoint(httpd)
