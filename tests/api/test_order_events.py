"""Order events through real servers: one event per state change, in the change's own
transaction; the feed (ListOrderEvents, WatchOrderEvents) served below the watermark, resumable,
refusing pruned positions (docs/EVENTS.md)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pymysql
import pytest
from google.protobuf import duration_pb2
from seckill.v1 import activity_pb2, order_events_pb2, order_events_pb2_grpc, order_pb2

from activity_svc.seckill import EngineSettings, SeckillEngine
from order_svc import event_store as order_events
from order_svc.event_service import Pruner
from order_svc.server import DEFINITION as ORDER
from seckill_common.database.db import Database, create_pool
from seckill_common.database.transaction import Transaction
from seckill_common.runtime.server import start_service
from tests.helpers.factories import buy, make_activity, make_product, timestamp
from tests.helpers.flash_sale import report
from tests.helpers.polling import eventually
from tests.helpers.rpc import refused, rpc_error
from tests.helpers.stack import (
    ADMIN,
    REPO,
    Stack,
    query,
    settings_for,
    start_stack,
    subprocess_env,
)

Event = order_events_pb2.OrderEvent


async def all_events(stub: order_events_pb2_grpc.OrderEventServiceAsyncStub, after: int = 0,
                     page_size: int = 0) -> list[Event]:
    """Every event after `after`, page by page."""
    events: list[Event] = []
    token = ""
    while True:
        page = await stub.ListOrderEvents(order_events_pb2.ListOrderEventsRequest(
            after_revision=after, page_size=page_size, page_token=token), metadata=ADMIN)
        events += page.events
        token = page.next_page_token
        if not token:
            return events


async def test_each_state_change_yields_one_event_with_the_order_after_it(stack: Stack) -> None:
    product = await make_product(stack, stock=10)
    activity = await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(
            product_id=product.id, name="Quick", start_time=timestamp(-1),
            end_time=timestamp(3600), payment_window=duration_pb2.Duration(seconds=1))),
        metadata=ADMIN)
    paid, cancelled, lapsed = [await buy(stack, activity.id, u) for u in ("ann", "bob", "cy")]
    await rpc_error(buy(stack, activity.id, "ann"), grpc.StatusCode.ALREADY_EXISTS)  # no event
    ids = {"ann": paid.id, "bob": cancelled.id, "cy": lapsed.id}
    await stack.orders.PayOrder(order_pb2.PayOrderRequest(id=paid.id), metadata=ADMIN)
    await stack.orders.PayOrder(order_pb2.PayOrderRequest(id=paid.id), metadata=ADMIN)  # repeat
    await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=cancelled.id), metadata=ADMIN)

    async def expired() -> bool:
        return (await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=lapsed.id))
                ).state == order_pb2.EXPIRED
    await eventually(expired, "the unpaid order expired", timeout_s=15)

    events = await all_events(stack.events, page_size=2)  # pages of two: the tokens too
    assert [(e.order.id, e.type) for e in events] == [
        (ids["ann"], Event.CREATED), (ids["bob"], Event.CREATED), (ids["cy"], Event.CREATED),
        (ids["ann"], Event.PAID), (ids["bob"], Event.CANCELLED), (ids["cy"], Event.EXPIRED)]
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert len({e.event_id for e in events}) == len(events)
    for event in events[3:]:  # the last change of each order: its snapshot is the order now
        now = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=event.order.id))
        assert event.order == now
        assert event.create_time == now.update_time
    created = events[0].order
    assert (created.user_id, created.state, created.activity_id) == (
        "ann", order_pb2.PENDING_PAYMENT, activity.id)
    assert created.create_time == paid.create_time and created.pay_deadline == paid.pay_deadline
    last = await stack.events.ListOrderEvents(order_events_pb2.ListOrderEventsRequest(
        after_revision=revisions[-1]), metadata=ADMIN)
    assert not last.events and last.revision == revisions[-1]


@pytest.fixture
async def database(stack: Stack) -> AsyncIterator[Database]:
    db = Database(await create_pool(settings_for(stack.db_url)))
    yield db
    await db.close()


async def test_a_seckill_batch_that_rolls_back_writes_no_event(
        stack: Stack, database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)
    engine = SeckillEngine(database, EngineSettings(batch_window_s=0.2))
    await engine.buy(activity.id, "before")
    real = Transaction.pipeline

    async def fail_before_the_commit(tx: Transaction, sql: str, params: object, *,
                                     commit: bool = False) -> object:
        # The server runs the orders' INSERT, the stock's UPDATE and the events' INSERT, then
        # fails before the COMMIT.
        return await real(tx, sql + "; SELECT * FROM no_such_table" if commit else sql,
                          params, commit=commit)  # type: ignore[arg-type]

    monkeypatch.setattr(Transaction, "pipeline", fail_before_the_commit)
    results = await asyncio.gather(*(engine.buy(activity.id, f"u{i}") for i in range(6)),
                                   return_exceptions=True)
    assert all(isinstance(r, pymysql.err.ProgrammingError) for r in results), results
    monkeypatch.setattr(Transaction, "pipeline", real)
    events = await all_events(stack.events)
    assert [(e.type, e.order.user_id) for e in events] == [(Event.CREATED, "before")]
    assert await query(stack.db_url, "SELECT COUNT(*) FROM order_events") == [(1,)]


async def watch(stub: order_events_pb2_grpc.OrderEventServiceAsyncStub, after: int) -> Any:
    """The stream (a grpc.aio.UnaryStreamCall: its stub types it as an iterator only)."""
    return stub.WatchOrderEvents(order_events_pb2.WatchOrderEventsRequest(after_revision=after),
                                 metadata=ADMIN)


async def test_the_watch_resumes_after_a_restart_with_no_gap_and_no_repeat(
        db_url: str) -> None:
    # Progress messages every 100 ms rather than the shipped interval: the test waits for a
    # checkpoint on the idle stream before the restart.
    stack = await start_stack(db_url, SECKILL_EVENTS_PROGRESS_INTERVAL_MS="100")
    try:
        product = await make_product(stack, stock=100)
        activity = await make_activity(stack, product.id)
        seen: list[Event] = []
        stream = await watch(stack.events, 0)
        first = await stream.read()  # the start: progress at revision 0
        assert not first.events and first.revision == 0
        for i in range(5):
            await buy(stack, activity.id, f"a{i}")
        last = 0
        while len(seen) < 5:
            message = await stream.read()
            seen += message.events
            last = message.revision
        stream.cancel()
        # The order service restarts; sales go on meanwhile.
        await stack.order.stop(0)
        buying = asyncio.gather(*(buy(stack, activity.id, f"b{i}") for i in range(5)))
        order = await start_service(ORDER, settings_for(
            db_url, SECKILL_ORDER_ADDR=stack.order.address,  # the restarted one, as above
            SECKILL_EVENTS_PROGRESS_INTERVAL_MS="100"))
        stack.order = order
        await buying
        channel = grpc.aio.insecure_channel(order.address)
        resumed = order_events_pb2_grpc.OrderEventServiceStub(channel)
        stream = await watch(resumed, last)
        while len(seen) < 10:
            seen += (await stream.read()).events
        stream.cancel()
        await channel.close()
        users = [e.order.user_id for e in seen]
        assert sorted(users) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
        assert [e.revision for e in seen] == sorted({e.revision for e in seen})
        assert seen == await all_events(stack.events)
    finally:
        await stack.stop()


async def test_an_idle_watch_gets_progress_messages(db_url: str) -> None:
    # A short progress interval, so that several progress messages arrive within the test.
    stack = await start_stack(db_url, SECKILL_EVENTS_PROGRESS_INTERVAL_MS="50")
    try:
        product = await make_product(stack, stock=1)
        activity = await make_activity(stack, product.id)
        await buy(stack, activity.id, "only")
        stream = await watch(stack.events, 0)
        messages = [await stream.read() for _ in range(4)]
        stream.cancel()
        assert [len(m.events) for m in messages] == [1, 0, 0, 0]
        assert {m.revision for m in messages} == {messages[0].events[0].revision}
        assert all(m.read_time.seconds > 0 for m in messages)
    finally:
        await stack.stop()


async def test_a_pruned_position_is_refused_and_zero_starts_at_the_oldest_kept(
        stack: Stack) -> None:
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)
    for user in ("a", "b", "c"):
        await buy(stack, activity.id, user)
    events = await all_events(stack.events)
    # Retention deleted the first two (as event_store.prune does).
    await query(stack.db_url, "DELETE FROM order_events WHERE revision <= %s",
                (events[1].revision,))
    await query(stack.db_url, "UPDATE order_event_marks SET revision = %s WHERE name = 'pruned'",
                (events[1].revision,))
    reason, metadata = await refused(stack.events.ListOrderEvents(
        order_events_pb2.ListOrderEventsRequest(after_revision=events[0].revision),
        metadata=ADMIN), grpc.StatusCode.FAILED_PRECONDITION)
    assert (reason, metadata) == ("EVENTS_PRUNED", {"pruned_through": str(events[1].revision)})
    stream = await watch(stack.events, events[0].revision)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stream.read()
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await all_events(stack.events) == events[2:]
    assert await all_events(stack.events, events[1].revision) == events[2:]


async def test_the_feed_is_admin_only_and_checks_its_request(stack: Stack) -> None:
    request = order_events_pb2.ListOrderEventsRequest()
    await rpc_error(stack.events.ListOrderEvents(request), grpc.StatusCode.UNAUTHENTICATED)
    stream = stack.events.WatchOrderEvents(order_events_pb2.WatchOrderEventsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stream.read()
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await rpc_error(stack.events.ListOrderEvents(order_events_pb2.ListOrderEventsRequest(
        after_revision=-1), metadata=ADMIN), grpc.StatusCode.INVALID_ARGUMENT)


async def test_events_off_writes_none_and_the_feed_says_so(db_url: str) -> None:
    stack = await start_stack(db_url, SECKILL_EVENTS_ENABLED="false")  # the setting under test
    try:
        product = await make_product(stack, stock=3)
        activity = await make_activity(stack, product.id)
        order = await buy(stack, activity.id, "x")
        await stack.orders.PayOrder(order_pb2.PayOrderRequest(id=order.id), metadata=ADMIN)
        assert await query(db_url, "SELECT COUNT(*) FROM order_events") == [(0,)]
        reason, _ = await refused(stack.events.ListOrderEvents(
            order_events_pb2.ListOrderEventsRequest(), metadata=ADMIN),
            grpc.StatusCode.FAILED_PRECONDITION)
        assert reason == "EVENTS_DISABLED"
    finally:
        await stack.stop()


async def test_eight_writers_in_two_processes_never_make_a_reader_skip_an_event(
        stack: Stack) -> None:
    """Transactions commit out of insertion order (each holds its event open a while, some
    roll back); a WatchOrderEvents reader must still end up with every committed event, each
    once, in revision order. A reader that trusts the writers' own order (the inbox's ids,
    taken at insert) is the control: it skips events that commit below what it has passed."""
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    order = await buy(stack, activity.id, "writer")
    stream = await watch(stack.events, 0)
    seen: list[Event] = []
    naive_seen: set[str] = set()
    env = subprocess_env(stack.db_url)
    writers = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.helpers.event_writers", stack.db_url, str(order.id), "4",
        "4", env=env, cwd=str(REPO), stdout=asyncio.subprocess.PIPE) for _ in range(2)]

    async def naive_reader() -> None:
        cursor = 0
        while any(w.returncode is None for w in writers):
            [(newest,)] = await query(stack.db_url, "SELECT COALESCE(MAX(id), 0)"
                                      " FROM order_event_inbox")
            rows = await query(stack.db_url, "SELECT event_id FROM order_event_inbox WHERE id"
                               " > %s AND id <= %s", (cursor, newest))
            naive_seen.update(str(r) for (r,) in rows)
            cursor = max(cursor, int(newest))
            await asyncio.sleep(0.005)

    async def feed_reader() -> None:
        while True:
            seen.extend((await stream.read()).events)

    reading = asyncio.gather(naive_reader(), feed_reader())
    outputs = [await w.communicate() for w in writers]
    committed = sum(int(out) for out, _ in outputs) + 1  # and the order's CREATED
    assert committed > 100, committed

    async def caught_up() -> bool:
        return len(seen) >= committed
    await eventually(caught_up, "the feed reader got every committed event")
    reading.cancel()
    stream.cancel()
    final = await query(stack.db_url,
                        "SELECT revision, event_id FROM order_events ORDER BY revision")
    assert len(final) == committed
    assert [e.revision for e in seen] == [r for r, _ in final]  # each once, in order
    skipped = {str(e) for _, e in final[1:]} - naive_seen  # the first was the order's own
    assert skipped, "the control reader skipped nothing: no out-of-order commit"
    report("eight event writers in two processes", {
        "committed": committed, "control_reader_skipped": len(skipped)})


async def test_retention_deletes_the_oldest_events_and_never_ones_the_relay_has_not_sent(
        stack: Stack, database: Database) -> None:
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)
    for user in ("a", "b", "c"):
        await buy(stack, activity.id, user)
    events = await all_events(stack.events)
    # Behind the relay: it has sent none, so none may go.
    assert await database.run(lambda tx: order_events.prune(
        tx, 0, behind_relay=True, limit=10)) == 0
    assert await database.run(lambda tx: order_events.prune(
        tx, 0, behind_relay=False, limit=2)) == 2
    reason, metadata = await refused(stack.events.ListOrderEvents(
        order_events_pb2.ListOrderEventsRequest(after_revision=events[0].revision),
        metadata=ADMIN), grpc.StatusCode.FAILED_PRECONDITION)
    assert (reason, metadata) == ("EVENTS_PRUNED", {"pruned_through": str(events[1].revision)})
    assert await all_events(stack.events) == events[2:]
    # Events younger than the retention stay.
    assert await database.run(lambda tx: order_events.prune(
        tx, 3600, behind_relay=False, limit=10)) == 0


async def test_with_no_reader_the_pruners_sweep_sequences_the_inbox(
        stack: Stack, database: Database) -> None:
    """Readers sequence the inbox as they read; with none (no watcher, no relay, no list) the
    retention sweep does, so the inbox cannot only grow."""
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)
    for user in ("a", "b", "c"):
        await buy(stack, activity.id, user)
    assert await query(stack.db_url, "SELECT COUNT(*) FROM order_event_inbox") == [(3,)]
    await Pruner(database, stack.order.settings.events).prune()
    assert await query(stack.db_url, "SELECT COUNT(*) FROM order_event_inbox") == [(0,)]
    assert await query(stack.db_url, "SELECT COUNT(*) FROM order_events") == [(3,)]
