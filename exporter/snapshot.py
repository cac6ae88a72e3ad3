"""Aggregation of per-process memory into an immutable snapshot.

The collector hands over one Sample per grouped process; everything the
metrics, web and CLI views show is computed here, once per collection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .accounting import Accounting
from .capacity import (
    HOST,
    NO_PEAKS,
    Capacity,
    PoolDemand,
    PoolPeaks,
    capacities,
    nearest_rank,
    quantile,
)
from .cgroup import CgroupState
from .config import PhpFpmConfig
from .phpfpm_config import PoolSettings
from .privileges import OwnProcess
from .procfs import Memory

# How a collection obtained a process's memory (pss_exporter_smaps_processes).
READ, REUSED, DEFERRED = "read", "reused", "deferred"
SMAPS_OUTCOMES = (READ, REUSED, DEFERRED)

# Quantiles of the per-worker summaries; 1.0 is the maximum.
QUANTILES = (0.5, 0.95, 1.0)


class Sample(NamedTuple):
    """One grouped process as seen by one collection.

    memory is None when its smaps could not be read (unreadable: permission
    denied) or has not been read yet (stale: deferred by the time budget).
    stale with memory set means the values are from an earlier cycle.
    Workers are all processes except php-fpm masters, status-pool processes
    and zombies (a trusted master's child is a worker whatever its title:
    classify.FpmView.is_worker).
    """

    group: str
    memory: Memory | None
    is_worker: bool
    unreadable: bool = False
    stale: bool = False


class SourceResult(NamedTuple):
    """How one source of a collection did (see sources.py): ok is False when
    it raised (its part of the snapshot is missing) or could read only part
    of its input; error says why."""

    name: str
    ok: bool
    duration: float  # seconds
    error: str | None = None


class LargeRead(NamedTuple):
    """How long the last smaps read of one large process took."""

    group: str
    seconds: float


@dataclass(frozen=True)
class Distribution:
    """Per-worker values of one group: quantiles (nearest rank), sum, count."""

    quantiles: tuple[tuple[float, int], ...]
    total: int
    count: int

    def quantile(self, q: float) -> int | None:
        """The value at quantile q (one of QUANTILES); None without workers."""
        return quantile(self.quantiles, q)


@dataclass(frozen=True)
class GroupStats:
    name: str
    processes: int
    unreadable: int
    stale: int
    rss: int
    pss: int
    uss: int
    swap: int
    swap_pss: int
    # None unless every readable process of the group reported the split
    # (kernel >= 5.x, smaps_rollup read): see optional_sum.
    pss_anon: int | None
    pss_file: int | None
    pss_shmem: int | None
    worker_pss: Distribution
    worker_uss: Distribution
    # Every worker, its memory known or not (unreadable, deferred before its
    # first read): the distributions count only those whose memory is known.
    workers: int


@dataclass(frozen=True)
class PoolStatus:
    """The counters of php-fpm's status page (`?json`), as phpfpm.parse_status reads it."""

    accepted_conn: int
    listen_queue: int
    max_listen_queue: int
    idle: int
    active: int
    total: int
    max_active: int
    max_children_reached: int
    slow_requests: int


# The counters of a status page (reset when php-fpm restarts).
STATUS_COUNTERS = ("accepted_conn", "max_children_reached", "slow_requests")


@dataclass(frozen=True)
class PoolInfo:
    """What one collection learned about a pool beyond its memory."""

    group: str
    settings: PoolSettings | None  # None: no config could be read
    max_children: int | None  # configured, or the YAML override
    status: PoolStatus | None  # None: no status source, or it did not answer
    status_queried: bool
    master: int | None = None  # PID of the php-fpm master serving the status page


@dataclass(frozen=True)
class PoolStats:
    """A php-fpm pool: what it is configured to do and what fits."""

    info: PoolInfo
    capacity: Capacity


@dataclass(frozen=True)
class Snapshot:
    groups: tuple[GroupStats, ...]  # sorted by name
    memory_total: int | None
    memory_available: int | None
    started: float  # wall clock, seconds since the epoch
    duration: float  # seconds the collection took
    processes_scanned: int
    read_errors: dict[str, int]  # cumulative, by reason
    groups_overflow: int  # cumulative processes put into "other"
    # How this cycle obtained each grouped process's memory: read, reused
    # (unchanged since a read within max_age) or deferred (budget/schedule).
    smaps_outcomes: dict[str, int] = field(default_factory=dict)
    budget_exhausted: int = 0  # cumulative cycles that hit collection.budget
    large_reads: tuple[LargeRead, ...] = ()  # slowest first, bounded
    pools: tuple[PoolStats, ...] = ()  # php-fpm pools, by group name
    phpfpm_config_errors: int = 0  # cumulative failed php-fpm config reads
    phpfpm_untrusted: int = 0  # processes titled as php-fpm's, not trusted, this cycle
    cgroups: dict[str, CgroupState] = field(default_factory=dict)  # by group name
    # The counters below never fall (counters.py): summed over their sources.
    host_oom_kills: float | None = None  # /proc/vmstat oom_kill
    host_pressure: dict[str, float] | None = None  # stall seconds by kind
    accounting: Accounting | None = None  # the latest reconciliation
    group_oom_kills: dict[str, int] = field(default_factory=dict)  # by victim's group (oom.py)
    oom_unattributed: int | None = None  # kills no group could be given; None: not counted
    # The exporter's own process (capabilities, CPU, memory, descriptors), read
    # with the collection so that rendering reads nothing.
    own: OwnProcess = field(default_factory=OwnProcess)
    sources: tuple[SourceResult, ...] = ()  # each source run this cycle, in order

    @property
    def finished(self) -> float:
        return self.started + self.duration


def distribution(values: list[int]) -> Distribution:
    values.sort()
    if not values:
        return Distribution((), 0, 0)
    return Distribution(
        tuple((q, nearest_rank(values, q)) for q in QUANTILES), sum(values), len(values)
    )


def optional_sum(values: Iterable[int | None]) -> int | None:
    """The sum of values; None when there are none or any is missing (a
    kernel without the PSS split, or a process whose full smaps was read): a
    sum over only some of the processes would pass for all of them."""
    total, seen = 0, False
    for v in values:
        if v is None:
            return None
        total, seen = total + v, True
    return total if seen else None


def aggregate_group(name: str, samples: list[Sample]) -> GroupStats:
    mems = [s.memory for s in samples if s.memory is not None]
    workers = [s.memory for s in samples if s.is_worker and s.memory is not None]
    return GroupStats(
        name=name,
        processes=len(samples),
        unreadable=sum(s.unreadable for s in samples),
        stale=sum(s.stale for s in samples),
        rss=sum(m.rss for m in mems),
        pss=sum(m.pss for m in mems),
        uss=sum(m.uss for m in mems),
        swap=sum(m.swap for m in mems),
        swap_pss=sum(m.swap_pss for m in mems),
        pss_anon=optional_sum([m.pss_anon for m in mems]),
        pss_file=optional_sum([m.pss_file for m in mems]),
        pss_shmem=optional_sum([m.pss_shmem for m in mems]),
        worker_pss=distribution([m.pss for m in workers]),
        worker_uss=distribution([m.uss for m in workers]),
        workers=sum(s.is_worker for s in samples),
    )


def aggregate(samples: list[Sample]) -> tuple[GroupStats, ...]:
    by_group: dict[str, list[Sample]] = {}
    for s in samples:
        by_group.setdefault(s.group, []).append(s)
    return tuple(aggregate_group(name, by_group[name]) for name in sorted(by_group))


def pool_stats(
    infos: tuple[PoolInfo, ...],
    groups: tuple[GroupStats, ...],
    mem_available: int | None,
    cgroups: dict[str, CgroupState],
    peaks: dict[str, PoolPeaks],
    fpm: PhpFpmConfig,
) -> tuple[PoolStats, ...]:
    """Join each pool with its group's memory, its cgroup and its workers'
    peaks, and compute the capacities of the pools of each memory domain."""
    by_name = {g.name: g for g in groups}
    infos = tuple(sorted(infos, key=lambda i: i.group))
    demands = []
    for info in infos:
        g = by_name.get(info.group)  # None: a configured pool with no worker alive
        cg = cgroups.get(info.group)
        demands.append(
            PoolDemand(
                group=info.group,
                pss=g.pss if g else 0,
                uss=g.uss if g else 0,
                peaks=peaks.get(info.group, NO_PEAKS),
                max_children=info.max_children,
                memory_limit=info.settings.memory_limit if info.settings else None,
                domain=(cg.domain if cg else None) or HOST,
                headroom=cg.headroom if cg else None,
            )
        )
    found = capacities(demands, mem_available, fpm.reserve, fpm.sizing)
    return tuple(PoolStats(info, found[info.group]) for info in infos)
