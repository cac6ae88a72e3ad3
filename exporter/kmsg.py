"""OOM kills from the kernel log (/dev/kmsg), to attribute them to groups.

The kernel logs every OOM kill it performs as one "Killed process PID (comm)"
record (mm/oom_kill.c, __oom_kill_process), on all versions and never rate
limited:

- 5.x/6.x: "Out of memory: Killed process 1234 (comm) total-vm:..., UID:33 ..."
  ("Memory cgroup out of memory: ..." for a cgroup limit,
  "Out of memory (oom_kill_allocating_task): ..." with that sysctl set);
- up to 5.0: "Killed process 1234 (comm) total-vm:...", after the selection line
  "Out of memory: Kill process 1230 (comm) score 912 or sacrifice child", which
  is not a kill: the victim may be a child of the selected process.

Since 4.19 the report before it ends with a one-line summary,
"oom-kill:constraint=...,task=comm,pid=1234,uid=33". The summary is rate limited
with the rest of the report, names the *selected* process (the parent when a
child is sacrificed, 4.19-5.0), and is also printed when the kill is then
skipped ("OOM victim 1234 (comm) is already exiting. Skip killing the task").
So the "Killed process" record is what counts; a summary counts only when the
records after it were lost (its sequence numbers jump) before its kill record
was seen. A PID counted once is not counted again within WINDOW records (a
memory.oom.group kill can report its victim twice).

Only records the kernel logged itself count: syslog facility 0. Anything user
space writes into /dev/kmsg gets facility 1 (LOG_USER) or higher whatever
"<N>" prefix it uses, so a process cannot fake an OOM kill.

Limits: the PID is the one the kernel names, in the initial PID namespace; it is
a thread ID when the kernel had to pick a live thread of an exiting process.
Reading /dev/kmsg needs CAP_SYSLOG (or root) when kernel.dmesg_restrict=1.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import threading
from typing import NamedTuple

from .procfs import MAX_VALUE

log = logging.getLogger(__name__)

KMSG_PATH = "/dev/kmsg"
KERNEL_FACILITY = 0
# One read() of /dev/kmsg returns exactly one record, or fails with EINVAL when
# the buffer is too small for it (records are at most a few KiB).
READ_SIZE = 65536
# Records within which a summary's kill record is expected, and within which a
# counted PID is not counted again.
WINDOW = 64
_MAX_DIGITS = len(str(MAX_VALUE))

_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


class OomKill(NamedTuple):
    pid: int
    comm: str
    seq: int  # sequence number of the /dev/kmsg record


def _uint(text: str) -> int | None:
    """A decimal number in 0..MAX_VALUE (as procfs.parse_uint, on str), else
    None: no sign, no '٣', and no int() of a 5000-digit run, which raises."""
    if text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS:
        value = int(text)
        return value if value <= MAX_VALUE else None
    return None


def _unescape(message: str) -> str:
    r"""Undo /dev/kmsg's escaping: bytes < 0x20, >= 0x7f and '\' itself are
    written as \xNN, so every backslash starts such an escape."""
    if "\\x" not in message:
        return message
    # surrogatepass: a str from anywhere (not only the reader's decode) encodes.
    raw = _ESCAPE.sub(lambda m: bytes((int(m[1], 16),)), message.encode("utf-8", "surrogatepass"))
    return raw.decode("utf-8", "replace")


def parse_record(record: str) -> tuple[int, int, str] | None:
    """(prio, seq, message) of a /dev/kmsg record, or None when malformed.

    A record is "PRIO,SEQ,TS_USEC,FLAGS[,...];MESSAGE\\n", optionally followed
    by dictionary lines that start with a space (" SUBSYSTEM=pci"), ignored;
    such a line on its own is no record. prio is facility * 8 + level.
    """
    header, sep, message = record.partition("\n")[0].partition(";")
    fields = header.split(",")
    if not sep or len(fields) < 4:
        return None
    prio, seq, usec = (_uint(f) for f in fields[:3])
    if prio is None or seq is None or usec is None:
        return None
    return prio, seq, _unescape(message)


def _after(message: str, phrase: str) -> str | None:
    """The text after phrase when the message starts with it or has it right
    after a "...: " prefix ("Out of memory: Killed process ...")."""
    head, sep, rest = message.partition(phrase)
    return rest if sep and (not head or head.endswith(": ")) else None


def _pid_comm(rest: str | None, end: str) -> tuple[int, str] | None:
    """'1234 (comm) ...' -> (1234, 'comm'). comm may hold spaces and
    parentheses: it ends at the last `end` marker, else at the last ')'."""
    if rest is None:
        return None
    pid_text, sep, tail = rest.partition(" (")
    pid = _uint(pid_text)
    stop = tail.rfind(end)
    if stop < 0:
        stop = tail.rfind(")")
    if pid is None or not sep or stop < 0:
        return None
    return pid, tail[:stop]


def _killed(message: str) -> tuple[int, str] | None:
    return _pid_comm(_after(message, "Killed process "), ") total-vm:")


def _skipped(message: str) -> tuple[int, str] | None:
    return _pid_comm(_after(message, "OOM victim "), ") is already exiting")


def _summary(message: str) -> tuple[int, str] | None:
    """'oom-kill:...,task_memcg=/x,task=COMM,pid=PID,uid=UID' -> (PID, COMM)."""
    if not message.startswith("oom-kill:"):
        return None
    at = message.rfind(",pid=")
    task = message.rfind(",task=", 0, at)
    pid = _uint(message[at + 5 :].partition(",")[0])
    if at < 0 or task < 0 or pid is None:
        return None
    return pid, message[task + 6 : at]


def parse_oom_kill(message: str) -> tuple[int, str] | None:
    """(pid, comm) of a "Killed process" or "oom-kill:" summary message.

    Selection lines ("Kill process ... or sacrifice child"), the task table
    ("[  pid  ] ...") and "oom_reaper: reaped process ..." are not kills.
    """
    return _killed(message) or _summary(message)


class OomKillTracker:
    """Turns a stream of /dev/kmsg records into OOM kills, each counted once
    (see the module docstring for the rules). Not thread-safe: one reader."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.last_seq: int | None = None
        self._summary: OomKill | None = None  # waiting for its kill record
        self._counted: dict[int, int] = {}  # pid -> seq it was counted at

    def feed(self, record: str) -> list[OomKill]:
        """The kills a record completes (a summary whose kill record was lost
        can come out together with the record after the gap)."""
        parsed = parse_record(record)
        if parsed is None:
            return []
        prio, seq, message = parsed
        kills = self._settle_summary(seq)
        self.last_seq = seq
        if prio >> 3 == KERNEL_FACILITY:
            kills += self._kernel_message(seq, message)
        return kills

    def _settle_summary(self, seq: int) -> list[OomKill]:
        summary = self._summary
        if summary is None:
            return []
        if self.last_seq is not None and seq > self.last_seq + 1:
            self._summary = None  # records were lost, maybe its kill record
            return self._count(summary)
        if seq - summary.seq > self.window:
            self._summary = None  # no kill followed it
        return []

    def _kernel_message(self, seq: int, message: str) -> list[OomKill]:
        killed = _killed(message)
        if killed is not None:
            self._summary = None  # this record is the kill the summary announced
            return self._count(OomKill(*killed, seq))
        summary = _summary(message)
        if summary is not None:
            self._summary = OomKill(*summary, seq)
            return []
        skipped = _skipped(message)
        if skipped is not None and self._summary and self._summary.pid == skipped[0]:
            self._summary = None
        return []

    def _count(self, kill: OomKill) -> list[OomKill]:
        self._counted = {
            pid: seq for pid, seq in self._counted.items() if kill.seq - seq <= self.window
        }
        if kill.pid in self._counted:
            return []
        self._counted[kill.pid] = kill.seq
        return [kill]


class KmsgWatcher:
    """Reads the kernel log in a daemon thread and collects the OOM kills
    logged after start(); drain() hands them over."""

    def __init__(self, path: str = KMSG_PATH) -> None:
        self.path = path
        self._tracker = OomKillTracker()
        self._lock = threading.Lock()
        self._kills: list[OomKill] = []
        self._thread: threading.Thread | None = None
        self._fds: tuple[int, int, int] | None = None  # log, wake-up pipe (read, write)

    @property
    def available(self) -> bool:
        """True while the reader runs: start() succeeded, stop() was not
        called and reading did not fail (or reach the end of a test FIFO)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def last_seq(self) -> int | None:
        """Sequence number of the last record read, None before the first."""
        return self._tracker.last_seq

    def start(self) -> bool:
        """Open the log at its end and start reading; False (and one warning)
        when it cannot be opened. Starting again first stops the old reader."""
        self.stop()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            why = exc.strerror or str(exc)  # os.open sets strerror; its type allows None
            if exc.errno in (errno.EPERM, errno.EACCES):
                why += " (reading the kernel log needs root or CAP_SYSLOG)"
            log.warning("OOM attribution via the kernel log is off: %s: %s", self.path, why)
            return False
        try:
            os.lseek(fd, 0, os.SEEK_END)  # only kills from now on count
        except OSError as exc:  # a FIFO (tests) cannot seek
            log.debug("%s: cannot seek to the end: %s", self.path, exc.strerror)
        wake_r, wake_w = os.pipe()
        self._fds = (fd, wake_r, wake_w)
        self._thread = threading.Thread(target=self._run, args=(fd, wake_r), daemon=True)
        self._thread.name = "kmsg"
        self._thread.start()
        return True

    def drain(self) -> list[OomKill]:
        """The kills seen since the previous drain(), oldest first."""
        with self._lock:
            kills, self._kills = self._kills, []
        return kills

    def stop(self) -> None:
        thread, fds = self._thread, self._fds
        self._thread = self._fds = None
        if thread is None or fds is None:
            return
        os.write(fds[2], b"x")
        thread.join(timeout=5)
        for fd in fds:
            os.close(fd)

    def _run(self, fd: int, wake: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(wake, select.POLLIN)
        partial = b""  # an unfinished line (FIFOs return any number of bytes)
        while not any(ready == wake for ready, _ in poller.poll()):
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            except BrokenPipeError:  # EPIPE: the reader resumes at the oldest record kept
                log.debug("%s: records were overwritten before they were read", self.path)
                continue
            except OSError as exc:
                log.warning("OOM attribution via the kernel log stopped: %s: %s", self.path, exc)
                return
            if not chunk:
                log.debug("%s: end of file, no more records", self.path)
                return
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:  # dictionary lines (" KEY=VALUE") parse as no record
                self._record(line.decode("utf-8", "replace"))

    def _record(self, record: str) -> None:
        kills = self._tracker.feed(record)
        for kill in kills:
            log.info("kernel log: OOM killed pid %d (%r)", kill.pid, kill.comm)
        if kills:
            with self._lock:
                self._kills.extend(kills)
