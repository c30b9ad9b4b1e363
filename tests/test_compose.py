"""docker-compose.yml is a valid Compose file and wires the stack the way users rely on."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.schema.json"
PORTS = {"product": 50051, "activity": 50052, "order": 50053}
SERVICES = tuple(PORTS)


def addr_var(service: str) -> str:
    return f"SECKILL_{service.upper()}_ADDR"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def environment(compose: dict, service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_compose_file_matches_the_compose_spec(compose):
    schema = json.loads(SCHEMA.read_text())
    # The schema declares draft 2019-09 by its old http://...# URI, which jsonschema's lookup
    # does not recognise; name the draft rather than fall back to the latest one.
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_db_has_a_healthcheck_to_wait_for(compose):
    db = compose["services"]["db"]
    assert db["image"].startswith("mysql:8")
    assert "mysqladmin ping" in " ".join(db["healthcheck"]["test"])
    assert environment(compose, "db")["MYSQL_DATABASE"] == "seckill"


@pytest.mark.parametrize("service", SERVICES)
def test_healthcheck_uses_grpc_health_protocol(compose, service):
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "seckill_cli.wait_serving"]
    assert test[4] == f"127.0.0.1:{PORTS[service]}"


@pytest.mark.parametrize("service", SERVICES)
def test_service_starts_after_db_is_healthy(compose, service):
    assert compose["services"][service]["depends_on"]["db"] == {"condition": "service_healthy"}


def test_activity_starts_after_product_and_order_are_healthy(compose):
    depends_on = compose["services"]["activity"]["depends_on"]
    for peer in ("product", "order"):
        assert depends_on[peer] == {"condition": "service_healthy"}


@pytest.mark.parametrize("service", SERVICES)
def test_service_listens_on_all_interfaces_and_dials_peers_by_name(compose, service):
    env = environment(compose, service)
    port = PORTS[service]
    assert env[addr_var(service)] == f"0.0.0.0:{port}"
    for peer in SERVICES:
        if peer != service:
            assert env[addr_var(peer)] == f"{peer}:{PORTS[peer]}"
            assert peer in compose["services"]
    assert env["SECKILL_MYSQL_URL"].startswith("mysql://")
    assert "@db:3306/seckill" in env["SECKILL_MYSQL_URL"]
    assert env["SECKILL_ADMIN_TOKEN"]
    assert f"127.0.0.1:{port}:{port}" in compose["services"][service]["ports"]


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            sources += [word for word in words[1:] if not word.startswith("--")][:-1]
    return sources


def test_healthcheck_module_ships_in_the_image():
    assert (ROOT / "seckill_cli" / "wait_serving.py").is_file()
    assert "seckill_cli/" in dockerfile_copy_sources()


def test_dockerfile_copies_only_paths_that_exist():
    sources = dockerfile_copy_sources()
    assert sources
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert not missing, f"COPY sources missing from the repo: {missing}"
