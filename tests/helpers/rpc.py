"""A call's status code and its google.rpc details: what the end-to-end tests assert on."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# A hostile page_token: base64 of 40,000 nested JSON arrays (once answered INTERNAL): deep
# enough to overflow a recursive JSON parser, small enough for the request size cap.
DEEP_TOKEN = base64.urlsafe_b64encode(b"[" * 40_000).decode()


def error_details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The google.rpc details of a failed call, by type name."""
    status = rpc_status.from_call(error)
    found: dict[str, Any] = {}
    if status is None:
        return found
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ResourceInfo,
                     error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo,
                     error_details_pb2.QuotaFailure):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


async def rpc_error(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`; its message must leak no internals."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    message = error.details() or ""
    assert message and "Traceback" not in message and 'File "' not in message, message
    return error


async def bad_fields(call: Awaitable[object]) -> set[str]:
    """The fields a call's INVALID_ARGUMENT names in its BadRequest field violations."""
    error = await rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    violations = error_details(error)["BadRequest"].field_violations
    assert all(v.description for v in violations)
    return {v.field for v in violations}


async def not_found(call: Awaitable[object]) -> tuple[str, str]:
    """The (resource_type, resource_name) of a call's NOT_FOUND ResourceInfo."""
    error = await rpc_error(call, grpc.StatusCode.NOT_FOUND)
    info = error_details(error)["ResourceInfo"]
    return info.resource_type, info.resource_name


async def refused(call: Awaitable[object], code: grpc.StatusCode) -> tuple[str, dict[str, str]]:
    """The ErrorInfo (reason, metadata) of a refused call; its domain is seckill.v1."""
    error = await rpc_error(call, code)
    info = error_details(error)["ErrorInfo"]
    assert info.domain == "seckill.v1"
    return info.reason, dict(info.metadata)


async def walk(list_page: Callable[..., Awaitable[Any]], request: Message,
               items: str) -> list[list[int]]:
    """Follows next_page_token from `request` to the end; the ids of each page served.

    Every page but the first of an empty list holds something: the last page's token is
    empty, never a pointer to an empty page.
    """
    pages: list[list[int]] = []
    while True:
        response = await list_page(request)
        pages.append([item.id for item in getattr(response, items)])
        if not response.next_page_token:
            assert pages[-1] or len(pages) == 1, pages
            return pages
        assert pages[-1] and len(pages) < 100, pages
        following = type(request)()
        following.CopyFrom(request)
        following.page_token = response.next_page_token  # type: ignore[attr-defined]
        request = following
