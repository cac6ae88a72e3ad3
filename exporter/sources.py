"""Sources: what a collection reads besides the processes' own memory.

A source has a `name` and `collect(cycle) -> T`: given what this cycle found
(the `Cycle`), it returns its part of the Snapshot. `SourceRunner` runs them
one by one, as node_exporter's collector.go execute() does: each is timed,
and one that raises loses only its own part for that cycle (the `failed`
value the caller gives) and is reported down in `Snapshot.sources`
(`pss_exporter_source_up` 0); every other source and every group is
intact. A source that returns what it could read but not all of it is
reported down through the caller's `down` check. Either is logged in one
line when the source goes down, not again while it stays down.

The sources: the host files and the accounting (host.py), cgroups, the
kernel log and php-fpm (here). php-fpm is two sources: its config loads
(phpfpm_config) and its status pages (phpfpm_status), which run in two steps
around the smaps reads (the pages answer meanwhile), both timed under one name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .cgroup import Cgroup, CgroupPaths, CgroupState, combine, memory_cgroup, outermost, read_state
from .classify import OTHER_GROUP, FpmView
from .kmsg import KmsgWatcher
from .phpfpm import Loads, Pending, PhpFpmSource, PoolRef
from .procfs import Watermarks
from .snapshot import PoolInfo, SourceResult
from .tracking import Proc

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

RECENT_PIDS = 600.0  # seconds an exited PID's group is remembered for the kernel log


@dataclass(frozen=True)
class Cycle:
    """What one collection found, as the sources see it."""

    now: float  # the collection's clock (monotonic seconds)
    procs: list[Proc]  # the grouped processes
    groups: list[str]  # their groups, in the same order
    view: FpmView  # who is php-fpm's
    processes: Mapping[int, Proc]  # every process listed, grouped or not
    meminfo: dict[str, int] = field(default_factory=dict)  # once the meminfo source ran
    zoneinfo: Watermarks | None = None  # read for the accounting pass, when one is due


class Source(Protocol[T_co]):
    @property
    def name(self) -> str: ...

    def collect(self, cycle: Cycle) -> T_co: ...


class SourceRunner:
    """Runs sources with isolation and keeps each one's result for the cycle.

    previous holds the last completed cycle's results: a source is logged
    when it goes down (and when it is back), not on every cycle it stays down,
    and one that did not run this cycle can report its latest result (keep).
    """

    def __init__(self, previous: Mapping[str, SourceResult] | None = None) -> None:
        self._previous = previous or {}
        self._results: dict[str, SourceResult] = {}

    def run(
        self,
        source: Source[T],
        cycle: Cycle,
        failed: T,
        down: Callable[[T], str | None] | None = None,
    ) -> T:
        return self.call(source.name, lambda: source.collect(cycle), failed, down)

    def call(
        self,
        name: str,
        collect: Callable[[], T],
        failed: T,
        down: Callable[[T], str | None] | None = None,
    ) -> T:
        """collect(), or failed when it raises. down(value), when given, says
        why a value that was returned is incomplete (None: it is not). Results
        of the same name in one cycle are joined: ok when each was, their
        durations added."""
        start = time.perf_counter()
        error: str | None
        try:
            value = collect()
        except Exception as exc:  # a bug or a surprise in one source: only its metrics go
            value, error = failed, f"{type(exc).__name__}: {repr(str(exc))[:200]}"
            self._log(name, logging.ERROR, f"failed: {error}")
            log.debug("source %s failed", name, exc_info=True)
        else:
            error = down(value) if down is not None else None
            if error is not None:
                self._log(name, logging.WARNING, f"down: {error}")
        seconds = time.perf_counter() - start
        before = self._results.get(name)
        if before is not None:
            error, seconds = before.error or error, seconds + before.duration
        self._results[name] = SourceResult(name, error is None, seconds, error)
        return value

    def _log(self, name: str, level: int, message: str) -> None:
        """One line when a source goes down; none while it stays down."""
        if all(r is None or r.ok for r in (self._results.get(name), self._previous.get(name))):
            log.log(level, "source %s %s", name, message)

    def keep(self, name: str) -> None:
        """Report the previous cycle's result of a source that did not run in
        this one (zoneinfo, read only by the accounting pass), if it had one."""
        if name in self._previous and name not in self._results:
            self._results[name] = self._previous[name]

    def results(self) -> tuple[SourceResult, ...]:
        """This cycle's results, in the order the sources first ran; starts the next cycle."""
        results, self._results = tuple(self._results.values()), {}
        for r in results:
            before = self._previous.get(r.name)
            if r.ok and before is not None and not before.ok:
                log.info("source %s is back", r.name)
        return results


class CgroupSource:
    """Each group's memory cgroup(s): outermost ones only, combined."""

    name = "cgroups"

    def __init__(self, sysfs: str) -> None:
        self.sysfs = sysfs
        self._warn_cgroupns = True

    def collect(self, cycle: Cycle) -> dict[str, CgroupState]:
        found: dict[CgroupPaths, Cgroup | None] = {}
        by_group: dict[str, set[Cgroup]] = {}
        for p, group in zip(cycle.procs, cycle.groups):
            if p.cgroup is None:
                continue
            if p.cgroup not in found:
                found[p.cgroup] = memory_cgroup(self.sysfs, p.cgroup)
                if self._warn_cgroupns and "/.." in f"{p.cgroup.v1_memory}{p.cgroup.v2}":
                    self._warn_cgroupns = False
                    log.warning(
                        "cgroup paths are relative to this process's cgroup namespace; "
                        "per-group cgroup metrics need the host's (docker --cgroupns=host)"
                    )
            cgroup = found[p.cgroup]
            if cgroup is not None:
                by_group.setdefault(group, set()).add(cgroup)
        states: dict[Cgroup, CgroupState | None] = {}
        out = {}
        for group, group_cgroups in by_group.items():
            read = []
            for cgroup in outermost(group_cgroups):
                if cgroup not in states:
                    try:
                        states[cgroup] = read_state(cgroup)
                    except (OSError, ValueError):
                        states[cgroup] = None  # removed while we looked
                state = states[cgroup]
                if state is not None:
                    read.append(state)
            if read:
                out[group] = combine(read)
        return out


class KernelLogSource:
    """OOM kills the kernel log names, attributed to groups through the PIDs
    seen in the last RECENT_PIDS seconds. While the log is read, every group
    is present from 0, so that increase() sees a group's first kill."""

    name = "kmsg"

    def __init__(self, watcher: KmsgWatcher) -> None:
        self.watcher = watcher
        self._recent: dict[int, tuple[str, float]] = {}  # pid -> (group, last seen)
        self._kills: dict[str, int] = {}

    def collect(self, cycle: Cycle) -> dict[str, int]:
        now = cycle.now
        for p, group in zip(cycle.procs, cycle.groups):
            self._recent[p.pid] = (group, now)
        for kill in self.watcher.drain():
            seen = self._recent.get(kill.pid)
            if seen is None:
                log.info("OOM kill of %d (%r): not a grouped process", kill.pid, kill.comm)
                continue
            self._kills[seen[0]] = self._kills.get(seen[0], 0) + 1
        self._recent = {
            pid: seen for pid, seen in self._recent.items() if now - seen[1] < RECENT_PIDS
        }
        if not self.watcher.available:
            return {}
        return {g: self._kills.get(g, 0) for g in {*cycle.groups, *self._kills}}


class FpmPoolsSource:
    """php-fpm pools, two sources: the masters' config loads (load, source
    phpfpm_config), then the status queries, started before the smaps reads
    (start) and joined after them (collect, source phpfpm_status)."""

    name = "phpfpm_status"
    config_name = "phpfpm_config"

    def __init__(self, fpm: PhpFpmSource) -> None:
        self.fpm = fpm
        self._pending: Pending = []
        self._deadline = 0.0

    def load(self, cycle: Cycle) -> Loads:
        """The pools' settings, each trusted master's config read when due."""
        return self.fpm.load(pool_refs(cycle), cycle.view.masters)

    def start(self, cycle: Cycle, loads: Loads) -> None:
        self._pending = []  # a failed start leaves no pool of an earlier cycle behind
        self._pending = self.fpm.start(pool_refs(cycle), cycle.view.masters, loads)
        self._deadline = time.monotonic() + self.fpm.timeout

    def collect(self, cycle: Cycle) -> tuple[PoolInfo, ...]:
        pending, self._pending = self._pending, []
        return self.fpm.finish(pending, self._deadline)


def pool_refs(cycle: Cycle) -> list[PoolRef]:
    """One reference per php-fpm pool group: its master and one worker."""
    view = cycle.view
    refs: dict[str, PoolRef] = {}
    for p, group in zip(cycle.procs, cycle.groups):
        if p.pid not in view.trusted or p.fpm is None or p.is_master:
            continue
        if group == OTHER_GROUP or group in refs:
            continue
        refs[group] = PoolRef(group, p.fpm.name, p.ppid, view.masters[p.ppid].conf, p.pid)
    return list(refs.values())
