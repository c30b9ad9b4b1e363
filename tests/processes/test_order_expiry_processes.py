"""Expiry across processes: two activity and two order processes, a 2-second payment window,
restarts in the middle of expiries; stock + active orders = units on sale at every moment."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from seckill.v1 import (
    activity_pb2,
    order_pb2,
    product_pb2,
)

from tests.helpers.factories import timestamp
from tests.helpers.polling import eventually
from tests.helpers.processes import start_processes
from tests.helpers.rpc import error_details
from tests.helpers.stack import ADMIN, free_port, query

pytestmark = pytest.mark.slow

UNITS = 10
WINDOW_S = 2  # the acceptance's window, set on the activity through the API
BOUND_S = 5.0  # the documented expiry bound (two 1 s sweeps) plus slack for a busy machine


class Invariant:
    """Reads stock and active orders in one statement, over and over, until stopped."""

    def __init__(self, db_url: str, product_id: int) -> None:
        self.db_url, self.product_id = db_url, product_id
        self.reads = 0
        self.broken: list[tuple[int, int]] = []
        self._stop = asyncio.Event()

    async def watch(self) -> None:
        while not self._stop.is_set():
            [(stock, active)] = await query(
                self.db_url, "SELECT (SELECT stock FROM products WHERE id = %s),"
                " (SELECT COUNT(*) FROM orders WHERE product_id = %s AND active = 1)",
                (self.product_id, self.product_id))
            self.reads += 1
            if stock + active != UNITS or stock < 0:
                self.broken.append((stock, active))
            await asyncio.sleep(0.02)  # a sampling rate, not a wait for an event

    def stop(self) -> None:
        self._stop.set()


async def states(db_url: str, product_id: int) -> Counter[int]:
    rows = await query(db_url, "SELECT state, COUNT(*) FROM orders WHERE product_id = %s"
                       " GROUP BY state", (product_id,))
    return Counter({int(state): int(n) for state, n in rows})


async def until_no_pending(db_url: str, product_id: int, timeout_s: float) -> None:
    async def none_pending() -> bool:
        return not (await states(db_url, product_id))[order_pb2.PENDING_PAYMENT]

    await eventually(none_pending, "no order pending", timeout_s)


async def test_unpaid_orders_expire_once_across_processes_and_restarts(
        db_url: str, tmp_path: Path) -> None:
    watcher: asyncio.Task[None] | None = None
    # Each activity process calls the product process and an order process of its own; the
    # order processes' ports are fixed: a restarted process keeps its address.
    async with start_processes("product", 1, db_url, tmp_path) as product_svc, \
            start_processes("order", 2, db_url, tmp_path,
                            ports=[free_port(), free_port()]) as order_svcs, \
            start_processes("activity", 1, db_url, tmp_path, name="activity0",
                            SECKILL_PRODUCT_ADDR=product_svc[0].address,
                            SECKILL_ORDER_ADDR=order_svcs[0].address) as activity0, \
            start_processes("activity", 1, db_url, tmp_path, name="activity1",
                            SECKILL_PRODUCT_ADDR=product_svc[0].address,
                            SECKILL_ORDER_ADDR=order_svcs[1].address) as activity1:
        try:
            products = product_svc.products[0]
            activities = [*activity0.activities, *activity1.activities]
            orders = order_svcs.orders
            product = await products.CreateProduct(product_pb2.CreateProductRequest(
                product=product_pb2.Product(name="Console", price_cents=100, stock=UNITS)),
                metadata=ADMIN)
            window = duration_pb2.Duration()
            window.FromSeconds(WINDOW_S)
            activity = await activities[0].CreateActivity(activity_pb2.CreateActivityRequest(
                activity=activity_pb2.Activity(
                    product_id=product.id, name="sale", start_time=timestamp(-1),
                    end_time=timestamp(3600), payment_window=window)), metadata=ADMIN)
            invariant = Invariant(db_url, product.id)
            watcher = asyncio.create_task(invariant.watch())

            async def buy(users: list[str]) -> dict[str, int]:
                """The users' seckills, alternating between the activity processes; the
                winners' order ids."""
                async def one(i: int, user: str) -> tuple[str, int | None]:
                    try:
                        reply = await activities[i % 2].Seckill(activity_pb2.SeckillRequest(
                            activity_id=activity.id, user_id=user))
                        return user, reply.order.id
                    except grpc.aio.AioRpcError as exc:
                        assert error_details(exc)["ErrorInfo"].reason == "SOLD_OUT", exc
                        return user, None

                won = await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
                return {user: order_id for user, order_id in won if order_id}

            # Wave 1: 20 users for 10 units; 4 winners pay, through either order process.
            first = await buy([f"a{i}" for i in range(20)])
            assert len(first) == UNITS
            paid = sorted(first.values())[:4]
            for i, order_id in enumerate(paid):
                await orders[i % 2].PayOrder(order_pb2.PayOrderRequest(id=order_id),
                                             metadata=ADMIN)

            # Both order processes go down before the deadline (one killed, one stopped) and
            # come back after it: the due orders wait for them, then expire once.
            await order_svcs.stop(0, signal.SIGKILL)
            assert await order_svcs[1].stop() == 0
            await asyncio.sleep(WINDOW_S + 0.5)  # let the deadline pass with nobody sweeping
            assert (await states(db_url, product.id))[order_pb2.PENDING_PAYMENT] == UNITS - 4
            await asyncio.gather(*(s.start() for s in order_svcs.processes))
            # BOUND_S and the restart's start-up.
            await until_no_pending(db_url, product.id, BOUND_S + 30)
            assert await states(db_url, product.id) == Counter({
                order_pb2.PAID: 4, order_pb2.EXPIRED: UNITS - 4})

            # Wave 2: other users buy the 6 units given back, through both activity processes
            # (each saw the product sold out; the units came back from another process).
            second = await buy([f"b{i}" for i in range(10)])
            assert len(second) == UNITS - 4
            # They do not pay; one order process is killed while their orders expire.
            async def expiring() -> bool:
                return (await states(db_url, product.id))[order_pb2.EXPIRED] > UNITS - 4

            await eventually(expiring, "orders expiring", WINDOW_S + BOUND_S)
            await order_svcs.stop(0, signal.SIGKILL)
            await until_no_pending(db_url, product.id, BOUND_S)
            await order_svcs[0].start()
            assert await states(db_url, product.id) == Counter({
                order_pb2.PAID: 4, order_pb2.EXPIRED: 2 * (UNITS - 4)})
            # The paid orders stayed paid; every expired unit came back exactly once.
            for order_id in paid:
                got = await orders[1].GetOrder(order_pb2.GetOrderRequest(id=order_id))
                assert got.state == order_pb2.PAID
            left = await products.GetProduct(product_pb2.GetProductRequest(id=product.id))
            assert left.stock == UNITS - 4
        finally:
            if watcher is not None:
                invariant.stop()
                await watcher
    assert invariant.reads > 50 and not invariant.broken, invariant.broken[:5]
