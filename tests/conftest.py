"""Shared helpers: run the real CLI, start a real exporter, parse expositions."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPORTER = [sys.executable, "-m", "exporter"]


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


@contextmanager
def running_exporter(*args: str, ready: bool = True) -> Iterator[str]:
    """Start `pss-exporter serve` on a free loopback port; yield its base URL.

    With ready=True, wait until /healthz answers 200 (first collection done).
    """
    port = free_port()
    proc = subprocess.Popen(
        [*EXPORTER, "serve", f"--web.listen-address=127.0.0.1:{port}", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"exporter exited: {proc.stderr.read()}")
            try:
                status, _, _ = http_get(url + "/healthz", timeout=2)
                if status == 200 or not ready:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                proc.terminate()
                err = proc.communicate(timeout=10)[1]
                raise AssertionError(f"exporter did not become ready: {err}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def require_binary(name: str) -> str:
    """Path of a system binary the test needs; fail loudly if missing (CI
    installs it via tests/run.sh), skip only outside CI."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; tests/run.sh installs it")
    pytest.skip(f"{name} is not installed (run tests/run.sh to install it)")
