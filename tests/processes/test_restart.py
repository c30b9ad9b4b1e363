"""Acknowledged orders survive a restart of every service and of the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from tests.helpers.factories import timestamp
from tests.helpers.stack import (
    ADMIN,
    PrivateMariaDB,
    ServiceProcess,
    create_database,
    free_port,
    subprocess_env,
)

pytestmark = pytest.mark.slow

STOCK = 40
BUYERS = 60


async def start_all(db_url: str, ports: dict[str, int], logs: Path) -> list[ServiceProcess]:
    env = subprocess_env(
        db_url,
        SECKILL_PRODUCT_ADDR=f"127.0.0.1:{ports['product']}",
        SECKILL_ACTIVITY_ADDR=f"127.0.0.1:{ports['activity']}",
        SECKILL_ORDER_ADDR=f"127.0.0.1:{ports['order']}",
    )
    services = [ServiceProcess(f"{name}_svc", env, logs / f"{name}.log") for name in ports]
    await asyncio.gather(*(s.start() for s in services))
    return services


async def test_acknowledged_orders_survive_a_full_restart(tmp_path: Path) -> None:
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    ports = {name: free_port() for name in ("product", "order", "activity")}
    services: list[ServiceProcess] = []
    try:
        db_url = await create_database(server.url_base)
        services = await start_all(db_url, ports, tmp_path)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['product']}") as pc, \
                grpc.aio.insecure_channel(f"127.0.0.1:{ports['activity']}") as ac:
            product = await product_pb2_grpc.ProductServiceStub(pc).CreateProduct(
                product_pb2.CreateProductRequest(product=product_pb2.Product(
                    name="Console", price_cents=1, stock=STOCK)), metadata=ADMIN)
            activities = activity_pb2_grpc.ActivityServiceStub(ac)
            activity = await activities.CreateActivity(
                activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                    product_id=product.id, name="sale", start_time=timestamp(-1),
                    end_time=timestamp(3600))), metadata=ADMIN)

            async def attempt(n: int) -> int | None:
                try:
                    reply = await activities.Seckill(activity_pb2.SeckillRequest(
                        activity_id=activity.id, user_id=f"u{n}"))
                    return reply.order.id
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                    return None

            acknowledged = {i for i in await asyncio.gather(*map(attempt, range(BUYERS))) if i}
        assert len(acknowledged) == STOCK

        # Stop every service, then kill the database outright: only what was committed
        # (and flushed at commit) may come back.
        assert await asyncio.gather(*(s.stop() for s in services)) == [0, 0, 0]
        server.kill()
        server.start()
        services = await start_all(db_url, ports, tmp_path)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['order']}") as oc, \
                grpc.aio.insecure_channel(f"127.0.0.1:{ports['product']}") as pc:
            orders = order_pb2_grpc.OrderServiceStub(oc)
            for order_id in acknowledged:
                order = await orders.GetOrder(order_pb2.GetOrderRequest(id=order_id))
                assert order.activity_id == activity.id
            listed = await orders.ListOrders(order_pb2.ListOrdersRequest(
                activity_id=activity.id, page_size=1000))
            assert {o.id for o in listed.orders} == acknowledged
            product = await product_pb2_grpc.ProductServiceStub(pc).GetProduct(
                product_pb2.GetProductRequest(id=product.id))
            assert product.stock == 0
    finally:
        await asyncio.gather(*(s.stop() for s in services), return_exceptions=True)
        server.stop()
