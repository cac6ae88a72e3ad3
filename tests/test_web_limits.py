"""The web server's limits, against a server in this process (so a test can
shorten a deadline, count bcrypt runs and break the collection loop): the
request head deadline, a flood of wrong passwords, and a handler that fails.

The slot limit and eviction, with real exporters: tests/test_web_security.py.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import bcrypt
import pytest

from exporter import web, webconfig
from exporter.collector import Collector
from exporter.config import build_config
from exporter.loop import CollectionLoop
from exporter.web import IDLE_TIMEOUT
from exporter.webconfig import WebConfigWatcher

from conftest import FIXTURES, group_value, parse_samples, serving_exporter

pytestmark = pytest.mark.live

PROCFS = FIXTURES / "procfs" / "kernel-threads"  # one group: sshd


def fixture_loop() -> CollectionLoop:
    """A collection loop with one snapshot of the fixture tree published."""
    loop = CollectionLoop(Collector(build_config({}, "test"), str(PROCFS)), 60.0)
    loop.run_once()
    return loop


def serving(
    loop: object | None = None, web: WebConfigWatcher | None = None, **knobs: float
) -> contextlib.AbstractContextManager[int]:
    """serving_exporter over the fixture loop unless a loop is given."""
    return serving_exporter(loop or fixture_loop(), web, **knobs)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def closed_by_server(sock: socket.socket, wait: float = 0.0) -> bool:
    """True if the server has closed (or reset) this connection within wait seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, TimeoutError):
        return False
    except ConnectionError:
        return True


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# ------------------------------------------------------------ head deadline


def test_a_request_head_must_be_complete_within_the_deadline() -> None:
    """Slowloris: the per-read timeout never fired for a client sending a
    header byte now and then, so it held its slot for ever."""
    with serving(head_deadline=1.0) as port, ExitStack() as stack:
        drip = stack.enter_context(connect(port))
        idle = stack.enter_context(connect(port))
        drip.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        while time.monotonic() - started < 10 and not closed_by_server(drip, 0.2):
            try:
                drip.sendall(b"a")  # a byte every 0.2 s: every read succeeds
            except OSError:  # the server has gone
                break
        held = time.monotonic() - started
        assert 0.9 < held < 5, f"a dripping request head held its connection {held:.1f}s"
        # The deadline is for a request head: a silent connection gets the idle
        # timeout, and serves its request when it comes.
        assert held < IDLE_TIMEOUT and not closed_by_server(idle)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.sock = idle
        idle.settimeout(5)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
        assert group_value(parse_samples(body.decode()), "pss_group_processes", "sshd") == 1


# ------------------------------------------------------ basic auth flood


class CheckCounter:
    """Wraps bcrypt.checkpw: how often each password was checked."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.calls[password] = self.calls.get(password, 0) + 1
        return self.real(password, hashed)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)]


FLOODERS = 16
FLOOD_SECONDS = 3.0


def test_a_flood_of_wrong_passwords_does_not_slow_a_verified_scraper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong passwords for alice (cost 10, 60 ms of bcrypt each) from half
    the threads, for bob (cost 4: many failures fast) from the others. The
    verdict cache was cleared every 256 failures, so alice's scraper paid
    bcrypt again; and every failure ran bcrypt at once, so her scrapes
    queued for the CPU."""
    web = tmp_path / "web.yml"
    alice = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(10)).decode()
    bob = bcrypt.hashpw(b"builder", bcrypt.gensalt(4)).decode()
    web.write_text(f"basic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")
    counter = CheckCounter(bcrypt.checkpw)
    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counter)
    stop = threading.Event()
    refused: list[int] = []

    def flood(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        user, n = ("alice", "bob")[i % 2], 0
        while not stop.is_set():
            n += 1
            conn.request("GET", "/metrics", headers=basic(user, f"guess-{i}-{n}"))
            resp = conn.getresponse()
            resp.read()
            refused.append(resp.status)
        conn.close()

    with serving(web=WebConfigWatcher(str(web))) as port:
        scraper = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        right = basic("alice", "wonderland")

        def scrape() -> float:
            started = time.perf_counter()
            scraper.request("GET", "/metrics", headers=right)
            resp = scraper.getresponse()
            body = resp.read()
            assert resp.status == 200 and b"pss_group_processes" in body
            return time.perf_counter() - started

        scrape()  # verified once, before the flood
        flooders = [threading.Thread(target=flood, args=(i,)) for i in range(FLOODERS)]
        for t in flooders:
            t.start()
        try:
            time.sleep(0.5)  # the flood is on
            latencies: list[float] = []
            until = time.monotonic() + FLOOD_SECONDS
            while time.monotonic() < until:
                latencies.append(scrape())
                time.sleep(0.01)
        finally:
            stop.set()
            for t in flooders:
                t.join(30)
        scraper.close()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(  # with -s: the figures in docs/load-test.md
        f"\n{len(latencies)} scrapes during {len(refused)} wrong passwords from "
        f"{FLOODERS} threads: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
        f"max {max(latencies) * 1e3:.1f} ms; bcrypt ran {sum(counter.calls.values())} times"
    )
    assert len(refused) > FLOODERS * 2 and set(refused) == {401}
    assert counter.calls[b"wonderland"] == 1  # never checked again
    assert p99 < 1.0


# ------------------------------------------------------ a failing handler


class BrokenLoop:
    """A collection loop whose exposition cannot be read: a stand-in for a bug."""

    interval = 60.0

    @property
    def latest(self) -> object:
        raise RuntimeError("no exposition\nsecond line")

    def healthy(self) -> bool:
        return True

    def asked(self, fmt: str) -> None:
        pass


def test_a_handler_error_is_one_log_line_and_closes_only_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.web")
    with serving(loop=BrokenLoop()) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")  # keep-alive: the same thread serves the next
        assert conn.getresponse().read() == b"OK\n"
        conn.request("GET", "/metrics")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()  # closed without an answer
        conn.close()
        # The server serves on.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    errors = [r for r in caplog.records if r.name == "exporter.web" and r.levelno > logging.DEBUG]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    message = errors[0].getMessage()
    assert "internal error: RuntimeError: 'no exposition\\nsecond line'" in message
    assert "\n" not in message and errors[0].exc_info is None


# ------------------------------------------------------ head size, slow readers


def test_request_headers_over_64k_in_all_are_431() -> None:
    """http.server bounds a header line (64 KiB) and their number (100), not
    their sum: one request held 6.4 MB, 1,024 slots gigabytes."""
    with serving() as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.putrequest("GET", "/metrics")
        for i in range(3):
            conn.putheader(f"X-Pad-{i}", "a" * 30_000)  # each line well under 64 KiB
        conn.endheaders()
        assert conn.getresponse().status == 431
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics", headers={"X-Pad": "a" * 30_000})
        assert conn.getresponse().status == 200
        conn.close()


class _BigExposition:
    body_bytes = b"# padding\n" * 1_600_000  # 16 MB: more than any socket buffers hold

    def body(self, fmt: str, gz: bool) -> bytes:
        return self.body_bytes


class BigLoop(BrokenLoop):
    """A collection loop with an exposition too big for the socket buffers."""

    latest = _BigExposition()


def stalled_reader(port: int) -> socket.socket:
    """A connection that asks for /metrics and never reads the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def test_clients_that_do_not_read_their_responses_do_not_lock_out_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Busy connections were never evicted: two slots held by clients that
    never read a response refused every other connection."""
    monkeypatch.setattr(web, "BUSY_GRACE", 0.5)
    with serving(loop=BigLoop(), slots=2) as port, ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(stalled_reader(port))
        time.sleep(1.5)  # both busy sending, past the grace
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == _BigExposition.body_bytes
        conn.close()


def test_a_response_must_be_sent_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A response had only the socket's timeout (per TLS record: minutes for
    a client reading a little now and then); now it has a deadline."""
    monkeypatch.setattr(web, "RESPONSE_DEADLINE", 1.0)
    with serving(loop=BigLoop()) as port, stalled_reader(port) as sock:
        time.sleep(2.5)  # past the deadline, well within the socket timeout
        received, whole = 0, len(_BigExposition.body_bytes)
        with contextlib.suppress(ConnectionError):
            while received < whole and (chunk := sock.recv(1 << 20)):
                received += len(chunk)
        assert 0 < received < whole  # cut short: the server hung up
