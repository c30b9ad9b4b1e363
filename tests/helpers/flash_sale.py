"""The fault harness: a flash sale under load (`FlashSale`), the services as processes of
their own (`running_services`, a ServiceSet of tests/helpers/processes.py), and a connection
that holds a lock (`Holder`). tests/faults/test_faults.py breaks things under it;
`FlashSale.verify` holds the platform to what it told each user.

Sales are of quantities (issue 17): user n asks for 1 + n mod max_quantity units (the
activity allows max_quantity), all or nothing; the balance is in units."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomysql
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from seckill_common.client.peers import CHANNEL_OPTIONS
from seckill_stack.invariants import SeckillCheck
from tests.helpers.factories import timestamp
from tests.helpers.polling import eventually
from tests.helpers.processes import ServiceSet
from tests.helpers.rpc import error_details
from tests.helpers.stack import (
    ADMIN,
    STORED_EVENTS,
    query,
    subprocess_env,
)

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
ABORTED = grpc.StatusCode.ABORTED
CANCELLED = grpc.StatusCode.CANCELLED
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# The answers that settle a user's attempt: won, already holds an order, sold out or fewer
# units left than asked (nothing gives units back during these sales), by code: the reasons.
DEFINITE = {OK: frozenset({""}), grpc.StatusCode.ALREADY_EXISTS: frozenset({"ALREADY_PURCHASED"}),
            grpc.StatusCode.FAILED_PRECONDITION: frozenset({"SOLD_OUT", "INSUFFICIENT_STOCK"})}
# The most units a user asks for in the fault tests' sales (and the activities' limit).
MAX_QUANTITY = 3
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CALL_TIMEOUT_S = 30.0  # the deadline of calls that are expected to be answered
WAIT_S = 30.0  # the bound of every wait for a state change
# Polls of what the database shows (innodb_trx, a pool's counters) are not faster than this:
# InnoDB refreshes information_schema.innodb_trx only when it was left unread for 0.1 s, so a
# quicker poll would read the same snapshot for ever.
INNODB_POLL_S = 0.2
T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    user: str
    code: grpc.StatusCode
    order_id: int  # OK: the order placed; ALREADY_EXISTS: the order the user holds; else 0
    detail: str  # the ErrorInfo reason, else the status message
    started: float  # time.monotonic() at the call and at its answer
    ended: float
    retry_info: bool = False  # the status carried a RetryInfo
    quantity: int = 1  # units asked for
    available: int = 0  # INSUFFICIENT_STOCK: the units it named

    def refused(self, reason: str) -> bool:
        return self.code in DEFINITE and self.code != OK and self.detail == reason


class FlashSale:
    """A sale of `stock` units: `users` distinct users rush in (every `twice_every`-th one with
    two calls at once), at most `concurrency` users calling at a time.

    Every answer is kept, so that `verify` can hold the platform to what it told each user.
    """

    def __init__(self, addrs: dict[str, str], product_id: int, activity_id: int, stock: int,
                 *, users: int = 400, twice_every: int = 4, concurrency: int = 48,
                 timeout_s: float = CALL_TIMEOUT_S, max_quantity: int = 1) -> None:
        self.addrs = addrs
        self.product_id = product_id
        self.activity_id = activity_id
        self.stock = stock
        self.users = [f"user-{n}" for n in range(users)]
        self._known = set(self.users)
        self.max_quantity = max_quantity
        # Each user's units, for all its calls; a late-comer asks for one.
        self.quantity = {u: 1 + n % max_quantity for n, u in enumerate(self.users)}
        self.twice_every = twice_every
        self.timeout_s = timeout_s
        self.answers: list[Answer] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._answered = asyncio.Event()
        self._channel = grpc.aio.insecure_channel(addrs["activity"], options=CHANNEL_OPTIONS)
        self._stub = activity_pb2_grpc.ActivityServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    def count(self, code: grpc.StatusCode) -> int:
        return sum(1 for a in self.answers if a.code == code)

    async def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Awaits answers until `ready()` holds."""
        try:
            async with asyncio.timeout(WAIT_S):
                while not ready():
                    self._answered.clear()
                    await self._answered.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {WAIT_S}s: "
                                 f"{Counter(a.code.name for a in self.answers)}") from None

    async def wait_sold(self, orders: int) -> None:
        """Returns once `orders` calls were answered OK: the sale is under way."""
        await self.wait_until(lambda: self.count(OK) >= orders, f"{orders} orders")

    async def buy(self, user: str, *, timeout_s: float | None = None,
                  wait_for_ready: bool = False) -> Answer:
        if user not in self._known:  # a late-comer joins the sale
            self._known.add(user)
            self.users.append(user)
            self.quantity[user] = 1
        quantity = self.quantity[user]
        started = time.monotonic()
        try:
            reply = await self._stub.Seckill(
                activity_pb2.SeckillRequest(activity_id=self.activity_id, user_id=user,
                                            quantity=quantity),
                timeout=timeout_s or self.timeout_s, wait_for_ready=wait_for_ready)
            answer = Answer(user, OK, reply.order.id, "", started, time.monotonic(),
                            quantity=reply.order.quantity)
        except grpc.aio.AioRpcError as exc:
            details = error_details(exc)
            info = details.get("ErrorInfo")
            order_id = int(info.metadata.get("order_id", 0)) if info else 0
            available = int(info.metadata.get("available", 0)) if info else 0
            detail = info.reason if info else exc.details() or ""
            answer = Answer(user, exc.code(), order_id, detail, started, time.monotonic(),
                            "RetryInfo" in details, quantity, available)
        self.answers.append(answer)
        self._answered.set()
        return answer

    async def rush(self) -> None:
        """Every user's first call (two for some, at once); returns once all are answered."""
        async def one_user(n: int, user: str) -> None:
            async with self._slots:
                await asyncio.gather(*(self.buy(user)
                                       for _ in range(2 if n % self.twice_every == 0 else 1)))

        await asyncio.gather(*(one_user(n, u) for n, u in enumerate(self.users)))

    def unsettled(self) -> list[str]:
        settled = {a.user for a in self.answers if a.code in DEFINITE}
        return [u for u in self.users if u not in settled]

    async def finish(self, rounds: int = 5) -> None:
        """Users without a definite answer retry, as a client would, until each has one."""
        for _ in range(rounds):
            waiting = self.unsettled()
            if not waiting:
                return
            await asyncio.gather(*(self.buy(u, timeout_s=CALL_TIMEOUT_S, wait_for_ready=True)
                                   for u in waiting))
        assert not self.unsettled(), Counter(
            (a.code.name, a.detail) for a in self.answers if a.user in self.unsettled())

    async def verify(self, db_url: str, failures: set[grpc.StatusCode]) -> dict[str, int]:
        """Asserts the promises through the API and in the database; returns a summary.

        `failures` are the codes the fault may cause (the callers may retry them); any other
        non-definite code (INTERNAL, UNKNOWN, ...) fails the test.
        """
        codes = Counter(a.code for a in self.answers)
        assert set(codes) <= set(DEFINITE) | failures, codes
        for a in self.answers:
            if a.code in DEFINITE and a.code != OK:
                assert a.detail in DEFINITE[a.code], a
            if a.code == OK:
                assert a.quantity == self.quantity[a.user], a  # all or nothing
        told: dict[str, set[int]] = {}  # the order ids each user was told they hold
        for a in self.answers:
            if a.code in (OK, grpc.StatusCode.ALREADY_EXISTS):
                told.setdefault(a.user, set()).add(a.order_id)
        assert all(len(ids) == 1 for ids in told.values()), told
        ok_ids = [a.order_id for a in self.answers if a.code == OK]
        acknowledged = {a.user: a.order_id for a in self.answers if a.code == OK}

        # In the database.
        rows = await query(
            db_url, "SELECT id, user_id, quantity FROM orders WHERE activity_id = %s",
            (self.activity_id,))
        owner = {order_id: user.decode() for order_id, user, _ in rows}
        per_user = Counter(owner.values())
        assert not [u for u, n in per_user.items() if n > 1], "a user holds two orders"
        wrong = [(u.decode(), q) for _, u, q in rows if q != self.quantity[u.decode()]]
        assert not wrong, f"orders of another quantity than asked: {wrong[:5]}"
        [(stock_left,)] = await query(db_url, "SELECT stock FROM products WHERE id = %s",
                                      (self.product_id,))
        assert stock_left >= 0, "oversold"
        [(units_of_product,)] = await query(
            db_url, "SELECT COALESCE(SUM(quantity), 0) FROM orders WHERE product_id = %s",
            (self.product_id,))
        assert stock_left + units_of_product == self.stock, "units lost or created"
        lost = {u: i for u, i in acknowledged.items() if owner.get(i) != u}
        assert not lost, f"acknowledged orders missing: {lost}"
        # Each order has its one CREATED event (written in the same transaction).
        created = Counter(order_id for (order_id,) in await query(
            db_url, f"SELECT e.order_id FROM {STORED_EVENTS} e JOIN orders o ON o.id = e.order_id"
            " WHERE e.type = 1 AND o.activity_id = %s", (self.activity_id,)))
        assert created == Counter(list(owner)), "an order without its one CREATED event"
        # Every order belongs to a user who was told its id, and the other way round.
        assert {u: min(ids) for u, ids in told.items()} == {u: i for i, u in owner.items()}
        short = [a for a in self.answers if a.refused("INSUFFICIENT_STOCK")]
        sold_out_users = {a.user for a in self.answers if a.refused("SOLD_OUT")}
        short_users = {a.user for a in short}
        assert not (sold_out_users | short_users) & set(per_user), (
            "a user refused for want of units holds an order")
        # The stock only fell: each count named was at least what is left, and below the ask.
        untrue = [a for a in short if not max(stock_left, 1) <= a.available < a.quantity]
        assert not untrue, f"INSUFFICIENT_STOCK naming a count that was not true: {untrue[:3]}"
        # Finished: no unit left that a user still without an order asked for.
        assert all(self.quantity[u] > stock_left for u in sold_out_users | short_users)
        assert stock_left < self.max_quantity, "the sale did not finish"

        # Through the API.
        check = SeckillCheck(self.addrs["activity"], self.addrs["order"], self.activity_id,
                             product_addr=self.addrs["product"], initial_stock=self.stock)
        failed = [c for c in await check.verify(len(owner), ok_ids) if not c.ok]
        assert not failed, failed
        # Orders that landed although every call that placed them failed (the commit went
        # through, its answer did not): the users learnt them on retry, as ALREADY_EXISTS.
        return {"calls": len(self.answers), "orders": len(owner), "units": units_of_product,
                "insufficient_stock": len(short),
                "unacknowledged_orders": len(set(owner.values()) - set(acknowledged)),
                **{code.name: n for code, n in codes.items()}}

    def in_flight_at(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.started < moment < a.ended]


# Health follows the database within the test's time (the default pings every 1 s).
HEALTH_INTERVAL = "0.2"


@asynccontextmanager
async def running_services(db_url: str, logs: Path, **overrides: str
                           ) -> AsyncIterator[ServiceSet]:
    """The three services as processes on `db_url` (shipped defaults but `overrides`)."""
    env = subprocess_env(db_url, SECKILL_HEALTH_INTERVAL=HEALTH_INTERVAL, **overrides)
    services = ServiceSet(logs, lambda name: env)
    try:
        await services.start()
        yield services
    finally:
        await services.stop_all()


async def start_flash_sale(addrs: dict[str, str], stock: int, *,
                           max_quantity: int = MAX_QUANTITY, **sale_args: Any) -> FlashSale:
    """A product with `stock` units and an activity selling it now, at most `max_quantity`
    per user, through the API."""
    async with grpc.aio.insecure_channel(addrs["product"]) as pc, \
            grpc.aio.insecure_channel(addrs["activity"]) as ac:
        product = await product_pb2_grpc.ProductServiceStub(pc).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name="Phone", price_cents=9900, stock=stock)),
            metadata=ADMIN, timeout=CALL_TIMEOUT_S)
        activity = await activity_pb2_grpc.ActivityServiceStub(ac).CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name="Flash sale", start_time=timestamp(-1),
                end_time=timestamp(3600), per_user_limit=max_quantity)),
            metadata=ADMIN, timeout=CALL_TIMEOUT_S)
    return FlashSale(addrs, product.id, activity.id, stock, max_quantity=max_quantity,
                     **sale_args)


async def health_becomes(address: str, status: int, service: str = "") -> None:
    """Awaits the health Watch stream of `address` (its entry `service`) until it reports
    `status`."""
    async with grpc.aio.insecure_channel(address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
        async for reply in stream:
            if reply.status == status:
                stream.cancel()
                return
    raise AssertionError(f"{address} ended its health stream before reaching {status}")


async def served(call: Callable[[], Awaitable[T]]) -> T:
    """The answer of `call`, retried while it is UNAVAILABLE (a peer reconnecting)."""
    answer: list[T] = []

    async def attempt() -> bool:
        try:
            answer.append(await call())
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() != UNAVAILABLE:
                raise
            return False

    await eventually(attempt, "served again", every_s=INNODB_POLL_S)
    return answer[0]


class Holder:
    """A connection of the test's own that holds a lock, as another client would (a long
    admin transaction, a migration's table lock)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.conn: aiomysql.Connection | None = None
        self.connection_id = 0

    async def _connect(self) -> aiomysql.Cursor:
        base, name = self.db_url.rsplit("/", 1)
        host, port = base.rsplit("@", 1)[1].split(":")
        self.conn = await aiomysql.connect(host=host, port=int(port), user="root", db=name,
                                           autocommit=False)
        cur = await self.conn.cursor()
        await cur.execute("SELECT CONNECTION_ID()")
        (self.connection_id,) = await cur.fetchone()
        return cur

    async def hold_stock_row(self, product_id: int) -> None:
        cur = await self._connect()
        async with asyncio.timeout(WAIT_S):  # waits for the batch in flight to commit
            await cur.execute("SELECT stock FROM products WHERE id = %s FOR UPDATE",
                              (product_id,))

    async def hold_orders_table(self) -> None:
        cur = await self._connect()
        async with asyncio.timeout(WAIT_S):
            await cur.execute("LOCK TABLES orders WRITE")

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.rollback()
            async with self.conn.cursor() as cur:
                await cur.execute("UNLOCK TABLES")
            self.conn.close()
            self.conn = None

    async def others(self) -> list[tuple[int, str]]:
        """(session, state) of every open transaction on the test's database but ours."""
        return [(int(i), state) for i, state in await query(
            self.db_url,
            "SELECT t.trx_mysql_thread_id, t.trx_state FROM information_schema.innodb_trx t"
            " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
            " WHERE p.db = DATABASE() AND p.id NOT IN (%s, CONNECTION_ID())",
            (self.connection_id,))]


@asynccontextmanager
async def holding(db_url: str) -> AsyncIterator[Holder]:
    holder = Holder(db_url)
    try:
        yield holder
    finally:
        await holder.release()


def report(name: str, summary: dict[str, int]) -> None:
    """One line per test for RELIABILITY.md (shown with `pytest -s`)."""
    print(f"\n[fault] {name}: {summary}")


