"""SQL for orders: reading them, and their state changes after the seckill.

Orders are inserted only by the seckill transaction (activity_svc/repository.py), as
PENDING_PAYMENT. Every change that gives a unit back (cancel, expiry) takes the product's stock
row first (database.stock; the lock order is docs/DESIGN.md's "Locks"); paying moves no unit
and locks the order row alone. The deadline is judged by the database's clock inside the
transaction that holds the order row, so a payment and an expiry of one order never both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiomysql
from seckill.v1.order_pb2 import CANCELLED, EXPIRED, PAID, PENDING_PAYMENT

from seckill_common.api.errors import FailedPrecondition, NotFound
from seckill_common.database import stock

_COLUMNS = ("id, activity_id, product_id, user_id, create_time, state, price_cents,"
            " pay_deadline, update_time")
# The order's columns, and whether its deadline has passed by the database's clock.
_COLUMNS_DUE = _COLUMNS + ", pay_deadline <= UTC_TIMESTAMP(6)"


@dataclass(frozen=True)
class OrderRow:
    id: int
    activity_id: int
    product_id: int
    user_id: str
    create_time: datetime
    state: int
    price_cents: int
    pay_deadline: datetime
    update_time: datetime

    @classmethod
    def from_db(cls, row: tuple[Any, ...]) -> OrderRow:
        (order_id, activity_id, product_id, user_id, create_time, state, price_cents,
         pay_deadline, update_time) = row[:9]
        return cls(order_id, activity_id, product_id, user_id.decode("utf-8"), create_time,
                   state, price_cents, pay_deadline, update_time)


@dataclass(frozen=True)
class Changed:
    """The order after a state change this call made (a repeat changes nothing)."""

    order: OrderRow


@dataclass(frozen=True)
class Overdue:
    """A pending order found past its deadline: the caller expires it (`expire`), in a
    transaction that takes the stock row first."""

    order: OrderRow


def _refusal(reason: str, message: str, order_id: int) -> FailedPrecondition:
    return FailedPrecondition(reason, message, {"order_id": str(order_id)})


def payment_expired(order_id: int) -> FailedPrecondition:
    return _refusal("PAYMENT_EXPIRED", f"order {order_id} was not paid before its deadline",
                    order_id)


def order_expired(order_id: int) -> FailedPrecondition:
    return _refusal("ORDER_EXPIRED", f"order {order_id} expired unpaid; its unit is back",
                    order_id)


def order_cancelled(order_id: int) -> FailedPrecondition:
    return _refusal("ORDER_CANCELLED", f"order {order_id} is cancelled", order_id)


async def get(cur: aiomysql.Cursor, order_id: int, owner: str | None = None) -> OrderRow:
    """The order; with `owner`, another user's order is NOT_FOUND, as if it did not exist."""
    row, _ = await _get(cur, order_id, owner, lock=False)
    return row


async def _get(cur: aiomysql.Cursor, order_id: int, owner: str | None, *, lock: bool
               ) -> tuple[OrderRow, bool]:
    await cur.execute(
        f"SELECT {_COLUMNS_DUE} FROM orders WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (order_id,))
    found = await cur.fetchone()
    if found is None:
        raise NotFound("Order", order_id)
    row = OrderRow.from_db(found)
    if owner is not None and row.user_id != owner:
        raise NotFound("Order", order_id)
    return row, bool(found[9])


async def list_page(cur: aiomysql.Cursor, *, user_id: str | None, activity_id: int | None,
                    states: Sequence[int], after_id: int, limit: int) -> list[OrderRow]:
    conditions = ["id > %s"]
    params: list[int | str] = [after_id]
    if user_id is not None:
        conditions.append("user_id = %s")
        params.append(user_id)
    if activity_id is not None:
        conditions.append("activity_id = %s")
        params.append(activity_id)
    if states:
        conditions.append(f"state IN ({', '.join(['%s'] * len(states))})")
        params += states
    await cur.execute(
        f"SELECT {_COLUMNS} FROM orders WHERE {' AND '.join(conditions)} ORDER BY id LIMIT %s",
        (*params, limit),
    )
    return [OrderRow.from_db(row) for row in await cur.fetchall()]


async def pay(cur: aiomysql.Cursor, order_id: int, owner: str | None
              ) -> OrderRow | Changed | Overdue:
    """PENDING_PAYMENT -> PAID before the deadline; a paid order as it is; refusals raised."""
    row, overdue = await _get(cur, order_id, owner, lock=True)
    if row.state == PAID:
        return row
    if row.state == CANCELLED:
        raise order_cancelled(order_id)
    if row.state == EXPIRED:
        raise payment_expired(order_id)
    if overdue:
        return Overdue(row)
    await _set_state(cur, [order_id], PAID)
    return Changed(await get(cur, order_id))


async def cancel(cur: aiomysql.Cursor, order_id: int, owner: str | None
                 ) -> OrderRow | Changed | Overdue:
    """PENDING_PAYMENT or PAID -> CANCELLED, its unit back to stock, in the caller's
    transaction; a cancelled order as it is; an expired one refused. A pending order past its
    deadline is expired here instead (Overdue: the caller answers ORDER_EXPIRED)."""
    product_id = (await get(cur, order_id, owner)).product_id  # immutable: safe to read first
    locked = await stock.lock(cur, product_id)
    row, overdue = await _get(cur, order_id, owner, lock=True)
    if row.state == CANCELLED:
        return row
    if row.state == EXPIRED:
        raise order_expired(order_id)
    if row.state == PENDING_PAYMENT and overdue:
        await _set_state(cur, [order_id], EXPIRED)
        await stock.give_back(cur, locked)
        return Overdue(row)
    await _set_state(cur, [order_id], CANCELLED)
    await stock.give_back(cur, locked)
    return Changed(await get(cur, order_id))


async def _set_state(cur: aiomysql.Cursor, order_ids: Sequence[int], state: int) -> None:
    """Moves orders to `state`; `active` follows (the schema's CHECK insists)."""
    marks = ", ".join(["%s"] * len(order_ids))
    active = 1 if state in (PENDING_PAYMENT, PAID) else None
    await cur.execute(f"UPDATE orders SET state = %s, active = %s, update_time = UTC_TIMESTAMP(6)"
                      f" WHERE id IN ({marks})", (state, active, *order_ids))


# --- expiry --------------------------------------------------------------------------------

async def due(cur: aiomysql.Cursor, limit: int) -> list[tuple[int, int]]:
    """(product_id, order_id) of pending orders past their deadline, oldest deadline first.

    No locks (a consistent read on the orders_due index): `expire` re-checks under them.
    """
    await cur.execute(
        "SELECT product_id, id FROM orders WHERE state = %s AND pay_deadline <= UTC_TIMESTAMP(6)"
        " ORDER BY pay_deadline LIMIT %s", (PENDING_PAYMENT, limit))
    return [(int(product_id), int(order_id)) for product_id, order_id in await cur.fetchall()]


async def expire(cur: aiomysql.Cursor, product_id: int, order_ids: Sequence[int], *,
                 skip_locked: bool = False) -> list[float] | None:
    """Expires those of `order_ids` (all of `product_id`) still pending past their deadline,
    and gives their units back: exactly once, since every give-back holds the stock row and
    re-reads the orders' state under it.

    Returns how many seconds past its deadline each one expired; None when `skip_locked` and
    another transaction holds the stock row (nothing done: try again later).
    """
    if skip_locked:
        locked = await stock.try_lock(cur, product_id)
        if locked is None:
            return None
    else:
        locked = await stock.lock(cur, product_id)
    marks = ", ".join(["%s"] * len(order_ids))
    await cur.execute(
        "SELECT id, TIMESTAMPDIFF(MICROSECOND, pay_deadline, UTC_TIMESTAMP(6)) FROM orders"
        f" WHERE id IN ({marks}) AND product_id = %s AND state = %s"
        " AND pay_deadline <= UTC_TIMESTAMP(6) FOR UPDATE",
        (*order_ids, product_id, PENDING_PAYMENT))
    found = await cur.fetchall()
    if not found:
        return []
    await _set_state(cur, [row[0] for row in found], EXPIRED)
    await stock.give_back(cur, locked, len(found))
    return [int(row[1]) / 1e6 for row in found]
