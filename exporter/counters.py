"""Counters that never go down, from sources whose own counters can.

What the exporter exports as a `_total` is read from a counter somewhere
else (a cgroup's memory.events, php-fpm's status page, /proc/vmstat), and
those reset: a cgroup is removed and created again, php-fpm restarts, a file
cannot be read for a while, a process leaves one cgroup for another. Each
series is therefore the sum of what each of its *sources* counted while the
exporter watched it, a source being one identity of the thing read (a cgroup
directory and its inode, a php-fpm master and pool, a host file):

- a reading at or above the source's previous one adds the difference;
- a reading below it is a reset at the source, which counted from 0 since:
  the reading itself is added;
- a source seen for the first time is taken to have counted from 0 since it
  appeared (the exporter's start, a recreated cgroup, a restarted php-fpm):
  its reading is added whole, so at the start a series is its source's value;
- no reading (unreadable, missing) adds nothing and keeps the previous one.

A series is never lowered; one whose sources are all gone keeps its value.
At most MAX_SERIES series and MAX_SOURCES sources are remembered, the ones
fed longest ago forgotten first (a group gone for that long that comes back
starts again from its current sources, which Prometheus sees as a reset).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
N = TypeVar("N", int, float)

MAX_SERIES = 100_000
MAX_SOURCES = 100_000


def increment(previous: N | None, reading: N) -> N:
    """What one reading adds to a series, given its source's previous one."""
    if previous is None or reading < previous:
        return reading  # a new source, or one that reset: it counted from 0
    return reading - previous


class Monotonic(Generic[K]):
    """Series (keyed by K) that only go up, each summed over its sources."""

    def __init__(self, max_series: int = MAX_SERIES, max_sources: int = MAX_SOURCES) -> None:
        self.max_series = max_series
        self.max_sources = max_sources
        self._totals: OrderedDict[K, float] = OrderedDict()
        self._last: OrderedDict[tuple[K, Hashable], float] = OrderedDict()

    def feed(self, key: K, source: Hashable, reading: float | None) -> None:
        """Fold one source's reading into the series key; None holds it."""
        if reading is None:
            return
        at = (key, source)
        total = self._totals.pop(key, 0) + increment(self._last.pop(at, None), reading)
        self._totals[key] = total
        self._last[at] = reading
        while len(self._totals) > self.max_series:
            self._totals.popitem(last=False)
        while len(self._last) > self.max_sources:
            self._last.popitem(last=False)

    def value(self, key: K) -> float | None:
        """The series' value; None when no source of it was ever read."""
        return self._totals.get(key)
