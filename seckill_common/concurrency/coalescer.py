"""Coalesced batches: the items submitted for one key while its batch is in flight, or within a
short gathering window after it, are handed to the next run together.

The loader beside it (loader.py) shares one read among callers asking the same thing; a
`Coalescer` is for work each caller needs done for itself but that costs less done together
(the seckill's transaction: one per batch of buyers of a product, instead of one each). Per key
one committer task runs the batches in turn, first come first served, at most `max_size` items
each; an idle key runs its first batch at once, and the task ends once a window passes idle.

A caller that leaves (deadline, cancel) is skipped by batches not yet started; a batch whose
callers have all left is cancelled (its run is cancelled: nobody would hear its outcome, and it
may hold a lock or a connection for nothing). If a run raises, every caller of its batch gets
the exception; a run's result may also be an exception per item, which that caller raises.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class Waiter(Generic[T, R]):
    """One submitted item, the future its caller awaits, and the caller's context (captured at
    submit, when the coalescer was given a way to capture it: a trace's, say)."""

    __slots__ = ("context", "future", "item")

    def __init__(self, item: T, future: asyncio.Future[R], context: Any) -> None:
        self.item = item
        self.future = future
        self.context = context


# A batch's work: one result per waiter, in order; an exception as a result is raised by its
# caller alone.
Run = Callable[[K, list[Waiter[T, R]]], Awaitable[Sequence[R | BaseException]]]


class Coalescer(Generic[K, T, R]):
    """Runs the items of each key in batches (see the module's docstring).

    `submit` is a plain method returning the caller's future: awaiting it is the only
    suspension a caller pays for (no coroutine of its own).
    """

    def __init__(self, run: Run[K, T, R], *, window_s: float, max_size: int,
                 context: Callable[[], Any] | None = None, name: str = "coalesce") -> None:
        self._run = run
        self._window_s = window_s
        self._max_size = max_size
        self._context = context
        self._name = name
        self._queues: dict[K, deque[Waiter[T, R]]] = {}
        self._arrived: dict[K, asyncio.Event] = {}
        # Strong references: the event loop keeps only weak ones to tasks.
        self._committers: dict[K, asyncio.Task[None]] = {}

    def submit(self, key: K, item: T) -> asyncio.Future[R]:
        """Queues `item` for the next batch of `key`; the future holds its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._arrived[key] = asyncio.Event()
        queue.append(Waiter(item, future, None if self._context is None else self._context()))
        if len(queue) >= self._max_size:
            # Only a full batch ends the gathering early: waking the committer at every
            # arrival cost each call a wake-up, a timer and a task for nothing.
            self._arrived[key].set()
        if key not in self._committers:
            self._committers[key] = asyncio.create_task(
                self._commit_loop(key), name=f"{self._name}-{key}")
        return future

    async def close(self) -> None:
        """Cancels every committer: the batch in flight and the queued callers with it."""
        committers = list(self._committers.values())
        for committer in committers:
            committer.cancel()
        await asyncio.gather(*committers, return_exceptions=True)

    async def _commit_loop(self, key: K) -> None:
        """Runs the key's queue batch by batch, then ends once a window passes idle.

        The first batch of an idle key runs at once. After each batch the loop gathers for up
        to the window (or until the batch is full): under load the items that arrive meanwhile
        then share one run instead of paying for one each.
        """
        queue = self._queues[key]
        arrived = self._arrived[key]
        try:
            while queue:
                batch = self._take_batch(queue)
                if batch:
                    await self._run_batch(key, batch)
                await self._gather(queue, arrived)
        except asyncio.CancelledError:
            while queue:  # shutting down: nobody will run these
                queue.popleft().future.cancel()
            raise
        finally:
            del self._committers[key]

    async def _gather(self, queue: deque[Waiter[T, R]], arrived: asyncio.Event) -> None:
        """Waits up to the gathering window for the batch to fill (`submit` sets `arrived`
        once the queue holds a full batch)."""
        window = self._window_s
        if window <= 0 or len(queue) >= self._max_size:
            return
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                await arrived.wait()

    def _take_batch(self, queue: deque[Waiter[T, R]]) -> list[Waiter[T, R]]:
        batch: list[Waiter[T, R]] = []
        while queue and len(batch) < self._max_size:
            waiter = queue.popleft()
            if not waiter.future.done():  # skip callers that gave up (deadline, cancel)
                batch.append(waiter)
        return batch

    async def _run_batch(self, key: K, batch: list[Waiter[T, R]]) -> None:
        work = asyncio.ensure_future(self._run(key, batch))
        left = _cancel_when_all_leave(work, [w.future for w in batch])
        try:
            results = await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # shutting down
                for waiter in batch:
                    waiter.future.cancel()
                raise
            return  # every caller left (deadline, cancel): the run was abandoned
        except Exception as exc:
            # The run failed as a whole: every caller in it gets the error.
            for waiter in batch:
                waiter.future.remove_done_callback(left)
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            return
        for waiter, result in zip(batch, results, strict=True):
            # The batch is over: its callers' answers need not run `left` (one callback each).
            waiter.future.remove_done_callback(left)
            if waiter.future.done():
                continue  # the caller left
            if isinstance(result, BaseException):
                waiter.future.set_exception(result)
            else:
                waiter.future.set_result(result)


def _cancel_when_all_leave(work: asyncio.Future[Any], callers: list[asyncio.Future[Any]]
                           ) -> Callable[[asyncio.Future[Any]], None]:
    """Cancels a batch's run once every caller in it has gone (deadline, cancel).

    Returns the callback, for the batch to remove once it is over.
    """
    waiting = len(callers)

    def left(_: asyncio.Future[Any]) -> None:
        nonlocal waiting
        waiting -= 1
        if waiting == 0:
            work.cancel()  # a no-op once the batch is done

    for future in callers:
        future.add_done_callback(left)
    return left
