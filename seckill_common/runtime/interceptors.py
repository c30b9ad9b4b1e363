"""The layers every RPC of the three services passes through.

Order (outermost first), as `interceptors_for` builds it:
1. access_log: the RPC metrics for every call, and a JSON log line with the final status code,
   latency and trace id for the calls its rules pick (by default: unexpected codes, slow calls
   and one in 1,000 of the rest), so both see the codes the inner layers produce, auth
   refusals included.
2. shed load (runtime.overload): a call whose deadline has passed gets no handler; above the
   adaptive in-flight limit, or with a deadline nearer than the method's latency, a call is
   RESOURCE_EXHAUSTED at once with RetryInfo. Inside the access log, so metrics count them.
3. map_errors: domain `ServiceError`s become canonical codes with details; anything
   unexpected is logged with its traceback and answered INTERNAL, without internals.
4. auth (runtime.auth): the admin token for admin methods, user tokens for user methods.
5. refuse_malformed: bytes that are not the method's message are INVALID_ARGUMENT.
6. rate limits (seckill_common.runtime.ratelimit): per process and per user, RESOURCE_EXHAUSTED.

The layers are plain functions composed once per method by one grpc interceptor, which caches
the wrapped handler: grpc.aio calls every interceptor on every RPC, and building handlers per
call costs more than a trivial RPC itself. Unary-unary handlers get every layer; our own server
streams (a coroutine that writes with context.write) get the access log, map_errors, auth and
the tolerant request parser, so their lines, metrics and statuses are written by the same code
as a unary call's (seckill_common.runtime.streams: how many a process takes, how they end).
Health Watch and reflection streams pass through. Every status is written by
`runtime.answers.answer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc.aio import ServicerContext

from seckill_common.api.errors import InvalidArgument, ServiceError, internal_status
from seckill_common.config import Settings
from seckill_common.runtime.answers import Behavior, Layer, answer, stream_messages
from seckill_common.runtime.auth import Authenticator
from seckill_common.runtime.overload import LoadShedder
from seckill_common.runtime.ratelimit import RateLimiter
from seckill_common.runtime.telemetry import rpc_recorder
from seckill_common.tracing import current_trace_id, server_interceptors, tracing_on

log = logging.getLogger("seckill.rpc")


# Answers a sale gives by the thousand, as designed: a buyer told "sold out", "you hold one
# already", "no such activity", or "come back later" (rate limits, overload). Counted in the
# metrics, logged like OK calls (slow, sampled, or with SECKILL_ACCESS_LOG_ALL).
# A deadline is the caller's choice: a call it cut short is logged when it was slow, and the
# calls an overloaded process ends unworked (their deadline passed in the queue) are counted.
EXPECTED_CODES = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class AccessLogRules:
    """Which calls get a line: every call (`all`); else those with an unexpected code
    (`errors`), those slower than `slow_s` (0: none), and one in `sample_every` of the rest
    per method and process (0: none; the first call of each method is one of them)."""

    all: bool = False
    errors: bool = True
    slow_s: float = 0.25
    sample_every: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> AccessLogRules:
        sale_day = settings.sale_day
        return cls(sale_day.access_log_all, sale_day.access_log_errors,
                   sale_day.access_log_slow_s, sale_day.access_log_sample_every)


def _write_line(method: str, context: ServicerContext, code: str, seconds: float, reason: str,
                sample_every: int, with_trace_id: bool) -> None:
    """The access-log line of one call, unary or a server stream."""
    fields: dict[str, Any] = {"method": method, "peer": context.peer(), "code": code,
                              "latency_ms": round(seconds * 1000, 3), "logged": reason}
    if reason == "sampled":
        fields["sample_every"] = sample_every
    messages = stream_messages.get()
    if messages is not None:  # a server stream's
        fields["messages"] = messages[0]
    if with_trace_id:
        fields["trace_id"] = current_trace_id()
    log.info("rpc", extra=fields)


def access_log(service: str, rules: AccessLogRules = AccessLogRules()) -> Layer:
    """The RPC metrics for every call, and a JSON log line (method, peer, code, latency, why it
    was written, trace id when tracing) for the calls `rules` pick. Whether a line is written
    is decided first: a call that gets none costs a counter and a histogram, nothing more."""
    with_trace_id = tracing_on()
    slow_s = rules.slow_s if rules.slow_s > 0 else float("inf")
    every = rules.sample_every

    def layer(method: str, behavior: Behavior) -> Behavior:
        record = rpc_recorder(service, method)
        # Calls of this method left to sample; the first call is sampled.
        countdown = [1]

        def why(code: grpc.StatusCode, seconds: float) -> str | None:
            if rules.all:
                return "all"
            if rules.errors and code not in EXPECTED_CODES:
                return "error"
            if seconds >= slow_s:
                return "slow"
            if every:
                countdown[0] -= 1
                if countdown[0] <= 0:
                    countdown[0] = every
                    return "sampled"
            return None

        async def logged(request: Any, context: ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            finally:
                seconds = time.perf_counter() - start
                name = getattr(code, "name", str(code))
                record(name, seconds)
                reason = why(code, seconds)
                if reason is not None and log.isEnabledFor(logging.INFO):
                    _write_line(method, context, name, seconds, reason, every, with_trace_id)

        return logged

    return layer


def map_errors(method: str, behavior: Behavior) -> Behavior:
    async def mapped(request: Any, context: ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except ServiceError as exc:
            await answer(context, exc.to_status())
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method)
            await answer(context, internal_status())
        return None

    return mapped


def refuse_malformed(method: str, behavior: Behavior) -> Behavior:
    async def checked(request: Any, context: ServicerContext) -> Any:
        if isinstance(request, Malformed):
            raise InvalidArgument([("request", request.why)])
        return await behavior(request, context)

    return checked


class Malformed:
    """What the request deserializer gives for bytes that are not the method's message.

    grpc answers a deserializer's exception with a bare INTERNAL; this way the client gets
    INVALID_ARGUMENT with a BadRequest detail instead.
    """

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data) if deserializer else data
        except Exception as exc:  # protobuf's DecodeError, and anything else a parser raises
            return Malformed(f"not a valid request message for {method}: {exc}")

    return deserialize


class LayeredInterceptor(grpc.aio.ServerInterceptor):
    """Applies `layers` (outermost first) to each unary method once, and caches the result."""

    def __init__(self, layers: Sequence[Layer], stream_layers: Sequence[Layer] = ()) -> None:
        self._layers = list(layers)
        # Our server streams take only these: not the load shedder (a stream is bounded by
        # its slots, runtime.streams) nor the rate limits.
        self._stream_layers = list(stream_layers)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is not None and handler.unary_stream is not None and method.startswith(
                "/seckill."):
            # Bytes that are not a stream's request reach it as `Malformed` (its own check
            # answers INVALID_ARGUMENT), not as grpc's INTERNAL.
            streaming = handler.unary_stream
            for layer in reversed(self._stream_layers):
                streaming = layer(method, streaming)
            stream = grpc.unary_stream_rpc_method_handler(
                streaming,
                request_deserializer=_tolerant(handler.request_deserializer, method),
                response_serializer=handler.response_serializer)
            self._handlers[method] = stream
            return stream
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods are not cached: their names come from clients
        behavior = handler.unary_unary
        for layer in reversed(self._layers):
            behavior = layer(method, behavior)
        wrapped = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=_tolerant(handler.request_deserializer, method),
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = wrapped
        return wrapped


def rate_limiter_for(settings: Settings, service: str) -> RateLimiter:
    return RateLimiter(settings.user_rate, settings.user_burst, settings.process_rate,
                       settings.process_burst, settings.rate_limit_redis_url, service)


def interceptors_for(settings: Settings, service: str, admin_methods: frozenset[str],
                     user_methods: frozenset[str], limits: RateLimiter | None = None,
                     ) -> list[grpc.aio.ServerInterceptor]:
    """Tracing (when on) outermost, so the access log line carries the call's trace id."""
    auth = Authenticator(settings.admin_token, settings.user_token_secret, admin_methods,
                         user_methods)
    limits = limits or rate_limiter_for(settings, service)
    shedder = LoadShedder.of(settings, service)
    logged = access_log(service, AccessLogRules.of(settings))
    return [*server_interceptors(),
            LayeredInterceptor([logged, shedder.layer, map_errors, auth.layer, refuse_malformed,
                                limits.layer],
                               stream_layers=[logged, map_errors, auth.layer])]
