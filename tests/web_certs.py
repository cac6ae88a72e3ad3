"""Helpers for the web tests: real certificates from the `openssl` CLI (the
`cryptography` package is not a dependency), TLS client contexts, HTTPS
requests that report the certificate the server presented, and an exporter
process whose stderr is kept in a file so a test can read its log while it runs.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from conftest import ROOT, T, require_binary, stop
from conftest import wait_until as wait

WAIT = 15.0  # upper bound of every wait; never reached when things work
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path

    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER form, as getpeercert(True) gives it."""
        return der_fingerprint(ssl.PEM_cert_to_DER_cert(self.cert.read_text()))


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def openssl(*args: str) -> None:
    subprocess.run(
        [require_binary("openssl"), *args], check=True, capture_output=True, timeout=WAIT
    )


def make_ca(directory: Path, name: str = "ca") -> KeyPair:
    """A self-signed CA certificate valid for a day."""
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    openssl(
        "req", "-x509", *EC_KEY, "-keyout", str(pair.key), "-out", str(pair.cert),
        "-days", "1", "-subj", f"/CN=pss-exporter test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def make_cert(ca: KeyPair, directory: Path, name: str, usage: str) -> KeyPair:
    """A leaf certificate signed by ca: usage "serverAuth" (for localhost and
    127.0.0.1) or "clientAuth"."""
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if usage == "serverAuth":
        lines.append("subjectAltName=DNS:localhost,IP:127.0.0.1")
    ext.write_text("\n".join(lines) + "\n")
    openssl(
        "req", "-new", *EC_KEY, "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={name}"
    )
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(time.time_ns()), "-days", "1", "-extfile", str(ext),
        "-out", str(pair.cert),
    )  # fmt: skip
    return pair


def client_context(
    ca: KeyPair,
    client: KeyPair | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying client context trusting ca, optionally presenting client."""
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    peer_cert: bytes  # DER of the certificate the server presented


def https_get(
    port: int,
    path: str,
    ctx: ssl.SSLContext,
    headers: dict[str, str] | None = None,
    timeout: float = 5,
) -> Response:
    """GET https://127.0.0.1:port/path on a new connection."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        assert conn.sock is not None
        peer = conn.sock.getpeercert(binary_form=True)
        return Response(resp.status, resp.headers, body, peer or b"")
    finally:
        conn.close()


def wait_until(what: str, check: Callable[[], T], timeout: float = WAIT) -> T:
    """conftest.wait_until where a connection error (OSError) counts as not yet."""
    return wait(what, check, timeout=timeout, ignore=(OSError,))


@dataclass
class Exporter:
    """A running `serve` process: its port and its stderr so far."""

    port: int
    proc: subprocess.Popen
    stderr_path: Path

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def serving(
    argv: Sequence[str],
    port: int,
    ready: Callable[[Exporter], bool],
    stderr_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[Exporter]:
    """Start argv (an exporter `serve` listening on port); yield once
    ready(exporter) is true; terminate it on leaving."""
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    exporter = Exporter(port, proc, stderr_path)
    try:

        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"exporter exited {proc.returncode}: {exporter.log()}")
            return ready(exporter)

        wait_until("the exporter to serve", started, timeout=30)
        yield exporter
    finally:
        stop(proc)
