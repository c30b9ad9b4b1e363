"""What each order operation did, as the client's answer and as metrics: one place for both,
so the servicer only turns protobuf into calls and rows into protobuf."""

from __future__ import annotations

from order_svc.repository import (
    Cancellation,
    Cancelled,
    Expiry,
    Paid,
    Payment,
    order_expired,
    payment_expired,
)
from seckill_common.api.messages import OrderRow
from seckill_common.database.orders import count_expired, count_order


def observe(result: Payment | Cancellation | Expiry) -> None:
    """Counts the orders, and their units, `result` moved into a state (a repeat moves
    none)."""
    if isinstance(result, Expiry):
        count_expired(result.lags_s, result.units)
    elif result.expired is not None:
        observe(result.expired)
    elif result.outcome is Paid.NOW:
        count_order("paid", units=result.order.quantity)
    elif result.outcome is Cancelled.NOW:
        count_order("cancelled", units=result.order.quantity)


def settle(result: Payment | Cancellation) -> OrderRow:
    """Counts `result`, then the order to answer with; too late to pay or cancel, the refusal."""
    observe(result)
    if result.outcome is Paid.TOO_LATE:
        raise payment_expired(result.order.id)
    if result.outcome is Cancelled.TOO_LATE:
        raise order_expired(result.order.id)
    return result.order

