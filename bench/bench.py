"""pss-exporter benchmark: CPU per collection cycle against the kernel's floor
and process-exporter, change-detection accuracy, /metrics latency and RSS.

Run as root from the repository:

    .venv/bin/python bench/bench.py [--workers N] [--large K] [--large-size MiB]
                                    [--seconds S] [--out FILE]

It starts a php-fpm fleet (static pools on 127.0.0.1) and K large processes,
measures everything side by side, stops what it started, and prints a
markdown report (also written to FILE). docs/performance.md explains it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cadence
import latency
import reference
import synthetic
from fleet import LARGE_COMM, Fleet, fleet
from measure import (
    Row,
    bare_cycle,
    collect_cycle,
    full_freshness,
    interleaved,
    user_pids,
)
from report import BARE, FULL, FULL_RENDER, Results, Rss, markdown

from exporter.collector import Collector

HERE = Path(__file__).resolve().parent
GROUPS = 1000  # groups of the synthetic trees
SMALL_TREE = 1000  # processes of the first latency tree: one per group
SETTLE = 2.0  # seconds for a new fleet to finish starting up
THREADS = (2, 4)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=positive, default=300, help="php-fpm workers (300)")
    p.add_argument("--pools", type=positive, default=3, help="php-fpm pools (3)")
    p.add_argument("--large", type=int, default=3, help="large processes (3)")
    p.add_argument("--large-size", type=positive, default=1024, help="MiB each (1024)")
    p.add_argument("--seconds", type=float, default=30.0, help="default-settings run (30)")
    p.add_argument("--cycles", type=positive, default=10, help="full-freshness rounds (10)")
    p.add_argument("--scrapes", type=positive, default=10, help="process-exporter scrapes")
    p.add_argument("--runs", type=positive, default=3, help="smem and psutil runs (3)")
    p.add_argument("--requests", type=positive, default=2000, help="GETs per latency row")
    p.add_argument(
        "--tree-processes",
        type=positive,
        default=10000,
        help="processes of the large synthetic tree, for latency and RSS (10000)",
    )
    p.add_argument("--churn", type=int, default=10000, help="spawn/exit for the RSS run")
    p.add_argument("--churn-per-cycle", type=positive, default=100)
    p.add_argument("--out", metavar="FILE", help="also write the report here")
    return p.parse_args(argv)


def header(
    argv: list[str], f: Fleet, args: argparse.Namespace, groups: dict[str, int]
) -> tuple[str, ...]:
    """Machine, command and fleet; groups: processes per group as
    pss-exporter saw them (full read)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", "exporter"):
        commit += " with uncommitted changes in exporter/"
    host = sum(name.isdigit() for name in os.listdir("/proc"))
    return (
        f"Command: `{shlex.join(['.venv/bin/python', 'bench/bench.py', *argv])}`",
        "",
        f"Code: pss-exporter at commit {commit}.",
        "",
        f"Machine: Linux {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, transparent hugepages `{thp}`, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Fleet: php-fpm master + {len(f.workers)} workers in {args.pools} static pools, "
        f"{len(f.large)} large processes of {args.large_size} MiB touched anonymous memory; "
        f"{host} PIDs on the host, {len(user_pids())} of them user processes; "
        f"run tag `{f.tag}`.",
        "",
        "Fleet as pss-exporter grouped it: "
        + ", ".join(f"`{g}` {groups.get(g, 0)}" for g in fleet_groups(f))
        + " processes.",
    )


def _git(*args: str) -> str:
    """Output of a read-only git command in the repository, "" if it fails."""
    try:
        out = subprocess.run(
            ["git", "-C", str(latency.ROOT), *args], capture_output=True, text=True
        )
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def fleet_groups(f: Fleet) -> list[str]:
    """pss-exporter's groups of the fleet (its master shares php-fpm:master
    with any other master on the host, so it is left out)."""
    return [*(f"php-fpm:{pool}" for pool in f.pools), LARGE_COMM]


def cpu_rows(args: argparse.Namespace, tmp: Path) -> tuple[list[Row], cadence.Cadence, int]:
    """Everything measured on the live fleet, and the process churn seen
    during the full-freshness rounds."""
    cycles = {
        BARE: bare_cycle,
        FULL: collect_cycle(Collector(full_freshness())),
        FULL_RENDER: collect_cycle(Collector(full_freshness()), with_render=True),
    }
    for n in THREADS:
        cycles[f"pss-exporter full, {n} threads: collect()"] = collect_cycle(
            Collector(full_freshness(threads=n))
        )
    full, churn = interleaved(cycles, args.cycles)
    default = cadence.run(args.seconds)
    rows = [*full[:3], default.collect, default.collect_render, *full[3:]]
    rows.append(reference.process_exporter(tmp, args.scrapes))
    rows.append(reference.smem(args.runs))
    rows.append(reference.psutil_row(user_pids(), args.runs))
    return rows, default, churn


def latency_rows(args: argparse.Namespace, tmp: Path) -> list[latency.Latency]:
    """1,000 groups of one process each and of tree_processes / 1,000 each,
    at the default interval (no collection runs while requests are timed);
    then the large tree again with a collection every second."""
    small, large = tmp / "proc-small", tmp / "proc-large"
    synthetic.build(small, SMALL_TREE, GROUPS)
    synthetic.build(large, args.tree_processes, GROUPS)
    scenarios = [
        (small, SMALL_TREE, latency.IDLE_INTERVAL),
        (large, args.tree_processes, latency.IDLE_INTERVAL),
        (large, args.tree_processes, latency.BUSY_INTERVAL),
    ]
    out = []
    for tree, processes, interval in scenarios:
        out += latency.measure(tree, tmp, processes, args.requests, interval)
    return out


def rss(args: argparse.Namespace, tmp: Path) -> Rss:
    """RSS of a separate process collecting a synthetic tree under churn."""
    tree = tmp / "proc-rss"
    synthetic.build(tree, args.tree_processes, GROUPS)
    probe = [sys.executable, str(HERE / "rss_probe.py"), str(tree), str(GROUPS)]
    probe += [str(args.churn), str(args.churn_per_cycle)]
    out = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=3600)
    return Rss(**json.loads(out.stdout))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (smaps of other users' processes)")
    with tempfile.TemporaryDirectory(prefix="pss-bench-") as name:
        tmp = Path(name)
        with fleet(tmp, args.workers, args.pools, args.large, args.large_size) as f:
            time.sleep(SETTLE)
            rows, default, churn = cpu_rows(args, tmp)
            head = header(argv, f, args, default.group_sizes)
        results = Results(
            header=head,
            fleet_groups=tuple(fleet_groups(f)),
            rows=tuple(rows),
            churn=churn,
            cadence=default,
            latency=tuple(latency_rows(args, tmp)),
            rss=rss(args, tmp),
        )
    text = markdown(results)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
