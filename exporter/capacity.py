"""php-fpm pool capacity: how many workers fit, from the workers' peaks.

The common rule "max_children = RAM for PHP / RSS of one worker" counts the
memory workers share (opcache, libraries) once per worker, and a worker's
memory between requests is its idle size (PHP frees its large blocks when a
request ends). Here a pool costs its shared memory once plus one worker size
per worker, the worker size on one of two bases:

    observed_peak  the p95 (or max, php_fpm.sizing) of the peak USS of every
                   worker seen in the window (peaks.py: VmHWM - (RSS - USS))
    memory_limit   PHP's own bound: memory_limit plus the least USS a worker
                   of the window held (its baseline)

Pools that draw on the same memory (a memory domain: the nearest memory
cgroup with a limit, or the host outside any limit) share it:

    shared      = pool PSS - pool USS
    room        = min(domain headroom, MemAvailable) + the domain's pools' PSS
    demand      = shared + n * observed-peak size (memory_limit size for a
                  pool with no peak yet), n = max_children at most what
                  would fit in the whole room alone
    budget      = room * (1 - reserve) * demand / the domain's total demand
    projected   = shared + max_children * size     (per basis)
    recommended = floor((budget - shared) / size)  (per basis)

What other groups of the domain hold is in its usage, so the headroom has it
taken out already; the budgets of a domain's pools add up to at most its room.
All pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SIZINGS = ("p95", "max")
OBSERVED_PEAK, MEMORY_LIMIT = "observed_peak", "memory_limit"
BASES = (OBSERVED_PEAK, MEMORY_LIMIT)  # the first is the default figure
HOST = "host"  # the memory domain of pools outside any memory limit


def nearest_rank(sorted_values: Sequence[int], q: float) -> int:
    """The nearest-rank quantile: an actual member's value, never interpolated."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def quantile(quantiles: tuple[tuple[float, int], ...], q: float) -> int | None:
    """The value at q among a distribution's (quantile, value) pairs; None if
    q is not one of them (no workers). The one lookup: snapshot.Distribution
    and top go through it."""
    return next((v for qq, v in quantiles if qq == q), None)


@dataclass(frozen=True)
class PoolPeaks:
    """A pool's workers over the window, as one collection sees them."""

    peaks: tuple[int, ...]  # the peak USS of each worker seen in the window, ascending
    baseline: int | None  # the least USS a worker of the window held; None: no worker
    window: float  # seconds (php_fpm.window)
    observed: float  # seconds of the window the exporter has seen this pool

    def size(self, sizing: str) -> int | None:
        """The p95 or max of the peaks; None without any."""
        if not self.peaks:
            return None
        return nearest_rank(self.peaks, 0.95 if sizing == "p95" else 1.0)


NO_PEAKS = PoolPeaks((), None, 0.0, 0.0)


@dataclass(frozen=True)
class PoolDemand:
    """What the capacity of one pool is computed from (snapshot.pool_stats)."""

    group: str
    pss: int
    uss: int
    peaks: PoolPeaks
    max_children: int | None
    memory_limit: int | None  # bytes; None: unlimited or unknown
    domain: str  # the nearest memory cgroup directory with a limit, or HOST
    headroom: int | None  # below the tightest limit; None: no limit


@dataclass(frozen=True)
class Figures:
    """The figures of one basis."""

    worker_size: int | None  # None: unknown (no peak seen, or no memory_limit)
    projected: int | None  # None: max_children or worker size unknown
    recommended: int | None  # None: budget or a non-zero worker size missing


@dataclass(frozen=True)
class Capacity:
    shared: int
    budget: int | None  # None: neither MemAvailable nor a cgroup limit known
    bases: dict[str, Figures]  # by basis (BASES)
    domain: str  # the memory domain (HOST or a cgroup directory)
    room: int | None  # the domain's room, before the reserve and the split
    demand: int  # what the split weighs this pool by
    peaks: PoolPeaks = NO_PEAKS

    @property
    def worker_size(self) -> int | None:
        return self.bases[OBSERVED_PEAK].worker_size

    @property
    def projected(self) -> int | None:
        return self.bases[OBSERVED_PEAK].projected

    @property
    def recommended(self) -> int | None:
        return self.bases[OBSERVED_PEAK].recommended


def shared_memory(pss: int, uss: int) -> int:
    return max(pss - uss, 0)


def limit_size(memory_limit: int | None, baseline: int | None) -> int | None:
    """A worker at PHP's memory_limit: the limit plus its baseline (0 if unknown)."""
    return None if memory_limit is None else memory_limit + (baseline or 0)


def room(pools: Sequence[PoolDemand], mem_available: int | None) -> int | None:
    """The memory a domain's pools can use together: what they hold plus what
    the tightest of their cgroup headroom and MemAvailable still gives."""
    free = [p.headroom for p in pools if p.headroom is not None]
    if mem_available is not None:
        free.append(mem_available)
    if not free:
        return None
    return sum(p.pss for p in pools) + min(free)


def demand(pool: PoolDemand, whole: int | None, sizing: str) -> int:
    """A pool's peak demand: its shared memory plus max_children workers at
    their observed peak (PHP's bound for a pool no worker of which was seen),
    at most as many as the whole room would hold."""
    shared = shared_memory(pool.pss, pool.uss)
    size = pool.peaks.size(sizing) or limit_size(pool.memory_limit, pool.peaks.baseline)
    if not size:
        return shared
    workers = pool.max_children if pool.max_children is not None else len(pool.peaks.peaks)
    if whole is not None:
        workers = min(workers, max((whole - shared) // size, 0))
    return shared + workers * size


def split(room_after_reserve: int, demands: Sequence[int]) -> list[int]:
    """The room in proportion to the demands (equal shares when all are 0);
    rounded down, so the shares never add up to more than the room."""
    total = sum(demands)
    if total == 0:
        return [room_after_reserve // len(demands)] * len(demands)
    return [room_after_reserve * d // total for d in demands]


def figures(size: int | None, shared: int, max_children: int | None, budget: int | None) -> Figures:
    projected = shared + max_children * size if max_children is not None and size else None
    recommended = max((budget - shared) // size, 0) if budget is not None and size else None
    return Figures(size, projected, recommended)


def domain_capacity(
    pools: Sequence[PoolDemand], mem_available: int | None, reserve: float, sizing: str
) -> list[Capacity]:
    """The capacity of each pool of one memory domain, in the order given."""
    whole = room(pools, mem_available)
    demands = [demand(p, whole, sizing) for p in pools]
    budgets: list[int | None] = (
        [None] * len(pools) if whole is None else list(split(int(whole * (1 - reserve)), demands))
    )
    out = []
    for pool, weight, budget in zip(pools, demands, budgets):
        shared = shared_memory(pool.pss, pool.uss)
        bases = {
            OBSERVED_PEAK: figures(pool.peaks.size(sizing), shared, pool.max_children, budget),
            MEMORY_LIMIT: figures(
                limit_size(pool.memory_limit, pool.peaks.baseline),
                shared,
                pool.max_children,
                budget,
            ),
        }
        out.append(Capacity(shared, budget, bases, pool.domain, whole, weight, pool.peaks))
    return out


def capacities(
    pools: Sequence[PoolDemand], mem_available: int | None, reserve: float, sizing: str
) -> dict[str, Capacity]:
    """Every pool's capacity by group, the pools split by memory domain."""
    domains: dict[str, list[PoolDemand]] = {}
    for p in pools:
        domains.setdefault(p.domain, []).append(p)
    out: dict[str, Capacity] = {}
    for members in domains.values():
        for p, cap in zip(members, domain_capacity(members, mem_available, reserve, sizing)):
            out[p.group] = cap
    return out
