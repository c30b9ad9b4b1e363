"""Named leases (seckill_common/database/lease.py) against a real MariaDB: one holder at a time,
expiry by the database's clock, renewal, fencing of a holder that lost the lease, bounded
calls. The relay's takeover through real processes is in test_events_relay.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from seckill_common.database.db import Database
from seckill_common.database.lease import Lease, LeaseLost, LeaseTimes, acquire
from seckill_common.database.transaction import Transaction
from tests.helpers.database import migrated
from tests.helpers.stack import query

NAME = "tests.lease"
TIMES = LeaseTimes(ttl_s=0.6)  # renew every 0.2 s, margin 0.1 s: the tests run in seconds


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    async with migrated(db_url) as database:
        yield database


async def take(db: Database, holder: str, times: LeaseTimes = TIMES) -> Lease:
    taken = await acquire(db, NAME, holder, times)
    assert isinstance(taken, Lease), f"{holder} did not get the lease ({taken} s left)"
    return taken


async def fenced_write(db: Database, lease: Lease, value: int) -> bool:
    """A write under the lease's fence, as the relay moves its checkpoint."""
    async def work(tx: Transaction) -> bool:
        held, _ = await tx.pipeline(
            f"{lease.fence.lock}; UPDATE leases SET holder = holder WHERE name = 'none'"
            f" AND {lease.fence.held}", (*lease.fence.params, *lease.fence.params))
        if held:
            await tx.execute("UPDATE order_event_marks SET revision = %s"
                             " WHERE name = 'relayed'", (value,))
        return bool(held)
    return await db.run(work)


async def test_one_holder_until_it_expires_by_the_database_clock(db: Database, db_url: str
                                                                 ) -> None:
    first = await take(db, "a")
    assert first.epoch == 1 and first.valid()
    left = await acquire(db, NAME, "b", TIMES)
    assert isinstance(left, float) and 0 < left <= TIMES.ttl_s
    remaining = await first.remaining_s()
    assert remaining is not None and 0 < remaining <= TIMES.ttl_s
    # Unrenewed, it lapses: locally first (the margin), then by the database's clock.
    await asyncio.sleep(left + 0.01)  # what acquire tells a standby to wait: a timer by design
    assert not first.valid()
    second = await take(db, "b")
    assert second.epoch == 2
    assert await first.remaining_s() is None  # taken: no longer a's at its epoch
    [(holder, epoch)] = await query(db_url, "SELECT holder, epoch FROM leases"
                                    " WHERE name = %s", (NAME,))
    assert (holder, epoch) == ("b", 2)


async def test_renewal_keeps_it_and_fails_once_taken(db: Database) -> None:
    lease = await take(db, "a")
    keeper = asyncio.create_task(lease.keep())
    await asyncio.sleep(TIMES.ttl_s * 2)  # three renewal periods: a timer by design
    assert lease.valid() and not keeper.done()
    assert isinstance(await acquire(db, NAME, "b", TIMES), float)
    keeper.cancel()
    # Force the expiry as a long freeze would, then another takes it: renewing fails.
    await db.run(lambda tx: tx.pipeline(
        "UPDATE leases SET expires = UTC_TIMESTAMP(6) WHERE name = %s", (NAME,), commit=True))
    other = await take(db, "b")
    with pytest.raises(LeaseLost):
        await lease.renew()
    assert lease.lost.is_set() and not lease.valid()
    with pytest.raises(LeaseLost):
        lease.check()
    assert other.valid()


async def test_a_holder_that_lost_the_lease_cannot_write_under_its_fence(
        db: Database, db_url: str) -> None:
    old = await take(db, "a")
    assert await fenced_write(db, old, 5)
    await db.run(lambda tx: tx.pipeline(
        "UPDATE leases SET expires = UTC_TIMESTAMP(6) WHERE name = %s", (NAME,), commit=True))
    new = await take(db, "b")
    assert not await fenced_write(db, old, 999)  # woke after the takeover: refused
    assert await fenced_write(db, new, 7)
    assert await query(db_url, "SELECT revision FROM order_event_marks"
                       " WHERE name = 'relayed'") == [(7,)]


async def test_release_frees_it_at_once_and_the_same_holder_gets_a_new_epoch(
        db: Database) -> None:
    lease = await take(db, "a")
    await lease.release()
    assert not lease.valid()
    again = await take(db, "a")
    assert again.epoch == lease.epoch + 1
    assert not await fenced_write(db, lease, 3)  # the old epoch is fenced off, same holder


async def test_a_renewal_that_outlives_its_bound_counts_as_lost(db: Database) -> None:
    lease = await take(db, "a")
    blocker = await db.pool.acquire()  # another session holds the row: the renewal waits
    try:
        async with blocker.cursor() as cur:
            await cur.execute("SELECT * FROM leases WHERE name = %s FOR UPDATE", (NAME,))
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(LeaseLost):
                await lease.renew()
            assert loop.time() - started < TIMES.call_timeout_s + 0.5
            assert lease.lost.is_set() and not lease.valid()
        await blocker.rollback()
    finally:
        db.pool.release(blocker)
