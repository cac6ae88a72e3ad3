"""End to end, the story the project exists for: a php-fpm pool whose
pm.max_children is set too high for its memory cgroup, then a crawler.

Real servers, as in test_e2e_alerts.py: a static pool in a memory-limited
cgroup (master and workers inside, as under systemd), the exporter collecting
every 500ms, Debian's Prometheus scraping it every second with the shipped
rules rendered through the documented knobs (alerts/README.md) with short
durations, Debian's Alertmanager notifying a webhook run by the test.

1. Ordinary traffic (two clients, requests holding 10-26 MiB): no OOM kill,
   but the workers' peaks show that max_children workers cannot fit, and
   PhpFpmPoolOvercommitted reaches Alertmanager before any kill.
2. A crawler (many more clients than workers): the kernel OOM-kills workers
   over and over. PhpFpmPoolSaturated (the storm signal) and
   ProcessGroupOomKilled follow for the pool's group, never for
   php-fpm:master or php-fpm's status pool, and every kill the cgroup counted
   is in the pool's counter or the unattributed one, none in the master's.

Everything listens on 127.0.0.1, lives in tmp_path and is stopped by the test.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
from fpm import clients, global_section, running_fpm
from prometheus_util import query, wait_for_series
from test_e2e_alerts import alerting, check_alert, first_firing, oom_kills, wait_for_alert
from test_oom_storm import limit_for_storm

from conftest import (
    MEMORY_LIMIT,
    free_port,
    group_value,
    http_get,
    parse_samples,
    wait_until,
)

pytestmark = [pytest.mark.live, pytest.mark.slow]

WORKERS = 16  # pm.max_children: 16 workers at ~27 MiB peaks need ~1.7x MEMORY_LIMIT
ORDINARY = 2  # clients of ordinary traffic: 2 x 26 MiB at most, far below the limit
CRAWLER = 48  # clients of the crawler: 3 per worker
HOLD_MIB = (10, 26)
HOLD_MS = 100
# The shipped thresholds, only their waits and windows scaled down (every knob
# is documented in alerts/README.md); the exporter collects every 500ms.
SHORT_KNOBS = """\
overcommitted_for: 5s
saturated_for: 5s
saturated_window: 15s
saturated_status_seen_within: 5m
oom_kill_window: 1m
collection_interval: 500ms
"""
STORM_KILLS = 20  # OOM kills the crawler must cause before the test looks back


def still(cgroup: Path) -> int | None:
    """The cgroup's OOM kills once they did not change for a second, else None."""
    kills = oom_kills(cgroup)
    time.sleep(1.0)
    return kills if oom_kills(cgroup) == kills else None


def metrics(exporter: str) -> dict:
    status, _, body = http_get(f"{exporter}/metrics")
    assert status == 200
    return parse_samples(body.decode())


def kills_by_group(samples: dict) -> dict[str, float]:
    return {
        dict(labels)["group"]: value
        for (name, labels), value in samples.items()
        if name == "pss_group_oom_kills_total"
    }


def unattributed(samples: dict) -> float:
    return samples[("pss_oom_kills_unattributed_total", frozenset())]


def test_overcommitted_pool_warns_before_the_oom_storm_and_the_storm_pages(
    tmp_path: Path, limited_cgroup: Path
) -> None:
    limit_for_storm(limited_cgroup)
    pool = f"crawl_{uuid.uuid4().hex[:6]}"
    group, job = f"php-fpm:{pool}", f"pss_storm_{pool[6:]}"
    listen = f"127.0.0.1:{free_port()}"
    status_listen = f"127.0.0.1:{free_port()}"
    conf = tmp_path / "php-fpm.conf"
    conf.write_text(
        global_section(tmp_path) + f"[{pool}]\nlisten = {listen}\n"
        f"pm = static\npm.max_children = {WORKERS}\npm.max_requests = 0\n"
        # Its own status pool, as a status page is usually run.
        f"pm.status_path = /status\npm.status_listen = {status_listen}\n"
    )
    with ExitStack() as stack:
        fpm = stack.enter_context(
            running_fpm(conf, {pool: WORKERS}, cgroup=limited_cgroup, graceful=False)
        )
        received, exporter, target, prometheus = stack.enter_context(
            alerting(tmp_path, job, SHORT_KNOBS)
        )

        def diagnose() -> str:
            alerts = http_get(prometheus.url + "/api/v1/alerts")[2].decode()
            return f"OOM kills {oom_kills(limited_cgroup)}; Prometheus alerts: {alerts}"

        # The status page answered before the storm (the storm signal counts a
        # page that stopped answering only if it answered within a while).
        wait_for_series(prometheus, f'pss_phpfpm_status_up{{job="{job}", group="{group}"}} == 1')

        # 1. Ordinary traffic: the peaks say the pool cannot fit, before any kill.
        with clients(listen, ORDINARY, HOLD_MIB, HOLD_MS):
            overcommitted = wait_for_alert(received, "PhpFpmPoolOvercommitted", group, diagnose)
            kills_at_warning = oom_kills(limited_cgroup)
        ratio = wait_for_series(
            prometheus,
            f'pss_phpfpm_projected_bytes{{job="{job}", group="{group}", basis="observed_peak"}}'
            f' / ignoring(basis) pss_phpfpm_budget_bytes{{job="{job}", group="{group}"}}',
        )[0]["value"][1]

        # 2. The crawler: an OOM storm. The exporter's counters are read before
        # it and after it, once the cgroup's counter has stopped moving.
        cgroup_before = oom_kills(limited_cgroup)
        before = metrics(exporter)
        assert oom_kills(limited_cgroup) == cgroup_before == 0
        with clients(listen, CRAWLER, HOLD_MIB, HOLD_MS, seed=16):
            wait_until(
                f"{STORM_KILLS} OOM kills in {limited_cgroup} ({MEMORY_LIMIT >> 20} MiB)",
                lambda: oom_kills(limited_cgroup) >= STORM_KILLS,
                timeout=60,
            )
            saturated = wait_for_alert(received, "PhpFpmPoolSaturated", group, diagnose)
            killed = wait_for_alert(received, "ProcessGroupOomKilled", group, diagnose)
            assert fpm.poll() is None, "the OOM killer killed the php-fpm master"
            # The warning held through the storm: respawned workers start small,
            # but the projection rests on the window's peaks.
            firing = query(
                prometheus.url,
                f'ALERTS{{alertname="PhpFpmPoolOvercommitted", alertstate="firing", job="{job}"}}',
            )
        cgroup_kills = wait_until("the cgroup's OOM counter still", lambda: still(limited_cgroup))

        def settled() -> dict | None:
            # Every kill counted, past the grace in which a kill waits for its record.
            samples = metrics(exporter)
            done = group_value(samples, "pss_group_oom_kills_total", group)
            done -= group_value(before, "pss_group_oom_kills_total", group)
            done += unattributed(samples) - unattributed(before)
            return samples if done >= cgroup_kills else None

        after = wait_until("the exporter counted every kill", settled, timeout=10)
        pool_workers = group_value(after, "pss_group_workers", group)

    # The warning came before any kill, with the projection over the budget.
    assert kills_at_warning == 0
    assert float(ratio) > 1.0
    labels = {"job": job, "instance": target, "group": group}
    check_alert(
        overcommitted,
        {"alertname": "PhpFpmPoolOvercommitted", "severity": "critical", **labels},
        "phpfpmpoolovercommitted",
    )
    assert [a["metric"]["group"] for a in firing] == [group], firing
    resolved = [
        a
        for a in received
        if a["labels"]["alertname"] == "PhpFpmPoolOvercommitted" and a["status"] == "resolved"
    ]
    assert resolved == []
    assert overcommitted["index"] < saturated["index"]
    assert overcommitted["index"] < killed["index"]
    check_alert(
        saturated,
        {"alertname": "PhpFpmPoolSaturated", "severity": "warning", **labels},
        "phpfpmpoolsaturated",
    )
    check_alert(
        killed,
        {"alertname": "ProcessGroupOomKilled", "severity": "critical", **labels},
        "processgroupoomkilled",
    )
    # Only the pool's workers died: no OOM alert names the master or a status pool.
    oom_groups = {
        a["labels"].get("group")
        for a in received
        if a["labels"]["alertname"] == "ProcessGroupOomKilled"
    }
    assert oom_groups == {group}, oom_groups
    assert first_firing(received, "ProcessGroupOomKilled", "php-fpm:master") is None
    assert not [g for g in kills_by_group(after) if g.endswith("_status")]
    # Each kill once: in the pool's counter or the unattributed one, the master's unchanged.
    pool_delta = group_value(after, "pss_group_oom_kills_total", group) - group_value(
        before, "pss_group_oom_kills_total", group
    )
    lost = unattributed(after) - unattributed(before)
    master = kills_by_group(after).get("php-fpm:master", 0) - kills_by_group(before).get(
        "php-fpm:master", 0
    )
    assert (pool_delta + lost, master) == (cgroup_kills, 0), (pool_delta, lost, cgroup_kills)
    assert pool_delta == cgroup_kills, f"{lost} of {cgroup_kills} kills left unattributed"
    assert 0 < pool_workers <= WORKERS
