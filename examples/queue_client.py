"""Wait in a sale's waiting room (JoinQueue), then buy with the admission pass (Seckill), as
docs/WAITING_ROOM.md says: print the place as the line moves; at ADMITTED buy with the pass; a
final SOLD_OUT or ENDED stops; a stream the server ends with UNAVAILABLE and RetryInfo (its
lifetime, a shutdown) is joined again after the delay: the place is kept.

    . .run/stack.env && python examples/queue_client.py ACTIVITY_ID USER_ID
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


async def wait_in_line(stub: "activity_pb2_grpc.ActivityServiceAsyncStub", activity_id: int,
                       user_id: str) -> str | None:
    """The admission pass at the buyer's turn, or None when the line ends first."""
    request = activity_pb2.JoinQueueRequest(activity_id=activity_id, user_id=user_id)
    while True:
        try:
            async for update in stub.JoinQueue(request):
                state = activity_pb2.QueueState.Name(update.state)
                if update.state == activity_pb2.ADMITTED:
                    print(f"{state}: pass valid until {update.pass_expire_time.ToJsonString()}",
                          flush=True)
                    return update.admission_pass
                if update.state in (activity_pb2.QUEUE_SOLD_OUT, activity_pb2.QUEUE_ENDED):
                    print(state, flush=True)
                    return None
                if update.state == activity_pb2.PRE_QUEUED:
                    # The countdown goes by read_time, the database's clock.
                    to_start = update.start_time.ToSeconds() - update.read_time.ToSeconds()
                    print(f"{state}: the line is drawn in {max(0, to_start)} s", flush=True)
                else:
                    print(f"{state}: position {update.position}, {update.ahead} ahead",
                          flush=True)
            return None
        except grpc.aio.AioRpcError as err:
            delay = retry_delay_s(err)
            if err.code() != grpc.StatusCode.UNAVAILABLE or delay is None:
                print(f"{err.code().name}: {err.details()}")
                return None
            print(f"joining again in {delay:g} s: {err.details()}", flush=True)
            await asyncio.sleep(delay)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("activity_id", type=int)
    parser.add_argument("user_id")
    parser.add_argument("--activity-addr",
                        default=os.environ.get("SECKILL_ACTIVITY_ADDR", "127.0.0.1:50052"))
    args = parser.parse_args()
    async with grpc.aio.insecure_channel(args.activity_addr) as channel:
        stub = activity_pb2_grpc.ActivityServiceStub(channel)
        admission_pass = await wait_in_line(stub, args.activity_id, args.user_id)
        if admission_pass is None:
            return 1
        try:
            reply = await stub.Seckill(activity_pb2.SeckillRequest(
                activity_id=args.activity_id, user_id=args.user_id,
                admission_pass=admission_pass))
        except grpc.aio.AioRpcError as err:  # the sale still judges: stock, limits, one order
            print(f"{err.code().name}: {err.details()}")
            return 1
        print(f"order {reply.order.id}: {reply.order.quantity} unit(s)", flush=True)
        return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
