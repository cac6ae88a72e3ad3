"""The FastCGI client: against Debian's php-fpm (status page, ping, real PHP
scripts over TCP and a unix socket) and against fake servers on loopback that
answer garbled, truncated, oversized, wrong or no records at all."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fpm import global_section, running_fpm

from exporter.fastcgi import FastCGIError, parse_address, request

from conftest import free_port

# --- FastCGI records, written here independently of exporter/fastcgi.py -------

BEGIN, END, PARAMS, STDIN, STDOUT, STDERR, UNKNOWN_TYPE = 1, 3, 4, 5, 6, 7, 11


@dataclass(frozen=True)
class Record:
    version: int
    type: int
    request_id: int
    content: bytes


def record(rtype: int, content: bytes, request_id: int, version: int = 1, pad: int = 0) -> bytes:
    header = bytes([version, rtype]) + request_id.to_bytes(2, "big")
    header += len(content).to_bytes(2, "big") + bytes([pad, 0])
    return header + content + b"\xaa" * pad


def end_request(request_id: int, protocol_status: int = 0) -> bytes:
    return record(END, struct.pack(">IB3x", 0, protocol_status), request_id)


def read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError(f"peer closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_record(conn: socket.socket) -> Record:
    version, rtype, rid_hi, rid_lo, len_hi, len_lo, pad, _ = read_exact(conn, 8)
    content = read_exact(conn, (len_hi << 8 | len_lo) + pad)
    return Record(version, rtype, rid_hi << 8 | rid_lo, content[: len(content) - pad])


def decode_pairs(data: bytes) -> dict[str, str]:
    """FastCGI name-value pairs: lengths of 1 byte, or 4 with the top bit set."""
    pairs, pos = {}, 0

    def length() -> int:
        nonlocal pos
        if data[pos] < 0x80:
            pos += 1
            return data[pos - 1]
        pos += 4
        return int.from_bytes(data[pos - 4 : pos], "big") & 0x7FFFFFFF

    while pos < len(data):
        name_len, value_len = length(), length()
        name = data[pos : pos + name_len].decode()
        pairs[name] = data[pos + name_len : pos + name_len + value_len].decode()
        pos += name_len + value_len
    return pairs


# --- fake FastCGI servers --------------------------------------------------------

Reply = Callable[[socket.socket, int], None]  # (connection, request id of the request)


@dataclass
class FakeServer:
    """Accepts one connection on 127.0.0.1, reads a whole FastCGI request,
    then lets `reply` answer; holds the connection open until stopped."""

    reply: Reply
    listener: socket.socket = field(default_factory=socket.socket)
    requests: list[list[Record]] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0  # connections

    def __post_init__(self) -> None:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # stopped before any client came
            return
        self.accepted += 1
        with conn:
            conn.settimeout(10)
            records = [read_record(conn)]
            while records[-1].type != STDIN or records[-1].content:
                records.append(read_record(conn))
            self.requests.append(records)
            # OSError: the client hung up on us, as it should on bad answers.
            with contextlib.suppress(OSError):
                self.reply(conn, records[0].request_id)
            self.stopped.wait(10)

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def fake() -> Iterator[Callable[[Reply], FakeServer]]:
    servers: list[FakeServer] = []

    def start(reply: Reply) -> FakeServer:
        servers.append(FakeServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def sends(*chunks: Callable[[int], bytes]) -> Reply:
    """A reply sending each chunk (built from the request id), then holding."""

    def reply(conn: socket.socket, rid: int) -> None:
        for chunk in chunks:
            conn.sendall(chunk(rid))

    return reply


def closes(*chunks: Callable[[int], bytes]) -> Reply:
    """A reply sending each chunk, then closing the connection."""

    def reply(conn: socket.socket, rid: int) -> None:
        sends(*chunks)(conn, rid)
        conn.shutdown(socket.SHUT_RDWR)

    return reply


HELLO = b"Content-Type: text/plain\r\nX-Two: a\r\nX-Two: b\r\n\r\nhello"


def hello(rid: int) -> bytes:
    return record(STDOUT, HELLO, rid, pad=3) + record(STDOUT, b"", rid)


# --- against fake servers ---------------------------------------------------------


@pytest.mark.live
def test_request_records_and_params(fake: Callable[[Reply], FakeServer]) -> None:
    def reply(conn: socket.socket, rid: int) -> None:
        answer = record(STDERR, b"a warning", rid) + hello(rid) + end_request(rid)
        for i in range(len(answer)):  # one byte at a time: records arrive in pieces
            conn.sendall(answer[i : i + 1])

    server = fake(reply)
    script = "/" + "s" * 200  # longer than 127 bytes: a 4-byte length
    response = request(server.listen, script, query="json&full", timeout=5)

    assert response.status == 200
    assert response.headers == {"content-type": "text/plain", "x-two": "a, b"}
    assert response.body == b"hello"
    assert response.stderr == b"a warning"

    [records] = server.requests
    assert [r.type for r in records] == [BEGIN, PARAMS, PARAMS, STDIN]
    assert {r.version for r in records} == {1}
    assert len({r.request_id for r in records}) == 1 and records[0].request_id != 0
    role, flags = struct.unpack(">HB5x", records[0].content)
    assert (role, flags) == (1, 0)  # RESPONDER, server closes the connection
    assert records[2].content == records[3].content == b""
    assert decode_pairs(records[1].content) == {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "pss-exporter",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_FILENAME": script,
        "SCRIPT_NAME": script,
        "REQUEST_URI": script + "?json&full",
        "QUERY_STRING": "json&full",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_NAME": "localhost",
    }


@pytest.mark.live
def test_status_header_and_host_name(fake: Callable[[Reply], FakeServer]) -> None:
    body = b"Status: 503 Service Unavailable\nContent-Type: text/plain\n\nbusy\r\n\r\n"
    server = fake(sends(lambda rid: record(STDOUT, body, rid) + end_request(rid)))
    port = server.listen.rsplit(":", 1)[1]
    response = request(f"localhost:{port}", "/status", timeout=5)  # resolved, then tried
    assert response.status == 503
    assert response.body == b"busy\r\n\r\n"
    [records] = server.requests
    assert decode_pairs(records[1].content)["REQUEST_URI"] == "/status"


BAD_ANSWERS = {
    "bad version": (sends(lambda rid: record(STDOUT, HELLO, rid, version=2)), "garbled record"),
    "other request id": (sends(lambda rid: hello(rid + 1)), "garbled record"),
    "management record": (sends(lambda rid: record(UNKNOWN_TYPE, bytes(8), 0)), "garbled record"),
    "unknown type": (sends(lambda rid: record(STDIN, b"x", rid)), "garbled record"),
    "short end": (sends(lambda rid: hello(rid) + record(END, bytes(4), rid)), "garbled record"),
    "closed mid-record": (closes(lambda rid: hello(rid)[:20]), "truncated response"),
    "closed before end": (closes(hello), "truncated response"),
    "overloaded": (sends(lambda rid: hello(rid) + end_request(rid, 2)), "protocol status 2"),
    "no headers": (sends(lambda rid: record(STDOUT, b"hi", rid) + end_request(rid)), "malformed"),
    "bad status": (
        sends(lambda rid: record(STDOUT, b"Status: OK\r\n\r\n", rid) + end_request(rid)),
        "malformed",
    ),
    # '²' is a digit to str.isdigit() (latin-1 0xB2) but not to int().
    "superscript status": (
        sends(lambda rid: record(STDOUT, b"Status: \xb200\r\n\r\n", rid) + end_request(rid)),
        "malformed",
    ),
    "status of 5000 digits": (
        sends(
            lambda rid: (
                record(STDOUT, b"Status: " + b"2" * 5000 + b"\r\n\r\n", rid) + end_request(rid)
            )
        ),
        "malformed",
    ),
    "never answers": (sends(), "timeout"),
}


@pytest.mark.live
@pytest.mark.parametrize("case", BAD_ANSWERS)
def test_bad_answers_rejected(fake: Callable[[Reply], FakeServer], case: str) -> None:
    reply, reason = BAD_ANSWERS[case]
    server = fake(reply)
    with pytest.raises(FastCGIError, match=reason):
        request(server.listen, "/status", timeout=1)


@pytest.mark.live
def test_endless_answer_stopped_at_max_bytes(fake: Callable[[Reply], FakeServer]) -> None:
    """The server streams records until the client hangs up: the client must
    stop at max_bytes (reading on would end in a timeout instead)."""

    def endless(conn: socket.socket, rid: int) -> None:
        conn.sendall(record(STDOUT, b"Content-Type: text/plain\r\n\r\n", rid))
        while True:
            conn.sendall(record(STDOUT, b"x" * 60000, rid))

    server = fake(endless)
    with pytest.raises(FastCGIError, match="response larger than 100000 bytes"):
        request(server.listen, "/status", timeout=5, max_bytes=100_000)


@pytest.mark.live
def test_allow_is_asked_before_connecting(fake: Callable[[Reply], FakeServer]) -> None:
    """allow sees each resolved TCP address, and a unix socket's path as
    given; a refused address is never connected to."""
    server = fake(sends(lambda rid: hello(rid) + end_request(rid)))
    port = int(server.listen.rsplit(":", 1)[1])
    asked: list[tuple[int, object]] = []

    def refuse(family: int, address: object) -> bool:
        asked.append((family, address))
        return False

    with pytest.raises(FastCGIError, match="address not allowed"):
        request(f"localhost:{port}", "/status", timeout=2, allow=refuse)
    with pytest.raises(FastCGIError, match="address not allowed"):
        request("/run/x.sock", "/status", timeout=2, allow=refuse)
    assert (socket.AF_INET, ("127.0.0.1", port)) in asked
    assert asked[-1] == (socket.AF_UNIX, "/run/x.sock")
    assert server.accepted == 0
    # Allowed, the same request is answered.
    response = request(server.listen, "/status", timeout=5, allow=lambda f, a: True)
    assert (response.body, server.accepted) == (b"hello", 1)


@contextlib.contextmanager
def unix_listener(path: Path) -> Iterator[list[bytes]]:
    """A unix socket listening at path, made by this process (see recording)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    with recording(listener) as received:
        yield received


@contextlib.contextmanager
def recording(listener: socket.socket) -> Iterator[list[bytes]]:
    """Make the bound listener listen; yield what each connection sent
    (read for half a second, then it is closed); close it on exit."""
    received: list[bytes] = []
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(0.5)
                data = b""
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        data += chunk
                received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(10)


@pytest.mark.live
def test_peer_of_a_unix_socket_is_checked_before_sending(tmp_path: Path) -> None:
    """peer names who must have made the socket listen: this process here.
    Any other pid, or (when the kernel gives no pid) another uid, and not a
    byte is sent."""
    path = tmp_path / "s.sock"
    with unix_listener(path) as received:
        with pytest.raises(FastCGIError, match="socket held by another process"):
            request(str(path), "/status", timeout=2, peer=(1, os.getuid()))
        with pytest.raises(FastCGIError, match="truncated response"):  # sent, then closed
            request(str(path), "/status", timeout=5, peer=(os.getpid(), os.getuid()))
    assert len(received) == 2
    assert received[0] == b""
    assert received[1].startswith(bytes([1, BEGIN]))  # a FastCGI BEGIN_REQUEST


def test_closed_port_and_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(FastCGIError, match="connection refused"):
        request(f"127.0.0.1:{free_port()}", "/status")
    with pytest.raises(FastCGIError, match="no such socket"):
        request(str(tmp_path / "absent.sock"), "/status")


# --- parse_address ----------------------------------------------------------------

AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC = (
    socket.AF_INET,
    socket.AF_INET6,
    socket.AF_UNIX,
    socket.AF_UNSPEC,
)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("/run/php/php8.2-fpm.sock", (AF_UNIX, "/run/php/php8.2-fpm.sock")),
        ("127.0.0.1:9000", (AF_INET, ("127.0.0.1", 9000))),
        ("10.1.2.3:9001", (AF_INET, ("10.1.2.3", 9001))),
        ("[::1]:9000", (AF_INET6, ("::1", 9000))),
        ("::1:9000", (AF_INET6, ("::1", 9000))),  # php-fpm splits at the last ':'
        ("localhost:9000", (AF_UNSPEC, ("localhost", 9000))),
        ("fpm.internal:65535", (AF_UNSPEC, ("fpm.internal", 65535))),
        ("9000", (AF_INET, ("127.0.0.1", 9000))),  # all addresses
        ("0.0.0.0:9000", (AF_INET, ("127.0.0.1", 9000))),
        ("[::]:9000", (AF_INET6, ("::1", 9000))),
        ("*:9000", (AF_INET, ("127.0.0.1", 9000))),
        (" 127.0.0.1:9000 ", (AF_INET, ("127.0.0.1", 9000))),
    ],
)
def test_parse_address(listen: str, expected: tuple) -> None:
    assert parse_address(listen) == expected


@pytest.mark.parametrize(
    "listen",
    [
        "",
        "garbage",
        "php.sock",  # relative path: relative to what?
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "127.0.0.1:90x",
        ":9000",
        "0",
        "65536",
        "[::1]",
        "1.2.3:9000",
        "bad host:9000",
        "/run/a:b",
        "a" * 64 + ".example:9000",  # a label the resolver's idna codec refuses
        "/run/a\0b",  # the kernel would connect to /run/a
    ],
)
def test_parse_address_rejects_garbage(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_address(listen)


# --- against a real php-fpm --------------------------------------------------------

TCP_POOL, UNIX_POOL = "fcgi_tcp", "fcgi_unix"

POOL = """
[{name}]
listen = {listen}
listen.mode = 0666
pm = static
pm.max_children = 2
pm.status_path = /status
ping.path = /ping
"""

SCRIPTS = {
    "not_found.php": """<?php
http_response_code(404);
header("X-Probe: probe-" . $_SERVER["REQUEST_METHOD"]);
error_log("probe-stderr");
echo "no such thing: ", $_GET["q"];
""",
    "big.php": '<?php echo str_repeat("x", 3 * 1024 * 1024);',
}


@dataclass(frozen=True)
class Fpm:
    tcp: str  # listen of the TCP pool
    socket: Path  # listen of the unix socket pool
    scripts: Path


@pytest.fixture(scope="module")
def fpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fpm]:
    tmp = tmp_path_factory.mktemp("fpm")
    for name, text in SCRIPTS.items():
        (tmp / name).write_text(text)
    fpm = Fpm(f"127.0.0.1:{free_port()}", tmp / "fpm.sock", tmp)
    conf = tmp / "php-fpm.conf"
    conf.write_text(
        global_section(tmp)
        + POOL.format(name=TCP_POOL, listen=fpm.tcp)
        + POOL.format(name=UNIX_POOL, listen=fpm.socket)
    )
    with running_fpm(conf, {TCP_POOL: 2, UNIX_POOL: 2}):
        yield fpm


@pytest.mark.live
@pytest.mark.parametrize("pool", [TCP_POOL, UNIX_POOL])
def test_status_page_json(fpm: Fpm, pool: str) -> None:
    listen = fpm.tcp if pool == TCP_POOL else str(fpm.socket)
    response = request(listen, "/status", query="json")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    status = json.loads(response.body)
    assert status["pool"] == pool
    assert status["process manager"] == "static"
    assert status["total processes"] == 2


@pytest.mark.live
def test_ping_over_tcp_and_through_root_prefix(fpm: Fpm) -> None:
    assert request(fpm.tcp, "/ping").body == b"pong"
    # The unix socket reached as "/fpm.sock" under a root directory, as a
    # container's socket is reached under /proc/PID/root.
    response = request("/" + fpm.socket.name, "/ping", root=str(fpm.socket.parent) + "/")
    assert (response.status, response.body) == (200, b"pong")
    # An absolute symlink in the root points into the root, not to the host.
    link = fpm.socket.parent / "run" / "php.sock"
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to("/" + fpm.socket.name)
    response = request("/run/php.sock", "/ping", root=str(fpm.socket.parent))
    assert (response.status, response.body) == (200, b"pong")


@pytest.mark.live
def test_php_script_status_headers_stderr(fpm: Fpm) -> None:
    script = str(fpm.scripts / "not_found.php")
    response = request(str(fpm.socket), script, query="q=a%20b")
    assert response.status == 404
    assert response.headers["x-probe"] == "probe-GET"
    assert response.headers["content-type"].startswith("text/html")
    assert response.body == b"no such thing: a b"
    assert b"probe-stderr" in response.stderr


@pytest.mark.live
def test_large_answer_read_or_refused(fpm: Fpm) -> None:
    script = str(fpm.scripts / "big.php")
    assert request(fpm.tcp, script, max_bytes=4 << 20).body == b"x" * (3 << 20)
    with pytest.raises(FastCGIError, match=f"response larger than {1 << 20} bytes"):
        request(fpm.tcp, script, max_bytes=1 << 20)
    # The worker that was cut off is free again for the next request.
    assert request(fpm.tcp, "/ping").body == b"pong"
