"""`pss-exporter top`: the groups as a table, for the operator at the box."""

from __future__ import annotations

import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TextIO

from .collector import Collector
from .snapshot import Snapshot
from .text import human, one_line

# PEAK is the worker size capacity uses (the p95 or max of the workers' peak
# USS over php_fpm.window); REC_CH the recommended max_children on it.
COLUMNS = (
    "GROUP",
    "PROCS",
    "PSS",
    "USS",
    "RSS",
    "SWAP",
    "MED PSS",
    "MAX PSS",
    "PEAK",
    "MAX_CH",
    "REC_CH",
)
# Dropped first to last when the terminal is too narrow; the others stay.
DROP_ORDER = ("RSS", "MED PSS", "MAX PSS", "SWAP", "USS")
MIN_GROUP = 12  # the group name is cut to no less, then marked with "~"
QUIT_HINT = "q quits"
_CLEAR, _BOLD, _RESET = "\x1b[H\x1b[2J", "\x1b[1m", "\x1b[0m"


def rows(snap: Snapshot) -> list[tuple[str, ...]]:
    """One row per group, largest PSS first; pools show their capacity."""
    pools = {p.info.group: p for p in snap.pools}
    out: list[tuple[str, ...]] = []
    for g in sorted(snap.groups, key=lambda g: (-g.pss, g.name)):
        pool = pools.get(g.name)
        configured = pool.info.max_children if pool else None
        recommended = pool.capacity.recommended if pool else None
        out.append(
            (
                one_line(g.name),  # a tenant's name: no escape reaches the terminal
                str(g.processes),
                human(g.pss),
                human(g.uss),
                human(g.rss),
                human(g.swap),
                human(g.worker_pss.quantile(0.5)),
                human(g.worker_pss.quantile(1.0)),
                human(pool.capacity.worker_size) if pool else "-",
                "-" if configured is None else str(configured),
                "-" if recommended is None else str(recommended),
            )
        )
    return out


def _layout(body: list[tuple[str, ...]], width: int | None) -> tuple[list[int], list[int]]:
    """The columns shown (indexes) and their widths, within width."""
    shown = list(range(len(COLUMNS)))
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS))]

    def total() -> int:
        return sum(widths[i] for i in shown) + 2 * (len(shown) - 1)

    if width is None:
        return shown, widths
    for name in DROP_ORDER:
        if total() <= width:
            break
        shown.remove(COLUMNS.index(name))
    widths[0] = max(widths[0] - max(total() - width, 0), min(widths[0], MIN_GROUP))
    return shown, widths


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def render(
    snap: Snapshot,
    color: bool = False,
    max_rows: int | None = None,
    width: int | None = None,
    interactive: bool = False,
) -> str:
    """The table; within width columns when given (columns dropped, then
    the group names cut); interactive adds how to quit."""
    body = rows(snap)
    shown_rows = body if max_rows is None else body[:max_rows]
    shown, widths = _layout(shown_rows, width)

    def line(cells: tuple[str, ...]) -> str:
        # Group names left-aligned, figures right-aligned.
        parts = [
            _cut(cells[i], widths[i]).ljust(widths[i]) if i == 0 else cells[i].rjust(widths[i])
            for i in shown
        ]
        return "  ".join(parts).rstrip()

    memory = f"MemTotal {human(snap.memory_total)}, MemAvailable {human(snap.memory_available)}"
    ms = f"{snap.duration * 1000:.0f} ms"
    summary = f"pss-exporter top: {len(snap.groups)} groups, {memory}, collected in {ms}"
    if width is not None and len(summary) > width:
        summary = f"{len(snap.groups)} groups, {memory}, {ms}"
    header = line(COLUMNS)
    if color:
        header = _BOLD + header + _RESET
    text = [summary if width is None else _cut(summary, width), "", header]
    text += [line(r) for r in shown_rows]
    if len(shown_rows) < len(body):
        text.append(f"... {len(body) - len(shown_rows)} more groups")
    if interactive:
        text.append(QUIT_HINT)
    return "\n".join(text) + "\n"


@contextmanager
def _keys(fd: int) -> Iterator[None]:
    """The terminal in cbreak mode (keys without Enter, no echo) meanwhile."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_within(fd: int, seconds: float) -> bool:
    """Wait up to seconds for a key; True if it was q."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            key = os.read(fd, 1)
            if key in (b"q", b"Q", b""):
                return True
    return False


def run(collector: Collector, interval: float, once: bool, out: TextIO = sys.stdout) -> int:
    """Print one table (--once), or refresh every interval until q or Ctrl-C."""
    is_tty = out.isatty()
    if once:
        width = shutil.get_terminal_size().columns if is_tty else None
        out.write(render(collector.collect(), color=is_tty, width=width))
        return 0
    keyboard = sys.stdin.fileno() if sys.stdin.isatty() else None
    try:
        with _keys(keyboard) if keyboard is not None else nullcontext():
            while True:
                snap = collector.collect()
                size = shutil.get_terminal_size()
                height = size.lines - 6 if is_tty else None
                page = render(
                    snap,
                    color=is_tty,
                    max_rows=height,
                    width=size.columns if is_tty else None,
                    interactive=keyboard is not None,
                )
                out.write((_CLEAR if is_tty else "") + page)
                out.flush()
                wait = max(interval - snap.duration, 0)
                if keyboard is None:
                    time.sleep(wait)
                elif _quit_within(keyboard, wait):
                    return 0
    except KeyboardInterrupt:
        return 0
