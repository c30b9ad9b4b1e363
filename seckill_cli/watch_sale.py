"""`seckill watch ACTIVITY`: a live line of a sale (WatchActivity), by the server's clock.

The line shows the state, the units left and a countdown to the next flip (start or end),
counted from each message's read_time (the database's clock) plus the time since it arrived,
so a wrong clock on this machine does not move the countdown. A stream the server ends with
UNAVAILABLE and RetryInfo (its lifetime, a shutdown) is resumed after the delay; the
command ends once the sale has ENDED (or at --until's state), or on Ctrl-C.
With --json: one JSON document per message, a line each.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from typing import cast

import grpc
from seckill.v1 import activity_pb2

from seckill_cli.client import Auth, CliError, Exit, Session, explain, resumable_after_s
from seckill_cli.render import Output, to_dict

STATE_NAMES = ("NOT_STARTED", "OPEN", "SOLD_OUT", "ENDED")
TICK_S = 0.2  # the line is redrawn this often between messages


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("activity", type=int, metavar="ACTIVITY")
    sub.add_argument("--interval", type=int, default=0, metavar="MS",
                     help="least time between messages that only change the units left "
                          "(default the server's, 500 ms; at least 100)")
    sub.add_argument("--until", choices=STATE_NAMES, default="ENDED",
                     help="stop once the sale is in this state (default ENDED)")


def countdown(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def live_line(view: activity_pb2.WatchActivityResponse, server_now: dt.datetime) -> str:
    """The line for `view` at `server_now` (the database's clock, extrapolated)."""
    activity = view.activity
    state = activity_pb2.ActivityState.Name(view.state)
    start = activity.start_time.ToDatetime(tzinfo=dt.UTC)
    end = activity.end_time.ToDatetime(tzinfo=dt.UTC)
    if server_now < start:
        clock = f"opens in {countdown((start - server_now).total_seconds())}"
    elif server_now < end:
        clock = f"ends in {countdown((end - server_now).total_seconds())}"
    else:
        clock = "ended"
    return (f"#{activity.id} {activity.name}: {state:<11} {view.units_left} left, {clock} "
            "(server clock)")


async def watch(args: argparse.Namespace, session: Session, out: Output) -> int:
    request = activity_pb2.WatchActivityRequest(id=args.activity)
    if args.interval:
        request.min_interval.FromMilliseconds(args.interval)
    until = activity_pb2.ActivityState.Value(args.until)
    stub = session.stub("activity")
    live = not out.as_json and sys.stdout.isatty()
    while True:
        call = stub.WatchActivity(request, metadata=session.metadata(Auth.NONE))
        try:
            if await _follow(call, out, until, live):
                return Exit.OK
        except grpc.aio.AioRpcError as exc:
            delay_s = resumable_after_s(exc)
            if delay_s is None:
                raise explain(exc, "activity", session.addrs["activity"],
                              auth=Auth.NONE) from None
            # The stream's lifetime, or a server shutting down: resume (a whole view first).
            await asyncio.sleep(delay_s)
        finally:
            call.cancel()


async def _follow(call: grpc.aio.UnaryStreamCall, out: Output, until: int, live: bool
                  ) -> bool:
    """Shows the stream's messages; True once one is in the `until` state."""
    view: activity_pb2.WatchActivityResponse | None = None
    offset_s = 0.0  # server clock minus this machine's monotonic clock, at the last message
    next_read = asyncio.ensure_future(call.read())
    try:
        while True:
            done, _ = await asyncio.wait({next_read}, timeout=TICK_S if live else None)
            if done:
                message = next_read.result()
                if message is grpc.aio.EOF:
                    raise CliError("the server ended the stream", Exit.UNREACHABLE)
                view = cast(activity_pb2.WatchActivityResponse, message)
                offset_s = view.read_time.ToDatetime(tzinfo=dt.UTC).timestamp() - time.monotonic()
                if out.as_json:
                    print(json.dumps(to_dict(view), ensure_ascii=False), flush=True)
                elif not live:
                    print(live_line(view, _server_now(offset_s)), flush=True)
                if view.state == until:
                    if live:
                        _draw(live_line(view, _server_now(offset_s)), end="\n")
                    return True
                next_read = asyncio.ensure_future(call.read())
            if live and view is not None:
                _draw(live_line(view, _server_now(offset_s)))
    finally:
        next_read.cancel()


def _server_now(offset_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.monotonic() + offset_s, dt.UTC)


def _draw(line: str, end: str = "") -> None:
    sys.stdout.write("\r\x1b[2K" + line + end)
    sys.stdout.flush()
