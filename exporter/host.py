"""Host-wide memory sources: /proc/meminfo, OOM kills from /proc/vmstat,
memory pressure from /proc/pressure/memory, and the accounting pass that
reconciles every process's PSS with meminfo."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .accounting import REQUIRED, Accounting, ProcessTotals, reconcile, used, used_procps3
from .discovery import PARSE, SMALL_FILE, ZONEINFO_LIMIT, error_reason, read_bytes
from .procfs import Memory, ParseError, parse_meminfo, parse_pressure, parse_uint, parse_zoneinfo
from .scheduling import read_memory
from .snapshot import optional_sum
from .sources import Cycle
from .tracking import NEVER, ReadErrors

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

T = TypeVar("T")


@dataclass(frozen=True)
class HostMemory:
    meminfo: dict[str, int]  # empty when /proc/meminfo could not be read
    oom_kills: int | None  # None: no oom_kill in /proc/vmstat (kernel < 4.13)
    pressure: dict[str, float] | None  # None: no PSI (kernel < 4.20 or psi=0)
    # Read error reasons (discovery.REASONS) of the files that exist but
    # could not be used, for pss_exporter_read_errors_total.
    errors: tuple[str, ...] = ()


def _optional(
    path: str,
    parse: Callable[[bytes], T],
    errors: list[str],
    limit: int = SMALL_FILE,
    to_eof: bool = False,
) -> T | None:
    """parse(the file's bytes), or None when it is missing (an older kernel,
    PSI off) or unusable: then its reason goes to errors and one warning is
    logged. A garbled host file loses only what it gives."""
    try:
        return parse(read_bytes(path, limit, to_eof=to_eof))
    except FileNotFoundError:
        return None
    except OSError as exc:
        errors.append(error_reason(exc))
        log.warning("cannot read %s: %s", path, exc.strerror)
    except ParseError as exc:
        errors.append(PARSE)
        log.warning("cannot parse %s: %s", path, exc)
    return None


def vmstat_oom_kills(data: bytes) -> int | None:
    """oom_kill from /proc/vmstat, found without parsing its 180 other lines;
    None when the kernel has no such counter (< 4.13). Raises only ParseError."""
    at = data.find(b"\noom_kill ") + 1  # never the first line (nr_free_pages is)
    if not at:
        return None
    end = data.find(b"\n", at)  # -1: the last line has no newline
    return parse_uint(data[at + 9 : end if end >= 0 else None].strip(), "vmstat: oom_kill")


def read_host(procfs: str) -> HostMemory:
    """The cheap host files, read every collection."""
    errors: list[str] = []
    meminfo = _optional(f"{procfs}/meminfo", parse_meminfo, errors)
    if meminfo is None:
        log.warning("no %s/meminfo: host memory metrics are left out", procfs)
    return HostMemory(
        meminfo or {},
        _optional(f"{procfs}/vmstat", vmstat_oom_kills, errors, to_eof=True),
        _optional(f"{procfs}/pressure/memory", parse_pressure, errors),
        tuple(errors),
    )


def account(
    procfs: str, meminfo: dict[str, int], totals: ProcessTotals, duration: float, now: float
) -> Accounting | None:
    """Reconcile used memory; None when zoneinfo or a meminfo field it needs is missing."""
    marks = _optional(f"{procfs}/zoneinfo", parse_zoneinfo, [], ZONEINFO_LIMIT, to_eof=True)
    missing = [key for key in REQUIRED if key not in meminfo]
    if marks is None or missing:
        why = f"meminfo lacks {', '.join(missing)}" if missing else "no usable zoneinfo"
        log.warning("cannot reconcile: %s in %s", why, procfs)
        return None
    return Accounting(
        used=used(meminfo),
        used_procps3=used_procps3(meminfo),
        components=reconcile(meminfo, marks, PAGE_SIZE, totals),
        totals=totals,
        duration=duration,
        finished=now,
    )


NO_HOST = HostMemory({}, None, None)


class HostSource:
    """The cheap host files, every cycle; their read errors are counted."""

    name = "host"

    def __init__(self, procfs: str, errors: ReadErrors) -> None:
        self.procfs = procfs
        self._errors = errors

    def collect(self, cycle: Cycle) -> HostMemory:
        host = read_host(self.procfs)
        for reason in host.errors:
            self._errors.count(reason)
        return host


class AccountingSource:
    """The reconciliation, every `interval` seconds (the latest one is
    reported in between): PSS summed over every process of the host.

    Grouped processes contribute the values this cycle holds; the others are
    read now. Zombies hold nothing; kernel threads are not listed.
    """

    name = "accounting"

    def __init__(self, procfs: str, interval: float, slack: float) -> None:
        self.procfs = procfs
        self.interval = interval
        self._slack = slack  # a cycle that starts a little early still counts
        self._latest: Accounting | None = None
        self._at = NEVER

    def collect(self, cycle: Cycle) -> Accounting | None:
        if cycle.now - self._at + self._slack >= self.interval:
            self._latest = None  # should this one fail, no earlier one stands in
            if cycle.meminfo:  # none when the host source failed: tried again next cycle
                self._latest = self._account(cycle)
                self._at = cycle.now  # after it: a failed one is tried again next cycle
        return self._latest

    def _account(self, cycle: Cycle) -> Accounting | None:
        start = time.perf_counter()
        mems: list[Memory] = []
        unreadable = 0
        for pid, p in cycle.processes.items():
            if p.state == "Z":
                continue
            memory = p.memory if p.tracked else None
            if memory is None and not (p.tracked and p.unreadable):
                try:
                    memory = read_memory(self.procfs, pid).memory
                except (OSError, ParseError):
                    memory = None
            if memory is None:
                unreadable += 1
                continue
            mems.append(memory)
        # The split as a group's (snapshot.optional_sum): known only when
        # every readable process has it.
        totals = ProcessTotals(
            sum(m.pss for m in mems),
            optional_sum(m.pss_file for m in mems),
            optional_sum(m.pss_shmem for m in mems),
            len(mems),
            unreadable,
        )
        return account(self.procfs, cycle.meminfo, totals, time.perf_counter() - start, time.time())
