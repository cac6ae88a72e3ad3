"""Least privilege, measured: the exporter run as an unprivileged user
(uid/gid 65534, no groups, no capabilities), then as the same user with only
CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH as ambient capabilities, the way the
systemd unit runs it.

How the unprivileged process gets a Python: the test venv's interpreter lives
under /root (pyenv), a 0700 directory uid 65534 cannot enter, and pytest's
tmp_path is 0700 as well. So the test copies the exporter package and the
top-level modules of its dependencies (read from pyproject.toml) into a
world-readable temp dir and runs Debian's /usr/bin/python3 (3.11 here, the
venv's ABI; bcrypt and psutil are abi3 builds anyway, and PyYAML falls back
to pure Python without its C module) with PYTHONPATH set to that dir. If
/usr/bin/python3 is missing or cannot import the copy as uid 65534, the
test's own interpreter is tried (it works when its installation is readable
by everyone, e.g. Python under /usr/local in a CI image); if neither works the
test fails saying why. Capabilities are set with setpriv(1) (util-linux).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from web_certs import WAIT, Exporter, serving, wait_until

from conftest import ROOT, free_port, group_value, http_get, parse_samples, require_binary

pytestmark = pytest.mark.live

NOBODY = 65534
AS_NOBODY = (f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
NO_CAPS = ("--inh-caps=-all", "--bounding-set=-all")
PTRACE_CAPS = (
    "--inh-caps=-all,+sys_ptrace,+dac_read_search",
    "--ambient-caps=+sys_ptrace,+dac_read_search",
    "--bounding-set=-all,+sys_ptrace,+dac_read_search",
)
WARNING = "running without CAP_SYS_PTRACE"
ROOT_GROUP, NOBODY_GROUP = "root-sleeper", "nobody-sleeper"


def dependency_modules() -> list[str]:
    """Top-level import names of the project's runtime dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {normalize(re.match(r"[A-Za-z0-9._-]+", dep).group()) for dep in deps}
    # A name must import: google-re2's top_level.txt also lists `_re2`, which
    # lives inside the re2 package.
    return sorted(
        module
        for module, dists in packages_distributions().items()
        if any(normalize(d) in wanted for d in dists) and importlib.util.find_spec(module)
    )


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def copy_module(name: str, dest: Path) -> None:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    ignore = shutil.ignore_patterns("__pycache__")
    if spec.submodule_search_locations:
        src = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(src, dest / src.name, ignore=ignore)
    else:
        shutil.copy2(spec.origin, dest)


def as_nobody(*command: str, caps: tuple[str, ...] = NO_CAPS) -> list[str]:
    return [require_binary("setpriv"), *AS_NOBODY, *caps, *command]


def nobody_env(site: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(site),
        "PYTHONDONTWRITEBYTECODE": "1",  # the copy is not writable for uid 65534
    }


def find_interpreter(site: Path) -> str:
    """The first Python that can import the copied exporter as uid 65534."""
    errors = []
    for python in dict.fromkeys(("/usr/bin/python3", sys.executable)):
        probe = as_nobody(python, "-s", "-c", "import exporter.cli")
        try:
            result = subprocess.run(
                probe, env=nobody_env(site), cwd=site, capture_output=True, text=True, timeout=WAIT
            )
        except OSError as exc:
            errors.append(f"{python}: {exc}")
            continue
        if result.returncode == 0:
            return python
        errors.append(f"{python}: {result.stderr.strip().splitlines()[-1:]}")
    pytest.fail("no Python can run the exporter as uid 65534: " + "; ".join(errors))


@dataclass(frozen=True)
class Unprivileged:
    python: str
    site: Path  # world-readable: the exporter, its dependencies, the config
    config: Path


@pytest.fixture(scope="module")
def unprivileged(sleepers: tuple[str, str]) -> Iterator[Unprivileged]:
    site = Path(tempfile.mkdtemp(prefix="pss-exporter-unprivileged-"))
    try:
        site.chmod(0o755)
        shutil.copytree(
            ROOT / "exporter", site / "exporter", ignore=shutil.ignore_patterns("__pycache__")
        )
        for module in dependency_modules():
            copy_module(module, site)
        config = site / "config.yaml"
        root_marker, nobody_marker = sleepers
        config.write_text(
            "collection:\n  interval: 200ms\n"
            "php_fpm:\n  enabled: false\n"
            "process_names:\n"
            f"  - name: {ROOT_GROUP}\n    cmdline: ['^sleep {root_marker}$']\n"
            f"  - name: {NOBODY_GROUP}\n    cmdline: ['^sleep {nobody_marker}$']\n"
        )
        for path in site.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield Unprivileged(find_interpreter(site), site, config)
    finally:
        shutil.rmtree(site)


@pytest.fixture(scope="module")
def sleepers() -> Iterator[tuple[str, str]]:
    """A `sleep` of root's and one of uid 65534's, each with a unique
    argument (its cmdline marker); yields the two arguments."""
    stamp = f"{os.getpid()}{time.time_ns() % 10**6:06d}"
    root_arg, nobody_arg = f"3600.1{stamp}", f"3600.2{stamp}"
    procs = [
        subprocess.Popen(["sleep", root_arg]),
        subprocess.Popen(as_nobody("sleep", nobody_arg)),
    ]
    try:
        yield root_arg.replace(".", r"\."), nobody_arg.replace(".", r"\.")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def serve_as_nobody(env: Unprivileged, caps: tuple[str, ...], stderr: Path):
    port = free_port()
    argv = as_nobody(
        env.python, "-s", "-m", "exporter", "serve",
        f"--web.listen-address=127.0.0.1:{port}", f"--config={env.config}",
        caps=caps,
    )  # fmt: skip

    def ready(exp: Exporter) -> bool:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200

    return serving(argv, port, ready, stderr, env=nobody_env(env.site), cwd=env.site)


def scrape(exp: Exporter) -> dict:
    status, _, body = http_get(f"http://127.0.0.1:{exp.port}/metrics", timeout=5)
    assert status == 200
    return parse_samples(body.decode())


def scrape_with_both_groups(exp: Exporter) -> dict:
    """The first scrape whose snapshot has both sleepers (the first one has)."""

    def both() -> dict | None:
        samples = scrape(exp)
        groups = {dict(labels).get("group") for name, labels in samples}
        return samples if {ROOT_GROUP, NOBODY_GROUP} <= groups else None

    return wait_until("both sleeper groups on /metrics", both)


def privilege(samples: dict, capability: str) -> float:
    return samples[("pss_exporter_privileges", frozenset({("capability", capability)}))]


def read_errors(samples: dict, reason: str) -> float:
    return samples[("pss_exporter_read_errors_total", frozenset({("reason", reason)}))]


def exporter_uid(exp: Exporter) -> int:
    status = Path(f"/proc/{exp.proc.pid}/status").read_text()
    return int(status.split("Uid:", 1)[1].split()[0])


def test_without_capabilities_other_users_processes_are_unreadable(
    unprivileged: Unprivileged, tmp_path: Path
) -> None:
    with serve_as_nobody(unprivileged, NO_CAPS, tmp_path / "stderr.log") as exp:
        assert exporter_uid(exp) == NOBODY
        samples = scrape_with_both_groups(exp)
        for capability in ("cap_sys_ptrace", "cap_dac_read_search", "cap_syslog"):
            assert privilege(samples, capability) == 0, capability
        assert group_value(samples, "pss_group_processes", ROOT_GROUP) == 1
        assert group_value(samples, "pss_group_unreadable_processes", ROOT_GROUP) == 1
        assert read_errors(samples, "permission") > 0
        # Its own user's process stays fully readable.
        assert group_value(samples, "pss_group_unreadable_processes", NOBODY_GROUP) == 0
        assert group_value(samples, "pss_group_pss_bytes", NOBODY_GROUP) > 0
        # It keeps serving: later collections, still healthy.
        first = read_errors(samples, "permission")
        wait_until("another collection", lambda: read_errors(scrape(exp), "permission") > first)
        assert http_get(f"http://127.0.0.1:{exp.port}/healthz", timeout=5)[0] == 200
        assert exp.log().count(WARNING) == 1, exp.log()


def test_with_ptrace_and_dac_read_search_every_process_is_read(
    unprivileged: Unprivileged, tmp_path: Path
) -> None:
    with serve_as_nobody(unprivileged, PTRACE_CAPS, tmp_path / "stderr.log") as exp:
        assert exporter_uid(exp) == NOBODY
        samples = scrape_with_both_groups(exp)
        assert privilege(samples, "cap_sys_ptrace") == 1
        assert privilege(samples, "cap_dac_read_search") == 1
        assert privilege(samples, "cap_syslog") == 0
        for group in (ROOT_GROUP, NOBODY_GROUP):
            assert group_value(samples, "pss_group_processes", group) == 1, group
            assert group_value(samples, "pss_group_unreadable_processes", group) == 0, group
            assert group_value(samples, "pss_group_pss_bytes", group) > 0, group
            assert group_value(samples, "pss_group_rss_bytes", group) > 0, group
        assert read_errors(samples, "permission") == 0
        assert WARNING not in exp.log()


def test_a_bad_listen_address_is_one_line_without_privileges(unprivileged: Unprivileged) -> None:
    """Without capabilities, serve warned about them before its usage error:
    two more lines than "one line, exit 2"."""
    env = unprivileged
    argv = as_nobody(
        env.python, "-s", "-m", "exporter", "serve", "--web.listen-address=127.0.0.1:http",
        f"--config={env.config}",
    )  # fmt: skip
    result = subprocess.run(
        argv, env=nobody_env(env.site), cwd=env.site, capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("pss-exporter: error: --web.listen-address: invalid address")
