"""gen/ is exactly what `make gen` produces from protos/: CI fails when it is stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.stack import REPO


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "scripts/protogen.py", str(tmp_path)], cwd=REPO, check=True)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(REPO / "gen"): p.read_bytes()
                 for p in (REPO / "gen").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert fresh.keys() == committed.keys(), "run `make gen`: files differ"
    stale = sorted(str(name) for name in fresh if fresh[name] != committed[name])
    assert not stale, f"run `make gen`: stale generated files {stale}"
