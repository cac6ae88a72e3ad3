"""End to end: `pss-exporter once --path.procfs TREE` on the fake procfs trees in
tests/fixtures/procfs (see the README there), with every group value checked.

Expected values are written in kB, as they appear in the fixture files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import EXPORTER, FIXTURES, ROOT, group_value, parse_samples, run_cli

TREES = FIXTURES / "procfs"
KB = 1024
MEM_TOTAL_KB, MEM_AVAILABLE_KB = 16303412, 12845960  # the trees' meminfo

BY_COMM = """
process_names:
  - name: "{{.Comm}}"
    cmdline: ['.+']
"""


@dataclass(frozen=True)
class Summary:
    """A group's workers: nearest-rank median, p95 and max (kB), their sum (kB) and count."""

    q50: int
    q95: int
    q100: int
    total: int
    count: int


NO_WORKERS = Summary(0, 0, 0, 0, 0)


def one(kb: int) -> Summary:
    """The summary of a single worker."""
    return Summary(kb, kb, kb, kb, 1)


@dataclass(frozen=True)
class Group:
    processes: int
    pss: int
    uss: int
    rss: int
    split: tuple[int, int, int] | None  # Pss_Anon, Pss_File, Pss_Shmem; None: no series
    worker_pss: Summary
    worker_uss: Summary
    swap: int = 0
    swap_pss: int = 0
    unreadable: int = 0
    # pss_group_workers: every worker, its memory read or not; None: the
    # distributions' count (every worker's memory read)
    workers: int | None = None


# ----------------------------------------------------------------- helpers


def once(tmp_path: Path, tree: Path, config: str, *, unprivileged: bool = False) -> dict:
    """Run `once` on tree with the given YAML config; return the parsed samples."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    args = ("once", "--path.procfs", str(tree), "--config", str(cfg))
    result = run_without_privileges(*args) if unprivileged else run_cli(*args)
    assert result.returncode == 0, result.stderr
    return parse_samples(result.stdout)


def run_without_privileges(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI unable to bypass file permissions, as a non-root exporter is.

    As root, every capability is dropped (setpriv): uid 0 stays, so the repo and
    the interpreter (which may live under a 0700 home) stay reachable, but a mode
    000 file is refused with EACCES as it would be for any unprivileged user.
    """
    if os.geteuid() != 0:
        return run_cli(*args)
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run the exporter without privileges"
    drop = ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    result = subprocess.run(
        [setpriv, *drop, "--", *EXPORTER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert not result.stderr.startswith("setpriv"), (
        f"cannot run the exporter without privileges: {result.stderr.strip()}"
    )
    return result


def groups_in(samples: dict) -> set[str]:
    return {dict(labels)["group"] for name, labels in samples if name == "pss_group_processes"}


def has_series(samples: dict, name: str, group: str) -> bool:
    return any(n == name and dict(labels).get("group") == group for n, labels in samples)


def check_workers(samples: dict, kind: str, group: str, expected: Summary) -> None:
    """The gauges pss_group_worker_KIND_{median,p95,max}_bytes."""
    for suffix, kb in zip(("median", "p95", "max"), (expected.q50, expected.q95, expected.q100)):
        name = f"pss_group_worker_{kind}_{suffix}_bytes"
        if expected.count:
            assert group_value(samples, name, group) == kb * KB, (group, name)
        else:
            assert not has_series(samples, name, group), f"{group}: {name} without workers"


def check_group(samples: dict, group: str, exp: Group) -> None:
    def gauge(metric: str) -> float:
        return group_value(samples, metric, group)

    assert gauge("pss_group_processes") == exp.processes, group
    assert gauge("pss_group_unreadable_processes") == exp.unreadable, group
    assert gauge("pss_group_pss_bytes") == exp.pss * KB, group
    assert gauge("pss_group_uss_bytes") == exp.uss * KB, group
    assert gauge("pss_group_rss_bytes") == exp.rss * KB, group
    assert gauge("pss_group_swap_bytes") == exp.swap * KB, group
    assert gauge("pss_group_swap_pss_bytes") == exp.swap_pss * KB, group
    split = ("pss_group_pss_anon_bytes", "pss_group_pss_file_bytes", "pss_group_pss_shmem_bytes")
    for metric, kb in zip(split, exp.split or (None, None, None)):
        if kb is None:
            assert not has_series(samples, metric, group), f"{group}: {metric} should be absent"
        else:
            assert gauge(metric) == kb * KB, (group, metric)
    workers = exp.worker_pss.count if exp.workers is None else exp.workers
    assert gauge("pss_group_workers") == workers, group
    check_workers(samples, "pss", group, exp.worker_pss)
    check_workers(samples, "uss", group, exp.worker_uss)


def check_groups(samples: dict, expected: dict[str, Group]) -> None:
    assert groups_in(samples) == set(expected)
    for group, exp in expected.items():
        check_group(samples, group, exp)


def check_exporter(
    samples: dict, *, scanned: int, vanished: int = 0, permission: int = 0, parse: int = 0
) -> None:
    """Host memory, PIDs scanned and read errors of one collection."""
    assert samples[("pss_host_memory_total_bytes", frozenset())] == MEM_TOTAL_KB * KB
    assert samples[("pss_host_memory_available_bytes", frozenset())] == MEM_AVAILABLE_KB * KB
    assert samples[("pss_exporter_processes_scanned", frozenset())] == scanned
    errors = {
        reason: samples[("pss_exporter_read_errors_total", frozenset({("reason", reason)}))]
        for reason in ("vanished", "permission", "parse")
    }
    assert errors == {"vanished": vanished, "permission": permission, "parse": parse}


# ------------------------------------------------------------------ php-fpm

FPM_HOST = {
    "systemd": Group(1, 4000, 2800, 12000, (2500, 1500, 0), one(4000), one(2800)),
    "php-fpm:master": Group(1, 6000, 2000, 20000, (2000, 3900, 100), NO_WORKERS, NO_WORKERS),
    "php-fpm:www": Group(
        3,
        pss=10000 + 20000 + 40000,
        uss=8000 + 17000 + 36000,
        rss=30000 + 40000 + 50000,
        split=(8000 + 17000 + 36000, 1900 + 2900 + 3900, 300),
        # nearest rank over [10000, 20000, 40000]: 0.95 is the 3rd value, not 38000
        worker_pss=Summary(20000, 40000, 40000, 70000, 3),
        worker_uss=Summary(17000, 36000, 36000, 61000, 3),
        swap=512 + 1024,
        swap_pss=256 + 1024,
    ),
    "php-fpm:api": Group(
        2,
        pss=12000 + 13000,
        uss=9000 + 10100,
        rss=25000 + 26000,
        split=(21000, 3900, 100),
        # nearest rank over [12000, 13000]: the median is the 1st value, not 12500
        worker_pss=Summary(12000, 13000, 13000, 25000, 2),
        worker_uss=Summary(9000, 10100, 10100, 19100, 2),
        swap=256,
        swap_pss=128,
    ),
}


def test_php_fpm_host(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "fpm-host", BY_COMM)
    check_groups(samples, FPM_HOST)
    check_exporter(samples, scanned=7)
    assert samples[("pss_exporter_groups_overflow_total", frozenset())] == 0


def test_php_fpm_grouping_disabled(tmp_path: Path) -> None:
    # Without php-fpm grouping the rules group php-fpm by comm; the master is still no worker.
    samples = once(tmp_path, TREES / "fpm-host", "php_fpm: {enabled: false}\n" + BY_COMM)
    fpm = Group(
        6,
        pss=6000 + 70000 + 25000,
        uss=2000 + 61000 + 19100,
        rss=20000 + 120000 + 51000,
        split=(2000 + 61000 + 21000, 3900 + 8700 + 3900, 100 + 300 + 100),
        # workers' Pss [10000, 12000, 13000, 20000, 40000]: ranks 3, 5, 5
        worker_pss=Summary(13000, 40000, 40000, 95000, 5),
        worker_uss=Summary(10100, 36000, 36000, 80100, 5),
        swap=1536 + 256,
        swap_pss=1280 + 128,
    )
    check_groups(samples, {"systemd": FPM_HOST["systemd"], "php-fpm8.2": fpm})
    check_exporter(samples, scanned=7)


def test_two_masters_running_pool_www(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "fpm-two-masters", BY_COMM)
    check_groups(
        samples,
        {
            "php-fpm:master": Group(
                2, 6000 + 5000, 2000 + 1800, 38000, (3800, 7000, 200), NO_WORKERS, NO_WORKERS
            ),
            "php-fpm:www@/etc/php/8.2/fpm/php-fpm.conf": Group(
                1, 10000, 8000, 30000, (8000, 1900, 100), one(10000), one(8000)
            ),
            "php-fpm:www@/etc/php/7.4/fpm/php-fpm.conf": Group(
                2,
                pss=9000 + 11000,
                uss=7000 + 9000,
                rss=56000,
                split=(16000, 3900, 100),
                worker_pss=Summary(9000, 11000, 11000, 20000, 2),
                worker_uss=Summary(7000, 9000, 9000, 16000, 2),
            ),
        },
    )
    check_exporter(samples, scanned=5)


# ------------------------------------------------------------ kernel shapes


def test_old_kernel_sums_smaps_mappings(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "old-kernel", BY_COMM)
    check_groups(
        samples,
        {
            "nginx": Group(
                2,
                pss=(450 + 2000 + 120) + (450 + 40 + 3000),
                uss=2000 + (40 + 3000),
                rss=(900 + 2000 + 1200) + (900 + 40 + 3000),
                split=None,  # smaps has no Pss_Anon/Pss_File/Pss_Shmem
                worker_pss=Summary(2570, 3490, 3490, 6060, 2),
                worker_uss=Summary(2000, 3040, 3040, 5040, 2),
                swap=100,
                swap_pss=100,
            )
        },
    )
    check_exporter(samples, scanned=2)


def test_odd_comm_names(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "odd-comms", BY_COMM)
    check_groups(
        samples,
        {
            "(sd-pam)": Group(1, 500, 400, 3000, (400, 100, 0), one(500), one(400)),
            "a) b": Group(1, 700, 600, 2000, (600, 100, 0), one(700), one(600)),
            "tmux: server": Group(1, 2500, 2100, 5000, (2000, 500, 0), one(2500), one(2100)),
            "two\nlines": Group(1, 300, 200, 1000, (200, 100, 0), one(300), one(200)),
        },
    )
    check_exporter(samples, scanned=4)


SSHD = Group(1, 2000, 1200, 9000, (1200, 800, 0), one(2000), one(1200))
KTHREAD = Group(1, 0, 0, 0, (0, 0, 0), NO_WORKERS, NO_WORKERS)


def test_kernel_threads_are_left_out_by_the_built_in_rule(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "kernel-threads", BY_COMM)
    check_groups(samples, {"sshd": SSHD})
    check_exporter(samples, scanned=3)


def test_kernel_threads_a_comm_rule_names_are_counted_with_no_memory(tmp_path: Path) -> None:
    # As process-exporter: an explicit comm rule groups kernel threads; their
    # smaps_rollup (ESRCH on a live host) is never read.
    config = """
children: false
process_names:
  - name: "{{.Comm}}"
    comm: [kthreadd, kworker/0:1-events, sshd]
"""
    samples = once(tmp_path, TREES / "kernel-threads", config)
    check_groups(samples, {"sshd": SSHD, "kthreadd": KTHREAD, "kworker/0:1-events": KTHREAD})
    check_exporter(samples, scanned=3)


def test_kernel_threads_join_kthreadd_with_children(tmp_path: Path) -> None:
    config = """
process_names:
  - name: "{{.Comm}}"
    comm: [kthreadd, sshd]
"""
    samples = once(tmp_path, TREES / "kernel-threads", config)
    check_groups(samples, {"sshd": SSHD, "kthreadd": replace(KTHREAD, processes=2)})


def test_zombie_counts_as_a_process_with_no_memory(tmp_path: Path) -> None:
    config = """
process_names:
  - name: "{{.Comm}}"
    comm: [worker]
"""
    samples = once(tmp_path, TREES / "zombie", config)
    check_groups(
        samples,
        {
            # the zombie adds a process, no bytes, and no worker
            "worker": Group(
                2, 5000, 4000, 8000, (4000, 1000, 0), one(5000), one(4000), swap=64, swap_pss=64
            )
        },
    )
    check_exporter(samples, scanned=2)


# ------------------------------------------------------------- read errors

APP_ONLY = {"app": Group(1, 3000, 2500, 4000, (2500, 500, 0), one(3000), one(2500))}


def test_vanished_process_is_left_out(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "vanished", BY_COMM)
    check_groups(samples, APP_ONLY)
    check_exporter(samples, scanned=2, vanished=1)


def test_malformed_rollup_is_left_out(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "malformed", BY_COMM)
    check_groups(samples, APP_ONLY)
    check_exporter(samples, scanned=2, parse=1)


@pytest.mark.live
def test_unreadable_smaps_counts_as_unreadable(tmp_path: Path) -> None:
    tree = tmp_path / "proc"
    shutil.copytree(TREES / "fpm-host", tree, symlinks=True)  # exe stays a link
    (tree / "102" / "smaps_rollup").chmod(0)  # the www worker with Pss 20000 kB
    samples = once(tmp_path, tree, BY_COMM, unprivileged=True)
    assert samples[("pss_exporter_read_errors_total", frozenset({("reason", "permission")}))], (
        "the exporter read a mode 000 file: it still has privileges"
    )
    www = Group(
        3,
        unreadable=1,
        pss=10000 + 40000,
        uss=8000 + 36000,
        rss=30000 + 50000,
        split=(8000 + 36000, 1900 + 3900, 200),
        worker_pss=Summary(10000, 40000, 40000, 50000, 2),
        worker_uss=Summary(8000, 36000, 36000, 44000, 2),
        swap=512 + 1024,
        swap_pss=256 + 1024,
        workers=3,  # the unreadable one is a worker too, its memory unknown
    )
    check_groups(samples, {**FPM_HOST, "php-fpm:www": www})
    check_exporter(samples, scanned=7, permission=1)


# ---------------------------------------------------------------- max_groups

# overflow tree: comm -> its one process's values (kB)
OVERFLOW = {
    name: Group(
        processes=1,
        pss=1000 * i,
        uss=1000 * i - 100,
        rss=2000 * i,
        split=(1000 * i - 100, 100, 0),
        worker_pss=one(1000 * i),
        worker_uss=one(1000 * i - 100),
    )
    for i, name in enumerate(("alpha", "bravo", "charlie", "delta", "echo"), 1)
}


def test_max_groups_overflow_into_other(tmp_path: Path) -> None:
    samples = once(tmp_path, TREES / "overflow", "max_groups: 3\n" + BY_COMM)
    # Which three get a place depends on the order the PIDs are listed in.
    admitted = groups_in(samples) - {"other"}
    assert len(admitted) == 3 and admitted < set(OVERFLOW), groups_in(samples)
    assert "other" in groups_in(samples)
    left = sorted((OVERFLOW[g] for g in set(OVERFLOW) - admitted), key=lambda g: g.pss)
    small, big = left
    other = Group(
        2,
        pss=small.pss + big.pss,
        uss=small.uss + big.uss,
        rss=small.rss + big.rss,
        split=(small.uss + big.uss, 100 + 100, 0),  # Pss_Anon equals USS in this tree
        worker_pss=Summary(small.pss, big.pss, big.pss, small.pss + big.pss, 2),
        worker_uss=Summary(small.uss, big.uss, big.uss, small.uss + big.uss, 2),
    )
    check_groups(samples, {**{g: OVERFLOW[g] for g in admitted}, "other": other})
    check_exporter(samples, scanned=5)
    assert samples[("pss_exporter_groups_overflow_total", frozenset())] == 2
