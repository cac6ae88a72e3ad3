"""The metrics layer is pure: everything it renders is in the Snapshot, so a
format rendered on demand (from an HTTP thread) reads nothing of the system."""

from __future__ import annotations

import builtins
import os
from typing import Any

import pytest

from exporter import privileges
from exporter.collector import Collector
from exporter.config import build_config
from exporter.metrics import OPENMETRICS, TEXT, render
from exporter.privileges import OwnFamily, OwnProcess, OwnSample, own_process
from exporter.snapshot import Snapshot

from conftest import FIXTURES, parse_samples

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
