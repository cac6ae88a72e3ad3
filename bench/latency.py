"""/metrics latency of `pss-exporter serve` over a synthetic procfs tree:
sequential GETs on one keep-alive connection, as a scraper makes them."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import synthetic
from fleet import free_port
from prometheus_client.parser import text_string_to_metric_families

from exporter.snapshot import nearest_rank

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0
PROMETHEUS_HEADERS = {  # what Prometheus sends: OpenMetrics preferred, gzip
    "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    "Accept-Encoding": "gzip",
}
ENCODINGS = {"text": {}, "OpenMetrics+gzip": PROMETHEUS_HEADERS}
QUANTILES = (0.5, 0.9, 0.99)
SERVE = [sys.executable, "-m", "exporter", "serve"]
# collection.interval's default: after the first collection, none runs while
# the requests are timed. BUSY: collections take much of every interval.
IDLE_INTERVAL = 15.0
BUSY_INTERVAL = 1.0


@dataclass(frozen=True)
class Latency:
    processes: int
    interval: float  # collection.interval of the exporter
    collection: float  # seconds its last collection took
    groups: int  # distinct group labels in the /metrics body
    encoding: str
    size: int  # body bytes
    requests: int
    quantiles: tuple[float, ...]  # seconds, for QUANTILES
    max: float


def inspect(body: bytes) -> tuple[int, float]:
    """(distinct groups, last collection's duration) of a text exposition."""
    groups, duration = set(), 0.0
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "pss_group_processes":
            groups.update(s.labels["group"] for s in fam.samples)
        elif fam.name == "pss_exporter_collection_duration_seconds":
            duration = fam.samples[0].value
    return len(groups), duration


def _get(conn: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("GET", "/metrics", headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


@contextmanager
def serving(tree: Path, tmp: Path, interval: float) -> Iterator[http.client.HTTPConnection]:
    """`python -m exporter serve` over tree, collecting every interval
    seconds; yield a connection to it once its first collection is published."""
    config = tmp / "synthetic.yml"
    config.write_text(
        json.dumps({**synthetic.CONFIG, "collection": {"interval": f"{round(interval * 1000)}ms"}})
    )
    port = free_port()
    args = ["--path.procfs", str(tree), "--config", str(config)]
    proc = subprocess.Popen(
        [*SERVE, *args, "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield _wait_ready(proc, port)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_ready(proc: subprocess.Popen, port: int) -> http.client.HTTPConnection:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            if _get(conn, {})[0] == 200:
                return conn
        except OSError:
            pass
        conn.close()
        time.sleep(0.1)
    raise SystemExit(f"bench: the exporter did not serve /metrics (exit {proc.poll()})")


def _time_requests(
    conn: http.client.HTTPConnection, headers: dict[str, str], requests: int
) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(requests):
        t = time.perf_counter()
        status, body = _get(conn, headers)
        times.append(time.perf_counter() - t)
        if status != 200:
            raise SystemExit(f"bench: /metrics answered {status}")
        size = len(body)
    times.sort()
    return times, size


def measure(tree: Path, tmp: Path, processes: int, requests: int, interval: float) -> list[Latency]:
    """Latency percentiles of `requests` sequential GETs per encoding, served
    by an exporter collecting tree every interval seconds."""
    out = []
    with serving(tree, tmp, interval) as conn:
        for encoding, headers in ENCODINGS.items():
            times, size = _time_requests(conn, headers, requests)
            groups, duration = inspect(_get(conn, {})[1])
            quantiles = tuple(nearest_rank(times, q) for q in QUANTILES)
            out.append(
                Latency(
                    processes=processes,
                    interval=interval,
                    collection=duration,
                    groups=groups,
                    encoding=encoding,
                    size=size,
                    requests=len(times),
                    quantiles=quantiles,
                    max=times[-1],
                )
            )
        conn.close()
    return out
