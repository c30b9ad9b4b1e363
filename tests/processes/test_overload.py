"""Overload answered in time (seckill_common.runtime.overload and the clients' side,
seckill_common.client.retry): a call whose deadline has passed is not worked on; above the
in-flight limit calls are refused at once with RetryInfo, and nothing of them is done; the
clients wait the delay, jittered, and try again; the limit adapts to latency."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_pb2,
)

from seckill_bench.config import BenchConfig
from seckill_bench.runner import run_load
from seckill_cli.client import Session
from seckill_common.client.retry import AdaptiveThrottle, ThrottledLocally, backoff_s
from seckill_common.runtime.overload import INTERVAL_S, LoadShedder
from tests.helpers.factories import make_activity, make_product
from tests.helpers.flash_sale import holding
from tests.helpers.polling import eventually
from tests.helpers.processes import start_processes
from tests.helpers.rpc import error_details
from tests.helpers.stack import (
    ADMIN,
    REPO,
    Stack,
    start_stack,
)

SECKILL = "/seckill.v1.ActivityService/Seckill"
# Limits a test reaches with a few held calls; the shipped ones (5,000, floor 2,500) are what
# every other test runs with.
SMALL_LIMIT = {"SECKILL_MAX_IN_FLIGHT": "2", "SECKILL_MIN_IN_FLIGHT": "1"}
SERVICE_CONFIG = (REPO / "examples" / "service_config.json").read_text()


def in_flight() -> float:
    return REGISTRY.get_sample_value("seckill_rpc_in_flight", {"service": "activity"}) or 0.0


@asynccontextmanager
async def stock_row_held(db_url: str, product_id: int) -> AsyncIterator[None]:
    """The product's stock row locked by another client: Seckills of it wait in flight."""
    async with holding(db_url) as holder:
        await holder.hold_stock_row(product_id)
        yield


async def gauge_reaches(check: Callable[[], bool], what: str) -> None:
    """A gauge (no stream announces it) polled until `check()` holds."""
    async def holds() -> bool:
        return check()
    await eventually(holds, what, every_s=0.01)


def seckill(activity_id: int, user: str) -> activity_pb2.SeckillRequest:
    return activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user)


@pytest.fixture
async def small_limit_stack(db_url: str) -> AsyncIterator[Stack]:
    stack = await start_stack(db_url, **SMALL_LIMIT)
    yield stack
    await stack.stop()


async def test_above_the_in_flight_limit_calls_are_refused_with_retry_info(
        small_limit_stack: Stack) -> None:
    stack = small_limit_stack
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id)
    async with stock_row_held(stack.db_url, product.id):
        held = [asyncio.ensure_future(stack.activities.Seckill(seckill(activity.id, f"u{n}"),
                                                               timeout=30)) for n in (1, 2)]
        await gauge_reaches(lambda: in_flight() >= 2, "two calls in flight")
        for call in (stack.activities.Seckill(seckill(activity.id, "late"), timeout=30),
                     stack.activities.GetActivity(
                         activity_pb2.GetActivityRequest(id=activity.id), timeout=30)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = error_details(refused.value)
            assert details["RetryInfo"].retry_delay.ToMilliseconds() >= 50
            info = details["ErrorInfo"]
            assert (info.reason, dict(info.metadata)) == (
                "OVERLOADED", {"limit": "in_flight"})
        # Health checks are never refused: a probe sees a busy process as serving.
        async with grpc.aio.insecure_channel(stack.activity.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert all(reply.order.id for reply in await asyncio.gather(*held))
    # Nothing of the refused call was done: "late" holds no order, and buys now.
    orders = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        activity_id=activity.id), metadata=ADMIN)
    assert sorted(o.user_id for o in orders.orders) == ["u1", "u2"]
    assert (await stack.activities.Seckill(seckill(activity.id, "late"))).order.id


async def test_the_cli_waits_the_delay_and_tries_again(small_limit_stack: Stack) -> None:
    stack = small_limit_stack
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id)
    refused_before = REGISTRY.get_sample_value("seckill_rpc_requests_total", {
        "service": "activity", "method": SECKILL, "code": "RESOURCE_EXHAUSTED"}) or 0.0

    def refused() -> float:
        return (REGISTRY.get_sample_value("seckill_rpc_requests_total", {
            "service": "activity", "method": SECKILL, "code": "RESOURCE_EXHAUSTED"}) or 0.0
        ) - refused_before

    session = Session({"activity": stack.activity.address}, timeout_s=20)
    try:
        async with stock_row_held(stack.db_url, product.id):
            held = [asyncio.ensure_future(stack.activities.Seckill(
                seckill(activity.id, f"u{n}"), timeout=30)) for n in (1, 2)]
            await gauge_reaches(lambda: in_flight() >= 2, "two calls in flight")
            buying = asyncio.ensure_future(session.call("activity", "Seckill",
                                                        seckill(activity.id, "patient")))
            await gauge_reaches(lambda: refused() >= 1, "the CLI's first try refused")
        # The row is free: the CLI's next try, after the RetryInfo delay, buys.
        reply = await buying
        assert reply.order.user_id == "patient"
        assert refused() >= 1
        await asyncio.gather(*held)
    finally:
        await session.close()


async def test_seckill_bench_backs_off_after_retry_info(small_limit_stack: Stack) -> None:
    stack = small_limit_stack
    product = await make_product(stack, stock=100)
    activity = await make_activity(stack, product.id)
    async with stock_row_held(stack.db_url, product.id):
        held = [asyncio.ensure_future(stack.activities.Seckill(seckill(activity.id, f"u{n}"),
                                                               timeout=30)) for n in (1, 2)]
        await gauge_reaches(lambda: in_flight() >= 2, "two calls in flight")
        # Two workers against a full process for about a second: each refusal's RetryInfo
        # delay (50 ms at least) is waited before the worker's next call, so far fewer calls
        # are made than a worker spinning on refusals would make (thousands).
        report = await run_load(BenchConfig(
            call="seckill.v1.ActivityService/Seckill", host=stack.activity.address,
            data={"activity_id": activity.id, "user_id": "b{{.RequestNumber}}"},
            duration_s=1.0, concurrency=2, connections=1, procs=1, check=False,
            order_addr=stack.order.address))
    await asyncio.gather(*held)
    assert set(report.status_counts) == {"ResourceExhausted"}, report.status_counts
    assert report.count <= 2 * (1.0 / 0.025 + 2), report.count


async def test_the_shipped_service_config_retries_after_the_pushback_until_throttled(
        small_limit_stack: Stack) -> None:
    """A refusal goes out Trailers-Only, so gRPC's own retryPolicy (examples/service_config.json,
    nothing of ours on the client) retries it after the server's grpc-retry-pushback-ms; its
    retryThrottling stops retrying once refusals outnumber answers. Attempts are counted by
    the server's metrics."""
    stack = small_limit_stack
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id)
    method = "/seckill.v1.ActivityService/GetActivity"
    request = activity_pb2.GetActivityRequest(id=activity.id)

    def refused() -> float:
        return REGISTRY.get_sample_value("seckill_rpc_requests_total", {
            "service": "activity", "method": method, "code": "RESOURCE_EXHAUSTED"}) or 0.0

    async with stock_row_held(stack.db_url, product.id), grpc.aio.insecure_channel(
            stack.activity.address, options=[("grpc.service_config", SERVICE_CONFIG),
                                             ("grpc.enable_retries", 1)]) as channel:
        held = [asyncio.ensure_future(stack.activities.Seckill(seckill(activity.id, f"u{n}"),
                                                               timeout=30)) for n in (1, 2)]
        await gauge_reaches(lambda: in_flight() >= 2, "two calls in flight")
        stub = activity_pb2_grpc.ActivityServiceStub(channel)
        before = refused()
        began = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await stub.GetActivity(request, timeout=30)
        took = time.perf_counter() - began
        assert first.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused() - before == 4  # maxAttempts: the call and three retries
        pushback_ms = int(dict(first.value.trailing_metadata() or ())["grpc-retry-pushback-ms"])
        assert took >= 3 * pushback_ms / 1000  # each retry waited the server's delay
        # Four failed attempts cost four of the ten tokens; a fifth leaves five, no more than
        # half: the next refused call is not retried.
        with pytest.raises(grpc.aio.AioRpcError) as second:
            await stub.GetActivity(request, timeout=30)
        assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused() - before == 5
    assert all(reply.order.id for reply in await asyncio.gather(*held))


async def test_a_call_whose_deadline_has_passed_is_not_worked_on(stack: Stack,
                                                                 tmp_path: Path) -> None:
    made = await make_product(stack, stock=5)
    activity = await make_activity(stack, made.id)
    async with start_processes("activity", 1, stack.db_url, tmp_path, peers=stack) as extra:
        activities, pid = extra.activities[0], extra[0].pid
        assert (await activities.Seckill(seckill(activity.id, "first"), timeout=10)).order.id
        assert pid is not None
        # The service cannot take the call until its deadline has passed.
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await activities.Seckill(seckill(activity.id, "late"), timeout=0.5)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            os.kill(pid, signal.SIGCONT)
        # Calls after it are served, and the late one left nothing behind.
        assert (await activities.Seckill(seckill(activity.id, "next"), timeout=10)).order.id
        orders = await stack.orders.ListOrders(
            order_pb2.ListOrdersRequest(activity_id=activity.id), metadata=ADMIN)
        assert sorted(o.user_id for o in orders.orders) == ["first", "next"]


# --- the rules without a server ------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_shrinks_under_a_standing_queue_and_grows_back() -> None:
    clock = Clock()
    shedder = LoadShedder("test", max_in_flight=1000, min_in_flight=50, target_s=0.1,
                          clock=clock)
    for _ in range(20):  # even the fastest call takes 0.4 s: a standing queue
        clock.now += INTERVAL_S
        shedder._finished(0.4, clock.now)
    assert shedder.limit == 50  # shrunk to the floor, never below
    for _ in range(200):  # fast again
        clock.now += INTERVAL_S
        shedder._finished(0.01, clock.now)
    assert shedder.limit == 1000
    # Normal load: fast calls keep the limit at its maximum.
    clock.now += INTERVAL_S
    shedder._finished(0.05, clock.now)
    assert shedder.limit == 1000


def test_adaptive_throttle_refuses_locally_only_while_the_server_refuses() -> None:
    clock = Clock()
    throttle = AdaptiveThrottle(k=2.0, window_s=60.0, rng=lambda: 0.5, clock=clock)
    for _ in range(100):  # all accepted: never throttled
        throttle.admit()
        throttle.answered(grpc.StatusCode.OK)
    assert throttle.probability() == 0.0
    refused = 0
    for _ in range(1000):  # the server refuses everything
        try:
            throttle.admit()
        except ThrottledLocally:
            refused += 1
            continue
        throttle.answered(grpc.StatusCode.RESOURCE_EXHAUSTED)
    # p = (requests - 2 * accepts) / (requests + 1) approaches 1 - 200/1100.
    assert 0.5 < throttle.probability() < 0.9 and refused > 300
    clock.now += 3600  # an hour later the window has forgotten
    assert throttle.probability() < 0.01


def test_backoff_is_the_servers_delay_jittered_and_doubled() -> None:
    assert backoff_s(0.2, 0, rng=lambda: 0.0) == pytest.approx(0.1)
    assert backoff_s(0.2, 0, rng=lambda: 1.0) == pytest.approx(0.3)
    assert backoff_s(0.2, 2, rng=lambda: 0.5) == pytest.approx(0.8)
    assert backoff_s(5.0, 5, rng=lambda: 0.5) == 10.0  # capped
