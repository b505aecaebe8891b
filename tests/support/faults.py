"""Fault injection and measurement for tests/faults (docs/faults.md).

Faults are real: a cluster killed (``pg_ctl stop -m immediate``), hung
(``SIGSTOP`` of the postmaster and every backend: TCP still accepted, no
answer ever), or slowed (a table lock). Servers run as real processes
(``controlplane-resolver serve``) so the load generator's threads do not
share an interpreter lock with the server they measure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from controlplane_resolver.dev.clusters import LocalCluster, free_port

from support.polling import wait_until
from support.processes import CLI, health_status

#: The full scale of every scenario (docs/faults.md) under `make test-faults`;
#: the default suite runs each shorter.
FULL = os.environ.get("RESOLVER_FAULTS_FULL") == "1"


def scaled(full: float, short: float) -> float:
    return full if FULL else short


# ----------------------------------------------------------------- faults


def _postmaster_pid(cluster: LocalCluster) -> int:
    return int((cluster.datadir / "postmaster.pid").read_text().split()[0])


@contextmanager
def hung(cluster: LocalCluster) -> Iterator[None]:
    """The cluster accepts TCP connections but never answers: its
    postmaster and every backend stopped (SIGSTOP) for the block."""
    postmaster = _postmaster_pid(cluster)
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True
    ).stdout.split()
    pids = [postmaster, *(int(p) for p in children)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------ server


class Server:
    """``controlplane-resolver serve`` as a process, its output in a file
    (a pipe would fill up and block a server that logs every failed call)."""

    def __init__(self, env: dict[str, str], *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="cpr-fault-server-", suffix=".log")[1])
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [CLI, "serve", *args],
            env={**os.environ, **env, "RESOLVER_ADDR": self.address},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 30.0) -> Server:
        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.output()}")
            return health_status(self.address) == 1

        wait_until(serving, timeout, 0.05, f"server at {self.address} SERVING")
        return self

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()[-4000:]

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        if os.environ.get("RESOLVER_FAULTS_KEEP_LOGS") == "1":
            print(f"server log kept: {self.log}")
        else:
            self.log.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def server_env(control_plane: LocalCluster, run_ops: LocalCluster, **extra: str) -> dict[str, str]:
    """A split-mode server over the two clusters, on loopback."""
    return {
        "CONTROL_PLANE_DATABASE_URL": control_plane.dsn(),
        "RUN_OPS_DATABASE_URL": run_ops.dsn(),
        "RUN_OPS_SPLIT_ENABLED": "1",
        "REALTIME_BACKEND_NATIVE_ENABLED": "1",
        "RESOLVER_LISTEN_ENABLED": "0",
        "CONTROL_PLANE_CACHE_TTL_MS": "120000",
        "CONTROL_PLANE_CACHE_HARD_TTL_MS": "600000",
        "RESOLVER_LOG_LEVEL": os.environ.get("RESOLVER_FAULTS_LOG_LEVEL", "ERROR"),
        **extra,
    }


# ------------------------------------------------------------ measurement


@dataclass
class Tally:
    """Answers of one kind of call: count by status code, latencies, and how
    far past its own deadline any answer came."""

    name: str
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    overrun: float = 0.0
    wrong: int = 0
    #: How long each call answered CANCELLED had run.
    cancelled_after: list[float] = field(default_factory=list)
    #: The first few failures' codes and messages (for the report).
    details: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def call(
        self, fn: Callable[[], Any], timeout: float, check: Callable[[Any], bool]
    ) -> float | None:
        """Call ``fn`` and tally its answer; returns the server's retry
        pushback (seconds) when it sent one."""
        started = time.monotonic()
        pushback = None
        try:
            answer = fn()
            code = "OK"
            ok = check(answer)
        except grpc.RpcError as exc:
            code = exc.code().name
            ok = True
            if code != "OK" and len(self.details) < 5:
                self.details.append(f"{code}: {exc.details()}"[:160])  # type: ignore[attr-defined]
            for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
                if key == "grpc-retry-pushback-ms":
                    pushback = int(value) / 1000
        took = time.monotonic() - started
        with self._lock:
            self.codes[code] += 1
            self.latencies.append(took)
            self.overrun = max(self.overrun, took - timeout)
            self.wrong += 0 if ok else 1
            if code == "CANCELLED":
                self.cancelled_after.append(took)
        return pushback

    def merge(self, other: Tally) -> None:
        """Add ``other``'s answers to this tally."""
        with self._lock:
            self.codes.update(other.codes)
            self.latencies.extend(other.latencies)
            self.overrun = max(self.overrun, other.overrun)
            self.wrong += other.wrong
            self.cancelled_after.extend(other.cancelled_after)
            self.details.extend(other.details[: max(0, 5 - len(self.details))])

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

    def p99(self) -> float:
        return self.percentile(0.99)

    def slowest(self) -> float:
        return max(self.latencies, default=0.0)


@dataclass
class Row:
    """One line of the fault table."""

    scenario: str
    calls: int
    codes: Counter[str]
    slowest_s: float
    recover_s: float | None
    notes: str = ""


#: Every scenario's row, printed at the end of the session (conftest.py).
RESULTS: list[Row] = []


def record(scenario: str, tallies: list[Tally], recover_s: float | None, notes: str = "") -> Row:
    codes: Counter[str] = Counter()
    for t in tallies:
        codes.update(t.codes)
    row = Row(
        scenario,
        sum(t.calls for t in tallies),
        codes,
        max((t.slowest() for t in tallies), default=0.0),
        recover_s,
        notes,
    )
    RESULTS.append(row)
    return row


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (docs/faults.md)."""
    lines = [
        "| scenario | calls | answers by code | slowest answer | time to recover | notes |",
        "|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        codes = ", ".join(f"{c} {n}" for c, n in sorted(r.codes.items(), key=lambda x: -x[1]))
        recover = "–" if r.recover_s is None else f"{r.recover_s:.2f} s"
        lines.append(
            f"| {r.scenario} | {r.calls} | {codes} | {r.slowest_s * 1000:.0f} ms | {recover} "
            f"| {r.notes} |"
        )
    return "\n".join(lines)


class Load:
    """``threads`` threads each calling ``step()`` until :meth:`stop`."""

    def __init__(self, threads: int, step: Callable[[int], None]) -> None:
        self._stop = threading.Event()
        self.errors: list[BaseException] = []

        def run(i: int) -> None:
            while not self._stop.is_set():
                try:
                    step(i)
                except BaseException as exc:  # reported by stop()
                    self.errors.append(exc)
                    return

        self._threads = [
            threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "load threads did not stop"
        assert not self.errors, self.errors[:3]


def time_to_recover(ok: Callable[[], bool], since: float, timeout: float) -> float:
    """Seconds from ``since`` until ``ok()`` first holds (polled every 20 ms)."""
    wait_until(ok, timeout, 0.02, "recovery")
    return time.monotonic() - since
