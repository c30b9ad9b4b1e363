"""Latency between the database hosts without netem: a TCP relay in front of a node's group
communication port that holds every byte for a fixed delay, each way.

    python -m seckill_cluster.delay_relay --listen 10.77.0.11:4567 --to 127.0.1.1:4567 --ms 2

Used by `make bench-cluster` where the kernel has no `sch_netem` (some VM kernels): the node
listens for its peers on a loopback address only it can reach, the relay listens on the
host's address in its place, and the peers, which dial the addresses of the cluster address
list, reach each other through the relays. Only replication is delayed (state transfers and
the app hosts' connections are not), as netem on the database hosts' links to each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay_s: float) -> None:
    """Copies `reader` to `writer`, each chunk `delay_s` after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)  # the delay itself: nothing else to await
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay_s, data))
        queue.put_nowait((0.0, b""))
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        writer.close()


async def relay(listen: str, to: str, delay_s: float) -> None:
    to_host, to_port = to.rsplit(":", 1)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # From the relay's own address, not the node's: a node that saw a connection
            # from its own address would take the peer for itself.
            up_reader, up_writer = await asyncio.open_connection(
                to_host, int(to_port), local_addr=(host, 0))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, delay_s),
                             _pipe(up_reader, writer, delay_s), return_exceptions=True)

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(connection, host, int(port))
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m seckill_cluster.delay_relay")
    parser.add_argument("--listen", required=True, help="host:port to accept on")
    parser.add_argument("--to", required=True, help="host:port to relay to")
    parser.add_argument("--ms", type=float, required=True, help="delay each way, in ms")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay(args.listen, args.to, args.ms / 1000))


if __name__ == "__main__":
    main()
