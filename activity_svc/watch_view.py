"""What a WatchActivity watcher is shown: the view of an activity at one instant, its state
and the request's interval. Pure (no I/O): the feeds in activity_svc.watch read and send it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from seckill.v1 import activity_pb2

from activity_svc.messages import activity_message
from activity_svc.watch_repository import ViewRow
from seckill_common.api.errors import InvalidArgument
from seckill_common.api.messages import product_message
from seckill_common.api.times import to_timestamp

# WatchActivityRequest.min_interval: unset, floor and ceiling.
DEFAULT_MIN_INTERVAL_S = 0.5
MIN_INTERVAL_FLOOR_S = 0.1
MIN_INTERVAL_CEILING_S = 60.0


class State(enum.IntEnum):
    NOT_STARTED = activity_pb2.NOT_STARTED
    OPEN = activity_pb2.OPEN
    SOLD_OUT = activity_pb2.SOLD_OUT
    ENDED = activity_pb2.ENDED


def state_of(start: datetime, end: datetime, now: datetime, units_left: int) -> State:
    """What the seckill transaction would decide at `now`: the window first, then the stock
    (activity_svc.decision.decide's precedence)."""
    if start > now:
        return State.NOT_STARTED
    if end <= now:
        return State.ENDED
    return State.OPEN if units_left > 0 else State.SOLD_OUT


def min_interval_s(request: activity_pb2.WatchActivityRequest | activity_pb2.JoinQueueRequest,
                   default_s: float = DEFAULT_MIN_INTERVAL_S) -> float:
    """A stream request's min_interval in seconds, `default_s` when unset or 0, clamped to
    the floor and ceiling (see the protos): WatchActivity's and JoinQueue's alike."""
    if not request.HasField("min_interval"):
        return default_s
    interval = request.min_interval
    if interval.seconds < 0 or interval.nanos < 0:
        raise InvalidArgument({"min_interval": "must not be negative"})
    seconds = interval.seconds + interval.nanos / 1e9
    if seconds == 0:
        return default_s
    return min(max(seconds, MIN_INTERVAL_FLOOR_S), MIN_INTERVAL_CEILING_S)


@dataclass(frozen=True)
class View:
    """An activity as a storefront shows it, as it was at `read_time` (the DB's clock)."""

    message: activity_pb2.WatchActivityResponse  # revision filled by the feed
    state: State
    units_left: int
    waiting: int  # buyers in the waiting room; a change is sent like one of units_left
    shown: tuple[object, ...]  # what, besides the stock, a storefront shows of it
    read_time: datetime
    next_flip: datetime | None  # start_time or end_time, while still ahead


def view_of(row: ViewRow) -> View:
    activity, product = row.activity, row.product
    assert product is not None
    state = state_of(activity.start_time, activity.end_time, row.read_time, product.stock)
    message = activity_pb2.WatchActivityResponse(
        activity=activity_message(activity, product_message(product)),
        units_left=product.stock, state=state.value, read_time=to_timestamp(row.read_time),
        waiting=row.waiting)
    flips = [t for t in (activity.start_time, activity.end_time) if t > row.read_time]
    return View(message, state, product.stock, row.waiting,
                (activity, product.name, product.description, product.price_cents),
                row.read_time, min(flips) if flips else None)


