"""deploy/k8s: every built-in kind is valid against the Kubernetes schemas (offline, with
kubernetes-validate), and the pieces fit together: selectors and pod labels, Service ports and
container ports, probe ports and health names, disruption budgets, termination and resources
(the rendering: tests/helpers/k8s.py)."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from seckill_common.config import Settings
from seckill_common.runtime.server import LIVENESS_HEALTH_NAME
from tests.helpers.k8s import (
    K8S,
    SERVICES,
    container_env,
    documents,
    of_kind,
    one,
    pod_specs,
    service_container,
)

KUBERNETES_VERSION = "1.33.0"
OPERATOR_GROUP = "k8s.mariadb.com/"


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
