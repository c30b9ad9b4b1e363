"""Capacity that adds up: the default worker count follows the CPUs a process may use (affinity
and the cgroup CPU quota), and each process logs its connection budget, warning with the numbers
when the database's max_connections cannot hold one replica."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from product_svc.server import DEFINITION as PRODUCT
from seckill_common.cpus import usable_cpus
from seckill_common.runtime.server import start_service
from tests.helpers.stack import REPO, PrivateMariaDB, create_database, settings_for, subprocess_env

SMALL_MAX_CONNECTIONS = 20


def cgroup_tree(root: Path, own: str, files: dict[str, str]) -> tuple[str, str]:
    """A fake /sys/fs/cgroup and /proc/self for `usable_cpus`: (cgroup root, proc dir)."""
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    proc = root / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(f"0::{own}\n")
    return str(root), str(proc)


def test_the_cgroup_v2_quota_caps_the_workers(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    # 1.5 CPUs on the pod, none on its own cgroup: rounded up to 2 (or fewer cores if so).
    root, proc = cgroup_tree(tmp_path, "/kubepods/pod1/c1", {
        "cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "150000 100000\n",
        "kubepods/pod1/c1/cpu.max": "max 100000\n",
    })
    assert usable_cpus(root, proc) == min(affinity, 2)
    unlimited = cgroup_tree(tmp_path / "u", "/", {"cpu.max": "max 100000\n"})
    assert usable_cpus(*unlimited) == affinity


def test_the_cgroup_v1_quota_is_the_fallback(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, "/", {"cpu/cpu.cfs_quota_us": "50000\n",
                                             "cpu/cpu.cfs_period_us": "100000\n"})
    assert usable_cpus(root, proc) == 1  # half a CPU still runs one worker
    root, proc = cgroup_tree(tmp_path / "v1-unlimited", "/", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert usable_cpus(root, proc) == len(os.sched_getaffinity(0))


async def test_a_service_pinned_to_one_core_runs_one_worker(db_url: str) -> None:
    """No SECKILL_WORKERS: the default. Under an affinity of one core (what `taskset -c 0` and
    a container's cpuset do), one worker, though the machine has more cores."""
    env = subprocess_env(db_url, SECKILL_PRODUCT_ADDR="127.0.0.1:0")
    del env["SECKILL_WORKERS"]
    process = await asyncio.create_subprocess_exec(
        "taskset", "-c", "0", sys.executable, "-m", "product_svc", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    records = []
    try:
        async with asyncio.timeout(30):
            while (line := await process.stdout.readline()):
                records.append(json.loads(line))
                if records[-1]["message"] == "listening":
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    budget = next(r for r in records if r["message"].startswith("connection budget"))
    assert budget["workers"] == 1
    assert budget["replica_connections"] == budget["pool_size"] == 10
    assert not any(r["message"] == "workers started" for r in records)


@pytest.fixture(scope="module")
async def small_mariadb(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A server of its own with a small max_connections: the limit under test."""
    server = PrivateMariaDB(tmp_path_factory.mktemp("small-mariadb"),
                            max_connections=SMALL_MAX_CONNECTIONS)
    server.install()
    server.start()
    yield server.url_base
    server.stop()


async def test_the_budget_warns_when_max_connections_cannot_hold_a_replica(
        small_mariadb: str, caplog: pytest.LogCaptureFixture) -> None:
    db_url = await create_database(small_mariadb)
    # 4 workers x 10 = 40 connections against a limit of 20: what a 4-CPU pod would ask.
    product = await start_service(PRODUCT, settings_for(db_url, SECKILL_WORKERS="4"))
    await product.stop(0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.getMessage().startswith("connection budget")]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "4 workers x pool 10 = 40 connections" in message
    assert f"the database allows {SMALL_MAX_CONNECTIONS}" in message
    assert "SECKILL_WORKERS" in message and "max_connections" in message


async def test_the_budget_is_logged_without_a_warning_when_it_fits(
        small_mariadb: str, caplog: pytest.LogCaptureFixture) -> None:
    db_url = await create_database(small_mariadb)
    caplog.set_level(logging.INFO, logger="seckill_common.database.startup")
    # A pool size of its own, so the logged budget is seen to follow the setting.
    product = await start_service(PRODUCT, settings_for(db_url, SECKILL_DB_POOL_SIZE="5"))
    await product.stop(0)
    lines = [r for r in caplog.records if r.getMessage().startswith("connection budget")]
    assert [r.levelno for r in lines] == [logging.INFO]
    # The record's `extra` fields.
    assert lines[0].replica_connections == 5  # type: ignore[attr-defined]
    assert lines[0].database_limit == SMALL_MAX_CONNECTIONS  # type: ignore[attr-defined]
