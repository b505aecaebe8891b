"""The contract gate (scripts/breaking.py: ``make breaking``, run by CI).

Contract: a change to protos/ that breaks wire, JSON or generated-code
compatibility (buf.yaml's FILE rules) fails the gate, whether it is compared
with a tree on disk or found anywhere in the git history since a version was
committed; an unchanged or additive change passes, and so does a new contract
in a new version package beside the unchanged old one. Needs no database:
copies of the real protos in temporary directories, and real ``buf``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATE = ROOT / "scripts" / "breaking.py"
BUF = Path(sys.executable).parent / "buf"
V1 = Path("protos/controlplane/resolver/v1/resolver.proto")


def run_gate(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GATE), "--buf", str(BUF), "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def copy_contract(into: Path) -> Path:
    """buf.yaml and protos/ of this checkout, copied into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "buf.yaml", into / "buf.yaml")
    shutil.copytree(ROOT / "protos", into / "protos")
    return into


def edit_message(text: str, message: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced by ``new`` inside ``message``'s body."""
    match = re.search(rf"\nmessage {message} \{{\n.*?\n\}}", text, re.DOTALL)
    assert match, f"no message {message} in the proto"
    body = match.group(0)
    assert old in body, f"{old!r} not in {message}: {body}"
    return text[: match.start()] + body.replace(old, new, 1) + text[match.end() :]


def edit(repo: Path, change: Callable[[str], str], path: Path = V1) -> None:
    file = repo / path
    file.write_text(change(file.read_text()))


ENV_ID = "string environment_id = 1;"

#: Deliberate breaks, each with what buf's report must say.
BREAKS: dict[str, tuple[Callable[[str], str], str]] = {
    "field removed": (
        lambda t: edit_message(t, "ResolveEnvRequest", f"  {ENV_ID}\n", ""),
        'field "1" with name "environment_id"',
    ),
    "field renumbered": (
        lambda t: edit_message(t, "ResolveEnvRequest", ENV_ID, "string environment_id = 7;"),
        'field "1" with name "environment_id"',
    ),
    "field type changed": (
        lambda t: edit_message(t, "ResolveEnvRequest", ENV_ID, "int64 environment_id = 1;"),
        'changed type from "string" to "int64"',
    ),
    "field renamed (JSON name changes)": (
        lambda t: edit_message(t, "ResolveEnvRequest", ENV_ID, "string env_id = 1;"),
        'from "environmentId" to "envId"',
    ),
    "RPC removed": (
        lambda t: re.sub(r"\n  rpc ResolveEnv\(ResolveEnvRequest\)[^;]*;", "", t, count=1),
        'RPC "ResolveEnv"',
    ),
}


@pytest.fixture(scope="module", autouse=True)
def buf_is_installed() -> None:
    assert BUF.exists(), f"{BUF} missing: buf-bin is a dev dependency (make install)"


def test_the_repository_is_compatible_with_every_committed_version() -> None:
    # What CI runs: the working tree against each version of protos/ in git.
    result = run_gate(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compatible with protos/ as of" in result.stdout


def test_an_unchanged_copy_passes(tmp_path: Path) -> None:
    repo = copy_contract(tmp_path / "repo")
    result = run_gate(repo, "--against-dir", str(ROOT / "protos"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", BREAKS)
def test_a_deliberate_break_fails(tmp_path: Path, name: str) -> None:
    change, reported = BREAKS[name]
    repo = copy_contract(tmp_path / "repo")
    edit(repo, change)
    result = run_gate(repo, "--against-dir", str(ROOT / "protos"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT compatible" in result.stderr
    assert reported in result.stderr, result.stderr


def test_an_added_field_passes(tmp_path: Path) -> None:
    repo = copy_contract(tmp_path / "repo")
    edit(
        repo, lambda t: edit_message(t, "ResolveEnvRequest", ENV_ID, f"{ENV_ID}\n  string x = 99;")
    )
    result = run_gate(repo, "--against-dir", str(ROOT / "protos"))
    assert result.returncode == 0, result.stderr


def test_a_break_in_a_new_version_package_passes(tmp_path: Path) -> None:
    # The way to change the contract: v2 beside v1, v1 untouched.
    repo = copy_contract(tmp_path / "repo")
    v2 = Path(str(V1).replace("/v1/", "/v2/"))
    (repo / v2).parent.mkdir(parents=True)
    text = (
        (repo / V1)
        .read_text()
        .replace("package controlplane.resolver.v1;", "package controlplane.resolver.v2;")
    )
    (repo / v2).write_text(BREAKS["field type changed"][0](text))
    result = run_gate(repo, "--against-dir", str(ROOT / "protos"))
    assert result.returncode == 0, result.stderr
    # ...whereas deleting v1 is a break of its own,
    shutil.rmtree((repo / V1).parent)
    result = run_gate(repo, "--against-dir", str(ROOT / "protos"))
    assert result.returncode == 1 and "v1/resolver.proto" in result.stderr
    # unless buf.yaml declares the retirement (reviewed like any change).
    config = repo / "buf.yaml"
    config.write_text(
        config.read_text().replace(
            "    - FILE\n", "    - FILE\n  ignore:\n    - protos/controlplane/resolver/v1\n"
        )
    )
    assert "ignore:" in config.read_text()
    result = run_gate(repo, "--against-dir", str(ROOT / "protos"))
    assert result.returncode == 0, result.stderr


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=gate", "-c", "user.email=gate@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_history_finds_a_break_that_is_not_in_the_last_commit(tmp_path: Path) -> None:
    repo = copy_contract(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the contract")
    edit(repo, BREAKS["field removed"][0])
    git(repo, "commit", "-q", "-am", "break it")
    (repo / "README").write_text("unrelated\n")
    git(repo, "add", "README")
    git(repo, "commit", "-q", "-m", "an unrelated change on top")

    # HEAD~1 alone already contains the break: comparing with it passes...
    assert run_gate(repo, "--against", "HEAD~1").returncode == 0
    # ...the default compares with every committed version, and fails.
    result = run_gate(repo)
    assert result.returncode == 1, result.stdout
    assert "NOT compatible with protos/ as of" in result.stderr
    assert "the contract" in result.stderr
    assert 'field "1" with name "environment_id"' in result.stderr

    # Restoring the field makes the tree compatible with every version again.
    shutil.copy2(ROOT / V1, repo / V1)
    git(repo, "commit", "-q", "-am", "restore it")
    result = run_gate(repo)
    assert result.returncode == 0, result.stderr
    # Uncommitted edits are the input too.
    edit(repo, BREAKS["field renamed (JSON name changes)"][0])
    assert run_gate(repo).returncode == 1
