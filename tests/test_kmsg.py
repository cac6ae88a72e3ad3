"""OOM kills from the kernel log: record and message parsing on OOM reports
from several kernel versions, counting each kill once, ignoring what user space
writes into /dev/kmsg, and the watcher on a FIFO, a file, /dev/kmsg itself and
without permission."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from exporter.kmsg import (
    WINDOW,
    KmsgWatcher,
    OomKill,
    OomKillTracker,
    parse_oom_kill,
    parse_record,
)

from conftest import FIXTURES, ROOT, require_binary, wait_until

KMSG_FIXTURES = FIXTURES / "kmsg"
WAIT = 10.0

# Every kill in each captured report, (pid, comm, seq of the record counted).
EXPECTED = {
    # memcg v1: "Kill process ... or sacrifice child" then "Killed process", twice.
    "kernel-4.9-memcg-v1.txt": [(14211, "php-fpm7.0", 2325), (14208, "php-fpm7.0", 2337)],
    # The oom-kill: summary and the selection line name the php-fpm worker, the
    # kernel sacrificed its child `convert`; the second report kills the worker.
    "kernel-4.19-global-sacrifice-child.txt": [
        (2240, "convert", 5064),
        (2212, "php-fpm7.3", 5079),
    ],
    "kernel-5.10-memcg-v2.txt": [(31337, "php-fpm7.4", 17031)],
    # The second report's victim was already exiting: summary, no kill.
    "kernel-6.1-global.txt": [(5120, "stress-ng", 30159), (6002, "Web Content", 30178)],
    # Captured on this kernel: a memcg OOM of a process named "my (weird) proc".
    "kernel-6.18-memcg-v1-captured.txt": [(3452, "my (weird) proc", 423)],
}

KILLED_6X = (
    "Out of memory: Killed process 1234 (php-fpm8.2) total-vm:501584kB, anon-rss:259248kB, "
    "file-rss:0kB, shmem-rss:0kB, UID:33 pgtables:572kB oom_score_adj:0"
)
SUMMARY_6X = (
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/x,task_memcg=/x/y,task=php-fpm8.2,pid=1234,uid=33"
)


# --------------------------------------------------------------- small helpers


def fixture_lines(name: str) -> list[str]:
    return (KMSG_FIXTURES / name).read_text().splitlines()


def track(records: list[str]) -> list[OomKill]:
    """Every kill a fresh tracker finds in records."""
    tracker = OomKillTracker()
    return [kill for record in records for kill in tracker.feed(record)]


def record(seq: int, message: str, prio: int = 3) -> str:
    """A /dev/kmsg record; prio 3 = kernel facility, level err."""
    return f"{prio},{seq},{seq * 1000},-;{message}"


@contextmanager
def started(watcher: KmsgWatcher) -> Iterator[KmsgWatcher]:
    assert watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


def write_kmsg(messages: list[str]) -> list[tuple[int, int, str]]:
    """Write each message into /dev/kmsg as user space does; return the
    records the kernel made of them, read back with a reader of our own."""
    reader = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.lseek(reader, 0, os.SEEK_END)
        with open("/dev/kmsg", "w") as kmsg:
            for message in messages:
                kmsg.write(message + "\n")
                kmsg.flush()  # one write() per record
        wanted = {m.removeprefix("<6>") for m in messages}
        found: list[tuple[int, int, str]] = []
        deadline = time.monotonic() + WAIT
        while len(found) < len(messages):
            assert time.monotonic() < deadline, f"records not read back: {found}"
            select.select([reader], [], [], 0.1)
            try:
                parsed = parse_record(os.read(reader, 65536).decode())
            except BlockingIOError:
                continue
            if parsed is not None and parsed[2] in wanted:
                found.append(parsed)
        return found
    finally:
        os.close(reader)


@contextmanager
def dmesg_restricted() -> Iterator[None]:
    """kernel.dmesg_restrict=1 (the Debian default) for the duration."""
    knob = Path("/proc/sys/kernel/dmesg_restrict")
    before = knob.read_text().strip()
    if before != "1":
        knob.write_text("1")
    try:
        yield
    finally:
        if before != "1":
            knob.write_text(before)


# --------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "6,17001,4170112876,-;virtio_net virtio1 ens4: renamed from eth1\n"
            " SUBSYSTEM=virtio\n DEVICE=+virtio:virtio1\n",
            (6, 17001, "virtio_net virtio1 ens4: renamed from eth1"),
        ),
        (
            "12,344,1410382186,-;Killed process 4242 (faker) total-vm:1kB\n",
            (12, 344, "Killed process 4242 (faker) total-vm:1kB"),
        ),
        ("4,12,3,-,caller=T42;with a caller field", (4, 12, "with a caller field")),
        ("6,1,2,c;a;b", (6, 1, "a;b")),
        ("6,1,2,-;", (6, 1, "")),
        # /dev/kmsg escapes control bytes, non-ASCII bytes and the backslash.
        ("3,5,6,-;comm a\\x5cb\\x0ac", (3, 5, "comm a\\b\nc")),
        ("6,7,8,-;caf\\xc3\\xa9", (6, 7, "café")),
    ],
)
def test_parse_record(raw: str, expected: tuple[int, int, str]) -> None:
    assert parse_record(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "no header at all",
        " SUBSYSTEM=pci",
        "6,1,2;only three fields",
        "x,1,2,-;prio not a number",
        "6,-1,2,-;negative seq",
        "6,1,2.5,-;fractional timestamp",
        # Numbers past 2**63 - 1 are garbage; 5000 digits made int() raise.
        "1" * 5000 + ",1,2,-;a prio of 5000 digits",
        "6," + "9" * 20 + ",2,-;a seq past 2**63",
    ],
)
def test_parse_record_rejects_malformed(raw: str) -> None:
    assert parse_record(raw) is None


def test_parse_record_of_any_str() -> None:
    # A lone surrogate (the reader's decode() never makes one, but the function
    # takes any str) made encode() raise while undoing the escapes.
    assert parse_record("6,1,2,-;\ud800 a\\x5cb") == (6, 1, "\ufffd\ufffd\ufffd a\\b")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (KILLED_6X, (1234, "php-fpm8.2")),
        (
            "Memory cgroup out of memory: Killed process 31337 (php-fpm7.4) total-vm:501584kB,"
            " anon-rss:259248kB, file-rss:0kB, shmem-rss:0kB, UID:33 pgtables:572kB"
            " oom_score_adj:0",
            (31337, "php-fpm7.4"),
        ),
        (
            "Out of memory (oom_kill_allocating_task): Killed process 77 (php) total-vm:9kB,"
            " anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
            (77, "php"),
        ),
        (
            "Killed process 1235 (php-cgi) total-vm:287608kB, anon-rss:252844kB, file-rss:0kB,"
            " shmem-rss:0kB",
            (1235, "php-cgi"),
        ),
        ("Killed process 99 (my (weird) proc) total-vm:1kB", (99, "my (weird) proc")),
        # comm is whatever a process set, up to 15 bytes: the last marker ends it.
        ("Killed process 5 (x) total-vm:) total-vm:9kB, anon-rss:0kB", (5, "x) total-vm:")),
        # 2.6-era format, no total-vm: the last ')' ends comm.
        ("Killed process 812 (httpd) vsz:262144kB, anon-rss:0kB, file-rss:0kB", (812, "httpd")),
        (SUMMARY_6X, (1234, "php-fpm8.2")),
        (
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
            "global_oom,task_memcg=/user.slice,task=Web Content,pid=6002,uid=1000",
            (6002, "Web Content"),
        ),
    ],
)
def test_parse_oom_kill(message: str, expected: tuple[int, str]) -> None:
    assert parse_oom_kill(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        "Out of memory: Kill process 1234 (php-fpm7.0) score 912 or sacrifice child",
        "Memory cgroup out of memory: Kill process 14211 (php-fpm7.0) score 669 or sacrifice child",
        "[  31337]    33 31337   125396    64812   585728        0             0 php-fpm7.4",
        "[14211]    33 14211   108523    43878     215       3        0             0 php-fpm7.0",
        "oom_reaper: reaped process 31337 (php-fpm7.4), now anon-rss:0kB, file-rss:0kB",
        "php-fpm7.4 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "CPU: 0 PID: 31337 Comm: php-fpm7.4 Not tainted 5.10.0-26-amd64 #1 Debian 5.10.197-1",
        "Out of memory: OOM victim 5131 (stress-ng) is already exiting. Skip killing the task",
        "Task in /php-pool-www killed as a result of limit of /php-pool-www",
        "oom killer 12 (java) has mm pinned by 1 (init)",
        "Killed process abc (x) total-vm:1kB",
        "Killed process 12 without a comm",
        "apache2: Killed process 12 is not at a message start",
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/",  # cut short
        "oom-kill:constraint=CONSTRAINT_NONE,task=x,pid=,uid=0",
        # PIDs past 2**63 - 1 are garbage; 5000 digits made int() raise.
        "Killed process " + "1" * 5000 + " (x) total-vm:1kB",
        "Killed process 99999999999999999999 (x) total-vm:1kB",
        "oom-kill:constraint=CONSTRAINT_NONE,task=x,pid=" + "9" * 400 + ",uid=0",
    ],
)
def test_parse_oom_kill_ignores_other_messages(message: str) -> None:
    assert parse_oom_kill(message) is None


# --------------------------------------------------------------- captured reports


def test_every_fixture_has_expectations() -> None:
    assert sorted(p.name for p in KMSG_FIXTURES.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_report_kills(name: str) -> None:
    """Each kill once, with its victim's PID and comm; nothing from the task
    table, the selection, summary or oom_reaper lines."""
    assert track(fixture_lines(name)) == [OomKill(*kill) for kill in EXPECTED[name]]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_report_written_by_user_space_counts_nothing(name: str) -> None:
    """The same records with facility 1, as a process writing them into
    /dev/kmsg would get them, are no kills."""
    user = []
    for line in fixture_lines(name):
        prio, sep, rest = line.partition(",")
        user.append(f"{int(prio) | 8}{sep}{rest}" if prio.isdigit() else line)
    assert track(user) == []


# --------------------------------------------------------------- counting once


def test_summary_then_kill_record_count_once() -> None:
    kills = track([record(10, SUMMARY_6X, prio=6), record(11, KILLED_6X)])
    assert kills == [OomKill(1234, "php-fpm8.2", 11)]


def test_kill_record_repeated_counts_once() -> None:
    """memory.oom.group kills the victim, then every member again."""
    killed_again = KILLED_6X.replace("Out of memory", "Memory cgroup out of memory")
    other = "Memory cgroup out of memory: Killed process 1240 (php-fpm8.2) total-vm:1kB"
    kills = track([record(10, KILLED_6X), record(11, killed_again), record(12, other)])
    assert kills == [OomKill(1234, "php-fpm8.2", 10), OomKill(1240, "php-fpm8.2", 12)]


def test_same_pid_counts_again_after_the_window() -> None:
    """A PID reused much later is a new kill."""
    filler = [record(seq, "eth0: link up", prio=6) for seq in range(11, 12 + WINDOW)]
    kills = track([record(10, KILLED_6X), *filler, record(12 + WINDOW, KILLED_6X)])
    assert [k.seq for k in kills] == [10, 12 + WINDOW]


def test_summary_counts_when_its_kill_record_was_lost() -> None:
    """Records overwritten before they were read: the sequence numbers jump.
    The kill record arriving after all is not counted twice."""
    kills = track(
        [
            record(10, SUMMARY_6X, prio=6),
            record(15, "eth0: link up", prio=6),
            record(16, KILLED_6X),
        ]
    )
    assert kills == [OomKill(1234, "php-fpm8.2", 10)]


def test_summary_without_kill_record_is_no_kill() -> None:
    """No kill record within the window (the victim was exiting, 4.19 says
    nothing then): the summary is dropped, also when records are lost later."""
    filler = [record(seq, "eth0: link up", prio=6) for seq in range(11, 12 + WINDOW)]
    assert track([record(10, SUMMARY_6X, prio=6), *filler, record(99999, "x", prio=6)]) == []


def test_summary_of_skipped_victim_is_no_kill() -> None:
    skipped = "Out of memory: OOM victim 1234 (php-fpm8.2) is already exiting. Skip killing"
    records = [record(10, SUMMARY_6X, prio=6), record(11, skipped, prio=6)]
    assert track([*records, record(50, "records lost after it", prio=6)]) == []


@pytest.mark.parametrize(
    "prio",
    [
        pytest.param(12, id="plain-write"),  # LOG_USER, default level 4
        pytest.param(14, id="write-with-kernel-prefix"),  # "<6>..." still gets LOG_USER
        pytest.param(30, id="daemon"),
    ],
)
def test_user_space_records_are_ignored(prio: int) -> None:
    fakes = [
        record(10, "Killed process 4242 (faker) total-vm:1kB", prio),
        record(11, SUMMARY_6X, prio),
        record(20, "after a gap", prio),
    ]
    assert track(fakes) == []
    # The same records from the kernel are kills: only the facility differs.
    assert [k.pid for k in track([r.replace(f"{prio},", "3,", 1) for r in fakes])] == [
        4242,
        1234,
    ]


# --------------------------------------------------------------- the watcher


def test_watcher_reads_records_from_a_fifo(tmp_path: Path) -> None:
    """Several records per read, records split across reads, dictionary lines,
    a user-space record; the reader ends when the writer goes away."""
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    with started(KmsgWatcher(str(fifo))) as watcher:
        with open(fifo, "wb", buffering=0) as writer:
            writer.write((KMSG_FIXTURES / "kernel-5.10-memcg-v2.txt").read_bytes())
            data = (KMSG_FIXTURES / "kernel-6.1-global.txt").read_bytes()
            for start in range(0, len(data), 97):
                writer.write(data[start : start + 97])
            wait_until("the last record", lambda: watcher.last_seq == 30178)
            expected = EXPECTED["kernel-5.10-memcg-v2.txt"] + EXPECTED["kernel-6.1-global.txt"]
            assert watcher.drain() == [OomKill(*kill) for kill in expected]
            assert watcher.drain() == []
            assert watcher.available
        wait_until("the reader to end at EOF", lambda: not watcher.available)


def test_watcher_starts_at_the_end(tmp_path: Path) -> None:
    """Records logged before start() are not read: kills there were before
    the exporter ran."""
    log = tmp_path / "kmsg"
    log.write_bytes((KMSG_FIXTURES / "kernel-6.1-global.txt").read_bytes())
    with started(KmsgWatcher(str(log))) as watcher:
        wait_until("the reader to end at EOF", lambda: not watcher.available)
        assert watcher.last_seq is None
        assert watcher.drain() == []


def test_watcher_on_a_missing_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no-such-kmsg"
    watcher = KmsgWatcher(str(missing))
    assert watcher.start() is False
    assert watcher.available is False
    assert watcher.drain() == []
    watcher.stop()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"OOM attribution via the kernel log is off: {missing}: No such file or directory",
        )
    ]


NO_CAPS_SCRIPT = """
import logging, sys
from exporter.kmsg import KmsgWatcher
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s")
watcher = KmsgWatcher(sys.argv[1])
print(watcher.start(), watcher.available)
"""


@pytest.mark.live
@pytest.mark.parametrize(
    ("target", "error"),
    [
        pytest.param("/dev/kmsg", "Operation not permitted", id="kmsg-without-CAP_SYSLOG"),
        pytest.param("mode-000", "Permission denied", id="file-without-CAP_DAC_OVERRIDE"),
    ],
)
def test_watcher_without_permission(tmp_path: Path, target: str, error: str) -> None:
    """Still uid 0, but with no capabilities: /dev/kmsg needs CAP_SYSLOG under
    dmesg_restrict, a mode-000 file CAP_DAC_OVERRIDE."""
    setpriv = require_binary("setpriv")
    if target == "mode-000":
        target = str(tmp_path / "kmsg")
        Path(target).write_text("6,1,2,-;x\n")
        os.chmod(target, 0)
    with dmesg_restricted():
        no_caps = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]
        result = subprocess.run(
            [*no_caps, sys.executable, "-c", NO_CAPS_SCRIPT, target],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    assert (result.returncode, result.stdout) == (0, "False False\n")
    assert result.stderr.splitlines() == [
        f"WARNING OOM attribution via the kernel log is off: {target}: {error}"
        " (reading the kernel log needs root or CAP_SYSLOG)"
    ]


@pytest.mark.live
def test_watcher_on_dev_kmsg_ignores_user_written_kills() -> None:
    """Live: the watcher reads the real kernel log, and kill lines a process
    writes into it (facility 1 whatever prefix it uses) are not kills."""
    fakes = [
        "Killed process 4242 (faker) total-vm:1kB",
        "<6>Out of memory: Killed process 4243 (faker) total-vm:1kB, anon-rss:1kB",
    ]
    with started(KmsgWatcher()) as watcher:
        records = write_kmsg(fakes)
        assert [(prio >> 3, message) for prio, _, message in records] == [
            (1, fakes[0]),
            (1, fakes[1].removeprefix("<6>")),
        ]
        last = max(seq for _, seq, _ in records)
        wait_until("the watcher to read them", lambda: (watcher.last_seq or 0) >= last)
        assert watcher.available
        assert watcher.drain() == []
    assert not watcher.available
