"""pytest plugin for the fast lane (`tests/run.sh --fast` loads it with -p):
a test that listens on a socket, starts a program other than Python, changes
privileges or makes a cgroup fails at that point, naming the marker it lacks.
Otherwise an unmarked live test would slip into the lane and fail there on a
machine without php-fpm or root (tests/README.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

MESSAGE = "this test {} but is not marked live (@pytest.mark.live; see tests/README.md)"


def refuse(what: str) -> None:
    pytest.fail(MESSAGE.format(what))


def _listen(self: socket.socket, *args: Any) -> None:
    refuse(f"listens on {self.getsockname()!r}")


class _Popen(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        program = args if isinstance(args, (str, bytes)) else next(iter(args))
        if os.fsdecode(program) != sys.executable:
            refuse(f"starts {os.fsdecode(program)!r}")
        super().__init__(args, *rest, **kwargs)


def _refusing(name: str) -> Callable[..., None]:
    def call(*args: Any, **kwargs: Any) -> None:
        refuse(f"calls os.{name}")

    return call


def _mkdir(original: Callable[..., None]) -> Callable[..., None]:
    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.fsdecode(path).startswith("/sys/fs/cgroup"):
            refuse(f"makes the cgroup {os.fsdecode(path)!r}")
        original(path, *args, **kwargs)

    return mkdir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Around setup, call and teardown, so fixtures of any scope are covered."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "listen", _listen)
        patch.setattr(subprocess, "Popen", _Popen)
        for name in ("setuid", "setgid", "setresuid", "setresgid", "setgroups", "chroot"):
            patch.setattr(os, name, _refusing(name))
        patch.setattr(os, "mkdir", _mkdir(os.mkdir))
        yield
