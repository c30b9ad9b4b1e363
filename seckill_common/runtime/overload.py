"""Overload answered in time: a call the process cannot serve well is refused at once, before
any handler work, with RESOURCE_EXHAUSTED and RetryInfo (ErrorInfo reason OVERLOADED).

Three rules, in the order a call meets them (health checks are exempt: a probe must see the
process, busy or not):

1. A call whose deadline has already passed is not worked on: the caller has gone, so it is
   ended DEADLINE_EXCEEDED without a handler (its work would only delay the calls behind it).
2. Above the in-flight limit, a call is refused (limit `in_flight`). The limit adapts, CoDel and
   Netflix concurrency-limits style, to the latency of the calls that finish: when even the
   fastest call of a 100 ms interval took longer than SECKILL_OVERLOAD_TARGET_MS there is a
   standing queue, and the limit shrinks in proportion (target / fastest, at most halved);
   otherwise it grows back by a tenth toward SECKILL_MAX_IN_FLIGHT. Like grpc's own
   `maximum_concurrent_rpcs`, but a bound that follows what the process manages.
3. A call whose deadline is nearer than its method's recent latency is refused too (limit
   `deadline`): at the current queueing it would be cut off half done.

A process under normal load never refuses: the limit never falls below SECKILL_MIN_IN_FLIGHT
(2,500 by default, above the bursts a process must take whole: the tests send 2,000 Seckills at
once to one), and rule 3 applies only with at least DEADLINE_RULE_FROM calls in flight, to calls
whose deadline is shorter than the wait. A refusal changes no exact answer: nothing of the call
was done, and retrying it later is always safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc.aio import ServicerContext

from seckill_common.api.errors import Overloaded, status_of
from seckill_common.config import Settings
from seckill_common.runtime.answers import Behavior, answer
from seckill_common.runtime.telemetry import IN_FLIGHT, IN_FLIGHT_LIMIT

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
INTERVAL_S = 0.1
# Weight of a finished call in its method's latency average.
LATENCY_WEIGHT = 0.1
# Retry delays told to clients stay within these.
MIN_RETRY_S, MAX_RETRY_S = 0.05, 2.0
# Rule 3 (a deadline nearer than the method's latency) applies from this many calls in flight.
DEADLINE_RULE_FROM = 64
# At most one "shedding" warning per this many seconds.
WARN_EVERY_S = 5.0

# The answer to a call whose deadline passed before it was worked on.
DEADLINE_PASSED = status_of(grpc.StatusCode.DEADLINE_EXCEEDED,
                            "deadline exceeded before the call was worked on")


class LoadShedder:
    """The in-flight count and adaptive limit of one process, and the layer that applies them."""

    def __init__(self, service: str, max_in_flight: int, min_in_flight: int, target_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.enabled = max_in_flight > 0
        self.max = float(max_in_flight)
        self.min = float(min(min_in_flight, max_in_flight) if self.enabled else min_in_flight)
        self.target_s = target_s
        self.limit = self.max
        self.in_flight = 0
        self.refused = 0
        self._clock = clock
        self._fastest = float("inf")
        self._interval_ends = clock() + INTERVAL_S
        self._warned_at = -WARN_EVERY_S
        self._refused_since_warning = 0
        self._gauge_limit = IN_FLIGHT_LIMIT.labels(service)
        self._gauge_limit.set(self.max)
        IN_FLIGHT.labels(service).set_function(lambda: self.in_flight)

    @classmethod
    def of(cls, settings: Settings, service: str) -> LoadShedder:
        sale_day = settings.sale_day
        return cls(service, sale_day.max_in_flight, sale_day.min_in_flight,
                   sale_day.overload_target_s)

    def _finished(self, seconds: float, now: float) -> None:
        if seconds < self._fastest:
            self._fastest = seconds
        if now >= self._interval_ends:
            self._adapt(now)

    def _adapt(self, now: float) -> None:
        fastest, self._fastest = self._fastest, float("inf")
        self._interval_ends = now + INTERVAL_S
        if fastest > self.target_s:
            self.limit = max(self.min, self.limit * max(0.5, self.target_s / fastest))
        elif self.limit < self.max:
            self.limit = min(self.max, self.limit + max(1.0, self.limit * 0.1))
        else:
            return
        self._gauge_limit.set(self.limit)

    async def _refuse(self, context: ServicerContext, limit: str, latency_s: float) -> None:
        self.refused += 1
        self._refused_since_warning += 1
        now = self._clock()
        if now - self._warned_at >= WARN_EVERY_S:
            log.warning("overloaded: refused %d calls (RESOURCE_EXHAUSTED, RetryInfo) since the "
                        "last warning; %d in flight, limit %.0f", self._refused_since_warning,
                        self.in_flight, self.limit)
            self._warned_at = now
            self._refused_since_warning = 0
        # Come back once the calls ahead have drained: about one latency.
        await answer(context, Overloaded(
            limit, min(MAX_RETRY_S, max(MIN_RETRY_S, latency_s))).to_status())

    def layer(self, method: str, behavior: Behavior) -> Behavior:
        if not self.enabled or method.startswith(HEALTH_PREFIX):
            return behavior
        # This method's recent latency (a moving average of the calls that finished).
        latency = [0.0]
        clock = self._clock

        async def shed(request: Any, context: ServicerContext) -> Any:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                return await answer(context, DEADLINE_PASSED)
            in_flight = self.in_flight
            if in_flight >= self.limit:
                return await self._refuse(context, "in_flight", latency[0])
            if (remaining is not None and in_flight >= DEADLINE_RULE_FROM
                    and remaining < latency[0]):
                return await self._refuse(context, "deadline", latency[0])
            self.in_flight += 1
            start = clock()
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1
                now = clock()
                seconds = now - start
                latency[0] += (seconds - latency[0]) * LATENCY_WEIGHT
                self._finished(seconds, now)

        return shed
