"""The web config (--web.config.file: TLS, client certificates, basic auth,
headers, re-reading on change) and hostile input on the wire, against real
exporters with real certificates made by the openssl CLI in the test.

404/405/HEAD are tests/test_http.py's.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from web_certs import (
    WAIT,
    Exporter,
    KeyPair,
    client_context,
    der_fingerprint,
    https_get,
    make_ca,
    make_cert,
    serving,
    wait_until,
)

from exporter.web import FDS_RESERVED

from conftest import (
    EXPORTER,
    FIXTURES,
    free_port,
    group_value,
    http_get,
    parse_samples,
    require_binary,
    run_cli,
)

pytestmark = pytest.mark.live

PROCFS = FIXTURES / "procfs" / "kernel-threads"  # one group: sshd (PID 700)
COLLECTION = "collection:\n  interval: 1s\n"
HEADERS = {
    "X-Frame-Options": "deny",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Content-Security-Policy": "default-src 'none'",
}
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
PATHS = ("/metrics", "/", "/healthz")
HTTP_LINE_LIMIT = 65536  # http.server: request line and each header line, CRLF included


@dataclass(frozen=True)
class Certs:
    ca: KeyPair
    server: KeyPair
    client: KeyPair
    rotated: KeyPair  # a second server certificate from the same CA
    rogue_client: KeyPair  # a client certificate from another CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ca, rogue_ca = make_ca(d), make_ca(d, "rogue-ca")
    return Certs(
        ca=ca,
        server=make_cert(ca, d, "server", "serverAuth"),
        client=make_cert(ca, d, "client", "clientAuth"),
        rotated=make_cert(ca, d, "rotated", "serverAuth"),
        rogue_client=make_cert(rogue_ca, d, "rogue-client", "clientAuth"),
    )


# ------------------------------------------------------------------ helpers


def htpasswd_hash(password: str, prefix: str = "$2b$") -> str:
    """A bcrypt hash; prefix "$2y$" writes it the way `htpasswd -B` does."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return prefix + hashed[4:]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def yaml_headers(headers: dict[str, str]) -> str:
    return "".join(f'    {name}: "{value}"\n' for name, value in headers.items())


def tls_yaml(cert: Path, key: Path, **extra: str) -> str:
    lines = [f"  cert_file: {cert}", f"  key_file: {key}"]
    lines += [f"  {name}: {value}" for name, value in extra.items()]
    return "tls_server_config:\n" + "\n".join(lines) + "\n"


def users_yaml(users: dict[str, str]) -> str:
    return "basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in users.items())


def secured_users() -> dict[str, str]:
    """alice with a $2b$ hash (Python's bcrypt), bob with $2y$ (htpasswd's)."""
    return {
        "alice": htpasswd_hash(PASSWORDS["alice"]),
        "bob": htpasswd_hash(PASSWORDS["bob"], prefix="$2y$"),
    }


def serve_argv(port: int, web_config: Path, config: Path) -> list[str]:
    return [
        *EXPORTER,
        "serve",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.config.file={web_config}",
        f"--path.procfs={PROCFS}",
        f"--config={config}",
    ]


def start(
    stack: ExitStack,
    tmp: Path,
    web_yaml: str,
    ready_ctx: ssl.SSLContext | None,
    auth: dict,
    prefix: tuple[str, ...] = (),
) -> Exporter:
    """Serve with web_yaml (written to tmp/web.yml), the command prefixed by
    prefix; ready when /healthz answers 200 over HTTPS with ready_ctx (or
    plain HTTP if None)."""
    web, config = tmp / "web.yml", tmp / "config.yml"
    web.write_text(web_yaml)
    config.write_text(COLLECTION)
    port = free_port()

    def ready(exp: Exporter) -> bool:
        if ready_ctx is None:
            return http_get(f"http://127.0.0.1:{port}/healthz", auth, timeout=2)[0] == 200
        return https_get(port, "/healthz", ready_ctx, auth, timeout=2).status == 200

    argv = [*prefix, *serve_argv(port, web, config)]
    return stack.enter_context(serving(argv, port, ready, tmp / "stderr.log"))


def replace_text(path: Path, text: str) -> None:
    """Rewrite a file atomically (new inode), as careful tooling does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def assert_configured_headers(headers) -> None:
    assert {name: headers.get(name) for name in HEADERS} == HEADERS


# ------------------------------------------------------ TLS and basic auth


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Exporter]:
    """TLS with the server certificate, basic auth for alice and bob, headers."""
    tmp = tmp_path_factory.mktemp("secured")
    web = (
        tls_yaml(certs.server.cert, certs.server.key)
        + users_yaml(secured_users())
        + "http_server_config:\n  headers:\n"
        + yaml_headers(HEADERS)
    )
    auth = basic("alice", PASSWORDS["alice"])
    with ExitStack() as stack:
        yield start(stack, tmp, web, client_context(certs.ca), auth)


def test_https_serves_metrics_with_the_configured_certificate(
    secured: Exporter, certs: Certs
) -> None:
    resp = https_get(
        secured.port, "/metrics", client_context(certs.ca), basic("alice", "wonderland")
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert der_fingerprint(resp.peer_cert) == certs.server.fingerprint()
    samples = parse_samples(resp.body.decode())
    assert group_value(samples, "pss_group_processes", "sshd") == 1
    assert group_value(samples, "pss_group_pss_bytes", "sshd") == 2000 * 1024


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "credentials",
    [None, ("alice", "wrong"), ("alice", ""), ("mallory", "wonderland"), ("bob", "wonderland")],
    ids=["none", "wrong-password", "empty-password", "unknown-user", "other-users-password"],
)
def test_basic_auth_refuses_without_right_credentials(
    secured: Exporter, certs: Certs, path: str, credentials: tuple[str, str] | None
) -> None:
    headers = basic(*credentials) if credentials else {}
    resp = https_get(secured.port, path, client_context(certs.ca), headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="pss-exporter"'
    assert_configured_headers(resp.headers)
    assert b"pss_group" not in resp.body and b"<html" not in resp.body


@pytest.mark.parametrize(
    "header",
    ["Bearer abc", "Basic !!!notbase64", "Basic " + base64.b64encode(b"alice").decode()],
    ids=["other-scheme", "bad-base64", "no-colon"],
)
def test_basic_auth_refuses_malformed_authorization(
    secured: Exporter, certs: Certs, header: str
) -> None:
    resp = https_get(secured.port, "/metrics", client_context(certs.ca), {"Authorization": header})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="pss-exporter"'


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("user", sorted(PASSWORDS), ids=["bcrypt-2b", "htpasswd-2y"])
def test_basic_auth_accepts_right_credentials(
    secured: Exporter, certs: Certs, path: str, user: str
) -> None:
    resp = https_get(secured.port, path, client_context(certs.ca), basic(user, PASSWORDS[user]))
    assert resp.status == 200
    assert "WWW-Authenticate" not in resp.headers
    assert_configured_headers(resp.headers)
    expected = {"/metrics": b"pss_group_pss_bytes{", "/": b"<html", "/healthz": b"OK\n"}[path]
    assert expected in resp.body


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Exporter]:
    """TLS 1.3 only, client certificates from the CA required."""
    tmp = tmp_path_factory.mktemp("mtls")
    web = tls_yaml(
        certs.server.cert,
        certs.server.key,
        client_ca_file=str(certs.ca.cert),
        client_auth_type="RequireAndVerifyClientCert",
        min_version="TLS13",
    )
    with ExitStack() as stack:
        yield start(stack, tmp, web, client_context(certs.ca, certs.client), {})


def test_client_certificate_from_the_ca_is_accepted(mutual_tls: Exporter, certs: Certs) -> None:
    resp = https_get(mutual_tls.port, "/metrics", client_context(certs.ca, certs.client))
    assert resp.status == 200
    samples = parse_samples(resp.body.decode())
    assert group_value(samples, "pss_group_processes", "sshd") == 1


@pytest.mark.parametrize("client", [None, "rogue_client"], ids=["no-cert", "other-ca"])
def test_client_without_a_valid_certificate_is_refused(
    mutual_tls: Exporter, certs: Certs, client: str | None
) -> None:
    ctx = client_context(certs.ca, getattr(certs, client) if client else None)
    # TLS 1.3: the client's handshake ends before the server checks its
    # certificate; the server's alert (or its close) arrives instead of a response.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(mutual_tls.port, "/metrics", ctx)
    # ...and the refused client did not hurt the next one.
    assert (
        https_get(mutual_tls.port, "/healthz", client_context(certs.ca, certs.client)).status == 200
    )


def test_min_version_tls13_refuses_a_tls12_client(mutual_tls: Exporter, certs: Certs) -> None:
    ctx = client_context(certs.ca, certs.client, max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError) as err:
        https_get(mutual_tls.port, "/metrics", ctx)
    assert err.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


# -------------------------------------------------------- re-read on change


def test_certificate_rotation_without_restart(tmp_path: Path, certs: Certs) -> None:
    live = KeyPair(tmp_path / "live.pem", tmp_path / "live.key")
    shutil.copyfile(certs.server.cert, live.cert)
    shutil.copyfile(certs.server.key, live.key)
    ctx = client_context(certs.ca)
    with ExitStack() as stack:
        exp = start(stack, tmp_path, tls_yaml(live.cert, live.key), ctx, {})

        def presented() -> str:
            resp = https_get(exp.port, "/healthz", ctx, timeout=2)
            assert resp.status == 200
            return der_fingerprint(resp.peer_cert)

        assert presented() == certs.server.fingerprint()
        # Overwrite in place, as `cp new.pem live.pem` does: cert first, then key.
        live.cert.write_bytes(certs.rotated.cert.read_bytes())
        live.key.write_bytes(certs.rotated.key.read_bytes())
        wait_until("the rotated certificate", lambda: presented() == certs.rotated.fingerprint())
        assert "reloaded web config" in exp.log()
        # Every new connection now gets the new certificate.
        assert {presented() for _ in range(5)} == {certs.rotated.fingerprint()}


def test_invalid_edit_keeps_the_previous_web_config(tmp_path: Path) -> None:
    url_auth = basic("alice", PASSWORDS["alice"])
    web_yaml = users_yaml({"alice": htpasswd_hash(PASSWORDS["alice"])})
    with ExitStack() as stack:
        exp = start(stack, tmp_path, web_yaml, None, url_auth)
        url = f"http://127.0.0.1:{exp.port}/metrics"
        web = tmp_path / "web.yml"
        replace_text(web, users_yaml({"alice": "not-a-bcrypt-hash"}))
        wait_until(
            "the rejected edit in the log",
            lambda: http_get(url, timeout=2)[0] == 401 and "keeping the previous" in exp.log(),
        )
        assert f"{web}: basic_auth_users.alice: must be a bcrypt hash" in exp.log()
        # The previous config is still in force.
        assert http_get(url, timeout=2)[0] == 401
        assert http_get(url, url_auth, timeout=2)[0] == 200
        # A valid edit after it is taken, and the bad one was logged once only.
        replace_text(web, users_yaml({"carol": htpasswd_hash("c4rol")}))
        wait_until("carol's access", lambda: http_get(url, basic("carol", "c4rol"))[0] == 200)
        assert http_get(url, url_auth, timeout=2)[0] == 401
        assert exp.log().count("keeping the previous web config") == 1


def test_removing_tls_while_running_does_not_serve_plaintext(tmp_path: Path, certs: Certs) -> None:
    """Whether the port speaks TLS is settled at start, as in exporter-toolkit
    (which then fails handshakes when a reload finds no TLS config): an edit
    that drops tls_server_config must not turn the port into plain HTTP."""
    ctx = client_context(certs.ca)
    with ExitStack() as stack:
        exp = start(stack, tmp_path, tls_yaml(certs.server.cert, certs.server.key), ctx, {})
        replace_text(tmp_path / "web.yml", "http_server_config:\n  headers: {}\n")

        def edit_seen() -> bool:
            with contextlib.suppress(OSError):
                https_get(exp.port, "/healthz", ctx, timeout=2)  # makes the server look
            return "web config" in exp.log()

        wait_until("the server to re-read its web config", edit_seen)
        try:
            status = http_get(f"http://127.0.0.1:{exp.port}/metrics", timeout=5)[0]
        except OSError:  # also http.client's RemoteDisconnected
            status = None
        assert status != 200, "metrics served in plaintext on the TLS port"


# ------------------------------------------------------- invalid at start


def invalid_configs(certs: Certs, tmp: Path) -> dict[str, tuple[str, str]]:
    """case -> (web config YAML, the key its one-line error must name)."""
    server = (certs.server.cert, certs.server.key)
    alice = htpasswd_hash(PASSWORDS["alice"])
    return {
        "unknown-top-level-key": ("tls_config:\n  cert_file: x\n", "tls_config: unknown key"),
        "unknown-tls-key": (
            tls_yaml(*server, client_ca=str(certs.ca.cert)),
            "tls_server_config.client_ca: unknown key",
        ),
        "missing-key-file": (
            f"tls_server_config:\n  cert_file: {certs.server.cert}\n",
            "tls_server_config.key_file: must be a file path",
        ),
        "unsupported-client-auth-type": (
            tls_yaml(
                *server,
                client_ca_file=str(certs.ca.cert),
                client_auth_type="RequireAnyClientCert",
            ),
            "tls_server_config.client_auth_type: 'RequireAnyClientCert' not supported",
        ),
        "client-auth-without-ca": (
            tls_yaml(*server, client_auth_type="RequireAndVerifyClientCert"),
            "tls_server_config.client_ca_file: required by client_auth_type",
        ),
        "bad-min-version": (
            tls_yaml(*server, min_version="TLS14"),
            "tls_server_config.min_version: 'TLS14'",
        ),
        "min-above-max": (
            tls_yaml(*server, min_version="TLS13", max_version="TLS12"),
            "tls_server_config.min_version: above max_version",
        ),
        "nonexistent-cert-file": (
            tls_yaml(tmp / "missing.pem", certs.server.key),
            f"tls_server_config.cert_file: {tmp / 'missing.pem'}: No such file",
        ),
        "nonexistent-key-file": (
            tls_yaml(certs.server.cert, tmp / "missing.key"),
            f"tls_server_config.key_file: {tmp / 'missing.key'}: No such file",
        ),
        "key-of-another-cert": (
            tls_yaml(certs.server.cert, certs.rotated.key),
            f"tls_server_config.cert_file: {certs.server.cert}:",
        ),
        "password-not-hashed": (
            users_yaml({"alice": "wonderland"}),
            "basic_auth_users.alice: must be a bcrypt hash",
        ),
        "truncated-bcrypt-hash": (
            users_yaml({"alice": alice[:20]}),
            "basic_auth_users.alice:",
        ),
        "unknown-header": (
            "http_server_config:\n  headers:\n    X-Powered-By: pss\n",
            "http_server_config.headers.X-Powered-By: unknown key",
        ),
        **hostile_configs(certs, tmp),
    }


def alias_bomb(levels: int) -> str:
    """A YAML flow sequence of a few hundred bytes that expands to 9**levels strings."""
    items = ["&l0 [" + ",".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def hostile_configs(certs: Certs, tmp: Path) -> dict[str, tuple[str, str]]:
    """Valid YAML with values that escaped the checks (a crash, a hang, a
    gigabyte message): case -> (web config YAML, the start of its error)."""
    server = (certs.server.cert, certs.server.key)
    alice = htpasswd_hash(PASSWORDS["alice"])
    fifo = tmp / "fifo.pem"
    if not fifo.exists():
        os.mkfifo(fifo)
    return {
        "bcrypt-cost-in-non-ascii-digits": (
            users_yaml({"alice": alice[:5] + "\u00b2" + alice[6:]}),  # $2b$1²$...
            "basic_auth_users.alice: must be a bcrypt hash",
        ),
        "nul-byte-in-cert-file": (
            tls_yaml('"cert\\0.pem"', certs.server.key),
            "tls_server_config.cert_file: has a NUL byte",
        ),
        "nul-byte-in-client-ca-file": (
            tls_yaml(*server, client_ca_file='"ca\\0.pem"'),
            "tls_server_config.client_ca_file: has a NUL byte",
        ),
        "yaml-nested-600-deep": ("basic_auth_users: " + "[" * 600 + "]" * 600 + "\n", "line 1:"),
        "alias-bomb": (
            tls_yaml(*server, client_auth_type=alias_bomb(7)),
            "line 4: more than 100000 values once aliases are expanded",
        ),
        "fifo-cert-file": (
            tls_yaml(fifo, certs.server.key),
            f"tls_server_config.cert_file: {fifo}: not a regular file",
        ),
        "fifo-key-file": (
            tls_yaml(certs.server.cert, fifo),
            f"tls_server_config.key_file: {fifo}: not a regular file",
        ),
        "fifo-client-ca-file": (
            tls_yaml(*server, client_ca_file=str(fifo), client_auth_type="VerifyClientCertIfGiven"),
            f"tls_server_config.client_ca_file: {fifo}: not a regular file",
        ),
        "header-with-crlf": (
            'http_server_config:\n  headers:\n    X-Frame-Options: "deny\\r\\nX-Injected: 1"\n',
            "http_server_config.headers.X-Frame-Options: must be printable ASCII text",
        ),
    }


HOSTILE_CASES = (
    "bcrypt-cost-in-non-ascii-digits",
    "nul-byte-in-cert-file",
    "nul-byte-in-client-ca-file",
    "yaml-nested-600-deep",
    "alias-bomb",
    "fifo-cert-file",
    "fifo-key-file",
    "fifo-client-ca-file",
    "header-with-crlf",
)


INVALID_CASES = (
    "unknown-top-level-key",
    "unknown-tls-key",
    "missing-key-file",
    "unsupported-client-auth-type",
    "client-auth-without-ca",
    "bad-min-version",
    "min-above-max",
    "nonexistent-cert-file",
    "nonexistent-key-file",
    "key-of-another-cert",
    "password-not-hashed",
    "truncated-bcrypt-hash",
    "unknown-header",
    *HOSTILE_CASES,
)


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_web_config_fails_at_start_with_one_line(
    tmp_path: Path, certs: Certs, case: str, command: str
) -> None:
    text, names = invalid_configs(certs, tmp_path)[case]
    web = tmp_path / "web.yml"
    web.write_text(text)
    listen = f"--web.listen-address=127.0.0.1:{free_port()}"
    # A rejected config exits at once; a wrongly accepted one would serve on.
    result = run_cli(command, listen, f"--web.config.file={web}", timeout=5)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"pss-exporter: error: {web}: {names}"), result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_edit_keeps_the_previous_web_config(
    tmp_path: Path, certs: Certs, case: str
) -> None:
    """Each of these edits killed the server on the next connection (or hung
    it, or built a gigabyte message): now one log line, and alice's access
    and nobody else's, as before."""
    text, error = hostile_configs(certs, tmp_path)[case]
    alice = basic("alice", PASSWORDS["alice"])
    with ExitStack() as stack:
        exp = start(
            stack, tmp_path, users_yaml({"alice": htpasswd_hash("wonderland")}), None, alice
        )
        url = f"http://127.0.0.1:{exp.port}/metrics"
        web = tmp_path / "web.yml"
        replace_text(web, text)
        # Any request may be the one that re-reads the file.
        wait_until(
            "the rejected edit in the log",
            lambda: http_get(url, timeout=2)[0] == 401 and "keeping the previous" in exp.log(),
        )
        assert f"keeping the previous web config: {web}: {error}" in exp.log()
        for _ in range(3):  # over a second: the server looked at the files again
            assert http_get(url, alice, timeout=5)[0] == 200
            assert http_get(url, timeout=5)[0] == 401
            time.sleep(0.4)
        assert exp.proc.poll() is None
        log = exp.log()
        assert log.count("keeping the previous web config") == 1, log
        assert "Traceback" not in log
        assert all(len(line) < 1000 for line in log.splitlines())


def test_check_config_accepts_a_valid_web_config(tmp_path: Path, certs: Certs) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        tls_yaml(
            certs.server.cert,
            certs.server.key,
            client_ca_file=str(certs.ca.cert),
            client_auth_type="VerifyClientCertIfGiven",
            min_version="TLS12",
            max_version="TLS13",
        )
        + users_yaml(secured_users())
        + "http_server_config:\n  headers:\n"
        + yaml_headers(HEADERS)
    )
    result = run_cli("check-config", f"--web.config.file={web}", timeout=WAIT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{web}: OK"


# ----------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    """A plain-HTTP exporter for the hostile-input tests."""
    tmp = tmp_path_factory.mktemp("plain")
    with ExitStack() as stack:
        yield start(stack, tmp, "{}\n", None, {})


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def exchange(port: int, request: bytes) -> bytes:
    """Send request on a new connection; everything the server sends until it closes."""
    with connect(port) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()


def server_threads(exp: Exporter) -> int:
    status = Path(f"/proc/{exp.proc.pid}/status").read_text()
    return int(status.split("Threads:", 1)[1].split()[0])


def closed_by_server(sock: socket.socket) -> bool:
    """True if the server has closed (or reset) this connection; never waits."""
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def assert_metrics_answer(port: int) -> None:
    """/metrics answers at once (bounded client timeout), complete and correct."""
    status, headers, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert status == 200
    assert int(headers["Content-Length"]) == len(body)
    assert group_value(parse_samples(body.decode()), "pss_group_processes", "sshd") == 1


IDLE, STALLED_LINE, STALLED_HEADERS = 300, 5, 5


def test_idle_and_stalled_connections_do_not_block_metrics(plain: Exporter) -> None:
    with ExitStack() as stack:
        idle = [stack.enter_context(connect(plain.port)) for _ in range(IDLE)]
        stalled = [stack.enter_context(connect(plain.port)) for _ in range(STALLED_LINE)]
        for sock in stalled:
            sock.sendall(b"GET /metr")  # no end of line, ever
        half = [stack.enter_context(connect(plain.port)) for _ in range(STALLED_HEADERS)]
        for sock in half:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        held = IDLE + STALLED_LINE + STALLED_HEADERS
        # Each held connection occupies a server thread: they really are held.
        wait_until(f"{held} connection threads", lambda: server_threads(plain) > held)
        assert_metrics_answer(plain.port)
        assert http_get(f"http://127.0.0.1:{plain.port}/healthz", timeout=5)[0] == 200
        assert not any(closed_by_server(sock) for sock in idle + stalled + half)
    assert_metrics_answer(plain.port)


def request_line_of(size: int) -> bytes:
    """A GET /metrics request whose request line (CRLF included) is size bytes."""
    head, tail = b"GET /metrics?pad=", b" HTTP/1.1\r\n"
    return head + b"a" * (size - len(head) - len(tail)) + tail + b"Connection: close\r\n\r\n"


def test_request_line_longer_than_64k_is_414(plain: Exporter) -> None:
    served = exchange(plain.port, request_line_of(HTTP_LINE_LIMIT))
    assert status_line(served) == "HTTP/1.1 200 OK"
    assert b"pss_group_processes" in served
    refused = exchange(plain.port, request_line_of(HTTP_LINE_LIMIT + 1))
    assert status_line(refused) == "HTTP/1.1 414 Request-URI Too Long"
    assert b"pss_group" not in refused
    assert_metrics_answer(plain.port)


def headers_request(*headers: bytes) -> bytes:
    return b"GET /metrics HTTP/1.1\r\nConnection: close\r\n" + b"".join(headers) + b"\r\n"


def test_header_line_longer_than_64k_is_431(plain: Exporter) -> None:
    response = exchange(plain.port, headers_request(b"X-Big: " + b"a" * HTTP_LINE_LIMIT + b"\r\n"))
    assert status_line(response) == "HTTP/1.1 431 Line too long"
    assert_metrics_answer(plain.port)


def test_too_many_headers_is_431(plain: Exporter) -> None:
    # http.client counts the blank line ending the headers against its 100:
    # 99 fields (Connection + 98) are the most a request may carry.
    fields = [b"X-H%d: v\r\n" % i for i in range(101)]
    assert status_line(exchange(plain.port, headers_request(*fields[:98]))) == "HTTP/1.1 200 OK"
    response = exchange(plain.port, headers_request(*fields))
    assert status_line(response) == "HTTP/1.1 431 Too many headers"
    assert b"pss_group" not in response
    assert_metrics_answer(plain.port)


FD_LIMIT = 128  # RLIMIT_NOFILE, soft and hard: far below MAX_CONNECTIONS
SLOTS = FD_LIMIT - FDS_RESERVED  # connection_limit() under it
FLOOD = 200


def limited(stack: ExitStack, tmp: Path) -> Exporter:
    """A plain-HTTP exporter under FD_LIMIT descriptors: SLOTS connection slots."""
    prlimit = (require_binary("prlimit"), f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--")
    return start(stack, tmp, "{}\n", None, {}, prefix=prlimit)


def test_connections_beyond_the_fd_limit_are_closed(tmp_path: Path) -> None:
    """The connection bound must hold under the process's file descriptor
    limit, or idle clients exhaust the descriptors: accept() then fails with
    EMFILE (leaving the excess connections queued, unanswered) and collections
    fail to open /proc files."""
    with ExitStack() as stack:
        exp = limited(stack, tmp_path)
        with ExitStack() as connections:
            flood = [connections.enter_context(connect(exp.port)) for _ in range(FLOOD)]
            # At most SLOTS are served: each one past it evicted the longest idle.
            wait_until(
                f"at least {FLOOD - SLOTS} of {FLOOD} connections closed",
                lambda: sum(closed_by_server(s) for s in flood) >= FLOOD - SLOTS,
                timeout=5,  # an eviction is immediate: accept, hang up the oldest, serve
            )
        assert "Too many open files" not in exp.log()
        assert_metrics_answer(exp.port)


class SlotHolder:
    """An attacker holding `count` connections, each sent `head` (nothing: idle);
    it reconnects any the server closes."""

    def __init__(self, stack: ExitStack, port: int, count: int, head: bytes = b"") -> None:
        self.stack, self.port, self.head = stack, port, head
        self.socks = [self._open() for _ in range(count)]

    def _open(self) -> socket.socket:
        sock = self.stack.enter_context(connect(self.port))
        if self.head:
            sock.sendall(self.head)
        return sock

    def reconnect(self) -> int:
        """Replace the connections the server closed; how many there were."""
        closed = [i for i, sock in enumerate(self.socks) if closed_by_server(sock)]
        for i in closed:
            self.socks[i] = self._open()
        return len(closed)

    def drip(self) -> None:
        """One more byte of each request head."""
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.sendall(b"a")


def test_idle_connections_holding_every_slot_do_not_lock_out_scrapes(tmp_path: Path) -> None:
    """Idle connections filling the slots locked scrapes out for as long as
    they reconnected: a new connection was refused when all were taken. It
    now evicts the one idle longest, and the attacker's reconnections evict
    each other."""
    with ExitStack() as stack:
        exp = limited(stack, tmp_path)
        attacker = SlotHolder(stack, exp.port, SLOTS)
        wait_until(f"{SLOTS} connection threads", lambda: server_threads(exp) > SLOTS)
        for _ in range(5):
            assert_metrics_answer(exp.port)
            attacker.reconnect()
        assert exp.proc.poll() is None


def test_slow_request_heads_holding_every_slot_do_not_lock_out_scrapes(tmp_path: Path) -> None:
    """Slowloris: a header byte now and then kept every slot, for ever (the
    timeout was per read). The oldest incomplete head is evicted instead."""
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
    with ExitStack() as stack:
        exp = limited(stack, tmp_path)
        attacker = SlotHolder(stack, exp.port, SLOTS, head)
        wait_until(f"{SLOTS} connection threads", lambda: server_threads(exp) > SLOTS)
        for _ in range(3):
            attacker.drip()
            assert_metrics_answer(exp.port)
            assert attacker.reconnect() >= 1  # the scrape took a slow one's slot
