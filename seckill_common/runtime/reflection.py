"""Server reflection, served as both `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

Current clients (grpcurl, Node's @grpc/reflection, Postman) ask for v1 first; grpcio-reflection
ships only v1alpha. v1 renamed the package and nothing else, so the messages are the same on the
wire and one servicer answers both names. v1's file descriptor, derived from v1alpha's, joins the
default pool so that a client can also describe the v1 service itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor() -> None:
    """Adds grpc/reflection/v1/reflection.proto, v1alpha's file under v1's package, to the
    default pool (once per process: several servers may run in one)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = _V1_FILE, _V1_PACKAGE.strip(".")
    file.ClearField("options")  # v1alpha's deprecation and language package names
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message fields; setting it on scalars is invalid
                field.type_name = field.type_name.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
            method.output_type = method.output_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    pool.AddSerializedFile(file.SerializeToString())


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serves reflection for `service_names` (and itself) under both protocol versions, from
    the default pool, methods included (`_MethodAwarePool`)."""
    _add_v1_descriptor()
    pool = _MethodAwarePool()
    names = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer([*service_names, *names], pool=pool)
    handlers = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )}
    for name in names:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)


class _MethodAwarePool:
    """The default descriptor pool, plus lookups of `package.Service.Method` symbols.

    protobuf's Python pool cannot find a method by its full name, so reflection clients such as
    `grpcurl describe seckill.v1.ActivityService.Seckill` would fail without this.
    """

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(service_name)  # KeyError if not a service
            if method not in service.methods_by_name:
                raise
            return service.file
