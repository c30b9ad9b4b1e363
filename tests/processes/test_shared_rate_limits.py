"""Per-user rate limits counted in Redis (SECKILL_RATE_LIMIT_REDIS_URL): one user flooding two
activity processes at once gets the documented rate in total, not twice it; and when Redis
goes away the sale goes on, limited per process, with the health entry and the log saying so.

Every test here sets SECKILL_RATE_LIMIT_REDIS_URL: that is what it is about. The machine's Redis
(127.0.0.1:6379) is used on a database number of its own with unique user names; the outage
test stops only a redis-server it started itself."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc

from activity_svc.server import DEFINITION as ACTIVITY
from seckill_common.runtime import ratelimit
from seckill_common.runtime.server import RunningService, start_service
from seckill_common.runtime.telemetry import RATE_LIMITS_SHARED
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import Stack, free_port, settings_for, start_stack

SYSTEM_REDIS = "redis://127.0.0.1:6379/13"
# Low limits, so that a flood in the test's time passes them: 10 calls at once, then 2 a
# second: with Redis, at most 10 in any 5 s (the window).
LIMITS = {"SECKILL_RATE_LIMIT_USER": "2", "SECKILL_RATE_LIMIT_USER_BURST": "10"}
BURST = 10
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def redis_answers(port: int) -> bool:
    return subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                          text=True, check=False).stdout.strip() == "PONG"


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own on `port`, answering once this returns."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not redis_answers(port):
        assert process.poll() is None and time.monotonic() < deadline, "redis did not start"
        time.sleep(0.02)  # polling a port that cannot be awaited
    return process


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, which it may stop."""
    port = free_port()
    process = start_redis(port, tmp_path)
    yield port, process
    if process.poll() is None:
        process.terminate()
        process.wait(10)


async def seckill_code(stub: activity_pb2_grpc.ActivityServiceAsyncStub, activity_id: int,
                       user: str) -> grpc.StatusCode:
    try:
        await stub.Seckill(activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user))
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def health_of(service: RunningService, name: str) -> int:
    async with grpc.aio.insecure_channel(service.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name))
        return reply.status


async def second_activity(stack: Stack, **overrides: str) -> RunningService:
    return await start_service(ACTIVITY, settings_for(
        stack.db_url, SECKILL_PRODUCT_ADDR=stack.product.address,
        SECKILL_ORDER_ADDR=stack.order.address, **overrides))


async def test_a_flooding_user_gets_the_rate_once_across_two_processes(db_url: str) -> None:
    shared = {**LIMITS, "SECKILL_RATE_LIMIT_REDIS_URL": SYSTEM_REDIS}
    stack = await start_stack(db_url, **shared)
    other = await second_activity(stack, **shared)
    try:
        product = await make_product(stack, stock=1000)
        activity = await make_activity(stack, product.id)
        user = f"flooder-{uuid.uuid4().hex}"
        async with grpc.aio.insecure_channel(other.address) as channel:
            stubs = [stack.activities, activity_pb2_grpc.ActivityServiceStub(channel)]
            started = time.monotonic()
            codes = await asyncio.gather(*(seckill_code(stubs[n % 2], activity.id, user)
                                           for n in range(200)))
            elapsed = time.monotonic() - started
        assert elapsed < 5, "the flood outlasted the window: the count below would be wrong"
        let_through = [code for code in codes if code != grpc.StatusCode.RESOURCE_EXHAUSTED]
        # One bought, the rest were answered ALREADY_PURCHASED: either way let through. Counted
        # per process, it would be up to twice the burst.
        assert len(let_through) == BURST
        assert let_through.count(grpc.StatusCode.OK) == 1
        for service in (stack.activity, other):
            assert await health_of(service, ratelimit.SHARED_HEALTH_NAME) == SERVING
    finally:
        await other.stop(0)
        await stack.stop()


async def test_without_redis_the_limits_are_per_process_and_the_log_says_so(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="seckill_common.runtime.ratelimit")
    stack = await start_stack(db_url, **LIMITS)
    try:
        assert any("SECKILL_RATE_LIMIT_REDIS_URL unset" in r.getMessage()
                   for r in caplog.records)
        # No shared-limits entry to report on: NOT_FOUND.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_of(stack.activity, ratelimit.SHARED_HEALTH_NAME)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await stack.stop()


async def test_sales_go_on_when_redis_stops_and_limits_are_shared_again_when_it_returns(
        db_url: str, private_redis: tuple[int, subprocess.Popen[bytes]],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # Retry Redis on the next call rather than a second later, so the test need not wait.
    monkeypatch.setattr(ratelimit, "REDIS_RETRY_S", 0.0)
    port, redis_process = private_redis
    stack = await start_stack(db_url, **LIMITS,
                              SECKILL_RATE_LIMIT_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    try:
        product = await make_product(stack, stock=100)
        activity = await make_activity(stack, product.id)
        assert await seckill_code(stack.activities, activity.id, "before") == grpc.StatusCode.OK
        assert await health_of(stack.activity, ratelimit.SHARED_HEALTH_NAME) == SERVING

        redis_process.terminate()
        redis_process.wait(10)
        caplog.clear()
        buyers = await asyncio.gather(*(seckill_code(stack.activities, activity.id, f"b{n}")
                                        for n in range(20)))
        assert buyers == [grpc.StatusCode.OK] * 20  # the sale goes on
        assert await health_of(stack.activity, "") == SERVING
        assert await health_of(stack.activity, ratelimit.SHARED_HEALTH_NAME) == NOT_SERVING
        assert RATE_LIMITS_SHARED.labels("activity")._value.get() == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                    and r.name == "seckill_common.runtime.ratelimit"]
        assert len(warnings) == 1 and "sales go on" in warnings[0]
        # Still limited, by this process's own buckets.
        flood = await asyncio.gather(*(seckill_code(stack.activities, activity.id, "flooder")
                                       for _ in range(50)))
        assert flood.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 50 - BURST - 1

        restarted = start_redis(port, tmp_path)
        try:
            assert await seckill_code(stack.activities, activity.id, "after") == \
                grpc.StatusCode.OK
            assert await health_of(stack.activity, ratelimit.SHARED_HEALTH_NAME) == SERVING
            assert RATE_LIMITS_SHARED.labels("activity")._value.get() == 1
        finally:
            restarted.terminate()
            restarted.wait(10)
    finally:
        await stack.stop()


async def test_a_service_starts_and_sells_with_redis_unreachable(db_url: str) -> None:
    stack = await start_stack(db_url, **LIMITS,
                              SECKILL_RATE_LIMIT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        product = await make_product(stack, stock=5)
        activity = await make_activity(stack, product.id)
        assert await seckill_code(stack.activities, activity.id, "u1") == grpc.StatusCode.OK
        assert await health_of(stack.activity, "") == SERVING
        assert await health_of(stack.activity, ratelimit.SHARED_HEALTH_NAME) == NOT_SERVING
    finally:
        await stack.stop()
