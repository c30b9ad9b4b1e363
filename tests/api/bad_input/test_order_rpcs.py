"""Bad input to OrderService's get, list and pay: hostile values in every field, each answer
checked against the protos' documented errors."""

from __future__ import annotations

import pytest
from seckill.v1 import order_pb2

from tests.helpers.bad_input import (
    Prober,
    method_path,
)
from tests.helpers.bad_input_rules import (
    MAX_USER_ID,
    ORDER,
    page_tokens,
    property_test,
    refused_with,
    row,
    token,
    too_big,
)
from tests.helpers.hostile_values import (
    ids,
    int32s,
    known_ids,
    user_ids,
)

# A database warning (truncation, overflow) raised in a service becomes an error there, and so
# an INTERNAL answer that fails the test.
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")


@property_test(500, order_id=known_ids)
async def test_get_order(prober: Prober, order_id: int) -> None:
    outcome = await prober.call(method_path(ORDER, "GetOrder"),
                                order_pb2.GetOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif outcome.code == "OK":
        assert outcome.response.id == order_id
    else:
        assert outcome.code == "NOT_FOUND"


@property_test(800, user_id=user_ids, activity_id=ids, size=int32s, spec=page_tokens)
async def test_list_orders(prober: Prober, user_id: str, activity_id: int, size: int,
                           spec: str | tuple) -> None:
    filters = {"user_id": user_id, "activity_id": activity_id}
    request = order_pb2.ListOrdersRequest(user_id=user_id, activity_id=activity_id,
                                          page_size=size, page_token=token(spec, filters))
    outcome = await prober.call(method_path(ORDER, "ListOrders"), request)
    if too_big(prober, request):
        return
    bad = set()
    if activity_id < 0:
        bad.add("activity_id")
    if len(user_id) > MAX_USER_ID:
        bad.add("user_id")
    if bad:
        return refused_with(prober, outcome, bad)
    if size < 0:
        return refused_with(prober, outcome, {"page_size"})
    if not request.page_token:
        assert outcome.code == "OK", (outcome.code, outcome.error and outcome.error.details())
    if outcome.code == "OK":
        # Only the orders the filters name: a filter value is a parameter, never SQL.
        for order in outcome.response.orders:
            assert not user_id or order.user_id == user_id
            assert not activity_id or order.activity_id == activity_id
    else:
        assert prober.bad_fields(outcome) == {"page_token"}
    return None


@property_test(300, order_id=known_ids)
async def test_pay_order(prober: Prober, order_id: int) -> None:
    state = await row(prober, "SELECT state FROM orders WHERE id = %s", order_id)
    outcome = await prober.call(method_path(ORDER, "PayOrder"),
                                order_pb2.PayOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif state is None:
        assert outcome.code == "NOT_FOUND"
    else:  # the seeded windows are 15 minutes: nothing is past its deadline here
        paid = state[0] in (order_pb2.PENDING_PAYMENT, order_pb2.PAID)
        assert outcome.code == ("OK" if paid else "FAILED_PRECONDITION"), outcome.code
