"""Runs a load: checks the setup, starts the client processes, shows progress, builds the Report.

With one process the workers run in the caller's event loop. With more, each is a spawned
process (`multiprocessing` "spawn": a fresh interpreter, its own loop and channels); they
connect first, say "ready", and all start on one "go", so start-up is not measured. They
report completed counts a few times a second, and their results once, through one queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue as queue_module
import signal
import sys
import threading
import time
from collections.abc import Callable
from itertools import chain
from typing import Any

import grpc
import rich.console
import rich.progress
from google.protobuf import json_format

from seckill_bench.config import BenchConfig, ConfigError
from seckill_bench.methods import MethodError, resolve
from seckill_bench.report import Report
from seckill_bench.template import Template, TemplateError, static_values
from seckill_bench.worker import ConnectError, Part, PartResult, PartSpec, child_main, plan_parts
from seckill_stack.invariants import SeckillCheck

SPAWN_BUDGET_S = 60.0  # for a spawned process to import grpc and the messages
LINE_INTERVAL_S = 5.0  # progress lines when stderr is not a terminal
BAR_INTERVAL_S = 0.2


class BenchError(RuntimeError):
    """The run could not be done: bad settings, an unknown method, an unreachable target."""


class Progress:
    """Completed calls across processes, shown on stderr while the run lasts."""

    def __init__(self, config: BenchConfig) -> None:
        self.enabled = config.progress
        self.total = config.effective_total
        self.counts: dict[int, int] = {}
        self.source: Callable[[], int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._bar: rich.progress.Progress | None = None

    def set(self, index: int, completed: int) -> None:
        self.counts[index] = completed

    @property
    def done(self) -> int:
        return self.source() if self.source else sum(self.counts.values())

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._show())

    async def _show(self) -> None:
        started = time.monotonic()
        if sys.stderr.isatty():
            self._bar = rich.progress.Progress(
                rich.progress.TextColumn("seckill-bench"), rich.progress.BarColumn(),
                rich.progress.MofNCompleteColumn(), rich.progress.TextColumn("calls"),
                rich.progress.TimeElapsedColumn(),
                console=rich.console.Console(stderr=True))
            # No total (a run for a duration): the bar pulses.
            self._bar.add_task("calls", total=self.total or None)
            self._bar.start()
            while True:
                await asyncio.sleep(BAR_INTERVAL_S)
                self._bar.update(self._bar.task_ids[0], completed=self.done)
        while True:
            await asyncio.sleep(LINE_INTERVAL_S)
            elapsed = time.monotonic() - started
            of = f"/{self.total}" if self.total else ""
            print(f"seckill-bench: {self.done}{of} calls in {elapsed:.0f} s "
                  f"({self.done / elapsed:.0f}/s)", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bar is not None:
            self._bar.update(self._bar.task_ids[0], completed=self.done)
            self._bar.stop()


class Stopper:
    """Ctrl-C once: stop sending, report what completed. Twice: the usual KeyboardInterrupt."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self.hooks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._loop = asyncio.get_running_loop()
            self._loop.add_signal_handler(signal.SIGINT, self._on_sigint)

    def _on_sigint(self) -> None:
        self.requested = True
        print("\nseckill-bench: stopping (Ctrl-C again to abort)", file=sys.stderr)
        for hook in self.hooks:
            hook()
        self.close()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGINT)
            self._loop = None


def _sample_request(template: Template, call: str, request_class: Any, number: int) -> Any:
    text = template.bind(static_values(call, "g0c0")).render(number)
    try:
        return json_format.Parse(text, request_class())
    except (json_format.ParseError, ValueError) as exc:
        raise BenchError(f"the request template does not make a valid "
                         f"{request_class.DESCRIPTOR.full_name}: {exc}\n  rendered: {text}"
                         ) from None


async def _prepare_check(config: BenchConfig, template: Template, full_name: str,
                         request_class: Any) -> SeckillCheck:
    activity_ids = {_sample_request(template, full_name, request_class, n).activity_id
                    for n in (0, 1)}
    if len(activity_ids) != 1:
        raise BenchError("the invariant check needs one activity_id for every request; "
                         "pass --no-check")
    check = SeckillCheck(activity_addr=config.host, order_addr=config.effective_order_addr,
                         activity_id=activity_ids.pop(), product_addr=config.product_addr,
                         initial_stock=config.initial_stock,
                         # The call's credentials (e.g. the admin token): ListOrders needs
                         # them when the services take user tokens.
                         metadata=tuple(config.metadata.items()), tls=config.tls)
    try:
        await check.take_baseline()
    except grpc.aio.AioRpcError as exc:
        raise BenchError(
            f"the invariant check cannot list orders at {check.order_addr} "
            f"({exc.code().name}: {exc.details()}); pass --order-addr or --no-check") from None
    return check


async def run_load(config: BenchConfig) -> Report:
    """Runs the load `config` describes and returns its report (with invariants for Seckill)."""
    try:
        config.validate()
        method = resolve(config.call)
        template = Template.compile(config.data_text)
    except (ConfigError, MethodError, TemplateError) as exc:
        raise BenchError(str(exc)) from None
    _sample_request(template, method.full_name, method.request_class, 0)
    check = None
    if config.check and method.is_seckill:
        check = await _prepare_check(config, template, method.full_name, method.request_class)

    parts = plan_parts(config, collect_order_ids=check is not None)
    progress = Progress(config)
    stopper = Stopper(config.handle_sigint)
    try:
        if config.procs == 1:
            results = [await _run_here(parts[0], progress, stopper)]
        else:
            results = await _run_spawned(parts, progress, stopper)
    finally:
        stopper.close()

    completed = sum(r.completed for r in results)
    if any(r.stopped for r in results):
        end_reason = "cancel"
    elif config.duration_s is not None and completed < (config.total or completed + 1):
        end_reason = "timeout"
    else:
        end_reason = "normal"
    options = {**config.options_json(), "call": method.full_name}
    report = Report.from_parts(options, results, end_reason)
    if config.calls_done is not None:
        config.calls_done()
    if check is not None:
        report.invariants = await check.verify(
            report.ok_answers, chain.from_iterable(r.order_ids for r in results),
            ok_units=sum(r.ok_units for r in results))
    return report


def run(config: BenchConfig) -> Report:
    """`run_load` for callers without an event loop."""
    return asyncio.run(run_load(config))


async def _run_here(spec: PartSpec, progress: Progress, stopper: Stopper) -> PartResult:
    part = Part(spec)
    try:
        await part.connect()
    except ConnectError as exc:
        raise BenchError(str(exc)) from None

    def stop() -> None:
        part.stopping = True

    stopper.hooks.append(stop)
    progress.source = lambda: part.completed
    progress.start()
    try:
        return await part.run()
    finally:
        await progress.stop()


async def _next_message(inbox: Any, processes: list[Any], finished: set[int]) -> tuple:
    """The next message from the children; fails when one died without a word."""
    while True:
        try:
            return await asyncio.to_thread(inbox.get, True, 0.2)
        except queue_module.Empty:
            for index, process in enumerate(processes):
                if index not in finished and process.exitcode not in (None, 0):
                    raise BenchError(f"client process {index} died with exit code "
                                     f"{process.exitcode}") from None


async def _run_spawned(specs: list[PartSpec], progress: Progress,
                       stopper: Stopper) -> list[PartResult]:
    ctx = multiprocessing.get_context("spawn")
    inbox = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    processes = [ctx.Process(target=child_main, args=(spec, inbox, go, stop), daemon=True,
                             name=f"seckill-bench-{spec.index}") for spec in specs]
    stopper.hooks.append(stop.set)
    results: dict[int, PartResult] = {}
    for process in processes:
        process.start()
    try:
        ready: set[int] = set()
        async with asyncio.timeout(specs[0].connect_timeout_s + SPAWN_BUDGET_S):
            while len(ready) < len(specs):
                kind, index, payload = await _next_message(inbox, processes, set())
                if kind == "error":
                    raise BenchError(f"client process {index}: {payload}")
                if kind == "ready":
                    ready.add(index)
        go.set()
        progress.start()
        try:
            while len(results) < len(specs):
                kind, index, payload = await _next_message(inbox, processes, set(results))
                if kind == "progress":
                    progress.set(index, payload)
                elif kind == "done":
                    results[index] = payload
                elif kind == "error":
                    raise BenchError(f"client process {index}: {payload}")
        finally:
            await progress.stop()
    except TimeoutError:
        raise BenchError("the client processes did not get ready in time") from None
    finally:
        for index, process in enumerate(processes):
            if index not in results and process.is_alive():
                process.terminate()
        for process in processes:
            await asyncio.to_thread(process.join, 5.0)
    return [results[spec.index] for spec in specs]
