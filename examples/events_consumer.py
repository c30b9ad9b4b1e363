"""Follow the order events on NATS JetStream with a durable consumer, idempotent by event id
(docs/EVENTS.md). The relay delivers each event at least once; a consumer that remembers the
event ids it has handled, and skips one it has seen, handles each exactly once.

    python examples/events_consumer.py nats://127.0.0.1:4222 --durable fulfilment

Prints one line per event handled. A real consumer records the event id in the same
transaction as its own effect (a shipment row, a sent e-mail's record), so that a crash
between the two cannot handle an event twice; here the ids live in a file (--seen FILE).
"""

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from seckill.v1 import order_events_pb2, order_pb2

STREAM = "ORDER_EVENTS"
Event = order_events_pb2.OrderEvent
Handler = Callable[[Event], Awaitable[None]]


async def consume(url: str, durable: str, handle: Handler, seen: set[str], *,
                  stream: str = STREAM, stop: asyncio.Event | None = None,
                  idle_s: float | None = None) -> int:
    """Hands each new event to `handle` once, in stream order, acknowledging every message
    (a repeat too: it was handled before). Returns the number of repeats skipped; ends when
    `stop` is set or after `idle_s` without a message."""
    nc = await nats.connect(url)
    repeats = 0
    try:
        js = nc.jetstream()
        # Durable: JetStream remembers what this consumer acknowledged, across restarts.
        sub = await js.pull_subscribe(
            "seckill.orders.>", durable=durable, stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                  deliver_policy=DeliverPolicy.ALL, ack_wait=30))
        idle = 0.0
        while not (stop is not None and stop.is_set()):
            try:
                messages = await sub.fetch(100, timeout=0.5)
            except TimeoutError:  # nats.errors.TimeoutError, or the builtin one that nats-py
                # raises when the poll's deadline ran out before its second request
                idle += 0.5
                if idle_s is not None and idle >= idle_s:
                    break
                continue
            idle = 0.0
            for message in messages:
                event = Event.FromString(message.data)
                if event.event_id in seen:
                    repeats += 1  # at least once: this one came again
                else:
                    await handle(event)
                    seen.add(event.event_id)
                await message.ack()
    finally:
        await nc.close()
    return repeats


def load_seen(path: str) -> set[str]:
    """The event ids handled before (a file of one id a line), if any."""
    if not path or not os.path.exists(path):
        return set()
    with open(path) as ids:
        return {line.strip() for line in ids if line.strip()}


def remember(path: str, event_id: str) -> None:
    with open(path, "a") as ids:
        ids.write(event_id + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get(
        "SECKILL_EVENTS_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--durable", default="example")
    parser.add_argument("--seen", default="", help="file of handled event ids (one a line)")
    parser.add_argument("--idle", type=float, default=None,
                        help="stop after this many seconds without an event")
    args = parser.parse_args()

    async def handle(event: Event) -> None:
        order = event.order
        print(f"{event.revision} {Event.Type.Name(event.type)} order {order.id}"
              f" ({order_pb2.OrderState.Name(order.state)}, user {order.user_id})", flush=True)
        if args.seen:
            await asyncio.to_thread(remember, args.seen, event.event_id)

    asyncio.run(consume(args.url, args.durable, handle, load_seen(args.seen), idle_s=args.idle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
