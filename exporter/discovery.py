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
from functools import cached_property, lru_cache

from .procfs import parse_cmdline

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
    return PARSE  # e.g. EINVAL, EIO: the file exists but gave no usable bytes


READ_SIZE = 65536


def read_bytes(path: str) -> bytes:
    """Read a whole (proc) file with raw syscalls: no buffering layers.

    procfs and sysfs fill a read as far as the file goes, so a short first
    read is the whole file: no second read() just to see EOF.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunk = os.read(fd, READ_SIZE)
        if len(chunk) < READ_SIZE:
            return chunk
        chunks = [chunk]
        while chunk:
            chunk = os.read(fd, READ_SIZE)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def list_pids(procfs: str) -> list[int]:
    # Sorted so that which groups win a max_groups place never depends on
    # directory order (procfs lists in PID order already: cheap to sort).
    return sorted(int(name) for name in os.listdir(procfs) if name.isdigit())


@lru_cache(maxsize=8)
def boot_time(procfs: str) -> float:
    """btime from /proc/stat: the epoch second the kernel booted."""
    for line in read_bytes(f"{procfs}/stat").split(b"\n"):
        if line.startswith(b"btime "):
            return float(line.split()[1])
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
    OSError, which the collector classifies with error_reason().
    """

    def __init__(self, procfs: str, pid: int, comm: str, starttime: int) -> None:
        self.procfs, self.dir = procfs, f"{procfs}/{pid}"
        self.pid, self.comm, self.starttime = pid, comm, starttime

    @cached_property
    def cmdline(self) -> tuple[str, ...]:
        return parse_cmdline(read_bytes(f"{self.dir}/cmdline"))

    @cached_property
    def username(self) -> str:
        return username(os.stat(self.dir).st_uid)

    @cached_property
    def cgroups(self) -> tuple[str, ...]:
        lines = read_bytes(f"{self.dir}/cgroup").decode("utf-8", "replace")
        return tuple(line.split(":", 2)[2] for line in lines.splitlines() if line.count(":") >= 2)

    @cached_property
    def cwd(self) -> str:
        return os.readlink(f"{self.dir}/cwd")

    @cached_property
    def start_time(self) -> datetime.datetime:
        ticks = os.sysconf("SC_CLK_TCK")
        return datetime.datetime.fromtimestamp(
            boot_time(self.procfs) + self.starttime / ticks, datetime.timezone.utc
        )
