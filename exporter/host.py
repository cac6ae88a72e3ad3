"""Host-wide memory sources: /proc/meminfo, OOM kills from /proc/vmstat,
memory pressure from /proc/pressure/memory, and the accounting pass that
reconciles every process's PSS with meminfo."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .accounting import Accounting, ProcessTotals, reconcile, used, used_procps3
from .discovery import read_bytes
from .procfs import ParseError, parse_meminfo, parse_pressure, parse_zoneinfo

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class HostMemory:
    meminfo: dict[str, int]  # empty when /proc/meminfo could not be read
    oom_kills: int | None  # None: no oom_kill in /proc/vmstat (kernel < 4.13)
    pressure: dict[str, float] | None  # None: no PSI (kernel < 4.20 or psi=0)


def _optional(path: str, parse):
    try:
        return parse(read_bytes(path))
    except (OSError, ParseError):
        return None


def vmstat_oom_kills(data: bytes) -> int | None:
    """oom_kill from /proc/vmstat, found without parsing its 180 other lines."""
    at = data.find(b"\noom_kill ")
    return int(data[at + 10 : data.index(b"\n", at + 1)]) if at >= 0 else None


def read_host(procfs: str) -> HostMemory:
    """The cheap host files, read every collection."""
    meminfo = _optional(f"{procfs}/meminfo", parse_meminfo)
    if meminfo is None:
        log.warning("cannot read %s/meminfo", procfs)
    return HostMemory(
        meminfo or {},
        _optional(f"{procfs}/vmstat", vmstat_oom_kills),
        _optional(f"{procfs}/pressure/memory", parse_pressure),
    )


def account(
    procfs: str, meminfo: dict[str, int], totals: ProcessTotals, duration: float, now: float
) -> Accounting | None:
    """Reconcile used memory; None when meminfo or zoneinfo is missing."""
    marks = _optional(f"{procfs}/zoneinfo", parse_zoneinfo)
    if marks is None or "MemAvailable" not in meminfo:
        log.warning("cannot reconcile: %s/zoneinfo or MemAvailable missing", procfs)
        return None
    return Accounting(
        used=used(meminfo),
        used_procps3=used_procps3(meminfo),
        components=reconcile(meminfo, marks, PAGE_SIZE, totals),
        totals=totals,
        duration=duration,
        finished=now,
    )
