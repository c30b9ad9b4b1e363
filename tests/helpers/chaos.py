"""Randomized fault schedules in the Jepsen manner: a seed gives a schedule of faults
(`schedule`), `ChaosRun` runs a sale under it recording every call (the history), and `check`
judges the history and the final state (database, feed, JetStream) in one place.

The sale: buyers ask for 1-3 units (limit 3), some come back; of the orders won some are paid,
some cancelled, the rest left to expire (a payment window of a few seconds). The faults, one at
a time with gaps between them: SIGKILL of a service process and its restart, SIGSTOP/SIGCONT of
a service process or of the database, a database link of one service going silent (no reset)
and healing, and a crash-restart of the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
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
    order_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from seckill_common.client.peers import CHANNEL_OPTIONS
from seckill_stack.silent_link import SilentLink
from tests.helpers.factories import timestamp
from tests.helpers.rpc import error_details
from tests.helpers.stack import (
    ADMIN,
    PrivateMariaDB,
    ServiceProcess,
    free_port,
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
        self.ports = {name: free_port() for name in SERVICES}
        self.running: dict[str, ServiceProcess] = {}
        self.db_url = ""

    @property
    def addrs(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}

    async def start(self, db_name: str) -> None:
        self.db_url = f"{self.db.url_base}/{db_name}"
        for name in SERVICES:
            link = SilentLink(self.db.port)
            await link.start()
            self.links[name] = link
        for name in SERVICES:  # one at a time: wait_until_serving swaps sys.stdout meanwhile
            await self.start_service(name)

    def _env(self, name: str) -> dict[str, str]:
        return subprocess_env(
            f"{self.links[name].url_base()}/{self.db_url.rsplit('/', 1)[1]}",
            SECKILL_HEALTH_INTERVAL="0.2", SECKILL_EVENTS_NATS_URL=self.nats_url,
            SECKILL_EVENTS_POLL_INTERVAL_MS="20",
            **{f"SECKILL_{n.upper()}_ADDR": a for n, a in self.addrs.items()})

    async def start_service(self, name: str) -> None:
        self.running[name] = ServiceProcess(f"{name}_svc", self._env(name),
                                            self.root / f"{name}.log")
        await self.running[name].start()

    def pid(self, name: str) -> int:
        if name == "db":
            assert self.db.process is not None
            return self.db.process.pid
        pid = self.running[name].pid
        assert pid is not None
        return pid

    async def stop(self) -> None:
        for service in self.running.values():
            process = service.process
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGCONT)
                with contextlib.suppress(Exception):
                    await service.stop(signal.SIGTERM, timeout_s=5)
                if process.returncode is None:
                    process.kill()
                    await process.wait()
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


class Load:
    """Buyers and the fates of their orders, every call recorded in `history.calls`."""

    def __init__(self, addrs: dict[str, str], activity_id: int, history: History) -> None:
        self.activity_id = activity_id
        self.history = history
        self.rng = random.Random(history.seed)
        self.users = 0
        self.returning: list[str] = []
        self.fates: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        self._definite = asyncio.Event()  # set by each definite Seckill answer
        self.channels = [grpc.aio.insecure_channel(addrs[n], options=CHANNEL_OPTIONS)
                         for n in ("activity", "order")]
        self.activities = activity_pb2_grpc.ActivityServiceStub(self.channels[0])
        self.orders = order_pb2_grpc.OrderServiceStub(self.channels[1])

    async def _call(self, rpc: str, user: str, quantity: int,
                    call: Callable[[float], Awaitable[object]], order_id: int = 0) -> Call:
        started = time.monotonic()
        try:
            reply = await call(CALL_DEADLINE_S)
            code, reason = "OK", ""
            if isinstance(reply, activity_pb2.SeckillResponse):
                order_id, quantity = reply.order.id, reply.order.quantity
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            info = error_details(exc).get("ErrorInfo")
            reason = info.reason if info else (exc.details() or "")[:80]
            if info and rpc == "Seckill":
                order_id = int(info.metadata.get("order_id", 0))
        recorded = Call(rpc, user, started, time.monotonic(), code, reason, order_id, quantity,
                        CALL_DEADLINE_S)
        self.history.calls.append(recorded)
        if rpc == "Seckill" and code in SECKILL_DEFINITE:
            self._definite.set()
        return recorded

    async def resumed(self, since: float) -> None:
        """Returns once a Seckill started at `since` or later was answered definitely, or
        RESUME_BOUND_S after `since` (the checker then names the stall)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, since + RESUME_BOUND_S - time.monotonic())):
                while not any(c.rpc == "Seckill" and c.code in SECKILL_DEFINITE
                              and c.started >= since for c in self.history.calls[-200:]):
                    self._definite.clear()
                    await self._definite.wait()

    async def _seckill(self, request: activity_pb2.SeckillRequest, deadline_s: float) -> object:
        return await self.activities.Seckill(request, timeout=deadline_s)

    async def buyer(self) -> None:
        while not self.stop.is_set():
            if self.returning and self.rng.random() < 0.2:
                user = self.rng.choice(self.returning)
            else:
                user = f"u{self.users}"
                self.users += 1
                self.returning.append(user)
            quantity = self.rng.randint(1, MAX_QUANTITY)
            request = activity_pb2.SeckillRequest(activity_id=self.activity_id, user_id=user,
                                                  quantity=quantity)
            answer = await self._call("Seckill", user, quantity, partial(
                self._seckill, request))
            if answer.code == "OK":
                task = asyncio.create_task(self._fate(answer, self.rng.random(),
                                                      self.rng.uniform(0, 2)))
                self.fates.add(task)
                task.add_done_callback(self.fates.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.rng.uniform(*THINK_S))

    async def _fate(self, won: Call, draw: float, after_s: float) -> None:
        """Pays (35%), cancels (30%), or lets the order expire (a tenth of those try to pay
        late)."""
        if draw < 0.35:
            rpc = "PayOrder"
        elif draw < 0.65:
            rpc = "CancelOrder"
        elif draw < 0.7:
            rpc, after_s = "PayOrder", PAYMENT_WINDOW_S + 1.0
        else:
            return
        await asyncio.sleep(after_s)  # the buyer's pace

        async def change(t: float) -> object:
            if rpc == "PayOrder":
                return await self.orders.PayOrder(order_pb2.PayOrderRequest(id=won.order_id),
                                                  metadata=ADMIN, timeout=t)
            return await self.orders.CancelOrder(order_pb2.CancelOrderRequest(id=won.order_id),
                                                 metadata=ADMIN, timeout=t)

        await self._call(rpc, won.user, won.quantity, change, won.order_id)

    async def run(self, until: asyncio.Event) -> None:
        buyers = [asyncio.create_task(self.buyer()) for _ in range(BUYERS)]
        await until.wait()
        self.stop.set()
        await asyncio.gather(*buyers)
        if self.fates:  # each sleeps at most the window + 1 s, then one call with its deadline
            await asyncio.wait(set(self.fates), timeout=PAYMENT_WINDOW_S + 10)

    async def close(self) -> None:
        for task in self.fates:
            task.cancel()
        for channel in self.channels:
            await channel.close()


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


def check(history: History, final: Final) -> list[str]:
    """Every violation of the promises in the history and the final state; [] when none."""
    return ([f"the database crashed: {c}" for c in final.crashes] + _answers(history.calls)
            + _stock(history, final) + _orders(history.calls, final) + _feed(final)
            + _resumed(history))


def _answers(calls: list[Call]) -> list[str]:
    """Answers from the documented set (refusals with their documented reasons), each within
    its deadline."""
    return ([f"answer outside the documented set: {c}" for c in calls
             if c.code not in RETRYABLE and c.code != "OK"
             and c.reason not in REASONS.get((c.rpc, c.code), set())]
            + [f"answered after its deadline: {c.ended - c.started:.2f}s {c}" for c in calls
               if c.ended - c.started > c.deadline + DEADLINE_MARGIN_S])


def _stock(history: History, final: Final) -> list[str]:
    """No oversell; stock + the units of the active orders = the units added."""
    bad = [f"oversold: stock {final.stock}"] if final.stock < 0 else []
    active_units = sum(q for _, q, state in final.orders.values() if state in (PENDING, PAID))
    if final.stock + active_units != history.units_added:
        bad.append(f"units unbalanced: stock {final.stock} + active {active_units}"
                   f" != added {history.units_added}")
    return bad


def _orders(calls: list[Call], final: Final) -> list[str]:
    """At most one active order a user; every acknowledged order and change durable; no
    order that no call could have placed."""
    bad: list[str] = []
    orders = final.orders
    active_per_user = Counter(u for u, _, state in orders.values() if state in (PENDING, PAID))
    bad += [f"{u} holds {n} active orders" for u, n in active_per_user.items() if n > 1]
    asked_cancel = {c.order_id for c in calls if c.rpc == "CancelOrder"}
    after = {"PayOrder": PAID, "CancelOrder": CANCELLED}
    for c in calls:
        held = orders.get(c.order_id)
        if c.code == "ALREADY_EXISTS" and (held is None or held[0] != c.user):
            bad.append(f"ALREADY_EXISTS naming an order not the user's: {c} -> {held}")
        if c.code != "OK":
            continue
        if c.rpc == "Seckill" and (held is None or held[:2] != (c.user, c.quantity)):
            bad.append(f"acknowledged order lost or changed: {c} -> {held}")
        elif c.rpc == "Seckill" and held is not None and held[2] == CANCELLED \
                and c.order_id not in asked_cancel:
            bad.append(f"order cancelled that nobody cancelled: {c}")
        elif c.rpc in after and (held is None or held[2] != after[c.rpc]):
            bad.append(f"{c.rpc} acknowledged, the order is not so: {c} -> {held}")
    # An order nobody was told of: only for a user with a call the platform left unanswered
    # (the commit went through, its answer did not).
    told = {c.order_id for c in calls if c.rpc == "Seckill" and c.code in ("OK", "ALREADY_EXISTS")}
    unanswered = {c.user for c in calls if c.rpc == "Seckill" and c.code in RETRYABLE}
    bad += [f"order {i} of {user} that no call placed" for i, (user, _, _) in orders.items()
            if i not in told and user not in unanswered]
    return bad


def _feed(final: Final) -> list[str]:
    """Each event once, revisions ascending, each order's changes once on a valid path ending
    in its state; the same events stored, and in JetStream."""
    bad: list[str] = []
    event_ids = [e.event_id for e in final.feed]
    twice = [i for i, n in Counter(event_ids).items() if n > 1]
    if twice:
        bad.append(f"events twice in the feed: {twice[:5]}")
    revisions = [e.revision for e in final.feed]
    if revisions != sorted(set(revisions)):
        bad.append("feed revisions not strictly ascending")
    if sorted(event_ids) != sorted(final.stored_event_ids):
        bad.append(f"feed != stored events: {len(event_ids)} vs {len(final.stored_event_ids)}")
    paths: dict[int, list[str]] = defaultdict(list)
    for e in final.feed:
        paths[e.order.id].append(Event.Type.Name(e.type))
    for i, (_, _, state) in final.orders.items():
        path = tuple(paths.get(i, []))
        if path not in VALID_PATHS:
            bad.append(f"order {i}: events {path}")
        elif FINAL_STATE[path[-1]] != state:
            bad.append(f"order {i}: last event {path[-1]} but state {state}")
    if set(paths) - set(final.orders):
        bad.append(f"events of unknown orders: {sorted(set(paths) - set(final.orders))[:5]}")
    consumed = Counter(final.consumed_ids)
    if set(consumed) != set(event_ids) or any(n > 1 for n in consumed.values()):
        bad.append(f"JetStream consumer: {len(set(consumed) - set(event_ids))} extra,"
                   f" {len(set(event_ids) - set(consumed))} missing,"
                   f" {sum(1 for n in consumed.values() if n > 1)} twice")
    if final.stream_messages != len(event_ids):
        bad.append(f"JetStream stream holds {final.stream_messages} messages for"
                   f" {len(event_ids)} events")
    return bad


def _resumed(history: History) -> list[str]:
    """After each heal a definite Seckill answer, and (when order changes were tried) a
    definite answer to one, started after the heal and ended within the bound. A window cut
    short by the next fault or the sale's end decides nothing (see `resume_times`)."""
    bad: list[str] = []
    for heal, window_end in windows(history):
        for rpcs, definite in (({"Seckill"}, SECKILL_DEFINITE),
                               ({"PayOrder", "CancelOrder"}, CHANGE_DEFINITE)):
            tried = [c for c in history.calls
                     if c.rpc in rpcs and heal.healed <= c.started < window_end]
            if any(c.code in definite and c.ended <= window_end for c in tried):
                continue
            if window_end >= heal.healed + RESUME_BOUND_S and (tried or rpcs == {"Seckill"}):
                bad.append(f"{'/'.join(sorted(rpcs))} not resumed within"
                           f" {RESUME_BOUND_S:g}s of healing {heal.fault}: "
                           f"{Counter((c.code, c.reason) for c in tried)}")
    return bad


def windows(history: History) -> list[tuple[Heal, float]]:
    """Each heal and the end of its resumption window: the bound, or earlier the next fault's
    start or the sale's end."""
    out = []
    for n, heal in enumerate(history.heals):
        end = min(heal.healed + RESUME_BOUND_S, history.ended)
        if n + 1 < len(history.heals):
            end = min(end, history.heals[n + 1].began)
        out.append((heal, end))
    return out


def resume_times(history: History) -> tuple[list[float], int]:
    """Per heal, seconds from the heal to the end of the first definite Seckill answer
    started after it; and how many windows were cut short before one."""
    out, cut = [], 0
    for heal, end in windows(history):
        ends = [c.ended for c in history.calls if c.rpc == "Seckill" and c.code in
                SECKILL_DEFINITE and heal.healed <= c.started and c.ended <= end]
        if ends:
            out.append(min(ends) - heal.healed)
        else:
            cut += 1
    return out, cut


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
