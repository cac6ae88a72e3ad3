"""pss-exporter with its default settings (change detection on) at a real
cadence, and the accuracy of its last snapshot against full reads taken at
the same moment."""

from __future__ import annotations

import time
from dataclasses import dataclass

from measure import Row, Tally, exporter_config, full_freshness, timed

from exporter.collector import Collector
from exporter.metrics import OPENMETRICS, render
from exporter.snapshot import READ, REUSED, Snapshot

# What the serve loop renders per collection when Prometheus scrapes: the
# format it asks for (OpenMetrics), not every format.
SCRAPED = (OPENMETRICS,)

TOLERANCE = 0.01  # the target: every group within 1% of a full read


@dataclass(frozen=True)
class GroupDiff:
    """One group's PSS in the default-settings snapshot against full reads
    (max_age 0) just before and just after it."""

    name: str
    processes: int  # in the full read after
    before: int  # PSS bytes, full read
    default: int  # PSS bytes, default settings
    after: int  # PSS bytes, full read

    @property
    def vs_after(self) -> float:
        return abs(self.default - self.after) / self.after

    @property
    def outside(self) -> float:
        """How far default lies outside [before, after], relative to after.
        A process whose memory changes between the reads moves its group in
        both full reads; only what lies outside that range is charged."""
        low, high = sorted((self.before, self.after))
        return max(0, low - self.default, self.default - high) / self.after


@dataclass(frozen=True)
class Cadence:
    interval: float
    max_age: float
    cycles: int
    collect: Row
    collect_render: Row
    reused: float  # mean processes reused per cycle
    accuracy: tuple[GroupDiff, ...]  # every group in all three reads, PSS > 0
    group_sizes: dict[str, int]  # processes per group in the last full read


def compare(snap: Snapshot, before: Snapshot, after: Snapshot) -> tuple[GroupDiff, ...]:
    """The groups of snap against the full reads, worst (outside) first."""
    got = {g.name: g.pss for g in snap.groups}
    low = {g.name: g.pss for g in before.groups}
    diffs = [
        GroupDiff(g.name, g.processes, low[g.name], got[g.name], g.pss)
        for g in after.groups
        if g.pss > 0 and g.name in got and g.name in low
    ]
    diffs.sort(key=lambda d: (d.outside, d.vs_after), reverse=True)
    return tuple(diffs)


def run(seconds: float, interval: float = 1.0) -> Cadence:
    """Collect (and render) every interval for seconds after a cold first
    cycle; max_age is the default, 5 intervals, so the average includes the
    periodic re-reads."""
    config = exporter_config(interval=f"{round(interval * 1000)}ms")
    collector = Collector(config)
    collector.collect()  # cold: every process is new
    collect, both = Tally(), Tally()
    reused = 0
    cycles = max(1, round(seconds / interval))
    next_at = time.monotonic()
    for _ in range(cycles):
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
        snap, cpu, wall = timed(collector.collect)
        _, render_cpu, render_wall = timed(lambda: render(snap, SCRAPED))  # noqa: B023
        collect.record(cpu, wall, snap.smaps_outcomes[READ])
        both.record(cpu + render_cpu, wall + render_wall, snap.smaps_outcomes[READ])
        reused += snap.smaps_outcomes[REUSED]
    accuracy, group_sizes = _accuracy(collector)
    return Cadence(
        interval=interval,
        max_age=config.collection.max_age,
        cycles=cycles,
        collect=collect.row("pss-exporter default: collect()"),
        collect_render=both.row("pss-exporter default: collect()+render()"),
        reused=reused / cycles,
        accuracy=accuracy,
        group_sizes=group_sizes,
    )


def _accuracy(collector: Collector) -> tuple[tuple[GroupDiff, ...], dict[str, int]]:
    """One more cycle of collector between two full reads by a fresh
    Collector (warmed first, so that the three reads are back to back)."""
    fresh = Collector(full_freshness())
    fresh.collect()
    before = fresh.collect()
    snap = collector.collect()
    after = fresh.collect()
    return compare(snap, before, after), {g.name: g.processes for g in after.groups}
