"""Reading docker-compose.yml, .env.example and deploy/prometheus.yml as Compose would: the
variables they use, interpolation with the defaults, a service's environment and ports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from seckill_stack.launcher import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
PORTS = DEFAULT_PORTS
SERVICES = tuple(PORTS)
METRICS_PORT = 9464
# What a user's .env supplies for them, to read the file as Compose runs it.
FILLED_SECRETS = {"SECKILL_ADMIN_TOKEN": "an-admin-token", "DB_ROOT_PASSWORD": "root-pw",
                  "DB_PASSWORD": "app-pw"}
# What Compose interpolates: $$ (a literal $), ${VAR}, ${VAR:-default} and kin, $VAR.
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


def addr_var(service: str) -> str:
    return f"SECKILL_{service.upper()}_ADDR"


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """The value as Compose resolves it with `env` as the .env file: defaults apply to the
    rest."""
    env = env or {}
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[4]
        if env.get(name):
            return env[name]
        return match[3] if match[2] in (":-", "-") else ""

    return VARIABLE.sub(substitute, value)


def environment(compose: dict, service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}
