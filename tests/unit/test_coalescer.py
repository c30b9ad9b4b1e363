"""Coalescer alone (no database): which items share a run, when runs start, what each caller
gets, and what happens when callers leave."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from seckill_common.concurrency.coalescer import Coalescer, Waiter


class Work:
    """A run that records its batches and is held open until the test releases it."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = 0
        self.abandoned = asyncio.Event()

    async def run(self, key: str, batch: list[Waiter[int, str]]
                  ) -> Sequence[str | BaseException]:
        self.batches.append((key, [w.item for w in batch]))
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.abandoned.set()
            raise
        return [ValueError(w.item) if w.item < 0 else f"{key}:{w.item}" for w in batch]


async def test_an_idle_key_runs_at_once_and_arrivals_meanwhile_share_the_next_run() -> None:
    work = Work()
    batches = Coalescer(work.run, window_s=0.0, max_size=100)
    first = batches.submit("p", 1)
    await work.started.wait()  # the first item ran alone, without waiting for company
    later = [batches.submit("p", i) for i in (2, 3, 4)]
    work.release.set()
    assert await asyncio.gather(first, *later) == ["p:1", "p:2", "p:3", "p:4"]
    assert work.batches == [("p", [1]), ("p", [2, 3, 4])]


async def test_a_batch_holds_at_most_max_size_items_in_arrival_order() -> None:
    work = Work()
    work.release.set()
    batches = Coalescer(work.run, window_s=0.0, max_size=3)
    results = await asyncio.gather(*(batches.submit("p", i) for i in range(7)))
    assert results == [f"p:{i}" for i in range(7)]
    assert work.batches == [("p", [0, 1, 2]), ("p", [3, 4, 5]), ("p", [6])]


async def test_the_window_gathers_arrivals_after_a_run_and_a_full_batch_ends_it_early() -> None:
    work = Work()
    work.release.set()
    # A window no test waits out: only a full batch can end the gathering in time.
    batches = Coalescer(work.run, window_s=60.0, max_size=3)
    assert await batches.submit("p", 0) == "p:0"
    full = [batches.submit("p", i) for i in (1, 2, 3)]
    assert await asyncio.wait_for(asyncio.gather(*full), 5) == ["p:1", "p:2", "p:3"]
    assert work.batches == [("p", [0]), ("p", [1, 2, 3])]
    await batches.close()  # its committer would gather for the rest of the window


async def test_keys_are_batched_apart() -> None:
    work = Work()
    work.release.set()
    batches = Coalescer(work.run, window_s=0.0, max_size=10)
    results = await asyncio.gather(batches.submit("a", 1), batches.submit("b", 2),
                                   batches.submit("a", 3))
    assert list(results) == ["a:1", "b:2", "a:3"]
    assert sorted(work.batches) == [("a", [1, 3]), ("b", [2])]


async def test_an_exception_as_a_result_is_its_callers_alone() -> None:
    work = Work()
    work.release.set()
    batches = Coalescer(work.run, window_s=0.0, max_size=10)
    results = await asyncio.gather(batches.submit("p", 1), batches.submit("p", -1),
                                   batches.submit("p", 2), return_exceptions=True)
    assert results[0] == "p:1" and results[2] == "p:2"
    assert isinstance(results[1], ValueError)


async def test_a_run_that_raises_fails_every_caller_of_its_batch_only() -> None:
    calls = 0

    async def run(key: str, batch: list[Waiter[int, str]]) -> list[str | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the database went away")
        return [f"{key}:{w.item}" for w in batch]

    batches = Coalescer(run, window_s=0.0, max_size=10)
    failed = await asyncio.gather(batches.submit("p", 1), batches.submit("p", 2),
                                  return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in failed)
    assert await batches.submit("p", 3) == "p:3"  # the next batch runs as usual


async def test_a_caller_that_left_is_skipped_by_batches_not_yet_started() -> None:
    work = Work()
    batches = Coalescer(work.run, window_s=0.0, max_size=10)
    first = batches.submit("p", 1)
    await work.started.wait()
    gone = batches.submit("p", 2)
    stays = batches.submit("p", 3)
    gone.cancel()
    work.release.set()
    assert list(await asyncio.gather(first, stays)) == ["p:1", "p:3"]
    assert work.batches == [("p", [1]), ("p", [3])]


async def test_a_batch_all_of_whose_callers_left_is_cancelled_and_the_next_runs() -> None:
    work = Work()
    batches = Coalescer(work.run, window_s=0.0, max_size=10)
    left = [batches.submit("p", i) for i in (1, 2)]
    await work.started.wait()
    left[0].cancel()
    assert work.cancelled == 0  # one caller still waits for the run
    left[1].cancel()
    await asyncio.wait_for(work.abandoned.wait(), 5)
    assert work.cancelled == 1
    work.release.set()
    assert await batches.submit("p", 3) == "p:3"


async def test_each_waiter_carries_the_context_captured_at_submit() -> None:
    seen: list[object] = []
    current = "ctx-a"

    async def run(key: str, batch: list[Waiter[int, str]]) -> list[str | BaseException]:
        seen.extend(w.context for w in batch)
        return [str(w.item) for w in batch]

    batches = Coalescer(run, window_s=0.0, max_size=10, context=lambda: current)
    a = batches.submit("p", 1)
    current = "ctx-b"
    b = batches.submit("p", 2)
    assert list(await asyncio.gather(a, b)) == ["1", "2"]
    assert seen == ["ctx-a", "ctx-b"]


async def test_close_cancels_the_running_batch_and_every_queued_caller() -> None:
    work = Work()
    batches = Coalescer(work.run, window_s=0.0, max_size=1)
    running = batches.submit("p", 1)
    queued = batches.submit("p", 2)
    await work.started.wait()
    await batches.close()
    with pytest.raises(asyncio.CancelledError):
        await running
    with pytest.raises(asyncio.CancelledError):
        await queued
