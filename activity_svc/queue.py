"""JoinQueue: waiting rooms' streams, one feed per waited-on line per process, and the
admission pass check of Seckill (docs/WAITING_ROOM.md).

A join is one write (queue_repository.join: the buyer's place). Then the buyer waits on their
line's feed: one reader per line per process reads the line (one row: how far it has
admitted, the tickets handed out, the units left, the database's clock) every poll interval
through a shared single-flight `BatchLoader`, so a waiting buyer costs a message now and then,
never a read. When the mover hands out tickets (the pre-queue's shuffle at the start, later
arrivals as they come) the feed learns its buyers' tickets in one statement. Where a buyer
stands follows from their ticket and the line (queue_line.place): WAITING with a position,
then a final ADMITTED (with a pass signed here), SOLD_OUT or ENDED, after which the stream
ends OK. Streams are capped, live a bounded time and are drained on shutdown as
WatchActivity's are (seckill_common.runtime.streams). A client's cancel ends the stream's task
by CancelledError, never swallowed (grpc/grpc#43360).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from grpc.aio import ServicerContext
from seckill.v1 import activity_pb2

from activity_svc import queue_repository
from activity_svc.passes import Passes
from activity_svc.queue_line import Place, place
from activity_svc.queue_repository import EntryState, LineRow
from activity_svc.watch_view import min_interval_s
from seckill_common.api.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from seckill_common.api.times import to_timestamp
from seckill_common.api.validation import MAX_PER_USER_LIMIT, Violations
from seckill_common.concurrency.loader import BatchLoader
from seckill_common.config import QueueSettings
from seckill_common.database.db import Database
from seckill_common.runtime.auth import acting_user
from seckill_common.runtime.interceptors import Malformed
from seckill_common.runtime.streams import StreamSlots, resolve, serve_stream

log = logging.getLogger(__name__)

# A sell-out, an admission or the end reaches every waiting buyer within this bound, while the
# database answers the feed's reads in time (a read slower than this is logged; it does not
# end the streams: their buyers wait for the next read).
FRESHNESS_BOUND_S = 1.0
# A feed ends its streams (UNAVAILABLE: join again, the place is kept) only when its line has
# been unreadable for this long at least, and for longer than one read may take: each read is
# bounded by the database client (Database.bound_s: SECKILL_DB_CLIENT_TIMEOUT, 11 s shipped,
# at most the statement timeout plus a margin), so until then the database may still answer
# a read that is merely slow, and ending tens of thousands of streams on it would only add
# their rejoins (a join transaction each) to the load that made it slow (make bench (j1)).
# QueueHub.unreadable_s = the larger of this floor and the client's bound plus a poll
# interval: at least one whole bounded read failed and its retry did not answer either.
UNREADABLE_FLOOR_S = 5.0
# The streams such an outage ends are told to join again after a delay drawn uniformly from
# REJOIN_MIN_S .. REJOIN_MIN_S + a window that grows with the buyers waiting here (so their
# rejoins come at about REJOINS_PER_S a second per process, from every process at once a few
# times that), between REJOIN_WINDOW_MIN_S and REJOIN_WINDOW_MAX_S: a recovering database is
# not met by every buyer at once.
REJOIN_MIN_S = 1.0
REJOINS_PER_S = 500.0
REJOIN_WINDOW_MIN_S = 5.0
REJOIN_WINDOW_MAX_S = 60.0
# JoinQueueRequest.min_interval when unset (its floor and ceiling: watch_view.min_interval_s).
DEFAULT_MIN_INTERVAL_S = 1.0
# Whether an activity has a waiting room is known to Seckill's pass check from a read at most
# this old (or from a feed's read): a burst of Seckill calls costs at most one read.
ROOM_KNOWN_FOR_S = 5.0
# Tickets looked up per statement.
LOOKUP_CHUNK = 1000
# Waiting buyers a read wakes per turn of the event loop.
WAKE_CHUNK = 500


@dataclass(eq=False)
class _Buyer:
    """One stream's buyer, as its feed knows them."""

    user_id: str
    ticket: int | None
    pre_queued: bool


@dataclass(eq=False)
class _Line:
    """One waited-on line in this process: its latest read, and who waits for the next."""

    activity_id: int
    buyers: set[_Buyer] = field(default_factory=set)
    view: LineRow | None = None
    revision: int = 0
    known_round: int = -1  # the ticket round whose tickets the feed has looked up
    # Every ticket up to here has been given to the buyers waiting when it was looked up;
    # `unknown`: the ticketless buyers who came since (their tickets may be older).
    known_ticket: int = 0
    unknown: set[_Buyer] = field(default_factory=set)
    end: ServiceError | None = None
    # > 0: the line was unreadable too long; each stream's RetryInfo delay is drawn from
    # REJOIN_MIN_S .. REJOIN_MIN_S + this (`ending`).
    rejoin_window_s: float = 0.0
    # Buyers woken when a read changes what any place depends on (_places_key), and those
    # woken by the next read whatever it says (just joined: their first answer waits for it).
    changed: set[asyncio.Future[None]] = field(default_factory=set)
    next_read: set[asyncio.Future[None]] = field(default_factory=set)
    places_key: tuple[object, ...] | None = None
    task: asyncio.Task[None] | None = None

    async def publish(self, view: LineRow) -> None:
        """The new read, and its waiting buyers woken WAKE_CHUNK at a time, yielding between
        chunks: at the start tens of thousands wake at once, and each chunk's messages are
        written before the next wakes, so the loop (its heartbeat, other calls) keeps turning."""
        self.view = view
        self.revision += 1
        waking = list(self.next_read)
        self.next_read.clear()
        key = _places_key(view)
        if key != self.places_key:
            self.places_key = key
            waking += self.changed
            self.changed.clear()
        for begin in range(0, len(waking), WAKE_CHUNK):
            if begin:
                await asyncio.sleep(0)  # the woken chunk runs first: it was scheduled before
            for future in waking[begin:begin + WAKE_CHUNK]:
                resolve(future)

    def finish(self, error: ServiceError, rejoin_window_s: float = 0.0) -> None:
        if self.end is None:
            self.end = error
            self.rejoin_window_s = rejoin_window_s
            _wake(self.changed)
            _wake(self.next_read)

    def ending(self) -> ServiceError:
        """What one of the line's streams ends with, once it has ended: after an outage an
        UNAVAILABLE of its own, whose RetryInfo delay is drawn over the rejoin window."""
        assert self.end is not None
        if self.rejoin_window_s <= 0:
            return self.end
        return Unavailable(str(self.end), retry_after_s=round(
            REJOIN_MIN_S + random.uniform(0.0, self.rejoin_window_s), 3))


def rejoin_window_s(buyers: int) -> float:
    """The window over which `buyers` streams ended together are told to join again."""
    return min(REJOIN_WINDOW_MAX_S, max(REJOIN_WINDOW_MIN_S, buyers / REJOINS_PER_S))


def _places_key(view: LineRow) -> tuple[object, ...]:
    """What every place in the line follows from (queue_line.place): a read equal in these
    wakes nobody already told their place, so a quiet line (the pre-queue before the start,
    a line that does not move) costs its waiting buyers nothing per read. The rate is left
    out: it changes only the estimated wait, which alone sends no message."""
    return (view.admitted_through, view.last_ticket, view.ticket_round, view.units_left <= 0,
            view.start_time, view.end_time, view.read_time >= view.start_time,
            view.read_time >= view.end_time, view.admit_expire_time)


def _wake(futures: set[asyncio.Future[None]]) -> None:
    for future in futures:
        resolve(future)
    futures.clear()


class QueueHub:
    """The process's lines, JoinQueue's handler and Seckill's pass check."""

    def __init__(self, database: Database, settings: QueueSettings, passes: Passes) -> None:
        self._db = database
        self.settings = settings
        self.passes = passes
        self._lines: dict[int, _Line] = {}
        self._reads: BatchLoader[int, LineRow] = BatchLoader(self._load)
        self._rooms: dict[int, tuple[bool, float]] = {}
        self._room_reads: BatchLoader[int, bool] = BatchLoader(self._load_rooms)
        self.slots = StreamSlots("JoinQueue", settings.max_streams,
                                 "SECKILL_QUEUE_MAX_STREAMS", settings.max_lifetime_s)
        # A line unreadable this long ends its streams (UNREADABLE_FLOOR_S says why).
        self.unreadable_s = max(UNREADABLE_FLOOR_S, database.bound_s + settings.poll_interval_s)
        self.messages = 0  # sent so far (statistics)
        self.lookups = 0  # ticket lookups (statistics)

    @property
    def reads(self) -> int:
        return self._reads.loads

    @property
    def waiting(self) -> int:
        return sum(len(line.buyers) for line in self._lines.values())

    # --- Seckill's check ---------------------------------------------------------------

    async def check_pass(self, activity_id: int, user_id: str, admission_pass: str) -> None:
        """Returns when the call may go on to the sale: the activity has no waiting room, or
        the pass admits this user to it now. Else FAILED_PRECONDITION NOT_ADMITTED or
        PASS_EXPIRED, decided on the pass alone (no database call, once this process knows
        the activity has a waiting room)."""
        loop = asyncio.get_running_loop()
        known = self._rooms.get(activity_id)
        if known is None or loop.time() - known[1] > ROOM_KNOWN_FOR_S:
            try:
                await self._room_reads.get(activity_id)
            except NotFound:
                return  # the sale's own answer: NOT_FOUND
            known = self._rooms[activity_id]
        if known[0]:
            self.passes.check(admission_pass, activity_id, user_id)

    async def _load_rooms(self, ids: list[int]) -> dict[int, bool | BaseException]:
        rooms = await self._db.run(lambda tx: queue_repository.waiting_rooms(tx, ids))
        now = asyncio.get_running_loop().time()
        for activity_id, room in rooms.items():
            self._rooms[activity_id] = (room, now)
        return {i: rooms[i] if i in rooms else NotFound("Activity", i) for i in ids}

    # --- feeds -------------------------------------------------------------------------

    async def _load(self, ids: list[int]) -> dict[int, LineRow | BaseException]:
        lines = await self._db.run(lambda tx: queue_repository.read_lines(tx, ids))
        now = asyncio.get_running_loop().time()
        for activity_id, line in lines.items():
            self._rooms[activity_id] = (line.waiting_room, now)
        return {i: lines[i] if i in lines else NotFound("Activity", i) for i in ids}

    def _join(self, activity_id: int, buyer: _Buyer) -> _Line:
        line = self._lines.get(activity_id)
        if line is None:
            line = self._lines[activity_id] = _Line(activity_id)
            line.task = asyncio.create_task(self._run(line), name=f"queue-{activity_id}")
        line.buyers.add(buyer)
        if buyer.ticket is None:
            line.unknown.add(buyer)
            line.known_round = -1  # its ticket may come in a round already seen
        return line

    async def _run(self, line: _Line) -> None:
        """Reads the line every poll interval while buyers wait on it. A slow or failed read
        does not end the streams: the feed reads again (each read bounded by the database
        client), and ends them only when the line has been unreadable for unreadable_s."""
        loop = asyncio.get_running_loop()
        last_fresh = loop.time()
        late = False  # logged once per outage, not at every read
        try:
            while line.buyers and line.end is None:
                started = loop.time()
                try:
                    async with asyncio.timeout_at(last_fresh + self.unreadable_s):
                        view = await self._reads.get(line.activity_id)
                        if view.ticket_round != line.known_round:
                            await self._learn_tickets(line, view)
                except NotFound as exc:
                    line.finish(exc)
                    break
                except Exception as exc:  # the database is away, or slow
                    if loop.time() - last_fresh >= self.unreadable_s:
                        log.warning("the line of activity %s could not be read for %.1f s:"
                                    " its %s streams end (join again)", line.activity_id,
                                    self.unreadable_s, len(line.buyers))
                        line.finish(Unavailable("cannot read the waiting room's line; join"
                                                " again: the place is kept"),
                                    rejoin_window_s(len(line.buyers)))
                        break
                    if not late:
                        log.warning("the line of activity %s could not be read: %r; its"
                                    " buyers wait for the next read", line.activity_id, exc)
                        late = True
                    await asyncio.sleep(self.settings.poll_interval_s / 2)
                    continue
                if late or loop.time() - last_fresh > FRESHNESS_BOUND_S + \
                        self.settings.poll_interval_s:
                    log.info("the line of activity %s read %.1f s after its last read",
                             line.activity_id, loop.time() - last_fresh)
                    late = False
                last_fresh = started
                await line.publish(view)
                due = started + self.settings.poll_interval_s
                if view.read_time < view.start_time:  # read again at the shuffle
                    due = min(due, started + (view.start_time - view.read_time
                                              ).total_seconds() + 0.001)
                await asyncio.sleep(max(0.0, due - loop.time()))
        finally:
            if self._lines.get(line.activity_id) is line:
                del self._lines[line.activity_id]
            if line.end is None:  # cancelled (shutdown) or nobody left
                line.finish(Unavailable("the server is shutting down; join again"))

    async def _learn_tickets(self, line: _Line, view: LineRow) -> None:
        """The tickets of this line's buyers who have none yet. Those who came since the last
        look-up are looked up by user; the others can only have a ticket handed out since
        then, so while the draw is handed out in chunks a few thousand buyers cost one read
        of the chunk's tickets rather than a look-up of every ticketless buyer each move.
        One statement per LOOKUP_CHUNK users or tickets."""
        round_ = view.ticket_round
        fresh = {b for b in line.unknown if b.ticket is None and b in line.buyers}
        line.unknown = set()  # those who join meanwhile are looked up next time
        found: dict[str, int] = {}
        if round_ > 0:  # else nobody has a ticket yet (the pre-queue before the shuffle)
            found.update(await self._tickets_of(line, {b.user_id for b in fresh}))
            rest = {b.user_id for b in line.buyers if b.ticket is None and b not in fresh}
            span = view.last_ticket - line.known_ticket
            if rest and span > 0:
                found.update(await self._tickets_between(line, view.last_ticket)
                             if span <= len(rest) else await self._tickets_of(line, rest))
        for buyer in line.buyers:
            if buyer.ticket is None:
                buyer.ticket = found.get(buyer.user_id)
        line.known_ticket = max(line.known_ticket, view.last_ticket)
        line.known_round = -1 if line.unknown else round_

    async def _tickets_of(self, line: _Line, user_ids: set[str]) -> dict[str, int]:
        users = sorted(user_ids)
        found: dict[str, int] = {}
        for begin in range(0, len(users), LOOKUP_CHUNK):
            entries = await self._db.run(functools.partial(
                queue_repository.entries_of, activity_id=line.activity_id,
                user_ids=users[begin:begin + LOOKUP_CHUNK]))
            self.lookups += 1
            found.update({user: entry.ticket for user, entry in entries.items()
                          if entry.ticket is not None})
        return found

    async def _tickets_between(self, line: _Line, through: int) -> dict[str, int]:
        found: dict[str, int] = {}
        for after in range(line.known_ticket, through, LOOKUP_CHUNK):
            found.update(await self._db.run(functools.partial(
                queue_repository.tickets_between, activity_id=line.activity_id,
                after=after, through=min(through, after + LOOKUP_CHUNK))))
            self.lookups += 1
        return found

    # --- streams -----------------------------------------------------------------------

    async def serve(self, request: activity_pb2.JoinQueueRequest | Malformed,
                    context: ServicerContext) -> None:
        """The JoinQueue handler: writes messages with context.write, ends with a status."""
        await serve_stream(lambda sent: self._stream(request, context, sent))

    async def _stream(self, request: activity_pb2.JoinQueueRequest | Malformed,
                      context: ServicerContext, sent: list[int]) -> ServiceError | None:
        if isinstance(request, Malformed):
            raise InvalidArgument([("request", request.why)])
        user_id = acting_user(request.user_id)
        violations = Violations()
        violations.positive_id("activity_id", request.activity_id)
        violations.user_id("user_id", user_id)
        violations.bounded("quantity", request.quantity, 0, MAX_PER_USER_LIMIT)
        violations.check()
        interval = min_interval_s(request, DEFAULT_MIN_INTERVAL_S)
        with self.slots.slot() as lifetime:
            joined = await self._db.run(lambda tx: queue_repository.join(
                tx, request.activity_id, user_id, request.quantity or 1,
                secrets.randbits(63)))
            entry = joined.entry
            if entry.state is EntryState.ADMITTED and entry.pass_expire_time is not None:
                await self._admitted(context, request.activity_id, user_id,
                                     entry.pass_expire_time, joined.now)
                sent[0] += 1
                return None
            buyer = _Buyer(user_id, entry.ticket, entry.pre_queued)
            return await self._wait(request.activity_id, buyer, interval, lifetime, context,
                                    sent)

    async def _admitted(self, context: ServicerContext, activity_id: int, user_id: str,
                        expire_time: datetime, now: datetime) -> None:
        await context.write(activity_pb2.QueueUpdate(
            state=activity_pb2.ADMITTED, read_time=to_timestamp(now),
            admission_pass=self.passes.issue(activity_id, user_id, expire_time),
            pass_expire_time=to_timestamp(expire_time)))
        self.messages += 1

    async def _wait(self, activity_id: int, buyer: _Buyer, interval: float, lifetime: float,
                    context: ServicerContext, sent: list[int]) -> ServiceError | None:
        """The buyer's messages until a final one, the feed's end or the lifetime."""
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lifetime
        line = self._join(activity_id, buyer)
        # A final SOLD_OUT or ENDED is told only from a read after the join: the line's last
        # read may predate a unit that came back since.
        joined_revision = line.revision
        try:
            seen_revision = 0
            last: Place | None = None
            last_write = float("-inf")
            while True:
                if line.end is not None:
                    return line.ending()
                view = line.view
                wake_at = ends_at
                if view is not None and line.revision != seen_revision:
                    # The read this evaluation answers: a read published while a message
                    # below is being written is evaluated at the next turn, not skipped.
                    revision = line.revision
                    now_place = place(
                        ticket=buyer.ticket, pre_queued=buyer.pre_queued,
                        admitted_through=view.admitted_through, last_ticket=view.last_ticket,
                        units_left=view.units_left, rate=view.rate,
                        start_time=view.start_time, end_time=view.end_time,
                        now=view.read_time)
                    if now_place.state == activity_pb2.ADMITTED:
                        expire = view.admit_expire_time
                        assert expire is not None
                        await self._admitted(context, activity_id, buyer.user_id, expire,
                                             view.read_time)
                        sent[0] += 1
                        return None
                    stale = now_place.final and revision <= joined_revision
                    urgent = last is None or now_place.state != last.state
                    changed = not stale and (
                        urgent or now_place.position != (last and last.position))
                    now = loop.time()
                    if changed and (urgent or now >= last_write + interval):
                        await context.write(self._message(now_place, view))
                        sent[0] += 1
                        self.messages += 1
                        last, last_write = now_place, now
                        seen_revision = revision
                        if now_place.final:
                            return None
                        continue
                    if changed:
                        wake_at = min(wake_at, last_write + interval)
                    else:
                        seen_revision = revision
                if loop.time() >= ends_at:
                    return Unavailable(f"the stream reached its lifetime ({lifetime:.0f} s); "
                                       "join again: the place is kept", retry_after_s=0.0)
                woken = loop.create_future()
                # Until a read after the join has been seen, any read may answer (a final
                # SOLD_OUT waits for one); after it, only a read that changes places.
                waiters = (line.next_read if seen_revision <= joined_revision
                           or seen_revision != line.revision else line.changed)
                waiters.add(woken)
                timer = loop.call_at(wake_at, resolve, woken)
                try:
                    await woken
                finally:
                    timer.cancel()
                    waiters.discard(woken)
        finally:
            line.buyers.discard(buyer)

    @staticmethod
    def _message(where: Place, view: LineRow) -> activity_pb2.QueueUpdate:
        message = activity_pb2.QueueUpdate(
            state=where.state, start_time=to_timestamp(view.start_time),
            read_time=to_timestamp(view.read_time))
        if where.state == activity_pb2.WAITING:
            message.position = where.position
            message.ahead = where.position - 1
            if where.estimated_wait_s is not None:
                message.estimated_wait.FromMilliseconds(round(where.estimated_wait_s * 1000))
        return message

    async def close(self) -> None:
        """Shutdown, before the server's grace: new streams are refused, open ones end with
        UNAVAILABLE (RetryInfo: join again, the place is kept)."""
        for line in list(self._lines.values()):
            line.finish(Unavailable("the server is shutting down; join again"))
            if line.task is not None:
                line.task.cancel()
        await self.slots.drained()
        await self._reads.close()
        await self._room_reads.close()
