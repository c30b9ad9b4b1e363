"""docker-compose.yml wires the stack the way users rely on: healthchecks through the gRPC
health protocol, start-up order, the migration step, listen and peer addresses, ports on
loopback, replicas, metrics and traces. No Docker engine runs on the development machines, so
these read the files (fixtures and readers: tests/deploy/conftest.py, tests/helpers/compose.py)."""

from __future__ import annotations

import re

import pytest

from seckill_common.config import Settings
from tests.helpers.compose import (
    FILLED_SECRETS,
    METRICS_PORT,
    PORTS,
    ROOT,
    SERVICES,
    addr_var,
    environment,
)

ACTIVITY_REPLICAS = 2
# MariaDB's long-term-support series: the compose default is the one the tests run (Debian's).
MARIADB_LTS = ("10.6", "10.11", "11.4", "11.8")
TESTED_MARIADB = "10.11"


def published_ports(service: dict) -> list[tuple[str, str, int]]:
    """(host ip, host port or range, container port) of each `ports` entry."""
    entries = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            entries.append((entry.get("host_ip", ""), str(entry.get("published", "")),
                            int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        target = int(parts[-1])
        published = parts[-2] if len(parts) >= 2 else ""
        host_ip = parts[-3] if len(parts) >= 3 else ""
        entries.append((host_ip, published, target))
    return entries


def one_shot(service: dict) -> bool:
    """A step that runs once and exits (the migration): nothing to health-check."""
    return service.get("restart") == "no"


def test_every_container_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        if one_shot(service):
            continue
        check = service.get("healthcheck", {})
        assert not check.get("disable"), name
        assert check.get("test", [None])[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"


def test_db_is_the_mariadb_the_tests_run(compose):
    db = compose["services"]["db"]
    repository, _, tag = db["image"].rpartition(":")
    assert repository == "mariadb"
    assert tag in MARIADB_LTS, f"{db['image']}: not a long-term-support series"
    assert tag == TESTED_MARIADB, f"{db['image']}: the tests run MariaDB {TESTED_MARIADB}"


def test_db_has_a_healthcheck_to_wait_for(compose):
    db = compose["services"]["db"]
    # The image's own script: over TCP (so not the socket-only init server) until InnoDB is up.
    assert db["healthcheck"]["test"] == ["CMD", "healthcheck.sh", "--connect",
                                         "--innodb_initialized"]
    assert db["healthcheck"]["start_period"]


def test_db_creates_the_services_account_and_keeps_its_data(compose):
    env = environment(compose, "db")
    assert env["MARIADB_DATABASE"] == "seckill"
    assert env["MARIADB_USER"] == "seckill"
    assert env["MARIADB_ROOT_PASSWORD"] == FILLED_SECRETS["DB_ROOT_PASSWORD"]
    url = environment(compose, "product")["SECKILL_MYSQL_URL"]
    assert url == f"mysql://seckill:{env['MARIADB_PASSWORD']}@db:3306/seckill"
    volume, _, target = compose["services"]["db"]["volumes"][0].partition(":")
    # A volume of its own: MariaDB cannot open the data of the MySQL 8.4 default of old.
    assert (volume, target) == ("mariadb-data", "/var/lib/mysql")
    assert volume in compose["volumes"]


@pytest.mark.parametrize("service", SERVICES)
def test_healthcheck_uses_grpc_health_protocol(compose, service):
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "seckill_stack.health"]
    assert test[4] == f"127.0.0.1:{PORTS[service]}"


@pytest.mark.parametrize(("service", "url"), [
    ("jaeger", "http://127.0.0.1:13133/status"),  # the healthcheckv2 extension of Jaeger v2
    ("prometheus", "http://127.0.0.1:9090/-/ready"),
    ("grafana", "http://127.0.0.1:3000/api/health"),
])
def test_tools_are_probed_over_http_with_the_images_wget(compose, service, url):
    assert compose["services"][service]["healthcheck"]["test"] == [
        "CMD", "wget", "-q", "-O", "/dev/null", url]


def test_third_party_images_are_pinned(compose):
    images = {name: service["image"] for name, service in compose["services"].items()
              if "build" not in service}
    assert set(images) == {"db", "jaeger", "prometheus", "grafana", "redis", "nats"}
    for name, image in images.items():
        _repo, _, tag = image.rpartition(":")
        assert re.fullmatch(r"v?\d+(\.\d+)+(-alpine)?", tag), (
            f"{name}: {image} is not pinned to a version")
    assert images["jaeger"].startswith("jaegertracing/jaeger:2.")  # OTLP on by default
    assert images["prometheus"].startswith("prom/prometheus:v3.")
    assert images["grafana"].startswith("grafana/grafana:")


@pytest.mark.parametrize("service", SERVICES)
def test_service_waits_for_a_healthy_db_the_migration_and_started_tools(compose, service):
    depends_on = compose["services"][service]["depends_on"]
    assert depends_on["db"] == {"condition": "service_healthy"}
    assert depends_on["migrate"] == {"condition": "service_completed_successfully"}
    # Tracing and shared rate limits must never hold the services back: started is enough.
    assert depends_on["jaeger"] == {"condition": "service_started"}
    assert depends_on["redis"] == {"condition": "service_started"}


def test_the_migration_is_a_one_shot_step_before_the_services(compose):
    migrate = compose["services"]["migrate"]
    assert one_shot(migrate)
    assert migrate["command"] == ["python", "-m", "seckill_common.database.migrations"]
    assert (ROOT / "seckill_common" / "database" / "migrations.py").is_file()
    assert migrate["image"] == compose["services"]["product"]["image"]
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    env = environment(compose, "migrate")
    assert env["SECKILL_MYSQL_URL"] == environment(compose, "product")["SECKILL_MYSQL_URL"]
    assert "SECKILL_ADMIN_TOKEN" not in env  # it serves nothing
    Settings.from_env(env, admin_token_required=False)


@pytest.mark.parametrize("service", SERVICES)
def test_services_leave_the_schema_to_the_step_and_share_limits_in_redis(compose, service):
    settings = Settings.from_env(environment(compose, service))
    assert settings.migrate_on_start is False
    assert settings.rate_limit_redis_url == "redis://redis:6379/0"
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7.")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


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


@pytest.mark.parametrize("service", SERVICES)
def test_service_environment_is_a_valid_configuration(compose, service):
    settings = Settings.from_env(environment(compose, service))
    assert settings.listen_addr(service) == f"0.0.0.0:{PORTS[service]}"
    assert settings.workers == 1


@pytest.mark.parametrize("service", SERVICES)
def test_service_exports_metrics_and_traces(compose, service):
    env = environment(compose, service)
    # One process per container: the container's one metrics endpoint is all of it.
    assert env["SECKILL_WORKERS"] == "1"
    assert env["SECKILL_METRICS_ADDR"] == f"0.0.0.0:{METRICS_PORT}"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env["OTEL_SERVICE_NAME"] == f"seckill-{service}"
    assert "jaeger" in compose["services"]


@pytest.mark.parametrize("service", ["product", "order"])
def test_single_services_publish_their_grpc_port_on_loopback(compose, service):
    port = PORTS[service]
    assert published_ports(compose["services"][service]) == [("127.0.0.1", str(port), port)]


def test_activity_runs_replicas_without_a_fixed_host_port(compose):
    activity = compose["services"]["activity"]
    assert activity["deploy"]["replicas"] == ACTIVITY_REPLICAS
    assert "container_name" not in activity  # a fixed name allows one container only
    assert "scale" not in activity
    for _host_ip, published, target in published_ports(activity):
        assert target == PORTS["activity"]
        first, _, last = published.partition("-")
        # Empty: each replica gets a free port; a range must hold one port per replica.
        assert not published or (last and int(last) - int(first) + 1 >= ACTIVITY_REPLICAS)


def test_published_ports_are_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for host_ip, _published, _target in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes beyond loopback"


def test_ui_ports_are_the_usual_ones(compose):
    assert published_ports(compose["services"]["jaeger"]) == [("127.0.0.1", "16686", 16686)]
    assert published_ports(compose["services"]["prometheus"]) == [("127.0.0.1", "9090", 9090)]
    assert published_ports(compose["services"]["grafana"]) == [("127.0.0.1", "3000", 3000)]


def test_bind_mounts_come_from_the_repo(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]  # the short form, as this file writes them
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
                assert volume.endswith(":ro"), f"{name} may write to the repo: {volume}"


def test_grafana_has_no_password_to_guess(compose):
    env = environment(compose, "grafana")
    # No admin account and no login at all: anonymous viewers only.
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_AUTH_BASIC_ENABLED"] == "false"
    assert not any("PASSWORD" in key for key in env)


def test_the_order_service_relays_events_to_a_jetstream_server(compose):
    nats = compose["services"]["nats"]
    assert "-js" in nats["command"] and "/data" in nats["command"]
    assert nats["volumes"][0].startswith("nats-data:") and "nats-data" in compose["volumes"]
    url = environment(compose, "order")["SECKILL_EVENTS_NATS_URL"]
    assert url == "nats://nats:4222"
    # Events wait in the database while NATS is away: started is enough.
    assert compose["services"]["order"]["depends_on"]["nats"] == {"condition": "service_started"}
