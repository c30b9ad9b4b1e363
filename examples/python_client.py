"""A flash sale through the generated stubs: create a product and an activity (admin), buy as a
user, read ALREADY_EXISTS and SOLD_OUT from the google.rpc ErrorInfo, list the orders.

    . .run/stack.env && python examples/python_client.py [--user-token "$(seckill-token alice)"]

The token is needed only when the services run with SECKILL_USER_TOKEN_SECRET.
"""

import argparse
import asyncio
import os
import random
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

Metadata = tuple[tuple[str, str], ...]


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo among the error's google.rpc.Status details (empty if none)."""
    info, status = error_details_pb2.ErrorInfo(), rpc_status.from_call(err)
    for detail in status.details if status else ():
        if detail.Unpack(info):  # False for other detail types
            break
    return info


class Throttle:
    """Adaptive throttling (Google SRE book): refuse locally with probability
    max(0, (requests - K * accepts) / (requests + 1)) once the server refuses most calls."""

    def __init__(self, k: float = 2.0) -> None:
        self.k, self.requests, self.accepts = k, 0, 0

    def admit(self) -> bool:
        # Only with some history: after one refusal the formula alone would say 1/2.
        p = (max(0.0, (self.requests - self.k * self.accepts) / (self.requests + 1))
             if self.requests >= 20 else 0.0)
        self.requests += 1
        return random.random() >= p

    def answered(self, err: grpc.aio.AioRpcError | None) -> None:
        if err is None or err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.accepts += 1


THROTTLE = Throttle()


def retry_delay(err: grpc.aio.AioRpcError) -> float | None:
    """RESOURCE_EXHAUSTED with RetryInfo (overloaded, rate limited): nothing was done; the
    delay in seconds to wait before trying again."""
    info, status = error_details_pb2.RetryInfo(), rpc_status.from_call(err)
    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or status is None:
        return None
    for detail in status.details:
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


# The async stub's type lives in the .pyi stubs only, hence the quotes.
async def seckill(activities: "activity_pb2_grpc.ActivityServiceAsyncStub",
                  request: activity_pb2.SeckillRequest, metadata: Metadata,
                  tries: int = 4) -> activity_pb2.SeckillResponse:
    """Seckill, tried again after an overload refusal's RetryInfo delay (doubled per try, with
    jitter so that many clients do not come back at once); a Seckill is always safe to retry."""
    for attempt in range(tries):
        if not THROTTLE.admit():
            await asyncio.sleep(0.1 * (0.5 + random.random()))
            continue
        try:
            reply = await activities.Seckill(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as err:
            THROTTLE.answered(err)
            delay = retry_delay(err)
            if delay is None or attempt == tries - 1:
                raise
            await asyncio.sleep(delay * 2 ** attempt * (0.5 + random.random()))
        else:
            THROTTLE.answered(None)
            return reply
    return await activities.Seckill(request, metadata=metadata, timeout=5)


async def buy(activities: "activity_pb2_grpc.ActivityServiceAsyncStub", activity_id: int, user: str,
              metadata: Metadata) -> None:
    request = activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user)
    try:
        reply = await seckill(activities, request, metadata)
        print(f"{user}: order {reply.order.id}")
    except grpc.aio.AioRpcError as err:
        # ALREADY_EXISTS (ALREADY_PURCHASED, with the order_id) and FAILED_PRECONDITION (SOLD_OUT,
        # NOT_STARTED, ENDED) are answers; others, e.g. UNAVAILABLE, are not handled here.
        if err.code() not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION):
            raise
        info = error_info(err)
        held = f", order {info.metadata['order_id']}" if "order_id" in info.metadata else ""
        print(f"{user}: {err.code().name} {info.reason}{held}")


async def main(args: argparse.Namespace) -> None:
    admin: Metadata = (("authorization", f"Bearer {args.admin_token}"),)
    user: Metadata = (("authorization", f"Bearer {args.user_token}"),) if args.user_token else ()
    async with (grpc.aio.insecure_channel(args.product_addr) as product_channel,
                grpc.aio.insecure_channel(args.activity_addr) as activity_channel,
                grpc.aio.insecure_channel(args.order_addr) as order_channel):
        products = product_pb2_grpc.ProductServiceStub(product_channel)
        activities = activity_pb2_grpc.ActivityServiceStub(activity_channel)
        orders = order_pb2_grpc.OrderServiceStub(order_channel)

        product = await products.CreateProduct(product_pb2.CreateProductRequest(
            product=product_pb2.Product(name="Tea", price_cents=350, stock=1)),
            metadata=admin, timeout=5)
        print(f"product {product.id}: {product.name}, stock {product.stock}")
        now = int(time.time())
        activity = await activities.CreateActivity(activity_pb2.CreateActivityRequest(
            activity=activity_pb2.Activity(product_id=product.id, name="Tea rush",
                                           start_time=Timestamp(seconds=now - 60),
                                           end_time=Timestamp(seconds=now + 3600))),
            metadata=admin, timeout=5)
        print(f"activity {activity.id}: {activity.name}")

        await buy(activities, activity.id, args.user, user)  # the one unit
        await buy(activities, activity.id, args.user, user)  # a retry: ALREADY_EXISTS
        # Someone else is too late (the admin token may buy for any user).
        await buy(activities, activity.id, f"{args.user}-friend", admin)

        page = await orders.ListOrders(order_pb2.ListOrdersRequest(activity_id=activity.id),
                                       metadata=user, timeout=5)
        print(f"orders of activity {activity.id}:",
              ", ".join(f"{o.id} ({o.user_id})" for o in page.orders))


if __name__ == "__main__":
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for service, port in (("product", 50051), ("activity", 50052), ("order", 50053)):
        parser.add_argument(f"--{service}-addr",
                            default=env(f"SECKILL_{service.upper()}_ADDR", f"127.0.0.1:{port}"))
    parser.add_argument("--admin-token", default=env("SECKILL_ADMIN_TOKEN"),
                        required=not env("SECKILL_ADMIN_TOKEN"))
    parser.add_argument("--user", default="alice", help="the buyer (default alice)")
    parser.add_argument("--user-token", default=env("SECKILL_USER_TOKEN"))
    asyncio.run(main(parser.parse_args()))
