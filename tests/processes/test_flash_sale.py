"""A flash sale over two activity-service processes on one database: the rules hold."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
import pytest
from seckill.v1 import activity_pb2, activity_pb2_grpc, product_pb2

from tests.helpers.factories import make_activity, make_product
from tests.helpers.processes import start_processes
from tests.helpers.rpc import error_details
from tests.helpers.stack import Stack, query

pytestmark = pytest.mark.slow

STOCK = 100
USERS = 2000


@pytest.mark.parametrize(("mode", "workers"), [
    ("coalesced", "2"),  # two services x two worker processes each, on one database
    ("per_request", "1"),
])
async def test_flash_sale_over_two_processes_never_oversells(
    stack: Stack, tmp_path: Path, mode: str, workers: str
) -> None:
    product = await make_product(stack, stock=STOCK)
    activity = await make_activity(stack, product.id)
    # At exit both must drain cleanly (exit 0).
    async with start_processes("activity", 2, stack.db_url, tmp_path, peers=stack,
                               SECKILL_COMMIT_MODE=mode, SECKILL_WORKERS=workers) as extra:
        stubs = extra.activities

        async def attempt(stub: activity_pb2_grpc.ActivityServiceAsyncStub, user: str) -> str:
            try:
                await stub.Seckill(activity_pb2.SeckillRequest(
                    activity_id=activity.id, user_id=user), timeout=60)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                info = error_details(exc).get("ErrorInfo")
                return f"{exc.code().name}:{info.reason if info else exc.details()}"

        # Every user fires twice at once, one call at each process.
        calls = [attempt(stubs[i], f"user-{n}") for n in range(USERS) for i in range(2)]
        outcomes = Counter(await asyncio.gather(*calls))

    assert outcomes["OK"] == STOCK, outcomes
    assert set(outcomes) <= {"OK", "ALREADY_EXISTS:ALREADY_PURCHASED",
                             "FAILED_PRECONDITION:SOLD_OUT"}, outcomes
    assert sum(outcomes.values()) == 2 * USERS
    # The database agrees: stock 0, 100 orders, nobody with two.
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.stock == 0
    rows = await query(
        stack.db_url,
        "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM orders WHERE activity_id = %s",
        (activity.id,),
    )
    assert rows == [(STOCK, STOCK)]
    [(stock,)] = await query(stack.db_url, "SELECT stock FROM products WHERE id = %s",
                             (product.id,))
    assert stock == 0
