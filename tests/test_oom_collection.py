"""The collector end to end on OOM kills and counters: a fake procfs and sysfs
tree (v1 memory cgroups) and the real kernel-log reader on a FIFO. A cgroup
whose counter is unreadable for a cycle, one recreated, two groups in one
limited cgroup, a storm the log mostly misses, host files unreadable for a
while. (counters.py and oom.py on their own: test_counters.py.)"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_bounded_collection import FakeClock, Tree

from exporter.collector import Collector
from exporter.config import build_config
from exporter.kmsg import KmsgWatcher
from exporter.snapshot import Snapshot

from conftest import wait_until

GRACE = 2  # oom.GRACE: collections an unexplained kill waits for its record


class Host:
    """A fake procfs (Tree) and sysfs: processes in v1 memory cgroups."""

    def __init__(self, root: Path) -> None:
        self.tree = Tree(root / "proc")
        self.memory = root / "sys" / "fs" / "cgroup" / "memory"
        self.memory.mkdir(parents=True)
        (self.memory / "memory.usage_in_bytes").write_text("1000000000\n")
        self.vmstat(0)

    def vmstat(self, oom_kill: int | None) -> None:
        path = self.tree.root / "vmstat"
        if oom_kill is None:
            path.unlink()
            path.mkdir()  # unreadable (EISDIR) this cycle
        else:
            if path.is_dir():
                path.rmdir()
            path.write_text(f"nr_free_pages 1000\noom_kill {oom_kill}\n")

    def cgroup(self, name: str, oom_kill: int, usage: int = 1 << 20) -> Path:
        d = self.memory / name
        d.mkdir(exist_ok=True)
        (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (d / "memory.limit_in_bytes").write_text(f"{64 << 20}\n")
        self.oom_kill(name, oom_kill)
        return d

    def oom_kill(self, name: str, count: int | None) -> None:
        path = self.memory / name / "memory.oom_control"
        if path.is_dir():
            path.rmdir()
        if count is None:
            path.unlink()
            path.mkdir()  # unreadable (EISDIR) this cycle
        else:
            path.write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {count}\n")

    def pressure(self, name: str, some_s: float) -> None:
        """The cgroup's PSI, in the unified hierarchy beside v1 (a hybrid host)."""
        d = self.memory.parent / "unified" / name
        d.mkdir(parents=True, exist_ok=True)
        total = int(some_s * 1e6)
        (d / "memory.pressure").write_text(
            f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        )

    def process(self, pid: int, comm: str, cgroup: str) -> None:
        self.tree.write(pid, comm, 1000)
        (self.tree.root / str(pid) / "cgroup").write_text(f"12:memory:/{cgroup}\n0::/{cgroup}\n")

    def kill(self, pid: int) -> None:
        shutil.rmtree(self.tree.root / str(pid))


class KernelLog:
    """The real kernel-log reader on a FIFO the test writes records into."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.watcher = KmsgWatcher(str(path))
        assert self.watcher.start()
        self._fd = os.open(path, os.O_WRONLY)
        self._seq = 100

    def killed(self, pid: int, comm: str) -> None:
        self._seq += 1
        record = (
            f"3,{self._seq},{self._seq * 1000},-;Memory cgroup out of memory: Killed process "
            f"{pid} ({comm}) total-vm:100000kB, anon-rss:60000kB, file-rss:0kB, shmem-rss:0kB, "
            "UID:33 pgtables:200kB oom_score_adj:0\n"
        )
        os.write(self._fd, record.encode())
        wait_until("the record read", lambda: self.watcher.last_seq == self._seq)

    def close(self) -> None:
        os.close(self._fd)
        self.watcher.stop()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.fixture
def kernel_log(tmp_path: Path) -> Iterator[KernelLog]:
    log = KernelLog(tmp_path / "kmsg")
    yield log
    log.close()


def collector(host: Host, kmsg: KmsgWatcher | None = None) -> Collector:
    config = build_config({"accounting": {"enabled": False}, "php_fpm": {"enabled": False}}, "t")
    return Collector(
        config, str(host.tree.root), FakeClock(), str(host.tree.root.parent / "sys"), kmsg
    )


def kills(snap: Snapshot) -> dict[str, int]:
    return dict(snap.group_oom_kills)


def test_a_group_counter_holds_while_its_cgroup_counter_is_unreadable(
    host: Host, kernel_log: KernelLog
) -> None:
    """2 -> 0 -> 2 was the defect: one unreadable memory.oom_control made the
    group's counter fall to the kernel log's 0, and increase() then saw kills
    that never were."""
    host.cgroup("app", oom_kill=2)
    host.process(10, "app", "app")
    col = collector(host, kernel_log.watcher)
    seen = [kills(col.collect())["app"]]
    host.oom_kill("app", None)
    seen.append(kills(col.collect())["app"])
    host.oom_kill("app", 2)
    seen.append(kills(col.collect())["app"])
    host.oom_kill("app", 3)
    seen.append(kills(col.collect())["app"])
    assert seen == [2, 2, 2, 3]


def test_a_recreated_cgroup_adds_to_the_groups_counter(host: Host) -> None:
    host.cgroup("app", oom_kill=3)
    host.process(10, "app", "app")
    col = collector(host)
    assert kills(col.collect())["app"] == 3
    shutil.rmtree(host.memory / "app")  # the service restarted: a new cgroup
    host.cgroup("app", oom_kill=1)
    assert kills(col.collect())["app"] == 4


def test_two_groups_in_one_cgroup_the_victims_group_gets_the_kill(
    host: Host, kernel_log: KernelLog
) -> None:
    """php-fpm's master and a pool's workers in one limited cgroup: a worker
    is killed. Its group +1, the master's +0, together the host's +1."""
    host.cgroup("fpm", oom_kill=0)
    host.process(10, "master", "fpm")
    host.process(11, "worker", "fpm")
    host.process(12, "worker", "fpm")
    col = collector(host, kernel_log.watcher)
    before = col.collect()
    assert kills(before) == {"master": 0, "worker": 0}
    host_before = before.host_oom_kills

    host.kill(11)
    host.oom_kill("fpm", 1)
    host.vmstat(1)
    kernel_log.killed(11, "worker")
    after = col.collect()
    assert kills(after) == {"master": 0, "worker": 1}
    assert (before.oom_unattributed, after.oom_unattributed) == (0, 0)
    assert after.host_oom_kills is not None and host_before is not None
    assert sum(kills(after).values()) - sum(kills(before).values()) == (
        after.host_oom_kills - host_before
    )

    # A kill the log does not report (rate limited): counted, in no group.
    host.oom_kill("fpm", 2)
    for _ in range(GRACE + 1):
        last = col.collect()
    assert kills(last) == {"master": 0, "worker": 1}
    assert last.oom_unattributed == 1


def test_a_storm_the_log_mostly_misses_stays_exact_per_group(
    host: Host, kernel_log: KernelLog
) -> None:
    """Issue 15: 2,585 kills counted by the cgroup, 71 victims in the log."""
    host.cgroup("crawl", oom_kill=0)
    host.process(20, "crawler", "crawl")
    host.cgroup("fpm", oom_kill=0)
    host.process(10, "master", "fpm")
    host.process(11, "worker", "fpm")
    col = collector(host, kernel_log.watcher)
    col.collect()
    host.oom_kill("crawl", 2585)
    host.oom_kill("fpm", 10)
    kernel_log.killed(20, "crawler")
    kernel_log.killed(11, "worker")
    for _ in range(GRACE + 1):
        last = col.collect()
    assert kills(last) == {"crawler": 2585, "master": 0, "worker": 1}
    assert last.oom_unattributed == 9


def test_host_counters_hold_while_their_file_is_unreadable(host: Host) -> None:
    host.process(10, "app", "app")
    host.cgroup("app", oom_kill=0)
    host.vmstat(5)
    col = collector(host)
    seen = [col.collect().host_oom_kills]
    host.vmstat(None)
    seen.append(col.collect().host_oom_kills)  # no series this cycle
    host.vmstat(6)
    seen.append(col.collect().host_oom_kills)
    assert seen == [5, None, 6]


def test_group_pressure_goes_on_across_a_recreated_cgroup(host: Host) -> None:
    def some(snap: Snapshot) -> float:
        pressure = snap.cgroups["app"].pressure
        assert pressure is not None
        return pressure["some"]

    host.cgroup("app", oom_kill=0)
    host.pressure("app", 5.0)
    host.process(10, "app", "app")
    col = collector(host)
    assert some(col.collect()) == 5.0
    host.pressure("app", 5.5)
    assert some(col.collect()) == 5.5
    shutil.rmtree(host.memory / "app")  # the service restarted: a new cgroup
    host.cgroup("app", oom_kill=0)
    host.pressure("app", 1.0)
    assert some(col.collect()) == 6.5


def test_the_kill_of_the_last_grouped_process_of_its_cgroup_is_counted(
    host: Host, kernel_log: KernelLog
) -> None:
    """Finding 2: a one-process job (a container's main process, a transient
    scope) is killed; its cgroup then holds no grouped process, yet its
    counter is still read and gives the group its kill, once."""
    host.cgroup("job", oom_kill=0)
    host.process(10, "job", "job")
    col = collector(host, kernel_log.watcher)
    assert kills(col.collect()) == {"job": 0}
    host.oom_kill("job", 1)
    host.kill(10)  # the victim is gone; nothing grouped is left in its cgroup
    kernel_log.killed(10, "job")
    seen = [kills(col.collect()).get("job") for _ in range(GRACE + 2)]
    assert seen == [1] * (GRACE + 2)


def test_without_the_kernel_log_the_cgroup_alone_counts_its_last_process_kill(
    host: Host,
) -> None:
    host.cgroup("job", oom_kill=0)
    host.process(10, "job", "job")
    col = collector(host)
    col.collect()
    host.oom_kill("job", 2)
    host.kill(10)
    assert [kills(col.collect()).get("job") for _ in range(2)] == [2, 2]


def test_a_cgroup_removed_with_its_last_process_has_its_kill_from_the_log(
    host: Host, kernel_log: KernelLog
) -> None:
    """The container is gone before the next collection: only the log is left."""
    host.cgroup("job", oom_kill=0)
    host.process(10, "job", "job")
    col = collector(host, kernel_log.watcher)
    col.collect()
    host.kill(10)
    shutil.rmtree(host.memory / "job")
    kernel_log.killed(10, "job")
    snap = col.collect()
    assert kills(snap) == {"job": 1} and snap.oom_unattributed == 0


def test_a_recent_cgroup_inside_this_cycles_unit_is_not_counted_twice(host: Host) -> None:
    """The group's last process in app/web is killed while another appears in
    app: app's counter (its first reading, its history) holds the kill."""
    host.cgroup("app", oom_kill=0)
    host.cgroup("app/web", oom_kill=0)
    host.process(10, "app", "app/web")
    col = collector(host)
    col.collect()
    host.kill(10)
    host.oom_kill("app/web", 1)
    host.oom_kill("app", 1)  # the kernel counts it in every ancestor too
    host.process(11, "app", "app")
    assert [kills(col.collect())["app"] for _ in range(2)] == [1, 1]


def test_group_pressure_when_a_process_joins_the_parent_cgroup(host: Host) -> None:
    """Finding 5: app's stall total includes app/web's 100 s counted already."""
    host.cgroup("app", oom_kill=0)
    host.cgroup("app/web", oom_kill=0)
    host.pressure("app/web", 100.0)
    host.pressure("app", 150.0)
    host.process(10, "app", "app/web")
    col = collector(host)
    seen = [col.collect().cgroups["app"].pressure]
    host.process(11, "app", "app")  # the group's outermost cgroup is now app
    seen.append(col.collect().cgroups["app"].pressure)
    host.pressure("app", 160.0)
    seen.append(col.collect().cgroups["app"].pressure)
    assert [p["some"] if p else None for p in seen] == [100.0, 100.0, 110.0]
