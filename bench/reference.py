"""Other tools reading the same processes: process-exporter (scraped over
loopback), smem and psutil, for reference."""

from __future__ import annotations

import http.client
import json
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from fleet import find_binary, free_port
from measure import Row, Tally, timed

PROCESS_EXPORTER = "/usr/bin/prometheus-process-exporter"
PE_NAME = "process-exporter (-gather-smaps, -threads=false)"
PE_FLAGS = ("-gather-smaps", "-threads", "-config.path", "-web.listen-address")
PE_CONFIG = {"process_names": [{"name": "{{.Comm}}", "cmdline": [".+"]}]}
TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15


def _missing_flags(binary: str) -> list[str]:
    """Flags we pass that `binary --help` does not list (Go single-dash flags)."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    listed = {line.split()[0] for line in (out.stdout + out.stderr).splitlines() if line.strip()}
    return [flag for flag in PE_FLAGS if flag not in listed]


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {resp.status}")
    return body


def _num_procs(body: bytes) -> int:
    """Processes process-exporter grouped: the sum of its num_procs gauges."""
    prefix = b"namedprocess_namegroup_num_procs{"
    return sum(
        int(float(line.rsplit(None, 1)[1])) for line in body.splitlines() if line.startswith(prefix)
    )


@contextmanager
def _process_exporter(binary: str, tmp: Path) -> Iterator[tuple[int, int]]:
    """Run process-exporter on a loopback port; yield (pid, port)."""
    config = tmp / "process-exporter.yml"
    config.write_text(json.dumps(PE_CONFIG))  # JSON is YAML
    port = free_port()
    args = ["-gather-smaps=true", "-threads=false", "-config.path", str(config)]
    proc = subprocess.Popen(
        [binary, *args, "-web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _connect(port: int) -> http.client.HTTPConnection:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            _get(conn, "/metrics")  # also the warm-up scrape
            return conn
        except OSError:
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def process_exporter(tmp: Path, scrapes: int) -> Row:
    """CPU per /metrics scrape of process-exporter grouping every process by
    comm, the same processes as pss-exporter's built-in config."""
    binary = find_binary(PROCESS_EXPORTER)
    if binary is None:
        return Row(PE_NAME, None, None, None, "not installed")
    missing = _missing_flags(binary)
    if missing:
        return Row(PE_NAME, None, None, None, f"no flag {', '.join(missing)}")
    with _process_exporter(binary, tmp) as (pid, port):
        conn = _connect(port)
        before, wall = cpu_seconds(pid), 0.0
        for _ in range(scrapes):
            body, _, seconds = timed(lambda: _get(conn, "/metrics"))
            wall += seconds
        cpu = cpu_seconds(pid) - before
        conn.close()
    return Row(PE_NAME, cpu / scrapes, wall / scrapes, _num_procs(body), "its utime + stime")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def smem(runs: int) -> Row:
    """`smem -c "pid pss"` (reads every process's full smaps), CPU from
    getrusage(RUSAGE_CHILDREN)."""
    name = 'smem -c "pid pss"'
    binary = find_binary("smem")
    if binary is None:
        return Row(name, None, None, None, "not installed")
    tally = Tally()
    for _ in range(runs):
        before = _children_cpu()
        out, _, wall = timed(
            lambda: (
                subprocess.run(
                    [binary, "-c", "pid pss"], capture_output=True, check=True, timeout=600
                ).stdout
            )
        )
        tally.record(_children_cpu() - before, wall, len(out.splitlines()) - 1)
    return tally.row(name, "a new python3 process per run")


def _psutil_cycle(pids: list[int]) -> int:
    """memory_full_info() of every pid; returns the reads attempted."""
    for pid in pids:
        try:
            psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue  # vanished, or denied
    return len(pids)


def psutil_row(pids: list[int], runs: int) -> Row:
    """psutil.Process(pid).memory_full_info() over pids (smaps_rollup)."""
    tally = Tally()
    for _ in range(runs):
        read, cpu, wall = timed(lambda: _psutil_cycle(pids))
        tally.record(cpu, wall, read)
    return tally.row("psutil memory_full_info()", "same PIDs as the bare loop")
