"""Installs as users type them, and the calls ``make dev`` prints.

Contract: the root distribution (``pip install .``) installs a working server
that ships the client package and needs nothing outside PyPI; ``pip install
./client`` installs the client alone, with grpcio, protobuf and grpcio-status
only; both ship the same client files at the same version; the calls that
``controlplane-resolver dev`` prints run verbatim, from the repository root,
against the server it starts.

The default tests are hermetic and take seconds: the two wheels are built
once per module without build isolation (with .venv's setuptools) from a copy
of the sources, then installed with ``--no-index --no-deps`` into fresh
virtual environments whose only other packages are the wheel's declared
dependency closure, linked from .venv, so a missing requirement fails. The
``slow`` tests run the literal ``pip install .`` and ``pip install ./client``
against the package index (pip's cache helps): ``make test-slow``.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from controlplane_resolver.dev.clusters import free_port

from support.processes import CLI

ROOT = Path(__file__).resolve().parents[2]
#: What the two distributions are built from (as the Dockerfile copies).
SOURCES = ["pyproject.toml", "README.md", "server", "client"]
CLIENT_REQUIRES = {"grpcio", "protobuf", "grpcio-status"}
SERVER = "controlplane-resolver"
CLIENT = "controlplane-resolver-client"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_version(pyproject: Path) -> str:
    found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.MULTILINE)
    assert found, f"no version in {pyproject}"
    return found.group(1)


def run(
    *cmd: str | Path, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``cmd``'s result, stopped after ``timeout`` seconds."""
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


@dataclass
class Wheel:
    path: Path

    def metadata(self) -> dict[str, list[str]]:
        with zipfile.ZipFile(self.path) as z:
            name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            msg = Parser().parsestr(z.read(name).decode())
        return {key: msg.get_all(key) or [] for key in ("Name", "Version", "Requires-Dist")}

    def runtime_requires(self) -> list[Requirement]:
        reqs = [Requirement(r) for r in self.metadata()["Requires-Dist"]]
        return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]

    def files(self, prefix: str) -> dict[str, bytes]:
        with zipfile.ZipFile(self.path) as z:
            return {n: z.read(n) for n in z.namelist() if n.startswith(prefix)}


def copy_sources(into: Path) -> Path:
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                into / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist"),
            )
        else:
            into.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def wheels(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Wheel]:
    """Both wheels, built once, offline (no isolation: .venv's setuptools)."""
    out = tmp_path_factory.mktemp("wheels")
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
        "--wheel-dir",
        out,
        sources,
        sources / "client",
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    found = {p.name.split("-")[0]: Wheel(p) for p in out.glob("*.whl")}
    return {
        "server": found["controlplane_resolver"],
        "client": found["controlplane_resolver_client"],
    }


def dependency_closure(requires: list[Requirement]) -> set[str]:
    """Every distribution ``requires`` pulls in, as installed in .venv."""
    todo, seen = list(requires), set()
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for raw in dist.requires or []:
            sub = Requirement(raw)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": extra}) for extra in ["", *sorted(req.extras)]
            ):
                todo.append(sub)
    return seen


class Venv:
    """A fresh virtual environment under ``path``; no pip of its own unless
    ``with_pip`` (.venv's pip installs into it with ``--python``)."""

    def __init__(self, path: Path, *, with_pip: bool = False) -> None:
        self.path = path
        args = [] if with_pip else ["--without-pip"]
        made = run(sys.executable, "-m", "venv", *args, path, timeout=120)
        assert made.returncode == 0, made.stderr
        self.python = path / "bin" / "python"
        self.site = Path(
            run(
                self.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
            ).stdout.strip()
        )

    def pip(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(
            sys.executable, "-m", "pip", "--python", self.python, *args, "--quiet", timeout=timeout
        )

    def install_wheel(self, wheel: Wheel, *extra: str) -> None:
        done = self.pip("install", "--no-index", "--no-deps", *extra, wheel.path)
        assert done.returncode == 0, done.stderr

    def link_from_dot_venv(self, dists: set[str]) -> None:
        """Make exactly ``dists``, as installed in .venv, importable here."""
        deps = self.path / "deps"
        deps.mkdir()
        here = Path(sysconfig.get_path("purelib"))
        for name in dists:
            dist = metadata.distribution(name)
            tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
            for top in tops:
                if (here / top).exists() and not (deps / top).exists():
                    (deps / top).symlink_to(here / top)
        (self.site / "_deps_from_dot_venv.pth").write_text(f"{deps}\n")

    def python_ok(self, code: str) -> subprocess.CompletedProcess[str]:
        return run(self.python, "-c", code, cwd=self.path)


# ------------------------------------------------------------------ static


def test_both_distributions_share_one_version(wheels: dict[str, Wheel]) -> None:
    version = project_version(ROOT / "pyproject.toml")
    assert project_version(ROOT / "client" / "pyproject.toml") == version
    assert wheels["server"].metadata()["Version"] == [version]
    assert wheels["client"].metadata()["Version"] == [version]


def test_the_server_wheel_ships_the_client_and_needs_only_pypi(wheels: dict[str, Wheel]) -> None:
    server, client = wheels["server"], wheels["client"]
    requires = {canonical(r.name) for r in server.runtime_requires()}
    assert CLIENT not in requires, "the client distribution is not on PyPI"
    assert requires >= CLIENT_REQUIRES, "the shipped client package needs its requirements"
    package = "controlplane_resolver_client/"
    shipped = server.files(package)
    assert shipped == client.files(package), "both wheels ship the same client files"
    for needed in ("py.typed", "service_config.json", "v1.py", "resolver_pb2.pyi"):
        assert any(name.endswith(needed) for name in shipped), needed
    assert any(n.endswith("dev/schema/control_plane.sql") for n in server.files("controlplane_"))


def test_the_client_wheel_is_what_engine_nodes_need(wheels: dict[str, Wheel]) -> None:
    client = wheels["client"]
    assert {canonical(r.name) for r in client.runtime_requires()} == CLIENT_REQUIRES
    assert not client.files("controlplane_resolver/")


def test_the_image_is_labelled_with_this_version() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    version = project_version(ROOT / "pyproject.toml")
    assert f"ARG VERSION={version}\n" in dockerfile, "bump the Dockerfile's VERSION default"
    for label in ("title", "description", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in dockerfile, label
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in dockerfile
    # The tag, or the tag pinned by digest (docs/operations.md#pinning-the-base-image).
    assert re.search(
        r"^ARG PYTHON_IMAGE=python:3\.11-slim(@sha256:[0-9a-f]{64})?$", dockerfile, re.M
    )
    assert "PIP_CONSTRAINT=/src/constraints.txt" in dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text()


@pytest.mark.parametrize(
    "command", ["", "serve", "check", "health", "migrate", "dev", "cleanup", "triggers"]
)
def test_help_is_plain_text(command: str) -> None:
    helped = run(CLI, *([command] if command else []), "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: controlplane-resolver")
    markup = re.findall(r"``|:(?:class|func|meth|mod|attr|ref):`", helped.stdout)
    assert not markup, helped.stdout


# ---------------------------------------------------- fresh environments


def test_the_server_installs_alone_and_reports_its_version(
    wheels: dict[str, Wheel], tmp_path: Path
) -> None:
    venv = Venv(tmp_path / "venv")
    venv.install_wheel(wheels["server"])
    venv.link_from_dot_venv(dependency_closure(wheels["server"].runtime_requires()))
    cli = venv.path / "bin" / "controlplane-resolver"

    result = run(cli, "--version")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == f"controlplane-resolver {project_version(ROOT / 'pyproject.toml')}"
    )
    helped = run(cli, "--help")
    assert helped.returncode == 0 and "exit codes" in helped.stdout
    # The client package comes from the server's own files, not from .venv.
    imported = venv.python_ok(
        "import controlplane_resolver.cli as s, controlplane_resolver_client.v1 as c; "
        "print(s.__file__); print(c.__file__)"
    )
    assert imported.returncode == 0, imported.stderr
    assert all(line.startswith(str(venv.site)) for line in imported.stdout.split())


def test_the_client_installs_alone_without_the_server(
    wheels: dict[str, Wheel], tmp_path: Path
) -> None:
    venv = Venv(tmp_path / "venv")
    venv.install_wheel(wheels["client"])
    closure = dependency_closure(wheels["client"].runtime_requires())
    assert "psycopg" not in closure and "grpcio-reflection" not in closure
    venv.link_from_dot_venv(closure)

    imported = venv.python_ok(
        "import controlplane_resolver_client, controlplane_resolver_client.v1\n"
        "from controlplane_resolver_client import ResolverClient, ResolverError, pb\n"
        "from controlplane_resolver_client.v1 import SERVICE_NAME\n"
        "print(SERVICE_NAME)"
    )
    assert imported.returncode == 0, imported.stderr
    for absent in ("controlplane_resolver", "psycopg"):
        assert venv.python_ok(f"import {absent}").returncode != 0, f"{absent} importable"


def test_both_in_one_environment_share_the_client_files(
    wheels: dict[str, Wheel], tmp_path: Path
) -> None:
    # docs/development.md#installing: same files, so either order works;
    # uninstalling one removes them, and reinstalling the other restores them.
    venv = Venv(tmp_path / "venv")
    venv.link_from_dot_venv(dependency_closure(wheels["server"].runtime_requires()))
    venv.install_wheel(wheels["client"])
    venv.install_wheel(wheels["server"])
    check = "import controlplane_resolver_client.v1, controlplane_resolver.cli"
    assert venv.python_ok(check).returncode == 0
    assert venv.pip("uninstall", "--yes", CLIENT).returncode == 0
    assert venv.python_ok(check).returncode != 0
    venv.install_wheel(wheels["server"], "--force-reinstall")
    assert venv.python_ok(check).returncode == 0


# ------------------------------------------------------------- make dev


def read_lines(proc: subprocess.Popen[str], into: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.put(line)
    into.put(None)


@pytest.fixture
def dev_server() -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None], int, int]]:
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESOLVER_")}
    proc = subprocess.Popen(
        [CLI, "dev", "--addr", f"127.0.0.1:{port}", "--metrics-addr", f"127.0.0.1:{metrics_port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=read_lines, args=(proc, lines), daemon=True).start()
    try:
        yield proc, lines, port, metrics_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_calls_dev_prints_run_as_pasted(
    dev_server: tuple[subprocess.Popen[str], queue.Queue[str | None], int, int],
) -> None:
    proc, lines, port, metrics_port = dev_server
    output: list[str] = []
    deadline = time.monotonic() + 90
    while not any("grpc.health.v1.Health/Check" in line for line in output):
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("dev printed no calls within 90 s:\n" + "".join(output)) from None
        if line is None:
            raise AssertionError(f"dev exited {proc.wait()}:\n" + "".join(output))
        output.append(line)

    calls = [line.strip() for line in output if line.startswith("  ") and " -plaintext " in line]
    assert len(calls) >= 10, output
    # The grpcurl beside the server's Python (.venv/bin/grpcurl), as the
    # shell in the repository root reaches it.
    grpcurl = Path(sys.executable).parent / "grpcurl"
    if not grpcurl.exists():
        expected = "grpcurl"
    elif grpcurl.is_relative_to(ROOT):
        expected = str(grpcurl.relative_to(ROOT))
    else:
        expected = str(grpcurl)
    assert all(call.startswith(expected + " ") for call in calls), calls
    for call in calls:
        assert f"127.0.0.1:{port}" in call
        done = subprocess.run(
            call, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"{call}\n{done.stdout}{done.stderr}"

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    assert any(url in line for line in output), output
    with urllib.request.urlopen(url, timeout=10) as response:
        assert b"grpc_server_handled_total" in response.read()

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    rest = []
    while (line := lines.get(timeout=10)) is not None:
        rest.append(line)
    assert "removed the throwaway clusters" in "".join(rest)


# ---------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pip_install_dot_from_the_index(sources: Path, tmp_path: Path) -> None:
    venv = Venv(tmp_path / "venv", with_pip=True)
    pip = venv.path / "bin" / "pip"
    done = run(pip, "install", "--quiet", ".", cwd=sources, timeout=540)
    assert done.returncode == 0, done.stderr
    version = run(venv.path / "bin" / "controlplane-resolver", "--version")
    assert version.stdout.strip() == f"{SERVER} {project_version(ROOT / 'pyproject.toml')}"
    assert venv.python_ok("import controlplane_resolver_client.v1").returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pip_install_client_from_the_index(sources: Path, tmp_path: Path) -> None:
    venv = Venv(tmp_path / "venv", with_pip=True)
    pip = venv.path / "bin" / "pip"
    done = run(pip, "install", "--quiet", "./client", cwd=sources, timeout=540)
    assert done.returncode == 0, done.stderr
    assert venv.python_ok("import controlplane_resolver_client.v1").returncode == 0
    listed = run(pip, "list", "--format=freeze").stdout
    installed = {canonical(line.split("==")[0]) for line in listed.split()}
    assert CLIENT in installed and SERVER not in installed
    assert not installed & {"psycopg", "psycopg-binary", "grpcio-reflection", "prometheus-client"}
