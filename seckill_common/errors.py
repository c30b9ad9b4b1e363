"""Domain errors and their one mapping to canonical gRPC status codes with `google.rpc` details.

Servicers and repositories raise these; `interceptors.ErrorMappingInterceptor` turns them into
statuses, so no servicer calls `context.abort`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "seckill.v1"


class ServiceError(Exception):
    """A failure a client should see, with a canonical code and details."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[object]:
        return []

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        return rpc_status.to_status(status)


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        items = list(violations.items() if isinstance(violations, Mapping) else violations)
        self.violations = items
        super().__init__("; ".join(f"{field}: {why}" for field, why in items))

    def details(self) -> list[object]:
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

    def details(self) -> list[object]:
        return [
            error_details_pb2.ResourceInfo(
                resource_type=f"{ERROR_DOMAIN}.{self.resource_type}",
                resource_name=self.resource_name,
                description=self.message,
            )
        ]


class _WithErrorInfo(ServiceError):
    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[object]:
        return [
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
            )
        ]

    def to_status(self) -> grpc.Status:
        # A sold-out sale answers the same status thousands of times a second: build it once.
        return _cached_status(type(self), self.reason, self.message,
                              tuple(sorted(self.metadata.items())))


@functools.lru_cache(maxsize=1024)
def _cached_status(kind: type[_WithErrorInfo], reason: str, message: str,
                   metadata: tuple[tuple[str, str], ...]) -> grpc.Status:
    return ServiceError.to_status(kind(reason, message, dict(metadata)))


class AlreadyExists(_WithErrorInfo):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(_WithErrorInfo):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ServiceError):
    """A dependency (database or peer service) cannot be reached; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list[object]:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(self.retry_after_s * 1000))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


def internal_status() -> grpc.Status:
    """The answer for an unexpected error: no internals leave the process."""
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    )
