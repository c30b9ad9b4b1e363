"""A database link that goes silent without a reset, and sessions that go idle mid-transaction:
every wait ends in bounded time, nothing is pooled with a reply unread, and everything recovers
by itself once the database answers again.

The silence is `SilentLink` (seckill_stack/silent_link.py), a proxy between a service and the
tests' MariaDB that stops forwarding without closing anything. Every test runs the shipped
defaults unless it says why beside the setting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiomysql
import grpc
import pymysql
import pytest
from google.protobuf import duration_pb2
from seckill.v1 import (
    activity_pb2,
    order_events_pb2,
    order_pb2,
    product_pb2,
    product_pb2_grpc,
)

from activity_svc.server import DEFINITION as ACTIVITY
from order_svc.server import DEFINITION as ORDER
from product_svc.server import DEFINITION as PRODUCT
from seckill_common.database.db import Database, create_pool
from seckill_common.database.sessions import connect_kwargs
from seckill_common.database.transaction import Transaction
from seckill_common.runtime.server import RunningService, start_service
from seckill_stack.silent_link import SilentLink
from tests.helpers.factories import timestamp
from tests.helpers.flash_sale import NOT_SERVING, SERVING, WAIT_S, health_becomes
from tests.helpers.polling import eventually
from tests.helpers.stack import ADMIN, Stack, query, settings_for

pytestmark = pytest.mark.slow

# How much later than its own deadline a caller may be answered (the event loop, the wire).
SLACK_S = 0.5
GONE = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}


@pytest.fixture
async def link(mariadb: str) -> AsyncIterator[SilentLink]:
    """A silent-able link to the tests' MariaDB."""
    proxy = SilentLink(int(mariadb.rsplit(":", 1)[1]))
    await proxy.start()
    yield proxy
    await proxy.close()


def through(link: SilentLink, db_url: str) -> str:
    """`db_url`'s database, reached through `link`."""
    return f"{link.url_base()}/{db_url.rsplit('/', 1)[1]}"


async def timed(call: Awaitable[Any]) -> tuple[grpc.StatusCode, float]:
    """A call's status code and how long it took to answer."""
    started = time.monotonic()
    try:
        await call
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        code = err.code()
    return code, time.monotonic() - started


async def session_exists(db_url: str, thread_id: int) -> bool:
    rows = await query(db_url, "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                               " WHERE ID = %s", (thread_id,))
    return bool(rows[0][0])


async def test_the_link_forwards_blackholes_and_heals(db_url: str, link: SilentLink) -> None:
    """The tool itself: through it a query answers; silent, it neither answers nor closes;
    healed, the held query answers, unless its connection was lost with the silence."""
    url = through(link, db_url)
    assert await query(url, "SELECT 1") == [(1,)]
    settings = settings_for(url)
    conn = await aiomysql.connect(**connect_kwargs(settings))
    lost = await aiomysql.connect(**connect_kwargs(settings))
    try:
        link.blackhole()
        cur = await conn.cursor()
        held = asyncio.create_task(cur.execute("SELECT 2"))
        await eventually(lambda: _holds(link), "the proxy holds the query")
        done, _ = await asyncio.wait({held}, timeout=0.5)
        assert not done and not conn.closed  # silent: no answer, no reset
        link.heal()
        async with asyncio.timeout(WAIT_S):
            await held
        assert await cur.fetchall() == ((2,),)

        link.blackhole()
        link.heal(lose_held=True)  # `lost` lived through a silence: silent for good
        lost_cur = await lost.cursor()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await lost_cur.execute("SELECT 3")
        assert await query(url, "SELECT 4") == [(4,)]  # new connections get through
    finally:
        conn.close()
        lost.close()


async def _holds(link: SilentLink) -> bool:
    return link.holding > 0


async def test_a_shared_read_whose_link_goes_silent_answers_within_deadlines_and_recovers(
    db_url: str, link: SilentLink
) -> None:
    """GetProduct's single-flight read hangs on a silent link: its callers, and those that
    arrive behind it, are answered within their deadline; once the link heals (the hung
    connection lost for good), reads succeed again without a restart, within the client's
    bound of the silence."""
    service = await start_service(PRODUCT, settings_for(through(link, db_url)))
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            products = product_pb2_grpc.ProductServiceStub(channel)
            product = await products.CreateProduct(product_pb2.CreateProductRequest(
                product=product_pb2.Product(name="Phone", price_cents=100, stock=5)),
                metadata=ADMIN)
            request = product_pb2.GetProductRequest(id=product.id)
            await products.GetProduct(request, timeout=WAIT_S)

            link.blackhole()  # the next read's statement leaves, and no answer comes back
            silenced = time.monotonic()
            first = await asyncio.gather(*(timed(products.GetProduct(request, timeout=1.0))
                                           for _ in range(5)))
            behind = await asyncio.gather(*(timed(products.GetProduct(request, timeout=1.0))
                                            for _ in range(5)))
            for code, took in (*first, *behind):
                assert code in GONE and took <= 1.0 + SLACK_S, (code, took)

            link.heal(lose_held=True)  # the hung read's connection is lost for good
            healed = time.monotonic()
            bound = service.database.bound_s

            async def reads() -> bool:
                code, _ = await timed(products.GetProduct(request, timeout=1.0))
                return code == grpc.StatusCode.OK

            await eventually(reads, "reads succeed again", timeout_s=bound + 5.0,
                             every_s=0.2)
            recovered = time.monotonic() - silenced
            after_heal = time.monotonic() - healed
            print(f"\n[silent] shared read: callers answered in <= "
                  f"{max(t for _, t in (*first, *behind)):.2f}s (deadline 1s); reads again "
                  f"{after_heal:.1f}s after the heal, {recovered:.1f}s after the silence "
                  f"began (client bound {bound:g}s)")
            # A load all of whose callers left is cancelled: reads come back with the callers'
            # deadlines and the connect timeout, not the client's bound.
            assert recovered < bound / 2
    finally:
        await service.stop(0)


@pytest.mark.parametrize("driver_closes", [True, False], ids=["driver-closes", "driver-keeps"])
async def test_a_rollback_cut_off_mid_round_trip_never_reaches_the_next_borrower(
    db_url: str, link: SilentLink, driver_closes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ROLLBACK whose round trip is cancelled (the link went silent right before it, then the
    caller's deadline struck) leaves its reply unread: the connection is dropped and its
    session KILLed, and the next borrower reads its own answer on a new session.

    aiomysql 0.3.2 closes a connection whose packet read is cancelled; "driver-keeps" takes
    that away, to show the database layer does not rely on it (without its own handling, the
    next borrower read the ROLLBACK's reply as its answer)."""
    if not driver_closes:
        monkeypatch.setattr(aiomysql.Connection, "_close_on_cancel", lambda self: None)
    # One pooled connection: were the cut-off one pooled again, the next borrower would get it.
    settings = settings_for(through(link, db_url), SECKILL_DB_POOL_SIZE="1")
    db = Database(await create_pool(settings), settings)
    try:
        first = await db.run(_connection_id)

        async def fails(tx: Transaction) -> None:
            link.blackhole()  # the ROLLBACK that follows goes nowhere
            raise RuntimeError("the work failed")

        cut_off = asyncio.create_task(db.run(fails))
        await eventually(lambda: _holds(link), "the ROLLBACK is on its way")
        cut_off.cancel()  # as a caller's deadline would, mid-round-trip
        with pytest.raises(asyncio.CancelledError):
            await cut_off
        link.heal()  # the ROLLBACK's reply now comes back, to nobody
        second, answer = await db.run(
            lambda tx: _one_row(tx, "SELECT CONNECTION_ID(), 42"))
        assert answer == 42 and second != first
        await eventually(lambda: _gone(db_url, first), "the cut-off session is KILLed")
    finally:
        await db.close()


async def test_a_rollback_that_gets_no_answer_ends_within_the_client_bound(
    db_url: str, link: SilentLink
) -> None:
    """Work without a caller's deadline (a background loop's) fails, and the link goes silent
    for good right before its ROLLBACK: the work's own error comes back within the client's
    bound, not never, and the connection is dropped rather than pooled."""
    settings = settings_for(through(link, db_url))
    db = Database(await create_pool(settings), settings)
    try:
        await db.run(_connection_id)

        async def fails(tx: Transaction) -> None:
            link.blackhole()
            link.heal(lose_held=True)  # this connection's flow is gone; new ones get through
            raise RuntimeError("the work failed")

        started = time.monotonic()
        with pytest.raises(RuntimeError, match="the work failed"):
            await db.run(fails)
        took = time.monotonic() - started
        print(f"\n[silent] an unanswered ROLLBACK ended after {took:.1f}s "
              f"(client bound {db.bound_s:g}s)")
        assert db.bound_s - SLACK_S <= took <= db.bound_s + 2.0
        assert db.pool.freesize == 0  # dropped, not pooled
        assert await db.run(lambda tx: _one_row(tx, "SELECT 42")) == (42,)
    finally:
        await db.close()


async def _connection_id(tx: Transaction) -> int:
    thread_id, = await _one_row(tx, "SELECT CONNECTION_ID()")
    return int(thread_id)


async def _one_row(tx: Transaction, sql: str) -> tuple[Any, ...]:
    await tx.execute(sql)
    row = await tx.fetchone()
    assert row is not None
    return row


async def _gone(db_url: str, thread_id: int) -> bool:
    return not await session_exists(db_url, thread_id)


async def test_a_session_idle_in_a_transaction_is_ended_so_a_seckill_waiting_on_it_proceeds(
    stack: Stack, sale: tuple[product_pb2.Product, activity_pb2.Activity]
) -> None:
    """A session of the services' own settings locks the stock row and goes idle (its process
    frozen, its link silent): the server ends it after SECKILL_DB_IDLE_TRANSACTION_TIMEOUT,
    so a Seckill waiting on that row gets it, before its own lock wait runs out."""
    product, activity = sale
    settings = settings_for(stack.db_url)
    assert settings.db_idle_transaction_timeout_s < settings.db_lock_wait_timeout_s
    pooled, = await stack.activity.database.run(
        lambda tx: _one_row(tx, "SELECT @@SESSION.idle_transaction_timeout"))
    assert pooled == settings.db_idle_transaction_timeout_s  # the services' own sessions
    conn = await aiomysql.connect(**connect_kwargs(settings, bounded=True))
    try:
        cur = await conn.cursor()
        await cur.execute("SELECT stock FROM products WHERE id = %s FOR UPDATE", (product.id,))
        locked = time.monotonic()  # idle from here on, inside the transaction
        reply = await stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id, user_id="waits"), timeout=WAIT_S)
        waited = time.monotonic() - locked
        assert reply.order.user_id == "waits"
        bound = settings.db_idle_transaction_timeout_s
        print(f"\n[silent] idle in a transaction: the Seckill waited {waited:.2f}s "
              f"(idle bound {bound}s, lock wait {settings.db_lock_wait_timeout_s}s)")
        assert bound - SLACK_S <= waited <= bound + 1.5
        with pytest.raises(pymysql.err.OperationalError):  # the server ended the session
            await cur.execute("SELECT 1")
    finally:
        conn.close()


async def test_background_loops_recover_after_a_silent_link(
    db_url: str, link: SilentLink
) -> None:
    """The order service's link goes silent while an order's payment deadline passes: a call
    is answered within its deadline, health turns NOT_SERVING, and after the heal (every
    connection of the silence lost for good) health, the expiry sweeper and the events feed
    carry on by themselves: the order expires and a resuming feed consumer sees it."""
    product_svc = await start_service(PRODUCT, settings_for(db_url))
    order_svc = await start_service(ORDER, settings_for(through(link, db_url)))
    activity_svc = await start_service(ACTIVITY, settings_for(
        db_url, SECKILL_PRODUCT_ADDR=product_svc.address,
        SECKILL_ORDER_ADDR=order_svc.address))
    services: list[RunningService] = [activity_svc, product_svc, order_svc]
    stack = Stack(db_url, product_svc, order_svc, activity_svc)
    try:
        product = await stack.products.CreateProduct(product_pb2.CreateProductRequest(
            product=product_pb2.Product(name="Phone", price_cents=100, stock=5)),
            metadata=ADMIN)
        window = duration_pb2.Duration()
        window.FromMilliseconds(1000)  # the shortest allowed: it passes during the silence
        activity = await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
            activity=activity_pb2.Activity(product_id=product.id, name="Sale",
                                           start_time=timestamp(-1), end_time=timestamp(3600),
                                           payment_window=window)), metadata=ADMIN)
        order = (await stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id, user_id="u1"), timeout=WAIT_S)).order
        expired = asyncio.create_task(_feed_until_expired(stack, order.id))

        link.blackhole()
        silenced = time.monotonic()
        code, took = await timed(stack.orders.ListOrders(order_pb2.ListOrdersRequest(),
                                                         timeout=1.0))
        assert code in GONE and took <= 1.0 + SLACK_S, (code, took)
        async with asyncio.timeout(WAIT_S):
            await health_becomes(order_svc.address, NOT_SERVING)
        unserving = time.monotonic() - silenced

        link.heal(lose_held=True)
        healed = time.monotonic()
        bound = order_svc.database.bound_s
        async with asyncio.timeout(bound + WAIT_S):
            await health_becomes(order_svc.address, SERVING)
        serving = time.monotonic() - healed
        async with asyncio.timeout(bound + WAIT_S):
            await expired
        expiry = time.monotonic() - healed
        got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=order.id),
                                          timeout=WAIT_S)
        assert got.state == order_pb2.EXPIRED
        print(f"\n[silent] background loops: NOT_SERVING {unserving:.1f}s into the silence; "
              f"after the heal SERVING in {serving:.1f}s, the order expired and in the feed "
              f"in {expiry:.1f}s (client bound {bound:g}s)")
        assert expiry <= bound + order_svc.settings.expiry_interval_s + 3.0
    finally:
        await stack.stop()
        for service in services:
            await service.stop(0)


async def _feed_until_expired(stack: Stack, order_id: int) -> None:
    """A WatchOrderEvents consumer that resumes after errors, as a client should, until it
    sees `order_id` expire."""
    after = 0
    while True:
        try:
            stream = stack.events.WatchOrderEvents(
                order_events_pb2.WatchOrderEventsRequest(after_revision=after), timeout=WAIT_S,
                metadata=ADMIN)
            async for message in stream:
                for event in message.events:
                    if (event.order.id == order_id
                            and event.type == order_events_pb2.OrderEvent.EXPIRED):
                        return
                after = message.revision or after
        except grpc.aio.AioRpcError as err:
            assert err.code() in GONE, err
        await asyncio.sleep(0.1)  # a resuming client's pause: nothing to await but time
