"""`seckill buy` on an activity with a waiting room: wait in line (JoinQueue), showing the
place as it moves, then buy with the admission pass (docs/WAITING_ROOM.md). A stream the server
ends with UNAVAILABLE and RetryInfo (its lifetime, a shutdown) is joined again after the
delay: the place is kept.
"""

from __future__ import annotations

import asyncio

import grpc
from seckill.v1 import activity_pb2

from seckill_cli.client import Auth, CliError, Exit, Session, explain, resumable_after_s
from seckill_cli.render import Output


def place_line(update: activity_pb2.QueueUpdate) -> str:
    """What a waiting buyer is told of one message."""
    if update.state == activity_pb2.PRE_QUEUED:
        return ("in the pre-queue: the line is drawn at random at the start "
                f"({update.start_time.ToDatetime().isoformat(timespec='seconds')}Z)")
    wait = (f", about {update.estimated_wait.ToMilliseconds() / 1000:.0f} s"
            if update.HasField("estimated_wait") else "")
    return f"waiting: position {update.position} ({update.ahead} ahead{wait})"


async def wait_in_line(session: Session, out: Output, activity_id: int, user: str,
                       quantity: int) -> str:
    """The admission pass at the buyer's turn; CliError (REFUSED) when the line ends first,
    sold out or with the sale."""
    request = activity_pb2.JoinQueueRequest(activity_id=activity_id, user_id=user,
                                            quantity=quantity)
    stub = session.stub("activity")
    while True:
        call = stub.JoinQueue(request, metadata=session.metadata(Auth.USER))
        try:
            async for update in call:
                if update.state == activity_pb2.ADMITTED:
                    if not out.as_json:
                        out.say("admitted: buying with the pass")
                    return str(update.admission_pass)
                if update.state in (activity_pb2.QUEUE_SOLD_OUT, activity_pb2.QUEUE_ENDED):
                    reason = ("SOLD_OUT" if update.state == activity_pb2.QUEUE_SOLD_OUT
                              else "ENDED")
                    text = ("sold out: no unit is left for the buyers waiting (join again "
                            "later: the place is kept, units may come back)"
                            if reason == "SOLD_OUT" else "the sale has ended")
                    raise CliError(text, Exit.REFUSED, {"code": "FAILED_PRECONDITION",
                                                        "reason": reason, "message": text})
                if not out.as_json:
                    out.say(place_line(update))
            raise CliError("the server ended the stream", Exit.UNREACHABLE)
        except grpc.aio.AioRpcError as exc:
            delay_s = resumable_after_s(exc)
            if delay_s is None:
                raise explain(exc, "activity", session.addrs["activity"],
                              auth=Auth.USER) from None
            await asyncio.sleep(delay_s)
        finally:
            call.cancel()
