"""The seckill rules through real servers: win, repeat, sold out, window, cancel."""

from __future__ import annotations

import grpc
import pytest
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import error_details
from tests.helpers.stack import ADMIN, Stack, query


async def buy(stack: Stack, activity_id: int, user_id: str) -> order_pb2.Order:
    response = await stack.activities.Seckill(
        activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user_id))
    return response.order


async def test_seckill_places_an_order_and_takes_one_unit(stack: Stack, sale) -> None:
    product, activity = sale
    order = await buy(stack, activity.id, "alice")
    assert (order.activity_id, order.product_id, order.user_id) == (
        activity.id, product.id, "alice")
    assert order.id > 0 and order.create_time.seconds > 0
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.stock == product.stock - 1
    assert await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=order.id)) == order
    rows = await query(stack.db_url, "SELECT user_id FROM orders WHERE id = %s", (order.id,))
    assert rows == [(b"alice",)]


async def test_repeat_seckill_is_already_exists_with_the_order_id(stack: Stack, sale) -> None:
    _, activity = sale
    order = await buy(stack, activity.id, "bob")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await buy(stack, activity.id, "bob")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_details(err.value)["ErrorInfo"]
    assert info.reason == "ALREADY_PURCHASED"
    assert info.metadata["order_id"] == str(order.id)
    # User ids compare exactly: a trailing space is another user.
    assert (await buy(stack, activity.id, "bob ")).id != order.id


async def test_cancelled_unit_goes_back_to_stock_and_another_user_buys_it(
    stack: Stack,
) -> None:
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    order = await buy(stack, activity.id, "alice")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await buy(stack, activity.id, "bob")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(err.value)["ErrorInfo"].reason == "SOLD_OUT"

    await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order.id), metadata=ADMIN)
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.stock == 1
    # The order is kept, as CANCELLED.
    assert await query(stack.db_url, "SELECT state FROM orders WHERE id = %s",
                       (order.id,)) == [(order_pb2.CANCELLED,)]

    bobs = await buy(stack, activity.id, "bob")
    assert bobs.user_id == "bob"
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.stock == 0
    # Alice may buy again too: her order was cancelled, but the last unit is gone.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await buy(stack, activity.id, "alice")
    assert error_details(err.value)["ErrorInfo"].reason == "SOLD_OUT"
