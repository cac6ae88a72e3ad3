"""Process tracking, the first stage of a collection: which processes exist,
which are the same as last cycle, and what is known of each.

Per-process state lives in one slotted `Proc` per process, keyed by PID and
checked against the start time, so a reused PID is classified afresh. A
known grouped process costs one statm read a cycle: when those bytes are
unchanged it is kept as it was, and not even its stat is re-read. The
collection thread is the only writer of this state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .cgroup import CgroupPaths, parse_proc_cgroup
from .discovery import PARSE, REASONS, error_reason, read_bytes
from .grouping import FpmRole
from .procfs import PF_EXITING, Memory, ParseError, Stat, parse_stat

NEVER = float("-inf")
CGROUP_REFRESH = 60.0  # seconds before a process's /proc/PID/cgroup is read again


class ReadErrors:
    """Read errors by reason (discovery.REASONS), cumulative; every stage of
    the collection thread counts into the same one."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(REASONS, 0)

    def count(self, reason: str) -> None:
        self.counts[reason] += 1


class Proc:
    """What the collection knows of one process across cycles."""

    __slots__ = (
        "cgroup",
        "cgroup_at",
        "dirty",
        "fpm",
        "group",
        "kernel_thread",
        "memory",
        "pid",
        "ppid",
        "provisional",
        "read_at",
        "read_seconds",
        "starttime",
        "state",
        "statm",
        "tracked",
        "unreadable",
    )

    def __init__(
        self,
        pid: int,
        st: Stat,
        group: str | None,
        fpm: FpmRole | None,
        tracked: bool,
        provisional: bool = False,
    ) -> None:
        self.pid, self.starttime = pid, st.starttime
        self.ppid, self.state = st.ppid, st.state
        self.kernel_thread = st.is_kernel_thread
        self.group = group  # from process_names; None: no rule matched
        # php-fpm title, whether or not php_fpm grouping is on; a process the
        # collector does not trust as php-fpm's keeps its process_names group
        self.fpm = fpm
        self.tracked = tracked
        # php-fpm retitles its processes after fork: a worker may still show
        # the master's title, a new master no title yet. Such a guess is
        # classified again next cycle instead of being kept for life.
        self.provisional = provisional
        self.statm: bytes | None = None  # raw bytes: comparing them is the test
        self.memory: Memory | None = None
        self.read_at = NEVER
        self.read_seconds = 0.0
        self.dirty = True  # statm changed (or new) and not read since
        self.unreadable = False
        self.cgroup: CgroupPaths | None = None  # read with stat, for tracked processes
        self.cgroup_at = NEVER

    @property
    def is_master(self) -> bool:
        return self.fpm is not None and self.fpm.is_master

    @property
    def holds_memory(self) -> bool:
        """False for a zombie (its memory is gone) and a kernel thread (it
        has none of its own; its smaps_rollup reads ESRCH): counted, never read."""
        return self.state != "Z" and not self.kernel_thread


# Makes the Proc of a process seen for the first time (or under a new start
# time): (pid, its stat, its parent's Proc if known). May raise OSError.
Classify = Callable[[int, Stat, "Proc | None"], Proc]


class Tracker:
    """The processes of the host across cycles, by PID."""

    def __init__(
        self,
        procfs: str,
        classify: Classify,
        errors: ReadErrors,
        use_statm: bool,
        cgroups: bool,
        kernel_threads: bool = False,
    ) -> None:
        self.procfs = procfs
        self._classify = classify
        self._errors = errors
        self._use_statm = use_statm  # full freshness (max_age 0) needs no change detection
        self._cgroups = cgroups  # read /proc/PID/cgroup of tracked processes
        # Classify kernel threads too: only when a rule can match a process
        # without argv (a comm rule), as process-exporter groups them then.
        self._kernel_threads = kernel_threads
        self._procs: dict[int, Proc] = {}
        self._kthreads: dict[int, Proc] = {}  # kept apart: `processes` has none

    @property
    def processes(self) -> Mapping[int, Proc]:
        """Every process listed last cycle (kernel threads aside), grouped or not."""
        return self._procs

    def forget(self, pid: int) -> None:
        """pid vanished or became garbled: it is classified afresh if seen again."""
        self._procs.pop(pid, None)
        self._kthreads.pop(pid, None)

    def _cgroup(self, pid: int, st: Stat, parents: CgroupPaths | None) -> CgroupPaths | None:
        """pid's memory cgroup. An exiting process (an OOM victim, often) is
        taken to be in its parent's (where fork put it) when it can no longer
        tell: its cgroup file is gone (ENOENT, ESRCH), or its v1 hierarchies
        read "/", which the kernel shows for every exiting task
        (proc_cgroup_show). Taking it for the root would make oom.py count its
        kill twice: from its cgroup's counter and from the kernel log, as a
        kill outside cgroups. Not so for a child of PID 1 (a daemon, or
        reparented): PID 1 is not where fork put it; nor on another error.
        Then None: no cgroup known, rule 4 of oom.py counts it from the log."""
        forked = parents if st.ppid != 1 else None  # a subreaper is not told apart
        path = f"{self.procfs}/{pid}/cgroup"
        try:
            paths = parse_proc_cgroup(read_bytes(path))
        except (FileNotFoundError, ProcessLookupError):
            return forked
        except OSError:
            return None
        if paths.v1_memory != "/" or parents is None or parents.v1_memory in (None, "/"):
            return paths
        if not st.flags & PF_EXITING:  # the stat may predate the exit: read it again
            try:
                st = parse_stat(read_bytes(f"{self.procfs}/{pid}/stat"))
            except (OSError, ParseError):
                return forked  # gone meanwhile
        return forked if st.flags & PF_EXITING else paths

    def discover(self, pids: list[int], now: float) -> list[Proc]:
        """The tracked processes among pids; stat is read only where statm changed."""
        procs: dict[int, Proc] = {}
        kthreads: dict[int, Proc] = {}
        tracked = []
        base = self.procfs
        for pid in pids:
            p = self._procs.get(pid) or self._kthreads.get(pid)
            statm = None
            if p is not None and p.statm is not None:
                try:
                    statm = read_bytes(f"{base}/{pid}/statm")
                except OSError:
                    statm = None  # let the stat read below decide what happened
                if statm == p.statm:  # same process, same memory map size
                    (kthreads if p.kernel_thread else procs)[pid] = p
                    tracked.append(p)
                    continue
            try:
                st = parse_stat(read_bytes(f"{base}/{pid}/stat"))
            except OSError as exc:
                self._errors.count(error_reason(exc))
                continue
            except ParseError:
                self._errors.count(PARSE)
                continue
            if st.is_kernel_thread and not self._kernel_threads:
                continue
            if p is None or p.starttime != st.starttime or p.provisional:
                parent = (
                    procs.get(st.ppid)
                    or kthreads.get(st.ppid)
                    or self._procs.get(st.ppid)
                    or self._kthreads.get(st.ppid)
                )
                try:
                    p = self._classify(pid, st, parent)
                except OSError as exc:
                    self._errors.count(error_reason(exc))
                    continue
            (kthreads if p.kernel_thread else procs)[pid] = p
            if not p.tracked:
                continue
            p.ppid, p.state, p.dirty = st.ppid, st.state, True
            if self._cgroups and now - p.cgroup_at >= CGROUP_REFRESH:
                # Processes rarely change cgroup: not re-read on every change.
                parent = procs.get(p.ppid) or self._procs.get(p.ppid)
                p.cgroup = self._cgroup(pid, st, parent.cgroup if parent else None)
                p.cgroup_at = now
            if self._use_statm and not p.provisional:
                if statm is None:
                    try:
                        statm = read_bytes(f"{base}/{pid}/statm")
                    except OSError:
                        statm = None
                p.statm = statm
            tracked.append(p)
        self._procs, self._kthreads = procs, kthreads
        return tracked
