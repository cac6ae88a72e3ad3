"""A bounded load test on loopback: concurrent keep-alive scrapes of one
exporter for a few seconds; every response complete and correct. Throughput
and latency are printed (run with -s) and recorded in docs/load-test.md; they
are not asserted.
"""

from __future__ import annotations

import gzip
import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from conftest import FIXTURES, group_value, http_get, parse_samples, running_exporter

pytestmark = pytest.mark.live

PROCFS = FIXTURES / "procfs" / "fpm-host"  # static: every snapshot has the same groups
CLIENTS = 8
DURATION = 5.0  # seconds, at most...
MAX_REQUESTS = 1500  # ...and at most this many requests per client
GROUP, METRIC = "php-fpm:www", "pss_group_pss_bytes"


@dataclass(frozen=True)
class Reference:
    value: float  # GROUP's METRIC in a single scrape
    last_family: bytes  # the "# TYPE ..." line of the exposition's last family


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)  # ids of the sockets used


def last_type_line(text: bytes) -> bytes:
    start = text.rindex(b"\n# TYPE ") + 1
    return text[start : text.index(b"\n", start)]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An exporter whose snapshot does not change during the test: a static
    procfs tree and an interval far longer than the test."""
    config = tmp_path_factory.mktemp("load") / "config.yaml"
    config.write_text("collection:\n  interval: 120s\n")
    with running_exporter(f"--path.procfs={PROCFS}", f"--config={config}") as base:
        yield base


def reference(url: str) -> Reference:
    status, _, body = http_get(url + "/metrics")
    assert status == 200
    value = group_value(parse_samples(body.decode()), METRIC, GROUP)
    return Reference(value, last_type_line(body))


class Checker:
    """Checks bodies; parses each distinct body once (they repeat)."""

    def __init__(self, ref: Reference) -> None:
        self.ref = ref
        self._verdicts: dict[bytes, str | None] = {}
        self._lock = threading.Lock()

    def problem(self, body: bytes, gzipped: bool) -> str | None:
        with self._lock:
            if body not in self._verdicts:
                self._verdicts[body] = self._check(gzip.decompress(body) if gzipped else body)
            return self._verdicts[body]

    def _check(self, text: bytes) -> str | None:
        if not text.endswith(b"\n") or last_type_line(text) != self.ref.last_family:
            return f"truncated exposition ending {text[-80:]!r}"
        value = group_value(parse_samples(text.decode()), METRIC, GROUP)
        if value != self.ref.value:
            return f"{GROUP} {METRIC} {value} != {self.ref.value}"
        return None


def client(url: str, gzipped: bool, checker: Checker, deadline: float) -> ClientResult:
    """Scrape /metrics over one keep-alive connection until the deadline."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    result = ClientResult()
    try:
        while len(result.latencies) < MAX_REQUESTS and time.monotonic() < deadline:
            start = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            result.latencies.append(time.perf_counter() - start)
            assert conn.sock is not None
            result.connections.add(id(conn.sock))
            length = int(resp.headers["Content-Length"])
            if resp.status != 200 or length != len(body):
                result.problems.append(f"status {resp.status}, {len(body)} of {length} bytes")
            elif (resp.headers.get("Content-Encoding") == "gzip") != gzipped:
                result.problems.append(f"Content-Encoding {resp.headers['Content-Encoding']}")
            elif problem := checker.problem(body, gzipped):
                result.problems.append(problem)
    except (OSError, http.client.HTTPException) as exc:
        result.problems.append(f"request failed: {exc!r}")
    finally:
        conn.close()
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    return sorted_values[max(0, -(-len(sorted_values) * q // 100) - 1)]


def test_concurrent_keepalive_scrapes_are_complete_and_correct(url: str) -> None:
    ref = reference(url)
    checker = Checker(ref)
    results: dict[int, ClientResult] = {}
    start = time.monotonic()
    deadline = start + DURATION

    def run(i: int) -> None:
        results[i] = client(url, i % 2 == 1, checker, deadline)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION + 30)
    elapsed = time.monotonic() - start

    assert not any(t.is_alive() for t in threads)
    assert sorted(results) == list(range(CLIENTS))  # no client died
    problems = [p for r in results.values() for p in r.problems]
    assert problems == [], problems[:5]
    assert all(len(r.latencies) > 0 for r in results.values())
    # Keep-alive held: each client used one connection throughout.
    assert all(len(r.connections) == 1 for r in results.values())
    latencies = sorted(x for r in results.values() for x in r.latencies)
    print(
        f"\n{len(latencies)} scrapes by {CLIENTS} keep-alive clients in {elapsed:.2f} s: "
        f"{len(latencies) / elapsed:.0f}/s, latency p50 {percentile(latencies, 50) * 1e3:.2f} ms, "
        f"p99 {percentile(latencies, 99) * 1e3:.2f} ms, max {latencies[-1] * 1e3:.2f} ms"
    )
    # The server is still fine after the load.
    assert http_get(url + "/healthz")[0] == 200
