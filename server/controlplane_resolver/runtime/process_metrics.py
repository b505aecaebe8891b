"""One ``/metrics`` for the processes of ``serve --processes N``.

Each serving process keeps its own counters (it has its own cache, pools
and gRPC server). Scraping only one of them would undercount, and a pod's
``prometheus.io/port`` names one port, so the supervising parent serves the
configured metrics address itself and, on every scrape, collects each
child's ``/metrics`` and re-exposes every sample with a ``process="<slot>"``
label (PromQL sums over it: ``sum without (process) (…)``), plus
``resolver_process_up{process}``: 1 when that child answered this scrape.
The parent's own standard process metrics (``process_*``: CPU, memory, file
descriptors, start time) join them as ``process="supervisor"``, so that a sum
over ``process`` is the whole pod's.

Children serve their own endpoints on ephemeral loopback ports and report
them through :class:`ChildPorts`, shared memory created before the fork, so
no port range has to be free and a restarted child simply reports anew.
"""

from __future__ import annotations

import logging
import multiprocessing
import urllib.request
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from controlplane_resolver.runtime.metrics_http import serve_metrics

log = logging.getLogger(__name__)

#: Where a child serves its own /metrics: loopback only (the parent is the
#: public endpoint), on a port the kernel picks.
CHILD_METRICS_ADDR = "127.0.0.1:0"

#: The ``process`` label of the parent's own samples.
SUPERVISOR = "supervisor"


class ChildPorts:
    """Each child's metrics port by slot, in memory shared across ``fork``.

    0 means "not serving yet" (a child starting or restarting). Only the
    child of a slot writes its entry, and only the parent reads; an aligned
    int write is atomic, so no lock is needed.
    """

    def __init__(self, processes: int) -> None:
        self._ports = multiprocessing.RawArray("i", processes)

    def __len__(self) -> int:
        return len(self._ports)

    def set(self, slot: int, port: int) -> None:
        """In the child of ``slot``: its metrics port (0 while not serving)."""
        self._ports[slot] = port

    def get(self, slot: int) -> int:
        return int(self._ports[slot])


class ChildrenCollector:
    """A prometheus_client collector that scrapes every child on each
    collect. A child that does not answer within ``timeout_s`` is reported
    as ``resolver_process_up 0`` and contributes no samples. ``own`` (the
    parent's process collector) contributes its samples as
    ``process="supervisor"``."""

    def __init__(
        self, ports: ChildPorts, timeout_s: float = 2.0, own: Collector | None = None
    ) -> None:
        self._ports = ports
        self._timeout_s = timeout_s
        self._own = own

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "resolver_process_up",
            "1 when the serving process answered this scrape, else 0",
            labels=["process"],
        )
        merged: dict[str, Metric] = {}
        for slot in range(len(self._ports)):
            text = self._scrape(slot)
            up.add_metric([str(slot)], 0 if text is None else 1)
            if text is not None:
                _merge(merged, text_string_to_metric_families(text), str(slot))
        if self._own is not None:
            _merge(merged, self._own.collect(), SUPERVISOR)
        yield from merged.values()
        yield up

    def _scrape(self, slot: int) -> str | None:
        port = self._ports.get(slot)
        if not port:
            return None
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/metrics", timeout=self._timeout_s
            ) as response:
                return str(response.read().decode())
        except OSError as exc:
            log.debug("process %d's /metrics (port %d) did not answer: %s", slot, port, exc)
            return None


def _merge(merged: dict[str, Metric], families: Iterable[Metric], process: str) -> None:
    """Add every sample of ``families`` to ``merged`` (by family name),
    labelled ``process``."""
    label = {"process": process}
    for family in families:
        into = merged.get(family.name)
        if into is None:
            into = merged[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        into.samples.extend(s._replace(labels={**s.labels, **label}) for s in family.samples)


class ProcessMetrics:
    """The parent's endpoint: created, and bound, before the children are
    forked; each child calls :meth:`close_inherited` first thing, so that
    only the parent holds the public port."""

    def __init__(self, addr: str, processes: int) -> None:
        self.ports = ChildPorts(processes)
        registry = CollectorRegistry(auto_describe=False)
        # Not registered on its own: its samples are merged, labelled.
        own = ProcessCollector(registry=None)
        registry.register(ChildrenCollector(self.ports, own=own))
        self._endpoint = serve_metrics(addr, registry)
        self.port = self._endpoint.port
        log.info(
            "metrics of %d processes on http://%s:%d/metrics (label process=0..%d)",
            processes,
            addr.rpartition(":")[0] or "0.0.0.0",
            self.port,
            processes - 1,
        )

    def close_inherited(self) -> None:
        """In a child: close the copy of the parent's listening socket."""
        self._endpoint.httpd.socket.close()

    def close(self) -> None:
        self._endpoint.close()
