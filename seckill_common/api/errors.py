"""Domain errors and their one mapping to canonical gRPC status codes with `google.rpc` details.

Servicers and repositories raise these; the interceptors' `map_errors` layer turns them into
statuses, which `runtime.answers.answer` writes, so no servicer calls `context.abort`.
"""

from __future__ import annotations

import collections
import enum
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "seckill.v1"


class Reason(enum.StrEnum):
    """Every `ErrorInfo.reason` we answer with (domain ERROR_DOMAIN), googleapis' ErrorReason
    shape: the value is the wire's string, so servers, metrics and clients compare members,
    never spelled-out strings. What each means: docs/ERRORS.md.

    Not a proto enum: in package seckill.v1 its SOLD_OUT, NOT_STARTED and ENDED would clash
    with ActivityState's values, and a string-valued member needs no name lookup to encode.
    """

    # Seckill
    ALREADY_PURCHASED = "ALREADY_PURCHASED"
    QUANTITY_OVER_LIMIT = "QUANTITY_OVER_LIMIT"
    NOT_STARTED = "NOT_STARTED"
    ENDED = "ENDED"
    SOLD_OUT = "SOLD_OUT"
    INSUFFICIENT_STOCK = "INSUFFICIENT_STOCK"
    # Deletes
    ACTIVITY_HAS_ORDERS = "ACTIVITY_HAS_ORDERS"
    PRODUCT_IN_USE = "PRODUCT_IN_USE"
    # An order's lifecycle
    PAYMENT_EXPIRED = "PAYMENT_EXPIRED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    ORDER_EXPIRED = "ORDER_EXPIRED"
    # Order events
    EVENTS_PRUNED = "EVENTS_PRUNED"
    EVENTS_DISABLED = "EVENTS_DISABLED"
    # Overload
    OVERLOADED = "OVERLOADED"
    # Waiting rooms (docs/WAITING_ROOM.md): a Seckill without a valid admission pass, and
    # JoinQueue on an activity without a room (its NOT_STARTED, ENDED are Seckill's)
    NOT_ADMITTED = "NOT_ADMITTED"
    PASS_EXPIRED = "PASS_EXPIRED"
    NO_WAITING_ROOM = "NO_WAITING_ROOM"

    @classmethod
    def of(cls, reason: str) -> Reason | None:
        """The member a status's `ErrorInfo.reason` names; None for none (another domain's,
        or a newer server's)."""
        return cls._value2member_map_.get(reason)  # type: ignore[return-value]


class ServiceError(Exception):
    """A failure a client should see, with a canonical code and details."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[Message]:
        return []

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        pushback: list[tuple[str, str]] = []
        for detail in self.details():
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
            if isinstance(detail, error_details_pb2.RetryInfo):
                # gRPC's own retry policy (A6) reads the server's delay from this trailer, so
                # any client configured with a retryPolicy backs off by the server's word
                # without our code (docs/CLIENTS.md, "Retries by the service config").
                pushback.append((RETRY_PUSHBACK_KEY,
                                 str(detail.retry_delay.ToMilliseconds())))
        answer: grpc.Status = rpc_status.to_status(status)
        if pushback:
            return _Status(answer.code, answer.details,
                           (*answer.trailing_metadata, *pushback))
        return answer


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        items = list(violations.items() if isinstance(violations, Mapping) else violations)
        self.violations = items
        super().__init__("; ".join(f"{field}: {why}" for field, why in items))

    def details(self) -> list[Message]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
        ]


# AIP-122 collection ids: the plural of each resource type, as in resource names.
COLLECTIONS = {"Product": "products", "Activity": "activities", "Order": "orders"}


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource_type: str, resource_id: int | str) -> None:
        self.resource_type = resource_type
        self.resource_name = f"{COLLECTIONS[resource_type]}/{resource_id}"
        super().__init__(f"{resource_type} {resource_id} not found")

    def details(self) -> list[Message]:
        return [
            error_details_pb2.ResourceInfo(
                resource_type=f"{ERROR_DOMAIN}.{self.resource_type}",
                resource_name=self.resource_name,
                description=self.message,
            )
        ]


class _Repeated(ServiceError):
    """An answer given thousands of times a second (a sold-out sale, a flood refused): its
    status is built once per distinct content, which `key()` gives as the constructor's
    arguments."""

    def key(self) -> tuple[object, ...]:
        raise NotImplementedError

    def to_status(self) -> grpc.Status:
        return _cached_status((type(self), *self.key()))


@functools.lru_cache(maxsize=4096)
def _cached_status(kind_and_key: tuple[Any, ...]) -> grpc.Status:
    """The status of `kind(*key)`, for `(kind, *key)`."""
    kind, *key = kind_and_key
    return ServiceError.to_status(kind(*key))


class _WithErrorInfo(_Repeated):
    """`reason`: a Reason (any string is encoded as given)."""

    def __init__(self, reason: str, message: str,
                 metadata: Mapping[str, str] | Iterable[tuple[str, str]] | None = None):
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[Message]:
        return [
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
            )
        ]

    def key(self) -> tuple[object, ...]:
        return (self.reason, self.message, tuple(sorted(self.metadata.items())))


# The trailer grpcio-status reads the google.rpc.Status from.
GRPC_DETAILS_KEY = "grpc-status-details-bin"
# The trailer a gRPC client's retry policy takes the server's retry delay from (gRFC A6).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
_ERROR_INFO_TYPE_URL = b"\n\x28type.googleapis.com/google.rpc.ErrorInfo"  # Any field 1


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")),
              grpc.Status):
    pass


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAGS = {number: bytes((number << 3 | 2,)) for number in (1, 2, 3)}
_SHORT = [bytes((n,)) for n in range(128)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) of field `number` (1-3)."""
    size = len(payload)
    return _TAGS[number] + (_SHORT[size] if size < 128 else _varint(size)) + payload


@functools.lru_cache(maxsize=256)
def _error_info_parts(code: int, reason: str, message: str) -> tuple[bytes, bytes]:
    """The serialized Status (code, message) and ErrorInfo (reason, domain) of a kind."""
    status = status_pb2.Status(code=code, message=message)
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    return status.SerializeToString(), info.SerializeToString()


class AlreadyExists(_WithErrorInfo):
    """Its metadata names the caller's own order, so no two buyers share a status: each is
    spliced from cached parts rather than looked up."""

    code = grpc.StatusCode.ALREADY_EXISTS

    def to_status(self) -> grpc.Status:
        """The status from parts serialized once per kind: only the metadata (an order id,
        an activity id) is encoded per call. Protobuf parses fields in any order and
        concatenated occurrences as one message, so the bytes decode as ServiceError's."""
        status_prefix, info_prefix = _error_info_parts(self.code.value[0], self.reason,
                                                        self.message)
        info = info_prefix + b"".join(
            _field(3, _field(1, k.encode()) + _field(2, v.encode()))
            for k, v in self.metadata.items())
        details = status_prefix + _field(3, _ERROR_INFO_TYPE_URL + _field(2, info))
        return _Status(self.code, self.message, ((GRPC_DETAILS_KEY, details),))


class FailedPrecondition(_WithErrorInfo):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(_Repeated):
    """Over a rate limit (`scope`: user or process); the client may retry after the delay."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, scope: str, retry_after_s: float) -> None:
        # Whole milliseconds, at least one: the status is cached per (scope, delay).
        self.retry_ms = max(1, int(retry_after_s * 1000 + 0.999))
        self.scope = scope
        # The delay is in RetryInfo: one message per scope, however long the wait.
        super().__init__(f"rate limit of this {scope} exceeded")

    def details(self) -> list[Message]:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(self.retry_ms)
        return [
            error_details_pb2.RetryInfo(retry_delay=delay),
            error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(
                subject=self.scope, description=self.message)]),
        ]

    def key(self) -> tuple[object, ...]:
        return (self.scope, self.retry_ms / 1000)


class Overloaded(_Repeated):
    """This process is over its in-flight limit, or cannot meet the call's deadline at its
    current latency (`limit`: in_flight or deadline): nothing of the call was done, and the
    client may retry after the delay (RESOURCE_EXHAUSTED, as grpc's own concurrency limit)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.OVERLOADED
    # Delays are rounded up to this step, so a handful of statuses are ever built.
    STEP_MS = 50

    def __init__(self, limit: str, retry_after_s: float) -> None:
        step = self.STEP_MS
        self.retry_ms = max(step, -(-int(retry_after_s * 1000) // step) * step)
        self.limit = limit
        super().__init__("server overloaded: nothing was done; retry after the RetryInfo delay")

    def details(self) -> list[Message]:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(self.retry_ms)
        return [error_details_pb2.RetryInfo(retry_delay=delay),
                error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN,
                                            metadata={"limit": self.limit})]

    def key(self) -> tuple[object, ...]:
        return (self.limit, self.retry_ms / 1000)


class Unavailable(ServiceError):
    """A dependency (database or peer service) cannot be reached; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list[Message]:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(self.retry_after_s * 1000))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


class NoAnswer(Unavailable):
    """The database did not answer within the client's bound (a silent link, a frozen
    server): the connection was dropped and its session KILLed; the caller may retry."""

    def __init__(self, bound_s: float) -> None:
        super().__init__(f"database did not answer within {bound_s:g} s")


class StatementTimeout(Unavailable):
    """A statement ran past SECKILL_DB_STATEMENT_TIMEOUT (a lock held elsewhere, an overloaded
    server): the database is there, so it is not marked down; the caller may retry."""

    def __init__(self) -> None:
        super().__init__("database statement timed out")


class Aborted(ServiceError):
    """A lock wait that timed out, or a deadlock that outlived its retries; the client may
    retry."""

    code = grpc.StatusCode.ABORTED


class PeerNotFound(ServiceError):
    """The peer answered NOT_FOUND: passed on to our caller with the peer's own details."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details() or "not found")
        self._error = error

    def to_status(self) -> grpc.Status:
        status = rpc_status.from_call(self._error)
        if status is None:
            return super().to_status()
        answer: grpc.Status = rpc_status.to_status(status)
        return answer


class TooManyStreams(ServiceError):
    """This process already serves as many streams of a kind as `setting` allows."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, limit: int, what: str, setting: str) -> None:
        super().__init__(f"this server already serves {limit} {what} streams; retry later "
                         "(another replica may have room)")
        self.setting = setting

    def details(self) -> list[Message]:
        delay = error_details_pb2.RetryInfo()
        delay.retry_delay.FromSeconds(1)
        return [delay, error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject="process", description=self.setting)])]


def status_of(code: grpc.StatusCode, message: str) -> grpc.Status:
    """A status without details."""
    answer: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message))
    return answer


def internal_status() -> grpc.Status:
    """The answer for an unexpected error: no internals leave the process."""
    return status_of(grpc.StatusCode.INTERNAL, "internal error")
