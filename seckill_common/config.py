"""Configuration from environment variables, with defaults; bad values fail fast."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

from seckill_common.cpus import usable_cpus

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/seckill"
DEFAULT_ADDRS = {
    "product": "127.0.0.1:50051",
    "activity": "127.0.0.1:50052",
    "order": "127.0.0.1:50053",
}
# SECKILL_COMMIT_MODE: how the activity service commits seckills (activity_svc.seckill).
CommitMode = Literal["coalesced", "per_request"]
Choice = TypeVar("Choice", bound=str)


class ConfigError(ValueError):
    """A setting is missing or malformed; the process should exit with this message."""


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


def _int(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be within {lo}..{hi}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be within {lo}..{hi}, got {value}")
    return value


def _choice(env: dict[str, str], name: str, default: Choice, allowed: tuple[Choice, ...]
            ) -> Choice:
    value = env.get(name) or default
    for choice in allowed:
        if value == choice:
            return choice
    raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _secret(env: dict[str, str], name: str) -> str:
    value = env.get(name, "")
    # HS256 keys shorter than the hash are brute-forceable (RFC 7518 3.2).
    if value and len(value.encode()) < 32:
        raise ConfigError(f"{name} must be at least 32 bytes long (HS256 key)")
    return value


def _addr(env: dict[str, str], name: str) -> str:
    value = env.get(name, "")
    _host, sep, port = value.rpartition(":")
    if value and not (sep and port.isdigit() and int(port) < 65536):
        raise ConfigError(f"{name} must be host:port (port 0: any free port), got {value!r}")
    return value


# The name resolvers gRPC ships with; see gRPC's doc/naming.md.
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


def _is_host_port(value: str) -> bool:
    """A plain host:port (what a server can listen on), not a target string."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536
                and not value.startswith(_TARGET_SCHEMES)
                and not any(c.isspace() or c in "/," for c in host))


def _target(env: dict[str, str], name: str, default: str) -> str:
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


# Where a service listens when its SECKILL_*_ADDR is a target string that names several hosts.
LISTEN_SETTINGS = {
    "product": "SECKILL_PRODUCT_LISTEN_ADDR",
    "activity": "SECKILL_ACTIVITY_LISTEN_ADDR",
    "order": "SECKILL_ORDER_LISTEN_ADDR",
}


def _listen(env: dict[str, str], service: str) -> str:
    name = LISTEN_SETTINGS[service]
    value = env.get(name, "")
    if value and not _is_host_port(value):
        raise ConfigError(f"{name} must be host:port (port 0: any free port), got {value!r}")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _redis_url(env: dict[str, str], name: str) -> str:
    value = env.get(name, "")
    parts = urlsplit(value)
    if value and (parts.scheme not in ("redis", "rediss") or not parts.hostname):
        # The value is not echoed: it may hold a password.
        raise ConfigError(f"{name} must look like redis://[:password@]host:port/db")
    return value


def _tls(env: dict[str, str]) -> dict[str, str]:
    paths = {key: env.get(f"SECKILL_TLS_{key.upper()}", "") for key in ("cert", "key", "ca")}
    if bool(paths["cert"]) != bool(paths["key"]):
        raise ConfigError("SECKILL_TLS_CERT and SECKILL_TLS_KEY must be set together")
    if paths["ca"] and not paths["cert"]:
        raise ConfigError("SECKILL_TLS_CA (mutual TLS) needs SECKILL_TLS_CERT and _KEY")
    for key, path in paths.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"SECKILL_TLS_{key.upper()}: no such file {path!r}")
    return {f"tls_{key}": path for key, path in paths.items()}


@dataclass(frozen=True)
class Settings:
    """Every knob of a service process. Listed in docs/CONFIGURATION.md."""

    mysql: MySQLTarget
    product_addr: str
    activity_addr: str
    order_addr: str
    admin_token: str
    db_pool_size: int
    db_connect_timeout_s: float
    db_startup_timeout_s: float
    db_lock_wait_timeout_s: int
    peer_timeout_s: float
    shutdown_grace_s: float
    health_interval_s: float
    log_level: str
    commit_mode: CommitMode
    batch_window_s: float
    batch_max: int
    workers: int
    max_message_bytes: int = 64 * 1024
    db_statement_timeout_s: float = 10.0
    user_token_secret: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    user_rate: float = 20.0
    user_burst: int = 40
    process_rate: float = 0.0
    process_burst: int = 0
    metrics_addr: str = ""
    # Where each service listens when its SECKILL_*_ADDR is a target string naming several
    # hosts ("" = its SECKILL_*_ADDR, which must then be host:port).
    product_listen_addr: str = ""
    activity_listen_addr: str = ""
    order_listen_addr: str = ""
    expiry_interval_s: float = 1.0
    expiry_batch: int = 200
    # Apply pending migrations at start-up; off where a migration step (`seckill migrate`, the
    # Kubernetes Job, compose's migrate service) owns the schema and services lack DDL rights.
    migrate_on_start: bool = True
    # Shared rate-limit counters (redis://host:port/db); empty: counted in each process.
    rate_limit_redis_url: str = ""
    # On SIGTERM: NOT_SERVING at once, serving on for this long (so load balancers and DNS
    # stop sending calls here), then stop(shutdown_grace).
    drain_delay_s: float = 0.0
    # ActivityService.WatchActivity streams (the block at the end of this module).
    watch: WatchSettings = field(default_factory=lambda: WatchSettings())

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def listen_addr(self, service: str) -> str:
        """The host:port `service` listens on: SECKILL_<SERVICE>_LISTEN_ADDR, else its
        SECKILL_<SERVICE>_ADDR. The latter is also what peers dial, so when it names several
        hosts (a target string) the listen address must be given on its own."""
        explicit, target = {
            "product": (self.product_listen_addr, self.product_addr),
            "activity": (self.activity_listen_addr, self.activity_addr),
            "order": (self.order_listen_addr, self.order_addr),
        }[service]
        if explicit:
            return explicit
        if not _is_host_port(target):
            raise ConfigError(
                f"SECKILL_{service.upper()}_ADDR is the gRPC target {target!r}, which cannot "
                f"be listened on: set {LISTEN_SETTINGS[service]} (host:port)")
        return target

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *,
                 admin_token_required: bool = True) -> Settings:
        """`admin_token_required=False`: for tools that only reach the database (migrate)."""
        env = dict(os.environ if env is None else env)
        token = env.get("SECKILL_ADMIN_TOKEN", "")
        if not token and admin_token_required:
            raise ConfigError(
                "SECKILL_ADMIN_TOKEN must be set: admin RPCs compare it with the "
                "'authorization: Bearer <token>' metadata"
            )
        return cls(
            mysql=MySQLTarget.parse(env.get("SECKILL_MYSQL_URL") or DEFAULT_MYSQL_URL),
            product_addr=_target(env, "SECKILL_PRODUCT_ADDR", DEFAULT_ADDRS["product"]),
            activity_addr=_target(env, "SECKILL_ACTIVITY_ADDR", DEFAULT_ADDRS["activity"]),
            order_addr=_target(env, "SECKILL_ORDER_ADDR", DEFAULT_ADDRS["order"]),
            admin_token=token,
            db_pool_size=_int(env, "SECKILL_DB_POOL_SIZE", 10, 1, 1000),
            db_connect_timeout_s=_float(env, "SECKILL_DB_CONNECT_TIMEOUT", 3.0, 0.1, 60.0),
            db_startup_timeout_s=_float(env, "SECKILL_DB_STARTUP_TIMEOUT", 30.0, 0.0, 3600.0),
            db_lock_wait_timeout_s=_int(env, "SECKILL_DB_LOCK_WAIT_TIMEOUT", 5, 1, 3600),
            peer_timeout_s=_float(env, "SECKILL_PEER_TIMEOUT", 3.0, 0.05, 60.0),
            shutdown_grace_s=_float(env, "SECKILL_SHUTDOWN_GRACE", 5.0, 0.0, 300.0),
            health_interval_s=_float(env, "SECKILL_HEALTH_INTERVAL", 1.0, 0.05, 60.0),
            log_level=(env.get("SECKILL_LOG_LEVEL") or "INFO").upper(),
            commit_mode=_choice(env, "SECKILL_COMMIT_MODE", "coalesced",
                                ("coalesced", "per_request")),
            batch_window_s=_float(env, "SECKILL_BATCH_WINDOW_MS", 2.0, 0.0, 1000.0) / 1000,
            batch_max=_int(env, "SECKILL_BATCH_MAX", 500, 1, 10_000),
            workers=_int(env, "SECKILL_WORKERS", usable_cpus(), 1, 256),
            max_message_bytes=_int(env, "SECKILL_MAX_MESSAGE_BYTES", 64 * 1024, 1024,
                                   64 * 1024 * 1024),
            db_statement_timeout_s=_float(env, "SECKILL_DB_STATEMENT_TIMEOUT", 10.0, 0.0,
                                          3600.0),
            user_token_secret=_secret(env, "SECKILL_USER_TOKEN_SECRET"),
            **_tls(env),
            user_rate=_float(env, "SECKILL_RATE_LIMIT_USER", 20.0, 0.0, 1e6),
            user_burst=_int(env, "SECKILL_RATE_LIMIT_USER_BURST", 40, 1, 1_000_000),
            process_rate=_float(env, "SECKILL_RATE_LIMIT_PROCESS", 0.0, 0.0, 1e7),
            process_burst=_int(env, "SECKILL_RATE_LIMIT_PROCESS_BURST", 0, 0, 10_000_000),
            metrics_addr=_addr(env, "SECKILL_METRICS_ADDR"),
            **{f"{s}_listen_addr": _listen(env, s) for s in DEFAULT_ADDRS},
            expiry_interval_s=_float(env, "SECKILL_EXPIRY_INTERVAL_MS", 1000.0, 50.0,
                                     60_000.0) / 1000,
            expiry_batch=_int(env, "SECKILL_EXPIRY_BATCH", 200, 1, 10_000),
            migrate_on_start=_bool(env, "SECKILL_MIGRATE_ON_START", True),
            rate_limit_redis_url=_redis_url(env, "SECKILL_RATE_LIMIT_REDIS_URL"),
            drain_delay_s=_float(env, "SECKILL_DRAIN_DELAY", 0.0, 0.0, 300.0),
            watch=WatchSettings.from_env(env),
        )


# --- WatchActivity streams (activity_svc.watch, docs/WATCH.md) ------------------------------
# Kept in one block of their own: Settings holds them as `settings.watch`.

@dataclass(frozen=True)
class WatchSettings:
    """Limits of the activity service's WatchActivity streams, per process."""

    # Streams served at once by one process; one more is RESOURCE_EXHAUSTED.
    max_streams: int = 10_000
    # A stream ends (UNAVAILABLE, RetryInfo: resume) after this long, give or take a tenth so
    # a crowd that connected together does not resume together. Streams cannot be moved once
    # started: this is what lets new replicas take their share.
    max_lifetime_s: float = 1800.0
    # How often one reader per watched activity reads its view from the database.
    poll_interval_s: float = 0.25

    @classmethod
    def from_env(cls, env: dict[str, str]) -> WatchSettings:
        return cls(
            max_streams=_int(env, "SECKILL_WATCH_MAX_STREAMS", 10_000, 0, 1_000_000),
            max_lifetime_s=_float(env, "SECKILL_WATCH_MAX_LIFETIME", 1800.0, 1.0, 86_400.0),
            # At most 750 ms: a poll, its read and the fan-out stay within the 1 s bound.
            poll_interval_s=_float(env, "SECKILL_WATCH_POLL_INTERVAL_MS", 250.0, 20.0,
                                   750.0) / 1000,
        )
