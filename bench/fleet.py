"""The processes the benchmark measures: a php-fpm fleet (static pools on
loopback listeners) and a few large processes. Everything is started in a
context manager and stopped when it exits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

FPM = "php-fpm8.2"
HOG = Path(__file__).resolve().parent / "hog.py"
START_TIMEOUT = 60.0


LARGE_COMM = "bench-large"  # hog.py's process name, so its group


@dataclass(frozen=True)
class Fleet:
    tag: str  # unique to this run: in pool names and command lines
    pools: tuple[str, ...]  # php-fpm pool names, unique to this run
    master: int
    workers: tuple[int, ...]
    large: tuple[int, ...]

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.master, *self.workers, *self.large)


def find_binary(name: str) -> str | None:
    path = shutil.which(name)
    if path is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        path = f"/usr/sbin/{name}"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split(total: int, parts: int) -> list[int]:
    """total split into parts sizes as equal as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


def _fpm_config(tmp: Path, pools: dict[str, int]) -> Path:
    text = (
        "[global]\n"
        f"pid = {tmp / 'php-fpm.pid'}\n"
        f"error_log = {tmp / 'php-fpm.log'}\n"
        "daemonize = no\n"
        f"process.max = {sum(pools.values()) + 10}\n"
    )
    for name, children in pools.items():
        text += (
            f"\n[{name}]\n"
            f"listen = 127.0.0.1:{free_port()}\n"
            "pm = static\n"
            f"pm.max_children = {children}\n"
        )
    conf = tmp / "php-fpm.conf"
    conf.write_text(text)
    return conf


def _children(parent: int) -> list[int]:
    """PIDs whose parent is parent (one scan of /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rfind(b")") + 2 :].split()[1]) == parent:
            out.append(int(name))
    return out


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def php_fpm(
    tmp: Path, workers: int, pools: int, tag: str
) -> Iterator[tuple[tuple[str, ...], int, tuple[int, ...]]]:
    """Start php-fpm with `workers` static workers over `pools` pools named
    benchI_TAG; yield (pool names, master PID, worker PIDs) once every
    worker runs."""
    binary = find_binary(FPM)
    if binary is None:
        raise SystemExit(f"bench: {FPM} is not installed (apt-get install php8.2-fpm)")
    sizes = {f"bench{i}_{tag}": n for i, n in enumerate(split(workers, pools))}
    conf = _fpm_config(tmp, sizes)
    log = (tmp / "php-fpm.out").open("wb")
    proc = subprocess.Popen(
        [binary, "-F", "-R", "-y", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while len(children := _children(proc.pid)) < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: php-fpm started {len(children)} of {workers} workers")
            time.sleep(0.1)
        yield tuple(sizes), proc.pid, tuple(sorted(children))
    finally:
        _stop(proc)
        log.close()


@contextmanager
def large_process(mib: int, tag: str) -> Iterator[int]:
    """Start hog.py holding mib MiB (tag on its command line); yield its PID
    once it is all resident."""
    proc = subprocess.Popen(
        [sys.executable, str(HOG), str(mib), tag], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != b"ready":
            raise SystemExit(f"bench: large process did not start: {line!r}")
        yield proc.pid
    finally:
        proc.stdin.close()  # type: ignore[union-attr]  # EOF: it exits by itself
        _stop(proc)
        proc.stdout.close()  # type: ignore[union-attr]


@contextmanager
def fleet(tmp: Path, workers: int, pools: int, large: int, large_mib: int) -> Iterator[Fleet]:
    """php-fpm and the large processes, all tagged with a string unique to
    this run (in pool names and command lines)."""
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        names, master, children = stack.enter_context(php_fpm(tmp, workers, pools, tag))
        hogs = tuple(stack.enter_context(large_process(large_mib, tag)) for _ in range(large))
        yield Fleet(tag, names, master, children, hogs)
