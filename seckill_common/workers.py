"""`--workers N`: N server processes on one port (SO_REUSEPORT), each with its own event loop
and pool, under a small supervisor.

Python runs one thread of Python at a time, so one process uses one core; the kernel spreads
new connections over the processes that listen on the port. The supervisor starts the
workers, forwards SIGTERM/SIGINT to them (each shuts down gracefully), and restarts a worker
that dies unexpectedly, at most `MAX_RESTARTS` times a minute, else it stops them all and
exits non-zero so that the outer supervisor (compose, systemd, make up) notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import time

log = logging.getLogger(__name__)

WORKER_ENV = "SECKILL_WORKER_ID"
MAX_RESTARTS = 5


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup", proc_self: str = "/proc/self") -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota.

    `os.cpu_count()` counts the host's cores, which a container limited to 2 CPUs on a 64-core
    node would turn into 64 workers and 64 database pools. The quota (cgroup v2 `cpu.max`, else
    v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`) is rounded up: 1.5 CPUs run 2 workers.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root, proc_self)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _cgroup_quota(root: str, proc_self: str) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None if
    unlimited or unknown."""
    own = "/"
    for line in (_read(f"{proc_self}/cgroup") or "").splitlines():
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0":  # the cgroup v2 line: `0::/path`
            own = path or "/"
    quotas = []
    # v2: the process's own cgroup (inside a container, usually the namespace root) upwards.
    parts = [p for p in own.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        text = _read(os.path.join(root, *parts[:depth], "cpu.max"))
        if text:
            limit, _, period = text.partition(" ")
            if limit != "max" and period:
                quotas.append(int(limit) / int(period))
    if quotas:
        return min(quotas)
    # v1 fallback: the cpu controller's root as the container sees it.
    for folder in ("cpu", "cpu,cpuacct"):
        quota = _read(os.path.join(root, folder, "cpu.cfs_quota_us"))
        every = _read(os.path.join(root, folder, "cpu.cfs_period_us"))
        if quota and every and int(quota) > 0 and int(every) > 0:
            return int(quota) / int(every)
    return None


def is_worker() -> bool:
    return WORKER_ENV in os.environ


def worker_id() -> int:
    """This worker's index under the supervisor (0 for a lone process)."""
    return int(os.environ.get(WORKER_ENV, "0"))


def reserve_port(host: str, port: int) -> tuple[socket.socket | None, int]:
    """For port 0, a free port held by a bound (not listening) SO_REUSEPORT socket, so that
    every worker binds the same one; otherwise nothing to hold."""
    if port != 0:
        return None, port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host.strip("[]"), 0))
    return holder, holder.getsockname()[1]


async def supervise(module: str, addr_env: str, listen_addr: str, workers: int) -> int:
    """Runs `python -m module` `workers` times on one address until a signal; exit code."""
    host, port = listen_addr.rsplit(":", 1)
    holder, port_number = reserve_port(host, int(port))
    # SECKILL_WORKERS: each worker states the whole process group's connection budget.
    env = {**os.environ, addr_env: f"{host}:{port_number}", "SECKILL_WORKERS": str(workers)}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def spawn(worker_id: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env={**env, WORKER_ENV: str(worker_id)})

    processes = {i: await spawn(i) for i in range(workers)}
    log.info("workers started", extra={"workers": workers, "port": port_number,
                                       "pids": [p.pid for p in processes.values()]})
    restarts: list[float] = []
    exit_code = 0
    try:
        while not stopping.is_set():
            waits = {asyncio.ensure_future(p.wait()): i for i, p in processes.items()}
            stop_wait = asyncio.ensure_future(stopping.wait())
            done, pending = await asyncio.wait([*waits, stop_wait],
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if stopping.is_set():
                break
            for task in done:
                if task is stop_wait:
                    continue
                worker_id = waits[task]
                log.error("worker %d exited with %s", worker_id, task.result())
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log.error("workers keep dying; stopping the service")
                    exit_code = 1
                    stopping.set()
                    break
                processes[worker_id] = await spawn(worker_id)
    finally:
        for process in processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(p.wait() for p in processes.values()))
        if holder is not None:
            holder.close()
    log.info("workers stopped", extra={"exit_codes": codes})
    return exit_code or max((c for c in codes if c > 0), default=0)
