"""Regenerate the Python code for protos/ into the client package.

    python scripts/genproto.py           # rewrite client/controlplane_resolver_client/_gen
    python scripts/genproto.py --check   # exit 1 if the committed code is stale

protoc writes absolute imports named after the proto package
(``from controlplane.resolver.v1 import resolver_pb2``). The generated files
live inside the client package instead of claiming a top-level
``controlplane`` package, so those imports are rewritten to point there.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "client" / "controlplane_resolver_client" / "_gen"
PROTO_PACKAGE = "controlplane.resolver.v1"
GEN_PACKAGE = "controlplane_resolver_client._gen." + PROTO_PACKAGE


def generate(out: Path) -> None:
    """Run protoc (with mypy-protobuf) over every proto into ``out``."""
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bindir = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside python
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    for path in out.rglob("*"):
        if path.suffix in (".py", ".pyi"):
            text = path.read_text()
            text = text.replace(f"from {PROTO_PACKAGE} import", f"from {GEN_PACKAGE} import")
            text = text.replace(f"import {PROTO_PACKAGE}.", f"import {GEN_PACKAGE}.")
            path.write_text(text)
    # Package markers so the generated tree imports as regular packages.
    for directory in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (directory / "__init__.py").touch()


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    # dircmp compares shallowly by stat; compare contents to be sure.
    for name in cmp.common_files:
        if (a / name).read_bytes() != (b / name).read_bytes():
            return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs if d != "__pycache__")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "_gen"
        out.mkdir()
        generate(out)
        if args.check:
            if GEN.exists() and same_tree(out, GEN):
                print("generated code is up to date")
                return 0
            print(
                f"{GEN.relative_to(ROOT)} is stale: run `make proto` and commit the result",
                file=sys.stderr,
            )
            return 1
        shutil.rmtree(GEN, ignore_errors=True)
        shutil.copytree(out, GEN)
        print(f"wrote {GEN.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
