"""What a waiting room decides, without I/O (docs/WAITING_ROOM.md): who may join, how many
the mover admits, and where a buyer stands in a line as a feed last read it. The mover
(queue_repository.move) and the streams (activity_svc.queue) only read and write around it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from seckill.v1 import activity_pb2

from seckill_common.api.errors import FailedPrecondition, Reason, ServiceError

# The measured admission rate forgets with this time constant.
RATE_MEMORY_S = 5.0


def join_refusal(activity_id: int, waiting_room: bool, quantity: int, per_user_limit: int,
                 open_time: datetime, end_time: datetime, now: datetime
                 ) -> ServiceError | None:
    """Why a buyer may not join the line now, if they may not: the activity has no waiting
    room, the quantity is over its limit, the pre-queue is not open yet, the sale ended."""
    metadata = {"activity_id": str(activity_id)}
    if not waiting_room:
        return FailedPrecondition(Reason.NO_WAITING_ROOM,
                                  "this activity has no waiting room: call Seckill", metadata)
    if quantity > per_user_limit:
        return FailedPrecondition(
            Reason.QUANTITY_OVER_LIMIT, "more units asked for than one customer may hold",
            {**metadata, "per_user_limit": str(per_user_limit), "quantity": str(quantity)})
    if now < open_time:
        return FailedPrecondition(Reason.NOT_STARTED,
                                  "the waiting room is not open yet",
                                  {**metadata, "open_time": open_time.isoformat() + "Z"})
    if now >= end_time:
        return FailedPrecondition(Reason.ENDED, "the sale has ended", metadata)
    return None


@dataclass(frozen=True)
class Room:
    """What bounds one move's admissions."""

    units_left: int  # the stock less the units the admitted (not yet bought) may take
    slots: int  # SECKILL_QUEUE_MAX_ACTIVE less the admitted who have not bought yet
    budget: int  # what a fixed admission rate allows now


def admissions(quantities: list[int], room: Room) -> int:
    """How many of the next buyers in line (their quantities, in ticket order) to admit: in
    order, while a unit is left for the next one (a buyer for more units than are left is
    admitted too: Seckill answers INSUFFICIENT_STOCK naming the units, and they may take
    those), never beyond the slots or the budget."""
    units = room.units_left
    admitted = 0
    for quantity in quantities[:max(0, min(room.slots, room.budget))]:
        if units <= 0:
            break
        units -= quantity
        admitted += 1
    return admitted


def rate_budget(fixed_rate: int | None, admitted_so_far: int, since: datetime,
                now: datetime) -> int:
    """Admissions a fixed rate allows now: the rate since the line's first move, less those
    already admitted, and at most a second's worth at once (an idle line does not save up a
    burst). Adaptive (None): no bound here."""
    if fixed_rate is None:
        return 1 << 31
    allowed = math.floor(fixed_rate * max(0.0, (now - since).total_seconds())) + 1
    return max(0, min(allowed - admitted_so_far, math.ceil(fixed_rate)))


def measured_rate(previous: float, admitted: int, elapsed_s: float) -> float:
    """The admission rate, smoothed over RATE_MEMORY_S."""
    if elapsed_s <= 0:
        return previous
    weight = 1.0 - math.exp(-elapsed_s / RATE_MEMORY_S)
    return previous + weight * (admitted / elapsed_s - previous)


@dataclass(frozen=True)
class Place:
    """Where a buyer stands, as one read of their line shows it."""

    state: activity_pb2.QueueState.ValueType
    position: int = 0
    estimated_wait_s: float | None = None

    @property
    def final(self) -> bool:
        return self.state in (activity_pb2.ADMITTED, activity_pb2.QUEUE_SOLD_OUT,
                              activity_pb2.QUEUE_ENDED)


def place(*, ticket: int | None, pre_queued: bool, admitted_through: int, last_ticket: int,
          units_left: int, rate: float, start_time: datetime, end_time: datetime,
          now: datetime) -> Place:
    """A buyer's place: the sale's end first, then their turn (a ticket the line admitted),
    then a sale with no unit left, then where they wait (before their ticket: behind every
    buyer ticketed so far; a pre-queued buyer is PRE_QUEUED until the shuffle)."""
    if now >= end_time:
        return Place(activity_pb2.QUEUE_ENDED)
    if ticket is not None and ticket <= admitted_through:
        return Place(activity_pb2.ADMITTED)
    if now >= start_time and units_left <= 0:
        return Place(activity_pb2.QUEUE_SOLD_OUT)
    if ticket is None and (pre_queued or now < start_time):
        return Place(activity_pb2.PRE_QUEUED)
    position = (ticket if ticket is not None else last_ticket + 1) - admitted_through
    wait = (position - 1) / rate if rate > 0 else None
    return Place(activity_pb2.WAITING, position, wait)
