"""The pre-queue's draw in chunks (queue_repository.move, TICKET_CHUNK) against a real MariaDB:
a pre-queue larger than one chunk is ticketed over several moves in exactly (shuffle_key, seq)
order, with no gap and no repeat, and later arrivals get their tickets after every pre-queued
buyer, in arrival order."""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterator

import pytest

from activity_svc import queue_repository
from activity_svc.queue_repository import TICKET_CHUNK
from seckill_common.database.db import Database
from seckill_common.database.lease import Lease, LeaseTimes, acquire
from tests.helpers.database import connect, migrated, started_room
from tests.helpers.stack import query

PRE_QUEUED = 2 * TICKET_CHUNK + 500  # three moves' worth
ARRIVALS = 20
MAX_ACTIVE = 5


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    async with migrated(db_url) as database:
        yield database


async def started_line(db_url: str) -> int:
    """A sale started a minute ago with PRE_QUEUED buyers who joined before it (a tenth of
    them sharing one key, so the tie-break by seq is exercised too) and ARRIVALS after."""
    async with connect(db_url) as conn, conn.cursor() as cur:
        activity_id = await started_room(cur)
        shared = secrets.randbits(63)
        await cur.executemany(
            "INSERT INTO queue_entries (activity_id, user_id, quantity, join_time, pre_queued,"
            " shuffle_key) VALUES (%s, %s, 1, UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE, 1, %s)",
            [(activity_id, f"p{i}", shared if i % 10 == 0 else secrets.randbits(63))
             for i in range(PRE_QUEUED)])
        await cur.executemany(
            "INSERT INTO queue_entries (activity_id, user_id, quantity, join_time, pre_queued,"
            " shuffle_key) VALUES (%s, %s, 1, UTC_TIMESTAMP(6), 0, %s)",
            [(activity_id, f"a{i}", secrets.randbits(63)) for i in range(ARRIVALS)])
        await conn.commit()
    return activity_id


async def tickets(db_url: str, activity_id: int, pre_queued: int,
                  order: str) -> list[int | None]:
    rows = await query(db_url, "SELECT ticket FROM queue_entries WHERE activity_id = %s AND"
                       f" pre_queued = %s ORDER BY {order}", (activity_id, pre_queued))
    return [None if ticket is None else int(ticket) for (ticket,) in rows]


async def test_a_pre_queue_larger_than_a_chunk_is_drawn_over_moves_in_key_order(
        db: Database, db_url: str) -> None:
    activity_id = await started_line(db_url)
    taken = await acquire(db, "tests.draw", "draw-test", LeaseTimes(ttl_s=60.0))
    assert isinstance(taken, Lease)

    async def move() -> queue_repository.Moved:
        return await db.run(functools.partial(
            queue_repository.move, activity_id=activity_id, max_active=MAX_ACTIVE,
            fence=taken.fence))

    drawn: list[int | None] = []
    moves = 0
    while None in (drawn := await tickets(db_url, activity_id, 1, "shuffle_key, seq")):
        # Every move so far handed out a whole chunk, and the next chunk in key order: the
        # ticketed are exactly a prefix of the draw, numbered 1..n without a gap.
        ticketed = [t for t in drawn if t is not None]
        assert ticketed == list(range(1, moves * TICKET_CHUNK + 1))
        assert drawn[:len(ticketed)] == ticketed
        # Nobody who came after the start has a ticket while a pre-queued buyer has none.
        assert await tickets(db_url, activity_id, 0, "seq") == [None] * ARRIVALS
        moved = await move()
        moves += 1
        assert moved.ticketed == min(TICKET_CHUNK, PRE_QUEUED + ARRIVALS - (moves - 1)
                                     * TICKET_CHUNK)
        assert moves <= 3
    assert moves == 3
    assert drawn == list(range(1, PRE_QUEUED + 1))
    # The arrivals: right after the draw (the last move had room for them), in arrival order.
    assert await tickets(db_url, activity_id, 0, "seq") == list(
        range(PRE_QUEUED + 1, PRE_QUEUED + ARRIVALS + 1))
    ((last, rounds, shuffled, admitted),) = await query(
        db_url, "SELECT last_ticket, ticket_round, shuffle_time, admitted_through"
        " FROM queue_lines WHERE activity_id = %s", (activity_id,))
    assert (last, rounds, admitted) == (PRE_QUEUED + ARRIVALS, 3, MAX_ACTIVE)
    ((first_move,),) = await query(db_url, "SELECT MIN(admit_time) FROM queue_entries"
                                   " WHERE activity_id = %s", (activity_id,))
    assert shuffled == first_move  # recorded at the first move, kept by the later ones
    assert (await move()).ticketed == 0  # nothing left to ticket
