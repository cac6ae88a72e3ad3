"""Web config checks that need no server: basic auth (odd headers and
passwords, the verdict cache, the bound on bcrypt work) and files the web
config must refuse with one line."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from exporter import webconfig
from exporter.webconfig import (
    Authenticator,
    WebConfig,
    WebConfigError,
    WebConfigWatcher,
    load_web_config,
)

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))
BCRYPT_REASON = "must be a bcrypt hash ($2y$10$ and 53 characters)"


def header(user: str, password: bytes, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(user.encode() + b":" + password).decode()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def load_error(path: str) -> str:
    """load_web_config's one-line message for an invalid file."""
    with pytest.raises(WebConfigError) as err:
        load_web_config(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_scheme_is_case_insensitive_and_long_passwords_are_refused() -> None:
    config = WebConfig(users={"alice": HASH})
    auth = Authenticator()
    assert auth.allowed(config, header("alice", b"secret", "basic"))
    assert not auth.allowed(config, header("alice", b"x" * 100))  # bcrypt >= 5 raises
    assert not auth.allowed(config, header("mallory", b"secret"))
    assert not auth.allowed(config, "Bearer abc")


@pytest.mark.parametrize("cost", ["03", "32"])
def test_bcrypt_costs_outside_4_to_31_are_refused(tmp_path: Path, cost: str) -> None:
    bad = "$2b$" + cost + HASH.decode()[6:]
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{bad}'\n")
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.alice: must be a bcrypt hash"):
        load_web_config(str(path))


def test_bcrypt_cost_in_non_ascii_digits_is_refused(tmp_path: Path) -> None:
    # '²' passes str.isdigit(), and int() raised a ValueError the reload let through.
    bad = "$2y$1\u00b2$" + HASH.decode()[7:]
    path = write(tmp_path, f"basic_auth_users:\n  alice: '{bad}'\n")
    assert load_error(path) == f"{path}: basic_auth_users.alice: {BCRYPT_REASON}"


@pytest.mark.parametrize("key", ["cert_file", "key_file"])
def test_nul_byte_in_a_tls_file_path_is_refused(tmp_path: Path, key: str) -> None:
    # open() raised a ValueError the reload let through. (client_ca_file:
    # tests/test_web_security.py, which has certificates.)
    files = {"cert_file": "cert.pem", "key_file": "key.pem"}
    files[key] = "cert\\0.pem"  # a YAML escape: the value holds a NUL byte
    lines = "".join(f'  {name}: "{value}"\n' for name, value in files.items())
    path = write(tmp_path, "tls_server_config:\n" + lines)
    assert load_error(path) == f"{path}: tls_server_config.{key}: has a NUL byte"


def test_a_fifo_cert_file_is_refused_without_being_opened(tmp_path: Path) -> None:
    """The TLS files were opened (O_NONBLOCK) before their type was checked:
    a FIFO's waiting writer woke, and opening a device can act. They now go
    through fileio.open_regular, like the config files."""
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        os.close(os.open(fifo, os.O_WRONLY))  # blocks until a reader opens it
        opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    path = write(tmp_path, "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")
    assert load_error(path) == f"{path}: tls_server_config.cert_file: {fifo}: not a regular file"
    assert not opened.wait(0.5), "the FIFO was opened: its writer woke"
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release the writer
    assert opened.wait(5)
    thread.join(5)


def test_yaml_nested_600_deep_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "basic_auth_users: " + "[" * 600 + "]" * 600 + "\n")
    assert load_error(path) == f"{path}: line 1: nested deeper than 64 levels"


def test_alias_bomb_is_refused_before_it_is_built(tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(levels) + "\n"
    assert len(text) < 400  # a billion "lol"s
    message = load_error(write(tmp_path, text))
    assert message.endswith("more than 100000 values once aliases are expanded")


def test_a_value_is_never_expanded_into_a_message(tmp_path: Path) -> None:
    # 90,000 strings once expanded: under the loader's bound, so it is built.
    # str() of it made a 1.3 MB header; in a message, as much text.
    strings = ",".join(["0123456789"] * 300)
    aliases = ",".join(["*x"] * 300)
    path = write(
        tmp_path,
        "http_server_config:\n  headers:\n"
        f"    X-Frame-Options: &x [{strings}]\n"
        f"    Content-Security-Policy: [{aliases}]\n",
    )
    assert load_error(path) == (
        f"{path}: http_server_config.headers.X-Frame-Options: "
        "must be printable ASCII text, got a list"
    )


@pytest.mark.parametrize(
    "value",
    ['"deny\\r\\nSet-Cookie: a=b"', '"deny\\n"', "caf\u00e9-\u2603"],
    ids=["crlf", "lf", "non-ascii"],
)
def test_header_values_must_be_printable_ascii(tmp_path: Path, value: str) -> None:
    """A CR or LF would let the value write headers of its own; http.server
    encodes header values as Latin-1 and raised on every response for others."""
    path = write(tmp_path, f"http_server_config:\n  headers:\n    X-Frame-Options: {value}\n")
    message = load_error(path)
    assert "X-Frame-Options: must be printable ASCII text, got '" in message


def test_an_unforeseen_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: str) -> WebConfig:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(webconfig, "_load", broken)
    path = write(tmp_path, "{}\n")
    assert load_error(path) == f"{path}: cannot load: RuntimeError: a bug\\nwith a second line"


class CountingCheck:
    """bcrypt.checkpw, counting the calls per password and the most that ran at once."""

    def __init__(self, real, hold: float = 0.0) -> None:
        self.real, self.hold = real, hold
        self.calls: dict[bytes, int] = {}
        self.running = self.most = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.calls[password] = self.calls.get(password, 0) + 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.hold)
            return self.real(password, hashed)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> CountingCheck:
    counting = CountingCheck(bcrypt.checkpw)
    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counting)
    return counting


def test_a_verified_scraper_stays_verified_through_a_flood_of_failures(
    checks: CountingCheck,
) -> None:
    """The cache was cleared every 256 failures: a flood of wrong passwords
    made the real scraper pay bcrypt again and again."""
    config = WebConfig(users={"alice": HASH})
    auth = Authenticator()
    assert auth.allowed(config, header("alice", b"secret"))
    for i in range(webconfig.GOOD_VERDICTS + webconfig.BAD_VERDICTS + 10):
        assert not auth.allowed(config, header("alice", b"guess%d" % i))
    assert auth.allowed(config, header("alice", b"secret"))
    assert checks.calls[b"secret"] == 1
    # A failure is remembered too: the same wrong password costs no second check.
    assert not auth.allowed(config, header("alice", b"guess9999"))
    assert not auth.allowed(config, header("alice", b"guess9999"))
    assert checks.calls[b"guess9999"] == 1


def test_unverified_attempts_run_bcrypt_one_at_a_time(checks: CountingCheck) -> None:
    checks.hold = 0.05  # a slower hash: attempts overlap
    config = WebConfig(users={"alice": HASH})
    auth = Authenticator()
    verdicts: list[bool] = []

    def guess(i: int) -> None:
        for j in range(5):
            verdicts.append(auth.allowed(config, header("alice", b"guess%d-%d" % (i, j))))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert verdicts == [False] * 40
    assert checks.most == 1
    # Attempts that waited past CHECK_WAIT were refused without a check.
    assert sum(checks.calls.values()) < 40


def test_a_reload_failing_for_any_reason_keeps_the_previous_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  alice: '{HASH.decode()}'\n")
    watcher = WebConfigWatcher(path)
    before = watcher.current()

    def broken(files: tuple[str, ...]) -> tuple:
        raise RuntimeError("a bug")

    monkeypatch.setattr(WebConfigWatcher, "_stat", staticmethod(broken))
    time.sleep(1.1)  # the watcher looks at its files at most once a second
    assert watcher.current() is before
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"keeping the previous web config: {path}: RuntimeError: a bug"
    ]
