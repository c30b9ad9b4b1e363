"""seckill_common's parts import each other one way only, and never a service (no servers: the
source's imports, walked with ast)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

# The repository's root, wherever under tests/ this file sits.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
PACKAGE = ROOT / "seckill_common"
SERVICES = ("activity_svc", "product_svc", "order_svc")


def part_of(module: str) -> str | None:
    """The part of seckill_common a module belongs to: its folder (api, database, ...), or
    the module itself for one at the top (config, tracing, ...); None outside the package."""
    names = module.split(".")
    if names[0] != "seckill_common" or len(names) < 2:
        return None
    return names[1]


def is_command(node: ast.AST) -> bool:
    """A command's `main()`: a program, not a part's code (it may set up logging)."""
    return isinstance(node, ast.FunctionDef) and node.name == "main"


def imports_of(path: Path) -> list[str]:
    """Every module `path` imports, at its top or inside a function, except in a command's
    `main()`."""
    found: list[str] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if is_command(child):
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append(child.module)
                found.extend(f"{child.module}.{alias.name}" for alias in child.names)
            walk(child)

    walk(ast.parse(path.read_text(), filename=str(path)))
    return found


def part_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        part = part_of(module)
        if part is None or part == "__init__":
            continue
        edges = graph.setdefault(part, set())
        for imported in imports_of(path):
            target = part_of(imported)
            if target is None or target == part:
                continue
            # `from seckill_common import tracing` names a module; `... import X` a name.
            if (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").exists():
                edges.add(target)
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of parts, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_between_the_parts_of_seckill_common() -> None:
    graph = part_graph()
    assert {"api", "client", "concurrency", "database", "runtime"} <= graph.keys()
    assert cycle_in(graph) is None, f"import cycle: {' -> '.join(cycle_in(graph) or [])}"


def test_the_parts_below_the_server_runtime_do_not_import_it() -> None:
    graph = part_graph()
    for part in ("api", "client", "concurrency", "database"):
        assert "runtime" not in graph[part], part
    assert graph["concurrency"] == set()  # no I/O of its own: it imports nothing of ours


def test_seckill_common_imports_no_service() -> None:
    for path in PACKAGE.rglob("*.py"):
        for imported in imports_of(path):
            assert imported.split(".")[0] not in SERVICES, (path, imported)


def test_every_part_is_a_package_pip_installs() -> None:
    """A part missing from pyproject.toml's packages imports here and fails in the image."""
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                   ["tool"]["setuptools"]["packages"])
    for init in PACKAGE.rglob("__init__.py"):
        package = ".".join(init.parent.relative_to(ROOT).parts)
        assert package in packages, f"pyproject.toml's packages lack {package}"
