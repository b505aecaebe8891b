"""Throwaway local PostgreSQL clusters, for ``dev`` and the test fixtures.

One cluster is one ``initdb`` data directory and one ``postgres`` process on
its own port, so two clusters have different ``system_identifier``s and one
can be stopped while the other keeps running. PostgreSQL refuses to run as
root; when we are root the server runs as the ``postgres`` OS user, and the
data directory lives under /tmp where that user can reach it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them, e.g. "
    "`apt-get install -y postgresql` on Debian/Ubuntu or `brew install postgresql` on macOS, "
    "or set PG_BINDIR to the directory that holds them."
)

# Throwaway clusters: durability off, start-up fast.
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


class PostgresNotInstalled(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``.

    Looks at ``$PG_BINDIR``, then ``PATH``, then ``pg_config --bindir``, then
    Debian's ``/usr/lib/postgresql/*/bin`` (newest first). Raises
    :class:`PostgresNotInstalled` with install instructions otherwise.
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.CalledProcessError):
            pass
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise PostgresNotInstalled(INSTALL_HINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """One throwaway cluster. ``start()`` → ``dsn(db)`` … ``stop()`` /
    ``start()`` again (same data, same port) … ``destroy()``."""

    def __init__(
        self,
        name: str = "resolver",
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        """``settings`` are extra server settings (``-c name=value``), e.g.
        ``{"shared_preload_libraries": "pg_stat_statements"}``."""
        self.bindir = find_bindir()
        self.settings = {**_SERVER_SETTINGS, **(settings or {})}
        self.name = name
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"cpr-{name}-", dir="/tmp"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._initialised = False

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n"
                f"log: {self.logfile}"
            )

    def start(self) -> LocalCluster:
        """Initialise on first start, then start the server and wait until it
        accepts connections."""
        if not self._initialised:
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            )
            self._initialised = True
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        options += f" -p {self.port} -k {self.root}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (data kept); ``mode`` is pg_ctl's ``-m``."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop (if running) and delete everything on disk."""
        if self.running:
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """Create ``dbname`` (if missing) and return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{dbname}"')
        return self.dsn(dbname)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
