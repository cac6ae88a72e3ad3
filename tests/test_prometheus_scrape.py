"""A real Prometheus scrapes a running exporter; the test reads a group's PSS
back through Prometheus' HTTP API."""

from __future__ import annotations

import urllib.parse
import uuid
from pathlib import Path

import pytest
from prometheus_util import query, running_prometheus, wait_for_series

from conftest import group_value, http_get, parse_samples, running_exporter
from memhog import MIB, running_hog

pytestmark = [pytest.mark.live, pytest.mark.slow]

# Large next to the interpreter's file pages shared with other Python
# processes, whose coming and going moves the hog's PSS a little between the
# scrape Prometheus stored and the /metrics read below (see test_live_memory).
HOG_MIB = 128


def write_exporter_config(path: Path, marker: str) -> Path:
    path.write_text(
        "collection: {interval: 200ms}\n"
        "php_fpm: {enabled: false}\n"
        "process_names:\n"
        '  - name: "hog"\n'
        f"    cmdline: ['memhog\\.py private {marker}']\n"
    )
    return path


def test_prometheus_scrapes_group_pss(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    job = f"pss_{marker[:8]}"
    config = write_exporter_config(tmp_path / "exporter.yaml", marker)
    with running_hog("private", marker, HOG_MIB), running_exporter("--config", str(config)) as exp:
        target = urllib.parse.urlsplit(exp).netloc
        with running_prometheus(tmp_path, job, target) as prom:
            series = wait_for_series(prom, f'pss_group_pss_bytes{{job="{job}",group="hog"}}')
            status, _, body = http_get(exp + "/metrics")
            up = query(prom.url, f'up{{job="{job}"}}')

    assert status == 200
    served = group_value(parse_samples(body.decode()), "pss_group_pss_bytes", "hog")
    assert len(series) == 1, series
    stored = float(series[0]["value"][1])
    assert stored >= HOG_MIB * MIB  # the hog's own pages, at least
    assert stored == pytest.approx(served, rel=0.01)
    assert [float(s["value"][1]) for s in up] == [1.0]
