"""deploy/k8s rendered as `kubectl kustomize` would (the example overlay, with throwaway
secret values), and readers of what it renders: pods, containers, their environment."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from seckill_stack.launcher import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAY = K8S / "overlays" / "example"
SERVICES = DEFAULT_PORTS
KNOWN_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images",
                          "secretGenerator", "generatorOptions", "replicas"}
CLUSTER_SCOPED = {"Namespace"}
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


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


def service_container(resources: list[dict[str, Any]], service: str) -> dict:
    deployment = one(resources, "Deployment", f"seckill-{service}")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container
