"""A frozen order process holds nothing another sale needs (docs/DESIGN.md, "Locks").

A second order-service process pays and cancels orders of one sale without pause; it is
frozen (SIGSTOP: a GC or VM pause, a debugger) for a while, then resumed. Meanwhile buyers of
another product, one at a time through the stack's own services, see no call fail and p99 under
1 s: every order change sends its writes in the round trip of its COMMIT, and order events take
no lock that other writers or the events' readers wait for, so a process stopped between two
round trips holds its own sale's rows and nothing another sale needs. The frozen process's
callers get their deadline; once resumed, it pays and cancels again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from seckill.v1 import activity_pb2, order_pb2, order_pb2_grpc

from seckill_stack.nats import NatsServer
from tests.helpers.factories import make_activity, make_product
from tests.helpers.processes import start_processes
from tests.helpers.stack import ADMIN, Stack, start_stack

pytestmark = pytest.mark.slow

FREEZES = 3  # each freeze lands somewhere in a change: between two round trips, or not
FROZEN_S = 1.5
CHANGE_DEADLINE_S = 2.0  # the frozen process's callers: answered (DEADLINE_EXCEEDED) by then
BUY_DEADLINE_S = 3.0
RESUME_BOUND_S = 5.0  # pays and cancels succeed again within this after SIGCONT


@dataclass
class Changes:
    """The second process's pays and cancels: (start, seconds, code) of each; `recovered`
    set by the first OK that started after `resumed_at`."""

    outcomes: list[tuple[float, float, grpc.StatusCode]] = field(default_factory=list)
    resumed_at: float = float("inf")
    recovered: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, started: float, code: grpc.StatusCode) -> None:
        self.outcomes.append((started, time.monotonic() - started, code))
        if code == grpc.StatusCode.OK and started >= self.resumed_at:
            self.recovered.set()


async def _changer(orders: order_pb2_grpc.OrderServiceAsyncStub, stack: Stack, activity_id: int,
                   stop: asyncio.Event, changes: Changes, name: str) -> None:
    """Buys an order through the stack, then pays or cancels it through the second process,
    over and over."""
    for i in itertools.count():
        if stop.is_set():
            return
        order = (await stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity_id, user_id=f"{name}-{i}"))).order
        started = time.monotonic()
        try:
            if i % 2:
                await orders.PayOrder(order_pb2.PayOrderRequest(id=order.id), metadata=ADMIN,
                                      timeout=CHANGE_DEADLINE_S)
            else:
                await orders.CancelOrder(order_pb2.CancelOrderRequest(id=order.id),
                                         metadata=ADMIN, timeout=CHANGE_DEADLINE_S)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        changes.add(started, code)


async def test_a_frozen_order_process_stalls_no_other_sale(
        db_url: str, nats_server: NatsServer, tmp_path: Path) -> None:
    # The relay to NATS reads the events' feed: a reader that once made every writer queue
    # behind a frozen writer.
    stack = await start_stack(db_url, SECKILL_EVENTS_NATS_URL=nats_server.url)
    try:
        async with start_processes("order", 1, db_url, tmp_path,
                                   SECKILL_EVENTS_NATS_URL=nats_server.url) as extra:
            changed = await make_product(stack, stock=100_000)
            changing = await make_activity(stack, changed.id)
            other = await make_product(stack, stock=100_000)
            buying = await make_activity(stack, other.id)
            second, orders = extra[0], extra.orders[0]
            stop = asyncio.Event()
            changes = Changes()
            changers = [asyncio.create_task(_changer(orders, stack, changing.id, stop, changes,
                                                     f"changer{n}")) for n in range(4)]
            buys: list[tuple[float, float]] = []
            users = itertools.count()

            async def buy_for(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    started = time.monotonic()
                    await stack.activities.Seckill(activity_pb2.SeckillRequest(
                        activity_id=buying.id, user_id=f"buyer-{next(users)}"),
                        timeout=BUY_DEADLINE_S)  # a failure fails the test
                    buys.append((started, time.monotonic() - started))

            frozen: list[tuple[float, float]] = []
            assert second.pid is not None
            for _ in range(FREEZES):
                await buy_for(0.5)  # changes under way before the freeze
                os.kill(second.pid, signal.SIGSTOP)
                frozen_at = time.monotonic()
                try:
                    await buy_for(FROZEN_S)
                finally:
                    os.kill(second.pid, signal.SIGCONT)
                changes.resumed_at = time.monotonic()
                frozen.append((frozen_at, changes.resumed_at))
            await buy_for(1.0)
            # Once resumed, the second process pays and cancels again within the bound.
            await asyncio.wait_for(changes.recovered.wait(), RESUME_BOUND_S)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*changers), BUY_DEADLINE_S + CHANGE_DEADLINE_S)

            during = sorted(seconds for start, seconds in buys
                            if any(since <= start < until for since, until in frozen))
            assert len(during) > 10, during
            p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
            assert p99 <= 1.0, (p99, statistics.median(during))
            # The frozen process's callers were answered by their deadline, not left hanging.
            assert all(seconds <= CHANGE_DEADLINE_S + 1.0 for _, seconds, _ in changes.outcomes)
            assert {code for *_, code in changes.outcomes} <= {
                grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, changes.outcomes
    finally:
        await stack.stop()
