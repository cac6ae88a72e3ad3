"""The HTTP surface of a running exporter: formats, encodings, paths, methods,
and serving the previous snapshot while a collection is stuck on /proc."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

import exporter
from exporter.collector import Collector
from exporter.config import build_config
from exporter.loop import CollectionLoop
from exporter.snapshot import Snapshot

from conftest import (
    group_value,
    http_get,
    parse_samples,
    running_exporter,
    serving_exporter,
    wait_until,
)

pytestmark = pytest.mark.live

KIB = 1024
INTERVAL = "200ms"
TEXT_TYPE = "text/plain; version=0.0.4"
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"
WAIT = 15.0  # upper bound of every wait; never reached when things work

# pid -> (comm, argv, Pss in kB): the fixture procfs tree's processes.
PROCESSES = {
    100: ("alpha", ("alpha", "--serve"), 600),
    200: ("beta", ("/usr/bin/beta",), 300),
}


# ------------------------------------------------------------ fixture procfs


def stat_line(pid: int, comm: str, starttime: int, flags: int = 0x400100) -> str:
    """A /proc/PID/stat line: flags is field 9, starttime field 22."""
    after_comm = ["S", "1", str(pid), str(pid), "0", "-1", str(flags)]
    after_comm += ["0"] * 8 + ["20", "0", "1", "0", str(starttime), "0", "0"]
    return f"{pid} ({comm}) {' '.join(after_comm)}\n"


def smaps_rollup(pss_kb: int) -> bytes:
    """smaps_rollup of a 6.x kernel: all Pss anonymous and private dirty."""
    return (
        "55d0c0000000-7ffc00000000 ---p 00000000 00:00 0    [rollup]\n"
        f"Rss:            {pss_kb + 100} kB\n"
        f"Pss:            {pss_kb} kB\n"
        f"Pss_Anon:       {pss_kb} kB\n"
        "Pss_File:       0 kB\n"
        "Pss_Shmem:      0 kB\n"
        "Shared_Clean:   100 kB\n"
        "Shared_Dirty:   0 kB\n"
        "Private_Clean:  0 kB\n"
        f"Private_Dirty:  {pss_kb} kB\n"
        "Swap:           0 kB\n"
        "SwapPss:        0 kB\n"
    ).encode()


def build_procfs(root: Path) -> Path:
    """A minimal procfs tree with PROCESSES; returns its root."""
    root.mkdir()
    (root / "meminfo").write_text("MemTotal: 2048000 kB\nMemAvailable: 1024000 kB\n")
    (root / "stat").write_text("cpu 0 0 0 0\nbtime 1700000000\n")
    for pid, (comm, argv, pss_kb) in PROCESSES.items():
        d = root / str(pid)
        d.mkdir()
        (d / "stat").write_text(stat_line(pid, comm, starttime=1000 + pid))
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "smaps_rollup").write_bytes(smaps_rollup(pss_kb))
    return root


def write_config(path: Path) -> Path:
    path.write_text(f"collection:\n  interval: {INTERVAL}\n")
    return path


@pytest.fixture(scope="module")
def fixture_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One exporter over a static fixture tree, shared by the read-only tests."""
    base = tmp_path_factory.mktemp("http")
    procfs = build_procfs(base / "proc")
    config = write_config(base / "config.yaml")
    with running_exporter(f"--path.procfs={procfs}", f"--config={config}") as url:
        yield url


# --------------------------------------------------------------- small helpers


def status_of(url: str) -> int:
    return http_get(url, timeout=2)[0]


def metrics_samples(url: str) -> dict:
    status, _, body = http_get(url + "/metrics", timeout=2)
    assert status == 200
    return parse_samples(body.decode())


def openmetrics_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """parse_samples' result for an OpenMetrics body (its own, stricter parser)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in parse_openmetrics(text)
        for s in fam.samples
    }


def post(url: str) -> tuple[int, http.client.HTTPMessage]:
    """POST an empty body (urllib's helpers only GET); returns status and headers."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("POST", parts.path or "/", body=b"")
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.headers
    finally:
        conn.close()


def raw_response(url: str, method: str, path: str) -> bytes:
    """Every byte the server sends for one request on a closing connection."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.hrefs


# ------------------------------------------------------------------- formats


def test_metrics_default_is_prometheus_text(fixture_url: str) -> None:
    status, headers, body = http_get(fixture_url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith(TEXT_TYPE)
    assert headers.get("Content-Encoding") is None
    samples = parse_samples(body.decode())
    for pid, (comm, _, pss_kb) in PROCESSES.items():
        assert group_value(samples, "pss_group_pss_bytes", comm) == pss_kb * KIB, pid
    info = [labels for name, labels in samples if name == "pss_exporter_build_info"]
    assert len(info) == 1
    assert dict(info[0])["version"] == exporter.__version__


def test_metrics_openmetrics_when_asked(fixture_url: str) -> None:
    status, headers, body = http_get(fixture_url + "/metrics", {"Accept": OPENMETRICS_ACCEPT})
    assert status == 200
    assert headers["Content-Type"].startswith(OPENMETRICS_ACCEPT)
    assert body.endswith(b"# EOF\n")
    samples = openmetrics_samples(body.decode())
    assert group_value(samples, "pss_group_pss_bytes", "alpha") == 600 * KIB
    info = [labels for name, labels in samples if name == "pss_exporter_build_info"]
    assert [dict(labels)["version"] for labels in info] == [exporter.__version__]


@pytest.mark.parametrize(
    ("accept", "content_type", "parse"),
    [
        ("", TEXT_TYPE, parse_samples),
        (
            OPENMETRICS_ACCEPT,
            OPENMETRICS_ACCEPT,
            openmetrics_samples,
        ),
    ],
    ids=["text", "openmetrics"],
)
def test_metrics_gzip(
    fixture_url: str, accept: str, content_type: str, parse: Callable[[str], dict]
) -> None:
    headers = {"Accept-Encoding": "gzip"}
    if accept:
        headers["Accept"] = accept
    status, resp_headers, body = http_get(fixture_url + "/metrics", headers)
    assert status == 200
    assert resp_headers["Content-Encoding"] == "gzip"
    assert resp_headers["Content-Type"].startswith(content_type)
    assert int(resp_headers["Content-Length"]) == len(body)
    samples = parse(gzip.decompress(body).decode())
    assert group_value(samples, "pss_group_pss_bytes", "beta") == 300 * KIB


# Prometheus 2.x's Accept header, and one as Prometheus 3 sends with its
# default scrape_protocols (weights descending, */* last).
PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS_2_ACCEPT, True),
        (PROMETHEUS_3_ACCEPT, True),
        ("application/openmetrics-text;version=1.0.0;q=0", False),  # q=0: not acceptable
        ("application/openmetrics-text;q=0, */*", False),
        ("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;version=1.0.0;q=0.5", False),
        ("text/plain;version=0.0.4;q=0.5, application/openmetrics-text;q=0.6", True),
        ("application/*", True),
        ("*/*", False),  # only a wildcard: text, which every scraper reads
        ("text/plain, application/openmetrics-text", True),  # a tie: OpenMetrics, as named
        ("application/openmetrics-text;version=0.0.1", False),  # a version not offered
        ("APPLICATION/OpenMetrics-Text; Version=1.0.0", True),  # case-insensitive
        ("application/openmetrics-text;q=high, text/plain;q=0.1", False),  # malformed q
    ],
)
def test_metrics_format_follows_accept_weights(
    fixture_url: str, accept: str, openmetrics: bool
) -> None:
    """RFC 9110 12.5.1: the highest q among what is offered; q=0 excludes. A
    substring match served OpenMetrics to a q=0 and text to application/*."""
    status, headers, body = http_get(fixture_url + "/metrics", {"Accept": accept})
    assert status == 200
    if openmetrics:
        assert headers["Content-Type"].startswith(OPENMETRICS_ACCEPT)
        samples = openmetrics_samples(body.decode())
    else:
        assert headers["Content-Type"].startswith(TEXT_TYPE)
        samples = parse_samples(body.decode())
    assert group_value(samples, "pss_group_pss_bytes", "alpha") == 600 * KIB
    assert headers["Vary"] == "Accept, Accept-Encoding"


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("gzip;q=0", False),  # q=0: not acceptable
        ("nogzip-please", False),  # a token is matched whole
        ("x-gzip", True),  # RFC 9110 8.4.1.3: the same as gzip
        ("GZIP", True),
        ("*", True),
        ("identity;q=0, *", True),
        ("gzip;q=0.5, identity", False),  # identity is preferred
        ("br, deflate", False),
        ("deflate, gzip;q=1.0", True),
        ("", False),  # empty: no content coding wanted
    ],
)
def test_metrics_gzip_follows_accept_encoding_weights(
    fixture_url: str, accept_encoding: str, gzipped: bool
) -> None:
    """RFC 9110 12.5.3. A substring match gzipped for gzip;q=0 and for
    nogzip-please, and not for x-gzip or *."""
    status, headers, body = http_get(fixture_url + "/metrics", {"Accept-Encoding": accept_encoding})
    assert status == 200
    assert headers.get("Content-Encoding") == ("gzip" if gzipped else None)
    text = gzip.decompress(body) if gzipped else body
    assert group_value(parse_samples(text.decode()), "pss_group_pss_bytes", "beta") == 300 * KIB


# -------------------------------------------------------------- other paths


def test_landing_page_links_metrics(fixture_url: str) -> None:
    status, headers, body = http_get(fixture_url + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    targets = {urljoin(fixture_url + "/", href) for href in links(body.decode())}
    assert fixture_url + "/metrics" in targets


def test_healthz_ok_while_fresh(fixture_url: str) -> None:
    status, _, body = http_get(fixture_url + "/healthz")
    assert (status, body) == (200, b"OK\n")


@pytest.mark.parametrize("path", ["/nope", "/metrics/extra", "/healthzz"])
def test_unknown_path_is_404(fixture_url: str, path: str) -> None:
    assert status_of(fixture_url + path) == 404


@pytest.mark.parametrize("path", ["/metrics", "/"])
def test_post_is_405(fixture_url: str, path: str) -> None:
    status, headers = post(fixture_url + path)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(("path", "content_type"), [("/", "text/html"), ("/metrics", TEXT_TYPE)])
def test_head_has_headers_and_no_body(fixture_url: str, path: str, content_type: str) -> None:
    raw = raw_response(fixture_url, "HEAD", path)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep and rest == b""
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Content-Type"].startswith(content_type)
    assert int(fields["Content-Length"]) > 0


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://{netloc}/metrics", b"pss_group_pss_bytes{"),
        ("HTTP://example.org/metrics?x=1", b"pss_group_pss_bytes{"),
        ("https://example.org/healthz", b"OK\n"),
        ("http://example.org", b"<html"),  # an empty path is /
    ],
)
def test_absolute_form_targets_are_served(fixture_url: str, target: str, expected: bytes) -> None:
    """RFC 9112 3.2.2: a server must accept the absolute form (as sent to a
    proxy); it was a 404."""
    netloc = urlsplit(fixture_url).netloc
    raw = raw_response(fixture_url, "GET", target.format(netloc=netloc))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK"
    assert expected in body


def test_a_request_body_is_not_taken_for_a_request(fixture_url: str) -> None:
    """Bodies are never read: on a kept-alive connection, the bytes of one
    were parsed as the next request. The connection now closes after it."""
    parts = urlsplit(fixture_url)
    inner = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    outer = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(outer + inner)
        chunks = []
        with contextlib.suppress(TimeoutError):  # (a server that keeps it open)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw.startswith(b"HTTP/1.1 405 ")
    assert b"Connection: close\r\n" in raw
    assert raw.count(b"HTTP/1.1 ") == 1 and b"pss_group" not in raw


# ---------------------------------------------------------- slow collection


class HeldCollector(Collector):
    """A real Collector whose collections wait while held: a collection
    stuck on /proc (nothing in /proc can hold one any more, by design)."""

    def __init__(self, procfs: Path) -> None:
        super().__init__(build_config({"collection": {"interval": INTERVAL}}, "test"), str(procfs))
        self.free = threading.Event()
        self.free.set()

    def collect(self) -> Snapshot:
        self.free.wait()
        return super().collect()


@contextmanager
def loop_serving(collector: HeldCollector) -> Iterator[str]:
    """The collection loop over collector, started, and the exporter's web
    server for it; yields its base URL."""
    loop = CollectionLoop(collector, collector.config.collection.interval)
    loop.start()
    try:
        with serving_exporter(loop) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        collector.free.set()
        loop.stop()


def alpha_pss(url: str) -> float:
    return group_value(metrics_samples(url), "pss_group_pss_bytes", "alpha")


def test_stuck_collection_serves_previous_snapshot_and_turns_unhealthy(tmp_path: Path) -> None:
    procfs = build_procfs(tmp_path / "proc")
    collector = HeldCollector(procfs)
    with loop_serving(collector) as url:
        wait_until("/healthz to turn 200", lambda: status_of(url + "/healthz") == 200)
        assert alpha_pss(url) == 600 * KIB
        collector.free.clear()
        (procfs / "100" / "smaps_rollup").write_bytes(smaps_rollup(900))
        wait_until("/healthz to turn 503", lambda: status_of(url + "/healthz") == 503)
        # The collection is stuck: scrapes still answer, from the old snapshot.
        first = http_get(url + "/metrics", timeout=2)
        second = http_get(url + "/metrics", timeout=2)
        assert first[0] == second[0] == 200
        assert first[2] == second[2]  # no new snapshot was published meanwhile
        samples = parse_samples(first[2].decode())
        assert group_value(samples, "pss_group_pss_bytes", "alpha") == 600 * KIB
        assert group_value(samples, "pss_group_pss_bytes", "beta") == 300 * KIB

        collector.free.set()
        wait_until("the new Pss on /metrics", lambda: alpha_pss(url) == 900 * KIB)
        wait_until("/healthz to turn 200", lambda: status_of(url + "/healthz") == 200)
        assert group_value(metrics_samples(url), "pss_group_pss_bytes", "beta") == 300 * KIB


def test_no_snapshot_yet_is_503_at_once(tmp_path: Path) -> None:
    procfs = build_procfs(tmp_path / "proc")
    collector = HeldCollector(procfs)
    collector.free.clear()  # the first collection waits
    with loop_serving(collector) as url:
        assert http_get(url + "/healthz", timeout=2)[0] == 503
        assert http_get(url + "/metrics", timeout=2)[0] == 503
        assert status_of(url + "/") == 200
        (procfs / "200" / "smaps_rollup").write_bytes(smaps_rollup(700))
        collector.free.set()
        wait_until("/healthz to turn 200", lambda: status_of(url + "/healthz") == 200)
        assert group_value(metrics_samples(url), "pss_group_pss_bytes", "beta") == 700 * KIB
