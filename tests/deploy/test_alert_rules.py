"""The Prometheus rules and the dashboard's queries pass promtool, and the alerts fire on
faults and not on the sale's refusals (promtool's rule tests on synthetic series)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.dashboards import (
    PROMETHEUS_CONFIG,
    RULES,
    dashboard_queries,
    rules,
    series,
)


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
