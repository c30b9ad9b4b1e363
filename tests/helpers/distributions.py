"""What pyproject.toml declares and what it pulls in: read by the dependency tests and the
image test alike."""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Iterable
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from tests.helpers.stack import REPO


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_closure(requirements: Iterable[Requirement]) -> set[NormalizedName]:
    """The distributions `requirements` install, and everything they require in turn (as
    installed here; markers judged without extras)."""
    todo = list(requirements)
    seen: set[NormalizedName] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(line) for line in importlib.metadata.requires(name) or []]
    return seen
