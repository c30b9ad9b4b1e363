"""Machine faults on a 3-node Galera cluster and two app hosts (seckill_cluster), under a sale.

One cluster serves the whole module (starting it takes ~30 s); each test runs a flash sale from
the root namespace through both app hosts (a round_robin channel over them), breaks a machine
mid-sale, heals it, and ends with every host running again and the promises checked through
the API and in SQL on every node: each acknowledged order is there, no oversell, no user with
two orders, stock + orders = initial stock. A call caught by the fault may fail (UNAVAILABLE,
ABORTED, DEADLINE_EXCEEDED); the user retries it, and must then get OK or ALREADY_EXISTS with
the order id they were told before, if any."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pymysql
import pytest

from seckill_cluster.cluster import Cluster
from seckill_cluster.galera import DATABASE
from seckill_cluster.hosts import Host, namespaces_available
from seckill_stack.nats import NatsServer
from tests.helpers.galera_sale import (
    RESUME_BOUND_S,
    FeedConsumer,
    Sale,
    check_feed,
    open_sale,
    stored_event_ids,
    verify,
)
from tests.helpers.jetstream import Consumer
from tests.helpers.polling import eventually
from tests.helpers.stack import REPO, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(240)]

_why = namespaces_available()
if _why:
    pytest.skip(f"cluster tests need root and ip netns: {_why}", allow_module_level=True)
# The relay's JetStream: a nats-server in the root namespace on the cluster's bridge, which the
# app hosts reach (their order services relay to it; a consumer reads it from here).
NATS = NatsServer(REPO / ".run" / "cluster-test-nats", free_port(), host="10.78.0.1")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Its own names and subnet, so a cluster started by hand (make cluster-up) is untouched.
    running = Cluster(REPO / ".run" / "cluster-test", prefix="sktest", subnet="10.78.0")
    running.down()
    shutil.rmtree(NATS.root, ignore_errors=True)
    # The relays wait for the broker (their health entry NOT_SERVING, sales unaffected) until
    # it starts on the bridge, which exists once the cluster is up.
    running.up(service_env={"SECKILL_EVENTS_NATS_URL": NATS.url})
    NATS.start()
    try:
        yield running
    finally:
        NATS.stop()
        running.down()


@pytest.fixture
async def new_sale(cluster: Cluster) -> AsyncIterator[Sale]:
    """1200 units for 2000 users."""
    product_id, activity_id = await open_sale(cluster, stock=1200)
    sale = Sale(cluster, product_id, activity_id, stock=1200, users=2000)
    yield sale
    await sale.close()


def the_write_node(cluster: Cluster) -> Host:
    """The node both proxies send connections to (they agree by construction)."""
    chosen = set(cluster.write_nodes().values())
    assert len(chosen) == 1, cluster.write_nodes()
    return cluster.host(chosen.pop())


async def test_write_node_killed_mid_sale(cluster: Cluster, new_sale: Sale,
                                          record_property: Callable[[str, object], None]) -> None:
    """SIGKILL the node both proxies write to: the proxies move to the next Synced+Primary
    node, the survivors form a Primary component, and selling resumes within the bound. A live
    WatchOrderEvents consumer, resuming on errors, gets every committed event once, and so does
    a durable JetStream consumer of the relay's stream."""
    sale = new_sale
    consumer = FeedConsumer(cluster)
    durable = Consumer(NATS.url, f"kill-{sale.activity_id}")  # JetStream, through the relay
    running = asyncio.create_task(sale.run())
    await sale.wait_for(100)
    victim = the_write_node(cluster)
    await asyncio.to_thread(cluster.kill, victim.name)
    killed_at = time.monotonic()
    resumed_at = await sale.wait_for(1, after=killed_at + 0.001)
    resume_s = resumed_at - killed_at
    record_property("resume_after_write_node_kill_s", round(resume_s, 2))
    print(f"selling resumed {resume_s:.2f} s after the write node was killed")
    assert resume_s <= RESUME_BOUND_S
    await running
    survivors = [d for d in cluster.dbs if d != victim]
    await verify(cluster, sale, survivors)
    assert the_write_node(cluster) != victim
    try:
        await check_feed(cluster, sale, consumer, survivors[0])
        stored = set(await asyncio.to_thread(stored_event_ids, cluster, survivors[0], sale))

        async def relayed() -> bool:
            return stored <= durable.seen
        await eventually(relayed, "every committed event of the sale in JetStream", 60)
        assert len(durable.events) == len(durable.seen)  # each handled once, by event id
    finally:
        await consumer.close()
        await durable.close()
    # The killed node rejoins (state transfer) and holds every order too.
    await asyncio.to_thread(cluster.start, victim.name)
    await verify(cluster, sale)


async def test_node_partitioned_mid_sale(cluster: Cluster, new_sale: Sale) -> None:
    """Cut the write node off the network: it leaves the Primary component and commits
    nothing while cut off; the others go on selling; after `heal` it rejoins with every
    order, and the proxies move back to it. A live WatchOrderEvents consumer, resuming on
    errors, gets every committed event once across both moves."""
    sale = new_sale
    consumer = FeedConsumer(cluster)  # across the move to another node and the move back
    running = asyncio.create_task(sale.run())
    await sale.wait_for(100)
    cut = the_write_node(cluster)
    await asyncio.to_thread(cluster.partition, cut.name)
    cut_at = time.monotonic()

    def refuses_writes() -> str:
        """'' once the cut-off node is out of the Primary component and refuses a write."""
        status = cluster.node_status(cut)
        if status.get("wsrep_cluster_status") == "Primary":
            return "still Primary"
        with cluster.admin(cut, database=DATABASE) as conn, conn.cursor() as cur:
            try:
                cur.execute("UPDATE products SET stock = stock WHERE id = %s",
                            (sale.product_id,))
            except pymysql.MySQLError as exc:
                assert exc.args[0] == 1047, exc  # ER_UNKNOWN_COM_ERROR: not ready for use
                return ""
        return "a write committed on a node cut off from the cluster"

    deadline = time.monotonic() + 20
    while (why := await asyncio.to_thread(refuses_writes)):
        assert why == "still Primary", why
        assert time.monotonic() < deadline, f"{cut.name} still Primary 20 s after the cut"
        await asyncio.sleep(0.2)  # the node's view changes after its timeouts; no event
    await sale.wait_for(50, after=cut_at)  # the rest of the cluster goes on selling
    await running
    with cluster.admin(cut, database=DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION wsrep_dirty_reads = ON")  # reads on a non-Primary node
        cur.execute("SELECT COUNT(*) FROM orders WHERE activity_id = %s", (sale.activity_id,))
        (seen_while_cut,) = cur.fetchone()  # type: ignore[misc]
    assert seen_while_cut < len(sale.acknowledged()), "the cut-off node kept up with sales"
    await asyncio.to_thread(cluster.heal, cut.name)
    await asyncio.to_thread(cluster.wait_synced, cut)
    await asyncio.to_thread(cluster.wait_routed, [cut])
    await verify(cluster, sale)
    try:
        await check_feed(cluster, sale, consumer, cut)
    finally:
        await consumer.close()


async def test_app_host_killed_mid_sale(cluster: Cluster, new_sale: Sale) -> None:
    """SIGKILL an app host (its services and its proxy): the clients' round_robin channels
    drop it and the sale goes on through the other app host."""
    sale = new_sale
    running = asyncio.create_task(sale.run())
    await sale.wait_for(100)
    victim = cluster.apps[0]
    await asyncio.to_thread(cluster.kill, victim.name)
    killed_at = time.monotonic()
    resumed_at = await sale.wait_for(100, after=killed_at + 0.001)
    print(f"orders went on through {cluster.apps[1].name}: the first "
          f"{resumed_at - killed_at:.2f} s after {victim.name}'s death")
    assert resumed_at - killed_at <= RESUME_BOUND_S
    await running
    await verify(cluster, sale)
    await asyncio.to_thread(cluster.start, victim.name)


async def test_whole_cluster_restarted(cluster: Cluster, new_sale: Sale) -> None:
    """The write node dies, the others sell on, then they die too: a full stop. Started again,
    the cluster is bootstrapped from the most advanced node (not the first one to die, which
    lacks the last orders), and every acknowledged order is there on every node."""
    sale = new_sale
    running = asyncio.create_task(sale.run())
    await sale.wait_for(100)
    first = the_write_node(cluster)
    await asyncio.to_thread(cluster.kill, first.name)
    await sale.wait_for(100, after=time.monotonic())  # orders that `first` never saw
    for db in cluster.dbs:
        await asyncio.to_thread(cluster.kill, db.name)
    positions = await asyncio.to_thread(cluster.recover_positions, cluster.dbs)
    assert positions[first.name] < max(positions.values()), positions
    await asyncio.to_thread(cluster.start, *(d.name for d in cluster.dbs))
    await running  # the users' retries go through once the database is back
    await verify(cluster, sale)
