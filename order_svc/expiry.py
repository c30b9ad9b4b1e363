"""Expiry: unpaid orders past their deadline become EXPIRED and their units go back on sale.

Every order process runs a sweeper. Each sweep reads the due orders without locks (the
orders_due index), then, per product, expires them in one transaction that takes the stock row
first and re-checks them under it (order_svc.repository.expire): however many processes sweep,
and whatever they were doing when one restarted, each order expires once and gives back one
unit. The stock row is taken with SKIP LOCKED: a sweeper never queues behind another sweeper
or a sale's transaction, so replicas add no stampede; a product it had to skip is taken with
a wait on its next sweep, so a busy sale delays its expiries by one interval at most.

The bound: an order expires within SECKILL_EXPIRY_INTERVAL_MS (default 1 s) of its deadline,
two intervals on a product whose stock row was busy, plus the time to take the row. PayOrder
and CancelOrder judge the deadline themselves, so no payment succeeds after it meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from order_svc import repository
from order_svc.outcomes import observe
from seckill_common.database.db import Database
from seckill_common.database.order_events import Outbox
from seckill_common.runtime.background import Background

log = logging.getLogger(__name__)


class Expirer:
    def __init__(self, database: Database, interval_s: float, batch: int, outbox: Outbox
                 ) -> None:
        self._db = database
        self._outbox = outbox
        self.interval_s = interval_s
        self.batch = batch
        self._skipped: set[int] = set()  # products skipped last sweep: wait for them next
        self._task = Background("order-expiry", self._run)
        self.start, self.stop = self._task.start, self._task.stop

    async def _run(self) -> None:
        while True:
            try:
                while await self.sweep() >= self.batch:
                    pass  # a full batch: more may be due at once
            except Exception as exc:  # the database may be away; the next sweep retries
                log.warning("expiry sweep failed: %s", exc)
            await asyncio.sleep(self.interval_s)  # a timer: nothing to await but time

    async def sweep(self) -> int:
        """One pass over the due orders; returns how many were due."""
        due = await self._db.run(lambda cur: repository.due(cur, self.batch))
        by_product: dict[int, list[int]] = defaultdict(list)
        for order in due:
            by_product[order.product_id].append(order.order_id)
        for product_id, order_ids in by_product.items():
            expiry = await self._expire(product_id, order_ids,
                                        skip_locked=product_id not in self._skipped)
            if expiry.outcome is repository.Expired.BUSY:
                self._skipped.add(product_id)
                continue
            self._skipped.discard(product_id)
            observe(expiry)
        self._skipped &= set(by_product)
        return len(due)

    async def _expire(self, product_id: int, order_ids: list[int], *, skip_locked: bool
                      ) -> repository.Expiry:
        return await self._db.run(lambda cur: repository.expire(
            cur, product_id, order_ids, self._outbox, skip_locked=skip_locked))
