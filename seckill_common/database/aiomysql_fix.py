"""Workarounds for two gaps of aiomysql 0.3.2.

1. Its pool wakes the callers waiting for a connection when one comes back, but not when a
   released connection is dropped (closed, or returned mid-transaction, which the pool
   closes). An acquire waiting for a free slot, or `wait_closed()` at shutdown, would then
   wait for a release that may never come (a shutdown past its grace hung there).
2. Its `connect_timeout` covers the TCP connect only: the server's greeting, authentication
   and the session's init command have no timeout, and the pool opens connections while every
   other acquire waits. Over a link that accepts but stays silent, one connect would stall the
   whole pool. `connect` bounds all of it.

The fixes need the pool's private condition, the connection's private `_connect` and the
pool module's `connect`; the version is pinned (pyproject.toml). This is the one module that
reaches into the driver's internals.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomysql
import aiomysql.pool
import pymysql


async def connect(**kwargs: Any) -> aiomysql.Connection:
    """`aiomysql.connect`, with `connect_timeout` bounding the handshake, the authentication
    and the init command as well; a connection not made in time is closed, never leaked."""
    conn = aiomysql.Connection(**kwargs)
    try:
        async with asyncio.timeout(kwargs.get("connect_timeout")):
            await conn._connect()
    except TimeoutError as exc:
        conn.close()
        raise pymysql.err.OperationalError(
            2003, f"Can't connect to MySQL server on {conn.host!r} (no answer within "
            f"{kwargs.get('connect_timeout')} s)") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def bound_pool_connects() -> None:
    """Makes aiomysql's pools open their connections through `connect` (the pool calls its
    module's `connect`)."""
    aiomysql.pool.connect = connect  # type: ignore[attr-defined,assignment]  # see above


class DropWakingRelease:
    """Releases connections to `pool`, waking its waiters when a released one is dropped."""

    def __init__(self, pool: aiomysql.Pool) -> None:
        self._pool = pool
        self._wakers: set[asyncio.Task[None]] = set()  # strong references to the wake-ups

    def release(self, conn: aiomysql.Connection) -> None:
        dropped = conn.closed or conn.get_transaction_status()  # the pool closes the latter
        self._pool.release(conn)
        if dropped:
            self._wake()

    def drop_idle(self) -> int:
        """Closes the pool's idle connections (it opens fresh ones as needed); returns how many.

        After one connection's link went silent, the idle ones that share that link are
        suspect too: each would cost its next borrower a full timeout to find out."""
        dropped = 0
        while self._pool._free:
            self._pool._free.popleft().close()
            dropped += 1
        if dropped:
            self._wake()
        return dropped

    def _wake(self) -> None:
        waker = asyncio.create_task(self._wake_waiters())
        self._wakers.add(waker)
        waker.add_done_callback(self._wakers.discard)

    async def _wake_waiters(self) -> None:
        async with self._pool._cond:
            self._pool._cond.notify_all()
