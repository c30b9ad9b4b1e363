"""How a call is answered: the one place a status is written (`answer`), for unary calls and
server streams alike, and the types of the layers around a method (runtime.interceptors).

A refusal a client may simply retry (RESOURCE_EXHAUSTED: overload, rate limits, a full
process's streams; UNAVAILABLE) goes out Trailers-Only: the status with no response headers
before it. gRPC commits a call, and its retryPolicy no longer retries it, once response
headers arrive, so only this way does a client configured with our service config
(examples/service_config.json, docs/CLIENTS.md) retry by itself, after the server's
grpc-retry-pushback-ms. Every other status is set on the context and sent by grpc when the
handler returns (for a unary call: headers, then trailers), which costs nothing extra.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import ServicerContext

# The behavior of one method: a unary handler returns its response (None when it answered
# with a status); a server stream's handler writes with context.write and returns None.
Behavior = Callable[[Any, ServicerContext], Awaitable[Any]]
# A layer wraps the behavior of one method (named by its full path) in another behavior.
Layer = Callable[[str, Behavior], Behavior]

# The codes answered Trailers-Only: refusals before any work, safe to retry.
TRAILERS_ONLY = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})

# The messages a server stream has written so far (one item), for its access-log line; unset
# for unary calls. Each call runs in its own task, so one call's value is never another's.
stream_messages: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "stream_messages", default=None)


async def answer(context: ServicerContext, status: grpc.Status) -> None:
    """Ends the call with `status`. The code is set on the context in every case, so the
    layers outside (the access log, tracing) read it as for any answer."""
    context.set_code(status.code)
    context.set_details(status.details)
    if status.code not in TRAILERS_ONLY:
        context.set_trailing_metadata(status.trailing_metadata)
        return
    # `abort` sends the status at once, with response headers only if a message went before
    # (a stream's), and raises AbortError. It is caught here, so the layers outside return as
    # for any other answer; grpc raises the same error again itself once the handler returns,
    # ends the call quietly and sends nothing more. Measured: no dearer than setting the code
    # (docs/CLIENTS.md, "Retries by the service config").
    with contextlib.suppress(grpc.aio.AbortError):
        await context.abort(status.code, status.details, tuple(status.trailing_metadata))
