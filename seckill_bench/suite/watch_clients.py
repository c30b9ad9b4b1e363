"""Row (f)'s watcher clients: `count` WatchActivity streams per client process, each
message's arrival time and units recorded between a `start` and a `stop` line on stdin.
Watchers run in processes of their own (`ClientProcesses`), so the clients' CPU delays no
message; `python -m seckill_bench.suite.watch_clients ADDR ACTIVITY COUNT` is one of them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc

from seckill_stack.launcher import StackError
from seckill_stack.services import REPO, python_env

CHANNELS = 16  # watcher connections: SO_REUSEPORT spreads them over the workers
SAMPLES_LINE_LIMIT = 1 << 28  # a client's samples come back as one JSON line


def channels(addr: str, count: int) -> list[grpc.aio.Channel]:
    # A distinct argument per channel: channels with equal arguments share one connection.
    return [grpc.aio.insecure_channel(addr, options=[("seckill.bench.channel", i),
                                                     ("grpc.use_local_subchannel_pool", 1)])
            for i in range(count)]


class Watchers:
    """`count` streams of one activity; each message's arrival (wall clock) and units."""

    def __init__(self, stubs: list[activity_pb2_grpc.ActivityServiceAsyncStub], activity_id: int,
                 count: int) -> None:
        request = activity_pb2.WatchActivityRequest(id=activity_id)
        request.min_interval.FromSeconds(1)
        self.calls = [stubs[i % len(stubs)].WatchActivity(request) for i in range(count)]
        self.first = 0
        self.all_first = asyncio.Event()
        self.recording = False
        self.samples: list[tuple[float, int]] = []  # (arrival, units_left) while recording
        self.tasks = [asyncio.ensure_future(self._read(call)) for call in self.calls]

    async def _read(self, call: grpc.aio.UnaryStreamCall) -> None:
        first = True
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            if first:
                first = False
                self.first += 1
                if self.first == len(self.calls):
                    self.all_first.set()
            elif self.recording:
                self.samples.append((time.time(), message.units_left))  # type: ignore[attr-defined]

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def watch_client(addr: str, activity_id: int, count: int) -> None:
    """A watcher client process: `count` watchers; prints `ready` once every one
    has its first message, records from a `start` line on stdin to a `stop` line, then prints
    the samples as JSON and ends."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    chans = channels(addr, max(1, CHANNELS // 2))
    watchers = Watchers([activity_pb2_grpc.ActivityServiceStub(c) for c in chans],
                        activity_id, count)
    await watchers.all_first.wait()
    print("ready", flush=True)
    assert (await reader.readline()).strip() == b"start"
    watchers.recording = True
    assert (await reader.readline()).strip() == b"stop"
    watchers.recording = False
    print(json.dumps(watchers.samples), flush=True)
    await watchers.close()
    for channel in chans:
        await channel.close()


class ClientProcesses:
    """Watchers spread over client processes, so the clients' own CPU delays no message."""

    def __init__(self, addr: str, activity_id: int, count: int, procs: int) -> None:
        self.args = [(addr, activity_id, count // procs + (i < count % procs))
                     for i in range(procs)]
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for addr, activity_id, count in self.args:
            self.procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "seckill_bench.suite.watch_clients", addr,
                str(activity_id), str(count), cwd=REPO, env=python_env(dict(os.environ)),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=SAMPLES_LINE_LIMIT))
        for proc in self.procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if line.strip() != b"ready":
                raise StackError(f"a watcher client failed: {line!r}")

    def say(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(word.encode() + b"\n")

    async def samples(self) -> list[tuple[float, int]]:
        self.say("stop")
        found: list[tuple[float, int]] = []
        for proc in self.procs:
            assert proc.stdout is not None
            found += [tuple(s) for s in json.loads(await proc.stdout.readline())]
            await proc.wait()
        return found


def main(argv: list[str] | None = None) -> int:
    addr, activity_id, count = argv if argv is not None else sys.argv[1:]
    asyncio.run(watch_client(addr, int(activity_id), int(count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
