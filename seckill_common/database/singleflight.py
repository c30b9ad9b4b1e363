"""Single-flight batched reads: one read serves every caller that arrived before it started.

A stampede of identical reads (a storefront polling an activity, thousands of buyers told
"sold out") would otherwise cost one database read each. A `BatchLoader` runs at most one load
at a time; a caller waits for the next load that *starts after it arrived*, so what it is told
is never older than its own call, and every caller that arrived meanwhile shares that load.
Under no load a call loads at once; under load the number of reads follows the time a read
takes, not the number of callers.
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


class BatchLoader(Generic[K, V]):
    """Coalesces concurrent `get`s into loads of every key asked for since the last one began.

    `load` receives the distinct keys and returns a value or an exception per key; a key it
    leaves out gets `KeyError`. If `load` itself raises, every caller of that load gets it.
    A caller that leaves (deadline, cancel) does not cancel the load the others wait for.
    """

    def __init__(self, load: Load[K, V], gather_s: float = 0.0) -> None:
        self._load = load
        self._gather_s = gather_s
        self._next: dict[K, asyncio.Future[V]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.loads = 0  # loads run so far, and the calls they served (statistics)
        self.gets = 0

    async def get(self, key: K) -> V:
        self.gets += 1
        future = self._next.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            # Nobody may be left to read a failure; retrieving it here keeps asyncio quiet.
            future.add_done_callback(_consume)
            self._next[key] = future
            if self._runner is None:
                self._runner = asyncio.create_task(self._run(), name="batch-loader")
        return await asyncio.shield(future)

    async def _run(self) -> None:
        batch: dict[K, asyncio.Future[V]] = {}
        try:
            first = True
            while self._next:
                if not first and self._gather_s > 0:
                    # Busy: callers are arriving faster than loads end. A moment more gathers
                    # them into fewer, larger loads (an idle loader loads at once).
                    await asyncio.sleep(self._gather_s)
                first = False
                batch, self._next = self._next, {}
                self.loads += 1
                try:
                    results = await self._load(list(batch))
                except Exception as exc:
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for key, future in batch.items():
                    if future.done():
                        continue
                    result = results.get(key, KeyError(key))
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        except asyncio.CancelledError:
            for future in (*batch.values(), *self._next.values()):
                future.cancel()
            raise
        finally:
            self._runner = None

    async def close(self) -> None:
        """Cancels the running load and its callers (shutdown)."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for future in self._next.values():  # a runner cancelled before it began
            future.cancel()
        self._next.clear()
        self._runner = None


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
