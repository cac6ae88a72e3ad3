"""The exporter's resident memory over process churn, in a process of its own:

    python rss_probe.py TREE GROUPS CHURN PER_CYCLE

Collects and renders the synthetic procfs TREE (built by synthetic.build)
with the synthetic config, WARMUP times, then PER_CYCLE processes exit and as
many start before each further collection, until CHURN have. Prints one JSON
object: VmRSS after the imports (Python and the exporter's modules), after
warm-up, at every tenth of the churn and at the end; VmHWM; PSS and USS at
the end; processes and groups.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import synthetic

from exporter.collector import Collector
from exporter.config import build_config
from exporter.discovery import read_bytes
from exporter.metrics import OPENMETRICS, render
from exporter.procfs import parse_smaps

# What the serve loop renders per collection when Prometheus scrapes: the
# format it asks for (OpenMetrics), not every format.
SCRAPED = (OPENMETRICS,)

WARMUP = 3
SAMPLES = 10  # VmRSS samples over the churn


def status_kib(key: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def own_memory_kib() -> tuple[int, int]:
    """This process's (PSS, USS) in KiB: unlike RSS, they count the shared
    libraries' pages only for their share."""
    memory = parse_smaps(read_bytes("/proc/self/smaps_rollup"))
    return memory.pss // 1024, memory.uss // 1024


def cycle(collector: Collector) -> int:
    """One collection and its rendering, as the serve loop does; returns
    the number of groups."""
    snap = collector.collect()
    render(snap, SCRAPED)
    return len(snap.groups)


def main(argv: list[str]) -> int:
    imported = status_kib("VmRSS")
    tree, groups, churn, per_cycle = Path(argv[0]), *map(int, argv[1:])
    pids = sorted(int(name) for name in os.listdir(tree) if name.isdigit())
    collector = Collector(build_config(synthetic.CONFIG, "bench"), str(tree))
    for _ in range(WARMUP):
        seen = cycle(collector)
    warm = status_kib("VmRSS")
    spawned, series = 0, []
    while spawned < churn:
        n = min(per_cycle, churn - spawned)
        synthetic.churn(tree, pids, n, groups)
        spawned += n
        seen = cycle(collector)
        if spawned * SAMPLES // churn > len(series):
            series.append(status_kib("VmRSS"))
    result = {
        "processes": len(pids),
        "groups": seen,
        "spawned": spawned,
        "imported_kib": imported,
        "warm_kib": warm,
        "series_kib": series,
        "end_kib": status_kib("VmRSS"),
        "peak_kib": status_kib("VmHWM"),
    }
    result["end_pss_kib"], result["end_uss_kib"] = own_memory_kib()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
