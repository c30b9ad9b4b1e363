"""The cluster's delaying relay: bytes arrive intact, in order, each way `ms` later."""

from __future__ import annotations

import asyncio
import contextlib
import time

from seckill_cluster.delay_relay import relay
from tests.helpers.stack import free_port

DELAY_S = 0.05


async def test_a_round_trip_through_the_relay_takes_twice_the_delay() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    port = free_port()
    relaying = asyncio.create_task(relay(f"127.0.0.1:{port}", target, DELAY_S))
    try:
        for _ in range(100):  # the relay binds asynchronously: nothing to await
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            await asyncio.sleep(0.01)
        message = bytes(range(256)) * 1000
        started = time.monotonic()
        writer.write(message)
        await writer.drain()
        echoed = await reader.readexactly(len(message))
        assert echoed == message
        assert time.monotonic() - started >= 2 * DELAY_S
        writer.close()
    finally:
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        server.close()
