"""Debian's Prometheus for the tests: started on a loopback port scraping one
target (optionally with rules and an Alertmanager), instant queries, and
waiting for a series to show up."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port, http_get, require_binary, running, wait_for_http, wait_until


@dataclass(frozen=True)
class Prometheus:
    url: str  # http://127.0.0.1:PORT
    log: Path  # its output


def prometheus_config(job: str, target: str, rules: Path | None, alertmanager: str | None) -> str:
    """Scrape target as job every second; with rules, evaluated every second,
    alerts sent to alertmanager (its URL)."""
    text = (
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        "    scrape_interval: 1s\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    if rules is not None:
        text += f"rule_files: ['{rules}']\n"
    if alertmanager is not None:
        manager = urllib.parse.urlsplit(alertmanager).netloc
        text += f"alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{manager}']}}]\n"
    return text


@contextmanager
def running_prometheus(
    workdir: Path,
    job: str,
    target: str,
    *,
    rules: Path | None = None,
    alertmanager: str | None = None,
) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port with prometheus_config(...), its
    config, data and log (prometheus.log) in workdir; yielded once ready."""
    workdir.mkdir(exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(job, target, rules, alertmanager))
    port = free_port()
    argv = [
        require_binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    prometheus = Prometheus(f"http://127.0.0.1:{port}", workdir / "prometheus.log")
    with running(argv, prometheus.log, stop_timeout=20) as proc:
        wait_for_http(prometheus.url + "/-/ready", proc)
        yield prometheus


def query(prometheus: str, promql: str) -> list[dict]:
    """Instant query through the HTTP API; [] while Prometheus is not up yet."""
    url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(promql)}"
    try:
        status, _, body = http_get(url, timeout=5)
    except OSError:
        return []
    if status != 200:
        return []
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for_series(prometheus: Prometheus, promql: str, timeout: float = 60) -> list[dict]:
    """The result of promql once it is not empty."""
    return wait_until(
        f"{promql} in Prometheus",
        lambda: query(prometheus.url, promql),
        timeout=timeout,
        interval=0.2,
        detail=lambda: prometheus.log.read_text()[-3000:],
    )
