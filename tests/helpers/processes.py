"""Service processes for a test: N extra processes of one service (`python -m <kind>_svc`),
each on its own port, started together and stopped (SIGTERM, awaited) when the test leaves;
and the three services as processes on fixed ports (`ServiceSet`), for the fault tests.

    async with start_processes("activity", 2, stack.db_url, tmp_path, peers=stack) as extra:
        a, b = extra.activities
        ...

What the in-process stack cannot show needs them: a second process on the same database, a
process that is frozen, killed or restarted, a worker pool, what a process logs.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from seckill.v1 import activity_pb2_grpc, order_pb2_grpc, product_pb2_grpc

from seckill_stack.launcher import Services
from seckill_stack.services import (
    SERVICES,
    STOP_TIMEOUT_S,
    ServiceProcess,
    address_setting,
    free_port,
)
from tests.helpers.stack import Stack, subprocess_env

Kind = Literal["product", "order", "activity"]


@dataclass
class Processes:
    """The started processes, in order, and a channel to each."""

    processes: list[ServiceProcess]
    channels: list[grpc.aio.Channel]

    def __getitem__(self, index: int) -> ServiceProcess:
        return self.processes[index]

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.processes]

    @property
    def activities(self) -> list[activity_pb2_grpc.ActivityServiceAsyncStub]:
        return [activity_pb2_grpc.ActivityServiceStub(c) for c in self.channels]

    @property
    def orders(self) -> list[order_pb2_grpc.OrderServiceAsyncStub]:
        return [order_pb2_grpc.OrderServiceStub(c) for c in self.channels]

    @property
    def products(self) -> list[product_pb2_grpc.ProductServiceAsyncStub]:
        return [product_pb2_grpc.ProductServiceStub(c) for c in self.channels]

    async def stop(self, index: int, sig: int = signal.SIGTERM) -> int:
        """Stops one process (SIGTERM: a graceful drain) and returns its exit code; a test
        may start it again (`extra[index].start()`) on the same port."""
        return await self.processes[index].stop(sig)


def process_env(kind: Kind, db_url: str, address: str, peers: Stack | None,
                settings: dict[str, str]) -> dict[str, str]:
    """A process's environment: the shipped defaults (but the harness's short grace and one
    worker), its own address, its peers' (the stack's product and order services)."""
    env = {} if peers is None else {"SECKILL_PRODUCT_ADDR": peers.product.address,
                                     "SECKILL_ORDER_ADDR": peers.order.address}
    env[address_setting(f"{kind}_svc")] = address
    return subprocess_env(db_url, **{**env, **settings})


@asynccontextmanager
async def start_processes(
    kind: Kind, n: int, db_url: str, logs: Path, *, peers: Stack | None = None,
    ports: list[int] | None = None, name: str | None = None,
    settings: dict[str, str] | None = None, **overrides: str,
) -> AsyncIterator[Processes]:
    """`n` processes of the `kind` service on the database `db_url`, logging to
    `logs`/<name><i>.log (<name>.log for one; name defaults to the kind), each serving once
    this yields. `peers`: a stack whose product and order services they call; `ports`: fixed
    ports (a restarted process keeps its address), else any free ones; `settings` and then
    `overrides`: SECKILL_* values over the defaults.

    At exit every process still running is stopped with SIGTERM and awaited; when the test
    itself went well, each must have exited 0 (a clean drain)."""
    name = name or kind
    addresses = [f"127.0.0.1:{port}" for port in ports] if ports else ["127.0.0.1:0"] * n
    assert len(addresses) == n, (addresses, n)
    processes = [
        ServiceProcess(f"{kind}_svc",
                       process_env(kind, db_url, address, peers, {**(settings or {}), **overrides}),
                       logs / (f"{name}.log" if n == 1 else f"{name}{i}.log"))
        for i, address in enumerate(addresses)]
    channels: list[grpc.aio.Channel] = []
    try:
        await asyncio.gather(*(p.start() for p in processes))
        channels = [grpc.aio.insecure_channel(p.address) for p in processes]
        yield Processes(processes, channels)
    except BaseException:
        await _stop(processes, channels)
        raise
    codes = await _stop(processes, channels)
    assert all(code == 0 for code in codes.values()), f"not a clean exit: {codes}"


async def _stop(processes: list[ServiceProcess], channels: list[grpc.aio.Channel]
                ) -> dict[str, int]:
    """Closes the channels, stops every process still running; their exit codes by log."""
    for channel in channels:
        await channel.close()
    running = [p for p in processes if p.process is not None and p.process.returncode is None]
    codes = await asyncio.gather(*(p.stop() for p in running), return_exceptions=True)
    return {str(p.log_path.name): code if isinstance(code, int) else -1
            for p, code in zip(running, codes, strict=True)}


class ServiceSet:
    """The three services as processes of their own, on fixed ports, so that a restarted one
    is found again at its address by its peers and clients; a test stops, kills, freezes and
    restarts them by name. `env_of(name)`: a service's environment (subprocess_env's), to which
    the three addresses are added. The processes are the launcher's (seckill_stack.launcher)."""

    NAMES = SERVICES

    def __init__(self, logs: Path, env_of: Callable[[str], dict[str, str]]) -> None:
        self.ports = {name: free_port() for name in self.NAMES}
        self.env_of = env_of
        self.processes = Services(logs)
        self.running = self.processes.running

    @property
    def addrs(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}

    def env(self, name: str) -> dict[str, str]:
        return {**self.env_of(name), **{address_setting(f"{n}_svc"): address
                                        for n, address in self.addrs.items()}}

    async def start(self, *names: str) -> None:
        """Starts these services (all three by default) together; returns once each serves."""
        for name in names or self.NAMES:
            self.processes.add(name, f"{name}_svc", self.env(name))
        await self.processes.start(list(names or self.NAMES))

    def pid(self, name: str) -> int:
        pid = self.running[name].pid
        assert pid is not None
        return pid

    def send(self, name: str, sig: int) -> None:
        process = self.running[name].process
        assert process is not None and process.returncode is None
        process.send_signal(sig)

    async def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        """Stops one (SIGTERM: a graceful drain) and returns its exit code."""
        return await self.running.pop(name).stop(sig)

    async def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Every one still running stopped, or killed after `timeout_s`."""
        await self.processes.stop_all(timeout_s)
