"""The server runtime's metrics (Prometheus): RPCs, the in-flight limit, shared rate limits;
and serving every metric of the process. Tracing is seckill_common/tracing.py; the other
metrics live beside what they count (the pool: database/db.py; orders: database/orders.py;
Seckill and waiting rooms: activity_svc/metrics.py; the events relay: order_svc/relay.py).

Metrics are always counted (a few microseconds a call) and served when SECKILL_METRICS_ADDR is
set: each process serves the Prometheus text format at http://<addr>/metrics (a worker of
`--workers N` at the port plus its index).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Latency buckets for RPCs on one machine: sub-millisecond to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
RPCS = Counter("seckill_rpc_requests", "RPCs answered, by service, method and status code",
               ["service", "method", "code"])
RPC_LATENCY = Histogram("seckill_rpc_latency_seconds",
                        "RPC latency on the server, by service, method and status code",
                        ["service", "method", "code"], buckets=LATENCY_BUCKETS)
RATE_LIMITS_SHARED = Gauge(
    "seckill_rate_limits_shared", "1 while per-user rate limits are counted in Redis "
    "(SECKILL_RATE_LIMIT_REDIS_URL), 0 while Redis is unreachable and they are counted in "
    "this process", ["service"])

IN_FLIGHT = Gauge("seckill_rpc_in_flight",
                  "Calls this process is working on (health checks excepted)", ["service"])
IN_FLIGHT_LIMIT = Gauge(
    "seckill_rpc_in_flight_limit", "The adaptive in-flight limit: above it calls are refused "
    "RESOURCE_EXHAUSTED (OVERLOADED) at once", ["service"])

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


def serve_metrics(addr: str, worker_id: int = 0) -> WSGIServer:
    """Serves /metrics on `addr` (host:port; a worker at port + its index)."""
    host, _, port = addr.rpartition(":")
    number = int(port)
    server, _thread = start_http_server(number + worker_id if number else 0,
                                        addr=host or "0.0.0.0")
    return server
