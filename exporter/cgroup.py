"""Memory cgroups: which cgroup a process is in, and its limit and usage.

Works with cgroup v2, v1 and hybrid hosts (v1 memory controller beside a v2
"unified" mount). The kernel enforces the smallest limit on the way to the
root, so headroom is taken over the whole ancestry, not the leaf alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from .discovery import read_bytes
from .procfs import parse_count, parse_key_values, parse_pressure, parse_proc_cgroup_lines

# v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with
# 4 KiB pages); anything this large is unlimited.
V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupPaths:
    """A process's memory cgroup as /proc/PID/cgroup names it."""

    v1_memory: str | None  # path in the v1 memory hierarchy
    v2: str | None  # path in the v2 (unified) hierarchy


@dataclass(frozen=True)
class CgroupMemory:
    """One cgroup directory's memory accounting."""

    dir: str
    usage: int
    limit: int | None  # None: unlimited


def parse_proc_cgroup(data: bytes) -> CgroupPaths:
    """The memory cgroup in /proc/PID/cgroup (see procfs.parse_proc_cgroup_lines)."""
    v1 = v2 = None
    for line in parse_proc_cgroup_lines(data):
        path = line.path.removesuffix(" (deleted)")
        if line.hierarchy == "0" and line.controllers == "":
            v2 = path
        elif "memory" in line.controllers.split(","):
            v1 = path
    return CgroupPaths(v1, v2)


def _v2_root(sysfs: str) -> str:
    root = f"{sysfs}/fs/cgroup"
    # Pure v2 mounts the unified hierarchy at the root, hybrid hosts below it.
    return root if os.path.exists(f"{root}/cgroup.controllers") else f"{root}/unified"


def _hierarchy(sysfs: str, paths: CgroupPaths) -> tuple[str, str, str] | None:
    """(mount point, path below it, a file every memory cgroup there has)."""
    if paths.v1_memory is not None:
        return f"{sysfs}/fs/cgroup/memory", paths.v1_memory, "memory.usage_in_bytes"
    if paths.v2 is not None:
        return _v2_root(sysfs), paths.v2, "memory.current"
    return None


def memory_dirs(sysfs: str, paths: CgroupPaths) -> list[str]:
    """The cgroup directories that hold memory files, leaf first, to the root."""
    found = _hierarchy(sysfs, paths)
    if found is None:
        return []
    root, rel, marker = found
    dirs = []
    rel = rel.strip("/")
    while True:
        d = f"{root}/{rel}" if rel else root
        if os.path.exists(f"{d}/{marker}"):
            dirs.append(d)
        if not rel:
            return dirs
        rel = rel.rpartition("/")[0]


def _read_int(path: str) -> int | None:
    """An integer file; None for "max" or a file the level does not have
    (the v2 root has no memory.max). ParseError unless a count in range."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return None
    return None if data.strip() == b"max" else parse_count(data)


def read_memory(d: str) -> CgroupMemory:
    """Usage and limit of one cgroup directory (v1 or v2 file names)."""
    if os.path.exists(f"{d}/memory.current"):
        usage, limit = _read_int(f"{d}/memory.current"), _read_int(f"{d}/memory.max")
    else:
        usage = _read_int(f"{d}/memory.usage_in_bytes")
        limit = _read_int(f"{d}/memory.limit_in_bytes")
        if limit is not None and limit >= V1_UNLIMITED:
            limit = None
    return CgroupMemory(d, usage or 0, limit)


def headroom(chain: list[CgroupMemory]) -> int | None:
    """Memory that can still be charged before some limit on the chain is hit,
    or None when no cgroup on the chain has a limit."""
    free = [c.limit - c.usage for c in chain if c.limit is not None]
    return min(free) if free else None


class Cgroup(NamedTuple):
    """One process's memory cgroup: its directories from the leaf to the
    root, and its PSI file (on hybrid hosts, in the unified hierarchy)."""

    chain: tuple[str, ...]
    pressure: str


def memory_cgroup(sysfs: str, paths: CgroupPaths) -> Cgroup | None:
    """memory_chain() with the PSI file that goes with it."""
    chain = memory_chain(sysfs, paths)
    if chain is None:
        return None
    if paths.v1_memory is not None and paths.v2 not in (None, "/"):
        pressure = f"{_v2_root(sysfs)}{paths.v2}/memory.pressure"  # hybrid host
    else:
        pressure = f"{chain[0]}/memory.pressure"
    return Cgroup(chain, pressure)


def memory_chain(sysfs: str, paths: CgroupPaths) -> tuple[str, ...] | None:
    """memory_dirs() as a hashable chain, or None for a process in the root
    cgroup (whose usage is the whole host's) or with no memory hierarchy."""
    found = _hierarchy(sysfs, paths)
    if found is not None and found[1].startswith("/.."):
        return None  # seen from a private cgroup namespace: not a path under sysfs
    dirs = memory_dirs(sysfs, paths)
    # Memory is charged to the nearest cgroup with the controller; when that
    # is the hierarchy's root (which the v2 root never shows), there is none.
    if found is None or not dirs or dirs[0] == found[0]:
        return None
    return tuple(dirs)


@dataclass(frozen=True)
class CgroupState:
    """What a group's memory cgroup(s) report."""

    usage: int
    limit: int | None  # None: unlimited
    pressure: dict[str, float] | None  # stall seconds by kind; None: no PSI here
    headroom: int | None  # room below the tightest limit up to the root
    # The nearest directory on the way to the root with a limit: the memory
    # its processes share with every other one below it (capacity.py).
    domain: str | None = None  # None: no limit up to the root
    # The domain's own usage and limit (usage and limit above are chain[0]'s,
    # which is the domain only when it has the limit itself).
    domain_usage: int | None = None
    domain_limit: int | None = None


def read_oom_kills(d: str) -> int | None:
    """The cgroup's oom_kill counter (its own and its descendants' kills);
    None when the kernel does not count them there."""
    for name in ("memory.events", "memory.oom_control"):  # v2, v1
        try:
            return parse_key_values(read_bytes(f"{d}/{name}")).get("oom_kill")
        except FileNotFoundError:
            continue
    return None


def read_state(cgroup: Cgroup) -> CgroupState:
    """Read one cgroup (chain[0]), its pressure and the limits of its ancestors."""
    chain = cgroup.chain
    memory = [read_memory(d) for d in chain]
    try:
        pressure = parse_pressure(read_bytes(cgroup.pressure))
    except OSError:
        pressure = None  # pure v1, or PSI disabled
    domain = next((m for m in memory if m.limit is not None), None)
    return CgroupState(
        memory[0].usage,
        memory[0].limit,
        pressure,
        headroom(memory),
        domain.dir if domain else None,
        domain.usage if domain else None,
        domain.limit if domain else None,
    )


def outermost(cgroups: set[Cgroup]) -> list[Cgroup]:
    """Drop every cgroup that lies below another one of the set: a parent's
    usage, stall time and OOM count already include its children's."""
    leaves = {c.chain[0] for c in cgroups}
    return sorted(c for c in cgroups if not any(d in leaves for d in c.chain[1:]))


def combine(states: list[CgroupState]) -> CgroupState:
    """One figure for a group spanning several (non-nested) cgroups: usage,
    limits and stall time add up; the headroom is the smallest, and the
    domain (with its usage and limit, not added up) is that of the smallest
    headroom."""
    limits = [s.limit for s in states if s.limit is not None]
    pressures = [s.pressure for s in states if s.pressure is not None]
    rooms = [s.headroom for s in states if s.headroom is not None]
    tightest = min(
        (s for s in states if s.headroom is not None), key=lambda s: s.headroom or 0, default=None
    )
    return CgroupState(
        usage=sum(s.usage for s in states),
        limit=sum(limits) if len(limits) == len(states) else None,
        pressure={k: sum(p.get(k, 0.0) for p in pressures) for k in pressures[0]}
        if pressures
        else None,
        headroom=min(rooms) if rooms else None,
        domain=tightest.domain if tightest else None,
        domain_usage=tightest.domain_usage if tightest else None,
        domain_limit=tightest.domain_limit if tightest else None,
    )
