"""When the database goes away: UNAVAILABLE, health NOT_SERVING, and recovery on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import error_details
from tests.helpers.stack import PrivateMariaDB, Stack, create_database, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[PrivateMariaDB]:
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    yield server
    server.stop()


async def health_becomes(stack: Stack, status: int) -> None:
    """Awaits the health Watch stream of every service until each reports `status`."""
    for service in (stack.product, stack.activity, stack.order):
        async with grpc.aio.insecure_channel(service.address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30)
            async for reply in stream:
                if reply.status == status:
                    stream.cancel()
                    break


async def test_database_outage_is_unavailable_and_services_recover(
    own_server: PrivateMariaDB,
) -> None:
    stack = await start_stack(await create_database(own_server.url_base))
    try:
        product = await make_product(stack, stock=5)
        activity = await make_activity(stack, product.id)
        await health_becomes(stack, health_pb2.HealthCheckResponse.SERVING)

        own_server.kill()
        calls: list[Awaitable[object]] = [
            stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id)),
            stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=activity.id, user_id="during-outage")),
            stack.orders.ListOrders(order_pb2.ListOrdersRequest()),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "RetryInfo" in error_details(err.value)
        await health_becomes(stack, health_pb2.HealthCheckResponse.NOT_SERVING)

        own_server.start()  # same port and data dir
        await health_becomes(stack, health_pb2.HealthCheckResponse.SERVING)
        reply = await stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id, user_id="after-outage"))
        assert reply.order.user_id == "after-outage"
        listed = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
            activity_id=activity.id))
        # The call refused during the outage left nothing behind.
        assert [o.user_id for o in listed.orders] == ["after-outage"]
    finally:
        await stack.stop()
