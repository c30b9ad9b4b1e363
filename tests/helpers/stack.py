"""The stack under test: a private MariaDB server and the three services in-process on port 0; the
same launcher as `make up` (seckill_stack) for a service run as its own process."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomysql
import grpc
from seckill.v1 import (
    activity_pb2_grpc,
    order_events_pb2_grpc,
    order_pb2_grpc,
    product_pb2_grpc,
)

from activity_svc.server import DEFINITION as ACTIVITY
from order_svc.server import DEFINITION as ORDER
from product_svc.server import DEFINITION as PRODUCT
from seckill_common.config import Settings
from seckill_common.runtime.server import RunningService, start_service
from seckill_stack import health
from seckill_stack.mariadb import MariaDB
from seckill_stack.services import REPO, ServiceProcess, free_port, python_env

__all__ = ["REPO", "ServiceProcess", "free_port"]  # re-exported for the tests

ADMIN_TOKEN = "test-admin-token"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


class PrivateMariaDB(MariaDB):
    """A mariadbd of the tests' own on a free port: its data dir, socket and log under `root`;
    killable and restartable. As root, a missing mariadb-server is installed through apt."""

    def __init__(self, root: Path, max_connections: int = 1000,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(root, free_port(), max_connections, extra_args)


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


def connect(url: str, autocommit: bool = False) -> Any:
    """A plain aiomysql connection (a session of the test's own) to the database at `url`;
    awaitable, and an async context manager."""
    base, name = url.rsplit("/", 1)
    host, port = base.rsplit("@", 1)[1].split(":")
    return aiomysql.connect(host=host, port=int(port), user="root", db=name,
                            autocommit=autocommit)


async def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Reads rows straight from the database, to check what the API claims."""
    conn = await connect(url, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())
    finally:
        conn.close()


# Every stored event, sequenced (order_events) or waiting for the sequencer (the inbox): the
# durable outbox, as a test checks it right after the transactions that wrote it.
STORED_EVENTS = ("(SELECT event_id, type, order_id FROM order_events"
                 " UNION ALL SELECT event_id, type, order_id FROM order_event_inbox)")


def settings_for(db_url: str, **overrides: str) -> Settings:
    # Every setting that decides an answer (commit mode, batching, rate limits, timeouts of
    # calls) keeps its shipped default. These differ only for the harness: any free port; a
    # test's stack fails, stops and notices a database outage within the test's time; and an
    # in-process service is one process (workers fork).
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
        self.events = order_events_pb2_grpc.OrderEventServiceStub(self.channels[2])

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
    """Environment for a service run as its own process (`python -m ..._svc`): the shipped
    defaults but a short shutdown grace and one worker (tests that want more say so)."""
    return {
        **python_env(dict(os.environ)),
        "SECKILL_MYSQL_URL": db_url,
        "SECKILL_ADMIN_TOKEN": ADMIN_TOKEN,
        "SECKILL_SHUTDOWN_GRACE": "2",
        "SECKILL_WORKERS": "1",
        **overrides,
    }


async def until_serving(address: str, timeout_s: float = 30.0) -> None:
    """Waits, through the gRPC health protocol's Watch stream, until `address` is SERVING."""
    async with asyncio.timeout(timeout_s):
        await health.wait_serving(address, "", {})
