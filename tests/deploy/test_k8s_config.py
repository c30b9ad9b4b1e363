"""deploy/k8s's configuration: Secret and ConfigMap references resolve, no secret value is in
the repository, every setting is one the services read and a valid configuration, the images
run modules that exist, the Galera database and its accounts, the connection budget, the
migration Job and the events relay."""

from __future__ import annotations

import importlib.util
import math
import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from seckill_common.config import Settings
from tests.helpers.k8s import (
    ENV_REFERENCE,
    K8S,
    OVERLAY,
    ROOT,
    SECRET_VALUES,
    SERVICES,
    container_env,
    containers,
    documents,
    env_file,
    of_kind,
    one,
    pod_specs,
    service_container,
)

# Connections the database keeps beyond the services' account: the migration Job, the operator,
# monitoring, people with a console.
HEADROOM = 50


def seckill_names_read() -> set[str]:
    """Every SECKILL_* name that the services' code mentions (what they can read)."""
    names: set[str] = set()
    for folder in ("seckill_common", "product_svc", "activity_svc", "order_svc"):
        for path in (ROOT / folder).glob("*.py"):
            names |= set(re.findall(r"SECKILL_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return names


def test_secret_and_config_map_references_resolve(rendered):
    secret_keys = {s["metadata"]["name"]: set(s["data"]) for s in of_kind(rendered, "Secret")}
    config_maps = {c["metadata"]["name"] for c in of_kind(rendered, "ConfigMap")}
    for container in containers(rendered):
        defined = set()
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
            defined |= set(one(rendered, "ConfigMap", source["configMapRef"]["name"])["data"])
        for item in container.get("env", []):
            for name in ENV_REFERENCE.findall(item.get("value", "")):
                assert name in defined, f"{container['name']}: $({name}) before it is set"
            if "valueFrom" in item:
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] in secret_keys, ref
                assert ref["key"] in secret_keys[ref["name"]] or ref.get("optional"), ref
            defined.add(item["name"])


def test_the_secret_has_no_value_in_the_repository():
    template = env_file(OVERLAY / "secrets.env.example")
    assert set(template) == set(SECRET_VALUES)
    assert all(value == "" for value in template.values())
    assert not (OVERLAY / "secrets.env").exists() or "secrets.env" in (
        ROOT / ".gitignore").read_text()
    for path in K8S.rglob("*.yaml"):
        for doc in documents(path):
            assert doc.get("kind") != "Secret", f"{path}: a Secret with values in the repo"


def test_every_seckill_setting_in_the_manifests_is_one_the_services_read(rendered):
    read = seckill_names_read()
    used = set()
    for container in containers(rendered):
        used |= {name for name in container_env(rendered, container) if
                 name.startswith("SECKILL_")}
    assert used, "no SECKILL_* setting found: has the parser broken?"
    assert not used - read, f"set but never read: {used - read}"


@pytest.mark.parametrize("service", SERVICES)
def test_service_environment_is_a_valid_configuration(rendered, service):
    settings = Settings.from_env(container_env(rendered, service_container(rendered, service)))
    assert settings.listen_addr(service) == f"0.0.0.0:{SERVICES[service]}"
    assert settings.migrate_on_start is False
    assert settings.admin_token == SECRET_VALUES["admin-token"]
    assert settings.user_token_secret == SECRET_VALUES["user-token-secret"]
    for peer, port in SERVICES.items():
        if peer != service:
            # Through the peer's headless Service, resolved by gRPC's DNS resolver.
            assert getattr(settings, f"{peer}_addr") == f"dns:///seckill-{peer}:{port}"
            one(rendered, "Service", f"seckill-{peer}")
    redis = urlsplit(settings.rate_limit_redis_url)
    redis_service = one(rendered, "Service", redis.hostname)  # type: ignore[arg-type]
    assert redis.port in [p["port"] for p in redis_service["spec"]["ports"]]


def test_images_are_the_overlays_and_run_modules_that_exist(rendered):
    for container in containers(rendered):
        image = container["image"]
        if image.startswith("redis:"):
            assert re.fullmatch(r"redis:\d+\.\d+\.\d+", image)
            continue
        if image.startswith("nats:"):
            assert re.fullmatch(r"nats:\d+\.\d+\.\d+-alpine", image)
            continue
        assert image == "registry.example.com/seckill:0.1.0"
        command = container["command"]
        assert command[:2] == ["python", "-m"]
        assert importlib.util.find_spec(command[2]) is not None, command


def database_accounts(rendered) -> dict[str, dict[str, Any]]:
    """User name → its User and Grant custom resources."""
    accounts: dict[str, dict[str, Any]] = {}
    for user in of_kind(rendered, "User"):
        accounts[user["spec"]["name"]] = {"user": user}
    for grant in of_kind(rendered, "Grant"):
        accounts[grant["spec"]["username"]]["grant"] = grant
    return accounts


def test_the_database_is_a_galera_cluster_with_its_secrets(rendered):
    mariadb = one(rendered, "MariaDB", "seckill-db")
    spec = mariadb["spec"]
    assert spec["galera"]["enabled"] is True
    assert spec["replicas"] >= 3 and spec["replicas"] % 2 == 1  # quorum
    secret = one(rendered, "Secret", spec["rootPasswordSecretKeyRef"]["name"])
    assert spec["rootPasswordSecretKeyRef"]["key"] in secret["data"]
    for kind in ("Database", "User", "Grant"):
        for resource in of_kind(rendered, kind):
            assert resource["spec"]["mariaDbRef"]["name"] == "seckill-db"
    for account in database_accounts(rendered).values():
        ref = account["user"]["spec"]["passwordSecretKeyRef"]
        assert ref["key"] in one(rendered, "Secret", ref["name"])["data"]
        assert account["grant"]["spec"]["host"] == account["user"]["spec"]["host"]


def test_each_url_names_an_account_with_the_right_rights_and_password(rendered):
    databases = {d["spec"]["name"] for d in of_kind(rendered, "Database")}
    accounts = database_accounts(rendered)
    seen: dict[tuple[str, str], str] = {}
    for owner, spec in pod_specs(rendered):
        for container in [*spec["containers"], *spec.get("initContainers", [])]:
            env = container_env(rendered, container)
            if "SECKILL_MYSQL_URL" not in env:
                continue
            url = urlsplit(env["SECKILL_MYSQL_URL"])
            assert url.hostname == "seckill-db-primary"  # the operator's Service for writes
            assert url.path.lstrip("/") in databases
            account = accounts[url.username]  # type: ignore[index]
            ref = account["user"]["spec"]["passwordSecretKeyRef"]
            assert url.password == SECRET_VALUES[ref["key"]], "the account's own password"
            assert account["grant"]["spec"]["database"] == url.path.lstrip("/")
            seen[(owner["kind"], container["name"])] = url.username  # type: ignore[assignment]
    migrating = {who for who, user in seen.items() if who[0] == "Job"}
    assert migrating == {("Job", "migrate")}
    assert accounts[seen[("Job", "migrate")]]["grant"]["spec"]["privileges"] == \
        ["ALL PRIVILEGES"]
    for who, user in seen.items():
        if who[0] != "Job":
            privileges = set(accounts[user]["grant"]["spec"]["privileges"])
            assert privileges == {"SELECT", "INSERT", "UPDATE", "DELETE"}, who  # no DDL


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_connection_budget_adds_up(rendered):
    """replicas (plus a rolling update's surge) x workers x pool <= the account's limit <=
    max_connections - headroom: the rule the comments in config.yaml state."""
    asked = 0
    for service in SERVICES:
        deployment = one(rendered, "Deployment", f"seckill-{service}")
        container = service_container(rendered, service)
        env = container_env(rendered, container)
        # Unset, workers follow the CPU limit (the cgroup quota), rounded up.
        workers = int(env.get("SECKILL_WORKERS") or math.ceil(
            cpus(container["resources"]["limits"]["cpu"])))
        pods = deployment["spec"]["replicas"] + deployment["spec"]["strategy"][
            "rollingUpdate"]["maxSurge"]
        asked += pods * workers * Settings.from_env(env).db_pool_size
    app = database_accounts(rendered)["seckill_app"]["user"]["spec"]
    my_cnf = one(rendered, "MariaDB", "seckill-db")["spec"]["myCnf"]
    max_connections = int(re.search(r"^max_connections=(\d+)$", my_cnf, re.M)[1])  # type: ignore[index]
    assert asked <= app["maxUserConnections"] <= max_connections - HEADROOM, (
        asked, app["maxUserConnections"], max_connections)


def test_the_migration_job_runs_once_at_a_time(rendered):
    job = one(rendered, "Job", "seckill-migrate")
    # A Galera named lock holds on one node: one migrating process at a time is the Job's job.
    assert job["spec"]["parallelism"] == 1 and job["spec"]["completions"] == 1
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "seckill_common.database.migrations"]
    for service in SERVICES:
        spec = one(rendered, "Deployment", f"seckill-{service}")["spec"]["template"]["spec"]
        [init] = spec["initContainers"]
        assert init["command"][:5] == ["python", "-m", "seckill_common.database.migrations",
                                       "--check", "--wait"]


def test_the_order_pods_relay_events_to_the_jetstream_server(rendered):
    nats = one(rendered, "StatefulSet", "seckill-nats")
    [container] = nats["spec"]["template"]["spec"]["containers"]
    assert "-js" in container["args"]  # JetStream on, its store on the claimed volume
    assert container["volumeMounts"][0]["name"] == nats["spec"]["volumeClaimTemplates"][0][
        "metadata"]["name"]
    env = container_env(rendered, service_container(rendered, "order"))
    service = one(rendered, "Service", "seckill-nats")
    assert env["SECKILL_EVENTS_NATS_URL"] == (
        f"nats://seckill-nats:{service['spec']['ports'][0]['port']}")
    assert Settings.from_env(env).events.nats_url
