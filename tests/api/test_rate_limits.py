"""Rate limits: RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure; a flood from one user
does not keep the others from buying."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seckill.v1 import activity_pb2, product_pb2

from seckill_common.runtime.ratelimit import TokenBuckets
from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import error_details
from tests.helpers.stack import query, start_stack


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    buckets = TokenBuckets(rate=8, burst=3)
    assert [buckets.take("u", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("u", now=100.0) == pytest.approx(0.125)  # the next token in 125 ms
    assert buckets.take("other", now=100.0) == 0.0  # each key has its own bucket
    assert buckets.take("u", now=100.125) == 0.0
    assert buckets.take("u", now=100.125) > 0
    assert [buckets.take("u", now=200.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]


def test_refilled_buckets_are_forgotten_so_memory_stays_flat() -> None:
    buckets = TokenBuckets(rate=10, burst=20)  # refills in 2 s
    for second in range(60):  # a minute of 1,000 new users a second
        for n in range(1000):
            buckets.take(f"user-{second}-{n}", now=second + n / 1000)
        assert len(buckets) <= 3000  # the last ~2 s of users, not all 60,000
    assert buckets.take("user-59-0", now=59.5) == 0.0  # a recent user keeps its bucket


def test_max_keys_caps_the_buckets_within_a_refill_time() -> None:
    buckets = TokenBuckets(rate=1, burst=100, max_keys=10)  # refills in 100 s
    for n in range(25):
        buckets.take(f"user-{n}", now=1.0)
    assert len(buckets) <= 10


async def test_a_flooding_user_is_refused_while_the_others_buy(db_url: str) -> None:
    # A low limit, so that a flood of a few dozen calls passes it in the test's time.
    stack = await start_stack(db_url, SECKILL_RATE_LIMIT_USER="5",
                              SECKILL_RATE_LIMIT_USER_BURST="5")
    try:
        product = await make_product(stack, stock=100)
        activity = await make_activity(stack, product.id)

        async def attempt(user: str) -> grpc.StatusCode:
            try:
                await stack.activities.Seckill(activity_pb2.SeckillRequest(
                    activity_id=activity.id, user_id=user))
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    details = error_details(exc)
                    assert details["RetryInfo"].retry_delay.ToMilliseconds() > 0
                    assert details["QuotaFailure"].violations[0].subject == "user"
                return exc.code()

        # 300 calls from the flooder, interleaved with one call from each of 50 others.
        calls = [attempt("flooder") for _ in range(300)]
        for n in range(50):
            calls.insert(n * 6, attempt(f"buyer-{n}"))
        codes = await asyncio.gather(*calls)
        flooder = codes[:]
        others = [flooder.pop(n * 6 - n) for n in range(50)]
        assert others == [grpc.StatusCode.OK] * 50
        assert flooder.count(grpc.StatusCode.OK) == 1
        assert flooder.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 290
        # The refusals stayed out of the database: 51 orders, the stock down by 51.
        assert await query(stack.db_url, "SELECT COUNT(*) FROM orders") == [(51,)]
        left = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
        assert left.stock == 49
    finally:
        await stack.stop()


async def test_the_process_limit_refuses_calls_but_not_health_checks(db_url: str) -> None:
    # The process limit is off by default: this test is about it.
    stack = await start_stack(db_url, SECKILL_RATE_LIMIT_PROCESS="20",
                              SECKILL_RATE_LIMIT_PROCESS_BURST="20")
    try:
        async def get() -> grpc.StatusCode:
            try:
                await stack.products.ListProducts(product_pb2.ListProductsRequest())
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert error_details(exc)["QuotaFailure"].violations[0].subject == \
                        "process"
                return exc.code()

        codes = await asyncio.gather(*(get() for _ in range(100)))
        assert 20 <= codes.count(grpc.StatusCode.OK) < 40
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 100 - codes.count(
            grpc.StatusCode.OK)
        health = health_pb2_grpc.HealthStub(stack.channels[0])
        replies = await asyncio.gather(*(health.Check(health_pb2.HealthCheckRequest())
                                         for _ in range(100)))
        assert {r.status for r in replies} == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        await stack.stop()
