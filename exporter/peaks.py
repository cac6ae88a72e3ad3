"""Worker peaks: the most private memory each php-fpm worker has held, kept
per pool over a window (php_fpm.window).

Between requests PHP frees its large blocks, so the USS of a worker read at
a collection is mostly its idle size. The kernel keeps each process's peak
RSS, VmHWM in /proc/PID/status (brought up to date when pages are unmapped,
and when the file is read). What a worker shares stays resident, so its peak
private memory is about VmHWM - (RSS - USS), RSS and USS from its latest
smaps read (this cycle's when its statm changed). /proc/PID/status costs
about ten statm reads and no page walk; it is read every cycle, for trusted
php-fpm workers only, since a worker can serve a big request between two
collections and come back to the same statm.

Each worker seen in the window keeps an entry (its peak, its least USS, when
it was last seen) under its pool's group, so that workers respawned by
pm.max_requests, or a restarted master's, keep their pool's window; an entry
goes once its worker has not been seen for the window. The window is in
memory: an exporter restart starts it again, from the VmHWM of the workers
alive then (which still carry their own peaks since they started).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .capacity import PoolPeaks
from .classify import OTHER_GROUP
from .discovery import PARSE, VANISHED, error_reason, read_bytes
from .procfs import MAX_VALUE, Memory, ParseError, parse_uint
from .sources import Cycle

# Entries kept per pool and in all: with pm.max_requests = 1 a busy pool
# would otherwise keep one per request for the whole window (an entry is
# about 200 bytes). The least recently seen go first.
MAX_WORKERS = 5_000
MAX_ENTRIES = 50_000


_HWM = b"VmHWM:"


def parse_vmhwm(status: bytes) -> int:
    """VmHWM of /proc/PID/status, in bytes; ParseError when absent or malformed
    (a kernel thread or a zombie has none). Found, not split into its ~55
    lines: it is read for every php-fpm worker read (the kernel escapes a
    newline in the Name line, so no other line can pass for it)."""
    if status.startswith(_HWM):
        at = 0
    else:
        at = status.find(b"\n" + _HWM) + 1
        if not at:
            raise ParseError("no VmHWM line in kB")
    end = status.find(b"\n", at)
    fields = status[at + len(_HWM) : end if end >= 0 else len(status)].split()
    if len(fields) != 2 or fields[1] != b"kB":
        raise ParseError("no VmHWM line in kB")
    kb = parse_uint(fields[0], "VmHWM")
    if kb > MAX_VALUE >> 10:
        raise ParseError("VmHWM out of range")
    return kb << 10


def peak_uss(hwm: int, memory: Memory) -> int:
    """A worker's peak private memory: its peak RSS less what it shares now;
    never below its USS now."""
    return max(memory.uss, hwm - (memory.rss - memory.uss))


class Worker(NamedTuple):
    """One worker's entry in its pool's window."""

    peak: int
    low: int  # the least USS it was seen with
    seen: float  # the cycle's clock when it was last seen


def merge(entry: Worker | None, peak: int, uss: int, now: float) -> Worker:
    if entry is None:
        return Worker(peak, uss, now)
    return Worker(max(entry.peak, peak), min(entry.low, uss), now)


def window_peaks(
    workers: dict[tuple[int, int], Worker], window: float, observed: float
) -> PoolPeaks:
    return PoolPeaks(
        tuple(sorted(w.peak for w in workers.values())),
        min((w.low for w in workers.values()), default=None),
        window,
        min(observed, window),
    )


class PeaksSource:
    """The peaks of every pool's workers over the window (a source: see sources.py)."""

    # Its own input (/proc/PID/status of the workers), so its own health.
    name = "phpfpm_peaks"

    def __init__(self, procfs: str, window: float, count_error: Callable[[str], None]) -> None:
        self.procfs = procfs
        self.window = window
        self._count_error = count_error  # tracking.ReadErrors.count
        # group -> (pid, start time) -> entry; group -> when first seen
        self._pools: dict[str, dict[tuple[int, int], Worker]] = {}
        self._since: dict[str, float] = {}

    def collect(self, cycle: Cycle) -> dict[str, PoolPeaks]:
        now = cycle.now
        for p, group in zip(cycle.procs, cycle.groups):
            if p.pid not in cycle.view.trusted or p.fpm is None or not cycle.view.is_worker(p):
                continue  # a master, or a status pool's process (classify._status_pools)
            if group == OTHER_GROUP or p.memory is None or p.state == "Z":
                continue
            workers = self._pools.setdefault(group, {})
            self._since.setdefault(group, now)
            key = (p.pid, p.starttime)
            known = workers.get(key)
            if known is not None and p.read_at != now:
                # VmHWM is read with the smaps (statm changed, max_age, ...): it
                # only ever grows, so a later read loses nothing of a live
                # worker's peak, and an idle pool costs no status read a cycle.
                workers[key] = known._replace(seen=now)
                continue
            try:
                hwm = parse_vmhwm(read_bytes(f"{self.procfs}/{p.pid}/status"))
            except OSError as exc:
                reason = error_reason(exc)
                if reason != VANISHED:  # exited since its smaps read: its entry stays as it was
                    self._count_error(reason)
                continue
            except ParseError:
                self._count_error(PARSE)
                continue
            workers[key] = merge(known, peak_uss(hwm, p.memory), p.memory.uss, now)
        self._expire(now)
        return {
            group: window_peaks(workers, self.window, now - self._since[group])
            for group, workers in self._pools.items()
        }

    def _expire(self, now: float) -> None:
        """Drop the entries not seen for the window, then the least recently
        seen beyond MAX_WORKERS a pool and MAX_ENTRIES in all."""
        for group in list(self._pools):
            kept = {k: w for k, w in self._pools[group].items() if now - w.seen <= self.window}
            if len(kept) > MAX_WORKERS:
                kept = dict(sorted(kept.items(), key=lambda kw: kw[1].seen)[-MAX_WORKERS:])
            self._pools[group] = kept
        if sum(map(len, self._pools.values())) > MAX_ENTRIES:
            entries = sorted(
                (
                    (w.seen, group, key)
                    for group, ws in self._pools.items()
                    for key, w in ws.items()
                ),
                reverse=True,
            )
            for _, group, key in entries[MAX_ENTRIES:]:
                del self._pools[group][key]
        for group in [g for g, ws in self._pools.items() if not ws]:
            del self._pools[group], self._since[group]
