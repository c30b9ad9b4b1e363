"""Named leases: at most one holder at a time for work that must not run twice at once (the
order events' relay), that survive a holder that freezes or is cut off, without waiting for it.

A lease is a row of `leases` (migration 0005): its holder, an epoch, and an expiry on the
database's clock (UTC_TIMESTAMP(6), so the processes' clocks never matter). It is free once
expired; `acquire` takes a free one and adds one to its epoch; its holder renews it every
`renew_every_s` (a third of its time to live) while it works. A holder that stops (SIGSTOP, a
VM pause, a silent link) stops renewing, and another process acquires it after at most the
time to live: nothing waits on the frozen one, whose sessions hold no lock on the row (every
statement here commits in its own round trip).

Two checks keep a holder that lost the lease from acting on it:
- locally, `Lease.valid()`: the lease counts as held until the last renewal's *sending* time
  plus the time to live minus a margin (`margin_s`, a sixth of it), by the event loop's
  monotonic clock, which keeps running while the process is stopped; a renewal that fails or
  outlives `call_timeout_s` marks it lost at once (`lost`);
- in the database, `Fence`: statements for the holder's own transaction that lock the lease
  row in share mode and match its holder and epoch, so a write made under the fence happens
  before any later acquisition (which must update that row), or not at all.

Every call is bounded (asyncio.timeout): the database's own bound on a connection that went
silent is hours.

The migrations' lock (GET_LOCK, database/migrations.py) is another fact, with its own owner: a
session lock held for one connection's DDL, needed before any table (this one included)
exists, and gone with its session. A lease is held across many short transactions on any
node, outlives no holder by more than its time to live, and fences its holder's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from seckill_common.database.db import Database
from seckill_common.database.transaction import Transaction

log = logging.getLogger(__name__)


def holder_id() -> str:
    """This process's name in a lease row: host, pid and a random part (a restarted process
    with a reused pid is another holder)."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseLost(RuntimeError):
    """The lease expired, was taken by another holder, or could not be renewed in time."""


@dataclass(frozen=True)
class LeaseTimes:
    """How long a lease lives unrenewed; the rest follows from it."""

    ttl_s: float

    @property
    def renew_every_s(self) -> float:
        """Two renewals may fail before the lease lapses."""
        return self.ttl_s / 3

    @property
    def margin_s(self) -> float:
        """Held locally (and by the database's clock before a holder acts) only while at least
        this much of the lease is left: room for the act itself and for clock rates."""
        return self.ttl_s / 6

    @property
    def call_timeout_s(self) -> float:
        """Any one call; a renewal that takes longer counts as failed."""
        return self.ttl_s / 3


@dataclass(frozen=True)
class Fence:
    """Statements that tie a holder's write to its lease, in the writer's own transaction:
    `lock` (params `params`) returns the lease's remaining microseconds by the database's
    clock, one row while the holder and epoch still match, none once another took it, and
    keeps the row share-locked until COMMIT; `held` (params `params` again) is an SQL condition,
    true while they match, for the write's WHERE."""

    lock: str
    held: str
    params: tuple[str, str, int]


_US = 1_000_000


class Lease:
    """A lease this process holds at one epoch; made by `acquire`."""

    def __init__(self, db: Database, name: str, holder: str, epoch: int, times: LeaseTimes,
                 sent_at: float) -> None:
        self.name = name
        self.holder = holder
        self.epoch = epoch
        self.times = times
        self.lost = asyncio.Event()
        self._db = db
        self._loop = asyncio.get_running_loop()
        self._valid_until = sent_at + times.ttl_s - times.margin_s
        params = (name, holder, epoch)
        where = "name = %s AND holder = %s AND epoch = %s"
        self.fence = Fence(
            lock=("SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires) FROM leases"
                  f" WHERE {where} LOCK IN SHARE MODE"),
            held=f"EXISTS (SELECT 1 FROM leases WHERE {where})", params=params)

    def valid(self) -> bool:
        """Held by the local clock: renewed recently enough, never marked lost. A process that
        was stopped finds this false when it wakes, before it acts."""
        return not self.lost.is_set() and self._loop.time() < self._valid_until

    def check(self) -> None:
        """Raises LeaseLost unless `valid()`."""
        if not self.valid():
            self.lost.set()
            raise LeaseLost(f"lease {self.name!r} (epoch {self.epoch}) lost")

    async def renew(self) -> None:
        """Extends the lease by its time to live from now; LeaseLost (and `lost` set) when it
        has expired or been taken, or the database did not answer within `call_timeout_s`."""
        sent_at = self._loop.time()
        try:
            async with asyncio.timeout(self.times.call_timeout_s):
                (_, [(renewed,)]) = await self._db.run(lambda tx: tx.pipeline(
                    "UPDATE leases SET expires = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND"
                    " WHERE name = %s AND holder = %s AND epoch = %s"
                    " AND expires > UTC_TIMESTAMP(6); SELECT ROW_COUNT()",
                    (round(self.times.ttl_s * _US), *self.fence.params), commit=True))
        except Exception as exc:
            self.lost.set()
            raise LeaseLost(f"lease {self.name!r} not renewed: {exc or type(exc).__name__}"
                            ) from exc
        if not renewed:
            self.lost.set()
            raise LeaseLost(f"lease {self.name!r} (epoch {self.epoch}) expired or taken")
        self._valid_until = sent_at + self.times.ttl_s - self.times.margin_s

    async def keep(self) -> None:
        """Renews every `renew_every_s` until the lease is lost (then returns) or the task is
        cancelled; run it beside the work the lease guards."""
        while True:
            await asyncio.sleep(self.times.renew_every_s)  # a timer: nothing to await
            try:
                await self.renew()
            except LeaseLost as exc:
                log.warning("%s", exc)
                return

    async def remaining_s(self) -> float | None:
        """The lease's time left by the database's clock (negative once expired); None when
        another holder has taken it."""
        async with asyncio.timeout(self.times.call_timeout_s):
            rows = await self._db.run(lambda tx: tx.select_only(
                "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires) FROM leases"
                " WHERE name = %s AND holder = %s AND epoch = %s", self.fence.params))
        return int(rows[0][0]) / _US if rows else None

    async def release(self) -> None:
        """Ends the lease now, so a standby need not wait for it to expire; best effort (an
        unreleased lease expires by itself)."""
        self.lost.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.times.call_timeout_s):
                await self._db.run(lambda tx: tx.pipeline(
                    "UPDATE leases SET expires = UTC_TIMESTAMP(6)"
                    " WHERE name = %s AND holder = %s AND epoch = %s", self.fence.params,
                    commit=True))


async def acquire(db: Database, name: str, holder: str, times: LeaseTimes
                  ) -> Lease | float:
    """Takes the lease `name` for `holder` if it is free (never taken, or expired): the Lease,
    at the next epoch. Otherwise the seconds until the current holder's lease expires, unless
    renewed: when to try again. Raises on a database error or after `call_timeout_s`."""
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    ttl_us = round(times.ttl_s * _US)

    async def take(tx: Transaction) -> tuple[int, int, int]:
        # One statement, one row lock: the row is made by its first acquirer; an expired
        # lease changes holder, epoch and expiry (assigned in this order, so each test still
        # reads the old expiry); a live one is left as it is (ROW_COUNT() 0).
        expired = "expires <= UTC_TIMESTAMP(6)"
        _, [(changed, epoch, left_us)] = await tx.pipeline(
            "INSERT INTO leases (name, holder, epoch, expires)"
            " VALUES (%s, %s, 1, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND)"
            f" ON DUPLICATE KEY UPDATE epoch = IF({expired}, epoch + 1, epoch),"
            f" holder = IF({expired}, %s, holder),"
            f" expires = IF({expired}, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, expires); "
            "SELECT ROW_COUNT(), epoch, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires)"
            " FROM leases WHERE name = %s",
            (name, holder, ttl_us, holder, ttl_us, name), commit=True)
        return int(changed), int(epoch), int(left_us)

    async with asyncio.timeout(times.call_timeout_s):
        changed, epoch, left_us = await db.run(take)
    if changed:
        return Lease(db, name, holder, epoch, times, sent_at)
    return max(0.0, left_us / _US)
