"""Counters that never go down, from sources whose own counters can.

What the exporter exports as a `_total` is read from a counter somewhere
else (a cgroup's memory.events, php-fpm's status page, /proc/vmstat), and
those reset: a cgroup is removed and created again, php-fpm restarts, a file
cannot be read for a while, a process leaves one cgroup for another. Each
series is therefore the sum of what each of its *sources* counted while the
exporter watched it, a source being one thing read (a cgroup directory, a
php-fpm pool, a host file) and its *generation* the identity it has now (the
directory's inode, the master's PID and start time):

- a reading at or above the source's previous one adds the difference;
- a reading below it is a reset at the source, which counted from 0 since:
  the reading itself is added;
- a new generation of a known source (a recreated cgroup, a restarted
  php-fpm) counted from 0 since it appeared: its reading is added whole;
- a source first seen on a series made this cycle (the exporter's start, a
  new group), or one the caller says is new, is added whole too, so at the
  start a series is its sources' value; one first seen on an older series
  (an existing cgroup the group enters, such as its cgroup's parent)
  counted its history for something else: its first reading is only a
  baseline and adds nothing;
- no reading (unreadable, missing) adds nothing and keeps the previous one.

A series is never lowered; one whose sources are all gone keeps its value.
At most MAX_SERIES series and MAX_SOURCES sources are remembered, the ones
fed longest ago forgotten first (a group gone for that long that comes back
starts again from its current sources, which Prometheus sees as a reset).
What was fed in the current cycle (see cycle()) is never forgotten: a new
series or source that finds the table full of those is held out (counted in
`refused`, logged once), an undercount rather than a double count.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

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
        self.refused = 0  # readings held out because the tables were full of this cycle's
        self._cycle = 0
        # series: (total, cycle made, cycle last fed); sources: (generation, reading, cycle fed)
        self._totals: OrderedDict[K, tuple[float, int, int]] = OrderedDict()
        self._last: OrderedDict[tuple[K, Hashable], tuple[Hashable, float, int]] = OrderedDict()

    def cycle(self) -> None:
        """A new collection starts: what was fed before may be forgotten."""
        self._cycle += 1

    def feed(
        self,
        key: K,
        source: Hashable,
        reading: float | None,
        generation: Hashable = None,
        new: bool = False,
    ) -> None:
        """Fold one source's reading into the series key; None holds it.
        new: the caller knows the source appeared since the last cycle (a
        php-fpm master started meanwhile), so it counted from 0: whole."""
        if reading is None:
            return
        at = (key, source)
        series = self._totals.get(key)
        last = self._last.get(at)
        if (series is None and not self._room(self._totals, self.max_series)) or (
            last is None and not self._room(self._last, self.max_sources)
        ):
            return self._refuse(key)
        total, made, _ = series if series is not None else (0.0, self._cycle, 0)
        if last is not None and last[0] == generation:
            total += increment(last[1], reading)
        elif last is not None or new or made == self._cycle:
            total += reading  # a new generation, or a source of a new series: whole
        # else: a source new to an older series: its reading is the baseline
        self._totals.pop(key, None)
        self._totals[key] = (total, made, self._cycle)
        self._last.pop(at, None)
        self._last[at] = (generation, reading, self._cycle)

    def _room(self, table: OrderedDict[Any, tuple[Any, ...]], bound: int) -> bool:
        """Make room for one entry, forgetting the one fed longest ago unless
        it was fed this cycle."""
        while len(table) >= bound:
            oldest = next(iter(table.values()))
            if oldest[-1] == self._cycle:
                return False
            table.popitem(last=False)
        return True

    def _refuse(self, key: K) -> None:
        if not self.refused:
            log.warning("counter table full of this cycle's sources: %r held out", key)
        self.refused += 1

    def value(self, key: K) -> float | None:
        """The series' value; None when no source of it was ever read."""
        series = self._totals.get(key)
        return None if series is None else series[0]
