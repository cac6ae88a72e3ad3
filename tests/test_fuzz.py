"""Fuzzing: hypothesis properties over every parser and loader of input the
exporter does not write itself: procfs and cgroup files, the kernel log,
php-fpm configs, status pages and FastCGI answers, the YAML configs.

Each parser gets structured input (its file's own shape, with hostile keys and
numbers: huge, negative, non-ASCII digits), mutated fixture files and raw
bytes, and may fail only with its documented error; well-formed input must
give the values it holds. The budget is fixed and derandomized: CI runs the
same examples every time. The last test feeds each parser worst-case shapes
(long runs of blanks, brackets, quotes) at the size the exporter reads, in a
subprocess with a time limit: a backtracking regex would hang a collection.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from fpm import STATUS_KEYS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fastcgi import END, STDERR, STDIN, STDOUT, end_request, read_record, record
from web_certs import make_ca, make_cert

from exporter import cgroup, config, fastcgi, host, kmsg, phpfpm, procfs, webconfig
from exporter import phpfpm_config as fpmconf
from exporter.procfs import ParseError

from conftest import FIXTURES, ROOT

pytestmark = pytest.mark.slow

T = TypeVar("T")

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def survives(
    parse: Callable[..., T], errors: tuple[type[Exception], ...], *args: Any, **kwargs: Any
) -> T | None:
    """parse(*args, **kwargs), None when it raised one of its documented
    errors; any other exception propagates and fails the property."""
    try:
        return parse(*args, **kwargs)
    except errors:
        return None


# --- strategies -------------------------------------------------------------------

# Numbers as a kernel writes them: no size or count near 2**63 (the parsers may
# reject those), ASCII digits.
WELL_FORMED = st.integers(0, 2**40)
OTHER_DIGITS = st.characters(categories=("Nd",))  # Arabic-Indic, fullwidth, ...
LINE_CHARS = st.characters(codec="utf-8", exclude_characters="\r\n")  # no lone surrogates


def numbers() -> st.SearchStrategy[str]:
    """Number fields as a hostile or broken file may write them."""
    return st.one_of(
        WELL_FORMED.map(str),
        st.integers(-(2**70), 2**70).map(str),  # negative, past 2**64
        st.integers(4290, 4400).map(lambda n: "9" * n),  # past int()'s digit limit
        st.integers(300, 400).map(lambda n: "9" * n + ".5"),  # as a float: inf past 1e308
        st.text(OTHER_DIGITS, min_size=1, max_size=6),
        st.sampled_from(["", "-", "--5", "+5", "-0", "1_000", "0x10", "1e3", "nan", "inf", "½"]),
    )


def kernel_number(text: str) -> bool:
    """Whether text is a number as WELL_FORMED writes it."""
    return text.isascii() and text.isdigit() and len(text) <= 13 and int(text) <= 2**40


def encoded(text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return text.map(lambda s: s.encode())


BLANKS = st.text(" \t", min_size=1, max_size=3)
WORDS = st.text(max_size=12)  # any characters: NUL, newlines, parentheses, non-ASCII


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A real file with a few slices replaced by random bytes or numbers."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, len(data)))
        end = draw(st.integers(start, min(len(data), start + 12)))
        data[start:end] = draw(st.one_of(st.binary(max_size=6), encoded(numbers())))
    return bytes(data)


def seeds(*names: str) -> tuple[bytes, ...]:
    return tuple((FIXTURES / name).read_bytes() for name in names)


# --- procfs and cgroup files --------------------------------------------------------


@dataclass(frozen=True)
class FileParser:
    parse: Callable[[bytes], object]
    errors: tuple[type[Exception], ...]  # what the callers catch
    seeds: tuple[bytes, ...]


V2 = "host/v2/procfs"
FILE_PARSERS = {
    "stat": FileParser(
        procfs.parse_stat, (ParseError,), seeds("bytes/stat-kthread", "bytes/stat-odd-comm")
    ),
    "smaps": FileParser(
        procfs.parse_smaps,
        (ParseError,),
        seeds("bytes/smaps_rollup-6.x", "bytes/smaps_rollup-4.14", "bytes/smaps-6.x"),
    ),
    "cmdline": FileParser(
        procfs.parse_cmdline, (), seeds("bytes/cmdline-args", "bytes/cmdline-fpm-pool")
    ),
    "meminfo": FileParser(procfs.parse_meminfo, (ParseError,), seeds("bytes/meminfo-6.x")),
    "key_values": FileParser(
        procfs.parse_key_values,
        (),
        seeds(f"{V2}/vmstat", "host/v2/sysfs/fs/cgroup/batch.slice/memory.events"),
    ),
    "pressure": FileParser(procfs.parse_pressure, (ParseError,), seeds(f"{V2}/pressure/memory")),
    "zoneinfo": FileParser(procfs.parse_zoneinfo, (ParseError,), seeds(f"{V2}/zoneinfo")),
    "vmstat_oom_kills": FileParser(host.vmstat_oom_kills, (ParseError,), seeds(f"{V2}/vmstat")),
    "proc_cgroup": FileParser(
        cgroup.parse_proc_cgroup, (), seeds(f"{V2}/1/cgroup", "host/hybrid/procfs/100/cgroup")
    ),
}


@pytest.mark.parametrize("name", FILE_PARSERS)
@FUZZ
@given(data=st.data())
def test_procfs_parsers_raise_only_their_documented_error(name: str, data: st.DataObject) -> None:
    parser = FILE_PARSERS[name]
    content = data.draw(st.one_of(mutated(parser.seeds), st.binary(max_size=512)))
    survives(parser.parse, parser.errors, content)


SMAPS_KEYS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Swap", "SwapPss", "Pss_Anon")
SMAPS_LINE = st.tuples(
    st.sampled_from(SMAPS_KEYS) | WORDS, BLANKS, numbers() | WELL_FORMED.map(str), st.just(" kB")
)


@FUZZ
@given(st.lists(SMAPS_LINE, max_size=12), st.sampled_from(["\n", "\r\n", ""]))
def test_smaps_lines_sum_or_raise_parse_error(lines: list[tuple[str, ...]], end: str) -> None:
    data = "".join(f"{k}:{blank}{n}{unit}{end}" for k, blank, n, unit in lines).encode()
    memory = survives(procfs.parse_smaps, (ParseError,), data)
    if end != "\n" or not all(k in SMAPS_KEYS and kernel_number(n) for k, _, n, _ in lines):
        return
    sums = dict.fromkeys(SMAPS_KEYS, 0)
    for key, _, number, _ in lines:
        sums[key] += int(number)
    if any(k == "Pss" for k, *_ in lines):
        assert memory is not None
        assert (memory.rss, memory.pss, memory.swap) == (
            sums["Rss"] * 1024,
            sums["Pss"] * 1024,
            sums["Swap"] * 1024,
        )
        assert memory.uss == (sums["Private_Clean"] + sums["Private_Dirty"]) * 1024


MEMINFO_KEYS = ("MemTotal", "MemAvailable", "HugePages_Total")
MEMINFO_LINE = st.tuples(
    st.sampled_from(MEMINFO_KEYS) | WORDS,
    BLANKS,
    numbers(),
    st.sampled_from([" kB", "", " MB", " kB x"]),
)


@FUZZ
@given(st.lists(MEMINFO_LINE, max_size=12))
def test_meminfo_lines_parse_or_raise_parse_error(lines: list[tuple[str, ...]]) -> None:
    data = "\n".join(f"{k}:{blank}{n}{unit}" for k, blank, n, unit in lines).encode()
    parsed = survives(procfs.parse_meminfo, (ParseError,), data)
    if all(k in MEMINFO_KEYS and kernel_number(n) and u in (" kB", "") for k, _, n, u in lines):
        assert parsed is not None
        last = {k: int(n) * (1024 if u else 1) for k, _, n, u in lines}
        assert parsed == last


STAT_COMM = st.text(max_size=20)  # spaces, parentheses, newlines: comm is the tenant's


@FUZZ
@given(STAT_COMM, st.lists(WELL_FORMED.map(str) | numbers(), min_size=0, max_size=24))
def test_stat_with_any_comm_and_fields(comm: str, fields: list[str]) -> None:
    data = f"42 ({comm}) S {' '.join(fields)}\n".encode()
    stat = survives(procfs.parse_stat, (ParseError,), data)
    if len(fields) >= 19 and all(kernel_number(f) for f in fields):
        assert stat is not None
        assert (stat.comm, stat.state) == (comm, "S")
        assert (stat.ppid, stat.flags, stat.starttime) == tuple(int(fields[i]) for i in (0, 5, 18))


@FUZZ
@given(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=10)))
def test_cmdline_splits_what_was_joined(args: list[str]) -> None:
    while args and not args[-1]:
        args.pop()
    data = "\0".join(args).encode() + b"\0"
    assert procfs.parse_cmdline(data if args else b"") == tuple(args)


KEY_VALUE_LINE = st.tuples(st.sampled_from(["oom_kill", "oom", "max"]) | WORDS, BLANKS, numbers())


@FUZZ
@given(st.lists(KEY_VALUE_LINE, max_size=12))
def test_key_values_never_raise(lines: list[tuple[str, str, str]]) -> None:
    data = "\n".join(f"{k}{blank}{n}" for k, blank, n in lines).encode()
    parsed = procfs.parse_key_values(data)
    for key, _, number in lines:
        if key.isascii() and key.isidentifier() and kernel_number(number):
            assert key in parsed
    assert all(isinstance(v, int) for v in parsed.values())


PRESSURE_LINE = st.tuples(
    st.sampled_from(["some", "full"]) | WORDS,
    st.lists(st.tuples(st.sampled_from(["avg10", "total"]) | WORDS, numbers()), max_size=4),
)


@FUZZ
@given(st.lists(PRESSURE_LINE, max_size=4))
def test_pressure_lines_parse_or_raise_parse_error(
    lines: list[tuple[str, list[tuple[str, str]]]],
) -> None:
    text = "\n".join(" ".join([kind, *(f"{k}={v}" for k, v in pairs)]) for kind, pairs in lines)
    survives(procfs.parse_pressure, (ParseError,), text.encode())


ZONE_LINE = st.one_of(
    st.tuples(st.sampled_from(["low", "high", "managed", "count:", "min"]) | WORDS, numbers()).map(
        " ".join
    ),
    st.lists(numbers(), max_size=4).map(lambda ns: f"protection: ({', '.join(ns)})"),
    WORDS,
)


@FUZZ
@given(st.lists(st.lists(ZONE_LINE, max_size=8), max_size=4))
def test_zoneinfo_zones_parse_or_raise_parse_error(zones: list[list[str]]) -> None:
    text = "".join(f"Node 0, zone Z{i}\n  " + "\n  ".join(z) + "\n" for i, z in enumerate(zones))
    survives(procfs.parse_zoneinfo, (ParseError,), text.encode())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the module: hypothesis refuses function-scoped
    fixtures (its examples would share them without a reset)."""
    return tmp_path_factory.mktemp("fuzz")


CGROUP_V1 = ("memory.usage_in_bytes", "memory.limit_in_bytes")
CGROUP_V2 = ("memory.current", "memory.max")


@FUZZ
@given(
    st.sampled_from([CGROUP_V1, CGROUP_V2]),
    st.lists(encoded(numbers() | st.just("max")) | st.binary(max_size=20), min_size=2, max_size=2),
)
def test_cgroup_memory_files_read_or_raise_value_error(
    scratch: Path, names: tuple[str, str], contents: list[bytes]
) -> None:
    d = scratch / "cgroup"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    for name, content in zip(names, contents):
        (d / name).write_bytes(content)
    memory = survives(cgroup.read_memory, (OSError, ValueError), str(d))
    if memory is not None:
        assert memory.usage >= 0 and (memory.limit is None or memory.limit >= 0)


# --- the kernel log ----------------------------------------------------------------

OOM_MESSAGES = st.one_of(
    st.tuples(
        st.sampled_from(["Out of memory: ", "Memory cgroup out of memory: ", "", "x: "]),
        numbers(),
        st.text(max_size=16),
    ).map(lambda t: f"{t[0]}Killed process {t[1]} ({t[2]}) total-vm:1kB, UID:0"),
    st.tuples(st.text(max_size=10), numbers(), numbers()).map(
        lambda t: f"oom-kill:constraint=CONSTRAINT_NONE,task={t[0]},pid={t[1]},uid={t[2]}"
    ),
    st.tuples(numbers(), st.text(max_size=10)).map(
        lambda t: f"OOM victim {t[0]} ({t[1]}) is already exiting. Skip killing the task"
    ),
    st.text(max_size=40),
)
KMSG_RECORDS = st.one_of(
    st.tuples(numbers(), numbers(), numbers(), st.sampled_from(["-", "c", "+", ""]), OOM_MESSAGES)
    .map(lambda t: f"{t[0]},{t[1]},{t[2]},{t[3]};{t[4]}")
    .map(lambda r: r.replace("\\", "\\x5c")),
    st.binary(max_size=120).map(lambda b: b.decode("utf-8", "replace")),  # as the reader decodes
)


@FUZZ
@given(KMSG_RECORDS)
def test_kmsg_record_parses_or_is_none(record: str) -> None:
    parsed = kmsg.parse_record(record)
    if parsed is not None:
        prio, seq, message = parsed
        assert prio >= 0 and seq >= 0 and isinstance(message, str)
        kmsg.parse_oom_kill(message)


@FUZZ
@given(OOM_MESSAGES)
def test_oom_kill_message_gives_pid_and_comm_or_none(message: str) -> None:
    found = kmsg.parse_oom_kill(message)
    if found is not None:
        pid, comm = found
        assert pid >= 0 and isinstance(comm, str)


@FUZZ
@given(st.integers(1, 4194304), st.text(max_size=16).filter(lambda c: ") total-vm:" not in c))
def test_killed_process_record_names_its_victim(pid: int, comm: str) -> None:
    message = f"Out of memory: Killed process {pid} ({comm}) total-vm:1024kB, anon-rss:0kB"
    assert kmsg.parse_oom_kill(message) == (pid, comm)


@FUZZ
@given(st.lists(KMSG_RECORDS, max_size=20))
def test_oom_tracker_survives_any_record_stream(records: list[str]) -> None:
    tracker = kmsg.OomKillTracker()
    for rec in records:
        for kill in tracker.feed(rec):
            assert kill.pid >= 0 and kill.seq == tracker.last_seq


# --- php-fpm status: FastCGI answers and the status JSON ---------------------------


class FastCGIAnswers:
    """A php-fpm stand-in on a unix socket: reads each whole request, answers
    with the bytes made for that request's id, and closes the connection."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.answers: queue.Queue[Callable[[int], bytes]] = queue.Queue()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # stopped
            answer = self.answers.get()
            with conn, contextlib.suppress(OSError, EOFError):  # the client gave up on us
                conn.settimeout(10)
                first = read_record(conn)
                rec = first
                while rec.type != STDIN or rec.content:
                    rec = read_record(conn)
                conn.sendall(answer(first.request_id))

    def ask(self, answer: Callable[[int], bytes], max_bytes: int) -> fastcgi.Response | None:
        """The client's view of the answer; None for a FastCGIError."""
        self.answers.put(answer)
        return survives(
            fastcgi.request,
            (fastcgi.FastCGIError,),
            self.path,
            "/status",
            "json",
            10.0,
            max_bytes,
        )

    def stop(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def fpm_answers(scratch: Path) -> Iterator[FastCGIAnswers]:
    server = FastCGIAnswers(scratch / "fpm.sock")
    yield server
    server.stop()


def raw_header(version: int, rtype: int, request_id: int, length: int, pad: int) -> bytes:
    """A record header whose length need not match what follows."""
    return bytes(
        [version, rtype, *request_id.to_bytes(2, "big"), *length.to_bytes(2, "big"), pad, 0]
    )


RECORD_TYPES = st.sampled_from([STDOUT, STDERR, END, 0, 1, 2, 11, 255])


@st.composite
def garbled_answers(draw: st.DrawFn) -> Callable[[int], bytes]:
    """Records of any type, version and request id (mostly the right one),
    honest or lying lengths, in any order, maybe cut short."""
    parts = []  # (version, type, request id or None for the right one, content, pad, length)
    for _ in range(draw(st.integers(0, 6))):
        version, rtype = draw(st.sampled_from([1, 1, 1, 0, 2])), draw(RECORD_TYPES)
        rid = draw(st.sampled_from([None, None, None, 0, 2, 0xFFFF]))
        content, pad = draw(st.binary(max_size=40)), draw(st.integers(0, 255))
        length = draw(st.none() | st.integers(0, 0xFFFF))  # None: the true length
        parts.append((version, rtype, rid, content, pad, length))
    tail = draw(st.sampled_from([b"", b"", b"\x01", b"\x01\x03\x00\x01\x00\x08"]))

    def answer(request_id: int) -> bytes:
        out = b""
        for version, rtype, rid, content, pad, length in parts:
            rid = request_id if rid is None else rid
            if length is None:
                out += record(rtype, content, rid, version, pad)
            else:
                out += raw_header(version, rtype, rid, length, pad) + content
        return out + tail

    return answer


@pytest.mark.live
@FUZZ
@given(garbled_answers() | st.binary(max_size=300).map(lambda b: lambda _: b))
def test_fastcgi_client_gives_a_response_or_fastcgi_error(
    fpm_answers: FastCGIAnswers, answer: Callable[[int], bytes]
) -> None:
    response = fpm_answers.ask(answer, max_bytes=256)
    if response is not None:
        assert 100 <= response.status <= 999
        assert len(response.body) + len(response.stderr) <= 256


CGI_NAME = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
CGI_VALUE = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=20)


@pytest.mark.live
@FUZZ
@given(
    st.lists(st.tuples(CGI_NAME.filter(lambda n: n.lower() != "status"), CGI_VALUE), min_size=1),
    st.none() | st.integers(100, 999),
    st.sampled_from(["\r\n", "\n"]),
    st.binary(max_size=400),
    st.binary(max_size=60),
    st.lists(st.integers(0, 500), max_size=4),
    st.integers(0, 7),
)
def test_fastcgi_client_reassembles_a_well_formed_answer(
    fpm_answers: FastCGIAnswers,
    headers: list[tuple[str, str]],
    status: int | None,
    newline: str,
    body: bytes,
    stderr: bytes,
    cuts: list[int],
    pad: int,
) -> None:
    lines = [f"{n}: {v}" for n, v in headers] + ([f"Status: {status} X"] if status else [])
    stdout = (newline.join(lines) + newline * 2).encode("latin-1") + body
    bounds = sorted({0, len(stdout), *(c for c in cuts if c < len(stdout))})

    def answer(rid: int) -> bytes:
        chunks = [record(STDOUT, stdout[a:b], rid, pad=pad) for a, b in zip(bounds, bounds[1:])]
        chunks.insert(len(chunks) // 2, record(STDERR, stderr, rid))
        return b"".join([*chunks, record(STDOUT, b"", rid), end_request(rid)])

    response = fpm_answers.ask(answer, max_bytes=1 << 20)
    assert response is not None
    assert (response.status, response.body, response.stderr) == (status or 200, body, stderr)


@FUZZ
@given(
    st.text(max_size=30)
    | st.tuples(
        st.sampled_from(["", "[", "127.0.0.1", "::1", "[::1]", "*", "localhost", "/x", "a_b"])
        | st.text(max_size=8),
        st.sampled_from([":", "", "::"]),
        numbers(),
    ).map("".join)
)
def test_php_fpm_listen_address_parses_or_raises_value_error(listen: str) -> None:
    parsed = survives(fastcgi.parse_address, (ValueError,), listen)
    if parsed is not None and parsed[0] != socket.AF_UNIX:
        assert 0 < parsed[1][1] < 65536


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(STATUS_KEYS) | st.text(max_size=8), JSON | st.integers()).map(
        lambda d: json.dumps(d).encode()
    )
    | st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n)  # nesting
    | st.integers(1, 100_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
    | st.integers(4290, 5000).map(lambda n: b'{"idle processes": ' + b"9" * n + b"}")
    | st.sampled_from(["utf-16", "utf-32", "utf-8-sig"]).map(lambda e: '{"a": 1}'.encode(e))
    | st.binary(max_size=200)
)
def test_status_page_parses_or_raises_value_error(body: bytes) -> None:
    survives(phpfpm.parse_status, (ValueError,), body)


@FUZZ
@given(st.fixed_dictionaries({key: st.integers(0, 2**63 - 1) for key in STATUS_KEYS}), JSON)
def test_complete_status_page_gives_its_counters(values: dict[str, int], extra: Any) -> None:
    body = json.dumps({**values, "pool": "www", "processes": extra}).encode()
    status = phpfpm.parse_status(body)
    assert (status.accepted_conn, status.idle, status.slow_requests) == (
        values["accepted conn"],
        values["idle processes"],
        values["slow requests"],
    )


# --- php-fpm configs ----------------------------------------------------------------


@dataclass(frozen=True)
class DictFiles:
    """read_fpm_config's file reader over {in-root path: text}."""

    files: dict[str, str]

    def read_text(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def glob(self, pattern: str) -> list[str]:
        depth = pattern.count("/")  # a wildcard does not cross a '/'
        return sorted(
            p for p in self.files if p.count("/") == depth and fnmatch.fnmatchcase(p, pattern)
        )


FPM_TREE = FIXTURES / "phpfpm" / "debian"
FPM_MAIN = "/etc/php/8.2/fpm/php-fpm.conf"
FPM_FILES = {
    "/" + str(p.relative_to(FPM_TREE)): p.read_bytes().decode("utf-8", "surrogateescape")
    for p in sorted(FPM_TREE.rglob("*"))
    if p.is_file()
}
FPM_KEYS = (
    "pm",
    "pm.max_children",
    "pm.start_servers",
    "pm.min_spare_servers",
    "pm.max_spare_servers",
    "pm.max_requests",
    "listen",
    "pm.status_path",
    "pm.status_listen",
    "prefix",
    "php_value[memory_limit]",
    "php_admin_value[memory_limit]",
    "memory_limit",
    "include",
    "PM.Max_Children",
)
FPM_VALUES = (
    numbers()
    | st.sampled_from(
        ["static", "dynamic", "ondemand", "DYNAMIC", "128M", "1g", "-1", "-2", "9T", "yes", "off"]
    )
    | st.sampled_from(["/run/php/$pool.sock", "127.0.0.1:9000", "[::1]:9000", "9000", "x.sock"])
    | st.sampled_from(["pool.d/*.conf", "conf.extra/*", "/etc/php/8.2/fpm/*", "*", "../*", "[]"])
    | st.text(LINE_CHARS, max_size=12)
)
QUOTING = st.sampled_from(["{}", '"{}"', "'{}'", "{} ; comment", '"{}', "{}'", '"a\\"{}"'])
FPM_LINE = st.one_of(
    st.tuples(
        st.sampled_from(FPM_KEYS) | st.text(LINE_CHARS, max_size=8),
        st.sampled_from([" = ", "=", "\t=  ", " "]),
        FPM_VALUES,
        QUOTING,
    ).map(lambda t: t[0] + t[1] + t[3].replace("{}", t[2])),
    st.sampled_from(["[global]", "[www]", "[WWW]", "[api]", "[$pool]", "[]", "[a", "[PATH=/x]"]),
    st.text(LINE_CHARS, max_size=20),
)
FPM_TEXT = st.lists(FPM_LINE, max_size=15).map("\n".join)


@st.composite
def fpm_trees(draw: st.DrawFn) -> dict[str, str]:
    """The Debian fixture tree with files replaced, mutated or added."""
    files = dict(FPM_FILES)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([*sorted(files), "/etc/php/8.2/fpm/pool.d/new.conf"]))
        if path in files and draw(st.booleans()):
            raw = files[path].encode("utf-8", "surrogateescape")
            text = draw(mutated((raw,))).decode("utf-8", "surrogateescape")
        else:
            text = draw(FPM_TEXT)
        files[path] = text
    return files


def assert_one_line(error: Exception, source: str) -> None:
    assert str(error).startswith(source) and "\n" not in str(error), str(error)


@FUZZ
@given(fpm_trees())
def test_php_fpm_config_reads_or_raises_fpm_config_error(files: dict[str, str]) -> None:
    try:
        pools = fpmconf.read_fpm_config(FPM_MAIN, DictFiles(files))
    except fpmconf.FpmConfigError as exc:
        assert_one_line(exc, exc.path)
        return
    for settings_ in pools.values():
        assert settings_.pm in (None, *fpmconf.PM_STYLES)
        assert settings_.memory_limit is None or settings_.memory_limit >= 0


POOL_NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10).filter(
    lambda n: n != "global"
)


@FUZZ
@given(POOL_NAME, st.integers(1, 2**31 - 1), st.integers(1, 4096), st.integers(0, 10**6))
def test_well_formed_pool_gives_its_settings(
    name: str, children: int, megabytes: int, requests: int
) -> None:
    text = (
        f"[{name}]\npm = static\npm.max_children = {children}\n"
        f"pm.max_requests = '{requests}'\nlisten = /run/php/$pool.sock ; the socket\n"
        f'php_admin_value[memory_limit] = "{megabytes}M"\n'
    )
    (pool,) = fpmconf.read_fpm_config(
        "/etc/fpm/php-fpm.conf", DictFiles({"/etc/fpm/php-fpm.conf": text})
    ).values()
    assert (pool.name, pool.pm, pool.max_children, pool.max_requests) == (
        name,
        "static",
        children,
        requests,
    )
    assert (pool.listen, pool.memory_limit) == (f"/run/php/{name}.sock", megabytes << 20)


@FUZZ
@given(FPM_TEXT | st.text(max_size=200), st.booleans())
def test_ini_text_parses_or_raises_fpm_config_error(text: str, strict: bool) -> None:
    errors = (fpmconf.FpmConfigError,) if strict else ()
    survives(fpmconf.parse_ini, errors, text, "/x.conf", strict=strict)


@FUZZ
@given(numbers(), st.sampled_from(["", "k", "M", "g", " M", "T", "KB", "m "]))
def test_php_sizes_and_integers_parse_or_raise_value_error(number: str, unit: str) -> None:
    size = survives(fpmconf.parse_php_size, (ValueError,), number + unit)
    assert size is None or size >= 0
    survives(fpmconf.parse_fpm_int, (ValueError,), number)


# --- the YAML configs ---------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | numbers()
YAMLISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.booleans(), inner, max_size=4)
    ),
    max_leaves=12,
)
DURATIONS = (
    st.tuples(numbers(), st.sampled_from(["ms", "s", "m", "h", "d", "", " s", "y"])).map("".join)
    | SCALARS
)
SIZES = (
    st.tuples(
        numbers(), st.sampled_from(["", "B", "KiB", "MiB", "GiB", "TiB", "KB", " MB", "kb"])
    ).map("".join)
    | SCALARS
)
REGEXES = st.text("()[]{}*+?|^$\\.:<>=!-azP0129", max_size=16) | st.sampled_from(
    ["(?<x>.+)", "[[:alpha:]]", "[[:^alpha:]]", "\\z", "a{99999999999}", "(" * 300 + ")" * 300]
)
TEMPLATES = st.text(max_size=16) | st.sampled_from(
    ["{{.Comm}}", "{{.Matches.x}}", "{{", "}}", "{{.Nope}}", "{{ .ExeBase }}", "{{-.Comm-}}"]
)


def section(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional=keys) | YAMLISH


RULES = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "name": TEMPLATES | SCALARS,
            "comm": st.lists(st.text(max_size=8), max_size=3) | SCALARS,
            "exe": st.lists(st.text(max_size=8), max_size=3) | SCALARS,
            "cmdline": st.lists(REGEXES, max_size=3) | SCALARS,
            "other": SCALARS,
        },
    )
    | SCALARS,
    max_size=3,
)
POOL_OVERRIDE = section(
    {
        "status": st.sampled_from(["http://127.0.0.1/status", "https://x", "ftp://x"]) | SCALARS,
        "max_children": st.integers() | SCALARS,
    }
)
CONFIG_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "collection": section(
            {
                "interval": DURATIONS,
                "max_age": DURATIONS,
                "budget": DURATIONS,
                "large_rss": SIZES,
                "large_interval": DURATIONS,
                "threads": st.integers() | SCALARS,
            }
        ),
        "max_groups": st.integers() | SCALARS,
        "php_fpm": section(
            {
                "enabled": SCALARS,
                "status_timeout": DURATIONS,
                "sizing": st.sampled_from(["p95", "max"]) | SCALARS,
                "reserve": st.floats() | SCALARS,
                "pools": st.dictionaries(st.text(max_size=8) | st.integers(), POOL_OVERRIDE)
                | SCALARS,
            }
        ),
        "accounting": section({"enabled": SCALARS, "interval": DURATIONS}),
        "cgroups": section({"enabled": SCALARS}),
        "kmsg": section({"enabled": SCALARS}),
        "process_names": RULES | SCALARS,
        "unknown": SCALARS,
    },
)


def yaml_bytes(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Documents as YAML, mutated YAML, deep nesting, or raw bytes."""
    dumped = docs.map(lambda d: yaml.safe_dump(d, sort_keys=False).encode())
    return st.one_of(
        dumped,
        dumped.flatmap(lambda b: mutated((b,))),
        st.integers(1, 1500).map(lambda n: b"[" * n),
        st.integers(1, 1500).map(lambda n: b"a: " * n + b"1"),
        st.integers(1, 1500).map(lambda n: b"- " * n + b"1"),
        st.binary(max_size=200),
    )


@FUZZ
@given(CONFIG_DOCS | YAMLISH)
def test_config_data_builds_or_raises_one_line_config_error(data: Any) -> None:
    try:
        config.build_config(data, "fuzz.yaml")
    except config.ConfigError as exc:
        assert_one_line(exc, "fuzz.yaml")


@FUZZ
@given(yaml_bytes(CONFIG_DOCS))
def test_config_file_loads_or_raises_one_line_config_error(scratch: Path, content: bytes) -> None:
    path = scratch / "config.yaml"
    path.write_bytes(content)
    try:
        config.load_config(str(path))
    except config.ConfigError as exc:
        assert_one_line(exc, str(path))


@FUZZ
@given(st.integers(1, 7 * 1440), st.booleans(), st.integers(1, 10_000))
def test_well_formed_config_gives_its_values(minutes: int, in_seconds: bool, groups: int) -> None:
    interval = f"{minutes * 60}s" if in_seconds else f"{minutes}m"
    doc = {"collection": {"interval": interval}, "max_groups": groups}
    built = config.build_config(doc, "fuzz.yaml")
    assert (built.collection.interval, built.max_groups) == (minutes * 60, groups)


@pytest.fixture(scope="module")
def certs(scratch: Path) -> Path:
    """A CA and a server pair in scratch, which the web configs below name."""
    ca = make_ca(scratch)
    server = make_cert(ca, scratch, "server", "serverAuth")
    assert (ca.cert.name, server.cert.name, server.key.name) == (
        "ca.pem",
        "server.pem",
        "server.key",
    )
    return scratch


FILE_NAMES = st.sampled_from(["server.pem", "server.key", "ca.pem", "ca.key", "missing", "", "."])
FILE_NAMES |= st.text(
    st.characters(codec="utf-8", exclude_characters="/"), max_size=8
)  # NUL included
BCRYPT = "$2y$10$" + "a" * 53
TLS = section(
    {
        "cert_file": FILE_NAMES | SCALARS,
        "key_file": FILE_NAMES | SCALARS,
        "client_ca_file": FILE_NAMES | SCALARS,
        "client_auth_type": st.sampled_from(sorted(webconfig.CLIENT_AUTH)) | SCALARS,
        "min_version": st.sampled_from(sorted(webconfig.TLS_VERSIONS)) | SCALARS,
        "max_version": st.sampled_from(sorted(webconfig.TLS_VERSIONS)) | SCALARS,
        "cipher_suites": st.lists(st.sampled_from(sorted(webconfig.CIPHER_SUITES)) | SCALARS)
        | SCALARS,
        "curve_preferences": st.lists(st.sampled_from(sorted(webconfig.CURVES)) | SCALARS)
        | SCALARS,
        "prefer_server_cipher_suites": SCALARS,
    }
)
WEB_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "tls_server_config": TLS,
        "http_server_config": section(
            {
                "headers": st.dictionaries(
                    st.sampled_from(webconfig.HEADERS) | st.text(max_size=8), SCALARS
                )
                | SCALARS,
                "http2": SCALARS,
            }
        ),
        "basic_auth_users": st.dictionaries(
            st.text(max_size=8) | st.integers(),
            st.sampled_from([BCRYPT, BCRYPT.replace("10", "99"), BCRYPT[:-1], "x"]) | SCALARS,
        )
        | SCALARS,
        "other": SCALARS,
    },
)


@pytest.mark.live
@FUZZ
@given(yaml_bytes(WEB_DOCS))
def test_web_config_loads_or_raises_one_line_web_config_error(certs: Path, content: bytes) -> None:
    path = certs / "web.yml"
    path.write_bytes(content)
    try:
        loaded = webconfig.load_web_config(str(path))
    except webconfig.WebConfigError as exc:
        assert_one_line(exc, str(path))
        return
    assert all(h.startswith(b"$2") for h in loaded.users.values())


# --- worst-case shapes, at the size the exporter reads ---------------------------

# (prefix, unit, suffix): prefix + unit repeated to the size + suffix.
SHAPES = [
    ("", " ", ""),
    ("a", " ", "b"),
    ("a", " ", "=b"),
    ("a", "\t ", "[b"),
    ("", "9", ""),
    ("", "a", ""),
    ("", "(", ""),
    ("", ")", ""),
    ("(", " ", ")"),
    ("[", " ", ""),
    ("", "[", ""),
    ("", "]", ""),
    ("", "[]", ""),
    ("a=", '"', ""),
    ("a=", "'", ""),
    ("a=", '\\"', ""),
    ("", ":", ""),
    ("", "=", ""),
    ("", ",", ""),
    ("", "\\x", ""),
    ("", "\n", ""),
    ("", "\0", ""),
    ("", "a b\n", ""),
    ("", "Node ", ""),
    ("Pss:", " ", "1 kB"),
    ("1,1,1,-;", "Killed process ", ""),
    ("oom-kill:", ",task=", ",pid=1"),
]
WORST_CASE_RUN = """
import importlib, json, sys, time
module, name, kind, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
parse = getattr(importlib.import_module(module), name)
for prefix, unit, suffix in json.loads(sys.argv[5]):
    data = prefix + unit * (size // len(unit)) + suffix
    start = time.perf_counter()
    try:
        parse(data.encode("latin-1") if kind == "bytes" else data, *json.loads(sys.argv[6]))
    except Exception:
        pass
    print(json.dumps([prefix, unit, suffix, round(time.perf_counter() - start, 3)]), flush=True)
"""
FILE_SIZE = 1 << 18  # a quarter of the largest php-fpm config or status page the exporter reads
WORST_CASE = {
    "procfs.parse_stat": ("bytes", FILE_SIZE, []),
    "procfs.parse_smaps": ("bytes", FILE_SIZE, []),
    "procfs.parse_cmdline": ("bytes", FILE_SIZE, []),
    "procfs.parse_meminfo": ("bytes", FILE_SIZE, []),
    "procfs.parse_key_values": ("bytes", FILE_SIZE, []),
    "procfs.parse_pressure": ("bytes", FILE_SIZE, []),
    "procfs.parse_zoneinfo": ("bytes", FILE_SIZE, []),
    "host.vmstat_oom_kills": ("bytes", FILE_SIZE, []),
    "cgroup.parse_proc_cgroup": ("bytes", FILE_SIZE, []),
    "kmsg.parse_record": ("str", kmsg.READ_SIZE, []),
    "kmsg.parse_oom_kill": ("str", kmsg.READ_SIZE, []),
    "phpfpm.parse_status": ("bytes", FILE_SIZE, []),
    "phpfpm_config.parse_ini": ("str", FILE_SIZE, ["/x.conf"]),
    "phpfpm_config.parse_value": ("str", FILE_SIZE, []),
    "phpfpm_config.parse_php_size": ("str", FILE_SIZE, []),
}
WORST_CASE_LIMIT = 20.0  # seconds for all shapes; linear parsers take well under one


@pytest.mark.parametrize("parser", WORST_CASE)
def test_worst_case_shapes_parse_in_bounded_time(parser: str) -> None:
    kind, size, args = WORST_CASE[parser]
    module, _, name = parser.partition(".")
    argv = [sys.executable, "-c", WORST_CASE_RUN, f"exporter.{module}", name, kind, str(size)]
    argv += [json.dumps(SHAPES), json.dumps(args)]
    try:
        subprocess.run(
            argv, capture_output=True, text=True, timeout=WORST_CASE_LIMIT, cwd=ROOT, check=True
        )
    except subprocess.TimeoutExpired as exc:
        done = (exc.stdout or b"").splitlines()
        stuck = SHAPES[len(done)]
        raise AssertionError(
            f"{parser} still parsing {stuck[0]!r} + {stuck[1]!r} * {size // len(stuck[1])}"
            f" + {stuck[2]!r} after {WORST_CASE_LIMIT}s"
        ) from None
