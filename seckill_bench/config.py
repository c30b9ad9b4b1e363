"""What a load run does: the method, the request template, how many calls, how wide."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ConfigError: a setting that cannot work, raised before any call is made (the services'
# error of reading settings, a ValueError).
from seckill_common.client.tls import ClientTLS
from seckill_common.config import ClientSettings, ConfigError

__all__ = ["ConfigError"]

DEFAULT_TOTAL = 200  # ghz's default when neither -n nor -z is given

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go-style durations (`10s`, `1m30s`, `500ms`) or a plain number of seconds → seconds."""
    raw = text.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(raw) or not raw:
        raise ConfigError(f"bad duration {text!r}: use e.g. 10s, 1m30s, 500ms")
    return seconds


@dataclass
class BenchConfig:
    """One load run. Either `total` calls, or calls for `duration_s`, or both (first one wins).

    `concurrency` calls are in flight in total, over `connections` channels, from `procs`
    client processes (each gets an even share of the three).
    """

    call: str
    host: str
    data: str | dict[str, Any] = "{}"
    total: int | None = None
    duration_s: float | None = None
    concurrency: int = 50
    connections: int | None = None  # default: one per process
    procs: int = 1
    metadata: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 20.0
    connect_timeout_s: float = 10.0
    skip_first: int = 0
    name: str = ""
    # A progress bar (or periodic lines) on stderr while the run lasts.
    progress: bool = False
    # After a Seckill run, check the invariants through the API.
    check: bool = True
    order_addr: str | None = None  # default: ClientSettings' (SECKILL_ORDER_ADDR)
    product_addr: str | None = None  # default: the stock through ActivityService.GetActivity
    initial_stock: int | None = None
    # Ctrl-C stops sending and reports what completed (the CLI sets this).
    handle_sigint: bool = False
    # Called once the calls are done, before the invariant check (the benchmark suite reads
    # the servers' CPU time there, so the check's own calls are not counted as the run's).
    calls_done: Callable[[], None] | None = None
    # Plaintext unless a CA is given (--cacert; --cert/--key for mutual TLS).
    tls: ClientTLS = field(default_factory=ClientTLS)

    @property
    def data_text(self) -> str:
        return self.data if isinstance(self.data, str) else json.dumps(self.data)

    @property
    def effective_total(self) -> int | None:
        if self.total is None and self.duration_s is None:
            return DEFAULT_TOTAL
        return self.total

    @property
    def effective_connections(self) -> int:
        return self.connections if self.connections is not None else self.procs

    @property
    def effective_order_addr(self) -> str:
        return self.order_addr or ClientSettings.from_env().order_addr

    def validate(self) -> None:
        problems: list[str] = []
        if self.total is not None and self.total < 1:
            problems.append("total (-n) must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            problems.append("duration (-z) must be > 0")
        if self.procs < 1:
            problems.append("procs must be >= 1")
        if self.concurrency < self.procs:
            problems.append(f"concurrency (-c {self.concurrency}) must be >= procs ({self.procs}):"
                            " every process runs at least one worker")
        conns = self.effective_connections
        if conns < self.procs:
            problems.append(f"connections ({conns}) must be >= procs ({self.procs}): every "
                            "process needs a channel")
        if conns > self.concurrency:
            problems.append(f"connections ({conns}) must be <= concurrency ({self.concurrency})")
        if self.timeout_s <= 0:
            problems.append("timeout must be > 0")
        if self.skip_first < 0:
            problems.append("skip-first must be >= 0")
        for key in self.metadata:
            if key != key.lower() or not key:
                problems.append(f"metadata key {key!r} must be lower case")
        if problems:
            raise ConfigError("; ".join(problems))

    def options_json(self) -> dict[str, Any]:
        """The `options` object of the JSON report, with ghz's key names where they exist."""
        return {
            "name": self.name,
            "call": self.call,
            "host": self.host,
            "insecure": True,
            "total": self.effective_total or 0,
            "concurrency": self.concurrency,
            "connections": self.effective_connections,
            "procs": self.procs,
            "duration": int((self.duration_s or 0) * 1e9),
            "timeout": int(self.timeout_s * 1e9),
            "dial-timeout": int(self.connect_timeout_s * 1e9),
            "data": _json_or_text(self.data_text),
            "metadata": dict(self.metadata),
            "skipFirst": self.skip_first,
        }


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as possible over `parts`."""
    return total // parts + (1 if index < total % parts else 0)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a template with unquoted placeholders is not JSON until rendered
