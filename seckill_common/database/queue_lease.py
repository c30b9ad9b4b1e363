"""A minimal database lease: one holder at a time for a named job (the waiting rooms' mover).

Kept apart on purpose: the relay's generic lease (seckill_common/database/lease.py) is being
written alongside; this one is the smallest that the mover needs, over a table of its own
(`queue_leases`, migration 0006), to be folded into that one when both land.

A holder renews its lease well before it lapses; a lease whose expire time passed, by the
database's clock, may be taken by anyone. The holder acts only while `held()` says so: until
its last renewal's expire time less a margin, by its own monotonic clock, so a holder that
stalled (a frozen process, a lost link) stops acting before another may take over.
"""

from __future__ import annotations

import asyncio
import uuid

from seckill_common.database.db import Database
from seckill_common.database.transaction import Transaction


async def _acquire(tx: Transaction, name: str, holder: str, ttl_ms: int) -> bool:
    # The row is created once; then taken when free (lapsed) or renewed when ours. The
    # IF() in one UPDATE reads the row's values before this statement changes them.
    await tx.execute(
        "INSERT INTO queue_leases (name, holder, expire_time)"
        " VALUES (%s, '', UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE name = name", (name,))
    await tx.execute(
        "UPDATE queue_leases SET holder = %s,"
        " expire_time = UTC_TIMESTAMP(6) + INTERVAL %s * 1000 MICROSECOND"
        " WHERE name = %s AND (holder = %s OR expire_time <= UTC_TIMESTAMP(6))",
        (holder, ttl_ms, name, holder))
    await tx.execute("SELECT holder = %s FROM queue_leases WHERE name = %s", (holder, name))
    row = await tx.fetchone()
    return row is not None and bool(row[0])


async def _release(tx: Transaction, name: str, holder: str) -> None:
    await tx.execute(
        "UPDATE queue_leases SET expire_time = UTC_TIMESTAMP(6)"
        " WHERE name = %s AND holder = %s", (name, holder))


class Lease:
    """The lease `name` as this process sees it."""

    def __init__(self, database: Database, name: str, ttl_s: float) -> None:
        self._db = database
        self.name = name
        self.ttl_s = ttl_s
        self.holder = uuid.uuid4().hex
        self._renewed_at: float | None = None  # by the loop's monotonic clock
        self._tried_at: float | None = None

    def held(self) -> bool:
        """Whether to act as the holder: up to half the lease after the last renewal was
        asked for (the database's lease began after that)."""
        return (self._renewed_at is not None
                and asyncio.get_running_loop().time() < self._renewed_at + self.ttl_s / 2)

    def due(self) -> bool:
        """Time to renew, or to try to take it again: a quarter of the lease after the last
        try (a holder renews twice before it stops acting; a waiter asks as often)."""
        return (self._tried_at is None
                or asyncio.get_running_loop().time() >= self._tried_at + self.ttl_s / 4)

    async def renew(self) -> bool:
        """Takes or renews the lease; says whether this process holds it. Bounded: a renewal
        that does not finish within half the lease counts as lost."""
        loop = asyncio.get_running_loop()
        asked = self._tried_at = loop.time()
        try:
            async with asyncio.timeout(self.ttl_s / 2):
                got = await self._db.run(
                    lambda tx: _acquire(tx, self.name, self.holder, int(self.ttl_s * 1000)))
        except Exception:
            got = False
        self._renewed_at = asked if got else None
        return got

    async def release(self) -> None:
        if self._renewed_at is not None:
            self._renewed_at = None
            async with asyncio.timeout(self.ttl_s / 2):
                await self._db.run(lambda tx: _release(tx, self.name, self.holder))
