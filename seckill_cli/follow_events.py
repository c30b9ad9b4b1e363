"""`seckill events`: the order events after a revision (ListOrderEvents); with --follow, then
the ones that commit from there on (WatchOrderEvents), until Ctrl-C.

A stream the server ends with UNAVAILABLE and RetryInfo (its lifetime, a shutdown) is called
again after the last revision received, so nothing is shown twice or skipped (docs/EVENTS.md).
One line per event; with --json one JSON document per event, a line each.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import grpc
from seckill.v1 import order_events_pb2, order_events_pb2_grpc, order_pb2

from seckill_cli.client import Auth, Exit, Session, explain, resumable_after_s
from seckill_cli.render import Output, to_dict

Event = order_events_pb2.OrderEvent
Stub = order_events_pb2_grpc.OrderEventServiceStub  # served by the order service's processes


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--after", type=int, default=0, metavar="REVISION",
                     help="only events after this revision (default: the oldest kept)")
    sub.add_argument("--follow", action="store_true",
                     help="then wait for new events and show them as they commit")


def line(event: Event) -> str:
    order = event.order
    return (f"{event.revision} {event.create_time.ToJsonString()} "
            f"{Event.Type.Name(event.type):<9} order {order.id} of {order.user_id!r} "
            f"({order_pb2.OrderState.Name(order.state)}, activity {order.activity_id})")


def show(events: list[Event], out: Output) -> None:
    for event in events:
        print(json.dumps(to_dict(event), ensure_ascii=False) if out.as_json else line(event),
              flush=True)


async def events(args: argparse.Namespace, session: Session, out: Output) -> int:
    after = args.after
    token = ""
    while True:  # the list, page by page
        page = await session.call("order", "ListOrderEvents",
                                  order_events_pb2.ListOrderEventsRequest(
                                      after_revision=after, page_size=1000, page_token=token),
                                  auth=Auth.ADMIN, stub=Stub)
        show(list(page.events), out)
        token = page.next_page_token
        if not token:
            after = page.revision
            break
    if not args.follow:
        return Exit.OK
    stub = Stub(session.channel("order"))
    while True:
        call = stub.WatchOrderEvents(
            order_events_pb2.WatchOrderEventsRequest(after_revision=after),
            metadata=session.metadata(Auth.ADMIN))
        try:
            async for message in call:
                show(list(message.events), out)
                after = message.revision
        except grpc.aio.AioRpcError as exc:
            delay_s = resumable_after_s(exc)
            if delay_s is None:
                raise explain(exc, "order", session.addrs["order"], auth=Auth.ADMIN) from None
            await asyncio.sleep(delay_s)  # then resume after the last revision received
        finally:
            call.cancel()
