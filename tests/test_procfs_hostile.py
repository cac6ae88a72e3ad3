"""A crafted procfs (`--path.procfs`, the operator's) cannot hang, exhaust or
break a collection, and no number can break an exposition.

Each test copies tests/fixtures/procfs/crafted (960 `app`, 961 `victim`) to a
temp dir and replaces one of the victim's files with what git cannot store
(a FIFO, a symlink to /dev/zero, a sparse 1 GiB file) or with hostile bytes,
then runs `pss-exporter once` on it: the victim is counted under
read_errors_total{reason="parse"} and `app` is intact. The CLI runs with a
time limit and an address-space limit, so that a regression fails the test
instead of hanging it or exhausting the machine's memory.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import resource
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from test_fixture_trees import BY_COMM, TREES, Group, check_exporter, check_groups, one

from exporter.collector import Collector
from exporter.config import build_config
from exporter.discovery import PARSE, SMALL_FILE, SMAPS_LIMIT, error_reason, list_pids, read_bytes
from exporter.metrics import OPENMETRICS, TEXT, render
from exporter.procfs import parse_smaps
from exporter.snapshot import Snapshot

from conftest import EXPORTER, ROOT, parse_samples

CRAFTED = TREES / "crafted"
APP = {"app": Group(1, 3000, 2500, 4000, (2500, 500, 0), one(3000), one(2500))}
VICTIM = {"victim": Group(1, 7000, 6000, 8000, (6000, 1000, 0), one(7000), one(6000))}
# A fixture tree takes well under a second; HEAD hung forever on a FIFO.
TIMEOUT = 20
ADDRESS_SPACE = 2 << 30  # HEAD read /dev/zero until memory ran out


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def once(tmp_path: Path, tree: Path, config: str = BY_COMM) -> dict:
    """`once` on tree, bounded in time and memory; the parsed samples."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    result = subprocess.run(
        [*EXPORTER, "once", "--path.procfs", str(tree), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        preexec_fn=limit_address_space,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return parse_samples(result.stdout)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    copy = tmp_path / "proc"
    shutil.copytree(CRAFTED, copy)
    return copy


# ------------------------------------------------- files that are not files


@pytest.mark.parametrize("name", ["stat", "smaps_rollup", "cmdline"])
def test_fifo_is_a_parse_error_not_a_hang(tmp_path: Path, tree: Path, name: str) -> None:
    # Nobody ever writes into the FIFO: a blocking open() would wait forever.
    (tree / "961" / name).unlink()
    os.mkfifo(tree / "961" / name)
    samples = once(tmp_path, tree)
    check_groups(samples, APP)
    check_exporter(samples, scanned=2, parse=1)


def test_fifo_statm_does_not_hang(tmp_path: Path, tree: Path) -> None:
    # statm only detects change: unreadable, the process is read in full.
    (tree / "961" / "statm").unlink()
    os.mkfifo(tree / "961" / "statm")
    samples = once(tmp_path, tree)
    check_groups(samples, {**APP, **VICTIM})
    check_exporter(samples, scanned=2)


@pytest.mark.parametrize("name", ["stat", "smaps_rollup", "cmdline"])
def test_symlink_to_dev_zero_is_a_parse_error(tmp_path: Path, tree: Path, name: str) -> None:
    (tree / "961" / name).unlink()
    (tree / "961" / name).symlink_to("/dev/zero")
    samples = once(tmp_path, tree)
    check_groups(samples, APP)
    check_exporter(samples, scanned=2, parse=1)


def test_oversized_rollup_is_a_parse_error(tmp_path: Path, tree: Path) -> None:
    # A regular file of 1 GiB (sparse: instant, no disk): read up to its bound only.
    with (tree / "961" / "smaps_rollup").open("r+b") as f:
        f.truncate(1 << 30)
    samples = once(tmp_path, tree)
    check_groups(samples, APP)
    check_exporter(samples, scanned=2, parse=1)


def read_in_thread(path: Path, **kw: object) -> bytes | OSError:
    """read_bytes(path), or the OSError it raised, within TIMEOUT seconds."""
    result: list[bytes | OSError] = []

    def run() -> None:
        try:
            result.append(read_bytes(str(path), **kw))  # type: ignore[arg-type]
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert result, f"read_bytes({path}) still blocked after {TIMEOUT}s"
    return result[0]


def test_fifo_with_a_silent_writer_is_a_parse_error(tmp_path: Path) -> None:
    # The writer keeps it open and writes nothing: a blocking read() would wait forever.
    fifo = tmp_path / "stat"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # opening read-write never blocks
    try:
        error = read_in_thread(fifo)
    finally:
        os.close(writer)
    assert isinstance(error, OSError) and error.errno == errno.EAGAIN
    assert error_reason(error) == PARSE


@pytest.mark.parametrize("to_eof", [False, True])
def test_read_is_bounded(tmp_path: Path, to_eof: bool) -> None:
    sparse = tmp_path / "smaps"
    with sparse.open("wb") as f:
        f.truncate(SMALL_FILE + 1)
    assert read_in_thread(sparse, limit=SMALL_FILE + 1, to_eof=to_eof) == bytes(SMALL_FILE + 1)
    error = read_in_thread(sparse, limit=SMALL_FILE, to_eof=to_eof)
    assert isinstance(error, OSError) and error.errno == errno.EFBIG
    assert error_reason(error) == PARSE
    error = read_in_thread(Path("/dev/zero"), limit=SMAPS_LIMIT, to_eof=to_eof)
    assert isinstance(error, OSError) and error.errno == errno.EINVAL


def test_multi_record_file_is_read_to_its_end() -> None:
    # smaps comes a page or so per read(): the first short read is not the end.
    before = len(Path("/proc/self/maps").read_text().splitlines())
    data = read_bytes("/proc/self/smaps", SMAPS_LIMIT, to_eof=True)
    after = len(Path("/proc/self/maps").read_text().splitlines())
    assert len(data) > 3 * 4096
    assert min(before, after) <= data.count(b"\nVmFlags:") <= max(before, after)
    assert parse_smaps(data).rss > 0


def test_list_pids_takes_ascii_pids_only(tmp_path: Path) -> None:
    for name in ("1", "42", "4194304", "²", "٤٢", "042", "4194305", "9" * 30, "self", "1a"):
        (tmp_path / name).mkdir()
    assert list_pids(str(tmp_path)) == [1, 42, 4194304]


# ------------------------------------------------------- hostile numbers


@pytest.mark.parametrize(
    "line",
    [
        b"Pss:                -7000 kB",  # memory is never negative
        b"Pss:                " + b"9" * 400 + b" kB",  # HEAD: OverflowError at render
        b"Pss:                9007199254740993 kB",  # below 2**63 in kB, not in bytes
    ],
)
def test_hostile_rollup_number_is_a_parse_error(tmp_path: Path, tree: Path, line: bytes) -> None:
    rollup = tree / "961" / "smaps_rollup"
    data = rollup.read_bytes()
    rollup.write_bytes(data.replace(b"Pss:                7000 kB", line))
    samples = once(tmp_path, tree)
    check_groups(samples, APP)
    check_exporter(samples, scanned=2, parse=1)


@pytest.mark.parametrize("field", [b"9" * 400, b"-1", b"+5"])
def test_hostile_stat_number_is_a_parse_error(tmp_path: Path, tree: Path, field: bytes) -> None:
    stat = tree / "961" / "stat"
    fields = stat.read_bytes().split(b" ")
    assert fields[21] == b"1200"  # starttime
    fields[21] = field
    stat.write_bytes(b" ".join(fields))
    samples = once(tmp_path, tree)
    check_groups(samples, APP)
    check_exporter(samples, scanned=2, parse=1)


def test_start_time_past_year_9999_is_a_parse_error(tmp_path: Path, tree: Path) -> None:
    # 10**14 ticks (10**12 s at 100 Hz) is a number in range but not a date:
    # fromtimestamp() raised ValueError (year 33712) through the rule's {{.StartTime}}.
    (tree / "stat").write_bytes(b"cpu  1 2 3 4\nbtime 1700000000\nprocesses 9\n")
    stat = tree / "961" / "stat"
    stat.write_bytes(stat.read_bytes().replace(b" 0 1200 ", b" 0 100000000000000 "))
    config = 'process_names:\n  - name: "{{.Comm}} {{.StartTime}}"\n    cmdline: [".+"]\n'
    samples = once(tmp_path, tree, config)
    started = datetime.datetime.fromtimestamp(
        1700000000 + 1000 / os.sysconf("SC_CLK_TCK"), datetime.timezone.utc
    )
    check_groups(samples, {f"app {started:%Y-%m-%d %H:%M:%S} +0000 UTC": APP["app"]})
    check_exporter(samples, scanned=2, parse=1)


@pytest.mark.parametrize("name", ["²", "٩٦١", "0960", "9" * 30, "4194305"])
def test_directories_that_are_no_pid_are_not_processes(
    tmp_path: Path, tree: Path, name: str
) -> None:
    # '²'.isdigit() and '٩٦١'.isdigit() are True, int('٩٦١') is 961 and
    # int('0960') is 960; no PID exceeds 2**22. Each would crash or read
    # another process's files a second time.
    shutil.copytree(tree / "961", tree / name)
    samples = once(tmp_path, tree)
    check_groups(samples, {**APP, **VICTIM})
    check_exporter(samples, scanned=2)


# ---------------------------------------------------------------- render


def collect(tree: Path) -> Snapshot:
    return Collector(build_config(yaml.safe_load(BY_COMM), "test"), str(tree)).collect()


def test_a_value_that_cannot_be_rendered_is_left_out() -> None:
    """Defence in depth: whatever number reaches a family, one bad value loses
    only its own sample (counted), never the exposition."""
    snap = collect(CRAFTED)
    app = next(g for g in snap.groups if g.name == "app")
    huge = dataclasses.replace(app, pss=10**400, rss=2**1024)  # float() overflows
    snap = dataclasses.replace(snap, groups=(*(g for g in snap.groups if g is not app), huge))
    exp = render(snap)
    for fmt in (TEXT, OPENMETRICS):
        body = exp.body(fmt).decode()
        assert 'pss_group_pss_bytes{group="app"}' not in body
        assert 'pss_group_rss_bytes{group="app"}' not in body
        assert 'pss_group_uss_bytes{group="app"} 2.56e+06' in body  # its other values stay
    samples = parse_samples(exp.text.decode())
    assert samples[("pss_exporter_unrenderable_samples", frozenset())] == 2
    assert samples[("pss_host_memory_total_bytes", frozenset())] == 16303412 * 1024


def test_nothing_is_left_out_of_a_normal_exposition() -> None:
    snap = collect(CRAFTED)
    samples = parse_samples(render(snap).text.decode())
    assert samples[("pss_exporter_unrenderable_samples", frozenset())] == 0
