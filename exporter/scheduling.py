"""Read scheduling: which processes' smaps is read this cycle, and reading it.

Reading smaps_rollup is the expensive part (the kernel walks the target's page
tables), so a cycle reads it only where it can have changed:

- a process whose statm is unchanged keeps its values (see tracking);
- every member of a group whose membership changed is re-read (the PSS of
  shared pages depends on who else maps them);
- values older than collection.max_age are re-read whatever statm says;
- large processes (Rss >= collection.large_rss) are read at most every
  collection.large_interval, so a huge heap is not page-walked every cycle;
- reading stops for the cycle at collection.budget; what is left keeps its
  previous values, is reported stale, and goes first next cycle (the due list
  is ordered oldest read first, so nothing starves).

Reads may run on a thread pool; their results are applied by the collection
thread, so per-process state keeps a single writer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from .config import CollectionConfig
from .discovery import PARSE, PERMISSION, SMAPS_LIMIT, error_reason, read_bytes
from .procfs import Memory, ParseError, parse_smaps
from .snapshot import LargeRead
from .tracking import Proc, ReadErrors

log = logging.getLogger(__name__)

LARGE_READS_EXPORTED = 5  # bounded: top N large processes by read time


class MemoryRead(NamedTuple):
    memory: Memory
    full_smaps: bool  # no smaps_rollup (kernel < 4.14): smaps was summed


def read_memory(procfs: str, pid: int, rollup: bool = True) -> MemoryRead:
    """A process's memory from smaps_rollup, or from full smaps when there is
    none (kernel < 4.14). Decided per read, so a process that vanishes
    between the two reads (ENOENT on both) changes nothing for the others;
    rollup False (the last read found none) tries full smaps first, so an
    old kernel costs no failed open per read. Raises OSError or ParseError."""
    base = f"{procfs}/{pid}"
    if not rollup:
        try:
            return _full_smaps(base)
        except FileNotFoundError:
            pass  # vanished, or this process has smaps_rollup after all
    try:
        return MemoryRead(parse_smaps(read_bytes(f"{base}/smaps_rollup")), False)
    except FileNotFoundError:
        if not rollup or not os.path.exists(f"{base}/smaps"):
            raise  # the process is gone
    return _full_smaps(base)


def _full_smaps(base: str) -> MemoryRead:
    # Full smaps comes a page or so per read(): read it to its end.
    return MemoryRead(parse_smaps(read_bytes(f"{base}/smaps", SMAPS_LIMIT, to_eof=True)), True)


class _Result(NamedTuple):
    read: MemoryRead | None
    reason: str | None  # an error reason (discovery.REASONS)
    seconds: float


class Scheduler:
    """Decides which processes are due a read and reads them within the budget."""

    def __init__(
        self,
        config: CollectionConfig,
        procfs: str,
        clock: Callable[[], float],
        errors: ReadErrors,
        forget: Callable[[int], None],
    ) -> None:
        self.config = config
        self.procfs = procfs
        self._clock = clock
        self._errors = errors
        self._forget = forget  # tells tracking a process vanished
        # A cycle that starts a little early still counts an age as reached.
        self._slack = config.interval / 2
        self._members: dict[str, frozenset[int]] = {}
        self.budget_exhausted = 0  # cumulative cycles that hit the budget
        self._logged_smaps = False
        # Whether the last read found smaps_rollup, so that a kernel without
        # it costs no failed open per read. Written by the collection thread
        # once a cycle's reads are done; the reader threads only read it.
        self._rollup = True
        self._pool = ThreadPoolExecutor(config.threads, "smaps") if config.threads > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def due(self, procs: list[Proc], groups: list[str], now: float) -> list[Proc]:
        """Processes whose smaps must be read this cycle, oldest read first."""
        cc = self.config
        members: dict[str, set[int]] = {}
        for p, group in zip(procs, groups):
            members.setdefault(group, set()).add(p.pid)
        frozen = {g: frozenset(pids) for g, pids in members.items()}
        moved = {g for g, pids in frozen.items() if self._members.get(g) != pids}
        self._members = frozen
        due = []
        for p, group in zip(procs, groups):
            if not p.holds_memory:
                continue  # nothing to read: a zombie's memory is gone, a kernel thread has none
            age = now - p.read_at + self._slack
            if p.memory is not None and p.memory.rss >= cc.large_rss:
                if age >= cc.large_interval:
                    due.append(p)
            elif p.dirty or p.unreadable or group in moved or age >= cc.max_age:
                due.append(p)
        due.sort(key=lambda p: p.read_at)
        return due

    def read(self, due: list[Proc], now: float) -> set[int]:
        """Read smaps of the due processes until the budget is spent; return
        the PIDs deferred to a later cycle."""
        deadline = now + self.config.budget
        if self._pool is not None:
            results = list(self._pool.map(lambda p: self._timed_read(p.pid, deadline), due))
        else:
            results = [self._timed_read(p.pid, deadline) for p in due]
        deferred = set()
        for p, result in zip(due, results):
            if result is None:
                deferred.add(p.pid)
            else:
                self._apply(p, result, now)
        if deferred:
            self.budget_exhausted += 1
            log.debug("budget reached: %d smaps reads deferred", len(deferred))
        return deferred

    def _apply(self, p: Proc, result: _Result, now: float) -> None:
        if result.read is None:
            assert result.reason is not None
            self._errors.count(result.reason)
            p.unreadable = result.reason == PERMISSION
            p.memory = None
            if not p.unreadable:  # vanished or garbled: leave it out
                self._forget(p.pid)
            return
        if result.read.full_smaps and not self._logged_smaps:
            self._logged_smaps = True
            log.info("no smaps_rollup (kernel < 4.14): summing smaps instead")
        self._rollup = not result.read.full_smaps
        p.memory, p.read_at, p.read_seconds = result.read.memory, now, result.seconds
        p.dirty = p.unreadable = False

    def _timed_read(self, pid: int, deadline: float) -> _Result | None:
        """The read's result, or None when past the deadline."""
        t = self._clock()
        if t > deadline:
            return None
        read, reason = None, None
        try:
            read = read_memory(self.procfs, pid, self._rollup)
        except OSError as exc:
            reason = error_reason(exc)
        except ParseError:
            reason = PARSE
        return _Result(read, reason, self._clock() - t)


def large_reads(
    procs: Iterable[Proc], groups: Iterable[str], large_rss: int
) -> tuple[LargeRead, ...]:
    """The slowest reads of large processes, slowest first, bounded."""
    large = [
        LargeRead(g, p.read_seconds)
        for p, g in zip(procs, groups)
        if p.memory is not None and p.memory.rss >= large_rss
    ]
    large.sort(key=lambda r: r.seconds, reverse=True)
    return tuple(large[:LARGE_READS_EXPORTED])
