"""Server streams that never end by themselves (WatchActivity, WatchOrderEvents): how many a
process takes and how long each lives (`StreamSlots`), how one ends with a status the client
acts on, is counted and logged (`StreamEndings`), and what a full process answers.

The handler writes with context.write and ends by setting its status; the interceptors see
only the call, so the access log line and the metrics are written here. A client's cancel ends
the stream's task by CancelledError, which is never swallowed (grpc/grpc#43360: a
server-streaming handler that swallows it leaks native memory per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator

import grpc
from grpc.aio import ServicerContext

from seckill_common.api.errors import ServiceError, TooManyStreams, Unavailable, internal_status
from seckill_common.runtime.telemetry import rpc_recorder

log = logging.getLogger(__name__)
access = logging.getLogger("seckill.rpc")

# How long shutdown waits for the streams it ended to have sent their status.
CLOSE_WAIT_S = 2.0

# One stream's work: serves it until it ends, counting its messages in the list's one item;
# returns the status to end it with (a shared error is returned rather than raised, so no
# traceback gathers on it; None: OK, a stream that ended with its final message), raises the
# request's refusal.
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


class StreamEndings:
    """One streaming method's status, metrics and access log."""

    def __init__(self, service: str, method: str) -> None:
        self.method = method
        self._record = rpc_recorder(service, method)

    async def serve(self, context: ServicerContext, body: StreamBody) -> None:
        """Runs `body` and ends the stream with its status (or its refusal's)."""
        begun = time.perf_counter()
        sent = [0]
        try:
            ending = await body(sent)
            if ending is None:
                self._log(context, grpc.StatusCode.OK, sent[0], begun)
                return
            status = ending.to_status()
        except ServiceError as exc:
            status = exc.to_status()
        except asyncio.CancelledError:
            self._log(context, grpc.StatusCode.CANCELLED, sent[0], begun)
            raise  # the client left: never swallowed (grpc/grpc#43360)
        except Exception:
            log.exception("unexpected error in %s", self.method)
            status = internal_status()
        context.set_code(status.code)
        context.set_details(status.details)
        context.set_trailing_metadata(status.trailing_metadata)
        self._log(context, status.code, sent[0], begun)

    def _log(self, context: ServicerContext, code: grpc.StatusCode, messages: int,
             begun: float) -> None:
        seconds = time.perf_counter() - begun
        self._record(code.name, seconds)
        if access.isEnabledFor(logging.INFO):
            access.info("rpc", extra={"method": self.method, "peer": context.peer(),
                                      "code": code.name, "messages": messages,
                                      "latency_ms": round(seconds * 1000, 3)})
