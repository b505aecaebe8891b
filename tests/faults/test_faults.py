"""The fault suite (docs/faults.md): real clusters killed, hung and slowed
under load, servers signalled during load and during a hang, hostile
callers, against the targets of docs/operations.md ("When a database is
slow, down or hung"). Each scenario adds a row to the table printed at the
end of the run; the default suite runs each shorter (``FULL`` scales).

Servers run as processes: the load's threads must not share an
interpreter with the server they measure. Calls go over bare channels
(one attempt each) so the table shows the server's own answers, except in
the rolling restart, which uses the typed client as engine nodes do.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import string
import subprocess
import time
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from faults.conftest import Platform
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver.dev.clusters import free_port
from controlplane_resolver_client import ResolverClient, channel_options, pb
from controlplane_resolver_client.v1 import SERVICE_NAME, resolver_pb2_grpc

from support.faults import (
    FULL,
    Load,
    Server,
    Tally,
    hung,
    record,
    scaled,
    server_env,
    time_to_recover,
)
from support.polling import wait_until
from support.processes import CLI
from support.scraping import scrape

#: Slack for measurement on a shared 2-core machine in the short runs; the
#: full runs assert the targets themselves.
SLACK = 1.0 if FULL else 4.0
#: A call answered CANCELLED after running this long had been accepted by a
#: handler; quicker ones were refused by grpc core as it shut down.
ACCEPTED_S = 0.1


class Calls:
    """Typed-less stubs over one bare channel to ``address``."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def read_run(self, run_id: str, timeout: float) -> Any:
        return self.stub.ReadRun(pb.ReadRunRequest(run_id=run_id), timeout=timeout)

    def resolve_env(self, env_id: str, timeout: float) -> Any:
        return self.stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id), timeout=timeout)

    def classify(self, run_id: str, timeout: float) -> Any:
        return self.stub.ClassifyRunId(pb.ClassifyRunIdRequest(id=run_id), timeout=timeout)

    def check(self, timeout: float) -> Any:
        return self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)

    def stop(self) -> None:
        self.channel.close()


def serve(platform: Platform, stop_after: list[Any], *args: str, **env: str) -> Server:
    server = Server(server_env(platform.control_plane, platform.run_ops, **env), *args)
    stop_after.append(server)
    return server.wait_serving()


def warm(calls: Calls, platform: Platform) -> None:
    for env_id in platform.env_ids:
        calls.resolve_env(env_id, 5)
    assert calls.read_run(platform.legacy_run_ids[0], 5).run.id == platform.legacy_run_ids[0]


def probes(calls: Calls, platform: Platform) -> tuple[list[Tally], Callable[[int], None]]:
    """Calls that need no database: a cache hit, ClassifyRunId, health."""
    hit, classify, health = Tally("hit"), Tally("classify"), Tally("health")
    env_id, run_id = platform.env_ids[0], platform.legacy_run_ids[0]

    def step(i: int) -> None:
        if i == 0:
            hit.call(lambda: calls.resolve_env(env_id, 1), 1, lambda r: r.environment.id == env_id)
        elif i == 1:
            classify.call(lambda: calls.classify(run_id, 1), 1, lambda r: r.classifiable)
        else:
            health.call(lambda: calls.check(1), 1, lambda r: r.status == 1)
        time.sleep(0.005)  # a probe's pace, not synchronisation

    return [hit, classify, health], step


def cold_reader(
    calls: Calls, platform: Platform, timeout: float
) -> tuple[Tally, Callable[[int], None]]:
    """ReadRun of legacy runs: never cached, read on the control plane."""
    cold = Tally("cold")
    runs = platform.legacy_run_ids

    def step(i: int) -> None:
        run_id = runs[i % len(runs)]
        pushback = cold.call(
            lambda: calls.read_run(run_id, timeout), timeout, lambda r: r.run.id == run_id
        )
        # As a client's retry policy does (gRFC A6): wait the server's
        # pushback before the next call. Pacing, not synchronisation.
        if pushback:
            time.sleep(pushback)

    return cold, step


def recovered(calls: Calls, platform: Platform) -> Callable[[], bool]:
    run_id = platform.legacy_run_ids[-1]

    def ok() -> bool:
        try:
            return calls.read_run(run_id, 1).run.id == run_id
        except grpc.RpcError:
            return False

    return ok


def assert_answers(cold: Tally, probe_tallies: list[Tally]) -> None:
    assert cold.wrong == 0 and cold.codes["NOT_FOUND"] == 0, cold
    assert set(cold.codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, cold.codes
    assert cold.overrun <= 0.1 * SLACK, f"a call outlived its deadline by {cold.overrun:.3f}s"
    for t in probe_tallies:
        assert set(t.codes) == {"OK"} and t.wrong == 0, (t.name, t.codes)
        assert t.p99() < 0.05 * SLACK, f"{t.name} p99 {t.p99() * 1000:.1f} ms"


# ------------------------------------------------------------- scenarios


def test_hang_under_32_cold_callers(platform: Platform, stop_after: list[Any]) -> None:
    hang_s = scaled(20, 6)
    server = serve(platform, stop_after)
    calls = Calls(server.address)
    stop_after.append(calls)
    warm(calls, platform)
    cold, cold_step = cold_reader(calls, platform, timeout=2.0)
    probe_tallies, probe_step = probes(calls, platform)
    with hung(platform.control_plane):
        load, probing = Load(32, cold_step), Load(3, probe_step)
        time.sleep(hang_s)  # the fault's duration
        probing.stop()
        load.stop()
    thawed = time.monotonic()
    recover = time_to_recover(recovered(calls, platform), thawed, 30)
    p99 = max(t.p99() for t in probe_tallies)
    record(
        f"hang (SIGSTOP) {hang_s:.0f} s, 32 cold callers",
        [cold, *probe_tallies],
        recover,
        f"hits/Classify/health p99 {p99 * 1000:.1f} ms; worst deadline overrun "
        f"{max(cold.overrun, 0) * 1000:.0f} ms",
    )
    assert_answers(cold, probe_tallies)
    assert recover < 2.0 * SLACK


@pytest.mark.parametrize("outage_s", [scaled(15, 4)] + ([120.0] if FULL else []))
def test_kill_and_restart(platform: Platform, stop_after: list[Any], outage_s: float) -> None:
    server = serve(platform, stop_after)
    calls = Calls(server.address)
    stop_after.append(calls)
    warm(calls, platform)
    cold, cold_step = cold_reader(calls, platform, timeout=2.0)
    probe_tallies, probe_step = probes(calls, platform)
    platform.control_plane.stop("immediate")
    load, probing = Load(8, cold_step), Load(3, probe_step)
    time.sleep(outage_s)  # the fault's duration
    load.stop()
    platform.control_plane.start()
    back = time.monotonic()
    recover = time_to_recover(recovered(calls, platform), back, 60)
    probing.stop()
    record(
        f"kill (stop -m immediate) {outage_s:.0f} s, 8 cold callers",
        [cold, *probe_tallies],
        recover,
        f"cold answers while down: p50 {cold.percentile(0.5) * 1000:.1f} ms, "
        f"p99 {cold.p99() * 1000:.0f} ms",
    )
    assert_answers(cold, probe_tallies)
    # Known down: answered at once, not after a timeout (but for the calls
    # of the first second or so, before the circuit opens).
    assert cold.codes["UNAVAILABLE"] > 0 and cold.percentile(0.5) < 0.05 * SLACK
    assert recover < 2.0 * SLACK


def test_slow_database_lock(platform: Platform, stop_after: list[Any]) -> None:
    lock_s = scaled(10, 3)
    server = serve(platform, stop_after)
    calls = Calls(server.address)
    stop_after.append(calls)
    warm(calls, platform)
    cold = Tally("cold")
    # Environments not cached yet: each load waits on the locked table.
    with psycopg.connect(platform.control_plane.dsn(), autocommit=True) as cp:
        from controlplane_resolver.dev import demo

        org = demo.insert_organization(cp)
        project = demo.insert_project(cp, organization_id=org)
        fresh = [
            demo.insert_environment(cp, project_id=project, organization_id=org) for _ in range(8)
        ]

    def step(i: int) -> None:
        env_id = fresh[i % len(fresh)]
        cold.call(lambda: calls.resolve_env(env_id, 1.0), 1.0, lambda r: r.environment.id == env_id)

    probe_tallies, probe_step = probes(calls, platform)
    with psycopg.connect(platform.control_plane.dsn()) as locker:
        locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
        load, probing = Load(16, step), Load(3, probe_step)
        time.sleep(lock_s)  # the fault's duration
        load.stop()
        probing.stop()
        locker.rollback()
    released = time.monotonic()

    def answered() -> bool:
        try:
            return calls.resolve_env(fresh[0], 1).environment.id == fresh[0]
        except grpc.RpcError:
            return False

    recover = time_to_recover(answered, released, 30)
    record(
        f"slow (table lock) {lock_s:.0f} s, 16 cold callers",
        [cold, *probe_tallies],
        recover,
        f"worst deadline overrun {max(cold.overrun, 0) * 1000:.0f} ms",
    )
    assert_answers(cold, probe_tallies)


def _sigterm(server: Server, platform: Platform, *, during_hang: bool, grace_s: float) -> None:
    calls = Calls(server.address)
    warm(calls, platform)
    cold, cold_step = cold_reader(calls, platform, timeout=10.0)
    probe_tallies, probe_step = probes(calls, platform)
    load, probing = Load(16, cold_step), Load(3, probe_step)
    wait_until(lambda: cold.calls >= 16, 10)
    with hung(platform.control_plane) if during_hang else contextlib.nullcontext():
        # The load goes on (under a hang: the bulkhead full, refusals
        # answered) before the signal.
        answered = cold.calls
        wait_until(lambda: cold.calls >= answered + 16, 10)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(grace_s + 10)
        took = time.monotonic() - signalled
        load.stop()
        probing.stop()
    calls.stop()
    what = "during a hang" if during_hang else "under load"
    tallies = [cold, *probe_tallies]
    cut = [took for t in tallies for took in t.cancelled_after if took > ACCEPTED_S]
    at_once = sum(t.codes["CANCELLED"] for t in tallies) - len(cut)
    record(
        f"SIGTERM {what} (grace {grace_s:.0f} s)",
        tallies,
        None,
        f"exit {took:.2f} s after SIGTERM, code {server.proc.returncode}; CANCELLED: "
        f"{len(cut)} accepted calls cut, {at_once} at arrival",
    )
    # No call ends CANCELLED: neither one a handler had started on nor one
    # that reached the server as it stopped.
    assert not cut and not at_once, (cut, at_once)
    assert server.proc.returncode == 0
    assert took <= grace_s + 1.0 * SLACK


def test_sigterm_under_load(platform: Platform, stop_after: list[Any]) -> None:
    server = serve(platform, stop_after, RESOLVER_SHUTDOWN_GRACE_MS="3000")
    _sigterm(server, platform, during_hang=False, grace_s=3)


def test_sigterm_during_hang(platform: Platform, stop_after: list[Any]) -> None:
    server = serve(platform, stop_after, RESOLVER_SHUTDOWN_GRACE_MS="3000")
    _sigterm(server, platform, during_hang=True, grace_s=3)


def test_hostile_callers_grow_no_memory(
    platform: Platform, stop_after: list[Any], tmp_path: Any
) -> None:
    n = int(scaled(100_000, 5_000))
    tokens = tmp_path / "tokens"
    tokens.write_text("engine " + "t" * 32 + "\n")
    server = serve(platform, stop_after, RESOLVER_AUTH_TOKENS_FILE=str(tokens))
    channel = grpc.insecure_channel(server.address)
    alphabet = string.ascii_letters + string.digits
    codes: dict[str, int] = {}

    def junk_futures(count: int) -> None:
        pending: list[Any] = []
        for _ in range(count):
            name = "/" + "".join(random.choices(alphabet, k=200)) + "/" + "x" * 20
            pending.append(channel.unary_unary(name).future(b"", timeout=10))
            if len(pending) >= 64:
                for f in pending:
                    try:
                        f.result()
                    except grpc.RpcError as exc:
                        codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                pending.clear()
        for f in pending:
            try:
                f.result()
            except grpc.RpcError as exc:
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

    junk_futures(2_000)  # warm-up: allocator arenas, channel state
    before = server.rss_kb()
    started = time.monotonic()
    junk_futures(n)
    took = time.monotonic() - started
    after = server.rss_kb()
    channel.close()
    grown_mb = (after - before) / 1024
    tally = Tally("hostile")
    tally.codes.update(codes)
    tally.latencies.append(took / max(n, 1))
    record(
        f"hostile: {n} unauthenticated calls, random 200-char method names",
        [tally],
        None,
        f"RSS {before / 1024:.0f} → {after / 1024:.0f} MB (+{grown_mb:.1f} MB)",
    )
    assert set(codes) == {"UNAUTHENTICATED"}, codes
    assert grown_mb < 10


def test_processes_give_up_when_children_cannot_start(tmp_path: Any) -> None:
    env = {
        **os.environ,
        "CONTROL_PLANE_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/nothing",
        "RESOLVER_ADDR": "127.0.0.1:0",
        "RESOLVER_PROCESSES": "2",
        "RESOLVER_STARTUP_TIMEOUT_MS": "300",
        "RESOLVER_LISTEN_ENABLED": "0",
        "RESOLVER_LOG_LEVEL": "ERROR",
    }
    started = time.monotonic()
    proc = subprocess.run([CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    tally = Tally("start")
    tally.codes[f"exit {proc.returncode}"] += 1
    tally.latencies.append(took)
    record("serve --processes 2, database unreachable", [tally], None, f"exit after {took:.1f} s")
    assert proc.returncode == 1, proc.stderr[-2000:]


def test_rolling_restart_with_the_typed_client(platform: Platform, stop_after: list[Any]) -> None:
    def start(port: int | None = None) -> tuple[Server, int]:
        metrics = free_port()
        env = server_env(
            platform.control_plane,
            platform.run_ops,
            RESOLVER_SHUTDOWN_GRACE_MS="2000",
            # As deployments do: clients move to the other server meanwhile.
            RESOLVER_SHUTDOWN_PAUSE_MS="300",
            RESOLVER_METRICS_ADDR=f"127.0.0.1:{metrics}",
        )
        server = Server(env, port=port)
        stop_after.append(server)
        return server.wait_serving(), metrics

    (a, _), (b, _) = start(), start()
    client = ResolverClient(
        f"ipv4:{a.address},{b.address}",
        timeout=5,
        # The client's reconnect backoff (100 ms) grows to 5 s: a replacement
        # is connected to sooner with 500 ms at most.
        options=[("grpc.max_reconnect_backoff_ms", 500)],
    )
    # Calls are tallied by phase: while an old server drains (SIGTERM to
    # exit), and while its replacement starts (its port not yet bound).
    phases = {
        "serving": Tally("serving"),
        "draining": Tally("draining"),
        "starting": Tally("starting"),
    }
    phase = ["serving"]
    run_id = platform.legacy_run_ids[0]
    env_id = platform.env_ids[0]

    def step(i: int) -> None:
        begun = phase[0]
        tally = Tally(begun)
        if i % 2:
            tally.call(lambda: client.read_run(run_id), 5, lambda r: r.run.id == run_id)
        else:
            tally.call(lambda: client.resolve_env(env_id), 5, lambda r: r.id == env_id)
        # A call belongs to the phase it ran in; one in flight across a
        # change belongs to the drain or start-up it met.
        ended = phase[0]
        phases[begun if begun != "serving" else ended].merge(tally)

    load = Load(8, step)
    wait_until(lambda: phases["serving"].calls >= 50, 10)
    started = time.monotonic()
    # Restart a, then b: each drains while the other serves, and the next
    # goes only once clients use the new one.
    for old in (a, b):
        phase[0] = "draining"
        old.proc.send_signal(signal.SIGTERM)
        old.proc.wait(15)
        phase[0] = "starting"
        _new, metrics = start(old.port)
        wait_until(lambda m=metrics: _served(m) > 0, 15, 0.05, "the new server serves")
        phase[0] = "serving"
    took = time.monotonic() - started
    load.stop()
    client.close()
    draining, starting = phases["draining"], phases["starting"]
    failed = {c: n for c, n in draining.codes.items() if c != "OK"}
    record(
        "rolling restart of 2 servers, typed client, 8 callers",
        list(phases.values()),
        None,
        f"both restarted in {took:.1f} s; failed while draining: {failed or 0}; "
        f"while a replacement started: "
        f"{ {c: n for c, n in starting.codes.items() if c != 'OK'} or 0 }",
    )
    assert all(t.wrong == 0 for t in phases.values())
    # The typed client watches each server's health: a draining server is
    # left during its pause, so no call fails, in any phase.
    for t in phases.values():
        assert set(t.codes) <= {"OK"}, (t.name, t.codes, t.details)


def _served(metrics_port: int) -> float:
    return sum(
        value
        for (name, labels), value in scrape(metrics_port).items()
        if name == "grpc_server_handled_total"
        and ("grpc_code", "OK") in labels
        # The client's calls, not the health checks of wait_serving().
        and ("grpc_service", SERVICE_NAME) in labels
    )


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _listening(pid: int, port: int) -> set[int]:
    """The children of ``pid`` that hold a socket listening on ``port``
    (Linux /proc)."""
    return _holding(pid, port, "0A")


def _serving(pid: int, port: int) -> set[int]:
    """The children of ``pid`` that hold a client's connection to ``port``."""
    return _holding(pid, port, "01")


def _holding(pid: int, port: int, state: str) -> set[int]:
    """The children of ``pid`` that hold a socket of local port ``port`` in
    TCP ``state`` (``0A`` listening, ``01`` established; Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    bound = set()
    for child in _children(pid):
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{child}/fd")
            if any(_link(f"/proc/{child}/fd/{fd}") in inodes for fd in fds):
                bound.add(child)
    return bound


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_sigkill_of_a_child_process(platform: Platform, stop_after: list[Any]) -> None:
    server = serve(platform, stop_after, RESOLVER_PROCESSES="2")
    # Both children bound: a child binds the port only once it is ready, and
    # killing the only bound one would leave nothing to connect to.
    wait_until(
        lambda: len(_listening(server.proc.pid, server.port)) == 2, 15, 0.05, "two children bound"
    )
    # Several connections, which the kernel spreads over the children: each
    # client its own (channels with equal options otherwise share one).
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    clients = [ResolverClient(server.address, timeout=5, options=own_connection) for _ in range(4)]
    tally = Tally("typed")
    run_id = platform.legacy_run_ids[0]

    def step(i: int) -> None:
        client = clients[i % len(clients)]
        tally.call(lambda: client.read_run(run_id), 5, lambda r: r.run.id == run_id)

    load = Load(8, step)
    wait_until(lambda: tally.calls >= 50, 10)
    # A child that serves some of the clients' connections.
    victim = min(_serving(server.proc.pid, server.port))
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()

    def replaced() -> bool:
        children = _children(server.proc.pid)
        return len(children) == 2 and victim not in children

    wait_until(replaced, 15, 0.05, "the child replaced")
    recover = time.monotonic() - killed
    wait_until(lambda: tally.calls >= 200, 10)
    load.stop()
    for client in clients:
        client.close()
    failed = {c: n for c, n in tally.codes.items() if c != "OK"}
    record(
        "SIGKILL of one of 2 child processes, typed client, 8 callers",
        [tally],
        recover,
        f"failed calls: {failed or 0}; recover = child replaced"
        + (f"; e.g. {tally.details[0]}" if tally.details else ""),
    )
    assert tally.wrong == 0
    # The typed client rides through: the calls the dead child had taken are
    # retried, a reconnect that reached the dead child's socket is tried
    # again 100 ms later, before the retries run out, and the retry
    # throttle's tokens take the attempts failed meanwhile (docs/calling.md,
    # "A lost connection").
    assert not failed, (failed, tally.details)
    assert server.proc.poll() is None  # the parent lives on


def test_overload_answers_resource_exhausted_at_once(
    platform: Platform, stop_after: list[Any]
) -> None:
    limit = 16
    server = serve(platform, stop_after, RESOLVER_MAX_CONCURRENT_RPCS=str(limit))
    calls = Calls(server.address)
    stop_after.append(calls)
    warm(calls, platform)
    # Four times as many callers as the limit, each calling again as soon
    # as answered (a refused one after the retry delay, as a client honours
    # it), over four connections configured as the typed client's.
    channels = [
        grpc.insecure_channel(
            server.address, options=channel_options([("grpc.use_local_subchannel_pool", 1)])
        )
        for _ in range(4)
    ]
    stubs = [resolver_pb2_grpc.ControlPlaneResolverServiceStub(c) for c in channels]
    env_id = platform.env_ids[0]
    flood, refused_after = Tally("flood"), Tally("refusals")
    pushbacks: set[float] = set()

    def call(i: int) -> None:
        stub = stubs[i % len(stubs)]
        started = time.monotonic()
        pushback = flood.call(
            lambda: stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id), timeout=5),
            5,
            lambda r: r.environment.id == env_id,
        )
        if pushback is not None:
            refused_after.latencies.append(time.monotonic() - started)
            pushbacks.add(pushback)
            time.sleep(pushback)  # the client's retry delay: pacing

    probe_tallies, probe_step = probes(calls, platform)
    load, probing = Load(4 * limit, call), Load(3, probe_step)
    time.sleep(scaled(20, 5))  # the overload's duration
    load.stop()
    probing.stop()
    for channel in channels:
        channel.close()
    record(
        f"overload: {4 * limit} callers, limit {limit} (RESOLVER_MAX_CONCURRENT_RPCS)",
        [flood, *probe_tallies],
        None,
        f"refusals answered in p50 {refused_after.percentile(0.5) * 1000:.1f} ms, "
        f"p99 {refused_after.p99() * 1000:.1f} ms, retry delay {sorted(pushbacks)} s; "
        f"hits/Classify/health p99 {max(t.p99() for t in probe_tallies) * 1000:.1f} ms",
    )
    assert flood.wrong == 0
    assert set(flood.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, (flood.codes, flood.details)
    assert flood.codes["RESOURCE_EXHAUSTED"] > 0 and pushbacks == {0.1}, pushbacks
    # Answered in well under the callers' 5 s deadline, not after waiting in a queue.
    assert refused_after.p99() < 0.5 * SLACK
    for t in probe_tallies:
        assert set(t.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, (t.name, t.codes)
    assert set(probe_tallies[2].codes) == {"OK"}, probe_tallies[2].codes  # health


def test_a_burst_of_thousands_of_calls_ends_none_cancelled(
    platform: Platform, stop_after: list[Any]
) -> None:
    limit, calls = 64, 4000
    server = serve(platform, stop_after, RESOLVER_MAX_CONCURRENT_RPCS=str(limit))
    # Four connections configured as the typed client's, connected first.
    channels = [
        grpc.insecure_channel(
            server.address, options=channel_options([("grpc.use_local_subchannel_pool", 1)])
        )
        for _ in range(4)
    ]
    stubs = [resolver_pb2_grpc.ControlPlaneResolverServiceStub(c) for c in channels]
    request = pb.ClassifyRunIdRequest(id=platform.legacy_run_ids[0])
    for stub in stubs:
        assert stub.ClassifyRunId(request, timeout=5).classifiable
    # Every call started at once; each answer's time is taken when it arrives.
    answered: list[float] = []
    started = time.monotonic()
    futures = [stubs[i % len(stubs)].ClassifyRunId.future(request, timeout=5) for i in range(calls)]
    for future in futures:
        future.add_done_callback(lambda _f: answered.append(time.monotonic() - started))
    burst = Tally("burst")
    for future in futures:
        burst.call(future.result, 5, lambda r: r.classifiable)
    wait_until(lambda: len(answered) == calls, 10)
    burst.latencies = answered
    for channel in channels:
        channel.close()
    record(
        f"burst: {calls} calls at once over 4 connections, limit {limit}",
        [burst],
        None,
        f"all answered {max(answered):.2f} s after the first was sent",
    )
    # grpc core's default backlog (1,000 calls) cancelled hundreds of these.
    assert burst.codes["CANCELLED"] == 0, (burst.codes, burst.details)
    assert set(burst.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, (burst.codes, burst.details)
    assert burst.wrong == 0
