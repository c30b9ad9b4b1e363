"""OrderService end to end: get, filtered pagination, cancel (DeleteOrder) and every error."""

from __future__ import annotations

from typing import Any

import pytest
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import DEEP_TOKEN, bad_fields, not_found, walk
from tests.helpers.stack import ADMIN, Stack, query


async def buy(stack: Stack, activity_id: int, user_id: str) -> order_pb2.Order:
    response = await stack.activities.Seckill(
        activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user_id))
    return response.order


@pytest.fixture
async def orders(stack: Stack) -> dict[str, int]:
    """Three activities with 7, 4 and 1 orders: u0..u6 in the first, u0..u3, then u0 alone.

    Returns the activity ids by name (a, b, c); u0 holds 3 orders, "u0 " (another user) 1.
    """
    product = await make_product(stack, stock=100)
    ids = {name: (await make_activity(stack, product.id)).id for name in "abc"}
    for name, buyers in (("a", 7), ("b", 4), ("c", 1)):
        for i in range(buyers):
            await buy(stack, ids[name], f"u{i}")
    await buy(stack, ids["b"], "u0 ")
    return ids


def filters_for(ids: dict[str, int], case: str) -> dict[str, Any]:
    cases: dict[str, dict[str, Any]] = {
        "all": {}, "activity": {"activity_id": ids["a"]}, "user": {"user_id": "u0"},
        "both": {"user_id": "u1", "activity_id": ids["b"]},
        "spaced-user": {"user_id": "u0 "}, "nobody": {"user_id": "zed"},
        "unknown-activity": {"activity_id": 999}}
    return cases[case]


@pytest.mark.parametrize("page_size", [1, 3])
@pytest.mark.parametrize("case", ["all", "activity", "user", "both", "spaced-user", "nobody",
                                  "unknown-activity"])
async def test_list_orders_walks_every_matching_row_once(
        stack: Stack, orders: dict[str, int], case: str, page_size: int) -> None:
    filters = filters_for(orders, case)
    where = " AND ".join(f"{column} = %s" for column in filters) or "TRUE"
    expected = [row[0] for row in await query(
        stack.db_url, f"SELECT id FROM orders WHERE {where} ORDER BY id",
        tuple(filters.values()))]
    pages = await walk(stack.orders.ListOrders,
                       order_pb2.ListOrdersRequest(page_size=page_size, **filters), "orders")
    assert pages == [expected[i:i + page_size] for i in range(0, len(expected), page_size)] or (
        expected, pages) == ([], [[]])
    # The filters really filter: spot-check the rows behind the ids.
    listed = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(page_size=1000,
                                                                       **filters))
    for order in listed.orders:
        assert all(getattr(order, column) == value for column, value in filters.items())


async def test_list_orders_counts_match_the_fixture(stack: Stack, orders: dict[str, int]) -> None:
    async def count(**filters: Any) -> int:
        response = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(**filters))
        return len(response.orders)

    assert await count() == 13
    assert await count(activity_id=orders["a"]) == 7
    assert await count(user_id="u0") == 3
    assert await count(user_id="u0", activity_id=orders["c"]) == 1


@pytest.mark.parametrize(("page_size", "served"), [(0, 50), (1000, 1000), (1001, 1000)])
async def test_list_orders_page_size_defaults_to_50_and_caps_at_1000(
        stack: Stack, sale, page_size: int, served: int) -> None:
    product, activity = sale
    values = ", ".join(f"({activity.id}, {product.id}, 'u{i}', UTC_TIMESTAMP(6), 2, 1, 0,"
                       " UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))" for i in range(1001))
    await query(stack.db_url, "INSERT INTO orders (activity_id, product_id, user_id,"
                " create_time, state, active, price_cents, pay_deadline, update_time)"
                f" VALUES {values}")
    ids = [row[0] for row in await query(stack.db_url, "SELECT id FROM orders ORDER BY id")]
    for filters in ({}, {"activity_id": activity.id}):
        first = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
            page_size=page_size, **filters))
        assert [o.id for o in first.orders] == ids[:served] and first.next_page_token


@pytest.mark.parametrize("reused_with", ["other-activity", "no-filter", "added-user"])
async def test_list_orders_token_is_bound_to_its_filters(
        stack: Stack, orders: dict[str, int], reused_with: str) -> None:
    first = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        page_size=2, activity_id=orders["a"]))
    assert first.next_page_token
    reuses: dict[str, dict[str, Any]] = {
        "other-activity": {"activity_id": orders["b"]}, "no-filter": {},
        "added-user": {"activity_id": orders["a"], "user_id": "u1"}}
    filters = reuses[reused_with]
    assert await bad_fields(stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        page_size=2, page_token=first.next_page_token, **filters))) == {"page_token"}
    # The page size may change between pages; the filters may not.
    second = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        page_size=5, page_token=first.next_page_token, activity_id=orders["a"]))
    assert len(second.orders) == 5 and second.next_page_token == ""


@pytest.mark.parametrize(("request_fields", "expected"), [
    ({"page_size": -1}, {"page_size"}),
    ({"activity_id": -1}, {"activity_id"}),
    ({"user_id": "u" * 65}, {"user_id"}),
    ({"activity_id": -1, "user_id": "u" * 65}, {"activity_id", "user_id"}),
    ({"page_token": "garbage"}, {"page_token"}),
    ({"page_token": "e30"}, {"page_token"}),  # base64 of "{}"
    ({"page_token": DEEP_TOKEN}, {"page_token"}),
])
async def test_list_orders_rejects_bad_requests(stack: Stack, request_fields: dict,
                                                expected: set[str]) -> None:
    assert await bad_fields(stack.orders.ListOrders(
        order_pb2.ListOrdersRequest(**request_fields))) == expected


async def test_get_order_returns_the_committed_order(stack: Stack, sale) -> None:
    product, activity = sale
    order = await buy(stack, activity.id, "alice")
    got = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=order.id))
    assert got == order
    assert (got.activity_id, got.product_id, got.user_id) == (activity.id, product.id, "alice")
    assert await query(stack.db_url, "SELECT activity_id, product_id, user_id FROM orders"
                       " WHERE id = %s", (order.id,)) == [(activity.id, product.id, b"alice")]


@pytest.mark.parametrize("bad_id", [0, -1])
@pytest.mark.parametrize("rpc", ["GetOrder", "DeleteOrder"])
async def test_order_ids_must_be_positive(stack: Stack, rpc: str, bad_id: int) -> None:
    request = getattr(order_pb2, f"{rpc}Request")(id=bad_id)
    assert await bad_fields(getattr(stack.orders, rpc)(request, metadata=ADMIN)) == {"id"}


@pytest.mark.parametrize("rpc", ["GetOrder", "DeleteOrder"])
async def test_unknown_order_is_not_found(stack: Stack, rpc: str) -> None:
    request = getattr(order_pb2, f"{rpc}Request")(id=999)
    assert await not_found(getattr(stack.orders, rpc)(request, metadata=ADMIN)) == (
        "seckill.v1.Order", "orders/999")


async def test_delete_order_cancels_it_and_returns_the_unit(stack: Stack, sale) -> None:
    product, activity = sale
    order = await buy(stack, activity.id, "alice")
    kept = await buy(stack, activity.id, "bob")
    stock = "SELECT stock FROM products WHERE id = %s"
    assert await query(stack.db_url, stock, (product.id,)) == [(8,)]

    await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order.id), metadata=ADMIN)
    # The order is kept, as CANCELLED.
    got_order = await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=order.id))
    assert got_order.state == order_pb2.CANCELLED
    assert await query(stack.db_url, "SELECT id, state FROM orders ORDER BY id") == [
        (order.id, order_pb2.CANCELLED), (kept.id, order_pb2.PENDING_PAYMENT)]
    assert await query(stack.db_url, stock, (product.id,)) == [(9,)]
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.stock == 9
    # A second cancel changes nothing and gives nothing back.
    await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order.id), metadata=ADMIN)
    assert await query(stack.db_url, stock, (product.id,)) == [(9,)]
    # The user may buy again, and gets a new order.
    again = await buy(stack, activity.id, "alice")
    assert again.id not in (order.id, kept.id)
    assert await query(stack.db_url, stock, (product.id,)) == [(8,)]


async def test_cancelling_an_order_of_a_sold_out_product_reopens_the_sale(stack: Stack) -> None:
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    order = await buy(stack, activity.id, "alice")
    await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order.id), metadata=ADMIN)
    assert (await buy(stack, activity.id, "bob")).user_id == "bob"
    assert await query(stack.db_url, "SELECT stock FROM products") == [(0,)]
