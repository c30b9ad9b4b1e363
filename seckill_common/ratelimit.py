"""Rate limits per user and per process: token buckets, refused with RESOURCE_EXHAUSTED.

A refusal is answered before any database work and carries RetryInfo (when a token will be
there) and QuotaFailure (which limit). Limits are per process: with N workers a user may get up
to N times the rate, spread over the workers by the kernel's SO_REUSEPORT balancing.

Buckets are in memory, one per key. Written here, not taken from a library: aiolimiter makes
callers wait rather than refusing them with a retry delay, and `limits`' moving window keeps a
list of timestamps per key where a token bucket needs two floats.
"""

from __future__ import annotations

import time
from typing import Any

from grpc.aio import ServicerContext

from seckill_common.auth import current_caller
from seckill_common.errors import ResourceExhausted

HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check"})


class TokenBuckets:
    """`rate` tokens a second per key, up to `burst`; `take` says how long until one is there.

    A bucket that has refilled is the same as no bucket, so those are dropped once per refill
    time: memory follows the keys seen in the last few seconds, not every key ever seen (a
    sale of a million users would otherwise keep a million buckets). `max_keys` caps it
    within a refill time too.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._max_keys = max_keys
        self._refill_s = burst / rate
        self._pruned_at = 0.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now: float | None = None) -> float:
        """0 if a token was taken; else the seconds until one will be there."""
        now = time.monotonic() if now is None else now
        if now - self._pruned_at >= self._refill_s or len(self._buckets) >= self._max_keys:
            self._forget_full(now)
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        self._pruned_at = now
        self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items()
                         if t + (now - at) * self.rate < self.burst}
        if len(self._buckets) >= self._max_keys:
            # A flood of distinct keys within one refill time: forgetting them errs on the
            # side of letting calls through, which the process limit still bounds.
            self._buckets.clear()


class RateLimiter:
    """The rate-limit layer: the process bucket for every RPC but health checks, then the
    user's bucket for calls that name a user (the token's subject, else the request's
    user_id)."""

    def __init__(self, user_rate: float, user_burst: int, process_rate: float,
                 process_burst: int) -> None:
        self.users = TokenBuckets(user_rate, user_burst) if user_rate > 0 else None
        self.process = (TokenBuckets(process_rate, process_burst or max(1, int(process_rate)))
                        if process_rate > 0 else None)

    def check(self, request: Any) -> None:
        if self.process is not None:
            wait = self.process.take("")
            if wait:
                raise ResourceExhausted("process", wait)
        if self.users is not None:
            caller = current_caller()
            user = caller.user if caller is not None and caller.user else getattr(
                request, "user_id", "")
            if user:
                wait = self.users.take(user)
                if wait:
                    raise ResourceExhausted("user", wait)

    def layer(self, method: str, behavior: Any) -> Any:
        if method in HEALTH_METHODS or (self.users is None and self.process is None):
            return behavior

        async def limited(request: Any, context: ServicerContext) -> Any:
            self.check(request)
            return await behavior(request, context)

        return limited
