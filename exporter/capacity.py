"""php-fpm pool capacity: how many workers fit, from measured memory.

The common rule "max_children = RAM for PHP / RSS of one worker" counts the
memory workers share (opcache, libraries) once per worker. Here a pool costs
its shared memory once plus one private part (USS) per worker:

    shared      = pool PSS - pool USS
    projected   = shared + max_children * worker size
    budget      = min(MemAvailable + pool PSS, cgroup headroom + pool PSS)
                  * (1 - reserve)
    recommended = floor((budget - shared) / worker size)

where the worker size is the p95 (or max) of the workers' USS. All pure.
"""

from __future__ import annotations

from dataclasses import dataclass

SIZINGS = ("p95", "max")


@dataclass(frozen=True)
class Capacity:
    shared: int
    worker_size: int | None  # None: no readable worker
    projected: int | None  # None: max_children or worker size unknown
    budget: int | None  # None: neither MemAvailable nor a cgroup limit known
    recommended: int | None  # None: budget or a non-zero worker size missing


def quantile(quantiles: tuple[tuple[float, int], ...], q: float) -> int | None:
    """The value at q among a distribution's (quantile, value) pairs; None if
    q is not one of them (no workers). The one lookup: snapshot.Distribution
    and top go through it."""
    return next((v for qq, v in quantiles if qq == q), None)


def worker_size(quantiles: tuple[tuple[float, int], ...], sizing: str) -> int | None:
    """The p95 or max of a per-worker distribution's (quantile, value) pairs."""
    return quantile(quantiles, 0.95 if sizing == "p95" else 1.0)


def budget(
    pool_pss: int, mem_available: int | None, cgroup_headroom: int | None, reserve: float
) -> int | None:
    """Memory the pool may use: what it holds plus what it can still get from
    the host or from its cgroup, whichever is tighter, less the reserve."""
    room = [r for r in (mem_available, cgroup_headroom) if r is not None]
    if not room:
        return None
    return int((pool_pss + min(room)) * (1 - reserve))


def pool_capacity(
    pss: int,
    uss: int,
    worker_uss: tuple[tuple[float, int], ...],
    max_children: int | None,
    mem_available: int | None,
    cgroup_headroom: int | None,
    reserve: float,
    sizing: str,
) -> Capacity:
    shared = max(pss - uss, 0)
    size = worker_size(worker_uss, sizing)
    projected = shared + max_children * size if max_children is not None and size else None
    room = budget(pss, mem_available, cgroup_headroom, reserve)
    recommended = max((room - shared) // size, 0) if room is not None and size else None
    return Capacity(shared, size, projected, room, recommended)
