"""gRPC's own retries, with nothing but the shipped service config (examples/service_config.json,
docs/CLIENTS.md): a refusal a client may retry (RESOURCE_EXHAUSTED, UNAVAILABLE) goes out
Trailers-Only, so a channel with the retryPolicy retries it after the server's
grpc-retry-pushback-ms (an overload refusal's retries and throttling: test_overload.py).
Attempts are counted by the server's own metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from seckill.v1 import activity_pb2, activity_pb2_grpc

from tests.helpers.factories import make_activity, make_product
from tests.helpers.polling import eventually
from tests.helpers.stack import REPO, Stack, start_stack

SHIPPED = (REPO / "examples" / "service_config.json").read_text()
SECKILL = "/seckill.v1.ActivityService/Seckill"


def served(method: str, code: str) -> float:
    """The calls of `method` the activity service answered with `code` (every attempt)."""
    return REGISTRY.get_sample_value("seckill_rpc_requests_total", {
        "service": "activity", "method": method, "code": code}) or 0.0


def retrying_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[
        ("grpc.service_config", SHIPPED), ("grpc.enable_retries", 1)])


def test_the_service_config_of_the_docs_is_the_shipped_one() -> None:
    text = (REPO / "docs" / "CLIENTS.md").read_text()
    section = text[text.index("### Retries by the service config"):]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == json.loads(SHIPPED)


@pytest.fixture
async def one_call_a_second(db_url: str) -> AsyncIterator[Stack]:
    stack = await start_stack(db_url, SECKILL_RATE_LIMIT_USER="1",
                              SECKILL_RATE_LIMIT_USER_BURST="1")
    yield stack
    await stack.stop()


async def test_a_rate_limited_call_is_retried_after_the_pushback(
        one_call_a_second: Stack) -> None:
    """A user allowed one call a second calls twice: the second is refused with a pushback of
    about a second, and the policy's retry, sent after it (the client's own first backoff is
    at most 0.1 s), is answered by the service. (An impossible quantity: the handler's answer
    is INVALID_ARGUMENT, which no policy retries.)"""
    stack = one_call_a_second
    request = activity_pb2.SeckillRequest(activity_id=1, quantity=5000, user_id="once")
    before = {code: served(SECKILL, code) for code in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT")}
    async with retrying_channel(stack.activity.address) as channel:
        stub = activity_pb2_grpc.ActivityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await stub.Seckill(request, timeout=10)
        began = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as second:
            await stub.Seckill(request, timeout=10)
        took = time.perf_counter() - began
    assert first.value.code() == second.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # One refusal, then the retry: sent no earlier than the pushback, or it would have been
    # refused again.
    assert served(SECKILL, "RESOURCE_EXHAUSTED") - before["RESOURCE_EXHAUSTED"] == 1
    assert served(SECKILL, "INVALID_ARGUMENT") - before["INVALID_ARGUMENT"] == 2
    assert took >= 0.8


@pytest.fixture
async def one_stream(db_url: str) -> AsyncIterator[Stack]:
    stack = await start_stack(db_url, SECKILL_WATCH_MAX_STREAMS="1")
    yield stack
    await stack.stop()


async def test_a_stream_refused_before_its_first_message_is_retried_after_the_pushback(
        one_stream: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """A process full of WatchActivity streams refuses one more (RESOURCE_EXHAUSTED, a pushback
    of a second); once the other stream has gone, the policy's retry opens it. The refusal
    and the stream are counted and logged by the layers unary calls pass through."""
    stack = one_stream
    watch = "/seckill.v1.ActivityService/WatchActivity"
    product = await make_product(stack)
    activity = await make_activity(stack, product.id)
    request = activity_pb2.WatchActivityRequest(id=activity.id)
    first = stack.activities.WatchActivity(request)
    await first.read()
    before = served(watch, "RESOURCE_EXHAUSTED")

    async def refused_once() -> bool:
        return served(watch, "RESOURCE_EXHAUSTED") - before >= 1

    with caplog.at_level(logging.INFO, logger="seckill.rpc"):
        async with retrying_channel(stack.activity.address) as channel:
            second: Any = activity_pb2_grpc.ActivityServiceStub(channel).WatchActivity(request)
            reading = asyncio.ensure_future(second.read())
            await eventually(refused_once, "the second stream refused")
            refused_at = time.perf_counter()
            first.cancel()
            async with asyncio.timeout(10):
                message = await reading
            took = time.perf_counter() - refused_at
            assert message.activity.id == activity.id
            second.cancel()
    assert served(watch, "RESOURCE_EXHAUSTED") - before == 1
    assert took >= 0.9  # the pushback: a second; the client's own first backoff is 0.1 s
    # The refused attempt's line, and the first stream's, with the messages it sent.
    ended = [(r.code, getattr(r, "messages", None)) for r in caplog.records  # type: ignore
             if r.name == "seckill.rpc" and getattr(r, "method", "") == watch]
    assert ("RESOURCE_EXHAUSTED", 0) in ended and ("CANCELLED", 1) in ended
