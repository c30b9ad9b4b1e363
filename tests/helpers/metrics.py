"""The Prometheus endpoint of a service, read as the tests compare it before and after."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.polling import eventually
from tests.helpers.stack import Stack, start_stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@asynccontextmanager
async def metered_stack(db_url: str) -> AsyncIterator[tuple[Stack, int]]:
    """A stack serving metrics (off by default; port 0: any free), and the port to scrape: its
    three services run in this process, so one registry counts them all."""
    stack = await start_stack(db_url, SECKILL_METRICS_ADDR="127.0.0.1:0")
    try:
        assert stack.order.metrics_server is not None
        yield stack, stack.order.metrics_server.server_port
    finally:
        await stack.stop()


async def expiry_counted(port: int, before: Samples, timeout_s: float) -> Samples:
    """The samples once an expiry was counted since `before` (counted just after its commit:
    nothing announces it, so it is polled)."""
    async def counted() -> bool:
        return delta(before, scrape(port), "seckill_orders_total", state="expired") > 0

    await eventually(counted, "the expiry counted", timeout_s)
    return scrape(port)
