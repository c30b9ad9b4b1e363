"""Domain errors and their one mapping to canonical gRPC status codes with `google.rpc` details.

Servicers and repositories raise these; `interceptors.ErrorMappingInterceptor` turns them into
statuses, so no servicer calls `context.abort`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "seckill.v1"


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
        for detail in self.details():
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        answer: grpc.Status = rpc_status.to_status(status)
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


class AlreadyExists(_WithErrorInfo):
    code = grpc.StatusCode.ALREADY_EXISTS


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
        super().__init__(f"rate limit of this {scope} exceeded; retry in {self.retry_ms} ms")

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


def internal_status() -> grpc.Status:
    """The answer for an unexpected error: no internals leave the process."""
    answer: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    )
    return answer
