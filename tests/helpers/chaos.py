"""Randomized fault schedules in the Jepsen manner: a seed gives a schedule of faults
(`schedule`), `ChaosRun` runs a sale under it recording every call (the history), and `check`
(tests/helpers/chaos_checker.py) judges the history and the final state (database, feed,
JetStream) in one place.

The sale: buyers ask for 1-3 units (limit 3), some come back; of the orders won some are paid,
some cancelled, the rest left to expire (a payment window of a few seconds). The faults, one at
a time with gaps between them: SIGKILL of a service process and its restart, SIGSTOP/SIGCONT of
a service process or of the database, a database link of one service going silent (no reset)
and healing, and a crash-restart of the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import nats
from google.protobuf.duration_pb2 import Duration
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_events_pb2,
    order_events_pb2_grpc,
    order_pb2,
    product_pb2,
    product_pb2_grpc,
)

from seckill_stack.silent_link import SilentLink
from tests.helpers.factories import timestamp
from tests.helpers.flash_sale import HEALTH_INTERVAL
from tests.helpers.processes import ServiceSet
from tests.helpers.stack import (
    ADMIN,
    PrivateMariaDB,
    query,
    subprocess_env,
)

SERVICES = ("product", "order", "activity")
KINDS = ("kill", "pause", "pause_db", "silent_link", "restart_db")
SALE_S = 24.0  # the schedule's span; the load runs from 0 to here
FIRST_FAULT_S = 2.0
GAP_S = (1.0, 3.0)  # between one fault's end and the next one's start
DURATION_S = (0.5, 4.0)
CALL_DEADLINE_S = 2.0  # every call of the load
DEADLINE_MARGIN_S = 0.5  # answered by its deadline + this, or it is a violation
RESUME_BOUND_S = 10.0  # a definite Seckill answer, and one order change, started after a heal
PAYMENT_WINDOW_S = 3
MAX_QUANTITY = 3
STOCK = 300
BUYERS = 6
THINK_S = (0.05, 0.25)
# Answers that decide a call (the platform read the facts); the rest are failures a client
# retries, or violations.
SECKILL_DEFINITE = {"OK", "ALREADY_EXISTS", "FAILED_PRECONDITION"}
CHANGE_DEFINITE = {"OK", "FAILED_PRECONDITION"}
RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "RESOURCE_EXHAUSTED", "CANCELLED"}
# The refusals this sale may see, with their ErrorInfo reasons.
REASONS = {("Seckill", "ALREADY_EXISTS"): {"ALREADY_PURCHASED"},
           ("Seckill", "FAILED_PRECONDITION"): {"SOLD_OUT", "INSUFFICIENT_STOCK"},
           ("PayOrder", "FAILED_PRECONDITION"): {"PAYMENT_EXPIRED"},
           ("CancelOrder", "FAILED_PRECONDITION"): {"ORDER_EXPIRED"}}
PENDING, PAID, CANCELLED, EXPIRED = (order_pb2.PENDING_PAYMENT, order_pb2.PAID,
                                     order_pb2.CANCELLED, order_pb2.EXPIRED)
Event = order_events_pb2.OrderEvent
# The states an order's events may take it through, as event type names.
VALID_PATHS = {("CREATED",), ("CREATED", "PAID"), ("CREATED", "CANCELLED"),
               ("CREATED", "EXPIRED"), ("CREATED", "PAID", "CANCELLED")}
FINAL_STATE = {"CREATED": PENDING, "PAID": PAID, "CANCELLED": CANCELLED, "EXPIRED": EXPIRED}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the sale started
    kind: str
    target: str  # a service, or "db"
    duration: float
    gap: float  # after the previous fault's heal and resumption, at least

    def __str__(self) -> str:
        return f"{self.at:5.1f}s {self.kind}({self.target}) for {self.duration:.1f}s"


def schedule(seed: int, span_s: float = SALE_S) -> list[Fault]:
    """The seed's faults: one at a time, each starting 1-3 s after the previous one ended
    (`ChaosRun` waits longer when a heal or the resumption after it takes longer)."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    at, gap = FIRST_FAULT_S, FIRST_FAULT_S
    while True:
        kind = rng.choice(KINDS)
        target = "db" if kind.endswith("_db") else rng.choice(SERVICES)
        duration = round(rng.uniform(*DURATION_S), 1)
        if at + duration > span_s:
            return faults
        faults.append(Fault(round(at, 1), kind, target, duration, round(gap, 1)))
        gap = rng.uniform(*GAP_S)
        at += duration + gap


@dataclass
class Call:
    """One call of the history: times are time.monotonic()."""

    rpc: str  # Seckill, PayOrder, CancelOrder
    user: str
    started: float
    ended: float
    code: str
    reason: str  # the ErrorInfo reason, else the status message's start
    order_id: int  # OK and ALREADY_EXISTS, or the order paid or cancelled
    quantity: int
    deadline: float


@dataclass
class Heal:
    fault: Fault
    began: float  # monotonic: the fault was applied
    healed: float  # monotonic: the heal completed (resumed, link on, process serving, db up)


@dataclass
class History:
    seed: int
    faults: list[Fault]
    calls: list[Call] = field(default_factory=list)
    heals: list[Heal] = field(default_factory=list)
    units_added: int = 0
    began: float = 0.0  # monotonic: the sale's start, the schedule's 0
    ended: float = float("inf")  # monotonic: the load stopped

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {len(self.faults)} faults"]
        lines += [f"  {f}" for f in self.faults]
        lines += [f"  healed {h.fault.kind}({h.fault.target}) at {h.healed - self.began:.1f}s"
                  for h in self.heals]
        return "\n".join(lines)

    def dump(self, path: Path) -> None:
        """The history as JSON lines (times relative to the sale's start), for a post-mortem."""
        with path.open("w") as out:
            for c in self.calls:
                out.write(json.dumps({**asdict(c), "started": round(c.started - self.began, 3),
                                      "ended": round(c.ended - self.began, 3)}) + "\n")


class Stack:
    """MariaDB of its own (to pause and restart), the three services as processes, each
    reaching the database through a SilentLink of its own, the relay on to `nats_url`."""

    def __init__(self, root: Path, nats_url: str) -> None:
        self.root = root
        self.db = PrivateMariaDB(root / "mariadb")
        self.nats_url = nats_url
        self.links: dict[str, SilentLink] = {}
        self.services = ServiceSet(root, self._env)
        self.running = self.services.running
        self.addrs = self.services.addrs
        self.db_url = ""

    async def start(self, db_name: str) -> None:
        self.db_url = f"{self.db.url_base}/{db_name}"
        for name in SERVICES:
            link = SilentLink(self.db.port)
            await link.start()
            self.links[name] = link
        await self.services.start()

    def _env(self, name: str) -> dict[str, str]:
        """Each service reaches the database through its own link."""
        return subprocess_env(
            f"{self.links[name].url_base()}/{self.db_url.rsplit('/', 1)[1]}",
            SECKILL_HEALTH_INTERVAL=HEALTH_INTERVAL, SECKILL_EVENTS_NATS_URL=self.nats_url,
            SECKILL_EVENTS_POLL_INTERVAL_MS="20")

    async def start_service(self, name: str) -> None:
        await self.services.start(name)

    def pid(self, name: str) -> int:
        if name == "db":
            assert self.db.process is not None
            return self.db.process.pid
        return self.services.pid(name)

    async def stop(self) -> None:
        await self.services.stop_all(timeout_s=5)
        for link in self.links.values():
            link.heal()
            await link.close()


async def inject(stack: Stack, fault: Fault, heals: list[Heal]) -> None:
    """Applies `fault`, waits its duration, heals it; the heal runs whatever happens."""
    began = time.monotonic()
    match fault.kind:
        case "kill":
            await stack.running[fault.target].stop(signal.SIGKILL)
        case "pause" | "pause_db":
            os.kill(stack.pid(fault.target), signal.SIGSTOP)
        case "silent_link":
            stack.links[fault.target].blackhole()
        case "restart_db":
            await asyncio.to_thread(stack.db.kill)
    try:
        await asyncio.sleep(fault.duration)  # the schedule's timing
    finally:
        match fault.kind:
            case "kill":
                await stack.start_service(fault.target)
            case "pause" | "pause_db":
                os.kill(stack.pid(fault.target), signal.SIGCONT)
            case "silent_link":
                stack.links[fault.target].heal()
            case "restart_db":
                await asyncio.to_thread(stack.db.start)
        heals.append(Heal(fault, began, time.monotonic()))


async def create_sale(addrs: dict[str, str], stock: int) -> tuple[int, int]:
    """A product of `stock` units and an activity selling it now, limit 3 a user, payment
    window a few seconds: (product id, activity id)."""
    async with grpc.aio.insecure_channel(addrs["product"]) as pc, \
            grpc.aio.insecure_channel(addrs["activity"]) as ac:
        product = await product_pb2_grpc.ProductServiceStub(pc).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name="Phone", price_cents=9900, stock=stock)), metadata=ADMIN, timeout=30)
        activity = await activity_pb2_grpc.ActivityServiceStub(ac).CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name="Chaos sale", start_time=timestamp(-1),
                end_time=timestamp(3600), per_user_limit=MAX_QUANTITY,
                payment_window=Duration(seconds=PAYMENT_WINDOW_S))),
            metadata=ADMIN, timeout=30)
    return product.id, activity.id


async def feed(order_addr: str) -> list[Event]:
    """Every event of the feed through ListOrderEvents, page by page."""
    events: list[Event] = []
    async with grpc.aio.insecure_channel(order_addr) as channel:
        stub = order_events_pb2_grpc.OrderEventServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListOrderEvents(order_events_pb2.ListOrderEventsRequest(
                after_revision=0, page_size=1000, page_token=token), metadata=ADMIN, timeout=30)
            events.extend(page.events)
            token = page.next_page_token
            if not token:
                return events


async def jetstream_messages(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info("ORDER_EVENTS")
        return int(info.state.messages)
    finally:
        await nc.close()


@dataclass
class Final:
    """What the run left: the database's rows, the feed, the JetStream consumer's events."""

    stock: int
    orders: dict[int, tuple[str, int, int]]  # id -> (user, quantity, state)
    stored_event_ids: list[str]
    feed: list[Event]
    consumed_ids: list[str]
    stream_messages: int
    crashes: list[str] = field(default_factory=list)  # the database's own crash reports


def database_crashes(stack: Stack) -> list[str]:
    """The crashes mariadbd reported in its error log (a signal it caught, an assertion),
    each with the statement it was running; a SIGKILL of the schedule reports nothing."""
    try:
        lines = stack.db.error_log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for n, line in enumerate(lines):
        if "got signal" in line or "Assertion" in line:
            query_line = next((q for q in lines[n:n + 120] if q.startswith("Query (")), "")
            out.append(f"{line.strip()} {query_line[:300]}")
    return out


async def final_state(stack: Stack, history: History, product_id: int, activity_id: int,
                      consumed: list[str]) -> Final:
    """Reads the database, the feed (through the API) and JetStream's count."""
    url = stack.db_url
    [(stock,)] = await query(url, "SELECT stock FROM products WHERE id = %s", (product_id,))
    rows = await query(url, "SELECT id, user_id, quantity, state FROM orders"
                       " WHERE activity_id = %s", (activity_id,))
    stored = [str(i) for (i,) in await query(
        url, "SELECT event_id FROM order_events UNION ALL SELECT event_id FROM order_event_inbox")]
    return Final(int(stock), {int(i): (u.decode() if isinstance(u, bytes) else str(u), int(q),
                                       int(s)) for i, u, q, s in rows},
                 stored, await feed(stack.addrs["order"]), consumed,
                 await jetstream_messages(stack.nats_url), database_crashes(stack))
