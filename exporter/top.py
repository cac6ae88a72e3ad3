"""`pss-exporter top`: the groups as a table, for the operator at the box."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from .collector import Collector
from .snapshot import Snapshot
from .text import human

COLUMNS = ("GROUP", "PROCS", "PSS", "USS", "RSS", "SWAP", "MED PSS", "MAX PSS", "MAX_CH", "REC_CH")
_CLEAR, _BOLD, _RESET = "\x1b[H\x1b[2J", "\x1b[1m", "\x1b[0m"


def rows(snap: Snapshot) -> list[tuple[str, ...]]:
    """One row per group, largest PSS first; pools show max_children."""
    pools = {p.info.group: p for p in snap.pools}
    out: list[tuple[str, ...]] = []
    for g in sorted(snap.groups, key=lambda g: (-g.pss, g.name)):
        pool = pools.get(g.name)
        configured = pool.info.max_children if pool else None
        recommended = pool.capacity.recommended if pool else None
        out.append(
            (
                g.name,
                str(g.processes),
                human(g.pss),
                human(g.uss),
                human(g.rss),
                human(g.swap),
                human(g.worker_pss.quantile(0.5)),
                human(g.worker_pss.quantile(1.0)),
                "-" if configured is None else str(configured),
                "-" if recommended is None else str(recommended),
            )
        )
    return out


def render(snap: Snapshot, color: bool = False, max_rows: int | None = None) -> str:
    body = rows(snap)
    shown = body if max_rows is None else body[:max_rows]
    widths = [max(len(r[i]) for r in [COLUMNS, *shown]) for i in range(len(COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        # Group names left-aligned, figures right-aligned.
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    summary = (
        f"pss-exporter top: {len(snap.groups)} groups, "
        f"MemTotal {human(snap.memory_total)}, MemAvailable {human(snap.memory_available)}, "
        f"collected in {snap.duration * 1000:.0f} ms"
    )
    header = line(COLUMNS)
    if color:
        header = _BOLD + header + _RESET
    text = [summary, "", header, *(line(r) for r in shown)]
    if len(shown) < len(body):
        text.append(f"... {len(body) - len(shown)} more groups")
    return "\n".join(text) + "\n"


def run(collector: Collector, interval: float, once: bool, out: TextIO = sys.stdout) -> int:
    """Print one table (--once), or refresh every interval until Ctrl-C."""
    tty = out.isatty()
    if once:
        out.write(render(collector.collect(), color=tty))
        return 0
    try:
        while True:
            snap = collector.collect()
            height = shutil.get_terminal_size().lines - 5 if tty else None
            out.write((_CLEAR if tty else "") + render(snap, color=tty, max_rows=height))
            out.flush()
            time.sleep(max(interval - snap.duration, 0))
    except KeyboardInterrupt:
        return 0
