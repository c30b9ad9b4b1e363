"""Randomized fault schedules (tests/helpers/chaos.py): a seed gives the faults, a sale runs
under them with every call recorded, and one checker judges the history and the final state.

`make test` runs three fixed seeds; `make chaos` many (SECKILL_CHAOS_SEEDS of them from
SECKILL_CHAOS_FIRST_SEED). A failure prints the seed and its schedule; the same seed gives
the same schedule (the calls' timing, and so their outcomes, vary with the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from seckill.v1 import order_pb2

from seckill_stack.nats import NatsServer
from tests.helpers import chaos, chaos_checker, chaos_load
from tests.helpers.jetstream import Consumer
from tests.helpers.polling import eventually
from tests.helpers.stack import create_database, query

pytestmark = pytest.mark.slow

FIXED_SEEDS = (1, 2, 4)  # between them every kind of fault (asserted below)
SETTLE_S = 30.0  # after the sale: expiries done, the relay caught up


def seeds() -> list[int]:
    count = os.environ.get("SECKILL_CHAOS_SEEDS")
    if not count:
        return list(FIXED_SEEDS)
    first = int(os.environ.get("SECKILL_CHAOS_FIRST_SEED", "1"))
    return list(range(first, first + int(count)))


def test_fixed_seeds_cover_every_fault() -> None:
    kinds = {f.kind for seed in FIXED_SEEDS for f in chaos.schedule(seed)}
    assert kinds == set(chaos.KINDS)
    assert chaos.schedule(7) == chaos.schedule(7)  # a seed reproduces its schedule


@pytest.mark.parametrize("seed", seeds(), ids=lambda s: f"seed{s}")
async def test_chaos_schedule(seed: int, nats_server: NatsServer, tmp_path: Path) -> None:
    history = chaos.History(seed, chaos.schedule(seed), units_added=chaos.STOCK)
    print(f"\n[chaos] {history.describe()}")
    stack = chaos.Stack(tmp_path, nats_server.url)
    await asyncio.to_thread(stack.db.install)
    await asyncio.to_thread(stack.db.start)
    consumer: Consumer | None = None
    load: chaos_load.Load | None = None
    try:
        db_url = await create_database(stack.db.url_base)
        await stack.start(db_url.rsplit("/", 1)[1])
        product_id, activity_id = await chaos.create_sale(stack.addrs, chaos.STOCK)
        consumer = Consumer(nats_server.url, "chaos")
        load = chaos_load.Load(stack.addrs, activity_id, history)
        sale_over = asyncio.Event()
        running = asyncio.create_task(load.run(sale_over))
        began = history.began = time.monotonic()
        try:
            for fault in history.faults:
                # The schedule's time, but never sooner than its gap after the previous heal
                # and the first definite Seckill answer after it (or the resumption bound).
                if history.heals:
                    await load.resumed(history.heals[-1].healed)
                    start = max(began + fault.at, history.heals[-1].healed + fault.gap)
                else:
                    start = began + fault.at
                await asyncio.sleep(max(0.0, start - time.monotonic()))
                await chaos.inject(stack, fault, history.heals)
            if history.heals:
                await load.resumed(history.heals[-1].healed)
            await asyncio.sleep(max(0.0, began + chaos.SALE_S - time.monotonic()))
        finally:
            history.ended = time.monotonic()
            sale_over.set()
            async with asyncio.timeout(chaos.PAYMENT_WINDOW_S + 20):
                await running

        # Settled: every unpaid order expired, every event sequenced and relayed.
        async def settled() -> bool:
            [(pending,)] = await query(stack.db_url, "SELECT COUNT(*) FROM orders"
                                       " WHERE state = 1")
            [(mark,)] = await query(stack.db_url, "SELECT revision FROM order_event_marks"
                                    " WHERE name = 'relayed'")
            [(newest,)] = await query(stack.db_url, "SELECT MAX(revision) FROM order_events")
            [(waiting,)] = await query(stack.db_url, "SELECT COUNT(*) FROM order_event_inbox")
            return bool(not pending and not waiting and mark >= (newest or 0))
        await eventually(settled, "expiries done and the relay caught up",
                         timeout_s=SETTLE_S, every_s=0.2)
        [(events,)] = await query(stack.db_url, "SELECT COUNT(*) FROM order_events")
        with contextlib.suppress(AssertionError):  # judged by the checker, with the rest
            await consumer.holds(int(events))
        final = await chaos.final_state(stack, history, product_id, activity_id,
                                        [e.event_id for e in consumer.events])
        violations = chaos_checker.check(history, final)
        resumed, cut = chaos_checker.resume_times(history)
        print(f"[chaos] seed {seed}: {len(history.calls)} calls "
              f"{dict(Counter((c.rpc, c.code) for c in history.calls))}; "
              f"{len(final.orders)} orders, {len(final.feed)} events, "
              f"{consumer.repeats} JetStream repeats skipped; "
              f"resumed after heals in max {max(resumed, default=0):.2f}s"
              f" ({len(resumed)} heals, {cut} windows cut short); "
              f"{len(violations)} violations")
        assert not violations, f"{history.describe()}\n" + "\n".join(violations[:30])
    except BaseException:
        print(f"[chaos] FAILED {history.describe()}\nhistory: {tmp_path / 'history.jsonl'}")
        for crash in chaos.database_crashes(stack):
            print(f"[chaos] seed {seed}: the database crashed: {crash}")
        raise
    finally:
        history.dump(tmp_path / "history.jsonl")
        if consumer is not None:
            await consumer.close()
        if load is not None:
            await load.close()
        await stack.stop()
        await asyncio.to_thread(stack.db.stop)


def test_checker_names_each_broken_promise() -> None:
    """The checker over a small made-up history: clean, then with one promise broken at a
    time."""
    def call(rpc: str, user: str, order_id: int, code: str = "OK", took: float = 0.1,
             at: float = 1.0) -> chaos.Call:
        return chaos.Call(rpc, user, at, at + took, code, "", order_id, 2,
                          chaos.CALL_DEADLINE_S)

    def event(n: int, order_id: int, kind: str) -> chaos.Event:
        return chaos.Event(revision=n, event_id=f"e{n}", type=chaos.Event.Type.Value(kind),
                           order=order_pb2.Order(id=order_id))

    history = chaos.History(0, [], [call("Seckill", "a", 1), call("Seckill", "b", 2),
                                    call("PayOrder", "a", 1)], units_added=10)
    feed = [event(1, 1, "CREATED"), event(2, 2, "CREATED"), event(3, 1, "PAID")]
    ids = [e.event_id for e in feed]
    clean = chaos.Final(6, {1: ("a", 2, chaos.PAID), 2: ("b", 2, chaos.PENDING)}, ids, feed,
                        ids, 3)
    assert chaos_checker.check(history, clean) == []
    broken = {
        "oversold": replace(clean, stock=-1),
        "unbalanced": replace(clean, stock=5),
        "lost": replace(clean, orders={1: clean.orders[1]}),
        "holds 2 active": replace(clean, orders={**clean.orders, 3: ("a", 2, chaos.PENDING)},
                                     stock=4),
        "events twice": replace(clean, feed=[*feed, feed[0]]),
        "last event CREATED but state": replace(clean, feed=feed[:2], stored_event_ids=ids[:2],
                                                consumed_ids=ids[:2], stream_messages=2),
        "order 2: events ('CREATED', 'CREATED')": replace(
            clean, feed=[*feed, event(4, 2, "CREATED")], stored_event_ids=[*ids, "e4"],
            consumed_ids=[*ids, "e4"], stream_messages=4),
        "JetStream consumer": replace(clean, consumed_ids=ids[:2]),
        "JetStream stream": replace(clean, stream_messages=4),
        "database crashed": replace(clean, crashes=["mariadbd got signal 11"]),
    }
    for what, final in broken.items():
        assert any(what in v for v in chaos_checker.check(history, final)), what
    odd = replace(history, calls=[*history.calls, call("Seckill", "e", 0, "FAILED_PRECONDITION")])
    assert any("outside the documented set" in v for v in chaos_checker.check(odd, clean))
    late = replace(history, calls=[*history.calls, call("Seckill", "c", 0, "UNAVAILABLE", 3.0)])
    assert any("after its deadline" in v for v in chaos_checker.check(late, clean))
    heal = chaos.Heal(chaos.Fault(1.0, "pause_db", "db", 1.0, 1.0), 1.0, 2.0)
    stalled = replace(history, heals=[heal], ended=20.0,
                      calls=[*history.calls, call("Seckill", "d", 0, "UNAVAILABLE", at=3.0)])
    assert any("not resumed" in v for v in chaos_checker.check(stalled, clean))
