"""Pure parsers for procfs files.

Every function takes the raw bytes of one file and returns plain values, so
the parsers can be tested on fixture bytes from any kernel version. Sizes are
returned in bytes. Malformed input raises ParseError, and nothing else, on any
bytes at all; missing optional keys do not (older kernels lack some fields).

The files may come from a crafted tree (--path.procfs), so every number is
checked: ASCII digits only (no sign, no '_', no '²'), at most MAX_VALUE,
and sizes stay within MAX_VALUE once converted from kB to bytes. No kernel
prints a count or size beyond 2**63 - 1; anything larger is garbage.
"""

from __future__ import annotations

from typing import NamedTuple

# /proc/PID/stat field 9 flag marking kernel threads (include/linux/sched.h).
PF_EXITING = 0x00000004  # the task is exiting (include/linux/sched.h)
PF_KTHREAD = 0x00200000
# The largest number any parser returns: beyond it a value is garbage, and
# any sum of them still converts to a float when rendered.
MAX_VALUE = 2**63 - 1
_MAX_DIGITS = len(str(MAX_VALUE))
KB = 1024


class ParseError(ValueError):
    """A procfs file whose content does not have the expected shape."""


def parse_uint(field: bytes, what: str) -> int:
    """A decimal count or size, 0..MAX_VALUE; ParseError otherwise.

    bytes.isdigit() is ASCII-only; the length check keeps int() from
    converting a 400-digit (or 5000-digit: ValueError) field at all.
    """
    if field.isdigit() and len(field) <= _MAX_DIGITS:
        value = int(field)
        if value <= MAX_VALUE:
            return value
    raise ParseError(f"{what}: not a number in 0..2**63-1: {field[:40]!r}")


def _bytes(kb: int, what: str) -> int:
    """kB to bytes, still within MAX_VALUE."""
    if kb > MAX_VALUE // KB:
        raise ParseError(f"{what}: {kb} kB is out of range")
    return kb * KB


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
    return Stat(
        comm=data[start + 1 : end].decode("utf-8", "replace"),
        state=rest[0].decode("ascii", "replace"),
        ppid=parse_uint(rest[1], "stat: ppid"),
        flags=parse_uint(rest[6], "stat: flags"),
        starttime=parse_uint(rest[19], "stat: starttime"),
    )


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


# What a zombie holds: nothing, of every kind (its split is 0, not unknown,
# so it does not hide its group's split: snapshot.optional_sum).
ZERO_MEMORY = Memory(0, 0, 0, 0, 0, 0, 0, 0)

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
    An empty file (zombie, kernel thread, exiting process) gives zeros, the
    split included: a process that holds nothing must not hide its group's
    split (snapshot.optional_sum). Values are sizes: a negative one is
    malformed, as is a total that does not fit MAX_VALUE bytes.
    """
    if not data.strip():
        return ZERO_MEMORY
    acc = [0] * 9
    seen = [False] * 9
    for line in data.split(b"\n"):
        key, sep, value = line.partition(b":")
        idx = _SMAPS_KEYS.get(key)
        if idx is None or not sep:
            continue
        fields = value.split()
        # parse_uint() inlined (this runs per process and line); the sums
        # are bounded once, below.
        if (
            len(fields) != 2
            or fields[1] != b"kB"
            or not fields[0].isdigit()
            or len(fields[0]) > _MAX_DIGITS
        ):
            raise ParseError(f"smaps: malformed line {line[:60]!r}")
        acc[idx] += int(fields[0])
        seen[idx] = True
    if not seen[1]:
        raise ParseError("smaps: no Pss line")
    if max(*acc, acc[2] + acc[3]) > MAX_VALUE // KB:
        raise ParseError("smaps: a size beyond 2**63-1 bytes")
    return Memory(
        rss=acc[0] * KB,
        pss=acc[1] * KB,
        uss=(acc[2] + acc[3]) * KB,
        swap=acc[4] * KB,
        swap_pss=acc[5] * KB,
        pss_anon=acc[6] * KB if seen[6] else None,
        pss_file=acc[7] * KB if seen[7] else None,
        pss_shmem=acc[8] * KB if seen[8] else None,
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


class CgroupLine(NamedTuple):
    """One line of /proc/PID/cgroup: 'ID:CONTROLLERS:PATH'."""

    hierarchy: str  # "0" with no controllers: the v2 (unified) hierarchy
    controllers: str  # comma-separated (v1), empty for v2
    path: str  # as written: a path may hold ':'


def parse_proc_cgroup_lines(data: bytes) -> tuple[CgroupLine, ...]:
    """The lines of /proc/PID/cgroup; one without two ':' is skipped. Never raises.

    Split on newlines only, as the kernel writes them: str.splitlines() also
    splits on '\x1e', '\x85', '\u2028', ..., which a delegated cgroup's name
    may hold to forge a line for another cgroup."""
    out = []
    for raw in data.split(b"\n"):
        parts = raw.decode("utf-8", "replace").split(":", 2)
        if len(parts) == 3:
            out.append(CgroupLine(*parts))
    return tuple(out)


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
        n = parse_uint(fields[0], "meminfo")
        out[key.decode("ascii", "replace")] = _bytes(n, "meminfo") if len(fields) > 1 else n
    return out


def parse_key_values(data: bytes) -> dict[str, int]:
    """Parse 'key count' lines: memory.events, memory.oom_control.

    Never raises: a line of another shape, or whose count is not one in
    0..MAX_VALUE, is skipped, so a garbled line loses only its own key.
    """
    out: dict[str, int] = {}
    for line in data.split(b"\n"):
        fields = line.split()
        if len(fields) == 2:
            try:
                out[fields[0].decode("ascii", "replace")] = parse_uint(fields[1], "")
            except ParseError:
                continue
    return out


def parse_count(data: bytes) -> int:
    """A file holding one count (memory.current, memory.max that is not "max")."""
    return parse_uint(data.strip(), "count")


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
                out[fields[0].decode("ascii", "replace")] = parse_uint(value, "pressure") / 1e6
    return out


class Watermarks(NamedTuple):
    """What MemAvailable holds back, in pages, from /proc/zoneinfo."""

    low: int  # sum of the zones' low watermarks
    reserve: int  # totalreserve_pages: per zone max(protection) + high, at most managed
    pcp_free: int = 0  # free pages held in per-CPU lists ("count:"), not in MemFree


def parse_zoneinfo(data: bytes) -> Watermarks:
    """Sum the watermarks of /proc/zoneinfo the way mm/page_alloc.c does.

    Counts are pages; a total beyond MAX_VALUE pages is malformed.
    """
    low = reserve = pcp = 0
    for zone in data.split(b"\nNode "):
        values: dict[bytes, int] = {}
        protection = 0
        for line in zone.split(b"\n"):
            fields = line.split()
            if len(fields) == 2 and fields[0] in (b"low", b"high", b"managed"):
                values[fields[0]] = parse_uint(fields[1], "zoneinfo")
            elif len(fields) == 2 and fields[0] == b"count:":
                pcp += parse_uint(fields[1], "zoneinfo")
            elif fields and fields[0] == b"protection:":
                nums = line.partition(b"(")[2].partition(b")")[0].split(b",")
                protection = max(
                    (parse_uint(n.strip(), "zoneinfo") for n in nums if n.strip()), default=0
                )
        if b"low" not in values:
            continue
        low += values[b"low"]
        reserve += min(protection + values.get(b"high", 0), values.get(b"managed", 0))
    if max(low, reserve, pcp) > MAX_VALUE:
        raise ParseError("zoneinfo: page counts out of range")
    return Watermarks(low, reserve, pcp)
