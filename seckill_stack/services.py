"""The services as processes of their own (`python -m <name>_svc`), each logging to a file.

`ServiceProcess.start()` is for asyncio callers that stay around (the tests); `spawn()` starts
the process without an event loop, optionally detached so that it outlives us (`make up`, the
benchmarks). Either way a service runs when it answers the gRPC health protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

from seckill_common.config import ADDRESSES
from seckill_stack.health import run as wait_serving_all

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("product", "order", "activity")  # start order: activity calls the other two
STOP_TIMEOUT_S = 30.0  # above the services' default shutdown grace of 5 s
# Chosen ports lie below Linux's range for outgoing connections, so that a client socket cannot
# take a port between the check and the service's bind.
PORT_FLOOR = 20_000
_CHOSEN: set[int] = set()  # ports handed out by this process, never handed out twice


def _local_port_floor() -> int:
    """The lowest port Linux hands to outgoing connections (32768 unless configured)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port(taken: set[int] | None = None) -> int:
    """A port on 127.0.0.1 that nobody has bound, below the range of outgoing ports."""
    taken = _CHOSEN if taken is None else taken
    top = max(_local_port_floor(), PORT_FLOOR + 1000)
    for _ in range(500):
        port = random.randrange(PORT_FLOOR, top)
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise OSError("no free port found on 127.0.0.1")


def listening(addr: str) -> bool:
    """Whether something accepts TCP connections at host:port."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def address_setting(module: str) -> str:
    """The setting that holds a service's own address: product_svc -> SECKILL_PRODUCT_ADDR."""
    return ADDRESSES[module.removesuffix("_svc")].target_setting


def python_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the repository and gen/ first on PYTHONPATH."""
    path = [str(REPO), str(REPO / "gen"), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


class ServiceStartError(RuntimeError):
    """A service did not reach SERVING; the message holds the end of its log."""


class ServiceProcess:
    """One service process, its output appended to `log_path`.

    Port 0 in its address setting (e.g. SECKILL_ORDER_ADDR=127.0.0.1:0) means any free port:
    one is chosen here, so that its peers and callers know it before it starts.
    """

    def __init__(self, module: str, env: dict[str, str], log_path: Path,
                 argv: tuple[str, ...] = ()) -> None:
        self.module = module
        self.log_path = log_path
        self.argv = argv
        setting = address_setting(module)
        host, _, port = env.get(setting, "127.0.0.1:0").rpartition(":")
        self.port = int(port) if port != "0" else free_port()
        self.host = host or "127.0.0.1"
        self.env = python_env({**env, setting: self.address})
        self.process: asyncio.subprocess.Process | None = None  # start()
        self.popen: subprocess.Popen[bytes] | None = None  # spawn()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        running = self.process or self.popen
        return None if running is None else running.pid

    def _command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.argv]

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            # Cut short: a JSON line with a traceback can run to many kilobytes.
            return "\n".join(line[:400] for line in text)
        return ""

    async def start(self, timeout_s: float = 30.0) -> None:
        """Starts the process as our child; returns once it answers SERVING."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self._command(), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        await wait_until_serving([self], timeout_s)

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Sends `sig` (SIGTERM: a graceful drain) and returns the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        async with asyncio.timeout(timeout_s):
            return await self.process.wait()

    def spawn(self, detach: bool = False) -> int:
        """Starts the process without waiting; returns its pid.

        `detach`: its own session, so that a Ctrl-C in a terminal or the end of our process
        leaves it running (`make up`); the benchmarks also use it, and stop it themselves.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self._command(), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=detach)
        return self.popen.pid

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.process is not None and self.process.returncode is None

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stops a spawned process: SIGTERM, then SIGKILL to its group if it does not exit."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # Still unreaped, so its group id is still ours: the supervisor and its workers.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


async def wait_until_serving(services: list[ServiceProcess], timeout_s: float) -> None:
    """Returns once every service answers SERVING; raises ServiceStartError (with the end
    of each log) on timeout or as soon as one of the processes exits."""
    pids = [pid for pid in (s.pid for s in services) if pid is not None]
    # Why not goes to stderr; callers say what they started.
    code = await wait_serving_all([s.address for s in services], pids, "", timeout_s,
                                  announce=False)
    if code != 0:
        raise ServiceStartError("not serving:\n" + "\n".join(
            f"--- {s.module} ({s.log_path}):\n{s.log_tail()}" for s in services))
