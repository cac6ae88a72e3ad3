"""Shared helpers: run the real CLI, start a real exporter, parse expositions,
start and stop processes, wait for a condition, and a memory-limited cgroup."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import NoReturn, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPORTER = [sys.executable, "-m", "exporter"]
T = TypeVar("T")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m exporter ARGS` and capture its output."""
    return subprocess.run(
        [*EXPORTER, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def parse_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset(labels.items())): value} of a text exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def group_value(samples: dict, name: str, group: str, **labels: str) -> float:
    return samples[(name, frozenset({"group": group, **labels}.items()))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10):
    """GET url; returns (status, headers, body) also for error statuses."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Stop proc: send sig if it still runs, SIGKILL it if it has not exited
    within timeout seconds; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_until(
    what: str,
    check: Callable[[], T],
    *,
    timeout: float = 30,
    interval: float = 0.05,
    ignore: tuple[type[Exception], ...] = (),
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll check() until it returns something true, and return that. An
    exception of a type in ignore counts as not yet; any other propagates.
    After timeout seconds, fail naming what (and detail(), if given)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except ignore:
            pass
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{more}")
        time.sleep(interval)


def stderr_of(proc: subprocess.Popen) -> str:
    """What proc wrote to its stderr pipe, once stopped ("" if not piped)."""
    if proc.stderr is None:
        return ""
    stop(proc)
    out = proc.stderr.read()
    return out if isinstance(out, str) else out.decode(errors="replace")


def wait_for_http(
    url: str,
    proc: subprocess.Popen | None = None,
    *,
    any_status: bool = False,
    timeout: float = 30,
) -> None:
    """Wait until GET url answers 200 (any HTTP answer with any_status) while
    connection errors count as not yet; fail at once if proc (the server)
    exits first. Failures show the server's piped stderr."""

    def answered() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server of {url} exited {proc.returncode}: {stderr_of(proc)}")
        status = http_get(url, timeout=2)[0]
        return any_status or status == 200

    detail = (lambda: stderr_of(proc)) if proc is not None else None
    wait_until(url, answered, timeout=timeout, ignore=(OSError,), detail=detail)


@contextmanager
def running(
    argv: Sequence[str],
    log: Path | None = None,
    *,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 10,
) -> Iterator[subprocess.Popen]:
    """Start argv with no stdin and its stdout and stderr in log (discarded
    without one); stop it on exit (see stop)."""
    with log.open("wb") if log else nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        stop(proc, stop_signal, stop_timeout)


@contextmanager
def running_server(
    argv: Sequence[str], url: str, *, ready: bool = True, stop_signal: int = signal.SIGTERM
) -> Iterator[subprocess.Popen[str]]:
    """Start argv, an exporter that will listen at url, with its stderr piped
    (text); yield it once url/healthz answers 200 (any answer with
    ready=False: the first collection may not be done); stop it on exit."""
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_http(url + "/healthz", proc, any_status=not ready)
        yield proc
    finally:
        stop(proc, stop_signal)


@contextmanager
def running_exporter(*args: str, ready: bool = True) -> Iterator[str]:
    """Start `pss-exporter serve` on a free loopback port; yield its base URL.

    With ready=True, wait until /healthz answers 200 (first collection done).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [*EXPORTER, "serve", f"--web.listen-address=127.0.0.1:{port}", *args]
    with running_server(argv, url, ready=ready):
        yield url


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (the default logs to stderr)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port answering with handler;
    yields its base URL (http://127.0.0.1:PORT) and shuts it down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def serving_exporter(loop: object, web: object | None = None, **knobs: float) -> Iterator[int]:
    """The exporter's own web server (make_server) for loop, in this process,
    on a free loopback port; yields the port. In-process so that a test can
    hold the collection, break the loop or shorten a deadline."""
    from exporter.web import make_server
    from exporter.webconfig import WebConfigWatcher

    server = make_server("127.0.0.1:0", loop, web or WebConfigWatcher(None), **knobs)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def require_binary(name: str) -> str:
    """Path of a system binary the test needs; fail loudly if missing (CI
    installs it via tests/run.sh), skip only outside CI."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path:
        return path
    unavailable(f"{name} is not installed (tests/run.sh installs it)")


def unavailable(reason: str) -> NoReturn:
    """A system feature the test needs is missing: fail in CI, whose machine
    has it (root, Debian's packages, memory cgroups), so that a test can
    never pass there by not running; skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# ------------------------------------------------------------- memory cgroup

MEMORY_LIMIT = 256 << 20  # limited_cgroup's limit


def _memory_cgroup_root() -> Path:
    """Where this machine lets us create a memory cgroup (v1 or v2)."""
    for root, marker in (
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
        (Path("/sys/fs/cgroup"), "memory.max"),
    ):
        probe = root / f"pss-probe-{uuid.uuid4().hex[:6]}"
        try:
            probe.mkdir()
        except OSError:
            continue
        ok = (probe / marker).exists()
        probe.rmdir()
        if ok:
            return root
    unavailable("this machine cannot create memory cgroups (needs root and a memory controller)")


@pytest.fixture
def limited_cgroup() -> Iterator[Path]:
    """A new memory cgroup (v1 or v2) limited to MEMORY_LIMIT bytes; removed
    once the processes a test put in it have exited."""
    root = _memory_cgroup_root()
    cg = root / f"pss-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    limit_file = (
        "memory.limit_in_bytes" if (cg / "memory.limit_in_bytes").exists() else "memory.max"
    )
    (cg / limit_file).write_text(str(MEMORY_LIMIT))
    yield cg
    for _ in range(50):
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.1)  # processes still exiting
