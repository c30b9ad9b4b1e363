"""A flash sale through a Galera cluster's app hosts (seckill_cluster), and the checks of its
promises through the API and in SQL on every node: shared by the cluster's fault tests and
its two-writer test."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import pymysql
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_events_pb2,
    order_events_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from seckill_cluster.cluster import Cluster
from seckill_cluster.galera import DATABASE
from seckill_cluster.hosts import Host
from seckill_common.client.tls import ClientTLS
from seckill_stack.invariants import Invariant, SeckillCheck
from tests.helpers.factories import timestamp
from tests.helpers.rpc import error_details

OK = grpc.StatusCode.OK
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
SOLD_OUT = grpc.StatusCode.FAILED_PRECONDITION
DEFINITE = {OK, ALREADY_EXISTS, SOLD_OUT}
# What a call caught by a machine fault may answer; the user then retries.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED,
             grpc.StatusCode.DEADLINE_EXCEEDED}
CALL_TIMEOUT_S = 10.0
RESUME_BOUND_S = 10.0  # selling must resume within this after the write node dies
SALE_BOUND_S = 150.0  # every user has a definite answer within this
RETRY_S = 15.0  # how long a set-up or check call is retried while UNAVAILABLE
T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    user: str
    code: grpc.StatusCode
    order_id: int  # OK: the order placed; ALREADY_EXISTS: the order held; else 0
    started: float
    ended: float


class Sale:
    """`users` users, `concurrency` at a time, buy from a sale of `stock` units through both
    app hosts; each user retries a failed call until the answer is definite."""

    def __init__(self, cluster: Cluster, product_id: int, activity_id: int, stock: int,
                 users: int, concurrency: int = 16) -> None:
        self.cluster = cluster
        self.product_id, self.activity_id, self.stock = product_id, activity_id, stock
        self.users = [f"user-{n}" for n in range(users)]
        self.answers: list[Answer] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._channel = ClientTLS().channel(cluster.target("activity"))
        self._stub = activity_pb2_grpc.ActivityServiceStub(self._channel)
        self._answered = asyncio.Condition()

    async def _call(self, user: str) -> Answer:
        started = time.monotonic()
        try:
            reply = await self._stub.Seckill(
                activity_pb2.SeckillRequest(activity_id=self.activity_id, user_id=user),
                timeout=CALL_TIMEOUT_S)
            answer = Answer(user, OK, reply.order.id, started, time.monotonic())
        except grpc.aio.AioRpcError as exc:
            info = error_details(exc).get("ErrorInfo")
            order_id = int(info.metadata.get("order_id", 0)) if info else 0
            answer = Answer(user, exc.code(), order_id, started, time.monotonic())
        self.answers.append(answer)
        async with self._answered:
            self._answered.notify_all()
        return answer

    async def _user(self, user: str) -> None:
        async with self._slots:
            while True:
                if (await self._call(user)).code in DEFINITE:
                    return
                await asyncio.sleep(0.05)  # a client's back-off before its retry

    async def run(self) -> None:
        async with asyncio.timeout(SALE_BOUND_S):
            await asyncio.gather(*(self._user(u) for u in self.users))

    def ok_after(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.code == OK and a.started >= moment]

    async def wait_for(self, orders: int, after: float = 0.0) -> float:
        """Returns when `orders` orders were acknowledged for calls started after `after`:
        the moment the first of them was answered."""
        async with asyncio.timeout(60), self._answered:
            await self._answered.wait_for(lambda: len(self.ok_after(after)) >= orders)
        return min(a.ended for a in self.ok_after(after))

    def acknowledged(self) -> dict[str, int]:
        return {a.user: a.order_id for a in self.answers if a.code == OK}

    def check_answers(self) -> None:
        """Only definite or retryable codes; retries never gave a user a second order."""
        codes = Counter(a.code for a in self.answers)
        assert set(codes) <= DEFINITE | RETRYABLE, codes
        told: dict[str, set[int]] = {}
        for a in self.answers:
            if a.code in (OK, ALREADY_EXISTS):
                told.setdefault(a.user, set()).add(a.order_id)
        assert all(len(ids) == 1 for ids in told.values()), \
            {u: ids for u, ids in told.items() if len(ids) > 1}

    async def close(self) -> None:
        await self._channel.close()


class FeedConsumer:
    """A WatchOrderEvents consumer written as a user would: through either app host, and on
    any error it resumes after the last revision it holds (docs/EVENTS.md)."""

    def __init__(self, cluster: Cluster) -> None:
        self.events: list[order_events_pb2.OrderEvent] = []
        self.resumes = 0
        self._admin = (("authorization", f"Bearer {cluster.state.admin_token}"),)
        self._channel = ClientTLS().channel(cluster.target("order"))
        self._stub = order_events_pb2_grpc.OrderEventServiceStub(self._channel)
        self._arrived = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            after = self.events[-1].revision if self.events else 0
            call = self._stub.WatchOrderEvents(
                order_events_pb2.WatchOrderEventsRequest(after_revision=after),
                metadata=self._admin)
            try:
                async for response in call:
                    self.events += response.events
                    async with self._arrived:
                        self._arrived.notify_all()
            except grpc.aio.AioRpcError:
                pass
            self.resumes += 1
            await asyncio.sleep(0.2)  # a client's back-off before it resumes

    async def holds_created(self, order_ids: set[int]) -> None:
        """Returns once a CREATED event of every order in `order_ids` has arrived."""
        def complete() -> bool:
            return order_ids <= {e.order.id for e in self.events
                                 if e.type == order_events_pb2.OrderEvent.CREATED}
        async with asyncio.timeout(60), self._arrived:
            await self._arrived.wait_for(complete)

    def problems(self, stored: list[str]) -> list[str]:
        """What is wrong with the events held against `stored`, the event ids of the sale's
        orders in the database."""
        ids = [e.event_id for e in self.events]
        revisions = [e.revision for e in self.events]
        problems = []
        if len(set(ids)) != len(ids):
            problems.append("an event received twice")
        if revisions != sorted(set(revisions)):
            problems.append("revisions out of order")
        missing = set(stored) - set(ids)
        if missing:
            problems.append(f"{len(missing)} committed events never received")
        return problems

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._channel.close()


def stored_event_ids(cluster: Cluster, node: Host, sale: Sale) -> list[str]:
    with cluster.admin(node, database=DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT e.event_id FROM order_events e JOIN orders o ON o.id = e.order_id"
                    " WHERE o.activity_id = %s", (sale.activity_id,))
        return [str(event_id) for (event_id,) in cur.fetchall()]


async def check_feed(cluster: Cluster, sale: Sale, consumer: FeedConsumer, node: Host) -> None:
    """The live consumer holds every committed event of the sale once, in revision order."""
    await consumer.holds_created(set(sale.acknowledged().values()))
    stored = await asyncio.to_thread(stored_event_ids, cluster, node, sale)
    assert len(stored) >= len(sale.acknowledged())
    assert not consumer.problems(stored), consumer.problems(stored)


def sql_invariants(conn: pymysql.Connection, sale: Sale) -> list[str]:
    """The promises as rows on one node; the problems found (none: all hold).

    The one place that knows the order schema: an order is a row of `orders` for the
    activity, and the product's stock is what is left.
    """
    with conn.cursor() as cur:
        # Reads wait until the node has applied everything committed before them.
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT id, user_id FROM orders WHERE activity_id = %s",
                    (sale.activity_id,))
        orders = {order_id: user.decode() for order_id, user in cur.fetchall()}
        cur.execute("SELECT stock FROM products WHERE id = %s", (sale.product_id,))
        (stock_left,) = cur.fetchone()  # type: ignore[misc]
    problems = []
    missing = {u: i for u, i in sale.acknowledged().items() if orders.get(i) != u}
    if missing:
        problems.append(f"acknowledged orders missing: {missing}")
    twice = [u for u, n in Counter(orders.values()).items() if n > 1]
    if twice:
        problems.append(f"users with two orders: {twice}")
    if stock_left < 0:
        problems.append(f"oversold: stock {stock_left}")
    if stock_left + len(orders) != sale.stock:
        problems.append(f"stock {stock_left} + orders {len(orders)} != {sale.stock}")
    return problems


async def verify(cluster: Cluster, sale: Sale, nodes: list[Host] | None = None) -> None:
    """The promises through the API and in SQL on each of `nodes` (default: every node)."""
    sale.check_answers()
    for db in nodes or cluster.dbs:
        def check(db: Host = db) -> list[str]:
            with cluster.admin(db, database=DATABASE) as conn:
                return sql_invariants(conn, sale)
        assert not await asyncio.to_thread(check), (db.name, await asyncio.to_thread(check))
    acknowledged = list(sale.acknowledged().values())
    with cluster.admin((nodes or cluster.dbs)[0], database=DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM orders WHERE activity_id = %s", (sale.activity_id,))
        (orders,) = cur.fetchone()  # type: ignore[misc]
    api = SeckillCheck(cluster.target("activity"), cluster.target("order"), sale.activity_id,
                       product_addr=cluster.target("product"), initial_stock=sale.stock)
    failed = await retried(lambda: api_failures(api, orders, acknowledged))
    assert not failed, failed


async def api_failures(api: SeckillCheck, orders: int, acknowledged: list[int]
                       ) -> list[Invariant]:
    failed = [c for c in await api.verify(orders, acknowledged) if not c.ok]
    if failed and failed[0].detail.startswith("UNAVAILABLE"):  # could not read: try again
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), failed[0].detail)
    return failed


async def retried(call: Callable[[], Awaitable[T]]) -> T:
    """`call`, retried while it is UNAVAILABLE, as a client would: a node that rejoins takes
    the proxies' connections back (failback), and each service connection pooled on the node
    left behind fails once."""
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)  # a client's back-off


async def open_sale(cluster: Cluster, stock: int) -> tuple[int, int]:
    """A new product of `stock` units and an open activity on it, made through the API (any
    app host): (product id, activity id)."""
    admin = (("authorization", f"Bearer {cluster.state.admin_token}"),)
    tls = ClientTLS()
    async with tls.channel(cluster.target("product")) as pc, \
            tls.channel(cluster.target("activity")) as ac:
        # A retried create may make a second product or activity, which is harmless here.
        product = await retried(lambda: product_pb2_grpc.ProductServiceStub(pc).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name="Phone", price_cents=9900, stock=stock)), metadata=admin, timeout=10))
        activity = await retried(lambda: activity_pb2_grpc.ActivityServiceStub(ac)
                                 .CreateActivity(activity_pb2.CreateActivityRequest(
                                     activity=activity_pb2.Activity(
                                         product_id=product.id, name="Flash sale",
                                         start_time=timestamp(-1), end_time=timestamp(3600))),
                                     metadata=admin, timeout=10))
    return product.id, activity.id
