"""SQL for waiting rooms (docs/WAITING_ROOM.md): joining the line, the feeds' one read per
line, the tickets of a feed's buyers, and the mover's unit of work.

The queue tables (migration 0006) are written by two parties only: a join inserts (or, for a
buyer whose turn is over, replaces) its own entry; the mover, one process at a time under its
lease, hands out tickets, admits, and marks passes used or expired, and alone writes
`queue_lines`. Every move is fenced by the lease's epoch (`move`): a mover that lost the
lease (frozen mid-move while another took over) commits nothing. The mover reads the stock,
the activity and the orders without locks: it never makes a seckill, a cancel or an expiry
wait (docs/DESIGN.md, "Locks", is untouched: its transaction locks only its own line row,
then entries, then shares the lease's row for one round trip).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from activity_svc import queue_line
from seckill_common.api.errors import NotFound
from seckill_common.database.lease import Fence, LeaseLost
from seckill_common.database.transaction import Transaction


class EntryState(enum.IntEnum):
    """queue_entries.state."""

    WAITING = 1
    ADMITTED = 2
    USED = 3
    EXPIRED = 4


@dataclass(frozen=True)
class Entry:
    """A buyer's place, as a join or a feed's lookup read it."""

    user_id: str
    ticket: int | None
    pre_queued: bool
    state: EntryState
    pass_expire_time: datetime | None


@dataclass(frozen=True)
class Joined:
    entry: Entry
    start_time: datetime
    now: datetime


# An admitted buyer's slot is freed this long after their pass's expire time: a stream told
# of an admission computes the pass's expire time from the line's latest admissions, which
# may be a move or two later than its own (the mover moves every 100 ms or so).
PASS_SLACK = timedelta(seconds=2)


def _entry(row: Sequence[object]) -> Entry:
    user, ticket, pre_queued, state, expire = row
    assert isinstance(user, bytes | str)
    return Entry(user.decode() if isinstance(user, bytes) else user,
                 None if ticket is None else int(str(ticket)), bool(pre_queued),
                 EntryState(int(str(state))), expire if isinstance(expire, datetime) else None)


_ENTRY = "user_id, ticket, pre_queued, state, pass_expire_time"


async def join(tx: Transaction, activity_id: int, user_id: str, quantity: int,
               shuffle_key: int) -> Joined:
    """Puts the buyer in the line, or finds their place: a buyer already waiting or holding a
    live pass keeps it; one whose turn is over (used, expired) joins again at the back.
    Refuses what queue_line.join_refusal refuses."""
    await tx.execute(
        "SELECT waiting_room, pre_queue_ms, per_user_limit, start_time, end_time,"
        " UTC_TIMESTAMP(6) FROM activities WHERE id = %s", (activity_id,))
    row = await tx.fetchone()
    if row is None:
        raise NotFound("Activity", activity_id)
    room, pre_queue_ms, limit, start, end, now = row
    refusal = queue_line.join_refusal(activity_id, bool(room), quantity, int(limit),
                                      start - timedelta(milliseconds=int(pre_queue_ms)),
                                      end, now)
    if refusal is not None:
        raise refusal
    await tx.execute(
        f"SELECT {_ENTRY} FROM queue_entries WHERE activity_id = %s AND user_id = %s"
        " FOR UPDATE", (activity_id, user_id))
    found = await tx.fetchone()
    if found is not None:
        entry = _entry(found)
        over = entry.state in (EntryState.USED, EntryState.EXPIRED) or (
            entry.state is EntryState.ADMITTED and entry.pass_expire_time is not None
            and entry.pass_expire_time <= now)
        if not over:
            return Joined(entry, start, now)
        await tx.execute("DELETE FROM queue_entries WHERE activity_id = %s AND user_id = %s",
                         (activity_id, user_id))
    await tx.execute(
        "INSERT INTO queue_entries (activity_id, user_id, quantity, join_time, pre_queued,"
        " shuffle_key) VALUES (%s, %s, %s, %s, %s, %s)",
        (activity_id, user_id, quantity, now, int(now < start), shuffle_key))
    return Joined(Entry(user_id, None, now < start, EntryState.WAITING, None), start, now)


@dataclass(frozen=True)
class LineRow:
    """A line as every feed reads it: one statement, one instant."""

    activity_id: int
    waiting_room: bool
    start_time: datetime
    end_time: datetime
    units_left: int
    last_ticket: int
    admitted_through: int
    ticket_round: int
    admit_expire_time: datetime | None
    rate: float  # admissions per second: the fixed rate, else the measured one
    read_time: datetime


async def read_lines(tx: Transaction, activity_ids: list[int]) -> dict[int, LineRow]:
    """The lines of the activities among `activity_ids` that exist (a line that has not
    moved yet reads as empty), by id."""
    marks = ", ".join(["%s"] * len(activity_ids))
    rows = await tx.select_only(
        "SELECT a.id, a.waiting_room, a.start_time, a.end_time, COALESCE(p.stock, 0),"
        " COALESCE(l.last_ticket, 0), COALESCE(l.admitted_through, 0),"
        " COALESCE(l.ticket_round, 0), l.admit_expire_time,"
        " COALESCE(a.admission_rate, l.admission_rate, 0), UTC_TIMESTAMP(6)"
        " FROM activities a LEFT JOIN products p ON p.id = a.product_id"
        " LEFT JOIN queue_lines l ON l.activity_id = a.id"
        f" WHERE a.id IN ({marks})", activity_ids)
    lines = {}
    for (activity_id, room, start, end, units, last, through, round_, expire, rate,
         now) in rows:
        lines[int(activity_id)] = LineRow(int(activity_id), bool(room), start, end, int(units),
                                          int(last), int(through), int(round_), expire,
                                          float(rate), now)
    return lines


async def entries_of(tx: Transaction, activity_id: int,
                     user_ids: Sequence[str]) -> dict[str, Entry]:
    """The places of `user_ids` in the line: one statement for a feed's buyers."""
    marks = ", ".join(["%s"] * len(user_ids))
    rows = await tx.select_only(
        f"SELECT {_ENTRY} FROM queue_entries WHERE activity_id = %s AND user_id IN ({marks})",
        [activity_id, *user_ids])
    return {entry.user_id: entry for entry in map(_entry, rows)}


async def tickets_between(tx: Transaction, activity_id: int, after: int,
                          through: int) -> dict[str, int]:
    """The tickets after `after` up to `through` of the line, by user: what one chunk of the
    draw handed out (one index range, whoever's buyers they are)."""
    rows = await tx.select_only(
        "SELECT user_id, ticket FROM queue_entries WHERE activity_id = %s AND ticket > %s"
        " AND ticket <= %s", (activity_id, after, through))
    return {(user.decode() if isinstance(user, bytes) else str(user)): int(ticket)
            for user, ticket in rows}


@dataclass(frozen=True)
class Lines:
    """What the mover has to do: the lines to move, and whether any sale with a waiting room
    has not ended (none: nothing can open a line before a sale with a waiting room exists)."""

    to_move: list[int]
    rooms_open: bool


async def lines_to_move(tx: Transaction) -> Lines:
    """The activities whose sale has not ended and whose line has buyers waiting or admitted
    (before the start, a move only counts them), in one statement with whether any sale with
    a waiting room has not ended."""
    rows = await tx.select_only(
        "SELECT a.id, EXISTS (SELECT 1 FROM queue_entries q WHERE q.state IN (1, 2)"
        " AND q.activity_id = a.id) FROM activities a WHERE a.waiting_room = 1"
        " AND a.end_time > UTC_TIMESTAMP(6)", ())
    return Lines([int(activity_id) for activity_id, busy in rows if busy], bool(rows))


async def _count_waiting(tx: Transaction, activity_id: int) -> None:
    # Counted by a plain SELECT (a consistent read, no locks), then written: as a subquery of
    # the UPDATE the count would be a locking read, share-locking the waiting entries' index
    # range and so holding back every join's INSERT into it for the move's length, every
    # move (tens of thousands of waiting buyers make that the joins' bottleneck).
    await tx.execute("SELECT COUNT(*) FROM queue_entries WHERE state = 1 AND activity_id = %s",
                     (activity_id,))
    counted = await tx.fetchone()
    assert counted is not None
    await tx.execute("UPDATE queue_lines SET waiting = %s WHERE activity_id = %s",
                     (int(counted[0]), activity_id))


@dataclass(frozen=True)
class Moved:
    ticketed: int
    admitted: int
    used: int
    expired: int
    rate: float  # measured admissions per second


async def move(tx: Transaction, activity_id: int, max_active: int, fence: Fence) -> Moved:
    """The mover's unit of work on one line (docs/WAITING_ROOM.md, "How the line moves"):
    tickets for the unticketed, TICKET_CHUNK at most (the pre-queue in its drawn order, then
    arrivals in order), passes used
    or expired, then admissions, as many as queue_line.admissions allows; all of it fenced by
    the mover's lease: LeaseLost (the transaction rolled back, nothing moved) when the lease
    is no longer held at the holder's epoch."""
    moved = await _move(tx, activity_id, max_active)
    await _hold(tx, fence)
    return moved


async def _hold(tx: Transaction, fence: Fence) -> None:
    """The fence, last before the commit: share-locks the lease row while it still names this
    holder at its epoch, so any later acquisition (which must update the row) waits for this
    commit, and every move of the next holder comes after it; raises LeaseLost when another
    holder took it or it has expired. Taken last rather than first, so the lock is held for one
    round trip: the holder's own renewals (which update the row) never wait for a long move."""
    await tx.execute(fence.lock, fence.params)
    row = await tx.fetchone()
    if row is None or int(row[0]) <= 0:
        raise LeaseLost(f"the lease {fence.params[0]!r} (epoch {fence.params[2]}) is no longer"
                        " held: the move is rolled back")


# Tickets handed out per move at most. The pre-queue's draw is fixed at the start by the
# buyers' keys (shuffle_key, drawn at join, never changed; nobody joins the pre-queue after the
# start), so handing the unticketed pre-queued their tickets in (shuffle_key, seq) order a
# chunk per move gives exactly the order one statement would: any number of pre-queued buyers
# is drawn in moves that each stay well within the mover's acting time (half the lease's 3 s),
# 2,000 tickets a move (20,000 a second at the shipped move interval).
TICKET_CHUNK = 2000

# The next `%s` unticketed entries of the line in the order of their tickets, numbered 1..n:
# the chunk is cut first (its derived table, ORDER BY ... LIMIT, is materialised, which also
# makes updating the table it reads allowed) and only the chunk is numbered.
_TICKET_CHUNK_SQL = (
    "UPDATE queue_entries q JOIN (SELECT seq, ROW_NUMBER() OVER (ORDER BY {order}) AS n"
    " FROM (SELECT seq, shuffle_key FROM queue_entries WHERE activity_id = %s"
    " AND ticket IS NULL AND pre_queued = %s ORDER BY {order} LIMIT %s) c) r"
    " ON r.seq = q.seq SET q.ticket = %s + r.n")


async def _ticket(tx: Transaction, activity_id: int, last_ticket: int,
                  chunk: int = TICKET_CHUNK) -> int:
    """Tickets last_ticket + 1 .. last_ticket + n for the next n <= `chunk` unticketed
    entries: the pre-queued in their random order (shuffle_key, seq), and only once every
    pre-queued buyer has a ticket, later arrivals in arrival order (seq). Returns n."""
    await tx.execute("SELECT 1 FROM queue_entries WHERE activity_id = %s AND ticket IS NULL"
                     " LIMIT 1", (activity_id,))
    if await tx.fetchone() is None:  # the usual move: nobody new
        return 0
    ticketed = 0
    for pre_queued, order in ((1, "shuffle_key, seq"), (0, "seq")):
        await tx.execute(_TICKET_CHUNK_SQL.format(order=order),
                         (activity_id, pre_queued, chunk - ticketed, last_ticket + ticketed))
        ticketed += tx.rowcount
        if pre_queued and ticketed >= chunk:  # pre-queued buyers may be left: none after them
            break
    return ticketed


async def _move(tx: Transaction, activity_id: int, max_active: int) -> Moved:
    await tx.execute("INSERT INTO queue_lines (activity_id) VALUES (%s)"
                     " ON DUPLICATE KEY UPDATE activity_id = activity_id", (activity_id,))
    await tx.execute(
        "SELECT l.last_ticket, l.admitted_through, l.shuffle_time, l.admission_rate,"
        " l.move_time, UTC_TIMESTAMP(6) FROM queue_lines l WHERE l.activity_id = %s"
        " FOR UPDATE", (activity_id,))
    row = await tx.fetchone()
    assert row is not None
    last_ticket, through, shuffled, measured, moved_at, now = row
    last_ticket, through = int(last_ticket), int(through)
    await tx.execute("SELECT start_time FROM activities WHERE id = %s", (activity_id,))
    started = await tx.fetchone()
    if started is None:
        raise NotFound("Activity", activity_id)
    if now < started[0]:  # the pre-queue: nothing moves before the start
        await _count_waiting(tx, activity_id)
        return Moved(0, 0, 0, 0, float(measured))
    ticketed = await _ticket(tx, activity_id, last_ticket)
    if ticketed:
        await tx.execute(
            "UPDATE queue_lines SET last_ticket = %s, ticket_round = ticket_round + 1,"
            " shuffle_time = COALESCE(shuffle_time, %s) WHERE activity_id = %s",
            (last_ticket + ticketed, now, activity_id))
    # Passes used (an order made since the admission) or expired free their slots.
    await tx.execute(
        "SELECT q.seq, o.create_time >= q.admit_time FROM queue_entries q"
        " LEFT JOIN orders o ON o.activity_id = q.activity_id AND o.user_id = q.user_id"
        " WHERE q.activity_id = %s AND q.state = 2", (activity_id,))
    used = [int(seq) for seq, bought in await tx.fetchall() if bought]
    if used:
        marks = ", ".join(["%s"] * len(used))
        await tx.execute(f"UPDATE queue_entries SET state = 3 WHERE seq IN ({marks})", used)
    await tx.execute(
        "UPDATE queue_entries SET state = 4 WHERE activity_id = %s AND state = 2"
        " AND pass_expire_time <= %s", (activity_id, now - PASS_SLACK))
    expired = tx.rowcount
    await tx.execute(
        "SELECT COUNT(*), COALESCE(SUM(quantity), 0) FROM queue_entries"
        " WHERE activity_id = %s AND state = 2", (activity_id,))
    counted = await tx.fetchone()
    assert counted is not None
    active, held_units = int(counted[0]), int(counted[1])
    # The stock is read after the admitted were counted, never before: an order made in
    # between then both took its units and still counts as held (fewer admitted, never more).
    # Read first, a buyer who bought meanwhile would free their slot and keep the units.
    await tx.execute(
        "SELECT a.pass_validity_ms, a.admission_rate, p.stock"
        " FROM activities a JOIN products p ON p.id = a.product_id WHERE a.id = %s",
        (activity_id,))
    activity = await tx.fetchone()
    if activity is None:
        raise NotFound("Activity", activity_id)
    validity_ms, fixed_rate, units_left = activity
    budget = queue_line.rate_budget(None if fixed_rate is None else int(fixed_rate), through,
                                    shuffled or now, now)
    room = queue_line.Room(units_left=int(units_left) - int(held_units),
                           slots=max_active - active, budget=budget)
    admitted = 0
    if room.units_left > 0 and room.slots > 0 and room.budget > 0:
        await tx.execute(
            "SELECT quantity FROM queue_entries WHERE activity_id = %s AND ticket > %s"
            " ORDER BY ticket LIMIT %s", (activity_id, through, min(room.slots, room.budget)))
        admitted = queue_line.admissions([int(q) for (q,) in await tx.fetchall()], room)
    expire_time = now + timedelta(milliseconds=int(validity_ms))
    if admitted:
        await tx.execute(
            "UPDATE queue_entries SET state = 2, admit_time = %s, pass_expire_time = %s"
            " WHERE activity_id = %s AND ticket > %s AND ticket <= %s",
            (now, expire_time, activity_id, through, through + admitted))
    rate = queue_line.measured_rate(float(measured), admitted,
                                    (now - (moved_at or now)).total_seconds())
    await tx.execute(
        "UPDATE queue_lines SET admitted_through = %s, admission_rate = %s, move_time = %s,"
        " admit_expire_time = IF(%s > 0, %s, admit_expire_time) WHERE activity_id = %s",
        (through + admitted, rate, now, admitted, expire_time, activity_id))
    await _count_waiting(tx, activity_id)
    return Moved(ticketed, admitted, len(set(used)), expired, rate)


async def waiting_rooms(tx: Transaction, activity_ids: list[int]) -> dict[int, bool]:
    """Whether each existing activity among `activity_ids` has a waiting room."""
    marks = ", ".join(["%s"] * len(activity_ids))
    rows = await tx.select_only(
        f"SELECT id, waiting_room FROM activities WHERE id IN ({marks})", activity_ids)
    return {int(activity_id): bool(room) for activity_id, room in rows}
