"""BatchLoader: one load serves every caller that arrived before it started, never older."""

from __future__ import annotations

import asyncio

import pytest

from seckill_common.concurrency.loader import BatchLoader


class Source:
    """A store whose loads are held open until the test releases them."""

    def __init__(self) -> None:
        self.version = 0
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def load(self, keys: list[str]) -> dict[str, object]:
        self.calls.append(sorted(keys))
        self.started.set()
        seen = self.version  # what a read that starts now sees
        await self.release.wait()
        return {k: (KeyError(k) if k == "missing" else f"{k}@{seen}") for k in keys}


async def test_callers_during_a_load_share_the_next_one_which_sees_their_arrival() -> None:
    source = Source()
    loader: BatchLoader[str, object] = BatchLoader(source.load)
    first = asyncio.create_task(loader.get("a"))
    await source.started.wait()  # the first load has started, and waits
    source.version = 1  # a write the later callers arrive after
    later = [asyncio.create_task(loader.get(k)) for k in ("a", "b", "a")]
    source.release.set()
    assert await first == "a@0"
    assert [await t for t in later] == ["a@1", "b@1", "a@1"]
    assert source.calls == [["a"], ["a", "b"]]
    assert loader.loads == 2


async def test_a_missing_key_and_a_failed_load_reach_only_their_callers() -> None:
    source = Source()
    source.release.set()
    loader: BatchLoader[str, object] = BatchLoader(source.load)
    found, missing = await asyncio.gather(loader.get("x"), loader.get("missing"),
                                          return_exceptions=True)
    assert found == "x@0" and isinstance(missing, KeyError)

    async def broken(keys: list[str]) -> dict[str, object]:
        raise RuntimeError("database gone")

    failing: BatchLoader[str, object] = BatchLoader(broken)
    with pytest.raises(RuntimeError, match="database gone"):
        await failing.get("x")
    assert await loader.get("y") == "y@0"  # the other loader is unaffected


async def test_a_caller_that_leaves_does_not_cancel_the_others_load() -> None:
    source = Source()
    loader: BatchLoader[str, object] = BatchLoader(source.load)
    leaving = asyncio.create_task(loader.get("a"))
    staying = asyncio.create_task(loader.get("a"))
    await source.started.wait()
    leaving.cancel()
    source.release.set()
    assert await staying == "a@0"
    assert leaving.cancelled()


async def test_close_cancels_a_running_load() -> None:
    source = Source()
    loader: BatchLoader[str, object] = BatchLoader(source.load)
    waiting = asyncio.create_task(loader.get("a"))
    await source.started.wait()
    await loader.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_busy_loader_gathers_callers_for_its_next_load() -> None:
    source = Source()
    loader: BatchLoader[str, object] = BatchLoader(source.load, gather_s=0.05)
    first = asyncio.create_task(loader.get("a"))
    await source.started.wait()
    # These arrive while the first load runs, and in the gathering window after it.
    second = asyncio.create_task(loader.get("b"))
    source.release.set()
    await first
    third = asyncio.create_task(loader.get("c"))
    assert (await second, await third) == ("b@0", "c@0")
    assert source.calls == [["a"], ["b", "c"]]


async def test_a_load_every_caller_left_is_cancelled_and_the_next_one_runs() -> None:
    """A load nobody waits for any more (a read hung on a silent link, its callers' deadlines
    past) is cancelled, so the callers behind it get a load of their own at once."""
    source = Source()
    hung = asyncio.Event()

    async def load(keys: list[str]) -> dict[str, object]:
        if not source.calls:  # the first load hangs until cancelled
            source.calls.append(sorted(keys))
            hung.set()
            await asyncio.Event().wait()
        return await source.load(keys)

    loader: BatchLoader[str, object] = BatchLoader(load)
    gone = [asyncio.create_task(loader.get("a")) for _ in range(2)]
    await hung.wait()
    behind = asyncio.create_task(loader.get("b"))  # waits for the next load
    for task in gone:
        task.cancel()
    source.release.set()
    assert await behind == "b@0"
    assert all(task.cancelled() for task in gone)
    assert source.calls == [["a"], ["b"]]
    assert loader.abandoned == 1
