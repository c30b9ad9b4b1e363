"""The README's two commands work on a clean clone, as written: `make run`, then `make test`'s
own machinery (venv, private MariaDB) from nothing but the committed files.

The clone is of HEAD, so this checks what was committed, not the working tree.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.stack import REPO, free_port

pytestmark = pytest.mark.slow


def make(clone: Path, target: str, env: dict[str, str], timeout_s: float) -> str:
    result = subprocess.run(["make", target], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=timeout_s)
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_make_run_on_a_clean_clone(tmp_path: Path) -> None:
    clone = tmp_path / "seckill"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    # Free ports instead of the defaults, so the test never meets a stack someone runs.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SECKILL_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(
        MARIADB_PORT=str(free_port()),
        SECKILL_PRODUCT_ADDR=f"127.0.0.1:{free_port()}",
        SECKILL_ACTIVITY_ADDR=f"127.0.0.1:{free_port()}",
        SECKILL_ORDER_ADDR=f"127.0.0.1:{free_port()}",
    )
    try:
        out = make(clone, "run", env, timeout_s=600)
        # `make run` ends with `seckill sale simulate`: its summary, invariants, next steps.
        for expected in ("orders placed", "sold-out refusals", "stock left", "invariants",
                         " ok ", "grpcurl", "seckill orders --activity", "make down"):
            assert expected.lower() in out.lower(), f"{expected!r} missing from:\n{out}"
        assert "FAILED" not in out
    finally:
        make(clone, "down", env, timeout_s=120)
    assert not (clone / ".run" / "stack.env").exists()
