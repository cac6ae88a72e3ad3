"""Read scheduling: smaps_rollup or full smaps decided per read, and the
reader threads (and the collection's other threads) shut down by close()."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from test_bounded_collection import FakeClock, Tree, collector, pss

from exporter import scheduling
from exporter.collector import Collector
from exporter.config import build_config
from exporter.kmsg import KmsgWatcher
from exporter.scheduling import read_memory

OLD_SMAPS = (
    "00400000-00452000 r-xp 00000000 08:01 1 /usr/sbin/old\n"
    "Rss: 400 kB\nPss: 300 kB\nPrivate_Clean: 0 kB\nPrivate_Dirty: 100 kB\n"
    "Swap: 0 kB\nSwapPss: 0 kB\n"
)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "proc")


def old_kernel_process(tree: Tree, pid: int) -> None:
    """A process as a kernel before 4.14 shows it: smaps, no smaps_rollup."""
    tree.write(pid, "old", 1)
    (tree.root / str(pid) / "smaps_rollup").unlink()
    (tree.root / str(pid) / "smaps").write_text(OLD_SMAPS)


def test_read_memory_falls_back_to_smaps_for_that_read_only(tree: Tree) -> None:
    old_kernel_process(tree, 10)
    tree.write(11, "new", 50)
    old, new = read_memory(str(tree.root), 10), read_memory(str(tree.root), 11)
    assert (old.memory.pss, old.full_smaps) == (300 * 1024, True)
    assert (new.memory.pss, new.full_smaps) == (50 * 1024, False)
    (tree.root / "12").mkdir()  # listed, but both files gone: it vanished
    with pytest.raises(FileNotFoundError):
        read_memory(str(tree.root), 12)


def test_read_memory_told_no_rollup_still_reads_a_rollup_only_process(tree: Tree) -> None:
    tree.write(11, "new", 50)
    assert read_memory(str(tree.root), 11, rollup=False) == (read_memory(str(tree.root), 11))
    (tree.root / "12").mkdir()  # vanished
    with pytest.raises(FileNotFoundError):
        read_memory(str(tree.root), 12, rollup=False)


def test_one_missing_rollup_does_not_switch_later_reads_to_smaps(tree: Tree) -> None:
    """Once a read found no smaps_rollup, the original read full smaps for
    every later process for good: one with only smaps_rollup vanished."""
    old_kernel_process(tree, 10)
    col = collector(tree, FakeClock())
    assert pss(col.collect(), "old") == 300 * 1024
    tree.write(11, "new", 50)  # smaps_rollup only, as any kernel since 4.14 has
    snap = col.collect()
    assert pss(snap, "new") == 50 * 1024
    assert pss(snap, "old") == 300 * 1024
    assert snap.read_errors["vanished"] == 0


def test_an_old_kernel_costs_no_failed_rollup_open_per_read(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once reads find no smaps_rollup, later ones go to full smaps first;
    the original tried (and failed) smaps_rollup and stat'ed smaps on each."""
    for pid in (10, 11, 12):
        old_kernel_process(tree, pid)
    col = collector(tree, FakeClock())
    assert pss(col.collect(), "old") == 3 * 300 * 1024
    opened: list[str] = []
    real = scheduling.read_bytes

    def spy(path: str, *args: object, **kwargs: object) -> bytes:
        opened.append(path.rsplit("/", 1)[1])
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduling, "read_bytes", spy)
    for pid in (10, 11, 12):
        tree.set_statm(pid, "3000 200 100 1 0 150 0")  # changed: each is read again
    snap = col.collect()
    assert snap.smaps_outcomes["read"] == 3
    assert pss(snap, "old") == 3 * 300 * 1024
    assert opened == ["smaps"] * 3


def test_close_stops_the_smaps_readers_and_the_kernel_log(tree: Tree, tmp_path: Path) -> None:
    for pid in range(10, 20):
        tree.write(pid, "app", pid)
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    watcher = KmsgWatcher(str(fifo))
    writer = os.open(fifo, os.O_RDWR)  # keeps the FIFO open: the reader waits, alive
    try:
        assert watcher.start()
        before = set(threading.enumerate())
        config = build_config({"collection": {"interval": "10s", "threads": 4}}, "test")
        col = Collector(config, str(tree.root), FakeClock(), kmsg=watcher)  # as cli does
        col.collect()
        readers = [t for t in set(threading.enumerate()) - before if t.name.startswith("smaps")]
        assert readers and watcher.available
        col.close()
        assert [t.name for t in readers if t.is_alive()] == []
        assert not watcher.available
    finally:
        watcher.stop()
        os.close(writer)
