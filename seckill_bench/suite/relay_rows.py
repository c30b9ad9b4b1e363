"""Rows (n) and (r): what order events cost a flash sale, and how fast the relay gets them out.

(n) is the flash sale of (b), the same users and stock, on an activity service that writes no
events (SECKILL_EVENTS_ENABLED=false), in the same run: (b) / (n) is the outbox's cost on the
sale (target >= 0.9). (r) is the relay during (b): a plain NATS subscriber on `seckill.orders.>`
(`RelayProbe`, in a thread of its own) notes each event's arrival against its create_time (the
database's clock, on this machine), so lag = commit to delivery through the outbox, the watermark
and JetStream; events/s = the sale's events over the span from the first to the last arrival;
CPU per event = the order process's CPU during (b) as (b)'s own meter read it (cpu.CpuMeter: from
the first call until every process went quiet, so the relay's tail is in, and before the
invariant check, whose listing of every order is the order service's work, not the relay's),
over (b)'s events: the relay's whole cost, its idle polls and the sequencer included (the order
service does nothing else during a sale).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nats
from nats.aio.msg import Msg
from seckill.v1 import order_events_pb2

from seckill_stack.invariants import percentile
from seckill_stack.launcher import StackError

if TYPE_CHECKING:
    from seckill_bench.suite.scenarios import Row, Suite

CATCH_UP_S = 120.0  # the relay's last events after the sale, at most


@dataclass
class Arrival:
    event_id: str
    activity_id: int
    at: float  # time.time() of delivery
    lag_ms: float  # delivery minus the event's create_time


@dataclass
class RelayProbe:
    """Subscribes to every order event the relay publishes, while in its `with` block."""

    url: str
    arrivals: list[Arrival] = field(default_factory=list)
    _stop: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def __enter__(self) -> RelayProbe:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise StackError(f"cannot subscribe to NATS at {self.url}: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            nc = await nats.connect(self.url)
        except Exception as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()
            return

        async def arrived(message: Msg) -> None:
            event = order_events_pb2.OrderEvent.FromString(message.data)
            now = time.time()
            lag_ms = (now - event.create_time.ToMicroseconds() / 1e6) * 1000
            self.arrivals.append(Arrival(event.event_id, event.order.activity_id, now, lag_ms))

        await nc.subscribe("seckill.orders.>", cb=arrived)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def of(self, activity_id: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.activity_id == activity_id]

    def wait_for(self, activity_id: int, count: int) -> None:
        """Until `count` events of the activity arrived (the relay catching up after a sale)."""
        deadline = time.monotonic() + CATCH_UP_S
        while len({a.event_id for a in self.of(activity_id)}) < count:
            if time.monotonic() > deadline:
                raise StackError(f"the relay delivered {len(self.of(activity_id))} of {count}"
                                 f" events within {CATCH_UP_S:g} s after the sale")
            time.sleep(0.1)  # another thread's arrivals: nothing to await here


def without_events(suite: Suite) -> Row:
    """(n): the flash sale of (b) on the activity service that writes no events."""
    return suite.flash_sale("n", "coalesced", label="activity-no-events",
                            title="flash sale, coalesced, events off (SECKILL_EVENTS_ENABLED"
                                  "=false)")


def relay_row(suite: Suite, probe: RelayProbe) -> Row:
    """(r): the relay's events/s and its commit-to-delivery lag during (b)."""
    from seckill_bench.suite.scenarios import Row

    activity = suite.flash_sale_activity
    if activity is None:
        raise StackError("row (b) did not run: nothing to measure the relay on")
    probe.wait_for(activity, suite.settings.flash_stock)
    arrivals = probe.of(activity)
    sale = suite.results.row("b")
    order_ms = sale.cpu_ms.get("order") if sale is not None else None
    calls = sale.calls if sale is not None else None
    cpu_ms = (order_ms * calls / len({a.event_id for a in arrivals})
              if order_ms is not None and calls and arrivals else None)
    repeats = len(arrivals) - len({a.event_id for a in arrivals})
    lags = sorted(a.lag_ms for a in arrivals)
    span = max(a.at for a in arrivals) - min(a.at for a in arrivals)
    rate = len(arrivals) / span if span > 0 else None
    return Row("r", "the relay to NATS JetStream during (b): CREATED events", calls=len(arrivals),
               seconds=span, rps=rate, p50=percentile(lags, 50), p90=percentile(lags, 90),
               p99=percentile(lags, 99), max_ms=lags[-1] if lags else None,
               outcome=f"{len(arrivals) - repeats:,} events, {repeats} delivered twice; lag ="
                       " commit to delivery (outbox, watermark, JetStream, a subscriber); "
                       + ("order process CPU per event: ?" if cpu_ms is None else
                          f"order process CPU per event: {cpu_ms:.3f} ms"))
