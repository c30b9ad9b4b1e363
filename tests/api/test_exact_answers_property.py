"""Property: for random interleavings of buys, cancels, restocks, window moves and limit
changes, every Seckill answer is one the seckill transaction could have given at some instant
during the call.

Each step runs a burst of concurrent buys (of 1 to 4 units, the activities allowing up to 3)
together with at most one change (a cancel, a restock, a window move or a new per-user limit
on one of the product's two activities). Between steps the system is quiet, so the state
before a step (S0) and after its change alone (S1) are known; every buy of the step ran
against S0 or S1, less the units some of its own step's winners took (any subset of them: the
ones committed before it). An answer is admissible only if the transaction could have given
it in one of those states: SOLD_OUT only with no unit left, INSUFFICIENT_STOCK only naming
the units left, at least 1 and fewer than asked; a small request is never refused while its
units were left (the refusal read included).
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
LIMIT = 3  # the activities' per-user limit at creation; a change sets 1 to 3
WINDOWS = {"OPEN": (-3600, 3600), "NOT_STARTED": (3600, 7200), "ENDED": (-7200, -3600)}


@dataclass(frozen=True)
class State:
    stock: int
    windows: tuple[str, str]  # per activity index
    # (index, user) -> (order id, its quantity)
    held: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    limits: tuple[int, int] = (LIMIT, LIMIT)  # per activity index


@pytest.fixture
async def shared_stack(mariadb: str) -> AsyncIterator[Stack]:
    # The property test's own fresh database; one stack for all its examples (hypothesis
    # reruns the test body, not function fixtures), each of which makes its own sale.
    running = await start_stack(await create_database(mariadb))
    yield running
    await running.stop()


buys = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(USERS), st.integers(1, LIMIT + 1)),
                min_size=1, max_size=8)
changes = st.one_of(
    st.none(),
    st.tuples(st.just("cancel"), st.integers(0, 1), st.sampled_from(USERS)),
    st.tuples(st.just("restock"), st.integers(0, 6)),
    st.tuples(st.just("window"), st.integers(0, 1), st.sampled_from(sorted(WINDOWS))),
    st.tuples(st.just("limit"), st.integers(0, 1), st.integers(1, LIMIT)),
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

    async def buy(self, index: int, user: str, quantity: int) -> tuple[str, int]:
        """(answer, number): "OK" with the order id, or the refusal's reason with the order it
        names (ALREADY_PURCHASED) or the units it names available (INSUFFICIENT_STOCK)."""
        try:
            # Users are named per sale: the per-user rate limit spans the examples.
            reply = await self.stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=self.activity_ids[index], user_id=f"{user}-{self.product_id}",
                quantity=quantity))
        except grpc.aio.AioRpcError as exc:
            info = error_details(exc)["ErrorInfo"]
            named = info.metadata.get("order_id") or info.metadata.get("available") or "0"
            return info.reason, int(named)
        assert reply.order.quantity == quantity
        assert reply.order.total_price_cents == reply.order.price_cents * quantity
        return "OK", reply.order.id

    async def change(self, change: tuple, before: State) -> None:
        kind = change[0]
        if kind == "cancel":
            held = before.held.get((change[1], change[2]))
            if held is not None:
                await self.stack.orders.DeleteOrder(
                    order_pb2.DeleteOrderRequest(id=held[0]), metadata=ADMIN)
        elif kind == "restock":
            await self.stack.products.UpdateProduct(product_pb2.UpdateProductRequest(
                product=product_pb2.Product(id=self.product_id, stock=change[1]),
                update_mask=field_mask_pb2.FieldMask(paths=["stock"])), metadata=ADMIN)
        elif kind == "limit":
            await self.stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
                activity=activity_pb2.Activity(id=self.activity_ids[change[1]],
                                               per_user_limit=change[2]),
                update_mask=field_mask_pb2.FieldMask(paths=["per_user_limit"])),
                metadata=ADMIN)
        else:
            start_s, end_s = WINDOWS[change[2]]
            await self.stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
                activity=activity_pb2.Activity(id=self.activity_ids[change[1]],
                                               start_time=timestamp(start_s),
                                               end_time=timestamp(end_s)),
                update_mask=field_mask_pb2.FieldMask(paths=["start_time", "end_time"])),
                metadata=ADMIN)

    async def observe(self, windows: tuple[str, str], limits: tuple[int, int]) -> State:
        product = await self.stack.products.GetProduct(
            product_pb2.GetProductRequest(id=self.product_id))
        held: dict[tuple[int, str], tuple[int, int]] = {}
        for index, activity_id in enumerate(self.activity_ids):
            reply = await self.stack.orders.ListOrders(order_pb2.ListOrdersRequest(
                activity_id=activity_id, page_size=100), metadata=ADMIN)
            for order in filter(is_active, reply.orders):
                user = order.user_id.rsplit("-", 1)[0]
                assert (index, user) not in held, "two active orders for one user"
                held[(index, user)] = (order.id, order.quantity)
        return State(product.stock, windows, held, limits)


def after_change(state: State, change: tuple | None) -> State:
    if change is None:
        return state
    if change[0] == "cancel":
        held = dict(state.held)
        cancelled = held.pop((change[1], change[2]), None)
        if cancelled is None:
            return state
        return replace(state, stock=state.stock + cancelled[1], held=held)  # all its units
    if change[0] == "restock":
        return replace(state, stock=change[1])
    if change[0] == "limit":
        limits = list(state.limits)
        limits[change[1]] = change[2]
        return replace(state, limits=(limits[0], limits[1]))
    windows = list(state.windows)
    windows[change[1]] = change[2]
    return replace(state, windows=(windows[0], windows[1]))


def subset_sums(quantities: list[int]) -> set[int]:
    """Every number of units some of this step's winners (those before a call) took."""
    sums = {0}
    for quantity in quantities:
        sums |= {s + quantity for s in sums}
    return sums


def admissible(index: int, user: str, quantity: int, answer: str, named: int,
               states: list[State], taken: set[int],
               won_now: dict[tuple[int, str], int]) -> bool:
    """Could the transaction have answered this in one of `states`, given units `taken` by
    some of this step's winners and the orders `won_now` they made? `named`: the order id
    (OK, ALREADY_PURCHASED) or the units available (INSUFFICIENT_STOCK) the answer names."""
    key = (index, user)
    for state in states:
        if quantity > state.limits[index]:  # refused before anything else, and before locks
            if answer == "QUANTITY_OVER_LIMIT":
                return True
            continue
        held = state.held.get(key)
        if held is not None:
            if answer == "ALREADY_PURCHASED" and named == held[0]:
                return True
            continue
        if answer == "ALREADY_PURCHASED" and won_now.get(key) == named:
            return True  # a twin of this step's winner
        window = state.windows[index]
        if window != "OPEN":
            if answer == window:
                return True
            continue
        left = {state.stock - units for units in taken if units <= state.stock}
        if answer == "OK" and any(units >= quantity for units in left):
            return True
        if answer == "SOLD_OUT" and 0 in left:
            return True
        if answer == "INSUFFICIENT_STOCK" and 0 < named < quantity and named in left:
            return True
    return False


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=steps, initial_stock=st.integers(0, 6))
async def test_every_answer_is_one_the_transaction_could_give(
    shared_stack: Stack, plan: list, initial_stock: int
) -> None:
    product = await make_product(shared_stack, stock=initial_stock)
    activities = [(await make_activity(shared_stack, product.id, per_user_limit=LIMIT)).id
                  for _ in range(2)]
    sale = Sale(shared_stack, product.id, activities)
    state = State(initial_stock, ("OPEN", "OPEN"))
    for step_buys, change in plan:
        states = [state, after_change(state, change)]
        work: list[Coroutine[Any, Any, Any]] = [sale.buy(index, user, quantity)
                                                for index, user, quantity in step_buys]
        if change is not None:
            work.append(sale.change(change, state))
        results = (await asyncio.gather(*work))[:len(step_buys)]
        won = {(i, u): (named, q) for (i, u, q), (answer, named) in zip(step_buys, results,
                                                                        strict=True)
               if answer == "OK"}
        assert len(won) == sum(a == "OK" for a, _ in results), (
            f"a user won twice in one step: {results}")
        won_now = {key: order_id for key, (order_id, _) in won.items()}
        for (index, user, quantity), (answer, named) in zip(step_buys, results, strict=True):
            others = [q for key, (_, q) in won.items() if key != (index, user)]
            assert admissible(index, user, quantity, answer, named, states,
                              subset_sums(others), won_now), (
                f"{user}@{index} asking {quantity} got {answer} ({named}); before {state}; "
                f"change {change}; step answers {Counter(a for a, _ in results)}")
        state = await sale.observe(states[-1].windows, states[-1].limits)
        for key, order in won.items():
            assert state.held.get(key) == order, f"acknowledged order {order} missing"
        for key, order in states[-1].held.items():  # a lowered limit keeps existing orders
            assert state.held.get(key) == order, f"order {order} changed or lost"
        if change is None or change[0] != "restock":
            units = sum(q for _, q in won.values())
            assert state.stock == states[-1].stock - units, "units lost or created"
