"""`--workers N`: N server processes on one port (SO_REUSEPORT), each with its own event loop
and pool, under a small supervisor.

Python runs one thread of Python at a time, so one process uses one core; the kernel spreads
new connections over the processes that listen on the port. The supervisor starts the
workers, forwards SIGTERM/SIGINT to them (each shuts down gracefully), and restarts a worker
that dies unexpectedly, at most `MAX_RESTARTS` times a minute, else it stops them all and
exits non-zero so that the outer supervisor (compose, systemd, make up) notices.

A worker that stops without dying (its event loop blocked, the process stopped or starved)
would keep its place on the port: the kernel goes on handing it new connections that nobody
answers. So, as gunicorn's arbiter does, each worker's event loop beats (`beat`) in a page
shared with the supervisor, which kills a worker that showed no beat for
SECKILL_WORKER_TIMEOUT; its listening socket closes with it, the port's other workers take the
new connections, and it is restarted like a worker that died (docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from seckill_common.config import Settings

log = logging.getLogger(__name__)

# Each worker's index; read back as Settings.worker_id (and is_worker).
WORKER_ENV = "SECKILL_WORKER_ID"
# The descriptor of a worker's heartbeat page; read back as Settings.worker_heartbeat_fd.
HEARTBEAT_ENV = "SECKILL_WORKER_HEARTBEAT_FD"
MAX_RESTARTS = 5
# A worker beats this many times per timeout, and the supervisor looks as often: a worker
# that stopped is killed between `timeout` and `timeout` + two looks after its last beat.
BEATS_PER_TIMEOUT = 10
# Beyond the workers' own drain and grace, how long the supervisor waits for them to exit on
# SIGTERM (closing the pool, flushing traces) before it kills what is left.
STOP_MARGIN_S = 10.0
# The heartbeat: a count of beats, written and read without a system call on either side.
_COUNTER = struct.Struct("=Q")


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


# --- the worker's side ---------------------------------------------------------------------

async def beat(fd: int, interval_s: float) -> None:
    """Counts a beat in the supervisor's page every `interval_s`, for as long as this event
    loop runs its timers: a count that stops moving is a loop (or a process) that stopped.

    The other way round too: a worker whose supervisor is gone (killed, crashed) would keep
    its place on the port with nobody to restart or stop it, so it shuts itself down
    gracefully (SIGTERM to itself) once its parent changes."""
    page = mmap.mmap(fd, _COUNTER.size)
    os.close(fd)
    supervisor = os.getppid()
    beats = 0
    try:
        while True:
            if os.getppid() != supervisor:
                log.error("the supervisor (pid %d) is gone: shutting down", supervisor)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            beats += 1
            _COUNTER.pack_into(page, 0, beats)
            await asyncio.sleep(interval_s)
    finally:
        page.close()


def start_heartbeat(settings: Settings) -> asyncio.Task[None] | None:
    """A worker under a supervisor with the heartbeat on: its beating task (None otherwise).
    Started once the process's slow start-up imports are done, before it listens."""
    if not (settings.worker_heartbeat_fd and settings.worker_timeout_s > 0):
        return None
    return asyncio.create_task(
        beat(int(settings.worker_heartbeat_fd), settings.worker_timeout_s / BEATS_PER_TIMEOUT),
        name="heartbeat")


# --- the supervisor's side -----------------------------------------------------------------

@dataclass
class Progress:
    """What the supervisor saw of one worker's beats, on its own clock only (so a worker's
    clock, or a beat half-written as it is read, can never make a worker look stuck)."""

    beats: int = 0
    moved_at: float | None = None  # when the count last moved; None: no beat yet

    def silent_for(self, beats: int, now: float) -> float:
        """Seconds, as of `now`, since the count last moved; 0 before the first beat (the
        worker is still starting and does not listen yet)."""
        if beats != self.beats:
            self.beats, self.moved_at = beats, now
        return 0.0 if self.moved_at is None else now - self.moved_at

    def forgive(self, now: float) -> None:
        """The supervisor itself did not run for a while (paused with the machine, starved):
        it cannot tell who stopped meanwhile, so the worker's silence counts from now."""
        if self.moved_at is not None:
            self.moved_at = now


@dataclass(eq=False)
class Worker:
    """One worker process and its heartbeat page (a memfd both processes map)."""

    process: asyncio.subprocess.Process
    page: mmap.mmap | None
    progress: Progress = field(default_factory=Progress)
    killed: bool = False

    def beats(self) -> int:
        return 0 if self.page is None else int(_COUNTER.unpack_from(self.page)[0])

    def close(self) -> None:
        if self.page is not None:
            self.page.close()


async def _spawn(module: str, env: dict[str, str], worker_id: int,
                 heartbeat: bool) -> Worker:
    """Starts worker `worker_id`, with a fresh heartbeat page when `heartbeat`."""
    if not heartbeat:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env={**env, WORKER_ENV: str(worker_id)})
        return Worker(process, None)
    fd = os.memfd_create(f"seckill-heartbeat-{worker_id}")
    try:
        os.ftruncate(fd, _COUNTER.size)
        page = mmap.mmap(fd, _COUNTER.size)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, pass_fds=(fd,),
            env={**env, WORKER_ENV: str(worker_id), HEARTBEAT_ENV: str(fd)})
    finally:
        os.close(fd)  # the mapping stays; the worker holds its own copy of the descriptor
    return Worker(process, page)


async def watch_heartbeats(workers: dict[int, Worker], timeout_s: float) -> None:
    """Kills every worker whose beats stopped for `timeout_s` (it then exits, and is
    restarted like any worker that died); runs until cancelled."""
    every = timeout_s / BEATS_PER_TIMEOUT
    last_look = time.monotonic()
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        held_up = now - last_look > timeout_s / 2
        last_look = now
        for worker_id, worker in workers.items():
            if held_up:
                worker.progress.forgive(now)
            silent = worker.progress.silent_for(worker.beats(), now)
            if silent > timeout_s and not worker.killed and worker.process.returncode is None:
                log.error("worker %d made no progress for %.1f s: killing it", worker_id,
                          silent, extra={"worker": worker_id, "pid": worker.process.pid,
                                         "silent_s": round(silent, 3)})
                worker.killed = True
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()  # SIGKILL ends a stopped process too


async def supervise(module: str, addr_env: str, listen_addr: str, workers: int,
                    settings: Settings) -> int:
    """Runs `python -m module` `workers` times on one address until a signal; exit code.

    `addr_env` is the variable that tells each worker where to listen (its port resolved)."""
    host, port = listen_addr.rsplit(":", 1)
    holder, port_number = reserve_port(host, int(port))
    # SECKILL_WORKERS: each worker states the whole process group's connection budget.
    env = {**os.environ, addr_env: f"{host}:{port_number}", "SECKILL_WORKERS": str(workers)}
    env.pop(HEARTBEAT_ENV, None)
    heartbeat = settings.worker_timeout_s > 0
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    running = {i: await _spawn(module, env, i, heartbeat) for i in range(workers)}
    log.info("workers started", extra={"workers": workers, "port": port_number,
                                       "pids": [w.process.pid for w in running.values()]})
    monitor = (asyncio.create_task(watch_heartbeats(running, settings.worker_timeout_s))
               if heartbeat else None)
    restarts: list[float] = []
    exit_code = 0
    try:
        while not stopping.is_set():
            waits = {asyncio.ensure_future(w.process.wait()): i for i, w in running.items()}
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
                # A worker killed for its silence counts as one that died: either way the
                # service cannot keep its workers up, and past the budget the outer
                # supervisor (with its own view of the machine) should take over.
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log.error("workers keep dying; stopping the service")
                    exit_code = 1
                    stopping.set()
                    break
                # The old page is closed only once replaced: the heartbeat watch may look at
                # it while the new worker is being spawned.
                dead = running[worker_id]
                running[worker_id] = await _spawn(module, env, worker_id, heartbeat)
                dead.close()
                log.info("worker %d restarted", worker_id,
                         extra={"worker": worker_id, "pid": running[worker_id].process.pid})
    finally:
        codes = await _stop(running, settings.drain_delay_s + settings.shutdown_grace_s
                            + STOP_MARGIN_S)
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        for worker in running.values():
            worker.close()
        if holder is not None:
            holder.close()
    log.info("workers stopped", extra={"exit_codes": codes})
    return exit_code or max((c for c in codes if c > 0), default=0)


async def _stop(running: dict[int, Worker], timeout_s: float) -> list[int]:
    """SIGTERM to every worker (each drains), their exit codes; one still there after
    `timeout_s` (stopped, or stuck before its first beat) is killed. The heartbeat watch runs
    on meanwhile, so a worker that stops beating while it drains is killed sooner."""
    processes = [w.process for w in running.values()]
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout_s):
            return list(await asyncio.gather(*(p.wait() for p in processes)))
    except TimeoutError:
        log.error("workers still running %.0f s after SIGTERM: killing them", timeout_s)
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        return list(await asyncio.gather(*(p.wait() for p in processes)))
