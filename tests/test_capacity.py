"""The capacity formulas, the worker peaks and their window, the status-page
parser and the top table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from exporter import explain, top
from exporter import peaks as peaks_module
from exporter.accounting import Accounting, ProcessTotals
from exporter.capacity import (
    HOST,
    MEMORY_LIMIT,
    OBSERVED_PEAK,
    PoolDemand,
    PoolPeaks,
    capacities,
)
from exporter.cgroup import CgroupPaths, CgroupState, combine, memory_cgroup, read_state
from exporter.classify import FpmView
from exporter.config import ConfigError, PhpFpmConfig, load_config
from exporter.grouping import FpmRole
from exporter.peaks import PeaksSource, parse_vmhwm, peak_uss
from exporter.phpfpm import PoolInfo, PoolStatus, parse_status
from exporter.phpfpm_config import PoolSettings
from exporter.procfs import Memory, ParseError, Stat
from exporter.snapshot import Distribution, GroupStats, Snapshot, pool_stats
from exporter.sources import Cycle
from exporter.top import COLUMNS, human, render
from exporter.tracking import Proc

MiB = 1 << 20
GiB = 1 << 30


def peaks(*mib: float, baseline: float | None = 0.5) -> PoolPeaks:
    values = tuple(sorted(int(m * MiB) for m in mib))
    return PoolPeaks(values, None if baseline is None else int(baseline * MiB), 3600.0, 3600.0)


def pool(
    group: str = "php-fpm:www",
    pss: int = 0,
    uss: int = 0,
    worker_peaks: PoolPeaks | None = None,
    max_children: int | None = None,
    memory_limit: int | None = None,
    domain: str = HOST,
    headroom: int | None = None,
) -> PoolDemand:
    return PoolDemand(group, pss, uss, worker_peaks, max_children, memory_limit, domain, headroom)


def test_worked_example_of_the_docs() -> None:
    """docs/phpfpm-capacity.md's example, figure for figure: 20 workers, whose
    peaks over the hour are 19 of 40 MiB and one of 61 MiB; idle now."""
    www = pool(
        pss=120 * MiB,
        uss=20 * MiB,
        worker_peaks=peaks(*[40] * 19, 61, baseline=1),
        max_children=50,
        memory_limit=128 * MiB,
    )
    cap = capacities([www], mem_available=3 * GiB, reserve=0.1, sizing="p95")["php-fpm:www"]
    assert cap.shared == 100 * MiB
    assert cap.room == (120 + 3072) * MiB
    assert cap.budget == int((120 + 3072) * MiB * 0.9)
    peak, limit = cap.bases[OBSERVED_PEAK], cap.bases[MEMORY_LIMIT]
    assert peak.worker_size == 40 * MiB  # nearest rank: the 19th of 20
    assert peak.projected == 100 * MiB + 50 * 40 * MiB
    assert peak.recommended == (cap.budget - 100 * MiB) // (40 * MiB) == 69
    assert limit.worker_size == 129 * MiB
    assert limit.projected == 100 * MiB + 50 * 129 * MiB
    assert limit.recommended == 21
    assert capacities([www], 3 * GiB, 0.1, "max")["php-fpm:www"].worker_size == 61 * MiB


def test_idle_pool_is_sized_by_its_peaks_not_its_idle_uss() -> None:
    """The pool of the issue: idle workers of 0.4 MiB whose requests peaked
    at 30 MiB. Their USS now plays no part; only the peaks and shared do."""
    idle = pool(pss=40 * MiB, uss=8 * MiB, worker_peaks=peaks(*[30] * 20, baseline=0.4))
    busy = pool(pss=640 * MiB, uss=608 * MiB, worker_peaks=peaks(*[30] * 20, baseline=0.4))
    # The same host: MemAvailable is lower by what the busy workers hold.
    at_idle = capacities([idle], 2 * GiB + 600 * MiB, 0.1, "p95")["php-fpm:www"]
    under_load = capacities([busy], 2 * GiB, 0.1, "p95")["php-fpm:www"]
    assert (
        at_idle.recommended
        == under_load.recommended
        == (int(2688 * MiB * 0.9) - 32 * MiB) // (30 * MiB)
    )


def test_budgets_of_one_cgroup_add_up_to_its_room() -> None:
    """Two pools in one 720 MiB cgroup (the issue: 628 + 613 MiB were given
    before), and a third group in the same cgroup holding 100 MiB: the
    budgets add up to the room left, split by peak demand."""
    usage = 100 * MiB + 60 * MiB + 50 * MiB  # other group + pool a + pool b
    headroom = 720 * MiB - usage
    a = pool("php-fpm:a", 60 * MiB, 40 * MiB, peaks(20, 26), 20, domain="/cg", headroom=headroom)
    b = pool("php-fpm:b", 50 * MiB, 30 * MiB, peaks(10), 20, domain="/cg", headroom=headroom)
    caps = capacities([a, b], 8 * GiB, 0.1, "max")
    room = 720 * MiB - 100 * MiB  # the other group's memory taken out first
    assert caps["php-fpm:a"].room == caps["php-fpm:b"].room == room
    budgets = caps["php-fpm:a"].budget, caps["php-fpm:b"].budget
    assert budgets[0] is not None and budgets[1] is not None
    assert sum(budgets) <= room * 0.9
    assert room * 0.9 - sum(budgets) < 2  # rounding down only
    # In proportion to demand: shared + min(max_children, what fits alone) x peak.
    demand_a, demand_b = 20 * MiB + 20 * 26 * MiB, 20 * MiB + 20 * 10 * MiB
    assert (caps["php-fpm:a"].demand, caps["php-fpm:b"].demand) == (demand_a, demand_b)
    assert budgets[0] == int(room * 0.9) * demand_a // (demand_a + demand_b)
    # Both recommendations honoured at once fit in the room.
    used = sum(
        c.shared + c.recommended * c.worker_size
        for c in caps.values()
        if c.recommended is not None and c.worker_size is not None
    )
    assert used <= room * 0.9


def test_host_pools_share_memavailable_and_cgroups_are_apart() -> None:
    """On the host, every pool used to get the whole MemAvailable; now the
    host's pools share it, and a pool in a limited cgroup is its own domain."""
    a = pool("php-fpm:a", 10 * MiB, 5 * MiB, peaks(10), 10)
    b = pool("php-fpm:b", 10 * MiB, 5 * MiB, peaks(10), 10)
    c = pool("php-fpm:c", 10 * MiB, 5 * MiB, peaks(10), 10, domain="/c", headroom=100 * MiB)
    caps = capacities([a, b, c], 1 * GiB, 0.0, "p95")
    host_room = 1 * GiB + 20 * MiB
    assert caps["php-fpm:a"].budget == caps["php-fpm:b"].budget == host_room // 2
    assert caps["php-fpm:c"].room == 110 * MiB and caps["php-fpm:c"].budget == 110 * MiB


def test_a_huge_max_children_claims_no_more_than_the_whole_room() -> None:
    greedy = pool("php-fpm:a", 0, 0, peaks(10), 100_000, domain="/cg", headroom=100 * MiB)
    modest = pool("php-fpm:b", 0, 0, peaks(10), 5, domain="/cg", headroom=100 * MiB)
    caps = capacities([greedy, modest], None, 0.0, "p95")
    assert caps["php-fpm:a"].demand == 100 * MiB  # 10 workers fit the room alone
    assert caps["php-fpm:b"].budget == 100 * MiB * 50 // 150


def test_unknowns_stay_unknown() -> None:
    (cap,) = capacities(
        [pool(pss=10 * MiB, uss=4 * MiB, worker_peaks=PoolPeaks((), None, 1, 0))], None, 0.1, "p95"
    ).values()
    assert (cap.shared, cap.worker_size, cap.projected, cap.budget, cap.recommended) == (
        6 * MiB,
        None,
        None,
        None,
        None,
    )
    assert cap.bases[MEMORY_LIMIT].worker_size is None  # no memory_limit (-1)


def test_recommended_never_negative() -> None:
    big = pool(pss=900 * MiB, uss=100 * MiB, worker_peaks=peaks(10), max_children=4)
    (cap,) = capacities([big], 0, 0.5, "p95").values()
    assert cap.budget == 450 * MiB
    assert cap.recommended == 0  # the shared part alone exceeds the budget


# ----------------------------------------------------------------- peaks


STATUS = b"Name:\tphp-fpm8.2\nVmPeak:\t  300000 kB\nVmHWM:\t   30720 kB\nVmRSS:\t 10240 kB\n"


def test_parse_vmhwm() -> None:
    assert parse_vmhwm(STATUS) == 30 * MiB
    # A title cannot forge it: the Name line is not a VmHWM line; the last
    # line may end without a newline.
    assert parse_vmhwm(b"Name:\tVmHWM:\t1 kB\nVmHWM:\t2 kB") == 2048
    for bad in (
        b"Name:\tx\n",
        b"VmHWM:\t12 MB\n",
        b"VmHWM:\t-1 kB\n",
        b"VmHWM: 99999999999999999999 kB\n",
    ):
        with pytest.raises(ParseError):
            parse_vmhwm(bad)


def test_peak_uss_is_vmhwm_less_what_is_shared_now() -> None:
    memory = Memory(
        rss=10 * MiB,
        pss=4 * MiB,
        uss=1 * MiB,
        swap=0,
        swap_pss=0,
        pss_anon=None,
        pss_file=None,
        pss_shmem=None,
    )
    assert peak_uss(30 * MiB, memory) == 21 * MiB  # 30 - (10 - 1)
    assert peak_uss(5 * MiB, memory) == 1 * MiB  # never below the USS now


class FakeWorkers:
    """php-fpm workers in a fixture procfs tree: their status files say
    their VmHWM, their Proc their latest smaps values."""

    def __init__(self, root: Path, group: str = "php-fpm:www") -> None:
        self.root = root
        self.group = group
        self.procs: dict[int, Proc] = {}
        self.errors: list[str] = []
        self.source = PeaksSource(str(root), 600.0, self.errors.append)
        self.read: set[int] = set()

    def set(self, pid: int, hwm_mib: float, rss_mib: float, uss_mib: float, start: int = 1) -> None:
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        (d / "status").write_bytes(b"VmHWM:\t%d kB\n" % int(hwm_mib * 1024))
        p = self.procs.get(pid)
        if p is None or p.starttime != start:
            p = Proc(pid, Stat("php-fpm8.2", "S", 1, 0, start), None, FpmRole(False, "www"), True)
            self.procs[pid] = p
        rss, uss = int(rss_mib * MiB), int(uss_mib * MiB)
        p.memory = Memory(rss, uss + (rss - uss) // 4, uss, 0, 0, None, None, None)
        self.read.add(pid)  # its smaps read by the next collection

    def exit(self, pid: int) -> None:
        del self.procs[pid]

    def collect(self, now: float) -> PoolPeaks:
        procs = list(self.procs.values())
        for p in procs:
            if p.pid in self.read:
                p.read_at = now  # as the scheduler leaves a process it read
        self.read.clear()
        view = FpmView(frozenset(self.procs), {}, {}, 0)
        cycle = Cycle(now, procs, [self.group] * len(procs), view, self.procs)
        return self.source.collect(cycle)[self.group]


def test_respawned_workers_keep_their_pools_window(tmp_path: Path) -> None:
    """pm.max_requests respawns a worker: the peak of the one that exited
    stays until it has not been seen for the window, then goes."""
    w = FakeWorkers(tmp_path)
    w.set(100, hwm_mib=40, rss_mib=12, uss_mib=2)
    w.set(101, hwm_mib=20, rss_mib=12, uss_mib=2)
    assert w.collect(0.0).peaks == (10 * MiB, 30 * MiB)
    w.exit(100)
    w.set(102, hwm_mib=11, rss_mib=11, uss_mib=1)  # the respawned one, fresh
    assert w.collect(10.0).peaks == (1 * MiB, 10 * MiB, 30 * MiB)
    assert w.collect(600.0).peaks == (1 * MiB, 10 * MiB, 30 * MiB)
    window = w.collect(611.0)  # 100 last seen at 0: gone
    assert window.peaks == (1 * MiB, 10 * MiB)
    assert window.baseline == 1 * MiB and window.observed == 600.0
    # A PID reused by a new process (another start time) is another worker.
    w.set(101, hwm_mib=12, rss_mib=12, uss_mib=2, start=2)
    assert w.collect(612.0).peaks == (1 * MiB, 2 * MiB, 10 * MiB)


def test_entries_are_bounded_per_pool_and_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pm.max_requests = 1 under load: one worker a request. The least
    recently seen go first, per pool beyond MAX_WORKERS, in all beyond
    MAX_ENTRIES."""
    monkeypatch.setattr(peaks_module, "MAX_WORKERS", 5)
    monkeypatch.setattr(peaks_module, "MAX_ENTRIES", 8)
    w = FakeWorkers(tmp_path)
    for pid in range(10, 17):  # 7 workers, seen one a cycle
        w.set(pid, hwm_mib=pid, rss_mib=1, uss_mib=1)
        w.collect(float(pid))
        w.exit(pid)
    assert w.collect(20.0).peaks == tuple(m * MiB for m in range(12, 17))
    other = FakeWorkers(tmp_path, group="php-fpm:other")
    other.source = w.source  # one exporter, two pools
    for pid in range(30, 34):
        other.set(pid, hwm_mib=2, rss_mib=1, uss_mib=1)
    assert len(other.collect(21.0).peaks) == 4
    assert w.source.collect(Cycle(22.0, [], [], FpmView(frozenset(), {}, {}, 0), {}))[
        "php-fpm:www"
    ].peaks == tuple(m * MiB for m in range(13, 17))  # 8 in all: www's oldest went


def test_vmhwm_is_read_with_the_smaps_only(tmp_path: Path) -> None:
    """An idle pool costs no /proc/PID/status read a cycle: VmHWM only grows,
    so it is read when the worker's smaps is (statm changed, max_age), and a
    worker not read this cycle keeps its entry, seen now."""
    w = FakeWorkers(tmp_path)
    w.set(7, hwm_mib=40, rss_mib=12, uss_mib=2)
    assert w.collect(0.0).peaks == (30 * MiB,)
    (tmp_path / "7" / "status").write_bytes(b"VmHWM:\tgarbage\n")  # an error if read
    assert w.collect(1.0).peaks == (30 * MiB,)
    assert w.errors == []
    w.set(7, hwm_mib=50, rss_mib=12, uss_mib=2)  # read again: the new peak counts
    assert w.collect(2.0).peaks == (40 * MiB,)
    assert w.collect(602.0).peaks == (40 * MiB,)  # last seen at 2: within the window


def test_unreadable_status_loses_that_worker_for_the_cycle_only(tmp_path: Path) -> None:
    w = FakeWorkers(tmp_path)
    w.set(7, hwm_mib=40, rss_mib=12, uss_mib=2)
    w.set(8, hwm_mib=20, rss_mib=12, uss_mib=2)
    (tmp_path / "8" / "status").write_bytes(b"VmHWM:\tgarbage\n")
    assert w.collect(0.0).peaks == (30 * MiB,)
    assert w.errors == ["parse"]
    # Exited between its smaps read and this read: not an error, its entry stays.
    (tmp_path / "7" / "status").unlink()
    assert w.collect(1.0).peaks == (30 * MiB,)
    assert w.errors == ["parse", "parse"]  # 8 is still garbled


def test_recommendation_at_idle_is_that_under_load(tmp_path: Path) -> None:
    """The stability property: the same shaped traffic, then idle. Under load
    four workers hold 10 to 26 MiB; at idle they hold 0.5 MiB, their VmHWM
    keeps the peaks; the cgroup's usage falls by what they freed."""
    w = FakeWorkers(tmp_path)
    limit, other = 720 * MiB, 50 * MiB
    config = PhpFpmConfig(sizing="max")

    def recommendation(now: float, workers_uss: list[float], hwm: list[float]) -> int | None:
        for pid, (u, h) in enumerate(zip(workers_uss, hwm), start=10):
            w.set(pid, hwm_mib=h, rss_mib=u + 8, uss_mib=u)
        window = w.collect(now)
        pss = sum(int((u + 2) * MiB) for u in workers_uss)
        uss = sum(int(u * MiB) for u in workers_uss)
        dist = Distribution((), uss, len(workers_uss))
        g = GroupStats(
            "php-fpm:www",
            4,
            0,
            0,
            pss,
            pss,
            uss,
            0,
            0,
            None,
            None,
            None,
            dist,
            dist,
            len(workers_uss),
        )
        state = CgroupState(other + pss, limit, None, limit - other - pss, "/cg")
        info = PoolInfo("php-fpm:www", None, 10, None, False)
        (stats,) = pool_stats(
            (info,), (g,), 4 * GiB, {"php-fpm:www": state}, {"php-fpm:www": window}, config
        )
        return stats.capacity.recommended

    loaded = [10.0, 18.0, 26.0, 14.0]
    under_load = recommendation(0.0, loaded, [u + 8 for u in loaded])
    at_idle = recommendation(30.0, [0.5] * 4, [u + 8 for u in loaded])
    assert under_load is not None and at_idle is not None
    assert abs(at_idle - under_load) <= 0.15 * under_load
    assert at_idle == (int((limit - other) * 0.9) - 8 * MiB) // (26 * MiB)


STATUS_JSON = (
    b'{"pool":"www","process manager":"dynamic","start time":1700000000,'
    b'"start since":42,"accepted conn":12,"listen queue":3,"max listen queue":5,'
    b'"listen queue len":511,"idle processes":1,"active processes":4,'
    b'"total processes":5,"max active processes":5,"max children reached":2,'
    b'"slow requests":1}'
)


def test_parse_status_page() -> None:
    assert parse_status(STATUS_JSON) == PoolStatus(
        accepted_conn=12,
        listen_queue=3,
        max_listen_queue=5,
        idle=1,
        active=4,
        total=5,
        max_active=5,
        max_children_reached=2,
        slow_requests=1,
    )


@pytest.mark.parametrize(
    "body",
    [b"pool: www", b"[1, 2]", b'{"pool": "www"}', STATUS_JSON.replace(b"12", b'"12"'), b"\xff"],
)
def test_parse_status_rejects_what_is_not_a_status_page(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_status(body)


def group(name: str, pss: int, uss: int, quantiles: tuple) -> GroupStats:
    dist = Distribution(quantiles, uss, 2)
    return GroupStats(name, 2, 0, 0, pss * 2, pss, uss, 0, 0, None, None, None, dist, dist, 2)


def test_top_table_sorts_by_pss_and_shows_pool_capacity() -> None:
    groups = (
        group(
            "php-fpm:www", 100 * MiB, 60 * MiB, ((0.5, 30 * MiB), (0.95, 30 * MiB), (1.0, 31 * MiB))
        ),
        group("bash", 300 * MiB, 10 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),
    )
    info = PoolInfo("php-fpm:www", None, 8, None, False)
    window = {"php-fpm:www": peaks(30, 30)}
    pools = pool_stats((info,), groups, 1 * GiB, {}, window, PhpFpmConfig())
    snap = Snapshot(groups, 2 * GiB, 1 * GiB, 0.0, 0.012, 10, {}, 0, pools=pools)
    lines = render(snap, width=200).splitlines()
    assert lines[0] == (
        "pss-exporter top: 2 groups, MemTotal 2.0 GiB, MemAvailable 1.0 GiB, collected in 12 ms"
    )
    assert lines[2].split() == " ".join(COLUMNS).split()
    assert lines[3].split()[0] == "bash"  # larger PSS first
    www = lines[4].split()
    budget_bytes = int((100 * MiB + 1 * GiB) * 0.9)
    assert www[0] == "php-fpm:www" and www[-2] == "8"
    assert www[-3:-2] == ["30.0MiB"] or www[-4:-2] == ["30.0", "MiB"]  # the peak worker size
    assert www[-1] == str((budget_bytes - 40 * MiB) // (30 * MiB))
    assert "\x1b" not in render(snap)  # no colour unless asked for a terminal
    assert render(snap, max_rows=1).splitlines()[-1] == "... 1 more groups"


def test_top_fits_80_columns_and_says_how_to_quit() -> None:
    long = "php-fpm:" + "x" * 120
    groups = (group(long, 100 * MiB, 60 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),)
    info = PoolInfo(long, None, 8, None, False)
    pools = pool_stats((info,), groups, 1 * GiB, {}, {long: peaks(30)}, PhpFpmConfig())
    snap = Snapshot(groups, 2 * GiB, 1 * GiB, 0.0, 0.012, 10, {}, 0, pools=pools)
    text = render(snap, width=80, interactive=True)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "q quits" in text
    row = text.splitlines()[3].split()
    assert row[-1] == str((int((100 * MiB + GiB) * 0.9) - 40 * MiB) // (30 * MiB))  # REC kept
    assert row[0].endswith("~")  # the name cut, marked


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (38.2 * MiB, "38.2 MiB")],
)
def test_human_sizes(n: float | None, text: str) -> None:
    assert human(n) == text


def test_a_pool_never_seen_busy_is_weighed_by_its_memory_limit() -> None:
    """An idle ondemand pool (no worker, no peak) beside a busy one: its share
    of the room follows PHP's bound, not zero."""
    idle = pool(
        "php-fpm:idle", max_children=3, memory_limit=128 * MiB, worker_peaks=peaks(baseline=None)
    )
    busy = pool("php-fpm:busy", 100 * MiB, 80 * MiB, peaks(30), 10)
    caps = capacities([idle, busy], 2 * GiB, 0.0, "p95")
    assert caps["php-fpm:idle"].demand == 3 * 128 * MiB
    assert caps["php-fpm:idle"].recommended is None  # no peak: no observed figure
    assert caps["php-fpm:idle"].bases[MEMORY_LIMIT].recommended == (
        caps["php-fpm:idle"].budget or 0
    ) // (128 * MiB)


def test_window_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("php_fpm: {window: 30m, sizing: max}\n")
    fpm = load_config(str(path)).php_fpm
    assert (fpm.window, fpm.sizing) == (1800.0, "max")
    assert load_config(None).php_fpm.window == 3600.0
    for bad, reason in (
        ("php_fpm: {window: 5s}\ncollection: {interval: 15s}\n", "from 15s to 7d"),
        ("php_fpm: {window: 3600}\n", "must be a duration"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=f"php_fpm.window: .*{reason}"):
            load_config(str(path))


def test_explain_pool_prints_the_derivation() -> None:
    """Two pools in one cgroup: the derivation names the domain, both pools,
    the window and the figures the exposition carries."""
    groups = (
        group("php-fpm:a", 60 * MiB, 40 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),
        group("php-fpm:b", 50 * MiB, 30 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),
    )
    dom = "/sys/fs/cgroup/memory/cg"  # the pools' own cgroup has the limit: the domain
    state = CgroupState(210 * MiB, 720 * MiB, None, 510 * MiB, dom, 210 * MiB, 720 * MiB)
    infos = tuple(PoolInfo(g, None, 20, None, False) for g in ("php-fpm:a", "php-fpm:b"))
    window = {"php-fpm:a": peaks(20, 26), "php-fpm:b": peaks(10)}
    pools = pool_stats(
        infos, groups, 8 * GiB, {"php-fpm:a": state, "php-fpm:b": state}, window, PhpFpmConfig()
    )
    cgroups = {"php-fpm:a": state, "php-fpm:b": state}
    snap = Snapshot(groups, 16 * GiB, 8 * GiB, 0.0, 0.0, 2, {}, 0, pools=pools, cgroups=cgroups)
    text = explain.render_pool(snap, "a", "p95", 0.1)
    cap = pools[0].capacity
    assert "memory domain: cgroup /sys/fs/cgroup/memory/cg: limit 720.0 MiB,\n  usage" in text
    assert "other groups and page cache in the cgroup: usage - pools' PSS = 100.0 MiB" in text
    assert f"= {human(cap.room)}" in text and "php-fpm:b" in text
    assert "2 workers in the window\n  (php_fpm.window 3600 s" in text
    assert f"floor((budget - shared) / worker size) = {cap.recommended}" in text
    data = json.loads(explain.render_pool_json(snap, "php-fpm:a", "p95", 0.1))
    assert data["budget_bytes"] == cap.budget
    assert [p["group"] for p in data["domain"]["pools"]] == ["php-fpm:a", "php-fpm:b"]
    assert sum(p["budget_bytes"] for p in data["domain"]["pools"]) <= cap.room
    with pytest.raises(ValueError, match="no php-fpm pool 'c' \\(pools: php-fpm:a, php-fpm:b\\)"):
        explain.find_pool(snap, "c")


def test_the_docs_show_what_explain_pool_prints() -> None:
    """docs/phpfpm-capacity.md's `explain --pool` block is the worked example's output."""
    d = Distribution((), 20 * MiB, 20)
    g = GroupStats(
        "php-fpm:www", 21, 0, 0, 0, 120 * MiB, 20 * MiB, 0, 0, None, None, None, d, d, 20
    )
    settings = PoolSettings("www", "static", 50, None, None, None, 0, None, None, 128 * MiB)
    info = PoolInfo("php-fpm:www", settings, 50, None, False)
    window = {"php-fpm:www": peaks(*[40] * 19, 61, baseline=1)}
    pools = pool_stats((info,), (g,), 3 * GiB, {}, window, PhpFpmConfig())
    snap = Snapshot((g,), 8 * GiB, 3 * GiB, 0.0, 0.0, 1, {}, 0, pools=pools)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "phpfpm-capacity.md").read_text()
    block = doc.split("```\npool php-fpm:www: ", 1)[1].split("```\n", 1)[0]
    assert explain.render_pool(snap, "www", "p95", 0.1) == "pool php-fpm:www: " + block


def test_explain_pool_shows_the_domains_usage_and_limit_not_the_pools_cgroup(
    tmp_path: Path,
) -> None:
    """Review finding 8b: pools a and b each in an unlimited child of the
    limited /php (the systemd and container layout). The domain lines showed
    pool a's own cgroup: limit "-", its 200 MiB usage, and "other" took both
    pools' PSS from it. The capacity figures (headroom, domain) stay."""
    root = tmp_path / "fs" / "cgroup"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")
    for rel, usage, limit in (("php", 450, "720"), ("php/a", 200, "max"), ("php/b", 150, "max")):
        (root / rel).mkdir()
        (root / rel / "memory.current").write_text(f"{usage * MiB}\n")
        (root / rel / "memory.max").write_text(limit if limit == "max" else f"{int(limit) * MiB}")
    states = {}
    for pool_name in ("a", "b"):
        cgroup = memory_cgroup(str(tmp_path), CgroupPaths(None, f"/php/{pool_name}"))
        assert cgroup is not None
        states[f"php-fpm:{pool_name}"] = combine([read_state(cgroup)])
    a = states["php-fpm:a"]
    assert (a.usage, a.limit, a.headroom) == (200 * MiB, None, 270 * MiB)
    assert a.domain == str(root / "php")
    groups = (
        group("php-fpm:a", 60 * MiB, 40 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),
        group("php-fpm:b", 50 * MiB, 30 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),
    )
    infos = tuple(PoolInfo(g, None, 20, None, False) for g in states)
    pools = pool_stats(infos, groups, 8 * GiB, states, {}, PhpFpmConfig())
    assert pools[0].capacity.room == (60 + 50 + 270) * MiB  # headroom + the pools' PSS
    snap = Snapshot(groups, 16 * GiB, 8 * GiB, 0.0, 0.0, 2, {}, 0, pools=pools, cgroups=states)
    text = explain.render_pool(snap, "a", "p95", 0.1)
    assert f"memory domain: cgroup {root}/php: limit 720.0 MiB,\n  usage 450.0 MiB," in text
    assert "other groups and page cache in the cgroup: usage - pools' PSS = 340.0 MiB" in text
    domain = json.loads(explain.render_pool_json(snap, "a", "p95", 0.1))["domain"]
    assert (domain["cgroup_limit_bytes"], domain["cgroup_usage_bytes"]) == (720 * MiB, 450 * MiB)
    assert domain["cgroup_headroom_bytes"] == 270 * MiB
    assert (a.domain_usage, a.domain_limit) == (450 * MiB, 720 * MiB)


def test_combine_takes_the_domain_figures_with_the_domain() -> None:
    """A group over two cgroups: the domain, its usage and its limit are all
    the tightest headroom's, never one domain's name with another's figures."""
    loose = CgroupState(10 * MiB, None, None, 500 * MiB, "/d1", 100 * MiB, 600 * MiB)
    tight = CgroupState(20 * MiB, None, None, 50 * MiB, "/d2", 350 * MiB, 400 * MiB)
    both = combine([loose, tight])
    assert (both.usage, both.headroom, both.domain) == (30 * MiB, 50 * MiB, "/d2")
    assert (both.domain_usage, both.domain_limit) == (350 * MiB, 400 * MiB)
    unlimited = combine([CgroupState(10 * MiB, None, None, None)])
    assert (unlimited.domain, unlimited.domain_usage, unlimited.domain_limit) == (None, None, None)


EVIL = "php-fpm:b\x1b]2;pwned\x07\x1b[2J\u202e"


def evil_snapshot() -> Snapshot:
    """Two pools in one cgroup, one named by a tenant with terminal escapes
    (an OSC retitle, a clear screen) and a bidi override."""
    groups = (
        group("php-fpm:a", 60 * MiB, 40 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),
        group(EVIL, 50 * MiB, 30 * MiB, ((0.5, MiB), (0.95, MiB), (1.0, MiB))),
    )
    domain = "/sys/fs/cgroup/memory/cg\x1b[2J"  # a delegated cgroup's name is a tenant's too
    state = CgroupState(210 * MiB, 720 * MiB, None, 510 * MiB, domain)
    cgroups = {"php-fpm:a": state, EVIL: state}
    infos = tuple(PoolInfo(g, None, 20, None, False) for g in cgroups)
    pools = pool_stats(infos, groups, 8 * GiB, cgroups, {}, PhpFpmConfig())
    return Snapshot(groups, 16 * GiB, 8 * GiB, 0.0, 0.0, 2, {}, 0, pools=pools, cgroups=cgroups)


def test_explain_never_prints_a_tenants_name_raw() -> None:
    """Review finding 7: group, pool and domain names are escaped in the text
    views (JSON escapes them itself), so none reaches the terminal raw."""
    snap = evil_snapshot()
    for name in ("a", EVIL):
        text = explain.render_pool(snap, name, "p95", 0.1)
        assert all(c.isprintable() or c == "\n" for c in text)
        assert "php-fpm:b\\x1b]2;pwned\\x07\\x1b[2J\\u202e" in text
        assert "/sys/fs/cgroup/memory/cg\\x1b[2J" in text
    assert json.loads(explain.render_pool_json(snap, EVIL, "p95", 0.1))["group"] == EVIL
    totals = ProcessTotals(110 * MiB, None, None, 4, 0)
    acc = Accounting(GiB, None, {"processes_pss": 110 * MiB}, totals, 0.0, 0.0)
    text = explain.render(dataclasses.replace(snap, accounting=acc))  # the top groups
    assert all(c.isprintable() or c == "\n" for c in text) and "php-fpm:b\\x1b]2;" in text


def test_top_never_prints_a_tenants_name_raw_and_fits_the_width() -> None:
    snap = evil_snapshot()
    for width in (None, 80, 60):
        text = top.render(snap, width=width)
        assert all(c.isprintable() or c == "\n" for c in text)
        assert "php-fpm:b\\x1b" in text
        if width is not None:
            assert max(len(line) for line in text.splitlines()) <= width
    assert "php-fpm:b\\x1b]2;pwned\\x07\\x1b[2J\\u202e" in top.render(snap, width=200)
