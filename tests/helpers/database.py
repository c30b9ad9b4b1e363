"""A migrated database behind our own pool, for tests of the repositories' SQL without servers,
and a started sale with a waiting room written straight into it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiomysql

from seckill_common.database import migrations
from seckill_common.database.db import Database, create_pool
from tests.helpers.stack import connect as connect  # re-exported for the SQL tests
from tests.helpers.stack import settings_for


@asynccontextmanager
async def migrated(db_url: str, **overrides: str) -> AsyncIterator[Database]:
    """The database at `db_url` migrated, with a pool set up as `overrides` say."""
    settings = settings_for(db_url, **overrides)
    await migrations.migrate(settings)
    database = Database(await create_pool(settings), settings)
    try:
        yield database
    finally:
        await database.close()


async def started_room(cur: aiomysql.Cursor) -> int:
    """A product (stock 100) and its sale with a waiting room, started a minute ago and open
    for an hour: the activity's id."""
    await cur.execute(
        "INSERT INTO products (name, description, price_cents, stock, create_time,"
        " update_time) VALUES ('p', '', 100, 100, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))")
    product_id = cur.lastrowid
    await cur.execute(
        "INSERT INTO activities (product_id, name, start_time, end_time, create_time,"
        " price_cents, payment_window_ms, waiting_room) VALUES (%s, 'a',"
        " UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR,"
        " UTC_TIMESTAMP(6), 100, 900000, 1)", (product_id,))
    return int(cur.lastrowid)
