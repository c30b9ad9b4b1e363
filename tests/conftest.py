"""Fixtures only: one private MariaDB per test session, a fresh database and stack per test.

What the tests share besides fixtures (factories, polling, harnesses) is in tests/helpers/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from seckill.v1 import activity_pb2, activity_pb2_grpc, product_pb2

from seckill_stack.nats import NatsServer
from tests.helpers.factories import make_activity, make_product
from tests.helpers.processes import start_processes
from tests.helpers.stack import (
    PrivateMariaDB,
    Stack,
    create_database,
    free_port,
    start_stack,
)


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the tests' MariaDB: SECKILL_TEST_MYSQL_URL, or a private server."""
    if os.environ.get("SECKILL_TEST_MYSQL_URL"):
        yield os.environ["SECKILL_TEST_MYSQL_URL"].rstrip("/")
        return
    server = PrivateMariaDB(tmp_path_factory.mktemp("mariadb"))
    server.install()
    server.start()
    yield server.url_base
    server.stop()


@pytest.fixture
async def db_url(mariadb: str) -> str:
    return await create_database(mariadb)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server with JetStream on a free port (never a system one on 4222)."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def stack(db_url: str) -> AsyncIterator[Stack]:
    running = await start_stack(db_url)
    yield running
    await running.stop()


@pytest.fixture
async def sale(stack: Stack) -> tuple[product_pb2.Product, activity_pb2.Activity]:
    """A product with 10 units and an activity selling it now."""
    product = await make_product(stack, stock=10)
    return product, await make_activity(stack, product.id)


@pytest.fixture
async def second_activity(stack: Stack, tmp_path: Path
                          ) -> AsyncIterator[activity_pb2_grpc.ActivityServiceAsyncStub]:
    """Another activity service process on the stack's database (shipped defaults)."""
    async with start_processes("activity", 1, stack.db_url, tmp_path, peers=stack) as extra:
        yield extra.activities[0]
