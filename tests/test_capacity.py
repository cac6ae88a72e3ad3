"""The capacity formulas, the status-page parser and the top table."""

from __future__ import annotations

import pytest

from exporter.capacity import budget, pool_capacity, worker_size
from exporter.config import PhpFpmConfig
from exporter.phpfpm import PoolInfo, PoolStatus, parse_status
from exporter.snapshot import Distribution, GroupStats, Snapshot, pool_stats
from exporter.top import COLUMNS, human, render

MiB = 1 << 20
GiB = 1 << 30


def test_worked_example_of_the_docs() -> None:
    """docs/phpfpm-capacity.md's example, figure for figure."""
    quantiles = ((0.5, 40 * MiB), (0.95, 52 * MiB), (1.0, 61 * MiB))
    cap = pool_capacity(
        pss=1060 * MiB,
        uss=960 * MiB,
        worker_uss=quantiles,
        max_children=50,
        mem_available=3 * GiB,
        cgroup_headroom=None,
        reserve=0.1,
        sizing="p95",
    )
    assert cap.shared == 100 * MiB
    assert cap.worker_size == 52 * MiB
    assert cap.projected == 2700 * MiB
    assert cap.budget == int((1060 + 3072) * MiB * 0.9)
    assert cap.recommended == 69


def test_sizing_max_and_cgroup_headroom_tighter_than_host() -> None:
    quantiles = ((0.5, 10 * MiB), (0.95, 20 * MiB), (1.0, 30 * MiB))
    cap = pool_capacity(200 * MiB, 150 * MiB, quantiles, 10, 8 * GiB, 300 * MiB, 0.0, "max")
    assert cap.worker_size == 30 * MiB
    assert cap.projected == 50 * MiB + 10 * 30 * MiB
    assert cap.budget == 500 * MiB  # 200 held + 300 left under the cgroup limit
    assert cap.recommended == (500 - 50) // 30


def test_unknowns_stay_unknown() -> None:
    cap = pool_capacity(10 * MiB, 4 * MiB, (), None, None, None, 0.1, "p95")
    assert (cap.shared, cap.worker_size, cap.projected, cap.budget, cap.recommended) == (
        6 * MiB,
        None,
        None,
        None,
        None,
    )
    assert worker_size(((0.95, 7),), "max") is None
    assert budget(100, None, 50, 0.5) == 75


def test_recommended_never_negative() -> None:
    cap = pool_capacity(900 * MiB, 100 * MiB, ((0.95, 10 * MiB),), 4, 0, None, 0.5, "p95")
    assert cap.budget == 450 * MiB
    assert cap.recommended == 0  # the shared part alone exceeds the budget


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
    pools = pool_stats((info,), groups, 1 * GiB, {}, PhpFpmConfig())
    snap = Snapshot(groups, 2 * GiB, 1 * GiB, 0.0, 0.012, 10, {}, 0, pools=pools)
    lines = render(snap).splitlines()
    assert lines[0] == (
        "pss-exporter top: 2 groups, MemTotal 2.0 GiB, MemAvailable 1.0 GiB, collected in 12 ms"
    )
    assert lines[2].split() == [*COLUMNS[:6], "MED", "PSS", "MAX", "PSS", *COLUMNS[8:]]
    assert lines[3].split()[0] == "bash"  # larger PSS first
    www = lines[4].split()
    budget_bytes = int((100 * MiB + 1 * GiB) * 0.9)
    assert www[0] == "php-fpm:www" and www[-2] == "8"
    assert www[-1] == str((budget_bytes - 40 * MiB) // (30 * MiB))
    assert "\x1b" not in render(snap)  # no colour unless asked for a terminal
    assert render(snap, max_rows=1).splitlines()[-1] == "... 1 more groups"


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (38.2 * MiB, "38.2 MiB")],
)
def test_human_sizes(n: float | None, text: str) -> None:
    assert human(n) == text
