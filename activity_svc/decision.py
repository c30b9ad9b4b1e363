"""Who wins a seckill batch, and which refusal each loser gets: a pure function, no I/O.

The engine (activity_svc.seckill) asks `decide` in the seckill transaction, on the facts read
under the stock row's lock (repository.lock_sale), and on its refusal path, on the facts read
without locks (repository.read_facts): both answer with the same rules and the same
precedence between refusals. `outcomes` then pairs the decisions with the orders the
transaction recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from seckill_common.api.errors import AlreadyExists, FailedPrecondition, NotFound, ServiceError


@dataclass(frozen=True)
class SeckillAttempt:
    activity_id: int
    user_id: str

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
    already hold: a cancelled or expired order does not stop its user from buying again.
    """

    stock: int | None
    windows: Mapping[int, Window]
    held: Mapping[tuple[int, str], int]


@dataclass(frozen=True)
class Win:
    """The attempt takes a unit (a new order, to be inserted by the caller)."""


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


def decide(attempts: Sequence[SeckillAttempt], facts: Facts) -> list[Decision]:
    """One decision per attempt, first come first served.

    Precedence, for each attempt: an unknown activity (NOT_FOUND), an order already held
    (ALREADY_PURCHASED), a twin of this batch's winner, the window (NOT_STARTED, ENDED), and
    last the stock (SOLD_OUT): a user is told about the sale's state before its stock.
    """
    decisions: list[Decision] = []
    winners: set[tuple[int, str]] = set()
    remaining = facts.stock or 0
    for attempt in attempts:
        key = attempt.key
        window = facts.windows.get(attempt.activity_id)
        if facts.stock is None or window is None:
            decisions.append(Refused(NotFound("Activity", attempt.activity_id)))
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
        else:
            remaining -= 1
            winners.add(key)
            decisions.append(Win())
    return decisions


@dataclass(frozen=True)
class Won:
    """A committed order (PENDING_PAYMENT)."""

    order_id: int
    product_id: int
    create_time: datetime
    price_cents: int
    pay_deadline: datetime


Outcome = Won | Refused


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
