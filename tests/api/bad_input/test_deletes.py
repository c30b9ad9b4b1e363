"""Bad input to the deletes (CancelOrder, DeleteOrder, DeleteActivity, DeleteProduct): hostile ids,
each answer checked against the protos' documented errors."""

from __future__ import annotations

import pytest
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.bad_input import (
    Prober,
    method_path,
)
from tests.helpers.bad_input_rules import (
    ACTIVITY,
    ORDER,
    PRODUCT,
    property_test,
    refused_with,
    row,
)
from tests.helpers.hostile_values import (
    known_ids,
)

# A database warning (truncation, overflow) raised in a service becomes an error there, and so
# an INTERNAL answer that fails the test.
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")


@property_test(300, order_id=known_ids)
async def test_cancel_order(prober: Prober, order_id: int) -> None:
    state = await row(prober, "SELECT state FROM orders WHERE id = %s", order_id)
    outcome = await prober.call(method_path(ORDER, "CancelOrder"),
                                order_pb2.CancelOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif state is None:
        assert outcome.code == "NOT_FOUND"
    else:
        assert outcome.code == ("FAILED_PRECONDITION" if state[0] == order_pb2.EXPIRED
                                else "OK"), outcome.code


@property_test(500, order_id=known_ids)
async def test_delete_order(prober: Prober, order_id: int) -> None:
    existed = await row(prober, "SELECT id FROM orders WHERE id = %s", order_id)
    outcome = await prober.call(method_path(ORDER, "DeleteOrder"),
                                order_pb2.DeleteOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    else:
        assert outcome.code == ("OK" if existed else "NOT_FOUND"), outcome.code


@property_test(500, activity_id=known_ids)
async def test_delete_activity(prober: Prober, activity_id: int) -> None:
    existed = await row(prober, "SELECT id FROM activities WHERE id = %s", activity_id)
    has_orders = await row(prober, "SELECT id FROM orders WHERE activity_id = %s"
                           " AND active = 1 LIMIT 1", activity_id)
    outcome = await prober.call(method_path(ACTIVITY, "DeleteActivity"),
                                activity_pb2.DeleteActivityRequest(id=activity_id))
    if activity_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif not existed:
        assert outcome.code == "NOT_FOUND"
    else:
        assert outcome.code == ("FAILED_PRECONDITION" if has_orders else "OK"), outcome.code


@property_test(500, product_id=known_ids)
async def test_delete_product(prober: Prober, product_id: int) -> None:
    existed = await row(prober, "SELECT id FROM products WHERE id = %s", product_id)
    in_use = await row(prober, "SELECT id FROM activities WHERE product_id = %s UNION ALL "
                       "SELECT id FROM orders WHERE product_id = %s LIMIT 1",
                       product_id, product_id)
    outcome = await prober.call(method_path(PRODUCT, "DeleteProduct"),
                                product_pb2.DeleteProductRequest(id=product_id))
    if product_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif not existed:
        assert outcome.code == "NOT_FOUND"
    else:
        assert outcome.code == ("FAILED_PRECONDITION" if in_use else "OK"), outcome.code
