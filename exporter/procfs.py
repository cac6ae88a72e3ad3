"""Pure parsers for procfs files.

Every function takes the raw bytes of one file and returns plain values, so
the parsers can be tested on fixture bytes from any kernel version. Sizes are
returned in bytes. Malformed input raises ParseError; missing optional keys do
not (older kernels lack some fields).
"""

from __future__ import annotations

from typing import NamedTuple

# /proc/PID/stat field 9 flag marking kernel threads (include/linux/sched.h).
PF_KTHREAD = 0x00200000


class ParseError(ValueError):
    """A procfs file whose content does not have the expected shape."""


class Stat(NamedTuple):
    comm: str
    state: str
    ppid: int
    flags: int
    starttime: int  # clock ticks after boot: with the PID, identifies a process

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def parse_stat(data: bytes) -> Stat:
    """Parse /proc/PID/stat.

    comm sits between the first '(' and the LAST ')' and may itself hold
    spaces, parentheses and newlines, so split around those two bytes.
    """
    start = data.find(b"(")
    end = data.rfind(b")")
    if start < 0 or end < start:
        raise ParseError("stat: no (comm) field")
    rest = data[end + 2 :].split()
    # rest[0] is field 3 (state); starttime is field 22, i.e. rest[19].
    if len(rest) < 20:
        raise ParseError(f"stat: {len(rest) + 2} fields, expected at least 22")
    try:
        return Stat(
            comm=data[start + 1 : end].decode("utf-8", "replace"),
            state=rest[0].decode("ascii", "replace"),
            ppid=int(rest[1]),
            flags=int(rest[6]),
            starttime=int(rest[19]),
        )
    except ValueError as exc:
        raise ParseError(f"stat: {exc}") from None


class Memory(NamedTuple):
    """One process's memory from smaps_rollup (or summed smaps), in bytes.

    pss_anon/pss_file/pss_shmem are None on kernels older than 5.x, which do
    not report the split.
    """

    rss: int
    pss: int
    uss: int
    swap: int
    swap_pss: int
    pss_anon: int | None
    pss_file: int | None
    pss_shmem: int | None


ZERO_MEMORY = Memory(0, 0, 0, 0, 0, None, None, None)

# smaps key -> index into the accumulator below.
_SMAPS_KEYS = {
    b"Rss": 0,
    b"Pss": 1,
    b"Private_Clean": 2,
    b"Private_Dirty": 3,
    b"Swap": 4,
    b"SwapPss": 5,
    b"Pss_Anon": 6,
    b"Pss_File": 7,
    b"Pss_Shmem": 8,
}


def parse_smaps(data: bytes) -> Memory:
    """Sum the memory keys of /proc/PID/smaps_rollup or /proc/PID/smaps.

    smaps_rollup is one block, smaps one block per mapping; summing by key
    handles both. Mapping header lines and keys we do not use are skipped.
    An empty file (zombie, kernel thread, exiting process) gives zeros.
    """
    acc = [0] * 9
    seen = [False] * 9
    for line in data.split(b"\n"):
        key, sep, value = line.partition(b":")
        idx = _SMAPS_KEYS.get(key)
        if idx is None or not sep:
            continue
        fields = value.split()
        if len(fields) != 2 or fields[1] != b"kB":
            raise ParseError(f"smaps: malformed line {line[:60]!r}")
        try:
            acc[idx] += int(fields[0])
        except ValueError:
            raise ParseError(f"smaps: malformed line {line[:60]!r}") from None
        seen[idx] = True
    if data.strip() and not seen[1]:
        raise ParseError("smaps: no Pss line")
    return Memory(
        rss=acc[0] * 1024,
        pss=acc[1] * 1024,
        uss=(acc[2] + acc[3]) * 1024,
        swap=acc[4] * 1024,
        swap_pss=acc[5] * 1024,
        pss_anon=acc[6] * 1024 if seen[6] else None,
        pss_file=acc[7] * 1024 if seen[7] else None,
        pss_shmem=acc[8] * 1024 if seen[8] else None,
    )


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """Split NUL-separated /proc/PID/cmdline into argv.

    Programs that rewrite their title (php-fpm, postgres) often leave one
    string padded with NULs or joined with spaces: trailing empties go.
    """
    if not data:
        return ()
    args = data.decode("utf-8", "replace").split("\0")
    while args and not args[-1]:
        args.pop()
    return tuple(args)


def parse_meminfo(data: bytes) -> dict[str, int]:
    """Parse /proc/meminfo into {field: bytes}; HugePages_* counts stay counts."""
    out: dict[str, int] = {}
    for line in data.split(b"\n"):
        key, sep, value = line.partition(b":")
        if not sep:
            continue
        fields = value.split()
        if not fields:
            raise ParseError(f"meminfo: malformed line {line[:60]!r}")
        try:
            n = int(fields[0])
        except ValueError:
            raise ParseError(f"meminfo: malformed line {line[:60]!r}") from None
        out[key.decode("ascii", "replace")] = n * 1024 if len(fields) > 1 else n
    return out


def parse_key_values(data: bytes) -> dict[str, int]:
    """Parse 'key value' lines: /proc/vmstat, memory.events, memory.oom_control."""
    out: dict[str, int] = {}
    for line in data.split(b"\n"):
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip(b"-").isdigit():
            out[fields[0].decode("ascii", "replace")] = int(fields[1])
    return out


def parse_pressure(data: bytes) -> dict[str, float]:
    """Total stall seconds by kind ('some', 'full') from a PSI file
    (/proc/pressure/memory, a cgroup's memory.pressure)."""
    out: dict[str, float] = {}
    for line in data.split(b"\n"):
        fields = line.split()
        if not fields:
            continue
        for field in fields[1:]:
            key, _, value = field.partition(b"=")
            if key == b"total":
                try:
                    out[fields[0].decode("ascii", "replace")] = int(value) / 1e6
                except ValueError:
                    raise ParseError(f"pressure: malformed line {line[:60]!r}") from None
    return out


class Watermarks(NamedTuple):
    """What MemAvailable holds back, in pages, from /proc/zoneinfo."""

    low: int  # sum of the zones' low watermarks
    reserve: int  # totalreserve_pages: per zone max(protection) + high, at most managed
    pcp_free: int = 0  # free pages held in per-CPU lists ("count:"), not in MemFree


def parse_zoneinfo(data: bytes) -> Watermarks:
    """Sum the watermarks of /proc/zoneinfo the way mm/page_alloc.c does."""
    low = reserve = pcp = 0
    for zone in data.split(b"\nNode "):
        values: dict[bytes, int] = {}
        protection = 0
        for line in zone.split(b"\n"):
            fields = line.split()
            if len(fields) == 2 and fields[0] in (b"low", b"high", b"managed"):
                values[fields[0]] = int(fields[1])
            elif len(fields) == 2 and fields[0] == b"count:":
                pcp += int(fields[1])
            elif fields and fields[0] == b"protection:":
                nums = line.partition(b"(")[2].partition(b")")[0].split(b",")
                protection = max((int(n) for n in nums if n.strip()), default=0)
        if b"low" not in values:
            continue
        low += values[b"low"]
        reserve += min(protection + values.get(b"high", 0), values.get(b"managed", 0))
    return Watermarks(low, reserve, pcp)
