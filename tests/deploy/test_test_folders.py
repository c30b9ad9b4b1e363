"""Every test module sits in one of the folders by kind that pytest's testpaths name (a test
file left at tests/ would not run at all), and each folder is a package, so two files of one
name in different folders stay distinct modules."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.distributions import pyproject
from tests.helpers.stack import REPO

TESTS = REPO / "tests"


def test_every_test_module_is_in_a_folder_that_testpaths_names() -> None:
    testpaths = pyproject()["tool"]["pytest"]["ini_options"]["testpaths"]
    kinds = {Path(path).relative_to("tests").parts[0] for path in testpaths}
    assert kinds == {"unit", "api", "processes", "faults", "deploy"}, testpaths
    stray = sorted(str(path.relative_to(REPO)) for path in TESTS.rglob("test_*.py")
                   if path.relative_to(TESTS).parts[0] not in kinds)
    assert not stray, f"not collected by `make test`: move them into a folder by kind: {stray}"


def test_every_test_folder_is_a_package() -> None:
    folders = {path.parent for path in TESTS.rglob("test_*.py")}
    assert all((folder / "__init__.py").is_file() for folder in folders), sorted(
        str(f) for f in folders if not (f / "__init__.py").is_file())
