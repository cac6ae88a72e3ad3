"""A large process for the benchmark: python hog.py MIB [TAG]

Maps MIB MiB of private anonymous memory, writes every page (so all of it is
resident and its page tables are populated), names itself "bench-large",
prints "ready" and sleeps until its stdin reaches EOF. TAG only marks the
command line as belonging to one benchmark run.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

MIB = 1 << 20
CHUNK = 16 * MIB
PR_SET_NAME = 15
NAME = b"bench-large"  # fleet.LARGE_COMM


def touch(size: int) -> mmap.mmap:
    """An anonymous private mapping of size bytes with every page written."""
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    fill = b"\x01" * CHUNK
    for offset in range(0, size, CHUNK):
        buf[offset : offset + CHUNK] = fill[: min(CHUNK, size - offset)]
    return buf


def main(argv: list[str]) -> int:
    buf = touch(int(argv[0]) * MIB)
    ctypes.CDLL(None).prctl(PR_SET_NAME, NAME, 0, 0, 0)
    print("ready", flush=True)
    sys.stdin.buffer.read()
    buf.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
