"""The order lifecycle end to end: PENDING_PAYMENT -> PAID / CANCELLED / EXPIRED, the sale
price and payment window, every refusal, owner/admin rules, races, and idempotent creates."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product, timestamp
from tests.helpers.metrics import delta, expiry_counted, metered_stack, scrape
from tests.helpers.polling import eventually
from tests.helpers.rpc import bad_fields, error_details, not_found, refused
from tests.helpers.stack import ADMIN, Stack, query, start_stack
from tests.helpers.users import SECRET, as_user

EXPIRY_BOUND_S = 5.0  # the documented bound (two sweeps of 1 s) plus slack for a busy machine


def window(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(int(seconds * 1000))
    return duration


async def buy(stack: Stack, activity_id: int, user: str) -> order_pb2.Order:
    reply = await stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity_id, user_id=user))
    return reply.order


async def pay(stack: Stack, order_id: int, metadata=ADMIN) -> order_pb2.Order:
    return await stack.orders.PayOrder(order_pb2.PayOrderRequest(id=order_id),
                                       metadata=metadata)


async def cancel(stack: Stack, order_id: int, metadata=ADMIN) -> order_pb2.Order:
    return await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=order_id),
                                          metadata=metadata)


async def short_sale(stack: Stack, stock: int, window_s: float) -> activity_pb2.Activity:
    product = await make_product(stack, stock=stock)
    return await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(product_id=product.id, name="short",
                                       start_time=timestamp(-1), end_time=timestamp(3600),
                                       payment_window=window(window_s))), metadata=ADMIN)


async def balance(stack: Stack, product_id: int) -> tuple[int, int]:
    """(stock, active orders) of a product, read together."""
    [(stock, active)] = await query(
        stack.db_url, "SELECT (SELECT stock FROM products WHERE id = %s),"
        " (SELECT COUNT(*) FROM orders WHERE product_id = %s AND state IN (1, 2))",
        (product_id, product_id))
    return int(stock), int(active)


# --- the state machine --------------------------------------------------------------------

async def test_an_order_is_pending_at_the_sale_price_then_paid_then_cancelled(stack: Stack
                                                                               ) -> None:
    product = await make_product(stack, stock=5)  # at 9900 cents
    activity = await make_activity(stack, product.id)
    # Unset at creation: the product's price, and 15 minutes to pay.
    assert activity.price_cents == 9900 and activity.payment_window.ToSeconds() == 900
    order = await buy(stack, activity.id, "alice")
    assert order.state == order_pb2.PENDING_PAYMENT and order.price_cents == 9900
    assert (order.pay_deadline.ToMilliseconds() - order.create_time.ToMilliseconds()
            == 900_000)
    assert order.update_time == order.create_time
    assert await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=order.id)) == order

    # A later price change leaves the order's price alone.
    await stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=activity_pb2.Activity(id=activity.id, price_cents=100),
        update_mask=field_mask_pb2.FieldMask(paths=["price_cents"])), metadata=ADMIN)
    paid = await pay(stack, order.id)
    assert paid.state == order_pb2.PAID and paid.price_cents == 9900
    assert paid.update_time.ToDatetime() >= order.update_time.ToDatetime()
    assert await pay(stack, order.id) == paid  # idempotent
    assert await balance(stack, product.id) == (4, 1)
    # A paid user holds the unit: buying again is ALREADY_PURCHASED.
    assert (await refused(buy(stack, activity.id, "alice"), grpc.StatusCode.ALREADY_EXISTS)
            ) == ("ALREADY_PURCHASED", {"order_id": str(order.id)})

    cancelled = await cancel(stack, order.id)
    assert cancelled.state == order_pb2.CANCELLED
    assert await balance(stack, product.id) == (5, 0)
    assert await cancel(stack, order.id) == cancelled  # idempotent: no second unit back
    assert await balance(stack, product.id) == (5, 0)
    assert await refused(pay(stack, order.id), grpc.StatusCode.FAILED_PRECONDITION) == (
        "ORDER_CANCELLED", {"order_id": str(order.id)})
    # A cancelled order no longer counts: alice buys again, at the new price.
    again = await buy(stack, activity.id, "alice")
    assert again.id != order.id and again.price_cents == 100
    assert await balance(stack, product.id) == (4, 1)


async def test_unpaid_orders_expire_and_their_units_sell_again(stack: Stack) -> None:
    activity = await short_sale(stack, stock=2, window_s=2)  # the acceptance's 2-second window
    assert activity.payment_window.ToMilliseconds() == 2000
    kept = await buy(stack, activity.id, "payer")
    lapsed = await buy(stack, activity.id, "sleeper")
    await pay(stack, kept.id)
    assert (await refused(buy(stack, activity.id, "late"), grpc.StatusCode.FAILED_PRECONDITION)
            )[0] == "SOLD_OUT"

    async def expired() -> bool:
        got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=lapsed.id))
        return got.state == order_pb2.EXPIRED

    await eventually(expired, "the order expired", 2 + EXPIRY_BOUND_S)
    got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=lapsed.id))
    assert got.update_time.ToDatetime() >= lapsed.pay_deadline.ToDatetime()
    assert await balance(stack, activity.product_id) == (1, 1)
    assert (await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=kept.id))).state == (
        order_pb2.PAID)
    # Its unit goes to the next buyer; the expired order's owner may buy again too.
    assert (await buy(stack, activity.id, "late")).state == order_pb2.PENDING_PAYMENT
    assert (await refused(buy(stack, activity.id, "sleeper"),
                          grpc.StatusCode.FAILED_PRECONDITION))[0] == "SOLD_OUT"
    assert await refused(pay(stack, lapsed.id), grpc.StatusCode.FAILED_PRECONDITION) == (
        "PAYMENT_EXPIRED", {"order_id": str(lapsed.id)})
    assert await refused(cancel(stack, lapsed.id), grpc.StatusCode.FAILED_PRECONDITION) == (
        "ORDER_EXPIRED", {"order_id": str(lapsed.id)})
    assert await balance(stack, activity.product_id) == (0, 2)


async def test_paying_after_the_deadline_expires_the_order_at_once(stack: Stack) -> None:
    activity = await short_sale(stack, stock=1, window_s=1)
    order = await buy(stack, activity.id, "alice")
    await eventually(lambda: _past(order), "past the pay deadline", 5)
    # Whoever gets there first (this call or the sweeper), the answer and the order agree.
    assert await refused(pay(stack, order.id), grpc.StatusCode.FAILED_PRECONDITION) == (
        "PAYMENT_EXPIRED", {"order_id": str(order.id)})
    got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=order.id))
    assert got.state == order_pb2.EXPIRED
    assert await balance(stack, activity.product_id) == (1, 0)


async def _past(order: order_pb2.Order) -> bool:
    return time.time() > order.pay_deadline.ToMilliseconds() / 1000 + 0.05


async def test_list_orders_filters_by_state_and_lists_every_state_by_default(
        stack: Stack) -> None:
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id)
    a, b, c = [await buy(stack, activity.id, user) for user in ("a", "b", "c")]
    await pay(stack, b.id)
    await cancel(stack, c.id)

    async def ids(*states: order_pb2.OrderState.ValueType) -> list[int]:
        reply = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
            activity_id=activity.id, states=states))
        return [o.id for o in reply.orders]

    assert await ids() == [a.id, b.id, c.id]
    assert await ids(order_pb2.PENDING_PAYMENT) == [a.id]
    assert await ids(order_pb2.PAID, order_pb2.PENDING_PAYMENT) == [a.id, b.id]
    assert await ids(order_pb2.CANCELLED) == [c.id]
    assert await ids(order_pb2.EXPIRED) == []
    for bad in (order_pb2.ORDER_STATE_UNSPECIFIED, 99):
        assert await bad_fields(stack.orders.ListOrders(order_pb2.ListOrdersRequest(
            states=[bad]))) == {"states"}  # type: ignore[list-item]
    # A page token is bound to its state filter.
    first = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        page_size=1, states=[order_pb2.PENDING_PAYMENT, order_pb2.PAID]))
    assert await bad_fields(stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        page_size=1, page_token=first.next_page_token))) == {"page_token"}


@pytest.mark.parametrize("rpc", ["PayOrder", "CancelOrder"])
async def test_pay_and_cancel_refuse_bad_ids_unknown_orders_and_missing_credentials(
        stack: Stack, rpc: str) -> None:
    request = getattr(order_pb2, f"{rpc}Request")
    call = getattr(stack.orders, rpc)
    assert await bad_fields(call(request(id=0), metadata=ADMIN)) == {"id"}
    assert await not_found(call(request(id=999), metadata=ADMIN)) == (
        "seckill.v1.Order", "orders/999")
    # Without user tokens these are admin RPCs.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request(id=1))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_activity_price_and_payment_window_are_validated_and_updatable(
        stack: Stack) -> None:
    product = await make_product(stack, stock=1)
    base: dict[str, Any] = dict(product_id=product.id, name="s", start_time=timestamp(-1),
                end_time=timestamp(60))
    for bad in (window(0), window(0.5), window(7 * 86400 + 1),
                duration_pb2.Duration(seconds=2, nanos=1), duration_pb2.Duration(seconds=-5)):
        assert await bad_fields(stack.activities.CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                **base, payment_window=bad)), metadata=ADMIN)) == {"activity.payment_window"}
    assert await bad_fields(stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(**base, price_cents=-1)), metadata=ADMIN)) == {
        "activity.price_cents"}
    free = await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(**base, price_cents=0, payment_window=window(1))),
        metadata=ADMIN)
    assert (free.price_cents, free.payment_window.ToMilliseconds()) == (0, 1000)
    updated = await stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=activity_pb2.Activity(id=free.id, payment_window=window(1800)),
        update_mask=field_mask_pb2.FieldMask(paths=["payment_window"])), metadata=ADMIN)
    assert (updated.price_cents, updated.payment_window.ToSeconds()) == (0, 1800)
    assert await bad_fields(stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=activity_pb2.Activity(id=free.id, payment_window=window(0)),
        update_mask=field_mask_pb2.FieldMask(paths=["payment_window"])), metadata=ADMIN)) == {
        "activity.payment_window"}
    got = await stack.activities.GetActivity(activity_pb2.GetActivityRequest(id=free.id))
    assert got.payment_window.ToSeconds() == 1800


async def test_an_activity_with_only_finished_orders_can_be_deleted(stack: Stack) -> None:
    product = await make_product(stack, stock=2)
    activity = await make_activity(stack, product.id)
    paid = await pay(stack, (await buy(stack, activity.id, "a")).id)
    await cancel(stack, (await buy(stack, activity.id, "b")).id)
    delete = activity_pb2.DeleteActivityRequest(id=activity.id)
    assert (await refused(stack.activities.DeleteActivity(delete, metadata=ADMIN),
                          grpc.StatusCode.FAILED_PRECONDITION))[0] == "ACTIVITY_HAS_ORDERS"
    await cancel(stack, paid.id)
    await stack.activities.DeleteActivity(delete, metadata=ADMIN)
    assert await query(stack.db_url, "SELECT COUNT(*) FROM orders") == [(0,)]
    assert await balance(stack, product.id) == (2, 0)


# --- owner, admin, other user ------------------------------------------------------------

@pytest.fixture
async def secured(db_url: str) -> AsyncIterator[Stack]:
    running = await start_stack(db_url, SECKILL_USER_TOKEN_SECRET=SECRET)  # user tokens on
    yield running
    await running.stop()


async def test_owners_and_the_admin_pay_and_cancel_other_users_cannot(secured: Stack) -> None:
    product = await make_product(secured, stock=5)
    activity = await make_activity(secured, product.id)

    async def bought(user: str) -> order_pb2.Order:
        reply = await secured.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id), metadata=as_user(user))
        return reply.order

    alice, bob = await bought("alice"), await bought("bob")
    for call in (pay, cancel):
        assert await not_found(call(secured, alice.id, as_user("bob"))) == (
            "seckill.v1.Order", f"orders/{alice.id}")
    assert (await pay(secured, alice.id, as_user("alice"))).state == order_pb2.PAID
    assert (await cancel(secured, alice.id, as_user("alice"))).state == order_pb2.CANCELLED
    assert (await pay(secured, bob.id, ADMIN)).state == order_pb2.PAID
    assert (await cancel(secured, bob.id, ADMIN)).state == order_pb2.CANCELLED
    assert await balance(secured, product.id) == (5, 0)


# --- races ---------------------------------------------------------------------------------

async def test_pay_racing_expiry_has_exactly_one_outcome(stack: Stack) -> None:
    rounds, buyers = 3, 8  # bounded: 24 orders, each paid right at its deadline
    activity = await short_sale(stack, stock=buyers, window_s=1)
    for r in range(rounds):
        orders = [await buy(stack, activity.id, f"r{r}-u{i}") for i in range(buyers)]

        async def pay_at_deadline(order: order_pb2.Order, i: int) -> str:
            # Spread the payments across the deadline: before, on, after it.
            when = order.pay_deadline.ToMilliseconds() / 1000 + (i - buyers / 2) * 0.01
            await asyncio.sleep(max(0.0, when - time.time()))  # a moment on the clock
            try:
                return order_pb2.OrderState.Name((await pay(stack, order.id)).state)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                return "PAYMENT_EXPIRED"

        answers = await asyncio.gather(*(pay_at_deadline(o, i) for i, o in enumerate(orders)))
        assert set(answers) <= {"PAID", "PAYMENT_EXPIRED"}

        async def settled() -> bool:
            rows = await query(stack.db_url, "SELECT COUNT(*) FROM orders WHERE state = 1")
            return rows == [(0,)]

        await eventually(settled, "settled", EXPIRY_BOUND_S)
        for order, answer in zip(orders, answers, strict=True):
            got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=order.id))
            assert got.state == (order_pb2.PAID if answer == "PAID" else order_pb2.EXPIRED)
        # Every expired unit came back once: stock + active orders = units on sale.
        stock, active = await balance(stack, activity.product_id)
        assert stock + active == buyers and active == answers.count("PAID")
        # Cancel the paid ones so the next round sells every unit again.
        for order, answer in zip(orders, answers, strict=True):
            if answer == "PAID":
                await cancel(stack, order.id)


async def test_cancel_racing_pay_has_exactly_one_outcome(stack: Stack) -> None:
    buyers = 40  # bounded
    product = await make_product(stack, stock=buyers)
    activity = await make_activity(stack, product.id)
    orders = [await buy(stack, activity.id, f"u{i}") for i in range(buyers)]

    async def race(order: order_pb2.Order, i: int) -> tuple[str, str]:
        async def attempt(call: Callable[..., Awaitable[order_pb2.Order]]) -> str:
            try:
                return order_pb2.OrderState.Name((await call(stack, order.id)).state)
            except grpc.aio.AioRpcError as exc:
                return refused_reason(exc)

        first, second = (pay, cancel) if i % 2 else (cancel, pay)
        answers = await asyncio.gather(attempt(first), attempt(second))
        return answers if i % 2 else answers[::-1]  # (pay's, cancel's)

    results = await asyncio.gather(*(race(o, i) for i, o in enumerate(orders)))
    for pay_answer, cancel_answer in results:
        assert cancel_answer == "CANCELLED"
        assert pay_answer in ("PAID", "ORDER_CANCELLED")
    states = await query(stack.db_url, "SELECT DISTINCT state FROM orders")
    assert states == [(order_pb2.CANCELLED,)]
    assert await balance(stack, product.id) == (buyers, 0)  # each unit back exactly once


def refused_reason(exc: grpc.aio.AioRpcError) -> str:
    return error_details(exc)["ErrorInfo"].reason


# --- idempotent creates (AIP-155) -----------------------------------------------------------

async def test_a_retried_create_with_the_same_request_id_creates_nothing_new(
        stack: Stack) -> None:
    request_id = str(uuid.uuid4())
    create = product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="Phone", price_cents=100, stock=3),
        request_id=request_id)
    first = await stack.products.CreateProduct(create, metadata=ADMIN)
    # Retries, some at once: each answers the same product.
    again = await asyncio.gather(*(stack.products.CreateProduct(create, metadata=ADMIN)
                                   for _ in range(5)))
    assert {p.id for p in again} == {first.id}
    # The id in another spelling is the same id.
    create.request_id = request_id.upper()
    assert (await stack.products.CreateProduct(create, metadata=ADMIN)).id == first.id
    assert await query(stack.db_url, "SELECT COUNT(*) FROM products") == [(1,)]
    # A different request with the same id is refused; no id at all creates each time.
    create.product.stock = 4
    assert await bad_fields(stack.products.CreateProduct(create, metadata=ADMIN)) == {
        "request_id"}
    create.request_id = ""
    await stack.products.CreateProduct(create, metadata=ADMIN)
    assert await query(stack.db_url, "SELECT COUNT(*) FROM products") == [(2,)]
    create.request_id = "not-a-uuid"
    assert await bad_fields(stack.products.CreateProduct(create, metadata=ADMIN)) == {
        "request_id"}

    activity = activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
        product_id=first.id, name="s", start_time=timestamp(-1), end_time=timestamp(60)),
        request_id=str(uuid.uuid4()))
    made = await asyncio.gather(*(stack.activities.CreateActivity(activity, metadata=ADMIN)
                                  for _ in range(3)))
    assert len({a.id for a in made}) == 1
    assert await query(stack.db_url, "SELECT COUNT(*) FROM activities") == [(1,)]
    activity.activity.name = "other"
    assert await bad_fields(stack.activities.CreateActivity(activity, metadata=ADMIN)) == {
        "request_id"}
    # The same request id may name one product and one activity: ids are per method.
    activity.request_id = request_id
    await stack.activities.CreateActivity(activity, metadata=ADMIN)
    assert await query(stack.db_url, "SELECT COUNT(*) FROM activities") == [(2,)]


# --- metrics --------------------------------------------------------------------------------

async def test_metrics_count_orders_by_state_and_expiry_lag(db_url: str) -> None:
    async with metered_stack(db_url) as (stack, port):
        activity = await short_sale(stack, stock=3, window_s=1)
        before = scrape(port)
        a, b, c = [await buy(stack, activity.id, user) for user in "abc"]
        await pay(stack, a.id)
        await pay(stack, a.id)  # a repeat counts once
        await cancel(stack, b.id)
        after = await expiry_counted(port, before, 1 + EXPIRY_BOUND_S)
        got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=c.id))
        assert got.state == order_pb2.EXPIRED
        counted = {state: delta(before, after, "seckill_orders_total", state=state)
                   for state in ("pending_payment", "paid", "cancelled", "expired")}
        assert counted == {"pending_payment": 3, "paid": 1, "cancelled": 1, "expired": 1}
        assert delta(before, after, "seckill_order_expiry_lag_seconds_count") == 1
        assert 0 <= delta(before, after, "seckill_order_expiry_lag_seconds_sum") <= (
            EXPIRY_BOUND_S)
