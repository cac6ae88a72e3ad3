"""Live: worker counts during an OOM storm equal the kernel's at the moment of the read.

A static php-fpm pool runs in a memory cgroup far smaller than what its
clients make its workers hold (tests/php/alloc.php), so the kernel keeps
killing workers and the master keeps forking new ones: killed workers wait
as zombies until the master reaps them, and a worker just forked still
carries the master's title until it retitles itself. The kernel changes
while the exporter reads it, so the test freezes master and workers (the
cgroup freezer) several times mid-storm and, while they are frozen, runs a
collection of a Collector kept across cycles (as `serve` does) and of a fresh
one (as `once` does, here with a budget that defers most reads). The pool's
process and worker counts of both must equal the kernel's at that instant:
the master's live (non-zombie) children in /proc, which are also the
cgroup's processes but the master.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fpm import MASTER_TITLE, clients, cmdline, global_section, running_fpm

from exporter.collector import Collector
from exporter.config import Config, load_config
from exporter.snapshot import Snapshot

from conftest import MEMORY_LIMIT, unavailable, wait_until

pytestmark = [pytest.mark.live, pytest.mark.slow]

WORKERS = 16
CLIENTS = 40  # more than WORKERS: the pool is always busy, its listen queue full
HOLD_MIB = (8, 40)  # what one request holds: WORKERS x 24 MiB on average >> MEMORY_LIMIT
HOLD_MS = 300
FREEZES = 6  # at least; more until both storm shapes were caught frozen
STORM_SECONDS = 30.0  # bound on the storm


@dataclass(frozen=True)
class Kernel:
    """The pool as the kernel shows it at one instant."""

    children: dict[int, str]  # the master's children: PID -> state
    procs: frozenset[int]  # the memory cgroup's cgroup.procs
    master_titled: int  # live children still titled as the master

    @property
    def live(self) -> int:
        return sum(state != "Z" for state in self.children.values())

    @property
    def zombies(self) -> int:
        return len(self.children) - self.live


def children_of(master: int) -> dict[int, str]:
    """{PID: state} of master's children, from /proc."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue  # not a child of a frozen master: it may come and go
        state, ppid = stat[stat.rfind(b")") + 2 :].split()[:2]
        if int(ppid) == master:
            children[int(entry.name)] = state.decode()
    return children


def read_kernel(master: int, cgroup: Path) -> Kernel:
    children = children_of(master)
    titled = sum(cmdline(pid).startswith(MASTER_TITLE) for pid, s in children.items() if s != "Z")
    procs = frozenset(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
    return Kernel(children, procs, titled)


class Freezer:
    """Freezes and thaws a set of processes: the v2 cgroup's own cgroup.freeze,
    or a v1 freezer cgroup they are moved into."""

    def __init__(self, memory_cgroup: Path) -> None:
        self.v2 = (memory_cgroup / "cgroup.freeze").exists()
        if self.v2:
            self.path = memory_cgroup
            return
        root = Path("/sys/fs/cgroup/freezer")
        if not (root / "cgroup.procs").exists():
            unavailable("no cgroup freezer (v1 freezer controller or v2 cgroup.freeze)")
        self.path = root / f"pss-storm-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()

    def join(self, master: int) -> None:
        """Move master, then its children (forked before it moved), in."""
        if self.v2:
            return  # the memory cgroup is the freezer

        def moved() -> bool:
            inside = set((self.path / "cgroup.procs").read_text().split())
            live = [pid for pid, state in children_of(master).items() if state != "Z"]
            missing = [pid for pid in [master, *live] if str(pid) not in inside]
            for pid in missing:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    (self.path / "cgroup.procs").write_text(str(pid))
            return not missing

        wait_until("php-fpm in the freezer cgroup", moved, timeout=10)

    def _set(self, frozen: bool) -> None:
        """Freeze or thaw, and wait until the kernel says it is done."""
        if self.v2:
            (self.path / "cgroup.freeze").write_text("1" if frozen else "0")
            file, want = self.path / "cgroup.events", f"frozen {int(frozen)}"
        else:
            file, want = self.path / "freezer.state", "FROZEN" if frozen else "THAWED"
            file.write_text(want)

        def done() -> bool:
            return want in file.read_text().splitlines()

        wait_until(f"{self.path} frozen={frozen}", done, timeout=10)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        self._set(True)
        try:
            yield
        finally:
            self._set(False)

    def remove(self) -> None:
        """Thaw, then remove the v1 freezer cgroup once php-fpm has exited."""
        if self.v2:
            return
        self._set(False)
        wait_until(
            "freezer cgroup empty",
            lambda: not (self.path / "cgroup.procs").read_text().split(),
            timeout=10,
        )
        self.path.rmdir()


def oom_kills(cgroup: Path) -> int:
    name = "memory.oom_control" if (cgroup / "memory.oom_control").exists() else "memory.events"
    for line in (cgroup / name).read_text().splitlines():
        key, _, count = line.partition(" ")
        if key == "oom_kill":
            return int(count)
    raise AssertionError(f"no oom_kill in {cgroup / name}")


def limit_for_storm(cgroup: Path) -> None:
    """No swap either, so reaching the limit means an OOM kill."""
    for name, value in (("memory.swappiness", "0"), ("memory.swap.max", "0")):
        if (cgroup / name).exists():
            (cgroup / name).write_text(value)


def pool_figures(snap: Snapshot, group: str) -> tuple[int, int]:
    """(processes, workers) of the pool's group; (0, 0) when it is absent."""
    g = next((g for g in snap.groups if g.name == group), None)
    return (g.processes, g.workers) if g else (0, 0)


def exporter_config(tmp: Path, budget: str) -> Config:
    """Only php-fpm's processes grouped; collection.budget as given."""
    path = tmp / f"exporter-{budget}.yml"
    path.write_text(f"collection:\n  interval: 1s\n  budget: {budget}\nprocess_names: []\n")
    return load_config(str(path))


def test_pool_counts_equal_the_kernels_in_an_oom_storm(
    tmp_path: Path, limited_cgroup: Path
) -> None:
    limit_for_storm(limited_cgroup)
    freezer = Freezer(limited_cgroup)
    pool = f"storm_{uuid.uuid4().hex[:6]}"
    group = f"php-fpm:{pool}"
    port = 20000 + random.randint(0, 9999)
    listen = f"127.0.0.1:{port}"
    conf = tmp_path / "php-fpm.conf"
    conf.write_text(
        global_section(tmp_path) + f"[{pool}]\nlisten = {listen}\n"
        f"pm = static\npm.max_children = {WORKERS}\npm.max_requests = 0\n"
    )
    config = exporter_config(tmp_path, "500ms")
    # A fresh collection out of budget at once: most workers are deferred before
    # their first read, their memory unknown, and still workers.
    starved = exporter_config(tmp_path, "1ms")
    seen: list[tuple[Kernel, dict[str, tuple[int, int]]]] = []
    deferred = 0  # reads the starved collections deferred
    try:
        with (
            running_fpm(conf, {pool: WORKERS}, cgroup=limited_cgroup, graceful=False) as fpm,
            Collector(config) as serve,
            clients(listen, CLIENTS, HOLD_MIB, HOLD_MS),
        ):
            freezer.join(fpm.pid)
            deadline = time.monotonic() + STORM_SECONDS
            kills = oom_kills(limited_cgroup)
            while time.monotonic() < deadline:
                shapes = [(k.zombies > 0, k.master_titled > 0) for k, _ in seen]
                caught = any(z for z, _ in shapes) and any(t for _, t in shapes)
                if len(seen) >= FREEZES and caught:
                    break
                # Storming: a kill since the last freeze, then serve's own cycle.
                wait_until(
                    f"an OOM kill in {limited_cgroup} ({MEMORY_LIMIT >> 20} MiB)",
                    lambda before=kills: oom_kills(limited_cgroup) > before,
                    timeout=10,
                )
                serve.collect()
                with freezer.frozen():
                    kernel = read_kernel(fpm.pid, limited_cgroup)
                    with Collector(starved) as once:
                        fresh = once.collect()
                    counts = {
                        "once": pool_figures(fresh, group),
                        "serve": pool_figures(serve.collect(), group),
                    }
                    deferred += fresh.smaps_outcomes["deferred"]
                    assert read_kernel(fpm.pid, limited_cgroup) == kernel, "moved while frozen"
                kills = oom_kills(limited_cgroup)
                seen.append((kernel, counts))
    finally:
        freezer.remove()
    report = "\n".join(
        f"kernel: {k.live} live children ({k.master_titled} master-titled), {k.zombies} zombies, "
        f"{len(k.procs)} in cgroup.procs; exporter (processes, workers): {c}"
        for k, c in seen
    )
    assert len(seen) >= FREEZES, report
    for kernel, counts in seen:
        # The kernel agrees with itself: the master's live children are the
        # cgroup's processes but the master.
        assert len(kernel.procs) == kernel.live + 1, report
        want = (kernel.live, kernel.live)
        assert counts == {"once": want, "serve": want}, report
    # The storm showed both shapes frozen (zombies, children not yet retitled).
    assert any(k.zombies for k, _ in seen), report
    assert any(k.master_titled for k, _ in seen), report
    assert deferred > 0, "no read was deferred by the 1ms budget"
