"""Rows (j1), (j2): a crowd on a small stock, through the waiting room and straight at Seckill.

(j1) `queue_buyers` buyers (50,000) join a waiting room before the start, stock `queue_stock`
(1,000), from `queue_procs` client processes (seckill_bench/crowd.py). The sale starts far
ahead; once every buyer has had a first message (PRE_QUEUED), the activity workers' memory and
CPU are read, the crowd waits WAIT_S more (CPU read again: what holding the waiting costs,
net of the servers' idle CPU read over IDLE_S before the crowd), then the start is moved to
START_LEAD_S from now (UpdateActivity): the shuffle, admissions,
purchases with the passes, SOLD_OUT to the rest. Target: every buyer answered (won or
SOLD_OUT), 0 RESOURCE_EXHAUSTED and 0 DEADLINE_EXCEEDED (answers, and refusals retried).
Measured: the time from the last unit sold to the last SOLD_OUT heard; server CPU per join
and per waiting buyer-second; memory per waiting stream (VmRSS of the activity workers after
the joins less before, per buyer).

(j2) The same crowd calling Seckill directly at the start of a sale of the same stock (no
waiting room), with the shipped client's retries (RetryInfo backoff, adaptive throttling):
buyers answered within 10 s of the start.

Each runs on an activity service of its own, started for the row beside the stack's (coalesced,
--workers as the stack's, the same database and peers), with one setting changed:
SECKILL_WORKER_TIMEOUT 30 s instead of 5 s. On the shared 2-core machine (load 15-30 from other
work) both workers' loops went 5.5 s without a turn while ~15,000-25,000 streams each were
joining, and the supervisor's watchdog killed them, ending every stream (two runs of
2026-12-08); with the longer timeout the row measures the waiting room rather than the
watchdog. SECKILL_QUEUE_MAX_STREAMS (50,000 per process by default) is left as shipped: with 2
workers the crowd's 50,000 streams are ~25,000 a process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2
from seckill.v1 import activity_pb2, activity_pb2_grpc, product_pb2, product_pb2_grpc

from seckill_bench.crowd import DIRECT, QUEUED, CrowdConfig, CrowdReport, run_crowd
from seckill_bench.suite.cpu import CpuReading
from seckill_bench.suite.procfs import children, total_rss_kib
from seckill_bench.suite.stack import SERVING_TIMEOUT_S, BenchStack, log
from seckill_common.api.times import to_timestamp
from seckill_stack.services import (
    ServiceProcess,
    address_setting,
)

if TYPE_CHECKING:
    from seckill_bench.suite.scenarios import Row, Suite

LABEL = "activity-queue"  # the rows' own activity service (queue_service)
BASE_LABEL = "activity-coalesced"  # the stack's service whose settings it takes
# The one setting the rows' service changes (the module's docstring says why).
QUEUE_SERVICE_ENV = {"SECKILL_WORKER_TIMEOUT": "30"}
IDLE_S = 5.0  # the servers' idle CPU is read over this long first
WAIT_S = 10.0  # the crowd waits this long after its last join, before the start is set
START_LEAD_S = 3.0  # the start, set this far after that window
DIRECT_LEAD_S = 30.0  # (j2)'s start: the client processes start and connect before it
JOIN_RATE = 500.0  # buyers joining a second (j1): 100 s for 50,000, about what 2 cores join
BUYER_TIMEOUT_S = 1200.0  # a pre-queue may last minutes: the joins alone take that at 50,000 here


def sale(stack: BenchStack, name: str, stock: int, start: dt.datetime,
         room: bool) -> int:
    """A product with `stock` and an activity starting at `start` for an hour, with a waiting
    room (every setting at its default) or without: the activity's id."""
    admin = (("authorization", f"Bearer {stack.token}"),)
    with grpc.insecure_channel(stack.addr("product")) as products, \
            grpc.insecure_channel(stack.addr(LABEL)) as activities:
        product = product_pb2_grpc.ProductServiceStub(products).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name=name, price_cents=100, stock=stock)), metadata=admin, timeout=30)
        activity = activity_pb2_grpc.ActivityServiceStub(activities).CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name=name, start_time=to_timestamp(start),
                end_time=to_timestamp(start + dt.timedelta(hours=1)),
                waiting_room=activity_pb2.WaitingRoom(enabled=room))),
            metadata=admin, timeout=30)
    return int(activity.id)


def start_now(stack: BenchStack, activity_id: int, lead_s: float) -> None:
    """Moves the activity's start to `lead_s` from now (its end stays)."""
    admin = (("authorization", f"Bearer {stack.token}"),)
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead_s)
    with grpc.insecure_channel(stack.addr(LABEL)) as activities:
        activity_pb2_grpc.ActivityServiceStub(activities).UpdateActivity(
            activity_pb2.UpdateActivityRequest(
                activity=activity_pb2.Activity(id=activity_id, start_time=to_timestamp(start)),
                update_mask=field_mask_pb2.FieldMask(paths=["start_time"])),
            metadata=admin, timeout=30)


@contextlib.contextmanager
def queue_service(stack: BenchStack) -> Iterator[ServiceProcess]:
    """An activity service for one row, known to the stack as LABEL while the row runs."""
    module = "activity_svc"
    env = {**stack.services[BASE_LABEL].env, address_setting(module): "127.0.0.1:0",
           **QUEUE_SERVICE_ENV}
    service = stack.services.add(LABEL, module, env, argv=("--workers", str(stack.workers)))
    try:
        stack.services.spawn([LABEL])
        stack.services.wait_serving(SERVING_TIMEOUT_S, [service])
        yield service
    finally:
        stack.services.remove(LABEL)


def workers_of(stack: BenchStack) -> list[int]:
    supervisor = stack.services[LABEL].pid
    assert supervisor is not None
    return children(supervisor) or [supervisor]


class Readings:
    """What (j1) reads of the servers around the joins and the wait."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.workers = workers_of(stack)
        # The servers' own idle CPU (heartbeats, health, the mover's rounds), subtracted
        # from the waiting window's.
        idle = CpuReading.of(stack, LABEL).seconds
        t0 = time.monotonic()
        time.sleep(IDLE_S)  # a measured window: nothing to await
        self.cpu_before = CpuReading.of(stack, LABEL).seconds
        self.idle_per_s = {k: (self.cpu_before[k] - idle[k]) / (time.monotonic() - t0)
                           for k in idle}
        self.rss_before = total_rss_kib(self.workers)
        self.rss_joined = self.rss_waited = 0
        self.cpu_joined: dict[str, float] = {}
        self.cpu_waited: dict[str, float] = {}
        self.waited_s = 0.0
        self.joined_after_s = 0.0
        self.settled = 0
        self._began = time.monotonic()

    def joined(self, activity_id: int, settled: int) -> None:
        """Every buyer has had a first message (or an answer, or no more come): read, wait
        WAIT_S, read, start the sale."""
        self.settled = settled
        self.joined_after_s = time.monotonic() - self._began
        self.rss_joined = total_rss_kib(self.workers)
        self.cpu_joined = CpuReading.of(self.stack, LABEL).seconds
        t0 = time.monotonic()
        time.sleep(WAIT_S)  # the measured window: the crowd waits, nothing to await
        self.cpu_waited = CpuReading.of(self.stack, LABEL).seconds
        self.rss_waited = total_rss_kib(self.workers)
        self.waited_s = time.monotonic() - t0
        start_now(self.stack, activity_id, START_LEAD_S)
        log(f"(j1) joined in {self.joined_after_s:.0f} s; waited {self.waited_s:.0f} s; "
            f"the sale starts in {START_LEAD_S:g} s")

    def summary(self, buyers: int) -> dict[str, Any]:
        def spent(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
            return {name: after[name] - before[name] for name in after}
        joins = spent(self.cpu_joined, self.cpu_before)
        waiting = {k: v - self.idle_per_s[k] * self.waited_s
                   for k, v in spent(self.cpu_waited, self.cpu_joined).items()}
        return {
            "joined_after_s": self.joined_after_s, "waited_s": self.waited_s,
            "first_message_before_the_start": self.settled,
            "rss_kib": {"before": self.rss_before, "joined": self.rss_joined,
                        "waited": self.rss_waited},
            "rss_per_stream_kib": (self.rss_waited - self.rss_before) / buyers,
            "cpu_idle_per_s": self.idle_per_s, "cpu_joins_s": joins,
            "cpu_waiting_net_of_idle_s": waiting,
            "cpu_per_join_ms": {k: 1000 * v / buyers for k, v in joins.items()},
            "cpu_per_waiting_buyer_us_per_s": {
                k: 1e6 * v / buyers / max(self.waited_s, 1e-9) for k, v in waiting.items()},
        }


def queued(suite: Suite) -> Row:
    with queue_service(suite.stack):
        return _queued(suite)


def _queued(suite: Suite) -> Row:
    s = suite.settings
    stack = suite.stack
    # Far ahead: the start is set once every buyer is in the line.
    activity_id = sale(stack, "waiting room j1", s.queue_stock,
                       dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20), room=True)
    readings = Readings(stack)
    config = CrowdConfig(QUEUED, stack.addr(LABEL), activity_id, s.queue_buyers,
                         procs=s.queue_procs, user_prefix="j1-", join_rate=JOIN_RATE,
                         timeout_s=BUYER_TIMEOUT_S, progress=True)
    report = run_crowd(config, joined=lambda settled: readings.joined(activity_id, settled))
    measured = readings.summary(s.queue_buyers)
    save(suite, "j1-waiting-room", {**report.to_json(), "servers": measured})
    met = (report.answered == s.queue_buyers and report.count("RESOURCE_EXHAUSTED") == 0
           and report.count("DEADLINE_EXCEEDED") == 0)
    gap = report.sold_out_after_last_sale_s
    per_join = measured["cpu_per_join_ms"]
    per_wait = measured["cpu_per_waiting_buyer_us_per_s"]
    outcome = (
        f"{answers(report)}; every buyer answered, 0 RESOURCE_EXHAUSTED, 0 DEADLINE_EXCEEDED: "
        f"{'met' if met else 'NOT met'} (RESOURCE_EXHAUSTED {report.count('RESOURCE_EXHAUSTED'):,},"
        f" DEADLINE_EXCEEDED {report.count('DEADLINE_EXCEEDED'):,}); last unit sold to last "
        f"SOLD_OUT heard: {'—' if gap is None else f'{gap * 1000:,.0f} ms'}; "
        f"{readings.settled:,} joined (a first message or an answer) in "
        f"{measured['joined_after_s']:.0f} s, sent at {JOIN_RATE:,.0f}/s; memory per waiting "
        f"stream {measured['rss_per_stream_kib']:.1f} KiB (activity workers' VmRSS); server "
        f"CPU per join {per_join['activity']:.2f} ms activity + {per_join['MariaDB']:.2f} ms "
        "MariaDB; "
        f"per waiting buyer {per_wait['activity']:.1f} + {per_wait['MariaDB']:.1f} us/s "
        f"(activity + MariaDB, over {measured['waited_s']:.0f} s, net of idle); "
        f"{stages(report)}")
    return crowd_row("j1", f"waiting room: {s.queue_buyers:,} buyers join before the start, "
                           f"stock {s.queue_stock:,}, {s.queue_procs} client processes",
                     report, "join_to_answer", outcome)


def direct(suite: Suite) -> Row:
    with queue_service(suite.stack):
        return _direct(suite)


def _direct(suite: Suite) -> Row:
    s = suite.settings
    stack = suite.stack
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=DIRECT_LEAD_S)
    activity_id = sale(stack, "direct crowd j2", s.queue_stock, start, room=False)
    config = CrowdConfig(DIRECT, stack.addr(LABEL), activity_id, s.queue_buyers,
                         procs=s.queue_procs, user_prefix="j2-", timeout_s=BUYER_TIMEOUT_S,
                         progress=True)
    report = run_crowd(config)
    save(suite, "j2-direct-crowd", report.to_json())
    within = report.answered_within_10s or 0
    outcome = (f"answered within 10 s of the start: {within:,} "
               f"({100 * within / s.queue_buyers:.0f}%); {answers(report)}; "
               f"RESOURCE_EXHAUSTED {report.count('RESOURCE_EXHAUSTED'):,}, DEADLINE_EXCEEDED "
               f"{report.count('DEADLINE_EXCEEDED'):,} (answers and refusals retried); "
               f"{stages(report)}")
    return crowd_row("j2", f"the crowd of (j1) calling Seckill directly at the start, stock "
                           f"{s.queue_stock:,}, the shipped client's retries", report,
                     "start_to_answer", outcome)


def answers(report: CrowdReport) -> str:
    return f"answered {report.answered:,} of {report.config.buyers:,} (" + ", ".join(
        f"{k} {v:,}" for k, v in sorted(report.answers.items())) + ")"


def stages(report: CrowdReport) -> str:
    return "stages p50/p99 ms: " + "; ".join(
        f"{name.replace('_', ' ')} {q['p50']:,.0f}/{q['p99']:,.0f}"
        for name, q in report.stages_ms.items())


def crowd_row(key: str, title: str, report: CrowdReport, stage: str, outcome: str) -> Row:
    from seckill_bench.suite.scenarios import Row

    q = report.stages_ms.get(stage, {})
    return Row(key, title, calls=report.config.buyers, seconds=report.wall_s,
               p50=q.get("p50"), p90=q.get("p90"), p99=q.get("p99"), max_ms=q.get("max"),
               outcome=outcome)


def save(suite: Suite, stem: str, value: dict[str, Any]) -> None:
    folder = suite.settings.reports
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    suite.results.report_files.append(path)


def rows(suite: Suite) -> None:
    """Appends rows (j1) and (j2)."""
    suite.row("j1", "waiting room, a crowd joins before the start", lambda: queued(suite))
    suite.row("j2", "the same crowd calling Seckill directly", lambda: direct(suite))
