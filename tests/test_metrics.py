"""The metrics layer is pure: everything it renders is in the Snapshot, so a
format rendered on demand (from an HTTP thread) reads nothing of the system."""

from __future__ import annotations

import builtins
import os
import subprocess
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter import privileges
from exporter.collector import Collector
from exporter.config import build_config
from exporter.metrics import OPENMETRICS, TEXT, render
from exporter.privileges import OwnFamily, OwnProcess, OwnSample, own_process
from exporter.procfs import Memory
from exporter.snapshot import Sample, Snapshot, aggregate

from conftest import FIXTURES, parse_samples, require_binary

OWN = OwnProcess(
    (("cap_sys_ptrace", False), ("cap_dac_read_search", True), ("cap_syslog", False)),
    (
        OwnFamily(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            (OwnSample("process_open_fds", (), 7.0),),
        ),
        OwnFamily(
            "process_cpu_seconds",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (OwnSample("process_cpu_seconds_total", (), 1.5),),
        ),
        OwnFamily(
            "python_info",
            "gauge",
            "Python platform information",
            (OwnSample("python_info", (("implementation", "CPython"), ("major", "3")), 1.0),),
        ),
    ),
)


def test_rendering_reads_nothing_of_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capabilities and the exporter's process metrics come from the snapshot:
    with every way of opening a file refused, both formats and gzip render."""
    snap = Snapshot((), 8 << 30, 4 << 30, 0.0, 0.01, 3, {}, 0, own=OWN)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the metrics layer read {args[:1]} at render time")

    for module, name in ((os, "open"), (os, "listdir"), (os, "scandir"), (builtins, "open")):
        monkeypatch.setattr(module, name, refuse)
    exp = render(snap, (TEXT,))
    later = exp.body(OPENMETRICS, gzipped=True)  # on demand, as an HTTP thread would
    monkeypatch.undo()
    assert later
    samples = parse_samples(exp.text.decode())
    caps = {
        dict(labels)["capability"]: value
        for (name, labels), value in samples.items()
        if name == "pss_exporter_privileges"
    }
    assert caps == {"cap_sys_ptrace": 0, "cap_dac_read_search": 1, "cap_syslog": 0}
    assert samples[("process_open_fds", frozenset())] == 7
    assert samples[("process_cpu_seconds_total", frozenset())] == 1.5
    info = frozenset({"implementation": "CPython", "major": "3"}.items())
    assert samples[("python_info", info)] == 1


def test_the_collection_reads_the_exporters_own_process() -> None:
    """What the render no longer reads, the collection does: the capabilities
    of privileges.held() and prometheus_client's process metrics."""
    own = own_process()
    assert own.privileges == tuple(privileges.held().items())
    assert [name for name, _ in own.privileges] == list(privileges.NEEDED)
    values = {s.name: s.value for fam in own.families for s in fam.samples}
    assert values["process_open_fds"] >= 3  # stdin, stdout, stderr at least
    assert values["process_resident_memory_bytes"] > 1 << 20
    assert values["process_start_time_seconds"] > 0
    assert any(fam.name == "python_info" for fam in own.families)
    snap = Collector(build_config({}, "test"), str(FIXTURES / "procfs" / "fpm-host")).collect()
    assert [name for name, _ in snap.own.privileges] == list(privileges.NEEDED)
    body = render(snap).text.decode()
    assert "process_resident_memory_bytes " in body
    assert 'pss_exporter_privileges{capability="cap_sys_ptrace"}' in body


def worker(group: str, pss_mib: int, master: bool = False) -> Sample:
    mib = 1 << 20
    memory = Memory(2 * pss_mib * mib, pss_mib * mib, pss_mib * mib // 2, 0, 0, None, None, None)
    return Sample(group, memory, not master)


def families(snap: Snapshot) -> dict[str, Metric]:
    text = render(snap, (TEXT,)).text.decode()
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


def test_worker_distributions_are_gauges_not_summaries() -> None:
    """A Summary's _sum and _count are counters; the workers' fall when one
    exits. The distribution is gauges: count, median, p95, max (nearest rank)."""
    samples = [worker("php-fpm:www", mib) for mib in (10, 40, 20, 30)]
    samples.append(worker("php-fpm:master", 5, master=True))
    groups = aggregate(samples)
    fams = families(Snapshot(groups, 8 << 30, 4 << 30, 0.0, 0.01, 5, {}, 0, own=OWN))
    kinds = {f.type for n, f in fams.items() if n.startswith("pss_")}
    assert kinds == {"gauge", "counter"}  # no summary, no histogram

    def value(name: str, group: str) -> float | None:
        found = [s.value for s in fams[name].samples if s.labels == {"group": group}]
        return found[0] if found else None

    mib = 1 << 20
    assert value("pss_group_workers", "php-fpm:www") == 4
    assert value("pss_group_worker_pss_median_bytes", "php-fpm:www") == 20 * mib
    assert value("pss_group_worker_pss_p95_bytes", "php-fpm:www") == 40 * mib
    assert value("pss_group_worker_pss_max_bytes", "php-fpm:www") == 40 * mib
    assert value("pss_group_worker_uss_median_bytes", "php-fpm:www") == 10 * mib
    assert value("pss_group_worker_uss_max_bytes", "php-fpm:www") == 20 * mib
    assert value("pss_group_processes", "php-fpm:master") == 1
    assert value("pss_group_workers", "php-fpm:master") == 0
    assert value("pss_group_worker_pss_median_bytes", "php-fpm:master") is None


def test_help_texts_say_what_the_value_is_once() -> None:
    snap = Collector(build_config({}, "test"), str(FIXTURES / "procfs" / "fpm-host")).collect()
    helps = {n: f.documentation for n, f in families(snap).items() if n.startswith("pss_")}
    assert [n for n, doc in helps.items() if "background" in doc] == []
    assert all(doc and doc.count("(") == doc.count(")") for doc in helps.values())


def test_oom_and_group_help_texts_name_every_rule_the_code_applies() -> None:
    """Finding 9: rule 3b (the only group that lost a process), rule 4 (the
    log outside cgroups), rule 5 (a shared cgroup's history); who is no worker."""
    config = build_config({"php_fpm": {"enabled": False}}, "test")
    snap = Collector(config, str(FIXTURES / "procfs" / "fpm-host")).collect()
    snap = replace(snap, group_oom_kills={"php-fpm:www": 0}, oom_unattributed=0)
    helps = {n: f.documentation for n, f in families(snap).items()}
    kills = helps["pss_group_oom_kills"]
    assert "only group that lost a process" in kills and "outside cgroups" in kills
    assert "before its first reading" in helps["pss_oom_kills_unattributed"]
    assert "php-fpm pools' zombies are in no group" in helps["pss_group_processes"]
    assert "kernel threads" in helps["pss_group_workers"]


@pytest.mark.live
def test_promtool_check_metrics_is_clean() -> None:
    """promtool's lint (names, units, HELP, counter suffixes) on a collection
    of the fixture host with php-fpm pools, in the text format it reads."""
    snap = Collector(build_config({}, "test"), str(FIXTURES / "procfs" / "fpm-host")).collect()
    body = render(snap, (TEXT,)).text
    assert b"pss_group_worker_uss_p95_bytes" in body
    result = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout + result.stderr, result
