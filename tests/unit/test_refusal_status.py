"""Refusals built from cached parts decode to the very status the generic builder makes, and a
sale's refusals carry one message per kind (what differs is in the details)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from activity_svc.decision import already_purchased, sold_out
from seckill_common.api.errors import (
    AlreadyExists,
    FailedPrecondition,
    Overloaded,
    ResourceExhausted,
    ServiceError,
    TooManyStreams,
    Unavailable,
)


def decoded(status: grpc.Status) -> status_pb2.Status:
    (value,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    assert isinstance(value, bytes)
    return status_pb2.Status.FromString(value)


def pushback(status: grpc.Status) -> list[str]:
    return [str(v) for k, v in status.trailing_metadata if k == "grpc-retry-pushback-ms"]


@pytest.mark.parametrize("error", [
    AlreadyExists("ALREADY_PURCHASED", "you already hold an order for this activity",
                  {"order_id": "189420"}),
    FailedPrecondition("SOLD_OUT", "sold out", {"activity_id": "7"}),
    FailedPrecondition("PAYMENT_EXPIRED", "order 3 was not paid before its deadline", {}),
    # Unicode, several entries, and values long enough for two-byte lengths.
    AlreadyExists("X", "é" * 200, {"a": "ü" * 300, "b": "", "c" * 130: "d"}),
], ids=["already", "sold-out", "no-metadata", "long"])
def test_cached_parts_make_the_generic_status(error: ServiceError) -> None:
    fast, generic = error.to_status(), ServiceError.to_status(error)
    assert (fast.code, fast.details) == (generic.code, generic.details)
    ours, theirs = decoded(fast), decoded(generic)
    assert (ours.code, ours.message) == (theirs.code, theirs.message)
    # Map entries may be serialized in another order: the details are compared unpacked.
    info, expected = error_details_pb2.ErrorInfo(), error_details_pb2.ErrorInfo()
    assert len(ours.details) == 1 and ours.details[0].Unpack(info)
    assert theirs.details[0].Unpack(expected) and info == expected
    assert dict(info.metadata) == error.metadata  # type: ignore[attr-defined]


def test_a_sale_refuses_with_one_message_per_kind() -> None:
    held = [already_purchased(order_id).error for order_id in (1, 2, 189420)]
    assert {e.to_status().details for e in held} == {"you already hold an order for this activity"}
    assert [e.metadata["order_id"] for e in held] == ["1", "2", "189420"]  # type: ignore
    assert {sold_out(a).error.to_status().details for a in (1, 2)} == {"sold out"}
    limited = {ResourceExhausted("user", s).to_status().details for s in (0.01, 0.5, 3)}
    assert limited == {"rate limit of this user exceeded"}


def test_overload_refusals_carry_retry_info_in_steps() -> None:
    status = decoded(Overloaded("in_flight", 0.123).to_status())
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(retry) and status.details[1].Unpack(info)
    assert retry.retry_delay.ToMilliseconds() == 150  # rounded up to 50 ms steps
    assert (info.reason, dict(info.metadata)) == ("OVERLOADED", {"limit": "in_flight"})


@pytest.mark.parametrize("error", [
    Overloaded("in_flight", 0.123), ResourceExhausted("user", 0.25),
    Unavailable("database unavailable", 2.0), TooManyStreams(5, "JoinQueue", "X"),
], ids=["overloaded", "rate-limit", "unavailable", "stream-cap"])
def test_retry_info_travels_with_grpc_retry_pushback_ms(error: ServiceError) -> None:
    """gRPC's retry policy reads the server's delay from grpc-retry-pushback-ms (gRFC A6): the
    same delay as RetryInfo's, so a client with only a service config backs off as ours do."""
    status = error.to_status()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in decoded(status).details)
    assert pushback(status) == [str(retry.retry_delay.ToMilliseconds())]
    assert pushback(FailedPrecondition("SOLD_OUT", "sold out", {}).to_status()) == []
