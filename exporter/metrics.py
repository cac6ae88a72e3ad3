"""Metric families built from a Snapshot, rendered once per snapshot.

Rendering with prometheus_client is far more expensive than serving bytes, so
each snapshot is turned into its text and OpenMetrics expositions (and their
gzip forms) once, in the collection thread; a scrape then costs a lookup.
"""

from __future__ import annotations

import gzip
import logging
import platform
import threading
from collections.abc import Iterator
from typing import Callable

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from . import __version__
from .capacity import BASES, Figures
from .discovery import REASONS
from .snapshot import SMAPS_OUTCOMES, Distribution, GroupStats, PoolStats, Snapshot

log = logging.getLogger(__name__)

# name, help, value getter: the per-group gauges, in exposition order.
_GROUP_GAUGES: tuple[tuple[str, str, Callable[[GroupStats], int | None]], ...] = (
    (
        "pss_group_processes",
        "Processes in the group, unreadable ones and zombies included "
        "(php-fpm pools' zombies are in no group)",
        lambda g: g.processes,
    ),
    ("pss_group_pss_bytes", "Sum of the group's processes' Pss", lambda g: g.pss),
    (
        "pss_group_pss_anon_bytes",
        "Sum of the group's processes' Pss_Anon (absent unless every one reports it)",
        lambda g: g.pss_anon,
    ),
    (
        "pss_group_pss_file_bytes",
        "Sum of the group's processes' Pss_File (absent unless every one reports it)",
        lambda g: g.pss_file,
    ),
    (
        "pss_group_pss_shmem_bytes",
        "Sum of the group's processes' Pss_Shmem (absent unless every one reports it)",
        lambda g: g.pss_shmem,
    ),
    (
        "pss_group_uss_bytes",
        "Sum of the group's processes' USS (Private_Clean + Private_Dirty)",
        lambda g: g.uss,
    ),
    ("pss_group_rss_bytes", "Sum of the group's processes' Rss", lambda g: g.rss),
    ("pss_group_swap_bytes", "Sum of the group's processes' Swap", lambda g: g.swap),
    ("pss_group_swap_pss_bytes", "Sum of the group's processes' SwapPss", lambda g: g.swap_pss),
    (
        "pss_group_unreadable_processes",
        "Processes of the group whose smaps could not be read (permission denied)",
        lambda g: g.unreadable,
    ),
    (
        "pss_group_stale_processes",
        "Processes of the group whose due smaps read was deferred by collection.budget "
        "(their values are from an earlier collection, or missing if never read)",
        lambda g: g.stale,
    ),
    (
        "pss_group_workers",
        "Workers in the group: its processes but php-fpm masters, php-fpm status-pool "
        "processes, zombies and kernel threads, whether their memory could be read "
        "this cycle or not",
        lambda g: g.workers,
    ),
)

# suffix, help, quantile: the per-worker distributions, nearest rank.
_WORKER_QUANTILES = (
    ("median", "Median (nearest rank)", 0.5),
    ("p95", "95th percentile (nearest rank)", 0.95),
    ("max", "Largest", 1.0),
)


def worker_families(groups: tuple[GroupStats, ...]) -> Iterator[Metric]:
    """pss_group_worker_{pss,uss}_{median,p95,max}_bytes: gauges, absent for
    a group without workers. (A Summary's _sum and _count are counters, and
    these fall when workers exit.)"""
    picks: tuple[tuple[str, str, Callable[[GroupStats], Distribution]], ...] = (
        ("pss", "Pss", lambda g: g.worker_pss),
        ("uss", "USS", lambda g: g.worker_uss),
    )
    for kind, label, pick in picks:
        for suffix, doc, q in _WORKER_QUANTILES:
            fam = GaugeMetricFamily(
                f"pss_group_worker_{kind}_{suffix}_bytes",
                f"{doc} of the {label} of the group's workers whose memory is known",
                labels=["group"],
            )
            for g in groups:
                value = pick(g).quantile(q)
                if value is not None:
                    fam.add_metric([g.name], value)
            yield fam


def snapshot_families(snap: Snapshot) -> Iterator[Metric]:
    """Every pss_* family for one snapshot (fresh objects each call)."""
    for name, doc, get in _GROUP_GAUGES:
        fam = GaugeMetricFamily(name, doc, labels=["group"])
        for g in snap.groups:
            value = get(g)
            if value is not None:
                fam.add_metric([g.name], value)
        yield fam
    yield from worker_families(snap.groups)
    for name, doc, value in (
        ("pss_host_memory_total_bytes", "MemTotal from /proc/meminfo", snap.memory_total),
        (
            "pss_host_memory_available_bytes",
            "MemAvailable from /proc/meminfo",
            snap.memory_available,
        ),
    ):
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=value)
    yield GaugeMetricFamily(
        "pss_exporter_collection_duration_seconds",
        "Duration of the last collection",
        value=snap.duration,
    )
    yield GaugeMetricFamily(
        "pss_exporter_last_collection_timestamp_seconds",
        "Unix time when the last collection finished",
        value=snap.finished,
    )
    yield GaugeMetricFamily(
        "pss_exporter_processes_scanned",
        "PIDs seen in the last collection",
        value=snap.processes_scanned,
    )
    outcomes = GaugeMetricFamily(
        "pss_exporter_smaps_processes",
        "Grouped processes in the last collection by how their memory was obtained: "
        "read (smaps_rollup read), reused (unchanged, cached values within max_age), "
        "deferred (due but past collection.budget)",
        labels=["outcome"],
    )
    for outcome in SMAPS_OUTCOMES:
        outcomes.add_metric([outcome], snap.smaps_outcomes.get(outcome, 0))
    yield outcomes
    yield CounterMetricFamily(
        "pss_exporter_budget_exhausted_total",
        "Collections that stopped reading smaps at collection.budget",
        value=snap.budget_exhausted,
    )
    large = GaugeMetricFamily(
        "pss_exporter_large_process_read_seconds",
        "Duration of the last smaps read of the slowest large processes "
        "(Rss >= collection.large_rss), ranked from 1",
        labels=["rank", "group"],
    )
    for rank, read in enumerate(snap.large_reads, 1):
        large.add_metric([str(rank), read.group], read.seconds)
    yield large
    errors = CounterMetricFamily(
        "pss_exporter_read_errors_total",
        "Failed reads of /proc files, by reason (vanished, permission, parse); a process "
        "that stays unreadable counts once per collection",
        labels=["reason"],
    )
    for reason in REASONS:
        errors.add_metric([reason], snap.read_errors.get(reason, 0))
    yield errors
    yield CounterMetricFamily(
        "pss_exporter_groups_overflow_total",
        "Processes put into the group named other because max_groups was reached",
        value=snap.groups_overflow,
    )
    info = GaugeMetricFamily(
        "pss_exporter_build_info",
        "Build information of pss-exporter",
        labels=["version", "python_version"],
    )
    info.add_metric([__version__, platform.python_version()], 1)
    yield info


# name, type, help, value getter over a PoolStats: the per-pool families.
_POOL_FAMILIES: tuple[tuple[str, str, str, Callable[[PoolStats], float | None]], ...] = (
    (
        "pss_phpfpm_max_children",
        "gauge",
        "Configured pm.max_children (or the YAML override)",
        lambda p: p.info.max_children,
    ),
    (
        "pss_phpfpm_max_requests",
        "gauge",
        "Configured pm.max_requests (0: never respawn)",
        lambda p: p.info.settings.max_requests if p.info.settings else None,
    ),
    (
        "pss_phpfpm_memory_limit_bytes",
        "gauge",
        "PHP memory_limit of the pool (absent if -1)",
        lambda p: p.info.settings.memory_limit if p.info.settings else None,
    ),
    (
        "pss_phpfpm_status_up",
        "gauge",
        "1 when the pool's status page answered this collection",
        lambda p: (p.info.status is not None) if p.info.status_queried else None,
    ),
    (
        "pss_phpfpm_listen_queue",
        "gauge",
        "Requests waiting for a free worker (status page)",
        lambda p: p.info.status.listen_queue if p.info.status else None,
    ),
    (
        "pss_phpfpm_max_children_reached_total",
        "counter",
        "Times the pool hit pm.max_children (status page, summed over php-fpm restarts)",
        lambda p: p.info.status.max_children_reached if p.info.status else None,
    ),
    (
        "pss_phpfpm_accepted_connections_total",
        "counter",
        "Requests accepted by the pool (status page, summed over php-fpm restarts)",
        lambda p: p.info.status.accepted_conn if p.info.status else None,
    ),
    (
        "pss_phpfpm_slow_requests_total",
        "counter",
        "Requests slower than request_slowlog_timeout (status page, summed over php-fpm restarts)",
        lambda p: p.info.status.slow_requests if p.info.status else None,
    ),
    (
        "pss_phpfpm_shared_bytes",
        "gauge",
        "Memory the pool's workers share, counted once: group PSS minus group USS",
        lambda p: p.capacity.shared,
    ),
    (
        "pss_phpfpm_budget_bytes",
        "gauge",
        "Memory the pool may use: its share, in proportion to its peak demand, of its memory "
        "domain's room (the domain's pools' PSS plus MemAvailable or the cgroup headroom, "
        "whichever is smaller), less the reserve",
        lambda p: p.capacity.budget,
    ),
    (
        "pss_phpfpm_domain_room_bytes",
        "gauge",
        "Memory the pools of this pool's memory domain (its cgroup with a limit, or the host) "
        "can use together, before the reserve",
        lambda p: p.capacity.room,
    ),
    (
        "pss_phpfpm_worker_peaks",
        "gauge",
        "Workers whose peak is in the window (php_fpm.window)",
        lambda p: len(p.capacity.peaks.peaks),
    ),
)

# name, help, value getter over a basis's Figures: per pool and basis (observed_peak:
# the workers' peaks in the window; memory_limit: PHP's memory_limit plus the
# workers' baseline).
_BASIS_FAMILIES: tuple[tuple[str, str, Callable[[Figures], int | None]], ...] = (
    (
        "pss_phpfpm_worker_size_bytes",
        "Worker size: p95 (or max) of the workers' peak USS in the window, or memory_limit "
        "plus the least worker USS",
        lambda s: s.worker_size,
    ),
    (
        "pss_phpfpm_projected_bytes",
        "Memory if all max_children workers ran at the worker size: shared + max_children x size",
        lambda s: s.projected,
    ),
    (
        "pss_phpfpm_recommended_max_children",
        "pm.max_children that fits the budget: floor((budget - shared) / worker size)",
        lambda s: s.recommended,
    ),
)


def pool_families(snap: Snapshot) -> Iterator[Metric]:
    for name, kind, doc, get in _POOL_FAMILIES:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        fam = cls(name, doc, labels=["group"])
        for pool in snap.pools:
            value = get(pool)
            if value is not None:
                fam.add_metric([pool.info.group], value)
        yield fam
    for name, doc, of in _BASIS_FAMILIES:
        fam = GaugeMetricFamily(name, doc, labels=["group", "basis"])
        for pool in snap.pools:
            for basis in BASES:
                value = of(pool.capacity.bases[basis])
                if value is not None:
                    fam.add_metric([pool.info.group, basis], value)
        yield fam
    processes = GaugeMetricFamily(
        "pss_phpfpm_processes",
        "Workers by state, from the status page",
        labels=["group", "state"],
    )
    for pool in snap.pools:
        if pool.info.status:
            processes.add_metric([pool.info.group, "active"], pool.info.status.active)
            processes.add_metric([pool.info.group, "idle"], pool.info.status.idle)
    yield processes
    yield CounterMetricFamily(
        "pss_phpfpm_config_errors_total",
        "php-fpm config loads that found an error: unreadable or malformed, a number out of "
        "range, a running pool not configured, a status address the master does not hold",
        value=snap.phpfpm_config_errors,
    )
    yield GaugeMetricFamily(
        "pss_exporter_untrusted_phpfpm_processes",
        "Processes titled as php-fpm's that are not trusted as php-fpm's (grouped by "
        "process_names, never queried)",
        value=snap.phpfpm_untrusted,
    )


def host_families(snap: Snapshot) -> Iterator[Metric]:
    """Reconciliation, OOM kills and pressure: host-wide and per group."""
    acc = snap.accounting
    if acc is not None:
        yield GaugeMetricFamily(
            "pss_host_memory_used_bytes",
            "MemTotal - MemAvailable (free's used, procps-ng >= 4)",
            value=acc.used,
        )
        yield GaugeMetricFamily(
            "pss_host_memory_used_procps3_bytes",
            "MemTotal - MemFree - Buffers - Cached - SReclaimable (procps-ng 3.3's used)",
            value=acc.used_procps3,
        )
        parts = GaugeMetricFamily(
            "pss_host_memory_accounted_bytes",
            "Used memory by component; the components add up to pss_host_memory_used_bytes, "
            "unexplained is the remainder (may be negative)",
            labels=["component"],
        )
        for component, value in acc.components.items():
            parts.add_metric([component], value)
        yield parts
        yield GaugeMetricFamily(
            "pss_host_accounting_unreadable_processes",
            "Processes whose smaps could not be read in the last reconciliation",
            value=acc.totals.unreadable,
        )
        yield GaugeMetricFamily(
            "pss_exporter_accounting_duration_seconds",
            "Duration of the last reconciliation pass (every process's smaps)",
            value=acc.duration,
        )
        yield GaugeMetricFamily(
            "pss_exporter_last_accounting_timestamp_seconds",
            "Unix time when the last reconciliation finished",
            value=acc.finished,
        )
    if snap.host_oom_kills is not None:
        yield CounterMetricFamily(
            "pss_host_oom_kills_total",
            "OOM kills on the host, global and in cgroups (/proc/vmstat oom_kill)",
            value=snap.host_oom_kills,
        )
    if snap.host_pressure is not None:
        pressure = CounterMetricFamily(
            "pss_host_memory_pressure_seconds_total",
            "Time some or all tasks stalled on memory (/proc/pressure/memory total)",
            labels=["kind"],
        )
        for kind, seconds in sorted(snap.host_pressure.items()):
            pressure.add_metric([kind], seconds)
        yield pressure
    usage = GaugeMetricFamily(
        "pss_group_cgroup_memory_usage_bytes",
        "Memory charged to the group's outermost cgroup(s), page cache included",
        labels=["group"],
    )
    limit = GaugeMetricFamily(
        "pss_group_cgroup_memory_limit_bytes",
        "Memory limit of the group's outermost cgroup(s), summed (absent when one is unlimited)",
        labels=["group"],
    )
    ooms = CounterMetricFamily(
        "pss_group_oom_kills_total",
        "OOM kills of the group's processes, each once: from the cgroup's counter where "
        "it holds one group; where it holds several, the kernel log's victim, else the "
        "only group that lost a process; outside cgroups, the kernel log",
        labels=["group"],
    )
    stalls = CounterMetricFamily(
        "pss_group_memory_pressure_seconds_total",
        "Time tasks of the group's outermost cgroup(s) stalled on memory (memory.pressure total)",
        labels=["group", "kind"],
    )
    for group, state in sorted(snap.cgroups.items()):
        usage.add_metric([group], state.usage)
        if state.limit is not None:
            limit.add_metric([group], state.limit)
        for kind, seconds in sorted((state.pressure or {}).items()):
            stalls.add_metric([group, kind], seconds)
    for group, kills in sorted(snap.group_oom_kills.items()):
        ooms.add_metric([group], kills)
    yield from (usage, limit, ooms, stalls)
    if snap.oom_unattributed is not None:
        yield CounterMetricFamily(
            "pss_oom_kills_unattributed_total",
            "OOM kills counted by a cgroup shared by several groups that neither the kernel "
            "log nor a lone group losing a process gives to a group, and such a cgroup's "
            "kills before its first reading (never counted in a group)",
            value=snap.oom_unattributed,
        )
    caps = GaugeMetricFamily(
        "pss_exporter_privileges",
        "1 when the exporter holds a capability it needs (cap_sys_ptrace: other users' smaps; "
        "cap_dac_read_search: restricted /proc; cap_syslog: kernel log)",
        labels=["capability"],
    )
    for name, has in snap.own.privileges:
        caps.add_metric([name], int(has))
    yield caps


def source_families(snap: Snapshot) -> Iterator[Metric]:
    """Each source's health this collection (Snapshot.sources)."""
    up = GaugeMetricFamily(
        "pss_exporter_source_up",
        "1 when the source was read in full in the last collection; 0 when its input was "
        "missing, unreadable or malformed, or it failed, and its series are left out "
        "(zoneinfo: as read by the last reconciliation). A source the kernel lacks by "
        "design (pressure before 4.20) or that is disabled has no series",
        labels=["source"],
    )
    duration = GaugeMetricFamily(
        "pss_exporter_source_duration_seconds",
        "Time the source took in the last collection (zoneinfo: in the last reconciliation)",
        labels=["source"],
    )
    for result in snap.sources:
        up.add_metric([result.name], int(result.ok))
        duration.add_metric([result.name], result.duration)
    yield from (up, duration)


def _renders(value: object) -> bool:
    """Whether the exposition can write value (it calls float() on each)."""
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return False
    return True


class _Families:
    """A registry stand-in: the same families for both formats, built once.

    The last family counts the samples left out because their value could
    not be rendered (an integer beyond float range): one bad number must not
    stop every exposition. The check runs only after a render failed.
    """

    def __init__(self, families: list[Metric]) -> None:
        self.dropped = GaugeMetricFamily(
            "pss_exporter_unrenderable_samples",
            "Samples left out of this exposition because their value could not be rendered",
            value=0,
        )
        self.families = [*families, self.dropped]

    def collect(self) -> list[Metric]:
        return self.families

    def drop_unrenderable(self) -> int:
        """Remove the samples that cannot be rendered; return how many."""
        dropped = 0
        for fam in self.families:
            kept = [s for s in fam.samples if _renders(s.value)]
            dropped += len(fam.samples) - len(kept)
            fam.samples = kept
        self.dropped.samples = [self.dropped.samples[0]._replace(value=dropped)]
        return dropped


TEXT, OPENMETRICS = "text", "openmetrics"
FORMATS = (TEXT, OPENMETRICS)


def own_families(snap: Snapshot) -> Iterator[Metric]:
    """The exporter's own CPU, memory, descriptors and Python, as collected."""
    for fam in snap.own.families:
        metric = Metric(fam.name, fam.doc, fam.kind)
        for sample in fam.samples:
            metric.add_sample(sample.name, dict(sample.labels), sample.value)
        yield metric


def _families(snap: Snapshot) -> _Families:
    return _Families(
        [
            *snapshot_families(snap),
            *pool_families(snap),
            *host_families(snap),
            *source_families(snap),
            *own_families(snap),
        ]
    )


def _generate(families: _Families, fmt: str) -> bytes:
    generate = generate_openmetrics if fmt == OPENMETRICS else generate_latest
    try:
        return generate(families)
    except (TypeError, ValueError, OverflowError) as exc:
        dropped = families.drop_unrenderable()
        if not dropped:
            raise
        log.warning("left %d samples out of the exposition: %s", dropped, (*exc.args, "")[0])
        return generate(families)


class Exposition:
    """One snapshot's /metrics bodies. The formats scrapers ask for are
    rendered with the snapshot, in the collection thread; another format (or
    gzip) is made on the first request for it, once."""

    def __init__(self, snapshot: Snapshot, bodies: dict[str, bytes]) -> None:
        self.snapshot = snapshot
        self._bodies = dict(bodies)
        self._lock = threading.Lock()

    @property
    def text(self) -> bytes:
        return self.body(TEXT)

    def body(self, fmt: str, gzipped: bool = False) -> bytes:
        key = fmt + ("+gzip" if gzipped else "")
        with self._lock:
            if key not in self._bodies:
                plain = self._bodies.get(fmt)
                if plain is None:
                    plain = self._bodies[fmt] = _generate(_families(self.snapshot), fmt)
                if gzipped:
                    self._bodies[key] = gzip.compress(plain, 6)
            return self._bodies[key]


def render(snap: Snapshot, formats: tuple[str, ...] = FORMATS) -> Exposition:
    """Build the families once and render the given formats from them."""
    families = _families(snap)
    return Exposition(snap, {fmt: _generate(families, fmt) for fmt in formats})
