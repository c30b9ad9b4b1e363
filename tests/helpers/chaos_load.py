"""The chaos run's load (tests/helpers/chaos.py): buyers asking for 1-3 units, some coming
back, and the order changes of the orders won (pay, cancel, or let expire), every call
recorded in the run's history with its answer and times."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial

import grpc
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
)

from seckill_common.client.peers import CHANNEL_OPTIONS
from tests.helpers.chaos import (
    BUYERS,
    CALL_DEADLINE_S,
    MAX_QUANTITY,
    PAYMENT_WINDOW_S,
    RESUME_BOUND_S,
    SECKILL_DEFINITE,
    THINK_S,
    Call,
    History,
)
from tests.helpers.rpc import error_details
from tests.helpers.stack import (
    ADMIN,
)


class Load:
    """Buyers and the fates of their orders, every call recorded in `history.calls`."""

    def __init__(self, addrs: dict[str, str], activity_id: int, history: History) -> None:
        self.activity_id = activity_id
        self.history = history
        self.rng = random.Random(history.seed)
        self.users = 0
        self.returning: list[str] = []
        self.fates: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        self._definite = asyncio.Event()  # set by each definite Seckill answer
        self.channels = [grpc.aio.insecure_channel(addrs[n], options=CHANNEL_OPTIONS)
                         for n in ("activity", "order")]
        self.activities = activity_pb2_grpc.ActivityServiceStub(self.channels[0])
        self.orders = order_pb2_grpc.OrderServiceStub(self.channels[1])

    async def _call(self, rpc: str, user: str, quantity: int,
                    call: Callable[[float], Awaitable[object]], order_id: int = 0) -> Call:
        started = time.monotonic()
        try:
            reply = await call(CALL_DEADLINE_S)
            code, reason = "OK", ""
            if isinstance(reply, activity_pb2.SeckillResponse):
                order_id, quantity = reply.order.id, reply.order.quantity
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            info = error_details(exc).get("ErrorInfo")
            reason = info.reason if info else (exc.details() or "")[:80]
            if info and rpc == "Seckill":
                order_id = int(info.metadata.get("order_id", 0))
        recorded = Call(rpc, user, started, time.monotonic(), code, reason, order_id, quantity,
                        CALL_DEADLINE_S)
        self.history.calls.append(recorded)
        if rpc == "Seckill" and code in SECKILL_DEFINITE:
            self._definite.set()
        return recorded

    async def resumed(self, since: float) -> None:
        """Returns once a Seckill started at `since` or later was answered definitely, or
        RESUME_BOUND_S after `since` (the checker then names the stall)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, since + RESUME_BOUND_S - time.monotonic())):
                while not any(c.rpc == "Seckill" and c.code in SECKILL_DEFINITE
                              and c.started >= since for c in self.history.calls[-200:]):
                    self._definite.clear()
                    await self._definite.wait()

    async def _seckill(self, request: activity_pb2.SeckillRequest, deadline_s: float) -> object:
        return await self.activities.Seckill(request, timeout=deadline_s)

    async def buyer(self) -> None:
        while not self.stop.is_set():
            if self.returning and self.rng.random() < 0.2:
                user = self.rng.choice(self.returning)
            else:
                user = f"u{self.users}"
                self.users += 1
                self.returning.append(user)
            quantity = self.rng.randint(1, MAX_QUANTITY)
            request = activity_pb2.SeckillRequest(activity_id=self.activity_id, user_id=user,
                                                  quantity=quantity)
            answer = await self._call("Seckill", user, quantity, partial(
                self._seckill, request))
            if answer.code == "OK":
                task = asyncio.create_task(self._fate(answer, self.rng.random(),
                                                      self.rng.uniform(0, 2)))
                self.fates.add(task)
                task.add_done_callback(self.fates.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.rng.uniform(*THINK_S))

    async def _fate(self, won: Call, draw: float, after_s: float) -> None:
        """Pays (35%), cancels (30%), or lets the order expire (a tenth of those try to pay
        late)."""
        if draw < 0.35:
            rpc = "PayOrder"
        elif draw < 0.65:
            rpc = "CancelOrder"
        elif draw < 0.7:
            rpc, after_s = "PayOrder", PAYMENT_WINDOW_S + 1.0
        else:
            return
        await asyncio.sleep(after_s)  # the buyer's pace

        async def change(t: float) -> object:
            if rpc == "PayOrder":
                return await self.orders.PayOrder(order_pb2.PayOrderRequest(id=won.order_id),
                                                  metadata=ADMIN, timeout=t)
            return await self.orders.CancelOrder(order_pb2.CancelOrderRequest(id=won.order_id),
                                                 metadata=ADMIN, timeout=t)

        await self._call(rpc, won.user, won.quantity, change, won.order_id)

    async def run(self, until: asyncio.Event) -> None:
        buyers = [asyncio.create_task(self.buyer()) for _ in range(BUYERS)]
        await until.wait()
        self.stop.set()
        await asyncio.gather(*buyers)
        if self.fates:  # each sleeps at most the window + 1 s, then one call with its deadline
            await asyncio.wait(set(self.fates), timeout=PAYMENT_WINDOW_S + 10)

    async def close(self) -> None:
        for task in self.fates:
            task.cancel()
        for channel in self.channels:
            await channel.close()
