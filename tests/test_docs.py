"""The README and docs/CONFIGURATION.md stay true to the code: the settings listed are the
settings read, the make targets named exist, and local links lead somewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support import REPO

CONFIGURATION = REPO / "docs" / "CONFIGURATION.md"
# Where settings are read: everything but generated code and the tests themselves (whose
# fixtures read SECKILL_TEST_MYSQL_URL, a setting of `make test`).
SKIPPED = ("gen", "tests", ".venv", ".run", "build")
NAME = re.compile(r"SECKILL_[A-Z0-9_]+")


def code_files() -> list[Path]:
    files = [path for path in REPO.rglob("*.py")
             if path.relative_to(REPO).parts[0] not in SKIPPED]
    return [*files, REPO / "tests" / "conftest.py"]


def names_in(text: str) -> set[str]:
    # A name that ends in "_" is a prefix completed at run time (f"SECKILL_TLS_{key}").
    return {name for name in NAME.findall(text) if not name.endswith("_")}


def settings_in_code() -> dict[str, Path]:
    """Every SECKILL_* name in a string literal of the code, with a file that holds it."""
    found: dict[str, Path] = {}
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in names_in(node.value):
                    found.setdefault(name, path.relative_to(REPO))
    return found


def settings_documented() -> set[str]:
    """The names in the first column of docs/CONFIGURATION.md's tables."""
    rows = [line.split("|")[1] for line in CONFIGURATION.read_text().splitlines()
            if line.startswith("| `")]
    return set().union(*(names_in(cell) for cell in rows))


def test_every_setting_the_code_reads_is_documented() -> None:
    missing = {name: str(path) for name, path in settings_in_code().items()
               if name not in settings_documented()}
    assert not missing, f"add these to docs/CONFIGURATION.md (name: where read): {missing}"


def test_every_documented_setting_is_read_by_the_code() -> None:
    stale = settings_documented() - set(settings_in_code())
    assert not stale, f"docs/CONFIGURATION.md lists settings no code reads: {sorted(stale)}"


def test_the_make_targets_the_readme_names_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", (REPO / "README.md").read_text()))
    assert named >= {"run", "test", "up", "down"}
    assert named <= targets, f"the README names missing make targets: {named - targets}"


def test_the_readme_is_short_and_its_local_links_exist() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
