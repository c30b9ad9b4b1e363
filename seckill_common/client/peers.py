"""Calls from one service to another through the generated stubs.

Every call has a deadline (SECKILL_PEER_TIMEOUT) and fails fast when the peer is down, so a
missing peer never hangs a caller: it becomes UNAVAILABLE. A peer's NOT_FOUND is passed on
with its details.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from seckill_common.api.errors import PeerNotFound, Unavailable
from seckill_common.client.tls import ClientTLS
from seckill_common.config import Settings
from seckill_common.tracing import client_interceptors

log = logging.getLogger(__name__)
Resp = TypeVar("Resp")

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}

CHANNEL_OPTIONS = [
    # Reconnect quickly after a peer restarts, instead of grpc's default 1-120 s backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.min_reconnect_backoff_ms", 100),
]


def open_channel(addr: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to a peer: TLS as configured, and trace propagation when tracing is on."""
    tls = ClientTLS.of_service(settings.tls_cert, settings.tls_key, settings.tls_ca)
    return tls.channel(addr, CHANNEL_OPTIONS, client_interceptors() or None)


async def call_peer(
    method: Callable[..., Awaitable[Resp]], request: object, *, peer: str, timeout_s: float
) -> Resp:
    try:
        return await method(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise PeerNotFound(exc) from exc
        if code in _TRANSIENT:
            raise Unavailable(f"{peer} service unavailable: {code.name}") from exc
        log.error("unexpected %s from %s service: %s", code.name, peer, exc.details())
        raise RuntimeError(f"{peer} service answered {code.name}") from exc
