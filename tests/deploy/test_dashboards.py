"""The Grafana dashboard and the Prometheus rules hold up: promtool accepts them, the alerts fire
on faults and not on the sale's refusals, and every query names only metrics, labels and values
that the services really export (scraped from a running stack, not copied from the code)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product
from tests.helpers.polling import eventually
from tests.helpers.stack import create_database, start_stack

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
RULES = DEPLOY / "prometheus-rules.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
# Labels Prometheus adds to every scraped series, and the series it makes per target.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
# Grafana's interval variables, replaced by a duration before the query is checked.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "15m"}
GRID_WIDTH = 24

# --- PromQL, just enough to find the names a query uses ------------------------------------------

TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<other>\S)
""", re.VERBOSE)
MATCHER = re.compile(r"""([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*")""")
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"bool", "and", "or", "unless", "offset", "inf", "nan", "atan2"}
LEGEND_LABEL = re.compile(r"\{\{\s*\$?(?:labels\.)?(\w+)\s*\}\}")
TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")


@dataclass
class Query:
    """One PromQL expression and the names in it."""

    where: str
    expr: str
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)  # in matchers and grouping clauses
    grouping: set[str] = field(default_factory=set)
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)
    shown_labels: set[str] = field(default_factory=set)  # legend or annotation templates

    def __post_init__(self) -> None:
        tokens = [(m.lastgroup, m[0]) for m in TOKEN.finditer(self.expr)]
        i = 0
        while i < len(tokens):
            kind, text = tokens[i]
            following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
            if kind == "matchers":
                for label, op, quoted in MATCHER.findall(text):
                    self.matchers.append((label, op, json.loads(quoted)))
                    self.labels.add(label)
                assert MATCHER.sub("", text[1:-1]).strip(" ,") == "", (
                    f"{self.where}: unparsed matchers {text}")
            elif kind == "name" and text.lower() in GROUPING and following == "(":
                close = next(j for j in range(i + 1, len(tokens)) if tokens[j][1] == ")")
                names = {t for k, t in tokens[i + 2:close] if k == "name"}
                self.grouping |= names
                self.labels |= names
                i = close
            elif (kind == "name" and following not in ("(", "by", "without")
                  and text.lower() not in KEYWORDS):  # not a function or an aggregation
                self.metrics.add(text)
            i += 1


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries() -> list[Query]:
    queries = []
    for path in dashboard_files():
        for panel in dashboard_panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                query = Query(f"{path.name}: {panel['title']} ({target['refId']})",
                              grafana_expr(target["expr"]))
                query.shown_labels = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
                queries.append(query)
    return queries


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


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


# --- promtool ----------------------------------------------------------------------------

def venv_bin() -> Path:
    return Path(sys.executable).parent


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from PATH or the venv; else taken from Debian's prometheus package (which
    ships it) into the venv: unpacked, not installed, so no Prometheus server starts."""
    found = shutil.which("promtool") or shutil.which("promtool", path=str(venv_bin()))
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("promtool missing: install Debian's prometheus package, or run as root")
    with tempfile.TemporaryDirectory() as scratch:
        download = ["apt-get", "download", "-q", "prometheus"]
        if subprocess.run(download, cwd=scratch, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(download, cwd=scratch, check=True, capture_output=True)
        package = next(Path(scratch).glob("prometheus_*.deb"))
        tree = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], check=True,
                              capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", scratch, "./usr/bin/promtool"], input=tree,
                       check=True, capture_output=True)
        target = venv_bin() / "promtool"
        shutil.copy2(Path(scratch) / "usr" / "bin" / "promtool", target)
    return str(target)


def run_promtool(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_pass_promtool_check(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_prometheus_config_loads_the_rules(promtool: str) -> None:
    # check config resolves rule_files relative to the config, as the container mounts them.
    out = run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert "SUCCESS: 1 rule files found" in out


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert queries
    for query in queries:
        assert "$" not in query.expr, f"{query.where}: unknown Grafana variable: {query.expr}"
    # promtool parses recording rules' expressions: one per query.
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": q.expr} for n, q in enumerate(queries)]}]}))
    run_promtool(promtool, "check", "rules", str(path))


def series(name: str, values: str | list[float], **labels: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    if not isinstance(values, str):
        values = " ".join(str(v) for v in values)
    return {"series": f"{name}{{{selector}}}", "values": values}


def test_alerts_fire_on_faults_not_on_the_sales_refusals(promtool: str, tmp_path: Path) -> None:
    """Synthetic series through `promtool test rules` (samples every 15 s for 20 minutes)."""
    seckill = "/seckill.v1.ActivityService/Seckill"
    get = "/seckill.v1.ActivityService/GetActivity"
    activity = {"service": "activity", "job": "activity", "instance": "a1:9464"}
    order = {"service": "order", "job": "order", "instance": "order:9464"}
    rpcs = "seckill_rpc_requests_total"
    buckets = "seckill_rpc_latency_seconds_bucket"
    count = "seckill_rpc_latency_seconds_count"
    steps = 80
    inputs = [
        # activity: 10 wins/s and 30 refusals/s, as in a sale: no error alert.
        series(rpcs, f"0+150x{steps}", method=seckill, code="OK", **activity),
        series(rpcs, f"0+300x{steps}", method=seckill, code="FAILED_PRECONDITION", **activity),
        series(rpcs, f"0+150x{steps}", method=seckill, code="ALREADY_EXISTS", **activity),
        # order: 10 OK/s, 1 UNAVAILABLE/s (9%): alert.
        series(rpcs, f"0+150x{steps}", method="/seckill.v1.OrderService/GetOrder", code="OK",
               **order),
        series(rpcs, f"0+15x{steps}", method="/seckill.v1.OrderService/GetOrder",
               code="UNAVAILABLE", **order),
        # Seckill answers in 250-500 ms (p99 about 0.5 s): alert; GetActivity in 10 ms: none.
        series(buckets, f"0x{steps}", method=seckill, code="OK", le="0.01", **activity),
        series(buckets, f"0x{steps}", method=seckill, code="OK", le="0.25", **activity),
        series(buckets, f"0+150x{steps}", method=seckill, code="OK", le="0.5", **activity),
        series(buckets, f"0+150x{steps}", method=seckill, code="OK", le="+Inf", **activity),
        series(count, f"0+150x{steps}", method=seckill, code="OK", **activity),
        series(buckets, f"0+150x{steps}", method=get, code="OK", le="0.01", **activity),
        series(buckets, f"0+150x{steps}", method=get, code="OK", le="0.25", **activity),
        series(buckets, f"0+150x{steps}", method=get, code="OK", le="0.5", **activity),
        series(buckets, f"0+150x{steps}", method=get, code="OK", le="+Inf", **activity),
        series(count, f"0+150x{steps}", method=get, code="OK", **activity),
        # Waiters at every scrape in activity (alert); every other scrape in order (none).
        series("seckill_db_pool_waiting", f"3x{steps}", **activity),
        series("seckill_db_pool_waiting", [n % 2 for n in range(steps)], **order),
        # activity's pool full (alert), order's half used (none).
        series("seckill_db_pool_connections", f"10x{steps}", state="in_use", **activity),
        series("seckill_db_pool_connections", f"0x{steps}", state="idle", **activity),
        series("seckill_db_pool_max_connections", f"10x{steps}", **activity),
        series("seckill_db_pool_connections", f"5x{steps}", state="in_use", **order),
        series("seckill_db_pool_connections", f"5x{steps}", state="idle", **order),
        series("seckill_db_pool_max_connections", f"10x{steps}", **order),
        # 10 expiries/s, 10 to 30 s after their deadlines (p99 about 30 s): alert.
        series("seckill_order_expiry_lag_seconds_bucket", f"0x{steps}", le="10", **order),
        series("seckill_order_expiry_lag_seconds_bucket", f"0+150x{steps}", le="30", **order),
        series("seckill_order_expiry_lag_seconds_bucket", f"0+150x{steps}", le="+Inf",
               **order),
        # The relay's oldest unsent event ages a second a second (JetStream away): alert.
        series("seckill_events_relay_lag_seconds", f"0+15x{steps}", **order),
        # order's target stops answering after 5 minutes (alert); activity's answers (none).
        series("up", f"1x19 0x{steps - 20}", job="order", instance="order:9464"),
        series("up", f"1x{steps}", job="activity", instance="a1:9464"),
    ]

    descriptions = {rule["alert"]: rule["annotations"].get("description")
                    for rule in rules() if "alert" in rule}

    def alert(name: str, at: str, labels: dict[str, str] | None = None, severity: str = "",
              summary: str = "") -> dict[str, Any]:
        """`name` at `at`: firing once with these labels and summary, or (no labels) not."""
        expected = []
        if labels is not None:
            annotations = {"summary": summary}
            if descriptions[name]:
                annotations["description"] = descriptions[name]
            expected.append({"exp_labels": {**labels, "severity": severity},
                             "exp_annotations": annotations})
        return {"alertname": name, "eval_time": at, "exp_alerts": expected}

    checks = [
        # `for: 5m` holds the alert back at first.
        alert("SeckillErrorRate", "3m"),
        alert("SeckillErrorRate", "15m", {"service": "order"}, "critical",
              "order: 9.091% of calls fail"),
        alert("SeckillLatencyHigh", "15m", {"service": "activity", "method": seckill},
              "warning", f"{seckill}: p99 497.5ms"),
        alert("SeckillDbPoolSaturated", "15m", activity, "warning",
              "activity at a1:9464: calls wait for a DB connection"),
        alert("SeckillDbPoolNearlyFull", "15m", activity, "warning",
              "activity at a1:9464: 100% of the DB pool in use"),
        alert("SeckillExpiryLate", "3m"),
        alert("SeckillExpiryLate", "15m", {}, "warning",
              "unpaid orders expire 29.8s after their deadline (p99)"),
        alert("SeckillEventsRelayLagging", "2m"),
        alert("SeckillEventsRelayLagging", "15m", {}, "warning",
              "order events reach JetStream 15m 0s late"),
        alert("SeckillTargetDown", "15m", {"job": "order", "instance": "order:9464"},
              "critical", "order at order:9464 is not answering scrapes"),
    ]
    assert {check["alertname"] for check in checks} == {
        rule["alert"] for rule in rules() if "alert" in rule}, "every alert is exercised"
    test_file = tmp_path / "rules-test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": inputs, "alert_rule_test": checks}],
    }))
    run_promtool(promtool, "test", "rules", str(test_file))


# --- the names the services export -------------------------------------------------------

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


# --- the dashboard's structure and its provisioning --------------------------------------

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
