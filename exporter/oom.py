"""OOM kills, each counted once, in the group of the process killed.

The cgroups' counters are the source of truth: the kernel counts every kill
in memory.events (v2) or memory.oom_control (v1) of the victim's memory
cgroup and its ancestors, whereas its log reports are rate limited and long,
so a storm of kills leaves few of them in the log (issue 15: 71 victims in
the log against 2,585 kills counted). The rule, per collection:

1. The *units* are the outermost memory cgroups of the grouped processes
   (`OomUnit`, made by sources.CgroupSource): each cgroup that holds grouped
   processes, itself or below it, and lies below no other such cgroup. A
   unit's counter grows by a delta (counters.increment: a recreated cgroup is
   a new unit, an unreadable counter is held). A unit that held grouped
   processes in the last RECENT_PIDS seconds is read on while it exists
   (same inode) with none, unless a unit of this cycle lies in or above it:
   the kill of a cgroup's last grouped process (a one-process container, a
   cron job's scope) is counted from the cgroup itself.
2. A unit whose grouped processes all belong to one group gives that group
   its whole delta.
3. In a unit shared by several groups (php-fpm's master and pools in one
   cgroup), the kernel log says which group: each kill the log reports of a
   process last seen in that unit takes one kill of the unit's delta to the
   process's group. A log record the counter never confirms within GRACE
   collections (either can come first, a collection apart) is dropped (the
   counter is the truth).
3b. A counted kill no log record explains within GRACE collections goes to
   the one group of the unit that lost a process (a PID of the unit gone, or
   a php-fpm pool's zombie, which is in no group; other zombies stay grouped
   until reaped) from the collection that counted it to the one that gives
   up on a record: a killed process is gone, so when only one group lost
   any, the victim was its. In a storm the kernel log misses
   most kills while php-fpm's master survives every one, so its pool's
   count stays exact. With none or several groups losing processes the kill
   is counted in `unattributed`, never spread over groups.
4. A kill the log reports of a grouped process that was in no unit (the
   root cgroup, a global OOM, or `cgroups` disabled), or in a unit whose
   cgroup was removed since (the container gone with its last process),
   counts for its group from the log alone. A victim the exporter did not
   see grouped in the last RECENT_PIDS seconds is not any group's.
5. The first reading of a unit is its history: its kills count at once, by
   rules 2 and 3, whole (a shared unit's history is unattributed).

A group's counter is there from 0 while a source can count its kills: while
the kernel log is read, or while the group has a process in a unit (a cgroup
whose kernel counts OOM kills), so that increase() sees its first kill; a
group in the root cgroup with the log unreadable has no counter, not a 0.
A group gone from the host keeps its series for RECENT_PIDS seconds after
its last kill, then goes stale; at most MAX_GROUPS groups' counts are kept
(the least recently present forgotten: back, it starts from 0, a reset),
so tenants renaming processes that get killed cannot grow it without bound.

Limits: a kill in a one-group unit is credited to that group even if the
victim was a process no rule groups that shares the cgroup (only grouped
processes' cgroups are read). By rule 3b, a kill whose victim the exporter
never saw (forked and killed between two collections) goes to the one group
that lost a process otherwise (one that exited on its own at that moment).
A counted kill whose log record comes after its cgroup was removed is
counted again from the log (the kernel counts before it logs, so rarely).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .counters import increment

log = logging.getLogger(__name__)

GRACE = 2  # collections a kill waits for its other half (log record or count)
RECENT_PIDS = 600.0  # seconds an exited PID's group and unit are remembered
MAX_UNITS = 10_000  # units whose last reading is kept (the oldest forgotten)
MAX_GROUPS = 10_000  # groups whose counter is kept (the least recently present forgotten)

UnitKey = tuple[str, int]  # the cgroup directory and its inode


@dataclass(frozen=True)
class OomUnit:
    """One outermost memory cgroup of the grouped processes, as read this cycle."""

    key: UnitKey
    groups: frozenset[str]  # groups with a process in it or below it
    pids: frozenset[int]  # those processes
    kills: int | None  # its oom_kill counter; None: unreadable this cycle


@dataclass
class _Pending:
    kills: list[int] = field(default_factory=list)  # cycle of each unexplained kill
    victims: list[tuple[str, int]] = field(default_factory=list)  # (group, cycle)


@dataclass
class _Unit:
    """What the last readings of one shared unit showed of its members."""

    members: dict[int, str]  # the unit's grouped PIDs at the last reading, to their groups
    # (cycle, groups that lost a process since the reading before), the last GRACE + 1
    lost: list[tuple[int, frozenset[str]]] = field(default_factory=list)


class OomAttribution:
    """Per-group OOM kill counters and the unattributed ones (see the module
    docstring). Fed once per collection by update(); not thread-safe."""

    def __init__(self, grace: int = GRACE, log: bool = True) -> None:
        self.grace = grace
        # Whether a kernel log feeds victims: only then are the PIDs seen
        # remembered (for RECENT_PIDS: a churning host's every process).
        self._log = log
        # cumulative kills by group and when last credited, least recently present first
        self._groups: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._now = 0.0
        self.unattributed = 0  # cumulative kills no group could be given
        self._cycle = 0
        self._last: OrderedDict[UnitKey, int] = OrderedDict()  # a unit's last reading
        self._recent: dict[int, tuple[str, UnitKey | None, float]] = {}
        self._pending: dict[UnitKey, _Pending] = {}
        self._shared: dict[UnitKey, _Unit] = {}  # the shared units of the last reading
        # units that held grouped processes, to their groups and when last seen so
        self._seen: OrderedDict[UnitKey, tuple[frozenset[str], float]] = OrderedDict()

    def update(
        self,
        now: float,
        grouped: Iterable[tuple[int, str]],
        units: Sequence[OomUnit] | None,
        victims: Sequence[int],
        gone: frozenset[UnitKey] = frozenset(),
    ) -> None:
        """One collection: grouped (pid, group) pairs, the units read (None:
        the cgroups were not read this cycle), the PIDs the kernel log
        reported killed since the last one and the recent units (see
        recent()) whose cgroup was removed since."""
        self._cycle += 1
        self._now = now
        grouped = list(grouped)
        for _, group in grouped:
            if group in self._groups:
                self._groups.move_to_end(group)
        self._note(now, units or (), gone)
        if self._log:
            self._remember(now, grouped, units)
        if units is not None:
            self._losses(dict(grouped), units)
        shared: set[UnitKey] = set()
        for unit in units or ():
            if len(unit.groups) > 1:
                shared.add(unit.key)
            self._count(unit)
        for pid in victims:
            self._victim(pid, shared, gone)
        for key in list(self._pending):
            self._settle(key)

    def _note(self, now: float, units: Sequence[OomUnit], gone: frozenset[UnitKey]) -> None:
        for unit in units:
            if unit.pids:
                self._seen.pop(unit.key, None)
                self._seen[unit.key] = (unit.groups, now)
        for key in gone:
            self._seen.pop(key, None)
        while self._seen and (
            len(self._seen) > MAX_UNITS or now - next(iter(self._seen.values()))[1] >= RECENT_PIDS
        ):
            self._seen.popitem(last=False)

    def recent(self) -> dict[str, tuple[int, frozenset[str]]]:
        """The units that held grouped processes in the last RECENT_PIDS
        seconds, by directory: (inode, groups). CgroupSource reads those
        that hold none now too, so that the kill of a cgroup's last grouped
        process is counted by rule 2 from the cgroup itself."""
        return {d: (inode, groups) for (d, inode), (groups, _) in self._seen.items()}

    def _remember(
        self, now: float, grouped: Iterable[tuple[int, str]], units: Sequence[OomUnit] | None
    ) -> None:
        unit_of = {pid: unit.key for unit in units or () for pid in unit.pids}
        for pid, group in grouped:
            if units is None and pid in self._recent:
                unit = self._recent[pid][1]  # not read this cycle: as last seen
            else:
                unit = unit_of.get(pid)
            self._recent[pid] = (group, unit, now)
        self._recent = {
            pid: seen for pid, seen in self._recent.items() if now - seen[2] < RECENT_PIDS
        }

    def _losses(self, grouped: dict[int, str], units: Sequence[OomUnit]) -> None:
        """Note, per shared unit, which groups lost a process since the last
        reading (rule 3b). Only shared units are kept, and each for as long
        as it is read."""
        kept: dict[UnitKey, _Unit] = {}
        for unit in units:
            if len(unit.groups) < 2 and unit.key not in self._pending:
                continue
            members = {pid: grouped[pid] for pid in unit.pids if pid in grouped}
            before = self._shared.get(unit.key)
            if before is None:
                kept[unit.key] = _Unit(members)
                continue
            gone = frozenset(g for pid, g in before.members.items() if pid not in members)
            lost = [(c, g) for c, g in before.lost if c > self._cycle - self.grace - 1]
            if gone:
                lost.append((self._cycle, gone))
            kept[unit.key] = _Unit(members, lost)
        self._shared = kept

    def _losers(self, key: UnitKey, since: int) -> frozenset[str]:
        """The groups of the unit that lost a process from cycle since on."""
        unit = self._shared.get(key)
        if unit is None:
            return frozenset()
        return frozenset().union(*(g for c, g in unit.lost if c >= since))

    def _count(self, unit: OomUnit) -> None:
        if unit.kills is None:
            return  # held: the next reading counts what this one missed
        previous = self._last.pop(unit.key, None)
        self._last[unit.key] = unit.kills
        while len(self._last) > MAX_UNITS:
            self._last.popitem(last=False)
        delta = increment(previous, unit.kills)
        if not delta:
            return
        if len(unit.groups) == 1:
            (group,) = unit.groups
            self._add(group, delta)
        elif previous is None:
            self.unattributed += delta  # a shared unit's history: no log to say whose
        else:
            self._pending.setdefault(unit.key, _Pending()).kills.extend([self._cycle] * delta)

    def _victim(self, pid: int, shared: set[UnitKey], gone: frozenset[UnitKey]) -> None:
        seen = self._recent.get(pid)
        if seen is None:
            log.info("OOM kill of %d: not a process grouped in the last %.0fs", pid, RECENT_PIDS)
            return
        group, unit, _ = seen
        if unit is None or unit in gone:
            self._add(group, 1)  # no cgroup (left) counts it: the log is all there is
        elif unit in shared or unit in self._pending:
            self._pending.setdefault(unit, _Pending()).victims.append((group, self._cycle))
        # else: a one-group unit, whose counter gives the kill to its group

    def _settle(self, key: UnitKey) -> None:
        """Pair the unit's unexplained kills with its victims, then let the
        unpaired ones older than the grace go."""
        pending = self._pending[key]
        while pending.kills and pending.victims:
            pending.kills.pop(0)
            self._add(pending.victims.pop(0)[0], 1)
        old = self._cycle - self.grace
        expired = [c for c in pending.kills if c <= old]
        for cycle in expired:
            losers = self._losers(key, cycle)
            if len(losers) == 1:
                (group,) = losers
                self._add(group, 1)  # rule 3b: the only group that lost a process
            else:
                self.unattributed += 1
        pending.kills = pending.kills[len(expired) :]
        dropped = [v for v in pending.victims if v[1] <= old]
        if dropped:
            log.debug("%d OOM victims in %s not confirmed by its counter", len(dropped), key[0])
            pending.victims = pending.victims[len(dropped) :]
        if not pending.kills and not pending.victims:
            del self._pending[key]

    def _add(self, group: str, kills: int) -> None:
        before = self._groups.pop(group, (0, 0.0))[0]
        self._groups[group] = (before + kills, self._now)
        while len(self._groups) > MAX_GROUPS:
            self._groups.popitem(last=False)  # back as a reset, if ever

    def counts(
        self, groups: Iterable[str], units: Sequence[OomUnit] | None, log_read: bool
    ) -> dict[str, int]:
        """The counter of every group whose kills a source can count this
        cycle, 0 for one without a kill (all of them while the log is read,
        else those in a unit), and of every group credited in the last
        RECENT_PIDS seconds (a group gone longer has no series: stale)."""
        counted = set(groups) if log_read else {g for u in units or () for g in u.groups}
        recent = (g for g, (_, at) in self._groups.items() if self._now - at < RECENT_PIDS)
        return {g: self._groups.get(g, (0, 0.0))[0] for g in {*counted, *recent}}
