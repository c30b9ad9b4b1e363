"""The Activity message, built here for every RPC that returns one (Create, Get, List,
Update, WatchActivity): a second copy drifts (docs/DESIGN.md, "Layout")."""

from __future__ import annotations

from seckill.v1 import activity_pb2, product_pb2

from activity_svc.repository import ActivityRow
from seckill_common.api.times import to_timestamp


def activity_message(row: ActivityRow,
                     product: product_pb2.Product | None = None) -> activity_pb2.Activity:
    """The activity of `row`, with its `product` embedded when given (GetActivity,
    WatchActivity)."""
    activity = activity_pb2.Activity(
        id=row.id,
        product_id=row.product_id,
        name=row.name,
        start_time=to_timestamp(row.start_time),
        end_time=to_timestamp(row.end_time),
        create_time=to_timestamp(row.create_time),
        price_cents=row.price_cents,
        per_user_limit=row.per_user_limit,
    )
    activity.payment_window.FromMilliseconds(row.payment_window_ms)
    if row.waiting_room:
        room = activity.waiting_room
        room.enabled = True
        room.pre_queue.FromMilliseconds(row.pre_queue_ms)
        room.pass_validity.FromMilliseconds(row.pass_validity_ms)
        if row.admission_rate is not None:
            room.admission_rate = row.admission_rate
    if product is not None:
        activity.product.CopyFrom(product)
    return activity
