"""Two Galera writers selling one sale: nothing of a transaction that Galera aborted commits.

The documented deployment writes through one node, but a failover or a switchover makes two
writers for a while, and Galera then certifies their transactions against each other: the
loser of every conflict on the hot stock row is brute-force aborted, possibly between the
statements of one pipelined round trip (docs/DESIGN.md, "A transaction ended from outside").
Here that is the steady state: app1's proxy writes to db1 and app2's to db2 (`writers=2`),
and every user calls Seckill through both app hosts at once. Each round sells a fresh product
and then checks, in SQL on every node: stock + active units = units added; exactly one
CREATED event per order and none for an order that does not exist; every user told OK (or
ALREADY_EXISTS) holds that order, and was told no other. Then it reads the order events' feed
through both app hosts at once, which runs the events' sequencer on both writer nodes
(docs/EVENTS.md): each feed holds every order's CREATED event once, in revision order, and the
two feeds are the same.

Rounds: GALERA_WRITER_ROUNDS (default 2, as in `make test`); `make galera-writers` runs 30.
Every round runs even after a violation, so a run reports how many rounds broke a promise.
GALERA_WRITER_USERS_AT_ONCE (100) and GALERA_WRITER_RELAY_MS (replication through the delaying
relays) vary the load and the nodes' latency. Before transactions carried their guard
savepoint, 4 rounds in 58 broke promises here (units lost, CREATED events twice).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pymysql
import pytest
from seckill.v1 import activity_pb2, activity_pb2_grpc, order_events_pb2, order_events_pb2_grpc

from seckill_cluster.cluster import Cluster
from seckill_cluster.galera import DATABASE
from seckill_cluster.hosts import Host
from seckill_common.client.tls import ClientTLS
from tests.helpers.galera_sale import ALREADY_EXISTS, DEFINITE, OK, RETRYABLE, open_sale
from tests.helpers.rpc import error_details
from tests.helpers.stack import REPO, STORED_EVENTS

ROUNDS = int(os.environ.get("GALERA_WRITER_ROUNDS", "2"))
STOCK = 300
USERS = 1500
USERS_AT_ONCE = int(os.environ.get("GALERA_WRITER_USERS_AT_ONCE", "100"))
CALL_TIMEOUT_S = 10.0
ROUND_BOUND_S = 150.0  # every user has a definite answer on both app hosts within this
Metadata = tuple[tuple[str, str], ...]
# A round took 5-22 s on a loaded 2-core machine, starting the cluster about a minute.
pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.timeout(240 + ROUNDS * (ROUND_BOUND_S + 30))]
# An overloaded server (or a user's rate limit) sheds a call with RetryInfo: retried as well.
RETRIED = RETRYABLE | {grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class Round:
    """One sale, bought by every user through every app host at once."""

    product_id: int
    activity_id: int
    # (user, code, order id told: the order placed, or held for ALREADY_EXISTS; else 0)
    answers: list[tuple[str, grpc.StatusCode, int]] = field(default_factory=list)

    async def buy(self, stubs: list[activity_pb2_grpc.ActivityServiceAsyncStub]) -> None:
        slots = asyncio.Semaphore(USERS_AT_ONCE)

        async def until_definite(stub: activity_pb2_grpc.ActivityServiceAsyncStub, user: str
                                 ) -> None:
            while True:
                try:
                    reply = await stub.Seckill(activity_pb2.SeckillRequest(
                        activity_id=self.activity_id, user_id=user), timeout=CALL_TIMEOUT_S)
                    code, order_id = OK, reply.order.id
                except grpc.aio.AioRpcError as exc:
                    info = error_details(exc).get("ErrorInfo")
                    code = exc.code()
                    order_id = int(info.metadata.get("order_id", 0)) if info else 0
                self.answers.append((user, code, order_id))
                if code not in RETRIED:
                    return
                await asyncio.sleep(0.05)  # a client's back-off before its retry

        async def user(name: str) -> None:
            async with slots:
                await asyncio.gather(*(until_definite(stub, name) for stub in stubs))

        async with asyncio.timeout(ROUND_BOUND_S):
            await asyncio.gather(*(user(f"user-{n}") for n in range(USERS)))

    def told(self) -> dict[str, set[int]]:
        """Each user's order ids from OK and ALREADY_EXISTS answers."""
        told: dict[str, set[int]] = {}
        for user, code, order_id in self.answers:
            if code in (OK, ALREADY_EXISTS):
                told.setdefault(user, set()).add(order_id)
        return told

    def answer_problems(self) -> list[str]:
        codes = Counter(code for _, code, _ in self.answers)
        problems = [f"unexpected answers: {codes}"] if set(codes) - DEFINITE - RETRIED else []
        twice = {u: ids for u, ids in self.told().items() if len(ids) > 1 or 0 in ids}
        if twice:
            problems.append(f"users told two order ids, or none: {dict(list(twice.items())[:5])}")
        return problems

    def sql_problems(self, conn: pymysql.Connection, events_after: int) -> list[str]:
        """The promises as rows on one node (events: only revisions above `events_after`,
        this round's)."""
        with conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait = 1")  # read all committed before
            cur.execute("SELECT stock FROM products WHERE id = %s", (self.product_id,))
            (stock,) = cur.fetchone()  # type: ignore[misc]
            cur.execute("SELECT id, user_id, COALESCE(quantity * active, 0) FROM orders"
                        " WHERE activity_id = %s", (self.activity_id,))
            orders = {i: (user.decode(), int(held)) for i, user, held in cur.fetchall()}
            # Events sequenced (order_events) or still waiting for the sequencer (the inbox).
            cur.execute("SELECT o.id, COUNT(e.event_id) FROM orders o LEFT JOIN"
                        f" {STORED_EVENTS} e ON e.order_id = o.id AND e.type = 1"
                        " WHERE o.activity_id = %s GROUP BY o.id HAVING COUNT(e.event_id) <> 1",
                        (self.activity_id,))
            created = dict(cur.fetchall())
            cur.execute("SELECT e.event_id, e.order_id FROM (SELECT event_id, order_id FROM"
                        " order_events WHERE revision > %s UNION ALL SELECT event_id, order_id"
                        " FROM order_event_inbox) e LEFT JOIN orders o ON o.id = e.order_id"
                        " WHERE o.id IS NULL", (events_after,))
            orphans = dict(cur.fetchall())
        active = sum(held for _, held in orders.values())
        problems = []
        if stock < 0 or stock + active != STOCK:
            problems.append(f"stock {stock} + active units {active} ({len(orders)} orders)"
                            f" != {STOCK} added")
        if created:
            problems.append(f"orders without exactly one CREATED event {{order: count}}:"
                            f" {dict(list(created.items())[:10])} ({len(created)})")
        if orphans:
            problems.append(f"events of orders that do not exist {{revision: order}}:"
                            f" {dict(list(orphans.items())[:10])} ({len(orphans)})")
        lost = {u: ids for u, ids in self.told().items()
                if any(orders.get(i, ("", 0)) != (u, 1) for i in ids)}
        if lost:
            problems.append(f"users told an order they do not hold: "
                            f"{dict(list(lost.items())[:5])} ({len(lost)})")
        return problems


FEED_BOUND_S = 30.0  # both feeds hold every order's CREATED event within this


async def read_feed(stub: order_events_pb2_grpc.OrderEventServiceAsyncStub, admin: Metadata,
                    after: int) -> list[order_events_pb2.OrderEvent]:
    """Every event after `after` as ListOrderEvents serves them, retrying a sequencer that
    lost its certification conflict (ABORTED) or a node away."""
    events: list[order_events_pb2.OrderEvent] = []
    token = ""
    while True:
        try:
            page = await stub.ListOrderEvents(order_events_pb2.ListOrderEventsRequest(
                after_revision=after, page_size=1000, page_token=token), metadata=admin,
                timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRIED:
                raise
            await asyncio.sleep(0.05)  # a client's back-off before its retry
            continue
        events += page.events
        if not page.next_page_token:
            return events
        token = page.next_page_token


def feed_problems(name: str, feed: list[order_events_pb2.OrderEvent], orders: set[int]
                  ) -> list[str]:
    revisions = [e.revision for e in feed]
    created = Counter(e.order.id for e in feed if e.type == order_events_pb2.OrderEvent.CREATED)
    problems = []
    if revisions != sorted(set(revisions)):
        problems.append(f"{name}: revisions not strictly increasing")
    if len({e.event_id for e in feed}) != len(feed):
        problems.append(f"{name}: an event served twice")
    if created != Counter(orders):
        problems.append(f"{name}: CREATED events {sum(created.values())} for {len(orders)}"
                        " orders, not one each")
    return problems


async def open_round(cluster: Cluster) -> Round:
    """A fresh sale. Its activity may be made through the app host that did not make the
    product, whose node may not have applied the product yet (Galera applies a certified
    write set on the other nodes a moment later; reads do not wait for it): NOT_FOUND is
    retried for a few seconds, leaving an unused product behind."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return Round(*await open_sale(cluster, STOCK))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)  # the other node's apply has no event to wait on


async def both_feeds(cluster: Cluster, sale: Round, after: int) -> list[str]:
    """The feed read through both app hosts at once until both hold the round's orders'
    CREATED events (both writer nodes sequence meanwhile); what is wrong with either."""
    admin: Metadata = (("authorization", f"Bearer {cluster.state.admin_token}"),)
    orders = {order_id for ids in sale.told().values() for order_id in ids}
    channels = [ClientTLS().channel(f"{app.ip}:50053") for app in cluster.apps]
    stubs = [order_events_pb2_grpc.OrderEventServiceStub(c) for c in channels]
    try:
        deadline = time.monotonic() + FEED_BOUND_S
        while True:
            try:
                feeds = await asyncio.gather(*(read_feed(stub, admin, after) for stub in stubs))
            except grpc.aio.AioRpcError as exc:
                return [f"the feed answered {exc.code().name}: {exc.details()}; the order"
                        f" services' errors:\n{service_errors(cluster, 'order')}"]
            mine = [[e for e in feed if e.order.id in orders] for feed in feeds]
            done = all(len({e.order.id for e in feed}) >= len(orders) for feed in mine)
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # a node applying the other's commits: nothing to await
    finally:
        for channel in channels:
            await channel.close()
    problems = [p for app, feed in zip(cluster.apps, mine, strict=True)
                for p in feed_problems(app.name, feed, orders)]
    if [e.event_id for e in mine[0]] != [e.event_id for e in mine[1]]:
        problems.append("the two app hosts' feeds differ")
    return problems


def service_errors(cluster: Cluster, service: str) -> str:
    """The last error lines of `service`'s logs on every app host (the cluster's teardown
    removes them)."""
    lines = [f"{log.name}: {line[:1500]}"
             for log in sorted((cluster.root / "logs").glob(f"*-{service}.log"))
             for line in log.read_text(errors="replace").splitlines()
             if '"level": "ERROR"' in line or "Traceback" in line]
    return "\n".join(lines[-6:])


def node_problems(cluster: Cluster, db: Host, sale: Round, events_after: int) -> list[str]:
    with cluster.admin(db, database=DATABASE) as conn:
        return sale.sql_problems(conn, events_after)


def wsrep_counters(cluster: Cluster, db: Host) -> dict[str, int]:
    """The node's conflict counters: transactions it aborted for a replicated write that
    certified first (bf_aborts), and its own writes that failed certification."""
    status = cluster.node_status(db)
    return {name: int(status.get(f"wsrep_local_{name}", 0))
            for name in ("bf_aborts", "cert_failures")}


def latest_revision(cluster: Cluster) -> int:
    with cluster.admin(cluster.dbs[0], database=DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT COALESCE(MAX(revision), 0) FROM order_events")
        (revision,) = cur.fetchone()  # type: ignore[misc]
    return int(revision)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Names and a subnet of its own: tests/faults/test_cluster.py's cluster (sktest, 10.78.0), the
    # benchmark's (skbench, 10.79.0) and `make cluster-up`'s (seckill, 10.77.0) are untouched.
    running = Cluster(REPO / ".run" / "cluster-writers", prefix="skwriters",
                      subnet="10.80.0")
    running.down()
    try:
        relay = os.environ.get("GALERA_WRITER_RELAY_MS")
        running.up(writers=2, relay_ms=float(relay) if relay else None)
        yield running
    finally:
        running.down()


async def test_two_writers_commit_nothing_of_an_aborted_transaction(
        cluster: Cluster, record_property: Callable[[str, object], None]) -> None:
    """ROUNDS sales through two writer nodes: 0 rounds with a broken promise."""
    # A node's check may fail once on a loaded machine; its proxy takes it back on the next.
    await asyncio.to_thread(cluster.wait_routed, cluster.dbs, 30.0)
    assert cluster.write_nodes() == {"app1": "db1", "app2": "db2"}, cluster.write_nodes()
    before = {db.name: await asyncio.to_thread(wsrep_counters, cluster, db)
              for db in cluster.dbs}
    tls = ClientTLS()
    channels = [tls.channel(f"{app.ip}:50052") for app in cluster.apps]
    stubs = [activity_pb2_grpc.ActivityServiceStub(c) for c in channels]
    violations: dict[int, list[str]] = {}
    done = 0
    try:
        for n in range(1, ROUNDS + 1):
            events_after = await asyncio.to_thread(latest_revision, cluster)
            sale = await open_round(cluster)
            started = time.monotonic()
            await sale.buy(stubs)
            took = time.monotonic() - started
            problems = sale.answer_problems()
            for db in cluster.dbs:
                problems += [f"{db.name}: {p}" for p in await asyncio.to_thread(
                    node_problems, cluster, db, sale, events_after)]
            problems += await both_feeds(cluster, sale, events_after)
            codes = Counter(code.name for _, code, _ in sale.answers)
            print(f"round {n}/{ROUNDS}: {took:.1f} s, {len(sale.told())} buyers, "
                  f"answers {dict(codes)}: " + ("; ".join(problems) or "ok"), flush=True)
            if problems:
                violations[n] = problems
            done = n
    finally:
        for channel in channels:
            await channel.close()
        # Also when a round could not run: what the rounds before it showed.
        after = {db.name: await asyncio.to_thread(wsrep_counters, cluster, db)
                 for db in cluster.dbs}
        conflicts = {name: {k: after[name][k] - before[name][k] for k in after[name]}
                     for name in after}
        print(f"{len(violations)} of {done} rounds violated a promise "
              f"(rounds {sorted(violations)}); per node {conflicts}", flush=True)
    record_property("rounds", done)
    record_property("rounds_violated", len(violations))
    record_property("wsrep_conflicts", conflicts)
    # The premise: the two writers did conflict (else the rounds proved nothing).
    assert any(c["bf_aborts"] or c["cert_failures"] for c in conflicts.values()), conflicts
    assert not violations, violations
