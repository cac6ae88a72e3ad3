"""The collection cycle: a pipeline of stages, each with its own state.

    tracking.Tracker      which processes exist, which are unchanged (statm)
    classify.Grouper      their groups (rules, trusted php-fpm pools, max_groups)
    scheduling.Scheduler  whose smaps is due, read within the budget
    sources               host files, accounting, cgroups, php-fpm, kernel log

The Collector only wires them together and builds the immutable Snapshot.
Every stage runs in the calling (collection) thread, which is the only
writer of per-process state; the smaps and php-fpm thread pools only read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from .accounting import Accounting
from .capacity import PoolPeaks
from .classify import NO_FPM, TRUST_SOURCE, Classifier, Grouper
from .config import Config
from .counters import Monotonic
from .discovery import list_pids
from .host import AccountingSource, host_sources
from .kmsg import KmsgWatcher
from .oom import OomAttribution
from .peaks import PeaksSource
from .phpfpm import NO_LOADS, Loads, PhpFpmSource
from .privileges import own_process
from .procfs import ZERO_MEMORY
from .scheduling import Scheduler, large_reads
from .snapshot import (
    DEFERRED,
    READ,
    REUSED,
    STATUS_COUNTERS,
    PoolInfo,
    Sample,
    Snapshot,
    SourceResult,
    aggregate,
    pool_stats,
)
from .sources import (
    CgroupReport,
    CgroupSource,
    Cycle,
    FpmPoolsSource,
    KernelLogSource,
    SourceRunner,
)
from .tracking import Proc, ReadErrors, Tracker


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
        # monotonic seconds: ages, the budget, read times (tests inject one)
        self._clock = clock
        self.procfs = procfs.rstrip("/") or "/"
        self.sysfs = sysfs.rstrip("/")
        cc = config.collection
        self._errors = ReadErrors()
        self._fpm = (
            PhpFpmSource(config.php_fpm, self.procfs, cc.interval)
            if config.php_fpm.enabled
            else None
        )
        self._tracker = Tracker(
            self.procfs,
            Classifier(config, self.procfs),
            self._errors,
            use_statm=cc.max_age > 0,
            cgroups=config.cgroups.enabled,
            kernel_threads=any(rule.matches_without_argv for rule in config.process_names),
        )
        self._grouper = Grouper(config.max_groups, self._fpm)
        self._scheduler = Scheduler(cc, self.procfs, clock, self._errors, self._tracker.forget)
        self._host = host_sources(self.procfs, self._errors)
        self._accounting = (
            AccountingSource(self.procfs, config.accounting.interval, cc.interval / 2)
            if config.accounting.enabled
            else None
        )
        self._cgroups = CgroupSource(self.sysfs) if config.cgroups.enabled else None
        self._pools = FpmPoolsSource(self._fpm) if self._fpm else None
        self._peaks = (
            PeaksSource(self.procfs, config.php_fpm.window, self._errors.count)
            if self._fpm
            else None
        )
        self._kmsg = kmsg
        self._kernel_log = KernelLogSource(kmsg) if kmsg else None
        self._ooms = OomAttribution(log=kmsg is not None)
        self._counters: Monotonic[tuple[str, ...]] = Monotonic()
        self._masters: frozenset[tuple[int, int]] = frozenset()  # last cycle's, (pid, start)
        self._results: dict[str, SourceResult] = {}  # the last completed cycle's, by source

    def close(self) -> None:
        """Stop the kernel-log reader and the thread pools; collect() no more."""
        self._scheduler.close()
        if self._fpm is not None:
            self._fpm.close()
        if self._kmsg is not None:
            self._kmsg.stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def collect(self) -> Snapshot:
        started = time.time()
        now = self._clock()
        pids = list_pids(self.procfs)
        # Per cycle: a cycle that fails leaves no result to the next.
        run = SourceRunner(self._results)
        procs, groups, view = self._grouper.group(
            self._tracker.discover(pids, now),
            lambda fpm_view: run.call(TRUST_SOURCE, fpm_view, NO_FPM),
        )
        cycle = Cycle(
            now, procs, groups, view, self._tracker.processes, recent_units=self._ooms.recent()
        )
        self._counters.cycle()
        pools_source = self._pools
        if pools_source is not None:
            loads = run.call(
                pools_source.config_name, lambda: pools_source.load(cycle), NO_LOADS, Loads.error
            )
            # php-fpm status pages answer (or time out) while smaps is being read.
            run.call(pools_source.name, lambda: pools_source.start(cycle, loads), None)
        due = self._scheduler.due(procs, groups, now)
        deferred = self._scheduler.read(due, now)
        samples = []
        for p, group in zip(procs, groups):
            s = sample(p, group, p.pid in deferred, view.is_worker(p))
            if s is not None:
                samples.append(s)
        peaks: dict[str, PoolPeaks] = {}
        if self._peaks is not None:  # after the reads: this cycle's RSS and USS
            peaks = run.run(self._peaks, cycle, {})
        host = self._host
        meminfo = run.run(host.meminfo, cycle, None) or {}
        oom_kills = run.run(host.vmstat, cycle, None)
        pressure = run.run(host.pressure, cycle, None) if host.pressure else None
        cycle = replace(cycle, meminfo=meminfo)
        accounting: Accounting | None = None
        if self._accounting is not None:
            if self._accounting.due(cycle):
                cycle = replace(cycle, zoneinfo=run.run(host.zoneinfo, cycle, None))
            else:  # read by the last pass, whose reconciliation is reported
                run.keep(host.zoneinfo.name)
            accounting = run.run(self._accounting, cycle, None)
        group_stats = aggregate(samples)
        report: CgroupReport | None = None
        if self._cgroups is not None:
            report = run.run(self._cgroups, cycle, None)
        cgroups = report.states if report else {}
        pools: tuple[PoolInfo, ...] = ()
        if pools_source is not None:
            masters = self._masters
            self._masters = frozenset(
                (pid, m.starttime)
                for pid in view.masters
                if (m := self._tracker.processes.get(pid)) is not None
            )
            pools = tuple(
                self._monotonic_status(p, masters) for p in run.run(pools_source, cycle, ())
            )
        victims = None
        kmsg = self._kmsg
        if self._kernel_log is not None and kmsg is not None:
            victims = run.run(self._kernel_log, cycle, None, kmsg_down(kmsg))
        units = report.units if report else None
        gone = report.gone if report else frozenset()
        self._ooms.update(now, zip((p.pid for p in procs), groups), units, victims or (), gone)
        counted = self._cgroups is not None or victims is not None
        available = meminfo.get("MemAvailable")
        sources = run.results()
        self._results = {r.name: r for r in sources}
        return Snapshot(
            groups=group_stats,
            memory_total=meminfo.get("MemTotal"),
            memory_available=available,
            started=started,
            duration=self._clock() - now,
            processes_scanned=len(pids),
            read_errors=dict(self._errors.counts),
            groups_overflow=self._grouper.overflow_total,
            smaps_outcomes={
                READ: len(due) - len(deferred),
                REUSED: len(procs) - len(due),
                DEFERRED: len(deferred),
            },
            budget_exhausted=self._scheduler.budget_exhausted,
            large_reads=large_reads(procs, groups, self.config.collection.large_rss),
            pools=pool_stats(pools, group_stats, available, cgroups, peaks, self.config.php_fpm),
            cgroups=cgroups,
            host_oom_kills=self._host_counter(("vmstat", "oom_kill"), oom_kills),
            host_pressure=None
            if pressure is None
            else {k: self._host_counter(("pressure", k), v) or 0.0 for k, v in pressure.items()},
            accounting=accounting,
            group_oom_kills=self._ooms.counts(groups, units, victims is not None),
            oom_unattributed=self._ooms.unattributed if counted else None,
            phpfpm_config_errors=self._fpm.config_errors if self._fpm else 0,
            phpfpm_untrusted=view.untrusted,
            sources=sources,
            own=own_process(),
        )

    def _host_counter(self, key: tuple[str, ...], reading: float | None) -> float | None:
        """A host file's counter made never to fall; None while unread."""
        self._counters.feed(key, "host", reading)
        return self._counters.value(key) if reading is not None else None

    def _monotonic_status(self, pool: PoolInfo, masters: frozenset[tuple[int, int]]) -> PoolInfo:
        """pool with its status page's counters summed over the php-fpm
        masters that served it (a restart resets them): never falling.
        masters: last cycle's; one not among them started since, from 0."""
        status = pool.status
        if status is None:
            return pool
        proc = self._tracker.processes.get(pool.master or 0)
        master = (pool.master, proc.starttime if proc is not None else None)
        counters = {}
        for name in STATUS_COUNTERS:
            key = ("php-fpm", pool.group, name)
            reading = getattr(status, name)
            self._counters.feed(key, master, reading, new=master not in masters)
            counters[name] = int(self._counters.value(key) or 0)
        return replace(pool, status=replace(status, **counters))


def kmsg_down(watcher: KmsgWatcher) -> Callable[[object], str | None]:
    """The kernel log source is down while the watcher cannot read the log."""
    return lambda _: None if watcher.available else f"cannot read {watcher.path}"


def sample(p: Proc, group: str, deferred: bool, is_worker: bool) -> Sample | None:
    """What a process contributes to its group this cycle; None when it
    vanished or was garbled during this cycle's read. is_worker:
    classify.FpmView.is_worker (no php-fpm master, no status pool's process)."""
    if not p.holds_memory:  # a zombie or a kernel thread: no memory, no worker
        return Sample(group, ZERO_MEMORY, False)
    if p.unreadable:
        return Sample(group, None, is_worker, unreadable=True)
    if p.memory is None and not deferred:
        return None
    return Sample(group, p.memory, is_worker, stale=deferred)
