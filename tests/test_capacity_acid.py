"""The acid test of pool capacity: run the pool at the recommendation.

A php-fpm master in a memory cgroup limited to LIMIT (v1 or v2, whichever
this machine has; no swap, so the limit means OOM kills) runs two pools:
CRAWLED, whose requests each hold a random, known amount of memory (MIN_MIB
to MAX_MIB, tests/php/alloc.php), and SMALL, a second pool of the same
cgroup. `pss-exporter serve` watches them. Then:

1. CRAWLED at a safe pm.max_children (WARM) under twice as many concurrent
   crawler requests; SMALL under light load. The exporter learns the peaks.
2. At idle after the load: the recommendation R is read, and the budgets of
   the two pools add up to at most the cgroup's limit.
3. The master restarted with CRAWLED at R, under 2R concurrent requests: no
   OOM kill. R is not uselessly low: at least half of what fits at MAX_MIB.
4. Restarted at 2R, under the same load: the projection (what
   PhpFpmPoolOvercommitted compares with the budget) is over budget before
   the first request, and the kernel OOM-kills workers.

The figures of the run go to the test's output (pytest -s) and to
FIGURES (JSON); docs/phpfpm-capacity.md shows one run's.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fpm import ALLOC, global_section, running_fpm
from test_oom import MemoryCgroup, new_memory_cgroup

from exporter.fastcgi import FastCGIError, request

from conftest import free_port, group_value, http_get, parse_samples, running_exporter, wait_until

pytestmark = [pytest.mark.live, pytest.mark.slow]

MIB = 1 << 20
LIMIT = 384 * MIB
MIN_MIB, MAX_MIB = 10, 26  # what one request holds, uniformly at random
HOLD_MS = 100  # how long it holds it
WARM = 8  # CRAWLED's max_children while the exporter learns: 8 x 26 MiB fits
LOAD_SECONDS = 20.0
SUFFIX = uuid.uuid4().hex[:8]
CRAWLED, SMALL = f"crawled_{SUFFIX}", f"small_{SUFFIX}"
FIGURES = Path("/tmp") / f"pss-capacity-acid-{SUFFIX}.json"


@pytest.fixture
def cgroup() -> Iterator[MemoryCgroup]:
    """A memory cgroup limited to LIMIT, swapping forbidden."""
    with new_memory_cgroup(f"pss-acid-{SUFFIX}", LIMIT) as cg:
        yield cg


@dataclass(frozen=True)
class Ports:
    crawled: int
    small: int


def write_config(tmp: Path, ports: Ports, crawled_children: int) -> Path:
    conf = tmp / "php-fpm.conf"
    pools = ""
    for name, port, children in (
        (CRAWLED, ports.crawled, crawled_children),
        (SMALL, ports.small, 2),
    ):
        pools += (
            f"\n[{name}]\nlisten = 127.0.0.1:{port}\nlisten.backlog = 1024\npm = static\n"
            f"pm.max_children = {children}\nphp_admin_value[memory_limit] = 64M\n"
        )
    conf.write_text(global_section(tmp) + pools)
    return conf


@dataclass
class Load:
    ok: int = 0
    failed: int = 0
    largest: int = 0  # MiB


def crawl(port: int, concurrency: int, seconds: float, low: int, high: int, seed: int) -> Load:
    """`concurrency` clients, each asking again as soon as answered, for
    `seconds`; each request holds a size drawn from low..high MiB."""
    load, lock = Load(), threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        while time.monotonic() < deadline:
            mib = rng.randint(low, high)
            query = urllib.parse.urlencode({"mib": mib, "ms": HOLD_MS})
            try:
                answer = request(f"127.0.0.1:{port}", str(ALLOC), query, timeout=20)
                good = answer.status == 200 and answer.body == str(mib).encode()
            except (FastCGIError, OSError):
                good = False
            with lock:
                if good:
                    load.ok += 1
                    load.largest = max(load.largest, mib)
                else:
                    load.failed += 1

    with ThreadPoolExecutor(concurrency) as threads:
        list(threads.map(client, range(concurrency)))
    return load


def scrape(url: str) -> dict:
    status, _, body = http_get(f"{url}/metrics")
    assert status == 200
    return parse_samples(body.decode())


def figure(samples: dict, name: str, pool: str, **labels: str) -> int:
    return int(group_value(samples, name, f"php-fpm:{pool}", **labels))


def peak_based(samples: dict, name: str, pool: str) -> int:
    return figure(samples, name, pool, basis="observed_peak")


def seen_with(url: str, children: int, cycles_after: float = 2.0) -> dict:
    """A scrape once the exporter shows CRAWLED at `children`, a few cycles on."""

    def ready() -> dict | None:
        try:
            s = scrape(url)
            return s if figure(s, "pss_phpfpm_max_children", CRAWLED) == children else None
        except KeyError:
            return None

    wait_until(f"the exporter sees max_children {children}", ready, timeout=30, interval=0.5)
    time.sleep(cycles_after)
    return scrape(url)


@contextmanager
def master(tmp: Path, ports: Ports, children: int, cg: MemoryCgroup) -> Iterator[None]:
    conf = write_config(tmp, ports, children)
    with running_fpm(conf, {CRAWLED: children, SMALL: 2}, cgroup=cg.path, graceful=False):
        yield


def run_at(
    url: str,
    tmp: Path,
    ports: Ports,
    cg: MemoryCgroup,
    children: int,
    clients: int,
    seed: int,
    name: str,
    run: dict[str, object],
) -> Load:
    """The pool restarted at max_children = children and crawled by clients:
    its requests, failures and OOM kills, and its projection over its budget
    before the first request, go into run under name."""
    with master(tmp, ports, children, cg):
        seen = seen_with(url, children)
        kills = cg.oom_kills()
        load = crawl(ports.crawled, clients, LOAD_SECONDS, MIN_MIB, MAX_MIB, seed)
        run[f"{name}_requests"], run[f"{name}_failed"] = load.ok, load.failed
        run[f"{name}_oom_kills"] = cg.oom_kills() - kills
    projected = peak_based(seen, "pss_phpfpm_projected_bytes", CRAWLED)
    budget = figure(seen, "pss_phpfpm_budget_bytes", CRAWLED)
    run[f"{name}_projected_over_budget"] = round(projected / budget, 3)
    return load


def test_the_pool_run_at_the_recommendation_holds_and_at_twice_it_does_not(
    cgroup: MemoryCgroup, tmp_path: Path
) -> None:
    config = tmp_path / "exporter.yaml"
    config.write_text(
        "collection: {interval: 500ms}\n"
        "accounting: {enabled: false}\n"
        "kmsg: {enabled: false}\n"
        "process_names:\n  - name: acid-nothing\n    cmdline: ['^pss-acid-nothing$']\n"
    )
    ports = Ports(free_port(), free_port())
    run: dict[str, object] = {"limit_mib": LIMIT // MIB, "request_mib": [MIN_MIB, MAX_MIB]}
    with running_exporter(f"--config={config}") as url:
        # 1. Learning: a safe max_children, crawled at twice as many.
        with master(tmp_path, ports, WARM, cgroup):
            seen_with(url, WARM)
            kills = cgroup.oom_kills()
            with ThreadPoolExecutor(2) as both:
                small = both.submit(crawl, ports.small, 2, LOAD_SECONDS, 1, 3, 1)
                crawled = both.submit(
                    crawl, ports.crawled, 2 * WARM, LOAD_SECONDS, MIN_MIB, MAX_MIB, 2
                )
                # Read under load as an operator would, three times in its
                # last seconds: the median (the room moves by about a
                # request between reads of PSS and of the cgroup's usage).
                time.sleep(LOAD_SECONDS - 4)
                readings = []
                for _ in range(3):
                    readings.append(scrape(url))
                    time.sleep(1)
                warm = crawled.result()
                small.result()
            assert cgroup.oom_kills() == kills, "the learning load itself was OOM-killed"
            assert warm.failed == 0 and warm.largest == MAX_MIB, warm
            # 2. At idle after the load.
            time.sleep(3)
            idle = scrape(url)
        r = peak_based(idle, "pss_phpfpm_recommended_max_children", CRAWLED)
        loaded = sorted(
            peak_based(s, "pss_phpfpm_recommended_max_children", CRAWLED) for s in readings
        )
        loaded_r = loaded[1]
        size = peak_based(idle, "pss_phpfpm_worker_size_bytes", CRAWLED)
        shared = figure(idle, "pss_phpfpm_shared_bytes", CRAWLED)
        budgets = [figure(idle, "pss_phpfpm_budget_bytes", p) for p in (CRAWLED, SMALL)]
        room = figure(idle, "pss_phpfpm_domain_room_bytes", CRAWLED)
        run.update(
            warm_requests=warm.ok,
            recommended_under_load=loaded,
            recommended_at_idle=r,
            worker_peak_mib=round(size / MIB, 2),
            shared_mib=round(shared / MIB, 2),
            room_mib=round(room / MIB, 2),
            budgets_mib=[round(b / MIB, 2) for b in budgets],
            memory_limit_recommendation=figure(
                idle, "pss_phpfpm_recommended_max_children", CRAWLED, basis="memory_limit"
            ),
        )
        assert sum(budgets) <= room <= LIMIT, run
        assert abs(r - loaded_r) <= 0.15 * loaded_r, run  # stable after the load
        fits = (LIMIT - shared) // (MAX_MIB * MIB)
        run["fits_at_largest_request"] = fits
        assert r >= 2 and r >= fits / 2, run
        # The peak is what a worker held at its largest request, not its idle USS.
        assert MAX_MIB * MIB <= size <= (MAX_MIB + 4) * MIB, run

        # 3. At R, crawled at 2R: no OOM kill. 4. At 2R: over budget before
        # any request, then OOM kills.
        held = run_at(url, tmp_path, ports, cgroup, r, 2 * r, 3, "at_r", run)
        run_at(url, tmp_path, ports, cgroup, 2 * r, 2 * r, 4, "at_2r", run)
    FIGURES.write_text(json.dumps(run, indent=1))
    print(json.dumps(run, indent=1))
    assert run["at_r_oom_kills"] == 0 and held.failed == 0, run
    assert float(run["at_r_projected_over_budget"]) <= 1, run  # type: ignore[arg-type]
    assert float(run["at_2r_projected_over_budget"]) > 1, run  # type: ignore[arg-type]
    assert int(run["at_2r_oom_kills"]) > 0, run  # type: ignore[call-overload]
