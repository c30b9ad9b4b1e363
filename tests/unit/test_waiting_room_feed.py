"""A waiting room's feed and mover over a stand-in database (activity_svc/queue.py,
activity_svc/queue_mover.py): a slow read of the line does not end its streams; a line
unreadable for unreadable_s ends them with RetryInfo delays spread over a window, so their
rejoins do not arrive together; a draw handed out in chunks reaches every waiting buyer's
ticket with a few statements per chunk; an idle mover (no sale with a waiting room open) looks for
lines once a second, and at the move interval again as soon as one is open."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from seckill.v1 import activity_pb2

from activity_svc import queue_repository
from activity_svc.passes import Passes
from activity_svc.queue import (
    FRESHNESS_BOUND_S,
    REJOIN_MIN_S,
    REJOIN_WINDOW_MIN_S,
    QueueHub,
    _Buyer,
)
from activity_svc.queue_mover import IDLE_INTERVAL_S, QueueMover
from activity_svc.queue_repository import Entry, EntryState, LineRow, Lines
from seckill_common.api.errors import StatementTimeout, Unavailable
from seckill_common.config import QueueSettings
from tests.helpers.polling import eventually

ACTIVITY = 7
NOW = dt.datetime(2030, 1, 1, 12, 0, 0)


class StandInDatabase:
    """What the feed and the mover use of Database: `run` and the client's bound."""

    bound_s = 11.0

    async def run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        return await work(None)


class Context:
    def __init__(self) -> None:
        self.messages: list[activity_pb2.QueueUpdate] = []
        self.told = asyncio.Event()

    async def write(self, message: activity_pb2.QueueUpdate) -> None:
        self.messages.append(message)
        self.told.set()


def line(admitted_through: int) -> LineRow:
    return LineRow(ACTIVITY, True, NOW - dt.timedelta(minutes=1), NOW + dt.timedelta(hours=1),
                   units_left=100, last_ticket=200, admitted_through=admitted_through,
                   ticket_round=1, admit_expire_time=NOW + dt.timedelta(minutes=2), rate=0.0,
                   read_time=NOW)


class Reads:
    """The line's reads: answered at once, after a delay, or failing."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.failing = False
        self.admitted_through = 0
        self.count = 0

    async def __call__(self, tx: Any, ids: list[int]) -> dict[int, LineRow]:
        self.count += 1
        if self.failing:
            raise StatementTimeout()
        await asyncio.sleep(self.delay_s)
        return {ACTIVITY: line(self.admitted_through)}


def streams(hub: QueueHub, buyers: int) -> tuple[list[Context], list[asyncio.Task[Any]]]:
    contexts = [Context() for _ in range(buyers)]
    tasks = [asyncio.create_task(hub._wait(
        ACTIVITY, _Buyer(f"u{i}", ticket=10 + i, pre_queued=False), 0.1, 600.0,
        contexts[i], [0])) for i in range(buyers)]  # type: ignore[arg-type]
    return contexts, tasks


async def all_told(contexts: list[Context]) -> None:
    async with asyncio.timeout(10):
        await asyncio.gather(*(c.told.wait() for c in contexts))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    reads = Reads()
    monkeypatch.setattr(queue_repository, "read_lines", reads)
    return reads


def hub_over_stand_in() -> QueueHub:
    return QueueHub(StandInDatabase(), QueueSettings(),  # type: ignore[arg-type]
                    Passes("tests"))


async def test_a_slow_read_of_the_line_does_not_end_its_streams(reads: Reads) -> None:
    hub = hub_over_stand_in()
    assert hub.unreadable_s >= StandInDatabase.bound_s  # longer than one bounded read
    contexts, tasks = streams(hub, 20)
    try:
        await all_told(contexts)
        assert {c.messages[0].state for c in contexts} == {activity_pb2.WAITING}
        # Reads now take well over the freshness bound: the streams stay open, waiting.
        reads.delay_s = 2.5 * FRESHNESS_BOUND_S
        await asyncio.sleep(3 * FRESHNESS_BOUND_S)
        assert not any(task.done() for task in tasks)
        # The database answers in time again, and the line has moved: everyone is admitted.
        reads.delay_s = 0.0
        reads.admitted_through = 100
        async with asyncio.timeout(10):
            ended = await asyncio.gather(*tasks)
        assert ended == [None] * len(tasks)
        assert {c.messages[-1].state for c in contexts} == {activity_pb2.ADMITTED}
    finally:
        for task in tasks:
            task.cancel()
        await hub.close()


async def test_a_long_outage_ends_the_streams_with_spread_retry_delays(reads: Reads) -> None:
    hub = hub_over_stand_in()
    hub.unreadable_s = 1.5  # shipped: over 11 s; the rule, not the length, is tested here
    buyers = 200
    contexts, tasks = streams(hub, buyers)
    try:
        await all_told(contexts)
        loop = asyncio.get_running_loop()
        reads.failing = True
        failed_at = loop.time()
        await asyncio.sleep(FRESHNESS_BOUND_S)  # past the freshness bound: still open
        assert not any(task.done() for task in tasks)
        before = reads.count
        async with asyncio.timeout(10):
            ended = await asyncio.gather(*tasks)
        assert reads.count > before  # it kept reading meanwhile
        assert loop.time() - failed_at >= hub.unreadable_s - 0.5
    finally:
        for task in tasks:
            task.cancel()
        await hub.close()
    assert all(isinstance(error, Unavailable) for error in ended)
    delays = [error.retry_after_s for error in ended]
    # Drawn over the window (at least REJOIN_WINDOW_MIN_S wide): not one instant for all.
    assert all(REJOIN_MIN_S <= d <= REJOIN_MIN_S + REJOIN_WINDOW_MIN_S for d in delays)
    assert len(set(delays)) > buyers // 2
    assert max(delays) - min(delays) > REJOIN_WINDOW_MIN_S / 2
    assert sum(d < REJOIN_MIN_S + REJOIN_WINDOW_MIN_S / 2 for d in delays) < buyers * 3 // 4


async def test_a_draw_in_chunks_reaches_every_waiting_buyer_at_a_few_statements_a_chunk(
        reads: Reads, monkeypatch: pytest.MonkeyPatch) -> None:
    buyers, chunk = 3000, 1000
    draw = list(range(1, buyers + 1))
    random.shuffle(draw)
    ticket_of = {f"u{i}": draw[i] for i in range(buyers)}
    ticket_of[f"u{buyers}"] = buyers + 1  # an arrival after the start, who joins later
    handed = {"last": 0, "round": 0}
    statements = {"by_user": 0, "by_range": 0}

    async def read_lines(tx: Any, ids: list[int]) -> dict[int, LineRow]:
        row = line(0)
        return {ACTIVITY: dataclasses.replace(row, last_ticket=handed["last"],
                                              ticket_round=handed["round"])}

    async def entries_of(tx: Any, activity_id: int, user_ids: list[str]) -> dict[str, Entry]:
        statements["by_user"] += 1
        return {u: Entry(u, ticket_of[u] if ticket_of[u] <= handed["last"] else None, True,
                         EntryState.WAITING, None) for u in user_ids}

    async def tickets_between(tx: Any, activity_id: int, after: int,
                              through: int) -> dict[str, int]:
        statements["by_range"] += 1
        return {u: t for u, t in ticket_of.items() if after < t <= through}

    monkeypatch.setattr(queue_repository, "read_lines", read_lines)
    monkeypatch.setattr(queue_repository, "entries_of", entries_of)
    monkeypatch.setattr(queue_repository, "tickets_between", tickets_between)
    hub = hub_over_stand_in()
    contexts = [Context() for _ in range(buyers + 1)]
    tasks = [asyncio.create_task(hub._wait(
        ACTIVITY, _Buyer(f"u{i}", ticket=None, pre_queued=True), 0.1, 600.0,
        contexts[i], [0])) for i in range(buyers)]  # type: ignore[arg-type]

    def known() -> dict[str, int | None]:
        return {b.user_id: b.ticket for b in hub._lines[ACTIVITY].buyers}

    try:
        await all_told(contexts[:buyers])
        assert {c.messages[0].state for c in contexts[:buyers]} == {activity_pb2.PRE_QUEUED}
        for step in range(1, buyers // chunk + 1):
            before = dict(statements)
            handed["last"], handed["round"] = step * chunk, step
            if step == 2:  # a late arrival's stream, ticketed with the last chunk
                tasks.append(asyncio.create_task(hub._wait(
                    ACTIVITY, _Buyer(f"u{buyers}", ticket=None, pre_queued=False), 0.1,
                    600.0, contexts[buyers], [0])))  # type: ignore[arg-type]

            async def learned(last: int = step * chunk) -> bool:
                return sum(t is not None for t in known().values()) == last
            await eventually(learned, f"the tickets up to {step * chunk} learned")
            spent = {k: statements[k] - before[k] for k in statements}
            # The first chunk: everyone looked up by user (one statement per 1,000); then
            # the chunk's tickets by range, plus the late arrival's own look-up.
            assert sum(spent.values()) <= (buyers // 1000 if step == 1 else 2), (step, spent)
        handed["last"], handed["round"] = buyers + 1, buyers // chunk + 1

        async def all_ticketed() -> bool:
            return None not in known().values()
        await eventually(all_ticketed, "the late arrival's ticket learned")
        assert known() == ticket_of
        assert all(c.messages[-1].position == ticket_of[f"u{i}"]
                   for i, c in enumerate(contexts[:buyers]) if c.messages[-1].position)
    finally:
        for task in tasks:
            task.cancel()
        await hub.close()


class StandInLease:
    fence = None

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def valid(self) -> bool:
        return not self.lost.is_set()

    def check(self) -> None:
        pass

    async def keep(self) -> None:
        await asyncio.Event().wait()


async def test_an_idle_mover_looks_for_lines_once_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rooms = {"open": False}
    polls: list[float] = []
    loop = asyncio.get_running_loop()

    async def lines_to_move(tx: Any) -> Lines:
        polls.append(loop.time())
        return Lines([], rooms_open=rooms["open"])

    monkeypatch.setattr(queue_repository, "lines_to_move", lines_to_move)
    mover = QueueMover(StandInDatabase(), QueueSettings())  # type: ignore[arg-type]
    assert mover.settings.move_interval_s < IDLE_INTERVAL_S
    lease = StandInLease()
    task = asyncio.create_task(mover._lead(lease))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(1.5 * IDLE_INTERVAL_S)
        assert 1 <= len(polls) <= 2  # no sale with a waiting room: once a second
        rooms["open"] = True  # one is created: back to the move interval within a second
        opened = loop.time()
        await asyncio.sleep(IDLE_INTERVAL_S + 0.5)
        after = [t for t in polls if t > opened + IDLE_INTERVAL_S]
        assert len(after) >= 0.5 / mover.settings.move_interval_s / 2
    finally:
        lease.lost.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
