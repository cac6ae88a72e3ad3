"""A process that holds a known amount of memory, for the live tests.

As a program:  python memhog.py LABEL MARKER PRIVATE_MIB SHARED_MIB [GROW_MIB]

It writes every page of PRIVATE_MIB MiB of private anonymous memory. With
SHARED_MIB > 0 it first maps SHARED_MIB MiB of anonymous MAP_SHARED memory
(shmem), writes every page and forks: the child writes every page of that
mapping too, so both processes map all of it, and then writes its own
PRIVATE_MIB MiB of private memory.

When everything is resident it prints one line, `ready ADDRESS PID...` (the
shared mapping's start address in hex, 0 without one, then the PIDs), and
waits until stdin reaches EOF. With GROW_MIB, each SIGUSR1 makes the first
process write GROW_MIB MiB more of private memory (to push a process that was
already seen past a cgroup's limit). LABEL and MARKER only make the command
line recognisable: a cmdline rule picks these processes out of all others.

As a module: running_hog() starts it and yields a Hog (used by
test_live_memory.py, test_prometheus_scrape.py and test_oom.py).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
PR_SET_PDEATHSIG = 1


def _written(mib: int, flags: int) -> mmap.mmap:
    """An anonymous mapping of mib MiB with every page written (non-zero)."""
    buf = mmap.mmap(-1, mib * MIB, flags=flags | mmap.MAP_ANONYMOUS)
    buf.write(b"\x01" * len(buf))
    return buf


def _rewrite(buf: mmap.mmap) -> None:
    buf.seek(0)
    buf.write(b"\x02" * len(buf))


def _address(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _die_with_parent(parent: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def main(argv: list[str]) -> int:
    private_mib, shared_mib = int(argv[2]), int(argv[3])
    grow_mib = int(argv[4]) if len(argv) > 4 else 0
    held = []
    pids = [os.getpid()]
    address = 0
    if shared_mib:
        shared = _written(shared_mib, mmap.MAP_SHARED)
        held.append(shared)
        address = _address(shared)
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:
            _die_with_parent(pids[0])
            # fork() does not copy the page tables of a shared mapping: the
            # child maps its pages only once it touches them.
            _rewrite(shared)
            if private_mib:
                held.append(_written(private_mib, mmap.MAP_PRIVATE))
            os.write(ready_w, b"x")
            sys.stdin.buffer.read()
            os._exit(0)
        pids.append(child)
        if os.read(ready_r, 1) != b"x":
            raise SystemExit("memhog: child failed")
    if private_mib:
        held.append(_written(private_mib, mmap.MAP_PRIVATE))
    if grow_mib:  # installed after the fork: the child keeps the default action
        signal.signal(signal.SIGUSR1, lambda *_: held.append(_written(grow_mib, mmap.MAP_PRIVATE)))
    print("ready", hex(address), *pids, flush=True)
    sys.stdin.buffer.read()
    return 0


# ------------------------------------------------------------- test helper


@dataclass(frozen=True)
class Hog:
    """A running memhog: its PIDs (the first is the one we started) and the
    start address of its shared mapping (0 without one)."""

    pids: tuple[int, ...]
    address: int


def join_cgroup(cgroup: Path) -> Callable[[], None]:
    """A preexec_fn that moves the new process into cgroup (a cgroup directory,
    v1 or v2) before it execs, so everything it allocates is charged there."""

    def join() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return join


@contextmanager
def running_hog(
    label: str,
    marker: str,
    private_mib: int,
    shared_mib: int = 0,
    *,
    grow_mib: int = 0,
    cgroup: Path | None = None,
) -> Iterator[Hog]:
    """Start memhog.py (inside cgroup if given), wait for its ready line, kill
    all its processes on exit. grow_mib: see the module docstring (SIGUSR1)."""
    argv = [label, marker, str(private_mib), str(shared_mib)]
    if grow_mib:
        argv.append(str(grow_mib))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=join_cgroup(cgroup) if cgroup is not None else None,
    )
    pids: list[int] = []
    try:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        if not line or line[0] != "ready":
            raise AssertionError(f"memhog {argv} did not start: {line!r}")
        pids = [int(p) for p in line[2:]]
        yield Hog(tuple(pids), int(line[1], 16))
    finally:
        # While the parent lives its children's PIDs cannot be reused (it
        # reaps nothing before stdin's EOF); if it died, PR_SET_PDEATHSIG
        # already killed them.
        if proc.poll() is None:
            for pid in pids[1:]:
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=10)
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
