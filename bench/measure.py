"""CPU and wall time of collection cycles, measured in this process: the bare
loop (the kernel's floor) and pss-exporter's Collector in several settings."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from exporter.collector import Collector
from exporter.config import Config, build_config
from exporter.metrics import OPENMETRICS, render
from exporter.snapshot import READ

# What the serve loop renders per collection when Prometheus scrapes: the
# format it asks for (OpenMetrics), not every format.
SCRAPED = (OPENMETRICS,)

PF_KTHREAD = 0x00200000  # /proc/PID/stat field 9: kernel thread
UNBOUNDED = {"budget": "24h", "large_rss": "1024TiB"}  # read everything, every cycle

# A cycle: does one unit of work, returns how many smaps_rollup it read.
Cycle = Callable[[], int]


@dataclass(frozen=True)
class Row:
    """One line of the results: mean CPU and wall seconds per cycle."""

    name: str
    cpu: float | None  # None: not measured (see note)
    wall: float | None
    processes: float | None  # smaps (or smaps_rollup) read per cycle, mean
    note: str = ""


T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """fn's result, and the process CPU seconds (all threads, user + system)
    and wall seconds it took."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


@dataclass
class Tally:
    """Sums over cycles, reported as means per cycle."""

    cpu: float = 0.0
    wall: float = 0.0
    processes: int = 0
    cycles: int = 0

    def record(self, cpu: float, wall: float, processes: int) -> None:
        self.cpu += cpu
        self.wall += wall
        self.processes += processes
        self.cycles += 1

    def row(self, name: str, note: str = "") -> Row:
        n = max(self.cycles, 1)
        return Row(name, self.cpu / n, self.wall / n, self.processes / n, note)


def interleaved(cycles: dict[str, Cycle], rounds: int) -> tuple[list[Row], int]:
    """Run every cycle once (warm-up), then `rounds` rounds of one of each, so
    that noise on the machine hits all of them alike. Also returns how many
    user processes were seen to start or exit between rounds: by that much
    the cycles' process counts may differ."""
    for cycle in cycles.values():
        cycle()
    tallies = {name: Tally() for name in cycles}
    seen, changed = set(user_pids()), set()
    for _ in range(rounds):
        for name, cycle in cycles.items():
            processes, cpu, wall = timed(cycle)
            tallies[name].record(cpu, wall, processes)
        now = set(user_pids())
        changed |= seen ^ now
        seen = now
    return [tallies[name].row(name) for name in cycles], len(changed)


# ------------------------------------------------------------ bare loop


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)  # one read: these files come whole
    finally:
        os.close(fd)


def _is_user_process(stat: bytes) -> bool:
    """Neither a zombie nor a kernel thread, from /proc/PID/stat bytes."""
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[0] != b"Z" and not int(fields[6]) & PF_KTHREAD


def bare_cycle(procfs: str = "/proc") -> int:
    """The floor: list /proc, read stat of every PID, and read smaps_rollup
    of every user process (neither a kernel thread nor a zombie), parsing
    its Pss. Returns the number of smaps_rollup reads attempted (as the
    exporter's "read" outcome counts them: a denied read is one too)."""
    read = pss = 0
    for name in os.listdir(procfs):
        if not name.isdigit():
            continue
        try:
            if not _is_user_process(_read(f"{procfs}/{name}/stat")):
                continue
            read += 1
            rollup = _read(f"{procfs}/{name}/smaps_rollup")
            pss += int(rollup.split(b"\nPss:", 1)[1].split(None, 1)[0])
        except (OSError, IndexError):
            continue  # vanished, denied, or exiting (empty smaps_rollup)
    return read


def user_pids(procfs: str = "/proc") -> list[int]:
    """The PIDs bare_cycle reads smaps_rollup of, at this moment."""
    pids = []
    for name in os.listdir(procfs):
        if not name.isdigit():
            continue
        try:
            if _is_user_process(_read(f"{procfs}/{name}/stat")):
                pids.append(int(name))
        except OSError:
            continue
    return pids


# ------------------------------------------------------------ pss-exporter


def exporter_config(**collection: Any) -> Config:
    """The built-in config with these collection settings."""
    return build_config({"collection": collection}, "bench")


def full_freshness(threads: int = 1) -> Config:
    """Change detection off: every process's smaps_rollup every cycle."""
    return exporter_config(interval="1s", max_age="0s", threads=threads, **UNBOUNDED)


def collect_cycle(collector: Collector, with_render: bool = False) -> Cycle:
    def cycle() -> int:
        snap = collector.collect()
        if with_render:
            render(snap, SCRAPED)
        return snap.smaps_outcomes[READ]

    return cycle
