"""End to end, with real servers: a php-fpm pool whose PHP script leaks memory
for real runs, in a memory-limited cgroup, into its limit until the kernel
OOM-kills a worker. The exporter collects every 500ms; Debian's Prometheus
scrapes it every second and evaluates the rules of alerts/, rendered with
short durations through the documented knobs; Debian's Alertmanager notifies
a webhook receiver run by the test. ProcessGroupNearMemoryLimit for the pool's
group must arrive first, then ProcessGroupOomKilled, with the documented
labels and annotations; the OOM counter goes up in Prometheus; and every
dashboard query returns data from that Prometheus, except those this host
cannot feed by construction (computed from the host's facts).

Everything listens on 127.0.0.1, lives in tmp_path and is stopped by the test.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from dashboards_util import (
    dashboard_paths,
    dashboard_queries,
    run_queries,
    variable_queries,
    variable_values,
)
from fpm import global_section, pool_workers, running_fpm
from prometheus_util import Prometheus, running_prometheus, wait_for_series
from test_alerts import KNOBS, generated

from exporter.cgroup import read_memory, read_oom_kills
from exporter.fastcgi import FastCGIError, request

from conftest import (
    QuietHandler,
    free_port,
    http_get,
    require_binary,
    running,
    running_exporter,
    serving_http,
    wait_for_http,
    wait_until,
)

pytestmark = [pytest.mark.live, pytest.mark.slow]

LEAK_SCRIPT = Path(__file__).resolve().parent / "php" / "leak.php"
WORKERS = 3
# Phase 1 leaks small steps up to a little above the near-limit ratio (each
# step adds at most STEP_MIB to the usage, so it stops well below the
# critical ratio and the limit); phase 2 leaks big steps until an OOM kill.
STEP_MIB = 4
NEAR_MARGIN = 0.02
OOM_STEP_MIB = 32
# Knobs short enough for the test (alerts/README.md); the exporter collects
# every collection_interval.
SHORT_KNOBS = """\
near_limit_for: 3s
near_limit_critical_for: 3s
oom_kill_window: 1m
collection_interval: 500ms
"""
WAIT = 60.0  # seconds for anything the test waits for


# ------------------------------------------------------------------ servers


@contextmanager
def running_webhook() -> Iterator[tuple[str, list[dict]]]:
    """An Alertmanager webhook receiver on loopback; yields its URL and the
    alerts of every notification it got, in arrival order."""
    received: list[dict] = []

    class Receiver(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.extend(json.loads(body)["alerts"])
            self.send_response(200)
            self.end_headers()

    with serving_http(Receiver) as url:
        yield f"{url}/alerts", received


@contextmanager
def running_alertmanager(workdir: Path, webhook: str) -> Iterator[str]:
    """Alertmanager routing every alert to webhook, one notification per
    alert name and group, sent a second after the alert arrives."""
    workdir.mkdir()
    config = workdir / "alertmanager.yml"
    config.write_text(
        "route:\n"
        "  receiver: webhook\n"
        "  group_by: [alertname, group]\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: webhook\n"
        f"    webhook_configs: [{{url: '{webhook}'}}]\n"
    )
    port = free_port()
    argv = [
        require_binary("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no clustering, no other port
    ]
    with running(argv, workdir / "alertmanager.log", stop_timeout=20) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/-/ready", proc)
        yield url


class Servers(NamedTuple):
    received: list[dict]  # the alerts Alertmanager delivered, in arrival order
    exporter: str  # its base URL
    target: str  # its host:port, Prometheus's instance label
    prometheus: Prometheus


@contextmanager
def alerting(tmp_path: Path, job: str, knobs: str) -> Iterator[Servers]:
    """The webhook receiver, Alertmanager, the exporter (collecting every
    500ms) and Prometheus scraping it as job, with the rules rendered with
    knobs (YAML over alerts/thresholds.yml): all on loopback, in tmp_path."""
    rules = tmp_path / "pss-exporter.rules.yml"
    rules.write_text(generated(tmp_path, knobs))
    exporter_config = tmp_path / "exporter.yaml"
    exporter_config.write_text("collection: {interval: 500ms}\n")
    with ExitStack() as stack:
        hook, received = stack.enter_context(running_webhook())
        alertmanager = stack.enter_context(running_alertmanager(tmp_path / "am", hook))
        exporter = stack.enter_context(running_exporter("--config", str(exporter_config)))
        target = urllib.parse.urlsplit(exporter).netloc
        prometheus = stack.enter_context(
            running_prometheus(
                tmp_path / "prometheus", job, target, rules=rules, alertmanager=alertmanager
            )
        )
        yield Servers(received, exporter, target, prometheus)


@contextmanager
def fpm_in_cgroup(
    workdir: Path, cgroup: Path, pool: str, listen: str
) -> Iterator[subprocess.Popen]:
    """php-fpm with one static pool running leak.php, master and workers in
    cgroup; yields the master once the workers are up."""
    workdir.mkdir()
    config = workdir / "php-fpm.conf"
    config.write_text(
        global_section(workdir) + f"[{pool}]\n"
        f"listen = {listen}\n"
        "pm = static\n"
        f"pm.max_children = {WORKERS}\n"
        "pm.max_requests = 0\n"
        "pm.status_path = /status\n"
        "php_admin_value[ffi.enable] = 1\n"
    )
    with running_fpm(config, {pool: WORKERS}, cgroup=cgroup, graceful=False) as proc:
        yield proc


# ------------------------------------------------------------------ helpers


def leak(listen: str, mib: int) -> None:
    """One request to leak.php: the worker that serves it grows by mib MiB."""
    response = request(listen, str(LEAK_SCRIPT), f"mib={mib}", timeout=10)
    assert response.status == 200 and response.body.isdigit(), response


def usage_ratio(cgroup: Path) -> float:
    memory = read_memory(str(cgroup))
    assert memory.limit, f"{cgroup} has no memory limit"
    return memory.usage / memory.limit


def oom_kills(cgroup: Path) -> int:
    kills = read_oom_kills(str(cgroup))
    assert kills is not None, f"{cgroup} does not count OOM kills"
    return kills


def knob(name: str) -> float:
    """A knob's value in the test's rules: SHORT_KNOBS over alerts/thresholds.yml."""
    return float({**yaml.safe_load(KNOBS.read_text()), **yaml.safe_load(SHORT_KNOBS)}[name])


def first_firing(received: list[dict], alertname: str, group: str) -> int | None:
    """Index of the first firing alertname for group among the received alerts."""
    for index, alert in enumerate(received):
        labels = alert["labels"]
        if (alert["status"], labels["alertname"], labels.get("group")) == (
            "firing",
            alertname,
            group,
        ):
            return index
    return None


def wait_for_alert(
    received: list[dict], alertname: str, group: str, diagnose: Callable[[], str]
) -> dict:
    def fired() -> dict | None:
        index = first_firing(received, alertname, group)
        return None if index is None else {"index": index, **received[index]}

    def received_so_far() -> str:
        got = sorted({(a["labels"]["alertname"], a["labels"].get("group")) for a in received})
        return f"got {got}\n{diagnose()}"

    what = f"{alertname} for {group} at the webhook"
    return wait_until(what, fired, timeout=WAIT, interval=0.2, detail=received_so_far)


def respawned(fpm: subprocess.Popen, pool: str, before: set[int]) -> set[int]:
    """The pool's workers once php-fpm has replaced the killed one(s)."""

    def replaced() -> set[int] | None:
        assert fpm.poll() is None, "the OOM killer killed the php-fpm master, not a worker"
        workers = set(pool_workers(fpm.pid, pool))
        return workers if len(workers) == WORKERS and workers != before else None

    return wait_until(
        "a worker killed and replaced",
        replaced,
        timeout=WAIT,
        interval=0.1,
        detail=lambda: f"{before} -> {set(pool_workers(fpm.pid, pool))}",
    )


def readable(path: Path) -> bool:
    """Whether path can be read (a PSI file exists but fails with psi=0)."""
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


def unavailable_metrics(cgroup: Path) -> dict[str, str]:
    """Metrics this host cannot export for the test's setup, with the reason."""
    missing = {}
    if not readable(cgroup / "memory.pressure"):
        missing["pss_group_memory_pressure_seconds_total"] = (
            f"no {cgroup}/memory.pressure: no per-cgroup PSI (a cgroup v1 memory controller)"
        )
    if not readable(Path("/proc/pressure/memory")):
        missing["pss_host_memory_pressure_seconds_total"] = "no /proc/pressure/memory (no PSI)"
    return missing


def check_alert(alert: dict, labels: dict[str, str], anchor: str) -> None:
    assert alert["labels"] == labels, alert
    notes = alert["annotations"]
    assert set(notes) == {"summary", "description", "runbook_url"}, alert
    assert labels["group"] in notes["summary"] and labels["group"] in notes["description"], alert
    assert notes["runbook_url"].endswith(f"/docs/runbook.md#{anchor}"), alert


# -------------------------------------------------------------------- test


def test_leaking_pool_alerts_near_limit_then_oom_kill(
    tmp_path: Path,
    limited_cgroup: Path,
) -> None:
    """Leak to just above the near-limit ratio and hold (the alert fires and
    is delivered), then past the limit (a worker is OOM-killed, the OOM alert
    is delivered), then run every dashboard query."""
    pool = f"leak_{uuid.uuid4().hex[:8]}"
    group, job = f"php-fpm:{pool}", f"pss_e2e_{pool[5:]}"
    listen = f"127.0.0.1:{free_port()}"
    near_target = knob("near_limit_ratio") + NEAR_MARGIN
    with ExitStack() as stack:
        fpm = stack.enter_context(fpm_in_cgroup(tmp_path / "fpm", limited_cgroup, pool, listen))
        received, _, target, prometheus = stack.enter_context(alerting(tmp_path, job, SHORT_KNOBS))

        def diagnose() -> str:
            alerts = http_get(prometheus.url + "/api/v1/alerts")[2].decode()
            ratio = usage_ratio(limited_cgroup)
            return f"cgroup usage {ratio:.3f} of the limit; Prometheus alerts: {alerts}"

        kills_query = f'pss_group_oom_kills_total{{job="{job}", group="{group}"}}'
        kills_before = float(wait_for_series(prometheus, kills_query)[0]["value"][1])
        workers_before = set(pool_workers(fpm.pid, pool))

        # Phase 1: above the near-limit ratio, below the critical one, no kill.
        for _ in range(1024 // STEP_MIB):
            if usage_ratio(limited_cgroup) >= near_target:
                break
            leak(listen, STEP_MIB)
        ratio = usage_ratio(limited_cgroup)
        assert near_target <= ratio < knob("near_limit_critical_ratio"), ratio
        near = wait_for_alert(received, "ProcessGroupNearMemoryLimit", group, diagnose)
        assert oom_kills(limited_cgroup) == 0, "OOM kill before the near-limit alert"

        # Phase 2: past the limit; the kernel kills the largest process of the
        # cgroup, a worker (the master leaks nothing), and php-fpm respawns it.
        for _ in range(1024 // OOM_STEP_MIB):
            if oom_kills(limited_cgroup) > 0:
                break
            # FastCGIError: the worker serving the request was the one killed.
            with contextlib.suppress(FastCGIError):
                leak(listen, OOM_STEP_MIB)
        assert oom_kills(limited_cgroup) > 0, diagnose()
        oom = wait_for_alert(received, "ProcessGroupOomKilled", group, diagnose)
        kills_now = f"{kills_query} >= {kills_before + 1}"
        kills_after = float(wait_for_series(prometheus, kills_now)[0]["value"][1])
        workers_after = respawned(fpm, pool, workers_before)
        values = variable_values(job=job, instance=target)
        queries = [q for path in dashboard_paths() for q in dashboard_queries(path)]
        queries += [q for path in dashboard_paths() for q in variable_queries(path)]
        results = run_queries(prometheus.url, queries, values)

    labels = {"job": job, "instance": target, "group": group}
    check_alert(
        near,
        {"alertname": "ProcessGroupNearMemoryLimit", "severity": "warning", **labels},
        "processgroupnearmemorylimit",
    )
    check_alert(
        oom,
        {"alertname": "ProcessGroupOomKilled", "severity": "critical", **labels},
        "processgroupoomkilled",
    )
    assert near["index"] < oom["index"]
    assert kills_after >= kills_before + 1
    assert len(workers_before - workers_after) >= 1  # killed, and replaced by php-fpm

    # Every query is valid PromQL; all return data but those this host
    # cannot feed, for the reason given.
    assert [r for r in results if not r.ok] == []
    missing = unavailable_metrics(limited_cgroup)
    empty = [(title, expr) for (title, expr), r in zip(queries, results) if r.series == 0]
    expected = [(t, e) for t, e in queries if any(name in e for name in missing)]
    assert empty == expected, f"expected empty only because: {missing}"
