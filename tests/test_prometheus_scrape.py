"""A real Prometheus scrapes a running exporter; the test reads a group's PSS
back through Prometheus' HTTP API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import (
    free_port,
    group_value,
    http_get,
    parse_samples,
    require_binary,
    running_exporter,
)
from memhog import MIB, running_hog

# Large next to the interpreter's file pages shared with other Python
# processes, whose coming and going moves the hog's PSS a little between the
# scrape Prometheus stored and the /metrics read below (see test_live_memory).
HOG_MIB = 128
WAIT_SECONDS = 60


def write_exporter_config(path: Path, marker: str) -> Path:
    path.write_text(
        "collection: {interval: 200ms}\n"
        "php_fpm: {enabled: false}\n"
        "process_names:\n"
        '  - name: "hog"\n'
        f"    cmdline: ['memhog\\.py private {marker}']\n"
    )
    return path


def write_prometheus_config(path: Path, job: str, target: str) -> Path:
    path.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        "    scrape_interval: 1s\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    return path


@contextmanager
def running_prometheus(workdir: Path, job: str, target: str) -> Iterator[str]:
    """Start Prometheus on a free loopback port scraping target; yield its URL."""
    binary = require_binary("prometheus")
    port = free_port()
    config = write_prometheus_config(workdir / "prometheus.yml", job, target)
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def wait_for_series(prometheus: str, promql: str, log: Path) -> list[dict]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        result = query(prometheus, promql)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no {promql} in Prometheus after {WAIT_SECONDS}s:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


def test_prometheus_scrapes_group_pss(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    job = f"pss_{marker[:8]}"
    config = write_exporter_config(tmp_path / "exporter.yaml", marker)
    with running_hog("private", marker, HOG_MIB), running_exporter("--config", str(config)) as exp:
        target = urllib.parse.urlsplit(exp).netloc
        with running_prometheus(tmp_path, job, target) as prom:
            log = tmp_path / "prometheus.log"
            series = wait_for_series(prom, f'pss_group_pss_bytes{{job="{job}",group="hog"}}', log)
            status, _, body = http_get(exp + "/metrics")
            up = query(prom, f'up{{job="{job}"}}')

    assert status == 200
    served = group_value(parse_samples(body.decode()), "pss_group_pss_bytes", "hog")
    assert len(series) == 1, series
    stored = float(series[0]["value"][1])
    assert stored >= HOG_MIB * MIB  # the hog's own pages, at least
    assert stored == pytest.approx(served, rel=0.01)
    assert [float(s["value"][1]) for s in up] == [1.0]
