"""Live: real OOM kills in a memory cgroup the test creates, seen by `serve`.

1. From the cgroup's own counter: a sleeper and an allocator, both in one
   group (one cmdline rule) and in one cgroup limited to LIMIT; the allocator
   asks for more than LIMIT and the kernel kills it. The group's cgroup limit,
   usage and OOM kill counter, and the host's counter, are checked.
2. From the kernel log: the same with `cgroups: {enabled: false}`, so the group
   has no cgroup series; the victim is seen by a collection first, then grows
   past the limit (memhog's SIGUSR1), and its kill in /dev/kmsg is counted.
3. Two groups in one limited cgroup (as php-fpm's master and a pool): the
   cgroup's counter says a process died, the kernel log whose; the victim's
   group gets +1, the other +0, nothing is unattributed.

Only processes of this test carry its marker, so only its kills can reach
its group: exactly one per scenario, whatever else the machine OOM-kills.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import http_get, parse_samples, running_exporter, unavailable, wait_until
from memhog import MIB, join_cgroup, running_hog

pytestmark = pytest.mark.live

LIMIT = 64 * MIB
SLEEPER_MIB = 4  # plus the interpreter's ~10 MiB: well below LIMIT
ALLOCATOR_MIB = 128  # twice LIMIT: killed while writing it
GROUP = "oomtest"
WAIT = 20.0  # seconds for a metric to show what the test waits for

MEMHOG = str(Path(__file__).resolve().parent / "memhog.py")


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    version: int  # 1 or 2

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, count = line.partition(" ")
            if key == "oom_kill":
                return int(count)
        raise AssertionError(f"no oom_kill in {self.path / name}")


def _memory_roots() -> Iterator[tuple[Path, int]]:
    """Where a memory cgroup can be created: the v1 memory controller, or a
    unified hierarchy whose root hands the memory controller to its children."""
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        yield v1, 1
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        try:
            delegated = (root / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if "memory" in delegated:
            yield root, 2


def _limit(cg: Path, version: int, limit: int) -> None:
    """Limit memory to limit and forbid swapping, so the limit means an OOM kill."""
    if version == 1:
        (cg / "memory.limit_in_bytes").write_text(str(limit))
        (cg / "memory.swappiness").write_text("0")
        memsw = cg / "memory.memsw.limit_in_bytes"  # only with swap accounting
        if memsw.exists():
            memsw.write_text(str(limit))
    else:
        (cg / "memory.max").write_text(str(limit))
        swap = cg / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")


def _remove(cg: Path) -> None:
    """Kill whatever is left in the cgroup (only this test's processes can be
    there), then remove it once the kernel has let go of them."""
    deadline = time.monotonic() + 10
    while True:
        pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            cg.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def new_memory_cgroup(name: str, limit: int) -> Iterator[MemoryCgroup]:
    """A memory cgroup NAME (v1, or v2 where the unified root delegates the
    controller) limited to limit bytes without swap; removed with whatever
    is left in it."""
    errors = []
    for root, version in _memory_roots():
        cg = root / name
        try:
            cg.mkdir()
        except OSError as exc:
            errors.append(f"{root}: {exc.strerror}")
            continue
        try:
            _limit(cg, version, limit)
        except BaseException:
            _remove(cg)
            raise
        try:
            yield MemoryCgroup(cg, version)
        finally:
            _remove(cg)
        return
    unavailable(
        "cannot create a memory cgroup here (needs root and a memory controller, v1 or "
        f"delegated in the unified hierarchy): {'; '.join(errors) or 'no memory controller'}"
    )


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    with new_memory_cgroup(f"pss-oom-{uuid.uuid4().hex[:8]}", LIMIT) as cg:
        yield cg


def write_config(tmp_path: Path, marker: str, extra: str) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "collection: {interval: 300ms}\n"
        "accounting: {enabled: false}\n"
        "php_fpm: {enabled: false}\n"
        f"{extra}"
        "process_names:\n"
        f"  - name: {GROUP}\n"
        f"    cmdline: ['memhog\\.py \\w+ {marker}']\n"
    )
    return cfg


def wait_for(url: str, ready: Callable[[dict], bool], what: str) -> dict:
    """Scrape until ready(samples) holds; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        status, _, body = http_get(url + "/metrics")
        assert status == 200
        samples = parse_samples(body.decode())
        if ready(samples):
            return samples
        if time.monotonic() > deadline:
            mine = {k: v for k, v in samples.items() if ("group", GROUP) in k[1]}
            raise AssertionError(f"timed out waiting for {what}; {GROUP} series: {mine}")
        time.sleep(0.1)


def get(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def group_series(samples: dict) -> set[str]:
    return {name for name, labels in samples if ("group", GROUP) in labels}


def oom_kill(pid: int, memory_cgroup: MemoryCgroup) -> None:
    """Make memhog pid grow past the cgroup's limit, and wait until the
    kernel has OOM-killed it: the cgroup's first kill."""
    os.kill(pid, signal.SIGUSR1)
    wait_until_dead(pid)
    assert memory_cgroup.oom_kills() == 1


def wait_until_dead(pid: int) -> None:
    """Wait for a child of ours to die (it stays a zombie until reaped)."""
    proc = psutil.Process(pid)
    wait_until(
        f"{pid} to be OOM-killed", lambda: proc.status() == psutil.STATUS_ZOMBIE, timeout=WAIT
    )


def test_oom_kill_in_the_groups_cgroup(tmp_path: Path, memory_cgroup: MemoryCgroup) -> None:
    marker = uuid.uuid4().hex
    config = write_config(tmp_path, marker, "")
    with (
        running_hog("sleeper", marker, SLEEPER_MIB, cgroup=memory_cgroup.path),
        running_exporter("--config", str(config)) as url,
    ):
        before = wait_for(
            url,
            lambda s: get(s, "pss_group_cgroup_memory_limit_bytes", group=GROUP) is not None,
            "the group's cgroup limit",
        )
        assert get(before, "pss_group_cgroup_memory_limit_bytes", group=GROUP) == LIMIT
        usage = get(before, "pss_group_cgroup_memory_usage_bytes", group=GROUP)
        assert usage is not None and 0 < usage <= LIMIT
        assert get(before, "pss_group_oom_kills_total", group=GROUP) == 0
        host_before = get(before, "pss_host_oom_kills_total")
        assert host_before is not None

        # A second process of the group, in the same cgroup, asks for twice
        # the limit: the kernel kills it (the largest task there) mid-way.
        allocator = subprocess.run(
            [sys.executable, MEMHOG, "allocator", marker, str(ALLOCATOR_MIB), "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=join_cgroup(memory_cgroup.path),
            timeout=WAIT,
        )
        assert allocator.returncode == -signal.SIGKILL
        assert memory_cgroup.oom_kills() == 1

        after = wait_for(
            url,
            lambda s: get(s, "pss_group_oom_kills_total", group=GROUP) != 0,
            "the group's OOM kill",
        )
        assert get(after, "pss_group_oom_kills_total", group=GROUP) == 1
        host_after = get(after, "pss_host_oom_kills_total")
        assert host_after is not None and host_after >= host_before + 1
        # The sleeper lives on, still under the limit.
        assert get(after, "pss_group_processes", group=GROUP) == 1
        assert get(after, "pss_group_cgroup_memory_limit_bytes", group=GROUP) == LIMIT


def test_oom_kill_from_the_kernel_log(tmp_path: Path, memory_cgroup: MemoryCgroup) -> None:
    marker = uuid.uuid4().hex
    config = write_config(tmp_path, marker, "cgroups: {enabled: false}\n")
    with (
        running_hog(
            "victim", marker, SLEEPER_MIB, grow_mib=ALLOCATOR_MIB, cgroup=memory_cgroup.path
        ) as victim,
        running_exporter("--config", str(config)) as url,
    ):
        seen = wait_for(
            url,
            lambda s: get(s, "pss_group_processes", group=GROUP) == 1,
            "a collection that saw the victim",
        )
        assert get(seen, "pss_exporter_source_up", source="kmsg") == 1
        # No cgroup series: the count can only come from the kernel log, and
        # starts at 0 for every group while the log is read.
        assert not {n for n in group_series(seen) if "cgroup" in n}
        assert get(seen, "pss_group_oom_kills_total", group=GROUP) == 0

        oom_kill(victim.pids[0], memory_cgroup)

        after = wait_for(
            url,
            lambda s: get(s, "pss_group_oom_kills_total", group=GROUP) != 0,
            "the kill attributed from the kernel log",
        )
        assert get(after, "pss_group_oom_kills_total", group=GROUP) == 1
        assert get(after, "pss_exporter_source_up", source="kmsg") == 1
        assert not {n for n in group_series(after) if "cgroup" in n}


def test_two_groups_in_one_cgroup_only_the_victims_group_counts(
    tmp_path: Path, memory_cgroup: MemoryCgroup
) -> None:
    marker = uuid.uuid4().hex
    victim_group, other_group = f"{GROUP}_victim", f"{GROUP}_other"
    config = tmp_path / "config.yaml"
    config.write_text(
        "collection: {interval: 300ms}\n"
        "accounting: {enabled: false}\n"
        "php_fpm: {enabled: false}\n"
        "process_names:\n"
        f"  - name: {victim_group}\n"
        f"    cmdline: ['memhog\\.py victim {marker}']\n"
        f"  - name: {other_group}\n"
        f"    cmdline: ['memhog\\.py sleeper {marker}']\n"
    )
    with (
        running_hog("sleeper", marker, SLEEPER_MIB, cgroup=memory_cgroup.path),
        running_hog(
            "victim", marker, SLEEPER_MIB, grow_mib=ALLOCATOR_MIB, cgroup=memory_cgroup.path
        ) as victim,
        running_exporter("--config", str(config)) as url,
    ):
        seen = wait_for(
            url,
            lambda s: (
                get(s, "pss_group_processes", group=victim_group) == 1
                and get(s, "pss_group_processes", group=other_group) == 1
            ),
            "a collection that saw both groups",
        )
        assert get(seen, "pss_exporter_source_up", source="kmsg") == 1
        # One cgroup, one limit, for both groups.
        assert get(seen, "pss_group_cgroup_memory_limit_bytes", group=victim_group) == LIMIT
        assert get(seen, "pss_group_cgroup_memory_limit_bytes", group=other_group) == LIMIT
        assert get(seen, "pss_group_oom_kills_total", group=victim_group) == 0
        assert get(seen, "pss_group_oom_kills_total", group=other_group) == 0
        host_before = get(seen, "pss_host_oom_kills_total")
        assert host_before is not None

        oom_kill(victim.pids[0], memory_cgroup)

        after = wait_for(
            url,
            lambda s: get(s, "pss_group_oom_kills_total", group=victim_group) != 0,
            "the kill in the victim's group",
        )
        assert get(after, "pss_group_oom_kills_total", group=victim_group) == 1
        assert get(after, "pss_group_oom_kills_total", group=other_group) == 0
        assert get(seen, "pss_oom_kills_unattributed_total") == 0
        assert get(after, "pss_oom_kills_unattributed_total") == 0
        host_after = get(after, "pss_host_oom_kills_total")
        # The machine may OOM-kill elsewhere meanwhile: at least ours.
        assert host_after is not None and host_after - host_before >= 1
        assert get(after, "pss_group_processes", group=other_group) == 1
