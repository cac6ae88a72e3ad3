"""The collection cycle: list the procfs, group processes, read their
smaps_rollup and aggregate everything into an immutable Snapshot.

Reading smaps_rollup is the expensive part (the kernel walks the target's page
tables), so a cycle reads it only where it can have changed:

- a process whose cheap /proc/PID/statm is byte-for-byte unchanged keeps its
  cached values, and even its stat is not re-read;
- every member of a group whose membership changed is re-read (the PSS of
  shared pages depends on who else maps them);
- values older than collection.max_age are re-read whatever statm says;
- large processes (Rss >= collection.large_rss) are read at most every
  collection.large_interval, so a huge heap is not page-walked every cycle;
- reading stops for the cycle at collection.budget; what is left keeps its
  previous values, is reported stale, and goes first next cycle (the due list
  is ordered oldest read first, so nothing starves).

Per-process state lives in one slotted object per process, keyed by PID and
checked against the start time, so a reused PID is classified afresh.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from .accounting import Accounting, ProcessTotals
from .cgroup import (
    Cgroup,
    CgroupPaths,
    CgroupState,
    combine,
    memory_cgroup,
    outermost,
    parse_proc_cgroup,
    read_state,
)
from .config import Config
from .discovery import (
    PARSE,
    PERMISSION,
    REASONS,
    SMAPS_LIMIT,
    LiveProcess,
    error_reason,
    list_pids,
    read_bytes,
)
from .grouping import (
    FPM_MASTER_GROUP,
    FpmMaster,
    FpmRole,
    fpm_pool_groups,
    fpm_role,
    outside_fpm_groups,
)
from .host import account, read_host
from .kmsg import KmsgWatcher
from .phpfpm import PhpFpmSource, PoolRef
from .procfs import ZERO_MEMORY, Memory, ParseError, Stat, parse_smaps, parse_stat
from .snapshot import (
    DEFERRED,
    READ,
    REUSED,
    LargeRead,
    Sample,
    Snapshot,
    aggregate,
    pool_stats,
)

log = logging.getLogger(__name__)

OTHER_GROUP = "other"
LARGE_READS_EXPORTED = 5  # bounded: top N large processes by read time
NEVER = float("-inf")
CGROUP_REFRESH = 60.0  # seconds before a process's /proc/PID/cgroup is read again
RECENT_PIDS = 600.0  # seconds an exited PID's group is remembered for the kernel log
UNTRUSTED_LOGGED = 3  # untrusted php-fpm processes a warning names


class FpmView(NamedTuple):
    """php-fpm as one cycle sees it: only a master whose executable is a
    root-installed php-fpm is one, and only its children are its workers."""

    trusted: frozenset[int]  # PIDs of trusted masters and of their workers
    masters: dict[int, FpmMaster]  # the trusted masters, by PID
    names: dict[tuple[str, int], str]  # (pool, master PID) -> group
    untrusted: int  # processes titled as php-fpm, not trusted


NO_FPM = FpmView(frozenset(), {}, {}, 0)


class _Proc:
    """What the collector knows of one process across cycles."""

    __slots__ = (
        "cgroup",
        "cgroup_at",
        "dirty",
        "fpm",
        "group",
        "memory",
        "pid",
        "ppid",
        "provisional",
        "read_at",
        "read_seconds",
        "starttime",
        "state",
        "statm",
        "tracked",
        "unreadable",
    )

    def __init__(
        self,
        pid: int,
        st: Stat,
        group: str | None,
        fpm: FpmRole | None,
        tracked: bool,
        provisional: bool = False,
    ):
        self.pid, self.starttime = pid, st.starttime
        self.ppid, self.state = st.ppid, st.state
        self.group = group  # from process_names; None: no rule matched
        # php-fpm title, whether or not php_fpm grouping is on; a process the
        # collector does not trust as php-fpm's keeps its process_names group
        self.fpm = fpm
        self.tracked = tracked
        # php-fpm retitles its processes after fork: a worker may still show
        # the master's title, a new master no title yet. Such a guess is
        # classified again next cycle instead of being kept for life.
        self.provisional = provisional
        self.statm: bytes | None = None  # raw bytes: comparing them is the test
        self.memory: Memory | None = None
        self.read_at = NEVER
        self.read_seconds = 0.0
        self.dirty = True  # statm changed (or new) and not read since
        self.unreadable = False
        self.cgroup: CgroupPaths | None = None  # read with stat, for tracked processes
        self.cgroup_at = NEVER

    @property
    def is_master(self) -> bool:
        return self.fpm is not None and self.fpm.is_master


class Collector:
    def __init__(
        self,
        config: Config,
        procfs: str = "/proc",
        clock: Callable[[], float] = time.perf_counter,
        sysfs: str = "/sys",
        kmsg: KmsgWatcher | None = None,
    ) -> None:
        self.config = config
        self._clock = clock  # monotonic seconds: ages, the budget, read times
        self.procfs = procfs.rstrip("/") or "/"
        cc = config.collection
        self._use_statm = cc.max_age > 0  # full freshness needs no change detection
        # A cycle that starts a little early still counts an age as reached.
        self._slack = cc.interval / 2
        self._cache: dict[int, _Proc] = {}
        self._members: dict[str, frozenset[int]] = {}
        self._errors = dict.fromkeys(REASONS, 0)
        self._admitted: frozenset[str] = frozenset()
        self._overflowed: set[int] = set()
        self._overflow_total = 0
        self._budget_exhausted = 0
        self._use_rollup = True
        self._pool = ThreadPoolExecutor(cc.threads, "smaps") if cc.threads > 1 else None
        self.sysfs = sysfs.rstrip("/")
        self._fpm = (
            PhpFpmSource(config.php_fpm, self.procfs, cc.interval)
            if config.php_fpm.enabled
            else None
        )
        self._accounting: Accounting | None = None
        self._accounted_at = NEVER
        # OOM kills from the kernel log, attributed through recently seen PIDs.
        self._kmsg = kmsg
        self._recent: dict[int, tuple[str, float]] = {}  # pid -> (group, last seen)
        self._kmsg_kills: dict[str, int] = {}
        self._warn_cgroupns = True
        self._untrusted: set[tuple[int, int]] = set()  # (pid, starttime) already logged

    # ------------------------------------------------------------ public

    def collect(self) -> Snapshot:
        started = time.time()
        now = self._clock()
        pids = list_pids(self.procfs)
        procs, groups, view = self._assign_groups(self._discover(pids, now))
        # php-fpm status pages answer (or time out) while smaps is being read.
        fpm = self._fpm
        pending = fpm.start(self._pool_refs(procs, groups, view), view.masters) if fpm else []
        status_deadline = time.monotonic() + (fpm.timeout if fpm else 0)
        due = self._due(procs, groups, now)
        deferred = self._read(due, now, now + self.config.collection.budget)
        samples = []
        for p, group in zip(procs, groups):
            sample = self._sample(p, group, p.pid in deferred)
            if sample is not None:
                samples.append(sample)
        read = len(due) - len(deferred)
        host = read_host(self.procfs)
        for reason in host.errors:
            self._count(reason)
        if self.config.accounting.enabled and (
            now - self._accounted_at + self._slack >= self.config.accounting.interval
        ):
            self._accounting = self._account(host.meminfo)
            self._accounted_at = now
        group_stats = aggregate(samples)
        cgroups = self._group_cgroups(procs, groups) if self.config.cgroups.enabled else {}
        pools = fpm.finish(pending, status_deadline) if fpm else ()
        available = host.meminfo.get("MemAvailable")
        return Snapshot(
            groups=group_stats,
            memory_total=host.meminfo.get("MemTotal"),
            memory_available=available,
            started=started,
            duration=self._clock() - now,
            processes_scanned=len(pids),
            read_errors=dict(self._errors),
            groups_overflow=self._overflow_total,
            smaps_outcomes={READ: read, REUSED: len(procs) - len(due), DEFERRED: len(deferred)},
            budget_exhausted=self._budget_exhausted,
            large_reads=self._large_reads(procs, groups),
            pools=pool_stats(pools, group_stats, available, cgroups, self.config.php_fpm),
            cgroups=cgroups,
            host_oom_kills=host.oom_kills,
            host_pressure=host.pressure,
            accounting=self._accounting,
            group_oom_kills=self._group_oom_kills(procs, groups, cgroups, now),
            kmsg_up=self._kmsg.available if self._kmsg else None,
            phpfpm_config_errors=fpm.config_errors if fpm else 0,
            phpfpm_untrusted=view.untrusted,
        )

    # ----------------------------------------------------------- stages

    def _discover(self, pids: list[int], now: float) -> list[_Proc]:
        """Find the grouped processes; read stat only where statm changed."""
        cache: dict[int, _Proc] = {}
        tracked = []
        base = self.procfs
        for pid in pids:
            p = self._cache.get(pid)
            statm = None
            if p is not None and p.statm is not None:
                try:
                    statm = read_bytes(f"{base}/{pid}/statm")
                except OSError:
                    statm = None  # let the stat read below decide what happened
                if statm == p.statm:  # same process, same memory map size
                    cache[pid] = p
                    tracked.append(p)
                    continue
            try:
                st = parse_stat(read_bytes(f"{base}/{pid}/stat"))
            except OSError as exc:
                self._count(error_reason(exc))
                continue
            except ParseError:
                self._count(PARSE)
                continue
            if st.is_kernel_thread:
                continue
            if p is None or p.starttime != st.starttime or p.provisional:
                try:
                    p = self._classify(pid, st, cache)
                except OSError as exc:
                    self._count(error_reason(exc))
                    continue
            cache[pid] = p
            if not p.tracked:
                continue
            p.ppid, p.state, p.dirty = st.ppid, st.state, True
            if self.config.cgroups.enabled and now - p.cgroup_at >= CGROUP_REFRESH:
                # Processes rarely change cgroup: not re-read on every change.
                try:
                    p.cgroup = parse_proc_cgroup(read_bytes(f"{base}/{pid}/cgroup"))
                except OSError:
                    p.cgroup = None
                p.cgroup_at = now
            if self._use_statm and not p.provisional:
                if statm is None:
                    try:
                        statm = read_bytes(f"{base}/{pid}/statm")
                    except OSError:
                        statm = None
                p.statm = statm
            tracked.append(p)
        self._cache = cache
        return tracked

    def _classify(self, pid: int, st: Stat, seen: dict[int, _Proc]) -> _Proc:
        proc = LiveProcess(self.procfs, pid, st.comm, st.starttime)
        role = fpm_role(st.comm, lambda: proc.cmdline)
        parent = seen.get(st.ppid) or self._cache.get(st.ppid)
        provisional = st.comm.startswith("php-fpm") and (
            role is None or (role.is_master and parent is not None and parent.is_master)
        )
        fpm = role is not None and self.config.php_fpm.enabled
        # The rules group php-fpm's processes too: those not trusted as
        # php-fpm's (decided each cycle, see _fpm_view) keep that group.
        try:
            group = next(
                (n for rule in self.config.process_names if (n := rule.match(proc)) is not None),
                None,
            )
        except OSError:
            if not fpm:
                raise
            group = None  # grouped by its title, if trusted
        return _Proc(pid, st, group, role, fpm or group is not None, provisional)

    def _assign_groups(self, procs: list[_Proc]) -> tuple[list[_Proc], list[str], FpmView]:
        """Final group names: php-fpm pools disambiguated, max_groups applied.
        A process titled as php-fpm that is not trusted and that no rule
        groups is left out."""
        view = self._fpm_view(procs) if self._fpm else NO_FPM
        kept, wanted = [], []
        for p in procs:
            if p.pid in view.trusted:
                group = FPM_MASTER_GROUP if p.is_master else view.names[(p.fpm.name, p.ppid)]
            elif p.group is not None:
                group = outside_fpm_groups(p.group) if self._fpm else p.group
            else:
                continue
            kept.append(p)
            wanted.append(group)
        admitted = self._admit(wanted)
        overflowed = set()
        result = []
        for p, group in zip(kept, wanted):
            if group in admitted:
                result.append(group)
                continue
            result.append(OTHER_GROUP)
            overflowed.add(p.pid)
            if p.pid not in self._overflowed:
                self._overflow_total += 1
        self._overflowed = overflowed
        return kept, result, view

    @staticmethod
    def _pool_refs(procs: list[_Proc], groups: list[str], view: FpmView) -> list[PoolRef]:
        """One reference per php-fpm pool group: its master and one worker."""
        refs: dict[str, PoolRef] = {}
        for p, group in zip(procs, groups):
            if p.pid not in view.trusted or p.is_master or group == OTHER_GROUP or group in refs:
                continue
            refs[group] = PoolRef(group, p.fpm.name, p.ppid, view.masters[p.ppid].conf, p.pid)
        return list(refs.values())

    def _fpm_view(self, procs: list[_Proc]) -> FpmView:
        """Which processes titled as php-fpm are php-fpm's, and their pools'
        names. Any user can title a process 'php-fpm: ...'; only masters
        PhpFpmSource.trust() vouches for count, and only their children are
        workers, so no one else is grouped, queried or renames a pool."""
        assert self._fpm is not None
        claims = [p for p in procs if p.fpm is not None]
        uids = self._fpm.trust({p.pid: p.starttime for p in claims if p.is_master})
        masters = {
            p.pid: FpmMaster(p.fpm.name, p.starttime, uids[p.pid]) for p in claims if p.pid in uids
        }
        workers = [p for p in claims if not p.is_master and p.ppid in masters]
        names = fpm_pool_groups(dict.fromkeys((p.fpm.name, p.ppid) for p in workers), masters)
        trusted = frozenset(masters).union(p.pid for p in workers)
        untrusted = [p for p in claims if p.pid not in trusted]
        self._log_untrusted(untrusted)
        return FpmView(trusted, masters, names, len(untrusted))

    def _log_untrusted(self, untrusted: list[_Proc]) -> None:
        """One warning per cycle at most, naming the untrusted processes not
        seen before (titles escaped: a newline in one must not forge a line)."""
        new = [p for p in untrusted if (p.pid, p.starttime) not in self._untrusted]
        self._untrusted = {(p.pid, p.starttime) for p in untrusted}  # only the living
        if not new:
            return
        shown = ", ".join(
            f"{p.pid} {'master of' if p.is_master else 'pool'} {p.fpm.name[:100]!r}"
            for p in new[:UNTRUSTED_LOGGED]
        )
        more = f" and {len(new) - UNTRUSTED_LOGGED} more" if len(new) > UNTRUSTED_LOGGED else ""
        log.warning(
            "%d processes titled as php-fpm are not trusted as php-fpm's (the executable "
            "is not a root-owned php-fpm, or the parent not such a master): grouped by "
            "process_names, never queried: %s%s",
            len(new),
            shown,
            more,
        )

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

    def _due(self, procs: list[_Proc], groups: list[str], now: float) -> list[_Proc]:
        """Processes whose smaps must be read this cycle, oldest read first."""
        cc = self.config.collection
        members: dict[str, set[int]] = {}
        for p, group in zip(procs, groups):
            members.setdefault(group, set()).add(p.pid)
        moved = {g for g, pids in members.items() if self._members.get(g) != pids}
        self._members = {g: frozenset(pids) for g, pids in members.items()}
        due = []
        for p, group in zip(procs, groups):
            if p.state == "Z":
                continue  # nothing to read: a zombie's memory is gone
            age = now - p.read_at + self._slack
            if p.memory is not None and p.memory.rss >= cc.large_rss:
                if age >= cc.large_interval:
                    due.append(p)
            elif p.dirty or p.unreadable or group in moved or age >= cc.max_age:
                due.append(p)
        due.sort(key=lambda p: p.read_at)
        return due

    def _read(self, due: list[_Proc], now: float, deadline: float) -> set[int]:
        """Read smaps of the due processes until the deadline; return the
        PIDs deferred to a later cycle."""
        if self._pool is not None:
            results = list(self._pool.map(lambda p: self._timed_read(p.pid, deadline), due))
        else:
            results = [self._timed_read(p.pid, deadline) for p in due]
        deferred = set()
        for p, result in zip(due, results):
            if result is None:
                deferred.add(p.pid)
                continue
            memory, reason, seconds = result
            if reason is not None:
                self._count(reason)
                p.unreadable = reason == PERMISSION
                p.memory = None
                if not p.unreadable:  # vanished or garbled: leave it out
                    self._cache.pop(p.pid, None)
                continue
            p.memory, p.read_at, p.read_seconds = memory, now, seconds
            p.dirty = p.unreadable = False
        if deferred:
            self._budget_exhausted += 1
            log.debug("budget reached: %d smaps reads deferred", len(deferred))
        return deferred

    def _timed_read(
        self, pid: int, deadline: float
    ) -> tuple[Memory | None, str | None, float] | None:
        """(memory, error reason, seconds), or None when past the deadline."""
        t = self._clock()
        if t > deadline:
            return None
        try:
            memory, reason = self._read_memory(pid), None
        except OSError as exc:
            memory, reason = None, error_reason(exc)
        except ParseError:
            memory, reason = None, PARSE
        return memory, reason, self._clock() - t

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
        # Full smaps comes a page or so per read(): read it to its end.
        return parse_smaps(read_bytes(f"{base}/smaps", SMAPS_LIMIT, to_eof=True))

    def _sample(self, p: _Proc, group: str, deferred: bool) -> Sample | None:
        is_worker = not p.is_master
        if p.state == "Z":  # a zombie holds no memory and is no worker
            return Sample(group, ZERO_MEMORY, False)
        if p.unreadable:
            return Sample(group, None, is_worker, unreadable=True)
        if p.memory is None and not deferred:
            return None  # vanished or garbled during this cycle's read
        return Sample(group, p.memory, is_worker, stale=deferred)

    def _large_reads(self, procs: list[_Proc], groups: list[str]) -> tuple[LargeRead, ...]:
        limit = self.config.collection.large_rss
        large = [
            LargeRead(g, p.read_seconds)
            for p, g in zip(procs, groups)
            if p.memory is not None and p.memory.rss >= limit
        ]
        large.sort(key=lambda r: r.seconds, reverse=True)
        return tuple(large[:LARGE_READS_EXPORTED])

    def _group_cgroups(self, procs: list[_Proc], groups: list[str]) -> dict[str, CgroupState]:
        """Each group's memory cgroup(s): outermost ones only, combined."""
        found: dict[CgroupPaths, Cgroup | None] = {}
        by_group: dict[str, set[Cgroup]] = {}
        for p, group in zip(procs, groups):
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

    def _group_oom_kills(
        self,
        procs: list[_Proc],
        groups: list[str],
        cgroups: dict[str, CgroupState],
        now: float,
    ) -> dict[str, int]:
        """OOM kills per group: its cgroups' counter where it has cgroups of its
        own, else the kills the kernel log names for its processes."""
        if self._kmsg is not None:
            for p, group in zip(procs, groups):
                self._recent[p.pid] = (group, now)
            for kill in self._kmsg.drain():
                seen = self._recent.get(kill.pid)
                if seen is None:
                    log.info("OOM kill of %d (%r): not a grouped process", kill.pid, kill.comm)
                    continue
                self._kmsg_kills[seen[0]] = self._kmsg_kills.get(seen[0], 0) + 1
            self._recent = {
                pid: seen for pid, seen in self._recent.items() if now - seen[1] < RECENT_PIDS
            }
        kills = {g: c.oom_kills for g, c in cgroups.items() if c.oom_kills is not None}
        if self._kmsg is not None and self._kmsg.available:
            # Present from 0, so that increase() sees a group's first kill.
            for group in set(groups) | set(self._kmsg_kills):
                kills.setdefault(group, self._kmsg_kills.get(group, 0))
        return kills

    def _account(self, meminfo: dict[str, int]) -> Accounting | None:
        """Sum PSS over every process of the host and reconcile with meminfo.

        Grouped processes contribute the values this cycle holds; the others
        are read now. Zombies hold nothing; kernel threads are not listed.
        """
        start = time.perf_counter()
        pss = file = shmem = count = unreadable = 0
        split = True
        for pid, p in self._cache.items():
            if p.state == "Z":
                continue
            memory = p.memory if p.tracked else None
            if memory is None and not (p.tracked and p.unreadable):
                try:
                    memory = self._read_memory(pid)
                except (OSError, ParseError):
                    memory = None
            if memory is None:
                unreadable += 1
                continue
            count += 1
            pss += memory.pss
            if memory.pss_file is None or memory.pss_shmem is None:
                split = False
            else:
                file += memory.pss_file
                shmem += memory.pss_shmem
        totals = ProcessTotals(
            pss, file if split else None, shmem if split else None, count, unreadable
        )
        return account(self.procfs, meminfo, totals, time.perf_counter() - start, time.time())

    def _count(self, reason: str) -> None:
        self._errors[reason] += 1
