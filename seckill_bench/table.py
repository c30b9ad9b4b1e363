"""`make bench`: the benchmark table of BENCHMARKS.md, measured in one run, side by side.

    python -m seckill_bench.table [--workers N] [-c 64] [--connections 4] [--procs 2]
        [--health-calls 20000] [--flash-users 20000] [--flash-stock 10000]
        [--get-calls 20000] [--h2load-calls 20000] [--soak-seconds 60]

Starts a stack of its own (a fresh private MariaDB under .run/bench/mariadb on a free port, the
product and order services, and two activity services on the same database: one with
SECKILL_COMMIT_MODE=coalesced, one with per_request), runs the scenarios (a)..(f) with the
same client settings, stops everything again (also on errors and Ctrl-C), and writes
BENCHMARKS.md's generated section, the HTML and JSON reports under benchmarks/, and the table
on stdout. Exit 0 when every scenario ran and every invariant held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc, product_pb2, product_pb2_grpc

from seckill_bench.config import BenchConfig
from seckill_bench.report import Report
from seckill_bench.runner import BenchError, run
from seckill_common.validation import to_timestamp

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run" / "bench"
DB_DIR = RUN_DIR / "mariadb"
LOG_DIR = RUN_DIR / "logs"
DEFAULT_OUTPUT = REPO / "BENCHMARKS.md"
DEFAULT_REPORTS = REPO / "benchmarks"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

SECKILL = "seckill.v1.ActivityService/Seckill"
HEALTH = "grpc.health.v1.Health/Check"
GET_ACTIVITY = "seckill.v1.ActivityService/GetActivity"
DATABASE = "seckill_bench"
SOAK_STOCK = 10**9  # never sells out: every soak call commits an order
SERVING_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0  # per service; above its default shutdown grace of 5 s
DB_START_TIMEOUT_S = 600.0  # mariadb.sh may first install mariadb-server through apt
H2LOAD_TIMEOUT_S = 300.0
APT_TIMEOUT_S = 600.0
RSS_SAMPLE_INTERVAL_S = 1.0
# Services listen below Linux's range for outgoing ports, so that a client socket cannot take
# a chosen port between the check and the bind.
PORT_FLOOR = 20_000

TARGET_CEILING_RATIO = 0.8  # (b)/(a)
TARGET_MODE_RATIO = 3.0  # (b)/(c)
TARGET_P99_MS = 50.0  # p99 of (b)

INTRO = """\
# Benchmarks

`make bench` (`python -m seckill_bench.table`) measures the services on this machine, every
scenario in one run and side by side, and rewrites the section between the `bench:` markers
below. Everything else in this file is kept as it is.

## What is measured

One run starts a stack of its own: a fresh private MariaDB (`.run/bench/mariadb`, on a free
port), the product and order services, and **two activity services on the same database**,
one with `SECKILL_COMMIT_MODE=coalesced` (the default: the buyers of a product share a
transaction) and one with `per_request` (one transaction per Seckill), each with `--workers`
= the number of cores. The services run with `SECKILL_LOG_LEVEL=WARNING`, so the access log
line of every call is not part of the measurement. The load comes from `seckill-bench`
(several client processes), with the same client settings in every scenario:

- (a) `grpc.health.v1.Health/Check` against the coalesced activity service: the ceiling of
  a call that does no work.
- (b) A flash sale, coalesced: stock 10,000, 20,000 users each trying twice (40,000 `Seckill`
  calls with `user-{{div .RequestNumber 2}}`), the invariants checked through the API after.
- (c) The same flash sale against the per_request activity service, on a product and an
  activity of its own.
- (d) `GetActivity`, which also calls the product service for the embedded product.
- (e) The ceiling of (a) as `h2load` (nghttp2's C client) sees it: HTTP/2 POSTs of the gRPC
  frame of an empty `HealthCheckRequest`. gRPC's status travels in the trailers, which h2load
  does not read: it only sees HTTP 200. The run checks instead that every response carried
  the 7-byte SERVING message (a failed call carries none).
- (f) Memory: a soak of `Seckill` calls (unique users, a stock that never runs out, so every
  call commits an order) against the coalesced service, and the resident memory (VmRSS) of
  each of its worker processes before and after.

Then the targets: (b)/(a) throughput at least 0.8 (a flash sale close to the ceiling of
the server), (b)/(c) at least 3 (coalescing pays), and the p99 latency of (b) at most 50 ms
with 64 calls in flight. Each is shown as met or not, as measured.

## How to reproduce

```sh
make bench                                       # the whole table, a few minutes
make bench BENCH_ARGS="--soak-seconds 0"         # without the memory soak
make bench BENCH_ARGS="--workers 1 -c 32"        # other server or client settings
```

Flags (`python -m seckill_bench.table --help`): `--workers` (activity workers, default the
number of cores), `-c/--concurrency` (64), `--connections` (4), `--procs` (2), `--health-calls`
(20,000), `--flash-users` (20,000; each tries twice), `--flash-stock` (10,000), `--get-calls`
(20,000), `--h2load-calls` (20,000), `--soak-seconds` (60; 0 skips), `--warmup-calls` (1,000),
`--output` and `--reports`. Without `h2load`, the run installs Debian's `nghttp2-client`
when it runs as root; otherwise row (e) says "not measured" and why.

Each run also writes the HTML and JSON reports of (a), (b), (c), (d) and (f) into
`benchmarks/`, h2load's own output as `benchmarks/e-h2load-health-check.txt`, and the
services' logs into `.run/bench/logs/`. The machine (cores, CPU model, memory, Python,
MariaDB version) is recorded with the results, since the numbers only mean something for it.

## Caveats

- The client processes, the services (two activity services, each with its workers, plus
  the product and order services) and MariaDB all share the machine's cores: on a 2-core
  machine the load tool takes a good part of the CPU that the server would otherwise have.
  The absolute numbers are lower than on a machine where the client runs elsewhere.
- Runs are noisy (a shared virtual machine, other processes, the CPU's clock): compare the
  ratios within one run rather than absolute numbers across runs.
- The flash-sale rows include the refusals: after the 10,000 orders, the rest are answered
  ALREADY_EXISTS or SOLD_OUT, mostly from memory (the sold-out fast path).
- MariaDB runs with its defaults (`innodb_flush_log_at_trx_commit=1`: a commit waits for the
  log flush), on the machine's disk.
- Every activity worker opens its database connections on demand: a short, unreported
  warm-up sale on each activity service comes before the measurements.

## Results
"""


class StackError(RuntimeError):
    """The stack could not be started."""


# The activity services of one run, on one database: label -> their settings.
ACTIVITY_MODES = {
    "activity-coalesced": {"SECKILL_COMMIT_MODE": "coalesced"},
    "activity-per_request": {"SECKILL_COMMIT_MODE": "per_request"},
    # The naive design: one transaction per call and no sold-out fast path either.
    "activity-naive": {"SECKILL_COMMIT_MODE": "per_request", "SECKILL_SOLDOUT_RECHECK_MS": "0"},
}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the stack ---------------------------------------------------------------------------------

def local_port_floor() -> int:
    """The lowest port Linux hands to outgoing connections (32768 unless configured)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port(taken: set[int]) -> int:
    """A port on 127.0.0.1 that nobody has bound, below the range of outgoing ports."""
    top = max(local_port_floor(), PORT_FLOOR + 1000)
    for _ in range(500):
        port = random.randrange(PORT_FLOOR, top)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise StackError("no free port found on 127.0.0.1")


@dataclass
class Service:
    label: str  # product, order, activity-coalesced, activity-per_request
    module: str
    addr: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"{self.label}.log"

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            # Its own session: a Ctrl-C in the terminal reaches only us, and we stop it.
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.argv], cwd=REPO, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return "\n".join(line[:400] for line in text)
        return ""


@dataclass
class Stack:
    workers: int
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    db_port: int = 0
    db_url: str = ""
    db_version: str = ""
    services: dict[str, Service] = field(default_factory=dict)
    _db_started: bool = False

    def addr(self, label: str) -> str:
        return self.services[label].addr

    def _db(self, command: str, port: int | None = None,
            timeout: float = DB_START_TIMEOUT_S) -> str:
        env = {**os.environ, "DIR": str(DB_DIR), "PORT": str(port or self.db_port)}
        done = subprocess.run(["scripts/mariadb.sh", command], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise StackError(f"scripts/mariadb.sh {command} failed:\n"
                             f"{(done.stderr or done.stdout).strip()}")
        return done.stdout.strip()

    def _stop_leftover_db(self) -> None:
        """A server of an earlier run that was killed before it could stop its database."""
        port_file = DB_DIR / "port"
        if port_file.is_file():
            with contextlib.suppress(StackError, ValueError, subprocess.TimeoutExpired):
                self._db("stop", port=int(port_file.read_text().strip()), timeout=90)

    def start(self) -> None:
        self._stop_leftover_db()
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        LOG_DIR.mkdir(parents=True)
        taken: set[int] = set()
        self.db_port = free_port(taken)
        log(f"starting a private MariaDB on 127.0.0.1:{self.db_port} ({DB_DIR.relative_to(REPO)})")
        self._db_started = True
        self._db("start")
        self.db_url = self._db("url").rsplit("/", 1)[0] + "/" + DATABASE
        self.db_version = mariadb_version(self.db_port)

        addrs = {label: f"127.0.0.1:{free_port(taken)}" for label in
                 ("product", "order", *ACTIVITY_MODES)}
        # Only our settings: a shell that sourced .run/stack.env must not leak into the stack.
        base = {k: v for k, v in os.environ.items() if not k.startswith("SECKILL_")}
        pythonpath = os.pathsep.join(p for p in (".", "gen", base.get("PYTHONPATH")) if p)
        base.update({
            "PYTHONPATH": pythonpath,
            "SECKILL_MYSQL_URL": self.db_url,
            "SECKILL_ADMIN_TOKEN": self.token,
            "SECKILL_PRODUCT_ADDR": addrs["product"],
            "SECKILL_ORDER_ADDR": addrs["order"],
            "SECKILL_ACTIVITY_ADDR": addrs["activity-coalesced"],
            "SECKILL_LOG_LEVEL": "WARNING",
        })
        for label, addr in addrs.items():
            env = dict(base)
            argv: list[str] = []
            module = label.split("-")[0] + "_svc"
            if label in ACTIVITY_MODES:
                env["SECKILL_ACTIVITY_ADDR"] = addr
                env.update(ACTIVITY_MODES[label])
                argv = ["--workers", str(self.workers)]
            self.services[label] = Service(label, module, addr, argv, env)
        for service in self.services.values():
            service.start()
        log("services starting: " + ", ".join(f"{s.label} {s.addr} (pid {s.pid})"
                                              for s in self.services.values()))
        from seckill_cli import wait_serving

        # Its "SERVING" line goes to stderr: stdout is for the table.
        with contextlib.redirect_stdout(sys.stderr):
            code = asyncio.run(wait_serving.run([s.addr for s in self.services.values()],
                                                [s.pid for s in self.services.values()], "",
                                                SERVING_TIMEOUT_S))
        if code != 0:
            raise StackError("the services are not serving:\n" + self.log_tails())

    def log_tails(self) -> str:
        return "\n".join(f"--- {s.log_path.relative_to(REPO)}:\n{s.log_tail()}"
                         for s in self.services.values())

    def check_alive(self) -> None:
        dead = [s for s in self.services.values() if not s.alive()]
        if dead:
            raise StackError("service(s) exited during the run: "
                             + ", ".join(f"{s.label} (exit {s.process and s.process.poll()})"
                                         for s in dead) + "\n" + self.log_tails())

    def stop(self) -> None:
        """SIGTERM to every service (each shuts down gracefully), then the database."""
        running = [s for s in self.services.values() if s.alive()]
        for service in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in running:
            assert service.process is not None
            try:
                service.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                # Still unreaped, so its group id is still ours: the supervisor and workers.
                log(f"{service.label} (pid {service.pid}) ignored SIGTERM; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.pid, signal.SIGKILL)
                service.process.wait(timeout=10)
        if running:
            log("services stopped")
        if self._db_started:
            try:
                self._db("stop", timeout=90)
                log("MariaDB stopped")
            except (StackError, subprocess.TimeoutExpired) as exc:
                log(f"could not stop MariaDB: {exc}")


def mariadb_version(port: int) -> str:
    import pymysql

    connection = pymysql.connect(host="127.0.0.1", port=port, user="root", password="",
                                 connect_timeout=10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            row = cursor.fetchone()
    finally:
        connection.close()
    return str(row[0]) if row else "?"


# --- sales -------------------------------------------------------------------------------------

async def _create_sale(product_addr: str, activity_addr: str, token: str, name: str,
                       stock: int) -> int:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(product_addr) as channel:
        product = await product_pb2_grpc.ProductServiceStub(channel).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name=name, price_cents=100, stock=stock)),
            metadata=metadata, timeout=10)
    now = dt.datetime.now(dt.UTC)
    async with grpc.aio.insecure_channel(activity_addr) as channel:
        activity = await activity_pb2_grpc.ActivityServiceStub(channel).CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name=name,
                start_time=to_timestamp(now - dt.timedelta(seconds=5)),
                end_time=to_timestamp(now + dt.timedelta(hours=1)))),
            metadata=metadata, timeout=10)
    return activity.id


def create_sale(stack: Stack, activity_label: str, name: str, stock: int) -> int:
    """A product with `stock` and an activity open now (since 5 s, for an hour): its id."""
    return asyncio.run(_create_sale(stack.addr("product"), stack.addr(activity_label),
                                    stack.token, name, stock))


# --- memory ------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found.extend(int(p) for p in path.read_text().split())
    return sorted(found)


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


class RssSampler:
    """The workers' VmRSS every second while a run lasts, for the peak."""

    def __init__(self, pids: list[int]) -> None:
        self.peak: dict[int, float] = {}
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            for pid in self._pids:
                value = rss_mib(pid)
                if value is not None:
                    self.peak[pid] = max(self.peak.get(pid, 0.0), value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- rows --------------------------------------------------------------------------------------

@dataclass
class Row:
    key: str  # a..f
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

    @classmethod
    def from_report(cls, key: str, title: str, report: Report) -> Row:
        lat = report.latency_ms
        return cls(key, title, report.count, report.total_s, report.rps, lat.get("p50"),
                   lat.get("p90"), lat.get("p99"), lat.get("max"), outcomes(report), report)


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
class Settings:
    workers: int
    concurrency: int
    connections: int
    procs: int
    health_calls: int
    flash_users: int
    flash_stock: int
    get_calls: int
    h2load_calls: int
    soak_seconds: float
    warmup_calls: int
    output: Path
    reports: Path


@dataclass
class Memory:
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
    h2load: str | None = None  # h2load's path
    h2load_note: str = ""  # why there is none
    report_files: list[Path] = field(default_factory=list)
    load_before: str = "?"
    load_after: str = "?"
    code: str = "?"

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)


# --- scenarios ---------------------------------------------------------------------------------

def load(settings: Settings, stack: Stack, name: str, call: str, host: str,
         data: str | dict[str, Any], **options: Any) -> Report:
    values: dict[str, Any] = {
        "concurrency": settings.concurrency, "connections": settings.connections,
        "procs": settings.procs, "progress": True, "order_addr": stack.addr("order"),
    }
    values.update(options)
    return run(BenchConfig(call=call, host=host, data=data, name=name, **values))


def save_report(results: Results, stem: str, report: Report) -> None:
    folder = results.settings.reports
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".html", report.to_html()), (".json", report.to_json() + "\n")):
        path = folder / f"{stem}{suffix}"
        path.write_text(text, encoding="utf-8")
        results.report_files.append(path)


def scenario(results: Results, stack: Stack, key: str, title: str,
             body: Callable[[], Row]) -> None:
    """Runs one row; a failure becomes the row's outcome and the next scenario still runs."""
    log(f"({key}) {title}")
    t0 = time.monotonic()
    try:
        row = body()
    except (BenchError, StackError, grpc.RpcError, OSError, subprocess.SubprocessError) as exc:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        row = Row(key, title, outcome=f"failed: {detail}".splitlines()[0][:300], failed=True)
        log(f"({key}) failed: {detail}")
    results.rows.append(row)
    if row.rps is not None:
        log(f"({key}) {row.rps:,.0f} calls/s, p99 {fmt(row.p99)} ms; {row.outcome} "
            f"[{time.monotonic() - t0:.0f} s]")
    stack.check_alive()


def warm_up(settings: Settings, stack: Stack) -> None:
    """Every activity worker opens its DB connections on demand: a small unreported sale."""
    if settings.warmup_calls <= 0:
        return
    for label in ACTIVITY_MODES:
        activity = create_sale(stack, label, f"warm-up {label}",
                               max(settings.warmup_calls // 4, 1))
        log(f"warm-up: {settings.warmup_calls} Seckill calls on {label}")
        load(settings, stack, f"warm-up {label}", SECKILL, stack.addr(label),
             {"activity_id": activity, "user_id": "warm-{{div .RequestNumber 2}}"},
             total=settings.warmup_calls, check=False, progress=False)


def flash_sale(settings: Settings, stack: Stack, results: Results, key: str,
               label: str) -> tuple[Row, int]:
    mode = {"activity-naive": "per_request without fast path"}.get(
        label, label.split("-", 1)[1])
    activity = create_sale(stack, label, f"flash sale {mode}", settings.flash_stock)
    report = load(settings, stack, f"({key}) flash sale {mode}", SECKILL, stack.addr(label),
                  {"activity_id": activity, "user_id": "user-{{div .RequestNumber 2}}"},
                  total=2 * settings.flash_users, initial_stock=settings.flash_stock)
    save_report(results, f"{key}-flash-sale-{mode.replace('_', '-').replace(' ', '-')}", report)
    return Row.from_report(key, f"flash sale, {mode} (stock {settings.flash_stock:,}, "
                                f"{settings.flash_users:,} users, 2 tries each)", report), activity


def run_scenarios(settings: Settings, stack: Stack, results: Results) -> None:
    coalesced = stack.addr("activity-coalesced")
    warm_up(settings, stack)

    def health() -> Row:
        report = load(settings, stack, "(a) Health/Check", HEALTH, coalesced, "{}",
                      total=settings.health_calls)
        save_report(results, "a-health-check", report)
        return Row.from_report("a", "Health/Check ceiling (coalesced activity svc)", report)

    scenario(results, stack, "a", "Health/Check ceiling", health)

    activity_b: list[int] = []

    def sale_b() -> Row:
        row, activity = flash_sale(settings, stack, results, "b", "activity-coalesced")
        activity_b.append(activity)
        return row

    scenario(results, stack, "b", "flash sale, coalesced", sale_b)
    scenario(results, stack, "c", "flash sale, per_request",
             lambda: flash_sale(settings, stack, results, "c", "activity-per_request")[0])
    scenario(results, stack, "c2", "flash sale, per_request without the sold-out fast path",
             lambda: flash_sale(settings, stack, results, "c2", "activity-naive")[0])

    def get_activity() -> Row:
        activity = (activity_b[0] if activity_b else
                    create_sale(stack, "activity-coalesced", "get activity", 1))
        report = load(settings, stack, "(d) GetActivity", GET_ACTIVITY, coalesced,
                      {"id": activity}, total=settings.get_calls)
        save_report(results, "d-get-activity", report)
        return Row.from_report("d", "GetActivity (+ ProductService.GetProduct)", report)

    scenario(results, stack, "d", "GetActivity", get_activity)
    scenario(results, stack, "e", "h2load Health/Check ceiling",
             lambda: h2load_row(settings, stack, results))
    if settings.soak_seconds > 0:
        scenario(results, stack, "f", f"memory soak, {settings.soak_seconds:g} s",
                 lambda: soak(settings, stack, results))
    else:
        results.rows.append(Row("f", "memory soak", outcome="skipped (--soak-seconds 0)"))


def soak(settings: Settings, stack: Stack, results: Results) -> Row:
    activity = create_sale(stack, "activity-coalesced", "soak", SOAK_STOCK)
    supervisor = stack.services["activity-coalesced"].pid
    pids = children(supervisor)
    if not pids:
        raise StackError(f"no worker processes found under the supervisor (pid {supervisor})")
    start = {pid: rss_mib(pid) for pid in pids}
    with RssSampler(pids) as sampler:
        report = load(settings, stack, f"(f) soak {settings.soak_seconds:g} s", SECKILL,
                      stack.addr("activity-coalesced"),
                      {"activity_id": activity, "user_id": "soak-{{.RequestNumber}}"},
                      duration_s=settings.soak_seconds, initial_stock=SOAK_STOCK)
    end = {pid: rss_mib(pid) for pid in pids}
    results.memory = Memory(pids, start, end, sampler.peak, children(supervisor))
    save_report(results, "f-soak-memory", report)
    growth = [end[p] - start[p] for p in pids if end[p] is not None and start[p] is not None]
    row = Row.from_report("f", f"soak {settings.soak_seconds:g} s, coalesced, stock 10^9 "
                               "(memory below)", report)
    if growth:
        row.outcome += f"; RSS growth per worker: {', '.join(f'{g:+.1f}' for g in growth)} MiB"
    return row


# --- h2load ------------------------------------------------------------------------------------

def ensure_h2load() -> tuple[str | None, str]:
    """h2load's path, or None and why not. As root, installs Debian's nghttp2-client."""
    found = shutil.which("h2load")
    if found:
        return found, ""
    if os.geteuid() != 0:
        return None, "h2load is not installed (Debian: nghttp2-client) and this is not root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "nghttp2-client"]
    log("h2load missing: apt-get install nghttp2-client")
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S, check=False)
        if done.returncode != 0:
            log("apt-get install failed; apt-get update, then again")
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                           timeout=APT_TIMEOUT_S, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True,
                                  timeout=APT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"installing nghttp2-client failed: {exc}"
    found = shutil.which("h2load")
    if found:
        return found, ""
    last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return None, f"apt-get install nghttp2-client did not provide h2load ({last[0][:200]})"


SERVING_FRAME_BYTES = 5 + len(b"\x08\x01")  # gRPC prefix + HealthCheckResponse(SERVING)
_UNIT_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|µs|ms|s)", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


@dataclass
class H2loadResult:
    seconds: float
    rps: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_other: int
    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    data_bytes: int | None  # response body bytes (DATA frames), all requests together


def parse_h2load(text: str) -> H2loadResult:
    finished = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", text)
    requests = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (finished and requests and codes):
        raise ValueError("h2load's output has no 'finished in', 'requests:' or "
                         "'status codes:' line")
    times = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    low = high = mean = None
    if times:
        with contextlib.suppress(ValueError):
            low, high, mean = (_ms(times.group(i)) for i in (1, 2, 3))
    data = re.search(r"traffic: .*\((\d+)\) data", text)
    done, succeeded, failed, errored, timeout = (int(g) for g in requests.groups())
    c2, c3, c4, c5 = (int(g) for g in codes.groups())
    return H2loadResult(_ms(finished.group(1) + finished.group(2)) / 1000.0,
                        float(finished.group(3)), done, succeeded, failed, errored, timeout,
                        c2, c3 + c4 + c5, low, high, mean,
                        int(data.group(1)) if data else None)


def h2load_row(settings: Settings, stack: Stack, results: Results) -> Row:
    title = "h2load Health/Check ceiling (coalesced activity svc)"
    binary = results.h2load
    if binary is None:
        return Row("e", title, outcome=f"not measured: {results.h2load_note}")
    connections = settings.connections
    streams = max(settings.concurrency // connections, 1)
    frame = RUN_DIR / "health-check-request.bin"
    # gRPC's 5-byte message prefix (not compressed, length 0) of an empty HealthCheckRequest.
    frame.write_bytes(b"\x00\x00\x00\x00\x00")
    argv = [binary, "-n", str(settings.h2load_calls), "-c", str(connections), "-m", str(streams),
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(frame),
            f"http://{stack.addr('activity-coalesced')}/grpc.health.v1.Health/Check"]
    log("$ " + shlex.join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=H2LOAD_TIMEOUT_S,
                          check=False)
    settings.reports.mkdir(parents=True, exist_ok=True)
    raw = settings.reports / "e-h2load-health-check.txt"
    raw.write_text(f"$ {shlex.join(argv)}\n\n{done.stdout}{done.stderr}", encoding="utf-8")
    results.report_files.append(raw)
    if done.returncode != 0:
        raise OSError(f"h2load exited {done.returncode}: {done.stderr.strip()[:300]}")
    parsed = parse_h2load(done.stdout)
    outcome = f"HTTP 2xx {parsed.status_2xx:,}"
    if parsed.status_other:
        outcome += f", other HTTP statuses {parsed.status_other:,}"
    if parsed.failed or parsed.errored or parsed.timeout:
        outcome += (f", failed {parsed.failed:,}, errored {parsed.errored:,}, "
                    f"timeout {parsed.timeout:,}")
    # h2load cannot read the trailers with grpc-status, but a failed call carries no message:
    # 7 bytes per response (5-byte prefix + status SERVING) means every call was answered.
    if parsed.data_bytes == SERVING_FRAME_BYTES * parsed.done:
        outcome += ", each with the 7-byte SERVING message"
    elif parsed.data_bytes is not None:
        outcome += (f", {parsed.data_bytes:,} response bytes (not 7 per call: some calls "
                    "carried no SERVING message)")
    if parsed.mean_ms is not None:
        outcome += f"; mean {parsed.mean_ms:.2f} ms"
    outcome += (f"; {connections} connections, {streams} streams each; h2load has no percentiles "
                "and sees only HTTP statuses, not the gRPC status in the trailers")
    row = Row("e", title, parsed.done, parsed.seconds, parsed.rps, max_ms=parsed.max_ms,
              outcome=outcome)
    row.failed = parsed.status_2xx != settings.h2load_calls
    return row


# --- writing -----------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def machine_text(stack: Stack) -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return (f"{len(os.sched_getaffinity(0))} cores (nproc), {cpu}, {memory} memory, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"MariaDB {stack.db_version or '?'}")


def code_version() -> str:
    """The commit measured, and the tracked files that differ from it (read-only git)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30, check=True)
        return done.stdout.rstrip("\n")  # not strip(): porcelain lines begin with a space

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no")
                   .splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return "? (not a git checkout)"
    if not changed:
        return f"commit {commit}"
    shown = ", ".join(f"`{name}`" for name in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    return f"commit {commit} plus uncommitted changes to {shown}{more}"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def ratio(top: Row | None, bottom: Row | None) -> float | None:
    if top is None or bottom is None or not top.rps or not bottom.rps:
        return None
    return top.rps / bottom.rps


def targets(results: Results) -> list[tuple[str, str, bool | None]]:
    a, b, c = results.row("a"), results.row("b"), results.row("c")
    c2 = results.row("c2")
    ceiling, modes, naive = ratio(b, a), ratio(b, c), ratio(b, c2)
    p99 = b.p99 if b is not None else None
    concurrency = results.settings.concurrency

    def judged(value: float | None, ok: Callable[[float], bool]) -> bool | None:
        return None if value is None else ok(value)

    return [
        (f"(b)/(a) throughput ≥ {TARGET_CEILING_RATIO}",
         "—" if ceiling is None else f"{ceiling:.2f} ({fmt(b and b.rps, 0)} / "
                                     f"{fmt(a and a.rps, 0)} req/s)",
         judged(ceiling, lambda v: v >= TARGET_CEILING_RATIO)),
        (f"(b)/(c) throughput ≥ {TARGET_MODE_RATIO:g}",
         "—" if modes is None else f"{modes:.2f} ({fmt(b and b.rps, 0)} / "
                                   f"{fmt(c and c.rps, 0)} req/s)",
         judged(modes, lambda v: v >= TARGET_MODE_RATIO)),
        (f"(b)/(c2) throughput ≥ {TARGET_MODE_RATIO:g} (against the naive design)",
         "—" if naive is None else f"{naive:.2f} ({fmt(b and b.rps, 0)} / "
                                   f"{fmt(c2 and c2.rps, 0)} req/s)",
         judged(naive, lambda v: v >= TARGET_MODE_RATIO)),
        (f"p99 of (b) ≤ {TARGET_P99_MS:g} ms at {concurrency} in flight",
         "—" if p99 is None else f"{p99:.1f} ms",
         judged(p99, lambda v: v <= TARGET_P99_MS)),
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(results: Results, stack: Stack, argv: list[str]) -> str:
    s = results.settings
    took = time.monotonic() - results.started
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args = f' BENCH_ARGS="{shlex.join(argv)}"' if argv else ""
    lines = [
        f"Run on {date}: `make bench{args}`, {took:.0f} s in all (start and stop included).",
        "",
        f"- **Machine**: {machine_text(stack)}.",
        f"- **Code**: {results.code}.",
        f"- **Clients** (every row): seckill-bench, -c {s.concurrency} in flight over "
        f"--connections {s.connections}, --procs {s.procs} client processes; on the same "
        "machine as the servers.",
        f"- **Services**: two activity services with --workers {s.workers} each "
        "(SECKILL_COMMIT_MODE=coalesced and per_request), product and order services with "
        "their default workers (the number of cores), one database; other knobs at their "
        "defaults; SECKILL_LOG_LEVEL=WARNING, so no per-call access log is written or measured.",
        f"- **Load average** (1 min): {results.load_before} before the run (other work on "
        f"the machine skews the numbers), {results.load_after} after the scenarios.",
        f"- **Warm-up**: {s.warmup_calls:,} unreported Seckill calls per activity service "
        "before (a)." if s.warmup_calls > 0 else "- **Warm-up**: none.",
        "",
        "| row | scenario | calls | seconds | req/s | p50 ms | p90 ms | p99 ms | max ms "
        "| outcomes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in results.rows:
        lines.append(
            f"| ({row.key}) | {_cell(row.title)} | "
            f"{'—' if row.calls is None else f'{row.calls:,}'} | {fmt(row.seconds, 2)} | "
            f"{fmt(row.rps, 0)} | {fmt(row.p50)} | {fmt(row.p90)} | {fmt(row.p99)} | "
            f"{fmt(row.max_ms)} | {_cell(row.outcome)} |")
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in targets(results):
        verdict = "not measured" if met is None else ("**yes**" if met else "**no**")
        lines.append(f"| {name} | {measured} | {verdict} |")
    memory = results.memory
    if memory is not None:
        lines += ["", "### Memory of the coalesced activity service's workers during (f)", "",
                  "VmRSS from `/proc/<pid>/status`, just before the soak and right after it "
                  "(the invariant check included); the peak of the samples taken every second.",
                  "", "| worker pid | start MiB | end MiB | growth MiB | peak MiB |",
                  "|--:|--:|--:|--:|--:|"]
        for pid in memory.pids:
            start, end = memory.start.get(pid), memory.end.get(pid)
            growth = None if start is None or end is None else end - start
            lines.append(f"| {pid} | {fmt(start)} | {fmt(end)} | "
                         f"{'—' if growth is None else f'{growth:+.1f}'} | "
                         f"{fmt(memory.peak.get(pid))} |")
        if memory.pids_after != memory.pids:
            lines += ["", f"The workers changed during the soak (restarted?): "
                          f"{memory.pids} before, {memory.pids_after} after."]
    for key in ("b", "c", "f"):
        row = results.row(key)
        if row is not None and row.report is not None and row.report.invariants:
            lines += ["", f"Invariants of ({key}):", ""]
            lines += [f"- {'ok' if i.ok else '**FAILED**'}: {i.name}: {i.detail}"
                      for i in row.report.invariants]
    errors = [(row.key, message, n) for row in results.rows if row.report is not None
              for message, n in list(row.report.error_counts.items())[:5]]
    if errors:
        lines += ["", "Error messages (numbers folded to N), at most five kinds per row:", ""]
        lines += [f"- ({key}) {n:,}: `{message}`" for key, message, n in errors]
    if results.report_files:
        here = s.output.parent
        names = ", ".join(f"[{p.name}]({Path(os.path.relpath(p, here)).as_posix()})"
                          for p in results.report_files)
        lines += ["", f"Reports: {names}. Service logs: `.run/bench/logs/`."]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, generated: str) -> None:
    block = f"{BEGIN}\n{generated}{END}\n"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        start, end = text.find(BEGIN), text.find(END)
        if start >= 0 and end > start:
            text = text[:start] + block + text[end + len(END):].lstrip("\n")
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        text = INTRO + "\n" + block
    path.write_text(text, encoding="utf-8")


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[Settings, list[str]]:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="python -m seckill_bench.table",
        description="Measures the benchmark table of BENCHMARKS.md on a stack of its own.")
    p.add_argument("--workers", type=int, default=cores,
                   help=f"server processes per activity service (default: cores, {cores})")
    p.add_argument("-c", "--concurrency", type=int, default=64,
                   help="calls in flight (default 64)")
    p.add_argument("--connections", type=int, default=4, help="channels (default 4)")
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--health-calls", type=int, default=20_000, help="(a) calls (20,000)")
    p.add_argument("--flash-users", type=int, default=20_000,
                   help="(b), (c): users, each trying twice (20,000)")
    p.add_argument("--flash-stock", type=int, default=10_000, help="(b), (c): stock (10,000)")
    p.add_argument("--get-calls", type=int, default=20_000, help="(d) calls (20,000)")
    p.add_argument("--h2load-calls", type=int, default=20_000, help="(e) calls (20,000)")
    p.add_argument("--soak-seconds", type=float, default=60.0,
                   help="(f) seconds of soak (60; 0 skips it)")
    p.add_argument("--warmup-calls", type=int, default=1_000,
                   help="unreported Seckill calls per activity service first (1,000; 0: none)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="the Markdown file whose generated section is replaced "
                        "(default BENCHMARKS.md)")
    p.add_argument("--reports", type=Path, default=DEFAULT_REPORTS,
                   help="folder of the HTML and JSON reports (default benchmarks/)")
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    for name in ("workers", "concurrency", "connections", "procs", "health_calls",
                 "flash_users", "get_calls", "h2load_calls"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.flash_stock < 1 or args.soak_seconds < 0 or args.warmup_calls < 0:
        p.error("--flash-stock must be at least 1; --soak-seconds, --warmup-calls at least 0")
    if not args.procs <= args.connections <= args.concurrency:
        p.error("need --procs <= --connections <= --concurrency")
    settings = Settings(args.workers, args.concurrency, args.connections, args.procs,
                        args.health_calls, args.flash_users, args.flash_stock, args.get_calls,
                        args.h2load_calls, args.soak_seconds, args.warmup_calls,
                        args.output.resolve(), args.reports.resolve())
    return settings, raw


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While the stack stops: a second Ctrl-C must not leave servers behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None, stdout: IO[str] | None = None) -> int:
    settings, raw = parse_args(argv)
    out = stdout or sys.stdout
    signal.signal(signal.SIGTERM, _interrupt)
    results = Results(settings, time.monotonic(), load_before=load_average(),
                      code=code_version())
    # Before the stack: an apt-get install must not run while anything is measured.
    results.h2load, results.h2load_note = ensure_h2load()
    stack = Stack(settings.workers)
    try:
        stack.start()
        log(f"stack serving after {time.monotonic() - results.started:.0f} s")
        run_scenarios(settings, stack, results)
        results.load_after = load_average()
    except StackError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        log("stopping the stack")
        with signals_ignored():
            stack.stop()
    generated = section(results, stack, raw)
    write_markdown(settings.output, generated)
    out.write(generated)
    out.flush()
    log(f"wrote {settings.output} and {len(results.report_files)} files in {settings.reports}")
    failed = [r.key for r in results.rows if r.failed
              or (r.report is not None and not r.report.invariants_ok)]
    if failed:
        log(f"row(s) {', '.join(failed)} failed or broke an invariant")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
