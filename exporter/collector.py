"""The collection cycle: list the procfs, group processes, read their
smaps_rollup and aggregate everything into an immutable Snapshot.

Per-process state that outlives a cycle (which group a process belongs to)
is cached by (pid, starttime), so cmdline and friends are read once per
process lifetime and a reused PID is classified afresh.
"""

from __future__ import annotations

import logging
import os
import time
from typing import NamedTuple

from .config import Config
from .discovery import (
    PARSE,
    PERMISSION,
    REASONS,
    LiveProcess,
    error_reason,
    list_pids,
    read_bytes,
)
from .grouping import FPM_MASTER_GROUP, FpmRole, fpm_pool_groups, fpm_role
from .procfs import ZERO_MEMORY, Memory, ParseError, Stat, parse_meminfo, parse_smaps, parse_stat
from .snapshot import Sample, Snapshot, aggregate

log = logging.getLogger(__name__)

OTHER_GROUP = "other"


class _Entry(NamedTuple):
    """What the collector remembers of a process between cycles."""

    starttime: int
    group: str | None  # from process_names; None: not matched
    fpm: FpmRole | None  # php-fpm title, whether or not php_fpm grouping is on


class _Tracked(NamedTuple):
    pid: int
    stat: Stat
    entry: _Entry


class Collector:
    def __init__(self, config: Config, procfs: str = "/proc") -> None:
        self.config = config
        self.procfs = procfs.rstrip("/") or "/"
        self._cache: dict[int, _Entry] = {}
        self._errors = dict.fromkeys(REASONS, 0)
        self._admitted: frozenset[str] = frozenset()
        self._overflowed: set[int] = set()
        self._overflow_total = 0
        self._use_rollup = True

    # ------------------------------------------------------------ public

    def collect(self) -> Snapshot:
        started, t0 = time.time(), time.perf_counter()
        pids = list_pids(self.procfs)
        tracked = self._discover(pids)
        groups = self._assign_groups(tracked)
        samples = [self._sample(t, g) for t, g in zip(tracked, groups)]
        total, available = self._host_memory()
        return Snapshot(
            groups=aggregate([s for s in samples if s is not None]),
            memory_total=total,
            memory_available=available,
            started=started,
            duration=time.perf_counter() - t0,
            processes_scanned=len(pids),
            read_errors=dict(self._errors),
            groups_overflow=self._overflow_total,
        )

    # ----------------------------------------------------------- stages

    def _discover(self, pids: list[int]) -> list[_Tracked]:
        """Read stat of every PID, classify new ones, keep the grouped ones."""
        cache: dict[int, _Entry] = {}
        tracked = []
        for pid in pids:
            try:
                st = parse_stat(read_bytes(f"{self.procfs}/{pid}/stat"))
            except OSError as exc:
                self._count(error_reason(exc))
                continue
            except ParseError:
                self._count(PARSE)
                continue
            if st.is_kernel_thread:
                continue
            entry = self._cache.get(pid)
            if entry is None or entry.starttime != st.starttime:
                try:
                    entry = self._classify(pid, st)
                except OSError as exc:
                    self._count(error_reason(exc))
                    continue
            cache[pid] = entry
            if entry.group is not None or (entry.fpm and self.config.php_fpm.enabled):
                tracked.append(_Tracked(pid, st, entry))
        self._cache = cache
        return tracked

    def _classify(self, pid: int, st: Stat) -> _Entry:
        proc = LiveProcess(self.procfs, pid, st.comm, st.starttime)
        role = fpm_role(st.comm, lambda: proc.cmdline)
        if role is not None and self.config.php_fpm.enabled:
            return _Entry(st.starttime, None, role)
        for rule in self.config.process_names:
            name = rule.match(proc)
            if name is not None:
                return _Entry(st.starttime, name, role)
        return _Entry(st.starttime, None, role)

    def _assign_groups(self, tracked: list[_Tracked]) -> list[str]:
        """Final group names: php-fpm pools disambiguated, max_groups applied."""
        wanted = [self._wanted_group(t) for t in tracked]
        if any(w is None for w in wanted):
            names = self._fpm_names(tracked)
            wanted = [
                w if w is not None else names[(t.entry.fpm.name, t.stat.ppid)]
                for t, w in zip(tracked, wanted)
            ]
        admitted = self._admit(wanted)
        overflowed = set()
        result = []
        for t, group in zip(tracked, wanted):
            if group in admitted:
                result.append(group)
                continue
            result.append(OTHER_GROUP)
            overflowed.add(t.pid)
            if t.pid not in self._overflowed:
                self._overflow_total += 1
        self._overflowed = overflowed
        return result

    def _wanted_group(self, t: _Tracked) -> str | None:
        fpm = t.entry.fpm
        if fpm is not None and self.config.php_fpm.enabled:
            return FPM_MASTER_GROUP if fpm.is_master else None  # pools named later
        return t.entry.group

    @staticmethod
    def _fpm_names(tracked: list[_Tracked]) -> dict[tuple[str, int], str]:
        pools: dict[tuple[str, int], None] = {}
        masters: dict[int, tuple[str, int]] = {}
        for t in tracked:
            fpm = t.entry.fpm
            if fpm is None:
                continue
            if fpm.is_master:
                masters[t.pid] = (fpm.name, t.stat.starttime)
            else:
                pools[(fpm.name, t.stat.ppid)] = None
        return fpm_pool_groups(pools, masters)

    def _admit(self, wanted: list[str]) -> frozenset[str]:
        """Groups allowed this cycle: those admitted before keep their place,
        new ones fill the free places in order of appearance."""
        limit = self.config.max_groups
        present = dict.fromkeys(wanted)
        admitted = [g for g in present if g in self._admitted][:limit]
        for g in present:
            if len(admitted) >= limit:
                break
            if g not in self._admitted:
                admitted.append(g)
        self._admitted = frozenset(admitted)
        return self._admitted

    def _sample(self, t: _Tracked, group: str) -> Sample | None:
        is_master = t.entry.fpm is not None and t.entry.fpm.is_master
        if t.stat.state == "Z":  # a zombie holds no memory and is no worker
            return Sample(group, ZERO_MEMORY, False)
        try:
            memory = self._read_memory(t.pid)
        except OSError as exc:
            reason = error_reason(exc)
            self._count(reason)
            return Sample(group, None, not is_master) if reason == PERMISSION else None
        except ParseError:
            self._count(PARSE)
            return None
        return Sample(group, memory, not is_master)

    def _read_memory(self, pid: int) -> Memory:
        base = f"{self.procfs}/{pid}"
        if self._use_rollup:
            try:
                return parse_smaps(read_bytes(f"{base}/smaps_rollup"))
            except FileNotFoundError:
                if not os.path.exists(f"{base}/smaps"):
                    raise  # the process is gone
                log.info("no smaps_rollup (kernel < 4.14): summing smaps instead")
                self._use_rollup = False
        return parse_smaps(read_bytes(f"{base}/smaps"))

    def _host_memory(self) -> tuple[int | None, int | None]:
        try:
            info = parse_meminfo(read_bytes(f"{self.procfs}/meminfo"))
        except (OSError, ParseError) as exc:
            log.warning("cannot read %s/meminfo: %s", self.procfs, exc)
            return None, None
        return info.get("MemTotal"), info.get("MemAvailable")

    def _count(self, reason: str) -> None:
        self._errors[reason] += 1
