"""Joining a waiting room and reading its updates until one says what a test waits for; a
sale behind a waiting room; a Seckill with a pass and the refusal it gets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc

from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import (
    Stack,
    start_stack,
)

Update = activity_pb2.QueueUpdate
ROOM = activity_pb2.WaitingRoom(enabled=True)  # every other setting: its default


def join(stub: activity_pb2_grpc.ActivityServiceAsyncStub, activity_id: int, user: str,
         quantity: int = 0) -> Any:
    """The JoinQueue stream (a grpc.aio.UnaryStreamCall)."""
    return stub.JoinQueue(activity_pb2.JoinQueueRequest(activity_id=activity_id, user_id=user,
                                                        quantity=quantity))


async def until(call: Any, accept: Callable[[Update], bool],
                timeout_s: float = 10.0) -> Update:
    """Reads messages until one satisfies `accept`. The default timeout only ends a test that
    hangs (a busy shared machine is slow): tests of a bound measure the time themselves."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, f"stream ended: {await call.code()}"
            if accept(message):
                return message


def state(wanted: int) -> Callable[[Update], bool]:
    return lambda message: message.state == wanted


def at(position: int) -> Callable[[Update], bool]:
    return lambda message: message.position == position


async def first(stub: activity_pb2_grpc.ActivityServiceAsyncStub, activity_id: int,
                user: str) -> Update:
    """The first message of a join, then the stream is left (the place is kept)."""
    call = join(stub, activity_id, user)
    try:
        return await until(call, lambda _: True)
    finally:
        call.cancel()


async def room_sale(stack: Stack, stock: int, start_s: float = -1
                    ) -> activity_pb2.Activity:
    product = await make_product(stack, stock=stock)
    return await make_activity(stack, product.id, start_s=start_s, waiting_room=ROOM)


@asynccontextmanager
async def running_with(db_url: str, **overrides: str) -> AsyncIterator[Stack]:
    stack = await start_stack(db_url, **overrides)
    try:
        yield stack
    finally:
        await stack.stop()
