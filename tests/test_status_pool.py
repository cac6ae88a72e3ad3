"""php-fpm's status pool (pm.status_listen): php-fpm >= 8.0 forks a pool of
its own, "pool POOL_status", to answer POOL's status page. It is no pool: its
process takes POOL's group, is no worker and is never POOL's reference for
the status query or the config, nor a peak of the pool's (classify._status_pools,
classify.FpmView.is_worker, sources.pool_refs, peaks.PeaksSource).
The same with a real php-fpm: test_phpfpm_live.py."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from exporter.classify import Grouper
from exporter.collector import sample
from exporter.grouping import FpmMaster, FpmRole
from exporter.peaks import PeaksSource
from exporter.procfs import Memory, Stat
from exporter.snapshot import aggregate
from exporter.sources import Cycle, pool_refs
from exporter.tracking import Proc

MiB = 1024 * 1024

CONF = "/etc/php/8.2/fpm/php-fpm.conf"


class Trust:
    """Every master trusted, running as root; configured: what its config names."""

    def __init__(self, configured: list[tuple[str, int]]) -> None:
        self._configured = configured

    def trust(self, masters: dict[int, int]) -> dict[int, int]:
        return dict.fromkeys(masters, 0)

    def configured(self, masters: dict[int, FpmMaster]) -> Iterable[tuple[str, int]]:
        return self._configured


def fpm(workers: dict[int, str], configured: list[tuple[str, int]]) -> dict[int, str]:
    """{pid: group} after one grouping of master 10 and its workers {pid: pool}."""
    procs = [Proc(10, Stat("php-fpm8.2", "S", 1, 0, 5), None, FpmRole(True, CONF), True)] + [
        Proc(pid, Stat("php-fpm8.2", "S", 10, 0, 6), None, FpmRole(False, pool), True)
        for pid, pool in workers.items()
    ]
    procs, groups, view = Grouper(100, Trust(configured)).group(procs)
    refs = pool_refs(Cycle(0.0, procs, groups, view, {}))
    for ref in refs:  # a reference is a worker of the pool it names, never a status process
        assert ref.worker_pid not in view.status and workers[ref.worker_pid] == ref.pool
    return {p.pid: g for p, g in zip(procs, groups)} | {-pid: "status" for pid in view.status}


def test_the_status_process_counts_with_the_pool_it_serves() -> None:
    workers = {11: "crawl", 12: "crawl", 13: "crawl_status"}
    for configured in ([], [("crawl", 10)]):  # before the first config load (once), and after
        assert fpm(workers, configured) == {
            10: "php-fpm:master",
            11: "php-fpm:crawl",
            12: "php-fpm:crawl",
            13: "php-fpm:crawl",
            -13: "status",
        }


def test_an_idle_pools_status_process_takes_its_configured_pools_group() -> None:
    assert fpm({13: "crawl_status"}, [("crawl", 10)]) == {
        10: "php-fpm:master",
        13: "php-fpm:crawl",
        -13: "status",
    }


def test_a_configured_pool_named_like_a_status_pool_is_a_pool() -> None:
    workers = {11: "www", 12: "www_status"}
    assert fpm(workers, [("www", 10), ("www_status", 10)]) == {
        10: "php-fpm:master",
        11: "php-fpm:www",
        12: "php-fpm:www_status",
    }


def test_a_status_like_name_without_its_pool_is_a_pool() -> None:
    assert fpm({12: "shop_status"}, []) == {10: "php-fpm:master", 12: "php-fpm:shop_status"}


def test_the_status_process_is_no_worker_and_leaves_no_peak(tmp_path: Path) -> None:
    """With storm's rule (a trusted master's child is its worker whatever its
    title) the status process is still no worker: the pool's worker count,
    its distributions and its peaks (capacity) leave it out, while it counts
    in the pool's processes and sums. Its VmHWM is the largest here, so a
    peak taken from it would show."""
    procs = [Proc(10, Stat("php-fpm8.2", "S", 1, 0, 5), None, FpmRole(True, CONF), True)]
    for pid, pool, hwm, uss in (
        (11, "crawl", 30, 2),
        (12, "crawl", 20, 3),
        (13, "crawl_status", 90, 4),
    ):
        p = Proc(pid, Stat("php-fpm8.2", "S", 10, 0, 6), None, FpmRole(False, pool), True)
        p.memory = Memory(10 * MiB, 6 * MiB, uss * MiB, 0, 0, None, None, None)
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_bytes(b"VmHWM:\t%d kB\n" % (hwm * 1024))
        procs.append(p)
    procs, groups, view = Grouper(100, Trust([("crawl", 10)])).group(procs)
    samples = [sample(p, g, False, view.is_worker(p)) for p, g in zip(procs, groups)]
    crawl = {g.name: g for g in aggregate([s for s in samples if s is not None])}["php-fpm:crawl"]
    assert (crawl.processes, crawl.workers, crawl.worker_uss.count) == (3, 2, 2)
    assert crawl.uss == 9 * MiB  # the status process's memory is the pool's
    assert crawl.worker_uss.quantile(1.0) == 3 * MiB
    errors: list[str] = []
    peaks = PeaksSource(str(tmp_path), 600.0, errors.append).collect(
        Cycle(0.0, procs, groups, view, {})
    )
    # peak USS = VmHWM - (RSS - USS) now: 30 - 8 and 20 - 7; not 90 - 6
    assert set(peaks) == {"php-fpm:crawl"} and peaks["php-fpm:crawl"].peaks == (13 * MiB, 22 * MiB)
    assert errors == []


def test_a_status_pools_status_pool_is_grouped_before_and_after_the_config_loads() -> None:
    """Review finding 1: running www, www_status (a pool with pm.status_listen)
    and www_status_status (its status pool) before the master's config is read
    raised KeyError in the grouping, every cycle, so the config was never read.
    A status pool is never served through another status pool: until the
    config says www_status is a pool, www_status_status is a pool of its own."""
    workers = {11: "www", 12: "www_status", 13: "www_status_status"}
    assert fpm(workers, []) == {
        10: "php-fpm:master",
        11: "php-fpm:www",
        12: "php-fpm:www",
        13: "php-fpm:www_status_status",
        -12: "status",
    }
    assert fpm(workers, [("www", 10), ("www_status", 10)]) == {
        10: "php-fpm:master",
        11: "php-fpm:www",
        12: "php-fpm:www_status",
        13: "php-fpm:www_status",
        -13: "status",
    }
