"""seckill-bench's crowds (seckill_bench/crowd.py) against the in-process stack: a queued sale
(every buyer waits in line, then buys with the pass) and the same crowd calling Seckill
directly, from two client processes, every buyer answered and counted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from seckill.v1 import activity_pb2, order_pb2

from seckill_bench.__main__ import main
from seckill_bench.crowd import DIRECT, QUEUED, CrowdConfig, run_crowd
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import ADMIN, Stack

BUYERS = 120
STOCK = 30
ROOM = activity_pb2.WaitingRoom(enabled=True)


async def orders_of(stack: Stack, activity_id: int) -> int:
    page = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        activity_id=activity_id, page_size=1000), metadata=ADMIN)
    return len(page.orders)


async def test_a_queued_sale_answers_every_buyer_and_sells_the_stock(
        stack: Stack, tmp_path: Path) -> None:
    product = await make_product(stack, stock=STOCK)
    # The crowd joins before the start (PRE_QUEUED, shuffled at the start, then admitted);
    # on a busy machine the client processes' start-up may take a few seconds of it.
    activity = await make_activity(stack, product.id, start_s=10, waiting_room=ROOM)
    joined: list[int] = []
    config = CrowdConfig(QUEUED, stack.activity.address, activity.id, BUYERS, procs=2,
                         streams_per_channel=25, timeout_s=60)
    report = await asyncio.to_thread(run_crowd, config, joined.append)
    assert joined == [BUYERS]  # every buyer had a first message, and it was said once
    assert report.answers == {"won": STOCK, "SOLD_OUT": BUYERS - STOCK}, report.summary_text()
    assert report.count("RESOURCE_EXHAUSTED") == report.count("DEADLINE_EXCEEDED") == 0
    assert sum(report.first_states.values()) == BUYERS
    assert report.first_states.get("PRE_QUEUED", 0) > 0, report.first_states
    assert report.channels == 2 * (BUYERS // 2 // 25 + 1)
    stages = report.stages_ms
    assert stages["join_to_admitted"]["n"] == STOCK
    assert stages["join_to_answer"]["n"] == BUYERS
    gap = report.sold_out_after_last_sale_s
    assert gap is not None and gap < 5.0, report.summary_text()
    assert await orders_of(stack, activity.id) == STOCK

    # The command line: JSON of the same report, nothing left to buy.
    out = tmp_path / "queued.json"
    assert await asyncio.to_thread(main, [
        "--queued-sale", str(activity.id), "-n", "10", "--user-prefix", "late-", "-O", "json",
        "-o", str(out), "--no-progress", stack.activity.address]) == 0
    result = json.loads(out.read_text())
    assert result["answers"] == {"SOLD_OUT": 10} and result["answered"] == 10


async def test_the_same_crowd_calling_seckill_directly_is_answered_from_the_start(
        stack: Stack) -> None:
    product = await make_product(stack, stock=STOCK)
    activity = await make_activity(stack, product.id, start_s=3)
    config = CrowdConfig(DIRECT, stack.activity.address, activity.id, BUYERS, procs=2,
                         timeout_s=60)
    report = await asyncio.to_thread(run_crowd, config)
    assert report.answers == {"won": STOCK, "SOLD_OUT": BUYERS - STOCK}, report.summary_text()
    assert report.answered_within_10s == BUYERS
    assert report.stages_ms["start_to_answer"]["n"] == BUYERS
    assert await orders_of(stack, activity.id) == STOCK


def test_a_crowd_needs_a_known_mode_and_enough_buyers() -> None:
    with pytest.raises(Exception, match="procs"):
        CrowdConfig(QUEUED, "127.0.0.1:1", 1, 1, procs=2).validate()
    with pytest.raises(Exception, match="mode"):
        CrowdConfig("both", "127.0.0.1:1", 1, 1).validate()
