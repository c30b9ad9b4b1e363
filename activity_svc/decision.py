"""Who wins a seckill batch, and which refusal each loser gets: a pure function, no I/O.

The engine (activity_svc.seckill) asks `decide` in the seckill transaction, on the facts read
under the stock row's lock (repository.lock_sale), and on its refusal path, on the facts read
without locks (repository.read_facts): both answer with the same rules and the same
precedence between refusals. `outcomes` then pairs the decisions with the orders the
transaction recorded.

Quantities (issue 17): an attempt asks for `quantity` units, all or nothing. Attempts are
decided in arrival order against the units the earlier winners of the same batch left, and a
refusal for want of units takes nothing, so a smaller request behind it may still win them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from seckill_common.api.errors import AlreadyExists, FailedPrecondition, NotFound, ServiceError


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


@dataclass(frozen=True)
class Refused:
    """A refusal: `error` is what the caller is answered."""

    error: ServiceError


Decision = Win | Twin | Refused


def already_purchased(order_id: int) -> Refused:
    # One message for every buyer (the order id is in the ErrorInfo metadata): load tools
    # count one kind of answer, and the status is built from cached parts.
    return Refused(AlreadyExists(
        "ALREADY_PURCHASED",
        "you already hold an order for this activity",
        {"order_id": str(order_id)},
    ))


def _precondition(reason: str, message: str, activity_id: int) -> Refused:
    return Refused(FailedPrecondition(reason, message, {"activity_id": str(activity_id)}))


def sold_out(activity_id: int) -> Refused:
    return _precondition("SOLD_OUT", "sold out", activity_id)


def insufficient_stock(activity_id: int, asked: int, available: int) -> Refused:
    """Fewer units left than asked (but some): `available` is how many, so the client may
    ask for that many instead."""
    return Refused(FailedPrecondition(
        "INSUFFICIENT_STOCK", "fewer units left than asked for",
        {"activity_id": str(activity_id), "available": str(available),
         "quantity": str(asked)}))


def over_limit(activity_id: int, asked: int, limit: int) -> Refused:
    """More units asked than the activity lets one user hold.

    FAILED_PRECONDITION, not INVALID_ARGUMENT (AIP-193): the request is well formed, and is
    refused because of the activity's current state (its limit, which an admin may raise);
    quantities no activity could allow are INVALID_ARGUMENT in the servicer instead.
    """
    return Refused(FailedPrecondition(
        "QUANTITY_OVER_LIMIT", "more units asked for than one customer may hold",
        {"activity_id": str(activity_id), "per_user_limit": str(limit),
         "quantity": str(asked)}))


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
            decisions.append(Refused(NotFound("Activity", attempt.activity_id)))
        elif attempt.quantity > facts.limit_of(attempt.activity_id):
            decisions.append(over_limit(attempt.activity_id, attempt.quantity,
                                        facts.limit_of(attempt.activity_id)))
        elif key in facts.held:
            decisions.append(already_purchased(facts.held[key]))
        elif key in winners:
            decisions.append(Twin())
        elif window == Window.NOT_STARTED:
            decisions.append(_precondition("NOT_STARTED", "the sale has not started yet",
                                           attempt.activity_id))
        elif window == Window.ENDED:
            decisions.append(_precondition("ENDED", "the sale has ended", attempt.activity_id))
        elif remaining <= 0:
            decisions.append(sold_out(attempt.activity_id))
        elif remaining < attempt.quantity:
            decisions.append(insufficient_stock(attempt.activity_id, attempt.quantity,
                                                remaining))
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
        return getattr(answer.error, "reason", None) == "INSUFFICIENT_STOCK"
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
            answers.append(already_purchased(won[attempt.key].order_id))
        else:
            answers.append(won[attempt.key])
    return answers
