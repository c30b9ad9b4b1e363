"""Products, activities and timestamps for the tests, made through the API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.stack import ADMIN, Stack


def timestamp(delta_s: float) -> timestamp_pb2.Timestamp:
    """Now plus `delta_s` seconds, as a Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta_s))
    return ts


async def make_product(stack: Stack, stock: int = 10, **fields: Any) -> product_pb2.Product:
    product = product_pb2.Product(name="Phone", description="A phone", price_cents=9900,
                                  stock=stock, **fields)
    return await stack.products.CreateProduct(
        product_pb2.CreateProductRequest(product=product), metadata=ADMIN)


async def make_activity(stack: Stack, product_id: int, start_s: float = -1,
                        end_s: float = 3600, per_user_limit: int = 0,
                        waiting_room: activity_pb2.WaitingRoom | None = None,
                        ) -> activity_pb2.Activity:
    """An activity; `per_user_limit` 0 leaves it unset (the service's default, 1);
    `waiting_room` None: none."""
    activity = activity_pb2.Activity(product_id=product_id, name="Flash sale",
                                     start_time=timestamp(start_s), end_time=timestamp(end_s),
                                     per_user_limit=per_user_limit, waiting_room=waiting_room)
    return await stack.activities.CreateActivity(
        activity_pb2.CreateActivityRequest(activity=activity), metadata=ADMIN)


async def buy(stack: Stack, activity_id: int, user_id: str) -> order_pb2.Order:
    """A won Seckill's order (fails the test on any other answer)."""
    response = await stack.activities.Seckill(
        activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user_id))
    return response.order
