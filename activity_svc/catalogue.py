"""What this process knows of its activities without asking: each one's product, and its
per-user limit as last read.

One `Catalogue` per process, built by server.py and handed to both of its readers: the seckill
engine (which product's queue a call joins; whether a quantity needs the limit read first) and
the servicer's GetActivity reads (which fetch a known product alongside the activity). Both
also teach it what they read, so whichever reads an activity first saves the other a read:
GetActivity before a sale warms it, and a Seckill on an activity not known yet reads it itself
(`product_of`). Nothing depends on who came first: the product never changes, and the limit is
only a hint that lets through what it allows (the seckill transaction checks the limit as it
stands; a quantity above the hint is judged on a fresh read, `check_limit`).
"""

from __future__ import annotations

from activity_svc import repository
from activity_svc.decision import over_limit
from seckill_common.database.db import Database


class Catalogue:
    def __init__(self, database: Database) -> None:
        self._db = database
        # activity id -> product id; safe to keep for good: an activity's product never changes.
        self._product_of_activity: dict[int, int] = {}
        # activity id -> per-user limit as last read: a hint (an admin may change it).
        self._limit_of_activity: dict[int, int] = {}

    def known_product_of(self, activity_id: int) -> int | None:
        """The activity's product if already known (no I/O), else None."""
        return self._product_of_activity.get(activity_id)

    async def product_of(self, activity_id: int) -> int:
        """The activity's product: known, or read (NOT_FOUND for an unknown activity)."""
        product_id = self._product_of_activity.get(activity_id)
        if product_id is None:
            product_id = (await self._read(activity_id)).product_id
        return product_id

    def learn(self, activity_id: int, product_id: int, per_user_limit: int) -> None:
        """Remembers an activity's product and its per-user limit, read elsewhere (an
        activity read)."""
        self._product_of_activity[activity_id] = product_id
        self._limit_of_activity[activity_id] = per_user_limit

    async def check_limit(self, activity_id: int, quantity: int) -> None:
        """Refuses a quantity above the activity's per-user limit, before any lock.

        The known limit lets through what it allows (should the limit have been lowered since,
        the transaction refuses); a quantity above it is judged on a fresh read, since the
        limit may have been raised in another process.
        """
        if quantity <= self._limit_of_activity.get(activity_id, 0):
            return
        limit = (await self._read(activity_id)).per_user_limit
        if quantity > limit:
            raise over_limit(activity_id, quantity, limit).error

    async def _read(self, activity_id: int) -> repository.SaleOf:
        sale = await self._db.run(lambda tx: repository.sale_of(tx, activity_id))
        self.learn(activity_id, sale.product_id, sale.per_user_limit)
        return sale
