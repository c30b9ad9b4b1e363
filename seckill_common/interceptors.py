"""The layers every RPC of the three services passes through.

Order (outermost first), as `interceptors_for` builds it:
1. access_log: one JSON log line per RPC with the final status code and latency, so it sees
   the codes the inner layers produce, auth refusals included.
2. map_errors: domain `ServiceError`s become canonical codes with details; anything
   unexpected is logged with its traceback and answered INTERNAL, without internals.
3. require_admin (admin methods only): `authorization: Bearer <SECKILL_ADMIN_TOKEN>`.

The layers are plain functions composed once per method by one grpc interceptor, which caches
the wrapped handler: grpc.aio calls every interceptor on every RPC, and building handlers per
call costs more than a trivial RPC itself. Only unary-unary handlers are wrapped; health Watch
and reflection streams pass through.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc.aio import ServicerContext

from seckill_common.errors import (
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    internal_status,
)

log = logging.getLogger("seckill.rpc")

Behavior = Callable[[Any, ServicerContext], Awaitable[Any]]
# A layer wraps the behavior of one method (named by its full path) in another behavior.
Layer = Callable[[str, Behavior], Behavior]


def access_log(method: str, behavior: Behavior) -> Behavior:
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
            if log.isEnabledFor(logging.INFO):
                log.info("rpc", extra={
                    "method": method,
                    "peer": context.peer(),
                    "code": getattr(code, "name", str(code)),
                    "latency_ms": round((time.perf_counter() - start) * 1000, 3),
                })

    return logged


def _answer(context: ServicerContext, status: grpc.Status) -> None:
    # Setting the status and returning, rather than `abort_with_status` (which raises through
    # every layer and costs about as much as a whole trivial RPC): grpc sends no message for
    # a non-OK code.
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


def map_errors(method: str, behavior: Behavior) -> Behavior:
    async def mapped(request: Any, context: ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except ServiceError as exc:
            _answer(context, exc.to_status())
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method)
            _answer(context, internal_status())
        return None

    return mapped


class AdminToken:
    """Checks `authorization: Bearer <token>` (scheme case-insensitive, constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            raise Unauthenticated("admin RPC: missing 'authorization: Bearer <token>' metadata")
        value = values[0].encode() if isinstance(values[0], str) else values[0]
        scheme, _, given = value.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._expected):
            raise PermissionDenied("admin RPC: the bearer token is not the admin token")

    def layer(self, admin_methods: frozenset[str]) -> Layer:
        def require_admin(method: str, behavior: Behavior) -> Behavior:
            if method not in admin_methods:
                return behavior

            async def guarded(request: Any, context: ServicerContext) -> Any:
                self.check(context.invocation_metadata())
                return await behavior(request, context)

            return guarded

        return require_admin


class LayeredInterceptor(grpc.aio.ServerInterceptor):
    """Applies `layers` (outermost first) to each unary method once, and caches the result."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self._layers = list(layers)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods are not cached: their names come from clients
        behavior = handler.unary_unary
        for layer in reversed(self._layers):
            behavior = layer(method, behavior)
        wrapped = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = wrapped
        return wrapped


def interceptors_for(admin_methods: frozenset[str], admin_token: str) -> list[
        grpc.aio.ServerInterceptor]:
    return [LayeredInterceptor([
        access_log,
        map_errors,
        AdminToken(admin_token).layer(admin_methods),
    ])]
