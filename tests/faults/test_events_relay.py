"""The relay to NATS JetStream through a real nats-server (a private one on a free port): every
event published once per event id, JetStream away and back, and the relay SIGKILLed mid-sale
with a durable consumer (examples/events_consumer.py) holding every event exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from seckill.v1 import order_pb2

from order_svc.relay import BATCH, HEALTH_NAME, LEASE
from seckill_bench.suite.procfs import cpu_seconds
from seckill_common.database.db import Database, create_pool
from seckill_common.database.order_events import EventType, Outbox
from seckill_stack.nats import NatsServer
from seckill_stack.services import python_env
from tests.helpers.factories import buy, make_activity, make_product
from tests.helpers.flash_sale import (
    HEALTH_INTERVAL,
    NOT_SERVING,
    SERVING,
    health_becomes,
    report,
    running_services,
    start_flash_sale,
)
from tests.helpers.jetstream import Consumer, Event
from tests.helpers.polling import eventually
from tests.helpers.processes import start_processes
from tests.helpers.stack import (
    ADMIN,
    REPO,
    STORED_EVENTS,
    query,
    settings_for,
    start_stack,
)

# The cost test's writes: RATE_BATCH events every RATE_TICK_S (900 a second), RATE_TICKS times.
RATE_BATCH = 45
RATE_TICK_S = 0.05
RATE_TICKS = 200


async def stored_event_ids(db_url: str) -> list[str]:
    return [str(i) for (i, _, _) in await query(db_url, f"SELECT * FROM {STORED_EVENTS} e")]


async def relayed_through_newest(db_url: str) -> None:
    async def caught_up() -> bool:
        [(mark,)] = await query(db_url, "SELECT revision FROM order_event_marks"
                                " WHERE name = 'relayed'")
        [(newest,)] = await query(db_url, "SELECT MAX(revision) FROM order_events")
        [(waiting,)] = await query(db_url, "SELECT COUNT(*) FROM order_event_inbox")
        # Nothing sequenced yet (all still in the inbox): MAX is NULL, and not caught up.
        return not waiting and (newest is None or mark >= newest)
    await eventually(caught_up, "the relay's checkpoint reached the last event", timeout_s=60)


async def test_every_event_reaches_jetstream_and_waits_while_it_is_away(
        db_url: str, nats_server: NatsServer, tmp_path: Path) -> None:
    # The relay is on only with a NATS URL (the test's own server); it polls every 20 ms
    # rather than the shipped 100, so the sale's events reach the consumer within the test.
    stack = await start_stack(db_url, SECKILL_EVENTS_NATS_URL=nats_server.url,
                              SECKILL_EVENTS_POLL_INTERVAL_MS="20")
    consumer: Consumer | None = None
    try:
        await health_becomes(stack.order.address, SERVING, HEALTH_NAME)
        product = await make_product(stack, stock=20)
        activity = await make_activity(stack, product.id)
        orders = [await buy(stack, activity.id, f"u{i}") for i in range(4)]
        await stack.orders.PayOrder(order_pb2.PayOrderRequest(id=orders[0].id), metadata=ADMIN)
        await stack.orders.CancelOrder(order_pb2.CancelOrderRequest(id=orders[1].id),
                                       metadata=ADMIN)
        consumer = Consumer(nats_server.url, "tests")
        await consumer.holds(6)
        assert [e.event_id for e in consumer.events] == await stored_event_ids(db_url)
        assert [Event.Type.Name(e.type) for e in consumer.events] == [
            "CREATED"] * 4 + ["PAID", "CANCELLED"]
        assert consumer.events[4].order.state == order_pb2.PAID

        # Each message: its subject by type, Nats-Msg-Id = the event id.
        nc = await nats.connect(nats_server.url)
        message = await nc.jetstream().get_last_msg("ORDER_EVENTS", "seckill.orders.paid")
        assert message.headers is not None
        assert message.headers["Nats-Msg-Id"] == consumer.events[4].event_id
        await nc.close()

        # The example as its readers run it: a second run, even with a new durable consumer
        # (all messages again), handles nothing twice: it remembers the ids (--seen).
        seen = tmp_path / "seen.txt"
        for durable, expected in (("example-1", 6), ("example-2", 0)):
            run = await asyncio.create_subprocess_exec(
                sys.executable, str(REPO / "examples" / "events_consumer.py"), nats_server.url,
                "--durable", durable, "--seen", str(seen), "--idle", "1",
                env=python_env(dict(os.environ)), stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(run.communicate(), 60)
            assert run.returncode == 0 and len(out.decode().splitlines()) == expected, out

        # JetStream away: sales go on, the relay's health entry says so, events wait.
        await consumer.close()
        consumer = None
        await asyncio.to_thread(nats_server.stop)
        await health_becomes(stack.order.address, NOT_SERVING, HEALTH_NAME)
        late = [await buy(stack, activity.id, f"late{i}") for i in range(3)]
        assert all(order.id for order in late)
        await asyncio.to_thread(nats_server.start)
        await health_becomes(stack.order.address, SERVING, HEALTH_NAME)
        consumer = Consumer(nats_server.url, "tests")  # the same durable: resumes after 6
        await consumer.holds(3)
        assert [e.order.user_id for e in consumer.events] == ["late0", "late1", "late2"]
        assert consumer.repeats == 0
    finally:
        if consumer is not None:
            await consumer.close()
        await stack.stop()


async def test_relay_killed_five_times_and_nats_restarted_mid_sale_lose_and_repeat_nothing(
        db_url: str, nats_server: NatsServer, tmp_path: Path) -> None:
    """The order service (its relay) SIGKILLed five times and the NATS server restarted once
    while a sale runs: a de-duplicating durable consumer ends with every event exactly once."""
    # The relay on (the test's NATS), polling every 20 ms so that each kill lands mid-relay.
    async with running_services(db_url, tmp_path, SECKILL_EVENTS_NATS_URL=nats_server.url,
                                SECKILL_EVENTS_POLL_INTERVAL_MS="20") as services:
        # Few users at a time: the sale lasts across the five restarts.
        sale = await start_flash_sale(services.addrs, stock=1500, users=1600, concurrency=2)
        consumer = Consumer(nats_server.url, "faults")
        try:
            rush = asyncio.create_task(sale.rush())
            mid_sale = 0
            for kill in range(5):
                await sale.wait_sold(20 * (kill + 1))
                mid_sale += not rush.done()
                await services.stop("order", signal.SIGKILL)
                await services.start("order")
                if kill == 2:
                    await asyncio.to_thread(nats_server.stop)
                    await asyncio.to_thread(nats_server.start)
            await rush
            await sale.finish()
            summary = await sale.verify(db_url, set())
            stored = await stored_event_ids(db_url)
            assert len(stored) == summary["orders"]  # one CREATED each (1-3 units an order)
            await relayed_through_newest(db_url)
            await consumer.holds(len(stored))
            assert sorted(e.event_id for e in consumer.events) == sorted(stored)
            assert len(consumer.events) == len(set(consumer.seen)) == len(stored)
            report("relay SIGKILLed x5, NATS restarted", {
                **summary, "events": len(stored), "repeats_skipped": consumer.repeats,
                "kills_mid_sale": mid_sale})
            assert mid_sale == 5, "the sale ended before the relay was killed"
        finally:
            await consumer.close()
            await sale.close()


async def test_relay_costs_little_cpu_per_event_at_a_sales_rate(
        db_url: str, nats_server: NatsServer, tmp_path: Path) -> None:
    """The order process's CPU (utime + stime from /proc) per event relayed while events are
    written at a sale's rate (~900/s, in batches as a seckill batch writes them), with the
    shipped poll interval: the relay's whole cost, its idle polls included."""
    async with running_services(db_url, tmp_path,
                                SECKILL_EVENTS_NATS_URL=nats_server.url) as services:
        sale = await start_flash_sale(services.addrs, stock=RATE_BATCH, users=RATE_BATCH,
                                      concurrency=8, max_quantity=1)
        try:
            await sale.rush()
        finally:
            await sale.close()
        order_ids = [int(i) for (i,) in await query(db_url, "SELECT id FROM orders")]
        assert len(order_ids) == RATE_BATCH
        await relayed_through_newest(db_url)
        pid = services.running["order"].pid
        assert pid is not None
        database = Database(await create_pool(settings_for(db_url)))
        outbox = Outbox()
        tap = Tap()
        await tap.start(nats_server.url)
        try:
            [(base,)] = await query(db_url, "SELECT MAX(revision) FROM order_events")
            committed: list[float] = []  # when each tick's transaction had committed
            before = cpu_seconds([pid])
            loop = asyncio.get_running_loop()
            start = loop.time()
            for tick in range(RATE_TICKS):  # each tick one transaction of RATE_BATCH events
                await database.run(
                    lambda tx: outbox.record(tx, EventType.PAID, order_ids))
                committed.append(time.monotonic())
                await asyncio.sleep(max(0.0, start + (tick + 1) * RATE_TICK_S - loop.time()))
            await relayed_through_newest(db_url)
            used = cpu_seconds([pid]) - before
        finally:
            await database.close()
            await tap.close()
        events = RATE_TICKS * RATE_BATCH
        per_event_ms = used / events * 1000
        # Commit to delivery: each event's arrival at a plain subscriber against its
        # transaction's commit (the ticks ran one after another: in revision order, each
        # tick's RATE_BATCH events; AUTO_INCREMENT may leave gaps between them).
        revisions = [r for (r,) in await query(
            db_url, "SELECT revision FROM order_events WHERE revision > %s ORDER BY revision",
            (base,))]
        tick_of = {r: n // RATE_BATCH for n, r in enumerate(revisions)}
        lags = sorted(p.at - committed[tick_of[p.revision]]
                      for p in tap.seen if p.revision in tick_of)
        p99_ms = lags[int(len(lags) * 0.99)] * 1000
        report("relay CPU per event", {"events": events, "order_cpu_ms": round(used * 1000),
                                       "cpu_us_per_event": round(per_event_ms * 1000),
                                       "lag_p99_ms": round(p99_ms)})
        assert len(lags) >= events
        # Generous bounds against regressions on a shared machine (the targets: 0.05 ms and
        # a lag p99 of 250 ms; docs/EVENTS.md has the figures measured).
        assert per_event_ms <= 0.15, f"{per_event_ms:.3f} ms of CPU per event"
        assert p99_ms <= 2000, f"commit-to-delivery lag p99 {p99_ms:.0f} ms"


@dataclass
class Publish:
    """One message the relays published, as a plain subscriber saw it: which relay (its
    connection's reply inbox), when, and the event's revision and id."""

    relay: str
    at: float
    revision: int
    event_id: str


class Tap:
    """Every message published on seckill.orders.>, duplicates that JetStream drops included
    (a core subscription sees each publish), attributed to its relay by the reply inbox."""

    def __init__(self) -> None:
        self.seen: list[Publish] = []
        self._nc: NATS | None = None

    async def start(self, url: str) -> None:
        async def tapped(msg: Msg) -> None:
            event = Event.FromString(msg.data)
            relay = msg.reply.rsplit(".", 1)[0]
            self.seen.append(Publish(relay, time.monotonic(), event.revision, event.event_id))

        self._nc = await nats.connect(url)
        await self._nc.subscribe("seckill.orders.>", cb=tapped)
        await self._nc.flush()

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


async def relay_pid(db_url: str) -> int:
    """The pid of the process holding the relay's lease (its holder id: host:pid:random)."""
    async def held() -> bool:
        return bool(await query(db_url, "SELECT 1 FROM leases WHERE name = %s"
                                " AND expires > UTC_TIMESTAMP(6)", (LEASE,)))
    await eventually(held, "a relay holds the lease", timeout_s=30)
    [(holder,)] = await query(db_url, "SELECT holder FROM leases WHERE name = %s", (LEASE,))
    return int(str(holder).split(":")[1])


async def test_a_frozen_relay_is_replaced_within_5s_and_publishes_nothing_after_it_wakes(
        db_url: str, nats_server: NatsServer, tmp_path: Path) -> None:
    """Two order processes; the active relay's is frozen (SIGSTOP) mid-sale: the standby, in
    the other process, publishes within the lease's bound (3 s + a round trip, < 5 s). Woken
    (SIGCONT), the old one publishes at most the batch it had begun when it froze (events it
    had read before the freeze, which JetStream drops as repeats), then nothing; a durable
    consumer holds every event id exactly once."""
    relay = {"SECKILL_EVENTS_NATS_URL": nats_server.url, "SECKILL_EVENTS_POLL_INTERVAL_MS": "20"}
    async with running_services(db_url, tmp_path, **relay) as services, \
            start_processes("order", 1, db_url, tmp_path, name="order-standby",
                            settings=relay,
                            SECKILL_HEALTH_INTERVAL=HEALTH_INTERVAL
                            ) as extra:
        standby = extra[0]
        tap = Tap()
        await tap.start(nats_server.url)
        sale = await start_flash_sale(services.addrs, stock=1500, users=1600, concurrency=2)
        consumer = Consumer(nats_server.url, "freeze")
        frozen = 0
        try:
            rush = asyncio.create_task(sale.rush())
            await sale.wait_sold(50)
            frozen = await relay_pid(db_url)
            assert frozen in {standby.pid, services.running["order"].pid}

            async def tapped() -> bool:
                return bool(tap.seen)
            await eventually(tapped, "the relay publishes")
            (old_relay,) = {p.relay for p in tap.seen[-5:]}  # the active relay's inbox
            os.kill(frozen, signal.SIGSTOP)
            stopped_at = time.monotonic()
            # Nothing the frozen relay reads can be newer than this.
            [(newest_at_freeze,)] = await query(db_url, "SELECT MAX(revision) FROM order_events")

            def taken_over() -> list[Publish]:
                return [p for p in tap.seen if p.relay != old_relay and p.at > stopped_at]

            async def standby_publishes() -> bool:
                return bool(taken_over())
            await eventually(standby_publishes, "the standby publishes", timeout_s=15)
            takeover_s = taken_over()[0].at - stopped_at
            assert not rush.done(), "the sale ended before the takeover: nothing was tested"
            await asyncio.sleep(1.0)  # frozen a while longer: a timer by design
            os.kill(frozen, signal.SIGCONT)
            woke_at = time.monotonic()
            frozen = 0
            await rush
            await sale.finish()
            summary = await sale.verify(db_url, set())
            stored = await stored_event_ids(db_url)
            await relayed_through_newest(db_url)
            await consumer.holds(len(stored))
            await asyncio.sleep(1.0)  # late publishes of the woken relay would show by now
        finally:
            if frozen:
                os.kill(frozen, signal.SIGCONT)
            await consumer.close()
            await sale.close()
            await tap.close()
        assert takeover_s < 5.0, f"the standby published {takeover_s:.2f} s after the freeze"
        # The woken relay: at most one batch, all read before the freeze, then nothing.
        late = [p for p in tap.seen if p.relay == old_relay and p.at > stopped_at]
        assert all(p.revision <= newest_at_freeze for p in late), late[:3]
        assert len(late) <= BATCH
        assert not [p for p in late if p.at > woke_at + 0.5], "published long after waking"
        assert sorted(e.event_id for e in consumer.events) == sorted(stored)
        assert len(consumer.events) == len(consumer.seen) == len(stored)
        report("relay frozen (SIGSTOP) mid-sale, then woken", {
            **summary, "events": len(stored), "takeover_ms": round(takeover_s * 1000),
            "published_by_the_frozen_relay_after_its_freeze": len(late),
            "repeats_skipped": consumer.repeats})
