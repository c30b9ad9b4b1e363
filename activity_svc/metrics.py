"""The activity service's metrics, beside what they count: Seckill's answers and batches
(servicer.py, seckill.py) and the waiting rooms' lines (queue.py, queue_mover.py). The
orders a Seckill wins are counted with every other order state change (database.orders)."""

from __future__ import annotations

from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from seckill_common.api.errors import Reason
from seckill_common.database.orders import ORDER_TRANSITIONS, UNIT_TRANSITIONS

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

SECKILL_OUTCOMES = Counter(
    "seckill_outcomes", "Seckill answers past validation, by outcome: won, "
    "already_purchased, sold_out, insufficient_stock, quantity_over_limit, not_started, "
    "ended, not_admitted, pass_expired (waiting rooms), not_found, error", ["outcome"])
BATCH_SIZE = Histogram("seckill_commit_batch_size",
                       "Seckill attempts decided by one transaction", buckets=BATCH_BUCKETS)
STOCK_REMAINING = Gauge("seckill_activity_stock_remaining",
                        "Stock left as the last commit of this process saw it, per activity",
                        ["activity_id"])

# The Seckill refusals counted each under its own outcome: the reason, in lower case.
_OUTCOME_OF_REASON: dict[str, str] = {reason: reason.lower() for reason in (
    Reason.ALREADY_PURCHASED, Reason.SOLD_OUT, Reason.INSUFFICIENT_STOCK,
    Reason.QUANTITY_OVER_LIMIT, Reason.NOT_STARTED, Reason.ENDED, Reason.NOT_ADMITTED,
    Reason.PASS_EXPIRED)}


_outcome_counters: dict[str, Any] = {}
# The orders a Seckill wins, counted with every other state change (database.orders).
_pending_orders = ORDER_TRANSITIONS.labels("pending_payment")
_pending_units = UNIT_TRANSITIONS.labels("pending_payment")


def count_seckill(error: BaseException | None, units: int = 1) -> None:
    """Counts a Seckill answer by outcome (None: won, `units` of them); label children
    cached, as per call."""
    if error is None:
        outcome = "won"
        _pending_orders.inc()
        _pending_units.inc(units)
    else:
        outcome = _OUTCOME_OF_REASON.get(getattr(error, "reason", "")) or (
            "not_found" if getattr(error, "code", None) == grpc.StatusCode.NOT_FOUND
            else "error")
    counter = _outcome_counters.get(outcome)
    if counter is None:
        counter = _outcome_counters[outcome] = SECKILL_OUTCOMES.labels(outcome)
    counter.inc()


QUEUE_WAITING = Gauge("seckill_queue_waiting_streams",
                      "JoinQueue streams of buyers waiting in line in this process")
QUEUE_ADMITTED = Counter("seckill_queue_admitted",
                         "Buyers admitted (a pass given) by this process's queue mover")
QUEUE_PASSES = Counter("seckill_queue_passes", "Admission passes that ended, by outcome: used "
                       "(an order made with it), expired (not used in time)", ["outcome"])
QUEUE_ADMISSION_RATE = Gauge(
    "seckill_queue_admission_rate", "Measured admissions per second of a line, as the queue "
    "mover last computed it", ["activity_id"])


def count_move(activity_id: int, admitted: int, used: int, expired: int, rate: float) -> None:
    """Counts one move of a waiting room's line (activity_svc.queue_mover)."""
    if admitted:
        QUEUE_ADMITTED.inc(admitted)
    if used:
        QUEUE_PASSES.labels("used").inc(used)
    if expired:
        QUEUE_PASSES.labels("expired").inc(expired)
    QUEUE_ADMISSION_RATE.labels(str(activity_id)).set(rate)
