"""A crowd of buyers, one coroutine each, against one sale: `seckill-bench --queued-sale` and
`--direct-sale` (docs/WAITING_ROOM.md, BENCHMARKS.md rows (j1), (j2)).

Queued: every buyer calls JoinQueue (a server stream) and reads it to its final message; at
ADMITTED it calls Seckill with the pass. Direct: every buyer calls Seckill at the sale's start.
Both retry as the shipped clients do (seckill_common/api/retry.py, as the seckill CLI uses it):
a refusal with RetryInfo (RESOURCE_EXHAUSTED) is tried again after its delay, jittered and
doubled per try, at most RETRIES times, and calls pass one adaptive throttle per client
process; a stream ended UNAVAILABLE with RetryInfo (the place is kept) is joined again, as
`seckill buy` does, for as long as the buyer's budget lasts.

Buyers are spread over `procs` spawned client processes (the clients' CPU must not be the
bottleneck), each with several channels: one HTTP/2 connection carries at most the server's
SETTINGS_MAX_CONCURRENT_STREAMS streams at once (grpc-core servers announce no limit unless
`grpc.max_concurrent_streams` is set, which ours do not; other servers and proxies do, e.g.
100 to 250), so a process opens a channel per `streams_per_channel` buyers.

What is reported: each buyer's answer (won, SOLD_OUT, ENDED, or the status they ended with),
the refusals heard on the way (and retried), the time from the last unit sold to the last
SOLD_OUT heard, and the stages' times (join to first message, join to admission, admission to
the Seckill answer, join to the final answer; direct: the sale's start to the answer).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing
import queue as queue_module
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc

from seckill_bench.crowd_report import (
    DIRECT,
    ENDED,
    QUEUED,
    SOLD_OUT,
    STAGES,
    STREAMS_PER_CHANNEL,
    WON,
    CrowdConfig,
    CrowdError,
    CrowdReport,
    PartResult,
    report_json,
)
from seckill_bench.worker import error_reason
from seckill_common.api.times import to_datetime
from seckill_common.client.retry import (
    AdaptiveThrottle,
    ThrottledLocally,
    backoff_s,
    retry_delay_s,
)

__all__ = ["DIRECT", "QUEUED", "STREAMS_PER_CHANNEL", "CrowdConfig", "CrowdError", "CrowdReport",
           "report_json", "run_crowd"]

# Tries after a refusal with RetryInfo, as the seckill CLI's Session makes them.
RETRIES = 8
# A Seckill call's deadline (the CLI's default --timeout).
CALL_TIMEOUT_S = 10.0
SPAWN_BUDGET_S = 120.0  # for a spawned process to import grpc and connect its channels
PROGRESS_INTERVAL_S = 1.0
# `joined` is called anyway once no buyer has had a first message for this long: a few
# stragglers (their joins retried, or hung) do not hold the sale back for their whole budget.
JOIN_STALL_S = 60.0
_SOLD_OUT_REASONS = {"SOLD_OUT", "INSUFFICIENT_STOCK"}


@dataclass(frozen=True)
class PartSpec:
    """One client process's buyers: numbers index, index + procs, ... below buyers."""

    config: CrowdConfig
    index: int
    start_at: float  # the sale's start, epoch seconds (DIRECT buyers call then)


def _name(code: grpc.StatusCode, reason: str = "") -> str:
    return f"{code.name}/{reason}" if reason else code.name


class Part:
    """The buyers of one process."""

    def __init__(self, spec: PartSpec) -> None:
        self.spec = spec
        config = spec.config
        self.users = [f"{config.user_prefix}{n}"
                      for n in range(spec.index, config.buyers, config.procs)]
        self.result = PartResult(spec.index, stages={s: array("d") for s in STAGES})
        self.throttle = AdaptiveThrottle()
        self.first_messages = 0
        # Buyers with a first message, or an answer without one (a join refused for good):
        # when it reaches every buyer, the crowd has joined as far as it will.
        self.settled = 0
        self.done = 0
        self._channels: list[grpc.aio.Channel] = []
        self._answers: Counter[str] = Counter()
        self._heard: Counter[str] = Counter()
        self._first: Counter[str] = Counter()
        self._ended_after: Counter[str] = Counter()

    async def connect(self) -> None:
        config = self.spec.config
        count = max(1, math.ceil(len(self.users) / config.streams_per_channel))
        # A distinct argument per channel: channels with equal arguments share a connection.
        self._channels = [config.tls.channel(config.host, [
            ("seckill.bench.crowd_channel", i), ("grpc.use_local_subchannel_pool", 1)])
            for i in range(count)]
        self.result.channels = count
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                await asyncio.gather(*(c.channel_ready() for c in self._channels))
        except TimeoutError:
            await self.close()
            raise CrowdError(f"cannot connect to {config.host} within "
                             f"{config.connect_timeout_s:g}s") from None

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels = []

    async def run(self) -> PartResult:
        if not self._channels:
            await self.connect()
        config = self.spec.config
        stubs = [activity_pb2_grpc.ActivityServiceStub(c) for c in self._channels]
        rate = config.join_rate / config.procs if config.join_rate > 0 else 0.0
        began = time.monotonic()
        buyers = []
        for k, user in enumerate(self.users):
            stub = stubs[k % len(stubs)]
            if config.mode == QUEUED:
                buyers.append(self._queued(stub, user, began + k / rate if rate else began))
            else:
                buyers.append(self._direct(stub, user))
        try:
            await asyncio.gather(*buyers)
        finally:
            await self.close()
        self.result.answers = dict(self._answers)
        self.result.heard = dict(self._heard)
        self.result.first_states = dict(self._first)
        self.result.ended_after = dict(self._ended_after)
        return self.result

    def _answer(self, answer: str, settles: bool = False) -> None:
        self._answers[answer] += 1
        self.done += 1
        self.settled += settles
        if answer == SOLD_OUT:
            now = time.time()
            self.result.last_sold_out = max(self.result.last_sold_out or now, now)

    async def _queued(self, stub: Any, user: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        config, stages = self.spec.config, self.result.stages
        request = activity_pb2.JoinQueueRequest(activity_id=config.activity_id, user_id=user,
                                                quantity=config.quantity)
        t0 = time.monotonic()
        deadline = t0 + config.timeout_s
        first = True
        last = "no message"  # the last state heard: where a buyer ended without an answer
        admission_pass = ""
        # Joined again for as long as the budget lasts, as `seckill buy` does: a stream the
        # server ends UNAVAILABLE with RetryInfo keeps the buyer's place. The waits grow as
        # any retry's (RetryInfo, jittered, doubled per try up to MAX_BACKOFF_S).
        for attempt in itertools.count():
            call = stub.JoinQueue(request, metadata=config.metadata or None,
                                  timeout=max(0.001, deadline - time.monotonic()))
            try:
                async for update in call:
                    if first:
                        first = False
                        self.first_messages += 1
                        self.settled += 1
                        stages["join_to_first_message"].append(time.monotonic() - t0)
                        self._first[activity_pb2.QueueState.Name(update.state)] += 1
                    last = activity_pb2.QueueState.Name(update.state)
                    if update.state == activity_pb2.ADMITTED:
                        admission_pass = update.admission_pass
                        break
                    if update.state in (activity_pb2.QUEUE_SOLD_OUT, activity_pb2.QUEUE_ENDED):
                        stages["join_to_answer"].append(time.monotonic() - t0)
                        self._answer(SOLD_OUT if update.state == activity_pb2.QUEUE_SOLD_OUT
                                     else ENDED)
                        return
                else:
                    self._ended_after[last] += 1
                    self._answer("stream ended without a final message", settles=first)
                    return
                break
            except grpc.aio.AioRpcError as exc:
                delay = retry_delay_s(exc)
                wait = backoff_s(delay, min(attempt, 10)) if delay is not None else 0.0
                if delay is None or time.monotonic() + wait > deadline:
                    self._ended_after[f"{exc.code().name} after {last}"] += 1
                    self._answer(_name(exc.code(), error_reason(exc)), settles=first)
                    return
                self._heard[_name(exc.code(), error_reason(exc))] += 1
                await asyncio.sleep(wait)
            finally:
                call.cancel()
        admitted = time.monotonic()
        stages["join_to_admitted"].append(admitted - t0)
        answer = await self._seckill(stub, user, admission_pass, deadline)
        now = time.monotonic()
        stages["admitted_to_answer"].append(now - admitted)
        stages["join_to_answer"].append(now - t0)
        self._answer(answer)

    async def _direct(self, stub: Any, user: str) -> None:
        await asyncio.sleep(max(0.0, self.spec.start_at - time.time()))
        # Timed from the sale's start (the same clock as start_at): a buyer whose process
        # called late is not flattered.
        answer = await self._seckill(stub, user, "",
                                     time.monotonic() + self.spec.config.timeout_s)
        elapsed = time.time() - self.spec.start_at
        self.result.stages["start_to_answer"].append(elapsed)
        if answer in (WON, SOLD_OUT, ENDED):
            self.result.answered_s.append(elapsed)
        self._answer(answer)

    async def _seckill(self, stub: Any, user: str, admission_pass: str,
                       deadline: float) -> str:
        """Seckill with the shipped client's retries: the buyer's answer."""
        config = self.spec.config
        request = activity_pb2.SeckillRequest(activity_id=config.activity_id, user_id=user,
                                              quantity=config.quantity,
                                              admission_pass=admission_pass)
        delay = 0.0
        for attempt in range(RETRIES + 1):
            try:
                self.throttle.admit()
            except ThrottledLocally:
                self._heard["RESOURCE_EXHAUSTED/throttled locally"] += 1
                wait = backoff_s(max(delay, 0.05), attempt)
                if attempt == RETRIES or time.monotonic() + wait > deadline:
                    return "RESOURCE_EXHAUSTED/throttled locally"
                await asyncio.sleep(wait)
                continue
            left = deadline - time.monotonic()
            try:
                await stub.Seckill(request, metadata=config.metadata or None,
                                   timeout=max(0.001, min(CALL_TIMEOUT_S, left)))
            except grpc.aio.AioRpcError as exc:
                self.throttle.answered(exc.code())
                reason = error_reason(exc)
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    if reason in _SOLD_OUT_REASONS:
                        return SOLD_OUT
                    if reason == "ENDED":
                        return ENDED
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:  # a retry of a won call
                    return WON
                retry = retry_delay_s(exc)
                if retry is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    delay = retry
                    wait = backoff_s(delay, attempt)
                    if attempt < RETRIES and time.monotonic() + wait < deadline:
                        self._heard[_name(exc.code(), reason)] += 1
                        await asyncio.sleep(wait)
                        continue
                return _name(exc.code(), reason)
            self.throttle.answered(grpc.StatusCode.OK)
            now = time.time()
            self.result.last_won = max(self.result.last_won or now, now)
            return WON
        raise AssertionError("unreachable")


# --- the report --------------------------------------------------------------------------

# --- running it ----------------------------------------------------------------------------

async def start_of(config: CrowdConfig) -> float:
    """The activity's start_time, epoch seconds (GetActivity)."""
    channel = config.tls.channel(config.host)
    try:
        activity = await activity_pb2_grpc.ActivityServiceStub(channel).GetActivity(
            activity_pb2.GetActivityRequest(id=config.activity_id),
            metadata=config.metadata or None, timeout=config.connect_timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise CrowdError(f"cannot read activity {config.activity_id}: {exc.code().name}"
                         f" {exc.details()}") from None
    finally:
        await channel.close()
    return to_datetime(activity.start_time).timestamp()


def run_crowd(config: CrowdConfig, joined: Callable[[int], None] | None = None
              ) -> CrowdReport:
    """Runs the crowd; `joined(settled)` is called (in this process) once every buyer has had
    a first message or an answer without one, or when no more have for JOIN_STALL_S (QUEUED;
    the benchmark suite reads the servers' memory and CPU there, then starts the sale)."""
    config.validate()
    start_at = asyncio.run(start_of(config))
    specs = [PartSpec(config, i, start_at) for i in range(config.procs)]
    began = time.monotonic()
    parts = asyncio.run(_run_spawned(specs, joined))
    return CrowdReport.merge(config, start_at, time.monotonic() - began, parts)


def _log(config: CrowdConfig, text: str) -> None:
    if config.progress:
        print(f"seckill-bench: {text}", file=sys.stderr, flush=True)


async def _next(inbox: Any, processes: list[Any]) -> tuple[str, int, Any]:
    """The next message of the children; CrowdError for an error, or one that died."""
    while True:
        try:
            message: tuple[str, int, Any] = await asyncio.to_thread(inbox.get, True, 0.2)
            if message[0] == "error":
                raise CrowdError(f"client process {message[1]}: {message[2]}")
            return message
        except queue_module.Empty:
            for index, process in enumerate(processes):
                if process.exitcode not in (None, 0):
                    raise CrowdError(f"client process {index} died with exit code "
                                     f"{process.exitcode}") from None


async def _run_spawned(specs: list[PartSpec], joined: Callable[[int], None] | None
                       ) -> list[PartResult]:
    config = specs[0].config
    ctx = multiprocessing.get_context("spawn")
    inbox = ctx.Queue()
    go = ctx.Event()
    processes = [ctx.Process(target=_child_main, args=(spec, inbox, go), daemon=True,
                             name=f"seckill-bench-crowd-{spec.index}") for spec in specs]
    for process in processes:
        process.start()
    results: dict[int, PartResult] = {}
    try:
        try:
            async with asyncio.timeout(config.connect_timeout_s + SPAWN_BUDGET_S):
                ready = 0
                while ready < len(specs):
                    kind, _, _ = await _next(inbox, processes)
                    ready += kind == "ready"
        except TimeoutError:
            raise CrowdError("the client processes did not get ready in time") from None
        go.set()
        _log(config, f"{config.buyers:,} buyers from {len(specs)} processes: go")
        await _collect(config, inbox, processes, results, joined)
    finally:
        for index, process in enumerate(processes):
            if index not in results and process.is_alive():
                process.terminate()
        for process in processes:
            await asyncio.to_thread(process.join, 5.0)
    return [results[spec.index] for spec in specs]


async def _collect(config: CrowdConfig, inbox: Any, processes: list[Any],
                   results: dict[int, PartResult], joined: Callable[[int], None] | None
                   ) -> None:
    """The children's progress and results, until every one has sent its result."""
    firsts: dict[int, int] = {}
    dones: dict[int, int] = {}
    told = False
    last_log = last_change = time.monotonic()
    settled = 0
    while len(results) < len(processes):
        kind, index, payload = await _next(inbox, processes)
        if kind == "progress":
            firsts[index], dones[index] = payload
        elif kind == "done":
            results[index] = payload
        if sum(firsts.values()) != settled:
            settled, last_change = sum(firsts.values()), time.monotonic()
        stalled = settled > 0 and time.monotonic() - last_change >= JOIN_STALL_S
        if not told and (settled >= config.buyers or stalled):
            told = True
            _log(config, f"{settled:,} of {config.buyers:,} buyers had a first message or an "
                         f"answer{' (no more for a while)' if stalled else ''}: "
                         f"{sum(dones.values()):,} answered so far")
            if joined is not None:
                await asyncio.to_thread(joined, settled)
        if time.monotonic() - last_log >= 5.0:
            last_log = time.monotonic()
            _log(config, f"{sum(firsts.values()):,} with a first message or an answer, "
                         f"{sum(dones.values()):,} answered")


def _child_main(spec: PartSpec, inbox: Any, go: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        asyncio.run(_child(spec, inbox, go))
    except BaseException as exc:  # reported to the parent, which fails the run
        inbox.put(("error", spec.index, f"{type(exc).__name__}: {exc}"))


async def _child(spec: PartSpec, inbox: Any, go: Any) -> None:
    part = Part(spec)
    await part.connect()
    inbox.put(("ready", spec.index, None))
    while not await asyncio.to_thread(go.wait, 1.0):
        pass

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            inbox.put(("progress", spec.index, (part.settled, part.done)))

    reporter = asyncio.create_task(report())
    try:
        result = await part.run()
    finally:
        reporter.cancel()
    inbox.put(("progress", spec.index, (part.settled, part.done)))
    inbox.put(("done", spec.index, result))
