"""Sources run with isolation: one that raises loses only its own part of
the snapshot for that cycle, and each reports whether it succeeded and how
long it took (Snapshot.sources)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from fpm import trusted_master_files
from test_bounded_collection import FakeClock, Tree

from exporter.accounting import used
from exporter.classify import NO_FPM
from exporter.collector import Collector
from exporter.config import build_config
from exporter.host import AccountingSource, ProcFile
from exporter.kmsg import KmsgWatcher
from exporter.metrics import render
from exporter.phpfpm import PhpFpmSource
from exporter.procfs import parse_meminfo
from exporter.scheduling import Scheduler
from exporter.snapshot import Snapshot, SourceResult
from exporter.sources import Cycle, FpmPoolsSource, SourceRunner

from conftest import FIXTURES, group_value, parse_samples


class Constant:
    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def collect(self, cycle: Cycle) -> int:
        return self.value


class Broken:
    name = "broken"

    def collect(self, cycle: Cycle) -> int:
        raise RuntimeError("a bug in one source")


def test_runner_gives_a_raising_source_its_failed_value_and_runs_the_next() -> None:
    runner = SourceRunner()
    cycle = Cycle(0.0, [], [], None, {})  # type: ignore[arg-type]
    assert runner.run(Broken(), cycle, -1) == -1
    assert runner.run(Constant("fine", 7), cycle, -1) == 7
    runner.call("fine", lambda: None, None)  # a second step of the same source
    results = runner.results()
    assert [(r.name, r.ok) for r in results] == [("broken", False), ("fine", True)]
    assert all(r.duration >= 0 for r in results)
    assert runner.results() == ()  # the next cycle starts empty


def by_name(snap: Snapshot) -> dict[str, bool]:
    return {r.name: r.ok for r in snap.sources}


# The Tree has a meminfo and no other host file.
SOURCES = {
    "phpfpm_trust": True,
    "phpfpm_config": True,
    "phpfpm_status": True,
    "phpfpm_peaks": True,
    "meminfo": True,
    "vmstat": False,
    "zoneinfo": False,
    "accounting": True,
    "cgroups": True,
}


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    tree = Tree(tmp_path / "proc")
    tree.write(10, "app", 100)
    tree.write(11, "app", 300)
    tree.write(12, "db", 500)
    return tree


def collector(tree: Tree, kmsg: KmsgWatcher | None = None) -> Collector:
    config = build_config({"accounting": {"enabled": True}}, "test")
    return Collector(config, str(tree.root), FakeClock(), sysfs=str(tree.root), kmsg=kmsg)


def test_a_raising_source_loses_only_its_own_metrics(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with collector(tree) as col:
        good = col.collect()
    assert good.memory_total == 8000000 * 1024
    assert by_name(good) == SOURCES

    real = ProcFile.collect

    def broken(self: ProcFile[object], cycle: Cycle) -> object:
        if self.name == "meminfo":
            raise RuntimeError("meminfo source bug")
        return real(self, cycle)

    monkeypatch.setattr(ProcFile, "collect", broken)
    with collector(tree) as col:
        snap = col.collect()
    assert snap.groups == good.groups  # every group intact
    assert snap.memory_total is None and snap.memory_available is None  # the host's part
    # No meminfo: no accounting pass, and so no zoneinfo read.
    assert by_name(snap) == {
        **{k: v for k, v in SOURCES.items() if k != "zoneinfo"},
        "meminfo": False,
    }
    assert all(isinstance(r, SourceResult) and r.duration >= 0 for r in snap.sources)
    assert "source meminfo failed: RuntimeError: 'meminfo source bug'" in caplog.text
    assert "Traceback" not in caplog.text
    samples = parse_samples(render(snap).text.decode())
    assert group_value(samples, "pss_group_pss_bytes", "db") == 500 * 1024


def test_a_failing_php_fpm_trust_check_loses_only_php_fpms_grouping(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The php-fpm part of grouping (trust checks, pool names) runs as a
    source: a surprise there used to fail the whole collection, for good
    when it recurred each cycle."""

    def broken(self: PhpFpmSource, masters: dict[int, int]) -> dict[int, int]:
        raise KeyError("trust bug")

    monkeypatch.setattr(PhpFpmSource, "trust", broken)
    with collector(tree) as col:
        snap = col.collect()
    assert by_name(snap) == {**SOURCES, "phpfpm_trust": False}
    assert {g.name: g.pss for g in snap.groups} == {"app": 400 * 1024, "db": 500 * 1024}
    assert "source phpfpm_trust failed: KeyError" in caplog.text


def test_a_failing_kernel_log_keeps_the_other_sources(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = KmsgWatcher(str(tree.root / "no-kmsg"))  # never started: not available

    def broken() -> list[object]:
        raise OSError("drain failed")

    monkeypatch.setattr(watcher, "drain", broken)
    with collector(tree, watcher) as col:
        snap = col.collect()
    assert by_name(snap)["kmsg"] is False
    assert by_name(snap)["meminfo"] is True and snap.memory_total == 8000000 * 1024
    assert {g.name: g.pss for g in snap.groups} == {"app": 400 * 1024, "db": 500 * 1024}


def test_a_failed_cycle_leaves_no_source_result_to_the_next(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle that dies after a source ran (here the php-fpm start failed,
    then the smaps reads raised) must not join that source's result into
    the next cycle's: the original reported php-fpm failed ever after."""
    failing = [True]

    def start(self: FpmPoolsSource, cycle: Cycle, loads: object) -> None:
        if failing[0]:
            raise RuntimeError("php-fpm start bug")

    def read(self: Scheduler, due: list[object], now: float) -> set[int]:
        if failing[0]:
            raise RuntimeError("scheduler bug")
        return real_read(self, due, now)  # type: ignore[arg-type]

    real_read = Scheduler.read
    monkeypatch.setattr(FpmPoolsSource, "start", start)
    monkeypatch.setattr(Scheduler, "read", read)
    with collector(tree) as col:
        with pytest.raises(RuntimeError, match="scheduler bug"):
            col.collect()
        failing[0] = False
        snap = col.collect()
    assert by_name(snap) == SOURCES


def test_accounting_skipped_without_meminfo_is_tried_again_next_cycle() -> None:
    """A cycle whose host source failed has no meminfo to reconcile with:
    the original gave up on the accounting for a whole interval (and read
    every process's smaps for nothing)."""
    procfs = FIXTURES / "host" / "v2" / "procfs"
    meminfo = parse_meminfo((procfs / "meminfo").read_bytes())
    source = AccountingSource(str(procfs), interval=300.0, slack=5.0)
    assert source.collect(Cycle(0.0, [], [], NO_FPM, {})) is None  # the host failed
    accounting = source.collect(Cycle(10.0, [], [], NO_FPM, {}, meminfo))
    assert accounting is not None and accounting.used == used(meminfo)


def results(snap: Snapshot) -> dict[str, SourceResult]:
    return {r.name: r for r in snap.sources}


def source_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.name == "exporter.sources"]
    caplog.clear()
    return messages


def test_zoneinfo_is_read_by_each_pass_and_reported_in_between(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    """zoneinfo is read by the accounting pass only (accounting.interval,
    60 s): the cycles in between report the last pass's result, so the
    series neither flaps nor claims a read that did not happen. A source is
    logged when it goes down and when it is back, not on every cycle."""
    host = FIXTURES / "host" / "v2" / "procfs"
    shutil.copy(host / "vmstat", tree.root / "vmstat")
    clock = FakeClock()
    config = build_config({"accounting": {"enabled": True}}, "test")
    with (
        caplog.at_level(logging.INFO, "exporter.sources"),
        Collector(config, str(tree.root), clock, sysfs=str(tree.root)) as col,
    ):
        first = col.collect()
        assert results(first)["zoneinfo"].ok is False
        assert "No such file or directory" in (results(first)["zoneinfo"].error or "")
        assert first.accounting is not None
        assert "pcp_free_lists" not in first.accounting.components
        zoneinfo_log = [m for m in source_logs(caplog) if "zoneinfo" in m]
        assert zoneinfo_log == [
            f'source zoneinfo failed: FileNotFoundError: "[Errno 2] No such file or '
            f"directory: '{tree.root}/zoneinfo'\""
        ]
        shutil.copy(host / "zoneinfo", tree.root / "zoneinfo")
        clock.advance(15)  # no pass due: the first pass's result stands
        between = col.collect()
        assert results(between)["zoneinfo"] == results(first)["zoneinfo"]
        assert between.accounting == first.accounting
        assert source_logs(caplog) == []  # still down: not logged again
        clock.advance(60)  # a pass: zoneinfo read again
        later = col.collect()
    assert results(later)["zoneinfo"].ok is True
    assert later.accounting is not None and "pcp_free_lists" in later.accounting.components
    assert source_logs(caplog) == ["source zoneinfo is back"]
    samples = parse_samples(render(later).text.decode())
    assert samples[("pss_exporter_source_up", frozenset({("source", "zoneinfo")}))] == 1
    assert samples[("pss_exporter_source_up", frozenset({("source", "vmstat")}))] == 1


def test_kernel_log_source_is_up_while_the_log_is_read(tree: Tree) -> None:
    """kmsg is a source like the others: down (0) while the watcher cannot
    read the log, and its groups' zero-based kill counts are left out."""
    watcher = KmsgWatcher(str(tree.root / "no-kmsg"))  # never started: not available
    with collector(tree, watcher) as col:
        snap = col.collect()
    kmsg = results(snap)["kmsg"]
    assert (kmsg.ok, kmsg.error) == (False, f"cannot read {tree.root}/no-kmsg")
    assert snap.group_oom_kills == {}
    samples = parse_samples(render(snap).text.decode())
    assert samples[("pss_exporter_source_up", frozenset({("source", "kmsg")}))] == 0
    assert ("pss_exporter_source_duration_seconds", frozenset({("source", "kmsg")})) in samples


def test_php_fpm_config_loads_are_their_own_source(tree: Tree) -> None:
    """A master whose config cannot be read sets phpfpm_config to 0 until a
    load of it succeeds; the status source and the pool's group stay."""
    tree.write(100, "php-fpm8.2", 1000, cmdline="php-fpm: master process (/etc/php-fpm.conf)")
    trusted_master_files(tree.root / "100")
    tree.write(101, "php-fpm8.2", 2000, cmdline="php-fpm: pool www", ppid=100)
    with collector(tree) as col:
        broken = col.collect()
        conf = tree.root / "100" / "root" / "etc" / "php-fpm.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("[www]\nlisten = /run/www.sock\npm = static\npm.max_children = 7\n")
        shutil.rmtree(tree.root / "101")
        tree.write(102, "php-fpm8.2", 2000, cmdline="php-fpm: pool www", ppid=100)
        fixed = col.collect()  # another worker: the config is read again
    config = results(broken)["phpfpm_config"]
    assert (config.ok, config.error) == (False, "1 php-fpm master(s): config errors (logged)")
    assert results(broken)["phpfpm_status"].ok is True
    assert [p.info.max_children for p in broken.pools] == [None]
    assert results(fixed)["phpfpm_config"].ok is True
    assert [p.info.max_children for p in fixed.pools] == [7]
    samples = parse_samples(render(broken).text.decode())
    assert samples[("pss_exporter_source_up", frozenset({("source", "phpfpm_config")}))] == 0
    assert samples[("pss_exporter_source_up", frozenset({("source", "phpfpm_status")}))] == 1
