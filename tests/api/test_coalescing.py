"""Coalesced commits and exact refusals keep every seckill rule."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pymysql
import pytest
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from activity_svc.decision import Won
from activity_svc.seckill import EngineSettings, SeckillEngine
from seckill_common.api.errors import ServiceError
from seckill_common.database.db import Database, create_pool
from seckill_common.database.transaction import Transaction
from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import error_details
from tests.helpers.stack import ADMIN, Stack, query, settings_for


@pytest.fixture
async def database(stack: Stack) -> AsyncIterator[Database]:
    """A pool on the stack's database, for driving the seckill engine directly."""
    db = Database(await create_pool(settings_for(stack.db_url)))
    yield db
    await db.close()


def outcome_of(result: Won | BaseException) -> str:
    if isinstance(result, Won):
        return "won"
    assert isinstance(result, ServiceError), result
    reason = getattr(result, "reason", "")
    return f"{result.code.name}:{reason}"


async def fire(engine: SeckillEngine, activity_id: int, users: list[str]) -> list[str]:
    """Starts one buy per user in this order (so they queue in it), then awaits them all."""
    tasks = [asyncio.create_task(engine.buy(activity_id, u)) for u in users]
    return [outcome_of(r) for r in await asyncio.gather(*tasks, return_exceptions=True)]


async def test_a_batch_serves_winners_in_arrival_order(stack: Stack, database: Database) -> None:
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id)
    # A long window so every call lands in the batch after the first commit.
    engine = SeckillEngine(database, EngineSettings(batch_window_s=0.2))
    await engine.product_of(activity.id)  # warm the cache: buy() then queues synchronously

    users = ["first", "u1", "u1", "u2", "u3", "u4", "u5", "u6", "u2"]
    outcomes = await fire(engine, activity.id, users)
    assert outcomes == [
        "won",  # an idle product commits at once: the first call alone
        "won", "ALREADY_EXISTS:ALREADY_PURCHASED",  # a twin in the same batch
        "won", "won", "won",  # stock 5 is gone here
        "FAILED_PRECONDITION:SOLD_OUT", "FAILED_PRECONDITION:SOLD_OUT",
        "ALREADY_EXISTS:ALREADY_PURCHASED",
    ]
    # The product was idle: its committer started at once and found all nine queued.
    assert engine.stats.batches == 1 and engine.stats.largest == len(users)
    rows = await query(stack.db_url, "SELECT user_id FROM orders ORDER BY id")
    assert [r[0].decode() for r in rows] == ["first", "u1", "u2", "u3", "u4"]
    [(stock,)] = await query(stack.db_url, "SELECT stock FROM products")
    assert stock == 0


async def test_batch_cap_splits_the_queue(stack: Stack, database: Database) -> None:
    product = await make_product(stack, stock=100)
    activity = await make_activity(stack, product.id)
    engine = SeckillEngine(database, EngineSettings(batch_window_s=0.05, batch_max=7))
    await engine.product_of(activity.id)
    outcomes = await fire(engine, activity.id, [f"u{i}" for i in range(30)])
    assert outcomes == ["won"] * 30
    assert engine.stats.largest == 7 and engine.stats.attempts == 30


async def test_a_batch_that_fails_midway_commits_nothing(
    stack: Stack, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = await make_product(stack, stock=10)
    activity = await make_activity(stack, product.id)
    engine = SeckillEngine(database, EngineSettings(batch_window_s=0.2))
    await engine.product_of(activity.id)
    assert await fire(engine, activity.id, ["before"]) == ["won"]

    real = Transaction.pipeline

    async def fail_after_the_writes(
            tx, sql, params, *, commit=False):
        # The server runs the INSERT and the UPDATE, then fails before the COMMIT.
        return await real(tx, sql + "; SELECT * FROM no_such_table" if commit else sql, params,
                          commit=commit)

    monkeypatch.setattr(Transaction, "pipeline", fail_after_the_writes)
    tasks = [asyncio.create_task(engine.buy(activity.id, f"u{i}")) for i in range(6)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, pymysql.err.ProgrammingError) for r in results), results
    assert len({id(r) for r in results}) == 1  # one failed transaction, one error for all
    monkeypatch.setattr(Transaction, "pipeline", real)

    rows = await query(stack.db_url, "SELECT user_id FROM orders")
    assert rows == [(b"before",)]
    [(stock,)] = await query(stack.db_url, "SELECT stock FROM products")
    assert stock == 9
    # The same callers retry and win: nothing half-committed stands in their way.
    assert await fire(engine, activity.id, [f"u{i}" for i in range(6)]) == ["won"] * 6


async def test_a_sold_out_product_is_answered_by_shared_reads(
    stack: Stack, database: Database
) -> None:
    product = await make_product(stack, stock=2)
    activity = await make_activity(stack, product.id)
    engine = SeckillEngine(database)
    assert await fire(engine, activity.id, ["a", "b"]) == ["won", "won"]
    batches = engine.stats.batches

    # The last batch left no stock: later callers are refused on a shared read, each with
    # what the transaction would say (holders learn their order id), and no transaction runs.
    outcomes = await fire(engine, activity.id, ["d", "a", "e", "b", "d"])
    assert outcomes == ["FAILED_PRECONDITION:SOLD_OUT", "ALREADY_EXISTS:ALREADY_PURCHASED",
                        "FAILED_PRECONDITION:SOLD_OUT", "ALREADY_EXISTS:ALREADY_PURCHASED",
                        "FAILED_PRECONDITION:SOLD_OUT"]
    assert engine.stats.batches == batches
    [(order_a,)] = await query(stack.db_url, "SELECT id FROM orders WHERE user_id = 'a'")
    with pytest.raises(ServiceError) as err:
        await engine.buy(activity.id, "a")
    assert err.value.metadata == {"order_id": str(order_a)}  # type: ignore[attr-defined]


async def test_a_unit_given_back_elsewhere_goes_to_the_next_caller(
    stack: Stack, database: Database
) -> None:
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    engine = SeckillEngine(database)
    assert await fire(engine, activity.id, ["a", "b"]) == ["won", "FAILED_PRECONDITION:SOLD_OUT"]
    # The unit comes back behind the engine's back (as another process would do it).
    await query(stack.db_url, "DELETE FROM orders")
    await query(stack.db_url, "UPDATE products SET stock = 1")
    assert await fire(engine, activity.id, ["c", "d"]) == ["won", "FAILED_PRECONDITION:SOLD_OUT"]


async def test_cancels_during_a_coalesced_sale_keep_stock_and_orders_in_balance(
    stack: Stack,
) -> None:
    stock = 30
    product = await make_product(stack, stock=stock)
    activity = await make_activity(stack, product.id)
    cancelled: list[int] = []

    async def buyer(n: int) -> str:
        try:
            reply = await stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=activity.id, user_id=f"user-{n}"))
        except grpc.aio.AioRpcError as exc:
            return error_details(exc)["ErrorInfo"].reason
        if n % 5 == 0:  # some buyers change their minds at once, while the sale goes on
            await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=reply.order.id),
                                           metadata=ADMIN)
            cancelled.append(reply.order.id)
            return "cancelled"
        return "OK"

    outcomes = Counter(await asyncio.gather(*(buyer(n) for n in range(200))))
    assert set(outcomes) <= {"OK", "cancelled", "SOLD_OUT"}, outcomes
    [(orders,)] = await query(stack.db_url, "SELECT COUNT(*) FROM orders WHERE active = 1")
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.stock + orders == stock
    assert orders == outcomes["OK"]
    assert cancelled and not await query(
        stack.db_url, f"SELECT id FROM orders WHERE id IN ({','.join(map(str, cancelled))})"
        " AND active = 1")


# --- quantities (issue 17) -------------------------------------------------------------------

async def fire_units(engine: SeckillEngine, activity_id: int,
                     asks: list[tuple[str, int]]) -> list[str]:
    """As `fire`, each user asking for its units; INSUFFICIENT_STOCK with the units it names."""
    tasks = [asyncio.create_task(engine.buy(activity_id, u, q)) for u, q in asks]
    answers = []
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        answer = outcome_of(result)
        if answer.endswith("INSUFFICIENT_STOCK"):
            answer += "=" + result.metadata["available"]  # type: ignore[union-attr]
        answers.append(answer)
    return answers


async def test_a_batch_decides_quantities_in_arrival_order_all_or_nothing(
    stack: Stack, database: Database
) -> None:
    product = await make_product(stack, stock=3)
    activity = await make_activity(stack, product.id, per_user_limit=3)
    engine = SeckillEngine(database, EngineSettings(batch_window_s=0.2))
    await engine.product_of(activity.id)
    answers = await fire_units(engine, activity.id, [
        ("first", 1), ("big", 3), ("small", 1), ("mid", 2), ("tiny", 1), ("last", 1)])
    assert answers == [
        "won",  # alone, at once: 2 left
        "FAILED_PRECONDITION:INSUFFICIENT_STOCK=2",  # does not block the smaller ones
        "won", "FAILED_PRECONDITION:INSUFFICIENT_STOCK=1", "won",
        "FAILED_PRECONDITION:SOLD_OUT"]
    rows = await query(stack.db_url, "SELECT user_id, quantity FROM orders ORDER BY id")
    assert [(u.decode(), q) for u, q in rows] == [("first", 1), ("small", 1), ("tiny", 1)]


async def test_only_requests_larger_than_the_units_left_go_to_a_read_first(
    stack: Stack, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from activity_svc import repository

    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id, per_user_limit=3)
    engine = SeckillEngine(database)
    reads: list[list[int]] = []
    real = repository.read_facts

    async def counted(tx: Transaction, product_id: int, attempts: list) -> object:
        reads.append([a.quantity for a in attempts])
        return await real(tx, product_id, attempts)

    monkeypatch.setattr(repository, "read_facts", counted)
    assert await fire_units(engine, activity.id, [("a", 3)]) == ["won"]  # 2 left
    # 3 > 2: refused on a read, exactly, without a transaction.
    batches = engine.stats.batches
    assert await fire_units(engine, activity.id, [("b", 3)]) == [
        "FAILED_PRECONDITION:INSUFFICIENT_STOCK=2"]
    assert reads == [[3]] and engine.stats.batches == batches
    # 1 <= 2: straight to a transaction, never held up (let alone refused) by a read.
    assert await fire_units(engine, activity.id, [("c", 1)]) == ["won"]  # 1 left
    assert reads == [[3]]
    assert await fire_units(engine, activity.id, [("d", 2)]) == [
        "FAILED_PRECONDITION:INSUFFICIENT_STOCK=1"]
    assert await fire_units(engine, activity.id, [("e", 1)]) == ["won"]  # none left
    assert reads == [[3], [2]]
    assert await fire_units(engine, activity.id, [("f", 1)]) == ["FAILED_PRECONDITION:SOLD_OUT"]
    assert reads == [[3], [2], [1]]
    # A unit given back behind the engine's back: the 1-unit call's read lets it through.
    await query(stack.db_url, "UPDATE products SET stock = 1")
    assert await fire_units(engine, activity.id, [("g", 1)]) == ["won"]


async def test_a_quantity_over_the_limit_is_refused_before_any_transaction(
    stack: Stack, database: Database
) -> None:
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id, per_user_limit=2)
    engine = SeckillEngine(database)
    assert await fire_units(engine, activity.id, [("a", 3)]) == [
        "FAILED_PRECONDITION:QUANTITY_OVER_LIMIT"]
    assert engine.stats.batches == 0
    # The limit raised elsewhere (another process): the cached one is only a hint.
    await query(stack.db_url, "UPDATE activities SET per_user_limit = 3")
    assert await fire_units(engine, activity.id, [("a", 3)]) == ["won"]
    # Lowered elsewhere: the cache still allows 2, the transaction refuses on the limit read.
    await query(stack.db_url, "UPDATE activities SET per_user_limit = 1")
    assert await fire_units(engine, activity.id, [("b", 2)]) == [
        "FAILED_PRECONDITION:QUANTITY_OVER_LIMIT"]
