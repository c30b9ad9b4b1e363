"""The client side against `grpc_testing` channels, without servers.

The tools' clients (the CLI's `Session`, seckill-bench's `Part`, examples/python_client.py) are
`grpc.aio` clients; `grpc_testing.channel` plays the server for sync channels only. `AioBridge`
gives them the one piece of a `grpc.aio.Channel` they use, `unary_unary`, over a grpc_testing
channel: each call runs the sync call in a thread and turns its `grpc.RpcError` into the
`AioRpcError` a `grpc.aio` channel raises. The test then takes the call from the channel, looks
at its request and metadata, and answers it with a status and `google.rpc` details packed into
`grpc-status-details-bin` the way grpcio-status packs them for the services.

grpc_testing drops the timeout a call passes, so the bridge records it: that is how the
deadline each client sends is checked. A RESOURCE_EXHAUSTED refusal with RetryInfo (overload,
rate limits: nothing was done) is tried again by the CLI after its delay while the wait fits in
--timeout, and by the example; UNAVAILABLE is not (the CLI tells the user when to retry, the
example re-raises), and the load tool counts every answer and sends each request once: the
tests pin how often each call is sent.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, cast

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2, duration_pb2, json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from seckill.v1 import activity_pb2, activity_pb2_grpc, order_pb2, product_pb2

from seckill_bench.worker import Part, PartSpec
from seckill_cli.client import About, Auth, CliError, Exit, Session
from seckill_common.client.tls import ClientTLS
from tests.helpers.stack import REPO

ACTIVITY_SERVICE = activity_pb2.DESCRIPTOR.services_by_name["ActivityService"]
PRODUCT_SERVICE = product_pb2.DESCRIPTOR.services_by_name["ProductService"]
SECKILL = ACTIVITY_SERVICE.methods_by_name["Seckill"]
GET_PRODUCT = PRODUCT_SERVICE.methods_by_name["GetProduct"]
Metadata = Sequence[tuple[str, str | bytes]]


class AioBridge:
    """`grpc.aio.Channel.unary_unary` over a grpc_testing channel (see the module's doc)."""

    def __init__(self, services: Sequence[ServiceDescriptor]) -> None:
        self.testing = grpc_testing.channel(services, grpc_testing.strict_real_time())
        self.timeouts: list[float | None] = []  # of every call sent, in order

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, **_: Any
                    ) -> Callable[..., Awaitable[Any]]:
        # grpc_testing hands the request and the response over as objects: no (de)serialising.
        sync = self.testing.unary_unary(method)

        # `timeout` as grpc.aio's multi-callables name it: the clients pass it by keyword.
        async def call(request: Any, *, timeout: float | None = None,  # noqa: ASYNC109
                       metadata: Metadata | None = None, **_: Any) -> Any:
            self.timeouts.append(timeout)
            try:
                return await asyncio.to_thread(sync, request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as err:
                sync_call = cast(grpc.Call, err)
                raise grpc.aio.AioRpcError(
                    sync_call.code(), grpc.aio.Metadata(),
                    grpc.aio.Metadata(*sync_call.trailing_metadata()),
                    sync_call.details()) from None
        return call

    def unary_stream(self, method: str, *_: Any, **__: Any) -> Callable[..., Any]:
        """Stubs bind every method of their service (WatchActivity too); no client under
        test streams, so calling one fails the test."""
        def call(*_: Any, **__: Any) -> Any:
            raise AssertionError(f"{method}: streaming calls are not bridged")
        return call

    async def channel_ready(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def answer(self, method: MethodDescriptor, response: Message | None = None, *,
                     status: status_pb2.Status | None = None) -> tuple[dict[str, Any], Any]:
        """Takes the next call of `method` and answers it: `response`, or `status` (with its
        details in grpc-status-details-bin). Returns the call's metadata and request."""
        metadata, request, rpc = await asyncio.to_thread(self.testing.take_unary_unary, method)
        if status is None:
            rpc.terminate(response, (), grpc.StatusCode.OK, "")
        else:
            packed = rpc_status.to_status(status)
            rpc.terminate(None, packed.trailing_metadata, packed.code, packed.details)
        return dict(metadata), request

    def as_channel(self) -> grpc.aio.Channel:
        return cast(grpc.aio.Channel, self)


def rich(code: int, message: str, *details: Message) -> status_pb2.Status:
    """A google.rpc.Status as the services send it: code, message, packed details."""
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code, message=message, details=packed)


def retry_after(seconds: int, nanos: int = 0) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))


# --- the CLI's Session --------------------------------------------------------------------

def cli_session(bridge: AioBridge, service: str = "activity") -> Session:
    return Session(addrs={service: "10.0.0.9:50052"}, timeout_s=2.5, admin_token="adm",
                   user_token="usr", _channels={service: bridge.as_channel()})


async def cli_seckill(bridge: AioBridge, status: status_pb2.Status) -> CliError:
    """Sends the CLI's Seckill for user u in activity 7, answers with `status`; its error."""
    session = cli_session(bridge)
    call = asyncio.create_task(session.call(
        "activity", "Seckill", activity_pb2.SeckillRequest(activity_id=7, user_id="u"),
        auth=Auth.USER, about=About(user="u", activity_id=7)))
    await bridge.answer(SECKILL, status=status)
    with pytest.raises(CliError) as raised:
        await call
    assert bridge.timeouts == [2.5]  # one call, with --timeout as its deadline: no retry
    return raised.value


async def test_cli_sends_its_request_credentials_and_deadline() -> None:
    bridge = AioBridge([ACTIVITY_SERVICE])
    session = cli_session(bridge)
    order = order_pb2.Order(id=17, activity_id=7, user_id="u")
    call = asyncio.create_task(session.call(
        "activity", "Seckill", activity_pb2.SeckillRequest(activity_id=7, user_id="u"),
        auth=Auth.USER))
    metadata, request = await bridge.answer(SECKILL, activity_pb2.SeckillResponse(order=order))
    reply = await call
    assert reply.order.id == 17
    assert request == activity_pb2.SeckillRequest(activity_id=7, user_id="u")
    assert metadata["authorization"] == "Bearer usr"
    assert bridge.timeouts == [2.5]


async def test_cli_names_the_held_order_from_error_info() -> None:
    error = await cli_seckill(AioBridge([ACTIVITY_SERVICE]), rich(
        code_pb2.ALREADY_EXISTS, "user u already holds an order for activity 7",
        error_details_pb2.ErrorInfo(reason="ALREADY_PURCHASED", domain="seckill.v1",
                                    metadata={"order_id": "17"})))
    assert error.message == "user u already holds order 17 for activity 7"
    assert error.exit_code is Exit.REFUSED
    assert error.document["code"] == "ALREADY_EXISTS"
    assert error.document["details"][0]["reason"] == "ALREADY_PURCHASED"
    assert error.document["details"][0]["metadata"] == {"order_id": "17"}


async def test_cli_tells_sold_out_from_error_info_reason() -> None:
    error = await cli_seckill(AioBridge([ACTIVITY_SERVICE]), rich(
        code_pb2.FAILED_PRECONDITION, "sold out",
        error_details_pb2.ErrorInfo(reason="SOLD_OUT", metadata={"activity_id": "7"})))
    assert error.message == "activity 7 is sold out"
    assert error.exit_code is Exit.REFUSED


async def test_cli_unavailable_with_retry_info_says_when_and_does_not_retry() -> None:
    # The service answered (its database is down): RetryInfo says when to try again.
    error = await cli_seckill(AioBridge([ACTIVITY_SERVICE]), rich(
        code_pb2.UNAVAILABLE, "the database is unavailable", retry_after(1, 500_000_000)))
    assert error.message == (
        "the activity service at 10.0.0.9:50052 is unavailable: the database is unavailable "
        "(retry in 1.5s; `seckill status` shows what is down)")
    assert error.exit_code is Exit.UNREACHABLE
    assert error.document["details"][0]["retry_delay"] == "1.500s"


async def test_cli_unavailable_without_details_is_unreachable() -> None:
    error = await cli_seckill(AioBridge([ACTIVITY_SERVICE]),
                              status_pb2.Status(code=code_pb2.UNAVAILABLE, message="no route"))
    assert error.message == ("cannot reach the activity service at 10.0.0.9:50052 "
                             "(is it running? `make up`)")
    assert error.exit_code is Exit.UNREACHABLE
    assert error.document["details"] == []


async def test_cli_rate_limited_beyond_its_timeout_says_when_to_retry() -> None:
    # The delay (5 s) does not fit in --timeout (2.5 s): the refusal is the answer, at once.
    error = await cli_seckill(AioBridge([ACTIVITY_SERVICE]), rich(
        code_pb2.RESOURCE_EXHAUSTED, "too many requests for user u", retry_after(5)))
    assert error.message == "rate limited: too many requests for user u; retry in 5s"
    assert error.exit_code is Exit.REFUSED


async def test_cli_tries_again_after_a_refusals_retry_info() -> None:
    bridge = AioBridge([ACTIVITY_SERVICE])
    session = cli_session(bridge)
    call = asyncio.create_task(session.call(
        "activity", "Seckill", activity_pb2.SeckillRequest(activity_id=7, user_id="u"),
        auth=Auth.USER))
    await bridge.answer(SECKILL, status=rich(
        code_pb2.RESOURCE_EXHAUSTED, "server overloaded", retry_after(0, 50_000_000),
        error_details_pb2.ErrorInfo(reason="OVERLOADED", metadata={"limit": "in_flight"})))
    order = order_pb2.Order(id=17, activity_id=7, user_id="u")
    _, request = await bridge.answer(SECKILL, activity_pb2.SeckillResponse(order=order))
    assert (await call).order.id == 17
    assert request == activity_pb2.SeckillRequest(activity_id=7, user_id="u")
    assert bridge.timeouts == [2.5, 2.5]  # the same call, sent again after the delay


async def test_cli_deadline_exceeded_names_the_timeout() -> None:
    error = await cli_seckill(AioBridge([ACTIVITY_SERVICE]),
                              status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED,
                                                message="Deadline Exceeded"))
    assert error.message == ("the activity service at 10.0.0.9:50052 did not answer within "
                             "2.5s (--timeout)")
    assert error.exit_code is Exit.UNREACHABLE


async def test_cli_names_the_missing_resource_and_the_bad_fields() -> None:
    bridge = AioBridge([PRODUCT_SERVICE])
    session = cli_session(bridge, "product")
    missing = asyncio.create_task(session.call(
        "product", "GetProduct", product_pb2.GetProductRequest(id=5), auth=Auth.NONE))
    metadata, _ = await bridge.answer(GET_PRODUCT, status=rich(
        code_pb2.NOT_FOUND, "product 5 not found",
        error_details_pb2.ResourceInfo(resource_type="seckill.v1.Product",
                                       resource_name="products/5")))
    with pytest.raises(CliError, match=r"^product 5 not found$"):
        await missing
    assert "authorization" not in metadata  # Auth.NONE sends no token

    invalid = asyncio.create_task(session.call(
        "product", "GetProduct", product_pb2.GetProductRequest(id=-1)))
    await bridge.answer(GET_PRODUCT, status=rich(
        code_pb2.INVALID_ARGUMENT, "invalid id", error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="id", description="must be > 0")])))
    with pytest.raises(CliError) as raised:
        await invalid
    assert raised.value.message == "invalid request:\n  - id: must be > 0"


async def test_cli_reads_the_status_alone_when_details_disagree_with_it() -> None:
    # grpc-status-details-bin whose code differs from the call's: grpcio-status refuses it,
    # and the CLI falls back to the status code and message.
    bridge = AioBridge([ACTIVITY_SERVICE])
    session = cli_session(bridge)
    call = asyncio.create_task(session.call(
        "activity", "Seckill", activity_pb2.SeckillRequest(activity_id=7, user_id="u")))
    _, _, rpc = await asyncio.to_thread(bridge.testing.take_unary_unary, SECKILL)
    details = rich(code_pb2.NOT_FOUND, "other").SerializeToString()
    rpc.terminate(None, (("grpc-status-details-bin", details),), grpc.StatusCode.ABORTED,
                  "lock wait timeout")
    with pytest.raises(CliError) as raised:
        await call
    assert raised.value.message == ("lock wait timeout "
                                    "(a lock was held too long; trying again may work)")
    assert "details" not in raised.value.document


# --- seckill-bench's worker ---------------------------------------------------------------

def bench_part(total: int, *, collect_order_ids: bool = False) -> Part:
    return Part(PartSpec(
        index=0, procs=1, call="seckill.v1.ActivityService/Seckill", host="10.0.0.9:50052",
        data='{"activity_id": 7, "user_id": "u{{.RequestNumber}}"}', total=total,
        duration_s=None, workers=1, first_worker=0, channels=1, first_channel=0,
        metadata=(("authorization", "Bearer adm"),), timeout_s=4.0, connect_timeout_s=1.0,
        skip_first=0, collect_order_ids=collect_order_ids, tls=ClientTLS()))


async def run_part(part: Part, bridge: AioBridge) -> None:
    part._channels = [bridge.as_channel()]  # connected already: run() uses these
    await part.run()


async def test_bench_worker_counts_reasons_from_error_info_and_never_retries() -> None:
    bridge = AioBridge([ACTIVITY_SERVICE])
    part = bench_part(4, collect_order_ids=True)
    run = asyncio.create_task(run_part(part, bridge))
    answers = [
        None,  # OK
        rich(code_pb2.ALREADY_EXISTS, "user u1 already holds order 17",
             error_details_pb2.ErrorInfo(reason="ALREADY_PURCHASED", metadata={"order_id": "17"})),
        rich(code_pb2.RESOURCE_EXHAUSTED, "too many requests", retry_after(1)),
        rich(code_pb2.UNAVAILABLE, "the database is unavailable", retry_after(2)),
    ]
    requests = []
    for number, status in enumerate(answers):
        response = activity_pb2.SeckillResponse(order=order_pb2.Order(id=100 + number))
        metadata, request = await bridge.answer(SECKILL, response, status=status)
        assert metadata["authorization"] == "Bearer adm"
        requests.append(activity_pb2.SeckillRequest.FromString(request))
    await run
    result = part.result
    assert [r.user_id for r in requests] == ["u0", "u1", "u2", "u3"]  # sent serialised
    assert bridge.timeouts == [4.0] * 4  # one call per request number, each with its deadline
    assert result.statuses == {"OK": 1, "ALREADY_EXISTS": 1, "RESOURCE_EXHAUSTED": 1,
                               "UNAVAILABLE": 1}
    assert result.reasons == {"ALREADY_EXISTS/ALREADY_PURCHASED": 1}
    assert list(result.order_ids) == [100]
    assert result.completed == 4 and len(result.latencies) == 4
    # Messages fold their numbers, so repeated answers count together.
    assert result.errors["ALREADY_EXISTS\x00user uN already holds order N"] == 1


async def test_bench_worker_reads_no_reason_from_details_without_error_info() -> None:
    bridge = AioBridge([ACTIVITY_SERVICE])
    part = bench_part(1)
    run = asyncio.create_task(run_part(part, bridge))
    await bridge.answer(SECKILL, status=rich(code_pb2.RESOURCE_EXHAUSTED, "slow down",
                                             retry_after(1)))
    await run
    assert part.result.statuses == {"RESOURCE_EXHAUSTED": 1}
    assert part.result.reasons == {}


# --- examples/python_client.py ------------------------------------------------------------

@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("python_client",
                                                  REPO / "examples" / "python_client.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def example_buy(example: ModuleType, bridge: AioBridge,
                      status: status_pb2.Status | None) -> dict[str, Any]:
    stub = activity_pb2_grpc.ActivityServiceStub(bridge.as_channel())
    buy = asyncio.create_task(example.buy(stub, 7, "alice", (("authorization", "Bearer t"),)))
    order = order_pb2.Order(id=17, activity_id=7, user_id="alice")
    metadata, request = await bridge.answer(
        SECKILL, activity_pb2.SeckillResponse(order=order), status=status)
    assert request == activity_pb2.SeckillRequest(activity_id=7, user_id="alice")
    try:
        await buy
    finally:
        assert bridge.timeouts == [5]  # one call, with the example's 5 s deadline
    return metadata


async def test_example_buys_and_prints_the_order(
        example: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    metadata = await example_buy(example, AioBridge([ACTIVITY_SERVICE]), None)
    assert metadata["authorization"] == "Bearer t"
    assert capsys.readouterr().out == "alice: order 17\n"


@pytest.mark.parametrize(("status", "printed"), [
    (rich(code_pb2.ALREADY_EXISTS, "held", error_details_pb2.ErrorInfo(
        reason="ALREADY_PURCHASED", metadata={"order_id": "17"})),
     "alice: ALREADY_EXISTS ALREADY_PURCHASED, order 17\n"),
    # ErrorInfo found after another detail type.
    (rich(code_pb2.FAILED_PRECONDITION, "sold out", retry_after(1),
          error_details_pb2.ErrorInfo(reason="SOLD_OUT", metadata={"activity_id": "7"})),
     "alice: FAILED_PRECONDITION SOLD_OUT\n"),
])
async def test_example_reads_error_info_from_the_status_details(
        example: ModuleType, capsys: pytest.CaptureFixture[str], status: status_pb2.Status,
        printed: str) -> None:
    await example_buy(example, AioBridge([ACTIVITY_SERVICE]), status)
    assert capsys.readouterr().out == printed


async def test_example_leaves_unavailable_to_its_caller(example: ModuleType) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await example_buy(example, AioBridge([ACTIVITY_SERVICE]), rich(
            code_pb2.UNAVAILABLE, "the database is unavailable", retry_after(1)))
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    retry = error_details_pb2.RetryInfo()
    assert rpc_status.from_call(raised.value).details[0].Unpack(retry)
    assert json_format.MessageToDict(retry) == {"retryDelay": "1s"}

