"""What seckill_common.config's settings stand on: `SettingsGroup`, a frozen block of settings
that pydantic-settings reads from the flat SECKILL_* variables its fields' aliases name; what
a variable may hold beyond pydantic's own types (addresses, URLs, the token secret, files,
milliseconds); and the one line a bad value fails with: the variable, what it accepts, what it
got (never the value of a secret)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self, get_args, get_origin
from urllib.parse import unquote, urlsplit

from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    PlainValidator,
    SecretStr,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(ValueError):
    """A setting is missing or malformed; the process should exit with this message."""


# --- reading: pydantic-settings with one source, the flat SECKILL_* variables ------------------

# The environment being read: os.environ unless `from_env` was given another mapping.
# pydantic-settings builds its sources inside the model's constructor, which takes no
# environment, so `from_env` names it here for the constructor's one call.
_environment: ContextVar[Mapping[str, str] | None] = ContextVar("environment", default=None)


def _values(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, Any]:
    """`model`'s variables that `env` sets (unset and empty alike: the default), a group's
    under its field name: every variable is flat (SECKILL_WATCH_MAX_STREAMS)."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            values[name] = _values(info.annotation, env)
        elif isinstance(info.alias, str) and env.get(info.alias):
            values[info.alias] = env[info.alias]
    return values


class _Environment(PydanticBaseSettingsSource):
    """pydantic-settings' source of every setting: the variables named by the fields' aliases."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole model at once

    def __call__(self) -> dict[str, Any]:
        env = _environment.get()
        return _values(self.settings_cls, os.environ if env is None else env)


class SettingsGroup(BaseSettings):
    """A block of settings, frozen, read from the environment like `Settings` (alone too:
    `TLSSettings.from_env()`)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", validate_default=True)

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment; no .env file, no secrets directory."""
        return init_settings, _Environment(settings_cls)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """These settings as `env` (default: os.environ) sets them."""
        reading = _environment.set(env)
        try:
            return cls()
        except ValidationError as exc:
            raise one_line(exc, dict(fields_of(cls))) from None
        finally:
            _environment.reset(reading)


def fields_of(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """Every setting of `model` and its groups, by its variable."""
    for info in model.model_fields.values():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from fields_of(info.annotation)
        elif isinstance(info.alias, str):
            yield info.alias, info


# --- checks: each raises ValueError("must ...") for a bad value ------------------------------

def _checked(test: Callable[[str], bool], accepts: str, *, echo: bool = True) -> Any:
    """A str that, when set, passes `test`; otherwise "<variable> must be <accepts>". The value
    is not echoed when it may hold a password (`echo=False`)."""
    def check(value: str) -> str:
        if value and not test(value):
            raise ValueError(f"must {accepts}" + (f", got {value!r}" if echo else ""))
        return value
    return AfterValidator(check)


# The name resolvers gRPC ships with; see gRPC's doc/naming.md.
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


def is_host_port(value: str) -> bool:
    """A plain host:port (what a server can listen on), not a target string."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536
                and not value.startswith(_TARGET_SCHEMES)
                and not any(c.isspace() or c in "/," for c in host))


def _is_target(value: str) -> bool:
    if is_host_port(value):
        return True
    rest = next((value[len(s):] for s in _TARGET_SCHEMES if value.startswith(s)), "")
    return bool(rest.strip("/")) and not any(c.isspace() for c in value)


def _has_port(value: str) -> bool:
    _host, sep, port = value.rpartition(":")
    return bool(sep and port.isdigit() and int(port) < 65536)


def _url_of(*schemes: str) -> Callable[[str], bool]:
    def test(value: str) -> bool:
        parts = urlsplit(value)
        return parts.scheme in schemes and bool(parts.hostname)
    return test


def _long_enough(secret: SecretStr) -> SecretStr:
    # HS256 keys shorter than the hash are brute-forceable (RFC 7518 3.2).
    if secret.get_secret_value() and len(secret.get_secret_value().encode()) < 32:
        raise ValueError("must be at least 32 bytes long (HS256 key)")
    return secret


# A peer address: host:port, or any gRPC target string (ipv4:a:p,b:p, dns:///name:port), which
# the clients spread calls over with round_robin.
Target = Annotated[str, _checked(_is_target, "be host:port or a gRPC target (e.g. "
                                 "ipv4:10.0.0.1:50052,10.0.0.2:50052 or dns:///name:50052)")]
# Where a server listens.
ListenAddress = Annotated[str, _checked(is_host_port, "be host:port (port 0: any free port)")]
HostPort = Annotated[str, _checked(_has_port, "be host:port (port 0: any free port)")]
RedisUrl = Annotated[str, _checked(_url_of("redis", "rediss"),
                                   "look like redis://[:password@]host:port/db", echo=False)]
NatsUrl = Annotated[str, _checked(_url_of("nats", "tls"),
                                  "look like nats://[user:password@]host:port", echo=False)]
# JetStream stream names: no spaces, dots, wildcards or path separators.
StreamName = Annotated[str, _checked(lambda v: v.replace("_", "").replace("-", "").isalnum(),
                                     "be letters, digits, '-' and '_'")]
WorkerNumber = Annotated[str, _checked(str.isdigit, "be a worker number")]
Descriptor = Annotated[str, _checked(str.isdigit, "be a file descriptor number")]
ExistingFile = Annotated[str, _checked(os.path.isfile, "name an existing file")]
LogLevel = Annotated[str, AfterValidator(str.upper)]
# true/false, 1/0, yes/no, on/off, in any case, spaces around ignored.
Switch = Annotated[bool, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)]
TokenSecret = Annotated[SecretStr, AfterValidator(_long_enough)]
# A variable written in milliseconds (its default and range too), held in seconds.
Millis = Annotated[float, AfterValidator(lambda ms: ms / 1000)]


@dataclass(frozen=True)
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    @classmethod
    def parse(cls, url: str) -> MySQLTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
            raise ValueError(f"must look like mysql://user:password@host:port/database, "
                             f"got scheme {parts.scheme!r}")
        database = parts.path.lstrip("/")
        if not database:
            raise ValueError("must name a database")
        return cls(host=parts.hostname, port=parts.port or 3306,
                   user=unquote(parts.username or "root"),
                   password=unquote(parts.password or ""), database=unquote(database))

    def redacted(self) -> str:
        """The URL without its password, safe to log."""
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


MySQLUrl = Annotated[MySQLTarget, PlainValidator(
    lambda value: value if isinstance(value, MySQLTarget) else MySQLTarget.parse(str(value)))]


# --- the one line -----------------------------------------------------------------------------

def _accepts(kind: str, info: FieldInfo | None) -> str:
    """What the variable accepts, for pydantic's own kinds of error."""
    if kind in ("greater_than_equal", "less_than_equal") and info is not None:
        lo = next(m.ge for m in info.metadata if isinstance(m, Ge))
        hi = next(m.le for m in info.metadata if isinstance(m, Le))
        return f"be within {lo}..{hi}"
    if kind == "literal_error" and info is not None:
        literal = next(a for a in [info.annotation, *get_args(info.annotation)]
                       if get_origin(a) is Literal)
        return f"be one of {', '.join(get_args(literal))}"
    return {"int_parsing": "be an integer", "int_from_float": "be an integer",
            "float_parsing": "be a number", "bool_parsing": "be true or false"
            }.get(kind, "be valid")


def one_line(error: ValidationError, fields: Mapping[str, FieldInfo]) -> ConfigError:
    """The first problem of `error` as one line; `fields`: the settings' fields by variable."""
    first = error.errors(include_url=False)[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # a check across variables: names them itself
        return cause
    # The variable is the innermost name: a group's settings are under the group's field.
    variable = next((str(part) for part in reversed(first["loc"]) if isinstance(part, str)),
                    error.title)
    if isinstance(cause, ValueError):
        return ConfigError(f"{variable} {cause}")
    info = fields.get(variable)
    value = first["input"]
    got = ""
    if isinstance(value, str) and not (info is not None and info.annotation is SecretStr):
        number = first["type"] in ("greater_than_equal", "less_than_equal")
        got = f", got {value}" if number else f", got {value!r}"
    return ConfigError(f"{variable} must {_accepts(first['type'], info)}{got}")
