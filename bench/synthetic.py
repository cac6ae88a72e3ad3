"""A synthetic procfs tree: many processes in a fixed number of groups, with
the files pss-exporter reads (meminfo; per PID stat, statm, cmdline,
smaps_rollup). Served with --path.procfs, or handed to a Collector."""

from __future__ import annotations

import shutil
from pathlib import Path

MEMINFO = b"MemTotal:       24683520 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\n"
ROLLUP_HEADER = "00400000-7ffc00000000 ---p 00000000 00:00 0                          [rollup]\n"
FIRST_PID = 1000
CONFIG = {"max_groups": 2000}  # room for every synthetic group


def group_name(index: int) -> str:
    return f"svc{index:04d}"


def _stat(pid: int, comm: str) -> str:
    # Fields 1-22 as the kernel writes them, then a few more: state S,
    # ppid 1, flags 0x400100 (no PF_KTHREAD), starttime (field 22) = pid.
    fields = [str(pid), f"({comm})", "S", "1", str(pid), str(pid), "0", "-1", "4194560"]
    fields += ["0"] * 8 + ["20", "0", "1", "0", str(pid), "10240000", "2500", "0"]
    return " ".join(fields) + "\n"


def _rollup(pid: int) -> str:
    pss = 1000 + pid % 997  # kB, varied so that groups differ
    keys = {
        "Rss": 2 * pss,
        "Pss": pss,
        "Pss_Anon": pss // 2,
        "Pss_File": pss - pss // 2,
        "Pss_Shmem": 0,
        "Shared_Clean": pss,
        "Shared_Dirty": 0,
        "Private_Clean": pss // 4,
        "Private_Dirty": pss // 4,
        "Swap": 0,
        "SwapPss": 0,
    }
    return ROLLUP_HEADER + "".join(f"{k}:{v:>18} kB\n" for k, v in keys.items())


def add_process(root: Path, pid: int, groups: int) -> None:
    """A process in group (pid - FIRST_PID) % groups."""
    comm = group_name((pid - FIRST_PID) % groups)
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(_stat(pid, comm))
    (d / "statm").write_text("2500 500 300 100 0 400 0\n")
    (d / "cmdline").write_bytes(f"/usr/bin/{comm}\0--serve\0".encode())
    (d / "smaps_rollup").write_text(_rollup(pid))


def remove_process(root: Path, pid: int) -> None:
    shutil.rmtree(root / str(pid))


def build(root: Path, processes: int, groups: int) -> list[int]:
    """Write a tree of processes spread round-robin over groups; return the PIDs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "meminfo").write_bytes(MEMINFO)
    pids = list(range(FIRST_PID, FIRST_PID + processes))
    for pid in pids:
        add_process(root, pid, groups)
    return pids


def churn(root: Path, pids: list[int], count: int, groups: int) -> None:
    """The count oldest processes exit and count new ones start, with PIDs
    never used before (updates pids in place)."""
    for _ in range(count):
        remove_process(root, pids.pop(0))
        pids.append(pids[-1] + 1)
        add_process(root, pids[-1], groups)
