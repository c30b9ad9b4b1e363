"""The seckill path between the servicer and the repository's seckill transaction."""

from __future__ import annotations

from activity_svc import repository
from activity_svc.repository import SeckillAttempt, Won
from seckill_common.db import Database


class SeckillEngine:
    """Commits each Seckill in its own transaction on the product's stock row."""

    def __init__(self, database: Database) -> None:
        self._db = database
        # activity id -> product id; safe to cache because an activity's product never changes.
        self._product_of: dict[int, int] = {}

    async def product_of(self, activity_id: int) -> int:
        product_id = self._product_of.get(activity_id)
        if product_id is None:
            product_id = await self._db.run(lambda cur: repository.product_of(cur, activity_id))
            self._product_of[activity_id] = product_id
        return product_id

    async def buy(self, activity_id: int, user_id: str) -> Won:
        """The committed order, or raises the refusal (a `ServiceError`)."""
        product_id = await self.product_of(activity_id)
        attempt = SeckillAttempt(activity_id, user_id)
        (outcome,) = await self._db.run(
            lambda cur: repository.seckill(cur, product_id, [attempt])
        )
        if isinstance(outcome, repository.Refused):
            raise outcome.error
        return outcome
