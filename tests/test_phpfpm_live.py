"""Live php-fpm: Debian's php-fpm with two static pools, grouped by the
built-in config, checked against the workers' smaps_rollup summed by hand."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port, group_value, parse_samples, require_binary, run_cli

MASTER_TITLE = "php-fpm: master process"


@dataclass(frozen=True)
class Fpm:
    master: int
    workers: dict[str, list[int]]  # pool name -> worker PIDs


def cmdline(pid: int) -> str:
    """The process title, or "" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def pool_workers(master: int, pool: str) -> list[int]:
    """Children of master titled 'php-fpm: pool POOL'."""
    return [
        pid for pid in all_pids() if ppid(pid) == master and cmdline(pid) == f"php-fpm: pool {pool}"
    ]


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


def write_config(tmp_path: Path, pools: dict[str, int]) -> Path:
    conf = tmp_path / "php-fpm.conf"
    text = (
        "[global]\n"
        f"pid = {tmp_path / 'php-fpm.pid'}\n"
        f"error_log = {tmp_path / 'php-fpm.log'}\n"
        "daemonize = no\n"
    )
    for name, children in pools.items():
        text += (
            f"\n[{name}]\n"
            f"listen = 127.0.0.1:{free_port()}\n"
            "pm = static\n"
            f"pm.max_children = {children}\n"
        )
    conf.write_text(text)
    return conf


# Pool names unique to this run: another php-fpm on the machine may run pools
# called alpha/beta, which would give our groups a disambiguating suffix.
SUFFIX = uuid.uuid4().hex[:8]
POOLS = {f"alpha_{SUFFIX}": 3, f"beta_{SUFFIX}": 2}


@pytest.fixture
def fpm(tmp_path: Path) -> Iterator[Fpm]:
    binary = require_binary("php-fpm8.2")
    conf = write_config(tmp_path, POOLS)
    output = tmp_path / "php-fpm.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-F", "-R", "-y", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            workers = {pool: pool_workers(proc.pid, pool) for pool in POOLS}
            if all(len(workers[pool]) == n for pool, n in POOLS.items()):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = [output, tmp_path / "php-fpm.log"]
                text = "".join(p.read_text() for p in logs if p.exists())
                raise AssertionError(f"php-fpm workers did not start: {workers}\n{text}")
            time.sleep(0.05)
        yield Fpm(proc.pid, workers)
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop: workers exit first
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    result = run_cli("once")
    after, masters_after = hand_read()
    master_pss = rollup_kb(fpm.master)["Pss"] * 1024
    assert result.returncode == 0, result.stderr
    s = parse_samples(result.stdout)

    for pool, pids in fpm.workers.items():
        group = f"php-fpm:{pool}"
        assert group_value(s, "pss_group_processes", group) == len(pids) == POOLS[pool]
        assert group_value(s, "pss_group_worker_pss_bytes_count", group) == len(pids)
        assert group_value(s, "pss_group_worker_uss_bytes_count", group) == len(pids)
        for metric in ("pss", "uss", "rss"):
            value = group_value(s, f"pss_group_{metric}_bytes", group)
            expected = (before[pool][metric], after[pool][metric])
            assert between(value, *expected, rel=0.01), (group, metric, value, expected)

    # Our master is in php-fpm:master (with any other master on the machine)
    # and, being a master, is no worker.
    masters = group_value(s, "pss_group_processes", "php-fpm:master")
    assert between(masters, masters_before, masters_after)
    assert group_value(s, "pss_group_pss_bytes", "php-fpm:master") >= 0.99 * master_pss
    assert group_value(s, "pss_group_worker_pss_bytes_count", "php-fpm:master") == 0
