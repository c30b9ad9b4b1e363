"""Order events: the one place that writes them (the outbox), and the marks of the feed.

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
to the `sequenced` mark is in the table for good. Readers take no lock (docs/EVENTS.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from seckill.v1 import order_events_pb2, order_pb2

from seckill_common.api.messages import DERIVED_ORDER_FIELDS, with_derived
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
# Inbox rows the sequencer moves in one transaction, at most.
SEQUENCE_BATCH = 2000


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

    enabled: bool = True

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


# --- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Position:
    """What the feed may serve: every committed event up to `safe` is in the table for good;
    those up to `pruned` are deleted by retention. `read_time`: the database's clock then."""

    safe: int
    pruned: int
    read_time: datetime


async def watermark(tx: Transaction) -> Position:
    """Sequences the committed inbox (up to SEQUENCE_BATCH events) and returns the position:
    every event up to `safe` is in order_events for good. Its own transaction, committed.

    Another sequencer at work (its mark's row locked): this one waits for nothing and answers
    the last committed mark, which is as safe.
    """
    mark, pending = await tx.pipeline(
        "SELECT revision FROM order_event_marks WHERE name = 'sequenced' FOR UPDATE SKIP LOCKED;"
        " SELECT id FROM order_event_inbox ORDER BY id LIMIT %s", (SEQUENCE_BATCH,))
    if not mark or not pending:
        ((sequenced, pruned, now),) = await tx.select_only(
            "SELECT MAX(IF(name = 'sequenced', revision, 0)), MAX(IF(name = 'pruned', revision,"
            " 0)), UTC_TIMESTAMP(6) FROM order_event_marks", ())
        return Position(safe=max(int(sequenced), int(pruned)), pruned=int(pruned),
                        read_time=now)
    ((base,),) = mark
    ids = [int(row_id) for (row_id,) in pending]
    marks = ", ".join(["%s"] * len(ids))
    safe = int(base) + len(ids)
    *_, ((pruned, now),) = await tx.pipeline(
        "INSERT INTO order_events (revision, event_id, type, order_id, payload, create_time)"
        " SELECT %s + ROW_NUMBER() OVER (ORDER BY id), event_id, type, order_id, payload,"
        f" create_time FROM order_event_inbox WHERE id IN ({marks}); "
        f"DELETE FROM order_event_inbox WHERE id IN ({marks}); "
        "UPDATE order_event_marks SET revision = %s WHERE name = 'sequenced'; "
        "SELECT revision, UTC_TIMESTAMP(6) FROM order_event_marks WHERE name = 'pruned'",
        (int(base), *ids, *ids, safe), commit=True)
    return Position(safe=max(safe, int(pruned)), pruned=int(pruned), read_time=now)


def event_of(revision: int, event_id: str, event_type: int, payload: str
             ) -> order_events_pb2.OrderEvent:
    """The OrderEvent of a stored row: the payload parsed as Order's JSON mapping (fields of a
    newer schema than this code are skipped), its derived fields computed as every order's."""
    event = order_events_pb2.OrderEvent(
        revision=revision, event_id=event_id,
        type=order_events_pb2.OrderEvent.Type.ValueType(event_type))
    with_derived(json_format.Parse(payload, event.order, ignore_unknown_fields=True))
    event.create_time.CopyFrom(event.order.update_time)
    return event


async def read(tx: Transaction, after: int, through: int, limit: int
               ) -> tuple[list[order_events_pb2.OrderEvent], int]:
    """Events with revisions in (after, through], at most `limit`, and the pruned mark as
    the same transaction read it (a reader behind it missed events)."""
    rows, ((pruned,),) = await tx.pipeline(
        "SELECT revision, event_id, type, payload FROM order_events"
        " WHERE revision > %s AND revision <= %s ORDER BY revision LIMIT %s; "
        "SELECT revision FROM order_event_marks WHERE name = 'pruned'",
        (after, through, limit), commit=True)
    return [event_of(int(r), str(e), int(t), str(p)) for r, e, t, p in rows], int(pruned)


async def prune(tx: Transaction, older_than_s: float, *, behind_relay: bool, limit: int
                ) -> int:
    """Deletes up to `limit` of the oldest events older than `older_than_s` (`behind_relay`:
    none the relay has still to send) and raises the pruned mark; returns how many went.

    Events that old were committed long ago: no writer still holds a revision below them.
    """
    bound = (" AND revision <= (SELECT revision FROM order_event_marks WHERE name = 'relayed')"
             if behind_relay else "")
    _, ((through, count),) = await tx.pipeline(
        "SELECT revision FROM order_event_marks WHERE name = 'pruned' FOR UPDATE; "
        "SELECT MAX(revision), COUNT(*) FROM (SELECT revision FROM order_events"
        " WHERE create_time < UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND" + bound +
        " ORDER BY revision LIMIT %s) AS old", (int(older_than_s * 1e6), limit))
    if not count:
        return 0
    await tx.execute("DELETE FROM order_events WHERE revision <= %s", (through,))
    await tx.execute("UPDATE order_event_marks SET revision = GREATEST(revision, %s)"
                     " WHERE name = 'pruned'", (through,))
    return int(count)


async def relayed(tx: Transaction) -> int:
    """The relay's checkpoint: every event up to it is in JetStream."""
    await tx.execute("SELECT revision FROM order_event_marks WHERE name = 'relayed'")
    row = await tx.fetchone()
    return 0 if row is None else int(row[0])


async def pending_age_s(tx: Transaction) -> float:
    """How long the oldest event the relay has still to send (sequenced or not yet) has
    waited (0: none waits)."""
    await tx.execute(
        "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(create_time), UTC_TIMESTAMP(6)) FROM ("
        "(SELECT create_time FROM order_events WHERE revision >"
        " (SELECT revision FROM order_event_marks WHERE name = 'relayed')"
        " ORDER BY revision LIMIT 1)"
        " UNION ALL (SELECT create_time FROM order_event_inbox ORDER BY id LIMIT 1)) AS waiting")
    row = await tx.fetchone()
    return 0.0 if row is None or row[0] is None else max(0.0, int(row[0]) / 1e6)


async def set_relayed(tx: Transaction, revision: int) -> None:
    """Moves the relay's checkpoint forward (never back: a stale relay cannot undo it)."""
    await tx.execute("UPDATE order_event_marks SET revision = GREATEST(revision, %s)"
                     " WHERE name = 'relayed'", (revision,))
