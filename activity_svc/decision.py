"""Who wins a seckill batch, and which refusal each loser gets: a pure function, no I/O.

The engine (activity_svc.seckill) asks `decide` in the seckill transaction, on the facts read
under the stock row's lock (repository.lock_sale), and on its refusal path, on the facts read
without locks (repository.read_facts): both answer with the same rules and the same
precedence between refusals. `outcomes` then pairs the decisions with the orders the
transaction recorded.

Quantities: an attempt asks for `quantity` units, all or nothing. Attempts are decided in
arrival order against the units the earlier winners of the same batch left, and a refusal for
want of units takes nothing, so a smaller request behind it may still win them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from seckill_common.api.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Reason,
    ServiceError,
)


@dataclass(frozen=True)
class SeckillAttempt:
    activity_id: int
    user_id: str
    quantity: int = 1  # units asked for, >= 1 (the servicer maps the wire's 0 to 1)

    @property
    def key(self) -> tuple[int, str]:
        return (self.activity_id, self.user_id)


class Window(enum.IntEnum):
    """Where the database clock stands against an activity's window (computed in SQL)."""

    OPEN = 0
    NOT_STARTED = 1
    ENDED = 2


@dataclass(frozen=True)
class Facts:
    """What a decision needs, as read at one instant.

    `stock` is None when the product is gone; `windows` holds the activities (of this product)
    that exist; `held` the ids of the active (pending or paid) orders the attempts' users
    already hold: a cancelled or expired order does not stop its user from buying again;
    `limits` the activities' per-user limits (an activity missing there allows 1 unit, the
    default, so facts read before quantities existed decide as they did).
    """

    stock: int | None
    windows: Mapping[int, Window]
    held: Mapping[tuple[int, str], int]
    limits: Mapping[int, int] = field(default_factory=dict)

    def limit_of(self, activity_id: int) -> int:
        return self.limits.get(activity_id, 1)


@dataclass(frozen=True)
class Win:
    """The attempt takes its units (a new order, to be inserted by the caller)."""


@dataclass(frozen=True)
class Twin:
    """A second attempt of a winner within the batch: answered with the winner's order."""


class Refusal(enum.Enum):
    """Why `decide` refused an attempt, in its order of precedence. A value, not a status:
    the engine reads it (`reached_stock`), and `error_of` alone turns it into the answer."""

    NOT_FOUND = enum.auto()
    QUANTITY_OVER_LIMIT = enum.auto()
    ALREADY_PURCHASED = enum.auto()
    NOT_STARTED = enum.auto()
    ENDED = enum.auto()
    SOLD_OUT = enum.auto()
    INSUFFICIENT_STOCK = enum.auto()


class Refused(NamedTuple):
    """A refusal and the data its answer names (0: not named); a tuple, as cheap to make as
    the refusal path needs."""

    kind: Refusal
    activity_id: int = 0
    quantity: int = 0  # units asked (QUANTITY_OVER_LIMIT, INSUFFICIENT_STOCK)
    available: int = 0  # units left (INSUFFICIENT_STOCK)
    limit: int = 0  # the activity's per-user limit (QUANTITY_OVER_LIMIT)
    order_id: int = 0  # the order the user holds (ALREADY_PURCHASED)

    @property
    def error(self) -> ServiceError:
        """What the caller is answered (`error_of`)."""
        return error_of(self)


Decision = Win | Twin | Refused


# Each ErrorInfo refusal's reason and message. One message per kind for every buyer (what
# differs is in the metadata): load tools count one kind of answer, and the status is built
# from cached parts (api.errors).
_ANSWERS = {
    Refusal.QUANTITY_OVER_LIMIT: (Reason.QUANTITY_OVER_LIMIT,
                                  "more units asked for than one customer may hold"),
    Refusal.ALREADY_PURCHASED: (Reason.ALREADY_PURCHASED,
                                "you already hold an order for this activity"),
    Refusal.NOT_STARTED: (Reason.NOT_STARTED, "the sale has not started yet"),
    Refusal.ENDED: (Reason.ENDED, "the sale has ended"),
    Refusal.SOLD_OUT: (Reason.SOLD_OUT, "sold out"),
    Refusal.INSUFFICIENT_STOCK: (Reason.INSUFFICIENT_STOCK, "fewer units left than asked for"),
}


def error_of(refused: Refused) -> ServiceError:
    """The one mapping of a refusal to its status: code, ErrorInfo reason and metadata.

    ALREADY_PURCHASED is ALREADY_EXISTS, naming the order held; an unknown activity NOT_FOUND;
    the rest FAILED_PRECONDITION, naming the activity. QUANTITY_OVER_LIMIT is not
    INVALID_ARGUMENT (AIP-193): the request is well formed, refused on the activity's current
    limit, which an admin may raise (quantities no activity allows are the servicer's).
    """
    kind = refused.kind
    if kind is Refusal.NOT_FOUND:
        return NotFound("Activity", refused.activity_id)
    reason, message = _ANSWERS[kind]
    if kind is Refusal.ALREADY_PURCHASED:
        return AlreadyExists(reason, message, {"order_id": str(refused.order_id)})
    activity = str(refused.activity_id)
    if kind is Refusal.INSUFFICIENT_STOCK:  # `available`: the client may ask for that many
        return FailedPrecondition(reason, message, {
            "activity_id": activity, "available": str(refused.available),
            "quantity": str(refused.quantity)})
    if kind is Refusal.QUANTITY_OVER_LIMIT:
        return FailedPrecondition(reason, message, {
            "activity_id": activity, "per_user_limit": str(refused.limit),
            "quantity": str(refused.quantity)})
    return FailedPrecondition(reason, message, {"activity_id": activity})


def already_purchased(order_id: int, activity_id: int = 0) -> Refused:
    return Refused(Refusal.ALREADY_PURCHASED, activity_id, order_id=order_id)


def sold_out(activity_id: int) -> Refused:
    return Refused(Refusal.SOLD_OUT, activity_id)


def over_limit(activity_id: int, asked: int, limit: int) -> Refused:
    return Refused(Refusal.QUANTITY_OVER_LIMIT, activity_id, quantity=asked, limit=limit)


def decide(attempts: Sequence[SeckillAttempt], facts: Facts) -> list[Decision]:
    """One decision per attempt, first come first served, all or nothing.

    Precedence, for each attempt: an unknown activity (NOT_FOUND), a quantity above the
    activity's limit (QUANTITY_OVER_LIMIT: about the request itself, so before anything about
    the user or the sale), an order already held (ALREADY_PURCHASED), a twin of this batch's
    winner, the window (NOT_STARTED, ENDED), and last the stock: SOLD_OUT when no unit is
    left, INSUFFICIENT_STOCK (naming the units left) when some are but fewer than asked. A
    user is told about the sale's state before its stock.

    Units left means after the earlier winners of this batch, in arrival order: the batch
    commits as if its attempts ran one after another. A refused attempt takes nothing, so it
    never blocks a smaller one behind it: with 2 left, [3, 1, 2] is INSUFFICIENT_STOCK
    (available 2), Win, INSUFFICIENT_STOCK (available 1).
    """
    decisions: list[Decision] = []
    winners: set[tuple[int, str]] = set()
    remaining = facts.stock or 0
    for attempt in attempts:
        key = attempt.key
        window = facts.windows.get(attempt.activity_id)
        if facts.stock is None or window is None:
            decisions.append(Refused(Refusal.NOT_FOUND, attempt.activity_id))
        elif attempt.quantity > facts.limit_of(attempt.activity_id):
            decisions.append(over_limit(attempt.activity_id, attempt.quantity,
                                        facts.limit_of(attempt.activity_id)))
        elif key in facts.held:
            decisions.append(already_purchased(facts.held[key], attempt.activity_id))
        elif key in winners:
            decisions.append(Twin())
        elif window == Window.NOT_STARTED:
            decisions.append(Refused(Refusal.NOT_STARTED, attempt.activity_id))
        elif window == Window.ENDED:
            decisions.append(Refused(Refusal.ENDED, attempt.activity_id))
        elif remaining <= 0:
            decisions.append(sold_out(attempt.activity_id))
        elif remaining < attempt.quantity:
            decisions.append(Refused(Refusal.INSUFFICIENT_STOCK, attempt.activity_id,
                                     quantity=attempt.quantity, available=remaining))
        else:
            remaining -= attempt.quantity
            winners.add(key)
            decisions.append(Win())
    return decisions


@dataclass(frozen=True)
class Won:
    """A committed order (PENDING_PAYMENT)."""

    order_id: int
    product_id: int
    create_time: datetime
    price_cents: int  # of one unit
    pay_deadline: datetime
    quantity: int = 1


Outcome = Won | Refused


def reached_stock(answer: Decision | Outcome) -> bool:
    """Whether an answer was decided by the stock: a win, or too few units (not SOLD_OUT: none
    were left). Such an answer shows the window open and the units left worth taking for a
    smaller request; any other refusal (the window, a held order) says nothing of them."""
    if isinstance(answer, Refused):
        return answer.kind is Refusal.INSUFFICIENT_STOCK
    return isinstance(answer, (Win, Won))


def outcomes(attempts: Sequence[SeckillAttempt], decisions: Sequence[Decision],
             won: Mapping[tuple[int, str], Won]) -> list[Outcome]:
    """Each attempt's answer: its refusal, its order (`won`: the winners' orders recorded),
    or, for a twin, the refusal that names the winner's order."""
    answers: list[Outcome] = []
    for attempt, decision in zip(attempts, decisions, strict=True):
        if isinstance(decision, Refused):
            answers.append(decision)
        elif isinstance(decision, Twin):
            answers.append(already_purchased(won[attempt.key].order_id, attempt.activity_id))
        else:
            answers.append(won[attempt.key])
    return answers
