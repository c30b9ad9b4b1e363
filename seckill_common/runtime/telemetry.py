"""Metrics (Prometheus); tracing is seckill_common/tracing.py.

Metrics are always counted (a few microseconds a call) and served when SECKILL_METRICS_ADDR is
set: each process serves the Prometheus text format at http://<addr>/metrics (a worker of
`--workers N` at the port plus its index).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from seckill_common.api.errors import Reason

log = logging.getLogger(__name__)

# --- metrics ---------------------------------------------------------------------------------

# Latency buckets for RPCs on one machine: sub-millisecond to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

RPCS = Counter("seckill_rpc_requests", "RPCs answered, by service, method and status code",
               ["service", "method", "code"])
RPC_LATENCY = Histogram("seckill_rpc_latency_seconds",
                        "RPC latency on the server, by service, method and status code",
                        ["service", "method", "code"], buckets=LATENCY_BUCKETS)
SECKILL_OUTCOMES = Counter(
    "seckill_outcomes", "Seckill answers past validation, by outcome: won, "
    "already_purchased, sold_out, insufficient_stock, quantity_over_limit, not_started, "
    "ended, not_admitted, pass_expired (waiting rooms), not_found, error", ["outcome"])
BATCH_SIZE = Histogram("seckill_commit_batch_size",
                       "Seckill attempts decided by one transaction", buckets=BATCH_BUCKETS)
POOL_CONNECTIONS = Gauge("seckill_db_pool_connections",
                         "Database pool connections by state (in_use, idle)",
                         ["service", "state"])
POOL_WAITING = Gauge("seckill_db_pool_waiting", "Calls waiting for a pooled connection",
                     ["service"])
# The pool opens connections as calls need them: in_use against this limit says how close the
# pool is to making calls wait.
POOL_MAX = Gauge("seckill_db_pool_max_connections",
                 "Most connections the pool opens (SECKILL_DB_POOL_SIZE)", ["service"])
STOCK_REMAINING = Gauge("seckill_activity_stock_remaining",
                        "Stock left as the last commit of this process saw it, per activity",
                        ["activity_id"])
RATE_LIMITS_SHARED = Gauge(
    "seckill_rate_limits_shared", "1 while per-user rate limits are counted in Redis "
    "(SECKILL_RATE_LIMIT_REDIS_URL), 0 while Redis is unreachable and they are counted in "
    "this process", ["service"])

IN_FLIGHT = Gauge("seckill_rpc_in_flight",
                  "Calls this process is working on (health checks excepted)", ["service"])
IN_FLIGHT_LIMIT = Gauge(
    "seckill_rpc_in_flight_limit", "The adaptive in-flight limit: above it calls are refused "
    "RESOURCE_EXHAUSTED (OVERLOADED) at once", ["service"])

ORDER_TRANSITIONS = Counter(
    "seckill_orders", "Orders that entered a state in this process, by state: "
    "pending_payment (a seckill won), paid, cancelled, expired", ["state"])
# Orders count buyers; units count stock. With quantities (issue 17) one order holds one to
# per_user_limit units, so stock dashboards need the units: units won - cancelled - expired
# = units held.
UNIT_TRANSITIONS = Counter(
    "seckill_order_units", "Units of the orders that entered a state in this process, by "
    "state: pending_payment (units won), paid, cancelled, expired (units given back)",
    ["state"])
EXPIRY_LAG = Histogram("seckill_order_expiry_lag_seconds",
                       "How long after its pay deadline an unpaid order was expired",
                       buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0))

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


EVENTS_RELAYED = Counter("seckill_events_relayed",
                         "Order events JetStream acknowledged to this process's relay")
EVENTS_RELAY_LAG = Gauge(
    "seckill_events_relay_lag_seconds", "Age of the oldest order event the relay has not yet "
    "had acknowledged by JetStream (0: caught up), as the active relay last saw it")
EVENTS_RELAY_ACTIVE = Gauge("seckill_events_relay_active",
                            "1 while this process's relay holds the lease and publishes")


def count_order(state: str, n: int = 1, *, units: int) -> None:
    """Counts orders entering `state` (pending_payment, paid, cancelled, expired), and their
    units."""
    ORDER_TRANSITIONS.labels(state).inc(n)
    UNIT_TRANSITIONS.labels(state).inc(units)


def count_expired(lags_s: Sequence[float], units: int) -> None:
    """Counts expired orders (one lag each) and the units they gave back."""
    if lags_s:
        count_order("expired", len(lags_s), units=units)
        for lag in lags_s:
            EXPIRY_LAG.observe(lag)


# The Seckill refusals counted each under its own outcome: the reason, in lower case.
_OUTCOME_OF_REASON: dict[str, str] = {reason: reason.lower() for reason in (
    Reason.ALREADY_PURCHASED, Reason.SOLD_OUT, Reason.INSUFFICIENT_STOCK,
    Reason.QUANTITY_OVER_LIMIT, Reason.NOT_STARTED, Reason.ENDED, Reason.NOT_ADMITTED,
    Reason.PASS_EXPIRED)}


_outcome_counters: dict[str, Any] = {}
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


def rpc_recorder(service: str, method: str) -> Callable[[str, float], None]:
    """Counts and times one method's calls by final status code (children cached per code:
    resolving labels costs more than the increment itself)."""
    children: dict[str, tuple[Any, Any]] = {}

    def record(code: str, seconds: float) -> None:
        child = children.get(code)
        if child is None:
            child = children[code] = (RPCS.labels(service, method, code),
                                      RPC_LATENCY.labels(service, method, code))
        child[0].inc()
        child[1].observe(seconds)

    return record


def watch_pool(service: str, size: Callable[[], int], free: Callable[[], int],
               waiting: Callable[[], int], limit: int) -> None:
    """Pool gauges, read at scrape time."""
    POOL_CONNECTIONS.labels(service, "in_use").set_function(lambda: size() - free())
    POOL_CONNECTIONS.labels(service, "idle").set_function(free)
    POOL_WAITING.labels(service).set_function(waiting)
    POOL_MAX.labels(service).set(limit)


def serve_metrics(addr: str, worker_id: int = 0) -> WSGIServer:
    """Serves /metrics on `addr` (host:port; a worker at port + its index)."""
    host, _, port = addr.rpartition(":")
    number = int(port)
    server, _thread = start_http_server(number + worker_id if number else 0,
                                        addr=host or "0.0.0.0")
    return server
