"""Server reflection answers as `grpc.reflection.v1` (what current clients ask first) and as
`grpc.reflection.v1alpha` (what older ones ask), with the same content."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.helpers.stack import Stack

VERSIONS = ("v1", "v1alpha")


async def reflect(address: str, version: str,
                  request: reflection_pb2.ServerReflectionRequest
                  ) -> reflection_pb2.ServerReflectionResponse:
    """One request on `grpc.reflection.<version>`; v1 differs from v1alpha only in its package
    name, so v1alpha's messages encode v1's."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter([request]))
        responses = [response async for response in call]
    assert len(responses) == 1
    return responses[0]


async def files_of(address: str, version: str, symbol: str
                   ) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    response = await reflect(address, version, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol=symbol))
    assert not response.HasField("error_response"), response.error_response
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in response.file_descriptor_response.file_descriptor_proto]
    return {file.name: file for file in files}


@pytest.mark.parametrize("version", VERSIONS)
async def test_reflection_lists_and_describes_under_both_versions(
        stack: Stack, version: str) -> None:
    expected = {
        stack.product.address: {"seckill.v1.ProductService"},
        stack.activity.address: {"seckill.v1.ActivityService"},
        # The order process serves the order events' feed too.
        stack.order.address: {"seckill.v1.OrderService", "seckill.v1.OrderEventService"},
    }
    for address, services in expected.items():
        listed = await reflect(address, version,
                               reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert names == {*services, "grpc.health.v1.Health",
                         "grpc.reflection.v1.ServerReflection",
                         "grpc.reflection.v1alpha.ServerReflection"}

    files = await files_of(stack.activity.address, version, "seckill.v1.ActivityService")
    activity = files["seckill/v1/activity.proto"]
    assert [s.name for s in activity.service] == ["ActivityService"]
    assert "Seckill" in [m.name for m in activity.service[0].method]


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_v1_reflection_service_describes_itself(stack: Stack, version: str) -> None:
    files = await files_of(stack.product.address, version, "grpc.reflection.v1.ServerReflection")
    v1 = files["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    method = v1.service[0].method[0]
    assert (method.name, method.input_type, method.output_type) == (
        "ServerReflectionInfo", ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse")
    assert all("v1alpha" not in field.type_name
               for message in v1.message_type for field in message.field)
