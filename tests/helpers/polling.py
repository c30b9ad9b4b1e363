"""The one polling helper: for states only visible by looking, which no stream announces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0,
                     *, every_s: float = 0.02) -> None:
    """Polls `check` every `every_s` until it holds; fails naming `what` after `timeout_s`.

    Only for what nothing announces (order expiry changing rows behind our back, the
    database's transaction tables, a pool's counters); anything a stream or an event reports
    is awaited instead.
    """
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"never true within {timeout_s}s: {what}"
        await asyncio.sleep(every_s)
