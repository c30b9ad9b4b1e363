"""pyproject.toml states compatible ranges; requirements.lock pins the exact versions, within
them, that `make venv`, CI and the image install."""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers.distributions import pyproject, requirement_closure
from tests.helpers.stack import REPO


def declared() -> list[Requirement]:
    project = pyproject()["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(line) for line in lines]


def pins() -> dict[str, Version]:
    found = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            found[str(canonicalize_name(name))] = Version(version)
    return found


def test_pyproject_has_ranges_and_the_lock_pins_each_within_them() -> None:
    locked = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert all(s.operator not in ("==", "===") for s in requirement.specifier), (
            f"{requirement}: a range in pyproject.toml, the exact version in requirements.lock")
        assert name in locked, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]} outside {requirement}: `make lock`")


def test_the_venv_holds_the_locked_versions() -> None:
    """Everything pyproject.toml pulls in, directly or not, at the lock's version."""
    locked = pins()
    for name in requirement_closure(declared()):
        assert name in locked, f"{name} is installed but not locked: run `make lock`"
        assert Version(importlib.metadata.version(name)) == locked[name], name
    assert "tqdm" not in locked


def test_every_install_goes_through_the_lock() -> None:
    for path in ("Makefile", "Dockerfile"):
        assert "PIP_CONSTRAINT=requirements.lock" in (REPO / path).read_text(), path
