"""deploy/k8s: every built-in kind is valid against the Kubernetes schemas (offline, with
kubernetes-validate), and the pieces fit together: selectors and pod labels, Service ports and
container ports, probe ports and health names, Secret and ConfigMap keys, the SECKILL_* names
the services read, the database accounts, and the connection budget.

No kubectl or kustomize runs here: `render` applies the few kustomize fields the overlay uses,
and refuses any other, so the test cannot pass on a field it ignores."""

from __future__ import annotations

import base64
import copy
import importlib.util
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from seckill_common.config import Settings
from seckill_common.runtime.server import LIVENESS_HEALTH_NAME
from seckill_stack.launcher import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAY = K8S / "overlays" / "example"
KUBERNETES_VERSION = "1.33.0"
OPERATOR_GROUP = "k8s.mariadb.com/"
SERVICES = DEFAULT_PORTS
# Connections the database keeps beyond the services' account: the migration Job, the operator,
# monitoring, people with a console.
HEADROOM = 50
KNOWN_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images",
                          "secretGenerator", "generatorOptions", "replicas"}
CLUSTER_SCOPED = {"Namespace"}
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# --- rendering -------------------------------------------------------------------------------

def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not key=value: {line!r}"
            pairs[key.strip()] = value
    return pairs


def render(folder: Path, secret_values: dict[str, str]) -> list[dict[str, Any]]:
    """What `kubectl kustomize folder` gives, for the fields our kustomizations use."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: teach render() these kustomize fields first: {unknown}"
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        resources += render(path, secret_values) if path.is_dir() else documents(path)
    for generator in kustomization.get("secretGenerator", []):
        assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
        keys: dict[str, str] = {}
        for name in generator["envs"]:
            # The file the user creates; its template lists the same keys.
            keys.update(env_file(folder / f"{name}.example"))
        resources.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": generator["name"]},
                          "data": {key: base64.b64encode(secret_values[key].encode()).decode()
                                   for key in keys}})
    for change in kustomization.get("replicas", []):
        matches = [r for r in resources if r["kind"] == "Deployment"
                   and r["metadata"]["name"] == change["name"]]
        assert len(matches) == 1, change
        matches[0]["spec"]["replicas"] = change["count"]
    for image in kustomization.get("images", []):
        for container in containers(resources):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def pod_specs(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict]]:
    for resource in resources:
        if resource["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield resource, resource["spec"]["template"]["spec"]


def containers(resources: list[dict[str, Any]], *, init: bool = True) -> Iterator[dict]:
    for _owner, spec in pod_specs(resources):
        yield from spec["containers"]
        if init:
            yield from spec.get("initContainers", [])


SECRET_VALUES = {"admin-token": "a" * 32, "root-password": "b" * 32,
                 "migrate-password": "c" * 32, "app-password": "d" * 32,
                 "user-token-secret": "e" * 32}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(OVERLAY, SECRET_VALUES)


def one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def of_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind]


def container_env(resources: list[dict[str, Any]], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env with $(VAR)
    expanded from what came before; Secret values decoded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = ENV_REFERENCE.sub(lambda m: env[m[1]], item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = one(resources, "Secret", ref["name"])["data"]
        if ref["key"] in data:
            env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return env


def seckill_names_read() -> set[str]:
    """Every SECKILL_* name that the services' code mentions (what they can read)."""
    names: set[str] = set()
    for folder in ("seckill_common", "product_svc", "activity_svc", "order_svc"):
        for path in (ROOT / folder).glob("*.py"):
            names |= set(re.findall(r"SECKILL_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return names


def service_container(resources: list[dict[str, Any]], service: str) -> dict:
    deployment = one(resources, "Deployment", f"seckill-{service}")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- schemas ---------------------------------------------------------------------------------

def test_the_overlay_renders_every_part(rendered):
    kinds = {(r["kind"], r["metadata"]["name"]) for r in rendered}
    for service in SERVICES:
        for kind in ("Deployment", "Service", "PodDisruptionBudget"):
            assert (kind, f"seckill-{service}") in kinds
    for part in [("Job", "seckill-migrate"), ("Deployment", "seckill-redis"),
                 ("Service", "seckill-redis"), ("MariaDB", "seckill-db"),
                 ("StatefulSet", "seckill-nats"), ("Service", "seckill-nats"),
                 ("ConfigMap", "seckill-config"), ("Secret", "seckill-secrets"),
                 ("Namespace", "seckill")]:
        assert part in kinds
    assert all(r["metadata"].get("namespace") == "seckill" for r in rendered
               if r["kind"] != "Namespace")


def test_every_built_in_kind_matches_the_kubernetes_schema(rendered):
    checked = 0
    for resource in rendered:
        if resource["apiVersion"].startswith(OPERATOR_GROUP):
            continue  # the operator's custom resources: checked field by field below
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 13


def test_an_invalid_manifest_is_caught():
    """The validator does look: a misspelt field fails."""
    bad = copy.deepcopy(documents(K8S / "base" / "redis.yaml")[0])
    bad["spec"]["replicaz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_every_manifest_file_is_part_of_the_base():
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


# --- labels, selectors, ports, probes -------------------------------------------------------

def pods_selected(resources, selector: dict[str, str]) -> list[dict[str, Any]]:
    return [r for r, _spec in pod_specs(resources)
            if selector.items() <= r["spec"]["template"]["metadata"]["labels"].items()]


def test_deployments_select_their_own_pods(rendered):
    for deployment in [*of_kind(rendered, "Deployment"), *of_kind(rendered, "StatefulSet")]:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert pods_selected(rendered, selector) == [deployment], deployment["metadata"]["name"]


def test_services_reach_container_ports_of_the_pods_they_select(rendered):
    for service in of_kind(rendered, "Service"):
        [target] = pods_selected(rendered, service["spec"]["selector"])
        ports = [p for c in target["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            assert any(port["targetPort"] in (p["name"], p["containerPort"]) for p in ports), (
                service["metadata"]["name"], port)


@pytest.mark.parametrize("service", SERVICES)
def test_service_is_headless_for_client_side_balancing(rendered, service):
    spec = one(rendered, "Service", f"seckill-{service}")["spec"]
    assert spec["clusterIP"] == "None"
    assert not spec.get("publishNotReadyAddresses")  # DNS answers only with ready pods
    assert [p["port"] for p in spec["ports"] if p["name"] == "grpc"] == [SERVICES[service]]


def test_disruption_budgets_cover_one_deployment_each_and_allow_a_drain(rendered):
    for pdb in of_kind(rendered, "PodDisruptionBudget"):
        [target] = pods_selected(rendered, pdb["spec"]["selector"]["matchLabels"])
        replicas = target["spec"]["replicas"]
        spec = pdb["spec"]
        if "minAvailable" in spec:
            assert 1 <= spec["minAvailable"] < replicas  # a node can still be drained
        else:
            assert 1 <= spec["maxUnavailable"] < replicas
    covered = {pdb["metadata"]["name"] for pdb in of_kind(rendered, "PodDisruptionBudget")}
    assert covered == {f"seckill-{s}" for s in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_probes_ask_the_grpc_health_protocol_on_the_service_port(rendered, service):
    container = service_container(rendered, service)
    port = SERVICES[service]
    assert {"name": "grpc", "containerPort": port} in container["ports"]
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "liveness", "readiness")}
    for probe in probes.values():
        assert probe["grpc"]["port"] == port
    # Liveness must not follow the database (an outage would restart every pod); readiness
    # must (and does on SIGTERM): the whole server's entry.
    assert probes["liveness"]["grpc"]["service"] == LIVENESS_HEALTH_NAME
    assert probes["startup"]["grpc"]["service"] == LIVENESS_HEALTH_NAME
    assert probes["readiness"]["grpc"].get("service", "") == ""


@pytest.mark.parametrize("service", SERVICES)
def test_termination_outlasts_the_drain_and_the_grace(rendered, service):
    deployment = one(rendered, "Deployment", f"seckill-{service}")
    env = container_env(rendered, service_container(rendered, service))
    settings = Settings.from_env(env)
    spec = deployment["spec"]["template"]["spec"]
    assert settings.drain_delay_s > 0
    readiness = service_container(rendered, service)["readinessProbe"]
    # Readiness notices NOT_SERVING well within the drain.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < settings.drain_delay_s
    assert spec["terminationGracePeriodSeconds"] >= \
        settings.drain_delay_s + settings.shutdown_grace_s + 5
    assert "lifecycle" not in service_container(rendered, service)  # the drain is in-process


def test_every_container_has_resources_and_runs_unprivileged(rendered):
    for owner, spec in pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True, owner["metadata"]["name"]
        for container in [*spec["containers"], *spec.get("initContainers", [])]:
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"]
            assert resources["limits"]["cpu"] and resources["limits"]["memory"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- configuration, secrets ------------------------------------------------------------------

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


# --- the database ----------------------------------------------------------------------------

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
