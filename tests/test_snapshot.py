"""The Snapshot and what is computed into it: one rule for each per-group
figure (quantiles, sums), and a module that depends on no source."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.procfs import ZERO_MEMORY, Memory, parse_smaps
from exporter.snapshot import Sample, Snapshot, aggregate, distribution, optional_sum
from exporter.top import rows

from conftest import FIXTURES, ROOT

MiB = 1 << 20


def memory(pss: int, split: tuple[int, int, int] | None) -> Memory:
    anon, file, shmem = split if split else (None, None, None)
    return Memory(2 * pss, pss, pss // 2, 0, 0, anon, file, shmem)


def test_one_quantile_lookup_for_the_snapshot_and_top() -> None:
    dist = distribution([5 * MiB, 1 * MiB, 9 * MiB, 3 * MiB])
    assert (dist.quantile(0.5), dist.quantile(0.95), dist.quantile(1.0)) == (
        3 * MiB,
        9 * MiB,
        9 * MiB,
    )
    assert dist.quantile(0.9) is None  # not a quantile the snapshot keeps
    assert distribution([]).quantile(0.5) is None
    groups = aggregate([Sample("g", memory(v, None), True) for v in (5, 1, 9, 3)])
    snap = Snapshot(groups, None, None, 0.0, 0.0, 4, {}, 0)
    assert rows(snap)[0][6:8] == ("3 B", "9 B")  # MED PSS, MAX PSS


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1, 2, 3], 6), ([], None), ([1, None, 3], None), ([None], None), ([0], 0)],
)
def test_optional_sum_is_none_unless_every_value_is_there(
    values: list[int | None], expected: int | None
) -> None:
    assert optional_sum(values) == expected


def test_a_group_split_is_absent_when_one_process_lacks_it() -> None:
    """A sum over some of a group's processes would pass for the whole group
    (one process read through full smaps, which has no split): it is left
    out, as the host accounting leaves it out."""
    (mixed,) = aggregate(
        [
            Sample("g", memory(8 * MiB, (5 * MiB, 2 * MiB, 1 * MiB)), True),
            Sample("g", memory(4 * MiB, None), True),
        ]
    )
    assert (mixed.pss, mixed.pss_anon, mixed.pss_file, mixed.pss_shmem) == (
        12 * MiB,
        None,
        None,
        None,
    )
    # A zombie holds nothing, its split included: it hides nothing.
    (with_zombie,) = aggregate(
        [
            Sample("g", memory(8 * MiB, (5 * MiB, 2 * MiB, 1 * MiB)), True),
            Sample("g", ZERO_MEMORY, False),
        ]
    )
    assert (with_zombie.pss_anon, with_zombie.pss_file, with_zombie.pss_shmem) == (
        5 * MiB,
        2 * MiB,
        1 * MiB,
    )
    # Unreadable processes (no memory at all) add nothing and hide nothing.
    (unread,) = aggregate([Sample("g", None, True, unreadable=True)])
    assert unread.pss_anon is None


def test_an_exiting_process_keeps_its_group_split() -> None:
    """A worker that exits between the stat and the smaps_rollup read (or a
    zombie caught as such only then) has an empty rollup. Its None split hid
    the pool's pss_{anon,file,shmem} series for the cycle, at every recycle."""
    exiting = parse_smaps((FIXTURES / "bytes" / "smaps_rollup-empty").read_bytes())
    (pool,) = aggregate(
        [
            Sample("g", memory(8 * MiB, (5 * MiB, 2 * MiB, 1 * MiB)), True),
            Sample("g", exiting, True),
        ]
    )
    assert (pool.pss_anon, pool.pss_file, pool.pss_shmem) == (5 * MiB, 2 * MiB, 1 * MiB)


@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        ("exporter.snapshot", "exporter.phpfpm"),  # the php-fpm source: threads, sockets
        ("exporter.metrics", "exporter.phpfpm"),
        ("exporter.fastcgi", "exporter.config"),
        ("exporter.explain", "exporter.top"),
        ("exporter.explain", "exporter.collector"),
    ],
)
def test_modules_do_not_load_what_they_do_not_need(module: str, must_not_load: str) -> None:
    code = f"import sys, {module}; print({must_not_load!r} in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"{module} loads {must_not_load}"


def test_workers_count_every_worker_whether_its_memory_is_known_or_not() -> None:
    """The distributions hold the workers whose memory is known; the worker
    count holds every worker: one unreadable, one deferred before its first
    read. Neither the master nor the zombie is one."""
    (g,) = aggregate(
        [
            Sample("g", memory(8 * MiB, None), True),
            Sample("g", memory(4 * MiB, None), True, stale=True),  # deferred, read before
            Sample("g", None, True, stale=True),  # deferred, never read
            Sample("g", None, True, unreadable=True),
            Sample("g", memory(2 * MiB, None), False),  # a master
            Sample("g", ZERO_MEMORY, False),  # a zombie
        ]
    )
    assert (g.processes, g.workers, g.worker_pss.count, g.worker_uss.count) == (6, 4, 2, 2)
