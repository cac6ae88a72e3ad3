"""The command line: bad input is one line on stderr and exit status 2; good
input validates, prints a version, collects once, and serves until signalled."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import exporter

from conftest import (
    EXPORTER,
    ROOT,
    free_port,
    group_value,
    parse_samples,
    require_binary,
    run_cli,
    running_server,
)

WAIT = 30.0  # upper bound of every wait; never reached when things work


def assert_usage_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit status 2 and exactly one stderr line, without a traceback,
    containing every one of parts (file, key, reason)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def loopback_address() -> str:
    """A listen address for serve runs that must fail before binding."""
    return f"--web.listen-address=127.0.0.1:{free_port()}"


def listen_flags(command: str) -> list[str]:
    """loopback_address() for the commands that take it."""
    return [loopback_address()] if command in ("serve", "check-config") else []


def billion_laughs() -> str:
    """327 bytes of YAML whose value, expanded, is 9 ** 9 strings."""
    names = "abcdefghi"
    values = ["&a [" + ",".join(["lol"] * 9) + "]"]
    values += [
        f"&{name} [" + ",".join([f"*{prev}"] * 9) + "]" for prev, name in zip(names, names[1:])
    ]
    return "max_groups: [" + ",\n ".join(values) + "]\n"


# ------------------------------------------------------------- bad configs

# id -> (YAML text, key named in the message, reason named in the message)
BAD_CONFIGS = {
    "malformed-yaml": (
        "collection:\n  interval: [15s\nmax_groups: 5\n",
        "line 3, column 11",
        "YAML syntax error",
    ),
    "top-level-not-a-mapping": ("- a\n- b\n", "(top level)", "must be a mapping"),
    "unknown-collection-key": (
        "collection:\n  intervall: 1s\n",
        "collection.intervall",
        "unknown key",
    ),
    "unknown-php_fpm-key": ("php_fpm:\n  enable: true\n", "php_fpm.enable", "unknown key"),
    "rule-of-only-an-unknown-key": (
        "process_names:\n  - cmdlin: ['.+']\n",
        "process_names[0]",
        "needs at least one of comm, exe, cmdline (unknown keys are ignored: cmdlin)",
    ),
    "bad-regex": (
        "process_names:\n  - name: x\n    cmdline: ['ok', '(unclosed']\n",
        "process_names[0].cmdline[1]",
        "invalid regex '(unclosed'",
    ),
    "bad-regex-second-rule": (
        "process_names:\n  - comm: [a]\n  - cmdline: ['[z-a]']\n",
        "process_names[1].cmdline[0]",
        "invalid regex '[z-a]'",
    ),
    "unknown-template-field": (
        "process_names:\n  - name: '{{.Nope}}'\n    comm: [x]\n",
        "process_names[0].name",
        "unknown template field .Nope (known: .Comm,",
    ),
    "bad-duration": (
        "collection:\n  interval: 15 sec\n",
        "collection.interval",
        "invalid duration '15 sec'",
    ),
    "max-groups-not-int": ("max_groups: many\n", "max_groups", "must be an integer"),
    "rule-without-matcher": (
        "process_names:\n  - name: foo\n",
        "process_names[0]",
        "needs at least one of comm, exe, cmdline",
    ),
    # Hung check-config at 1.2 GB: the message printed the expanded value.
    "billion-laughs": (billion_laughs(), "line 6", "more than 100000 values once aliases"),
    # A RecursionError traceback of 3,000 lines.
    "nested-too-deep": ("max_groups: " + "[" * 600 + "]" * 600 + "\n", "line 1", "deeper than 64"),
    # An OverflowError traceback: float("9" * 400) is inf.
    "size-of-400-digits": (
        "collection:\n  large_rss: " + "9" * 400 + "B\n",
        "collection.large_rss",
        "is over 1PiB",
    ),
    "interval-below-minimum": (
        "collection:\n  interval: 1ms\n",
        "collection.interval",
        "must be a duration from 100ms to 7d",
    ),
    # It used to be cut to half the interval without a word.
    "status-timeout-past-half-interval": (
        "php_fpm:\n  status_timeout: 10s\n",
        "php_fpm.status_timeout",
        "must be at most half of collection.interval (15s)",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    text, key, reason = BAD_CONFIGS[case]
    config = write(tmp_path / "bad.yaml", text)
    result = run_cli("check-config", f"--config={config}")
    assert_usage_error(result, f"{config}: {key}: ", reason)


@pytest.mark.parametrize("command", ["once", "serve"])
def test_bad_config_stops_every_command(tmp_path: Path, command: str) -> None:
    config = write(tmp_path / "bad.yaml", "collection:\n  interval: 15 sec\n")
    result = run_cli(command, f"--config={config}", *listen_flags(command), timeout=WAIT)
    assert_usage_error(result, f"{config}: collection.interval: ", "invalid duration")


def test_interval_too_long_for_the_loop_is_rejected(tmp_path: Path) -> None:
    # 200000d (~548 years) exceeds threading.TIMEOUT_MAX: accepted, `serve`'s
    # collection thread would die with an OverflowError traceback.
    config = write(tmp_path / "long.yaml", "collection:\n  interval: 200000d\n")
    result = run_cli("check-config", f"--config={config}")
    assert_usage_error(result, f"{config}: collection.interval: ")


def test_nonexistent_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert_usage_error(
        run_cli("check-config", f"--config={missing}"),
        f"{missing}: ",
        "cannot read: No such file or directory",
    )


def test_config_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    # check-config blocked forever in open() until something wrote to the FIFO.
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    result = run_cli("check-config", f"--config={fifo}", timeout=WAIT)
    assert_usage_error(result, f"{fifo}: ", "cannot read: not a regular file")


def test_config_past_one_mib_is_refused(tmp_path: Path) -> None:
    # A 100 MB config took 169 s to load; reads now stop one byte past 1 MiB.
    config = tmp_path / "big.yaml"
    with config.open("w") as fh:
        fh.write("max_groups: 5\n")
        fh.truncate(100 << 20)  # NULs to 100 MB: nothing to parse, if it got that far
    result = run_cli("check-config", f"--config={config}", timeout=WAIT)
    assert_usage_error(result, f"{config}: ", "cannot read: larger than 1048576 bytes")


def run_cli_without_dac_override(*args: str) -> subprocess.CompletedProcess[str]:
    """run_cli, but unable to bypass file modes: as root, the capabilities
    that let root read any file are dropped (setpriv); other users have none."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = [require_binary("setpriv"), "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run(
        [*prefix, *EXPORTER, *args], capture_output=True, text=True, timeout=WAIT, cwd=ROOT
    )


@pytest.mark.live
def test_unreadable_config_file(tmp_path: Path) -> None:
    config = write(tmp_path / "secret.yaml", "max_groups: 5\n")
    config.chmod(0)
    result = run_cli_without_dac_override("check-config", f"--config={config}")
    assert_usage_error(result, f"{config}: ", "cannot read: Permission denied")


# --------------------------------------------------------------- bad flags


@pytest.mark.live
def test_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = run_cli("serve", f"--web.listen-address={address}", timeout=WAIT)
    assert_usage_error(result, "--web.listen-address", address, "Address already in use")


@pytest.mark.parametrize("address", ["127.0.0.1:http", "127.0.0.1:99999", "localhost"])
def test_invalid_listen_address(address: str) -> None:
    result = run_cli("serve", f"--web.listen-address={address}", timeout=WAIT)
    assert_usage_error(result, "--web.listen-address", repr(address), "invalid address")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["once", "--bogus"], "unrecognized arguments: --bogus"),
        (["--log.level=loud", "check-config"], "invalid choice: 'loud'"),
    ],
    ids=["subcommand", "flag", "flag-value"],
)
def test_bad_command_line(args: list[str], reason: str) -> None:
    assert_usage_error(run_cli(*args, timeout=WAIT), reason)


@pytest.mark.parametrize("command", ["once", "serve", "check-config"])
def test_procfs_that_is_not_a_procfs(tmp_path: Path, command: str) -> None:
    (tmp_path / "1").mkdir()  # a PID-like directory, but no meminfo
    result = run_cli(command, f"--path.procfs={tmp_path}", *listen_flags(command), timeout=WAIT)
    assert_usage_error(result, "--path.procfs", str(tmp_path), "not a procfs")


@pytest.mark.parametrize("kind", ["missing", "file"])
@pytest.mark.parametrize("command", ["once", "serve", "check-config"])
def test_sysfs_that_is_not_a_directory(tmp_path: Path, command: str, kind: str) -> None:
    # Accepted before: cgroup metrics were silently absent.
    sysfs = tmp_path / "sys"
    if kind == "file":
        sysfs.write_text("")
    result = run_cli(command, f"--path.sysfs={sysfs}", *listen_flags(command), timeout=WAIT)
    assert_usage_error(result, "--path.sysfs", str(sysfs), "is not a directory")


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "[::1]"])
def test_check_config_checks_the_listen_address_serve_would_use(address: str) -> None:
    # check-config said OK for an address serve then refused.
    result = run_cli("check-config", f"--web.listen-address={address}", timeout=WAIT)
    assert_usage_error(result, "--web.listen-address", repr(address), "invalid address")
    good = run_cli("check-config", "--web.listen-address=127.0.0.1:0", timeout=WAIT)
    assert (good.returncode, good.stdout) == (0, "built-in config: OK (1 process_names rules)\n")


# (command line, the flag its command does not take); serve runs get a
# loopback address so that a wrongly accepted flag cannot serve on every interface.
FOREIGN_FLAGS = {
    "once --json": (["once", "--json"], "--json"),
    "top --json": (["top", "--once", "--json"], "--json"),
    "explain --once": (["explain", "--once"], "--once"),
    "check-config --once": (["check-config", "--once"], "--once"),
    "serve --once": (["serve", "--once"], "--once"),
    "default serve --json": (["--json"], "--json"),
    "once --web.listen-address": (["once", "--web.listen-address=:9778"], "--web.listen-address"),
    "top --web.config.file": (["top", "--once", "--web.config.file=web.yml"], "--web.config.file"),
}


@pytest.mark.parametrize("case", FOREIGN_FLAGS)
def test_flag_the_command_does_not_take_is_an_error(case: str) -> None:
    # Each of these was silently ignored.
    args, flag = FOREIGN_FLAGS[case]
    command = "serve" if args[0].startswith("-") else args[0]
    result = run_cli(*args, *listen_flags(command), timeout=WAIT)
    assert_usage_error(result, f"error: {command} does not take {flag}")


# ------------------------------------------------------------- good input

OWN_CONFIG = """\
collection:
  interval: 500ms
max_groups: 50
php_fpm:
  enabled: false
process_names:
  - name: "{{.Comm}}"
    cmdline: ['.+']
"""

# process-exporter's format as its README writes it: comm, exe, cmdline with a named
# capture used in the name template.
PROCESS_EXPORTER_CONFIG = r"""
process_names:
  - comm:
    - chromium-browse
    - bash
    - prometheus
    - gvim
  - exe:
    - /usr/local/bin/prometheus
    cmdline:
    - --config.file\s+(?P<Cfgfile>\S+)
    name: "{{.ExeFull}}:{{.Matches.Cfgfile}}"
  - name: "{{.Comm}}:{{.Username}}"
    exe:
    - postgres
  - name: "{{.ExeBase}}"
    cmdline:
    - '.+'
"""


@pytest.mark.parametrize(
    "text", [OWN_CONFIG, PROCESS_EXPORTER_CONFIG], ids=["own", "process-exporter"]
)
def test_check_config_accepts_valid_config(tmp_path: Path, text: str) -> None:
    config = write(tmp_path / "config.yaml", text)
    result = run_cli("check-config", f"--config={config}")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{config}: OK")


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"pss-exporter {exporter.__version__}\n")


def mem_total_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_once_with_builtin_config_reports_this_process() -> None:
    result = run_cli("once")
    assert result.returncode == 0, result.stderr
    samples = parse_samples(result.stdout)
    own_comm = Path("/proc/self/comm").read_text().strip()
    exporter_comm = Path(sys.executable).name[:15]  # the `once` process itself
    expected = 2 if own_comm == exporter_comm else 1
    assert group_value(samples, "pss_group_processes", own_comm) >= expected
    assert group_value(samples, "pss_group_pss_bytes", own_comm) > 0
    assert samples[("pss_host_memory_total_bytes", frozenset())] == mem_total_bytes()


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A `serve` process on a free loopback port, healthy; killed if left running."""
    config = write(tmp_path / "config.yaml", "collection:\n  interval: 200ms\n")
    port = free_port()
    argv = [*EXPORTER, "serve", f"--web.listen-address=127.0.0.1:{port}", f"--config={config}"]
    with running_server(argv, f"http://127.0.0.1:{port}", stop_signal=signal.SIGKILL) as proc:
        yield proc, port


@pytest.mark.live
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_serve_stops_cleanly_on_signal(
    serving: tuple[subprocess.Popen[str], int], signum: signal.Signals
) -> None:
    proc, port = serving
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
