"""The exporter-toolkit web configuration file (`--web.config.file`):
TLS, client certificates, basic auth and response headers.

The file Prometheus operators already use for node_exporter is accepted as
is. Invalid settings are a WebConfigError (one line naming the file, key and
reason; a value is shown cut short, never expanded); a running server
re-reads the file, and the certificate files it names, when they change,
keeping the previous settings if the new ones are invalid for any reason.
The files are read without blocking (a FIFO is refused, not waited on) and
bounded in size; the YAML is bounded by config.load_yaml.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import bcrypt

from .config import ConfigError, load_yaml
from .config import _key_text as key_text
from .fileio import open_regular
from .text import excerpt

log = logging.getLogger(__name__)

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's cipher suite names (exporter-toolkit) -> OpenSSL's. TLS 1.3 suites
# are not configurable, in Go as here.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1"}
# The response headers exporter-toolkit lets a config set.
HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
)


class WebConfigError(ConfigError):
    """Invalid web config: FILE: KEY: REASON, one line, as for the config."""


@dataclass(frozen=True)
class WebConfig:
    source: str = ""
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()  # the config and the files it names, to watch


MAX_PATH = 4096  # PATH_MAX: a longer file name cannot be opened
MAX_TLS_FILE = 1 << 20  # a certificate chain, key or CA bundle is far smaller


def _mapping(data: Any, source: str, key: str, known: set[str]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WebConfigError(source, key, f"must be a mapping, got {excerpt(data)}")
    for name in data:
        if name not in known:
            shown = key_text(name)
            raise WebConfigError(source, f"{key}.{shown}" if key else shown, "unknown key")
    return data


def _names(tls: dict[str, Any], key: str, source: str) -> list[str]:
    value = tls.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WebConfigError(source, f"tls_server_config.{key}", "must be a list of names")
    return value


def _open_regular(file: str, source: str, key: str) -> int:
    """A descriptor of file (fileio.open_regular), which must be a regular
    file of at most MAX_TLS_FILE bytes: ssl's own open would wait forever on
    a FIFO and read a device without end. ssl is handed this descriptor, so
    nothing swapped in after the check counts."""
    try:
        fd = open_regular(file)
    except OSError as exc:
        raise WebConfigError(source, key, f"{file}: {exc.strerror}") from None
    if os.fstat(fd).st_size <= MAX_TLS_FILE:
        return fd
    os.close(fd)
    raise WebConfigError(source, key, f"{file}: larger than 1 MiB")


def _tls(tls: dict[str, Any], source: str, base: str) -> tuple[ssl.SSLContext, list[str]]:
    def path(key: str) -> str:
        value = tls.get(key)
        if not isinstance(value, str) or not value or len(value) > MAX_PATH:
            raise WebConfigError(source, f"tls_server_config.{key}", "must be a file path")
        if "\0" in value:
            raise WebConfigError(source, f"tls_server_config.{key}", "has a NUL byte")
        return os.path.join(base, value)

    def checked(opened: ExitStack, key: str, file: str) -> str:
        """The path ssl opens: the descriptor _open_regular checked (by /proc),
        open until opened closes."""
        fd = _open_regular(file, source, f"tls_server_config.{key}")
        opened.callback(os.close, fd)
        return f"/proc/self/fd/{fd}"

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = path("cert_file"), path("key_file")
    with ExitStack() as opened:
        try:
            pair = checked(opened, "cert_file", cert), checked(opened, "key_file", key)
            ctx.load_cert_chain(*pair, password=b"")  # encrypted key: an error, no prompt
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                source,
                "tls_server_config.cert_file",
                f"{cert}: no valid pair with {key} ({getattr(exc, 'reason', None) or exc})",
            ) from None
    files = [cert, key]
    auth = tls.get("client_auth_type", "NoClientCert")
    if not isinstance(auth, str) or auth not in CLIENT_AUTH:
        raise WebConfigError(
            source,
            "tls_server_config.client_auth_type",
            f"{excerpt(auth)} not supported (use {', '.join(CLIENT_AUTH)})",
        )
    ctx.verify_mode = CLIENT_AUTH[auth]
    if tls.get("client_ca_file"):
        ca = path("client_ca_file")
        with ExitStack() as opened:
            try:
                ctx.load_verify_locations(checked(opened, "client_ca_file", ca))
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise WebConfigError(
                    source, "tls_server_config.client_ca_file", f"{ca}: {reason}"
                ) from None
        files.append(ca)
    elif auth != "NoClientCert":
        raise WebConfigError(
            source, "tls_server_config.client_ca_file", f"required by client_auth_type {auth}"
        )
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = tls.get(key, default)
        if not isinstance(name, str) or name not in TLS_VERSIONS:
            raise WebConfigError(
                source,
                f"tls_server_config.{key}",
                f"{excerpt(name)} (use {', '.join(TLS_VERSIONS)})",
            )
        versions[key] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise WebConfigError(source, "tls_server_config.min_version", "above max_version")
    ctx.minimum_version, ctx.maximum_version = versions["min_version"], versions["max_version"]
    suites = _names(tls, "cipher_suites", source)
    if suites:
        unknown = [s for s in suites if s not in CIPHER_SUITES]
        if unknown:
            raise WebConfigError(
                source, "tls_server_config.cipher_suites", f"unknown suite {excerpt(unknown[0])}"
            )
        ctx.set_ciphers(":".join(CIPHER_SUITES[s] for s in suites))
    curves = _names(tls, "curve_preferences", source)
    if curves:
        if any(c not in CURVES for c in curves):
            raise WebConfigError(
                source, "tls_server_config.curve_preferences", f"use {', '.join(CURVES)}"
            )
        ctx.set_ecdh_curve(CURVES[curves[0]])  # OpenSSL via Python takes one curve
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(
            source,
            "tls_server_config.prefer_server_cipher_suites",
            f"must be true or false, got {excerpt(prefer)}",
        )
    if prefer:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx, files


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web config file; raise WebConfigError, whatever is
    wrong with it (one line at start, a kept previous config on reload)."""
    try:
        return _load(path)
    except WebConfigError:
        raise
    except ConfigError as exc:  # config.load_yaml's: the same FILE: WHERE: REASON
        raise WebConfigError(path, "", str(exc).removeprefix(f"{path}: ")) from None
    except Exception as exc:  # a case no check above foresaw: still one line
        raise WebConfigError(path, "", f"cannot load: {_unforeseen(exc)}") from None


def _unforeseen(exc: Exception) -> str:
    """An exception no check foresaw, for a one-line message: type and the
    start of its text."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _load(path: str) -> WebConfig:
    data = load_yaml(path)
    top = _mapping(data, path, "", {"tls_server_config", "http_server_config", "basic_auth_users"})
    base = os.path.dirname(os.path.abspath(path))
    tls_keys = {
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
    }
    tls = _mapping(top.get("tls_server_config"), path, "tls_server_config", tls_keys)
    ctx, files = _tls(tls, path, base) if tls else (None, [])
    http = _mapping(top.get("http_server_config"), path, "http_server_config", {"headers", "http2"})
    headers = _mapping(http.get("headers"), path, "http_server_config.headers", set(HEADERS))
    return WebConfig(
        source=path,
        ssl_context=ctx,
        users=_users(top.get("basic_auth_users"), path),
        headers={name: _header_value(value, path, name) for name, value in headers.items()},
        files=(os.path.abspath(path), *files),
    )


def _header_value(value: Any, source: str, name: str) -> str:
    """A response header's value: a scalar of printable ASCII (a CR or LF
    would end the header and let the config write others; http.server cannot
    encode most other characters, and would fail every response)."""
    scalar = isinstance(value, (str, int, float))  # str() of a list could be huge
    if not (scalar and str(value).isascii() and str(value).isprintable()):
        raise WebConfigError(
            source,
            f"http_server_config.headers.{name}",
            f"must be printable ASCII text, got {excerpt(value)}",
        )
    return str(value)


def _is_bcrypt(text: str) -> bool:
    """$2a$, $2b$ or $2y$, a two-digit cost, then 53 characters of bcrypt's base64."""
    alphabet = set("./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    head, rest = text[:7], text[7:]
    cost = head[4:6]
    return (
        len(text) == 60
        and head[:4] in ("$2a$", "$2b$", "$2y$")
        and cost.isascii()  # str.isdigit() also takes '²', which int() refuses
        and cost.isdigit()
        and 4 <= int(cost) <= 31
        and head[6] == "$"
        and set(rest) <= alphabet
    )


def _users(data: Any, source: str) -> dict[str, bytes]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WebConfigError(source, "basic_auth_users", "must be a mapping of user to hash")
    out = {}
    for user, hashed in data.items():
        key = f"basic_auth_users.{key_text(user)}"
        if not isinstance(hashed, str) or not _is_bcrypt(hashed):
            raise WebConfigError(source, key, "must be a bcrypt hash ($2y$10$ and 53 characters)")
        out[str(user)] = hashed.encode()
    return out


# bcrypt is slow on purpose; a scraper sends the same credentials every time.
GOOD_VERDICTS = 256  # credentials that passed, the least recently used dropped first
BAD_VERDICTS = 1024  # and that failed, apart: a flood of failures never evicts a scraper
CHECKS_AT_ONCE = 1  # bcrypt runs for at most this many unverified attempts at a time...
CHECK_WAIT = 0.5  # ...and an attempt waits this long for its turn, then fails unchecked


class _Verdicts:
    """A bounded set of credential digests, least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        if key not in self._keys:
            return False
        self._keys.move_to_end(key)
        return True

    def add(self, key: bytes) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)


class Authenticator:
    """Checks HTTP basic auth against a WebConfig's users, caching verdicts.

    Known verdicts cost a hash and a lookup. bcrypt runs for CHECKS_AT_ONCE
    unknown credentials at a time, so a flood of wrong passwords takes at most
    that many cores and never slows the scrapes of a verified scraper; an
    attempt that cannot get its turn within CHECK_WAIT is refused unchecked.
    """

    def __init__(self) -> None:
        self._good, self._bad = _Verdicts(GOOD_VERDICTS), _Verdicts(BAD_VERDICTS)
        self._lock = threading.Lock()
        self._checks = threading.BoundedSemaphore(CHECKS_AT_ONCE)

    def allowed(self, config: WebConfig, authorization: str | None) -> bool:
        if not config.users:
            return True
        if not authorization or authorization[:6].lower() != "basic ":
            return False
        try:
            user, sep, password = base64.b64decode(authorization[6:], validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        hashed = config.users.get(user.decode("utf-8", "replace"))
        key = hashlib.sha256(b"\0".join((user, password, hashed or b""))).digest()
        with self._lock:
            if key in self._good:
                return True
            if key in self._bad:
                return False
        if not self._checks.acquire(timeout=CHECK_WAIT):
            return False  # other checks keep bcrypt busy: refused, not remembered
        try:
            # An unknown user costs a check against a configured hash, so the
            # time taken does not tell which user names exist.
            probe = hashed or next(iter(config.users.values()))
            try:
                verdict = bcrypt.checkpw(password, probe) and hashed is not None
            except ValueError:  # bcrypt >= 5 refuses passwords over 72 bytes
                verdict = False
        finally:
            self._checks.release()
        with self._lock:
            (self._good if verdict else self._bad).add(key)
        return verdict


class WebConfigWatcher:
    """The current WebConfig, re-read when its files change (at most once a
    second); an invalid new version is logged and the previous one kept.

    A re-read runs in the thread that asks while it is due; other threads get
    the previous config meanwhile rather than wait for it.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._config = load_web_config(path) if path else WebConfig()
        self._stamps = self._stat(self._config.files)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @property
    def config(self) -> WebConfig:
        """The config in force, never re-read here (for the accept loop)."""
        return self._config

    @staticmethod
    def _stat(files: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []  # None: cannot be stat'ed
        for f in files:
            try:
                st = os.stat(f)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def current(self) -> WebConfig:
        path = self.path
        if path is None or time.monotonic() - self._checked < 1.0:
            return self._config
        if not self._lock.acquire(blocking=False):
            return self._config  # another thread is re-reading it
        try:
            self._checked = time.monotonic()
            self._reload_if_changed(path)
        except Exception as exc:  # whatever it is, the previous config serves on
            if not isinstance(exc, WebConfigError):
                exc = WebConfigError(path, "", _unforeseen(exc))
            log.error("keeping the previous web config: %s", exc)
        finally:
            self._lock.release()
        return self._config

    def _reload_if_changed(self, path: str) -> None:
        stamps = self._stat(self._config.files)
        if stamps == self._stamps:
            return
        self._stamps = stamps  # an invalid version is reported once, not every second
        config = load_web_config(path)
        if (config.ssl_context is None) != (self._config.ssl_context is None):
            # Never fall back to plain HTTP (or switch to TLS) under clients.
            raise WebConfigError(path, "tls_server_config", "TLS on/off changes need a restart")
        self._config = config
        self._stamps = self._stat(self._config.files)
        log.info("reloaded web config %s", path)
