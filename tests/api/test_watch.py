"""WatchActivity through real servers (shipped defaults): the whole view first, then the state
flips by the database's clock, a sale's units, changes made by other services and processes,
the stream cap, the lifetime, the drain, a database outage."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomysql
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from seckill.v1 import activity_pb2, activity_pb2_grpc, order_pb2, product_pb2

from activity_svc.watch import FRESHNESS_BOUND_S
from seckill_common.api.times import to_datetime
from tests.helpers.factories import make_activity, make_product
from tests.helpers.processes import start_processes
from tests.helpers.rpc import error_details
from tests.helpers.stack import (
    ADMIN,
    PrivateMariaDB,
    Stack,
    create_database,
    query,
    start_stack,
)
from tests.helpers.watching import watch

Response = activity_pb2.WatchActivityResponse
# Awaiting a message that the bound promises: the bound, plus slack for a busy 2-core machine.
WITHIN_BOUND_S = FRESHNESS_BOUND_S + 1.0


async def next_until(call: Any,
                     accept: Callable[[Response], bool],
                     timeout_s: float = WITHIN_BOUND_S) -> tuple[Response, list[Response]]:
    """Reads messages until one satisfies `accept`; returns it and every message read."""
    seen: list[Response] = []
    async with asyncio.timeout(timeout_s):
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, f"stream ended: {await call.code()}"
            seen.append(message)
            if accept(message):
                return message, seen


async def ending(call: Any, timeout_s: float = WITHIN_BOUND_S
                 ) -> tuple[list[Response], grpc.aio.AioRpcError]:
    """Reads the stream to its end; returns the messages and the status it ended with."""
    messages: list[Response] = []
    async with asyncio.timeout(timeout_s):
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                messages.append(message)
        except grpc.aio.AioRpcError as error:
            return messages, error
    raise AssertionError(f"the stream ended OK after {len(messages)} messages")


def moment(ts: object) -> dt.datetime:
    return to_datetime(ts)  # type: ignore[arg-type]


async def test_first_message_is_the_whole_view(stack: Stack) -> None:
    product = await make_product(stack, stock=7)
    activity = await make_activity(stack, product.id)
    call = watch(stack.activities, activity.id)
    first = await call.read()
    call.cancel()
    assert first.activity.id == activity.id and first.activity.name == activity.name
    assert first.activity.product.id == product.id and first.activity.product.name == "Phone"
    assert first.units_left == 7 and first.activity.product.stock == 7
    assert first.state == activity_pb2.OPEN
    assert first.revision >= 1
    # The database's clock, within the window the server itself created.
    assert moment(first.activity.start_time) <= moment(first.read_time) < moment(
        first.activity.end_time)


async def test_the_watched_activity_is_the_one_get_activity_returns(stack: Stack) -> None:
    product = await make_product(stack, stock=7)
    activity = await make_activity(stack, product.id, per_user_limit=3)
    got = await stack.activities.GetActivity(activity_pb2.GetActivityRequest(id=activity.id))
    call = watch(stack.activities, activity.id)
    first = await call.read()
    call.cancel()
    assert got.per_user_limit == 3
    assert first.activity == got  # every field, the embedded product's too


async def test_a_new_per_user_limit_alone_reaches_watchers(stack: Stack) -> None:
    product = await make_product(stack)
    activity = await make_activity(stack, product.id, per_user_limit=3)
    call = watch(stack.activities, activity.id)
    first = await call.read()
    assert first.activity.per_user_limit == 3
    await stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=activity_pb2.Activity(id=activity.id, per_user_limit=5),
        update_mask=field_mask_pb2.FieldMask(paths=["per_user_limit"])), metadata=ADMIN)
    changed, _ = await next_until(call, lambda m: m.revision > first.revision)
    call.cancel()
    assert changed.activity.per_user_limit == 5


async def test_a_later_watcher_is_told_the_clock_of_a_recent_read(stack: Stack) -> None:
    product = await make_product(stack)
    activity = await make_activity(stack, product.id)
    early = watch(stack.activities, activity.id)
    await early.read()
    await asyncio.sleep(1.0)  # time passes while nothing changes (nothing to await)
    ((before,),) = await query(stack.db_url, "SELECT UTC_TIMESTAMP(6)")
    late = watch(stack.activities, activity.id)
    first = await late.read()
    early.cancel()
    late.cancel()
    # The feed's last read is at most one poll old, though the view is the first one.
    poll_s = stack.activity.settings.watch.poll_interval_s
    assert moment(first.read_time) >= before.replace(tzinfo=dt.UTC) - dt.timedelta(
        seconds=poll_s + 0.1)


async def test_state_flips_at_start_and_end_by_the_database_clock(stack: Stack) -> None:
    product = await make_product(stack, stock=3)
    activity = await make_activity(stack, product.id, start_s=1.5, end_s=3.0)
    call = watch(stack.activities, activity.id)
    first = await call.read()
    assert first.state == activity_pb2.NOT_STARTED
    opened, _ = await next_until(call, lambda m: m.state != activity_pb2.NOT_STARTED,
                                 timeout_s=1.5 + WITHIN_BOUND_S)
    assert opened.state == activity_pb2.OPEN
    assert moment(opened.read_time) >= moment(activity.start_time)
    ended, _ = await next_until(call, lambda m: m.state != activity_pb2.OPEN,
                                timeout_s=1.5 + WITHIN_BOUND_S)
    assert ended.state == activity_pb2.ENDED
    assert moment(ended.read_time) >= moment(activity.end_time)
    assert first.revision < opened.revision < ended.revision
    call.cancel()


async def test_a_sale_shows_units_falling_then_sold_out(stack: Stack) -> None:
    product = await make_product(stack, stock=20)
    activity = await make_activity(stack, product.id)
    call = watch(stack.activities, activity.id, min_interval_ms=100)
    first = await call.read()
    assert (first.state, first.units_left) == (activity_pb2.OPEN, 20)

    async def buy(i: int) -> None:
        await stack.activities.Seckill(
            activity_pb2.SeckillRequest(activity_id=activity.id, user_id=f"u{i}"))

    buyers = [asyncio.ensure_future(buy(i)) for i in range(20)]
    sold_out, seen = await next_until(call, lambda m: m.state != activity_pb2.OPEN)
    await asyncio.gather(*buyers)
    call.cancel()
    assert (sold_out.state, sold_out.units_left) == (activity_pb2.SOLD_OUT, 0)
    units = [first.units_left] + [m.units_left for m in seen]
    assert units == sorted(units, reverse=True), units
    revisions = [first.revision] + [m.revision for m in seen]
    assert revisions == sorted(set(revisions)), revisions


@asynccontextmanager
async def products_locked(db_url: str) -> AsyncIterator[None]:
    """Another session holds the products table for writing: every read of it waits."""
    base, name = db_url.rsplit("/", 1)
    host, port = base.rsplit("@", 1)[1].split(":")
    conn = await aiomysql.connect(host=host, port=int(port), user="root", db=name)
    try:
        async with conn.cursor() as cur, asyncio.timeout(WITHIN_BOUND_S):
            await cur.execute("LOCK TABLES products WRITE")
        yield
    finally:
        conn.close()  # the lock goes with the session


@pytest.mark.parametrize("reads", ["answer", "stall"])
async def test_a_view_older_than_the_bound_is_never_sent_as_current(stack: Stack,
                                                                   reads: str) -> None:
    """The process stalls (its loop blocked, as by a long GC, a VM pause or a starved CPU)
    while a change of units waits out the watcher's interval: once it runs again, the watcher
    gets a view read after the stall, or, when no read can be had (`stall`: the database
    makes reads wait), UNAVAILABLE with RetryInfo to resume; never the view read before it."""
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)
    call = watch(stack.activities, activity.id, min_interval_ms=2000)
    assert (await call.read()).units_left == 10  # the next change of units waits 2 s
    await stack.activities.Seckill(
        activity_pb2.SeckillRequest(activity_id=activity.id, user_id="u1"))
    # The feed holds the sale's view: a new watcher's first message shows it.
    other = watch(stack.activities, activity.id)
    await next_until(other, lambda m: m.units_left == 9)
    other.cancel()
    async with contextlib.AsyncExitStack() as faults:
        if reads == "stall":
            await faults.enter_async_context(products_locked(stack.db_url))
        # The fault: this whole process (servers and test) stops for longer than the
        # interval and the bound, with the view of 9 units due to the watcher.
        time.sleep(3 * FRESHNESS_BOUND_S)  # noqa: ASYNC251 - blocking the loop is the fault
        async with asyncio.timeout(WITHIN_BOUND_S):
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert "RetryInfo" in error_details(error)
                return
    assert reads == "answer", f"a view was sent while no read could be had: {message}"
    ((now,),) = await query(stack.db_url, "SELECT UTC_TIMESTAMP(6)")
    assert message is not grpc.aio.EOF and message.units_left == 9
    age = now.replace(tzinfo=dt.UTC) - moment(message.read_time)
    # The view read before the stall would be 3 s old; one read after it is within the bound
    # (and the few milliseconds of this check).
    assert age <= dt.timedelta(seconds=FRESHNESS_BOUND_S), age
    call.cancel()


async def sold_out_then_back(stack: Stack, watcher: activity_pb2_grpc.ActivityServiceAsyncStub,
                             buyer: activity_pb2_grpc.ActivityServiceAsyncStub) -> None:
    """Sells out through `buyer`; a cancel (order service), then a restock (product service)
    bring OPEN back to a watcher of `watcher` within the bound."""
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    call = watch(watcher, activity.id)
    assert (await call.read()).state == activity_pb2.OPEN
    won = await buyer.Seckill(activity_pb2.SeckillRequest(activity_id=activity.id, user_id="a"))
    await next_until(call, lambda m: m.state == activity_pb2.SOLD_OUT)

    await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=won.order.id),
                                   metadata=ADMIN)
    back, _ = await next_until(call, lambda m: m.state == activity_pb2.OPEN)
    assert back.units_left == 1

    await buyer.Seckill(activity_pb2.SeckillRequest(activity_id=activity.id, user_id="b"))
    await next_until(call, lambda m: m.state == activity_pb2.SOLD_OUT)
    await stack.products.UpdateProduct(
        product_pb2.UpdateProductRequest(product=product_pb2.Product(id=product.id, stock=5),
                                         update_mask=field_mask_pb2.FieldMask(paths=["stock"])),
        metadata=ADMIN)
    restocked, _ = await next_until(call, lambda m: m.state == activity_pb2.OPEN)
    assert restocked.units_left == 5

    renamed = activity_pb2.Activity(id=activity.id, name="Renamed sale")
    await buyer.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=renamed, update_mask=field_mask_pb2.FieldMask(paths=["name"])), metadata=ADMIN)
    await next_until(call, lambda m: m.activity.name == "Renamed sale")

    await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=won.order.id + 1),
                                   metadata=ADMIN)
    for order_id in (won.order.id, won.order.id + 1):
        await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order_id),
                                       metadata=ADMIN)
    await buyer.DeleteActivity(activity_pb2.DeleteActivityRequest(id=activity.id),
                               metadata=ADMIN)
    _, error = await ending(call)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "ResourceInfo" in error_details(error)


async def test_cancel_restock_update_and_delete_reach_watchers(stack: Stack) -> None:
    await sold_out_then_back(stack, stack.activities, stack.activities)


@pytest.mark.slow
async def test_changes_made_through_another_activity_process_reach_watchers(
        stack: Stack, second_activity: activity_pb2_grpc.ActivityServiceAsyncStub) -> None:
    # Sales, updates and the delete go through the other process; the watcher watches this one.
    await sold_out_then_back(stack, stack.activities, second_activity)


async def test_unknown_and_invalid_ids(stack: Stack) -> None:
    messages, error = await ending(watch(stack.activities, 999_999))
    assert messages == [] and error.code() == grpc.StatusCode.NOT_FOUND
    assert "ResourceInfo" in error_details(error)
    messages, error = await ending(watch(stack.activities, 0))
    assert messages == [] and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = activity_pb2.WatchActivityRequest(
        id=1, min_interval=duration_pb2.Duration(seconds=-1))
    messages, error = await ending(stack.activities.WatchActivity(request))
    assert messages == [] and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BadRequest" in error_details(error)


async def test_streams_beyond_the_cap_are_resource_exhausted(db_url: str) -> None:
    stack = await start_stack(db_url, SECKILL_WATCH_MAX_STREAMS="2")  # the cap under test
    try:
        product = await make_product(stack)
        activity = await make_activity(stack, product.id)
        first, second = watch(stack.activities, activity.id), watch(stack.activities,
                                                                     activity.id)
        await first.read()
        await second.read()
        messages, error = await ending(watch(stack.activities, activity.id))
        assert messages == [] and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = error_details(error)
        assert "RetryInfo" in details and "QuotaFailure" in details
        first.cancel()
        # The cancelled stream's place is free once its handler ended: await that by retrying.
        async with asyncio.timeout(WITHIN_BOUND_S):
            while True:
                again = watch(stack.activities, activity.id)
                try:
                    await again.read()
                    break
                except grpc.aio.AioRpcError as refused:
                    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        again.cancel()
        second.cancel()
    finally:
        await stack.stop()


async def test_a_stream_ends_after_its_lifetime_with_unavailable(db_url: str) -> None:
    stack = await start_stack(db_url, SECKILL_WATCH_MAX_LIFETIME="1")  # the lifetime under test
    try:
        product = await make_product(stack)
        activity = await make_activity(stack, product.id)
        messages, error = await ending(watch(stack.activities, activity.id),
                                       timeout_s=1 + WITHIN_BOUND_S)
        assert len(messages) >= 1 and error.code() == grpc.StatusCode.UNAVAILABLE
        assert "RetryInfo" in error_details(error)
    finally:
        await stack.stop()


@pytest.mark.slow
async def test_sigterm_ends_streams_with_unavailable_without_waiting_the_grace(
        stack: Stack, tmp_path: Path) -> None:
    # A grace far longer than the test may take: the drain must not wait it out for streams.
    product = await make_product(stack)
    activity = await make_activity(stack, product.id)
    async with start_processes("activity", 1, stack.db_url, tmp_path, peers=stack,
                               SECKILL_SHUTDOWN_GRACE="120") as extra:
        calls = [watch(extra.activities[0], activity.id) for _ in range(5)]
        for call in calls:
            await call.read()
        assert await extra.stop(0, signal.SIGTERM) == 0
        for call in calls:
            messages, error = await ending(call)
            assert messages == [] and error.code() == grpc.StatusCode.UNAVAILABLE
            assert "RetryInfo" in error_details(error)


@pytest.mark.slow
async def test_a_database_outage_ends_streams_with_unavailable(tmp_path: Path) -> None:
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    try:
        stack = await start_stack(await create_database(server.url_base))
        try:
            product = await make_product(stack)
            activity = await make_activity(stack, product.id)
            call = watch(stack.activities, activity.id)
            await call.read()
            server.kill()
            # Rather than go quiet with a view it cannot refresh, the stream ends (resume).
            _, error = await ending(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "RetryInfo" in error_details(error)
        finally:
            await stack.stop()
    finally:
        server.stop()
