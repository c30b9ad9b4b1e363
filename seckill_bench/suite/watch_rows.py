"""Row (f): storefronts watching one activity (WatchActivity) during a flash sale, against the
same storefronts polling GetActivity once a second (the same freshness).

For each watcher count (1,000 and 5,000 by default), on the stack's coalesced activity service:
1. the watchers connect, from `procs` client processes over several connections each (so
   over every worker), and read their first message; the workers' RSS before and after gives
   the memory per watcher;
2. a steady sale runs (Seckill calls at a fixed rate, every call a distinct user, a stock that
   does not run out) for `seconds`, every watcher asking for at most one message a second
   (min_interval 1 s, the freshness of a poll a second); measured:
   - message delay after a commit: a message's arrival (this machine's wall clock) minus the
     commit of the units it shows (the create_time of the order that took the unit that left
     units_left, the database's clock on the same machine), p50 and p99;
   - server CPU (utime + stime of the activity workers and the product and order services,
     from /proc) per message, net of the same sale without watchers, measured first;
3. polling: `pollers` clients each calling GetActivity once a second, staggered, during the
   same sale; server CPU per poll, net of the sale alone.
Clients served per core: 1 / net CPU per message for watching (a watcher at this freshness is
sent a message a second; counted per message, so clients that fell behind do not flatter it),
1 / net CPU per poll for polling (one poll a second is one client). Target: watching >= 5x
polling, and p99 delay <= 500 ms.

    python -m seckill_bench.suite.watch_rows [--watchers 1000,5000] [--seconds 10] [--workers 2]

runs this row alone on a stack of its own (`make bench` runs it among the others).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc, order_pb2, order_pb2_grpc

from seckill_bench.suite.procfs import children, cpu_seconds, total_rss_kib
from seckill_bench.suite.stack import BenchStack, log
from seckill_bench.suite.watch_clients import CHANNELS, ClientProcesses, channels
from seckill_stack.invariants import percentile
from seckill_stack.launcher import StackError
from seckill_stack.sale import open_sale

if TYPE_CHECKING:
    from seckill_bench.suite.scenarios import Row, Suite

LABEL = "activity-coalesced"
SALE_RATE = 50.0  # Seckill calls a second during the measured window
POLL_INTERVAL_S = 1.0


@dataclass
class WatchResult:
    watchers: int
    seconds: float
    messages: int
    delays_ms: list[float] = field(repr=False)
    p50_ms: float | None
    p99_ms: float | None
    cpu_s: float  # server CPU in the window, sale included
    net_cpu_s: float  # minus the sale alone
    cpu_per_message_us: float | None
    rss_per_watcher_kib: float | None
    clients_per_core: float | None


@dataclass
class PollResult:
    pollers: int
    seconds: float
    polls: int
    p50_ms: float | None
    p99_ms: float | None
    cpu_s: float
    net_cpu_s: float
    cpu_per_poll_us: float | None
    clients_per_core: float | None


# --- the server's processes --------------------------------------------------------------

def server_pids(stack: BenchStack) -> tuple[list[int], list[int]]:
    """(activity workers, every server process) of the stack's coalesced activity service,
    product and order services."""
    activity = stack.services[LABEL].pid
    assert activity is not None
    workers = children(activity) or [activity]
    others = [p for label in ("product", "order")
              if (p := stack.services[label].pid) is not None]
    return workers, [activity, *workers, *others]


async def sell(stub: activity_pb2_grpc.ActivityServiceAsyncStub, activity_id: int, prefix: str,
               seconds: float) -> int:
    """Seckill calls at SALE_RATE for `seconds`, each a new user; returns the OK answers."""
    ok = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Future[Any]] = set()

    async def one(i: int) -> None:
        nonlocal ok
        try:
            await stub.Seckill(activity_pb2.SeckillRequest(activity_id=activity_id,
                                                           user_id=f"{prefix}-{i}"), timeout=10)
            ok += 1
        except grpc.aio.AioRpcError:
            pass

    i = 0
    while (now := loop.time()) < start + seconds:
        task = asyncio.ensure_future(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        await asyncio.sleep(max(0.0, start + i / SALE_RATE - now))
    await asyncio.gather(*pending)
    return ok


async def commit_times(orders: order_pb2_grpc.OrderServiceAsyncStub, token: str,
                       activity_id: int) -> list[float]:
    """The create_time (epoch seconds, the DB's clock) of the activity's orders, in order."""
    times: list[float] = []
    request = order_pb2.ListOrdersRequest(activity_id=activity_id, page_size=1000)
    while True:
        page = await orders.ListOrders(request, metadata=(("authorization", f"Bearer {token}"),))
        times += [o.create_time.ToMicroseconds() / 1e6 for o in page.orders]
        if not page.next_page_token:
            return sorted(times)
        request.page_token = page.next_page_token


def quantiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    ordered = sorted(values)
    return percentile(ordered, 50), percentile(ordered, 99)


async def measure(stack: BenchStack, watcher_counts: list[int], seconds: float,
                  pollers: int, procs: int = 2) -> tuple[list[WatchResult], PollResult]:
    workers, every = server_pids(stack)
    addr = stack.addr(LABEL)
    stock = int(SALE_RATE * seconds * (len(watcher_counts) + 3)) + 1000
    activity_id = open_sale(stack.addr("product"), addr, stack.token, "watch bench", stock)
    chans = channels(addr, CHANNELS)
    order_channel = grpc.aio.insecure_channel(stack.addr("order"))
    stubs: list[activity_pb2_grpc.ActivityServiceAsyncStub] = [
        activity_pb2_grpc.ActivityServiceStub(c) for c in chans]
    buyer = stubs[0]
    try:
        log(f"(f) the sale alone, {seconds:g} s")
        t0, before = time.monotonic(), cpu_seconds(every)
        sold = await sell(buyer, activity_id, "base", seconds)
        baseline, base_window = cpu_seconds(every) - before, time.monotonic() - t0
        log(f"(f) sale alone: {sold} orders, server CPU {baseline:.2f} s")

        results: list[WatchResult] = []
        for count in watcher_counts:
            rss_before = total_rss_kib(workers)
            clients = ClientProcesses(addr, activity_id, count, procs)
            async with asyncio.timeout(180):
                await clients.start()
            await asyncio.sleep(1.0)  # let the connections settle before measuring
            rss_after = total_rss_kib(workers)
            log(f"(f) {count} watchers connected; sale {seconds:g} s")
            clients.say("start")
            t0, before = time.monotonic(), cpu_seconds(every)
            await sell(buyer, activity_id, f"w{count}", seconds)
            cpu, window = cpu_seconds(every) - before, time.monotonic() - t0
            samples = await clients.samples()
            orders: order_pb2_grpc.OrderServiceAsyncStub = order_pb2_grpc.OrderServiceStub(
                order_channel)
            commits = await commit_times(orders, stack.token, activity_id)
            delays = [1000 * (arrival - commits[stock - units - 1])
                      for arrival, units in samples if 0 <= stock - units - 1 < len(commits)]
            p50, p99 = quantiles(delays)
            net = max(cpu - baseline * window / base_window, 1e-9)
            per_message = net / len(samples) if samples else None
            results.append(WatchResult(
                count, window, len(samples), delays, p50, p99, cpu, net,
                None if per_message is None else 1e6 * per_message,
                (rss_after - rss_before) / count,
                # A watcher at the freshness of a poll a second is sent one message a second;
                # counted per message, so clients that fell behind do not flatter it.
                None if per_message is None else 1 / per_message))
            log(f"(f) {count} watchers: {len(samples)} messages, delay p50 {p50} p99 {p99} ms,"
                f" CPU {cpu:.2f} s")

        log(f"(f) {pollers} clients polling GetActivity once a second, {seconds:g} s")
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.5

        async def poller(i: int) -> None:
            stub = stubs[i % len(stubs)]
            n = 0
            while (due := start + i * POLL_INTERVAL_S / pollers + n * POLL_INTERVAL_S) < \
                    start + seconds:
                await asyncio.sleep(max(0.0, due - loop.time()))
                t0 = time.perf_counter()
                try:
                    await stub.GetActivity(activity_pb2.GetActivityRequest(id=activity_id),
                                           timeout=10)
                    latencies.append(1000 * (time.perf_counter() - t0))
                except grpc.aio.AioRpcError:
                    pass
                n += 1

        t0, before = time.monotonic(), cpu_seconds(every)
        await asyncio.gather(sell(buyer, activity_id, "poll", seconds + 0.5),
                             *(poller(i) for i in range(pollers)))
        cpu, window = cpu_seconds(every) - before, time.monotonic() - t0
        p50, p99 = quantiles(latencies)
        net = max(cpu - baseline * window / base_window, 1e-9)
        poll = PollResult(pollers, window, len(latencies), p50, p99, cpu, net,
                          1e6 * net / len(latencies) if latencies else None,
                          len(latencies) / net if latencies else None)
        log(f"(f) polling: {len(latencies)} polls, CPU {cpu:.2f} s")
        return results, poll
    finally:
        for channel in (*chans, order_channel):
            await channel.close()


def summary(results: list[WatchResult], poll: PollResult) -> dict[str, Any]:
    return {"watch": [{k: v for k, v in asdict(r).items() if k != "delays_ms"}
                      for r in results],
            "poll": asdict(poll)}


def rows(suite: Suite, watcher_counts: tuple[int, ...] = (1_000, 5_000),
         seconds: float = 10.0, pollers: int = 1_000) -> None:
    """Appends row (f), one line per watcher count, to the suite's results."""
    measured: dict[str, Any] = {}

    def run_once() -> tuple[list[WatchResult], PollResult]:
        if not measured:
            measured["r"] = asyncio.run(measure(suite.stack, list(watcher_counts), seconds,
                                                pollers, suite.settings.procs))
            folder = suite.settings.reports
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "f-watch.json"
            path.write_text(json.dumps(summary(*measured["r"]), indent=2) + "\n")
            suite.results.report_files.append(path)
        result: tuple[list[WatchResult], PollResult] = measured["r"]
        return result

    for index, count in enumerate(watcher_counts):
        def body(index: int = index, count: int = count) -> Row:
            results, poll = run_once()
            return as_row(f"f{index + 1}", results[index], poll)

        suite.row(f"f{index + 1}", f"WatchActivity, {count:,} watchers vs polling", body)


def as_row(key: str, r: WatchResult, poll: PollResult) -> Row:
    from seckill_bench.suite.scenarios import Row

    ratio = (r.clients_per_core / poll.clients_per_core
             if r.clients_per_core and poll.clients_per_core else None)
    outcome = (
        f"delay after a commit p50/p99 {fmt(r.p50_ms)}/{fmt(r.p99_ms)} ms (target p99 <= 500); "
        f"{fmt(r.messages / r.watchers / r.seconds, 2)} messages/s a watcher; "
        f"server CPU {fmt(r.cpu_per_message_us)} us/message; "
        f"{fmt(r.rss_per_watcher_kib)} KiB/watcher; clients per core: watching "
        f"{fmt(r.clients_per_core, 0)}, polling GetActivity 1/s {fmt(poll.clients_per_core, 0)}"
        f" ({poll.pollers:,} pollers, {fmt(poll.cpu_per_poll_us)} us/poll): "
        f"{fmt(ratio)}x (target >= 5x)")
    return Row(key, f"WatchActivity, {r.watchers:,} watchers, 1 message/s each, during a sale",
               calls=r.messages, seconds=r.seconds, rps=r.messages / r.seconds, p50=r.p50_ms,
               p99=r.p99_ms, max_ms=max(r.delays_ms) if r.delays_ms else None, outcome=outcome)


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seckill_bench.suite.watch_rows",
                                description="Row (f) alone, on a stack of its own.")
    p.add_argument("--watchers", default="1000,5000",
                   help="watcher counts, comma-separated (1000,5000)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window (10)")
    p.add_argument("--pollers", type=int, default=1000, help="GetActivity pollers (1000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes of the activity service (default: cores)")
    p.add_argument("--procs", type=int, default=2, help="watcher client processes (2)")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.watchers.split(",")]
    stack = BenchStack(args.workers)
    try:
        stack.start()
        results, poll = asyncio.run(measure(stack, counts, args.seconds, args.pollers,
                                            args.procs))
    except StackError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stack.stop()
    print(json.dumps(summary(results, poll), indent=2))
    for i, r in enumerate(results):
        print(as_row(f"f{i + 1}", r, poll).outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
