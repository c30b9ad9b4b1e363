"""The Product and Order messages, each built in one place from its table's row.

Two services return each of them (a product in GetProduct and in WatchActivity's activity; an
order in OrderService's RPCs, in the Seckill reply and in the order events), so the builder
lives here: a second copy drifts (docs/DESIGN.md, "Layout").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple

from seckill.v1 import order_pb2, product_pb2

from seckill_common.api.times import to_timestamp


@dataclass(frozen=True)
class ProductRow:
    """A row of `products`, its columns named as its fields."""

    id: int
    name: str
    description: str
    price_cents: int
    stock: int
    create_time: datetime
    update_time: datetime

    @classmethod
    def from_db(cls, row: Sequence[Any]) -> ProductRow:
        """The product from a SELECT of `PRODUCT_FIELDS`, in their order."""
        return cls(**dict(zip(PRODUCT_FIELDS, row, strict=True)))


PRODUCT_FIELDS = tuple(field.name for field in fields(ProductRow))


def product_message(row: ProductRow) -> product_pb2.Product:
    return product_pb2.Product(
        id=row.id,
        name=row.name,
        description=row.description,
        price_cents=row.price_cents,
        stock=row.stock,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )


class OrderRow(NamedTuple):
    """A row of `orders`, its columns named as its fields (a tuple: a won Seckill makes one
    to answer, and a tuple is the cheapest to make)."""

    id: int
    activity_id: int
    product_id: int
    user_id: str
    create_time: datetime
    state: int
    price_cents: int
    pay_deadline: datetime
    update_time: datetime
    quantity: int

    @classmethod
    def from_db(cls, columns: Mapping[str, Any]) -> OrderRow:
        """The order from its columns by name, user_id decoded (a VARBINARY)."""
        return cls(
            id=columns["id"], activity_id=columns["activity_id"],
            product_id=columns["product_id"], user_id=columns["user_id"].decode("utf-8"),
            create_time=columns["create_time"], state=columns["state"],
            price_cents=columns["price_cents"], pay_deadline=columns["pay_deadline"],
            update_time=columns["update_time"], quantity=columns["quantity"],
        )


# Order's fields that no column stores: `with_derived` computes them from the others.
DERIVED_ORDER_FIELDS = frozenset({"total_price_cents"})


def with_derived(order: order_pb2.Order) -> order_pb2.Order:
    """`order` with its DERIVED_ORDER_FIELDS filled in from its stored fields."""
    order.total_price_cents = order.price_cents * order.quantity
    return order


# The winners of one seckill batch share its reading of the clock (create, update and deadline
# times): each time is converted once, not once per winner, which was most of a won Seckill's
# reply. The cached Timestamps are only ever copied into messages, never changed.
_order_time = functools.lru_cache(maxsize=1024)(to_timestamp)


def order_message(row: OrderRow) -> order_pb2.Order:
    return with_derived(order_pb2.Order(
        id=row.id,
        activity_id=row.activity_id,
        product_id=row.product_id,
        user_id=row.user_id,
        create_time=_order_time(row.create_time),
        state=order_pb2.OrderState.ValueType(row.state),
        price_cents=row.price_cents,
        pay_deadline=_order_time(row.pay_deadline),
        update_time=_order_time(row.update_time),
        quantity=row.quantity,
    ))
