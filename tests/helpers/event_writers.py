"""Writers of order events for the feed's ordering test, run as a process of their own:
`python -m tests.helpers.event_writers DB_URL ORDER_ID WRITERS SECONDS`.

Each writer loops: a transaction that writes an event through the outbox (taking its revision),
holds it open for a random while (so transactions commit out of revision order), then commits,
or one time in five rolls back (a revision that is never filled). Prints how many committed.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from seckill_common.database.db import Database, create_pool
from seckill_common.database.order_events import EventType, Outbox
from seckill_common.database.transaction import Transaction
from tests.helpers.stack import settings_for


class RolledBack(Exception):
    pass


async def writer(database: Database, order_id: int, until: float) -> int:
    outbox = Outbox()
    committed = 0

    async def work(tx: Transaction) -> None:
        await outbox.record(tx, EventType.PAID, [order_id])
        await asyncio.sleep(random.uniform(0, 0.02))  # the window the feed must not skip over
        if random.random() < 0.2:
            raise RolledBack

    while time.monotonic() < until:
        try:
            await database.run(work)
            committed += 1
        except RolledBack:
            pass
    return committed


async def main(db_url: str, order_id: int, writers: int, seconds: float) -> None:
    database = Database(await create_pool(settings_for(db_url)))
    until = time.monotonic() + seconds
    counts = await asyncio.gather(*(writer(database, order_id, until) for _ in range(writers)))
    await database.close()
    print(sum(counts), flush=True)


if __name__ == "__main__":
    url, order, count, duration = sys.argv[1:]
    asyncio.run(main(url, int(order), int(count), float(duration)))
