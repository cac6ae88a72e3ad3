"""The alerting rules in alerts/: promtool-clean, unit-tested, generated from
the documented knobs, complete, linked to the runbook, and built on metrics
the exporter really exports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, parse_samples, require_binary, run_cli

ALERTS = ROOT / "alerts"
RULES = ALERTS / "pss-exporter.rules.yml"
TEMPLATE = ALERTS / "pss-exporter.rules.yml.tmpl"
KNOBS = ALERTS / "thresholds.yml"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/pss-exporter/pss-exporter/blob/main/docs/runbook.md"

# The alerts issue 5 asks for, with their severity, and whether they are per group.
EXPECTED = {
    "PhpFpmWorkerMemoryDrift": ("warning", True),
    "PhpFpmWorkerMemoryLeak": ("warning", True),
    "PhpFpmPoolOvercommitted": ("critical", True),
    "PhpFpmPoolSaturated": ("warning", True),
    "ProcessGroupNearMemoryLimit": ("warning", True),
    "ProcessGroupNearMemoryLimitCritical": ("critical", True),
    "ProcessGroupOomKilled": ("critical", True),
    "OomKillsUnattributed": ("critical", False),
    "HostMemoryOomRisk": ("critical", False),
    "PssExporterCollectionStale": ("warning", False),
    "PssExporterReadErrors": ("warning", False),
}

# Knobs short enough for an end-to-end test, including durations that are not
# whole seconds once derived (half of 15s is 7s500ms).
SHORT_KNOBS = """\
worker_smoothing_window: 20s
drift_offset: 2m
drift_baseline_lookback: 1m
drift_for: 10s
leak_window: 15s
leak_for: 0s
overcommitted_for: 5s
saturated_for: 5s
saturated_status_seen_within: 1m
saturated_window: 10s
near_limit_for: 10s
near_limit_critical_for: 5s
oom_kill_window: 1m
host_forecast_window: 1m
host_forecast_horizon: 5m
host_oom_risk_for: 5s
collection_interval: 200ms
collection_stale_for: 0s
read_errors_rate_window: 30s
read_errors_for: 10s
"""


def run_generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ALERTS / "generate.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def rules_of(text: str) -> list[dict]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def alerts_of(text: str) -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules_of(text) if "alert" in rule}


def generated(tmp_path: Path, knobs: str) -> str:
    """The rules rendered with the knobs of `knobs` (YAML) over the defaults."""
    override = tmp_path / "override.yml"
    override.write_text(knobs)
    result = run_generate("--thresholds", str(override), "--output", "-")
    assert result.returncode == 0, result.stderr
    return result.stdout


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.live
def test_promtool_check_rules_is_clean() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules_of(RULES.read_text()))} rules found" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.live
def test_promtool_unit_tests_pass() -> None:
    assert {p.name for p in UNIT_TESTS} >= {"drift.yml", "leak.yml", "exporter.yml"}
    result = promtool("test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def test_shipped_rules_are_the_defaults_rendered() -> None:
    result = run_generate("--output", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout == RULES.read_text(), "run: python alerts/generate.py"


def test_every_knob_is_used_by_the_template() -> None:
    knobs = yaml.safe_load(KNOBS.read_text())
    used = set(re.findall(r"\$\{([a-z0-9_]+)", TEMPLATE.read_text()))
    assert set(knobs) - used == set()


def test_override_changes_threshold_and_for(tmp_path: Path) -> None:
    text = generated(tmp_path, "near_limit_ratio: 0.85\nnear_limit_for: 3m\n")
    near = alerts_of(text)["ProcessGroupNearMemoryLimit"]
    assert near["expr"] == "group:pss_group_cgroup_memory_usage:ratio > 0.85"
    assert near["for"] == "3m"
    assert "(threshold 85%, for 3m)" in near["annotations"]["description"]
    critical = alerts_of(text)["ProcessGroupNearMemoryLimitCritical"]
    assert critical == alerts_of(RULES.read_text())["ProcessGroupNearMemoryLimitCritical"]


def test_later_override_files_win(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yml", tmp_path / "b.yml"
    first.write_text("drift_for: 1h\ndrift_min_bytes: 16MiB\n")
    second.write_text("drift_for: 45m\n")
    result = run_generate("--thresholds", str(first), "--thresholds", str(second), "--output", "-")
    assert result.returncode == 0, result.stderr
    drift = alerts_of(result.stdout)["PhpFpmWorkerMemoryDrift"]
    assert drift["for"] == "45m"
    assert ") >= 16777216" in drift["expr"]
    assert "16 MiB, for 45m" in drift["annotations"]["description"]


def test_windows_and_derived_durations_follow_the_knobs(tmp_path: Path) -> None:
    alerts = alerts_of(generated(tmp_path, SHORT_KNOBS))
    assert "avg_smoothed[15s])" in alerts["PhpFpmWorkerMemoryLeak"]["expr"]
    assert "avg_smoothed[7s500ms])" in alerts["PhpFpmWorkerMemoryLeak"]["expr"]
    assert "increase(pss_group_oom_kills_total[1m])" in alerts["ProcessGroupOomKilled"]["expr"]
    saturated = alerts["PhpFpmPoolSaturated"]["expr"]
    assert "increase(pss_group_oom_kills_total[10s])" in saturated
    assert "min_over_time(pss_phpfpm_status_up[10s])" in saturated
    assert (
        "predict_linear(pss_host_memory_available_bytes[1m], 300)"
        in (alerts["HostMemoryOomRisk"]["expr"])
    )
    assert alerts["PssExporterCollectionStale"]["expr"].rstrip().endswith("> 0.6")
    assert alerts["PssExporterCollectionStale"]["for"] == "0s"


@pytest.mark.live
def test_short_knobs_give_valid_rules(tmp_path: Path) -> None:
    rules = tmp_path / "short.rules.yml"
    rules.write_text(generated(tmp_path, SHORT_KNOBS))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "avg_smoothed offset 3m" in rules.read_text()  # drift_offset + lookback


def aliased_list(knob: str) -> str:
    """A knob set to 9 ** 7 strings in some 250 bytes of YAML aliases."""
    names = "abcdefg"
    values = ["&a [" + ",".join(["lol"] * 9) + "]"]
    values += [
        f"&{name} [" + ",".join([f"*{prev}"] * 9) + "]" for prev, name in zip(names, names[1:])
    ]
    return f"{knob}: [" + ",\n ".join(values) + "]\n"


BAD_KNOBS = {
    "unknown": ("near_limit_ratoi: 0.8\n", "unknown knob 'near_limit_ratoi'"),
    "duration-number": ("near_limit_for: 10\n", "near_limit_for: expected a duration"),
    "zero-window": ("oom_kill_window: 0s\n", "oom_kill_window: must be longer than 0s"),
    "size-words": ("drift_min_bytes: 8 megs\n", "drift_min_bytes: expected a size"),
    "ratio-word": ("near_limit_ratio: high\n", "near_limit_ratio: expected a number"),
    "not-a-mapping": ("- a list\n", "expected a mapping"),
    # Rendered an alert that could never fire (usage / limit > 85).
    "ratio-as-percent": (
        "near_limit_ratio: 85\n",
        "near_limit_ratio: expected a number from 0 to 1 (a ratio, not a percentage), got 85",
    ),
    "growth-ratio-as-percent": (
        "overcommitted_ratio: 25\n",
        "overcommitted_ratio: expected a number from 0 to 10 (a ratio, not a percentage)",
    ),
    "nan": ("leak_min_bytes_per_second: .nan\n", "leak_min_bytes_per_second: expected a number"),
    # Tracebacks: OverflowError (inf * 15000 ms), OverflowError (float of 400
    # digits), ValueError (int of 5,000 digits), RecursionError.
    "huge-number": ("collection_stale_intervals: 1.0e+308\n", "expected a number from 0 to"),
    "huge-size": ("drift_min_bytes: " + "9" * 400 + "TiB\n", "at most 1PiB, got '99999"),
    "huge-duration": ("near_limit_for: " + "9" * 5000 + "s\n", "at most 10y, got '99999"),
    "duration-past-10y": ("drift_offset: 3651d\n", "drift_offset: expected a duration"),
    "nested": ("near_limit_ratio: " + "[" * 1200 + "]" * 1200 + "\n", "nested too deep"),
    # The messages printed the whole value or key.
    "aliased-value": (aliased_list("near_limit_ratio"), "expected a number from 0 to 1"),
    "long-key": ("? " + "k" * 5000 + "\n: 1\n", "unknown knob 'kkkkkkkk"),
}


def test_budget_ratios_may_pass_one(tmp_path: Path) -> None:
    text = generated(tmp_path, "overcommitted_ratio: 1.2\n")
    rule = alerts_of(text)["PhpFpmPoolOvercommitted"]
    assert rule["expr"] == (
        'pss_phpfpm_projected_bytes{basis="observed_peak"} / ignoring(basis) '
        "pss_phpfpm_budget_bytes > 1.2"
    )


@pytest.mark.parametrize("case", BAD_KNOBS)
def test_bad_knobs_are_one_line_errors(tmp_path: Path, case: str) -> None:
    knobs, reason = BAD_KNOBS[case]
    override, output = tmp_path / "bad.yml", tmp_path / "out.yml"
    override.write_text(knobs)
    result = run_generate("--thresholds", str(override), "--output", str(output))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr[:2000]
    assert result.stderr.startswith(f"generate.py: error: {override}: ")
    assert reason in result.stderr
    assert len(result.stderr) - len(str(override)) < 200, result.stderr[:2000]
    assert not output.exists()


def test_every_alert_of_the_issue_is_complete() -> None:
    alerts = alerts_of(RULES.read_text())
    assert set(alerts) == set(EXPECTED)
    anchors = github_anchors(RUNBOOK.read_text())
    for name, (severity, per_group) in EXPECTED.items():
        rule = alerts[name]
        assert rule["labels"] == {"severity": severity}, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        label = "group" if per_group else "instance"
        assert f"{{{{ $labels.{label} }}}}" in notes["description"], name
        assert "$value" in notes["description"], name
        base, _, anchor = notes["runbook_url"].partition("#")
        assert base == RUNBOOK_URL, name
        assert anchor == name.lower() and anchor in anchors, name


def test_runbook_links_resolve() -> None:
    text = RUNBOOK.read_text()
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the runbook links between its sections"
    assert links - github_anchors(text) == set()


def _identity(labels: dict[str, str]) -> frozenset:
    return frozenset((k, v) for k, v in labels.items() if k not in ("__name__", "severity"))


def _series_labels(selector: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', selector))


def test_every_alert_fires_once_and_stays_quiet_twice_in_unit_tests() -> None:
    """For each alert: a test where it fires, and at least two input series
    (by their labels) in its tests for which it never fires."""
    fired: dict[str, set] = {name: set() for name in EXPECTED}
    seen: dict[str, set] = {name: set() for name in EXPECTED}
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            inputs = {_identity(_series_labels(s["series"])) for s in test["input_series"]}
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                seen[name] |= inputs
                for alert in case.get("exp_alerts") or []:
                    fired[name].add(_identity(alert["exp_labels"]))
                    assert set(alert["exp_annotations"]) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }
    for name in EXPECTED:
        assert fired[name], f"{name}: no unit test where it fires"
        quiet = seen[name] - fired[name]
        assert len(quiet) >= 2, f"{name}: fewer than two series that must not fire it"


def _readme_metrics() -> dict[str, tuple[str, str]]:
    """{metric: (type, text introducing its table)} from README's metric tables."""
    out: dict[str, tuple[str, str]] = {}
    intro = ""
    for block in (ROOT / "README.md").read_text().split("\n\n"):
        if not block.startswith("|"):
            intro = block
            continue
        for name, kind in re.findall(r"^\| `(pss_\w+)` \| (\w+) \|", block, re.M):
            out[name] = (kind, intro)
    return out


def test_rule_metrics_are_exported_and_documented() -> None:
    exprs = "\n".join(rule["expr"] for rule in rules_of(RULES.read_text()))
    used = set(re.findall(r"(?<![\w:])(pss_\w+)\b(?!:)", exprs))  # not in rule names
    assert {"pss_group_worker_uss_median_bytes", "pss_group_oom_kills_total"} <= used
    documented = _readme_metrics()
    result = run_cli("once")
    assert result.returncode == 0, result.stderr
    live = {name for name, _ in parse_samples(result.stdout)}
    for name in used:
        assert name in documented, f"{name}: not in README"
        _, intro = documented[name]
        if name not in live:
            # Only with php-fpm pools or cgroup limits, which this machine may lack.
            assert "php-fpm" in intro or "cgroup" in intro, f"{name}: not exported by `once`"
    for counter in re.findall(r"(?:rate|increase)\((pss_\w+)", exprs):
        assert documented[counter][0] == "counter", counter


def test_prometheusrule_manifest_carries_the_shipped_rules() -> None:
    """deploy/kubernetes/prometheusrule.yaml is generate.py's output: the same
    rules as alerts/pss-exporter.rules.yml, in the manifests' namespace."""
    shipped = (ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml").read_text()
    assert shipped == run_generate("--prometheusrule", "--output", "-").stdout
    manifest = yaml.safe_load(shipped)
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["namespace"] == "monitoring"
    rules = yaml.safe_load((ROOT / "alerts" / "pss-exporter.rules.yml").read_text())
    assert manifest["spec"] == rules
