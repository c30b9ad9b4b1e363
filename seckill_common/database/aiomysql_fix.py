"""The workaround for an aiomysql 0.3.2 bug: its pool wakes the callers waiting for a
connection when one comes back, but not when a released connection is dropped (closed, or
returned mid-transaction, which the pool closes). An acquire waiting for a free slot, or
`wait_closed()` at shutdown, would then wait for a release that may never come (a shutdown
past its grace hung there).

The fix needs the pool's private condition; the version is pinned (pyproject.toml). This is
the one module that reaches into the driver's internals.
"""

from __future__ import annotations

import asyncio

import aiomysql


class DropWakingRelease:
    """Releases connections to `pool`, waking its waiters when a released one is dropped."""

    def __init__(self, pool: aiomysql.Pool) -> None:
        self._pool = pool
        self._wakers: set[asyncio.Task[None]] = set()  # strong references to the wake-ups

    def release(self, conn: aiomysql.Connection) -> None:
        dropped = conn.closed or conn.get_transaction_status()  # the pool closes the latter
        self._pool.release(conn)
        if dropped:
            waker = asyncio.create_task(self._wake_waiters())
            self._wakers.add(waker)
            waker.add_done_callback(self._wakers.discard)

    async def _wake_waiters(self) -> None:
        async with self._pool._cond:
            self._pool._cond.notify_all()
