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
kernel log and php-fpm (here), and the php-fpm workers' peaks (peaks.py).
php-fpm is three sources: its config loads (phpfpm_config), its status pages
(phpfpm_status: two steps around the smaps reads, the pages answer
meanwhile, timed under one name) and its workers' peaks (phpfpm_peaks, after
the smaps reads; a worker whose status cannot be read is a read error, as
for smaps, not the source down).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol, TypeVar

from .cgroup import (
    Cgroup,
    CgroupPaths,
    CgroupState,
    combine,
    memory_cgroup,
    outermost,
    read_oom_kills,
    read_state,
)
from .classify import OTHER_GROUP, FpmView
from .counters import Monotonic
from .kmsg import KmsgWatcher
from .oom import OomUnit, UnitKey
from .phpfpm import Loads, Pending, PhpFpmSource, PoolRef
from .procfs import Watermarks
from .snapshot import PoolInfo, SourceResult
from .tracking import Proc

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


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
    # OOM units seen recently (oom.OomAttribution.recent): directory -> (inode, groups)
    recent_units: Mapping[str, tuple[int, frozenset[str]]] = field(default_factory=dict)


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


class CgroupReport(NamedTuple):
    """What the cgroups source found this cycle."""

    states: dict[str, CgroupState]  # by group; pressure monotonic (counters.py)
    units: tuple[OomUnit, ...]  # the OOM counting units (oom.py)
    gone: frozenset[UnitKey] = frozenset()  # recent units whose cgroup was removed


class CgroupSource:
    """Each group's memory cgroup(s), outermost ones only, combined, and the
    outermost cgroups of all grouped processes with their OOM counters."""

    name = "cgroups"

    def __init__(self, sysfs: str) -> None:
        self.sysfs = sysfs
        self._warn_cgroupns = True
        self._pressure: Monotonic[tuple[str, str]] = Monotonic()  # (group, kind)

    def collect(self, cycle: Cycle) -> CgroupReport:
        self._pressure.cycle()
        found: dict[CgroupPaths, Cgroup | None] = {}
        by_group: dict[str, set[Cgroup]] = {}
        members: dict[Cgroup, list[tuple[int, str]]] = {}
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
                members.setdefault(cgroup, []).append((p.pid, group))
        inodes: dict[str, int] = {}
        states: dict[Cgroup, CgroupState | None] = {}
        out = {}
        for group, group_cgroups in by_group.items():
            read = []
            for cgroup in outermost(group_cgroups):
                if cgroup not in states:
                    states[cgroup] = self._read(cgroup, inodes)
                state = states[cgroup]
                if state is not None:
                    read.append(state)
                    for kind, seconds in (state.pressure or {}).items():
                        top = cgroup.chain[0]  # a recreated cgroup: a new generation
                        self._pressure.feed((group, kind), top, seconds, inodes[top])
            if read:
                out[group] = self._monotonic(group, combine(read))
        return CgroupReport(out, *self._units(members, inodes, cycle.recent_units))

    @staticmethod
    def _read(cgroup: Cgroup, inodes: dict[str, int]) -> CgroupState | None:
        try:
            inodes[cgroup.chain[0]] = os.stat(cgroup.chain[0]).st_ino
            return read_state(cgroup)
        except (OSError, ValueError):
            return None  # removed while we looked

    def _monotonic(self, group: str, state: CgroupState) -> CgroupState:
        """state with its pressure as this group's never-falling counters."""
        if state.pressure is None:
            return state
        pressure = {kind: self._pressure.value((group, kind)) or 0.0 for kind in state.pressure}
        return replace(state, pressure=pressure)

    @staticmethod
    def _units(
        members: dict[Cgroup, list[tuple[int, str]]],
        inodes: dict[str, int],
        recent: Mapping[str, tuple[int, frozenset[str]]],
    ) -> tuple[tuple[OomUnit, ...], frozenset[UnitKey]]:
        """The outermost cgroups over every group, each with the grouped
        processes in or below it and its OOM kill counter; then the recent
        units that hold no grouped process now, still read (their last
        process's kill is counted there), unless one of this cycle's units
        lies in or above them; and the recent units removed since."""
        tops = {c.chain[0] for c in outermost(set(members))}
        inside: dict[str, list[tuple[int, str]]] = {}
        for cgroup, ms in members.items():  # each cgroup lies below exactly one top
            top = next(d for d in cgroup.chain if d in tops)
            inside.setdefault(top, []).extend(ms)
        units, gone = [], set()
        for d in sorted({*inside, *recent}):
            ms = inside.get(d, [])
            if not ms and any(_nested(d, top) for top in tops):
                continue  # counted by this cycle's unit around or inside it
            try:
                inode = inodes[d] if d in inodes else os.stat(d).st_ino
            except OSError:
                inode = None  # removed while we looked
            if not ms and inode != recent[d][0]:
                gone.add((d, recent[d][0]))  # removed (or made anew: not its unit)
                continue
            if inode is None:
                continue
            try:
                kills = read_oom_kills(d)
                if kills is None:
                    continue  # the kernel counts no OOM kills here: no unit
            except (OSError, ValueError):
                kills = None  # unreadable or garbled this cycle: held
            groups = frozenset(g for _, g in ms) if ms else recent[d][1]
            units.append(OomUnit((d, inode), groups, frozenset(p for p, _ in ms), kills))
        return tuple(units), frozenset(gone)


def _nested(a: str, b: str) -> bool:
    """Whether cgroup directory a is b, below it or above it."""
    return a == b or a.startswith(f"{b}/") or b.startswith(f"{a}/")


class KernelLogSource:
    """The PIDs the kernel log reported OOM-killed since the last cycle;
    None while the log cannot be read. oom.OomAttribution decides whose."""

    name = "kmsg"

    def __init__(self, watcher: KmsgWatcher) -> None:
        self.watcher = watcher

    def collect(self, cycle: Cycle) -> tuple[int, ...] | None:
        kills = tuple(kill.pid for kill in self.watcher.drain())
        return kills if self.watcher.available else None


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
        if p.pid not in view.trusted or p.fpm is None or p.is_master or p.pid in view.status:
            continue  # a status pool's process is not its pool's worker
        if group == OTHER_GROUP or group in refs:
            continue
        refs[group] = PoolRef(group, p.fpm.name, p.ppid, view.masters[p.ppid].conf, p.pid)
    return list(refs.values())
