"""SQL for activities, and the seckill transaction.

The seckill transaction is the one place where the activity service touches the products'
stock row and the orders table directly (everything else about products and orders goes
through their services' stubs): an order and its stock decrement must commit together, in
one transaction that holds the stock row. Lock order, everywhere: the product's stock row,
then the activity row, then order rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import aiomysql
import pymysql

from seckill_common.db import committed_in_pipeline, error_code
from seckill_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

ROW_IS_REFERENCED = 1451  # a foreign key still points at the row
NO_REFERENCED_ROW = 1452  # a foreign key points at a missing row
_COLUMNS = "id, product_id, name, start_time, end_time, create_time"
UPDATABLE = ("name", "start_time", "end_time")


@dataclass(frozen=True)
class ActivityRow:
    id: int
    product_id: int
    name: str
    start_time: datetime
    end_time: datetime
    create_time: datetime


async def create(cur: aiomysql.Cursor, product_id: int, name: str, start_time: datetime,
                 end_time: datetime) -> ActivityRow:
    try:
        await cur.execute(
            "INSERT INTO activities (product_id, name, start_time, end_time, create_time)"
            " VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))",
            (product_id, name, start_time, end_time),
        )
    except pymysql.err.IntegrityError as exc:
        if error_code(exc) != NO_REFERENCED_ROW:
            raise
        raise NotFound("Product", product_id) from exc  # deleted since the caller checked
    return await get(cur, cur.lastrowid)


async def get(cur: aiomysql.Cursor, activity_id: int, *, lock: bool = False) -> ActivityRow:
    await cur.execute(
        f"SELECT {_COLUMNS} FROM activities WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (activity_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("Activity", activity_id)
    return ActivityRow(*row)


async def list_page(cur: aiomysql.Cursor, after_id: int, limit: int) -> list[ActivityRow]:
    await cur.execute(
        f"SELECT {_COLUMNS} FROM activities WHERE id > %s ORDER BY id LIMIT %s",
        (after_id, limit),
    )
    return [ActivityRow(*row) for row in await cur.fetchall()]


async def update(cur: aiomysql.Cursor, activity_id: int,
                 changes: dict[str, object]) -> ActivityRow:
    """Applies `changes` (keys from UPDATABLE); the resulting window must stay ordered."""
    current = await get(cur, activity_id, lock=True)
    start = cast(datetime, changes.get("start_time", current.start_time))
    end = cast(datetime, changes.get("end_time", current.end_time))
    if not end > start:
        raise InvalidArgument({"activity.end_time": "must be after start_time"})
    if changes:
        # Column names come from UPDATABLE, never from the client; values are parameters.
        assert set(changes) <= set(UPDATABLE), changes
        assignments = ", ".join(f"{column} = %s" for column in changes)
        await cur.execute(
            f"UPDATE activities SET {assignments} WHERE id = %s",
            (*changes.values(), activity_id),
        )
    return await get(cur, activity_id)


async def delete(cur: aiomysql.Cursor, activity_id: int) -> None:
    """Deletes an activity without orders (the foreign key from orders refuses otherwise)."""
    activity = await get(cur, activity_id)
    await _lock_stock_row(cur, activity.product_id)
    await get(cur, activity_id, lock=True)
    try:
        await cur.execute("DELETE FROM activities WHERE id = %s", (activity_id,))
    except pymysql.err.IntegrityError as exc:
        if error_code(exc) != ROW_IS_REFERENCED:
            raise
        raise has_orders(activity_id) from exc


def has_orders(activity_id: int) -> FailedPrecondition:
    return FailedPrecondition(
        "ACTIVITY_HAS_ORDERS",
        f"activity {activity_id} has orders; cancel them first",
        {"activity_id": str(activity_id)},
    )


async def product_of(cur: aiomysql.Cursor, activity_id: int) -> int:
    """The activity's product id (immutable, so callers may cache it)."""
    await cur.execute("SELECT product_id FROM activities WHERE id = %s", (activity_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound("Activity", activity_id)
    return int(row[0])


async def _lock_stock_row(cur: aiomysql.Cursor, product_id: int) -> int | None:
    await cur.execute("SELECT stock FROM products WHERE id = %s FOR UPDATE", (product_id,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])


# --- the seckill transaction -------------------------------------------------------------

@dataclass(frozen=True)
class SeckillAttempt:
    activity_id: int
    user_id: str


@dataclass(frozen=True)
class Won:
    order_id: int
    product_id: int
    create_time: datetime


@dataclass(frozen=True)
class Refused:
    """A refusal: `error` is what the caller answers (SOLD_OUT, ALREADY_PURCHASED, ...)."""

    error: Exception


Outcome = Won | Refused


def already_purchased(order_id: int) -> Refused:
    return Refused(AlreadyExists(
        "ALREADY_PURCHASED",
        f"you already hold order {order_id} for this activity",
        {"order_id": str(order_id)},
    ))


def _precondition(reason: str, message: str, activity_id: int) -> Refused:
    return Refused(FailedPrecondition(reason, message, {"activity_id": str(activity_id)}))


def sold_out(activity_id: int) -> Refused:
    return _precondition("SOLD_OUT", "sold out", activity_id)


@dataclass(frozen=True)
class BatchResult:
    outcomes: list[Outcome]  # one per attempt, in order
    stock_left: int | None  # committed stock after this batch; None: the product is gone


# The window of an activity as one number, computed by the database: its clock decides.
_OPEN, _NOT_STARTED, _ENDED = 0, 1, 2


async def seckill(cur: aiomysql.Cursor, product_id: int,
                  attempts: Sequence[SeckillAttempt]) -> BatchResult:
    """Decides and records a batch of seckills on one product, first come first served.

    One transaction: lock the stock row, read the activities' windows (the database's clock
    decides, and its reading is the orders' create time), skip users who already hold an
    order, insert the winners' orders, decrement the stock by their count, and commit them in
    the same round trip. A batch without winners wrote nothing; the caller's transaction ends it.

    The statements travel in two pipelined round trips (the server runs them in order, so the
    stock row is still locked first) and return as few columns as they can: the driver parses
    every column definition of every result in Python, and that is most of what a flash sale
    pays per transaction.
    """
    activity_ids = sorted({a.activity_id for a in attempts})
    marks = ", ".join(["%s"] * len(activity_ids))
    users = _users_by_activity(attempts)
    held_sql, held_params = _orders_query(users)
    stock_rows, window_rows, *held_sets = await _pipeline(
        cur,
        "SELECT stock FROM products WHERE id = %s FOR UPDATE; "
        f"SELECT id, IF(start_time > UTC_TIMESTAMP(6), {_NOT_STARTED},"
        f" IF(end_time <= UTC_TIMESTAMP(6), {_ENDED}, {_OPEN})), UTC_TIMESTAMP(6)"
        f" FROM activities WHERE id IN ({marks}) AND product_id = %s LOCK IN SHARE MODE; "
        + held_sql,
        (product_id, *activity_ids, product_id, *held_params),
    )
    stock = int(stock_rows[0][0]) if stock_rows else None
    windows = {row[0]: row[1] for row in window_rows}
    now = window_rows[0][2] if window_rows else None
    held = _by_key(users, held_sets)

    outcomes: list[Outcome | None] = []
    winners: dict[tuple[int, str], SeckillAttempt] = {}  # insertion order = arrival order
    remaining = stock or 0
    for attempt in attempts:
        key = (attempt.activity_id, attempt.user_id)
        window = windows.get(attempt.activity_id)
        if stock is None or window is None:
            outcomes.append(Refused(NotFound("Activity", attempt.activity_id)))
        elif key in held:
            outcomes.append(already_purchased(held[key]))
        elif key in winners:
            outcomes.append(None)  # a twin of a winner in this batch: filled in below
        elif window == _NOT_STARTED:
            outcomes.append(_precondition("NOT_STARTED", "the sale has not started yet",
                                          attempt.activity_id))
        elif window == _ENDED:
            outcomes.append(_precondition("ENDED", "the sale has ended", attempt.activity_id))
        elif remaining <= 0:
            outcomes.append(sold_out(attempt.activity_id))
        else:
            remaining -= 1
            winners[key] = attempt
            outcomes.append(None)
    if not winners:
        # No twins without winners, so every outcome is decided.
        return BatchResult([o for o in outcomes if o is not None], stock)

    assert now is not None
    rows = ", ".join(["(%s, %s, %s, %s)"] * len(winners))
    params: list[object] = []
    for w in winners.values():
        params += [w.activity_id, product_id, w.user_id, now]
    won_users = _users_by_activity(list(winners.values()))
    created_sql, created_params = _orders_query(won_users)
    # COMMIT rides in the same round trip. Should anything before it fail, the server stops
    # there and the caller's transaction rolls back; should the link drop after it was sent,
    # the outcome is unknown and the callers get UNAVAILABLE, and a retry finds the order.
    _, _, *created_sets, _ = await _pipeline(
        cur,
        f"INSERT INTO orders (activity_id, product_id, user_id, create_time) VALUES {rows}; "
        "UPDATE products SET stock = stock - %s, update_time = %s WHERE id = %s; "
        + created_sql + "; COMMIT",
        (*params, len(winners), now, product_id, *created_params),
    )
    committed_in_pipeline(cur)
    created = _by_key(won_users, created_sets)
    result: list[Outcome] = []
    answered: set[tuple[int, str]] = set()
    for attempt, outcome in zip(attempts, outcomes, strict=True):
        if outcome is not None:
            result.append(outcome)
            continue
        key = (attempt.activity_id, attempt.user_id)
        order_id = created[key]
        if key in answered:
            result.append(already_purchased(order_id))
        else:
            answered.add(key)
            result.append(Won(order_id, product_id, now))
    return BatchResult(result, remaining)


async def orders_of_product(cur: aiomysql.Cursor, product_id: int, after_id: int,
                            limit: int) -> list[tuple[int, int, str]]:
    """(order id, activity id, user id) of the product's orders with ids above `after_id`."""
    await cur.execute(
        "SELECT id, activity_id, user_id FROM orders WHERE product_id = %s AND id > %s"
        " ORDER BY id LIMIT %s",
        (product_id, after_id, limit),
    )
    return [(order_id, activity_id, user.decode("utf-8"))
            for order_id, activity_id, user in await cur.fetchall()]


def _users_by_activity(attempts: Sequence[SeckillAttempt]) -> dict[int, list[str]]:
    by_activity: dict[int, list[str]] = {}
    for a in attempts:
        by_activity.setdefault(a.activity_id, []).append(a.user_id)
    return by_activity


def _orders_query(users: dict[int, list[str]]) -> tuple[str, list[object]]:
    """One SELECT (user_id, id) per activity, through the unique key, in `users`' order."""
    statements, params = [], []
    for activity_id, names in users.items():
        marks = ", ".join(["%s"] * len(names))
        statements.append(
            f"SELECT user_id, id FROM orders WHERE activity_id = %s AND user_id IN ({marks})")
        params += [activity_id, *names]
    return "; ".join(statements), params


def _by_key(users: dict[int, list[str]], result_sets: list[tuple]) -> dict[tuple[int, str], int]:
    """Order ids by (activity_id, user_id) from `_orders_query`'s results, one set per activity."""
    return {(activity_id, user_id.decode("utf-8")): order_id
            for activity_id, rows in zip(users, result_sets, strict=True)
            for user_id, order_id in rows}


async def _pipeline(cur: aiomysql.Cursor, sql: str, params: Sequence[object]) -> list[tuple]:
    """Runs `;`-separated statements in one round trip; returns each one's rows in order."""
    await cur.execute(sql, params)
    results = [await cur.fetchall()]
    while await cur.nextset():
        results.append(await cur.fetchall())
    return results
