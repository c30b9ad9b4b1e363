"""Configuration from environment variables, with defaults; bad values fail fast.

Each setting is written once, as a pydantic field of `Settings` or of one of its groups: its
variable (the alias), its type, its default and its range. pydantic-settings reads them all
from the environment (`Settings.from_env`, once at start-up); a bad value fails with one
ConfigError line naming the variable and what it accepts (seckill_common.setting_values: the
groups' base, the checks pydantic has no type for, the line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo

from seckill_common.cpus import usable_cpus
from seckill_common.setting_values import ConfigError as ConfigError  # the error of reading
from seckill_common.setting_values import (
    Descriptor,
    ExistingFile,
    HostPort,
    ListenAddress,
    LogLevel,
    Millis,
    MySQLTarget,
    MySQLUrl,
    NatsUrl,
    RedisUrl,
    SettingsGroup,
    StreamName,
    Switch,
    Target,
    TokenSecret,
    WorkerNumber,
    fields_of,
    is_host_port,
)

__all__ = ["ADDRESSES", "DEFAULT_ADDRS", "ClientSettings", "CommitMode", "ConfigError",
           "EventLoop", "EventsSettings", "MySQLTarget", "QueueSettings", "SaleDaySettings",
           "ServiceAddress", "Settings", "SharedSettings", "TLSSettings", "TracingSettings",
           "WatchSettings", "default_of"]

# SECKILL_COMMIT_MODE: how the activity service commits seckills (activity_svc.seckill).
CommitMode = Literal["coalesced", "per_request"]
# SECKILL_EVENT_LOOP: the event loop of a service process (seckill_common.runtime.server).
EventLoop = Literal["uvloop", "asyncio"]

def variables() -> dict[str, FieldInfo]:
    """Every variable `Settings` reads, with its field (docs/CONFIGURATION.md lists them)."""
    return dict(fields_of(Settings))


@cache
def _defaults() -> Settings:
    return Settings.from_env({}, admin_token_required=False)


def default_of(name: str) -> Any:
    """The default of the `Settings` field `name`, as held (milliseconds in seconds): for
    structures built from a few settings (activity_svc.seckill.EngineSettings) that must not
    write the defaults again."""
    return getattr(_defaults(), name)


class WatchSettings(SettingsGroup):
    """Limits of the activity service's WatchActivity streams, per process (docs/WATCH.md)."""

    # Streams served at once by one process; one more is RESOURCE_EXHAUSTED.
    max_streams: int = Field(10_000, ge=0, le=1_000_000, alias="SECKILL_WATCH_MAX_STREAMS")
    # A stream ends (UNAVAILABLE, RetryInfo: resume) after this long, give or take a tenth so
    # a crowd that connected together does not resume together. Streams cannot be moved once
    # started: this is what lets new replicas take their share.
    max_lifetime_s: float = Field(1800.0, ge=1.0, le=86_400.0, alias="SECKILL_WATCH_MAX_LIFETIME")
    # How often one reader per watched activity reads its view from the database; at most
    # 750 ms, so a poll, its read and the fan-out stay within the 1 s bound.
    poll_interval_s: Millis = Field(250.0, ge=20.0, le=750.0,
                                    alias="SECKILL_WATCH_POLL_INTERVAL_MS")


class QueueSettings(SettingsGroup):
    """Waiting rooms (docs/WAITING_ROOM.md): JoinQueue's streams per process, and the mover."""

    # JoinQueue streams served at once by one process; one more is RESOURCE_EXHAUSTED.
    max_streams: int = Field(50_000, ge=0, le=1_000_000, alias="SECKILL_QUEUE_MAX_STREAMS")
    # A stream ends (UNAVAILABLE, RetryInfo: join again, the place is kept) after this long,
    # give or take a tenth.
    max_lifetime_s: float = Field(1800.0, ge=1.0, le=86_400.0, alias="SECKILL_QUEUE_MAX_LIFETIME")
    # How often one reader per waited-on activity reads its line; at most 750 ms, so a
    # sell-out reaches every waiting buyer within 1 s.
    poll_interval_s: Millis = Field(250.0, ge=20.0, le=750.0,
                                    alias="SECKILL_QUEUE_POLL_INTERVAL_MS")
    # How often the process holding the mover's lease moves every line.
    move_interval_s: Millis = Field(100.0, ge=10.0, le=1000.0,
                                    alias="SECKILL_QUEUE_MOVE_INTERVAL_MS")
    # Admitted buyers of one activity who have not bought yet (nor let their pass expire):
    # the line admits no more than this at once (Cloudflare's "total active users").
    max_active: int = Field(500, ge=1, le=1_000_000, alias="SECKILL_QUEUE_MAX_ACTIVE")


class EventsSettings(SettingsGroup):
    """Order events: the outbox, their feed and the relay to NATS JetStream (docs/EVENTS.md)."""

    # Every order state change writes its event in its own transaction; off only to measure
    # what the events cost (the feed then answers FAILED_PRECONDITION EVENTS_DISABLED).
    enabled: Switch = Field(True, alias="SECKILL_EVENTS_ENABLED")
    # Events older than this are deleted (never before the relay has sent them); a reader
    # behind them is told to list again (EVENTS_PRUNED).
    retention_s: float = Field(7 * 86_400.0, ge=60.0, le=3650 * 86_400.0,
                               alias="SECKILL_EVENTS_RETENTION")
    # How often a process's feed (and the relay) looks for newly committed events.
    poll_interval_s: Millis = Field(100.0, ge=10.0, le=10_000.0,
                                    alias="SECKILL_EVENTS_POLL_INTERVAL_MS")
    # An idle WatchOrderEvents stream is sent the feed's revision this often.
    progress_interval_s: Millis = Field(5000.0, ge=50.0, le=600_000.0,
                                        alias="SECKILL_EVENTS_PROGRESS_INTERVAL_MS")
    # The relay publishes to this NATS server's JetStream (nats://host:port); empty: no relay.
    # Out of the repr, like every value that may hold a password.
    nats_url: NatsUrl = Field("", alias="SECKILL_EVENTS_NATS_URL", repr=False)
    # The JetStream stream the relay creates when missing and publishes to.
    nats_stream: StreamName = Field("ORDER_EVENTS", alias="SECKILL_EVENTS_NATS_STREAM")
    # The relay's lease lives this long unrenewed (renewed every third of it): a standby takes
    # over from a frozen or cut-off relay within it, plus a round trip.
    relay_lease_s: Millis = Field(3000.0, ge=300.0, le=60_000.0,
                                  alias="SECKILL_EVENTS_RELAY_LEASE_MS")


class SaleDaySettings(SettingsGroup):
    """Which calls the access log writes (seckill_common.runtime.interceptors) and how a
    process sheds load (seckill_common.runtime.overload)."""

    # Every call, whatever the rules below say.
    access_log_all: Switch = Field(False, alias="SECKILL_ACCESS_LOG_ALL")
    # Every call whose code is neither OK nor an expected refusal.
    access_log_errors: Switch = Field(True, alias="SECKILL_ACCESS_LOG_ERRORS")
    # Every call slower than this (0: none for being slow).
    access_log_slow_s: Millis = Field(250.0, ge=0.0, le=3_600_000.0,
                                      alias="SECKILL_ACCESS_LOG_SLOW_MS")
    # One in this many of the rest, per method and process (0: none).
    access_log_sample_every: int = Field(1000, ge=0, le=1_000_000_000,
                                         alias="SECKILL_ACCESS_LOG_SAMPLE")
    # Calls a process works on at once: the adaptive limit stays within min..max (max 0: no
    # limit, and no deadline check either).
    max_in_flight: int = Field(5000, ge=0, le=1_000_000, alias="SECKILL_MAX_IN_FLIGHT")
    min_in_flight: int = Field(2500, ge=1, le=1_000_000, alias="SECKILL_MIN_IN_FLIGHT")
    # The latency the limit steers by: while even the fastest call of an interval takes
    # longer, the limit shrinks.
    overload_target_s: Millis = Field(100.0, ge=1.0, le=60_000.0,
                                      alias="SECKILL_OVERLOAD_TARGET_MS")

    @model_validator(mode="after")
    def _min_within_max(self) -> Self:
        if self.max_in_flight and self.min_in_flight > self.max_in_flight:
            raise ConfigError(f"SECKILL_MIN_IN_FLIGHT ({self.min_in_flight}) must not exceed "
                              f"SECKILL_MAX_IN_FLIGHT ({self.max_in_flight})")
        return self


class TLSSettings(SettingsGroup):
    """TLS of the services' ports and of their calls to each other (seckill_common.runtime.tls);
    a tool beside a service dials with the same files (ClientTLS.from_env)."""

    # PEM certificate and key: serve TLS, and dial the peers over TLS.
    cert: ExistingFile = Field("", alias="SECKILL_TLS_CERT")
    key: ExistingFile = Field("", alias="SECKILL_TLS_KEY")
    # PEM CA: mutual TLS, every client must present a certificate it signed.
    ca: ExistingFile = Field("", alias="SECKILL_TLS_CA")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("SECKILL_TLS_CERT and SECKILL_TLS_KEY must be set together")
        if self.ca and not self.cert:
            raise ConfigError("SECKILL_TLS_CA (mutual TLS) needs SECKILL_TLS_CERT and _KEY")
        return self


class TracingSettings(SettingsGroup):
    """Tracing by OTLP (seckill_common.runtime.telemetry), by the standard OpenTelemetry
    variables; the exporter reads the others (OTEL_EXPORTER_OTLP_HEADERS, ...) itself."""

    # The OTLP/gRPC collector; empty: no tracing.
    endpoint: str = Field("", alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # The service name spans carry; empty: seckill-<service>.
    service_name: str = Field("", alias="OTEL_SERVICE_NAME")


@dataclass(frozen=True)
class ServiceAddress:
    """Where one service is: the gRPC target its peers dial (`target_setting`) and the
    host:port it listens on (`listen_setting`; "" = the target)."""

    service: str
    target: str
    target_setting: str
    listen_setting: str
    listen: str = ""

    def listen_addr(self) -> str:
        """The host:port the service listens on: its listen address, else its target. The
        target is also what peers dial, so when it names several hosts (a target string) the
        listen address must be given on its own."""
        if self.listen:
            return self.listen
        if not is_host_port(self.target):
            raise ConfigError(
                f"{self.target_setting} is the gRPC target {self.target!r}, which cannot "
                f"be listened on: set {self.listen_setting} (host:port)")
        return self.target


class SharedSettings(SettingsGroup):
    """What the services and the tools beside them (seckill, seckill-token, seckill-bench,
    health probes) read alike: where each service is, the tokens, the TLS files."""

    # What peers and tools dial: a host:port, or a gRPC target (Settings.address).
    product_addr: Target = Field("127.0.0.1:50051", alias="SECKILL_PRODUCT_ADDR")
    activity_addr: Target = Field("127.0.0.1:50052", alias="SECKILL_ACTIVITY_ADDR")
    order_addr: Target = Field("127.0.0.1:50053", alias="SECKILL_ORDER_ADDR")
    # Required by the services (Settings.from_env): admin RPCs compare it with the metadata;
    # the tools send it.
    admin_secret: SecretStr = Field(SecretStr(""), alias="SECKILL_ADMIN_TOKEN")
    # Signs and checks user tokens (HS256); empty: no user tokens.
    user_token_key: TokenSecret = Field(SecretStr(""), alias="SECKILL_USER_TOKEN_SECRET")
    # The services' TLS files.
    tls_files: TLSSettings = Field(default_factory=TLSSettings)

    # The secrets as text, for the code that compares or signs with them; the fields stay
    # SecretStr, so no repr or log line of the settings shows them.
    @property
    def admin_token(self) -> str:
        return self.admin_secret.get_secret_value()

    @property
    def user_token_secret(self) -> str:
        return self.user_token_key.get_secret_value()


class ClientSettings(SharedSettings):
    """What the client tools read (seckill, seckill-bench): the shared settings and the
    user token a client sends."""

    # Sent on buy, orders, pay and cancel (--user-token wins).
    user_token: SecretStr = Field(SecretStr(""), alias="SECKILL_USER_TOKEN")


class Settings(SharedSettings):
    """Every knob of a service process. Listed in docs/CONFIGURATION.md."""

    mysql: MySQLUrl = Field(MySQLTarget.parse("mysql://root@127.0.0.1:3306/seckill"),
                            alias="SECKILL_MYSQL_URL")
    # Where each service listens, when not its address (ServiceAddress).
    product_listen: ListenAddress = Field("", alias="SECKILL_PRODUCT_LISTEN_ADDR")
    activity_listen: ListenAddress = Field("", alias="SECKILL_ACTIVITY_LISTEN_ADDR")
    order_listen: ListenAddress = Field("", alias="SECKILL_ORDER_LISTEN_ADDR")
    # Default: the CPUs this process may use (read at start-up).
    workers: int = Field(default_factory=usable_cpus, ge=1, le=256, alias="SECKILL_WORKERS")
    db_pool_size: int = Field(10, ge=1, le=1000, alias="SECKILL_DB_POOL_SIZE")
    db_connect_timeout_s: float = Field(3.0, ge=0.1, le=60.0, alias="SECKILL_DB_CONNECT_TIMEOUT")
    db_startup_timeout_s: float = Field(30.0, ge=0.0, le=3600.0,
                                        alias="SECKILL_DB_STARTUP_TIMEOUT")
    db_lock_wait_timeout_s: int = Field(5, ge=1, le=3600, alias="SECKILL_DB_LOCK_WAIT_TIMEOUT")
    peer_timeout_s: float = Field(3.0, ge=0.05, le=60.0, alias="SECKILL_PEER_TIMEOUT")
    shutdown_grace_s: float = Field(5.0, ge=0.0, le=300.0, alias="SECKILL_SHUTDOWN_GRACE")
    health_interval_s: float = Field(1.0, ge=0.05, le=60.0, alias="SECKILL_HEALTH_INTERVAL")
    log_level: LogLevel = Field("INFO", alias="SECKILL_LOG_LEVEL")
    commit_mode: CommitMode = Field("coalesced", alias="SECKILL_COMMIT_MODE")
    batch_window_s: Millis = Field(2.0, ge=0.0, le=1000.0, alias="SECKILL_BATCH_WINDOW_MS")
    batch_max: int = Field(500, ge=1, le=10_000, alias="SECKILL_BATCH_MAX")
    max_message_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024,
                                   alias="SECKILL_MAX_MESSAGE_BYTES")
    db_statement_timeout_s: float = Field(10.0, ge=0.0, le=3600.0,
                                          alias="SECKILL_DB_STATEMENT_TIMEOUT")
    # How long the client waits for one database answer when no caller's deadline ends the
    # wait sooner (shared reads, background loops, calls without a deadline): aiomysql has no
    # read timeout, so a silent link would otherwise hang the wait for good. Capped at the
    # statement timeout plus a margin (seckill_common.database.sessions.client_bound_s).
    db_client_timeout_s: float = Field(11.0, ge=0.1, le=3600.0, alias="SECKILL_DB_CLIENT_TIMEOUT")
    # A session idle inside an open transaction is ended by the server after this long
    # (MariaDB's idle_transaction_timeout): a frozen or cut-off process holds its locks no
    # longer. Below the lock wait timeout, so a call waiting on such a lock gets it.
    db_idle_transaction_timeout_s: int = Field(3, ge=1, le=3600,
                                               alias="SECKILL_DB_IDLE_TRANSACTION_TIMEOUT")
    user_rate: float = Field(20.0, ge=0.0, le=1e6, alias="SECKILL_RATE_LIMIT_USER")
    user_burst: int = Field(40, ge=1, le=1_000_000, alias="SECKILL_RATE_LIMIT_USER_BURST")
    process_rate: float = Field(0.0, ge=0.0, le=1e7, alias="SECKILL_RATE_LIMIT_PROCESS")
    process_burst: int = Field(0, ge=0, le=10_000_000, alias="SECKILL_RATE_LIMIT_PROCESS_BURST")
    metrics_addr: HostPort = Field("", alias="SECKILL_METRICS_ADDR")
    expiry_interval_s: Millis = Field(1000.0, ge=50.0, le=60_000.0,
                                      alias="SECKILL_EXPIRY_INTERVAL_MS")
    expiry_batch: int = Field(200, ge=1, le=10_000, alias="SECKILL_EXPIRY_BATCH")
    # Apply pending migrations at start-up; off where a migration step (`seckill migrate`, the
    # Kubernetes Job, compose's migrate service) owns the schema and services lack DDL rights.
    migrate_on_start: Switch = Field(True, alias="SECKILL_MIGRATE_ON_START")
    # Shared rate-limit counters (redis://host:port/db); empty: counted in each process.
    # Out of the repr: it may hold a password.
    rate_limit_redis_url: RedisUrl = Field("", alias="SECKILL_RATE_LIMIT_REDIS_URL", repr=False)
    # On SIGTERM: NOT_SERVING at once, serving on for this long (so load balancers and DNS
    # stop sending calls here), then stop(shutdown_grace).
    drain_delay_s: float = Field(0.0, ge=0.0, le=300.0, alias="SECKILL_DRAIN_DELAY")
    event_loop: EventLoop = Field("uvloop", alias="SECKILL_EVENT_LOOP")
    # Set by the `--workers N` supervisor for each worker (seckill_common.runtime.workers);
    # "" in a lone process.
    worker_env: WorkerNumber = Field("", alias="SECKILL_WORKER_ID")
    # Also set by the supervisor: the descriptor of the shared page the worker's event loop
    # beats in; "" in a lone process, or with the heartbeat off.
    worker_heartbeat_fd: Descriptor = Field("", alias="SECKILL_WORKER_HEARTBEAT_FD")
    # A worker whose event loop shows no progress (blocked, or the process stopped) for this
    # long is killed by its supervisor and restarted; 0: never. Well above the longest pause
    # of a busy but healthy worker on a loaded machine, so a sale never sets it off.
    worker_timeout_s: float = Field(5.0, ge=0.0, le=600.0, alias="SECKILL_WORKER_TIMEOUT")
    # ActivityService.WatchActivity streams.
    watch: WatchSettings = Field(default_factory=WatchSettings)
    # ActivityService.JoinQueue: waiting rooms' streams and their mover.
    queue: QueueSettings = Field(default_factory=QueueSettings)
    # Order events (the outbox, OrderEventService, the relay).
    events: EventsSettings = Field(default_factory=EventsSettings)
    # The access log and overload (seckill_common.runtime.interceptors, .overload).
    sale_day: SaleDaySettings = Field(default_factory=SaleDaySettings)
    # Tracing by OTLP.
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @property
    def tls_cert(self) -> str:
        return self.tls_files.cert

    @property
    def tls_key(self) -> str:
        return self.tls_files.key

    @property
    def tls_ca(self) -> str:
        return self.tls_files.ca

    @property
    def tls(self) -> bool:
        return bool(self.tls_files.cert)

    @property
    def is_worker(self) -> bool:
        """This process is one of `--workers N` under a supervisor."""
        return bool(self.worker_env)

    @property
    def worker_id(self) -> int:
        """This worker's index under the supervisor (0 for a lone process)."""
        return int(self.worker_env or "0")

    def address(self, service: str) -> ServiceAddress:
        target, listen = self._address_fields(service)
        return ServiceAddress(service, getattr(self, target), _alias(target),
                              _alias(listen), getattr(self, listen))

    @staticmethod
    def _address_fields(service: str) -> tuple[str, str]:
        if service not in ("product", "activity", "order"):
            raise KeyError(service)
        return f"{service}_addr", f"{service}_listen"

    def listen_addr(self, service: str) -> str:
        """The host:port `service` listens on (ServiceAddress.listen_addr)."""
        return self.address(service).listen_addr()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 admin_token_required: bool = True) -> Self:
        """`admin_token_required=False`: for tools that only reach the database (migrate)."""
        settings = super().from_env(env)
        if admin_token_required and not settings.admin_token:
            raise ConfigError(
                "SECKILL_ADMIN_TOKEN must be set: admin RPCs compare it with the "
                "'authorization: Bearer <token>' metadata"
            )
        return settings


def _alias(field: str) -> str:
    return str(Settings.model_fields[field].alias)


# The services and where they are by default.
ADDRESSES = {service: ServiceAddress(service, str(Settings.model_fields[target].default),
                                     _alias(target), _alias(listen))
             for service in ("product", "activity", "order")
             for target, listen in [Settings._address_fields(service)]}
# What the tools dial by default.
DEFAULT_ADDRS = {service: address.target for service, address in ADDRESSES.items()}
