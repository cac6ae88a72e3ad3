"""Grouping, the stage after tracking: each process's group.

A process is classified once, when first seen (`Classifier`): its php-fpm
title and the process_names rule that names it. Each cycle, `Grouper` then
decides who is php-fpm's (an `FpmView`: the masters php-fpm's trust check
vouches for and their children; every other php-fpm-titled process keeps its
rule group, `untrusted:`-prefixed in the `php-fpm:` namespace, or is left
out, and is logged once), names the trusted pools (running or configured,
by one rule: grouping.fpm_pool_groups) and applies max_groups
(groups admitted earlier keep their place; newcomers past the limit go to
`other`). The rules themselves are grouping.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from .config import Config
from .discovery import LiveProcess
from .grouping import (
    FPM_MASTER_GROUP,
    FpmMaster,
    fpm_pool_groups,
    fpm_role,
    outside_fpm_groups,
)
from .procfs import Stat
from .tracking import Proc

log = logging.getLogger(__name__)

OTHER_GROUP = "other"
TRUST_SOURCE = "phpfpm_trust"  # the php-fpm part of grouping, as a source
UNTRUSTED_LOGGED = 3  # untrusted php-fpm processes a warning names


class FpmTrust(Protocol):
    """What the grouping asks of php-fpm's source (phpfpm.PhpFpmSource)."""

    def trust(self, masters: dict[int, int]) -> dict[int, int]:
        """{master pid: start time} -> {trusted master pid: effective uid}"""
        ...

    def configured(self, masters: dict[int, FpmMaster]) -> Iterable[tuple[str, int]]:
        """(pool, master pid) of every pool the masters' last config loads name."""
        ...


class FpmView(NamedTuple):
    """php-fpm as one cycle sees it: only a master whose executable is a
    root-installed php-fpm is one, and only its children are its workers."""

    trusted: frozenset[int]  # PIDs of trusted masters and of their children
    masters: dict[int, FpmMaster]  # the trusted masters, by PID
    # Trusted PID -> its group: every master, and each live child whose pool is
    # known. A trusted PID without one (a zombie; a child not titled yet of a
    # master of several pools) is in no group this cycle.
    groups: dict[int, str]
    untrusted: int  # processes titled as php-fpm, not trusted
    # PIDs of status pools' processes (see _status_pools), grouped with the pool they serve
    status: frozenset[int] = frozenset()

    def is_master(self, p: Proc) -> bool:
        """A trusted master; for a process not trusted, what its title says."""
        return p.pid in self.masters if p.pid in self.trusted else p.is_master

    def is_worker(self, p: Proc) -> bool:
        """Neither a master nor a status pool's process (which serves its
        pool's status page, not its requests)."""
        return not self.is_master(p) and p.pid not in self.status


NO_FPM = FpmView(frozenset(), {}, {}, 0)
STATUS_SUFFIX = "_status"


def _status_pools(
    running: list[tuple[str, int]], configured: list[tuple[str, int]]
) -> dict[tuple[str, int], tuple[str, int]]:
    """The status pools among the running ones, each with the pool it serves.

    With pm.status_listen, php-fpm (>= 8.0) forks a pool of its own, titled
    "pool POOL_status", to answer POOL's status page on that socket. It is
    no pool of the config: a running pool POOL_status of a master that runs
    or configures POOL and configures no POOL_status (on a master's first
    cycle, before its config is read, a configured POOL_status beside POOL is
    taken for one too). Its process counts with POOL, as no worker of it,
    and no capacity is made for it. A pool taken for a status pool serves
    none (running POOL, POOL_status and POOL_status_status before the config
    is read): the last stays a pool of its own until the config tells."""
    known = {*running, *configured}
    out = {}
    for name, pid in running:
        base = name.removesuffix(STATUS_SUFFIX)
        if base != name and (base, pid) in known and (name, pid) not in configured:
            out[(name, pid)] = (base, pid)
    return {pool: base for pool, base in out.items() if base not in out}


class Classifier:
    """Makes the Proc of a process seen for the first time (tracking.Classify)."""

    def __init__(self, config: Config, procfs: str) -> None:
        self.config = config
        self.procfs = procfs

    def __call__(self, pid: int, st: Stat, parent: Proc | None) -> Proc:
        proc = LiveProcess(self.procfs, pid, st.comm, st.starttime)
        role = fpm_role(st.comm, lambda: proc.cmdline)
        # A master's child may still carry its title; so may a process whose
        # parent is not known yet (a PID below its parent's, after PID wrap).
        forked = parent.is_master if parent is not None else st.ppid != 0
        provisional = st.comm.startswith("php-fpm") and (
            role is None or (role.is_master and forked)
        )
        fpm = role is not None and self.config.php_fpm.enabled
        # The rules group php-fpm's processes too: those not trusted as
        # php-fpm's (decided each cycle, see Grouper) keep that group.
        try:
            group = next(
                (n for rule in self.config.process_names if (n := rule.match(proc)) is not None),
                None,
            )
        except OSError:
            if not fpm:
                raise
            group = None  # grouped by its title, if trusted
        if group is None and self.config.children and parent is not None:
            # process-exporter's -children: a process no rule names joins its
            # parent's group (the parent's own, or the one it joined).
            group = parent.group
        return Proc(pid, st, group, role, fpm or group is not None, provisional)


def only_pools(pools: Iterable[tuple[str, int]]) -> dict[int, str]:
    """{master PID: its pool} of the masters with exactly one pool."""
    by_master: dict[int, set[str]] = {}
    for name, ppid in pools:
        by_master.setdefault(ppid, set()).add(name)
    return {ppid: names.pop() for ppid, names in by_master.items() if len(names) == 1}


# Runs the php-fpm view's computation; NO_FPM when it raises (see Grouper.group).
Guard = Callable[[Callable[[], FpmView]], FpmView]


def _unguarded(view: Callable[[], FpmView]) -> FpmView:
    return view()


class Grouped(NamedTuple):
    procs: list[Proc]  # the grouped processes
    groups: list[str]  # their groups, in the same order
    view: FpmView


class Grouper:
    """Final group names: php-fpm pools disambiguated, max_groups applied."""

    def __init__(self, max_groups: int, fpm: FpmTrust | None) -> None:
        self.max_groups = max_groups
        self._fpm = fpm  # None: php-fpm grouping is off
        self._admitted: frozenset[str] = frozenset()
        self._overflowed: set[int] = set()
        self.overflow_total = 0  # cumulative processes put into "other"
        self._untrusted: set[tuple[int, int]] = set()  # (pid, starttime) already logged

    def group(self, procs: list[Proc], guard: Guard = _unguarded) -> Grouped:
        """A process titled as php-fpm that is not trusted and that no rule
        groups is left out. guard runs the php-fpm part (trust checks, pool
        names) and gives NO_FPM should it raise (the collector's source
        runner): a surprise there loses only php-fpm's grouping, one cycle."""
        view = guard(lambda: self._fpm_view(procs)) if self._fpm else NO_FPM
        kept, wanted = [], []
        for p in procs:
            if p.pid in view.trusted:
                if p.pid not in view.groups:
                    continue  # a zombie, or a child whose pool is not known yet
                group = view.groups[p.pid]
            elif p.group is not None:
                group = outside_fpm_groups(p.group) if self._fpm else p.group
            else:
                continue
            kept.append(p)
            wanted.append(group)
        admitted = self._admit(wanted)
        overflowed = set()
        result = []
        for p, group in zip(kept, wanted):
            if group in admitted:
                result.append(group)
                continue
            result.append(OTHER_GROUP)
            overflowed.add(p.pid)
            if p.pid not in self._overflowed:
                self.overflow_total += 1
        self._overflowed = overflowed
        return Grouped(kept, result, view)

    def _fpm_view(self, procs: list[Proc]) -> FpmView:
        """Which processes titled as php-fpm are php-fpm's, and their pools'
        names. Any user can title a process 'php-fpm: ...'; only masters the
        trust check vouches for count, and only their children are workers,
        so no one else is grouped, queried or renames a pool."""
        assert self._fpm is not None
        claims = [(p, p.fpm) for p in procs if p.fpm is not None]
        uids = self._fpm.trust({p.pid: p.starttime for p, role in claims if role.is_master})
        # php-fpm forks a worker with the master's title, which the worker
        # replaces with its pool's a moment later: a trusted master's child is
        # its worker whatever its title, never a master (nor a second master
        # of the pool, which would rename the pool's group).
        masters = {
            p.pid: FpmMaster(role.name, p.starttime, uids[p.pid])
            for p, role in claims
            if p.pid in uids and p.ppid not in uids
        }
        children = [p for p in procs if p.ppid in masters]
        # Named over the running and the configured pools: a pool's group does
        # not change when its last worker exits or its first one starts, and
        # a running pool cannot take the name of an idle one.
        titled = {p.pid: p.fpm.name for p in children if p.fpm and not p.fpm.is_master}
        running = [(titled[p.pid], p.ppid) for p in children if p.pid in titled]
        configured = list(self._fpm.configured(masters))
        served = _status_pools(running, configured)
        pools = dict.fromkeys([*(r for r in running if r not in served), *configured])
        names = fpm_pool_groups(pools, masters)
        # A lookup that fails here would fail every cycle: the configs, read
        # after the grouping, would never be. So a pool without a name is in
        # no group this cycle rather than an error.
        names.update({pool: names[base] for pool, base in served.items() if base in names})
        groups = dict.fromkeys(masters, FPM_MASTER_GROUP)
        only = only_pools(pools)
        for p in children:
            # A zombie (a worker killed or exited, not reaped yet) is no longer
            # its pool's, as its cgroup no longer lists it; a child not titled
            # yet is in its master's only pool, or in none until it is titled.
            pool = titled[p.pid] if p.pid in titled else only.get(p.ppid)
            group = names.get((pool, p.ppid)) if pool is not None else None
            if p.state != "Z" and group is not None:
                groups[p.pid] = group
        trusted = frozenset(masters).union(p.pid for p in children)
        untrusted = [p for p, _ in claims if p.pid not in trusted]
        self._log_untrusted(untrusted)
        status = frozenset(p.pid for p in children if (titled.get(p.pid), p.ppid) in served)
        return FpmView(trusted, masters, groups, len(untrusted), status)

    def _log_untrusted(self, untrusted: list[Proc]) -> None:
        """One warning per cycle at most, naming the untrusted processes not
        seen before (titles escaped: a newline in one must not forge a line)."""
        new = [p for p in untrusted if (p.pid, p.starttime) not in self._untrusted]
        self._untrusted = {(p.pid, p.starttime) for p in untrusted}  # only the living
        if not new:
            return
        shown = ", ".join(
            f"{p.pid} {'master of' if p.is_master else 'pool'} "
            f"{(p.fpm.name if p.fpm else '')[:100]!r}"
            for p in new[:UNTRUSTED_LOGGED]
        )
        more = f" and {len(new) - UNTRUSTED_LOGGED} more" if len(new) > UNTRUSTED_LOGGED else ""
        log.warning(
            "%d processes titled as php-fpm are not trusted as php-fpm's (the executable "
            "is not a root-owned php-fpm, or the parent not such a master): grouped by "
            "process_names, never queried: %s%s",
            len(new),
            shown,
            more,
        )

    def _admit(self, wanted: list[str]) -> frozenset[str]:
        """Groups allowed this cycle: those admitted before keep their place,
        new ones fill the free places in order of appearance."""
        limit = self.max_groups
        present = dict.fromkeys(wanted)
        admitted = [g for g in present if g in self._admitted][:limit]
        for g in present:
            if len(admitted) >= limit:
                break
            if g not in self._admitted:
                admitted.append(g)
        self._admitted = frozenset(admitted)
        return self._admitted
