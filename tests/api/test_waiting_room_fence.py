"""The waiting room's mover fenced by its lease's epoch (activity_svc/queue_mover.py,
queue_repository.move) against a real MariaDB: a mover caught mid-move while its lease is taken
over commits nothing when it goes on, a late move of the old holder is refused, and the line
never admits more than SECKILL_QUEUE_MAX_ACTIVE."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from activity_svc.queue_mover import LEASE_NAME, QueueMover
from seckill_common.database.db import Database
from seckill_common.database.lease import Lease, LeaseLost, LeaseTimes, acquire
from tests.helpers.database import connect, migrated, started_room
from tests.helpers.polling import eventually
from tests.helpers.stack import query, settings_for

MAX_ACTIVE = 5
BUYERS = 30
# Long enough that the old holder's own clock still counts the lease as held: only the
# database's fence can stop its move.
TIMES = LeaseTimes(ttl_s=30.0)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    # The first mover waits on a row while the test takes its lease over: on a busy machine
    # that can outlast the shipped 5 s lock wait and 10 s statement time.
    async with migrated(db_url, SECKILL_DB_LOCK_WAIT_TIMEOUT="60",
                        SECKILL_DB_STATEMENT_TIMEOUT="60") as database:
        yield database


async def open_line(db_url: str) -> int:
    """A started sale with a waiting room, stock 100, and BUYERS waiting: its id."""
    async with connect(db_url) as conn, conn.cursor() as cur:
        activity_id = await started_room(cur)
        await cur.executemany(
            "INSERT INTO queue_entries (activity_id, user_id, quantity, join_time, pre_queued,"
            " shuffle_key) VALUES (%s, %s, 1, UTC_TIMESTAMP(6), 0, %s)",
            [(activity_id, f"u{i}", secrets.randbits(63)) for i in range(BUYERS)])
        await conn.commit()
    return activity_id


async def admitted(db_url: str, activity_id: int) -> tuple[int, int]:
    """(the line's admitted_through, the entries holding a pass)."""
    ((through,),) = await query(db_url, "SELECT COALESCE(MAX(admitted_through), 0) FROM"
                                " queue_lines WHERE activity_id = %s", (activity_id,))
    ((holding,),) = await query(db_url, "SELECT COUNT(*) FROM queue_entries WHERE"
                                " activity_id = %s AND state = 2", (activity_id,))
    return int(through), int(holding)


async def blocked_on_a_lock(db_url: str, move: asyncio.Task[object]) -> None:
    """Until a transaction waits for a row lock (the first mover, mid-move); a move that ended
    instead fails the test with its own outcome."""
    async def waiting() -> bool:
        if move.done():
            raise AssertionError(f"the first mover's move ended before it waited: {move!r}")
        # Either view may see it first: InnoDB's lock wait, or the statement still running.
        rows = await query(db_url, "SELECT (SELECT COUNT(*) FROM information_schema.INNODB_TRX"
                                   " WHERE trx_state = 'LOCK WAIT') + (SELECT COUNT(*) FROM"
                                   " information_schema.PROCESSLIST WHERE COMMAND = 'Query'"
                                   " AND INFO LIKE '%%queue_lines%%' AND TIME_MS > 100"
                                   " AND DB = DATABASE() AND ID <> CONNECTION_ID())")
        return bool(rows[0][0])
    await eventually(waiting, "the first mover waits on the line's row", timeout_s=30.0)


async def take(db: Database, mover: QueueMover) -> Lease:
    taken = await acquire(db, LEASE_NAME, mover.holder, TIMES)
    assert isinstance(taken, Lease), f"{mover.holder} did not get the lease"
    return taken


async def test_a_move_of_a_mover_whose_lease_was_taken_over_commits_nothing(
        db: Database, db_url: str) -> None:
    activity_id = await open_line(db_url)
    settings = settings_for(db_url, SECKILL_QUEUE_MAX_ACTIVE=str(MAX_ACTIVE)).queue
    first, second = QueueMover(db, settings), QueueMover(db, settings)
    old = await take(db, first)

    # The first mover is caught mid-move: its transaction waits on the line's row, which
    # another session holds (as a freeze would leave it, between two statements).
    async with connect(db_url) as holder, holder.cursor() as cur:
        await cur.execute("INSERT INTO queue_lines (activity_id) VALUES (%s)", (activity_id,))
        late = asyncio.create_task(first.move_all(old))
        await blocked_on_a_lock(db_url, late)
        # Meanwhile its lease lapses and the second mover takes it, at the next epoch.
        await query(db_url, "UPDATE leases SET expires = UTC_TIMESTAMP(6) WHERE name = %s",
                    (LEASE_NAME,))
        new = await take(db, second)
        assert new.epoch == old.epoch + 1
        await holder.commit()
    # Woken, its move reaches the fence and is rolled back: no admission from it.
    with pytest.raises(LeaseLost):
        await late
    assert first.admitted == 0
    assert await admitted(db_url, activity_id) == (0, 0)

    # The new holder moves the line: up to the bound, no further.
    await second.move_all(new)
    assert second.admitted == MAX_ACTIVE
    assert await admitted(db_url, activity_id) == (MAX_ACTIVE, MAX_ACTIVE)

    # A later move of the old holder (its own clock still says held) is refused too.
    with pytest.raises(LeaseLost):
        await first.move_all(old)
    await second.move_all(new)
    assert first.admitted == 0
    assert await admitted(db_url, activity_id) == (MAX_ACTIVE, MAX_ACTIVE)
