"""A pipeline never outlives its transaction (docs/DESIGN.md, "A transaction ended from outside").

Something outside may end a transaction between two statements of one round trip: a Galera
brute-force abort, a KILL, a timeout. Its effect on the session is the one a `ROLLBACK` has:
the work so far is gone and, autocommit being off, the next statement opens a new
transaction. These tests put that `ROLLBACK` between the statements of the real round trips
(the seckill's two, a cancel's, a payment's) once, through the shipped services, and check
what a user could: every call answered as if nothing happened (the work ran again, whole),
stock + active units = units added, one event per change. The control runs the same with the
guard switched off and sees the half-committed batch the guard prevents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from seckill.v1 import activity_pb2, order_pb2

from seckill_common.database import transaction
from seckill_common.database.transaction import Transaction
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import ADMIN, STORED_EVENTS, Stack, query

USERS = 5
STOCK = 10


@dataclass
class Injection:
    """Ends the transaction from outside once: a ROLLBACK after statement `after` of the first
    round trip that contains `marker`."""

    marker: str
    after: int
    done: int = 0
    sql: str = "ROLLBACK"  # what the outside end leaves behind; one statement


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Injection]]:
    injections: list[Injection] = []
    pipeline = Transaction._pipeline

    async def ended_mid_way(self: Transaction, sql: str, params: Sequence[object], *,
                            commit: bool, guard: bool) -> list[list[tuple[object, ...]]]:
        for injection in injections:
            statements = sql.split("; ")
            due = not injection.done and injection.marker in sql
            if due and injection.after <= len(statements):
                injection.done += 1
                statements.insert(injection.after, injection.sql)
                results = await pipeline(self, "; ".join(statements), params, commit=commit,
                                         guard=guard)
                del results[injection.after]  # the ROLLBACK's, which the caller did not send
                return results
        return await pipeline(self, sql, params, commit=commit, guard=guard)

    monkeypatch.setattr(Transaction, "_pipeline", ended_mid_way)
    yield injections


async def _sale(stack: Stack) -> tuple[int, int]:
    product = await make_product(stack, stock=STOCK)
    activity = await make_activity(stack, product.id)
    return product.id, activity.id


async def _buy_all(stack: Stack, activity_id: int) -> list[order_pb2.Order]:
    replies = await asyncio.gather(*(
        stack.activities.Seckill(activity_pb2.SeckillRequest(activity_id=activity_id,
                                                             user_id=f"user-{i}"))
        for i in range(USERS)))
    return [reply.order for reply in replies]


async def _ledger(stack: Stack, product_id: int) -> tuple[int, int, list[tuple[object, ...]]]:
    """The stock, the active units and (order id, events by type) of every order."""
    ((stock,),) = await query(stack.db_url, "SELECT stock FROM products WHERE id = %s",
                              (product_id,))
    ((active,),) = await query(
        stack.db_url, "SELECT COALESCE(SUM(quantity), 0) FROM orders WHERE product_id = %s"
        " AND active = 1", (product_id,))
    events = await query(
        stack.db_url, "SELECT o.id, o.state, GROUP_CONCAT(e.type ORDER BY e.type)"
        f" FROM orders o LEFT JOIN {STORED_EVENTS} e ON e.order_id = o.id"
        " WHERE o.product_id = %s GROUP BY o.id ORDER BY o.id", (product_id,))
    return int(stock), int(active), events


# The statements of the seckill's second round trip: the orders' INSERT, the stock's UPDATE,
# the events' INSERT, the created orders' SELECT (then the guard's release, COMMIT).
@pytest.mark.parametrize("after", [1, 2, 3, 4])
async def test_a_seckill_batch_ended_between_its_writes_commits_none_of_them(
        stack: Stack, inject: list[Injection], after: int) -> None:
    product_id, activity_id = await _sale(stack)
    inject.append(injection := Injection("INSERT INTO orders", after))
    orders = await _buy_all(stack, activity_id)
    assert injection.done == 1
    stock, active, events = await _ledger(stack, product_id)
    assert stock + active == STOCK and active == USERS
    assert sorted(order.id for order in orders) == [row[0] for row in events]
    assert all(created == "1" for _, _, created in events), events  # one CREATED each


@pytest.mark.parametrize("after", [1, 2])
async def test_a_seckill_batch_ended_while_it_reads_under_the_lock_is_run_again(
        stack: Stack, inject: list[Injection], after: int) -> None:
    product_id, activity_id = await _sale(stack)
    inject.append(injection := Injection("FOR UPDATE; SELECT id, IF(", after))
    orders = await _buy_all(stack, activity_id)
    assert injection.done == 1
    stock, active, events = await _ledger(stack, product_id)
    assert (stock, active, len(events), len(orders)) == (STOCK - USERS, USERS, USERS, USERS)


@pytest.mark.parametrize("after", [1, 2, 3, 4])
async def test_a_cancel_ended_between_its_writes_commits_none_of_them(
        stack: Stack, inject: list[Injection], after: int) -> None:
    product_id, activity_id = await _sale(stack)
    orders = await _buy_all(stack, activity_id)
    # The cancel's last round trip: the order's UPDATE, the units back, the event's INSERT,
    # the order's SELECT (then the guard's release, COMMIT).
    inject.append(injection := Injection("UPDATE orders SET state", after))
    cancelled = await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=orders[0].id),
                                                metadata=ADMIN)
    assert injection.done == 1 and cancelled.state == order_pb2.CANCELLED
    stock, active, events = await _ledger(stack, product_id)
    assert (stock, active) == (STOCK - USERS + 1, USERS - 1)
    assert dict((order_id, types) for order_id, _, types in events)[orders[0].id] == "1,3"


async def test_a_statement_failing_after_an_outside_end_runs_the_work_again(
        stack: Stack, inject: list[Injection]) -> None:
    """After an outside end, the next statement may fail on its own (a duplicate key against
    rows the abort let another writer commit): still the work of an ended transaction, run
    again, not an INTERNAL error."""
    product_id, activity_id = await _sale(stack)
    inject.append(injection := Injection(
        "INSERT INTO orders", 1, sql="ROLLBACK; SELECT * FROM no_such_table"))
    orders = await _buy_all(stack, activity_id)
    assert injection.done == 1
    stock, active, events = await _ledger(stack, product_id)
    assert (stock, active, len(events), len(orders)) == (STOCK - USERS, USERS, USERS, USERS)


async def test_without_the_guard_the_statements_after_the_end_commit_alone(
        stack: Stack, inject: list[Injection], monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same outside end with no guard takes units that no order holds."""
    monkeypatch.setattr(transaction, "_GUARD", "DO 0")
    monkeypatch.setattr(transaction, "_RELEASE", "DO 0")
    product_id, activity_id = await _sale(stack)
    inject.append(Injection("INSERT INTO orders", 1))
    replies = await asyncio.gather(*(
        stack.activities.Seckill(activity_pb2.SeckillRequest(activity_id=activity_id,
                                                             user_id=f"user-{i}"))
        for i in range(USERS)), return_exceptions=True)
    stock, active, _ = await _ledger(stack, product_id)
    assert stock + active < STOCK, (stock, active, replies)
