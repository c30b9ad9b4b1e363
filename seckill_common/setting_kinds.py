"""The kinds of setting: how a SECKILL_* variable's text becomes a typed value, with its default
and its range, or one clear ConfigError line. `setting(...)` makes a `Settings` field of one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

ChoiceT = TypeVar("ChoiceT", bound=str)
Value = TypeVar("Value", covariant=True)


class ConfigError(ValueError):
    """A setting is missing or malformed; the process should exit with this message."""


class Setting(Protocol[Value]):
    """One SECKILL_* variable: its name, its default, how its text becomes a value."""

    @property
    def name(self) -> str: ...

    @property
    def default(self) -> Value: ...

    def read(self, env: Mapping[str, str]) -> Value: ...


@dataclass(frozen=True)
class Int:
    name: str
    default: int
    lo: int
    hi: int

    def read(self, env: Mapping[str, str]) -> int:
        raw = env.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{self.name} must be an integer, got {raw!r}") from None
        if not self.lo <= value <= self.hi:
            raise ConfigError(f"{self.name} must be within {self.lo}..{self.hi}, got {value}")
        return value


@dataclass(frozen=True)
class Float:
    """A number within lo..hi as written in the variable; held divided by `per` (a variable in
    milliseconds, per=1000, is held in seconds)."""

    name: str
    written_default: float
    lo: float
    hi: float
    per: float = 1.0

    @property
    def default(self) -> float:
        return self.written_default / self.per

    def read(self, env: Mapping[str, str]) -> float:
        raw = env.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{self.name} must be a number, got {raw!r}") from None
        if not self.lo <= value <= self.hi:
            raise ConfigError(f"{self.name} must be within {self.lo}..{self.hi}, got {value}")
        return value / self.per


@dataclass(frozen=True)
class Choice(Generic[ChoiceT]):
    name: str
    default: ChoiceT
    allowed: tuple[ChoiceT, ...]

    def read(self, env: Mapping[str, str]) -> ChoiceT:
        value = env.get(self.name) or self.default
        for choice in self.allowed:
            if value == choice:
                return choice
        raise ConfigError(f"{self.name} must be one of {', '.join(self.allowed)}, "
                          f"got {value!r}")


@dataclass(frozen=True)
class Bool:
    name: str
    default: bool

    def read(self, env: Mapping[str, str]) -> bool:
        raw = (env.get(self.name) or "").strip().lower()
        if not raw:
            return self.default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{self.name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Text:
    """Text, checked by `check` (which raises ConfigError) when set; unset: `default`."""

    name: str
    check: Callable[[str, str], str] = lambda name, value: value
    default: str = ""

    def read(self, env: Mapping[str, str]) -> str:
        value = env.get(self.name) or ""
        return self.check(self.name, value) if value else self.default


def secret(name: str, value: str) -> str:
    # HS256 keys shorter than the hash are brute-forceable (RFC 7518 3.2).
    if len(value.encode()) < 32:
        raise ConfigError(f"{name} must be at least 32 bytes long (HS256 key)")
    return value


def host_port(name: str, value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not (sep and port.isdigit() and int(port) < 65536):
        raise ConfigError(f"{name} must be host:port (port 0: any free port), got {value!r}")
    return value


def redis_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        # The value is not echoed: it may hold a password.
        raise ConfigError(f"{name} must look like redis://[:password@]host:port/db")
    return value


def nats_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        # The value is not echoed: it may hold a password.
        raise ConfigError(f"{name} must look like nats://[user:password@]host:port")
    return value


def stream_name(name: str, value: str) -> str:
    # JetStream stream names: no spaces, dots, wildcards or path separators.
    if not value.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"{name} must be letters, digits, '-' and '_', got {value!r}")
    return value


def log_level(_name: str, value: str) -> str:
    return value.upper()


def worker_number(name: str, value: str) -> str:
    if not value.isdigit():
        raise ConfigError(f"{name} must be a worker number, got {value!r}")
    return value


def descriptor(name: str, value: str) -> str:
    if not value.isdigit():
        raise ConfigError(f"{name} must be a file descriptor number, got {value!r}")
    return value


def setting(spec: Setting[Any]) -> Any:
    """A field of `Settings` read from `spec`'s variable, `spec`'s default its default."""
    return field(default=spec.default, metadata={"setting": spec})


def group(cls: type) -> Any:
    """A field of `Settings` that holds a block of settings: a frozen dataclass of `setting()`
    fields (e.g. `settings.watch.max_streams`), read like the fields of `Settings` itself."""
    return field(default_factory=cls, metadata={"group": cls})


def read_fields(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """The values of `cls`'s `setting()` and `group()` fields, as `env` sets them."""
    values: dict[str, Any] = {}
    for each in fields(cls):
        if "setting" in each.metadata:
            values[each.name] = each.metadata["setting"].read(env)
        elif "group" in each.metadata:
            block = each.metadata["group"]
            values[each.name] = block(**read_fields(block, env))
    return values
