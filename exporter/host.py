"""Host-wide memory sources, one per /proc file: meminfo, vmstat (OOM
kills), pressure/memory and zoneinfo, and the accounting pass that
reconciles every process's PSS with meminfo (and zoneinfo).

A host file that is missing, unreadable or malformed makes its source raise
(the SourceRunner reports it down: pss_exporter_source_up 0) and loses only
what it gives. What a kernel does not have by design is no failure: without
/proc/pressure (kernel < 4.20, PSI off) the pressure source does not exist;
a vmstat without oom_kill (< 4.13) or a meminfo without MemAvailable (< 3.14)
is up, with the series that need them left out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .accounting import Accounting, ProcessTotals, reconcile, used, used_procps3
from .discovery import PARSE, SMALL_FILE, ZONEINFO_LIMIT, error_reason, read_bytes
from .procfs import (
    Memory,
    ParseError,
    Watermarks,
    parse_meminfo,
    parse_pressure,
    parse_uint,
    parse_zoneinfo,
)
from .scheduling import read_memory
from .snapshot import optional_sum
from .sources import Cycle
from .tracking import NEVER, ReadErrors

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

T = TypeVar("T")


@dataclass(frozen=True)
class ProcFile(Generic[T]):
    """One host file as a source: collect() is parse(its bytes). A file that
    cannot be read or parsed raises (OSError, ParseError) after its reason is
    counted in read_errors, but for a missing one: nothing was read."""

    name: str
    path: str
    parse: Callable[[bytes], T]
    errors: ReadErrors
    limit: int = SMALL_FILE
    to_eof: bool = False

    def collect(self, cycle: Cycle) -> T:
        try:
            return self.parse(read_bytes(self.path, self.limit, to_eof=self.to_eof))
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):  # a missing file read nothing
                self.errors.count(error_reason(exc))
            raise
        except ParseError:
            self.errors.count(PARSE)
            raise


def vmstat_oom_kills(data: bytes) -> int | None:
    """oom_kill from /proc/vmstat, found without parsing its 180 other lines;
    None when the kernel has no such counter (< 4.13). Raises only ParseError."""
    at = data.find(b"\noom_kill ") + 1  # never the first line (nr_free_pages is)
    if not at:
        return None
    end = data.find(b"\n", at)  # -1: the last line has no newline
    return parse_uint(data[at + 9 : end if end >= 0 else None].strip(), "vmstat: oom_kill")


@dataclass(frozen=True)
class HostSources:
    """The host files' sources. pressure is None when the kernel has no PSI
    (no /proc/pressure: < 4.20, CONFIG_PSI off, psi=0), decided at start:
    the directory comes and goes only with a reboot."""

    meminfo: ProcFile[dict[str, int]]
    vmstat: ProcFile[int | None]
    pressure: ProcFile[dict[str, float]] | None
    zoneinfo: ProcFile[Watermarks]  # read by the accounting pass only


def host_sources(procfs: str, errors: ReadErrors) -> HostSources:
    pressure = None
    if os.path.isdir(f"{procfs}/pressure"):
        pressure = ProcFile("pressure", f"{procfs}/pressure/memory", parse_pressure, errors)
    else:
        log.info("no %s/pressure (kernel < 4.20, or PSI off): no host pressure series", procfs)
    return HostSources(
        ProcFile("meminfo", f"{procfs}/meminfo", parse_meminfo, errors),
        ProcFile("vmstat", f"{procfs}/vmstat", vmstat_oom_kills, errors, to_eof=True),
        pressure,
        ProcFile(
            "zoneinfo", f"{procfs}/zoneinfo", parse_zoneinfo, errors, ZONEINFO_LIMIT, to_eof=True
        ),
    )


def account(
    meminfo: dict[str, int],
    marks: Watermarks | None,
    totals: ProcessTotals,
    duration: float,
    now: float,
) -> Accounting:
    """Both "used" from meminfo alone, and the reconciliation of the first
    (without marks, what zoneinfo splits out stays in unexplained)."""
    total_used = used(meminfo)
    return Accounting(
        used=total_used,
        used_procps3=used_procps3(meminfo),
        components={} if total_used is None else reconcile(meminfo, marks, PAGE_SIZE, totals),
        totals=totals,
        duration=duration,
        finished=now,
    )


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

    def due(self, cycle: Cycle) -> bool:
        """Whether this cycle makes a pass (and so reads zoneinfo for it)."""
        return self._elapsed(cycle.now) and bool(cycle.meminfo)

    def _elapsed(self, now: float) -> bool:
        return now - self._at + self._slack >= self.interval

    def collect(self, cycle: Cycle) -> Accounting | None:
        if self._elapsed(cycle.now):
            self._latest = None  # should this one fail, no earlier one stands in
            if cycle.meminfo:  # none when meminfo failed: tried again next cycle
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
        duration = time.perf_counter() - start
        return account(cycle.meminfo, cycle.zoneinfo, totals, duration, time.time())
