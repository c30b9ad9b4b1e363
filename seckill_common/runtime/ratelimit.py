"""Rate limits per user and per process, refused with RESOURCE_EXHAUSTED.

A refusal is answered before any database work and carries RetryInfo (when a call will be let
through) and QuotaFailure (which limit).

Per user, two ways to count:
- SECKILL_RATE_LIMIT_REDIS_URL unset: token buckets in each process. With N workers x M
  replicas a user may get up to N x M times the rate, spread over the processes by the kernel's
  SO_REUSEPORT balancing and the clients' load balancing. The start-up log says so.
- set: counted in Redis by the `limits` library (a moving window of ceil(burst / rate) seconds
  holding rate x window calls, one Lua script per call), so a user gets the same rate however
  many processes serve them. If Redis stops answering, each process counts on its own buckets
  again (the log, the `seckill_rate_limits_shared` metric and the health entry
  `seckill.ratelimit.shared` say so) and tries Redis again a second later: a flash sale must not
  stop because its rate limiter did, so the services stay SERVING.

The process limit guards one process's capacity, so it is always counted in the process.

The buckets are written here, not taken from a library: aiolimiter makes callers wait rather
than refusing them with a retry delay, and `limits`' moving window keeps a list of timestamps per
key where a token bucket needs two floats (in Redis that list is shared, which is the point).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
from grpc.aio import ServicerContext
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from seckill_common.api.errors import ResourceExhausted
from seckill_common.runtime.answers import Behavior
from seckill_common.runtime.auth import current_caller
from seckill_common.runtime.telemetry import RATE_LIMITS_SHARED

log = logging.getLogger(__name__)
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check"})
# The health entry that tells whether per-user limits are shared (SERVING) or per process
# (NOT_SERVING, Redis unreachable); absent without SECKILL_RATE_LIMIT_REDIS_URL. Probes check
# the service's own entries, so this one never takes a replica out of rotation.
SHARED_HEALTH_NAME = "seckill.ratelimit.shared"
# A call waits at most this long for Redis before it is limited per process instead.
REDIS_TIMEOUT_S = 0.25
# After a failure, Redis is left alone this long (calls are limited per process meanwhile).
REDIS_RETRY_S = 1.0
KEY_PREFIX = "seckill"


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


def redacted_redis_url(url: str) -> str:
    """The Redis URL without its password, safe to log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


class SharedUserLimits:
    """Per-user limits counted in Redis, with the process's own buckets as the fallback.

    `rate` a second up to `burst` at once becomes: at most rate x window calls in any `window`
    of ceil(burst / rate) seconds (Redis keys expire by whole seconds), the same long-run rate.
    """

    def __init__(self, url: str, service: str, rate: float, burst: int,
                 fallback: TokenBuckets) -> None:
        self.url = redacted_redis_url(url)
        self.service = service
        self.rate = rate
        window = max(1, math.ceil(burst / rate))
        self.item = RateLimitItemPerSecond(max(1, round(rate * window)), window)
        self.fallback = fallback
        # Ours, so that stopping the service closes it; short timeouts keep a slow Redis from
        # holding calls up.
        self._pool = redis.asyncio.ConnectionPool.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        # limits types its pass-through options as scalars; redis-py takes this pool.
        storage = RedisStorage(f"async+{url}", implementation="redispy", key_prefix=KEY_PREFIX,
                               wrap_exceptions=True,
                               connection_pool=self._pool)  # type: ignore[arg-type]
        self._limiter = MovingWindowRateLimiter(storage)
        self._storage = storage
        self.shared = True
        self._retry_at = 0.0
        self.on_change: list[Callable[[bool], None]] = []
        RATE_LIMITS_SHARED.labels(service).set(1)

    async def start(self) -> None:
        """Says in the log where the limits are counted; Redis down is a warning, not an
        error."""
        if await self._storage.check():
            log.info("rate limits: per user in Redis at %s (%d calls per %d s), the process "
                     "limit in this process", self.url, self.item.amount, self.item.multiples)
        else:
            self._set_shared(False, "not reachable at start-up")

    async def take(self, user: str) -> float:
        """0 if the call may go on; else the seconds until it would."""
        now = time.monotonic()
        if not self.shared and now < self._retry_at:
            return self.fallback.take(user, now)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                if await self._limiter.hit(self.item, self.service, user):
                    wait = 0.0
                else:
                    stats = await self._limiter.get_window_stats(self.item, self.service, user)
                    wait = max(1.0 / self.rate, stats.reset_time - time.time())
        except (StorageError, TimeoutError, OSError) as exc:
            self._retry_at = now + REDIS_RETRY_S
            self._set_shared(False, f"{type(exc).__name__}: {exc}")
            return self.fallback.take(user, now)
        self._set_shared(True, "")
        return wait

    def _set_shared(self, shared: bool, why: str) -> None:
        if shared == self.shared:
            return
        self.shared = shared
        RATE_LIMITS_SHARED.labels(self.service).set(int(shared))
        if shared:
            log.info("rate limits: Redis at %s answers again; per-user limits are shared",
                     self.url)
        else:
            log.warning("rate limits: Redis at %s unreachable (%s); per-user limits are counted "
                        "in each process until it answers, so a user may get up to one rate "
                        "per process; sales go on", self.url, why)
        for callback in self.on_change:
            callback(shared)

    async def close(self) -> None:
        await self._pool.aclose()


class RateLimiter:
    """The rate-limit layer: the process bucket for every RPC but health checks, then the
    user's limit for calls that name a user (the token's subject, else the request's
    user_id): in Redis when `redis_url` is given, else in this process."""

    def __init__(self, user_rate: float, user_burst: int, process_rate: float,
                 process_burst: int, redis_url: str = "", service: str = "") -> None:
        self.users = TokenBuckets(user_rate, user_burst) if user_rate > 0 else None
        self.process = (TokenBuckets(process_rate, process_burst or max(1, int(process_rate)))
                        if process_rate > 0 else None)
        self.shared = (SharedUserLimits(redis_url, service, user_rate, user_burst, self.users)
                       if redis_url and self.users is not None else None)

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start()
        elif self.users is not None:
            log.info("rate limits: per user and per process, counted in this process "
                     "(SECKILL_RATE_LIMIT_REDIS_URL unset): with several workers or replicas "
                     "a user may get up to one rate per process")

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    def _check_process(self) -> None:
        if self.process is not None:
            wait = self.process.take("")
            if wait:
                raise ResourceExhausted("process", wait)

    @staticmethod
    def _user(request: Any) -> str:
        caller = current_caller()
        return caller.user if caller is not None and caller.user else getattr(
            request, "user_id", "")

    def check(self, request: Any) -> None:
        self._check_process()
        if self.users is not None and (user := self._user(request)):
            wait = self.users.take(user)
            if wait:
                raise ResourceExhausted("user", wait)

    async def check_shared(self, request: Any) -> None:
        assert self.shared is not None
        self._check_process()
        if user := self._user(request):
            wait = await self.shared.take(user)
            if wait:
                raise ResourceExhausted("user", wait)

    def layer(self, method: str, behavior: Behavior) -> Behavior:
        if method in HEALTH_METHODS or (self.users is None and self.process is None):
            return behavior
        if self.shared is not None:
            async def limited_shared(request: Any, context: ServicerContext) -> Any:
                await self.check_shared(request)
                return await behavior(request, context)

            return limited_shared

        async def limited(request: Any, context: ServicerContext) -> Any:
            self.check(request)
            return await behavior(request, context)

        return limited
