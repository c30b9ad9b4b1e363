"""The h2load rows' parts (seckill_bench/suite/h2load.py): the gRPC frames h2load sends are
the services' messages, h2load's counts and per-call times are read, and the Python check
tells the gRPC answer h2load cannot see."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from seckill.v1 import activity_pb2

from seckill_bench.suite.h2load import HEALTH, SECKILL
from seckill_bench.suite.h2load_client import (
    grpc_answer,
    grpc_frame,
    grpc_timeout,
    install_h2load,
    run_h2load,
)
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import Stack


def test_a_frame_is_the_length_prefixed_message() -> None:
    request = activity_pb2.SeckillRequest(activity_id=7, user_id="late")
    frame = grpc_frame(request)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(frame) - 5
    assert activity_pb2.SeckillRequest.FromString(frame[5:]) == request
    assert grpc_timeout(1.0) == "1000m" and grpc_timeout(0.0001) == "1m"


async def test_h2load_runs_are_counted_and_checked(stack: Stack) -> None:
    binary = install_h2load()
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    await stack.activities.Seckill(activity_pb2.SeckillRequest(activity_id=activity.id,
                                                               user_id="holder"))
    sold_out = grpc_frame(activity_pb2.SeckillRequest(activity_id=activity.id, user_id="late"))
    address = stack.activity.address
    # The services run in this process's loop: the blocking client calls go to threads.
    assert await asyncio.to_thread(grpc_answer, address, SECKILL, sold_out) == (
        "FAILED_PRECONDITION/SOLD_OUT")
    run = await asyncio.to_thread(
        run_h2load, binary, address, HEALTH, grpc_frame(health_pb2.HealthCheckRequest()),
        in_flight=8, clients=2, requests=200, deadline_s=5.0)
    assert (run.requests, run.succeeded, run.failed, run.errored) == (200, 200, 0, 0)
    assert len(run.latencies_s) == 200 and run.within(5.0) == 200
    assert run.rps > 0 and run.seconds > 0
    p50, p99 = run.percentile_ms(0.5), run.percentile_ms(0.99)
    assert p50 is not None and p99 is not None and 0 < p50 <= p99
