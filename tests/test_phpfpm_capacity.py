"""php-fpm pool capacity against a real php-fpm 8.2, with zero exporter config.

One master runs three pools of this run (random suffix: other php-fpm masters
on the machine cannot collide with them): the main file includes a pool.d/
glob, `$pool` appears in a socket path and a status path, and status pages
answer on a unix socket and on TCP. Workers are made to hold a known amount of
memory by tests/php/hold.php, which keeps it until the test releases it.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fpm import STATUS_KEYS, global_section, pool_workers, running_fpm
from test_phpfpm_live import between, pool_sums, rollup_kb

from exporter.cgroup import headroom, memory_dirs, parse_proc_cgroup, read_memory
from exporter.fastcgi import FastCGIError, request

from conftest import (
    QuietHandler,
    free_port,
    group_value,
    http_get,
    parse_samples,
    run_cli,
    running_exporter,
    serving_http,
    wait_until,
)

pytestmark = pytest.mark.live

MIB = 1 << 20
SUFFIX = uuid.uuid4().hex[:8]
STATIC, DYNAMIC, SATURATED = f"static_{SUFFIX}", f"dynamic_{SUFFIX}", f"saturated_{SUFFIX}"
HOLD_SCRIPT = Path(__file__).resolve().parent / "php" / "hold.php"
# Big next to an idle worker's USS (under 1 MiB here), and above Zend's 2 MiB
# chunk size, so that it is one block of its own, mapped and unmapped alone.
HELD_MIB = 64


@dataclass(frozen=True)
class Pool:
    """A pool as configured, with `$pool` already expanded by hand."""

    name: str
    pm: str
    max_children: int
    max_requests: int
    memory_limit: int
    listen: str
    status_path: str
    workers: int  # alive while idle

    @property
    def group(self) -> str:
        return f"php-fpm:{self.name}"


@dataclass(frozen=True)
class Fpm:
    master: int
    pools: dict[str, Pool]


def write_config(tmp: Path) -> dict[str, Pool]:
    """php-fpm.conf including pool.d/*.conf, plus a pool after the include."""
    (tmp / "pool.d").mkdir()
    (tmp / "run").mkdir()
    dynamic_port, saturated_port = free_port(), free_port()
    main = (
        f"include = {tmp}/pool.d/*.conf\n"
        f"\n[{SATURATED}]\n"
        f"listen = 127.0.0.1:{saturated_port}\n"
        "pm = static\n"
        "pm.max_children = 2\n"
        "pm.status_path = /$pool/status\n"
    )
    (tmp / "php-fpm.conf").write_text(global_section(tmp) + main)
    (tmp / "pool.d" / "static.conf").write_text(
        f"[{STATIC}]\n"
        f"listen = {tmp}/run/$pool.sock\n"
        "pm = static\n"
        "pm.max_children = 4\n"
        "pm.max_requests = 500\n"
        "pm.status_path = /status-$pool\n"
        "php_admin_value[memory_limit] = 96M\n"
    )
    (tmp / "pool.d" / "dynamic.conf").write_text(
        f"[{DYNAMIC}]\n"
        f"listen = 127.0.0.1:{dynamic_port}\n"
        "pm = dynamic\n"
        "pm.max_children = 5\n"
        "pm.start_servers = 2\n"
        "pm.min_spare_servers = 1\n"
        "pm.max_spare_servers = 3\n"
        "pm.max_requests = 250\n"
        "pm.status_path = /status\n"
        "php_value[memory_limit] = 48M\n"
    )
    # The values php-fpm reads, `$pool` expanded by hand.
    static_listen, static_status = f"{tmp}/run/{STATIC}.sock", f"/status-{STATIC}"
    dynamic_listen = f"127.0.0.1:{dynamic_port}"
    saturated_listen, saturated_status = f"127.0.0.1:{saturated_port}", f"/{SATURATED}/status"
    pools = [
        Pool(STATIC, "static", 4, 500, 96 * MIB, static_listen, static_status, 4),
        Pool(DYNAMIC, "dynamic", 5, 250, 48 * MIB, dynamic_listen, "/status", 2),
        # No memory_limit in the pool: php.ini's (/etc/php/8.2/fpm/php.ini,
        # Debian's 128M) for php-fpm; PHP's built-in 128M for the exporter,
        # which finds no php.ini beside php-fpm.conf.
        Pool(SATURATED, "static", 2, 0, 128 * MIB, saturated_listen, saturated_status, 2),
    ]
    return {p.name: p for p in pools}


@contextmanager
def running_pools(tmp: Path, pools: dict[str, Pool]) -> Iterator[Fpm]:
    """php-fpm on tmp/php-fpm.conf, once every pool has its workers; stopped
    at once (SIGTERM), even if a failed test left a worker busy."""
    counts = {p.name: p.workers for p in pools.values()}
    with running_fpm(tmp / "php-fpm.conf", counts, graceful=False) as proc:
        yield Fpm(proc.pid, pools)


@pytest.fixture(scope="module")
def fpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fpm]:
    tmp = tmp_path_factory.mktemp("capacity")
    with running_pools(tmp, write_config(tmp)) as fpm:
        yield fpm


# ------------------------------------------------------------------ helpers


def exported(*args: str) -> dict:
    """`pss-exporter once ARGS`, parsed."""
    result = run_cli("once", *args)
    assert result.returncode == 0, result.stderr
    return parse_samples(result.stdout)


def host_value(samples: dict, name: str) -> float:
    return samples[(name, frozenset())]


def status_page(pool: Pool) -> dict:
    """The pool's status page, fetched by the test itself."""
    response = request(pool.listen, pool.status_path, "json", timeout=5)
    assert response.status == 200, response
    page = json.loads(response.body)
    assert (page["pool"], page["process manager"]) == (pool.name, pool.pm)
    return page


def uss(pid: int) -> int:
    fields = rollup_kb(pid)
    return (fields["Private_Clean"] + fields["Private_Dirty"]) * 1024


def mem_available() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    return int(re.search(r"^MemAvailable:\s+(\d+) kB$", meminfo, re.M).group(1)) * 1024


def write_yaml(tmp: Path, text: str) -> str:
    path = tmp / f"config-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(text)
    return str(path)


def _holders(marks: Path, count: int, futures: list[Future]) -> list[int]:
    """PIDs of the workers holding, once `count` of them announced themselves."""

    def holders() -> list[int] | None:
        pids = sorted(int(p.name.removeprefix("held-")) for p in marks.glob("held-*"))
        if len(pids) == count:
            return pids
        for future in futures:
            if future.done():  # answered (or failed) before being released
                raise AssertionError(f"hold request ended early: {future.result()!r}")
        return None

    return wait_until(
        f"{count} workers holding",
        holders,
        timeout=20,
        interval=0.01,
        detail=lambda: f"{len(list(marks.glob('held-*')))} of {count} workers holding",
    )


@contextmanager
def holding(pool: Pool, count: int, mib: int, tmp: Path) -> Iterator[list[int]]:
    """`count` concurrent requests to hold.php, each holding `mib` MiB in a
    worker of its own; yields the holding workers' PIDs, releases them on exit."""
    marks = tmp / f"hold-{uuid.uuid4().hex[:8]}"
    marks.mkdir()
    query = urllib.parse.urlencode({"mib": mib, "dir": marks})
    with ThreadPoolExecutor(count) as threads:
        futures = [
            threads.submit(request, pool.listen, str(HOLD_SCRIPT), query, timeout=60)
            for _ in range(count)
        ]
        try:
            pids = _holders(marks, count, futures)
            yield pids
        finally:
            (marks / "release").touch()
        answers = sorted(int(f.result().body) for f in futures)
    assert answers == pids


def memory_limited(pid: int) -> bool:
    """Whether the memory cgroup of pid, or an ancestor, has a limit."""
    paths = parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_bytes())
    return headroom([read_memory(d) for d in memory_dirs("/sys", paths)]) is not None


PEAK = {"basis": "observed_peak"}


def expected_capacity(samples: dict, pool: Pool, reserve: float) -> dict[str, int]:
    """The capacity figures recomputed from the exposition's own values:
    the pool's memory domain is the host (no memory limit; test_cgroup.py and
    test_capacity_acid.py cover limited pools), whose room is MemAvailable
    plus the PSS of every pool on the host, split among them."""
    g = pool.group
    pss = int(group_value(samples, "pss_group_pss_bytes", g))
    shared = pss - int(group_value(samples, "pss_group_uss_bytes", g))
    size = int(group_value(samples, "pss_phpfpm_worker_size_bytes", g, **PEAK))
    available = int(host_value(samples, "pss_host_memory_available_bytes"))
    room = int(group_value(samples, "pss_phpfpm_domain_room_bytes", g))
    host_pools = [
        dict(labels)["group"]
        for (name, labels), value in samples.items()
        if name == "pss_phpfpm_domain_room_bytes" and value == room
    ]
    held = sum(
        samples.get(("pss_group_pss_bytes", frozenset({("group", h)})), 0) for h in host_pools
    )
    assert room == held + available
    budgets = [group_value(samples, "pss_phpfpm_budget_bytes", h) for h in host_pools]
    assert sum(budgets) <= room * (1 - reserve)
    budget = int(group_value(samples, "pss_phpfpm_budget_bytes", g))
    max_children = int(group_value(samples, "pss_phpfpm_max_children", g))
    return {
        "pss_phpfpm_shared_bytes": shared,
        "pss_phpfpm_projected_bytes": shared + max_children * size,
        "pss_phpfpm_budget_bytes": budget,
        "pss_phpfpm_recommended_max_children": (budget - shared) // size,
    }


def exported_capacity(samples: dict, pool: Pool) -> dict[str, int]:
    out = {
        name: int(group_value(samples, name, pool.group))
        for name in ("pss_phpfpm_shared_bytes", "pss_phpfpm_budget_bytes")
    }
    for name in ("pss_phpfpm_projected_bytes", "pss_phpfpm_recommended_max_children"):
        out[name] = int(group_value(samples, name, pool.group, **PEAK))
    return out


def worker_uss_quantiles(samples: dict, pool: Pool) -> dict[str, int]:
    return {
        q: int(group_value(samples, f"pss_group_worker_uss_{suffix}_bytes", pool.group))
        for q, suffix in (("0.5", "median"), ("0.95", "p95"), ("1.0", "max"))
    }


# -------------------------------------------------------------------- tests


def test_configured_values_and_status_pages(fpm: Fpm) -> None:
    """Config-derived metrics equal the pool files; status-derived ones equal
    the status page fetched by the test just before and just after `once`.
    Every status request counts as accepted and is active while it runs, the
    exporter's own included."""
    pools = list(fpm.pools.values())  # status on a unix socket and on TCP
    before = {p.name: status_page(p) for p in pools}
    s = exported()
    after = {p.name: status_page(p) for p in pools}

    for pool in pools:
        g, b, a = pool.group, before[pool.name], after[pool.name]
        assert group_value(s, "pss_phpfpm_max_children", g) == pool.max_children
        assert group_value(s, "pss_phpfpm_max_requests", g) == pool.max_requests
        assert group_value(s, "pss_phpfpm_memory_limit_bytes", g) == pool.memory_limit
        assert group_value(s, "pss_phpfpm_status_up", g) == 1
        accepted = group_value(s, "pss_phpfpm_accepted_connections_total", g)
        assert b["accepted conn"] < accepted < a["accepted conn"], (g, b, a)
        for name, key in (
            ("pss_phpfpm_listen_queue", "listen queue"),
            ("pss_phpfpm_max_children_reached_total", "max children reached"),
            ("pss_phpfpm_slow_requests_total", "slow requests"),
        ):
            assert between(group_value(s, name, g), b[key], a[key]), (g, name, b, a)
        active = group_value(s, "pss_phpfpm_processes", g, state="active")
        idle = group_value(s, "pss_phpfpm_processes", g, state="idle")
        assert between(active, b["active processes"], a["active processes"]), (g, b, a)
        assert between(idle, b["idle processes"], a["idle processes"]), (g, b, a)
        assert active >= 1  # the exporter's own status request
        # The same workers as /proc shows.
        assert active + idle == b["total processes"] == pool.workers
        assert group_value(s, "pss_group_processes", g) == pool.workers


def test_held_memory_grows_worker_uss_and_capacity_follows(fpm: Fpm, tmp_path: Path) -> None:
    """Two of four workers hold HELD_MIB each while `once` runs: their USS,
    the exported quantiles and the capacity figures move accordingly; once
    released, the worker size stays at their peak."""
    assert not memory_limited(fpm.master), "the budget would follow the cgroup, not MemAvailable"
    pool = fpm.pools[STATIC]
    # Every worker serves one request first: what a worker keeps after its
    # first request (allocator caches, a few hundred KiB) is then in the
    # baseline, not in the growth.
    with holding(pool, pool.workers, 0, tmp_path):
        pass
    workers = pool_workers(fpm.master, pool.name)
    idle = exported()
    idle_uss = {pid: uss(pid) for pid in workers}
    config = write_yaml(tmp_path, "php_fpm: {reserve: 0.25}\n")
    with holding(pool, 2, HELD_MIB, tmp_path) as held:
        sums_before, available_before = pool_sums(workers), mem_available()
        busy = exported("--config", config)
        sums_after, available_after = pool_sums(workers), mem_available()
        held_uss = {pid: uss(pid) for pid in held}

    # Independently from /proc: each holding worker grew by the held block,
    # whose header and page rounding add one page (measured: N MiB + 4 KiB).
    for pid in held:
        assert HELD_MIB * MIB <= held_uss[pid] - idle_uss[pid] <= (HELD_MIB + 1) * MIB, pid
    # The exporter's per-worker quantiles (nearest rank over 4 workers, 2 of
    # them holding): the median is an idle worker, p95 and max a holding one.
    # Idle workers differ by well under 1 MiB (measured: < 100 KiB).
    before_q, during_q = worker_uss_quantiles(idle, pool), worker_uss_quantiles(busy, pool)
    assert abs(during_q["0.5"] - before_q["0.5"]) < MIB
    assert during_q["0.95"] == during_q["1.0"]
    assert between(during_q["1.0"], max(held_uss.values()), max(held_uss.values()), rel=0.02)
    assert abs(during_q["1.0"] - before_q["1.0"] - HELD_MIB * MIB) < MIB
    # Group sums and MemAvailable against /proc read around the collection.
    for metric in ("pss", "uss"):
        value = group_value(busy, f"pss_group_{metric}_bytes", pool.group)
        assert between(value, sums_before[metric], sums_after[metric], rel=0.02), metric
    available = host_value(busy, "pss_host_memory_available_bytes")
    assert between(available, available_before, available_after, rel=0.05)
    # The capacity figures follow from those values, with each run's reserve.
    assert exported_capacity(idle, pool) == expected_capacity(idle, pool, reserve=0.1)
    assert exported_capacity(busy, pool) == expected_capacity(busy, pool, reserve=0.25)
    assert exported_capacity(busy, pool)["pss_phpfpm_projected_bytes"] > 4 * HELD_MIB * MIB
    recommended = "pss_phpfpm_recommended_max_children"
    assert exported_capacity(busy, pool)[recommended] < exported_capacity(idle, pool)[recommended]
    # Released: the workers' USS is back at idle, their peaks (VmHWM) stay,
    # and so does the recommendation (on main it read the idle USS: ~50x).
    after = exported("--config", config)
    size = group_value(after, "pss_phpfpm_worker_size_bytes", pool.group, **PEAK)
    assert HELD_MIB * MIB <= size <= max(held_uss.values()) + MIB
    assert worker_uss_quantiles(after, pool)["1.0"] < HELD_MIB * MIB
    busy_r, after_r = (exported_capacity(x, pool)[recommended] for x in (busy, after))
    assert abs(after_r - busy_r) <= 0.15 * busy_r


def test_saturated_pool_keeps_memory_metrics(fpm: Fpm, tmp_path: Path) -> None:
    """All workers busy: the status page cannot answer, yet the collection
    finishes within its interval with the pool's memory and config metrics."""
    pool = fpm.pools[SATURATED]
    config = write_yaml(tmp_path, "collection: {interval: 2s}\nphp_fpm: {status_timeout: 500ms}\n")
    with holding(pool, pool.workers, 0, tmp_path):
        saturated_at = time.time()
        with pytest.raises(FastCGIError, match="timeout"):
            request(pool.listen, pool.status_path, "json", timeout=0.5)
        with running_exporter("--config", config) as url:  # after its first collection
            status, _, body = http_get(url + "/metrics")
        fetched_at = time.time()
    assert status == 200
    s = parse_samples(body.decode())

    finished = host_value(s, "pss_exporter_last_collection_timestamp_seconds")
    assert saturated_at < finished < fetched_at
    assert host_value(s, "pss_exporter_collection_duration_seconds") < 2
    g = pool.group
    assert group_value(s, "pss_phpfpm_status_up", g) == 0
    assert group_value(s, "pss_group_processes", g) == pool.workers
    assert group_value(s, "pss_group_pss_bytes", g) > 0
    assert group_value(s, "pss_group_workers", g) == pool.workers
    assert group_value(s, "pss_phpfpm_max_children", g) == pool.max_children
    assert group_value(s, "pss_phpfpm_recommended_max_children", g, **PEAK) > 0
    status_only = ("pss_phpfpm_listen_queue", "pss_phpfpm_accepted_connections_total")
    assert not [k for k in s if k[0] in status_only and ("group", g) in k[1]]
    assert not [k for k in s if k[0] == "pss_phpfpm_processes" and ("group", g) in k[1]]
    # The other pools answered in the same collection.
    assert group_value(s, "pss_phpfpm_status_up", fpm.pools[STATIC].group) == 1
    assert group_value(s, "pss_phpfpm_status_up", fpm.pools[DYNAMIC].group) == 1


# Saturated pools whose status queries are queued before a healthy pool's:
# two rounds of the exporter's status threads (8 today), so the healthy pool's
# query cannot start before the first round has timed out.
CROWD = 16


def test_saturated_pools_do_not_hide_a_healthy_pools_status(tmp_path: Path) -> None:
    """Many saturated pools and one healthy pool, defined (and so started,
    and so queried) last: its status page answers at once when asked, so the
    collection must report it up whatever the saturated pools do."""
    names = [f"crowd{i:02d}_{SUFFIX}" for i in range(CROWD)] + [f"healthy_{SUFFIX}"]
    pools = {
        name: Pool(name, "static", 1, 0, 128 * MIB, f"127.0.0.1:{free_port()}", "/status", 1)
        for name in names
    }
    (tmp_path / "php-fpm.conf").write_text(
        global_section(tmp_path)
        + "".join(
            f"[{p.name}]\nlisten = {p.listen}\npm = static\npm.max_children = 1\n"
            f"pm.status_path = {p.status_path}\n"
            for p in pools.values()
        )
    )
    config = write_yaml(tmp_path, "php_fpm: {status_timeout: 300ms}\n")
    with running_pools(tmp_path, pools), ExitStack() as stack:
        for name in names[:-1]:
            stack.enter_context(holding(pools[name], 1, 0, tmp_path))
        healthy = pools[names[-1]]
        status_page(healthy)  # answers
        s = exported("--config", config)
    crowd = [group_value(s, "pss_phpfpm_status_up", pools[n].group) for n in names[:-1]]
    assert crowd == [0] * CROWD
    assert group_value(s, "pss_group_processes", healthy.group) == 1
    assert group_value(s, "pss_phpfpm_status_up", healthy.group) == 1


def top_row(text: str, group: str) -> dict[str, str]:
    """The row of `group` in `top --once` output, by column title."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("GROUP "))
    row = next(line for line in lines if line.startswith(group + " "))
    # Columns are separated by at least two spaces; cells hold single ones.
    titles, cells = re.split(r" {2,}", header.strip()), re.split(r" {2,}", row.strip())
    assert len(titles) == len(cells), (header, row)
    return dict(zip(titles, cells))


UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_human(text: str) -> float:
    number, unit = text.split(" ")
    return float(number) * UNITS[unit]


def test_top_once_shows_the_pool_as_exported(fpm: Fpm, tmp_path: Path) -> None:
    """`top --once` between two `once` runs: same processes and max_children,
    recommended within the two runs' values (it follows MemAvailable), sizes
    within rounding. Two workers hold memory, so the worker size is large and
    recommended barely moves with MemAvailable."""
    pool = fpm.pools[STATIC]
    with holding(pool, 2, HELD_MIB, tmp_path):
        first = exported()
        top = run_cli("top", "--once")
        last = exported()
    assert top.returncode == 0, top.stderr
    assert "\x1b" not in top.stdout  # no colour into a pipe
    row = top_row(top.stdout, pool.group)
    g = pool.group
    assert int(row["PROCS"]) == pool.workers == group_value(first, "pss_group_processes", g)
    assert (
        int(row["MAX_CH"]) == pool.max_children == group_value(first, "pss_phpfpm_max_children", g)
    )
    recommended = [
        group_value(s, "pss_phpfpm_recommended_max_children", g, **PEAK) for s in (first, last)
    ]
    assert min(recommended) - 1 <= int(row["REC_CH"]) <= max(recommended) + 1, (row, recommended)
    for column, metric in (("PSS", "pss_group_pss_bytes"), ("USS", "pss_group_uss_bytes")):
        shown = parse_human(row[column])
        values = [group_value(s, metric, g) for s in (first, last)]
        assert between(shown, *values, rel=0.01), (column, row[column], values)
    assert parse_human(row["MAX PSS"]) > HELD_MIB * MIB


def test_yaml_overrides_max_children(fpm: Fpm, tmp_path: Path) -> None:
    """An override by pool name and one by group name replace the configured
    max_children, also in the projection; other pools keep theirs."""
    assert not memory_limited(fpm.master), "the budget would follow the cgroup, not MemAvailable"
    static, dynamic, saturated = (fpm.pools[n] for n in (STATIC, DYNAMIC, SATURATED))
    config = write_yaml(
        tmp_path,
        "php_fpm:\n"
        "  pools:\n"
        f"    {static.name}: {{max_children: 7}}\n"
        f'    "{dynamic.group}": {{max_children: 9}}\n',
    )
    s = exported("--config", config)
    assert group_value(s, "pss_phpfpm_max_children", static.group) == 7
    assert group_value(s, "pss_phpfpm_max_children", dynamic.group) == 9
    assert group_value(s, "pss_phpfpm_max_children", saturated.group) == saturated.max_children
    for pool in (static, dynamic):
        assert exported_capacity(s, pool) == expected_capacity(s, pool, reserve=0.1)


@contextmanager
def status_relay(pool: Pool) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback relaying GETs to the pool's status page over
    FastCGI, as nginx would; yields its URL and the paths it was asked for."""
    asked: list[str] = []

    class Relay(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            query = urllib.parse.urlsplit(self.path).query
            answer = request(pool.listen, pool.status_path, query, timeout=5)
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.headers.get("content-type", "text/plain"))
            self.end_headers()
            self.wfile.write(answer.body)

    with serving_http(Relay) as url:
        yield f"{url}/fpm-status", asked


def test_status_url_override_over_http(fpm: Fpm, tmp_path: Path) -> None:
    """php_fpm.pools.<name>.status: the status page is read from that URL
    (with ?json added), not over FastCGI."""
    pool = fpm.pools[DYNAMIC]
    with status_relay(pool) as (url, asked):
        config = write_yaml(tmp_path, f"php_fpm: {{pools: {{{pool.name}: {{status: '{url}'}}}}}}\n")
        before = status_page(pool)
        s = exported("--config", config)
        after = status_page(pool)
    assert asked == ["/fpm-status?json"]
    g = pool.group
    assert group_value(s, "pss_phpfpm_status_up", g) == 1
    accepted = group_value(s, "pss_phpfpm_accepted_connections_total", g)
    assert before["accepted conn"] < accepted < after["accepted conn"]


def test_idle_ondemand_pool_is_reported_from_its_config(tmp_path: Path) -> None:
    """An ondemand pool runs no worker until a request comes: its configured
    figures come from the master's config alone."""
    name = f"ondemand_{SUFFIX}"
    pool = Pool(name, "ondemand", 3, 0, 128 * MIB, f"127.0.0.1:{free_port()}", "", 0)
    (tmp_path / "php-fpm.conf").write_text(
        global_section(tmp_path)
        + f"[{name}]\nlisten = {pool.listen}\npm = ondemand\npm.max_children = 3\n"
    )
    with running_pools(tmp_path, {name: pool}):
        s = exported()
    assert group_value(s, "pss_phpfpm_max_children", pool.group) == 3
    assert group_value(s, "pss_phpfpm_memory_limit_bytes", pool.group) == 128 * MIB
    assert group_value(s, "pss_phpfpm_budget_bytes", pool.group) > 0
    # No worker, no peak: no observed-peak figures; PHP's bound is there.
    observed = frozenset({("group", pool.group), ("basis", "observed_peak")})
    assert ("pss_phpfpm_projected_bytes", observed) not in s
    limit = {"basis": "memory_limit"}
    assert group_value(s, "pss_phpfpm_projected_bytes", pool.group, **limit) == 3 * 128 * MIB
    assert ("pss_group_processes", frozenset({("group", pool.group)})) not in s


# ------------------------------------------------- hostile configs and pages


def exported_with_log(*args: str) -> tuple[dict, str]:
    """`pss-exporter once ARGS`: the parsed samples and what it logged."""
    result = run_cli("once", *args)
    assert result.returncode == 0, result.stderr
    return parse_samples(result.stdout), result.stderr


def has_series(samples: dict, name: str, group: str) -> bool:
    return (name, frozenset({("group", group)})) in samples


def static_pool_config(tmp: Path, name: str) -> tuple[Path, str]:
    """tmp/php-fpm.conf with one static pool of one worker: (path, text)."""
    text = global_section(tmp) + (
        f"[{name}]\nlisten = 127.0.0.1:{free_port()}\npm = static\npm.max_children = 1\n"
    )
    conf = tmp / "php-fpm.conf"
    conf.write_text(text)
    return conf, text


def test_huge_number_in_a_config_loses_that_config_only(fpm: Fpm, tmp_path: Path) -> None:
    """A 400-digit pm.max_children (written after the master started, as a
    tenant may) is that master's config error: its pool keeps its memory
    metrics, every other pool everything, and the exposition renders."""
    name = f"huge_{SUFFIX}"
    conf, text = static_pool_config(tmp_path, name)
    with running_fpm(conf, {name: 1}):
        conf.write_text(text.replace("pm.max_children = 1", "pm.max_children = " + "9" * 400))
        s, logged = exported_with_log()
    assert f"{conf}:8: bad value for pm.max_children: '{'9' * 36}... is out of range" in logged
    assert host_value(s, "pss_phpfpm_config_errors_total") >= 1
    group = f"php-fpm:{name}"
    assert group_value(s, "pss_group_processes", group) == 1
    assert not has_series(s, "pss_phpfpm_max_children", group)
    for pool in fpm.pools.values():
        assert group_value(s, "pss_phpfpm_max_children", pool.group) == pool.max_children


@pytest.mark.parametrize("counter", [int("9" * 400), 2**63, -1])
def test_status_counter_out_of_range_is_that_pages_error(
    fpm: Fpm, tmp_path: Path, counter: int
) -> None:
    """A status page (here over the HTTP override) claiming a counter beyond
    0..2**63-1 did not answer: status_up 0 for its pool, the others intact."""
    pool = fpm.pools[DYNAMIC]
    page = json.dumps({key: 1 for key in STATUS_KEYS} | {"accepted conn": counter}).encode()

    class Lying(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(page)

    with serving_http(Lying) as url:
        config = write_yaml(tmp_path, f"php_fpm: {{pools: {{{pool.name}: {{status: '{url}'}}}}}}\n")
        s = exported("--config", config)
    assert group_value(s, "pss_phpfpm_status_up", pool.group) == 0
    assert not has_series(s, "pss_phpfpm_accepted_connections_total", pool.group)
    assert group_value(s, "pss_phpfpm_max_children", pool.group) == pool.max_children
    assert group_value(s, "pss_phpfpm_status_up", fpm.pools[STATIC].group) == 1


def test_deleted_include_is_counted_not_silent(tmp_path: Path) -> None:
    """A pool's include file deleted while its workers run: its capacity
    metrics go (its config is gone), and that is counted and logged as the
    master's config error; the other pool keeps everything."""
    kept, gone = f"kept_{SUFFIX}", f"gone_{SUFFIX}"
    (tmp_path / "pool.d").mkdir()
    conf = tmp_path / "php-fpm.conf"
    conf.write_text(global_section(tmp_path) + f"include = {tmp_path}/pool.d/*.conf\n")
    for name in (kept, gone):
        (tmp_path / "pool.d" / f"{name}.conf").write_text(
            f"[{name}]\nlisten = 127.0.0.1:{free_port()}\npm = static\npm.max_children = 1\n"
        )
    with running_fpm(conf, {kept: 1, gone: 1}):
        (tmp_path / "pool.d" / f"{gone}.conf").unlink()
        s, logged = exported_with_log()
    assert f"{conf}: pools running but not configured: '{gone}'" in logged
    assert host_value(s, "pss_phpfpm_config_errors_total") >= 1
    assert group_value(s, "pss_group_processes", f"php-fpm:{gone}") == 1
    assert not has_series(s, "pss_phpfpm_max_children", f"php-fpm:{gone}")
    assert group_value(s, "pss_phpfpm_max_children", f"php-fpm:{kept}") == 1


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n"],
    ids=["bad-status-line", "header-too-long"],
)
def test_garbled_http_status_page_is_that_pages_error(
    fpm: Fpm, tmp_path: Path, answer: bytes
) -> None:
    """An HTTP status page (the override's URL may be a tenant's server) that
    is no HTTP answer (http.client raises HTTPException, not OSError) did not
    answer: status_up 0 for its pool, the collection and other pools intact."""
    pool = fpm.pools[DYNAMIC]

    class Garbled(QuietHandler):
        def do_GET(self) -> None:
            self.wfile.write(answer)

    with serving_http(Garbled) as url:
        config = write_yaml(tmp_path, f"php_fpm: {{pools: {{{pool.name}: {{status: '{url}'}}}}}}\n")
        s = exported("--config", config)
    assert group_value(s, "pss_phpfpm_status_up", pool.group) == 0
    assert group_value(s, "pss_phpfpm_max_children", pool.group) == pool.max_children
    assert group_value(s, "pss_phpfpm_status_up", fpm.pools[STATIC].group) == 1


def test_explain_pool_derives_the_exported_figures(fpm: Fpm, tmp_path: Path) -> None:
    """`explain --pool NAME` (pool name or group) between two `once` runs: the
    same peaks, and figures within what the two runs exported."""
    pool = fpm.pools[STATIC]
    with holding(pool, 1, HELD_MIB, tmp_path):
        pass  # one worker has now peaked at HELD_MIB
    first = exported()
    result = run_cli("explain", "--pool", pool.name, "--json")
    text = run_cli("explain", "--pool", pool.group)
    last = exported()
    assert result.returncode == 0 and text.returncode == 0, result.stderr + text.stderr
    data = json.loads(result.stdout)
    g = pool.group
    assert data["group"] == g and data["max_children"] == pool.max_children
    assert data["domain"]["name"] == "host"
    assert data["peaks"]["workers"] == pool.workers
    assert data["peaks"]["max_bytes"] >= HELD_MIB * MIB
    size = data["bases"]["observed_peak"]["worker_size_bytes"]
    exported_sizes = [
        group_value(s, "pss_phpfpm_worker_size_bytes", g, **PEAK) for s in (first, last)
    ]
    assert between(size, *exported_sizes, rel=0.01)
    recommended = [
        group_value(s, "pss_phpfpm_recommended_max_children", g, **PEAK) for s in (first, last)
    ]
    shown = data["bases"]["observed_peak"]["recommended_max_children"]
    assert min(recommended) - 1 <= shown <= max(recommended) + 1
    assert f"pool {g}: pm.max_children {pool.max_children}" in text.stdout
    assert "memory domain: the host" in text.stdout
    unknown = run_cli("explain", "--pool", "no-such-pool")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("pss-exporter: error: explain: no php-fpm pool 'no-such-pool'")


ALLOC_SCRIPT = Path(__file__).resolve().parent / "php" / "alloc.php"


def test_respawned_workers_keep_their_pools_window(tmp_path: Path) -> None:
    """pm.max_requests = 1: each worker serves one request holding 30 MiB,
    then php-fpm replaces it. The exporter (serve) saw the peaks of workers
    that are gone: the window has more workers than run, sized at the peak."""
    name = f"respawn_{SUFFIX}"
    listen = f"127.0.0.1:{free_port()}"
    (tmp_path / "php-fpm.conf").write_text(
        global_section(tmp_path) + f"[{name}]\nlisten = {listen}\npm = static\n"
        "pm.max_children = 2\npm.max_requests = 1\n"
    )
    pool = Pool(name, "static", 2, 1, 128 * MIB, listen, "", 2)
    config = write_yaml(tmp_path, "collection: {interval: 500ms}\naccounting: {enabled: false}\n")
    query = urllib.parse.urlencode({"mib": 30, "ms": 1500})  # three collections long
    with running_pools(tmp_path, {name: pool}) as fpm, running_exporter("--config", config) as url:
        first = set(pool_workers(fpm.master, name))
        with ThreadPoolExecutor(2) as threads:
            for _ in range(2):  # two rounds: four workers, each used once
                answers = [
                    threads.submit(request, listen, str(ALLOC_SCRIPT), query, timeout=20)
                    for _ in range(2)
                ]
                assert [a.result().body for a in answers] == [b"30", b"30"]
        wait_until("the workers respawned", lambda: not first & set(pool_workers(fpm.master, name)))
        time.sleep(1.5)  # a collection or two of the idle respawned workers
        s = parse_samples(http_get(url + "/metrics")[2].decode())
    g = pool.group
    assert group_value(s, "pss_group_processes", g) == 2
    assert group_value(s, "pss_phpfpm_worker_peaks", g) >= 4  # gone ones included
    size = group_value(s, "pss_phpfpm_worker_size_bytes", g, **PEAK)
    assert 30 * MIB <= size <= 34 * MIB
