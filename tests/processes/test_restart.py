"""Acknowledged orders survive a restart of every service and of the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from seckill.v1 import (
    activity_pb2,
    order_pb2,
    product_pb2,
)

from tests.helpers.factories import timestamp
from tests.helpers.processes import start_processes
from tests.helpers.stack import (
    ADMIN,
    PrivateMariaDB,
    create_database,
    free_port,
)

pytestmark = pytest.mark.slow

STOCK = 40
BUYERS = 60


async def test_acknowledged_orders_survive_a_full_restart(tmp_path: Path) -> None:
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    # Fixed ports: the restarted services keep their addresses.
    ports = {name: free_port() for name in ("product", "order", "activity")}
    addresses = {f"SECKILL_{name.upper()}_ADDR": f"127.0.0.1:{port}"
                 for name, port in ports.items()}
    try:
        db_url = await create_database(server.url_base)
        async with start_processes("product", 1, db_url, tmp_path, ports=[ports["product"]],
                                   settings=addresses) as products, \
                start_processes("order", 1, db_url, tmp_path, ports=[ports["order"]],
                                settings=addresses) as orders, \
                start_processes("activity", 1, db_url, tmp_path, ports=[ports["activity"]],
                                settings=addresses) as activities:
            services = (products, orders, activities)
            product = await products.products[0].CreateProduct(
                product_pb2.CreateProductRequest(product=product_pb2.Product(
                    name="Console", price_cents=1, stock=STOCK)), metadata=ADMIN)
            activity = await activities.activities[0].CreateActivity(
                activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                    product_id=product.id, name="sale", start_time=timestamp(-1),
                    end_time=timestamp(3600))), metadata=ADMIN)

            async def attempt(n: int) -> int | None:
                try:
                    reply = await activities.activities[0].Seckill(
                        activity_pb2.SeckillRequest(activity_id=activity.id, user_id=f"u{n}"))
                    return reply.order.id
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                    return None

            acknowledged = {i for i in await asyncio.gather(*map(attempt, range(BUYERS))) if i}
            assert len(acknowledged) == STOCK

            # Stop every service, then kill the database outright: only what was committed
            # (and flushed at commit) may come back.
            assert await asyncio.gather(*(s.stop(0) for s in services)) == [0, 0, 0]
            server.kill()
            server.start()
            await asyncio.gather(*(s[0].start() for s in services))

            for order_id in acknowledged:
                order = await orders.orders[0].GetOrder(order_pb2.GetOrderRequest(id=order_id))
                assert order.activity_id == activity.id
            listed = await orders.orders[0].ListOrders(order_pb2.ListOrdersRequest(
                activity_id=activity.id, page_size=1000))
            assert {o.id for o in listed.orders} == acknowledged
            product = await products.products[0].GetProduct(
                product_pb2.GetProductRequest(id=product.id))
            assert product.stock == 0
    finally:
        server.stop()
