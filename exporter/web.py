"""HTTP server: /metrics serves the latest pre-rendered exposition, / a
landing page, /healthz the freshness of the snapshot.

Hostile input is bounded: only GET and HEAD (405 otherwise) on three paths
(404 otherwise); the request line and headers are limited by http.server
(64 KiB lines, 99 header fields: 414/431); every connection has an idle
timeout, and at most MAX_CONNECTIONS (fewer when file descriptors are scarce)
are served at once, so slow or stuck clients cannot exhaust the process. TLS,
client certificates, basic auth and extra headers come from the
exporter-toolkit web config (webconfig.py).
"""

from __future__ import annotations

import logging
import resource
import socket
import ssl
import threading
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
IDLE_TIMEOUT = 15.0  # seconds a connection may stay silent (TLS handshake included)

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
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {addr!r} (expected host:port or :port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], loop: CollectionLoop, web: WebConfigWatcher
    ) -> None:
        host, _ = address
        if host == "" and socket.has_dualstack_ipv6():
            self.address_family = socket.AF_INET6
            address = ("::", address[1])
        elif ":" in host:
            self.address_family = socket.AF_INET6
        self.loop, self.web, self.auth = loop, web, Authenticator()
        self._slots = threading.BoundedSemaphore(connection_limit())
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
        sock.settimeout(IDLE_TIMEOUT)
        ctx = self.web.current().ssl_context
        if ctx is not None:
            # The handshake runs in the connection's thread, not in accept's.
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: refuse rather than queue forever
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        # Broken TLS handshakes and vanished clients are the network's business.
        log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"pss-exporter/{__version__}"
    sys_version = ""  # no interpreter version in the Server header
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True  # head and body go out without a delayed-ACK wait

    def __getattr__(self, name: str):
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

    def do_GET(self) -> None:
        config = self.server.web.current()
        if not self.server.auth.allowed(config, self.headers.get("Authorization")):
            self._send(401, "text/plain; charset=utf-8", b"unauthorized\n", auth=True)
            return
        path = self.path.split("?", 1)[0]
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
        self._send(405, "text/plain; charset=utf-8", b"method not allowed\n", allow=True)

    def _metrics(self) -> None:
        exp = self.server.loop.latest
        if exp is None:
            self._send(503, "text/plain; charset=utf-8", b"no collection finished yet\n")
            return
        accept = self.headers.get("Accept", "")
        gz = "gzip" in self.headers.get("Accept-Encoding", "")
        om = "application/openmetrics-text" in accept
        fmt = OPENMETRICS if om else TEXT
        self.server.loop.asked(fmt)
        self._send(200, OPENMETRICS_TYPE if om else TEXT_TYPE, exp.body(fmt, gz), gzipped=gz)

    def _send(
        self,
        code: int,
        ctype: str,
        body: bytes,
        gzipped: bool = False,
        allow: bool = False,
        auth: bool = False,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        if allow:
            self.send_header("Allow", "GET, HEAD")
        if auth:
            self.send_header("WWW-Authenticate", 'Basic realm="pss-exporter"')
        for name, value in self.server.web.current().headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(address: str, loop: CollectionLoop, web: WebConfigWatcher) -> _Server:
    """Bind the server (raises ValueError for a bad address, OSError if busy)."""
    return _Server(parse_listen_address(address), loop, web)
