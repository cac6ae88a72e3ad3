"""Process discovery: listing the procfs, reading one process's files, and
classifying the errors a racing process produces.

A PID can vanish between listing /proc and opening its files, and can be
reused by a new process; callers identify a process by (pid, starttime) and
treat every read as one that may fail.
"""

from __future__ import annotations

import datetime
import errno
import os
import pwd
import stat
from functools import cached_property, lru_cache

from .procfs import parse_cmdline, parse_proc_cgroup_lines, parse_uint

# Error reasons, as exported in pss_exporter_read_errors_total{reason}.
VANISHED, PERMISSION, PARSE = "vanished", "permission", "parse"
REASONS = (VANISHED, PERMISSION, PARSE)

_VANISHED_ERRNOS = {errno.ENOENT, errno.ESRCH}
_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}


def error_reason(exc: OSError) -> str:
    """Map an OSError from a /proc read to an error reason."""
    if exc.errno in _VANISHED_ERRNOS:
        return VANISHED
    if exc.errno in _PERMISSION_ERRNOS:
        return PERMISSION
    # e.g. EINVAL, EIO: the file exists but gave no usable bytes; EFBIG: it
    # is larger than its read bound; EAGAIN: a FIFO with a writer
    return PARSE


READ_SIZE = 65536
# Read bounds, in bytes: each caller passes the one for its file. Real files
# are far smaller; a larger one (a crafted --path.procfs, a symlink to
# /dev/zero) is an error of reason "parse", never a memory exhaustion.
SMALL_FILE = 64 << 10  # stat, statm, smaps_rollup, meminfo, vmstat, PSI, cgroup files
CMDLINE_LIMIT = 4 << 20  # above Linux's default 2 MiB ARG_MAX (8 MiB stack / 4)
PROC_STAT_LIMIT = 4 << 20  # /proc/stat: a line per CPU and a count per IRQ
ZONEINFO_LIMIT = 16 << 20  # a few KiB per zone and node, 150 bytes per CPU and zone
SMAPS_LIMIT = 64 << 20  # full smaps (kernels < 4.14): about 1 KiB per mapping


# O_NONBLOCK: a FIFO opens at once and reads empty (or EAGAIN) instead of
# hanging; O_NOCTTY: a terminal never becomes the controlling one.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def read_bytes(path: str, limit: int = SMALL_FILE, *, to_eof: bool = False) -> bytes:
    """Read a whole (proc) file with raw syscalls: no buffering layers.

    Files the kernel writes in one go (stat, statm, smaps_rollup, cmdline,
    meminfo, PSI and cgroup files) fill a read as far as they go, so a short
    first read is the whole file: no second read() just to see EOF. Files of
    many records (smaps, vmstat, zoneinfo) come a page or so per read():
    to_eof reads on to the end.

    More than limit bytes raise OSError EFBIG; what is not a regular file (a
    FIFO, /dev/zero) raises EINVAL. Both count as reason "parse".
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        want = limit + 1 if limit < READ_SIZE else READ_SIZE
        chunk = os.read(fd, want)
        if 0 < len(chunk) < want and not to_eof:
            return chunk  # the hot path: no fstat(), no second read()
        return _read_rest(fd, path, chunk, want, limit)
    finally:
        os.close(fd)


def _read_rest(fd: int, path: str, chunk: bytes, want: int, limit: int) -> bytes:
    """read_bytes() after a first read that came back empty or full (or of a
    to_eof file): only now is fstat() worth its cost."""
    if (not chunk or len(chunk) == want) and not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    chunks, size = [chunk], len(chunk)
    while chunk and size <= limit:
        chunk = os.read(fd, min(READ_SIZE, limit + 1 - size))
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
    return b"".join(chunks)


# PID_MAX_LIMIT (include/linux/threads.h): no kernel hands out a larger PID.
PID_MAX = 1 << 22
_PID_DIGITS = len(str(PID_MAX))


def list_pids(procfs: str) -> list[int]:
    """The PID directories of procfs: ASCII digits ('²'.isdigit() is True),
    no leading zero (it would name another directory), at most PID_MAX."""
    pids = [
        int(name)
        for name in os.listdir(procfs)
        if name.isdigit() and name.isascii() and name[0] != "0" and len(name) <= _PID_DIGITS
    ]
    # Sorted so that which groups win a max_groups place never depends on
    # directory order (procfs lists in PID order already: cheap to sort).
    return sorted(pid for pid in pids if pid <= PID_MAX)


@lru_cache(maxsize=8)
def boot_time(procfs: str) -> float:
    """btime from /proc/stat: the epoch second the kernel booted.

    Raises ParseError on a malformed btime line.
    """
    for line in read_bytes(f"{procfs}/stat", PROC_STAT_LIMIT).split(b"\n"):
        if line.startswith(b"btime "):
            return float(parse_uint(line[6:].strip(), "stat: btime"))
    return 0.0


@lru_cache(maxsize=1024)
def username(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class LiveProcess:
    """A ProcessView (see grouping) over one PID's procfs directory.

    Attributes beyond comm are read on first use only. A failed read raises
    OSError, and only OSError (a malformed value too: errno EINVAL), which the
    collector classifies with error_reason().
    """

    def __init__(self, procfs: str, pid: int, comm: str, starttime: int) -> None:
        self.procfs, self.dir = procfs, f"{procfs}/{pid}"
        self.pid, self.comm, self.starttime = pid, comm, starttime

    @cached_property
    def cmdline(self) -> tuple[str, ...]:
        return parse_cmdline(read_bytes(f"{self.dir}/cmdline", CMDLINE_LIMIT))

    @cached_property
    def username(self) -> str:
        return username(os.stat(self.dir).st_uid)

    @cached_property
    def cgroups(self) -> tuple[str, ...]:
        return tuple(
            line.path for line in parse_proc_cgroup_lines(read_bytes(f"{self.dir}/cgroup"))
        )

    @cached_property
    def cwd(self) -> str:
        return os.readlink(f"{self.dir}/cwd")

    @cached_property
    def start_time(self) -> datetime.datetime:
        # In whole ticks, as process-exporter adds them (no float rounding:
        # its name shows them, e.g. '14:53:11.04').
        hz = os.sysconf("SC_CLK_TCK")
        seconds, ticks = divmod(self.starttime, hz)
        try:
            boot = datetime.datetime.fromtimestamp(
                int(boot_time(self.procfs)), datetime.timezone.utc
            )
            return boot + datetime.timedelta(seconds=seconds, microseconds=ticks * 1_000_000 // hz)
        except (ValueError, OverflowError) as exc:  # ParseError, or past year 9999
            raise OSError(errno.EINVAL, f"start time: {exc}", self.dir) from None
