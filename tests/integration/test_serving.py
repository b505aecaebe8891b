"""Serving as an operator runs it: several processes on one port, and a
SIGTERM under load that fails no call in flight ."""

from __future__ import annotations

import json
import signal
import threading
import time

import grpc
import psycopg
from grpc_health.v1 import health_pb2

from controlplane_resolver.dev.clusters import free_port
from controlplane_resolver_client import ResolverClient, ResolverError, pb
from controlplane_resolver_client.v1 import resolver_pb2_grpc

from support.polling import wait_until
from support.processes import ServerProcess, health_status
from support.scraping import scrape


def base_env(databases) -> dict[str, str]:
    return {
        "CONTROL_PLANE_DATABASE_URL": databases.control_plane,
        "RUN_OPS_DATABASE_URL": databases.run_ops,
        "RUN_OPS_SPLIT_ENABLED": "1",
        "REALTIME_BACKEND_NATIVE_ENABLED": "1",
        "RESOLVER_LISTEN_ENABLED": "0",
    }


def by_process(port: int, name: str, **labels: str) -> dict[str, float]:
    """The samples named ``name`` that carry ``labels``, summed by their
    ``process`` label; empty while the endpoint does not answer."""
    try:
        samples = scrape(port)
    except OSError:
        return {}
    out: dict[str, float] = {}
    for (sample, sample_labels), value in samples.items():
        found = dict(sample_labels)
        if sample == name and "process" in found and labels.items() <= found.items():
            out[found["process"]] = out.get(found["process"], 0.0) + value
    return out


def test_processes_share_the_port_and_all_answer(databases, cp, tenant):
    env_id = tenant.environment(cp)
    metrics = free_port()
    env = {
        **base_env(databases),
        "RESOLVER_PROCESSES": "2",
        "RESOLVER_LOG_FORMAT": "json",
        "RESOLVER_LOG_LEVEL": "DEBUG",
        "RESOLVER_METRICS_ADDR": f"127.0.0.1:{metrics}",
    }
    server = ServerProcess(env).wait_serving()
    try:
        # Each process reports its own readiness, under its own label.
        wait_until(
            lambda: by_process(metrics, "resolver_ready") == {"0": 1.0, "1": 1.0},
            timeout=20,
            interval=0.05,
        )
        # SO_REUSEPORT spreads connections, not calls: open many connections.
        channels = [
            grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(16)
        ]
        for channel in channels:
            stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
            assert (
                stub.ResolveEnv(
                    pb.ResolveEnvRequest(environment_id=env_id), timeout=10
                ).environment.id
                == env_id
            )
        for channel in channels:
            channel.close()
    finally:
        code = server.terminate()
    assert code == 0, server.output()
    pids = {
        line["pid"]
        for line in _json_lines(server.output())
        if line.get("method") == "ResolveEnv" and line.get("code") == "OK"
    }
    assert len(pids) == 2, f"calls were answered by {pids}"


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_sigterm_under_load_fails_no_call_in_flight(databases, cp, tenant):
    hot = tenant.environment(cp)
    cold = [tenant.environment(cp) for _ in range(8)]
    env = {
        **base_env(databases),
        "RESOLVER_SHUTDOWN_PAUSE_MS": "300",
        "RESOLVER_SHUTDOWN_GRACE_MS": "15000",
    }
    server = ServerProcess(env).wait_serving()
    client = ResolverClient(server.address, timeout=20)
    assert client.resolve_env(hot) is not None
    draining = threading.Event()
    failures: list[BaseException] = []
    completed = [0]

    signalled = threading.Event()

    def steady_load() -> None:
        # A well-behaved caller: stops sending once health says NOT_SERVING,
        # as a load balancer would. The typed client's channel watches
        # health itself: once it has seen NOT_SERVING it sends nothing (the
        # call fails in the client, unanswered by any server), which is no
        # call in flight failing.
        while not draining.is_set():
            try:
                assert client.resolve_env(hot) is not None
                completed[0] += 1
            except ResolverError as exc:
                if not (signalled.is_set() and exc.request_id is None):
                    failures.append(exc)
                return
            except BaseException as exc:
                failures.append(exc)
                return

    def slow_call(env_id: str) -> None:
        try:
            assert client.resolve_env(env_id).id == env_id
            completed[0] += 1
        except BaseException as exc:
            failures.append(exc)

    with psycopg.connect(databases.control_plane) as locker:
        # Uncached calls block on this lock: they are in flight at SIGTERM.
        locker.execute('LOCK TABLE "RuntimeEnvironment" IN ACCESS EXCLUSIVE MODE')
        steady = [threading.Thread(target=steady_load) for _ in range(4)]
        slow = [threading.Thread(target=slow_call, args=(e,)) for e in cold]
        for t in steady + slow:
            t.start()
        wait_until(lambda: completed[0] > 50, timeout=10)
        signalled.set()
        server.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: health_status(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING,
            timeout=5,
        )
        draining.set()
        for t in steady:
            t.join(10)
        locker.rollback()  # the blocked calls can finish now, during the drain
    for t in slow:
        t.join(20)
    assert server.proc.wait(20) == 0, server.output()
    client.close()
    assert not failures, failures[:3]
    assert completed[0] > 50 + len(cold)


def test_sigterm_during_start_up_exits_promptly(databases):
    from controlplane_resolver.dev.clusters import free_port

    # A control plane nobody answers on: start-up waits for it.
    health_addr = f"127.0.0.1:{free_port()}"
    env = {
        "CONTROL_PLANE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        "RESOLVER_LISTEN_ENABLED": "0",
        "RESOLVER_STARTUP_TIMEOUT_MS": "120000",
        "RESOLVER_HEALTH_ADDR": health_addr,
    }
    server = ServerProcess(env)
    try:
        # Not ready: the health port answers NOT_SERVING while pools wait,
        # and the service's port is not bound.
        wait_until(
            lambda: health_status(health_addr) == health_pb2.HealthCheckResponse.NOT_SERVING,
            timeout=10,
            interval=0.05,
        )
        assert health_status(server.address) is None
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0, server.output()
        assert time.monotonic() - sent < 3
    finally:
        server.terminate()


def test_health_command_reports_serving_and_fails_when_down(databases, start_server):
    import subprocess

    from support.processes import CLI

    running = start_server(listen_enabled=False)
    ok = subprocess.run(
        [CLI, "health", "--addr", running.address], capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stderr
    running.app.stop(grace=0)
    down = subprocess.run(
        [CLI, "health", "--addr", running.address, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1


def test_one_metrics_port_counts_every_process_and_follows_a_restart(databases, cp, tenant):
    import os

    env_id = tenant.environment(cp)
    metrics = free_port()
    env = {
        **base_env(databases),
        "RESOLVER_PROCESSES": "2",
        "RESOLVER_METRICS_ADDR": f"127.0.0.1:{metrics}",
    }
    server = ServerProcess(env).wait_serving()

    def handled() -> dict[str, float]:
        return by_process(
            metrics, "grpc_server_handled_total", grpc_code="OK", grpc_method="ResolveEnv"
        )

    up = "resolver_process_up"
    try:
        wait_until(
            lambda: by_process(metrics, up) == {"0": 1.0, "1": 1.0}, timeout=20, interval=0.05
        )
        channels = [
            grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(16)
        ]
        for channel in channels:
            stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
            for _ in range(3):
                stub.ResolveEnv(pb.ResolveEnvRequest(environment_id=env_id), timeout=10)
            channel.close()
        # Every call counted once, by the process that answered it; 16
        # connections reach both processes (all on one: 1 chance in 2^15).
        counted = handled()
        assert sum(counted.values()) == 48 and min(counted.values()) > 0, counted

        # A child killed outright: the parent restarts it, and the merged
        # endpoint shows the new process (counting from zero) once it serves.
        children = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _parent_of(pid) == server.proc.pid
        ]
        assert len(children) == 2, children
        os.kill(children[0], signal.SIGKILL)
        wait_until(
            lambda: (
                by_process(metrics, up) == {"0": 1.0, "1": 1.0}
                and sorted(handled().values())[0] == 0
            ),
            timeout=30,
            interval=0.05,
        )
    finally:
        assert server.terminate() == 0, server.output()
    assert "Address already in use" not in server.output()


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_health_port_answers_probes_in_plaintext_and_nothing_else(start_server, tmp_path):
    from controlplane_resolver.dev.clusters import free_port

    tokens = tmp_path / "tokens"
    tokens.write_text("engine " + "t" * 32 + " *\n")
    health_port = free_port()
    running = start_server(
        auth_tokens_file=str(tokens),
        open_health=False,
        health_addr=f"127.0.0.1:{health_port}",
        listen_enabled=False,
    )
    # The main port wants a token even for health; the health port does not.
    assert health_status(running.address) is None
    assert health_status(f"127.0.0.1:{health_port}") == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        try:
            stub.ResolveEnv(pb.ResolveEnvRequest(environment_id="c" * 25), timeout=5)
            raise AssertionError("the resolver answered on the health port")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
    running.app.stop(grace=0)
    assert health_status(f"127.0.0.1:{health_port}") is None


def test_connections_are_closed_at_max_age_so_channels_rebalance(start_server):
    running = start_server(max_connection_age_ms=300, listen_enabled=False)
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(
        running.address, options=[("grpc.use_local_subchannel_pool", 1)]
    )
    channel.subscribe(states.append, try_to_connect=True)
    try:
        stub = resolver_pb2_grpc.ControlPlaneResolverServiceStub(channel)
        stub.ClassifyRunId(pb.ClassifyRunIdRequest(id="c" * 25), timeout=5)
        # The server ends the connection at its age (GOAWAY): the channel
        # leaves READY, and would re-resolve and reconnect on the next call.
        wait_until(
            lambda: (
                grpc.ChannelConnectivity.READY in states
                and states[-1] != grpc.ChannelConnectivity.READY
            ),
            timeout=10,
        )
        assert stub.ClassifyRunId(pb.ClassifyRunIdRequest(id="c" * 25), timeout=5).classifiable
    finally:
        channel.unsubscribe(states.append)
        channel.close()
