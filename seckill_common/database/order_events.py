"""Order events' write side: the one place that writes them (the outbox).

Every order state change writes one event row in the change's own transaction, so an event
exists exactly when its change committed: the seckill batch's CREATED events ride in its
pipeline (`created_statements`, one INSERT ... SELECT for every winner), PAID, CANCELLED and
EXPIRED follow their UPDATE in its round trip (`record_statements`). Both services that change
orders write through here, as both take stock through database.stock.

The payload is the order after the change, built by the database from the row the transaction
just wrote, in protobuf's JSON mapping of seckill.v1.Order: its columns are Order's fields
(`_SNAPSHOT`), so a field added to Order and to the orders table flows into events unedited; a
field computed from others (api.messages.DERIVED_ORDER_FIELDS) is not stored but computed on
reading, by the same code as every other order's.

Writers append to `order_event_inbox`, in their own transaction and taking no lock anyone else
waits for; their insertion order is not their commit order. The sequencer (`watermark`) moves
the committed inbox rows into `order_events`, each with the next revision, one sequencer
transaction at a time (the `sequenced` mark's row lock on one node, certification across Galera
nodes): revisions therefore commit in revision order wherever they are read, and every event up
to the `sequenced` mark is in the table for good. Readers take no lock (docs/EVENTS.md). The
sequencer and the read side serve the order service's feed and relay alone, so they live beside
them (order_svc/event_store.py).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from seckill.v1 import order_events_pb2, order_pb2

from seckill_common.api.messages import DERIVED_ORDER_FIELDS
from seckill_common.config import default_of
from seckill_common.database.transaction import Transaction


class EventType(enum.IntEnum):
    """OrderEvent.Type, as stored in order_events.type."""

    CREATED = order_events_pb2.OrderEvent.CREATED
    PAID = order_events_pb2.OrderEvent.PAID
    CANCELLED = order_events_pb2.OrderEvent.CANCELLED
    EXPIRED = order_events_pb2.OrderEvent.EXPIRED


def _column_json(field: FieldDescriptor) -> str:
    """The SQL of one Order field's column, as protobuf's JSON mapping writes it."""
    name = field.name  # from our own proto, never from a client
    if field.message_type is Timestamp.DESCRIPTOR:
        return f"DATE_FORMAT({name}, '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ')"
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"CONVERT({name} USING utf8mb4)"  # user_id is a VARBINARY
    assert field.message_type is None, f"Order.{name}: no column mapping for its type"
    return name


# The order's snapshot: every stored Order field from the orders column of the same name.
_SNAPSHOT = "JSON_OBJECT(" + ", ".join(
    f"'{field.json_name}', {_column_json(field)}"
    for field in order_pb2.Order.DESCRIPTOR.fields
    if field.name not in DERIVED_ORDER_FIELDS) + ")"


def _insert(where: str) -> str:
    """One INSERT of an event per order row matching `where` into the inbox; its time is the
    row's update_time, the change's own reading of the database's clock."""
    return ("INSERT INTO order_event_inbox (event_id, type, order_id, payload, create_time)"
            f" SELECT UUID(), %s, id, {_SNAPSHOT}, update_time FROM orders WHERE {where}"
            " ORDER BY id")


@dataclass(frozen=True)
class Outbox:
    """Writes events into the caller's transaction; `enabled=False` (SECKILL_EVENTS_ENABLED)
    writes none, for a comparison without them."""

    enabled: bool = default_of("events").enabled

    def created_statements(self, winners: Mapping[int, Sequence[str]]
                           ) -> tuple[list[str], list[object]]:
        """The statements (each one result set) and parameters that write a CREATED event for
        each winner, by activity, to send in the seckill pipeline after its orders' INSERT:
        one INSERT for all of them, through the unique active-order key."""
        if not self.enabled or not winners:
            return [], []
        clauses, params = [], []
        for activity_id, users in winners.items():
            clauses.append(f"(activity_id = %s AND user_id IN ({', '.join(['%s'] * len(users))}))")
            params += [activity_id, *users]
        where = f"({' OR '.join(clauses)}) AND active = 1"
        return [_insert(where)], [EventType.CREATED, *params]

    def record_statements(self, event: EventType, order_ids: Sequence[int]
                          ) -> tuple[list[str], list[object]]:
        """The statements and parameters that write an `event` for each of `order_ids`, to send
        in the caller's pipeline after the statement that changed them."""
        if not self.enabled or not order_ids:
            return [], []
        marks = ", ".join(["%s"] * len(order_ids))
        return [_insert(f"id IN ({marks})")], [event, *order_ids]

    async def record(self, tx: Transaction, event: EventType, order_ids: Sequence[int]) -> None:
        """An `event` for each of `order_ids`, as this transaction has just changed them."""
        statements, params = self.record_statements(event, order_ids)
        if statements:
            await tx.pipeline("; ".join(statements), params)
