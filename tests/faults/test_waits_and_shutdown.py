"""Waits under a flash-sale load end in bounded time with a clear status, and the promises
hold (`FlashSale.verify`, see test_faults.py): callers whose deadline passes while the work
waits leave no lock wait or connection behind; lock waits and slow statements end by their
settings; a SIGTERM mid-sale finishes or cancels the calls in flight and exits in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.flash_sale import (
    ABORTED,
    CALL_TIMEOUT_S,
    CANCELLED,
    DEADLINE_EXCEEDED,
    DEFINITE,
    INNODB_POLL_S,
    NOT_SERVING,
    OK,
    RESOURCE_EXHAUSTED,
    SERVING,
    UNAVAILABLE,
    WAIT_S,
    Answer,
    FlashSale,
    Holder,
    holding,
    report,
    running_services,
    start_flash_sale,
)
from tests.helpers.polling import eventually
from tests.helpers.stack import query, start_stack

pytestmark = pytest.mark.slow


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

    sale = await start_flash_sale(addrs, stock=200, users=300, timeout_s=1.0)
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
            await eventually(lambda: service_idle(holder), "the service let go",
                             every_s=INNODB_POLL_S)
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
        # Calls queued behind the held row whose deadline the queue would outlast may be
        # refused before any work (RESOURCE_EXHAUSTED with RetryInfo: runtime/overload.py).
        summary = await sale.verify(db_url, {DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED})
        assert all(a.retry_info for a in sale.answers if a.code == RESOURCE_EXHAUSTED)
        assert summary.get("DEADLINE_EXCEEDED", 0) > 1
        async with holding(db_url) as holder:
            await eventually(lambda: service_idle(holder), "the service is idle",
                             every_s=INNODB_POLL_S)
        report(f"client deadline under a held row lock ({mode})", summary)
    finally:
        await sale.close()
        await stack.stop()


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
    sale = await start_flash_sale(addrs, stock=150, users=300)
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


@pytest.mark.parametrize("past_grace", [False, True], ids=["within-grace", "past-grace"])
async def test_sigterm_mid_sale_finishes_or_cancels_in_flight_calls_and_exits_in_time(
    db_url: str, tmp_path: Path, past_grace: bool
) -> None:
    """SIGTERM: new calls refused, calls in flight finish (or, past the grace, are cut off
    with their transactions), and the process exits 0 in time."""
    grace_s = 2.0
    # The access log of every call: the server's view below reads how each one ended.
    async with running_services(db_url, tmp_path, SECKILL_SHUTDOWN_GRACE=str(grace_s),
                                SECKILL_DB_LOCK_WAIT_TIMEOUT="60",
                                SECKILL_ACCESS_LOG_ALL="true") as services:
        sale = await start_flash_sale(services.addrs, stock=150)
        activity = services.running["activity"]
        try:
            async with holding(db_url) as holder, \
                    grpc.aio.insecure_channel(services.addrs["activity"]) as channel:
                rush = asyncio.create_task(sale.rush())
                await sale.wait_sold(30)
                # Hold the stock row, so that calls are surely in flight at the SIGTERM.
                await holder.hold_stock_row(sale.product_id)
                await eventually(
                    lambda: _any_waiting(holder), "the service waits for the stock row",
                    every_s=INNODB_POLL_S)
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
                    await eventually(lambda: _nothing_left(holder), "sessions ended",
                                     every_s=INNODB_POLL_S)
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
