"""Finds a unary method and its message classes in the default descriptor pool (no .proto files).

Importing the generated `*_pb2` modules registers their files in the pool; the request and
response classes are then built from the descriptors with `GetMessageClass`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

# Modules whose services the tool knows about. Each import registers its descriptors.
KNOWN_MODULES = (
    "seckill.v1.product_pb2",
    "seckill.v1.activity_pb2",
    "seckill.v1.order_pb2",
    "grpc_health.v1.health_pb2",
)

SECKILL_METHOD = "seckill.v1.ActivityService/Seckill"


class MethodError(ValueError):
    """The call names no known unary method."""


@dataclass(frozen=True)
class Method:
    service: str  # "seckill.v1.ActivityService"
    name: str  # "Seckill"
    request_class: type[Message]
    response_class: type[Message]

    @property
    def full_name(self) -> str:
        """`package.Service/Method`, the form ghz prints."""
        return f"{self.service}/{self.name}"

    @property
    def path(self) -> str:
        """The HTTP/2 path gRPC calls: `/package.Service/Method`."""
        return f"/{self.service}/{self.name}"

    @property
    def is_seckill(self) -> bool:
        return self.full_name == SECKILL_METHOD


def _load_known_modules() -> None:
    for module in KNOWN_MODULES:
        importlib.import_module(module)


def split_call(call: str) -> tuple[str, str]:
    """`pkg.Service/Method`, `/pkg.Service/Method` or ghz's `pkg.Service.Method` → parts."""
    text = call.strip().lstrip("/")
    if "/" in text:
        service, _, method = text.rpartition("/")
    else:
        service, _, method = text.rpartition(".")
    if not service or not method:
        raise MethodError(f"--call {call!r}: expected package.Service/Method")
    return service, method


def resolve(call: str) -> Method:
    """The unary method `call` names, with its request and response classes."""
    _load_known_modules()
    service_name, method_name = split_call(call)
    pool = descriptor_pool.Default()
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        raise MethodError(
            f"unknown service {service_name!r}; known: {', '.join(known_services())}"
        ) from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise MethodError(
            f"service {service_name} has no method {method_name!r}; it has "
            f"{', '.join(sorted(service.methods_by_name))}"
        )
    if method.client_streaming or method.server_streaming:
        raise MethodError(f"{service_name}/{method_name} is a streaming method; only unary "
                          "calls are supported")
    return Method(
        service=service.full_name,
        name=method.name,
        request_class=message_factory.GetMessageClass(method.input_type),
        response_class=message_factory.GetMessageClass(method.output_type),
    )


def known_services() -> list[str]:
    _load_known_modules()
    pool = descriptor_pool.Default()
    names: list[str] = []
    for module in KNOWN_MODULES:
        file = pool.FindFileByName(importlib.import_module(module).DESCRIPTOR.name)
        names.extend(file.services_by_name[s].full_name for s in file.services_by_name)
    return sorted(names)
