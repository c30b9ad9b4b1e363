"""A TCP proxy on loopback whose link can go silent: the gray failure of a network that stops
carrying packets without a reset (a dead NIC, a partition behind a load balancer).

`SilentLink(port)` listens on 127.0.0.1 and forwards every connection to 127.0.0.1:`port`.
`blackhole()` stops forwarding in both directions: nothing is closed or reset, bytes sent
meanwhile wait in the proxy (and the kernels' buffers), and a connection made meanwhile is
accepted (as a load balancer would) but hears nothing. `heal()` forwards again: the bytes held
arrive late, as after a partition shorter than TCP's retransmissions; `heal(lose_held=True)`
instead leaves every connection that lived through the silence silent for good, as a
middlebox that lost their state would, so only new connections get through: the half-open
connection that aiomysql, which has no read timeout, would wait on forever.

It lives with the stack launcher, not in tests/, because the fault harness that schedules
silences between a service and its database is a tool too, and tools never import tests/.
Bounded: at most `max_connections` at once (more are closed at once), at most one read's
chunk held per direction, and `close()` ends every connection within CLOSE_WAIT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024  # most bytes one direction reads, and holds while silent
CONNECT_TIMEOUT_S = 3.0  # to dial the target once a connection may pass
CLOSE_WAIT_S = 2.0  # for the connections' tasks to end once cancelled


@dataclass(eq=False)
class _Connection:
    """One client's connection and its fate across silences."""

    task: asyncio.Task[None] | None = None
    held: bool = False  # open during a silence
    lost: bool = False  # healed with lose_held: silent for good
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class SilentLink:
    """Forwards 127.0.0.1:`port` (after `start`) to 127.0.0.1:`target_port`; see the module."""

    def __init__(self, target_port: int, *, max_connections: int = 256) -> None:
        self.target_port = target_port
        self.max_connections = max_connections
        self.port = 0
        self.holding = 0  # chunks read and held back by a silence right now (tests await it)
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def silent(self) -> bool:
        return not self._forwarding.is_set()

    def url_base(self, user: str = "root") -> str:
        """The mysql:// URL base through this link (append /database)."""
        return f"mysql://{user}@{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        """Stops forwarding both ways, closing nothing."""
        self._forwarding.clear()
        for connection in self._connections:
            connection.held = True

    def heal(self, *, lose_held: bool = False) -> None:
        """Forwards again; with `lose_held`, not for the connections open during the silence."""
        for connection in self._connections:
            connection.lost = connection.lost or (lose_held and connection.held)
            connection.held = False
        self._forwarding.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = {c.task for c in self._connections if c.task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        for connection in self._connections:
            for writer in connection.writers:
                writer.transport.abort()
        self._connections.clear()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await self._server.wait_closed()

    async def _passable(self, connection: _Connection) -> None:
        """Returns once `connection`'s bytes may pass; for a lost connection, never (its task
        is cancelled by `close`)."""
        while True:
            if connection.lost:
                await asyncio.Future()  # silent for good, until close()
            if self._forwarding.is_set():
                return
            connection.held = True
            await self._forwarding.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            writer.transport.abort()
            return
        connection = _Connection(task=asyncio.current_task(), held=self.silent,
                                 writers=[writer])
        self._connections.add(connection)
        try:
            await self._passable(connection)  # a connection made during a silence hears nothing
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                target_reader, target_writer = await asyncio.open_connection(
                    LOOPBACK, self.target_port)
            connection.writers.append(target_writer)
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(reader, target_writer, connection))
                pumps.create_task(self._pump(target_reader, writer, connection))
        except (OSError, TimeoutError):
            pass  # the target refused or reset: the client sees its connection end
        except asyncio.CancelledError:
            pass  # close(): ending quietly, as the stream server expects of its callbacks
        finally:
            for each in connection.writers:
                each.transport.abort()
            self._connections.discard(connection)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    connection: _Connection) -> None:
        """One direction: read a chunk, hold it while silent, pass it on; an end (EOF) is held
        and passed on the same way."""
        try:
            while True:
                data = await reader.read(CHUNK)  # read even while silent, to count what is held
                if self.silent or connection.lost:
                    self.holding += 1
                    try:
                        await self._passable(connection)
                    finally:
                        self.holding -= 1
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            # A reset on one side: the other side's connection ends too.
            for each in connection.writers:
                each.transport.abort()
