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
import os
import signal
import socket
import sys
import time

log = logging.getLogger(__name__)

# Each worker's index; read back as Settings.worker_id (and is_worker).
WORKER_ENV = "SECKILL_WORKER_ID"
MAX_RESTARTS = 5


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
    """Runs `python -m module` `workers` times on one address until a signal; exit code.

    `addr_env` is the variable that tells each worker where to listen (its port resolved)."""
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
