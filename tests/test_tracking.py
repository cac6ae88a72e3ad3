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
