"""The one launcher of the stack on this machine: a private MariaDB, a private NATS server with
JetStream (the order events' relay) and the services as processes of their own.

`make up` (DevStack, __main__.py) keeps them running in the background between commands;
`make bench` (seckill_bench/suite/stack.py) starts a fresh one per run with its own activity
services; the tests start the same MariaDB and NATS servers (a fresh database per test) and
either run the services in-process on port 0 or start them here as processes
(tests/helpers/processes.py). Each caller keeps only what is its own: where the state lives,
which ports, which settings.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from seckill_common.config import ADDRESSES
from seckill_stack.mariadb import MariaDB, MariaDBError
from seckill_stack.nats import NatsError, NatsServer
from seckill_stack.services import (
    STOP_TIMEOUT_S,
    ServiceProcess,
    ServiceStartError,
    wait_until_serving,
)

# `make up`'s defaults: not a system server's (MariaDB 3306, NATS 4222).
DEFAULT_MARIADB_PORT = 3307
DEFAULT_NATS_PORT = 4223


# Each service's default port (product 50051, activity 50052, order 50053): compose, the
# Kubernetes manifests and the cluster's app hosts listen there too.
DEFAULT_PORTS = {service: int(address.target.rsplit(":", 1)[1])
                 for service, address in ADDRESSES.items()}


class StackError(RuntimeError):
    """Something the user must fix, or a part that did not start or died; the message says
    what."""


def port_number(setting: str, value: str) -> int:
    """`value` as a TCP port, or a StackError naming `setting`."""
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise StackError(f"{setting} must be 1..65535, got {value!r}")
    return int(value)


@contextmanager
def as_stack_error() -> Iterator[None]:
    """A server that could not be installed, started or stopped: a StackError with its why."""
    try:
        yield
    except (MariaDBError, NatsError) as exc:
        raise StackError(str(exc)) from None


def start_mariadb(db: MariaDB, detach: bool = True) -> bool:
    """Starts the private MariaDB unless it answers already (then False). `detach`: its own
    session, so a Ctrl-C reaches only us and we stop it in order."""
    with as_stack_error():
        return db.start(detach=detach)


def start_nats(nats: NatsServer) -> None:
    with as_stack_error():
        nats.start()


def stop_mariadb(db: MariaDB) -> bool:
    """Stops it; False when it was not running."""
    with as_stack_error():
        return db.stop()


def stop_nats(nats: NatsServer) -> None:
    with as_stack_error():
        nats.stop()


class Services:
    """The services as processes, by label (a service may run several times with different
    settings: the bench's activity services), each logging to <log_dir>/<label>.log.

    Two ways to run them: `spawn` / `wait_serving` / `stop` without an event loop, detached if
    asked (`make up`, `make bench`); `start` / `stop_all` as children of the running event loop
    (the tests, which kill, freeze and restart them)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, ServiceProcess] = {}

    def __contains__(self, label: str) -> bool:
        return label in self.running

    def add(self, label: str, module: str, env: dict[str, str],
            argv: tuple[str, ...] = ()) -> ServiceProcess:
        """A process to start (its port chosen now when its address setting says port 0)."""
        self.running[label] = ServiceProcess(module, env, self.log_dir / f"{label}.log", argv)
        return self.running[label]

    def __getitem__(self, label: str) -> ServiceProcess:
        return self.running[label]

    def address(self, label: str) -> str:
        return self.running[label].address

    def spawn(self, labels: list[str] | None = None, detach: bool = True,
              started: Callable[[str, ServiceProcess], None] = lambda label, service: None
              ) -> None:
        """Starts every process added (or those of `labels`) and not started yet, without
        waiting; `started` is told each one. `detach`: they outlive us (`make up`) and ignore
        our terminal's Ctrl-C."""
        for label, service in self.running.items():
            if service.pid is None and (labels is None or label in labels):
                service.spawn(detach=detach)
                started(label, service)

    def wait_serving(self, timeout_s: float, services: list[ServiceProcess] | None = None
                     ) -> None:
        """Returns once every one (or each of `services`) answers SERVING; StackError with the
        end of each log otherwise."""
        try:
            asyncio.run(wait_until_serving(services or list(self.running.values()), timeout_s))
        except ServiceStartError as exc:
            raise StackError(str(exc)) from None

    def dead(self) -> list[str]:
        """The labels of the processes started here that have exited."""
        return [label for label, s in self.running.items() if s.pid is not None and not s.alive()]

    def stop(self, stopped: Callable[[str], None] = lambda label: None) -> None:
        """Stops each process still running (SIGTERM: a graceful drain, then SIGKILL)."""
        for label, service in self.running.items():
            if service.alive():
                service.terminate()
                stopped(label)

    def remove(self, label: str) -> None:
        """Stops one process and forgets it (a service of one part of a run only)."""
        self.running.pop(label).terminate()

    async def start(self, labels: list[str] | None = None) -> None:
        """Starts these processes (every one added by default) as children of this event
        loop, together; returns once each serves (ServiceStartError otherwise)."""
        await asyncio.gather(*(self.running[label].start()
                               for label in labels or list(self.running)))

    async def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stops every child still running, woken first (one may have been left stopped) and
        killed if it does not exit within `timeout_s`: none outlives its starter."""
        processes = [s.process for s in self.running.values() if s.process is not None]
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
        await asyncio.gather(*(self.running.pop(label).stop(timeout_s=timeout_s)
                               for label in list(self.running)), return_exceptions=True)
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
