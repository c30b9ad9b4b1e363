"""Fixtures: one private MariaDB per test session, a fresh database and stack per test."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from google.protobuf import timestamp_pb2
from seckill.v1 import activity_pb2, product_pb2

from tests.support import ADMIN, PrivateMariaDB, Stack, create_database, start_stack


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
async def stack(db_url: str) -> AsyncIterator[Stack]:
    running = await start_stack(db_url)
    yield running
    await running.stop()


def timestamp(delta_s: float) -> timestamp_pb2.Timestamp:
    """Now plus `delta_s` seconds, as a Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta_s))
    return ts


async def make_product(stack: Stack, stock: int = 10, **fields: object) -> product_pb2.Product:
    product = product_pb2.Product(name="Phone", description="A phone", price_cents=9900,
                                  stock=stock, **fields)
    return await stack.products.CreateProduct(
        product_pb2.CreateProductRequest(product=product), metadata=ADMIN)


async def make_activity(stack: Stack, product_id: int, start_s: float = -1,
                        end_s: float = 3600) -> activity_pb2.Activity:
    activity = activity_pb2.Activity(product_id=product_id, name="Flash sale",
                                     start_time=timestamp(start_s), end_time=timestamp(end_s))
    return await stack.activities.CreateActivity(
        activity_pb2.CreateActivityRequest(activity=activity), metadata=ADMIN)


@pytest.fixture
async def sale(stack: Stack) -> tuple[product_pb2.Product, activity_pb2.Activity]:
    """A product with 10 units and an activity selling it now."""
    product = await make_product(stack, stock=10)
    return product, await make_activity(stack, product.id)
