"""The README, docs/CONFIGURATION.md and docs/DESIGN.md stay true to the code: the settings
listed are the settings read, the make targets named exist, local links lead somewhere, and
the layout names every top-level folder and package."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from seckill_common.config import ClientSettings, MySQLTarget, variables
from tests.helpers.stack import REPO

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


def documented_defaults() -> dict[str, str]:
    """The default column of docs/CONFIGURATION.md's tables, by each name of the first column."""
    rows = [line.split("|") for line in CONFIGURATION.read_text().splitlines()
            if line.startswith("| `")]
    return {name: row[2].strip() for row in rows for name in names_in(row[1])}


def as_written(default: Any) -> str:
    """A field's default as its variable would be set to it: `250` for 250.0 ms, `true`."""
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(default, MySQLTarget):
        return default.redacted()
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_every_setting_of_the_model_is_documented_with_its_default() -> None:
    """Each SECKILL_* field of the settings model (Settings, its groups, ClientSettings) is a
    row whose default is the field's as written (`250` for a field in milliseconds), or words
    (unset, required, the CPUs...) for a field with no value of its own: empty, zero, or
    computed at start-up."""
    documented = documented_defaults()
    fields = variables()
    fields.update((str(info.alias), info) for info in ClientSettings.model_fields.values()
                  if isinstance(info.alias, str))
    for name, info in fields.items():
        if not name.startswith("SECKILL_"):
            continue  # OTEL_*: the OpenTelemetry standard's, described in prose
        assert name in documented, f"docs/CONFIGURATION.md lacks {name}"
        literal = re.match(r"`([^`]*)`", documented[name])
        if literal and not documented[name].startswith("the "):
            assert literal.group(1) == as_written(info.default), name
        else:
            assert info.default_factory or not as_written(info.default).strip("0"), (
                f"{name}: docs/CONFIGURATION.md says {documented[name]!r}, the model "
                f"{as_written(info.default)!r}")


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


DESIGN = REPO / "docs" / "DESIGN.md"
# Lines of the layout block: a name column, then two or more spaces and what it holds. A line
# indented by two spaces names something inside the last top-level entry; one indented further
# continues a description.
ENTRY = re.compile(r"^( {2})?(\S+(?: \S+)*?)(?: {2,}|$)")


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [path for path in listed.split("\0") if path]


def layout_listed() -> set[str]:
    """Every folder docs/DESIGN.md's layout block names, with each of its parents."""
    text = DESIGN.read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    parent = ""
    for line in block.splitlines():
        if not line.strip() or line.startswith("   "):
            continue
        entry = ENTRY.match(line)
        assert entry, f"docs/DESIGN.md's layout: not an entry: {line!r}"
        indented, names = entry.groups()
        for name in names.split():
            if not name.endswith("/"):
                continue
            path = (parent + name if indented else name).rstrip("/")
            if not indented:
                parent = path + "/"
            parts = path.split("/")
            listed.update("/".join(parts[:end]) for end in range(1, len(parts) + 1))
    return listed


def test_the_design_layout_lists_every_top_level_folder_and_package() -> None:
    files = tracked_files()
    folders = {path.split("/")[0] for path in files if "/" in path}
    # seckill_common's parts are packages of their own, each with its own job.
    parts = {path.rsplit("/", 1)[0] for path in files
             if re.fullmatch(r"seckill_common/\w+/__init__\.py", path)}
    assert {"seckill_common", "tests"} <= folders and parts, "git lists no packages?"
    missing = sorted((folders | parts) - layout_listed())
    assert not missing, f"docs/DESIGN.md's layout does not list {missing}"
