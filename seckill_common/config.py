"""Configuration from environment variables, with defaults; bad values fail fast.

Each setting is written once, as a field of `Settings` that names its variable, its default and
its range (`Int`, `Float`, ...: seckill_common.setting_kinds); `Settings.from_env` reads them all
from those fields. The services' addresses are one `ServiceAddress` each (what peers dial, where
it listens).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from seckill_common.cpus import usable_cpus
from seckill_common.setting_kinds import (
    Bool,
    Choice,
    Float,
    Int,
    Text,
    descriptor,
    group,
    host_port,
    log_level,
    nats_url,
    read_fields,
    redis_url,
    secret,
    setting,
    stream_name,
    worker_number,
)
from seckill_common.setting_kinds import (
    ConfigError as ConfigError,  # re-exported: the error of reading settings
)

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/seckill"
# SECKILL_COMMIT_MODE: how the activity service commits seckills (activity_svc.seckill).
CommitMode = Literal["coalesced", "per_request"]
# SECKILL_EVENT_LOOP: the event loop of a service process (seckill_common.runtime.server).
EventLoop = Literal["uvloop", "asyncio"]


@dataclass(frozen=True)
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str) -> MySQLTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
            raise ConfigError(
                f"SECKILL_MYSQL_URL must look like mysql://user:password@host:port/database, "
                f"got scheme {parts.scheme!r}"
            )
        database = parts.path.lstrip("/")
        if not database:
            raise ConfigError("SECKILL_MYSQL_URL must name a database")
        return cls(
            host=parts.hostname,
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=unquote(database),
        )

    def redacted(self) -> str:
        """The URL without its password, safe to log."""
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


def default_of(name: str) -> Any:
    """The default of the `Settings` field `name`: for structures built from a few settings
    (activity_svc.seckill.EngineSettings) that must not write the defaults again."""
    return next(each.default for each in fields(Settings) if each.name == name)


# The name resolvers gRPC ships with; see gRPC's doc/naming.md.
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


def _is_host_port(value: str) -> bool:
    """A plain host:port (what a server can listen on), not a target string."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536
                and not value.startswith(_TARGET_SCHEMES)
                and not any(c.isspace() or c in "/," for c in host))


def _target(env: Mapping[str, str], name: str, default: str) -> str:
    """A peer address: host:port, or any gRPC target string (ipv4:a:p,b:p, dns:///name:port),
    which the clients spread calls over with round_robin."""
    value = env.get(name) or default
    if _is_host_port(value):
        return value
    rest = next((value[len(s):] for s in _TARGET_SCHEMES if value.startswith(s)), "")
    if not rest.strip("/") or any(c.isspace() for c in value):
        raise ConfigError(f"{name} must be host:port or a gRPC target (e.g. "
                          f"ipv4:10.0.0.1:50052,10.0.0.2:50052 or dns:///name:50052), "
                          f"got {value!r}")
    return value


@dataclass(frozen=True)
class ServiceAddress:
    """Where one service is: the gRPC target its peers dial (`target_setting`) and the
    host:port it listens on (`listen_setting`; "" = the target)."""

    service: str
    target: str
    target_setting: str
    listen_setting: str
    listen: str = ""

    def from_env(self, env: Mapping[str, str]) -> ServiceAddress:
        """This address as `env` sets it (self: the default)."""
        return replace(self, target=_target(env, self.target_setting, self.target),
                       listen=_listen(env, self.listen_setting))

    def listen_addr(self) -> str:
        """The host:port the service listens on: its listen address, else its target. The
        target is also what peers dial, so when it names several hosts (a target string) the
        listen address must be given on its own."""
        if self.listen:
            return self.listen
        if not _is_host_port(self.target):
            raise ConfigError(
                f"{self.target_setting} is the gRPC target {self.target!r}, which cannot "
                f"be listened on: set {self.listen_setting} (host:port)")
        return self.target


# The services and where they are by default.
ADDRESSES = {
    "product": ServiceAddress("product", "127.0.0.1:50051", "SECKILL_PRODUCT_ADDR",
                              "SECKILL_PRODUCT_LISTEN_ADDR"),
    "activity": ServiceAddress("activity", "127.0.0.1:50052", "SECKILL_ACTIVITY_ADDR",
                               "SECKILL_ACTIVITY_LISTEN_ADDR"),
    "order": ServiceAddress("order", "127.0.0.1:50053", "SECKILL_ORDER_ADDR",
                            "SECKILL_ORDER_LISTEN_ADDR"),
}
# What the tools dial by default.
DEFAULT_ADDRS = {service: address.target for service, address in ADDRESSES.items()}


def _listen(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if value and not _is_host_port(value):
        raise ConfigError(f"{name} must be host:port (port 0: any free port), got {value!r}")
    return value


def _tls(env: Mapping[str, str]) -> dict[str, str]:
    paths = {key: env.get(f"SECKILL_TLS_{key.upper()}", "") for key in ("cert", "key", "ca")}
    if bool(paths["cert"]) != bool(paths["key"]):
        raise ConfigError("SECKILL_TLS_CERT and SECKILL_TLS_KEY must be set together")
    if paths["ca"] and not paths["cert"]:
        raise ConfigError("SECKILL_TLS_CA (mutual TLS) needs SECKILL_TLS_CERT and _KEY")
    for key, path in paths.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"SECKILL_TLS_{key.upper()}: no such file {path!r}")
    return paths


@dataclass(frozen=True)
class WatchSettings:
    """Limits of the activity service's WatchActivity streams, per process (docs/WATCH.md)."""

    # Streams served at once by one process; one more is RESOURCE_EXHAUSTED.
    max_streams: int = setting(Int("SECKILL_WATCH_MAX_STREAMS", 10_000, 0, 1_000_000))
    # A stream ends (UNAVAILABLE, RetryInfo: resume) after this long, give or take a tenth so
    # a crowd that connected together does not resume together. Streams cannot be moved once
    # started: this is what lets new replicas take their share.
    max_lifetime_s: float = setting(Float("SECKILL_WATCH_MAX_LIFETIME", 1800.0, 1.0, 86_400.0))
    # How often one reader per watched activity reads its view from the database; at most
    # 750 ms, so a poll, its read and the fan-out stay within the 1 s bound.
    poll_interval_s: float = setting(
        Float("SECKILL_WATCH_POLL_INTERVAL_MS", 250.0, 20.0, 750.0, per=1000))


@dataclass(frozen=True)
class QueueSettings:
    """Waiting rooms (docs/WAITING_ROOM.md): JoinQueue's streams per process, and the mover."""

    # JoinQueue streams served at once by one process; one more is RESOURCE_EXHAUSTED.
    max_streams: int = setting(Int("SECKILL_QUEUE_MAX_STREAMS", 50_000, 0, 1_000_000))
    # A stream ends (UNAVAILABLE, RetryInfo: join again, the place is kept) after this long,
    # give or take a tenth.
    max_lifetime_s: float = setting(Float("SECKILL_QUEUE_MAX_LIFETIME", 1800.0, 1.0, 86_400.0))
    # How often one reader per waited-on activity reads its line; at most 750 ms, so a
    # sell-out reaches every waiting buyer within 1 s.
    poll_interval_s: float = setting(
        Float("SECKILL_QUEUE_POLL_INTERVAL_MS", 250.0, 20.0, 750.0, per=1000))
    # How often the process holding the mover's lease moves every line.
    move_interval_s: float = setting(
        Float("SECKILL_QUEUE_MOVE_INTERVAL_MS", 100.0, 10.0, 1000.0, per=1000))
    # Admitted buyers of one activity who have not bought yet (nor let their pass expire):
    # the line admits no more than this at once (Cloudflare's "total active users").
    max_active: int = setting(Int("SECKILL_QUEUE_MAX_ACTIVE", 500, 1, 1_000_000))


@dataclass(frozen=True)
class EventsSettings:
    """Order events: the outbox, their feed and the relay to NATS JetStream (docs/EVENTS.md)."""

    # Every order state change writes its event in its own transaction; off only to measure
    # what the events cost (the feed then answers FAILED_PRECONDITION EVENTS_DISABLED).
    enabled: bool = setting(Bool("SECKILL_EVENTS_ENABLED", True))
    # Events older than this are deleted (never before the relay has sent them); a reader
    # behind them is told to list again (EVENTS_PRUNED).
    retention_s: float = setting(
        Float("SECKILL_EVENTS_RETENTION", 7 * 86_400.0, 60.0, 3650 * 86_400.0))
    # How often a process's feed (and the relay) looks for newly committed events.
    poll_interval_s: float = setting(
        Float("SECKILL_EVENTS_POLL_INTERVAL_MS", 100.0, 10.0, 10_000.0, per=1000))
    # An idle WatchOrderEvents stream is sent the feed's revision this often.
    progress_interval_s: float = setting(
        Float("SECKILL_EVENTS_PROGRESS_INTERVAL_MS", 5000.0, 50.0, 600_000.0, per=1000))
    # The relay publishes to this NATS server's JetStream (nats://host:port); empty: no relay.
    nats_url: str = setting(Text("SECKILL_EVENTS_NATS_URL", nats_url))
    # The JetStream stream the relay creates when missing and publishes to.
    nats_stream: str = setting(Text("SECKILL_EVENTS_NATS_STREAM", stream_name, "ORDER_EVENTS"))
    # The relay's lease lives this long unrenewed (renewed every third of it): a standby takes
    # over from a frozen or cut-off relay within it, plus a round trip.
    relay_lease_s: float = setting(
        Float("SECKILL_EVENTS_RELAY_LEASE_MS", 3000.0, 300.0, 60_000.0, per=1000))


@dataclass(frozen=True)
class SaleDaySettings:
    """Which calls the access log writes (seckill_common.runtime.interceptors) and how a
    process sheds load (seckill_common.runtime.overload)."""

    # Every call, whatever the rules below say.
    access_log_all: bool = setting(Bool("SECKILL_ACCESS_LOG_ALL", False))
    # Every call whose code is neither OK nor an expected refusal.
    access_log_errors: bool = setting(Bool("SECKILL_ACCESS_LOG_ERRORS", True))
    # Every call slower than this (0: none for being slow).
    access_log_slow_s: float = setting(
        Float("SECKILL_ACCESS_LOG_SLOW_MS", 250.0, 0.0, 3_600_000.0, per=1000))
    # One in this many of the rest, per method and process (0: none).
    access_log_sample_every: int = setting(
        Int("SECKILL_ACCESS_LOG_SAMPLE", 1000, 0, 1_000_000_000))
    # Calls a process works on at once: the adaptive limit stays within min..max (max 0: no
    # limit, and no deadline check either).
    max_in_flight: int = setting(Int("SECKILL_MAX_IN_FLIGHT", 5000, 0, 1_000_000))
    min_in_flight: int = setting(Int("SECKILL_MIN_IN_FLIGHT", 2500, 1, 1_000_000))
    # The latency the limit steers by: while even the fastest call of an interval takes
    # longer, the limit shrinks.
    overload_target_s: float = setting(
        Float("SECKILL_OVERLOAD_TARGET_MS", 100.0, 1.0, 60_000.0, per=1000))

    def __post_init__(self) -> None:
        if self.max_in_flight and self.min_in_flight > self.max_in_flight:
            raise ConfigError(f"SECKILL_MIN_IN_FLIGHT ({self.min_in_flight}) must not exceed "
                              f"SECKILL_MAX_IN_FLIGHT ({self.max_in_flight})")


@dataclass(frozen=True)
class Settings:
    """Every knob of a service process. Listed in docs/CONFIGURATION.md."""

    mysql: MySQLTarget
    product: ServiceAddress
    activity: ServiceAddress
    order: ServiceAddress
    admin_token: str
    workers: int  # default: the CPUs this process may use (read at start-up)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    db_pool_size: int = setting(Int("SECKILL_DB_POOL_SIZE", 10, 1, 1000))
    db_connect_timeout_s: float = setting(Float("SECKILL_DB_CONNECT_TIMEOUT", 3.0, 0.1, 60.0))
    db_startup_timeout_s: float = setting(
        Float("SECKILL_DB_STARTUP_TIMEOUT", 30.0, 0.0, 3600.0))
    db_lock_wait_timeout_s: int = setting(Int("SECKILL_DB_LOCK_WAIT_TIMEOUT", 5, 1, 3600))
    peer_timeout_s: float = setting(Float("SECKILL_PEER_TIMEOUT", 3.0, 0.05, 60.0))
    shutdown_grace_s: float = setting(Float("SECKILL_SHUTDOWN_GRACE", 5.0, 0.0, 300.0))
    health_interval_s: float = setting(Float("SECKILL_HEALTH_INTERVAL", 1.0, 0.05, 60.0))
    log_level: str = setting(Text("SECKILL_LOG_LEVEL", log_level, "INFO"))
    # setting() is a dataclasses.field, which RUF009 cannot see through.
    commit_mode: CommitMode = setting(  # noqa: RUF009
        Choice("SECKILL_COMMIT_MODE", "coalesced", ("coalesced", "per_request")))
    batch_window_s: float = setting(
        Float("SECKILL_BATCH_WINDOW_MS", 2.0, 0.0, 1000.0, per=1000))
    batch_max: int = setting(Int("SECKILL_BATCH_MAX", 500, 1, 10_000))
    max_message_bytes: int = setting(
        Int("SECKILL_MAX_MESSAGE_BYTES", 64 * 1024, 1024, 64 * 1024 * 1024))
    db_statement_timeout_s: float = setting(
        Float("SECKILL_DB_STATEMENT_TIMEOUT", 10.0, 0.0, 3600.0))
    # How long the client waits for one database answer when no caller's deadline ends the
    # wait sooner (shared reads, background loops, calls without a deadline): aiomysql has no
    # read timeout, so a silent link would otherwise hang the wait for good. Capped at the
    # statement timeout plus a margin (seckill_common.database.db.client_bound_s).
    db_client_timeout_s: float = setting(
        Float("SECKILL_DB_CLIENT_TIMEOUT", 11.0, 0.1, 3600.0))
    # A session idle inside an open transaction is ended by the server after this long
    # (MariaDB's idle_transaction_timeout): a frozen or cut-off process holds its locks no
    # longer. Below the lock wait timeout, so a call waiting on such a lock gets it.
    db_idle_transaction_timeout_s: int = setting(
        Int("SECKILL_DB_IDLE_TRANSACTION_TIMEOUT", 3, 1, 3600))
    user_token_secret: str = setting(Text("SECKILL_USER_TOKEN_SECRET", secret))
    user_rate: float = setting(Float("SECKILL_RATE_LIMIT_USER", 20.0, 0.0, 1e6))
    user_burst: int = setting(Int("SECKILL_RATE_LIMIT_USER_BURST", 40, 1, 1_000_000))
    process_rate: float = setting(Float("SECKILL_RATE_LIMIT_PROCESS", 0.0, 0.0, 1e7))
    process_burst: int = setting(Int("SECKILL_RATE_LIMIT_PROCESS_BURST", 0, 0, 10_000_000))
    metrics_addr: str = setting(Text("SECKILL_METRICS_ADDR", host_port))
    expiry_interval_s: float = setting(
        Float("SECKILL_EXPIRY_INTERVAL_MS", 1000.0, 50.0, 60_000.0, per=1000))
    expiry_batch: int = setting(Int("SECKILL_EXPIRY_BATCH", 200, 1, 10_000))
    # Apply pending migrations at start-up; off where a migration step (`seckill migrate`, the
    # Kubernetes Job, compose's migrate service) owns the schema and services lack DDL rights.
    migrate_on_start: bool = setting(Bool("SECKILL_MIGRATE_ON_START", True))
    # Shared rate-limit counters (redis://host:port/db); empty: counted in each process.
    rate_limit_redis_url: str = setting(Text("SECKILL_RATE_LIMIT_REDIS_URL", redis_url))
    # On SIGTERM: NOT_SERVING at once, serving on for this long (so load balancers and DNS
    # stop sending calls here), then stop(shutdown_grace).
    drain_delay_s: float = setting(Float("SECKILL_DRAIN_DELAY", 0.0, 0.0, 300.0))
    event_loop: EventLoop = setting(  # noqa: RUF009
        Choice("SECKILL_EVENT_LOOP", "uvloop", ("uvloop", "asyncio")))
    # Set by the `--workers N` supervisor for each worker (seckill_common.runtime.workers);
    # "" in a lone process.
    worker_env: str = setting(Text("SECKILL_WORKER_ID", worker_number))
    # Also set by the supervisor: the descriptor of the shared page the worker's event loop
    # beats in; "" in a lone process, or with the heartbeat off.
    worker_heartbeat_fd: str = setting(Text("SECKILL_WORKER_HEARTBEAT_FD", descriptor))
    # A worker whose event loop shows no progress (blocked, or the process stopped) for this
    # long is killed by its supervisor and restarted; 0: never. Well above the longest pause
    # of a busy but healthy worker on a loaded machine, so a sale never sets it off.
    worker_timeout_s: float = setting(Float("SECKILL_WORKER_TIMEOUT", 5.0, 0.0, 600.0))
    # ActivityService.WatchActivity streams.
    watch: WatchSettings = group(WatchSettings)  # noqa: RUF009
    # ActivityService.JoinQueue: waiting rooms' streams and their mover.
    queue: QueueSettings = group(QueueSettings)  # noqa: RUF009
    # Order events (the outbox, OrderEventService, the relay).
    events: EventsSettings = group(EventsSettings)  # noqa: RUF009
    # The access log and overload (seckill_common.runtime.interceptors, .overload).
    sale_day: SaleDaySettings = group(SaleDaySettings)  # noqa: RUF009

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def is_worker(self) -> bool:
        """This process is one of `--workers N` under a supervisor."""
        return bool(self.worker_env)

    @property
    def worker_id(self) -> int:
        """This worker's index under the supervisor (0 for a lone process)."""
        return int(self.worker_env or "0")

    def address(self, service: str) -> ServiceAddress:
        return {"product": self.product, "activity": self.activity, "order": self.order}[service]

    def listen_addr(self, service: str) -> str:
        """The host:port `service` listens on (ServiceAddress.listen_addr)."""
        return self.address(service).listen_addr()

    # What peers dial (the targets), by the names of their variables.
    @property
    def product_addr(self) -> str:
        return self.product.target

    @property
    def activity_addr(self) -> str:
        return self.activity.target

    @property
    def order_addr(self) -> str:
        return self.order.target

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 admin_token_required: bool = True) -> Settings:
        """`admin_token_required=False`: for tools that only reach the database (migrate)."""
        env = dict(os.environ if env is None else env)
        tls = _tls(env)
        token = env.get("SECKILL_ADMIN_TOKEN", "")
        if not token and admin_token_required:
            raise ConfigError(
                "SECKILL_ADMIN_TOKEN must be set: admin RPCs compare it with the "
                "'authorization: Bearer <token>' metadata"
            )
        return cls(
            mysql=MySQLTarget.parse(env.get("SECKILL_MYSQL_URL") or DEFAULT_MYSQL_URL),
            product=ADDRESSES["product"].from_env(env),
            activity=ADDRESSES["activity"].from_env(env),
            order=ADDRESSES["order"].from_env(env),
            admin_token=token,
            workers=Int("SECKILL_WORKERS", usable_cpus(), 1, 256).read(env),
            tls_cert=tls["cert"], tls_key=tls["key"], tls_ca=tls["ca"],
            **read_fields(cls, env),
        )
