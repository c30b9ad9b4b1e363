"""`make up` / `make status` / `make down` (python -m seckill_stack): a crashed database is
started again by the next `up`, because the launcher asks servers whether they run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from order_svc.relay import HEALTH_NAME
from seckill_stack.health import probe
from seckill_stack.mariadb import MariaDB
from seckill_stack.nats import NatsServer
from seckill_stack.services import REPO, free_port, python_env
from tests.helpers.flash_sale import SERVING, health_becomes

pytestmark = pytest.mark.slow


def stack(command: str, run_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seckill_stack", command, "--run-dir",
                           str(run_dir)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


async def test_up_restarts_a_database_that_was_killed(tmp_path: Path) -> None:
    # Free ports instead of the defaults, so the test never meets a stack someone runs.
    # (make test exports MARIADB_DIR and MARIADB_PORT, the settings of `make up`'s own database.)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SECKILL_", "MARIADB_", "NATS_"))}
    addrs = {name: f"127.0.0.1:{free_port()}" for name in ("PRODUCT", "ACTIVITY", "ORDER")}
    run_dir = tmp_path / "run"
    env = python_env({**env, "MARIADB_PORT": str(free_port()), "WAIT_TIMEOUT": "120",
                      "MARIADB_DIR": str(run_dir / "mariadb"), "NATS_PORT": str(free_port()),
                      **{f"SECKILL_{name}_ADDR": addr for name, addr in addrs.items()}})
    try:
        up = stack("up", run_dir, env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert stack("status", run_dir, env).returncode == 0
        nats = NatsServer(run_dir / "nats", int(env["NATS_PORT"]))
        assert nats.answers() and "NATS started" in up.stdout  # the relay's JetStream
        await health_becomes(addrs["ORDER"], SERVING, HEALTH_NAME)
        database = MariaDB(run_dir / "mariadb", int(env["MARIADB_PORT"]))
        first_pid = database.recorded_pid()
        assert first_pid is not None and database.answers()

        os.kill(first_pid, signal.SIGKILL)
        status = stack("status", run_dir, env)
        assert status.returncode == 3 and "MariaDB" in status.stdout
        assert "not answering" in status.stdout

        again = stack("up", run_dir, env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "MariaDB started" in again.stdout
        assert again.stdout.count("already running") == 3  # the services were kept
        assert database.answers() and database.recorded_pid() not in (None, first_pid)
        # Each service's workers follow the database on their own: `up` saw one of them
        # serving; the others turn SERVING at their next look at the database.
        for addr in addrs.values():
            await health_becomes(addr, SERVING)
    finally:
        down = stack("down", run_dir, env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (run_dir / "stack.env").exists()
    for addr in addrs.values():
        assert await probe(addr) is None
    assert not nats.answers()
