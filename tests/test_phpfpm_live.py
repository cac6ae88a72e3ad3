"""Live php-fpm: Debian's php-fpm with two static pools, grouped by the
built-in config, checked against the workers' smaps_rollup summed by hand."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fpm import MASTER_TITLE, all_pids, cmdline, running_fpm, workers, write_static_config

from exporter.collector import Collector
from exporter.config import build_config
from exporter.fastcgi import request
from exporter.snapshot import Snapshot

from conftest import free_port, group_value, parse_samples, run_cli, wait_until

pytestmark = pytest.mark.live


@dataclass(frozen=True)
class Fpm:
    master: int
    workers: dict[str, list[int]]  # pool name -> worker PIDs


def rollup_kb(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup read by hand: {key: kB}."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        fields[key] = int(value.split()[0])
    return fields


def pool_sums(pids: list[int]) -> dict[str, int]:
    """Summed Pss, USS (Private_Clean + Private_Dirty) and Rss, in bytes."""
    rollups = [rollup_kb(pid) for pid in pids]
    return {
        "pss": sum(r["Pss"] for r in rollups) * 1024,
        "uss": sum(r["Private_Clean"] + r["Private_Dirty"] for r in rollups) * 1024,
        "rss": sum(r["Rss"] for r in rollups) * 1024,
    }


# Pool names unique to this run: another php-fpm on the machine may run pools
# called alpha/beta, which would give our groups a disambiguating suffix.
SUFFIX = uuid.uuid4().hex[:8]
POOLS = {f"alpha_{SUFFIX}": 3, f"beta_{SUFFIX}": 2}


@pytest.fixture
def fpm(tmp_path: Path) -> Iterator[Fpm]:
    with running_fpm(write_static_config(tmp_path, POOLS), POOLS) as proc:
        found = workers(proc.pid)
        yield Fpm(proc.pid, {pool: found[pool] for pool in POOLS})


def masters_running() -> int:
    return sum(cmdline(pid).startswith(MASTER_TITLE) for pid in all_pids())


def between(value: float, a: float, b: float, rel: float = 0.0) -> bool:
    """value lies within [min(a, b), max(a, b)], widened by rel."""
    return min(a, b) * (1 - rel) <= value <= max(a, b) * (1 + rel)


def test_pools_grouped_with_hand_summed_smaps_rollup(fpm: Fpm) -> None:
    # Idle workers' smaps_rollup stays what the exporter read; reading by hand
    # before and after brackets it even if php-fpm processes elsewhere on the
    # machine come or go meanwhile (their share of common pages moves PSS).
    def hand_read() -> tuple[dict[str, dict[str, int]], int]:
        return {pool: pool_sums(pids) for pool, pids in fpm.workers.items()}, masters_running()

    before, masters_before = hand_read()
    master_before = rollup_kb(fpm.master)["Pss"] * 1024
    result = run_cli("once")
    after, masters_after = hand_read()
    master_after = rollup_kb(fpm.master)["Pss"] * 1024
    assert result.returncode == 0, result.stderr
    s = parse_samples(result.stdout)

    for pool, pids in fpm.workers.items():
        group = f"php-fpm:{pool}"
        assert group_value(s, "pss_group_processes", group) == len(pids) == POOLS[pool]
        assert group_value(s, "pss_group_workers", group) == len(pids)
        for metric in ("pss", "uss", "rss"):
            value = group_value(s, f"pss_group_{metric}_bytes", group)
            expected = (before[pool][metric], after[pool][metric])
            assert between(value, *expected, rel=0.01), (group, metric, value, expected)

    # Our master is in php-fpm:master (with any other master on the machine)
    # and, being a master, is no worker.
    masters = group_value(s, "pss_group_processes", "php-fpm:master")
    assert between(masters, masters_before, masters_after)
    # The master's PSS is read while the exporter itself runs: the exporter maps
    # libc, libssl and libcrypto too, so the master's share of those pages is
    # smaller then than in the hand reads (5% here with no other php-fpm on the
    # machine). The workers' private pages dominate theirs; the master's do not.
    master_pss = group_value(s, "pss_group_pss_bytes", "php-fpm:master")
    assert master_pss >= 0.9 * min(master_before, master_after), (master_before, master_after)
    assert group_value(s, "pss_group_workers", "php-fpm:master") == 0


def test_status_pool_counts_with_the_pool_it_serves(tmp_path: Path) -> None:
    """pm.status_listen makes php-fpm run a pool "POOL_status" of its own:
    it is no pool (no group, no capacity), its process counts in POOL's
    group, as no worker of it. That pool is ondemand: its process is forked
    at the first connection to the status socket and exits after 10 s idle."""
    pool = f"crawl_{SUFFIX}"
    conf = write_static_config(tmp_path, {pool: 2})
    status_listen = f"127.0.0.1:{free_port()}"
    conf.write_text(
        conf.read_text() + f"pm.status_path = /status\npm.status_listen = {status_listen}\n"
    )
    with running_fpm(conf, {pool: 2}) as proc:
        assert request(status_listen, "/status", "json", timeout=5).status == 200

        def status_forked() -> dict[str, list[int]] | None:
            found = workers(proc.pid)
            return found if f"{pool}_status" in found else None

        found = wait_until("the status pool's process", status_forked)
        result = run_cli("once")
    assert result.returncode == 0, result.stderr
    s = parse_samples(result.stdout)
    group = f"php-fpm:{pool}"
    assert len(found[f"{pool}_status"]) == 1
    assert group_value(s, "pss_group_processes", group) == 3  # 2 workers and the status process
    assert group_value(s, "pss_group_workers", group) == 2
    assert group_value(s, "pss_phpfpm_max_children", group) == 2
    assert group_value(s, "pss_phpfpm_status_up", group) == 1
    assert group_value(s, "pss_phpfpm_recommended_max_children", group, basis="observed_peak") > 0
    assert group_value(s, "pss_phpfpm_worker_peaks", group) == 2  # not the status process's
    groups = {dict(labels).get("group") for _, labels in s}
    assert f"{group}_status" not in groups


def test_status_page_counters_never_fall_across_a_restart(tmp_path: Path) -> None:
    """A php-fpm restart resets its status page's counters (a new master
    counts from 0): the exported counter goes on from where it was."""
    pool = f"restart_{SUFFIX}"
    conf = write_static_config(tmp_path, {pool: 1})
    conf.write_text(conf.read_text() + "pm.status_path = /status\n")
    group = f"php-fpm:{pool}"

    def accepted(snap: Snapshot) -> int:
        (status,) = [p.info.status for p in snap.pools if p.info.group == group]
        assert status is not None, f"{group}: the status page did not answer"
        return status.accepted_conn

    config = build_config({"accounting": {"enabled": False}}, "test")
    with Collector(config) as collector:
        with running_fpm(conf, {pool: 1}):
            before = [accepted(collector.collect()) for _ in range(3)]
        with running_fpm(conf, {pool: 1}):
            after = accepted(collector.collect())
    # Each query is a connection the pool accepts (other exporters on this
    # machine may query it too): 3 or more, then at least one more.
    assert before == sorted(before) and before[-1] >= 3
    assert after >= before[-1] + 1
