"""The Grafana dashboards in dashboards/: structure, variables, units, metric
names, and every query parsed by a real Prometheus."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboards_util import (
    annotation_queries,
    dashboard_paths,
    dashboard_queries,
    data_panels,
    load,
    run_queries,
    substitute,
    variable_queries,
    variable_query,
    variable_values,
    variables,
)
from prometheus_util import running_prometheus

from conftest import ROOT

DASHBOARDS = dashboard_paths()
DATASOURCE_UIDS = {"${datasource}", "$datasource"}
# Grafana unit ids the dashboards may use; "suffix:X" is Grafana's custom unit.
UNITS = {"bytes", "s", "none", "short", "percentunit", "reqps", "cps"}
# Functions whose argument may be a counter (a raw counter is never plotted).
COUNTER_FUNCTIONS = re.compile(r"\b(?:rate|irate|increase|changes|resets)\(\s*$")
SELECTOR = re.compile(r"\b(pss_\w+)\s*(\{[^}]*\})?")
README_ROW = re.compile(r"^\| `(pss_\w+)` \| (gauge|counter) \|(.*)$", re.M)
# Values a multi-value $group takes in Grafana: a regex of the selected groups.
VALUES = variable_values(job="pss", instance="127.0.0.1:9778", group="(php-fpm:www|bash)")

by_dashboard = pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)


def readme_metrics() -> dict[str, tuple[str, str]]:
    """{sample name: (type, meaning)} from README.md's metric tables."""
    return {
        name: (kind, meaning)
        for name, kind, meaning in README_ROW.findall((ROOT / "README.md").read_text())
    }


def has_group_label(name: str, meaning: str) -> bool:
    return name.startswith(("pss_group_", "pss_phpfpm_")) and "(no label)" not in meaning


def all_exprs(path: Path) -> list[tuple[str, str]]:
    return dashboard_queries(path) + annotation_queries(path)


def selectors(expr: str) -> Iterator[tuple[str, str, int]]:
    """(metric name, label matchers, offset) of every pss_* selector in expr."""
    for match in SELECTOR.finditer(expr):
        yield match[1], match[2] or "", match.start()


def uses_datasource(obj: dict[str, Any]) -> bool:
    ds = obj.get("datasource") or {}
    return ds.get("type") == "prometheus" and ds.get("uid") in DATASOURCE_UIDS


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus with no data: its only target (port 9, discard) is never up."""
    workdir = tmp_path_factory.mktemp("prometheus")
    with running_prometheus(workdir, "none", "127.0.0.1:9") as prometheus:
        yield prometheus.url


def test_dashboards_ship() -> None:
    assert [p.name for p in DASHBOARDS] == ["pss-exporter.json"]


@by_dashboard
def test_schema_version_is_current(path: Path) -> None:
    assert load(path)["schemaVersion"] >= 39


@by_dashboard
def test_datasource_variable_is_used_everywhere(path: Path) -> None:
    dashboard = load(path)
    ds = variables(dashboard)["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    others = [v for v in variables(dashboard).values() if v["type"] == "query"]
    annotations = dashboard["annotations"]["list"]
    targets = [t for p in data_panels(dashboard) for t in p["targets"]]
    for obj in [*data_panels(dashboard), *targets, *others, *annotations]:
        assert uses_datasource(obj), (obj.get("title") or obj.get("name"), obj.get("datasource"))


@by_dashboard
def test_variables_are_chained(path: Path) -> None:
    found = variables(load(path))
    queries = {name: variable_query(found[name]) for name in ("job", "instance", "group")}
    assert "$" not in queries["job"] and "pss_" in queries["job"]
    assert 'job="$job"' in queries["instance"] and "$instance" not in queries["instance"]
    assert 'job="$job"' in queries["group"] and 'instance="$instance"' in queries["group"]
    assert (found["group"]["multi"], found["group"]["includeAll"]) == (True, True)
    # all three are label_values() queries, so the Prometheus test runs them too
    assert [name for name, _ in variable_queries(path)] == ["job", "instance", "group"]
    for name in ("job", "instance", "group"):
        # refreshed on load (1) or on time range change (2), so values follow the data
        assert (found[name]["type"], found[name]["refresh"] in (1, 2)) == ("query", True), name


@by_dashboard
def test_panels_have_unit_description_and_targets(path: Path) -> None:
    panels = data_panels(load(path))
    assert len(panels) >= 20
    for panel in panels:
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        assert unit in UNITS or unit.startswith("suffix:"), (panel["title"], unit)
        assert len(panel.get("description", "")) >= 40, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel
    ids = [p["id"] for p in data_panels(load(path))]
    assert len(ids) == len(set(ids))


@by_dashboard
def test_the_required_panels_exist(path: Path) -> None:
    exprs = "\n".join(expr for _, expr in dashboard_queries(path))
    types = {p["type"] for p in data_panels(load(path))}
    assert {"timeseries", "stat", "table", "bargauge"} <= types
    required = [
        "pss_group_pss_anon_bytes",
        "pss_group_pss_file_bytes",
        "pss_group_pss_shmem_bytes",
        "sum(pss_group_rss_bytes{",  # the RSS / PSS overstatement stat
        'pss_group_worker_pss_p95_bytes{job="$job", instance="$instance", group=~"$group"}',
        "pss_group_worker_uss_median_bytes",
        "pss_phpfpm_max_children",
        "pss_phpfpm_projected_bytes",
        "pss_phpfpm_budget_bytes",
        "pss_phpfpm_recommended_max_children",
        "pss_phpfpm_status_up",
        "pss_phpfpm_listen_queue",
        "pss_host_memory_accounted_bytes",
        "pss_host_memory_used_bytes",
        "pss_group_cgroup_memory_limit_bytes",
        "increase(pss_group_oom_kills_total",
        "pss_exporter_collection_duration_seconds",
        "time() - pss_exporter_last_collection_timestamp_seconds",
        "sum by (reason) (rate(pss_exporter_read_errors_total",
        "sum by (outcome) (pss_exporter_smaps_processes",
        "pss_exporter_accounting_duration_seconds",
        "pss_exporter_source_up",
    ]
    assert [r for r in required if r not in exprs] == []
    oom = "\n".join(expr for _, expr in annotation_queries(path))
    assert "pss_group_oom_kills_total" in oom and "pss_host_oom_kills_total" in oom


def metric_problems(title: str, expr: str, filtered: bool) -> list[str]:
    """What is wrong with the pss_* selectors of expr: names README.md does not
    document, raw counters, and (when filtered) selectors that ignore the
    dashboard's variables."""
    documented = readme_metrics()
    problems = []
    for name, matchers, offset in selectors(expr):
        kind, meaning = documented.get(name, ("", ""))
        if not kind:
            problems.append(f"{title}: {name} is not in README.md")
        elif kind == "counter" and not COUNTER_FUNCTIONS.search(expr[:offset]):
            problems.append(f"{title}: counter {name} outside rate/increase")
        if not filtered:
            continue
        if 'job="$job"' not in matchers or 'instance="$instance"' not in matchers:
            problems.append(f"{title}: {name} not filtered by $job and $instance")
        if has_group_label(name, meaning) and 'group=~"$group"' not in matchers:
            problems.append(f"{title}: {name} not filtered by group=~$group")
    return problems


@by_dashboard
def test_queries_use_documented_metrics_and_the_variables(path: Path) -> None:
    problems = [p for title, expr in all_exprs(path) for p in metric_problems(title, expr, True)]
    problems += [
        p for name, expr in variable_queries(path) for p in metric_problems(name, expr, False)
    ]
    assert problems == []


def test_substitute_replaces_every_variable_form() -> None:
    expr = 'rate(x{job="$job", g=~"${group}", i="[[instance]]"}[$__rate_interval]) / $__range'
    assert substitute(expr, VALUES) == (
        'rate(x{job="pss", g=~"(php-fpm:www|bash)", i="127.0.0.1:9778"}[1m]) / 1h'
    )
    with pytest.raises(KeyError, match="undefined"):
        substitute("x[$undefined]", VALUES)


@pytest.mark.live
def test_prometheus_rejects_what_grafana_could_not_plot(prometheus: str) -> None:
    results = run_queries(prometheus, [("broken", "sum(up"), ("range", "up[5m]")], VALUES)
    assert [(r.status, r.result_type, r.ok) for r in results] == [
        ("error", "", False),
        ("success", "matrix", False),
    ]
    assert "unclosed" in results[0].error or "expected" in results[0].error


@pytest.mark.live
def test_every_query_parses_in_prometheus(prometheus: str) -> None:
    queries = [
        (f"{path.name}: {title}", expr)
        for path in DASHBOARDS
        for title, expr in all_exprs(path) + variable_queries(path)
    ]
    results = run_queries(prometheus, queries, VALUES)
    assert len(results) == len(queries) >= 40
    assert [r for r in results if not r.ok] == []
