"""docker-compose.yml and .env.example: the Compose schema, every variable listed with its
default, secrets left to fill and refused in one clear line, the documented MySQL override."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from seckill_common.config import ConfigError, Settings
from tests.helpers.compose import (
    FILLED_SECRETS,
    ROOT,
    VARIABLE,
    environment,
    interpolate,
)

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose-spec.schema.json"
# Secrets: required (`${VAR:?message}`), no default in compose nor in .env.example.
SECRET = re.compile(r"PASSWORD|TOKEN")


def strings(value: Any) -> list[str]:
    """Every string value in a parsed YAML document (what Compose interpolates)."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return [value] if isinstance(value, str) else []


def variables(document: dict) -> dict[str, str | None]:
    """Each variable the document reads, with its default (None: none given)."""
    found: dict[str, str | None] = {}
    for text in strings(document):
        for match in VARIABLE.finditer(text):
            name = match[1] or match[4]
            if name:
                default = match[3] if match[2] in (":-", "-") else None
                found[name] = found.get(name) or default
    return found


def required(document: dict) -> dict[str, str]:
    """Each variable read as `${VAR:?message}`, with its message."""
    found = {}
    for text in strings(document):
        for match in VARIABLE.finditer(text):
            if match[2] == ":?":
                found[match[1]] = match[3]
    return found


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.mark.parametrize("resolved", [False, True], ids=["as-written", "interpolated"])
def test_compose_file_matches_the_compose_spec(raw_compose, compose, resolved):
    schema = json.loads(SCHEMA.read_text())
    # The schema declares draft 2019-09 by its old http://...# URI, which jsonschema's lookup
    # does not recognise; name the draft rather than fall back to the latest one.
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    document = compose if resolved else raw_compose
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_every_variable_is_listed_in_env_example(raw_compose, env_example):
    read = variables(raw_compose)
    assert read, "the compose file reads no variable: has the parser broken?"
    assert not set(read) - set(env_example), "missing from .env.example"
    assert not set(env_example) - set(read), ".env.example lists what nothing reads"


def test_env_example_states_the_defaults_and_leaves_secrets_to_fill(raw_compose, env_example):
    for name, default in variables(raw_compose).items():
        value = env_example[name]
        if SECRET.search(name):
            assert value == "", f"{name}: .env.example must not hold a secret to reuse"
        else:
            assert value, f".env.example leaves {name} empty"
            assert value == default, f"{name}: .env.example says {value}, compose {default}"


def test_secrets_have_no_default_and_stop_compose_with_a_clear_line(raw_compose):
    secrets = {name for name in variables(raw_compose) if SECRET.search(name)}
    assert secrets == set(FILLED_SECRETS)
    needed = required(raw_compose)
    for name in secrets:
        assert variables(raw_compose)[name] is None, f"{name} has a default"
        assert name in needed, f"{name}: read without `:?`, so a missing one goes unnoticed"
        assert name in needed[name] and ".env" in needed[name], needed[name]
    # No secret written into the file itself either.
    assert "change-me" not in (ROOT / "docker-compose.yml").read_text()


def test_missing_secrets_leave_the_services_unconfigured(raw_compose):
    """What `:?` guards against: without the .env, the services would get an empty token."""
    bare = interpolate(raw_compose)
    with pytest.raises(ConfigError, match="SECKILL_ADMIN_TOKEN"):
        Settings.from_env(environment(bare, "product"))


def mysql_override() -> dict:
    """The compose.mysql.yml that docs/OPERATIONS.md gives for running on MySQL 8.4."""
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    section = text.split("### MySQL 8.4 instead", 1)[1]
    return yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])


def test_the_documented_mysql_override_fits_the_compose_file(raw_compose, env_example):
    """MySQL is untested here, but the switch the docs give must at least be well formed: the
    spec's shape, the .env's variables, the mount it replaces, a check MySQL's image can run."""
    override = mysql_override()
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    errors = list(validator.iter_errors(override))
    assert not errors, [error.message for error in errors]
    assert set(variables(override)) <= set(env_example)
    assert required(override).keys() == {"DB_ROOT_PASSWORD", "DB_PASSWORD"}
    db = override["services"]["db"]
    assert db["image"] == "mysql:8.4"
    env = db["environment"]
    assert (env["MYSQL_DATABASE"], env["MYSQL_USER"]) == ("seckill", "seckill")
    # Compose merges volumes by their target: the MySQL volume takes the MariaDB one's place.
    base_target = raw_compose["services"]["db"]["volumes"][0].partition(":")[2]
    volume, _, target = db["volumes"][0].partition(":")
    assert target == base_target
    assert volume in override["volumes"] and volume not in raw_compose["volumes"]
    assert "mysqladmin ping" in " ".join(db["healthcheck"]["test"])
