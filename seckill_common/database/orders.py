"""The orders table's writes: the one owner of inserting orders, of the rule that ties an
order's `active` column to its state, and of deleting orders; and the metrics that count
orders entering each state.

Two services write orders: the activity service inserts the seckill's winners as
PENDING_PAYMENT and deletes an activity's finished orders with it; the order service moves them
between states. Both build their statements here, and send them in their own pipelines (the
seckill's round trip, a change's round trip with its COMMIT), so this module adds no round
trip: it says what is written, they say when. Units move only through database.stock, which
must hold the product's stock row first (docs/DESIGN.md, "Locks").

`active` is 1 while an order holds its units (pending or paid) and NULL once it gave them back
(cancelled, expired): the unique key (activity_id, user_id, active) then allows one active
order per user and activity, and any number of finished ones. The schema's CHECK insists on
the same rule; `active_of` is its one statement in code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from prometheus_client import Counter, Histogram
from pymysql.converters import escape_datetime
from seckill.v1.order_pb2 import PAID, PENDING_PAYMENT

from seckill_common.database.transaction import Transaction

# The states whose orders hold their units (and count against the one-active-order key).
ACTIVE_STATES = frozenset({PENDING_PAYMENT, PAID})


def active_of(state: int) -> int | None:
    """The `active` column of an order in `state`: 1 while it holds its units, else NULL."""
    return 1 if state in ACTIVE_STATES else None


class Buyer(Protocol):
    """What an inserted order is for: a user of an activity, and its units."""

    @property
    def activity_id(self) -> int: ...
    @property
    def user_id(self) -> str: ...
    @property
    def quantity(self) -> int: ...


def insert_pending_statement(product_id: int, now: datetime, prices: Mapping[int, int],
                             deadlines: Mapping[int, datetime], buyers: Sequence[Buyer]
                             ) -> tuple[str, list[object]]:
    """One INSERT of a PENDING_PAYMENT order for each buyer, at its activity's price (`prices`)
    and payment deadline (`deadlines`, both by activity id), created and updated `now`, and
    its parameters, for the caller's pipeline.

    The columns a batch's orders of one activity share are written out once per activity, not
    passed per buyer: the driver escaped three datetimes a row, a good part of what a winner
    cost the activity process. Numbers and escaped datetimes only, never a client's text.
    """
    created = escape_datetime(now)
    active = active_of(PENDING_PAYMENT)
    assert active is not None
    shared = {activity_id: f"{product_id:d}, {created}, {PENDING_PAYMENT:d}, {active:d},"
                           f" {price_cents:d}, {escape_datetime(deadlines[activity_id])},"
                           f" {created}"
              for activity_id, price_cents in prices.items()}
    rows = ", ".join([f"(%s, %s, %s, {shared[b.activity_id]})" for b in buyers])
    params: list[object] = []
    for b in buyers:
        params += [b.activity_id, b.user_id, b.quantity]
    return ("INSERT INTO orders (activity_id, user_id, quantity, product_id, create_time, state,"
            f" active, price_cents, pay_deadline, update_time) VALUES {rows}", params)


def change_statement(order_ids: Sequence[int], state: int) -> tuple[str, list[object]]:
    """The UPDATE that moves `order_ids` to `state` (`active` following it, `update_time` the
    database's clock), and its parameters, for the caller's pipeline."""
    marks = ", ".join(["%s"] * len(order_ids))
    return (f"UPDATE orders SET state = %s, active = %s, update_time = UTC_TIMESTAMP(6)"
            f" WHERE id IN ({marks})", [state, active_of(state), *order_ids])


async def delete_finished(tx: Transaction, activity_id: int) -> None:
    """Deletes the activity's finished (cancelled, expired) orders; its active ones stay (and
    the foreign key from orders then refuses the activity's delete)."""
    await tx.execute("DELETE FROM orders WHERE activity_id = %s AND active IS NULL",
                     (activity_id,))


# --- metrics: the orders' state changes, counted by the process that made them ---------------

ORDER_TRANSITIONS = Counter(
    "seckill_orders", "Orders that entered a state in this process, by state: "
    "pending_payment (a seckill won), paid, cancelled, expired", ["state"])
# Orders count buyers; units count stock. With quantities one order holds one to
# per_user_limit units, so stock dashboards need the units: units won - cancelled - expired
# = units held.
UNIT_TRANSITIONS = Counter(
    "seckill_order_units", "Units of the orders that entered a state in this process, by "
    "state: pending_payment (units won), paid, cancelled, expired (units given back)",
    ["state"])
EXPIRY_LAG = Histogram("seckill_order_expiry_lag_seconds",
                       "How long after its pay deadline an unpaid order was expired",
                       buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0))


def count_order(state: str, n: int = 1, *, units: int) -> None:
    """Counts orders entering `state` (pending_payment, paid, cancelled, expired), and their
    units."""
    ORDER_TRANSITIONS.labels(state).inc(n)
    UNIT_TRANSITIONS.labels(state).inc(units)


def count_expired(lags_s: Sequence[float], units: int) -> None:
    """Counts expired orders (one lag each) and the units they gave back."""
    if lags_s:
        count_order("expired", len(lags_s), units=units)
        for lag in lags_s:
            EXPIRY_LAG.observe(lag)
