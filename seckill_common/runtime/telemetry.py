"""Tracing (OpenTelemetry) and metrics (Prometheus), both off unless configured.

Tracing is on when a process has an SDK tracer provider: `configure_tracing` installs one that
exports by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the standard OTEL_* variables apply:
OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, ...); tests install one with an in-memory
exporter. Off, no interceptor is added and no span object is made: zero cost.

Metrics are always counted (a few microseconds a call) and served when SECKILL_METRICS_ADDR is
set: each process serves the Prometheus text format at http://<addr>/metrics (a worker of
`--workers N` at the port plus its index).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from seckill_common.api.errors import Reason
from seckill_common.config import TracingSettings

log = logging.getLogger(__name__)

TRACER_NAME = "seckill"
# At most this many callers of one batch are linked from its span.
MAX_BATCH_LINKS = 64
# The SDK provider of this process, when tracing is on.
_provider: Any = None


# --- tracing ---------------------------------------------------------------------------------

def configure_tracing(service: str, settings: TracingSettings | None = None) -> bool:
    """Installs the OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set (in `settings`,
    default: the environment's); says whether it did."""
    settings = TracingSettings.from_env() if settings is None else settings
    if not settings.endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = settings.service_name or f"seckill-{service}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    trace.set_tracer_provider(provider)
    use_tracer_provider(provider)
    return True


def use_tracer_provider(provider: Any) -> None:
    """Turns tracing on with `provider` (None: off) for services started from now on."""
    global _provider
    _provider = provider


def tracing_on() -> bool:
    return _provider is not None


def flush_traces() -> None:
    if _provider is not None:
        _provider.force_flush()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    # Only our unary methods: the instrumentation breaks streaming handlers that write to the
    # context instead of yielding (health Watch), and probes and reflection are noise anyway.
    ours = filters.service_prefix("seckill.")
    return [aio_server_interceptor(tracer_provider=_provider, filter_=ours)]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider))


def tracer() -> trace.Tracer | None:
    """The tracer for spans of our own, or None when tracing is off. Components take it when
    they are made, so a service keeps the tracing it started with."""
    return None if _provider is None else trace.get_tracer(TRACER_NAME,
                                                           tracer_provider=_provider)


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextlib.contextmanager
def batch_span(tracer: trace.Tracer | None, product_id: int,
               callers: Sequence[otel_context.Context | None]) -> Iterator[None]:
    """A span for one coalesced transaction, child of its first caller's span and linked to
    the others' (each caller's trace shows the batch that decided it)."""
    if tracer is None or not callers or callers[0] is None:
        yield
        return
    links = [trace.Link(trace.get_current_span(c).get_span_context())
             for c in callers[1:MAX_BATCH_LINKS + 1] if c is not None]
    with tracer.start_as_current_span(
            "seckill.batch", context=callers[0], links=links, kind=trace.SpanKind.INTERNAL,
            attributes={"seckill.batch_size": len(callers), "seckill.product_id": product_id}):
        yield


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
