"""The Dockerfile builds what compose runs: it copies what exists and every package pip
installs, exposes the ports compose uses, and installs every module the services import."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.compose import (
    ROOT,
    SERVICES,
    addr_var,
    environment,
)
from tests.helpers.distributions import pyproject, requirement_closure


def dockerfile_instructions(keyword: str) -> list[list[str]]:
    return [line.split()[1:] for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.split() and line.split()[0].upper() == keyword]


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for words in dockerfile_instructions("COPY"):
        sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def test_healthcheck_module_ships_in_the_image():
    assert (ROOT / "seckill_stack" / "health.py").is_file()
    assert "seckill_stack/" in dockerfile_copy_sources()


def test_dockerfile_copies_only_paths_that_exist():
    sources = dockerfile_copy_sources()
    assert sources
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert not missing, f"COPY sources missing from the repo: {missing}"


def test_dockerfile_copies_every_package_pip_installs():
    setuptools = pyproject()["tool"]["setuptools"]
    package_dir = setuptools.get("package-dir", {})
    copied = [source.rstrip("/") for source in dockerfile_copy_sources()]
    for package in setuptools["packages"]:
        top = package.split(".")[0]
        folder = package_dir.get(top, top).strip("./") or top
        assert any(folder == c or folder.startswith(c + "/") for c in copied), (
            f"`pip install .` needs {folder}/ for package {package}: COPY it")


def test_dockerfile_exposes_what_compose_uses(compose):
    exposed = {int(word.split("/")[0]) for words in dockerfile_instructions("EXPOSE")
               for word in words}
    for service in SERVICES:
        env = environment(compose, service)
        assert int(env[addr_var(service)].rpartition(":")[2]) in exposed
        assert int(env["SECKILL_METRICS_ADDR"].rpartition(":")[2]) in exposed


def module_owners() -> dict[str, str]:
    """Installed file → the distribution that installed it."""
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            owners[os.path.normpath(str(dist.locate_file(file)))] = name
    return owners


def runtime_distributions() -> set[str]:
    """What `pip install .` installs: pyproject's dependencies and everything they require."""
    return set(requirement_closure(
        Requirement(line) for line in pyproject()["project"]["dependencies"]))


def imported_modules(folder: Path) -> dict[str, bool]:
    """Absolute imports under `folder`: module name → whether it must be a module (`import x`,
    `from x import ...`) rather than maybe a name in one (`from x import y`: x.y)."""
    modules: dict[str, bool] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update((alias.name, True) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules[node.module] = True
                for alias in node.names:
                    modules.setdefault(f"{node.module}.{alias.name}", False)
    return modules


def find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent is a module, not a package: `module` is a name
        return None


def test_image_installs_every_module_the_services_import():
    """The image gets pyproject's dependencies only: a module that the venv has by hand (or by
    the dev extra) imports fine here and fails in the container."""
    ours = {package.split(".")[0] for package in pyproject()["tool"]["setuptools"]["packages"]}
    imports: dict[str, bool] = {}
    for folder in [ROOT / name for name in sorted(ours)] + [ROOT / "gen"]:
        if folder.is_dir():
            imports.update(imported_modules(folder))
    owners = module_owners()
    runtime = runtime_distributions()
    missing = {}
    for module, must_exist in sorted(imports.items()):
        top = module.split(".")[0]
        if top in ours or top in sys.stdlib_module_names:
            continue
        spec = find_spec(module)
        assert spec is not None or not must_exist, f"{module} is not installed"
        if spec is None or not spec.has_location:  # a name, or a namespace package
            continue
        owner = owners.get(os.path.normpath(spec.origin or ""))
        if owner not in runtime:
            missing[module] = owner
    assert not missing, f"imported, but not a runtime dependency in pyproject.toml: {missing}"
