"""Server streams that never end by themselves (WatchActivity, WatchOrderEvents): how many a
process takes and how long each lives (`StreamSlots`), how one ends with a status the client
acts on (`serve_stream`), and what a full process answers.

The handler writes with context.write and ends with a status; the layers every call passes
through (runtime.interceptors) write its status, its access-log line and its metrics, as for a
unary call. A client's cancel ends the stream's task by CancelledError, which is never
swallowed (grpc/grpc#43360: a server-streaming handler that swallows it leaks native memory
per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator

from seckill_common.api.errors import ServiceError, TooManyStreams, Unavailable
from seckill_common.runtime.answers import stream_messages

# How long shutdown waits for the streams it ended to have sent their status.
CLOSE_WAIT_S = 2.0

# One stream's work: serves it until it ends, counting its messages in the list's one item;
# returns the error to end it with (None: OK, a stream that ended with its final message),
# raises the request's refusal.
StreamBody = Callable[[list[int]], Awaitable[ServiceError | None]]


class StreamSlots:
    """The streams of one method a process serves: none while shutting down, at most `cap`
    (`setting` names it), each for a lifetime of `lifetime_s` less up to a tenth (so a crowd
    that connected together does not resume together), and awaited on shutdown."""

    def __init__(self, what: str, cap: int, setting: str, lifetime_s: float) -> None:
        self.what, self.cap, self.setting, self.lifetime_s = what, cap, setting, lifetime_s
        self.open = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def slot(self) -> Iterator[float]:
        """Holds a slot while the stream runs; yields its lifetime in seconds. Refuses with
        UNAVAILABLE while shutting down, RESOURCE_EXHAUSTED beyond the cap."""
        if self.closing:
            raise Unavailable("the server is shutting down; call again")
        if self.open >= self.cap:
            raise TooManyStreams(self.cap, self.what, self.setting)
        self.open += 1
        self._idle.clear()
        try:
            yield self.lifetime_s * random.uniform(0.9, 1.0)
        finally:
            self.open -= 1
            if self.open == 0:
                self._idle.set()

    async def drained(self) -> None:
        """Waits (up to CLOSE_WAIT_S) for the open streams, which the caller has just told to
        end, to have ended; new ones are refused from here on."""
        self.closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self._idle.wait()


def resolve(future: asyncio.Future[None]) -> None:
    """Wakes a waiter (a timer's callback, or a change): done once, whoever is first."""
    if not future.done():
        future.set_result(None)


async def serve_stream(body: StreamBody) -> None:
    """Runs a stream's `body` (the handler's work) and ends the stream with its status: the
    ending it returns or the refusal it raises goes to the layers outside (map_errors answers
    it, the access log writes its line, with the messages counted here)."""
    sent = [0]
    stream_messages.set(sent)
    ending = await body(sent)
    if ending is not None:
        # A shared error is raised by many streams: without this, each raise would add its
        # frames to the traceback the error keeps.
        raise ending.with_traceback(None)
