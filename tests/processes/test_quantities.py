"""Quantities and per-user limits (issue 17), through real servers with the shipped defaults.

A sale where users ask for 1 to 3 units (half of them twice at once) in one process and across
two; all or nothing, with INSUFFICIENT_STOCK naming a count that was true; cancel and expiry
giving the whole quantity back to the next buyer; a quantity over the limit refused before any
lock; the limit's bounds and the rule for changing it while orders exist.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import pymysql
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from seckill.v1 import activity_pb2, activity_pb2_grpc, order_pb2, product_pb2

from seckill_common.database import migrations
from seckill_stack.invariants import SeckillCheck
from tests.helpers.factories import make_activity, make_product, timestamp
from tests.helpers.flash_sale import holding
from tests.helpers.metrics import delta, expiry_counted, metered_stack, scrape
from tests.helpers.polling import eventually
from tests.helpers.processes import start_processes
from tests.helpers.rpc import bad_fields, error_details, refused
from tests.helpers.stack import (
    ADMIN,
    Stack,
    query,
    settings_for,
)

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
STOCK = 200
USERS = 300
LIMIT = 3
EXPIRY_BOUND_S = 5.0  # the documented bound (two sweeps of 1 s) plus slack for a busy machine


@dataclass(frozen=True)
class Answer:
    user: str
    quantity: int
    outcome: str  # "OK" or the ErrorInfo reason
    number: int  # OK: the order's id; INSUFFICIENT_STOCK: the units it named available


async def ask(stub: activity_pb2_grpc.ActivityServiceAsyncStub, activity_id: int, user: str,
              quantity: int) -> Answer:
    try:
        reply = await stub.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity_id, user_id=user, quantity=quantity), timeout=60)
    except grpc.aio.AioRpcError as exc:
        info = error_details(exc)["ErrorInfo"]
        return Answer(user, quantity, info.reason, int(info.metadata.get("available", "0")))
    order = reply.order
    assert order.quantity == quantity, "an order of another quantity than asked"
    assert order.total_price_cents == order.price_cents * order.quantity
    return Answer(user, quantity, "OK", order.id)


def quantity_of(n: int) -> int:
    return 1 + n % LIMIT


async def rush(stubs: list[activity_pb2_grpc.ActivityServiceAsyncStub],
               activity_id: int) -> list[Answer]:
    """300 users asking 1-3 units; every even-numbered one twice at once (at two processes,
    when there are two)."""
    calls = [ask(stubs[i % len(stubs)], activity_id, f"user-{n}", quantity_of(n))
             for n in range(USERS) for i in range(2 if n % 2 == 0 else 1)]
    return list(await asyncio.gather(*calls))


async def check_sale(stack: Stack, product_id: int, activity_id: int,
                     answers: list[Answer]) -> dict[str, int]:
    """The issue's acceptance, on the answers, in the database and through the API."""
    outcomes = Counter(a.outcome for a in answers)
    assert set(outcomes) <= {"OK", "ALREADY_PURCHASED", "SOLD_OUT", "INSUFFICIENT_STOCK"}, (
        outcomes)
    ok = [a for a in answers if a.outcome == "OK"]
    sold = sum(a.quantity for a in ok)
    [(left,)] = await query(stack.db_url, "SELECT stock FROM products WHERE id = %s",
                            (product_id,))
    assert left >= 0 and sold == STOCK - left <= STOCK, (sold, left)
    rows = await query(stack.db_url, "SELECT user_id, quantity FROM orders"
                       " WHERE activity_id = %s AND active = 1", (activity_id,))
    assert len(rows) == len(ok) and sum(q for _, q in rows) == sold
    holders = Counter(u.decode() for u, _ in rows)
    assert max(holders.values()) == 1, "a user with two active orders"
    assert all(q <= LIMIT for _, q in rows), "a user over the limit"
    # Every INSUFFICIENT_STOCK named a count that was true: the stock only fell during the
    # sale, so at least what is left now, at least 1 (else SOLD_OUT), fewer than asked.
    short = [a for a in answers if a.outcome == "INSUFFICIENT_STOCK"]
    assert all(max(left, 1) <= a.number < a.quantity for a in short), short
    assert all(left == 0 for a in answers if a.outcome == "SOLD_OUT")
    # Finished: whatever is left, every user refused for want of units asked for more.
    refused_users = {a.user for a in short} | {a.user for a in answers if a.outcome == "SOLD_OUT"}
    assert not refused_users & set(holders)
    assert all(quantity_of(int(u.split("-")[1])) > left for u in refused_users)
    api = SeckillCheck(stack.activity.address, stack.order.address, activity_id,
                       product_addr=stack.product.address, initial_stock=STOCK)
    failed = [c for c in await api.verify(len(ok), [a.number for a in ok], ok_units=sold)
              if not c.ok]
    assert not failed, failed
    return {"sold": sold, "left": left, **outcomes}


async def test_300_users_asking_1_to_3_units_on_200(stack: Stack) -> None:
    product = await make_product(stack, stock=STOCK)
    activity = await make_activity(stack, product.id, per_user_limit=LIMIT)
    answers = await rush([stack.activities], activity.id)
    summary = await check_sale(stack, product.id, activity.id, answers)
    assert summary["sold"] >= STOCK - (LIMIT - 1)


@pytest.mark.slow
async def test_the_same_across_two_activity_processes(stack: Stack, tmp_path: Path) -> None:
    product = await make_product(stack, stock=STOCK)
    activity = await make_activity(stack, product.id, per_user_limit=LIMIT)
    async with start_processes("activity", 2, stack.db_url, tmp_path, peers=stack) as extra:
        answers = await rush(extra.activities, activity.id)
    await check_sale(stack, product.id, activity.id, answers)


# --- units go back whole ---------------------------------------------------------------------

async def test_a_cancel_gives_the_whole_quantity_back_to_the_next_buyer(stack: Stack) -> None:
    product = await make_product(stack, stock=3)  # at 9900 cents a unit
    activity = await make_activity(stack, product.id, per_user_limit=LIMIT)
    order = (await stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity.id, user_id="alice", quantity=3))).order
    assert (order.quantity, order.price_cents, order.total_price_cents) == (3, 9900, 29700)
    assert (await ask(stack.activities, activity.id, "bob", 1)).outcome == "SOLD_OUT"
    cancelled = await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=order.id),
                                               metadata=ADMIN)
    assert (cancelled.state, cancelled.quantity) == (order_pb2.CANCELLED, 3)
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.stock == 3
    assert (await ask(stack.activities, activity.id, "bob", 3)).outcome == "OK"


async def short_sale(stack: Stack, stock: int, limit: int) -> activity_pb2.Activity:
    """A sale whose orders expire one second after they are made unless paid."""
    product = await make_product(stack, stock=stock)
    window = duration_pb2.Duration()
    window.FromMilliseconds(1000)
    return await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(
            product_id=product.id, name="short", start_time=timestamp(-1),
            end_time=timestamp(3600), payment_window=window, per_user_limit=limit)),
        metadata=ADMIN)


async def test_an_expiry_gives_the_whole_quantity_back_to_the_next_buyer(stack: Stack) -> None:
    activity = await short_sale(stack, stock=2, limit=2)
    product = activity.product_id
    lapsed = (await stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity.id, user_id="sleeper", quantity=2))).order
    assert (await ask(stack.activities, activity.id, "next", 2)).outcome == "SOLD_OUT"

    async def expired() -> bool:
        got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=lapsed.id))
        return got.state == order_pb2.EXPIRED

    await eventually(expired, "the order expired", 1 + EXPIRY_BOUND_S)
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product))
    assert got.stock == 2
    assert (await ask(stack.activities, activity.id, "next", 2)).outcome == "OK"


async def test_metrics_count_units_as_well_as_orders(db_url: str) -> None:
    async with metered_stack(db_url) as (stack, port):
        activity = await short_sale(stack, stock=7, limit=3)
        before = scrape(port)
        a, b, c = [await ask(stack.activities, activity.id, user, quantity)
                   for user, quantity in (("a", 3), ("b", 1), ("c", 2))]
        assert (await ask(stack.activities, activity.id, "d", 2)).outcome == (
            "INSUFFICIENT_STOCK")
        await stack.orders.PayOrder(order_pb2.PayOrderRequest(id=a.number), metadata=ADMIN)
        await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=b.number),
                                       metadata=ADMIN)
        after = await expiry_counted(port, before, 1 + EXPIRY_BOUND_S)
        states = ("pending_payment", "paid", "cancelled", "expired")
        assert {s: delta(before, after, "seckill_orders_total", state=s) for s in states} == {
            "pending_payment": 3, "paid": 1, "cancelled": 1, "expired": 1}
        assert {s: delta(before, after, "seckill_order_units_total", state=s)
                for s in states} == {"pending_payment": 6, "paid": 3, "cancelled": 1,
                                     "expired": 2}
        assert delta(before, after, "seckill_outcomes_total", outcome="insufficient_stock") == 1
        got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=c.number))
        assert (got.state, got.quantity) == (order_pb2.EXPIRED, 2)


# --- the limit ----------------------------------------------------------------------------------

async def test_a_quantity_over_the_limit_is_refused_before_any_lock(stack: Stack) -> None:
    product = await make_product(stack, stock=10)
    warm = await make_activity(stack, product.id, per_user_limit=2)
    cold = await make_activity(stack, product.id, per_user_limit=2)
    assert (await ask(stack.activities, warm.id, "first", 1)).outcome == "OK"  # limit cached
    async with holding(stack.db_url) as holder:
        await holder.hold_stock_row(product.id)  # as a long transaction elsewhere would
        # A call within the limit waits for the row (and runs out of time here) ...
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=warm.id, user_id="patient", quantity=2), timeout=0.5)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # ... one over it is answered at once, with the limit cached or read afresh.
        for activity in (warm, cold):
            started = time.monotonic()
            reason, metadata = await refused(stack.activities.Seckill(
                activity_pb2.SeckillRequest(activity_id=activity.id, user_id="greedy",
                                            quantity=3), timeout=5), FAILED_PRECONDITION)
            assert time.monotonic() - started < 0.5
            assert (reason, metadata) == ("QUANTITY_OVER_LIMIT", {
                "activity_id": str(activity.id), "per_user_limit": "2", "quantity": "3"})


async def test_quantities_and_limits_outside_their_bounds_are_invalid(stack: Stack) -> None:
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)
    for quantity in (-1, 1001):
        assert await bad_fields(stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id, user_id="a", quantity=quantity))) == {"quantity"}
    for limit in (-1, 1001):
        assert await bad_fields(stack.activities.CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name="x", start_time=timestamp(-1),
                end_time=timestamp(60), per_user_limit=limit)), metadata=ADMIN)) == {
            "activity.per_user_limit"}
    assert await bad_fields(stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=activity_pb2.Activity(id=activity.id, per_user_limit=0),
        update_mask=field_mask_pb2.FieldMask(paths=["per_user_limit"])), metadata=ADMIN)) == {
        "activity.per_user_limit"}


async def test_a_client_that_never_sets_the_new_fields_gets_todays_behaviour(
    stack: Stack
) -> None:
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)  # per_user_limit unset
    assert activity.per_user_limit == 1
    order = (await stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity.id, user_id="a"))).order
    assert (order.quantity, order.total_price_cents) == (1, order.price_cents)
    reason, metadata = await refused(stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity.id, user_id="b", quantity=2)), FAILED_PRECONDITION)
    assert (reason, metadata["per_user_limit"]) == ("QUANTITY_OVER_LIMIT", "1")


async def test_lowering_the_limit_keeps_existing_orders_and_applies_to_new_requests(
    stack: Stack
) -> None:
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id, per_user_limit=3)
    big = (await stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity.id, user_id="early", quantity=3))).order

    async def set_limit(limit: int) -> activity_pb2.Activity:
        return await stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
            activity=activity_pb2.Activity(id=activity.id, per_user_limit=limit),
            update_mask=field_mask_pb2.FieldMask(paths=["per_user_limit"])), metadata=ADMIN)

    assert (await set_limit(1)).per_user_limit == 1
    kept = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=big.id))
    assert (kept.state, kept.quantity) == (order_pb2.PENDING_PAYMENT, 3)  # as it was
    assert (await ask(stack.activities, activity.id, "late", 2)).outcome == "QUANTITY_OVER_LIMIT"
    assert (await ask(stack.activities, activity.id, "late", 1)).outcome == "OK"
    # The holder of 3 still holds one order: ALREADY_PURCHASED, not a limit refusal.
    assert (await ask(stack.activities, activity.id, "early", 1)).outcome == "ALREADY_PURCHASED"
    assert (await set_limit(2)).per_user_limit == 2
    assert (await ask(stack.activities, activity.id, "later", 2)).outcome == "OK"
    got = await stack.activities.GetActivity(activity_pb2.GetActivityRequest(id=activity.id))
    assert (got.per_user_limit, got.product.stock) == (2, 10 - 3 - 1 - 2)


# --- the migration ------------------------------------------------------------------------------

async def test_migration_0003_makes_existing_rows_one_unit_and_runs_again(db_url: str) -> None:
    # The database as the previous release left it: 0001 and 0002, an activity and an order.
    await query(db_url, "CREATE TABLE schema_migrations (version INT NOT NULL PRIMARY KEY,"
                " name VARCHAR(255) NOT NULL, applied_at DATETIME(6) NOT NULL)")
    for version, name, sql in migrations.available():
        if version < 3:
            for statement in migrations.statements(sql):
                await query(db_url, statement)
            await query(db_url, "INSERT INTO schema_migrations VALUES (%s, %s, NOW(6))",
                        (version, name))
    await query(db_url, "INSERT INTO products (name, description, price_cents, stock,"
                " create_time, update_time) VALUES ('Tea', '', 350, 4, NOW(6), NOW(6))")
    await query(db_url, "INSERT INTO activities (product_id, name, start_time, end_time,"
                " create_time, price_cents, payment_window_ms) VALUES (1, 'Old sale',"
                " NOW(6), NOW(6) + INTERVAL 1 HOUR, NOW(6), 299, 900000)")
    await query(db_url, "INSERT INTO orders (activity_id, product_id, user_id, create_time,"
                " state, active, price_cents, pay_deadline, update_time)"
                " VALUES (1, 1, 'alice', NOW(6), 2, 1, 299, NOW(6), NOW(6))")
    settings = settings_for(db_url)
    assert "0003_quantities.sql" in await migrations.migrate(settings)
    assert await query(db_url, "SELECT quantity FROM orders") == [(1,)]
    assert await query(db_url, "SELECT per_user_limit FROM activities") == [(1,)]
    # A crash after its ALTERs and before its bookkeeping: it runs again, changing nothing.
    await query(db_url, "DELETE FROM schema_migrations WHERE version = 3")
    assert await migrations.migrate(settings) == ["0003_quantities.sql"]
    assert await query(db_url, "SELECT quantity FROM orders") == [(1,)]
    with pytest.raises(pymysql.err.OperationalError):  # the bounds hold in the schema too
        await query(db_url, "UPDATE activities SET per_user_limit = 1001")
