"""The products' stock row: the one place that locks it, takes units from it and gives them back.

Every transaction that changes stock or orders (a seckill, a cancel, an expiry, a restock, a
delete) runs in the product and order services and in the activity service alike. They cannot
deadlock because each takes its locks in the one order of docs/DESIGN.md ("Locks"), **the
product's stock row first**. This module makes that order structural rather than a comment:
units can only be taken or given back through a `LockedStock`, and only `lock` / `lock_then`,
whose statement runs before anything else the caller sends, hand one out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from seckill_common.api.errors import NotFound
from seckill_common.database.transaction import Transaction

_LOCK = "SELECT stock FROM products WHERE id = %s FOR UPDATE"


@dataclass(frozen=True)
class LockedStock:
    """Proof that this transaction holds the product's stock row; `units` as locked."""

    product_id: int
    units: int


async def lock(tx: Transaction, product_id: int) -> LockedStock:
    """Locks the stock row; NOT_FOUND for an unknown product. Call it before any other lock."""
    locked, _ = await lock_then(tx, product_id)
    if locked is None:
        raise NotFound("Product", product_id)
    return locked


async def lock_then(tx: Transaction, product_id: int, then_sql: str = "",
                    then_params: Sequence[object] = ()
                    ) -> tuple[LockedStock | None, list[list[tuple[Any, ...]]]]:
    """Locks the stock row, then runs `then_sql` (`;`-separated statements) in the same round
    trip: the server runs them in order, so the stock row is still locked first.

    Returns the lock (None: no such product) and the rows of each following statement.
    """
    sql = _LOCK + ("; " + then_sql if then_sql else "")
    stock_rows, *rest = await tx.pipeline(sql, (product_id, *then_params))
    return _locked(product_id, stock_rows), rest


async def try_lock(tx: Transaction, product_id: int) -> LockedStock | None:
    """Locks the stock row unless another transaction holds it (SKIP LOCKED): then, or for an
    unknown product, None and no lock. For background work (expiry) that can come back later
    rather than queue behind a sale's transactions. Call it before any other lock; it never
    waits, so holding an order row it cannot deadlock (a payment found late, order_svc)."""
    await tx.execute(_LOCK + " SKIP LOCKED", (product_id,))
    return _locked(product_id, await tx.fetchall())


def _locked(product_id: int, stock_rows: Sequence[tuple[Any, ...]]) -> LockedStock | None:
    """The lock from `_LOCK`'s rows (none: no such product)."""
    for (units,) in stock_rows:
        return LockedStock(product_id=product_id, units=int(units))
    return None


def take_statement(locked: LockedStock, units: int, now: datetime) -> tuple[str, list[object]]:
    """The UPDATE that takes `units` (to send in the caller's pipeline); the CHECK constraint
    refuses stock below 0, whatever the caller computed."""
    assert 0 < units <= locked.units, (units, locked)
    return ("UPDATE products SET stock = stock - %s, update_time = %s WHERE id = %s",
            [units, now, locked.product_id])


def give_back_statement(locked: LockedStock, units: int) -> tuple[str, list[object]]:
    """The UPDATE that returns `units` to stock (a cancelled or expired order's), to send in
    the caller's pipeline."""
    assert units > 0, (units, locked)
    return ("UPDATE products SET stock = stock + %s, update_time = UTC_TIMESTAMP(6)"
            " WHERE id = %s", [units, locked.product_id])


async def set_units(tx: Transaction, locked: LockedStock, units: int) -> None:
    """Sets the stock to `units` (an admin's restock or correction)."""
    await tx.execute(
        "UPDATE products SET stock = %s, update_time = UTC_TIMESTAMP(6) WHERE id = %s",
        (units, locked.product_id),
    )
