"""The dashboard's and the rules' PromQL, read just enough to find the names a query uses;
the files they live in."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
RULES = DEPLOY / "prometheus-rules.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
# Grafana's interval variables, replaced by a duration before the query is checked.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "15m"}
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


def series(name: str, values: str | list[float], **labels: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    if not isinstance(values, str):
        values = " ".join(str(v) for v in values)
    return {"series": f"{name}{{{selector}}}", "values": values}
