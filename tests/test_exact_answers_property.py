"""Property: for random interleavings of buys, cancels, restocks and window moves, every Seckill
answer is one the seckill transaction could have given at some instant during the call.

Each step runs a burst of concurrent buys together with at most one change (a cancel, a
restock, a window move on one of the product's two activities). Between steps the system is
quiet, so the state before a step (S0) and after its change alone (S1) are known; every buy
of the step ran against S0 or S1, less the units its own step's winners took. An answer is
admissible only if the transaction could have given it in one of those states.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product, timestamp
from tests.helpers.rpc import error_details
from tests.helpers.stack import ADMIN, Stack, create_database, start_stack

USERS = [f"u{n}" for n in range(6)]
WINDOWS = {"OPEN": (-3600, 3600), "NOT_STARTED": (3600, 7200), "ENDED": (-7200, -3600)}


@dataclass(frozen=True)
class State:
    stock: int
    windows: tuple[str, str]  # per activity index
    held: dict[tuple[int, str], int] = field(default_factory=dict)  # (index, user) -> order


@pytest.fixture
async def shared_stack(mariadb: str) -> AsyncIterator[Stack]:
    # The property test's own fresh database; one stack for all its examples (hypothesis
    # reruns the test body, not function fixtures), each of which makes its own sale.
    running = await start_stack(await create_database(mariadb))
    yield running
    await running.stop()


buys = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(USERS)), min_size=1, max_size=8)
changes = st.one_of(
    st.none(),
    st.tuples(st.just("cancel"), st.integers(0, 1), st.sampled_from(USERS)),
    st.tuples(st.just("restock"), st.integers(0, 3)),
    st.tuples(st.just("window"), st.integers(0, 1), st.sampled_from(sorted(WINDOWS))),
)
steps = st.lists(st.tuples(buys, changes), min_size=1, max_size=6)


def is_active(order: order_pb2.Order) -> bool:
    """Orders that hold a unit (every listed order, where orders carry no state)."""
    if "state" not in order.DESCRIPTOR.fields_by_name:
        return True
    return order_pb2.OrderState.Name(order.state) in {"PENDING_PAYMENT", "PAID"}


class Sale:
    def __init__(self, stack: Stack, product_id: int, activity_ids: list[int]) -> None:
        self.stack = stack
        self.product_id = product_id
        self.activity_ids = activity_ids

    async def buy(self, index: int, user: str) -> tuple[str, int]:
        """(answer, order id): "OK" or the refusal's reason, with the order it names."""
        try:
            # Users are named per sale: the per-user rate limit spans the examples.
            reply = await self.stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=self.activity_ids[index], user_id=f"{user}-{self.product_id}"))
        except grpc.aio.AioRpcError as exc:
            info = error_details(exc)["ErrorInfo"]
            return info.reason, int(info.metadata.get("order_id", "0"))
        return "OK", reply.order.id

    async def change(self, change: tuple, before: State) -> None:
        kind = change[0]
        if kind == "cancel":
            order_id = before.held.get((change[1], change[2]))
            if order_id is not None:
                await self.stack.orders.DeleteOrder(
                    order_pb2.DeleteOrderRequest(id=order_id), metadata=ADMIN)
        elif kind == "restock":
            await self.stack.products.UpdateProduct(product_pb2.UpdateProductRequest(
                product=product_pb2.Product(id=self.product_id, stock=change[1]),
                update_mask=field_mask_pb2.FieldMask(paths=["stock"])), metadata=ADMIN)
        else:
            start_s, end_s = WINDOWS[change[2]]
            await self.stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
                activity=activity_pb2.Activity(id=self.activity_ids[change[1]],
                                               start_time=timestamp(start_s),
                                               end_time=timestamp(end_s)),
                update_mask=field_mask_pb2.FieldMask(paths=["start_time", "end_time"])),
                metadata=ADMIN)

    async def observe(self, windows: tuple[str, str]) -> State:
        product = await self.stack.products.GetProduct(
            product_pb2.GetProductRequest(id=self.product_id))
        held: dict[tuple[int, str], int] = {}
        for index, activity_id in enumerate(self.activity_ids):
            reply = await self.stack.orders.ListOrders(order_pb2.ListOrdersRequest(
                activity_id=activity_id, page_size=100), metadata=ADMIN)
            for order in filter(is_active, reply.orders):
                user = order.user_id.rsplit("-", 1)[0]
                assert (index, user) not in held, "two active orders for one user"
                held[(index, user)] = order.id
        return State(product.stock, windows, held)


def after_change(state: State, change: tuple | None) -> State:
    if change is None:
        return state
    if change[0] == "cancel":
        held = dict(state.held)
        if held.pop((change[1], change[2]), None) is None:
            return state
        return replace(state, stock=state.stock + 1, held=held)
    if change[0] == "restock":
        return replace(state, stock=change[1])
    windows = list(state.windows)
    windows[change[1]] = change[2]
    return replace(state, windows=(windows[0], windows[1]))


def admissible(index: int, user: str, answer: str, order_id: int, states: list[State],
               wins: int, won_now: dict[tuple[int, str], int]) -> bool:
    """Could the transaction have answered this in one of `states`, given `wins` units taken
    by this step's winners and the orders `won_now` they made?"""
    key = (index, user)
    for state in states:
        held = state.held.get(key)
        if held is not None:
            if answer == "ALREADY_PURCHASED" and order_id == held:
                return True
            continue
        if answer == "ALREADY_PURCHASED" and won_now.get(key) == order_id:
            return True  # a twin of this step's winner
        window = state.windows[index]
        if window != "OPEN":
            if answer == window:
                return True
            continue
        if answer == "OK" or (answer == "SOLD_OUT" and state.stock <= wins):
            return True
    return False


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=steps, initial_stock=st.integers(0, 3))
async def test_every_answer_is_one_the_transaction_could_give(
    shared_stack: Stack, plan: list, initial_stock: int
) -> None:
    product = await make_product(shared_stack, stock=initial_stock)
    activities = [(await make_activity(shared_stack, product.id)).id for _ in range(2)]
    sale = Sale(shared_stack, product.id, activities)
    state = State(initial_stock, ("OPEN", "OPEN"))
    for step_buys, change in plan:
        states = [state, after_change(state, change)]
        work: list[Coroutine[Any, Any, Any]] = [sale.buy(index, user)
                                                for index, user in step_buys]
        if change is not None:
            work.append(sale.change(change, state))
        results = (await asyncio.gather(*work))[:len(step_buys)]
        wins = sum(answer == "OK" for answer, _ in results)
        won_now = {(i, u): order for (i, u), (answer, order) in zip(step_buys, results,
                                                                    strict=True)
                   if answer == "OK"}
        assert len(won_now) == wins, f"a user won twice in one step: {results}"
        for (index, user), (answer, order_id) in zip(step_buys, results, strict=True):
            assert admissible(index, user, answer, order_id, states, wins, won_now), (
                f"{user}@{index} got {answer} ({order_id}); before {state}; "
                f"change {change}; step answers {Counter(a for a, _ in results)}")
        state = await sale.observe(states[-1].windows)
        for key, order_id in won_now.items():
            assert state.held.get(key) == order_id, f"acknowledged order {order_id} missing"
        if change is None or change[0] != "restock":
            assert state.stock == states[-1].stock - wins, "units lost or created"
