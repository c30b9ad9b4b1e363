"""Every Seckill answer is one the seckill transaction could have given during the call.

With the shipped defaults, no sleeps and no retries: a unit given back (a cancel, a restock)
goes to the very next buyer, and a window's refusal wins over the stock's, whichever process
or service made the change.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_pb2,
    product_pb2,
)

from tests.helpers.factories import make_activity, make_product, timestamp
from tests.helpers.rpc import error_details
from tests.helpers.stack import ADMIN, Stack

if TYPE_CHECKING:  # the stub for an aio channel is a type of the .pyi only
    Buy = activity_pb2_grpc.ActivityServiceAsyncStub


async def answer(stub: Buy, activity_id: int, user: str) -> str:
    """"OK" or the refusal's ErrorInfo reason."""
    try:
        await stub.Seckill(activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user))
    except grpc.aio.AioRpcError as exc:
        return error_details(exc)["ErrorInfo"].reason
    return "OK"


async def order_of(stack: Stack, activity_id: int, user: str) -> int:
    reply = await stack.orders.ListOrders(
        order_pb2.ListOrdersRequest(activity_id=activity_id, user_id=user), metadata=ADMIN)
    [order] = reply.orders
    return order.id


async def restock(stack: Stack, product_id: int, units: int) -> None:
    await stack.products.UpdateProduct(product_pb2.UpdateProductRequest(
        product=product_pb2.Product(id=product_id, stock=units),
        update_mask=field_mask_pb2.FieldMask(paths=["stock"])), metadata=ADMIN)


async def set_window(stub: Buy, activity_id: int, start_s: float, end_s: float) -> None:
    await stub.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=activity_pb2.Activity(id=activity_id, start_time=timestamp(start_s),
                                       end_time=timestamp(end_s)),
        update_mask=field_mask_pb2.FieldMask(paths=["start_time", "end_time"])),
        metadata=ADMIN)


async def cancel_gives_the_unit_to_the_next_buyer(stack: Stack, buyer: Buy) -> None:
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    assert await answer(buyer, activity.id, "first") == "OK"
    assert await answer(buyer, activity.id, "second") == "SOLD_OUT"
    order_id = await order_of(stack, activity.id, "first")
    await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order_id), metadata=ADMIN)
    assert await answer(buyer, activity.id, "third") == "OK"
    assert await answer(buyer, activity.id, "fourth") == "SOLD_OUT"


async def restock_sells_exactly_the_new_units(stack: Stack, buyer: Buy) -> None:
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    assert await answer(buyer, activity.id, "first") == "OK"
    assert await answer(buyer, activity.id, "late") == "SOLD_OUT"
    await restock(stack, product.id, 3)
    answers = [await answer(buyer, activity.id, f"buyer-{n}") for n in range(4)]
    assert answers == ["OK", "OK", "OK", "SOLD_OUT"]
    # Concurrent buyers after a second restock: exactly as many winners as units.
    await restock(stack, product.id, 5)
    together = await asyncio.gather(*(answer(buyer, activity.id, f"crowd-{n}")
                                      for n in range(12)))
    assert sorted(together) == ["OK"] * 5 + ["SOLD_OUT"] * 7


async def window_refusals_come_before_stock(stack: Stack, buyer: Buy, admin: Buy) -> None:
    product = await make_product(stack, stock=1)
    selling = await make_activity(stack, product.id)
    assert await answer(buyer, selling.id, "first") == "OK"
    assert await answer(buyer, selling.id, "second") == "SOLD_OUT"
    ended = await make_activity(stack, product.id, start_s=-7200, end_s=-3600)
    later = await make_activity(stack, product.id, start_s=3600, end_s=7200)
    assert await answer(buyer, ended.id, "third") == "ENDED"
    assert await answer(buyer, later.id, "third") == "NOT_STARTED"
    # A window moved through another process is seen by the very next call.
    await set_window(admin, selling.id, -7200, -3600)
    assert await answer(buyer, selling.id, "fourth") == "ENDED"
    assert await answer(buyer, selling.id, "first") == "ALREADY_PURCHASED"  # holders first
    await restock(stack, product.id, 1)
    await set_window(admin, selling.id, -60, 3600)
    assert await answer(buyer, selling.id, "fourth") == "OK"


async def test_a_cancelled_unit_goes_to_the_very_next_buyer(stack: Stack) -> None:
    await cancel_gives_the_unit_to_the_next_buyer(stack, stack.activities)


async def test_a_restock_of_n_sells_to_the_next_n_buyers(stack: Stack) -> None:
    await restock_sells_exactly_the_new_units(stack, stack.activities)


async def test_an_ended_activity_answers_ended_also_when_sold_out(stack: Stack) -> None:
    await window_refusals_come_before_stock(stack, stack.activities, stack.activities)


@pytest.mark.slow
async def test_exact_answers_when_another_process_changes_things(
    stack: Stack, second_activity: Buy
) -> None:
    # Buyers call the other process; cancels, restocks and window moves go through the
    # order service, the product service and this process's activity service.
    other = second_activity
    await cancel_gives_the_unit_to_the_next_buyer(stack, other)
    await restock_sells_exactly_the_new_units(stack, other)
    await window_refusals_come_before_stock(stack, other, stack.activities)
