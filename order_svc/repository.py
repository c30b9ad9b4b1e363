"""SQL for orders: reading them, and their state changes after the seckill.

Orders are inserted only by the seckill transaction (activity_svc/repository.py), as
PENDING_PAYMENT; every write of the orders table is built by its one owner, database.orders.
Every change that gives units back (cancel, expiry: the order's whole quantity, never part of
it) takes the product's stock row first (database.stock; the lock order is docs/DESIGN.md's
"Locks"); paying moves no unit and locks the order row alone. The deadline is judged by the
database's clock inside the transaction that holds the order row, so a payment and an expiry
of one order never both win.

Every change's writes (the orders' UPDATE, the units back, its events) go in one round trip
with the COMMIT (`_change`): the rows they lock are held for the server's own work on that
round trip, never while the client is away between two.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from seckill.v1.order_pb2 import CANCELLED, EXPIRED, PAID, PENDING_PAYMENT

from seckill_common.api.errors import FailedPrecondition, NotFound, Reason
from seckill_common.api.messages import OrderRow
from seckill_common.database import orders, stock
from seckill_common.database.order_events import EventType, Outbox
from seckill_common.database.stock import LockedStock
from seckill_common.database.transaction import Transaction

# The columns are OrderRow's fields, in its order; `_named` pairs them up again.
_FIELDS = OrderRow._fields
_COLUMNS = ", ".join(_FIELDS)
# The order's columns, and whether its deadline has passed by the database's clock.
_COLUMNS_DUE = _COLUMNS + ", pay_deadline <= UTC_TIMESTAMP(6)"


def _named(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A result row by column name: `names` are the SELECT list's, in its order."""
    assert len(names) == len(row), (names, row)
    return dict(zip(names, row, strict=True))


class _SeenOrder(NamedTuple):
    order: OrderRow
    due: bool  # its deadline has passed, by the database's clock


class DueOrder(NamedTuple):
    product_id: int
    order_id: int


class _Overdue(NamedTuple):
    order_id: int
    lag_us: int  # how long past its deadline, by the database's clock
    quantity: int  # its units, all given back


# --- what each operation did ----------------------------------------------------------------
# One result type per operation; refusals (a cancelled order paid, ...) are raised instead.
# order_svc.outcomes turns each into the answer and counts it in the metrics.

class Paid(enum.Enum):
    NOW = "paid now"  # this call paid it
    ALREADY = "already paid"  # a repeat: nothing changed
    TOO_LATE = "too late"  # past its deadline: expired (here, or a moment ago elsewhere)


@dataclass(frozen=True)
class Payment:
    outcome: Paid
    order: OrderRow  # as this call left it (TOO_LATE: as it was found, pending)
    expired: Expiry | None = None  # TOO_LATE: the expiry this call made


class Cancelled(enum.Enum):
    NOW = "cancelled now"  # this call cancelled it, its units back to stock
    ALREADY = "already cancelled"  # a repeat: nothing changed
    TOO_LATE = "too late"  # pending past its deadline: expired instead, its units back


@dataclass(frozen=True)
class Cancellation:
    outcome: Cancelled
    order: OrderRow  # as this call left it (TOO_LATE: as it was found, pending)
    expired: Expiry | None = None  # TOO_LATE: the expiry this call made


class Expired(enum.Enum):
    DONE = "done"  # the orders still due expired (maybe none: others were faster)
    BUSY = "stock row busy"  # skip_locked, and another transaction held the stock row


@dataclass(frozen=True)
class Expiry:
    outcome: Expired
    lags_s: tuple[float, ...] = ()  # per order expired: seconds past its deadline
    units: int = 0  # the units the expired orders gave back

    @property
    def count(self) -> int:
        return len(self.lags_s)


def _refusal(reason: Reason, message: str, order_id: int) -> FailedPrecondition:
    return FailedPrecondition(reason, message, {"order_id": str(order_id)})


def payment_expired(order_id: int) -> FailedPrecondition:
    return _refusal(Reason.PAYMENT_EXPIRED, f"order {order_id} was not paid before its deadline",
                    order_id)


def order_expired(order_id: int) -> FailedPrecondition:
    return _refusal(Reason.ORDER_EXPIRED, f"order {order_id} expired unpaid; its units are back",
                    order_id)


def order_cancelled(order_id: int) -> FailedPrecondition:
    return _refusal(Reason.ORDER_CANCELLED, f"order {order_id} is cancelled", order_id)


async def get(cur: Transaction, order_id: int, owner: str | None = None) -> OrderRow:
    """The order; with `owner`, another user's order is NOT_FOUND, as if it did not exist."""
    return (await _get(cur, order_id, owner, lock=False)).order


async def _get(cur: Transaction, order_id: int, owner: str | None, *, lock: bool
               ) -> _SeenOrder:
    await cur.execute(
        f"SELECT {_COLUMNS_DUE} FROM orders WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (order_id,))
    found = await cur.fetchone()
    if found is None:
        raise NotFound("Order", order_id)
    columns = _named((*_FIELDS, "due"), found)
    row = OrderRow.from_db(columns)
    if owner is not None and row.user_id != owner:
        raise NotFound("Order", order_id)
    return _SeenOrder(order=row, due=bool(columns["due"]))


async def list_page(cur: Transaction, *, user_id: str | None, activity_id: int | None,
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
    return [OrderRow.from_db(_named(_FIELDS, row)) for row in await cur.fetchall()]


async def pay(cur: Transaction, order_id: int, owner: str | None, outbox: Outbox) -> Payment:
    """PENDING_PAYMENT -> PAID before the deadline; a paid order as it is; refusals raised.

    A pending order past its deadline is expired here, in this transaction (TOO_LATE): it
    gives units back, so the stock row is taken first, before the order row. Paying in time
    locks the order row alone, once a consistent read found it not yet due; the deadline is
    judged again under that lock.
    """
    seen = await _get(cur, order_id, owner, lock=False)
    if seen.order.state == PENDING_PAYMENT and seen.due:
        locked = await stock.lock(cur, seen.order.product_id)
        expiry = await _expire_locked(cur, locked, [order_id], outbox)
        if expiry.count:
            return Payment(outcome=Paid.TOO_LATE, order=seen.order, expired=expiry)
        # Another transaction moved it meanwhile: answer by its state, read under the lock.
    row, due = await _get(cur, order_id, owner, lock=True)
    if row.state == PAID:
        return Payment(outcome=Paid.ALREADY, order=row)
    if row.state == CANCELLED:
        raise order_cancelled(order_id)
    if row.state == EXPIRED:
        raise payment_expired(order_id)
    if due:
        # The deadline passed since the read above. The order row is held, so the stock row
        # may only be taken without waiting (SKIP LOCKED: no wait, no deadlock); when busy,
        # the sweeper expires the order within an interval.
        late = await stock.try_lock(cur, row.product_id)
        expired = None if late is None else await _expire_locked(cur, late, [order_id], outbox)
        return Payment(outcome=Paid.TOO_LATE, order=row, expired=expired)
    return Payment(outcome=Paid.NOW, order=await _change(cur, [order_id], PAID, outbox))


async def cancel(cur: Transaction, order_id: int, owner: str | None, outbox: Outbox
                 ) -> Cancellation:
    """PENDING_PAYMENT or PAID -> CANCELLED, all its units back to stock, in the caller's
    transaction; a cancelled order as it is; an expired one refused. A pending order past its
    deadline is expired here instead (TOO_LATE)."""
    product_id = (await get(cur, order_id, owner)).product_id  # immutable: safe to read first
    locked = await stock.lock(cur, product_id)
    row, due = await _get(cur, order_id, owner, lock=True)
    if row.state == CANCELLED:
        return Cancellation(outcome=Cancelled.ALREADY, order=row)
    if row.state == EXPIRED:
        raise order_expired(order_id)
    if row.state == PENDING_PAYMENT and due:
        expiry = await _expire_locked(cur, locked, [order_id], outbox)
        return Cancellation(outcome=Cancelled.TOO_LATE, order=row, expired=expiry)
    return Cancellation(outcome=Cancelled.NOW, order=await _change(
        cur, [order_id], CANCELLED, outbox, back=(locked, row.quantity)))


# The event each state change writes.
_EVENT_OF: dict[int, EventType] = {
    PAID: EventType.PAID, CANCELLED: EventType.CANCELLED, EXPIRED: EventType.EXPIRED}


async def _change(cur: Transaction, order_ids: Sequence[int], state: int, outbox: Outbox, *,
                  back: tuple[LockedStock, int] | None = None) -> OrderRow:
    """Moves orders to `state` (database.orders: `active` follows), gives `back`
    units to the stock row held, writes the change's events and COMMITs, in one round trip;
    returns the first order as committed. Every state change passes here, and ends its
    transaction here: nothing may follow it."""
    change_sql, params = orders.change_statement(order_ids, state)
    statements = [change_sql]
    if back is not None:
        back_sql, back_params = stock.give_back_statement(*back)
        statements.append(back_sql)
        params += back_params
    events_sql, events_params = outbox.record_statements(_EVENT_OF[state], order_ids)
    statements += [*events_sql, f"SELECT {_COLUMNS} FROM orders WHERE id = %s"]
    params += [*events_params, order_ids[0]]
    *_, (row,) = await cur.pipeline("; ".join(statements), params, commit=True)
    return OrderRow.from_db(_named(_FIELDS, row))


# --- expiry --------------------------------------------------------------------------------

async def due(cur: Transaction, limit: int) -> list[DueOrder]:
    """Pending orders past their deadline, oldest deadline first.

    No locks (a consistent read on the orders_due index): `expire` re-checks under them.
    """
    await cur.execute(
        "SELECT product_id, id FROM orders WHERE state = %s AND pay_deadline <= UTC_TIMESTAMP(6)"
        " ORDER BY pay_deadline LIMIT %s", (PENDING_PAYMENT, limit))
    return [DueOrder(product_id=int(product_id), order_id=int(order_id))
            for product_id, order_id in await cur.fetchall()]


async def expire(cur: Transaction, product_id: int, order_ids: Sequence[int], outbox: Outbox,
                 *, skip_locked: bool = False) -> Expiry:
    """Expires those of `order_ids` (all of `product_id`) still pending past their deadline,
    and gives their units (each its whole quantity) back: exactly once, since every give-back
    holds the stock row and re-reads the orders' state under it.

    BUSY when `skip_locked` and another transaction holds the stock row (nothing done: try
    again later).
    """
    if skip_locked:
        locked = await stock.try_lock(cur, product_id)
        if locked is None:
            return Expiry(outcome=Expired.BUSY)
    else:
        locked = await stock.lock(cur, product_id)
    return await _expire_locked(cur, locked, order_ids, outbox)


async def _expire_locked(cur: Transaction, locked: LockedStock, order_ids: Sequence[int],
                         outbox: Outbox) -> Expiry:
    """`expire` once the stock row is held: the orders' locks come after it. When it expired
    any, it committed (`_change`)."""
    marks = ", ".join(["%s"] * len(order_ids))
    await cur.execute(
        "SELECT id, TIMESTAMPDIFF(MICROSECOND, pay_deadline, UTC_TIMESTAMP(6)), quantity"
        " FROM orders"
        f" WHERE id IN ({marks}) AND product_id = %s AND state = %s"
        " AND pay_deadline <= UTC_TIMESTAMP(6) FOR UPDATE",
        (*order_ids, locked.product_id, PENDING_PAYMENT))
    overdue = [_Overdue(order_id=int(order_id), lag_us=int(lag_us), quantity=int(quantity))
               for order_id, lag_us, quantity in await cur.fetchall()]
    units = sum(order.quantity for order in overdue)
    if overdue:  # the transaction ends here
        await _change(cur, [order.order_id for order in overdue], EXPIRED, outbox,
                      back=(locked, units))
    return Expiry(outcome=Expired.DONE, lags_s=tuple(order.lag_us / 1e6 for order in overdue),
                  units=units)
