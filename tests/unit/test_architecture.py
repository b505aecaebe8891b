"""The package's layers, checked on its source: every import points down
(or stays within its layer), no import cycle exists, the client never
imports the server, and nobody outside the client imports generated code
except through ``controlplane_resolver_client.v1``.

docs/architecture.md describes the layers; this is their enforcement.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server" / "controlplane_resolver"
CLIENT = ROOT / "client" / "controlplane_resolver_client"

#: Top-level parts of the server package, lowest layer first. A module may
#: import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"errors", "config", "callinfo", "blocking", "logbounds"},
    {"domain", "cache", "coalescing"},
    {"storage", "invalidation"},
    {"resolver"},
    {"runtime"},
    {"serving", "admin", "dev"},
    {"cli"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path, package_root: Path, package: str) -> str:
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` imports, at any depth of the
    file (function-level imports count: they can close a cycle too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def server_graph() -> dict[str, set[str]]:
    files = {module_name(p, SERVER, "controlplane_resolver"): p for p in SERVER.rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def part_of(module: str) -> str:
    """``controlplane_resolver.storage.queries`` → ``storage``."""
    return module.split(".")[1] if "." in module else ""


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {part_of(m) for m in server_graph()} - {""}
    assert parts <= set(RANK), f"give these a layer in LAYERS: {sorted(parts - set(RANK))}"


def test_imports_point_down() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in server_graph().items()
        for target in targets
        if part_of(module) and part_of(target) and RANK[part_of(target)] > RANK[part_of(module)]
    ]
    assert not upward, upward


def test_no_import_cycle() -> None:
    graph = server_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_client_never_imports_the_server() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in CLIENT.rglob("*.py")
        if "_gen" not in p.parts
        and "controlplane_resolver." in p.read_text().replace("controlplane_resolver_client", "")
    ]
    assert not offenders, offenders


def test_generated_code_is_reached_through_the_public_v1_module() -> None:
    offenders = []
    for tree in ("server", "tests", "bench", "scripts"):
        for path in (ROOT / tree).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                if any(name.startswith("controlplane_resolver_client._gen") for name in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
