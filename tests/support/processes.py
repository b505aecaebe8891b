"""Resolver servers as real OS processes (``controlplane-resolver serve``),
for tests that need several replicas or signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane_resolver.dev.clusters import free_port

from support.polling import wait_until

CLI = str(Path(sys.executable).parent / "controlplane-resolver")


def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The Health/Check status of ``service``, or None when the call fails."""
    with grpc.insecure_channel(address) as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
                .status
            )
        except grpc.RpcError:
            return None


class ServerProcess:
    """``controlplane-resolver serve`` on a free port with ``env`` settings."""

    def __init__(self, env: dict[str, str], *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "RESOLVER_ADDR": self.address}
        self.proc = subprocess.Popen(
            [CLI, "serve", *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_serving(self, timeout: float = 30.0) -> ServerProcess:
        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.output()}")
            return health_status(self.address) == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, timeout, 0.05, f"server at {self.address} SERVING")
        return self

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stdout is not None
        return self.proc.stdout.read()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()
