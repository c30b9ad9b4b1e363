"""docker-compose.yml, .env.example and deploy/prometheus.yml wire the stack the way users rely
on, and the Dockerfile builds what compose runs. No Docker engine runs on the development
machines, so these read the files: the Compose schema, the variables, the wiring."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from seckill_common.config import ConfigError, Settings
from seckill_stack.launcher import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose-spec.schema.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
PORTS = DEFAULT_PORTS
SERVICES = tuple(PORTS)
METRICS_PORT = 9464
ACTIVITY_REPLICAS = 2
# Secrets: required (`${VAR:?message}`), no default in compose nor in .env.example.
SECRET = re.compile(r"PASSWORD|TOKEN")
# What a user's .env supplies for them, to read the file as Compose runs it.
FILLED_SECRETS = {"SECKILL_ADMIN_TOKEN": "an-admin-token", "DB_ROOT_PASSWORD": "root-pw",
                  "DB_PASSWORD": "app-pw"}
# MariaDB's long-term-support series: the compose default is the one the tests run (Debian's).
MARIADB_LTS = ("10.6", "10.11", "11.4", "11.8")
TESTED_MARIADB = "10.11"
# What Compose interpolates: $$ (a literal $), ${VAR}, ${VAR:-default} and kin, $VAR.
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


def addr_var(service: str) -> str:
    return f"SECKILL_{service.upper()}_ADDR"


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


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    """The file as Compose runs it with a .env holding only the secrets: defaults for the
    rest."""
    return interpolate(raw_compose, FILLED_SECRETS)


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


@pytest.fixture(scope="module")
def prometheus() -> dict:
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


def environment(compose: dict, service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


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


# --- the compose file ------------------------------------------------------------------------

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


# --- Prometheus --------------------------------------------------------------------------------

def test_prometheus_mounts_the_config_from_the_repo(compose):
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert PROMETHEUS_CONFIG.is_file()


def scrape_targets(prometheus: dict, service: str) -> list[str]:
    """How Prometheus finds `service`: 'static' and/or 'dns' per matching scrape config."""
    ways = []
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            if f"{service}:{METRICS_PORT}" in static["targets"]:
                ways.append("static")
        for dns in job.get("dns_sd_configs", []):
            if service in dns["names"] and dns.get("type", "SRV") == "A" \
                    and dns.get("port") == METRICS_PORT:
                ways.append("dns")
    return ways


@pytest.mark.parametrize("service", SERVICES)
def test_prometheus_scrapes_every_service_on_its_metrics_port(prometheus, service):
    assert len(scrape_targets(prometheus, service)) == 1, service


def test_prometheus_finds_every_activity_replica_by_dns(prometheus):
    # A static `activity:9464` would resolve to one replica per scrape, not to each of them.
    assert scrape_targets(prometheus, "activity") == ["dns"]


def test_prometheus_jobs_are_unique_and_paths_default(prometheus):
    names = [job["job_name"] for job in prometheus["scrape_configs"]]
    assert len(names) == len(set(names))
    for job in prometheus["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"


# --- the image -----------------------------------------------------------------------------

def dockerfile_instructions(keyword: str) -> list[list[str]]:
    return [line.split()[1:] for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.split() and line.split()[0].upper() == keyword]


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for words in dockerfile_instructions("COPY"):
        sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def test_healthcheck_module_ships_in_the_image():
    assert (ROOT / "seckill_stack" / "health.py").is_file()
    assert "seckill_stack/" in dockerfile_copy_sources()


def test_dockerfile_copies_only_paths_that_exist():
    sources = dockerfile_copy_sources()
    assert sources
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert not missing, f"COPY sources missing from the repo: {missing}"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_copies_every_package_pip_installs():
    setuptools = pyproject()["tool"]["setuptools"]
    package_dir = setuptools.get("package-dir", {})
    copied = [source.rstrip("/") for source in dockerfile_copy_sources()]
    for package in setuptools["packages"]:
        top = package.split(".")[0]
        folder = package_dir.get(top, top).strip("./") or top
        assert any(folder == c or folder.startswith(c + "/") for c in copied), (
            f"`pip install .` needs {folder}/ for package {package}: COPY it")


def test_dockerfile_exposes_what_compose_uses(compose):
    exposed = {int(word.split("/")[0]) for words in dockerfile_instructions("EXPOSE")
               for word in words}
    for service in SERVICES:
        env = environment(compose, service)
        assert int(env[addr_var(service)].rpartition(":")[2]) in exposed
        assert int(env["SECKILL_METRICS_ADDR"].rpartition(":")[2]) in exposed


def module_owners() -> dict[str, str]:
    """Installed file → the distribution that installed it."""
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            owners[os.path.normpath(str(dist.locate_file(file)))] = name
    return owners


def runtime_distributions() -> set[str]:
    """What `pip install .` installs: pyproject's dependencies and everything they require."""
    todo = [Requirement(line) for line in pyproject()["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(line) for line in importlib.metadata.requires(name) or []]
    return seen


def imported_modules(folder: Path) -> dict[str, bool]:
    """Absolute imports under `folder`: module name → whether it must be a module (`import x`,
    `from x import ...`) rather than maybe a name in one (`from x import y`: x.y)."""
    modules: dict[str, bool] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update((alias.name, True) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules[node.module] = True
                for alias in node.names:
                    modules.setdefault(f"{node.module}.{alias.name}", False)
    return modules


def find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent is a module, not a package: `module` is a name
        return None


def test_image_installs_every_module_the_services_import():
    """The image gets pyproject's dependencies only: a module that the venv has by hand (or by
    the dev extra) imports fine here and fails in the container."""
    ours = {package.split(".")[0] for package in pyproject()["tool"]["setuptools"]["packages"]}
    imports: dict[str, bool] = {}
    for folder in [ROOT / name for name in sorted(ours)] + [ROOT / "gen"]:
        if folder.is_dir():
            imports.update(imported_modules(folder))
    owners = module_owners()
    runtime = runtime_distributions()
    missing = {}
    for module, must_exist in sorted(imports.items()):
        top = module.split(".")[0]
        if top in ours or top in sys.stdlib_module_names:
            continue
        spec = find_spec(module)
        assert spec is not None or not must_exist, f"{module} is not installed"
        if spec is None or not spec.has_location:  # a name, or a namespace package
            continue
        owner = owners.get(os.path.normpath(spec.origin or ""))
        if owner not in runtime:
            missing[module] = owner
    assert not missing, f"imported, but not a runtime dependency in pyproject.toml: {missing}"


def test_the_order_service_relays_events_to_a_jetstream_server(compose):
    nats = compose["services"]["nats"]
    assert "-js" in nats["command"] and "/data" in nats["command"]
    assert nats["volumes"][0].startswith("nats-data:") and "nats-data" in compose["volumes"]
    url = environment(compose, "order")["SECKILL_EVENTS_NATS_URL"]
    assert url == "nats://nats:4222"
    # Events wait in the database while NATS is away: started is enough.
    assert compose["services"]["order"]["depends_on"]["nats"] == {"condition": "service_started"}
