"""The rows of the table: each a load run with the same client settings, its sale set up over
gRPC first. A row that fails says why in its outcome, and the next one still runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from seckill_bench.config import BenchConfig
from seckill_bench.report import Report
from seckill_bench.runner import BenchError, run
from seckill_bench.suite import relay_rows, waiting_room, watch_rows
from seckill_bench.suite.cpu import CpuMeter
from seckill_bench.suite.procfs import RssSampler, children, rss_mib
from seckill_bench.suite.stack import ACTIVITY_MODES, BenchStack, log
from seckill_stack.launcher import StackError
from seckill_stack.sale import open_sale

SECKILL = "seckill.v1.ActivityService/Seckill"
HEALTH = "grpc.health.v1.Health/Check"
GET_ACTIVITY = "seckill.v1.ActivityService/GetActivity"
SOAK_STOCK = 10**9  # never sells out: every soak call commits an order
# (q): users ask for 1 to 3 units, all or nothing. `{{mod .RequestNumber 4}}` gives 0 (= 1),
# 1, 2, 3 in turn, so a user's two tries ask for 1 and 1, or 2 and 3.
MAX_QUANTITY = 3
QUANTITY_TEMPLATE = "{{mod .RequestNumber 4}}"


@dataclass
class Settings:
    workers: int
    concurrency: int
    connections: int
    procs: int
    calls: int  # (a) and (d)
    flash_users: int
    flash_stock: int
    soak_seconds: float
    warmup_calls: int
    output: Path
    reports: Path
    only: frozenset[str] = frozenset()  # the rows to run (a, b, w, ...); empty: all
    # (j1), (j2): the crowd on a small stock, through the waiting room and without it.
    queue_buyers: int = 50_000
    queue_stock: int = 1_000
    queue_procs: int = 4


@dataclass
class Row:
    key: str  # a..e
    title: str
    calls: int | None = None
    seconds: float | None = None
    rps: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max_ms: float | None = None
    outcome: str = ""
    report: Report | None = None
    failed: bool = False  # the scenario could not be run as intended
    # Milliseconds of CPU per call by server process (cpu.PROCESSES), for the rows that read it.
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_report(cls, key: str, title: str, report: Report,
                    cpu_ms: dict[str, float] | None = None) -> Row:
        lat = report.latency_ms
        return cls(key, title, report.count, report.total_s, report.rps, lat.get("p50"),
                   lat.get("p90"), lat.get("p99"), lat.get("max"), outcomes(report), report,
                   cpu_ms=cpu_ms or {})


def outcomes(report: Report) -> str:
    text = ", ".join(f"{status} {n:,}" for status, n in report.status_counts.items())
    if report.reason_counts:
        text += " (" + ", ".join(f"{reason.split('/', 1)[-1]} {n:,}"
                                 for reason, n in report.reason_counts.items()) + ")"
    if report.end_reason == "cancel":
        text += "; stopped early"
    if report.invariants:
        failed = [i for i in report.invariants if not i.ok]
        text += ("; invariants: all " + str(len(report.invariants)) + " ok" if not failed else
                 "; invariants FAILED: " + "; ".join(f"{i.name} ({i.detail})" for i in failed))
    return text


@dataclass
class Memory:
    """VmRSS (MiB) of the activity workers around the soak, by pid."""

    pids: list[int]
    start: dict[int, float | None]
    end: dict[int, float | None]
    peak: dict[int, float]
    pids_after: list[int]


@dataclass
class Results:
    settings: Settings
    started: float
    rows: list[Row] = field(default_factory=list)
    memory: Memory | None = None
    report_files: list[Path] = field(default_factory=list)
    load_before: str = "?"
    load_after: str = "?"
    code: str = "?"
    db_version: str = "?"

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)


# --- set-up over gRPC --------------------------------------------------------------------------

def create_sale(stack: BenchStack, activity_label: str, name: str, stock: int,
                per_user_limit: int = 1) -> int:
    """A product with `stock` and an activity open now (since 5 s, for an hour): its id."""
    return open_sale(stack.addr("product"), stack.addr(activity_label), stack.token, name,
                     stock, per_user_limit=per_user_limit)


# --- the rows ----------------------------------------------------------------------------------

class Suite:
    def __init__(self, settings: Settings, stack: BenchStack, results: Results) -> None:
        self.settings = settings
        self.stack = stack
        self.results = results
        self.flash_sale_activity: int | None = None  # (b)'s, read by (d)

    def load(self, name: str, call: str, label: str, data: str | dict[str, Any],
             **options: Any) -> Report:
        s = self.settings
        values: dict[str, Any] = {
            "concurrency": s.concurrency, "connections": s.connections, "procs": s.procs,
            "progress": True, "order_addr": self.stack.addr("order"), **options,
        }
        return run(BenchConfig(call=call, host=self.stack.addr(label), data=data, name=name,
                               **values))

    def metered(self, name: str, call: str, label: str, data: str | dict[str, Any],
                **options: Any) -> tuple[Report, dict[str, float]]:
        """`load`, and what its calls cost each server process in CPU (ms per call): read
        when the calls are done, before the invariant check's own calls."""
        meter = CpuMeter(self.stack, label)
        meter.start()
        report = self.load(name, call, label, data, calls_done=meter.stop, **options)
        return report, meter.per_call(report.count)

    def save(self, stem: str, report: Report) -> None:
        folder = self.settings.reports
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".html", report.to_html()), (".json", report.to_json() + "\n")):
            path = folder / f"{stem}{suffix}"
            path.write_text(text, encoding="utf-8")
            self.results.report_files.append(path)

    def row(self, key: str, title: str, body: Callable[[], Row]) -> None:
        """Runs one row (unless --rows leaves it out); a failure becomes the row's outcome."""
        only = self.settings.only
        if only and key not in only and key.rstrip("0123456789") not in only:
            return
        log(f"({key}) {title}")
        t0 = time.monotonic()
        try:
            row = body()
        except (BenchError, StackError, grpc.RpcError, OSError) as exc:
            # A failed call (opening a sale) says what went wrong in its details.
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            row = Row(key, title, outcome=f"failed: {detail}".splitlines()[0][:300],
                      failed=True)
            log(f"({key}) failed: {detail}")
        self.results.rows.append(row)
        if row.rps is not None:
            log(f"({key}) {row.rps:,.0f} calls/s, p99 {row.p99 or 0:.1f} ms; {row.outcome} "
                f"[{time.monotonic() - t0:.0f} s]")
        self.stack.check_alive()

    def run_all(self) -> None:
        self.warm_up()
        s = self.settings
        self.row("a", "Health/Check ceiling (coalesced activity svc)", self.ceiling)
        assert self.stack.nats is not None
        with relay_rows.RelayProbe(self.stack.nats.url) as relay:
            self.row("b", "flash sale, coalesced", lambda: self.flash_sale("b", "coalesced"))
            # Right after (b), on the same service: its rate is judged against (b)'s.
            self.row("q", "flash sale of 1-3 units, coalesced",
                     lambda: self.flash_sale("q", "coalesced", MAX_QUANTITY))
            self.row("r", "the relay during (b)", lambda: relay_rows.relay_row(self, relay))
        self.row("n", "flash sale, coalesced, events off", lambda: relay_rows.without_events(self))
        # (w1), (w2): every call a winner, with events and without (what the outbox and the
        # relay cost an order: the order service's CPU is the relay's).
        self.row("w1", "all winners, coalesced",
                 lambda: self.all_winners("w1", "activity-coalesced"))
        self.row("w2", "all winners, coalesced, events off",
                 lambda: self.all_winners("w2", "activity-no-events",
                                          " (SECKILL_EVENTS_ENABLED=false: without the outbox and"
                                          " the relay)"))
        self.row("c", "flash sale, per_request", lambda: self.flash_sale("c", "per_request"))
        self.row("d", "GetActivity, the load of (a)", self.get_activity)
        watch_rows.rows(self)  # (f): WatchActivity's watchers against GetActivity polling
        waiting_room.rows(self)  # (j1), (j2): a crowd through the waiting room, and without
        if s.soak_seconds > 0:
            self.row("e", f"memory soak, {s.soak_seconds:g} s", self.soak)
        elif not s.only or "e" in s.only:
            self.results.rows.append(Row("e", "memory soak",
                                         outcome="skipped (--soak-seconds 0)"))

    def warm_up(self) -> None:
        """Every activity worker opens its DB connections on demand: a small unreported sale."""
        calls = self.settings.warmup_calls
        if calls <= 0:
            return
        for label in ACTIVITY_MODES:
            activity = create_sale(self.stack, label, f"warm-up {label}", max(calls // 4, 1))
            log(f"warm-up: {calls} Seckill calls on {label}")
            self.load(f"warm-up {label}", SECKILL, label,
                      {"activity_id": activity, "user_id": "warm-{{div .RequestNumber 2}}"},
                      total=calls, check=False, progress=False)

    def ceiling(self) -> Row:
        """(a): a call that does no work, the most the server answers."""
        report, cpu = self.metered("(a) Health/Check", HEALTH, "activity-coalesced", "{}",
                                   total=self.settings.calls)
        self.save("a-health-check", report)
        return Row.from_report("a", "Health/Check ceiling (coalesced activity svc)", report, cpu)

    def flash_sale(self, key: str, mode: str, max_quantity: int = 1, label: str = "",
                   title: str = "") -> Row:
        """(b), (c), (q), (n): every user tries twice; the invariants (in units) are checked
        through the API. (q) sells quantities: users ask for 1 to `max_quantity` units.
        `label`: the activity service (default the mode's); `title`: the row's."""
        s = self.settings
        label = label or f"activity-{mode}"
        activity = create_sale(self.stack, label, f"flash sale {key}", s.flash_stock,
                               per_user_limit=max_quantity)
        data = json.dumps({"activity_id": activity, "user_id": "user-{{div .RequestNumber 2}}",
                           **({"quantity": "QUANTITY"} if max_quantity > 1 else {})})
        if max_quantity > 1:  # a number in the JSON, not a string
            data = data.replace('"QUANTITY"', QUANTITY_TEMPLATE)
        elif key == "b":
            self.flash_sale_activity = activity
        report, cpu = self.metered(f"({key}) flash sale {mode}", SECKILL, label, data,
                                   total=2 * s.flash_users, initial_stock=s.flash_stock)
        units = "" if max_quantity == 1 else f"-{max_quantity}-units"
        self.save(f"{key}-flash-sale-{mode.replace('_', '-')}{units}", report)
        asks = "" if max_quantity == 1 else f", 1-{max_quantity} units each"
        return Row.from_report(key, f"{title or f'flash sale, {mode}'} (stock "
                                    f"{s.flash_stock:,}, {s.flash_users:,} users, 2 tries "
                                    f"each{asks})", report, cpu)

    def all_winners(self, key: str, label: str, why: str = "") -> Row:
        """(w1), (w2): every call a new user with stock to spare, so every call commits an
        order: the winner's path alone, as many calls as (a)."""
        calls = self.settings.calls
        activity = create_sale(self.stack, label, f"all winners {key}", calls)
        report, cpu = self.metered(f"({key}) all winners", SECKILL, label,
                                   {"activity_id": activity,
                                    "user_id": f"{key}-{{{{.RequestNumber}}}}"},
                                   total=calls, initial_stock=calls)
        self.save(f"{key}-all-winners", report)
        return Row.from_report(key, f"all winners: every call a new user, stock {calls:,}, "
                                    f"coalesced{why}", report, cpu)

    def get_activity(self) -> Row:
        """(d): a read that also calls the product service, as many calls as (a)."""
        activity = self.flash_sale_activity or create_sale(
            self.stack, "activity-coalesced", "get activity", 1)
        report = self.load("(d) GetActivity", GET_ACTIVITY, "activity-coalesced",
                           {"id": activity}, total=self.settings.calls)
        self.save("d-get-activity", report)
        return Row.from_report("d", "GetActivity (+ ProductService.GetProduct), the load of (a)",
                               report)

    def soak(self) -> Row:
        """(e): every call commits an order; the workers' memory before, during and after."""
        s = self.settings
        activity = create_sale(self.stack, "activity-coalesced", "soak", SOAK_STOCK)
        supervisor = self.stack.services["activity-coalesced"].pid
        assert supervisor is not None
        # With --workers 1 the service runs in its one process, without a supervisor.
        pids = children(supervisor) or [supervisor]
        start = {pid: rss_mib(pid) for pid in pids}
        with RssSampler(pids) as sampler:
            report = self.load(f"(e) soak {s.soak_seconds:g} s", SECKILL, "activity-coalesced",
                               {"activity_id": activity, "user_id": "soak-{{.RequestNumber}}"},
                               duration_s=s.soak_seconds, initial_stock=SOAK_STOCK)
        end = {pid: rss_mib(pid) for pid in pids}
        self.results.memory = Memory(pids, start, end, sampler.peak,
                                     children(supervisor) or [supervisor])
        self.save("e-soak-memory", report)
        growth = [e - b for b, e in ((start[p], end[p]) for p in pids)
                  if e is not None and b is not None]
        row = Row.from_report("e", f"soak {s.soak_seconds:g} s, coalesced, stock 10^9 "
                                   "(memory below)", report)
        if growth:
            row.outcome += f"; RSS growth per worker: {', '.join(f'{g:+.1f}' for g in growth)} MiB"
        return row
