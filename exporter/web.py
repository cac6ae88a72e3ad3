"""HTTP server: /metrics serves the latest pre-rendered exposition, / a
landing page, /healthz the freshness of the snapshot.

Hostile input is bounded: only GET and HEAD (405 otherwise) on three paths
(404 otherwise); the request line and headers are limited by http.server
(64 KiB lines, 99 header fields: 414/431), the headers to MAX_HEADER_BYTES in
all (431), and they must arrive within HEAD_DEADLINE of their first byte; a
connection may wait IDLE_TIMEOUT for its next request, and a response must be
sent within RESPONSE_DEADLINE. At most MAX_CONNECTIONS (fewer when file
descriptors are scarce) are served at once; when all are taken, a new
connection evicts the one that has waited longest for a request (idle, or
still sending its head), or else the one answered for longest if that took
over BUSY_GRACE (a client that does not read its response), so silent or slow
clients can hold slots only until someone else needs them. TLS, client
certificates, basic auth and extra headers come from the exporter-toolkit web
config (webconfig.py).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import resource
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import __version__
from .loop import CollectionLoop
from .metrics import OPENMETRICS, TEXT
from .webconfig import Authenticator, WebConfigWatcher

log = logging.getLogger(__name__)

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
MAX_CONNECTIONS = 1024
FDS_RESERVED = 64  # file descriptors kept for /proc reads, sockets to php-fpm, logs
IDLE_TIMEOUT = 15.0  # seconds a connection may wait for a request (TLS handshake included)
HEAD_DEADLINE = 10.0  # seconds from a request's first byte to the end of its headers
RESPONSE_DEADLINE = 15.0  # seconds from a complete head to the end of its response
BUSY_GRACE = 2.0  # seconds after which a response being sent may be evicted
MAX_HEADER_BYTES = 1 << 16  # of a request's header lines, in all
EVICT_WAIT = 1.0  # seconds accept waits for an evicted connection's thread to end
SWEEP_EVERY = 0.25  # seconds between checks of the waiting connections' deadlines

LANDING = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>pss-exporter</title></head>
<body><h1>pss-exporter {__version__}</h1>
<p>Per-group PSS, USS and RSS from /proc/PID/smaps_rollup.</p>
<ul><li><a href="metrics">metrics</a></li><li><a href="healthz">healthz</a></li></ul>
</body></html>
""".encode()


def connection_limit() -> int:
    """MAX_CONNECTIONS, or fewer when file descriptors are scarcer: raise the
    soft limit to the hard one, and keep some for /proc reads and the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(min(MAX_CONNECTIONS, soft - FDS_RESERVED), 1)


def parse_listen_address(addr: str) -> tuple[str, int]:
    """Split 'host:port', ':port' or '[v6]:port'; raise ValueError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {addr!r} (expected host:port or :port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


# ------------------------------------------------------ content negotiation

# What /metrics offers: format, media type, the version it speaks.
OFFERS = ((TEXT, "text/plain", "0.0.4"), (OPENMETRICS, "application/openmetrics-text", "1.0.0"))
MAX_ELEMENTS = 64  # of a weighted header; scrapers send a handful, the rest is ignored


def _qvalue(text: str) -> float | None:
    """RFC 9110 12.4.2: "0" to "1" with at most three decimals; None if malformed."""
    whole, _, frac = text.partition(".")
    if len(frac) > 3 or not all(c in "0123456789" for c in frac):
        return None
    if whole == "0" or (whole == "1" and frac.strip("0") == ""):
        return float(f"{whole}.{frac or 0}")
    return None


def _weighted(header: str) -> list[tuple[str, dict[str, str], float]]:
    """The first MAX_ELEMENTS elements of a weighted list header (Accept,
    Accept-Encoding) in order: (token in lower case, its parameters, q). An
    element with a malformed q is dropped."""
    out = []
    for element in header.split(",", MAX_ELEMENTS)[:MAX_ELEMENTS]:
        token, *params = element.split(";")
        token, args = token.strip().lower(), {}
        q: float | None = 1.0  # None: malformed, the element is dropped
        for param in params:
            name, _, value = param.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                q = _qvalue(value)
                if q is None:
                    break
            else:
                args[name] = value
        if token and q is not None:
            out.append((token, args, q))
    return out


def negotiate_format(accept: str) -> str:
    """The exposition format for an Accept header (RFC 9110 12.5.1).

    Each offer takes the q of the most specific range matching it (a range
    naming a version matches that version only; other parameters, such as
    escaping, are ignored); q=0 means not acceptable, and the highest q wins.
    On a tie, a type named outright beats one matched by a wildcard, and of
    two named, OpenMetrics wins: prometheus_client serves OpenMetrics whenever
    the header names it, whatever the order or q, and a client naming it can
    read it. Only wildcards, nothing acceptable, or no header: text, which
    every scraper reads.
    """
    ranges = _weighted(accept)
    best, best_rank = TEXT, (0.0, False, False)
    for fmt, media, version in OFFERS:
        found = None  # (specificity, q) of the most specific range matching it
        for token, params, q in ranges:
            if token == media:
                if params.get("version", version) != version:
                    continue
                specificity = 3 if "version" in params else 2
            elif token == media.split("/")[0] + "/*":
                specificity = 1
            elif token == "*/*":
                specificity = 0
            else:
                continue
            if found is None or specificity > found[0]:
                found = (specificity, q)
        if found is not None and found[1] > 0:
            named = found[0] >= 2
            rank = (found[1], named, named and fmt == OPENMETRICS)
            if rank > best_rank:
                best, best_rank = fmt, rank
    return best


def wants_gzip(accept_encoding: str) -> bool:
    """Whether to gzip for an Accept-Encoding header (RFC 9110 12.5.3): gzip
    (or x-gzip) acceptable, directly or by "*", with q > 0 and no lower than
    identity's. No header or an empty one: identity."""
    weights: dict[str, float] = {}
    for token, _, q in _weighted(accept_encoding):
        weights.setdefault("gzip" if token == "x-gzip" else token, q)
    star = weights.get("*")
    gzip_q = weights.get("gzip", 0.0 if star is None else star)
    identity_q = weights.get("identity", 1.0 if star is None else star)
    return gzip_q > 0 and gzip_q >= identity_q


def request_path(target: str) -> str:
    """The path of a request target, in origin form (/metrics?x) or absolute
    form (http://host/metrics, which RFC 9112 3.2.2 says a server must accept)."""
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        target = "/" + rest.partition("/")[2]
    return target.split("?", 1)[0]


# ------------------------------------------------------ connection slots


def _hang_up(sock: socket.socket) -> None:
    """Wake the connection's thread with an EOF; the thread closes it. (Not
    SSLSocket.shutdown, which drops the TLS state under the thread.)"""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Slots:
    """The connections being served, at most `limit`.

    A connection waits (idle after a response, or still sending a request
    head) or is busy (its request is being answered). Waiting ones are kept
    in the order they started waiting, each with a deadline: the idle timeout,
    then HEAD_DEADLINE from a request's first byte; busy ones in the order
    they became busy, due within RESPONSE_DEADLINE. When all slots are taken,
    a new connection evicts the longest waiting one, or else the longest busy
    one if it has been busy for over BUSY_GRACE. Hang-ups happen under the
    lock and a connection leaves the table before its socket is closed, so a
    hang-up never hits a reused descriptor.
    """

    def __init__(self, limit: int, idle: float, head: float) -> None:
        self.limit, self.idle_timeout, self.head_deadline = limit, idle, head
        self._cond = threading.Condition()
        self._all: set[socket.socket] = set()
        self._waiting: OrderedDict[socket.socket, float] = OrderedDict()  # -> deadline
        self._busy: OrderedDict[socket.socket, float] = OrderedDict()  # -> since
        self._next_sweep = 0.0

    def admit(self, sock: socket.socket) -> bool:
        """Take a slot for a new connection, evicting if need be; False if
        every slot is busy, none for long."""
        with self._cond:
            if len(self._all) >= self.limit:
                victim = self._victim()
                if victim is None:
                    return False
                _hang_up(victim)
                if not self._cond.wait_for(lambda: len(self._all) < self.limit, EVICT_WAIT):
                    return False
            self._all.add(sock)
            self._waiting[sock] = time.monotonic() + self.idle_timeout
            return True

    def _victim(self) -> socket.socket | None:
        """The connection to evict (out of the table), if any may be."""
        if self._waiting:
            return self._waiting.popitem(last=False)[0]
        if self._busy:
            sock, since = next(iter(self._busy.items()))
            if time.monotonic() - since > BUSY_GRACE:
                del self._busy[sock]
                return sock
        return None

    def reading(self, sock: socket.socket) -> None:
        """A request's first byte arrived: its head is due within head_deadline."""
        with self._cond:
            if sock in self._waiting:
                self._waiting[sock] = time.monotonic() + self.head_deadline

    def busy(self, sock: socket.socket) -> bool:
        """The request head is complete; False if the connection was hung up."""
        with self._cond:
            if self._waiting.pop(sock, None) is None:
                return False
            self._busy[sock] = time.monotonic()
            return True

    def idle(self, sock: socket.socket) -> None:
        """The response is sent: the connection waits for its next request."""
        with self._cond:
            if self._busy.pop(sock, None) is not None:
                self._waiting[sock] = time.monotonic() + self.idle_timeout

    def release(self, sock: socket.socket) -> None:
        with self._cond:
            self._all.discard(sock)
            self._busy.pop(sock, None)
            self._waiting.pop(sock, None)
            self._cond.notify()

    def sweep(self) -> None:
        """Hang up the connections past their deadline."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        with self._cond:
            late = [sock for sock, deadline in self._waiting.items() if deadline <= now]
            for sock in late:
                del self._waiting[sock]
            slow = [sock for sock, since in self._busy.items() if since + RESPONSE_DEADLINE <= now]
            for sock in slow:
                del self._busy[sock]
            for sock in late + slow:
                _hang_up(sock)


class _HeadReader:
    """The connection's reader as http.client.parse_headers uses it, stopping
    at MAX_HEADER_BYTES: its own bounds (64 KiB a line, 100 lines) let one
    request hold 6 MB, every slot gigabytes."""

    def __init__(self, rfile: io.BufferedIOBase, limit: int = MAX_HEADER_BYTES) -> None:
        self._rfile, self._left = rfile, limit

    def readline(self, size: int = -1) -> bytes:
        line = self._rfile.readline(self._left + 1 if size < 0 else min(size, self._left + 1))
        self._left -= len(line)
        if self._left < 0:  # parse_request answers 431, as for one long line
            raise http.client.LineTooLong("request headers")
        return line


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        loop: CollectionLoop,
        web: WebConfigWatcher,
        slots: int | None = None,
        head_deadline: float = HEAD_DEADLINE,
    ) -> None:
        host, _ = address
        if host == "" and socket.has_dualstack_ipv6():
            self.address_family = socket.AF_INET6
            address = ("::", address[1])
        elif ":" in host:
            self.address_family = socket.AF_INET6
        self.loop, self.web, self.auth = loop, web, Authenticator()
        self.slots = _Slots(slots or connection_limit(), IDLE_TIMEOUT, head_deadline)
        super().__init__(address, _Handler, bind_and_activate=False)
        if self.address_family == socket.AF_INET6 and host == "":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = self.socket.accept()
        sock.settimeout(IDLE_TIMEOUT)  # each read and write; the slots bound the waits
        ctx = self.web.config.ssl_context  # never re-read in the accept loop
        if ctx is not None:
            # The handshake runs in the connection's thread, not in accept's.
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    # A TCP server's request is the socket get_request accepted, never the
    # (data, socket) pair of a UDP one that socketserver's signatures allow.
    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self.slots.admit(request):
            self.shutdown_request(request)  # every slot busy: refuse rather than queue
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self.slots.release(request)  # first: no hang-up after the close
        super().shutdown_request(request)

    def service_actions(self) -> None:
        self.slots.sweep()  # serve_forever calls this at least twice a second

    def handle_error(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            # Broken TLS handshakes, resets and timeouts are the network's business.
            log.debug("connection from %s failed: %r", client_address, exc)
        else:  # a bug: one line, and the connection is closed (by the caller)
            log.error(
                "connection from %s closed by an internal error: %s: %.200r",
                client_address,
                type(exc).__name__,
                str(exc),
            )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    rfile: io.BufferedReader  # StreamRequestHandler's makefile("rb", -1): it peeks
    server_version = f"pss-exporter/{__version__}"
    sys_version = ""  # no interpreter version in the Server header
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True  # head and body go out without a delayed-ACK wait

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Methods http.server has no do_X for (PROPFIND, ...): 405 as well, not 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # raises on a bad client: handle_error drops it
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes are not worth a log line each

    def handle_one_request(self) -> None:
        # Wait for the next request's first byte (the idle deadline), then
        # give its head HEAD_DEADLINE; the server's sweep enforces both.
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except OSError:  # a timeout, a reset, a hang-up
            self.close_connection = True
            return
        self.server.slots.reading(self.request)
        super().handle_one_request()
        self.server.slots.idle(self.request)

    def parse_request(self) -> bool:
        # parse_request reads the head through rfile.readline alone, which is
        # all of a reader _HeadReader is.
        rfile, self.rfile = self.rfile, _HeadReader(self.rfile)  # type: ignore[assignment]
        try:
            if not super().parse_request():
                return False
        finally:
            self.rfile = rfile
        if not self.server.slots.busy(self.request):  # evicted, or past its deadline
            self.close_connection = True
            return False
        length = self.headers.get("Content-Length", "0").strip()
        if length != "0" or "Transfer-Encoding" in self.headers:
            # A body is never read: what follows it cannot be told from a request.
            self.close_connection = True
        return True

    def _header(self, name: str) -> str:
        """All of a request's name fields as one list (RFC 9110 5.3)."""
        return ", ".join(self.headers.get_all(name, []))

    def do_GET(self) -> None:
        config = self.server.web.current()
        if not self.server.auth.allowed(config, self.headers.get("Authorization")):
            challenge = {"WWW-Authenticate": 'Basic realm="pss-exporter"'}
            self._send(401, "text/plain; charset=utf-8", b"unauthorized\n", challenge)
            return
        path = request_path(self.path)
        if path == "/metrics":
            self._metrics()
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", LANDING)
        elif path == "/healthz":
            if self.server.loop.healthy():
                self._send(200, "text/plain; charset=utf-8", b"OK\n")
            else:
                self._send(503, "text/plain; charset=utf-8", b"snapshot is stale\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self._send(
            405, "text/plain; charset=utf-8", b"method not allowed\n", {"Allow": "GET, HEAD"}
        )

    def _metrics(self) -> None:
        exp = self.server.loop.latest
        if exp is None:
            self._send(503, "text/plain; charset=utf-8", b"no collection finished yet\n")
            return
        fmt = negotiate_format(self._header("Accept"))
        gz = wants_gzip(self._header("Accept-Encoding"))
        self.server.loop.asked(fmt)
        ctype = OPENMETRICS_TYPE if fmt == OPENMETRICS else TEXT_TYPE
        negotiated = {"Vary": "Accept, Accept-Encoding"}
        if gz:
            negotiated["Content-Encoding"] = "gzip"
        self._send(200, ctype, exp.body(fmt, gz), negotiated)

    def _send(
        self, code: int, ctype: str, body: bytes, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        for name, value in self.server.web.current().headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(
    address: str,
    loop: CollectionLoop,
    web: WebConfigWatcher,
    *,
    slots: int | None = None,
    head_deadline: float = HEAD_DEADLINE,
) -> _Server:
    """Bind the server (raises ValueError for a bad address, OSError if busy).
    slots (default connection_limit()) and head_deadline are for tests."""
    return _Server(parse_listen_address(address), loop, web, slots, head_deadline)
