"""The Grafana dashboard holds up: every query of the dashboard and the rules names only
metrics, labels and values that the services really export (scraped from a running stack),
every seckill metric is shown, the panels are complete and do not overlap, and Grafana and
Prometheus are provisioned with what the files name."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.dashboards import (
    DASHBOARDS,
    DEPLOY,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES,
    Query,
    dashboard_files,
    dashboard_panels,
    dashboard_queries,
    rules,
)
from tests.helpers.factories import make_activity, make_product
from tests.helpers.polling import eventually
from tests.helpers.stack import create_database, start_stack

PROVISIONING = DEPLOY / "grafana" / "provisioning"
# Labels Prometheus adds to every scraped series, and the series it makes per target.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
GRID_WIDTH = 24
TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")


def rule_queries() -> list[Query]:
    queries = []
    for rule in rules():
        query = Query(rule.get("alert") or rule["record"], rule["expr"])
        templates = " ".join(str(v) for v in rule.get("annotations", {}).values())
        query.shown_labels = set(TEMPLATE_LABEL.findall(templates))
        queries.append(query)
    return queries


def recorded_series() -> dict[str, set[str]]:
    """Each recording rule's series name and the labels it keeps (its grouping)."""
    return {rule["record"]: Query(rule["record"], rule["expr"]).grouping
            for rule in rules() if "record" in rule}


@dataclass
class Exported:
    """What one scrape of a running stack holds: series names and their labels, label values."""

    labels: dict[str, set[str]]  # sample name -> label names
    values: dict[str, set[str]]  # label name -> values seen
    families: dict[str, set[str]]  # family name -> its sample names


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


@pytest.fixture(scope="module")
async def exported(mariadb: str) -> AsyncIterator[Exported]:
    # Metrics are served only with SECKILL_METRICS_ADDR set (off by default); port 0: any free.
    stack = await start_stack(await create_database(mariadb),
                              SECKILL_METRICS_ADDR="127.0.0.1:0")
    try:
        # One call of each kind the dashboard follows: creations, a won Seckill (outcome,
        # batch, stock), a refused one, reads on the product and order services.
        product = await make_product(stack, stock=5)
        activity = await make_activity(stack, product.id)
        request = activity_pb2.SeckillRequest(activity_id=activity.id, user_id="dash")
        await stack.activities.Seckill(request)
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.activities.Seckill(request)
        await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
        await stack.orders.ListOrders(order_pb2.ListOrdersRequest(user_id="dash"))
        # A waiting room's buyer: waits, is admitted, buys with the pass (its use counted).
        room = await make_activity(stack, product.id,
                                   waiting_room=activity_pb2.WaitingRoom(enabled=True))
        line = stack.activities.JoinQueue(activity_pb2.JoinQueueRequest(
            activity_id=room.id, user_id="dash"))
        async with asyncio.timeout(10):
            async for update in line:
                if update.state == activity_pb2.ADMITTED:
                    break
        await stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=room.id, user_id="dash", admission_pass=update.admission_pass))
        # One registry per process: the activity service's endpoint serves all three here.
        assert stack.activity.metrics_server is not None
        port = stack.activity.metrics_server.server_port
        text = ""

        async def pass_use_counted() -> bool:  # by the mover's next move
            nonlocal text
            text = await asyncio.to_thread(scrape, port)
            return 'seckill_queue_passes_total{outcome="used"}' in text
        await eventually(pass_use_counted, "the mover counted the pass's use")
    finally:
        await stack.stop()
    labels: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            families.setdefault(family.name, set()).add(sample.name)
            for label, value in sample.labels.items():
                values.setdefault(label, set()).add(value)
    yield Exported(labels, values, families)


def known_values(label: str, exported: Exported) -> set[str]:
    if label == "code":  # the services answer any code; one scrape sees only a few
        return set(grpc.StatusCode.__members__)
    if label == "job":
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        return {job["job_name"] for job in config["scrape_configs"]}
    return exported.values.get(label, set())


def check_names(query: Query, exported: Exported) -> list[str]:
    """What in `query` the services do not export: metrics, labels, label values."""
    series = {**exported.labels, **PROMETHEUS_SERIES, **recorded_series()}
    problems = [f"metric {name}" for name in sorted(query.metrics - set(series))]
    available = TARGET_LABELS.union(*(series.get(name, set()) for name in query.metrics))
    problems += [f"label {name}" for name in sorted((query.labels | query.shown_labels)
                                                    - available)]
    for label, op, value in query.matchers:
        if op in ("=~", "!~") and not re.fullmatch(r"[\w|]+", value):
            continue  # a real pattern: nothing to compare
        unknown = set(value.split("|") if "~" in op else [value]) - known_values(label, exported)
        problems += [f'{label}="{v}"' for v in sorted(unknown)]
    return [f"{query.where}: {problem}" for problem in problems]


def test_dashboard_queries_name_only_exported_metrics(exported: Exported) -> None:
    problems = [p for query in dashboard_queries() for p in check_names(query, exported)]
    assert not problems, "\n".join(problems)


def test_rules_name_only_exported_metrics(exported: Exported) -> None:
    problems = [p for query in rule_queries() for p in check_names(query, exported)]
    assert not problems, "\n".join(problems)


def test_dashboard_shows_every_seckill_metric(exported: Exported) -> None:
    used = set().union(*(query.metrics for query in dashboard_queries()))
    for family, samples in exported.families.items():
        # prometheus_client writes each counter's and histogram's start time as a gauge of
        # its own (`_created`): a timestamp, nothing to show.
        if family.startswith("seckill_") and not family.endswith("_created"):
            assert samples & used, f"the dashboard shows nothing of {family}"


def provisioned_datasource() -> dict[str, Any]:
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    [datasource] = config["datasources"]
    return datasource


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_panels_are_complete_and_do_not_overlap(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    datasource = {"type": "prometheus", "uid": provisioned_datasource()["uid"]}
    panels = list(dashboard_panels(dashboard))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_WIDTH
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel
        assert panel["datasource"] == datasource, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']}: no queries"
        assert len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert target["datasource"] == datasource, panel["title"]
            assert target["expr"].strip(), panel["title"]


def compose_volumes(service: str) -> dict[str, str]:
    """Container path -> repo path of `service`'s bind mounts."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {}
    for volume in compose["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source
    return mounts


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards() -> None:
    mounts = compose_volumes("grafana")
    for target, source in mounts.items():
        assert (ROOT / source).is_dir(), source
        if target.startswith("/etc/grafana/provisioning/"):
            assert (ROOT / source).resolve().parent == PROVISIONING.resolve()
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"  # the compose service and its port
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "seckill.yml").read_text())
    [provider] = providers["providers"]
    assert (ROOT / mounts[provider["options"]["path"]]).resolve() == DASHBOARDS.resolve()


def test_prometheus_mounts_the_rules_where_its_config_names_them() -> None:
    mounts = compose_volumes("prometheus")
    config_dir = Path("/etc/prometheus")
    assert mounts[str(config_dir / "prometheus.yml")] == "./deploy/prometheus.yml"
    for name in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]:
        source = mounts[str(config_dir / name)]
        assert (ROOT / source).resolve() == RULES.resolve()
