"""Faults under a flash-sale load: the three promises hold whatever breaks mid-sale.

Every test runs a sale (`FlashSale`: hundreds of distinct users, some calling twice at once),
breaks something once the sale is under way (a killed service or database, a peer that is down
or hung; locks, deadlines and SIGTERM are in test_waits_and_shutdown.py), heals it, lets the
users whose calls failed retry until each has a definite answer, and then checks through the
API and in the database (`FlashSale.verify`): no oversell, at most one order per user, stock
left + the units of the orders == stock added, and every order answered OK still there. The
sales are of quantities: users ask for 1 to 3 units, all or nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from seckill.v1 import activity_pb2, activity_pb2_grpc, product_pb2, product_pb2_grpc

from tests.helpers.factories import timestamp
from tests.helpers.flash_sale import (
    CALL_TIMEOUT_S,
    CANCELLED,
    DEFINITE,
    NOT_SERVING,
    SERVING,
    UNAVAILABLE,
    WAIT_S,
    health_becomes,
    report,
    running_services,
    served,
    start_flash_sale,
)
from tests.helpers.rpc import error_details
from tests.helpers.stack import ADMIN, PrivateMariaDB, create_database

pytestmark = pytest.mark.slow


async def test_activity_process_killed_mid_sale(db_url: str, tmp_path: Path) -> None:
    """SIGKILL of the activity process: its callers fail (UNAVAILABLE), a batch may have
    committed unanswered, and after a restart every order is where its user can find it."""
    async with running_services(db_url, tmp_path) as services:
        sale = await start_flash_sale(services.addrs, stock=150)
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


async def test_database_killed_mid_sale_services_recover_alone(tmp_path: Path) -> None:
    """SIGKILL of the database: UNAVAILABLE (never OK for what did not commit), health
    NOT_SERVING, and SERVING again by itself once the database is back."""
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    try:
        db_url = await create_database(server.url_base)
        async with running_services(db_url, tmp_path) as services:
            sale = await start_flash_sale(services.addrs, stock=150)
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


@pytest.mark.parametrize("how", ["stopped", "hung"])
async def test_seckill_sells_on_while_product_and_order_services_are_down(
    db_url: str, tmp_path: Path, how: str
) -> None:
    """Seckill needs only the database; what needs a peer fails fast, never hangs."""
    peer_timeout_s = 1.0
    client_deadline_s = 10.0
    async with running_services(db_url, tmp_path,
                                SECKILL_PEER_TIMEOUT=str(peer_timeout_s)) as services:
        sale = await start_flash_sale(services.addrs, stock=150)
        spare = await start_flash_sale(services.addrs, stock=1)  # an activity without orders
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
            assert got.product.stock < sale.max_quantity  # what is left, nobody asked for
            await served(lambda: activities.DeleteActivity(
                activity_pb2.DeleteActivityRequest(id=spare.activity_id), metadata=ADMIN,
                timeout=CALL_TIMEOUT_S))
            report(f"product+order {how}: peer calls UNAVAILABLE after {took} s",
                   await sale.verify(db_url, set()))
        finally:
            await channel.close()
            await sale.close()
            await spare.close()
