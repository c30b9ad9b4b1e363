"""SQL for products. Every function takes a transaction the caller owns."""

from __future__ import annotations

import pymysql

from seckill_common.api.errors import FailedPrecondition, NotFound, Reason
from seckill_common.api.messages import PRODUCT_FIELDS, ProductRow
from seckill_common.database import stock
from seckill_common.database.errors import ROW_IS_REFERENCED, error_code
from seckill_common.database.transaction import Transaction

UPDATABLE = ("name", "description", "price_cents", "stock")
# The columns are ProductRow's fields, in its order: `ProductRow.from_db` pairs them up again.
_COLUMNS = ", ".join(PRODUCT_FIELDS)


async def create(cur: Transaction, *, name: str, description: str, price_cents: int,
                 stock: int) -> ProductRow:
    await cur.execute(
        "INSERT INTO products (name, description, price_cents, stock, create_time, update_time)"
        " VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
        (name, description, price_cents, stock),
    )
    return await get(cur, cur.lastrowid)


async def get(cur: Transaction, product_id: int) -> ProductRow:
    await cur.execute(f"SELECT {_COLUMNS} FROM products WHERE id = %s", (product_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound("Product", product_id)
    return ProductRow.from_db(row)


async def get_many(cur: Transaction, product_ids: list[int]) -> dict[int, ProductRow]:
    """The products among `product_ids` that exist, by id."""
    marks = ", ".join(["%s"] * len(product_ids))
    rows = await cur.select_only(f"SELECT {_COLUMNS} FROM products WHERE id IN ({marks})",
                                 product_ids)
    return {product.id: product for product in map(ProductRow.from_db, rows)}


async def list_page(cur: Transaction, after_id: int, limit: int) -> list[ProductRow]:
    await cur.execute(
        f"SELECT {_COLUMNS} FROM products WHERE id > %s ORDER BY id LIMIT %s",
        (after_id, limit),
    )
    return [ProductRow.from_db(row) for row in await cur.fetchall()]


async def update(cur: Transaction, product_id: int,
                 changes: dict[str, object]) -> ProductRow:
    """Applies `changes` (keys from UPDATABLE) under the stock row's lock."""
    locked = await stock.lock(cur, product_id)
    others = {column: value for column, value in changes.items() if column != "stock"}
    if others:
        # Column names come from UPDATABLE, never from the client; values are parameters.
        assert set(others) <= set(UPDATABLE), others
        assignments = ", ".join(f"{column} = %s" for column in others)
        await cur.execute(
            f"UPDATE products SET {assignments}, update_time = UTC_TIMESTAMP(6) WHERE id = %s",
            (*others.values(), product_id),
        )
    units = changes.get("stock")
    if units is not None:
        assert isinstance(units, int), units
        await stock.set_units(cur, locked, units)
    return await get(cur, product_id)


async def delete(cur: Transaction, product_id: int) -> None:
    await stock.lock(cur, product_id)
    try:
        await cur.execute("DELETE FROM products WHERE id = %s", (product_id,))
    except pymysql.err.IntegrityError as exc:
        if error_code(exc) != ROW_IS_REFERENCED:
            raise
        raise FailedPrecondition(
            Reason.PRODUCT_IN_USE,
            f"product {product_id} is still sold by an activity or referenced by orders",
            {"product_id": str(product_id)},
        ) from exc
