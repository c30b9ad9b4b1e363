"""Test harness: a private MariaDB server and the three services in-process on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiomysql
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from seckill.v1 import (
    activity_pb2_grpc,
    order_pb2_grpc,
    product_pb2_grpc,
)

from activity_svc.server import DEFINITION as ACTIVITY
from order_svc.server import DEFINITION as ORDER
from product_svc.server import DEFINITION as PRODUCT
from seckill_cli.wait_serving import wait_serving as health_wait
from seckill_common.config import Settings
from seckill_common.server import RunningService, start_service

ADMIN_TOKEN = "test-admin-token"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMariaDB:
    """A mariadbd of the tests' own: its data dir, socket and port; killable and restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.datadir = root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url_base(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    def install(self) -> None:
        binary = shutil.which("mariadb-install-db")
        if binary is None:
            raise RuntimeError("mariadb-install-db not found: install mariadb-server")
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [binary, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )

    def start(self, timeout_s: float = 30.0) -> None:
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.process = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={self.datadir}",
             f"--socket={self.root / 'mysqld.sock'}", f"--port={self.port}",
             "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
             "--max-connections=1000", f"--log-error={self.root / 'error.log'}",
             f"--pid-file={self.root / 'mysqld.pid'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "error.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"mariadbd did not start:\n{log}") from None
                time.sleep(0.02)  # polling a port that cannot be awaited

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


async def create_database(url_base: str) -> str:
    """A fresh, empty database on the server; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    host, port = url_base.rsplit("@", 1)[1].split(":")
    conn = await aiomysql.connect(host=host, port=int(port), user="root")
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    return f"{url_base}/{name}"


async def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Reads rows straight from the database, to check what the API claims."""
    base, name = url.rsplit("/", 1)
    host, port = base.rsplit("@", 1)[1].split(":")
    conn = await aiomysql.connect(host=host, port=int(port), user="root", db=name,
                                  autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())
    finally:
        conn.close()


def settings_for(db_url: str, **overrides: str) -> Settings:
    env = {
        "SECKILL_MYSQL_URL": db_url,
        "SECKILL_ADMIN_TOKEN": ADMIN_TOKEN,
        "SECKILL_PRODUCT_ADDR": "127.0.0.1:0",
        "SECKILL_ACTIVITY_ADDR": "127.0.0.1:0",
        "SECKILL_ORDER_ADDR": "127.0.0.1:0",
        "SECKILL_DB_STARTUP_TIMEOUT": "10",
        "SECKILL_SHUTDOWN_GRACE": "1",
        "SECKILL_HEALTH_INTERVAL": "0.2",
        "SECKILL_WORKERS": "1",
        **overrides,
    }
    return Settings.from_env(env)


@dataclass
class Stack:
    """The three services, running in this process, and stubs to call them."""

    db_url: str
    product: RunningService
    order: RunningService
    activity: RunningService
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.channels = [grpc.aio.insecure_channel(s.address)
                         for s in (self.product, self.activity, self.order)]
        self.products = product_pb2_grpc.ProductServiceStub(self.channels[0])
        self.activities = activity_pb2_grpc.ActivityServiceStub(self.channels[1])
        self.orders = order_pb2_grpc.OrderServiceStub(self.channels[2])

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for service in (self.activity, self.product, self.order):
            await service.stop(0)


async def start_stack(db_url: str, **overrides: str) -> Stack:
    product = await start_service(PRODUCT, settings_for(db_url, **overrides))
    order = await start_service(ORDER, settings_for(db_url, **overrides))
    activity = await start_service(ACTIVITY, settings_for(
        db_url,
        **{"SECKILL_PRODUCT_ADDR": product.address, "SECKILL_ORDER_ADDR": order.address,
           **overrides},
    ))
    return Stack(db_url, product, order, activity)


def subprocess_env(db_url: str, **overrides: str) -> dict[str, str]:
    """Environment for a service run as its own process (`python -m ..._svc`)."""
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}",
        "SECKILL_MYSQL_URL": db_url,
        "SECKILL_ADMIN_TOKEN": ADMIN_TOKEN,
        "SECKILL_SHUTDOWN_GRACE": "2",
        "SECKILL_WORKERS": "1",
        **overrides,
    }


def error_details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The google.rpc details of a failed call, by type name."""
    status = rpc_status.from_call(error)
    found: dict[str, object] = {}
    if status is None:
        return found
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ResourceInfo,
                     error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo,
                     error_details_pb2.QuotaFailure):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


class ServiceProcess:
    """A service run as its own process (`python -m <module>`), its log kept in a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 30.0) -> None:
        """Starts the process and returns once its "listening" log line names the port."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, cwd=REPO, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        log = self.log_path.open("ab")
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    log.close()
                    raise RuntimeError(f"{self.module} exited; see {self.log_path}")
                log.write(line)
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("message") == "listening":
                        self.port = int(record["port"])
                        break
        self._drain = asyncio.create_task(self._copy(self.process.stdout, log))
        await wait_serving(self.address, timeout_s)

    @staticmethod
    async def _copy(stream: asyncio.StreamReader, log) -> None:  # type: ignore[no-untyped-def]
        try:
            while line := await stream.readline():
                log.write(line)
                log.flush()
        finally:
            log.close()

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        async with asyncio.timeout(timeout_s):
            code = await self.process.wait()
            if self._drain:
                await self._drain
        return code


async def wait_serving(address: str, timeout_s: float = 30.0) -> None:
    """Waits, through the gRPC health protocol's Watch stream, until `address` is SERVING."""
    async with asyncio.timeout(timeout_s):
        await health_wait(address, "", {})
