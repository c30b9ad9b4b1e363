"""After a Seckill run: the platform's promises, checked through the public API.

Shared by the two tools that run sales, the `seckill` CLI (`sale simulate`) and the load tool
(`seckill-bench --check`), so that both judge a run by the same rules and figures.

Before the run the activity's existing orders are listed (the baseline), so "orders listed ==
OK answers" compares only the orders this run added. That comparison assumes nobody else
buys in the activity during the run; the other checks hold whoever buys. Only active orders
(PENDING_PAYMENT, PAID) hold units: "no user holds two" and the stock balance count those.

An order holds `quantity` units, so the balance is in units:
remaining stock + the quantities of the active orders = the units added (the initial stock,
when no restock happened during the run), and the units the OK answers won = the units of the
orders the run added. No active order holds more than the activity's per_user_limit (when the
limit was not lowered during the run: orders made before keep their quantity).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import grpc
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from seckill_common.client.tls import ClientTLS

PLAINTEXT = ClientTLS()
CALL_TIMEOUT_S = 30.0
PAGE_SIZE = 1000
ACTIVE = (order_pb2.PENDING_PAYMENT, order_pb2.PAID)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest rank, as ghz computes it."""
    if not sorted_values:
        return 0.0
    rank = pct / 100.0 * len(sorted_values)
    index = int(rank)
    if rank == index:
        index -= 1
    return sorted_values[max(index, 0)]


@dataclass(frozen=True)
class Invariant:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


async def list_orders(order_addr: str, activity_id: int,
                      metadata: tuple[tuple[str, str], ...] = (),
                      tls: ClientTLS = PLAINTEXT) -> list[order_pb2.Order]:
    """Every order of the activity, walking ListOrders pages of 1,000.

    `metadata`: credentials, for services that take user tokens (ListOrders is a user RPC).
    """
    orders: list[order_pb2.Order] = []
    async with tls.channel(order_addr) as channel:
        stub = order_pb2_grpc.OrderServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListOrders(
                order_pb2.ListOrdersRequest(activity_id=activity_id, page_size=PAGE_SIZE,
                                            page_token=token),
                metadata=metadata, timeout=CALL_TIMEOUT_S,
            )
            orders.extend(page.orders)
            token = page.next_page_token
            if not token:
                return orders


async def remaining_stock(activity_addr: str, product_addr: str | None,
                          activity_id: int, tls: ClientTLS = PLAINTEXT
                          ) -> tuple[int, activity_pb2.Activity]:
    """The activity's product's stock (GetActivity's embedded product, or GetProduct), and
    the activity."""
    async with tls.channel(activity_addr) as channel:
        activity = await activity_pb2_grpc.ActivityServiceStub(channel).GetActivity(
            activity_pb2.GetActivityRequest(id=activity_id), timeout=CALL_TIMEOUT_S)
    if product_addr is None:
        return activity.product.stock, activity
    async with tls.channel(product_addr) as channel:
        product = await product_pb2_grpc.ProductServiceStub(channel).GetProduct(
            product_pb2.GetProductRequest(id=activity.product_id), timeout=CALL_TIMEOUT_S)
    return product.stock, activity


def units(orders: Iterable[order_pb2.Order]) -> int:
    """The units the orders hold (quantity; 0 from a server before quantities means 1)."""
    return sum(o.quantity or 1 for o in orders)


@dataclass
class SeckillCheck:
    activity_addr: str
    order_addr: str
    activity_id: int
    product_addr: str | None = None
    initial_stock: int | None = None
    baseline_ids: frozenset[int] = frozenset()
    metadata: tuple[tuple[str, str], ...] = ()  # for list_orders
    tls: ClientTLS = PLAINTEXT

    async def take_baseline(self) -> None:
        self.baseline_ids = frozenset(
            o.id for o in await list_orders(self.order_addr, self.activity_id, self.metadata,
                                      self.tls))

    async def verify(self, ok_answers: int, ok_order_ids: Iterable[int],
                     ok_units: int | None = None) -> list[Invariant]:
        """The checks; `ok_units`, when the tool counted them: the units its OK answers won
        (the sum of their orders' quantities)."""
        try:
            orders = await list_orders(self.order_addr, self.activity_id, self.metadata,
                                       self.tls)
            stock, activity = await remaining_stock(self.activity_addr, self.product_addr,
                                                    self.activity_id, self.tls)
        except grpc.aio.AioRpcError as exc:
            return [Invariant("orders and stock readable through the API", False,
                              f"{exc.code().name}: {exc.details()}")]
        answered = list(ok_order_ids)
        listed_ids = {o.id for o in orders}
        new_ids = listed_ids - self.baseline_ids
        active = [o for o in orders if o.state in ACTIVE]
        limit = activity.per_user_limit or 1
        over = [o.id for o in active if (o.quantity or 1) > limit]
        mispriced = [o.id for o in orders
                     if o.quantity and o.total_price_cents != o.price_cents * o.quantity]
        per_user = Counter(o.user_id for o in active)
        doubles = sorted(user for user, n in per_user.items() if n > 1)
        missing = [i for i in set(answered) if i not in listed_ids]
        before = (f" ({len(self.baseline_ids)} listed before the run)"
                  if self.baseline_ids else "")
        checks = [
            Invariant("orders listed == OK answers", len(new_ids) == ok_answers,
                      f"{len(new_ids)} new orders listed{before}, {ok_answers} OK answers"),
            Invariant("every OK answer's order id is listed", not missing,
                      f"{len(missing)} of {len(set(answered))} missing"
                      + (f", e.g. {missing[:5]}" if missing else "")),
            Invariant("no order id answered OK twice", len(set(answered)) == len(answered),
                      f"{len(answered)} OK order ids, {len(set(answered))} distinct"),
            Invariant("no user holds two active orders", not doubles,
                      f"{len(per_user)} buyers" + (f"; twice: {doubles[:5]}" if doubles else "")),
            Invariant("remaining stock >= 0", stock >= 0, f"remaining stock {stock}"),
            Invariant("no active order over the per-user limit", not over,
                      f"limit {limit}" + (f"; over it: orders {over[:5]}" if over else "")),
            Invariant("total price == unit price x quantity", not mispriced,
                      f"{len(orders)} orders" + (f"; wrong: {mispriced[:5]}" if mispriced
                                                 else "")),
        ]
        if ok_units is not None:
            added = units(o for o in orders if o.id in new_ids)
            checks.append(Invariant(
                "units of the orders listed == units of OK answers", added == ok_units,
                f"{added} units in new orders, {ok_units} units answered OK"))
        if self.initial_stock is not None:
            sold = self.initial_stock - stock
            held = units(active)
            checks.append(Invariant(
                "units of active orders == initial stock - remaining stock", held == sold,
                f"{len(active)} active orders of {held} units, "
                f"{self.initial_stock} - {stock} = {sold}"))
        return checks
