"""Waiting rooms through real servers (shipped defaults): the pre-queue shuffled at the start
then arrival order, a place kept across streams and restarts, passes judged without the
database, admission bounded by the units left, SOLD_OUT to everyone at once, one line over
two processes, rate-limit pushback, refusals, and what a waiting buyer costs."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from seckill.v1 import activity_pb2, activity_pb2_grpc, order_pb2

from activity_svc.passes import Passes
from activity_svc.queue import FRESHNESS_BOUND_S
from activity_svc.server import DEFINITION as ACTIVITY
from seckill_common.api.times import to_datetime
from seckill_common.runtime.server import start_service
from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import error_details
from tests.helpers.stack import (
    ADMIN,
    ADMIN_TOKEN,
    REPO,
    Stack,
    query,
    settings_for,
)
from tests.helpers.waiting_room import (
    ROOM,
    at,
    first,
    join,
    room_sale,
    running_with,
    state,
    until,
)

# Awaiting what a bound promises: the bound, plus slack for a busy 2-core machine.
WITHIN_BOUND_S = FRESHNESS_BOUND_S + 1.0


async def seckill(stack: Stack, activity_id: int, user: str,
                  admission_pass: str = "") -> order_pb2.Order:
    response = await stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity_id, user_id=user, admission_pass=admission_pass))
    return response.order


async def refusal(stack: Stack, activity_id: int, user: str, admission_pass: str) -> str:
    """The ErrorInfo reason of a refused Seckill (FAILED_PRECONDITION)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await seckill(stack, activity_id, user, admission_pass)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    return str(error_details(raised.value)["ErrorInfo"].reason)


async def test_pre_queue_is_shuffled_at_the_start_then_arrivals_keep_their_order(
        stack: Stack) -> None:
    activity = await room_sale(stack, stock=4, start_s=3)
    pre = [f"p{i}" for i in range(10)]
    calls = [join(stack.activities, activity.id, user) for user in pre]
    try:
        for call in calls:
            message = await until(call, lambda _: True)
            assert message.state == activity_pb2.PRE_QUEUED
            assert message.start_time == activity.start_time
            assert to_datetime(message.read_time) < to_datetime(activity.start_time)
        # At the start: 4 units, so 4 buyers admitted, 6 waiting at places 1..6.
        places = [await until(call, lambda m: m.state != activity_pb2.PRE_QUEUED,
                              timeout_s=3 + WITHIN_BOUND_S) for call in calls]
    finally:
        for call in calls:
            call.cancel()
    assert sum(m.state == activity_pb2.ADMITTED for m in places) == 4
    assert sorted(m.position for m in places if m.state == activity_pb2.WAITING) == list(
        range(1, 7))
    # The draw is recorded: every pre-queued buyer's rank, and when it was drawn.
    tickets = await query(stack.db_url, "SELECT ticket FROM queue_entries WHERE"
                          " activity_id = %s AND pre_queued = 1", (activity.id,))
    assert sorted(t for (t,) in tickets) == list(range(1, 11))
    ((shuffled,),) = await query(stack.db_url, "SELECT shuffle_time FROM queue_lines WHERE"
                                 " activity_id = %s", (activity.id,))
    assert shuffled >= to_datetime(activity.start_time).replace(tzinfo=None)
    # Later arrivals: behind the pre-queue, in arrival order.
    for offset, user in enumerate(["a0", "a1", "a2"]):
        call = join(stack.activities, activity.id, user)
        try:
            message = await until(call, at(7 + offset))
        finally:
            call.cancel()
        assert message.state == activity_pb2.WAITING and message.ahead == 6 + offset


def running(db_url: str) -> Any:
    return running_with(db_url)


async def test_joining_again_keeps_the_place_also_across_a_restart(db_url: str) -> None:
    async with running(db_url) as stack:
        activity = await room_sale(stack, stock=1)
        call = join(stack.activities, activity.id, "u0")
        admitted = await until(call, state(activity_pb2.ADMITTED))
        assert await call.code() == grpc.StatusCode.OK  # a final message ends the stream
        for user, position in (("u1", 1), ("u2", 2)):
            call = join(stack.activities, activity.id, user)
            await until(call, at(position))
            call.cancel()
        # Another stream of the same buyer: the same place, at once.
        assert (await first(stack.activities, activity.id, "u2")).position == 2
    async with running(db_url) as stack:  # every service restarted
        assert (await first(stack.activities, activity.id, "u2")).position == 2
        assert (await first(stack.activities, activity.id, "u1")).position == 1
        again = await first(stack.activities, activity.id, "u0")
        assert again.state == activity_pb2.ADMITTED
        assert again.pass_expire_time == admitted.pass_expire_time
        order = await seckill(stack, activity.id, "u0", again.admission_pass)
        assert order.quantity == 1


async def test_seckill_without_a_valid_pass_is_refused_without_a_database_call(
        stack: Stack) -> None:
    activity = await room_sale(stack, stock=5)
    other = await room_sale(stack, stock=5)
    call = join(stack.activities, activity.id, "bob")
    bobs = (await until(call, state(activity_pb2.ADMITTED))).admission_pass
    call = join(stack.activities, other.id, "alice")
    elsewhere = (await until(call, state(activity_pb2.ADMITTED))).admission_pass
    # The signing key is derived from the admin token (no user tokens here): a pass that
    # expired a second ago, signed as the server would.
    expired = Passes(ADMIN_TOKEN).issue(activity.id, "alice",
                                        dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert await refusal(stack, activity.id, "alice", "") == "NOT_ADMITTED"  # learns the room

    transactions: list[str] = []
    database = stack.activity.database
    real = database.transaction

    def counted() -> Any:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else ""
        if name != "queue-mover":  # the mover's own rounds are not the calls'
            transactions.append(name)
        return real()

    database.transaction = counted  # type: ignore[method-assign]
    try:
        for _ in range(5):  # 25 calls: within one user's shipped rate-limit burst (40)
            assert await refusal(stack, activity.id, "alice", "") == "NOT_ADMITTED"
            assert await refusal(stack, activity.id, "alice", "garbage") == "NOT_ADMITTED"
            assert await refusal(stack, activity.id, "alice", bobs) == "NOT_ADMITTED"
            assert await refusal(stack, activity.id, "alice", elsewhere) == "NOT_ADMITTED"
            assert await refusal(stack, activity.id, "alice", expired) == "PASS_EXPIRED"
    finally:
        database.transaction = real  # type: ignore[method-assign]
    assert transactions == []
    # The pass admits its owner; the sale still judges: one active order per user.
    assert (await seckill(stack, activity.id, "bob", bobs)).user_id == "bob"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await seckill(stack, activity.id, "bob", bobs)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS


METRICS = [("seckill_queue_admitted_total", {}), ("seckill_queue_passes_total",
                                                  {"outcome": "used"})]


async def test_admission_stops_at_the_units_left_and_sold_out_reaches_everyone_at_once(
        stack: Stack) -> None:
    activity = await room_sale(stack, stock=2)
    before = {name: REGISTRY.get_sample_value(name, labels) or 0.0
              for name, labels in METRICS}
    passes = {}
    for user in ("u0", "u1"):
        call = join(stack.activities, activity.id, user)
        passes[user] = (await until(call, state(activity_pb2.ADMITTED))).admission_pass
    waiting = {}
    for position, user in enumerate(["w0", "w1", "w2", "w3"], start=1):
        waiting[user] = join(stack.activities, activity.id, user)
        # Two units, two admitted: the rest wait, however many slots are free.
        await until(waiting[user], at(position))

    loop = asyncio.get_running_loop()
    orders = [await seckill(stack, activity.id, user, passes[user]) for user in passes]
    last_sold = loop.time()

    async def told(call: Any) -> float:
        await until(call, state(activity_pb2.QUEUE_SOLD_OUT))
        assert await call.code() == grpc.StatusCode.OK
        return loop.time() - last_sold

    delays = await asyncio.gather(*(told(call) for call in waiting.values()))
    # Within the 1 s bound (plus a little slack for this shared 2-core machine).
    assert max(delays) < FRESHNESS_BOUND_S + 0.5, delays

    # A unit comes back: the next in line is admitted (without even waiting on a stream).
    await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=orders[0].id),
                                   metadata=ADMIN)
    call = join(stack.activities, activity.id, "w0")
    next_pass = (await until(call, state(activity_pb2.ADMITTED))).admission_pass
    assert (await first(stack.activities, activity.id, "w1")).state == activity_pb2.WAITING
    await seckill(stack, activity.id, "w0", next_pass)
    assert (await first(stack.activities, activity.id, "w1")).state in (
        activity_pb2.WAITING, activity_pb2.QUEUE_SOLD_OUT)
    call = join(stack.activities, activity.id, "w1")
    await until(call, state(activity_pb2.QUEUE_SOLD_OUT))
    # Seen in the metrics: three admitted, two passes used (w0's admission needed both).
    grown = {name: (REGISTRY.get_sample_value(name, labels) or 0.0) - before[name]
             for name, labels in METRICS}
    assert grown["seckill_queue_admitted_total"] == 3
    assert grown["seckill_queue_passes_total"] >= 2


async def test_two_activity_processes_serve_one_line(stack: Stack) -> None:
    second = await start_service(ACTIVITY, settings_for(
        stack.db_url, SECKILL_PRODUCT_ADDR=stack.product.address,
        SECKILL_ORDER_ADDR=stack.order.address))
    channel = grpc.aio.insecure_channel(second.address)
    other = activity_pb2_grpc.ActivityServiceStub(channel)
    try:
        activity = await room_sale(stack, stock=1)
        call = join(stack.activities, activity.id, "u0")
        admitted = await until(call, state(activity_pb2.ADMITTED))
        one = join(other, activity.id, "u1")
        await until(one, lambda m: m.position == 1)
        two = join(stack.activities, activity.id, "u2")
        await until(two, lambda m: m.position == 2)
        assert (await first(other, activity.id, "u2")).position == 2
        # A pass from one process admits in the other.
        await other.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id, user_id="u0", admission_pass=admitted.admission_pass))
        for waiting in (one, two):
            await until(waiting, state(activity_pb2.QUEUE_SOLD_OUT))
        leases = await query(stack.db_url, "SELECT holder FROM leases WHERE name = 'queue-mover'")
        assert len(leases) == 1
    finally:
        await channel.close()
        await second.stop(0)


CHI_SQUARE_9_DF_P01 = 21.666  # the chi-square distribution's 0.99 quantile, 9 degrees


async def test_pre_queued_winners_are_uniform_over_arrival_and_later_ones_keep_order(
        stack: Stack) -> None:
    buyers, units = 500, 100
    activity = await room_sale(stack, stock=units, start_s=6)
    users = [f"b{i:03d}" for i in range(buyers)]  # arrival order
    for begin in range(0, buyers, 50):  # 50 at a time, each group after the last
        placed = await asyncio.gather(*(first(stack.activities, activity.id, u)
                                        for u in users[begin:begin + 50]))
        assert {m.state for m in placed} == {activity_pb2.PRE_QUEUED}
    ((now,),) = await query(stack.db_url, "SELECT UTC_TIMESTAMP(6)")
    assert now < to_datetime(activity.start_time).replace(tzinfo=None), "joined too slowly"
    # The shuffle, then everybody asks where they stand.
    call = join(stack.activities, activity.id, users[0])
    await until(call, lambda m: m.state != activity_pb2.PRE_QUEUED, timeout_s=6 + 5)
    call.cancel()
    winners = []
    for begin in range(0, buyers, 50):
        placed = await asyncio.gather(*(first(stack.activities, activity.id, u)
                                        for u in users[begin:begin + 50]))
        winners += [begin + i for i, m in enumerate(placed) if m.state == activity_pb2.ADMITTED]
    assert len(winners) == units
    observed = [0] * 10
    for rank in winners:
        observed[rank * 10 // buyers] += 1
    expected = units / 10
    chi_square = sum((o - expected) ** 2 / expected for o in observed)
    assert chi_square < CHI_SQUARE_9_DF_P01, observed
    # After the start: arrival order, exactly.
    for offset in range(10):
        call = join(stack.activities, activity.id, f"late{offset}")
        try:
            await until(call, at(buyers - units + 1 + offset))
        finally:
            call.cancel()


async def test_refusals_over_a_rate_limit_carry_grpc_retry_pushback_ms_beside_retry_info(
        stack: Stack) -> None:
    """Over a user's rate limit (shipped: 20/s, bursts of 40) the refusal's trailers carry
    the RetryInfo delay as grpc-retry-pushback-ms too, the trailer gRPC's retry policy reads;
    and a channel takes examples/service_config.json. (The calls ask for an impossible
    quantity: a refusal without any database work; 80 at once outrun the burst.)"""
    config = (REPO / "examples" / "service_config.json").read_text()
    request = activity_pb2.SeckillRequest(activity_id=1, quantity=5000, user_id="u")
    refused = []
    async with grpc.aio.insecure_channel(
            stack.activity.address, options=[("grpc.service_config", config)]) as channel:
        stub = activity_pb2_grpc.ActivityServiceStub(channel)
        answers = await asyncio.gather(*(stub.Seckill(request) for _ in range(80)),
                                       return_exceptions=True)
    for answer in answers:
        assert isinstance(answer, grpc.aio.AioRpcError)
        if answer.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            refused.append(answer)
    assert refused
    for error in refused:
        delay = error_details(error)["RetryInfo"].retry_delay.ToMilliseconds()
        trailers = dict(error.trailing_metadata() or ())
        assert trailers["grpc-retry-pushback-ms"] == str(delay)


async def test_join_refusals(stack: Stack) -> None:
    product = await make_product(stack, stock=5)
    plain = await make_activity(stack, product.id)
    later = await make_activity(stack, product.id, start_s=7200, end_s=9000,
                                waiting_room=ROOM)  # its pre-queue opens in 90 min
    ended = await make_activity(stack, product.id, start_s=-60, end_s=-1, waiting_room=ROOM)
    for activity_id, reason in ((plain.id, "NO_WAITING_ROOM"), (later.id, "NOT_STARTED"),
                                (ended.id, "ENDED")):
        call = join(stack.activities, activity_id, "u")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_details(raised.value)["ErrorInfo"].reason == reason
    call = join(stack.activities, later.id, "u", quantity=2)  # per_user_limit 1
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert error_details(raised.value)["ErrorInfo"].reason == "QUANTITY_OVER_LIMIT"
    for bad in (activity_pb2.JoinQueueRequest(activity_id=0, user_id="u"),
                activity_pb2.JoinQueueRequest(activity_id=plain.id, user_id="")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.activities.JoinQueue(bad).read()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = join(stack.activities, 10**9, "u")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_waiting_buyer_costs_messages_not_reads(stack: Stack) -> None:
    activity = await room_sale(stack, stock=1)
    await until(join(stack.activities, activity.id, "holder"), state(activity_pb2.ADMITTED))
    buyers = 200
    calls = [join(stack.activities, activity.id, f"w{i}") for i in range(buyers)]
    try:
        await asyncio.gather(*(until(call, state(activity_pb2.WAITING)) for call in calls))
        transactions: list[str] = []
        database = stack.activity.database
        real = database.transaction

        def counted() -> Any:
            task = asyncio.current_task()
            # The mover and its lease's renewals are per process, not per buyer.
            if task is None or not task.get_name().startswith("queue-mover"):
                transactions.append("")
            return real()

        database.transaction = counted  # type: ignore[method-assign]
        try:
            await asyncio.sleep(2.0)  # waiting is what is measured: nothing to await
        finally:
            database.transaction = real  # type: ignore[method-assign]
        # One read of the line per poll (250 ms) for all 200, not one per buyer.
        assert len(transactions) <= 2.0 / stack.activity.settings.queue.poll_interval_s + 3
    finally:
        for call in calls:
            call.cancel()
