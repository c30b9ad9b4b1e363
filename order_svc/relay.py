"""The relay: order events to NATS JetStream, when SECKILL_EVENTS_NATS_URL is set.

Every order process runs one; the one that holds the lease (a named lock, GET_LOCK, on a
connection of its own: the server frees it when that connection ends, a SIGKILL included)
publishes, the others stand by and try again every STANDBY_S. The active relay creates its
stream when missing, then in a loop reads the events after its checkpoint up to the feed's
watermark (order_events.watermark: no event below it can commit later), publishes each
(serialized OrderEvent, subject seckill.orders.<type>, header Nats-Msg-Id = its event id, in
revision order on one connection), waits for JetStream's acknowledgements and only then moves
the checkpoint. A crash between the two republishes the batch: at least once, and JetStream
drops a repeated Nats-Msg-Id within its duplicate window (docs/EVENTS.md).

JetStream away: the relay's health entry turns NOT_SERVING, events wait in the table, sales go
on; the relay retries every RETRY_S and catches up when the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiomysql
import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from seckill.v1 import order_events_pb2

from seckill_common.config import Settings
from seckill_common.database import order_events
from seckill_common.database.db import Database, connect_kwargs
from seckill_common.runtime.background import Background
from seckill_common.runtime.server import HealthEntry
from seckill_common.runtime.telemetry import (
    EVENTS_RELAY_ACTIVE,
    EVENTS_RELAY_LAG,
    EVENTS_RELAYED,
)

log = logging.getLogger(__name__)

HEALTH_NAME = "seckill.events.relay"
LEASE = "seckill.events_relay"
SUBJECT_PREFIX = "seckill.orders"
STANDBY_S = 1.0
RETRY_S = 1.0
BATCH = 1000
ACK_TIMEOUT_S = 5.0
# JetStream drops a message whose Nats-Msg-Id it stored within this window (its default).
DUPLICATE_WINDOW_S = 120.0


def subject_of(event: order_events_pb2.OrderEvent) -> str:
    """seckill.orders.created, .paid, .cancelled, .expired."""
    return f"{SUBJECT_PREFIX}.{order_events_pb2.OrderEvent.Type.Name(event.type).lower()}"


class LeaseLost(RuntimeError):
    pass


class Relay:
    def __init__(self, database: Database, settings: Settings, health: HealthEntry) -> None:
        self._db = database
        self.settings = settings
        self.health = health
        self.active = False
        self._task = Background("order-events-relay", self._run)
        self.start, self.stop = self._task.start, self._task.stop

    async def _run(self) -> None:
        while True:
            try:
                await self._lead()
                await asyncio.sleep(STANDBY_S)  # a standby: the lease is held elsewhere
                continue
            except Exception as exc:  # JetStream or the database away: events wait
                log.warning("order events relay: %s", exc or type(exc).__name__)
                self.health.set(False)
            finally:
                self.active = False
                EVENTS_RELAY_ACTIVE.set(0)
            with contextlib.suppress(Exception):
                EVENTS_RELAY_LAG.set(await self._db.run(order_events.pending_age_s))
            await asyncio.sleep(RETRY_S)

    async def _lead(self) -> None:
        """Takes the lease and relays while it holds it; returns at once when another
        relay holds it."""
        lease = await aiomysql.connect(**connect_kwargs(self.settings))
        try:
            async with lease.cursor() as cur:
                await cur.execute("SELECT GET_LOCK(%s, 0)", (LEASE,))
                (taken,) = await cur.fetchone()
                if not taken:
                    self.health.set(True)  # standing by is healthy
                    return
                self.active = True
                EVENTS_RELAY_ACTIVE.set(1)
                nc = await nats.connect(self.settings.events.nats_url, allow_reconnect=False,
                                        connect_timeout=2)
                try:
                    js = nc.jetstream()
                    await self._ensure_stream(js)
                    self.health.set(True)
                    await self._relay(nc, js, cur)
                finally:
                    await nc.close()
        finally:
            lease.close()

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        name = self.settings.events.nats_stream
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=name, subjects=[f"{SUBJECT_PREFIX}.>"],
                                duplicate_window=DUPLICATE_WINDOW_S)
            log.info("created JetStream stream", extra={"stream": name})

    async def _relay(self, nc: NATS, js: JetStreamContext, lease: aiomysql.Cursor) -> None:
        checkpoint = await self._db.run(order_events.relayed)
        while True:
            if not nc.is_connected:  # noticed even while no event waits
                raise ConnectionError("lost the connection to NATS")
            await lease.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (LEASE,))
            (held,) = await lease.fetchone()
            if not held:
                raise LeaseLost("the relay's lease was lost")
            moved, full = await self.relay_once(js, checkpoint)
            if moved == checkpoint:
                EVENTS_RELAY_LAG.set(0)
            if not full:
                # Caught up: wait a poll interval. During a sale this gathers a batch per
                # interval, so the relay takes the watermark (which briefly holds the writers
                # back) a few times a second, not after every commit.
                await asyncio.sleep(self.settings.events.poll_interval_s)  # a timer
            checkpoint = moved

    async def relay_once(self, js: JetStreamContext, checkpoint: int) -> tuple[int, bool]:
        """Publishes the next batch after `checkpoint`; returns the new checkpoint, and whether
        the batch was full (more may be waiting)."""
        position = await self._db.run(order_events.watermark)
        events, _ = await self._db.run(
            lambda tx: order_events.read(tx, checkpoint, position.safe, BATCH))
        if not events:
            return checkpoint, False
        EVENTS_RELAY_LAG.set(max(0.0, (position.read_time - events[0].create_time.ToDatetime()
                                       ).total_seconds()))
        stream = self.settings.events.nats_stream
        acks = [await js.publish_async(subject_of(event), event.SerializeToString(),
                                       stream=stream, headers={"Nats-Msg-Id": event.event_id})
                for event in events]
        async with asyncio.timeout(ACK_TIMEOUT_S):
            await asyncio.gather(*acks)
        full = len(events) == BATCH
        moved = events[-1].revision if full else position.safe
        await self._db.run(lambda tx: order_events.set_relayed(tx, moved))
        EVENTS_RELAYED.inc(len(events))
        return moved, full
