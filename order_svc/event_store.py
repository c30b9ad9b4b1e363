"""The event store's read side: the sequencer (`watermark`), the feed's reads, retention
(`prune`) and the relay's batches and checkpoint. The order service's feed (events.py) and
relay (relay.py) are its only readers; the write side, used by every service that changes
orders, is seckill_common/database/order_events.py (docs/EVENTS.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from seckill.v1 import order_events_pb2, order_pb2

from seckill_common.api.messages import with_derived
from seckill_common.database.lease import Fence
from seckill_common.database.transaction import Transaction

# Inbox rows the sequencer moves in one transaction, at most.
SEQUENCE_BATCH = 2000


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
    # Each row's revision: the mark plus its place among `ids` (in id order, FIELD's 1-based
    # index), computed row by row. No window function: its temporary table once took a
    # MariaDB 10.11 server down in this statement (RELIABILITY.md).
    *_, ((pruned, now),) = await tx.pipeline(
        "INSERT INTO order_events (revision, event_id, type, order_id, payload, create_time)"
        f" SELECT %s + FIELD(id, {marks}), event_id, type, order_id, payload, create_time"
        f" FROM order_event_inbox WHERE id IN ({marks}); "
        f"DELETE FROM order_event_inbox WHERE id IN ({marks}); "
        "UPDATE order_event_marks SET revision = %s WHERE name = 'sequenced'; "
        "SELECT revision, UTC_TIMESTAMP(6) FROM order_event_marks WHERE name = 'pruned'",
        (int(base), *ids, *ids, *ids, safe), commit=True)
    return Position(safe=max(safe, int(pruned)), pruned=int(pruned), read_time=now)


# How each Order field's JSON value becomes a constructor argument, by its JSON name and its
# proto name (both are valid JSON keys): a Timestamp from its RFC 3339 text, anything else as it is.
_ORDER_FIELDS: dict[str, tuple[str, bool]] = {
    key: (field.name, field.message_type is Timestamp.DESCRIPTOR)
    for field in order_pb2.Order.DESCRIPTOR.fields for key in (field.json_name, field.name)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMES_KEPT = 4096  # parsed timestamps remembered: a batch's orders share their times


class _Times(dict[str, Timestamp]):
    """Timestamps parsed from the payloads' text, remembered: one seckill batch writes the same
    times into every order it makes, so a relay batch parses a few, not three per event."""

    def __missing__(self, text: str) -> Timestamp:
        if len(self) >= _TIMES_KEPT:
            self.clear()
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError(f"a timestamp without its zone: {text!r}")
        delta = moment - _EPOCH
        stamp = self[text] = Timestamp(seconds=delta.days * 86_400 + delta.seconds,
                                       nanos=delta.microseconds * 1000)
        return stamp


_times = _Times()


def _order_fields(snapshot: dict[str, object]) -> dict[str, object]:
    """Order's constructor arguments from its JSON snapshot (fields of a newer schema than this
    code, and nulls, skipped, as json_format does)."""
    fields: dict[str, object] = {}
    for key, value in snapshot.items():
        known = _ORDER_FIELDS.get(key)
        if known is None or value is None:
            continue
        name, is_time = known
        fields[name] = _times[value] if is_time else value  # type: ignore[index]
    return fields


def _event(revision: int, event_id: str, event_type: int, snapshot: dict[str, object]
           ) -> order_events_pb2.OrderEvent:
    """One OrderEvent from its row's values and its parsed payload.

    The payloads are the database's JSON_OBJECT (numbers as numbers, times as RFC 3339 text),
    handed to the generated constructors: a tenth of json_format's cost. One that does not fit
    (a value of another JSON form) goes through json_format, which reads every form the
    mapping allows.
    """
    kind = order_events_pb2.OrderEvent.Type.ValueType(event_type)
    try:
        order = _order_fields(snapshot)
        # A message field takes a dict of its fields too (no Order built, then copied).
        event = order_events_pb2.OrderEvent(
            revision=revision, event_id=event_id, type=kind,
            order=order,  # type: ignore[arg-type]
            create_time=cast(Timestamp | None, order.get("update_time")))
    except (TypeError, ValueError, AttributeError):
        event = order_events_pb2.OrderEvent(revision=revision, event_id=event_id, type=kind)
        json_format.ParseDict(snapshot, event.order, ignore_unknown_fields=True)
        event.create_time.CopyFrom(event.order.update_time)
    with_derived(event.order)  # the fields no column stores, computed as for every order
    return event


def events_of(rows: Sequence[tuple[int, str, int, str]]) -> list[order_events_pb2.OrderEvent]:
    """The OrderEvents of stored rows (revision, event_id, type, payload); the payloads parsed
    in one json.loads."""
    if not rows:
        return []
    snapshots = json.loads("[" + ",".join(payload for _, _, _, payload in rows) + "]")
    return [_event(revision, event_id, event_type, snapshot)
            for (revision, event_id, event_type, _), snapshot
            in zip(rows, snapshots, strict=True)]


def events_of_batch(text: str) -> list[order_events_pb2.OrderEvent]:
    """The OrderEvents of a batch as `relay_batch` reads it: one JSON array of
    [revision, event_id, type, payload] arrays."""
    return [_event(revision, event_id, event_type, snapshot)
            for revision, event_id, event_type, snapshot in json.loads(text)]


async def read(tx: Transaction, after: int, through: int, limit: int
               ) -> tuple[list[order_events_pb2.OrderEvent], int]:
    """Events with revisions in (after, through], at most `limit`, and the pruned mark as
    the same transaction read it (a reader behind it missed events)."""
    rows, ((pruned,),) = await tx.pipeline(
        "SELECT revision, event_id, type, payload FROM order_events"
        " WHERE revision > %s AND revision <= %s ORDER BY revision LIMIT %s; "
        "SELECT revision FROM order_event_marks WHERE name = 'pruned'",
        (after, through, limit), commit=True)
    return events_of([(int(r), str(e), int(t), str(p)) for r, e, t, p in rows]), int(pruned)


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


async def nothing_after(tx: Transaction, through: int) -> bool:
    """Whether the relay has nothing to do past `through`: no event waits in the inbox and none
    is sequenced after it. One round trip and no lock, for a relay that found nothing last time
    (a sequencer pass and a batch read cost several)."""
    ((waiting, newest),) = await tx.select_only(
        "SELECT EXISTS(SELECT 1 FROM order_event_inbox), MAX(IF(name IN ('sequenced', 'pruned'),"
        " revision, 0)) FROM order_event_marks", ())
    return not waiting and int(newest) <= through


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


# A relay batch's text at most (1,000 events of ~400 bytes need well under 1 MiB); within the
# server's max_allowed_packet (16 MiB by default), which bounds a result row.
_BATCH_TEXT_MAX = 8 << 20


@dataclass(frozen=True)
class RelayBatch:
    """What one round trip of the relay read (`relay_batch`)."""

    lease_left_s: float | None  # the lease's time left by the database's clock; None: lost
    position: Position
    count: int  # events read
    text: str  # a JSON array of them, [revision, event_id, type, payload] each (events_of_batch)
    waited_s: float  # how long the oldest event after the checkpoint has waited (0: none)


async def relay_batch(tx: Transaction, fence: Fence, relayed_through: int, after: int,
                      limit: int) -> RelayBatch:
    """The relay's one round trip per batch, after a sequencer pass (`watermark`): the
    checkpoint moved to `relayed_through` (what JetStream acknowledged) under the lease's fence,
    the `sequenced` mark read (no lock: every event up to it is final), and the events in
    (after, mark], at most `limit`.

    The mark reaches the read through the session's variables. The events come back as one
    JSON text (GROUP_CONCAT, its length limit raised for this session to `_BATCH_TEXT_MAX`):
    one row to take apart, not one per event, and one json.loads.
    """
    results = await tx.pipeline(
        "SET SESSION group_concat_max_len = %s; "
        f"{fence.lock}; "
        "UPDATE order_event_marks SET revision = GREATEST(revision, %s)"
        f" WHERE name = 'relayed' AND {fence.held}; "
        "SELECT MAX(IF(name = 'sequenced', revision, 0)), MAX(IF(name = 'pruned', revision, 0)),"
        " UTC_TIMESTAMP(6) INTO @relay_newest, @relay_pruned, @relay_now"
        " FROM order_event_marks; "
        "SELECT @relay_newest, @relay_pruned, @relay_now, TIMESTAMPDIFF(MICROSECOND,"
        " (SELECT create_time FROM order_events WHERE revision > %s ORDER BY revision LIMIT 1),"
        " @relay_now), COUNT(*), CONCAT('[', COALESCE(GROUP_CONCAT(CONCAT('[', revision, ',\"',"
        " event_id, '\",', type, ',', payload, ']') ORDER BY revision SEPARATOR ','), ''), ']')"
        " FROM (SELECT revision, event_id, type, payload FROM order_events WHERE revision > %s"
        " AND revision <= GREATEST(@relay_newest, @relay_pruned) ORDER BY revision LIMIT %s)"
        " AS batch",
        (_BATCH_TEXT_MAX, *fence.params, relayed_through, *fence.params, after, after, limit),
        commit=True)
    lease, [(newest, pruned, now, waited_us, count, text)] = results[1], results[4]
    if not isinstance(now, datetime):  # a session variable may come back as its text
        now = datetime.fromisoformat(now.decode() if isinstance(now, bytes) else str(now))
    return RelayBatch(
        lease_left_s=int(lease[0][0]) / 1e6 if lease else None,
        position=Position(safe=max(int(newest), int(pruned)), pruned=int(pruned),
                          read_time=now),
        count=int(count), text=str(text),
        waited_s=0.0 if waited_us is None else max(0.0, int(waited_us) / 1e6))
