"""Server interceptors shared by the three services.

Order (outermost first), as `interceptors_for` builds it:
1. AccessLogInterceptor: one JSON log line per RPC with the final status code and latency,
   so it sees the codes the inner layers produce, auth refusals included.
2. ErrorMappingInterceptor: domain `ServiceError`s become canonical codes with details;
   anything unexpected is logged with its traceback and answered INTERNAL, without internals.
3. AdminAuthInterceptor: admin RPCs need `authorization: Bearer <SECKILL_ADMIN_TOKEN>`.
Only unary-unary handlers are wrapped; health Watch and reflection streams pass through.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
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


def _wrap(handler: grpc.RpcMethodHandler | None,
          wrapper: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler | None:
    if handler is None or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrapper(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        method = handler_call_details.method
        handler = await continuation(handler_call_details)

        def wrapper(behavior: Behavior) -> Behavior:
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
                    log.info(
                        "rpc",
                        extra={
                            "method": method,
                            "peer": context.peer(),
                            "code": getattr(code, "name", str(code)),
                            "latency_ms": round((time.perf_counter() - start) * 1000, 3),
                        },
                    )

            return logged

        return _wrap(handler, wrapper)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        method = handler_call_details.method
        handler = await continuation(handler_call_details)

        def wrapper(behavior: Behavior) -> Behavior:
            async def mapped(request: Any, context: ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except ServiceError as exc:
                    await context.abort_with_status(exc.to_status())
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unexpected error in %s", method)
                    await context.abort_with_status(internal_status())

            return mapped

        return _wrap(handler, wrapper)


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses admin RPCs without the right bearer token (compared in constant time)."""

    def __init__(self, admin_methods: frozenset[str], token: str) -> None:
        self._admin_methods = admin_methods
        self._expected = token.encode()

    def check(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> None:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            raise Unauthenticated("admin RPC: missing 'authorization: Bearer <token>' metadata")
        value = values[0].encode() if isinstance(values[0], str) else values[0]
        scheme, _, given = value.partition(b" ")
        # The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._expected):
            raise PermissionDenied("admin RPC: the bearer token is not the admin token")

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler_call_details.method not in self._admin_methods:
            return handler
        metadata = handler_call_details.invocation_metadata

        def wrapper(behavior: Behavior) -> Behavior:
            async def guarded(request: Any, context: ServicerContext) -> Any:
                self.check(metadata)
                return await behavior(request, context)

            return guarded

        return _wrap(handler, wrapper)


def interceptors_for(admin_methods: frozenset[str], admin_token: str) -> list[
        grpc.aio.ServerInterceptor]:
    return [
        AccessLogInterceptor(),
        ErrorMappingInterceptor(),
        AdminAuthInterceptor(admin_methods, admin_token),
    ]
