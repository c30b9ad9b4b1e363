"""SQL for activities, and the seckill transaction.

The activity service touches the products' stock row and the orders table directly only here:
in the seckill transaction, the refusal read (`read_facts`) and `delete`; everything else
about products and orders goes through their services' stubs (docs/DESIGN.md, "What the
activity service touches directly"). An order and its stock decrement must commit together,
in one transaction that holds the stock row, taken through database.stock in the lock order
of docs/DESIGN.md ("Locks").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import aiomysql
import pymysql
from seckill.v1.order_pb2 import PENDING_PAYMENT

from activity_svc.decision import (
    Facts,
    Outcome,
    Refused,
    SeckillAttempt,
    Twin,
    Win,
    Window,
    Won,
    already_purchased,
    decide,
)
from seckill_common.api.errors import FailedPrecondition, InvalidArgument, NotFound
from seckill_common.database import stock
from seckill_common.database.db import (
    NO_REFERENCED_ROW,
    ROW_IS_REFERENCED,
    committed_in_pipeline,
    error_code,
    pipeline,
    select_only,
)

_COLUMNS = ("id, product_id, name, start_time, end_time, create_time, price_cents,"
            " payment_window_ms")
# Update mask paths; each is the column of the same name but payment_window.
UPDATABLE = ("name", "start_time", "end_time", "price_cents", "payment_window")
_COLUMN_OF = {"payment_window": "payment_window_ms"}


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


async def create(cur: aiomysql.Cursor, product_id: int, name: str, start_time: datetime,
                 end_time: datetime, price_cents: int, payment_window_ms: int) -> ActivityRow:
    try:
        await cur.execute(
            "INSERT INTO activities (product_id, name, start_time, end_time, create_time,"
            " price_cents, payment_window_ms) VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6), %s, %s)",
            (product_id, name, start_time, end_time, price_cents, payment_window_ms),
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


async def get_many(cur: aiomysql.Cursor, activity_ids: list[int]) -> dict[int, ActivityRow]:
    """The activities among `activity_ids` that exist, by id."""
    marks = ", ".join(["%s"] * len(activity_ids))
    rows = await select_only(cur, f"SELECT {_COLUMNS} FROM activities WHERE id IN ({marks})",
                             activity_ids)
    return {row[0]: ActivityRow(*row) for row in rows}


async def list_page(cur: aiomysql.Cursor, after_id: int, limit: int) -> list[ActivityRow]:
    await cur.execute(
        f"SELECT {_COLUMNS} FROM activities WHERE id > %s ORDER BY id LIMIT %s",
        (after_id, limit),
    )
    return [ActivityRow(*row) for row in await cur.fetchall()]


async def update(cur: aiomysql.Cursor, activity_id: int,
                 changes: dict[str, object]) -> ActivityRow:
    """Applies `changes` (keys from UPDATABLE; payment_window in milliseconds); the resulting
    window must stay ordered."""
    current = await get(cur, activity_id, lock=True)
    start = cast(datetime, changes.get("start_time", current.start_time))
    end = cast(datetime, changes.get("end_time", current.end_time))
    if not end > start:
        raise InvalidArgument({"activity.end_time": "must be after start_time"})
    if changes:
        # Column names come from UPDATABLE, never from the client; values are parameters.
        assert set(changes) <= set(UPDATABLE), changes
        assignments = ", ".join(f"{_COLUMN_OF.get(path, path)} = %s" for path in changes)
        await cur.execute(
            f"UPDATE activities SET {assignments} WHERE id = %s",
            (*changes.values(), activity_id),
        )
    return await get(cur, activity_id)


async def delete(cur: aiomysql.Cursor, activity_id: int) -> None:
    """Deletes an activity and its finished (cancelled, expired) orders; while an active order
    remains, the foreign key from orders refuses."""
    activity = await get(cur, activity_id)
    await stock.lock(cur, activity.product_id)
    await get(cur, activity_id, lock=True)
    try:
        await cur.execute("DELETE FROM orders WHERE activity_id = %s AND active IS NULL",
                          (activity_id,))
        await cur.execute("DELETE FROM activities WHERE id = %s", (activity_id,))
    except pymysql.err.IntegrityError as exc:
        if error_code(exc) != ROW_IS_REFERENCED:
            raise
        raise has_orders(activity_id) from exc


def has_orders(activity_id: int) -> FailedPrecondition:
    return FailedPrecondition(
        "ACTIVITY_HAS_ORDERS",
        f"activity {activity_id} has pending or paid orders; cancel them first",
        {"activity_id": str(activity_id)},
    )


async def product_of(cur: aiomysql.Cursor, activity_id: int) -> int:
    """The activity's product id (immutable, so callers may cache it)."""
    await cur.execute("SELECT product_id FROM activities WHERE id = %s", (activity_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound("Activity", activity_id)
    return int(row[0])


# --- the seckill transaction -------------------------------------------------------------

@dataclass(frozen=True)
class BatchResult:
    outcomes: list[Outcome]  # one per attempt, in order
    stock_left: int | None  # committed stock after this batch; None: the product is gone


# The activity's window as a `Window` number, by the database's clock: its clock decides.
_WINDOW = (f"IF(start_time > UTC_TIMESTAMP(6), {Window.NOT_STARTED:d},"
           f" IF(end_time <= UTC_TIMESTAMP(6), {Window.ENDED:d}, {Window.OPEN:d}))")


async def seckill(cur: aiomysql.Cursor, product_id: int,
                  attempts: Sequence[SeckillAttempt]) -> BatchResult:
    """Decides and records a batch of seckills on one product, first come first served.

    One transaction: lock the stock row, read the activities' windows (the database's clock
    decides, and its reading is the orders' create time), prices and payment windows, and the
    active orders the users already hold, let `decide` pick the winners, insert their
    PENDING_PAYMENT orders, take their units and commit, in the same round trip. A batch
    without winners wrote nothing; the caller's transaction ends it.

    The statements travel in two pipelined round trips and return as few columns as they can:
    the driver parses every column definition of every result in Python, and that is most of
    what a flash sale pays per transaction.
    """
    activity_ids = sorted({a.activity_id for a in attempts})
    marks = ", ".join(["%s"] * len(activity_ids))
    users = _users_by_activity(attempts)
    held_sql, held_params = _orders_query(users)
    locked, (window_rows, *held_sets) = await stock.lock_then(
        cur, product_id,
        f"SELECT id, {_WINDOW}, UTC_TIMESTAMP(6), price_cents,"
        f" payment_window_ms FROM activities WHERE id IN ({marks}) AND product_id = %s"
        " LOCK IN SHARE MODE; "
        + "; ".join(held_sql),
        (*activity_ids, product_id, *held_params),
    )
    facts = Facts(None if locked is None else locked.units,
                  {row[0]: Window(row[1]) for row in window_rows},
                  _by_key(users, held_sets))
    decisions = decide(attempts, facts)
    winners = [a for a, d in zip(attempts, decisions, strict=True) if isinstance(d, Win)]
    if locked is None or not winners:
        # No twins without winners, so every decision is a refusal.
        return BatchResult([d for d in decisions if isinstance(d, Refused)], facts.stock)

    now = window_rows[0][2]
    terms = {row[0]: (int(row[3]), now + timedelta(milliseconds=int(row[4])))
             for row in window_rows}
    rows = ", ".join(["(%s, %s, %s, %s, %s, 1, %s, %s, %s)"] * len(winners))
    params: list[object] = []
    for w in winners:
        price, deadline = terms[w.activity_id]
        params += [w.activity_id, product_id, w.user_id, now, PENDING_PAYMENT, price, deadline,
                   now]
    take_sql, take_params = stock.take_statement(locked, len(winners), now)
    won_users = _users_by_activity(winners)
    created_sql, created_params = _orders_query(won_users)
    # COMMIT rides in the same round trip. Should anything before it fail, the server stops
    # there and the caller's transaction rolls back; should the link drop after it was sent,
    # the outcome is unknown and the callers get UNAVAILABLE, and a retry finds the order.
    _, _, *created_sets, _ = await pipeline(
        cur,
        "INSERT INTO orders (activity_id, product_id, user_id, create_time, state, active,"
        f" price_cents, pay_deadline, update_time) VALUES {rows}; "
        f"{take_sql}; {'; '.join(created_sql)}; COMMIT",
        (*params, *take_params, *created_params),
    )
    committed_in_pipeline(cur)
    created = _by_key(won_users, created_sets)
    outcomes: list[Outcome] = []
    for attempt, decision in zip(attempts, decisions, strict=True):
        if isinstance(decision, Refused):
            outcomes.append(decision)
        elif isinstance(decision, Twin):
            outcomes.append(already_purchased(created[attempt.key]))
        else:
            outcomes.append(Won(created[attempt.key], product_id, now,
                                *terms[attempt.activity_id]))
    return BatchResult(outcomes, locked.units - len(winners))


async def read_facts(cur: aiomysql.Cursor, product_id: int,
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
    rows = await select_only(
        cur,
        " UNION ALL ".join([
            "SELECT 0, stock, NULL, NULL FROM products WHERE id = %s",
            f"SELECT 1, id, {_WINDOW}, NULL FROM activities WHERE id IN ({marks})"
            " AND product_id = %s",
            *held_sql]),
        (product_id, *activity_ids, product_id, *held_params),
    )
    stock_left: int | None = None
    windows: dict[int, Window] = {}
    held: dict[tuple[int, str], int] = {}
    for kind, first, second, third in rows:
        if kind == 0:
            stock_left = int(first)
        elif kind == 1:
            windows[int(first)] = Window(int(second))
        else:
            held[(int(first), _text(second))] = int(third)
    return Facts(stock_left, windows, held)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _users_by_activity(attempts: Sequence[SeckillAttempt]) -> dict[int, list[str]]:
    by_activity: dict[int, list[str]] = {}
    for a in attempts:
        by_activity.setdefault(a.activity_id, []).append(a.user_id)
    return by_activity


def _orders_query(users: dict[int, list[str]], *, tagged: bool = False
                  ) -> tuple[list[str], list[object]]:
    """One SELECT (user_id, id) of active orders per activity, through the unique key, in
    `users`' order, and their parameters; `tagged` adds a leading 2 and the activity id (for
    read_facts' UNION)."""
    columns = "2, activity_id, user_id, id" if tagged else "user_id, id"
    statements, params = [], []
    for activity_id, names in users.items():
        marks = ", ".join(["%s"] * len(names))
        statements.append(
            f"SELECT {columns} FROM orders WHERE activity_id = %s AND user_id IN ({marks})"
            " AND active = 1")
        params += [activity_id, *names]
    return statements, params


def _by_key(users: dict[int, list[str]], result_sets: list[tuple]) -> dict[tuple[int, str], int]:
    """Order ids by (activity_id, user_id) from `_orders_query`'s results, one set per activity."""
    return {(activity_id, _text(user_id)): order_id
            for activity_id, rows in zip(users, result_sets, strict=True)
            for user_id, order_id in rows}
