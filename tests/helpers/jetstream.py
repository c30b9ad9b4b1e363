"""A durable JetStream consumer of the order events (examples/events_consumer.py's), for the
tests that check every event arrives exactly once."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

from seckill.v1 import order_events_pb2

from tests.helpers.polling import eventually
from tests.helpers.stack import (
    REPO,
)

Event = order_events_pb2.OrderEvent


def example(name: str) -> Any:
    """A module of examples/, as its readers run it (a file, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


consume = example("events_consumer").consume


class Consumer:
    """A durable consumer in the background: the events it handled, and the repeats it
    skipped (the relay's at-least-once, seen by a de-duplicating consumer)."""

    def __init__(self, url: str, durable: str) -> None:
        self.events: list[Event] = []
        self.seen: set[str] = set()
        self.repeats = 0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(url, durable))

    async def _run(self, url: str, durable: str) -> None:
        async def handle(event: Event) -> None:
            self.events.append(event)

        while not self._stop.is_set():  # the server may restart under it: connect again
            try:
                self.repeats += await consume(url, durable, handle, self.seen, stop=self._stop)
            except Exception:
                await asyncio.sleep(0.2)  # the broker is away: a timer, nothing to await

    async def holds(self, count: int) -> None:
        async def enough() -> bool:
            return len(self.events) >= count
        await eventually(enough, f"the consumer holds {count} events", timeout_s=60)

    async def close(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 10)
