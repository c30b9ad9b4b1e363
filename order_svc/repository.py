"""SQL for orders.

Orders are inserted only by the seckill transaction (activity_svc/repository.py). Cancelling
lives here and, like the seckill, takes the product's stock row (seckill_common.stock) before
it touches an order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import aiomysql

from seckill_common import stock
from seckill_common.errors import NotFound

_COLUMNS = "id, activity_id, product_id, user_id, create_time"


@dataclass(frozen=True)
class OrderRow:
    id: int
    activity_id: int
    product_id: int
    user_id: str
    create_time: datetime

    @classmethod
    def from_db(cls, row: tuple) -> OrderRow:
        order_id, activity_id, product_id, user_id, create_time = row
        return cls(order_id, activity_id, product_id, user_id.decode("utf-8"), create_time)


async def get(cur: aiomysql.Cursor, order_id: int, *, lock: bool = False) -> OrderRow:
    await cur.execute(
        f"SELECT {_COLUMNS} FROM orders WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (order_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("Order", order_id)
    return OrderRow.from_db(row)


async def list_page(cur: aiomysql.Cursor, *, user_id: str | None, activity_id: int | None,
                    after_id: int, limit: int) -> list[OrderRow]:
    conditions = ["id > %s"]
    params: list[int | str] = [after_id]
    if user_id is not None:
        conditions.append("user_id = %s")
        params.append(user_id)
    if activity_id is not None:
        conditions.append("activity_id = %s")
        params.append(activity_id)
    await cur.execute(
        f"SELECT {_COLUMNS} FROM orders WHERE {' AND '.join(conditions)} ORDER BY id LIMIT %s",
        (*params, limit),
    )
    return [OrderRow.from_db(row) for row in await cur.fetchall()]


async def cancel(cur: aiomysql.Cursor, order_id: int, owner: str | None = None) -> None:
    """Deletes the order and returns its unit to stock, in the caller's transaction.

    With `owner`, an order of anyone else is NOT_FOUND, as if it did not exist.
    """
    order = await get(cur, order_id)
    if owner is not None and order.user_id != owner:
        raise NotFound("Order", order_id)
    locked = await stock.lock(cur, order.product_id)
    await get(cur, order_id, lock=True)  # NOT_FOUND if a concurrent cancel won the race
    await cur.execute("DELETE FROM orders WHERE id = %s", (order_id,))
    await stock.give_back(cur, locked)
