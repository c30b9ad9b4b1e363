"""Single-flight batched reads: one read serves every caller that arrived before it started.

A stampede of identical reads (a storefront polling an activity, thousands of buyers told
"sold out") would otherwise cost one database read each. A `BatchLoader` runs at most one load
at a time; a caller waits for the next load that *starts after it arrived*, so what it is told
is never older than its own call, and every caller that arrived meanwhile shares that load.
Under no load a call loads at once; under load the number of reads follows the time a read
takes, not the number of callers. A load that every one of its callers has left (their
deadlines passed) is cancelled: on a link gone silent it would otherwise hold up the next load
until the database layer's own bound, and nobody is left to read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

# How long a busy loader (one whose loads follow each other without a pause) waits before its
# next load, for more callers. A hot read costs the CPU of a database round trip (and, for
# GetActivity, of a peer call), most of it the driver's parsing in Python: under a stampede
# fewer, larger reads leave that CPU to the calls themselves. But every caller waits for the
# pause too, and with a fixed number of calls in flight the pause bounds the rate: measured
# with h2load at 64 in flight (BENCHMARKS.md, "Sale-day speed"), refusals ran at 0.44x
# Health/Check with 10 ms, 0.72-0.76x with 4 ms, 0.69-0.73x with 2 ms, 0.67-0.69x with 1 ms and
# 0.65x with none. An idle loader loads at once, so a lone caller waits for nothing.
HOT_READ_GATHER_S = 0.004

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# What a load returns for each key: its value, or the exception its callers raise.
Load = Callable[[list[K]], Awaitable[Mapping[K, V | BaseException]]]


class _Batch(Generic[K, V]):
    """The keys of one load, a future each, and how many callers still wait for them."""

    def __init__(self) -> None:
        self.futures: dict[K, asyncio.Future[V]] = {}
        self.callers = 0


class BatchLoader(Generic[K, V]):
    """Coalesces concurrent `get`s into loads of every key asked for since the last one began.

    `load` receives the distinct keys and returns a value or an exception per key; a key it
    leaves out gets `KeyError`. If `load` itself raises, every caller of that load gets it.
    A caller that leaves (deadline, cancel) does not cancel the load the others wait for; the
    last one to leave does.
    """

    def __init__(self, load: Load[K, V], gather_s: float = 0.0) -> None:
        self._load = load
        self._gather_s = gather_s
        self._next: _Batch[K, V] = _Batch()
        self._loading: tuple[_Batch[K, V], asyncio.Future[Mapping[K, V | BaseException]]] | None
        self._loading = None
        self._runner: asyncio.Task[None] | None = None
        self.loads = 0  # loads run so far, and the calls they served (statistics)
        self.gets = 0
        self.abandoned = 0  # loads cancelled because every caller had left

    async def get(self, key: K) -> V:
        self.gets += 1
        batch = self._next
        future = batch.futures.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            # Nobody may be left to read a failure; retrieving it here keeps asyncio quiet.
            future.add_done_callback(_consume)
            batch.futures[key] = future
            if self._runner is None:
                self._runner = asyncio.create_task(self._run(), name="batch-loader")
        batch.callers += 1
        try:
            return await asyncio.shield(future)
        finally:
            batch.callers -= 1
            if batch.callers == 0 and self._loading is not None and self._loading[0] is batch:
                self._loading[1].cancel()  # nobody left to read it

    async def _run(self) -> None:
        batch: _Batch[K, V] = _Batch()
        try:
            first = True
            while self._next.futures:
                if not first and self._gather_s > 0:
                    # Busy: callers are arriving faster than loads end. A moment more gathers
                    # them into fewer, larger loads (an idle loader loads at once).
                    await asyncio.sleep(self._gather_s)
                first = False
                batch, self._next = self._next, _Batch()
                if batch.callers:  # else all left before it began
                    await self._load_batch(batch)
        except asyncio.CancelledError:
            for future in (*batch.futures.values(), *self._next.futures.values()):
                future.cancel()
            raise
        finally:
            self._runner = None

    async def _load_batch(self, batch: _Batch[K, V]) -> None:
        """One load for `batch`: each future gets its value or exception; a load that all its
        callers left is cancelled, its futures with it."""
        self.loads += 1
        load = asyncio.ensure_future(self._load(list(batch.futures)))
        self._loading = (batch, load)
        try:
            results = await load
        except asyncio.CancelledError:
            if _cancelling():
                raise  # close(): the runner itself
            self.abandoned += 1
            for future in batch.futures.values():
                future.cancel()
            return
        except Exception as exc:
            for future in batch.futures.values():
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._loading = None
        for key, future in batch.futures.items():
            if future.done():
                continue
            result = results.get(key, KeyError(key))
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Cancels the running load and its callers (shutdown)."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for future in self._next.futures.values():  # a runner cancelled before it began
            future.cancel()
        self._next = _Batch()
        self._runner = None


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (not only something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
