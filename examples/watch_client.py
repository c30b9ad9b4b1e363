"""Follow a sale through WatchActivity, with the resume rule of docs/WATCH.md: a stream the
server ends with UNAVAILABLE and RetryInfo (its lifetime, a shutdown) is called again after
the delay; NOT_FOUND stops. Prints one line per message until the sale has ENDED.

    . .run/stack.env && python examples/watch_client.py ACTIVITY_ID
"""

import argparse
import asyncio
import os

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from seckill.v1 import activity_pb2, activity_pb2_grpc


def retry_delay_s(err: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay among the error's details, or None without one."""
    info, status = error_details_pb2.RetryInfo(), rpc_status.from_call(err)
    for detail in status.details if status else ():
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


async def follow(stub: "activity_pb2_grpc.ActivityServiceAsyncStub", activity_id: int) -> int:
    request = activity_pb2.WatchActivityRequest(id=activity_id)
    request.min_interval.FromSeconds(1)  # units left at most once a second
    while True:
        try:
            async for view in stub.WatchActivity(request):
                state = activity_pb2.ActivityState.Name(view.state)
                # The countdown goes by read_time, the database's clock, not this machine's.
                to_end = view.activity.end_time.ToSeconds() - view.read_time.ToSeconds()
                print(f"revision {view.revision}: {state}, {view.units_left} left, "
                      f"ends in {max(0, to_end)} s", flush=True)
                if view.state == activity_pb2.ENDED:
                    return 0
        except grpc.aio.AioRpcError as err:
            delay = retry_delay_s(err)
            if err.code() != grpc.StatusCode.UNAVAILABLE or delay is None:
                print(f"{err.code().name}: {err.details()}")
                return 1
            print(f"resuming in {delay:g} s: {err.details()}", flush=True)
            await asyncio.sleep(delay)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("activity_id", type=int)
    parser.add_argument("--activity-addr",
                        default=os.environ.get("SECKILL_ACTIVITY_ADDR", "127.0.0.1:50052"))
    args = parser.parse_args()
    async with grpc.aio.insecure_channel(args.activity_addr) as channel:
        return await follow(activity_pb2_grpc.ActivityServiceStub(channel), args.activity_id)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
