"""The contract gate: ``buf breaking`` over protos/ against its own history.

    python scripts/breaking.py                 every earlier version (what CI runs)
    python scripts/breaking.py --against REF   one git ref only, e.g. origin/main
    python scripts/breaking.py --against-dir D a protos/ tree on disk

The input is the working tree: ``buf.yaml`` and ``protos/`` under ``--repo``
(default: this checkout), so uncommitted edits count and the breaking rules are
the current ``buf.yaml``'s (FILE: wire, JSON and generated-code compatibility).

By default it is compared with *every* version ``protos/`` has had on the
first-parent history of HEAD: the tree after each commit that changed it, HEAD's
included. That finds a break wherever it happened: in HEAD itself, in an
earlier commit of the same push (``HEAD~1`` alone would miss it), or in edits
not committed yet. A change that passes is compatible with every contract this
repository ever published; a break that a later commit undoes passes, since
only the current tree is judged. It needs the history, which a full clone (as
CI makes) has; a shallow clone checks the versions it has and says so.

A new contract goes in a new version package (``controlplane/resolver/v2``)
beside the old one, which stays unchanged: adding files breaks nothing.
Retiring a package on purpose, once no caller uses it, is declared in
``buf.yaml`` (``breaking: ignore: [controlplane/resolver/v1]``), in review.

Exit status: 0 compatible, 1 a break (buf's findings printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = "protos"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def earlier_versions(repo: Path) -> list[tuple[str, str]]:
    """``(commit, protos tree id)`` for each distinct version of protos/ on
    HEAD's first-parent history, newest first."""
    seen: set[str] = set()
    versions = []
    for commit in git(repo, "rev-list", "--first-parent", "HEAD", "--", PROTOS).split():
        try:
            tree = git(repo, "rev-parse", f"{commit}:{PROTOS}")
        except subprocess.CalledProcessError:
            continue  # the commit removed protos/ altogether
        if tree not in seen:
            seen.add(tree)
            versions.append((commit, tree))
    return versions


def export(repo: Path, treeish: str, into: Path) -> Path:
    """Write ``treeish`` (a tree of protos/) into ``into``; returns it."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", treeish],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def buf_breaking(buf: str, repo: Path, against: Path, label: str) -> bool:
    """Compare ``repo``'s working tree with the protos in ``against``."""
    result = subprocess.run(
        [buf, "breaking", str(repo), "--against", str(against)],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    if result.returncode == 0:
        print(f"breaking: compatible with {label}")
        return True
    print(f"breaking: NOT compatible with {label}:", file=sys.stderr)
    print((result.stdout + result.stderr).rstrip(), file=sys.stderr)
    return False


def find_buf(given: str | None) -> str:
    candidates = [given] if given else [str(Path(sys.executable).parent / "buf"), "buf"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise SystemExit(f"breaking: buf not found ({', '.join(candidates)}): make install")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout to check (default: this)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--against", metavar="REF", help="compare with this git ref only")
    target.add_argument("--against-dir", type=Path, metavar="DIR", help="a protos/ tree on disk")
    parser.add_argument("--buf", help="the buf binary (default: beside python, else PATH)")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    if not (repo / "buf.yaml").is_file() or not (repo / PROTOS).is_dir():
        print(f"breaking: {repo} has no buf.yaml and {PROTOS}/", file=sys.stderr)
        return 2
    buf = find_buf(args.buf)

    if args.against_dir:
        ok = buf_breaking(buf, repo, args.against_dir.resolve(), str(args.against_dir))
        return 0 if ok else 1

    with tempfile.TemporaryDirectory(prefix="cpr-breaking-") as tmp:
        if args.against:
            try:
                commit = git(repo, "rev-parse", "--verify", f"{args.against}^{{commit}}")
            except subprocess.CalledProcessError:
                print(f"breaking: {args.against!r} is not a commit here", file=sys.stderr)
                return 2
            versions = [(commit, f"{commit}:{PROTOS}")]
        else:
            versions = earlier_versions(repo)
            if git(repo, "rev-parse", "--is-shallow-repository") == "true":
                print(
                    "breaking: shallow clone: only the versions of protos/ in the fetched "
                    "history are checked (git fetch --unshallow for all)",
                    file=sys.stderr,
                )
            if not versions:
                print("breaking: protos/ has no committed version yet: nothing to compare")
                return 0
        ok = True
        for i, (commit, tree) in enumerate(versions):
            subject = git(repo, "log", "-1", "--format=%h %s", commit)[:72]
            against = export(repo, tree, Path(tmp) / str(i))
            ok = buf_breaking(buf, repo, against, f"protos/ as of {subject}") and ok
    if not ok:
        print(
            "breaking: a published contract would break. Put the change in a new version "
            "package (controlplane/resolver/v2) beside the old one; see docs/development.md",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
