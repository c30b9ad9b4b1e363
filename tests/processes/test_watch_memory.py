"""WatchActivity streams that clients cancel leak nothing: 20,000 connect/disconnect cycles
against an activity service run as its own process (shipped defaults), its RSS read from /proc.

grpc/grpc#43360 reports native memory leaked per call by server-streaming handlers that
swallow CancelledError; activity_svc.watch never does, and this is the check.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from seckill.v1 import activity_pb2, activity_pb2_grpc

from tests.helpers.factories import make_activity, make_product
from tests.helpers.processes import start_processes
from tests.helpers.stack import Stack

CYCLES = int(os.environ.get("SECKILL_TEST_WATCH_CYCLES", "20000"))
WARM_UP = 2_000  # allocator arenas, caches and grpc's pools settle first
CONCURRENCY = 32
# RSS may grow by at most this over the cycles after the warm-up: 64 bytes a cycle at 20,000
# cycles is 1.25 MiB, so a leak of a call's native state (kilobytes) shows many times over.
RSS_BOUND_BYTES = 8 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def cycles(stub: activity_pb2_grpc.ActivityServiceStub, activity_id: int,
                 count: int) -> None:
    """`count` streams, CONCURRENCY at a time: each reads its first message (or, one in
    four, nothing) and cancels."""
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            call: Any = stub.WatchActivity(activity_pb2.WatchActivityRequest(id=activity_id))
            if i % 4:
                message = await call.read()
                assert message is not grpc.aio.EOF
            call.cancel()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@pytest.mark.slow
async def test_connect_disconnect_cycles_keep_rss_flat(stack: Stack, tmp_path: Path) -> None:
    product = await make_product(stack)
    activity = await make_activity(stack, product.id)
    # 20,000 access lines are not the test.
    async with start_processes("activity", 1, stack.db_url, tmp_path, peers=stack,
                               SECKILL_LOG_LEVEL="WARNING") as extra:
        stub, pid = extra.activities[0], extra[0].pid
        assert pid is not None
        await cycles(stub, activity.id, WARM_UP)
        before = rss_bytes(pid)
        await cycles(stub, activity.id, CYCLES)
        after = rss_bytes(pid)
        print(f"RSS before {before / 2**20:.1f} MiB, after {CYCLES} cycles "
              f"{after / 2**20:.1f} MiB ({(after - before) / CYCLES:+.1f} B/cycle)")
        assert after - before <= RSS_BOUND_BYTES, (before, after)
