"""The client's side of overload, for the project's own clients (the CLI, seckill-bench): honour
the server's RetryInfo with jittered backoff, and throttle locally when the server keeps
refusing (adaptive throttling, Google SRE book, "Handling Overload").

A refusal with RetryInfo (RESOURCE_EXHAUSTED: overloaded or rate limited; UNAVAILABLE: a
dependency away) says nothing was done and when to come back. Waiting that long times a random
factor of 0.5-1.5 (growing with each try) spreads the retries of many clients, so they do not
return as one wave. The throttle keeps a client from sending what will be refused anyway: with
`requests` calls attempted and `accepts` answered by the server over the last minutes, a new
call is refused locally with probability max(0, (requests - K * accepts) / (requests + 1)),
once it has sent THROTTLE_MIN_REQUESTS (a one-shot CLI call is never throttled by its own
first refusal).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
# Codes whose RetryInfo a client honours: nothing of the call was done.
RETRYABLE_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
# Answers that say the server is refusing or not managing work: they do not count as accepts.
REFUSING_CODES = RETRYABLE_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED}
# The SRE book's K: refuse locally once requests exceed twice the accepts.
THROTTLE_K = 2.0
THROTTLE_WINDOW_S = 60.0
MAX_BACKOFF_S = 10.0
# Requests (decayed) a client must have sent before it refuses any locally: with one or two
# answers the formula would refuse half the retries of a client that was refused once.
THROTTLE_MIN_REQUESTS = 20.0
# The wait after a local refusal, before any RetryInfo was seen.
MIN_RETRY_S = 0.05


class ThrottledLocally(Exception):
    """The client refused a call itself: the server has been refusing most calls."""

    def __init__(self, probability: float) -> None:
        super().__init__(f"throttled locally: the server refused most recent calls "
                         f"(adaptive throttling, p={probability:.2f})")
        self.probability = probability


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of a refusal a client may retry, in seconds; None otherwise."""
    if error.code() not in RETRYABLE_CODES:
        return None
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                if detail.type_url == RETRY_INFO_TYPE:
                    info = error_details_pb2.RetryInfo.FromString(detail.value)
                    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def backoff_s(delay_s: float, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """How long to wait before try `attempt + 1` (attempt 0: the first retry): the server's
    delay, doubled per try, times a random factor of 0.5-1.5; at most MAX_BACKOFF_S."""
    return min(MAX_BACKOFF_S, delay_s * 2.0 ** attempt * (0.5 + rng()))


class AdaptiveThrottle:
    """Client-side throttling over a decaying window of requests and accepts."""

    def __init__(self, k: float = THROTTLE_K, window_s: float = THROTTLE_WINDOW_S,
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.k = k
        self.window_s = window_s
        self.requests = 0.0
        self.accepts = 0.0
        self._rng = rng
        self._clock = clock
        self._at = clock()

    def _decay(self) -> None:
        now = self._clock()
        if now > self._at:
            factor = math.exp(-(now - self._at) / self.window_s)
            self.requests *= factor
            self.accepts *= factor
            self._at = now

    def probability(self) -> float:
        self._decay()
        if self.requests < THROTTLE_MIN_REQUESTS:
            return 0.0
        return max(0.0, (self.requests - self.k * self.accepts) / (self.requests + 1.0))

    def admit(self) -> None:
        """Raises ThrottledLocally (and counts the request) when it is refused here."""
        p = self.probability()
        if p > 0 and self._rng() < p:
            self.requests += 1.0
            raise ThrottledLocally(p)

    def answered(self, code: grpc.StatusCode) -> None:
        """Counts an admitted request once the server answered it: calls still in flight
        count for nothing, so many sent at once do not look like refusals."""
        self._decay()
        self.requests += 1.0
        if code not in REFUSING_CODES:
            self.accepts += 1.0
