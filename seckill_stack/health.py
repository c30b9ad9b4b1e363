"""Asks gRPC servers how they are, through the standard health protocol.

`probe` asks once; `wait_serving` waits for SERVING. As a command (compose's healthcheck runs it
as `python -m seckill_stack.health`):

    python -m seckill_stack.health 127.0.0.1:50051 127.0.0.1:50052 --timeout 60 \
        [--pid 1234 ...] [--service NAME]

Exits 0 once every address answers SERVING, 1 on timeout (naming each address still not
serving and what it last said) or as soon as a process given with --pid exits: a service that
crashed on start-up will not come back, so waiting the full timeout would only hide it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seckill_common.client.tls import ClientTLS

SERVING = health_pb2.HealthCheckResponse.SERVING
# gRPC's default reconnect backoff grows to minutes; a server that binds a few seconds
# after we start should be seen within a fraction of a second.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


async def wait_serving(addr: str, service: str, last_seen: dict[str, str],
                       tls: ClientTLS | None = None) -> None:
    """Returns once `addr` reports SERVING; records what it last said in `last_seen`."""
    # By default TLS as our SECKILL_TLS_* say, e.g. in a compose healthcheck.
    async with (tls or ClientTLS.from_env()).channel(addr, CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        while True:
            try:
                # Watch pushes every status change, so there is nothing to poll; wait_for_ready
                # holds the call until the server accepts connections.
                async for response in stub.Watch(request, wait_for_ready=True):
                    last_seen[addr] = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        response.status
                    )
                    if response.status == SERVING:
                        return
                last_seen[addr] = "health stream ended"
            except grpc.aio.AioRpcError as exc:
                # E.g. the server restarted, or stopped while shutting down.
                last_seen[addr] = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.2)  # the stream failed: retry without spinning


async def probe(addr: str, timeout_s: float = 2.0, tls: ClientTLS | None = None) -> str | None:
    """What `addr` answers to one health Check ("SERVING", "NOT_SERVING", ...), or None when
    nothing answers there."""
    async with (tls or ClientTLS.from_env()).channel(addr) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            # UNAVAILABLE / DEADLINE_EXCEEDED: no gRPC server there; anything else is one.
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def process_exit(pid: int) -> None:
    """Returns when process `pid` exits (a zombie counts as exited)."""
    try:
        fd = os.pidfd_open(pid)  # Linux: readable once the process has terminated
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (not Linux): only the timeout applies
        await asyncio.Future()
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, exited.set_result, None)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def run(addrs: list[str], pids: list[int], service: str, timeout_s: float,
              tls: ClientTLS | None = None, announce: bool = True) -> int:
    """0 once every address is SERVING; 1 (and why on stderr) on timeout or a process exit.
    `announce`: a "SERVING" line on stdout at the end (callers that report it themselves say
    no: swapping sys.stdout instead would race between concurrent waits)."""
    last_seen = dict.fromkeys(addrs, "no answer (not listening yet?)")
    serving = [asyncio.create_task(wait_serving(a, service, last_seen, tls)) for a in addrs]
    watchers = {asyncio.create_task(process_exit(p)): p for p in pids}
    try:
        async with asyncio.timeout(timeout_s):
            pending: set[asyncio.Task[None]] = set(serving)
            while pending:
                done, _ = await asyncio.wait(
                    pending | set(watchers), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done & set(watchers):
                    print(f"wait_serving: process {watchers[task]} exited before all addresses "
                          f"were serving", file=sys.stderr)
                    return 1
                pending -= done
    except TimeoutError:
        waiting = [f"  {a}: {last_seen[a]}" for a, t in zip(addrs, serving, strict=True)
                   if not t.done()]
        print(f"wait_serving: not SERVING after {timeout_s:g}s:", *waiting, sep="\n",
              file=sys.stderr)
        return 1
    finally:
        for task in [*serving, *watchers]:
            task.cancel()
        await asyncio.gather(*serving, *watchers, return_exceptions=True)
    if announce:
        print(f"wait_serving: SERVING: {' '.join(addrs)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seckill_stack.health", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("addrs", nargs="+", metavar="ADDR", help="host:port of a gRPC server")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="fail at once if this process exits (repeatable)")
    parser.add_argument("--service", default="",
                        help='health service name to check (default "": the whole server)')
    args = parser.parse_args(argv)
    return asyncio.run(run(args.addrs, args.pid, args.service, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
