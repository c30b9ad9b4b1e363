"""A flash sale against the running services, end to end, with its invariants checked.

    python -m seckill_cli.demo [--users 500] [--stock 100] [--concurrency 200]

Creates a product and an activity that is already open, lets every simulated user send two
Seckill calls at once (an impatient double click), then checks through the public API that
orders placed == stock sold and that no user holds two orders. Reads the addresses and the
admin token from the environment (`make run` passes those of the stack `make up` started).
Exits 1 if an invariant fails, 2 if the services cannot be used at all.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from seckill_bench.invariants import list_orders
from seckill_common.validation import to_timestamp

CALL_TIMEOUT_S = 30.0


@dataclass
class Targets:
    product: str
    activity: str
    order: str
    token: str

    @classmethod
    def from_env(cls) -> Targets:
        token = os.environ.get("SECKILL_ADMIN_TOKEN", "")
        if not token:
            raise SystemExit(
                "SECKILL_ADMIN_TOKEN is not set: run `make run`, or `. .run/stack.env` first"
            )
        return cls(
            product=os.environ.get("SECKILL_PRODUCT_ADDR") or "127.0.0.1:50051",
            activity=os.environ.get("SECKILL_ACTIVITY_ADDR") or "127.0.0.1:50052",
            order=os.environ.get("SECKILL_ORDER_ADDR") or "127.0.0.1:50053",
            token=token,
        )


@dataclass
class Tally:
    """How the Seckill calls were answered."""

    ok_users: list[str] = field(default_factory=list)
    duplicates: int = 0
    sold_out: int = 0
    other: Counter[str] = field(default_factory=Counter)

    @property
    def orders(self) -> int:
        return len(self.ok_users)


def error_reason(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason carried in the rich status, or "" without one."""
    status = rpc_status.from_call(exc)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def buy(stub: activity_pb2_grpc.ActivityServiceStub, activity_id: int, user: str,
              limit: asyncio.Semaphore, tally: Tally) -> None:
    async with limit:
        try:
            await stub.Seckill(
                activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            reason = error_reason(exc)
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                tally.duplicates += 1
            elif exc.code() == grpc.StatusCode.FAILED_PRECONDITION and reason == "SOLD_OUT":
                tally.sold_out += 1
            else:
                tally.other[f"{exc.code().name} {reason}".strip()] += 1
        else:
            tally.ok_users.append(user)


async def user_session(stub: activity_pb2_grpc.ActivityServiceStub, activity_id: int,
                       user: str, limit: asyncio.Semaphore, tally: Tally) -> None:
    # Both clicks are in flight together: the service must turn one of them away.
    await asyncio.gather(*(buy(stub, activity_id, user, limit, tally) for _ in range(2)))


def check(invariants: list[tuple[str, bool]], name: str, holds: bool) -> None:
    invariants.append((name, holds))


async def run(targets: Targets, users: int, stock: int, concurrency: int) -> int:
    admin = [("authorization", f"Bearer {targets.token}")]
    async with (
        grpc.aio.insecure_channel(targets.product) as product_channel,
        grpc.aio.insecure_channel(targets.activity) as activity_channel,
    ):
        products = product_pb2_grpc.ProductServiceStub(product_channel)
        activities = activity_pb2_grpc.ActivityServiceStub(activity_channel)

        now = dt.datetime.now(dt.UTC)
        product = await products.CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name=f"Demo phone {time.strftime('%H:%M:%S')}",
                description="Sold by seckill_cli.demo", price_cents=99_900, stock=stock,
            )),
            metadata=admin, timeout=CALL_TIMEOUT_S,
        )
        activity = await activities.CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name=f"Flash sale of product {product.id}",
                # Opened a second ago, so the sale is on by the database's clock too.
                start_time=to_timestamp(now - dt.timedelta(seconds=1)),
                end_time=to_timestamp(now + dt.timedelta(hours=1)),
            )),
            metadata=admin, timeout=CALL_TIMEOUT_S,
        )
        print(f"product {product.id} with stock {stock}; activity {activity.id}; "
              f"{users} users x 2 concurrent Seckill calls (at most {concurrency} in flight)")

        tally = Tally()
        limit = asyncio.Semaphore(concurrency)
        started = time.perf_counter()
        await asyncio.gather(*(
            user_session(activities, activity.id, f"user-{i:05d}", limit, tally)
            for i in range(1, users + 1)
        ))
        elapsed = time.perf_counter() - started

        stock_left = (await products.GetProduct(
            product_pb2.GetProductRequest(id=product.id), timeout=CALL_TIMEOUT_S)).stock
        listed = await list_orders(targets.order, activity.id)

    per_user = Counter(order.user_id for order in listed)
    print(f"\n{2 * users} Seckill calls in {elapsed:.2f}s ({2 * users / elapsed:.0f}/s)")
    for label, value in [
        ("orders placed (OK)", tally.orders),
        ("stock left", f"{stock_left} of {stock}"),
        ("duplicates refused (ALREADY_EXISTS)", tally.duplicates),
        ("sold out refused (SOLD_OUT)", tally.sold_out),
        ("other errors", sum(tally.other.values())),
        *((f"  {what}", n) for what, n in tally.other.most_common()),
        ("orders listed by OrderService", len(listed)),
    ]:
        print(f"  {label + ':':<37} {value}")

    invariants: list[tuple[str, bool]] = []
    check(invariants, "orders listed == OK answers", len(listed) == tally.orders)
    check(invariants, "orders listed == stock sold", len(listed) == stock - stock_left)
    check(invariants, "no user holds two orders", all(n == 1 for n in per_user.values()))
    check(invariants, "the listed buyers are those answered OK",
          sorted(per_user) == sorted(tally.ok_users))
    check(invariants, "no user was answered OK twice", len(set(tally.ok_users)) == tally.orders)
    check(invariants, "stock never negative", stock_left >= 0)
    # SOLD_OUT is only answered once stock reached 0, and the demo never gives any back.
    check(invariants, "SOLD_OUT only once the stock was gone",
          tally.sold_out == 0 or stock_left == 0)
    print("\ninvariants:")
    for name, holds in invariants:
        print(f"  [{'ok' if holds else 'FAILED'}] {name}")

    print_next_steps(targets, activity.id, product.id)
    failed = [name for name, holds in invariants if not holds]
    if failed:
        print(f"\ndemo: {len(failed)} invariant(s) FAILED: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def print_next_steps(targets: Targets, activity_id: int, product_id: int) -> None:
    svc = "seckill.v1"
    restock = json.dumps({"product": {"id": product_id, "stock": 10},
                          "update_mask": {"paths": ["stock"]}})
    print(f"""
admin token: {targets.token}

Try the services with grpcurl (.venv/bin/grpcurl; the servers offer reflection):
  export TOKEN='{targets.token}'
  grpcurl -plaintext {targets.activity} list
  grpcurl -plaintext -d '{{"id": {activity_id}}}' \\
      {targets.activity} {svc}.ActivityService/GetActivity
  # an admin call: put 10 units back on sale (grpcurl wants a FieldMask as an object)
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" \\
      -d '{restock}' \\
      {targets.product} {svc}.ProductService/UpdateProduct
  grpcurl -plaintext -d '{{"activity_id": {activity_id}, "user_id": "alice"}}' \\
      {targets.activity} {svc}.ActivityService/Seckill
  grpcurl -plaintext -d '{{"activity_id": {activity_id}, "page_size": 5}}' \\
      {targets.order} {svc}.OrderService/ListOrders
  grpcurl -plaintext -d '{{"service": "{svc}.ProductService"}}' \\
      {targets.product} grpc.health.v1.Health/Check

Stop everything with: make down""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seckill_cli.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--users", type=int, default=500, help="simulated users (default 500)")
    parser.add_argument("--stock", type=int, default=100, help="units on sale (default 100)")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="Seckill calls in flight at most (default 200)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.stock < 0 or args.concurrency < 1:
        parser.error("--users and --concurrency must be >= 1, --stock >= 0")
    targets = Targets.from_env()
    try:
        return asyncio.run(run(targets, args.users, args.stock, args.concurrency))
    except grpc.aio.AioRpcError as exc:
        # Setup or verification failed: nothing to check, say why in one line.
        hint = ""
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = " (is the stack up? `make up`, then see .run/logs/)"
        print(f"demo: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
