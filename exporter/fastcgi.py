"""A small FastCGI client for php-fpm's status and ping pages.

FastCGI 1.0, one request per connection: BEGIN_REQUEST (role RESPONDER, the
server closes the connection when done), the CGI parameters in a PARAMS record
and an empty one ending that stream, an empty STDIN. The server answers with
STDOUT and STDERR streams and ends the request with END_REQUEST; STDOUT holds
CGI headers, a blank line and the body.

Every record is an 8-byte header (version, type, requestId, contentLength,
paddingLength, reserved) followed by its content and padding. The whole
exchange (connect, send, receive) shares one deadline, and the answer's size is
checked against a bound before its content is read, so a stuck, chatty or
confused server costs at most `timeout` seconds and `max_bytes` of memory.

The caller may restrict where it connects (`allow`, asked for every address
before connecting) and who must hold a unix socket (`peer`, checked with
SO_PEERCRED before a byte is sent): php-fpm configs are a tenant's, and the
exporter, running as root, must not be made to talk to another's socket.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from .phpfpm_config import RootedFiles
from .text import excerpt

VERSION = 1
BEGIN_REQUEST, END_REQUEST = 1, 3
PARAMS, STDIN, STDOUT, STDERR = 4, 5, 6, 7
RESPONDER = 1
REQUEST_COMPLETE = 0  # END_REQUEST protocolStatus; 1 CANT_MPX_CONN, 2 OVERLOADED, 3 UNKNOWN_ROLE

HEADER = struct.Struct(">BBHHBx")  # version, type, requestId, contentLength, paddingLength
BEGIN_BODY = struct.Struct(">HB5x")  # role, flags
END_BODY = struct.Struct(">IB3x")  # appStatus, protocolStatus
MAX_CONTENT = 0xFFFF
REQUEST_ID = 1

# (host, port) for TCP, a filesystem path for a unix socket.
Address = Union[tuple[str, int], str]

# (family, address) -> whether the caller lets request() connect there.
Allow = Callable[[socket.AddressFamily, Address], bool]

_WILDCARDS = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class FastCGIError(Exception):
    """The request failed; str(error) is a short reason such as "timeout"."""


@dataclass(frozen=True)
class Response:
    status: int  # from the Status header; 200 without one
    headers: dict[str, str] = field(hash=False)  # lower-case names
    body: bytes
    stderr: bytes


def parse_address(listen: str) -> tuple[socket.AddressFamily, Address]:
    """Where to connect for a php-fpm `listen` value.

    "/run/php/fpm.sock" -> (AF_UNIX, path); "127.0.0.1:9000" -> (AF_INET, ...);
    "[::1]:9000" -> (AF_INET6, ...); "localhost:9000" -> (AF_UNSPEC, ...), to be
    resolved like php-fpm does; "9000" (all addresses) -> 127.0.0.1. Wildcard
    hosts (0.0.0.0, ::, *) become the loopback address of their family.
    """
    listen = listen.strip()
    if "\0" in listen:  # a unix socket path would end at it
        raise ValueError(f"NUL byte in {excerpt(listen)}")
    if listen.startswith("/") and ":" not in listen:  # php-fpm: a ':' means TCP
        return socket.AF_UNIX, listen
    if listen.isascii() and listen.isdigit():
        return socket.AF_INET, ("127.0.0.1", _port(listen, listen))
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        raise ValueError(f"not an absolute socket path nor host:port: {excerpt(listen)}")
    port = _port(port_text, listen)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = _WILDCARDS.get(host, host)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), (host, port)
    if not _valid_host_name(host):
        raise ValueError(f"invalid host in {excerpt(listen)}")
    return socket.AF_UNSPEC, (host, port)


def _valid_host_name(host: str) -> bool:
    """A DNS name the resolver takes: letters, digits, '-' and '.', labels of
    1 to 63 characters (longer ones make the idna codec raise UnicodeError)."""
    if not host or len(host) > 253 or not _HOST_CHARS.issuperset(host):
        return False
    if all(c in "0123456789." for c in host):
        return False  # an IP address ipaddress refused, such as 1.2.3
    return all(0 < len(label) <= 63 for label in host.removesuffix(".").split("."))


def _port(text: str, listen: str) -> int:
    # isdigit() alone takes '²', which int() refuses; 5 digits bound int().
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536):
        raise ValueError(f"invalid port in {excerpt(listen)}")
    return int(text)


def request(
    listen: str,
    script_name: str,
    query: str = "",
    timeout: float = 2.0,
    max_bytes: int = 1 << 20,
    root: str = "",
    *,
    allow: Allow | None = None,
    peer: tuple[int, int] | None = None,
) -> Response:
    """GET script_name?query from the FastCGI server at `listen`.

    `root` is where a unix socket's path is resolved (e.g. "/proc/PID/root"
    to reach a socket in a container's mount namespace; its symlinks are
    followed inside that root, never out to the host). A host name is
    resolved before the deadline starts. `allow`, when given, is asked about
    each address before connecting to it: a unix socket's path as `listen`
    names it, a TCP (host, port) once resolved; an address it refuses is not
    connected to. `peer`, when given, is the (pid, uid) that must have made a
    unix socket listen: the pid when the kernel can tell it (SO_PEERCRED
    gives 0 for a process outside our PID namespace), else the uid; nothing
    is sent to another's socket. Raises ValueError for a bad `listen` or
    parameters too long for one record, and FastCGIError for everything
    else, on the wire or not (a refused address, a garbled answer).
    """
    family, address = parse_address(listen)
    payload = _encode_request(_params(script_name, query))
    if family == socket.AF_UNIX and allow is not None and not allow(family, address):
        raise FastCGIError("address not allowed")
    deadline = time.monotonic() + timeout
    try:
        if family == socket.AF_UNIX:
            address = RootedFiles(root).resolve(str(address))
        with _connect(family, address, deadline, allow) as sock:
            if family == socket.AF_UNIX and peer is not None:
                _check_peer(sock, peer)
            sock.settimeout(_remaining(deadline))
            sock.sendall(payload)
            stdout, stderr = _read_streams(sock, deadline, max_bytes)
    except (socket.timeout, TimeoutError) as err:
        raise FastCGIError("timeout") from err
    except OSError as err:
        raise FastCGIError(_os_reason(err)) from err
    return _parse_cgi(stdout, stderr)


def _params(script_name: str, query: str) -> dict[str, str]:
    return {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "pss-exporter",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_FILENAME": script_name,
        "SCRIPT_NAME": script_name,
        "REQUEST_URI": f"{script_name}?{query}" if query else script_name,
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_NAME": "localhost",
    }


def _encode_length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def _check_peer(sock: socket.socket, peer: tuple[int, int]) -> None:
    """Refuse a unix socket that `peer` (pid, uid) did not make listen."""
    pid, uid, _ = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    if (pid != peer[0]) if pid else (uid != peer[1]):
        raise FastCGIError("socket held by another process")


def _record(rtype: int, content: bytes = b"") -> bytes:
    padding = -len(content) % 8
    header = HEADER.pack(VERSION, rtype, REQUEST_ID, len(content), padding)
    return header + content + bytes(padding)


def _encode_request(params: dict[str, str]) -> bytes:
    pairs = b""
    for name, value in params.items():
        n, v = name.encode(), value.encode("utf-8", "surrogateescape")
        if len(n) + len(v) > MAX_CONTENT:  # checked first: lengths must fit 31 bits
            raise ValueError("FastCGI parameters longer than one record")
        pairs += _encode_length(len(n)) + _encode_length(len(v)) + n + v
    if len(pairs) > MAX_CONTENT:  # php-fpm parses each PARAMS record on its own
        raise ValueError("FastCGI parameters longer than one record")
    return b"".join(
        [
            _record(BEGIN_REQUEST, BEGIN_BODY.pack(RESPONDER, 0)),
            _record(PARAMS, pairs),
            _record(PARAMS),
            _record(STDIN),
        ]
    )


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FastCGIError("timeout")
    return left


def _connect(
    family: socket.AddressFamily, address: Address, deadline: float, allow: Allow | None
) -> socket.socket:
    """A connected socket; a host name is tried at each address it resolves
    to. TCP addresses `allow` refuses are skipped (unix ones are checked by
    the caller, before their path is resolved)."""
    # Each target is (family, the sockaddr connect() takes: a path, or a tuple).
    targets: list[tuple[socket.AddressFamily, Any]] = [(family, address)]
    if family == socket.AF_UNSPEC and not isinstance(address, str):
        host, port = address
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        targets = [(fam, sockaddr) for fam, _, _, _, sockaddr in resolved]
    if allow is not None and family != socket.AF_UNIX:
        targets = [(fam, addr) for fam, addr in targets if allow(fam, addr[:2])]
        if not targets:
            raise FastCGIError("address not allowed")
    error: OSError = OSError("no address")
    for fam, sockaddr in targets:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(sockaddr)
            return sock
        except (socket.timeout, TimeoutError):
            sock.close()
            raise
        except OSError as err:
            sock.close()
            error = err
        except BaseException:
            sock.close()
            raise
    raise error


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise FastCGIError("truncated response")
        buf += chunk
    return bytes(buf)


def _read_streams(sock: socket.socket, deadline: float, max_bytes: int) -> tuple[bytes, bytes]:
    """STDOUT and STDERR up to a successful END_REQUEST."""
    streams = {STDOUT: bytearray(), STDERR: bytearray()}
    total = 0
    while True:
        header = _recv_exact(sock, HEADER.size, deadline)
        version, rtype, request_id, length, padding = HEADER.unpack(header)
        if version != VERSION or request_id != REQUEST_ID:
            raise FastCGIError("garbled record")
        if rtype == END_REQUEST:
            if length != END_BODY.size:
                raise FastCGIError("garbled record")
            _, protocol_status = END_BODY.unpack(
                _recv_exact(sock, length + padding, deadline)[:length]
            )
            if protocol_status != REQUEST_COMPLETE:
                raise FastCGIError(f"protocol status {protocol_status}")
            return bytes(streams[STDOUT]), bytes(streams[STDERR])
        if rtype not in streams:
            raise FastCGIError("garbled record")
        total += length
        if total > max_bytes:
            raise FastCGIError(f"response larger than {max_bytes} bytes")
        streams[rtype] += _recv_exact(sock, length + padding, deadline)[:length]


def _parse_cgi(stdout: bytes, stderr: bytes) -> Response:
    """Split a CGI response into status, headers and body."""
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := stdout.find(sep)) >= 0]
    if not ends:
        raise FastCGIError("malformed CGI headers")
    end, sep_len = min(ends)
    headers: dict[str, str] = {}
    for line in stdout[:end].decode("latin-1").split("\n"):
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise FastCGIError("malformed CGI headers")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    status = 200
    if "status" in headers:
        code = headers["status"].split(" ", 1)[0]
        # isdigit() alone takes '²' (latin-1 0xB2), which int() refuses.
        if not (code.isascii() and code.isdigit() and len(code) == 3 and int(code) >= 100):
            raise FastCGIError("malformed CGI headers")
        status = int(code)
    return Response(status, headers, stdout[end + sep_len :], stderr)


def _os_reason(err: OSError) -> str:
    if isinstance(err, socket.gaierror):
        return "cannot resolve host"
    reasons = {
        ConnectionRefusedError: "connection refused",
        ConnectionResetError: "connection reset",
        BrokenPipeError: "connection reset",
        FileNotFoundError: "no such socket",
        PermissionError: "permission denied",
    }
    for kind, reason in reasons.items():
        if isinstance(err, kind):
            return reason
    return (err.strerror or str(err)).lower()
