"""database.orders, the orders table's one writer: the rule tying `active` to the state, and
the statements both services send (no database: their text and parameters)."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from seckill.v1.order_pb2 import CANCELLED, EXPIRED, PAID, PENDING_PAYMENT

from seckill_common.database import orders


class Buyer(NamedTuple):
    activity_id: int
    user_id: str
    quantity: int


def test_an_order_is_active_while_it_holds_its_units() -> None:
    assert [orders.active_of(s) for s in (PENDING_PAYMENT, PAID, CANCELLED, EXPIRED)] == [
        1, 1, None, None]


def test_a_change_writes_the_state_and_the_active_column_that_follows_it() -> None:
    sql, params = orders.change_statement([7, 9], CANCELLED)
    assert sql.startswith("UPDATE orders SET state = %s, active = %s")
    assert sql.endswith("WHERE id IN (%s, %s)")
    assert params == [CANCELLED, None, 7, 9]
    assert orders.change_statement([7], PAID)[1] == [PAID, 1, 7]


def test_the_insert_writes_pending_active_orders_and_passes_only_the_buyers_as_parameters(
) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 600000)
    deadline = datetime(2026, 1, 2, 3, 19, 5, 600000)
    sql, params = orders.insert_pending_statement(
        5, now, {1: 250, 2: 300}, {1: deadline, 2: deadline},
        [Buyer(1, "alice", 2), Buyer(2, "bob", 1)])
    assert sql.startswith("INSERT INTO orders (activity_id, user_id, quantity, product_id,")
    assert sql.count("(%s, %s, %s, 5, '2026-01-02 03:04:05.600000', "
                     f"{PENDING_PAYMENT}, 1, ") == 2
    assert ", 250, '2026-01-02 03:19:05.600000', '2026-01-02 03:04:05.600000')" in sql
    assert params == [1, "alice", 2, 2, "bob", 1]  # a client's text only ever as a parameter
