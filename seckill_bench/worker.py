"""One client process's share of a run: its channels, its workers and what they measured.

Every process runs its own asyncio loop and `grpc.aio` channels. Process `i` of `P` sends the
request numbers i, i+P, i+2P, ... so numbers are unique across processes without any
coordination; its workers take the next one from a plain counter (one loop, no lock needed).
Latencies go into an `array('d')`; statistics are computed once, at the end, over all
processes.
"""

from __future__ import annotations

import asyncio
import functools
import re
import signal
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from seckill_bench.config import BenchConfig, share
from seckill_bench.methods import Method, resolve
from seckill_bench.template import Template, static_values
from seckill_common.client.retry import AdaptiveThrottle, ThrottledLocally, backoff_s, retry_delay_s
from seckill_common.client.tls import ClientTLS

CHANNEL_OPTIONS = [
    # Without it, channels to the same target in one process share one TCP connection.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
PROGRESS_INTERVAL_S = 0.2
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_DIGITS = re.compile(r"\d+")
# Distinct error messages kept per process; past it they are counted together.
MAX_ERROR_KINDS = 1000
OTHER_ERRORS = "(other error messages)"


class ConnectError(RuntimeError):
    """The target did not accept a connection within the connect timeout."""


@dataclass(frozen=True)
class PartSpec:
    """What one process does; picklable, so a spawned process gets it whole."""

    index: int
    procs: int
    call: str
    host: str
    data: str
    total: int | None
    duration_s: float | None
    workers: int
    first_worker: int
    channels: int
    first_channel: int
    metadata: tuple[tuple[str, str], ...]
    timeout_s: float
    connect_timeout_s: float
    skip_first: int
    collect_order_ids: bool
    tls: ClientTLS


def plan_parts(config: BenchConfig, collect_order_ids: bool) -> list[PartSpec]:
    """Splits concurrency and connections evenly over the processes."""
    parts: list[PartSpec] = []
    first_worker = first_channel = 0
    connections = config.effective_connections
    for index in range(config.procs):
        workers = share(config.concurrency, config.procs, index)
        channels = share(connections, config.procs, index)
        parts.append(PartSpec(
            index=index, procs=config.procs, call=config.call, host=config.host,
            data=config.data_text, total=config.effective_total, duration_s=config.duration_s,
            workers=workers, first_worker=first_worker, channels=channels,
            first_channel=first_channel, metadata=tuple(config.metadata.items()),
            timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s,
            skip_first=config.skip_first, collect_order_ids=collect_order_ids,
            tls=config.tls,
        ))
        first_worker += workers
        first_channel += channels
    return parts


@dataclass
class PartResult:
    """What one process measured. Latencies in seconds, of the calls past --skip-first."""

    index: int
    latencies: array = field(default_factory=lambda: array("d"))
    statuses: dict[str, int] = field(default_factory=dict)  # grpc code name -> count
    reasons: dict[str, int] = field(default_factory=dict)  # "CODE/REASON" -> count
    errors: dict[str, int] = field(default_factory=dict)  # (code, message) key -> count
    ok_total: int = 0  # OK answers, including the skipped first calls
    order_ids: array = field(default_factory=lambda: array("q"))
    ok_units: int = 0  # the units the OK answers' orders hold (with order ids collected)
    completed: int = 0  # every call, skipped ones included
    started: float = 0.0  # time.monotonic(), comparable across processes on one machine
    ended: float = 0.0
    stopped: bool = False  # ended by a stop request (Ctrl-C), not by -n/-z


def error_reason(exc: grpc.aio.AioRpcError) -> str:
    """The `google.rpc.ErrorInfo` reason in the status details, or ''."""
    metadata = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            return _reason_in(value)
    return ""


@functools.lru_cache(maxsize=1024)
def _reason_in(status_bin: bytes) -> str:
    # Cached: a sold-out sale sends the very same details thousands of times, and the
    # client's CPU is shared with the servers under test.
    for detail in status_pb2.Status.FromString(status_bin).details:
        if detail.type_url == _ERROR_INFO_TYPE:
            return error_details_pb2.ErrorInfo.FromString(detail.value).reason
    return ""


def error_message(details: str | None) -> str:
    # Numbers fold to N, so "you already hold order 17" and "... order 18" count together.
    return _DIGITS.sub("N", details or "")


class Part:
    """The workers of one process. `run()` returns a PartResult."""

    def __init__(self, spec: PartSpec) -> None:
        self.spec = spec
        self.method: Method = resolve(spec.call)
        self.template = Template.compile(spec.data)
        self.result = PartResult(index=spec.index)
        self.stopping = False
        self._next = 0  # this process's k-th request number is k * procs + index
        self._total = spec.total
        self._deadline: float | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._error_keys: Counter[tuple[str, str]] = Counter()
        # Overload: one throttle for the process's workers, and the last RetryInfo delay.
        self._throttle = AdaptiveThrottle()
        self._last_retry_s = 0.05

    @property
    def completed(self) -> int:
        return self.result.completed

    async def connect(self) -> None:
        spec = self.spec
        self._channels = [spec.tls.channel(spec.host, CHANNEL_OPTIONS)
                          for _ in range(spec.channels)]
        try:
            async with asyncio.timeout(spec.connect_timeout_s):
                await asyncio.gather(*(ch.channel_ready() for ch in self._channels))
        except TimeoutError:
            await self.close()
            raise ConnectError(f"cannot connect to {spec.host} within "
                               f"{spec.connect_timeout_s:g}s") from None

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels = []

    def _builder(self, worker_number: int, channel_number: int) -> Callable[[int], bytes]:
        """Request number → serialised request, for one worker."""
        static = static_values(self.method.full_name, f"g{worker_number}c{channel_number}")
        bound = self.template.bind(static)
        request_class = self.method.request_class
        render = bound.renderer()
        if bound.is_constant:
            payload = json_format.Parse(render(0), request_class()).SerializeToString()
            return lambda _number: payload

        def build(number: int) -> bytes:
            return json_format.Parse(render(number), request_class()).SerializeToString()
        return build

    def _take(self) -> int:
        """The next request number, or -1 when this process is done."""
        if self.stopping:
            return -1
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return -1
        number = self._next * self.spec.procs + self.spec.index
        if self._total is not None and number >= self._total:
            return -1
        self._next += 1
        return number

    async def run(self) -> PartResult:
        spec = self.spec
        if not self._channels:
            await self.connect()
        stubs: list[grpc.aio.UnaryUnaryMultiCallable[bytes, Any]] = [
            ch.unary_unary(self.method.path, request_serializer=None,
                           response_deserializer=self.method.response_class.FromString)
            for ch in self._channels]
        self.result.started = time.monotonic()
        self._deadline = (None if spec.duration_s is None
                          else self.result.started + spec.duration_s)
        workers = []
        for i in range(spec.workers):
            local_channel = i % len(stubs)
            builder = self._builder(spec.first_worker + i, spec.first_channel + local_channel)
            workers.append(self._worker(stubs[local_channel], builder))
        try:
            await asyncio.gather(*workers)
        finally:
            self.result.ended = time.monotonic()
            await self.close()
        self._finish()
        return self.result

    async def _worker(self, stub: Any, build: Callable[[int], bytes]) -> None:
        spec, result = self.spec, self.result
        latencies, order_ids, statuses = result.latencies, result.order_ids, result.statuses
        skip, timeout = spec.skip_first, spec.timeout_s
        metadata = spec.metadata or None
        collect = spec.collect_order_ids
        clock = time.perf_counter
        throttle = self._throttle
        backoff = 0.0
        ok = 0
        try:
            while (number := self._take()) >= 0:
                counted = number >= skip
                try:
                    payload = build(number)
                except (ValueError, json_format.ParseError) as exc:  # a rendered bad request
                    if counted:
                        self._count_client_error(exc)
                    result.completed += 1
                    continue
                try:
                    throttle.admit()
                except ThrottledLocally:
                    # Not sent: the server refused most recent calls (adaptive throttling).
                    if counted:
                        self._count_throttled()
                    result.completed += 1
                    await asyncio.sleep(backoff_s(self._last_retry_s, 0))
                    continue
                start = clock()
                try:
                    reply = await stub(payload, timeout=timeout, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    elapsed = clock() - start
                    backoff = self._refused(exc, counted)
                else:
                    elapsed = clock() - start
                    throttle.answered(grpc.StatusCode.OK)
                    result.ok_total += 1
                    if counted:
                        ok += 1
                    if collect:
                        order_ids.append(reply.order.id)
                        result.ok_units += reply.order.quantity or 1
                if counted:
                    latencies.append(elapsed)
                result.completed += 1
                if backoff:
                    await asyncio.sleep(backoff)
                    backoff = 0.0
        finally:
            statuses["OK"] = statuses.get("OK", 0) + ok

    def _refused(self, exc: grpc.aio.AioRpcError, counted: bool) -> float:
        """Counts a failed call; returns how long this worker waits before its next one: an
        overloaded or rate-limited server says when to come back (jittered), else 0."""
        self._throttle.answered(exc.code())
        if counted:
            self._count_error(exc)
        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return 0.0
        delay = retry_delay_s(exc)
        if delay is None:
            return 0.0
        self._last_retry_s = delay
        return backoff_s(delay, 0)

    def _count_error(self, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code().name
        statuses = self.result.statuses
        statuses[code] = statuses.get(code, 0) + 1
        reason = error_reason(exc)
        if reason:
            key = f"{code}/{reason}"
            self.result.reasons[key] = self.result.reasons.get(key, 0) + 1
        self._count_message(code, error_message(exc.details()))

    def _count_throttled(self) -> None:
        statuses = self.result.statuses
        statuses["RESOURCE_EXHAUSTED"] = statuses.get("RESOURCE_EXHAUSTED", 0) + 1
        self._count_message("RESOURCE_EXHAUSTED", "client: throttled locally (adaptive "
                                                  "throttling)")

    def _count_client_error(self, exc: Exception) -> None:
        statuses = self.result.statuses
        # Like ghz: a call that never left the client counts as Unknown.
        statuses["UNKNOWN"] = statuses.get("UNKNOWN", 0) + 1
        self._count_message("UNKNOWN", f"client: cannot build the request: {exc}")

    def _count_message(self, code: str, message: str) -> None:
        key = (code, message)
        if key not in self._error_keys and len(self._error_keys) >= MAX_ERROR_KINDS:
            key = (code, OTHER_ERRORS)
        self._error_keys[key] += 1

    def _finish(self) -> None:
        self.result.statuses = {k: v for k, v in self.result.statuses.items() if v}
        self.result.errors = {f"{code}\x00{message}": n
                              for (code, message), n in self._error_keys.items()}
        self.result.stopped = self.stopping


# --- a spawned client process --------------------------------------------------------------

def child_main(spec: PartSpec, queue: Any, go: Any, stop: Any) -> None:
    """Entry point of a spawned process: connect, say ready, wait for go, run, send results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us
    try:
        asyncio.run(_child(spec, queue, go, stop))
    except BaseException as exc:  # reported to the parent, which fails the run
        queue.put(("error", spec.index, f"{type(exc).__name__}: {exc}"))


async def _child(spec: PartSpec, queue: Any, go: Any, stop: Any) -> None:
    part = Part(spec)
    await part.connect()
    queue.put(("ready", spec.index, None))
    while not await asyncio.to_thread(go.wait, 1.0):
        pass
    reporter = asyncio.create_task(_report_progress(part, queue, stop))
    try:
        result = await part.run()
    finally:
        reporter.cancel()
    queue.put(("progress", spec.index, part.completed))
    queue.put(("done", spec.index, result))


async def _report_progress(part: Part, queue: Any, stop: Any) -> None:
    sent = -1
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        if stop.is_set():
            part.stopping = True
        if part.completed != sent:
            sent = part.completed
            queue.put(("progress", part.spec.index, sent))
