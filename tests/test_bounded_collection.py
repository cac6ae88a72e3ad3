"""Correctness of the bounded-collection mechanisms: change detection,
max_age, group membership, the time budget, the large-process schedule,
PID reuse and threaded reads.

A synthetic procfs tree in tmp_path lets each test change exactly one thing
(a Pss, a statm, a PID) between collections, and a fake clock makes ages and
the budget deterministic instead of timing-dependent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fpm import trusted_master_files

from exporter.collector import Collector
from exporter.config import build_config
from exporter.metrics import render
from exporter.snapshot import Snapshot

from conftest import group_value, parse_samples

MiB_KB = 1024  # kB per MiB
STATM = "1000 200 100 1 0 300 0"


class FakeClock:
    """Advances by `step` seconds on every call; `advance()` jumps."""

    def __init__(self, step: float = 0.0) -> None:
        self.t, self.step = 1000.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Tree:
    """A minimal procfs: meminfo plus PID dirs with stat, statm, cmdline,
    smaps_rollup. Each process is grouped by its comm (built-in rule)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        (root / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")

    def write(
        self,
        pid: int,
        comm: str,
        pss_kb: int,
        statm: str = STATM,
        start: int = 1,
        cmdline: str = "",
        ppid: int = 1,
    ) -> None:
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        fields = f"S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 100"
        (d / "stat").write_text(f"{pid} ({comm}) {fields}\n")
        (d / "statm").write_text(statm + "\n")
        (d / "cmdline").write_bytes((cmdline or comm).encode() + b"\0")
        (d / "smaps_rollup").write_text(
            f"Rss: {pss_kb * 2} kB\nPss: {pss_kb} kB\nPrivate_Clean: 0 kB\n"
            f"Private_Dirty: {pss_kb // 2} kB\nSwap: 0 kB\nSwapPss: 0 kB\n"
        )

    def set_pss(self, pid: int, pss_kb: int) -> None:
        """Change the memory the 'kernel' reports without touching statm."""
        comm = (self.root / str(pid) / "stat").read_text().split("(")[1].split(")")[0]
        start = int((self.root / str(pid) / "stat").read_text().split()[21])
        statm = (self.root / str(pid) / "statm").read_text().strip()
        self.write(pid, comm, pss_kb, statm, start)

    def set_statm(self, pid: int, statm: str) -> None:
        (self.root / str(pid) / "statm").write_text(statm + "\n")


def collector(tree: Tree, clock: FakeClock, **collection: object) -> Collector:
    settings = {"interval": "10s", "max_age": "50s", **collection}
    return Collector(build_config({"collection": settings}, "test"), str(tree.root), clock)


def pss(snap: Snapshot, group: str) -> int:
    return next(g.pss for g in snap.groups if g.name == group)


def stale(snap: Snapshot, group: str) -> int:
    return next(g.stale for g in snap.groups if g.name == group)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "proc")


def test_unchanged_statm_reuses_cached_values(tree: Tree) -> None:
    tree.write(10, "app", 100)
    tree.write(11, "db", 200)
    col = collector(tree, FakeClock())
    first = col.collect()
    assert first.smaps_outcomes == {"read": 2, "reused": 0, "deferred": 0}
    assert pss(first, "app") == 100 * 1024

    tree.set_pss(10, 150)  # smaps changed but statm did not: not re-read
    second = col.collect()
    assert second.smaps_outcomes == {"read": 0, "reused": 2, "deferred": 0}
    assert pss(second, "app") == 100 * 1024

    tree.set_statm(10, "1000 250 100 1 0 350 0")  # now the process changed
    third = col.collect()
    assert third.smaps_outcomes == {"read": 1, "reused": 1, "deferred": 0}
    assert pss(third, "app") == 150 * 1024
    assert pss(third, "db") == 200 * 1024


def test_max_age_bounds_staleness(tree: Tree) -> None:
    tree.write(10, "app", 100)
    clock = FakeClock()
    col = collector(tree, clock, max_age="50s")
    col.collect()
    tree.set_pss(10, 120)
    clock.advance(40)  # younger than max_age (with half an interval of slack)
    assert pss(col.collect(), "app") == 100 * 1024
    clock.advance(5)  # 45 s + 5 s slack reaches 50 s
    snap = col.collect()
    assert snap.smaps_outcomes["read"] == 1
    assert pss(snap, "app") == 120 * 1024


def test_max_age_zero_reads_everything_every_cycle(tree: Tree) -> None:
    tree.write(10, "app", 100)
    col = collector(tree, FakeClock(), max_age="0s")
    col.collect()
    tree.set_pss(10, 130)
    snap = col.collect()
    assert snap.smaps_outcomes == {"read": 1, "reused": 0, "deferred": 0}
    assert pss(snap, "app") == 130 * 1024


def test_group_membership_change_rereads_the_whole_group(tree: Tree) -> None:
    tree.write(10, "pool", 100)
    tree.write(11, "pool", 100)
    tree.write(20, "other", 300)
    col = collector(tree, FakeClock())
    col.collect()
    # A new worker maps the same shared pages: the kernel lowers the others' PSS.
    tree.set_pss(10, 70)
    tree.set_pss(11, 70)
    tree.set_pss(20, 999)  # another group, unchanged statm: must stay cached
    tree.write(12, "pool", 70)
    snap = col.collect()
    assert snap.smaps_outcomes == {"read": 3, "reused": 1, "deferred": 0}
    assert pss(snap, "pool") == 210 * 1024
    assert pss(snap, "other") == 300 * 1024


def test_budget_defers_reads_and_resumes_where_it_stopped(tree: Tree) -> None:
    for pid in range(10, 15):
        tree.write(pid, "app", 100)
    # Each clock call advances 1 s; a read calls it twice, so a budget of 4.5 s
    # fits two reads per cycle (starting at +1 and +3; +5 is past the deadline).
    col = collector(tree, FakeClock(step=1.0), budget="4500ms", max_age="1h")
    first = col.collect()
    assert first.smaps_outcomes == {"read": 2, "reused": 0, "deferred": 3}
    assert stale(first, "app") == 3
    assert pss(first, "app") == 200 * 1024  # the three unread ones are not summed
    assert first.budget_exhausted == 1

    second = col.collect()  # the three never read go first
    assert second.smaps_outcomes == {"read": 2, "reused": 2, "deferred": 1}
    assert pss(second, "app") == 400 * 1024

    for pid in range(10, 15):  # everything changes; the remaining one is oldest
        tree.set_statm(pid, "1000 300 100 1 0 400 0")
        tree.set_pss(pid, 50)
    third = col.collect()
    assert third.smaps_outcomes == {"read": 2, "reused": 0, "deferred": 3}
    # The never-read process goes first (50), then the oldest read (50); the
    # three deferred keep their previous values (100 each).
    assert stale(third, "app") == 3
    assert pss(third, "app") == (50 + 50 + 3 * 100) * 1024
    fourth = col.collect()
    fifth = col.collect()
    assert fifth.smaps_outcomes["deferred"] == 0 and stale(fifth, "app") == 0
    assert fourth.budget_exhausted == 4
    assert pss(fifth, "app") == 5 * 50 * 1024  # nobody starved


def test_stale_metric_is_exported(tree: Tree) -> None:
    for pid in range(10, 13):
        tree.write(pid, "app", 100)
    col = collector(tree, FakeClock(step=1.0), budget="2500ms")
    samples = parse_samples(render(col.collect()).text.decode())
    assert group_value(samples, "pss_group_stale_processes", "app") == 2
    assert group_value(samples, "pss_group_processes", "app") == 3
    assert samples[("pss_exporter_smaps_processes", frozenset({("outcome", "deferred")}))] == 2
    assert samples[("pss_exporter_budget_exhausted_total", frozenset())] == 1


def test_large_process_is_read_at_most_every_large_interval(tree: Tree) -> None:
    tree.write(10, "db", 300 * MiB_KB)  # Rss 600 MiB
    tree.write(11, "app", 100)
    clock = FakeClock()
    col = collector(tree, clock, large_rss="512MiB", large_interval="5m", max_age="10s")
    first = col.collect()
    assert first.large_reads[0].group == "db"
    samples = parse_samples(render(first).text.decode())
    key = ("pss_exporter_large_process_read_seconds", frozenset({("rank", "1"), ("group", "db")}))
    assert key in samples

    tree.set_statm(10, "9000 9000 100 1 0 9000 0")  # changed: still not due
    tree.set_pss(10, 310 * MiB_KB)
    tree.set_statm(11, "1000 999 100 1 0 999 0")
    tree.set_pss(11, 110)
    clock.advance(60)
    snap = col.collect()
    assert pss(snap, "db") == 300 * MiB_KB * 1024
    assert pss(snap, "app") == 110 * 1024  # small processes follow their statm
    clock.advance(240)  # 300 s since the large read
    snap = col.collect()
    assert pss(snap, "db") == 310 * MiB_KB * 1024


def test_reused_pid_is_classified_afresh(tree: Tree) -> None:
    tree.write(10, "old", 100, start=5)
    col = collector(tree, FakeClock())
    assert [g.name for g in col.collect().groups] == ["old"]
    tree.write(10, "new", 40, statm="500 50 10 1 0 60 0", start=99)
    snap = col.collect()
    assert [g.name for g in snap.groups] == ["new"]
    assert pss(snap, "new") == 40 * 1024


def test_vanished_after_first_read_is_dropped_and_counted(tree: Tree) -> None:
    tree.write(10, "app", 100)
    tree.write(11, "app", 100)
    col = collector(tree, FakeClock())
    col.collect()
    (tree.root / "11" / "statm").unlink()  # the process exits between reads
    (tree.root / "11" / "smaps_rollup").unlink()
    snap = col.collect()
    assert pss(snap, "app") == 100 * 1024
    assert next(g.processes for g in snap.groups) == 1
    assert snap.read_errors["vanished"] == 1


def test_threaded_reads_give_the_same_values(tree: Tree) -> None:
    for pid in range(10, 30):
        tree.write(pid, f"app{pid % 3}", pid)
    serial = collector(tree, FakeClock(), threads=1).collect()
    threaded = collector(tree, FakeClock(), threads=4).collect()
    assert serial.groups == threaded.groups
    assert threaded.smaps_outcomes["read"] == 20


def test_php_fpm_worker_caught_mid_fork_is_reclassified(tree: Tree) -> None:
    master = "php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)"
    tree.write(100, "php-fpm8.2", 900, cmdline=master)
    trusted_master_files(tree.root / "100")
    # Just forked: the worker still carries its parent's title.
    tree.write(101, "php-fpm8.2", 300, cmdline=master, ppid=100)
    trusted_master_files(tree.root / "101")  # a fork: the same executable
    col = collector(tree, FakeClock())
    first = col.collect()
    # A child of the master, so no master; no pool of the master known yet, so in no group.
    assert [(g.name, g.processes) for g in first.groups] == [("php-fpm:master", 1)]
    (tree.root / "101" / "cmdline").write_bytes(b"php-fpm: pool www\0\0\0")
    second = col.collect()  # statm unchanged, yet the title is read again
    assert [(g.name, g.processes) for g in second.groups] == [
        ("php-fpm:master", 1),
        ("php-fpm:www", 1),
    ]
    assert pss(second, "php-fpm:www") == 300 * 1024
