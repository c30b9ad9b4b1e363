"""SQL for activities, and the seckill transaction's two round trips.

The activity service touches the products' stock row and the orders table directly only here:
in the seckill transaction (`lock_sale`, `record_winners`), the refusal read (`read_facts`)
and `delete`; everything else about products and orders goes through their services' stubs
(docs/DESIGN.md, "What the activity service touches directly"). An order and its stock
decrement must commit together, in one transaction that holds the stock row, taken through
database.stock in the lock order of docs/DESIGN.md ("Locks"); the orders' INSERT and DELETE
are database.orders', the one owner of the orders table's writes. Who wins is not decided here:
the engine (activity_svc.seckill) asks `decide` between the two round trips.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

import pymysql

from activity_svc.decision import Facts, SeckillAttempt, Window, Won
from seckill_common.api.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from seckill_common.database import orders, stock
from seckill_common.database.errors import NO_REFERENCED_ROW, ROW_IS_REFERENCED, error_code
from seckill_common.database.order_events import Outbox
from seckill_common.database.stock import LockedStock
from seckill_common.database.transaction import Transaction

# Update mask paths; each is the column of the same name but payment_window.
UPDATABLE = ("name", "start_time", "end_time", "price_cents", "payment_window",
             "per_user_limit", "waiting_room")
_COLUMN_OF = {"payment_window": "payment_window_ms"}
# The columns of the waiting_room path (activity_svc.fields.waiting_room_columns).
WAITING_ROOM_COLUMNS = ("waiting_room", "pre_queue_ms", "pass_validity_ms", "admission_rate")


@dataclass(frozen=True)
class ActivityRow:
    id: int
    product_id: int
    name: str
    start_time: datetime
    end_time: datetime
    create_time: datetime
    price_cents: int
    payment_window_ms: int
    per_user_limit: int
    # The waiting room (activity_svc.fields: defaults and ranges); admission_rate None:
    # adaptive.
    waiting_room: int
    pre_queue_ms: int
    pass_validity_ms: int
    admission_rate: int | None

    @classmethod
    def from_db(cls, row: Sequence[Any]) -> ActivityRow:
        """The activity from a row of `_COLUMNS`, paired with its fields by name."""
        return cls(**dict(zip(_FIELDS, row, strict=True)))


# The columns are ActivityRow's fields, in its order: `from_db` pairs them up again.
_FIELDS = tuple(field.name for field in fields(ActivityRow))
_COLUMNS = ", ".join(_FIELDS)


async def create(tx: Transaction, product_id: int, name: str, start_time: datetime,
                 end_time: datetime, price_cents: int, payment_window_ms: int,
                 per_user_limit: int, waiting_room: Mapping[str, object]) -> ActivityRow:
    """`waiting_room`: its columns (WAITING_ROOM_COLUMNS), by name."""
    try:
        await tx.execute(
            "INSERT INTO activities (product_id, name, start_time, end_time, create_time,"
            " price_cents, payment_window_ms, per_user_limit, "
            + ", ".join(WAITING_ROOM_COLUMNS) + ")"
            " VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6), %s, %s, %s, %s, %s, %s, %s)",
            (product_id, name, start_time, end_time, price_cents, payment_window_ms,
             per_user_limit, *(waiting_room[column] for column in WAITING_ROOM_COLUMNS)),
        )
    except pymysql.err.IntegrityError as exc:
        if error_code(exc) != NO_REFERENCED_ROW:
            raise
        raise NotFound("Product", product_id) from exc  # deleted since the caller checked
    return await get(tx, tx.lastrowid)


async def get(tx: Transaction, activity_id: int, *, lock: bool = False) -> ActivityRow:
    await tx.execute(
        f"SELECT {_COLUMNS} FROM activities WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (activity_id,),
    )
    row = await tx.fetchone()
    if row is None:
        raise NotFound("Activity", activity_id)
    return ActivityRow.from_db(row)


async def get_many(tx: Transaction, activity_ids: list[int]) -> dict[int, ActivityRow]:
    """The activities among `activity_ids` that exist, by id."""
    marks = ", ".join(["%s"] * len(activity_ids))
    rows = await tx.select_only(f"SELECT {_COLUMNS} FROM activities WHERE id IN ({marks})",
                                activity_ids)
    return {activity.id: activity for activity in map(ActivityRow.from_db, rows)}


async def list_page(tx: Transaction, after_id: int, limit: int) -> list[ActivityRow]:
    await tx.execute(
        f"SELECT {_COLUMNS} FROM activities WHERE id > %s ORDER BY id LIMIT %s",
        (after_id, limit),
    )
    return [ActivityRow.from_db(row) for row in await tx.fetchall()]


async def update(tx: Transaction, activity_id: int,
                 changes: dict[str, object]) -> ActivityRow:
    """Applies `changes` (keys from UPDATABLE; payment_window in milliseconds, waiting_room as
    its columns by name); the resulting window must stay ordered."""
    current = await get(tx, activity_id, lock=True)
    start = cast(datetime, changes.get("start_time", current.start_time))
    end = cast(datetime, changes.get("end_time", current.end_time))
    if not end > start:
        raise InvalidArgument({"activity.end_time": "must be after start_time"})
    if changes:
        # Column names come from UPDATABLE, never from the client; values are parameters.
        assert set(changes) <= set(UPDATABLE), changes
        columns: dict[str, object] = {}
        for path, value in changes.items():
            if path == "waiting_room":
                columns.update(cast(Mapping[str, object], value))
            else:
                columns[_COLUMN_OF.get(path, path)] = value
        assignments = ", ".join(f"{column} = %s" for column in columns)
        await tx.execute(
            f"UPDATE activities SET {assignments} WHERE id = %s",
            (*columns.values(), activity_id),
        )
    return await get(tx, activity_id)


async def delete(tx: Transaction, activity_id: int) -> None:
    """Deletes an activity and its finished (cancelled, expired) orders; while an active order
    remains, the foreign key from orders refuses."""
    activity = await get(tx, activity_id)
    await stock.lock(tx, activity.product_id)
    await get(tx, activity_id, lock=True)
    try:
        await orders.delete_finished(tx, activity_id)
        await tx.execute("DELETE FROM activities WHERE id = %s", (activity_id,))
    except pymysql.err.IntegrityError as exc:
        if error_code(exc) != ROW_IS_REFERENCED:
            raise
        raise has_orders(activity_id) from exc


def has_orders(activity_id: int) -> FailedPrecondition:
    return FailedPrecondition(
        Reason.ACTIVITY_HAS_ORDERS,
        f"activity {activity_id} has pending or paid orders; cancel them first",
        {"activity_id": str(activity_id)},
    )


class SaleOf(NamedTuple):
    """What the engine needs of an activity before its transaction (`sale_of`)."""

    product_id: int  # immutable, so callers may cache it
    per_user_limit: int  # as read: an admin may change it, so a cached one is a hint


async def sale_of(tx: Transaction, activity_id: int) -> SaleOf:
    """The activity's product id and per-user limit: a plain consistent read, no lock."""
    await tx.execute("SELECT product_id, per_user_limit FROM activities WHERE id = %s",
                     (activity_id,))
    row = await tx.fetchone()
    if row is None:
        raise NotFound("Activity", activity_id)
    product_id, per_user_limit = row
    return SaleOf(product_id=int(product_id), per_user_limit=int(per_user_limit))


# --- the seckill transaction -------------------------------------------------------------

# The activity's window as a `Window` number, by the database's clock: its clock decides.
_WINDOW = (f"IF(start_time > UTC_TIMESTAMP(6), {Window.NOT_STARTED:d},"
           f" IF(end_time <= UTC_TIMESTAMP(6), {Window.ENDED:d}, {Window.OPEN:d}))")


class _SaleRow(NamedTuple):
    """An activity of the batch as the seckill transaction reads it (`lock_sale`)."""

    activity_id: int
    window: int  # a `Window`
    now: datetime  # the database's clock: the orders' create time
    price_cents: int
    payment_window_ms: int
    per_user_limit: int


class _HeldRow(NamedTuple):
    """An active order of one activity's user (`_orders_query`)."""

    user_id: bytes | str  # a VARBINARY
    order_id: int


@dataclass(frozen=True)
class LockedSale:
    """What the seckill transaction read under the stock row's lock: the facts `decide`
    needs, and what recording its winners needs besides."""

    facts: Facts
    locked: LockedStock | None  # None: the product is gone
    activities: Mapping[int, _SaleRow]  # the batch's activities that exist, by id


async def lock_sale(tx: Transaction, product_id: int,
                    attempts: Sequence[SeckillAttempt]) -> LockedSale:
    """The seckill transaction's first round trip: lock the stock row, read the activities'
    windows (the database's clock decides, and its reading is the orders' create time),
    prices, payment windows and per-user limits, and the active orders the users already
    hold.

    Both round trips return as few columns as they can: the driver parses every column
    definition of every result in Python, and that is most of what a flash sale pays per
    transaction.
    """
    activity_ids = sorted({a.activity_id for a in attempts})
    marks = ", ".join(["%s"] * len(activity_ids))
    users = _users_by_activity(attempts)
    held_sql, held_params = _orders_query(users)
    locked, (sale_rows, *held_sets) = await stock.lock_then(
        tx, product_id,
        f"SELECT id, {_WINDOW}, UTC_TIMESTAMP(6), price_cents, payment_window_ms,"
        f" per_user_limit FROM activities WHERE id IN ({marks}) AND product_id = %s"
        " LOCK IN SHARE MODE; "
        + "; ".join(held_sql),
        (*activity_ids, product_id, *held_params),
    )
    activities = {sale.activity_id: sale for sale in map(_SaleRow._make, sale_rows)}
    facts = Facts(
        stock=None if locked is None else locked.units,
        windows={activity_id: Window(sale.window) for activity_id, sale in activities.items()},
        held=_by_key(users, held_sets),
        limits={activity_id: int(sale.per_user_limit)
                for activity_id, sale in activities.items()},
    )
    return LockedSale(facts=facts, locked=locked, activities=activities)


async def record_winners(tx: Transaction, sale: LockedSale, winners: Sequence[SeckillAttempt],
                         outbox: Outbox) -> dict[tuple[int, str], Won]:
    """The seckill transaction's second round trip: insert the winners' PENDING_PAYMENT
    orders (each of its quantity), take their units, write their CREATED events (`outbox`)
    and commit; returns each winner's order by (activity, user).

    `winners` come from `decide` on `sale.facts`: distinct, of activities that exist, and
    asking no more units in all than the units locked.
    """
    locked = sale.locked
    assert locked is not None and winners, (sale, winners)
    (now,) = {activity.now for activity in sale.activities.values()}  # one statement, one clock
    deadlines = {activity_id: now + timedelta(milliseconds=int(activity.payment_window_ms))
                 for activity_id, activity in sale.activities.items()}
    prices = {activity_id: int(activity.price_cents)
              for activity_id, activity in sale.activities.items()}
    insert_sql, params = orders.insert_pending_statement(locked.product_id, now, prices,
                                                         deadlines, winners)
    take_sql, take_params = stock.take_statement(locked, units_of(winners), now)
    won_users = _users_by_activity(winners)
    created_sql, created_params = _orders_query(won_users)
    events_sql, events_params = outbox.created_statements(won_users)
    writes = [insert_sql, take_sql, *events_sql]
    # COMMIT rides in the same round trip. Should anything before it fail, the server stops
    # there and the transaction rolls back; should the link drop after it was sent, the
    # outcome is unknown and the callers get UNAVAILABLE, and a retry finds the order.
    results = await tx.pipeline("; ".join([*writes, *created_sql]),
                                (*params, *take_params, *events_params, *created_params),
                                commit=True)
    created = _by_key(won_users, results[len(writes):])
    return {w.key: Won(order_id=created[w.key], product_id=locked.product_id, create_time=now,
                       price_cents=int(sale.activities[w.activity_id].price_cents),
                       pay_deadline=deadlines[w.activity_id], quantity=w.quantity)
            for w in winners}


def units_of(attempts: Sequence[SeckillAttempt]) -> int:
    """The units `attempts` ask for in all."""
    return sum(a.quantity for a in attempts)


class _Fact(enum.IntEnum):
    """What a row of `read_facts`' UNION says (its `kind` column)."""

    STOCK = 0  # value: the product's stock
    WINDOW = 1  # activity_id's `Window` as value, its per-user limit as per_user_limit
    HELD = 2  # value: the id of the active order user_id holds for activity_id


class _FactRow(NamedTuple):
    kind: int  # a `_Fact`
    activity_id: int | None
    value: int
    user_id: bytes | str | None
    per_user_limit: int | None


async def read_facts(tx: Transaction, product_id: int,
                     attempts: Sequence[SeckillAttempt]) -> Facts:
    """What the seckill transaction would read for `attempts`, without taking any lock.

    One statement, so one consistent snapshot and one reading of the database's clock: every
    fact is as it was at a single instant, and a refusal decided on them is one the seckill
    transaction could have given at that instant.
    """
    activity_ids = sorted({a.activity_id for a in attempts})
    marks = ", ".join(["%s"] * len(activity_ids))
    users = _users_by_activity(attempts)
    held_sql, held_params = _orders_query(users, tagged=True)
    rows = await tx.select_only(
        " UNION ALL ".join([
            f"SELECT {_Fact.STOCK:d}, NULL, stock, NULL, NULL FROM products WHERE id = %s",
            f"SELECT {_Fact.WINDOW:d}, id, {_WINDOW}, NULL, per_user_limit FROM activities"
            f" WHERE id IN ({marks}) AND product_id = %s",
            *held_sql]),
        (product_id, *activity_ids, product_id, *held_params),
    )
    stock_left: int | None = None
    windows: dict[int, Window] = {}
    limits: dict[int, int] = {}
    held: dict[tuple[int, str], int] = {}
    for fact in map(_FactRow._make, rows):
        if fact.kind == _Fact.STOCK:
            stock_left = int(fact.value)
        elif fact.kind == _Fact.WINDOW:
            activity_id = int(cast(int, fact.activity_id))
            windows[activity_id] = Window(int(fact.value))
            limits[activity_id] = int(cast(int, fact.per_user_limit))
        else:
            held[(int(cast(int, fact.activity_id)), _text(cast(bytes, fact.user_id)))] = (
                int(fact.value))
    return Facts(stock=stock_left, windows=windows, held=held, limits=limits)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _users_by_activity(attempts: Sequence[SeckillAttempt]) -> dict[int, list[str]]:
    by_activity: dict[int, list[str]] = {}
    for a in attempts:
        by_activity.setdefault(a.activity_id, []).append(a.user_id)
    return by_activity


def _orders_query(users: dict[int, list[str]], *, tagged: bool = False
                  ) -> tuple[list[str], list[object]]:
    """One SELECT of active orders per activity (`_HeldRow`s), through the unique key, in
    `users`' order, and their parameters; `tagged`: `_FactRow`s (for read_facts' UNION)."""
    columns = (f"{_Fact.HELD:d}, activity_id, id, user_id, NULL" if tagged else "user_id, id")
    statements, params = [], []
    for activity_id, names in users.items():
        marks = ", ".join(["%s"] * len(names))
        statements.append(
            f"SELECT {columns} FROM orders WHERE activity_id = %s AND user_id IN ({marks})"
            " AND active = 1")
        params += [activity_id, *names]
    return statements, params


def _by_key(users: dict[int, list[str]], result_sets: Sequence[Sequence[tuple[Any, ...]]]
            ) -> dict[tuple[int, str], int]:
    """Order ids by (activity_id, user_id) from `_orders_query`'s results, one set per activity."""
    return {(activity_id, _text(held.user_id)): held.order_id
            for activity_id, rows in zip(users, result_sets, strict=True)
            for held in map(_HeldRow._make, rows)}
