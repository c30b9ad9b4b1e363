"""OrderEventService: the feed of order events, listed and watched (docs/EVENTS.md).

One `EventFeed` per process takes the watermark (event_store.watermark: it sequences what
has committed since, and every event up to it is in the feed for good) every
SECKILL_EVENTS_POLL_INTERVAL_MS while streams watch, and wakes
them when it moves; each stream then reads its own events, up to that watermark, from its own
revision. A stream or a list never serves beyond the watermark, so no event it skipped can
commit later. Retention runs here too: every PRUNE_INTERVAL_S one process's sweep deletes the
events past SECKILL_EVENTS_RETENTION (never one the relay has still to send).
"""

from __future__ import annotations

import asyncio
import logging
import random

from grpc.aio import ServicerContext
from seckill.v1 import order_events_pb2, order_events_pb2_grpc

from order_svc import event_store
from order_svc.event_store import Position
from seckill_common.api.errors import FailedPrecondition, InvalidArgument, Reason, Unavailable
from seckill_common.api.pages import decode_page_token, encode_page_token, page_size
from seckill_common.api.times import to_timestamp
from seckill_common.config import EventsSettings, WatchSettings
from seckill_common.database.db import Database
from seckill_common.runtime.background import Background
from seckill_common.runtime.interceptors import Malformed
from seckill_common.runtime.streams import StreamSlots, resolve, serve_stream

log = logging.getLogger(__name__)

SERVICE_NAME = order_events_pb2.DESCRIPTOR.services_by_name["OrderEventService"].full_name
# Events per stream message (and per read of a stream).
STREAM_PAGE = 500
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH = 10_000
# Sequencer passes a sweep makes at most (2,000 events each): with no reader, the inbox is
# sequenced at up to 200,000 events a minute, past any sale this platform has measured.
SEQUENCE_PASSES = 100


def pruned(through: int) -> FailedPrecondition:
    return FailedPrecondition(
        Reason.EVENTS_PRUNED,
        f"events up to revision {through} were deleted by retention; read the orders anew"
        " (ListOrders) and continue after pruned_through", {"pruned_through": str(through)})


def disabled() -> FailedPrecondition:
    return FailedPrecondition(Reason.EVENTS_DISABLED, "this deployment writes no order events"
                              " (SECKILL_EVENTS_ENABLED=false)", {})


def start_after(requested: int, position: Position) -> int:
    """Where a reader starts: 0 is the oldest retained event; behind retention, a refusal."""
    if requested < 0:
        raise InvalidArgument({"after_revision": "must not be negative"})
    if requested == 0:
        return position.pruned
    if requested < position.pruned:
        raise pruned(position.pruned)
    return requested


class EventFeed:
    """The process's latest watermark, and who waits for it to move."""

    def __init__(self, database: Database, settings: EventsSettings) -> None:
        self._db = database
        self.settings = settings
        self.position: Position | None = None
        self.failure: Unavailable | None = None
        self.watchers = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._poller = Background("order-events-feed", self._poll)

    async def read(self) -> Position:
        """A fresh watermark (one short sequencer transaction; it waits for nobody)."""
        return await self._db.run(event_store.watermark)

    def join(self) -> None:
        self.watchers += 1
        if not self._poller.running:
            self.failure = None  # a poller's failure, from before it stopped
            self._poller.start()

    def leave(self) -> None:
        self.watchers -= 1

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next read that moved the watermark or failed."""
        woken = asyncio.get_running_loop().create_future()
        self._waiters.add(woken)
        woken.add_done_callback(self._waiters.discard)
        return woken

    def _wake(self) -> None:
        for future in list(self._waiters):
            resolve(future)

    def fail(self, error: Unavailable) -> None:
        """Ends every stream with `error` (shutdown)."""
        self.failure = error
        self._wake()

    async def _poll(self) -> None:
        while self.watchers > 0:
            try:
                position = await self.read()
            except Exception as exc:  # the database is away: streams end, clients resume
                self.failure = Unavailable("cannot read the order events; call again")
                log.warning("order events feed read failed: %s", exc)
                self._wake()
            else:
                moved = self.position is None or position.safe != self.position.safe
                self.position, self.failure = position, None
                if moved:
                    self._wake()
            await asyncio.sleep(self.settings.poll_interval_s)  # a timer: nothing to await

    async def stop(self) -> None:
        await self._poller.stop()


class Pruner:
    """Deletes events past retention, a batch at a time, every PRUNE_INTERVAL_S. It sequences
    the inbox first: readers do as they read, and with none (no watcher, no relay) the inbox
    would otherwise only grow."""

    def __init__(self, database: Database, settings: EventsSettings) -> None:
        self._db = database
        self.settings = settings
        self._task = Background("order-events-pruner", self._run)
        self.start, self.stop = self._task.start, self._task.stop

    async def sequence(self) -> None:
        """Sequencer passes until one moves less than a full batch (at most SEQUENCE_PASSES)."""
        before = (await self._db.run(event_store.watermark)).safe
        for _ in range(SEQUENCE_PASSES):
            after = (await self._db.run(event_store.watermark)).safe
            if after - before < event_store.SEQUENCE_BATCH:
                return
            before = after

    async def prune(self) -> int:
        """One sweep; returns how many events went."""
        await self.sequence()
        total = 0
        while True:
            count = await self._db.run(lambda tx: event_store.prune(
                tx, self.settings.retention_s, behind_relay=bool(self.settings.nats_url),
                limit=PRUNE_BATCH))
            total += count
            if count < PRUNE_BATCH:
                return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_S * random.uniform(0.5, 1.0))  # a timer
            try:
                await self.prune()
            except Exception as exc:  # the database may be away; the next sweep retries
                log.warning("order events pruning failed: %s", exc)


class OrderEventServicer(order_events_pb2_grpc.OrderEventServiceServicer):
    def __init__(self, database: Database, settings: EventsSettings,
                 streams: WatchSettings) -> None:
        self._db = database
        self.settings = settings
        self.feed = EventFeed(database, settings)
        self.slots = StreamSlots("WatchOrderEvents", streams.max_streams,
                                 "SECKILL_WATCH_MAX_STREAMS", streams.max_lifetime_s)

    async def ListOrderEvents(self, request: order_events_pb2.ListOrderEventsRequest,
                              context: ServicerContext
                              ) -> order_events_pb2.ListOrderEventsResponse:
        if not self.settings.enabled:
            raise disabled()
        limit = page_size(request.page_size)
        filters = {"after_revision": request.after_revision}
        position = await self.feed.read()
        after = (decode_page_token(request.page_token, filters) if request.page_token
                 else start_after(request.after_revision, position))
        events = await self._read(after, position.safe, limit + 1)
        if len(events) <= limit:
            return order_events_pb2.ListOrderEventsResponse(events=events,
                                                            revision=position.safe)
        page = events[:limit]
        return order_events_pb2.ListOrderEventsResponse(
            events=page, revision=page[-1].revision,
            next_page_token=encode_page_token(page[-1].revision, filters))

    async def _read(self, after: int, through: int, limit: int
                    ) -> list[order_events_pb2.OrderEvent]:
        """Events in (after, through]; EVENTS_PRUNED when retention passed `after` first."""
        events, pruned_through = await self._db.run(
            lambda tx: event_store.read(tx, after, through, limit))
        if after < pruned_through:
            raise pruned(pruned_through)
        return events

    # grpc.aio serves a coroutine handler of a server stream too: it writes with context.write.
    async def WatchOrderEvents(self,  # type: ignore[override]
                               request: order_events_pb2.WatchOrderEventsRequest | Malformed,
                               context: ServicerContext) -> None:
        await serve_stream(lambda sent: self._stream(request, context, sent))

    async def _stream(self, request: order_events_pb2.WatchOrderEventsRequest | Malformed,
                      context: ServicerContext, sent: list[int]) -> Unavailable:
        if isinstance(request, Malformed):
            raise InvalidArgument([("request", request.why)])
        if not self.settings.enabled:
            raise disabled()
        with self.slots.slot() as lifetime:
            position = await self.feed.read()
            cursor = start_after(request.after_revision, position)
            return await self._serve(cursor, position, lifetime, context, sent)

    async def _serve(self, cursor: int, position: Position, lifetime: float,
                     context: ServicerContext, sent: list[int]) -> Unavailable:
        """The stream's messages after `cursor`, in its slot, until the feed fails or the
        stream's lifetime passes."""
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lifetime
        self.feed.join()
        try:
            last_write = float("-inf")
            while True:
                if self.feed.failure is not None:
                    return self.feed.failure
                if loop.time() >= ends_at:
                    return Unavailable(f"the stream reached its lifetime ({lifetime:.0f} s);"
                                       " call again after the last revision", retry_after_s=0.0)
                position = self.feed.position or position
                if cursor < position.safe:
                    events = await self._read(cursor, position.safe, STREAM_PAGE)
                    cursor = (events[-1].revision if len(events) == STREAM_PAGE
                              else position.safe)
                elif loop.time() < last_write + self.settings.progress_interval_s:
                    await self._wait(min(ends_at, last_write + self.settings.progress_interval_s))
                    continue
                else:
                    events = []  # a progress message: the revision reached, nothing new
                await context.write(order_events_pb2.WatchOrderEventsResponse(
                    events=events, revision=cursor,
                    read_time=to_timestamp(position.read_time)))
                sent[0] += 1
                last_write = loop.time()
        finally:
            self.feed.leave()

    async def _wait(self, wake_at: float) -> None:
        """Until the feed's watermark moves (or its read fails), or `wake_at`."""
        woken = self.feed.waiter()
        timer = asyncio.get_running_loop().call_at(wake_at, resolve, woken)
        try:
            await woken
        finally:
            timer.cancel()

    async def close(self) -> None:
        """Shutdown, before the server's grace: streams end with UNAVAILABLE (RetryInfo)."""
        self.feed.fail(Unavailable("the server is shutting down; call again"))
        await self.slots.drained()
        await self.feed.stop()
