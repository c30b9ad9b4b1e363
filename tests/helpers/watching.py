"""Opening a WatchActivity stream and reading it: until a message says what a test waits
for, to its end, and the times it carries."""

from __future__ import annotations

from typing import Any

from seckill.v1 import activity_pb2, activity_pb2_grpc


def watch(stub: activity_pb2_grpc.ActivityServiceAsyncStub, activity_id: int,
          min_interval_ms: int | None = None) -> Any:
    """The stream (a grpc.aio.UnaryStreamCall: its stub types it as an iterator only)."""
    request = activity_pb2.WatchActivityRequest(id=activity_id)
    if min_interval_ms is not None:
        request.min_interval.FromMilliseconds(min_interval_ms)
    return stub.WatchActivity(request)
