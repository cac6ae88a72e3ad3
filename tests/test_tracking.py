"""Process tracking: one statm read for a known unchanged process, a
process classified once per (PID, start time), errors counted by reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bounded_collection import Tree

from exporter.procfs import Stat
from exporter.tracking import Proc, ReadErrors, Tracker


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "proc")


class Classify:
    """Groups every process as 'app' and records whom it classified."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, pid: int, st: Stat, parent: Proc | None) -> Proc:
        self.seen.append(pid)
        return Proc(pid, st, "app", None, tracked=True)


def tracker(tree: Tree, classify: Classify, errors: ReadErrors) -> Tracker:
    return Tracker(str(tree.root), classify, errors, use_statm=True, cgroups=False)


def test_unchanged_statm_keeps_the_process_without_reading_stat(tree: Tree) -> None:
    tree.write(10, "app", 100)
    classify, errors = Classify(), ReadErrors()
    t = tracker(tree, classify, errors)
    [first] = t.discover([10], 0.0)
    first.dirty = False  # as a read leaves it
    (tree.root / "10" / "stat").unlink()  # would be a "vanished" error if read
    assert t.discover([10], 1.0) == [first] and not first.dirty
    assert classify.seen == [10] and errors.counts["vanished"] == 0


def test_changed_statm_reads_stat_and_a_new_start_time_classifies_afresh(tree: Tree) -> None:
    tree.write(10, "app", 100)
    classify, errors = Classify(), ReadErrors()
    t = tracker(tree, classify, errors)
    [first] = t.discover([10], 0.0)
    first.dirty = False
    tree.set_statm(10, "2000 200 100 1 0 300 0")
    assert t.discover([10], 1.0) == [first] and first.dirty  # same process, to be read
    tree.write(10, "app", 100, start=99)  # the PID reused by another process
    [second] = t.discover([10], 2.0)
    assert second is not first and second.starttime == 99
    assert classify.seen == [10, 10]


def test_gone_and_forgotten_processes(tree: Tree) -> None:
    tree.write(10, "app", 100)
    tree.write(11, "app", 100)
    classify, errors = Classify(), ReadErrors()
    t = tracker(tree, classify, errors)
    assert len(t.discover([10, 11, 12], 0.0)) == 2  # 12 listed, gone before its stat
    assert errors.counts["vanished"] == 1 and set(t.processes) == {10, 11}
    t.forget(11)
    assert set(t.processes) == {10}
    t.discover([10, 11], 1.0)
    assert classify.seen == [10, 11, 11]  # forgotten: classified again


def test_a_process_whose_cgroup_cannot_be_read_is_in_its_parents(tree: Tree) -> None:
    """An OOM victim, exiting, may no longer show its cgroup: it is where fork
    put it, in its parent's, not in none (which oom.py would count from the
    kernel log, on top of the cgroup's own counter)."""
    tree.write(10, "php-fpm", 100)
    (tree.root / "10" / "cgroup").write_text("4:memory:/fpm\n0::/fpm\n")
    tree.write(11, "php-fpm", 100, ppid=10)
    # no cgroup file: reading it fails (ENOENT), as for an exiting one
    t = Tracker(str(tree.root), Classify(), ReadErrors(), use_statm=True, cgroups=True)
    master, worker = t.discover([10, 11], 0.0)
    assert master.cgroup is not None and master.cgroup.v1_memory == "/fpm"
    assert worker.cgroup == master.cgroup


@pytest.mark.parametrize("exiting", [True, False])
def test_an_exiting_process_that_reads_as_the_root_cgroup_is_in_its_parents(
    tree: Tree, exiting: bool
) -> None:
    """The kernel shows every exiting task in the root of v1 hierarchies; a
    process that moved itself to the root and lives on is in the root."""
    tree.write(10, "php-fpm", 100)
    (tree.root / "10" / "cgroup").write_text("4:memory:/fpm\n0::/\n")
    tree.write(11, "php-fpm", 100, ppid=10)
    (tree.root / "11" / "cgroup").write_text("4:memory:/\n0::/\n")
    if exiting:  # PF_EXITING (0x4) in the flags, field 9
        stat = tree.root / "11" / "stat"
        stat.write_text(stat.read_text().replace(" 4194560 ", f" {4194560 | 0x4} "))
    t = Tracker(str(tree.root), Classify(), ReadErrors(), use_statm=True, cgroups=True)
    _, worker = t.discover([10, 11], 0.0)
    assert worker.cgroup is not None
    assert worker.cgroup.v1_memory == ("/fpm" if exiting else "/")


def test_a_cgroup_file_unreadable_for_another_reason_is_no_cgroup(tree: Tree) -> None:
    """Only a vanished cgroup file (ENOENT, ESRCH) says the process is exiting;
    EISDIR, EACCES, EINVAL say nothing of where it is."""
    tree.write(10, "php-fpm", 100)
    (tree.root / "10" / "cgroup").write_text("4:memory:/fpm\n0::/fpm\n")
    tree.write(11, "php-fpm", 100, ppid=10)
    (tree.root / "11" / "cgroup").mkdir()  # reading it fails with EISDIR
    t = Tracker(str(tree.root), Classify(), ReadErrors(), use_statm=True, cgroups=True)
    _, worker = t.discover([10, 11], 0.0)
    assert worker.cgroup is None


@pytest.mark.parametrize("gone", [True, False])
def test_an_exiting_child_of_pid_1_is_not_in_pid_1s_cgroup(tree: Tree, gone: bool) -> None:
    """A daemonised (reparented) victim: PID 1 did not fork it, so PID 1's
    cgroup (init.scope) says nothing of its own; it has none known."""
    tree.write(1, "systemd", 100, ppid=0)
    (tree.root / "1" / "cgroup").write_text("4:memory:/init.scope\n0::/init.scope\n")
    tree.write(11, "daemon", 100, ppid=1)
    stat = tree.root / "11" / "stat"
    stat.write_text(stat.read_text().replace(" 4194560 ", f" {4194560 | 0x4} "))  # exiting
    if not gone:  # v1 shows an exiting task in the root
        (tree.root / "11" / "cgroup").write_text("4:memory:/\n0::/\n")
    t = Tracker(str(tree.root), Classify(), ReadErrors(), use_statm=True, cgroups=True)
    init, daemon = t.discover([1, 11], 0.0)
    assert init.cgroup is not None and init.cgroup.v1_memory == "/init.scope"
    assert daemon.cgroup is None
