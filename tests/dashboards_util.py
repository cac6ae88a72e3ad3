"""Read the Grafana dashboards in dashboards/ and run their queries against a
real Prometheus.

Used by test_dashboards.py (queries must parse, against an empty Prometheus)
and meant for the end-to-end test (queries must return data, against a
Prometheus that scraped the exporter):

    values = variable_values(job="pss", instance="127.0.0.1:9778")
    for path in dashboard_paths():
        for result in run_queries(prometheus_url, dashboard_queries(path), values):
            assert result.ok and result.series > 0, result
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import ROOT, http_get

DASHBOARDS_DIR = ROOT / "dashboards"

# Values of Grafana's built-in variables, as a short dashboard range would
# give them. $__range is the dashboard's time range (used by instant stats).
BUILTIN_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

# $name, ${name}, ${name:format} and the deprecated [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$", re.S)


@dataclass(frozen=True)
class QueryResult:
    panel: str
    expr: str  # as sent, variables substituted
    status: str  # Prometheus' "success" or "error"
    error: str
    result_type: str  # "vector" / "scalar" on success
    series: int  # number of series (1 for a scalar)

    @property
    def ok(self) -> bool:
        return self.status == "success" and self.result_type in ("vector", "scalar")


def dashboard_paths() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, descending into (collapsed) rows."""
    stack = list(reversed(dashboard.get("panels", [])))
    while stack:
        panel = stack.pop()
        yield panel
        stack.extend(reversed(panel.get("panels", [])))


def data_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The panels that query (every panel but rows)."""
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def variable_query(variable: Mapping[str, Any]) -> str:
    """The query of a query variable, in the string or the Grafana 10 object form."""
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) of every target of every panel, in order."""
    return [
        (panel["title"], target["expr"])
        for panel in data_panels(load(path))
        for target in panel.get("targets", [])
    ]


def annotation_queries(path: Path) -> list[tuple[str, str]]:
    """(annotation name, PromQL expr) of every annotation query."""
    annotations = load(path).get("annotations", {}).get("list", [])
    return [(a["name"], a["expr"]) for a in annotations if "expr" in a]


def variable_queries(path: Path) -> list[tuple[str, str]]:
    """(variable name, PromQL) for every label_values(SELECTOR, LABEL) query
    variable: `group by (LABEL) (SELECTOR)` returns one series per value."""
    out = []
    for name, variable in variables(load(path)).items():
        match = _LABEL_VALUES.match(variable_query(variable).strip())
        if variable.get("type") == "query" and match:
            out.append((name, f"group by ({match[2]}) ({match[1]})"))
    return out


def variable_values(job: str, instance: str, group: str = ".+") -> dict[str, str]:
    """Values for substitute(): the dashboard's variables plus Grafana's
    built-ins. group is the regex Grafana sends for the selection
    (".+" is the dashboard's All value; several groups are "(a|b)")."""
    return {"job": job, "instance": instance, "group": group, **BUILTIN_VALUES}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """expr with every Grafana variable replaced; KeyError names an unknown one."""

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"variable ${name} has no value (in {expr!r})")
        return values[name]

    return _VARIABLE.sub(value, expr)


def instant_query(prometheus: str, expr: str) -> dict[str, Any]:
    """Prometheus' JSON answer to /api/v1/query (also for 4xx errors)."""
    url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(expr)}"
    status, _, body = http_get(url, timeout=10)
    try:
        return json.loads(body)
    except ValueError:
        return {"status": "error", "error": f"HTTP {status}: {body[:200]!r}"}


def run_queries(
    prometheus: str, queries: list[tuple[str, str]], values: Mapping[str, str]
) -> list[QueryResult]:
    """Run each (title, expr) as an instant query, variables substituted."""
    results = []
    for title, expr in queries:
        sent = substitute(expr, values)
        answer = instant_query(prometheus, sent)
        data = answer.get("data", {})
        result_type = data.get("resultType", "")
        series = 1 if result_type == "scalar" else len(data.get("result", []))
        results.append(
            QueryResult(
                panel=title,
                expr=sent,
                status=answer.get("status", ""),
                error=answer.get("error", ""),
                result_type=result_type,
                series=series,
            )
        )
    return results
