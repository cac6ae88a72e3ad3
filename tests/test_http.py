"""The HTTP surface of a running exporter: formats, encodings, paths, methods,
and serving the previous snapshot while a collection is stuck on /proc."""

from __future__ import annotations

import errno
import gzip
import http.client
import os
import socket
import time
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

from conftest import group_value, http_get, parse_samples, running_exporter, wait_until

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


# ---------------------------------------------------------- slow collection


def open_fifo_writer(path: Path) -> int:
    """Open a FIFO for writing once its reader waits; never blocks."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def release_fifo(path: Path, content: bytes) -> None:
    """Hand the blocked reader of FIFO path its content and put a regular file
    with the same content in its place, so later collections read a file."""
    fd = open_fifo_writer(path)
    try:
        replacement = path.with_name(path.name + ".new")
        replacement.write_bytes(content)
        os.replace(replacement, path)
        os.write(fd, content)
    finally:
        os.close(fd)


def install_fifo(procfs: Path, pid: int) -> Path:
    """Make PID's smaps_rollup a FIFO: collections block opening it."""
    rollup = procfs / str(pid) / "smaps_rollup"
    fifo = rollup.with_name("smaps_rollup.fifo")
    os.mkfifo(fifo)
    os.replace(fifo, rollup)  # atomic: no collection sees the file missing
    return rollup


@contextmanager
def stuck_rollup(procfs: Path, pid: int, then_pss_kb: int) -> Iterator[None]:
    """Collections block on PID's smaps_rollup inside the with-block; on
    leaving it, the blocked read gets a rollup with Pss then_pss_kb."""
    rollup = install_fifo(procfs, pid)
    try:
        yield
    finally:
        release_fifo(rollup, smaps_rollup(then_pss_kb))


def alpha_pss(url: str) -> float:
    return group_value(metrics_samples(url), "pss_group_pss_bytes", "alpha")


def test_stuck_collection_serves_previous_snapshot_and_turns_unhealthy(tmp_path: Path) -> None:
    procfs = build_procfs(tmp_path / "proc")
    config = write_config(tmp_path / "config.yaml")
    with running_exporter(f"--path.procfs={procfs}", f"--config={config}") as url:
        assert alpha_pss(url) == 600 * KIB
        with stuck_rollup(procfs, 100, then_pss_kb=900):
            wait_until("/healthz to turn 503", lambda: status_of(url + "/healthz") == 503)
            # The collection is stuck: scrapes still answer, from the old snapshot.
            first = http_get(url + "/metrics", timeout=2)
            second = http_get(url + "/metrics", timeout=2)
            assert first[0] == second[0] == 200
            assert first[2] == second[2]  # no new snapshot was published meanwhile
            samples = parse_samples(first[2].decode())
            assert group_value(samples, "pss_group_pss_bytes", "alpha") == 600 * KIB
            assert group_value(samples, "pss_group_pss_bytes", "beta") == 300 * KIB

        wait_until("the new Pss on /metrics", lambda: alpha_pss(url) == 900 * KIB)
        wait_until("/healthz to turn 200", lambda: status_of(url + "/healthz") == 200)
        assert group_value(metrics_samples(url), "pss_group_pss_bytes", "beta") == 300 * KIB


def test_no_snapshot_yet_is_503_at_once(tmp_path: Path) -> None:
    procfs = build_procfs(tmp_path / "proc")
    config = write_config(tmp_path / "config.yaml")
    rollup = install_fifo(procfs, 200)  # the first collection blocks
    args = (f"--path.procfs={procfs}", f"--config={config}")
    with running_exporter(*args, ready=False) as url:
        try:
            assert http_get(url + "/healthz", timeout=2)[0] == 503
            assert http_get(url + "/metrics", timeout=2)[0] == 503
            assert status_of(url + "/") == 200
        finally:
            release_fifo(rollup, smaps_rollup(700))
        wait_until("/healthz to turn 200", lambda: status_of(url + "/healthz") == 200)
        assert group_value(metrics_samples(url), "pss_group_pss_bytes", "beta") == 700 * KIB
