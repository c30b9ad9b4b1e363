"""WatchActivity: storefronts watch an activity instead of polling GetActivity.

One feed per watched activity per process reads the activity's view (watch_repository: one
statement, so one instant) through a shared single-flight `BatchLoader`: every
`poll_interval` while it has watchers, soon after a batch of this process commits on its
product, and at the instant its window opens or closes by the database's clock. Changes made
anywhere else (another replica's batches, a cancel or an expiry in the order service, a
restock in the product service, an update) are read by the next poll, so every message is at
most FRESHNESS_BOUND_S behind the database. The bound is checked again when a message is sent,
not only when it is read: a view whose read started longer ago than the bound (the process was
busy or paused, a read stalled) is never sent as current; the stream asks its feed to read
again and sends that view, or ends UNAVAILABLE if none comes within the bound. A watcher costs
a message write, never a read:
each stream's task waits for its feed's next view and sends it, at once when the state or
the activity changed, coalesced to one message per `min_interval` when only units_left did.

Streams end with a status the client acts on (docs/WATCH.md): NOT_FOUND when the activity
is gone; UNAVAILABLE with RetryInfo after the stream's lifetime, on shutdown, or when no view
within the bound can be read or sent (resume: call again). A client's cancel ends the
stream's task by CancelledError, which is never swallowed here (grpc/grpc#43360: a
server-streaming handler that swallows it leaks native memory per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from grpc.aio import ServicerContext
from seckill.v1 import activity_pb2

from activity_svc import watch_repository
from activity_svc.watch_repository import ViewRow
from activity_svc.watch_view import View, min_interval_s, view_of
from seckill_common.api.errors import (
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from seckill_common.api.validation import require_id
from seckill_common.concurrency.loader import BatchLoader
from seckill_common.config import WatchSettings
from seckill_common.database.db import Database
from seckill_common.runtime.interceptors import Malformed
from seckill_common.runtime.streams import StreamSlots, resolve, serve_stream

log = logging.getLogger(__name__)

# Every message is at most this far behind the database when it is sent (the documented
# bound): the poll interval is capped below it (750 ms, seckill_common.config.WatchSettings),
# a feed that cannot read for this long ends its streams, and a stream never sends a view
# read longer ago than this.
FRESHNESS_BOUND_S = 1.0
# After a local commit the feed reads again, but not sooner than this after its last read: a
# sale commits a batch every few milliseconds and one read per commit would be a read storm.
MIN_READ_GAP_S = 0.05


def _wake(waiters: set[asyncio.Future[None]]) -> None:
    for future in waiters:
        resolve(future)
    waiters.clear()


@dataclass(eq=False)
class _Feed:
    """One watched activity in this process: its latest view, and who waits for the next."""

    activity_id: int
    watchers: int = 0
    view: View | None = None
    # The loop's clock when the read of `view` started: the database's reading of now (its
    # read_time) is later, so the age measured from here is never less than the view's.
    read_at: float = 0.0
    revision: int = 0
    end: ServiceError | None = None  # set once: every watcher ends with it
    product_id: int | None = None
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    # The futures of the watchers waiting for the next change of any kind, and of those
    # waiting only for a change of the state or the activity (they hold back a change of
    # units until their interval ends: a sale changes the units at every read, and waking
    # every watcher at each would cost more than the messages). One future per watcher, not
    # one shared: a waiter that times out leaves in O(1) (a shared future's done-callbacks
    # are a list, whose removal scans every watcher).
    changed: set[asyncio.Future[None]] = field(default_factory=set)
    urgent: set[asyncio.Future[None]] = field(default_factory=set)
    # Watchers holding a view too old to send: woken by every read, even one that changed
    # nothing but the clock.
    read: set[asyncio.Future[None]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None

    def age(self, now: float) -> float:
        """How long ago, at the loop's time `now`, the latest view was read (an upper bound)."""
        return now - self.read_at

    def publish(self, view: View, read_at: float) -> None:
        self.read_at = read_at
        _wake(self.read)
        last = self.view
        if last is not None and (last.state, last.units_left, last.waiting, last.shown) == (
                view.state, view.units_left, view.waiting, view.shown):
            # Only time moved: the same revision, but a watcher joining now is told the clock
            # of this read (its countdown starts from it), not that of the first.
            last.message.read_time.CopyFrom(view.message.read_time)
            self.view = dataclasses.replace(view, message=last.message)
            return
        self.revision += 1
        view.message.revision = self.revision
        self.view = view
        _wake(self.changed)
        if last is None or (last.state, last.shown) != (view.state, view.shown):
            _wake(self.urgent)

    def finish(self, error: ServiceError) -> None:
        if self.end is None:
            self.end = error
            _wake(self.changed)
            _wake(self.urgent)
            _wake(self.read)


class WatchHub:
    """The process's feeds, its stream count and the RPC handler itself."""

    def __init__(self, database: Database, settings: WatchSettings) -> None:
        self._db = database
        self.settings = settings
        self._feeds: dict[int, _Feed] = {}
        self._by_product: dict[int, set[_Feed]] = {}
        self._reads: BatchLoader[int, ViewRow] = BatchLoader(self._load)
        self.slots = StreamSlots("WatchActivity", settings.max_streams,
                                 "SECKILL_WATCH_MAX_STREAMS", settings.max_lifetime_s)
        self.messages = 0  # sent so far (statistics)

    @property
    def reads(self) -> int:
        return self._reads.loads

    async def _load(self, ids: list[int]) -> dict[int, ViewRow | BaseException]:
        views = await self._db.run(lambda tx: watch_repository.read_views(tx, ids))
        return {i: views[i] if i in views and views[i].product is not None
                else NotFound("Activity", i) for i in ids}

    def committed(self, product_id: int) -> None:
        """The engine committed a batch on `product_id`: its feeds read again soon."""
        for feed in self._by_product.get(product_id, ()):
            feed.poke.set()

    # --- feeds -------------------------------------------------------------------------

    def _join(self, activity_id: int) -> _Feed:
        feed = self._feeds.get(activity_id)
        if feed is None:
            feed = self._feeds[activity_id] = _Feed(activity_id)
            feed.task = asyncio.create_task(self._run(feed), name=f"watch-{activity_id}")
        feed.watchers += 1
        return feed

    def _forget(self, feed: _Feed) -> None:
        if self._feeds.get(feed.activity_id) is feed:
            del self._feeds[feed.activity_id]
        if feed.product_id is not None:
            feeds = self._by_product.get(feed.product_id, set())
            feeds.discard(feed)
            if not feeds:
                self._by_product.pop(feed.product_id, None)

    async def _run(self, feed: _Feed) -> None:
        """Reads the feed's view while it has watchers (see the module's docstring)."""
        loop = asyncio.get_running_loop()
        last_fresh = loop.time()
        try:
            while feed.watchers > 0 and feed.end is None:
                feed.poke.clear()  # a commit from now on asks for another read
                started = loop.time()
                try:
                    # A read that hangs (a database gone without a word) counts as failed
                    # once the bound is over; the load itself goes on for its other callers.
                    async with asyncio.timeout_at(max(last_fresh + FRESHNESS_BOUND_S,
                                                      started + MIN_READ_GAP_S)):
                        row = await self._reads.get(feed.activity_id)
                except NotFound as exc:
                    feed.finish(exc)
                    break
                except Exception as exc:  # the database is away, or slow
                    if loop.time() - last_fresh >= FRESHNESS_BOUND_S:
                        feed.finish(exc if isinstance(exc, ServiceError) else Unavailable(
                            "cannot read the activity from the database; call again"))
                        if not isinstance(exc, ServiceError | TimeoutError):
                            log.warning("watch read failed", exc_info=exc)
                        break
                    await asyncio.sleep(min(self.settings.poll_interval_s, FRESHNESS_BOUND_S / 4))
                    continue
                last_fresh = started
                if feed.product_id is None:
                    feed.product_id = row.activity.product_id
                    self._by_product.setdefault(feed.product_id, set()).add(feed)
                view = view_of(row)
                feed.publish(view, started)
                await self._wait(feed, view, started)
        finally:
            self._forget(feed)
            if feed.end is None:  # cancelled (shutdown) or nobody left
                feed.finish(Unavailable("the server is shutting down; call again"))

    async def _wait(self, feed: _Feed, view: View, started: float) -> None:
        """Until the next read is due: the poll interval, a local commit (no sooner than
        MIN_READ_GAP_S after the last read), or the window's next flip by the DB's clock."""
        loop = asyncio.get_running_loop()
        due = started + self.settings.poll_interval_s
        if view.next_flip is not None:
            # The read's DB time is taken as the read's local start: the flip is read at or
            # just after the instant, never before it.
            flip_in = (view.next_flip - view.read_time) / timedelta(seconds=1) + 0.001
            due = min(due, started + flip_in)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(due):
                await feed.poke.wait()
        gap = started + MIN_READ_GAP_S - loop.time()
        if gap > 0:
            await asyncio.sleep(gap)

    # --- streams -----------------------------------------------------------------------

    async def serve(self, request: activity_pb2.WatchActivityRequest | Malformed,
                    context: ServicerContext) -> None:
        """The WatchActivity handler: writes messages with context.write, ends with a status."""
        await serve_stream(lambda sent: self._stream(request, context, sent))

    async def _stream(self, request: activity_pb2.WatchActivityRequest | Malformed,
                      context: ServicerContext, sent: list[int]) -> ServiceError:
        """Serves one stream until it ends: returns the status to end it with (a shared
        error is returned rather than raised, so no traceback gathers on it), raises the
        request's refusal."""
        if isinstance(request, Malformed):
            raise InvalidArgument([("request", request.why)])
        require_id(request.id)
        interval = min_interval_s(request)
        with self.slots.slot() as lifetime:
            return await self._serve(request.id, interval, lifetime, context, sent)

    async def _serve(self, activity_id: int, interval: float, lifetime: float,
                     context: ServicerContext, sent: list[int]) -> ServiceError:
        """The stream's messages, in its slot, until its feed ends or its lifetime passes."""
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lifetime
        feed = self._join(activity_id)
        try:
            sent_revision = 0
            sent_view: View | None = None
            last_write = float("-inf")
            stale_since: float | None = None  # since when the view due is too old to send
            while True:
                if feed.end is not None:
                    return feed.end
                view = feed.view
                wake_at, waiters = ends_at, feed.changed
                if view is not None and feed.revision != sent_revision:
                    now = loop.time()
                    urgent = (sent_view is None or view.state != sent_view.state
                              or view.shown != sent_view.shown)
                    due = urgent or now >= last_write + interval
                    if due and feed.age(now) <= FRESHNESS_BOUND_S:
                        stale_since = None
                        sent_revision, sent_view, last_write = feed.revision, view, now
                        await context.write(view.message)
                        sent[0] += 1
                        self.messages += 1
                        continue
                    if due:
                        # Too old to be sent as current (this process was busy or paused,
                        # or the feed's reads stall): the feed reads again at once; a fresh
                        # view within the bound is sent, else the stream ends (resume).
                        stale_since = now if stale_since is None else stale_since
                        if now - stale_since >= FRESHNESS_BOUND_S:
                            return Unavailable("no view of the activity fresh enough to "
                                               "send; call again")
                        feed.poke.set()
                        wake_at = min(wake_at, stale_since + FRESHNESS_BOUND_S)
                        waiters = feed.read
                    else:
                        # Units only, too soon: the interval's end, or a change that cannot
                        # wait.
                        wake_at, waiters = min(wake_at, last_write + interval), feed.urgent
                if loop.time() >= ends_at:
                    return Unavailable(f"the stream reached its lifetime ({lifetime:.0f} s); "
                                      "call again to resume", retry_after_s=0.0)
                # A timer that resolves the future, not asyncio.timeout: at one message a
                # second most wakes are the interval's end, and a timeout's expiry cancels
                # the task and turns that into TimeoutError, at several times the cost.
                woken = loop.create_future()
                waiters.add(woken)
                timer = loop.call_at(wake_at, resolve, woken)
                try:
                    await woken
                finally:
                    timer.cancel()
                    waiters.discard(woken)
        finally:
            feed.watchers -= 1

    async def close(self) -> None:
        """Shutdown, before the server's grace: new streams are refused and every open one
        ends with UNAVAILABLE (RetryInfo), so the drain waits for no stream that would never
        end by itself."""
        for feed in list(self._feeds.values()):
            feed.finish(Unavailable("the server is shutting down; call again"))
            if feed.task is not None:
                feed.task.cancel()
        await self.slots.drained()
        await self._reads.close()

