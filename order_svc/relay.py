"""The relay: order events to NATS JetStream, when SECKILL_EVENTS_NATS_URL is set.

Every order process runs one; the one that holds the lease `seckill.events_relay`
(seckill_common.database.lease: a row with an expiry on the database's clock, renewed while
held) publishes, the others stand by and try again when it would expire (at most every
STANDBY_S). A holder that freezes or is cut off stops renewing, and a standby takes over within
the lease's time to live (SECKILL_EVENTS_RELAY_LEASE_MS) plus one round trip.

The active relay creates its stream when missing, then loops: a sequencer pass
(event_store.watermark: it gives revisions to what has committed since), then one database
round trip per batch (event_store.relay_batch): the checkpoint moved past what JetStream
acknowledged, fenced by the lease's epoch; the events after the checkpoint up to the
`sequenced` mark (no event below it can commit later). It publishes the batch in revision order
on one connection, every message with a reply subject of one inbox subscription (serialized
OrderEvent, subject seckill.orders.<type>, header Nats-Msg-Id = its event id), and awaits all
acknowledgements together. A crash between publishing and the next checkpoint republishes the
batch: at least once, and JetStream drops a repeated Nats-Msg-Id within its duplicate window
(docs/EVENTS.md).

Before it publishes, the lease must be held by the database's clock (the batch's round trip
reads its time left) and by the local monotonic clock (Lease.valid: a process that was stopped
finds it lapsed when it wakes), so a holder that lost the lease publishes at most the batch it
had begun writing when it froze.

JetStream away: the relay's health entry turns NOT_SERVING, events wait in the table, sales go
on; the relay retries every RETRY_S and catches up when the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge
from seckill.v1 import order_events_pb2

from order_svc import event_store
from seckill_common.config import Settings
from seckill_common.database import lease as leases
from seckill_common.database.db import Database
from seckill_common.database.lease import Lease, LeaseLost, LeaseTimes
from seckill_common.runtime.background import Background
from seckill_common.runtime.server import HealthEntry

log = logging.getLogger(__name__)

EVENTS_RELAYED = Counter("seckill_events_relayed",
                         "Order events JetStream acknowledged to this process's relay")
EVENTS_RELAY_LAG = Gauge(
    "seckill_events_relay_lag_seconds", "Age of the oldest order event the relay has not yet "
    "had acknowledged by JetStream (0: caught up), as the active relay last saw it")
EVENTS_RELAY_ACTIVE = Gauge("seckill_events_relay_active",
                            "1 while this process's relay holds the lease and publishes")

HEALTH_NAME = "seckill.events.relay"
LEASE = "seckill.events_relay"
SUBJECT_PREFIX = "seckill.orders"
STANDBY_S = 1.0  # a standby tries again at least this often
RETRY_S = 1.0
BATCH = 1000
ACK_TIMEOUT_S = 5.0
# The batch's round trip may wait for the gate as long as the writers' lock wait timeout.
READ_TIMEOUT_S = 10.0
# JetStream drops a message whose Nats-Msg-Id it stored within this window (its default).
DUPLICATE_WINDOW_S = 120.0
# Each event type's subject, built once: seckill.orders.created, .paid, .cancelled, .expired.
SUBJECTS = {value: f"{SUBJECT_PREFIX}.{name.lower()}"
            for name, value in order_events_pb2.OrderEvent.Type.items() if value}


def subject_of(event: order_events_pb2.OrderEvent) -> str:
    return SUBJECTS[event.type]


class PublishFailed(RuntimeError):
    """JetStream refused a message, or did not acknowledge the batch in time."""


class AckedPublisher:
    """Publishes batches to JetStream on a core NATS connection and awaits their
    acknowledgements together.

    nats-py's JetStream publish (and publish_async) makes a future, a token and a semaphore
    wait per message and parses each acknowledgement as JSON; here every message's reply subject
    is one wildcard inbox plus a sequence number, and an acknowledgement is matched by that
    number and judged by its first bytes (`{"stream":"<name>"`: stored, or a duplicate that
    JetStream dropped; anything else, an error or "no responders", fails the batch).
    """

    def __init__(self, nc: NATS, stream: str) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._stored = f'{{"stream":"{stream}"'.encode()
        self._next = 0  # the sequence number of the next message
        self._first = 0  # the current batch's first sequence number
        self._acked: bytearray = bytearray()  # the current batch's, one flag per message
        self._waiting = 0
        self._done: asyncio.Future[None] | None = None

    async def start(self) -> None:
        await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        done = self._done
        if done is None or done.done():
            return  # a late reply to a batch given up on
        try:
            index = int(msg.subject[len(self._prefix):]) - self._first
        except ValueError:
            return
        if not 0 <= index < len(self._acked) or self._acked[index]:
            return
        if not msg.data.startswith(self._stored):
            status = msg.headers.get("Status", "") if msg.headers else ""
            done.set_exception(PublishFailed(
                f"JetStream refused an event: {msg.data[:200]!r} {status}".strip()))
            return
        self._acked[index] = 1
        self._waiting -= 1
        if not self._waiting:
            done.set_result(None)

    async def publish(self, messages: list[tuple[str, bytes, dict[str, str]]],
                      timeout_s: float) -> None:
        """Publishes (subject, payload, headers) in order; returns once JetStream acknowledged
        every one, raises PublishFailed otherwise."""
        loop = asyncio.get_running_loop()
        self._first, self._acked = self._next, bytearray(len(messages))
        self._waiting = len(messages)
        self._done = done = loop.create_future()
        prefix, publish = self._prefix, self._nc.publish
        for n, (subject, payload, headers) in enumerate(messages, self._first):
            await publish(subject, payload, reply=prefix + str(n), headers=headers)
        self._next = self._first + len(messages)
        try:
            async with asyncio.timeout(timeout_s):
                await done
        except TimeoutError:
            raise PublishFailed(f"{self._waiting} of {len(messages)} events not acknowledged"
                                f" within {timeout_s:g} s") from None
        finally:
            if not done.done():
                done.cancel()


class Relay:
    def __init__(self, database: Database, settings: Settings, health: HealthEntry) -> None:
        self._db = database
        self.settings = settings
        self.health = health
        self.active = False
        self.holder = leases.holder_id()
        self.times = LeaseTimes(settings.events.relay_lease_s)
        self._task = Background("order-events-relay", self._run)
        self.start, self.stop = self._task.start, self._task.stop

    async def _run(self) -> None:
        while True:
            try:
                wait = await self._lead()
                self.health.set(True)  # standing by is healthy
                await asyncio.sleep(wait)  # the lease is held elsewhere until then
                continue
            except Exception as exc:  # JetStream or the database away, the lease lost
                log.warning("order events relay: %s", exc or type(exc).__name__)
                self.health.set(isinstance(exc, LeaseLost))
            finally:
                self.active = False
                EVENTS_RELAY_ACTIVE.set(0)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(READ_TIMEOUT_S):
                    EVENTS_RELAY_LAG.set(await self._db.run(event_store.pending_age_s))
            await asyncio.sleep(RETRY_S)

    async def _lead(self) -> float:
        """Takes the lease and relays while it holds it; when another relay holds it, returns
        how long to stand by (until that lease would expire, at most STANDBY_S)."""
        taken = await leases.acquire(self._db, LEASE, self.holder, self.times)
        if not isinstance(taken, Lease):
            return min(STANDBY_S, taken + 0.01)
        lease = taken
        self.active = True
        EVENTS_RELAY_ACTIVE.set(1)
        keeper = asyncio.create_task(lease.keep(), name="order-events-relay-lease")
        try:
            nc = await nats.connect(self.settings.events.nats_url, allow_reconnect=False,
                                    connect_timeout=2, skip_subject_validation=True)
            try:
                js = nc.jetstream()
                await self._ensure_stream(js)
                publisher = AckedPublisher(nc, self.settings.events.nats_stream)
                await publisher.start()
                self.health.set(True)
                relaying = asyncio.create_task(self._relay(nc, publisher, lease))
                try:
                    # Whichever ends first: the relay on an error, or the lease lost while
                    # the relay waits (for acknowledgements, a poll interval).
                    await asyncio.wait({relaying, keeper}, return_when=asyncio.FIRST_COMPLETED)
                finally:  # the lease lost, or this task cancelled (stopping)
                    if not relaying.done():
                        relaying.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await relaying
                if relaying.cancelled():  # the keeper returns only once the lease is lost
                    raise LeaseLost(f"the relay's lease (epoch {lease.epoch}) was lost")
                relaying.result()
            finally:
                with contextlib.suppress(Exception):  # its flush is bounded here too
                    async with asyncio.timeout(ACK_TIMEOUT_S):
                        await nc.close()
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if lease.valid():  # stopping, or JetStream away: let a standby take over now
                await lease.release()
        raise AssertionError("unreachable: the relay returns only by raising")

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        name = self.settings.events.nats_stream
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=name, subjects=[f"{SUBJECT_PREFIX}.>"],
                                duplicate_window=DUPLICATE_WINDOW_S)
            log.info("created JetStream stream", extra={"stream": name})

    async def _relay(self, nc: NATS, publisher: AckedPublisher, lease: Lease) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            acked = recorded = await self._db.run(event_store.relayed)
        idle = False
        while True:
            if not nc.is_connected:  # noticed even while no event waits
                raise ConnectionError("lost the connection to NATS")
            if idle and acked == recorded and await self.nothing_new(acked):
                # Between sales a poll is one lockless read, not a sequencer pass and a batch.
                EVENTS_RELAY_LAG.set(0.0)
                await asyncio.sleep(self.settings.events.poll_interval_s)  # a timer
                continue
            recorded = acked  # relay_once records it as the checkpoint
            acked, full = await self.relay_once(publisher, lease, acked)
            idle = acked == recorded
            if not full:
                # Caught up: wait a poll interval. During a sale this gathers a batch per
                # interval, so the relay sequences and reads a few times a second, not after
                # every commit.
                await asyncio.sleep(self.settings.events.poll_interval_s)  # a timer

    async def nothing_new(self, acked: int) -> bool:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await self._db.run(lambda tx: event_store.nothing_after(tx, acked))

    async def relay_once(self, publisher: AckedPublisher, lease: Lease, acked: int
                         ) -> tuple[int, bool]:
        """Records `acked` as the checkpoint and publishes the next batch after it; returns
        the revision JetStream has now acknowledged through, and whether the batch was full
        (more may be waiting)."""
        lease.check()
        async with asyncio.timeout(READ_TIMEOUT_S):
            await self._db.run(event_store.watermark)
            batch = await self._db.run(lambda tx: event_store.relay_batch(
                tx, lease.fence, acked, acked, BATCH))
        if batch.lease_left_s is None or batch.lease_left_s < self.times.margin_s:
            lease.lost.set()
            raise LeaseLost(f"the relay's lease (epoch {lease.epoch}) is no longer held by"
                            " the database's clock")
        EVENTS_RELAY_LAG.set(batch.waited_s)
        if not batch.count:
            return max(acked, batch.position.safe), False
        events = event_store.events_of_batch(batch.text)
        if len(events) != batch.count:  # never: the text's limit is far above a batch's size
            raise RuntimeError(f"read {len(events)} of a batch of {batch.count} events")
        messages = [(SUBJECTS[event.type], event.SerializeToString(),
                     {"Nats-Msg-Id": event.event_id}) for event in events]
        lease.check()  # the last moment: a freeze during the read or the encoding shows here
        await publisher.publish(messages, ACK_TIMEOUT_S)
        EVENTS_RELAYED.inc(len(events))
        full = len(events) == BATCH
        return (events[-1].revision if full else batch.position.safe), full
