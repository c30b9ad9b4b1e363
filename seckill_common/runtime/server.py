"""Server lifecycle shared by the three services.

Start-up: wait for the database, apply migrations (or, with SECKILL_MIGRATE_ON_START=false,
refuse to start on a schema older than the code), log the connection budget, open the pool,
add servicers, health (NOT_SERVING), reflection, start, then SERVING once the database answers.
A monitor keeps health in step with the database afterwards. Shutdown (SIGTERM/SIGINT):
NOT_SERVING, serving on for SECKILL_DRAIN_DELAY while load balancers notice, `stop(grace)` so
in-flight calls finish, then the service's own cleanup and the pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seckill_common.api.errors import Unavailable
from seckill_common.config import Settings
from seckill_common.database.db import Database, create_pool, watch_pool
from seckill_common.database.migrations import SchemaBehind, check_schema, migrate
from seckill_common.database.startup import (
    connection_limit,
    log_connection_budget,
    wait_for_server,
)
from seckill_common.runtime.interceptors import interceptors_for, rate_limiter_for
from seckill_common.runtime.ratelimit import SHARED_HEALTH_NAME, RateLimiter
from seckill_common.runtime.reflection import enable_reflection
from seckill_common.runtime.telemetry import serve_metrics
from seckill_common.runtime.tls import server_credentials
from seckill_common.runtime.workers import start_heartbeat, supervise
from seckill_common.tracing import configure_tracing, flush_traces

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    # Replies (a page of up to 1,000 orders) stay far below this; requests are capped by
    # SECKILL_MAX_MESSAGE_BYTES (RESOURCE_EXHAUSTED before any of our code runs).
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # grpc-core cancels calls that wait for the application beyond 1,000 pending (CANCELLED,
    # which a client cannot tell from its own cancel). A flash sale arrives as one burst, so
    # queue far more and let the calls be answered.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]

Cleanup = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class OnStop:
    """A step that `add_servicers` asks to run as the server starts stopping, before its
    grace: streams that never end by themselves (WatchActivity) are ended there with a status
    the client resumes on, so the drain does not wait out `grace` for them."""

    run: Cleanup


@dataclass(eq=False)
class HealthEntry:
    """A health entry of a part that runs beside the service's RPCs (the events relay), which
    `add_servicers` hands back: its status follows `set`, while the service serves on."""

    name: str
    serving: bool = True
    on_change: list[Callable[[bool], None]] = field(default_factory=list)

    def set(self, serving: bool) -> None:
        if serving != self.serving:
            self.serving = serving
            for notify in self.on_change:
                notify(serving)


# A health entry that is SERVING from the moment the server answers until it shuts down,
# whatever the database: what a liveness probe should ask (the process lives), while readiness
# asks the service's own entries (it can serve). Restarting every pod because the database is
# away would only add a thundering herd to the outage.
LIVENESS_HEALTH_NAME = "seckill.liveness"


class StartupError(RuntimeError):
    """A start-up failure explained in one line; logged without a traceback."""


T = TypeVar("T")


@dataclass
class ServiceDefinition:
    """What a service plugs into the shared lifecycle."""

    name: str  # short name: product, activity, order
    service_names: Sequence[str]  # full proto names, for health and reflection
    admin_methods: frozenset[str]
    # Methods that act for one user: they take a user token when SECKILL_USER_TOKEN_SECRET is
    # set (seckill_common.runtime.auth).
    user_methods: frozenset[str]
    # Adds the servicers to the server; returns cleanup to run after the server stops.
    # OnStop steps among them run before `stop(grace)`, the rest after it; HealthEntry items
    # are health entries of the service's own.
    add_servicers: Callable[[grpc.aio.Server, Database, Settings],
                            Awaitable[Sequence[Cleanup | OnStop | HealthEntry]]]


@dataclass
class RunningService:
    definition: ServiceDefinition
    settings: Settings
    server: grpc.aio.Server
    database: Database
    health: health.aio.HealthServicer
    port: int
    cleanups: list[Cleanup] = field(default_factory=list)
    on_stop: list[Cleanup] = field(default_factory=list)
    limits: RateLimiter | None = None
    metrics_server: WSGIServer | None = None
    _monitor: asyncio.Task[None] | None = None
    _db_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    _health_updates: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def address(self) -> str:
        host = self.settings.listen_addr(self.definition.name).rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self.definition.service_names):
            await self.health.set(name, status)

    async def _watch_database(self) -> None:
        """Keeps health in step with the database: NOT_SERVING at once when a call sees it
        go away, SERVING again as soon as a ping succeeds."""
        serving: bool | None = None
        interval = self.settings.health_interval_s
        while not self._stopping:
            up = await self.database.ping()
            if up != serving:
                serving = up
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if up
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
            self._db_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._db_changed.wait(), interval)

    def _report_shared_limits(self, shared: bool) -> None:
        """Health entry SHARED_HEALTH_NAME: SERVING while per-user limits are counted in
        Redis, NOT_SERVING while each process counts its own (the service itself serves on)."""
        self._report(SHARED_HEALTH_NAME, shared)

    def _follow(self, entry: HealthEntry) -> None:
        """Keeps the health entry `entry.name` in step with `entry`."""
        self._report(entry.name, entry.serving)
        entry.on_change.append(lambda serving: self._report(entry.name, serving))

    def _report(self, name: str, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        update = asyncio.ensure_future(self.health.set(name, status))
        self._health_updates.add(update)
        update.add_done_callback(self._health_updates.discard)

    async def drain(self, delay_s: float, cut_short: asyncio.Event | None = None) -> None:
        """NOT_SERVING now, still serving for `delay_s` (or until `cut_short` is set).

        Probes and clients that check health stop sending calls here, and the endpoint leaves
        the Service's DNS answers, while calls already routed here are still answered; the
        database monitor is stopped first so it cannot turn health back to SERVING.
        """
        log.info("draining: NOT_SERVING for %.1f s before stopping", delay_s,
                 extra={"address": self.address})
        if self._monitor:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        await self.health.enter_graceful_shutdown()
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((cut_short or asyncio.Event()).wait(), delay_s)

    async def stop(self, grace: float | None = None) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("shutting down", extra={"address": self.address})
        await self.health.enter_graceful_shutdown()
        if self._monitor:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for step in self.on_stop:
            await step()
        await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        for cleanup in self.cleanups:
            await cleanup()
        if self.limits is not None:
            await self.limits.close()
        await self.database.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        log.info("stopped", extra={"address": self.address})


async def start_service(
    definition: ServiceDefinition, settings: Settings, listen_addr: str | None = None,
    *, reuse_port: bool = False,
) -> RunningService:
    """Starts a service and returns once it is listening (health SERVING if the DB is up)."""
    await wait_for_server(settings, create_database=settings.migrate_on_start)
    if settings.migrate_on_start:
        await migrate(settings)
    else:
        try:
            await check_schema(settings)
        except SchemaBehind as exc:
            raise StartupError(str(exc)) from None
    log_connection_budget(settings, await connection_limit(settings))
    limits = rate_limiter_for(settings, definition.name)
    await limits.start()
    database = Database(await create_pool(settings), settings)
    watch_pool(definition.name, lambda: database.pool.size, lambda: database.pool.freesize,
               lambda: database.waiting, database.pool.maxsize)

    server = grpc.aio.server(
        interceptors=interceptors_for(settings, definition.name, definition.admin_methods,
                                      definition.user_methods, limits),
        # Workers share their port on purpose; a lone server must not share it by accident.
        options=[*SERVER_OPTIONS, ("grpc.so_reuseport", int(reuse_port)),
                 ("grpc.max_receive_message_length", settings.max_message_bytes)],
    )
    steps = await definition.add_servicers(server, database, settings)
    cleanups = [s for s in steps if not isinstance(s, OnStop | HealthEntry)]

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [*definition.service_names, health.SERVICE_NAME])
    addr = listen_addr or settings.listen_addr(definition.name)
    try:
        credentials = server_credentials(settings)
        port = (server.add_secure_port(addr, credentials) if credentials
                else server.add_insecure_port(addr))
    except RuntimeError as exc:  # grpc's message names no cause: the usual one is a busy port
        await database.close()
        await limits.close()
        raise StartupError(f"cannot listen on {addr} (is the port taken?): {exc}") from None
    running = RunningService(
        definition, settings, server, database, health_servicer, port, cleanups,
        [s.run for s in steps if isinstance(s, OnStop)], limits
    )
    if settings.metrics_addr:
        running.metrics_server = serve_metrics(settings.metrics_addr, settings.worker_id)
        log.info("metrics", extra={"port": running.metrics_server.server_port})
    await running._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS_HEALTH_NAME, health_pb2.HealthCheckResponse.SERVING)
    for entry in steps:
        if isinstance(entry, HealthEntry):
            running._follow(entry)
    if limits.shared is not None:
        running._report_shared_limits(limits.shared.shared)
        limits.shared.on_change.append(running._report_shared_limits)
    await server.start()
    database.on_change.append(lambda _up: running._db_changed.set())
    running._monitor = asyncio.create_task(running._watch_database())
    tls = "mutual" if settings.tls_ca else "on" if settings.tls else "off"
    log.info("listening", extra={"address": running.address, "port": port, "tls": tls})
    return running


# Young-generation collections every this many allocations (CPython's default is 700): a call
# allocates hundreds of objects, nearly all freed by reference counting, and the collector's
# passes over the calls in flight showed as 5% of a refusal's time in profiles.
GC_YOUNG_THRESHOLD = 20_000


def collect_garbage_for_serving() -> None:
    """Once serving: start-up's objects (modules, descriptors, the pool) live as long as the
    process, so they leave the collector's generations (gc.freeze), and young collections
    run less often."""
    gc.collect()
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


def run_loop(main_coroutine: Coroutine[object, object, T], settings: Settings) -> T:
    """Runs the process's event loop: uvloop (libuv) unless SECKILL_EVENT_LOOP=asyncio.

    The loop's own work (scheduling callbacks, polling sockets) is a large share of a small
    RPC's cost in Python; uvloop does it in C.
    """
    if settings.event_loop == "uvloop":
        return uvloop.run(main_coroutine)
    return asyncio.run(main_coroutine)


def parse_args(definition: ServiceDefinition, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {definition.name}_svc",
        description=f"Runs the seckill {definition.name} service (configured by SECKILL_* "
                    "environment variables, see docs/CONFIGURATION.md).",
    )
    parser.add_argument(
        "--workers", type=int, default=None,
        help="server processes sharing the port (SO_REUSEPORT); default SECKILL_WORKERS, "
             "else the CPUs this process may use (affinity and cgroup CPU quota)",
    )
    return parser.parse_args(argv)


def main(definition: ServiceDefinition, argv: list[str] | None = None) -> None:
    """Process entry point: JSON logs, config from the environment, run until a signal."""
    from seckill_common.config import ConfigError
    from seckill_common.runtime.logs import setup_logging

    args = parse_args(definition, argv)
    setup_logging(definition.name)
    try:
        settings = Settings.from_env()
        listen_addr = settings.listen_addr(definition.name)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        raise SystemExit(2) from None
    setup_logging(definition.name, settings.log_level)
    workers = args.workers if args.workers is not None else settings.workers
    if workers < 1:
        log.error("bad configuration: --workers must be at least 1")
        raise SystemExit(2)

    if workers > 1 and not settings.is_worker:
        raise SystemExit(run_loop(supervise(
            f"{definition.name}_svc", settings.address(definition.name).listen_setting,
            listen_addr, workers, settings), settings))

    async def run() -> None:
        if configure_tracing(definition.name, settings.tracing):
            log.info("tracing: exporting spans by OTLP")
        # Under a supervisor: proves this loop runs, from before it listens to its exit.
        heartbeat = start_heartbeat(settings)
        running = await start_service(definition, settings, reuse_port=settings.is_worker)
        collect_garbage_for_serving()
        signals = asyncio.Queue[int]()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
        await signals.get()
        if settings.drain_delay_s > 0:
            # A second signal (an impatient operator's Ctrl-C) cuts the drain short.
            again = asyncio.Event()
            waiter = asyncio.create_task(signals.get())
            waiter.add_done_callback(lambda _t: again.set())
            await running.drain(settings.drain_delay_s, again)
            waiter.cancel()
        await running.stop()
        flush_traces()
        if heartbeat is not None:
            heartbeat.cancel()

    try:
        run_loop(run(), settings)
    except Exception as exc:  # start-up failures: one clear line, non-zero exit
        expected = isinstance(exc, StartupError | Unavailable | grpc.RpcError)
        log.error("service failed: %s", exc, exc_info=not expected)
        raise SystemExit(1) from None
