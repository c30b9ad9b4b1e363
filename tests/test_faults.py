"""Faults under a flash-sale load: the three promises hold whatever breaks mid-sale.

Every test runs a sale (`FlashSale`: hundreds of distinct users, some calling twice at once),
breaks something once the sale is under way (a killed service or database, a peer that is down
or hung, a lock held elsewhere, callers out of time, a SIGTERM), heals it, lets the users whose
calls failed retry until each has a definite answer, and then checks through the API and in
the database (`FlashSale.verify`): no oversell, at most one order per user, stock left + orders
== stock added, and every order answered OK still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiomysql
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from seckill_common.runtime.peers import CHANNEL_OPTIONS
from seckill_stack.invariants import SeckillCheck
from tests.conftest import timestamp
from tests.support import (
    ADMIN,
    PrivateMariaDB,
    ServiceProcess,
    create_database,
    error_details,
    free_port,
    query,
    start_stack,
    subprocess_env,
)

pytestmark = pytest.mark.slow

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
ABORTED = grpc.StatusCode.ABORTED
CANCELLED = grpc.StatusCode.CANCELLED
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
# The answers that settle a user's attempt: won, already holds an order, sold out.
DEFINITE = {OK: "", grpc.StatusCode.ALREADY_EXISTS: "ALREADY_PURCHASED",
            grpc.StatusCode.FAILED_PRECONDITION: "SOLD_OUT"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CALL_TIMEOUT_S = 30.0  # the deadline of calls that are expected to be answered
WAIT_S = 30.0  # the bound of every wait for a state change
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

    def refused(self, reason: str) -> bool:
        return self.code in DEFINITE and self.code != OK and self.detail == reason


class FlashSale:
    """A sale of `stock` units: `users` distinct users rush in (every `twice_every`-th one with
    two calls at once), at most `concurrency` users calling at a time.

    Every answer is kept, so that `verify` can hold the platform to what it told each user.
    """

    def __init__(self, addrs: dict[str, str], product_id: int, activity_id: int, stock: int,
                 *, users: int = 400, twice_every: int = 4, concurrency: int = 48,
                 timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.addrs = addrs
        self.product_id = product_id
        self.activity_id = activity_id
        self.stock = stock
        self.users = [f"user-{n}" for n in range(users)]
        self._known = set(self.users)
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
        started = time.monotonic()
        try:
            reply = await self._stub.Seckill(
                activity_pb2.SeckillRequest(activity_id=self.activity_id, user_id=user),
                timeout=timeout_s or self.timeout_s, wait_for_ready=wait_for_ready)
            answer = Answer(user, OK, reply.order.id, "", started, time.monotonic())
        except grpc.aio.AioRpcError as exc:
            details = error_details(exc)
            info = details.get("ErrorInfo")
            order_id = int(info.metadata.get("order_id", 0)) if info else 0
            answer = Answer(user, exc.code(), order_id, info.reason if info else exc.details(),
                            started, time.monotonic(), "RetryInfo" in details)
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
                assert a.detail == DEFINITE[a.code], a
        told: dict[str, set[int]] = {}  # the order ids each user was told they hold
        for a in self.answers:
            if a.code in (OK, grpc.StatusCode.ALREADY_EXISTS):
                told.setdefault(a.user, set()).add(a.order_id)
        assert all(len(ids) == 1 for ids in told.values()), told
        ok_ids = [a.order_id for a in self.answers if a.code == OK]
        acknowledged = {a.user: a.order_id for a in self.answers if a.code == OK}

        # In the database.
        rows = await query(db_url, "SELECT id, user_id FROM orders WHERE activity_id = %s",
                           (self.activity_id,))
        owner = {order_id: user.decode() for order_id, user in rows}
        per_user = Counter(owner.values())
        assert not [u for u, n in per_user.items() if n > 1], "a user holds two orders"
        [(stock_left,)] = await query(db_url, "SELECT stock FROM products WHERE id = %s",
                                      (self.product_id,))
        assert stock_left >= 0, "oversold"
        [(orders_of_product,)] = await query(
            db_url, "SELECT COUNT(*) FROM orders WHERE product_id = %s", (self.product_id,))
        assert stock_left + orders_of_product == self.stock
        lost = {u: i for u, i in acknowledged.items() if owner.get(i) != u}
        assert not lost, f"acknowledged orders missing: {lost}"
        # Every order belongs to a user who was told its id, and the other way round.
        assert {u: min(ids) for u, ids in told.items()} == {u: i for i, u in owner.items()}
        sold_out_users = {a.user for a in self.answers if a.refused("SOLD_OUT")}
        assert not sold_out_users & set(per_user), "a user refused SOLD_OUT holds an order"
        assert stock_left == 0 and len(per_user) == self.stock, "the sale did not finish"

        # Through the API.
        check = SeckillCheck(self.addrs["activity"], self.addrs["order"], self.activity_id,
                             product_addr=self.addrs["product"], initial_stock=self.stock)
        failed = [c for c in await check.verify(len(owner), ok_ids) if not c.ok]
        assert not failed, failed
        # Orders that landed although every call that placed them failed (the commit went
        # through, its answer did not): the users learnt them on retry, as ALREADY_EXISTS.
        return {"calls": len(self.answers), "orders": len(owner),
                "unacknowledged_orders": len(set(owner.values()) - set(acknowledged)),
                **{code.name: n for code, n in codes.items()}}

    def in_flight_at(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.started < moment < a.ended]


class Services:
    """The three services as processes of their own, on fixed ports, so that a restarted one
    is found again at its address by its peers and clients."""

    NAMES = ("product", "order", "activity")

    def __init__(self, db_url: str, logs: Path, **overrides: str) -> None:
        self.ports = {name: free_port() for name in self.NAMES}
        # Health follows the database within the test's time (the default pings every 1 s).
        self.env = subprocess_env(db_url, SECKILL_HEALTH_INTERVAL="0.2", **{
            f"SECKILL_{name.upper()}_ADDR": f"127.0.0.1:{port}"
            for name, port in self.ports.items()}, **overrides)
        self.logs = logs
        self.running: dict[str, ServiceProcess] = {}

    @property
    def addrs(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}

    async def start(self, *names: str) -> None:
        for name in names or self.NAMES:
            self.running[name] = ServiceProcess(f"{name}_svc", self.env,
                                                self.logs / f"{name}.log")
        await asyncio.gather(*(self.running[n].start() for n in names or self.NAMES))

    def send(self, name: str, sig: int) -> None:
        process = self.running[name].process
        assert process is not None and process.returncode is None
        process.send_signal(sig)

    async def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        return await self.running.pop(name).stop(sig)

    async def stop_all(self) -> None:
        processes = [s.process for s in self.running.values() if s.process is not None]
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)  # a test may have left one stopped
        await asyncio.gather(*(self.stop(n) for n in list(self.running)),
                             return_exceptions=True)
        for process in processes:  # one that did not stop in time must not outlive the test
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def running_services(db_url: str, logs: Path, **overrides: str
                           ) -> AsyncIterator[Services]:
    services = Services(db_url, logs, **overrides)
    try:
        await services.start()
        yield services
    finally:
        await services.stop_all()


async def open_sale(addrs: dict[str, str], stock: int, **sale_args: int) -> FlashSale:
    """A product with `stock` units and an activity selling it now, through the API."""
    async with grpc.aio.insecure_channel(addrs["product"]) as pc, \
            grpc.aio.insecure_channel(addrs["activity"]) as ac:
        product = await product_pb2_grpc.ProductServiceStub(pc).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name="Phone", price_cents=9900, stock=stock)),
            metadata=ADMIN, timeout=CALL_TIMEOUT_S)
        activity = await activity_pb2_grpc.ActivityServiceStub(ac).CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name="Flash sale", start_time=timestamp(-1),
                end_time=timestamp(3600))),
            metadata=ADMIN, timeout=CALL_TIMEOUT_S)
    return FlashSale(addrs, product.id, activity.id, stock, **sale_args)


async def health_becomes(address: str, status: int) -> None:
    """Awaits the health Watch stream of `address` until it reports `status`."""
    async with grpc.aio.insecure_channel(address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S)
        async for reply in stream:
            if reply.status == status:
                stream.cancel()
                return
    raise AssertionError(f"{address} ended its health stream before reaching {status}")


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout_s: float = 10.0) -> None:
    """Polls `check` until it holds: for states only visible by looking (the database's
    transaction tables, a pool's counters), which no stream announces.

    Not faster than every 0.2 s: InnoDB refreshes information_schema.innodb_trx only when it
    was left unread for 0.1 s, so a quicker poll would read the same snapshot for ever.
    """
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"never true within {timeout_s}s: {what}"
        await asyncio.sleep(0.2)


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

    await eventually(attempt, "served again")
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


# --- 1. a service process killed mid-sale ---------------------------------------------------

async def test_activity_process_killed_mid_sale(db_url: str, tmp_path: Path) -> None:
    """SIGKILL of the activity process: its callers fail (UNAVAILABLE), a batch may have
    committed unanswered, and after a restart every order is where its user can find it."""
    async with running_services(db_url, tmp_path) as services:
        sale = await open_sale(services.addrs, stock=150)
        try:
            rush = asyncio.create_task(sale.rush())
            await sale.wait_sold(30)
            assert await services.stop("activity", signal.SIGKILL) == -signal.SIGKILL
            async with asyncio.timeout(WAIT_S):
                await rush  # calls to the dead process fail at once; none hangs
            await services.start("activity")
            await sale.finish()
            summary = await sale.verify(db_url, {UNAVAILABLE, CANCELLED})
            assert summary.get("UNAVAILABLE", 0) > 0, "the kill was not felt"
            report("activity SIGKILL", summary)
        finally:
            await sale.close()


# --- 2. the database killed mid-sale --------------------------------------------------------

async def test_database_killed_mid_sale_services_recover_alone(tmp_path: Path) -> None:
    """SIGKILL of the database: UNAVAILABLE (never OK for what did not commit), health
    NOT_SERVING, and SERVING again by itself once the database is back."""
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    try:
        db_url = await create_database(server.url_base)
        async with running_services(db_url, tmp_path) as services:
            sale = await open_sale(services.addrs, stock=150)
            pids = {n: s.process.pid for n, s in services.running.items()}  # type: ignore[union-attr]
            try:
                rush = asyncio.create_task(sale.rush())
                await sale.wait_sold(30)
                await asyncio.to_thread(server.kill)
                await asyncio.gather(*(health_becomes(a, NOT_SERVING)
                                       for a in services.addrs.values()))
                # Meanwhile every call is refused at once, UNAVAILABLE with a retry delay.
                started = time.monotonic()
                async with grpc.aio.insecure_channel(services.addrs["product"]) as channel:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await product_pb2_grpc.ProductServiceStub(channel).GetProduct(
                            product_pb2.GetProductRequest(id=sale.product_id),
                            timeout=CALL_TIMEOUT_S)
                assert err.value.code() == UNAVAILABLE
                assert "RetryInfo" in error_details(err.value)
                during = await sale.buy("during-outage")
                assert during.code == UNAVAILABLE and during.retry_info, during
                assert time.monotonic() - started < 5.0
                async with asyncio.timeout(WAIT_S):
                    await rush

                await asyncio.to_thread(server.start)
                await asyncio.gather(*(health_becomes(a, SERVING)
                                       for a in services.addrs.values()))
                # Recovered by themselves: the same processes, none restarted.
                assert {n: s.process.pid for n, s in services.running.items()} == pids  # type: ignore[union-attr]
                assert all(s.process.returncode is None  # type: ignore[union-attr]
                           for s in services.running.values())
                await sale.finish()
                summary = await sale.verify(db_url, {UNAVAILABLE})
                assert summary.get("UNAVAILABLE", 0) > 0
                report("database SIGKILL", summary)
            finally:
                await sale.close()
    finally:
        server.stop()


# --- 3. a peer service down or hung -----------------------------------------------------------

@pytest.mark.parametrize("how", ["stopped", "hung"])
async def test_seckill_sells_on_while_product_and_order_services_are_down(
    db_url: str, tmp_path: Path, how: str
) -> None:
    """Seckill needs only the database; what needs a peer fails fast, never hangs."""
    peer_timeout_s = 1.0
    client_deadline_s = 10.0
    async with running_services(db_url, tmp_path,
                                SECKILL_PEER_TIMEOUT=str(peer_timeout_s)) as services:
        sale = await open_sale(services.addrs, stock=150)
        spare = await open_sale(services.addrs, stock=1)  # an activity without orders
        channel = grpc.aio.insecure_channel(services.addrs["activity"])
        activities = activity_pb2_grpc.ActivityServiceStub(channel)
        try:
            rush = asyncio.create_task(sale.rush())
            await sale.wait_sold(30)
            for peer in ("product", "order"):
                if how == "stopped":
                    assert await services.stop(peer) == 0
                else:
                    services.send(peer, signal.SIGSTOP)

            # What needs a peer fails fast, UNAVAILABLE naming the peer, far within the
            # caller's deadline; a hung peer costs SECKILL_PEER_TIMEOUT at most.
            bound_s = 1.0 if how == "stopped" else peer_timeout_s + 1.5
            needs_peer: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("product", lambda: activities.GetActivity(
                    activity_pb2.GetActivityRequest(id=sale.activity_id),
                    timeout=client_deadline_s)),
                ("product", lambda: activities.CreateActivity(
                    activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                        product_id=sale.product_id, name="another", start_time=timestamp(0),
                        end_time=timestamp(60))),
                    metadata=ADMIN, timeout=client_deadline_s)),
                ("order", lambda: activities.DeleteActivity(
                    activity_pb2.DeleteActivityRequest(id=spare.activity_id), metadata=ADMIN,
                    timeout=client_deadline_s)),
            ]
            took: list[float] = []
            for peer, call in needs_peer:
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call()
                elapsed = time.monotonic() - started
                assert err.value.code() == UNAVAILABLE, err.value
                assert peer in (err.value.details() or ""), err.value.details()
                assert "RetryInfo" in error_details(err.value)
                assert elapsed < bound_s, f"{peer}: {elapsed:.2f}s"
                took.append(round(elapsed, 3))

            # Seckill needs neither peer: the whole sale is decided while they are away.
            async with asyncio.timeout(WAIT_S):
                await rush
            await sale.finish()
            assert set(Counter(a.code for a in sale.answers)) <= set(DEFINITE)

            for peer in ("product", "order"):
                if how == "stopped":
                    await services.start(peer)
                else:
                    services.send(peer, signal.SIGCONT)
            # Served again once the activity service has reconnected (its channel backs off
            # up to 2 s between attempts); meanwhile UNAVAILABLE, which a client retries.
            got = await served(lambda: activities.GetActivity(
                activity_pb2.GetActivityRequest(id=sale.activity_id), timeout=CALL_TIMEOUT_S))
            assert got.product.stock == 0
            await served(lambda: activities.DeleteActivity(
                activity_pb2.DeleteActivityRequest(id=spare.activity_id), metadata=ADMIN,
                timeout=CALL_TIMEOUT_S))
            report(f"product+order {how}: peer calls UNAVAILABLE after {took} s",
                   await sale.verify(db_url, set()))
        finally:
            await channel.close()
            await sale.close()
            await spare.close()


# --- 4. callers whose deadline passes while the work waits -----------------------------------

@pytest.mark.parametrize("mode", ["coalesced", "per_request"])
async def test_callers_out_of_time_leave_no_lock_wait_or_connection_behind(
    db_url: str, mode: str
) -> None:
    """Callers whose deadline passes while their work waits for a lock take the work with
    them: no lock wait, transaction or pooled connection stays behind, and retries are safe."""
    # Row locks may be waited for far longer than the callers' deadline: only their leaving
    # can end the waits.
    stack = await start_stack(db_url, SECKILL_COMMIT_MODE=mode,
                              SECKILL_DB_LOCK_WAIT_TIMEOUT="60")
    addrs = {"product": stack.product.address, "activity": stack.activity.address,
             "order": stack.order.address}
    pool = stack.activity.database.pool

    async def service_idle(holder: Holder) -> bool:
        return pool.size == pool.freesize and not await holder.others()

    sale = await open_sale(addrs, stock=200, users=300, timeout_s=1.0)
    try:
        async with holding(db_url) as holder:
            rush = asyncio.create_task(sale.rush())
            await sale.wait_sold(20)
            await holder.hold_stock_row(sale.product_id)
            async with asyncio.timeout(WAIT_S):
                await rush  # the calls still waiting run out of time
            late = await sale.buy("impatient", timeout_s=0.5)
            assert late.code == DEADLINE_EXCEEDED, late
            assert late.ended - late.started < 2.0
            # The callers left, and their work with them: while the row is still held,
            # nothing of the service waits for it or holds a pooled connection.
            await eventually(lambda: service_idle(holder), "the service let go")
            assert stack.activity.database.reachable.is_set()
        # Released. A retry is safe: one order, then ALREADY_EXISTS naming that order.
        again = await sale.buy("impatient")
        assert again.code in (OK, grpc.StatusCode.ALREADY_EXISTS), again
        rows = await query(db_url, "SELECT id FROM orders WHERE activity_id = %s AND user_id = %s",
                           (sale.activity_id, "impatient"))
        assert rows == [(again.order_id,)]
        twice = await sale.buy("impatient")
        assert (twice.code, twice.order_id) == (grpc.StatusCode.ALREADY_EXISTS, again.order_id)
        await sale.finish()  # the same for every user
        summary = await sale.verify(db_url, {DEADLINE_EXCEEDED})
        assert summary.get("DEADLINE_EXCEEDED", 0) > 1
        async with holding(db_url) as holder:
            await eventually(lambda: service_idle(holder), "the service is idle")
        report(f"client deadline under a held row lock ({mode})", summary)
    finally:
        await sale.close()
        await stack.stop()


# --- 5. lock waits and slow statements -------------------------------------------------------

@pytest.mark.parametrize(("lock", "settings", "code", "message", "batch_s"), [
    # A row lock held elsewhere: innodb_lock_wait_timeout, then ABORTED (not retried).
    pytest.param("row", {"SECKILL_DB_LOCK_WAIT_TIMEOUT": "1"}, ABORTED,
                 "database lock wait timed out, please retry", 1.0, id="row-lock-wait"),
    # A statement stuck behind a table lock: max_statement_time, UNAVAILABLE.
    pytest.param("table", {"SECKILL_DB_STATEMENT_TIMEOUT": "1",
                           "SECKILL_DB_LOCK_WAIT_TIMEOUT": "60"}, UNAVAILABLE,
                 "database statement timed out", 1.0, id="statement-timeout"),
    # No statement timeout: the metadata lock wait is bounded all the same.
    pytest.param("table", {"SECKILL_DB_STATEMENT_TIMEOUT": "0",
                           "SECKILL_DB_LOCK_WAIT_TIMEOUT": "1"}, ABORTED,
                 "database lock wait timed out, please retry", 1.0, id="metadata-lock-wait"),
])
async def test_lock_waits_and_slow_statements_end_in_bounded_time_with_a_clear_status(
    db_url: str, lock: str, settings: dict[str, str], code: grpc.StatusCode, message: str,
    batch_s: float,
) -> None:
    """A lock held elsewhere costs a caller a bounded wait and a clear, retryable status."""
    stack = await start_stack(db_url, **settings)
    addrs = {"product": stack.product.address, "activity": stack.activity.address,
             "order": stack.order.address}
    sale = await open_sale(addrs, stock=150, users=300)
    try:
        async with holding(db_url) as holder:
            rush = asyncio.create_task(sale.rush())
            await sale.wait_sold(20)
            if lock == "row":
                await holder.hold_stock_row(sale.product_id)
            else:
                await holder.hold_orders_table()
            # A caller arriving now waits for the batch in flight, then for its own.
            probe = await sale.buy("probe")
            assert (probe.code, probe.detail) == (code, message), probe
            assert probe.retry_info == (code == UNAVAILABLE), probe
            assert probe.ended - probe.started < 2 * batch_s + 2.0, probe
            # The database is there: the timeout must not mark it down.
            assert stack.activity.database.reachable.is_set()
            async with grpc.aio.insecure_channel(stack.activity.address) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            assert health.status == SERVING
        async with asyncio.timeout(WAIT_S):
            await rush
        await sale.finish()
        summary = await sale.verify(db_url, {code})
        report(f"{lock} lock with {settings}: probe {probe.code.name} after "
               f"{probe.ended - probe.started:.2f}s", summary)
    finally:
        await sale.close()
        await stack.stop()


# --- 6. graceful shutdown under load ---------------------------------------------------------

@pytest.mark.parametrize("past_grace", [False, True], ids=["within-grace", "past-grace"])
async def test_sigterm_mid_sale_finishes_or_cancels_in_flight_calls_and_exits_in_time(
    db_url: str, tmp_path: Path, past_grace: bool
) -> None:
    """SIGTERM: new calls refused, calls in flight finish (or, past the grace, are cut off
    with their transactions), and the process exits 0 in time."""
    grace_s = 2.0
    async with running_services(db_url, tmp_path, SECKILL_SHUTDOWN_GRACE=str(grace_s),
                                SECKILL_DB_LOCK_WAIT_TIMEOUT="60") as services:
        sale = await open_sale(services.addrs, stock=150)
        activity = services.running["activity"]
        try:
            async with holding(db_url) as holder, \
                    grpc.aio.insecure_channel(services.addrs["activity"]) as channel:
                rush = asyncio.create_task(sale.rush())
                await sale.wait_sold(30)
                # Hold the stock row, so that calls are surely in flight at the SIGTERM.
                await holder.hold_stock_row(sale.product_id)
                await eventually(
                    lambda: _any_waiting(holder), "the service waits for the stock row")
                health = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(), timeout=WAIT_S)
                assert (await health.read()).status == SERVING

                signalled = time.monotonic()
                services.send("activity", signal.SIGTERM)
                assert (await health.read()).status == NOT_SERVING
                health.cancel()  # an open stream would hold the server for the whole grace
                # New calls are refused. One may slip in before the server stops taking
                # calls: it is then one more call in flight, waiting for the row.
                late = await _until_refused(sale)
                if not past_grace:
                    await holder.release()  # the calls in flight can finish now
                assert activity.process is not None
                async with asyncio.timeout(grace_s + 10):
                    exit_code = await activity.process.wait()
                exited_s = time.monotonic() - signalled
                if past_grace:
                    # Cut off at the grace, and their transactions with them: nothing of the
                    # stopped service waits for the row, which is still held.
                    await eventually(lambda: _nothing_left(holder), "sessions ended")
            assert exit_code == 0
            assert exited_s < grace_s + 3.0, exited_s
            async with asyncio.timeout(WAIT_S):
                await rush
                late_codes = {(await call).code for call in late}
            assert late_codes <= set(DEFINITE) | {UNAVAILABLE, CANCELLED}, late_codes
            await services.stop("activity")  # collects the rest of its log

            # The server's view (its access log): how the calls it had begun ended.
            ended = _codes_after_shutdown(tmp_path / "activity.log")
            if past_grace:
                assert ended[CANCELLED.name] > 0, ended
                assert set(ended) <= {CANCELLED.name}, ended
            else:
                assert ended and set(ended) <= {c.name for c in DEFINITE}, ended
            # The clients' view: a call in flight at the SIGTERM was answered, or refused
            # without effect. Calls that had reached the server but no handler yet are
            # answered CANCELLED by grpc at once, which a client cannot tell from its own
            # cancel: nothing of theirs ran (`verify` finds no order unknown to its user).
            in_flight = Counter(a.code for a in sale.in_flight_at(signalled))
            assert in_flight and set(in_flight) <= set(DEFINITE) | {CANCELLED, UNAVAILABLE}
            await services.start("activity")
            await sale.finish()
            summary = await sale.verify(db_url, {UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED})
            report(f"SIGTERM {'past' if past_grace else 'within'} grace: exit after "
                   f"{exited_s:.2f}s, server ended {dict(ended)}, clients in flight "
                   f"{ {c.name: n for c, n in in_flight.items()} }", summary)
        finally:
            await sale.close()


async def _until_refused(sale: FlashSale) -> list[asyncio.Task[Answer]]:
    """Sends new calls, one at a time, until one is refused UNAVAILABLE; returns them all."""
    calls: list[asyncio.Task[Answer]] = []
    async with asyncio.timeout(WAIT_S):
        while True:
            call = asyncio.create_task(sale.buy(f"late-{len(calls)}"))
            calls.append(call)
            done, _ = await asyncio.wait({call}, timeout=0.5)  # else it is in, and waits
            if done and call.result().code == UNAVAILABLE:
                return calls


def _codes_after_shutdown(log: Path) -> Counter[str]:
    """The codes of the Seckill calls a service process ended after it began shutting down."""
    codes: Counter[str] = Counter()
    shutting_down = False
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("message") == "shutting down":
                shutting_down = True
            elif shutting_down and str(record.get("method", "")).endswith("/Seckill"):
                codes[record["code"]] += 1
    return codes


async def _any_waiting(holder: Holder) -> bool:
    return any(state == "LOCK WAIT" for _, state in await holder.others())


async def _nothing_left(holder: Holder) -> bool:
    return not await holder.others()

